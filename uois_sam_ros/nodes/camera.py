"""camera node: RealSense / folder / dataset / synthetic frames on realsense2_camera topic names.

Publishes camera/color/image_raw (rgb8), camera/aligned_depth_to_color/image_raw (16UC1, mm)
and camera/color/camera_info at `rate` Hz, all three with the same stamp: the capture time
when the source knows it (RealSense: the device timestamp mapped to ROS time, see
core/data/realsense.py), else the node clock at publish time. Lifecycle: configure opens the
source, activate starts the timer, deactivate stops it, cleanup closes the source.
rclpy is imported at the top of this module, before pyrealsense2 can ever be loaded (see
uois_sam_ros.ros.sources), so the two Fast DDS copies are loaded in the safe order.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from typing import Any

import numpy as np
from rclpy.time import Time
from sensor_msgs.msg import CameraInfo, Image

from uois_sam_ros.core.data.sources import EndOfSource, FrameSource, SourceError, open_source
from uois_sam_ros.core.types import Sample
from uois_sam_ros.nodes.common import ManagedNode, spin_node
from uois_sam_ros.ros.convert import intrinsics_to_camera_info, make_header
from uois_sam_ros.ros.graph import COLOR_TOPIC, DEPTH_TOPIC, INFO_TOPIC
from uois_sam_ros.ros.image import numpy_to_image
from uois_sam_ros.ros.qos import IMAGE_QOS
from uois_sam_ros.ros.sources import import_pyrealsense2


class CameraNode(ManagedNode):
    """Thin: read a Sample from the source, publish it with its capture (or the current) stamp."""

    KIND = "camera"

    def __init__(self, node_name: str = "camera", *, source: FrameSource | None = None, **kwargs: Any) -> None:
        self._given_source = source
        self.source: FrameSource | None = None
        self.timer = None
        self.pub_color = self.pub_depth = self.pub_info = None
        self.published = 0
        self.finished = threading.Event()
        self.on_publish: list[Callable[[float, Sample], None]] = []  # in-process listeners (demo)
        self._lock = threading.Lock()
        super().__init__(node_name, **kwargs)
        self.frame_id = self.params.get("frame_id")

    # -------------------------------------------------------------- lifecycle
    def load(self) -> None:
        p = self.params.values()
        self.frame_id = p["frame_id"]
        if self._given_source is not None:
            self.source = self._given_source
        else:
            try:
                self.source = open_source(p["source"], p, rs_loader=import_pyrealsense2,
                                          log=self.get_logger().warning, info=self.get_logger().info)
            except (SourceError, OSError, ImportError) as e:
                raise SourceError(f"camera source {p['source']!r} cannot be opened: {e}") from None
        self.lifecycle_publisher("pub_color", Image, COLOR_TOPIC, IMAGE_QOS)
        self.lifecycle_publisher("pub_depth", Image, DEPTH_TOPIC, IMAGE_QOS)
        self.lifecycle_publisher("pub_info", CameraInfo, INFO_TOPIC, IMAGE_QOS)
        self.get_logger().info(f"camera: source {getattr(self.source, 'name', type(self.source).__name__)} "
                               f"at {p['rate']:g} Hz")

    def unload(self) -> None:
        if self.source is not None and self.source is not self._given_source:
            self.source.close()
        self.source = None

    def start_io(self) -> None:
        self.finished.clear()
        self.timer = self.create_timer(1.0 / self.params.get("rate"), self._tick, callback_group=self.io_group)

    def stop_io(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.destroy_timer(self.timer)
            self.timer = None

    def _params_changed(self, names: set[str]) -> None:
        if "rate" in names and self.timer is not None:
            self.stop_io()
            self.start_io()
        if "frame_id" in names:
            self.frame_id = self.params.get("frame_id")

    # -------------------------------------------------------------- frames
    def _tick(self) -> None:
        if self.finished.is_set() or self.source is None or not self._lock.acquire(blocking=False):
            return  # the previous read is still running: skip, never queue
        try:
            try:
                sample = self.source.read()
            except EndOfSource as e:
                self.get_logger().info(str(e))
                self.finished.set()
                if self.timer is not None:
                    self.timer.cancel()
                return
            except (SourceError, OSError, ValueError, RuntimeError) as e:
                if self.alive():
                    self.errors(f"camera source failed: {e}", kind="source")
                return
            if sample is not None:
                self.stats.on_input(self.now_s())
                try:
                    self.publish_sample(sample)
                except ValueError as e:  # a frame the messages cannot carry: skip it, keep publishing
                    self.errors(f"camera: cannot publish frame {sample.name}: {e}", kind="publish")
        finally:
            self._lock.release()

    def publish_sample(self, sample: Sample) -> float:
        """Publish colour, depth and camera_info with one stamp; returns that stamp (seconds)."""
        capture = getattr(sample, "capture_time_ns", None)
        now = Time(nanoseconds=int(capture), clock_type=self.get_clock().clock_type) if capture is not None \
            else self.get_clock().now()
        header = make_header(now.to_msg(), self.frame_id)
        stamp = now.nanoseconds * 1e-9
        for cb in list(self.on_publish):  # before the messages leave, so no answer can beat its sample
            cb(stamp, sample)
        if sample.intrinsics is not None:  # first, so a subscriber has it when the images pair up
            self.safe_publish(self.pub_info, intrinsics_to_camera_info(sample.intrinsics, header))
        self.safe_publish(self.pub_color, numpy_to_image(sample.rgb, "rgb8", header))
        if sample.depth is not None:
            d = np.nan_to_num(np.asarray(sample.depth, np.float64), nan=0.0, posinf=0.0, neginf=0.0)
            mm = np.clip(np.round(d * 1000.0), 0, 65535).astype(np.uint16)  # 16UC1 millimetres
            self.safe_publish(self.pub_depth, numpy_to_image(mm, "16UC1", header))
        self.published += 1
        self.stats.on_output(self.now_s(), stamp)
        return stamp

    def diagnostic_values(self) -> dict[str, Any]:
        src = self.source
        out: dict[str, Any] = {"source": getattr(src, "name", "") if src else "", "finished": self.finished.is_set()}
        for attr in ("reconnects", "connected"):
            if src is not None and hasattr(src, attr):
                out[attr] = getattr(src, attr)
        return out

    def close_resources(self) -> None:
        if self.source is not None:
            self.source.close()


def main(argv: list[str] | None = None) -> None:
    sys.exit(spin_node(CameraNode, argv))
