"""QoS profiles shared by every node, so publishers and subscribers always match.

Depth 1 everywhere: a slow consumer gets the newest frame, never a queue of stale ones
(latency must not grow, DESIGN.md section 3).

Publishers are RELIABLE: a reliable publisher is received both by reliable subscriptions
(RViz2's image and camera displays default to reliable) and by best-effort ones, and
``ros2 topic echo`` adapts to the publisher. Our own camera subscriptions are BEST_EFFORT, so
they also accept a best-effort driver (realsense2_camera with its sensor-data profile) and a
lost frame is skipped instead of retransmitted late. The README lists every topic's profile.
"""

from __future__ import annotations

from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

# Camera subscriptions: best effort, keep last 1.
SENSOR_QOS = QoSProfile(
    history=HistoryPolicy.KEEP_LAST,
    depth=1,
    reliability=ReliabilityPolicy.BEST_EFFORT,
    durability=DurabilityPolicy.VOLATILE,
)

# Results (prompts, instances, grasps) and their subscriptions: each one is expensive to
# compute and is sent once per frame, so it must arrive; only the latest matters.
LATEST_QOS = QoSProfile(
    history=HistoryPolicy.KEEP_LAST,
    depth=1,
    reliability=ReliabilityPolicy.RELIABLE,
    durability=DurabilityPolicy.VOLATILE,
)

# Published images (camera, label, overlay, debug): reliable keep-last-1, so RViz2's default
# subscription receives them; with keep-last-1 a slow reader never blocks the publisher.
IMAGE_QOS = LATEST_QOS
