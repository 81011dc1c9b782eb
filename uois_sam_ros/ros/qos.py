"""QoS profiles shared by every node, so publishers and subscribers always match.

Depth 1 everywhere: a slow consumer gets the newest frame, never a queue of stale ones
(latency must not grow, DESIGN.md section 3).
"""

from __future__ import annotations

from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

# Camera topics: best effort like realsense2_camera's default, so a lost frame is skipped
# instead of retransmitted late. A best-effort subscriber also matches a reliable publisher.
SENSOR_QOS = QoSProfile(
    history=HistoryPolicy.KEEP_LAST,
    depth=1,
    reliability=ReliabilityPolicy.BEST_EFFORT,
    durability=DurabilityPolicy.VOLATILE,
)

# Results (prompts, instances, grasps): each one is expensive to compute and is sent once per
# frame, so it must arrive; only the latest matters.
LATEST_QOS = QoSProfile(
    history=HistoryPolicy.KEEP_LAST,
    depth=1,
    reliability=ReliabilityPolicy.RELIABLE,
    durability=DurabilityPolicy.VOLATILE,
)
