"""camera node: RealSense / folder / dataset / synthetic frames on realsense2_camera topic names.

Publishes camera/color/image_raw (rgb8), camera/aligned_depth_to_color/image_raw (16UC1, mm)
and camera/color/camera_info at `rate` Hz, all three with the same real (node clock) stamp.
rclpy is imported at the top of this module, before pyrealsense2 can ever be loaded (see
uois_sam_ros.ros.sources), so the two Fast DDS copies are loaded in the safe order.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from typing import Any

import numpy as np
from rclpy.node import Node
from sensor_msgs.msg import CameraInfo, Image

from uois_sam_ros.core.data.sources import EndOfSource, FrameSource, SourceError, open_source
from uois_sam_ros.core.types import Sample
from uois_sam_ros.nodes.common import NodeParams, spin_node
from uois_sam_ros.ros.convert import intrinsics_to_camera_info, make_header
from uois_sam_ros.ros.graph import COLOR_TOPIC, DEPTH_TOPIC, INFO_TOPIC
from uois_sam_ros.ros.image import numpy_to_image
from uois_sam_ros.ros.qos import SENSOR_QOS
from uois_sam_ros.ros.sources import import_pyrealsense2


class CameraNode(Node):
    """Thin: read a Sample from the source, publish it with the current stamp."""

    def __init__(self, node_name: str = "camera", *, source: FrameSource | None = None, **kwargs: Any) -> None:
        super().__init__(node_name, **kwargs)
        self.params = NodeParams(self, "camera", on_change=self._params_changed)
        p = self.params.values()
        self.frame_id = p["frame_id"]
        self.source = source if source is not None else open_source(
            p["source"], p, rs_loader=import_pyrealsense2, log=self.get_logger().warning)
        self.pub_color = self.create_publisher(Image, COLOR_TOPIC, SENSOR_QOS)
        self.pub_depth = self.create_publisher(Image, DEPTH_TOPIC, SENSOR_QOS)
        self.pub_info = self.create_publisher(CameraInfo, INFO_TOPIC, SENSOR_QOS)
        self.published = 0
        self.finished = threading.Event()
        self.on_publish: list[Callable[[float, Sample], None]] = []  # in-process listeners (demo)
        self._lock = threading.Lock()
        self.timer = self.create_timer(1.0 / p["rate"], self._tick)
        self.get_logger().info(f"camera: source {getattr(self.source, 'name', type(self.source).__name__)} "
                               f"at {p['rate']:g} Hz")

    def _params_changed(self, names: set[str]) -> None:
        if "rate" in names:
            self.timer.cancel()
            self.destroy_timer(self.timer)
            self.timer = self.create_timer(1.0 / self.params.get("rate"), self._tick)
        if "frame_id" in names:
            self.frame_id = self.params.get("frame_id")

    def _tick(self) -> None:
        if self.finished.is_set() or not self._lock.acquire(blocking=False):
            return  # the previous read is still running (a RealSense wait): skip, never queue
        try:
            try:
                sample = self.source.read()
            except EndOfSource as e:
                self.get_logger().info(str(e))
                self.finished.set()
                self.timer.cancel()
                return
            except (SourceError, OSError, ValueError) as e:
                self.get_logger().error(f"camera source failed: {e}")
                return
            if sample is not None:
                try:
                    self.publish_sample(sample)
                except ValueError as e:  # a frame the messages cannot carry: skip it, keep publishing
                    self.get_logger().error(f"camera: cannot publish frame {sample.name}: {e}")
        finally:
            self._lock.release()

    def publish_sample(self, sample: Sample) -> float:
        """Publish colour, depth and camera_info with one stamp (now); returns that stamp."""
        now = self.get_clock().now()
        header = make_header(now.to_msg(), self.frame_id)
        stamp = now.nanoseconds * 1e-9
        for cb in list(self.on_publish):  # before the messages leave, so no answer can beat its sample
            cb(stamp, sample)
        if sample.intrinsics is not None:  # first, so a subscriber has it when the images pair up
            self.pub_info.publish(intrinsics_to_camera_info(sample.intrinsics, header))
        self.pub_color.publish(numpy_to_image(sample.rgb, "rgb8", header))
        if sample.depth is not None:
            d = np.nan_to_num(np.asarray(sample.depth, np.float64), nan=0.0, posinf=0.0, neginf=0.0)
            mm = np.clip(np.round(d * 1000.0), 0, 65535).astype(np.uint16)  # 16UC1 millimetres
            self.pub_depth.publish(numpy_to_image(mm, "16UC1", header))
        self.published += 1
        return stamp

    def destroy_node(self) -> None:
        self.timer.cancel()
        self.source.close()
        super().destroy_node()


def main(argv: list[str] | None = None) -> None:
    sys.exit(spin_node(CameraNode, argv))
