"""ROS-free core: pure numpy / torch. Imported by the nodes, the training and the benchmarks.

Nothing in this package may import rclpy or uois_sam_ros.msg (test_core_is_ros_free).
"""

from uois_sam_ros.core.types import Frame, FrameError, Instances, Intrinsics, Prompts, Sample

__all__ = ["Frame", "FrameError", "Instances", "Intrinsics", "Prompts", "Sample"]
