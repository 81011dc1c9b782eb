"""ROS glue: numpy <-> message conversions and QoS profiles, shared by nodes, launch and apps.

Modules here may import rclpy and the messages; uois_sam_ros.core must never import them.
Nothing is imported eagerly, so `import uois_sam_ros.ros.image` stays cheap.
"""
