"""Shared sample data for test_instance_msgs.py, and the publisher half of its two-process test.

Run as a script it publishes the sample InstanceArray on --topic every 0.1 s until SIGINT
or --timeout; --corrupt FIELD damages one field first, so the receiving test can prove
that its comparison catches it.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
from builtin_interfaces.msg import Time
from std_msgs.msg import Header

from uois_sam_ros.core.types import Instances
from uois_sam_ros.msg import InstanceArray

HEIGHT, WIDTH = 48, 64
CORRUPTIONS = ("none", "mask", "roi", "score", "label_map", "stamp", "amodal_mask", "instances")


def sample_instances() -> Instances:
    """Four overlapping instances, unsorted scores, amodal masks, one prompt-less (NaN) instance."""
    yy, xx = np.mgrid[:HEIGHT, :WIDTH]
    masks = np.zeros((4, HEIGHT, WIDTH), bool)
    masks[0] = (xx - 20) ** 2 + (yy - 20) ** 2 < 12 ** 2          # disc
    masks[1, 10:40, 25:60] = True                                  # box overlapping the disc
    masks[2] = (xx + yy > 70) & (xx < 63)                          # triangle, overlaps the box
    masks[3, 44:48, 0:5] = True                                    # touches the image corner
    amodal = masks.copy()
    amodal[0] = (xx - 20) ** 2 + (yy - 20) ** 2 < 14 ** 2
    amodal[1, 5:45, 20:60] = True
    return Instances(
        masks=masks,
        scores=np.array([0.61, 0.93, 0.77, 0.35], np.float32),
        sam_iou=np.array([0.58, 0.88, np.nan, 0.4], np.float32),
        prompts=np.array([[20.5, 20.5], [42.5, 25.5], [50.5, 40.5], [np.nan, np.nan]], np.float32),
        amodal_masks=amodal,
        stamp=1_700_000_000.123456789,
    )


def sample_header() -> Header:
    return Header(stamp=Time(sec=1_700_000_000, nanosec=123_456_789), frame_id="camera_color_optical_frame")


def corrupt(msg: InstanceArray, field: str) -> None:
    """Damage exactly one field of an InstanceArray in place."""
    if field == "mask":
        msg.instances[1].mask.data[5] ^= 0xFF
    elif field == "roi":
        msg.instances[2].roi.x_offset += 1
    elif field == "score":
        msg.instances[0].score = float(np.nextafter(np.float32(msg.instances[0].score), np.float32(2)))
    elif field == "label_map":
        msg.label_map.data[2 * (10 * WIDTH + 30)] ^= 0x01
    elif field == "stamp":
        msg.header.stamp.nanosec += 1
    elif field == "amodal_mask":
        msg.instances[0].amodal_mask.data[0] ^= 0xFF
    elif field == "instances":
        msg.instances.pop()
    elif field != "none":
        raise ValueError(f"unknown corruption {field!r}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--topic", required=True)
    ap.add_argument("--timeout", type=float, default=20.0)
    ap.add_argument("--corrupt", choices=CORRUPTIONS, default="none")
    args = ap.parse_args(argv)

    import rclpy
    from rclpy.executors import ExternalShutdownException

    from uois_sam_ros.ros.convert import instances_to_msg
    from uois_sam_ros.ros.qos import LATEST_QOS

    msg = instances_to_msg(sample_instances(), sample_header())
    corrupt(msg, args.corrupt)
    rclpy.init()
    node = rclpy.create_node("instance_msgs_helper_pub")
    pub = node.create_publisher(InstanceArray, args.topic, LATEST_QOS)
    node.create_timer(0.1, lambda: pub.publish(msg))
    deadline = node.get_clock().now().nanoseconds + int(args.timeout * 1e9)
    try:
        while rclpy.ok() and node.get_clock().now().nanoseconds < deadline:
            rclpy.spin_once(node, timeout_sec=0.1)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
