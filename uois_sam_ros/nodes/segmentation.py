"""segmentation node: frames (+ prompts from hpg) in, /instances out.

Subscribes camera/color/image_raw, camera/aligned_depth_to_color/image_raw,
camera/color/camera_info and, in split mode, prompts. Publishes instances (InstanceArray,
header = the source colour frame's), instances/label (mono16) and instances/overlay (rgb8).
With single_node=true the prompt source runs here and the prompts topic is not used.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import Any

from rclpy.node import Node
from sensor_msgs.msg import CameraInfo, Image

from uois_sam_ros.core.types import Frame, FrameError
from uois_sam_ros.msg import InstanceArray
from uois_sam_ros.msg import Prompts as PromptsMsg
from uois_sam_ros.nodes.common import ErrorLog, LatestWorker, NodeParams, spin_node
from uois_sam_ros.nodes.inputs import PROMPTS_TOPIC, FrameInputs, build_pipeline, prepare_frame
from uois_sam_ros.ros.convert import (
    copy_header,
    instances_to_msg,
    msg_to_prompts,
)
from uois_sam_ros.ros.graph import COLOR_TOPIC
from uois_sam_ros.ros.image import numpy_to_image
from uois_sam_ros.ros.qos import LATEST_QOS


class SegmentationNode(Node):
    def __init__(self, node_name: str = "segmentation", **kwargs: Any) -> None:
        super().__init__(node_name, **kwargs)
        self._config_changed = False
        self.params = NodeParams(self, "segmentation", on_change=self._params_changed)
        self.single = bool(self.params.get("single_node"))
        self.errors = ErrorLog(self)
        self.pipeline = build_pipeline(self, self.params.values(), part="full" if self.single else "masks")
        self.pipeline_lock = threading.Lock()
        self.pub_instances = self.create_publisher(InstanceArray, "instances", LATEST_QOS)
        self.pub_label = self.create_publisher(Image, "instances/label", LATEST_QOS)
        self.pub_overlay = self.create_publisher(Image, "instances/overlay", LATEST_QOS)
        self.published = 0
        self.latencies: list[float] = []  # receive-to-publish wall time minus stamp, seconds
        self.worker: LatestWorker = LatestWorker(self._process, self._worker_error, name="segmentation")
        extra = None if self.single else {PROMPTS_TOPIC: PromptsMsg}
        self.inputs = FrameInputs(self, extra, self.params.get("frame_buffer"), self._on_set)
        mode = "single-node (prompts computed here)" if self.single else f"split (prompts from {PROMPTS_TOPIC})"
        self.get_logger().info(f"segmentation ready, {mode}")

    def _params_changed(self, names: set[str]) -> None:
        if any("." in n for n in names):
            self._config_changed = True  # rebuilt by the worker before the next frame

    def _on_set(self, msgs: dict[str, Any], info: CameraInfo | None) -> None:
        self.worker.put((msgs, info))

    def _worker_error(self, e: BaseException) -> None:
        self.errors(f"segmentation failed on a frame: {type(e).__name__}: {e}")

    def _process(self, item: tuple[dict[str, Any], CameraInfo | None]) -> None:
        msgs, info = item
        color = msgs[COLOR_TOPIC]
        frame = prepare_frame(self, msgs, info)
        if frame is None:
            return
        try:
            if self.single:
                inst = self.pipeline.run(frame)
            else:
                inst = self.pipeline.run(frame, msg_to_prompts(msgs[PROMPTS_TOPIC]))
        except FrameError as e:
            self.errors(f"bad input frame at t={frame.stamp:.3f}: {e}")
            return
        self.publish(inst, color, frame)

    def publish(self, inst: Any, color: Image, frame: Frame) -> None:
        header = copy_header(color.header)
        out = instances_to_msg(inst, header)
        self.pub_instances.publish(out)
        self.pub_label.publish(out.label_map)
        if self.params.get("publish_overlay"):
            from uois_sam_ros.core.eval.visualize import overlay_instances

            overlay = overlay_instances(frame.rgb, inst.label_map())
            self.pub_overlay.publish(numpy_to_image(overlay, "rgb8", copy_header(color.header)))
        self.published += 1
        self.latencies.append(time.time() - frame.stamp)

    def destroy_node(self) -> None:
        self.worker.stop()
        super().destroy_node()


def main(argv: list[str] | None = None) -> None:
    sys.exit(spin_node(SegmentationNode, argv))
