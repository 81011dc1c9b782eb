"""hpg node: frames in, point prompts out (plus debug foreground and heatmap images).

Subscribes the three camera topics; publishes prompts (uois_sam_ros/Prompts, header = the
source colour frame's), hpg/foreground (mono8, probability x 255) and hpg/heatmap (rgb8).
The prompt source is the one the core pipeline would use (HPG, or the geometric source of
the weights-free method), so split and single-node mode give the same instances.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np
from rclpy.node import Node
from sensor_msgs.msg import Image

from uois_sam_ros.core.types import FrameError
from uois_sam_ros.msg import Prompts as PromptsMsg
from uois_sam_ros.nodes.common import ErrorLog, LatestWorker, NodeParams, spin_node
from uois_sam_ros.nodes.inputs import (
    PROMPTS_TOPIC,
    FrameInputs,
    build_pipeline,
    prepare_frame,
)
from uois_sam_ros.ros.convert import copy_header, prompts_to_msg
from uois_sam_ros.ros.graph import COLOR_TOPIC
from uois_sam_ros.ros.image import numpy_to_image
from uois_sam_ros.ros.qos import LATEST_QOS


class HPGNode(Node):
    def __init__(self, node_name: str = "hpg", **kwargs: Any) -> None:
        super().__init__(node_name, **kwargs)
        self._config_changed = False
        self.params = NodeParams(self, "hpg", on_change=self._params_changed)
        self.errors = ErrorLog(self)
        self.pipeline = build_pipeline(self, self.params.values(), part="prompts")
        self.pub_prompts = self.create_publisher(PromptsMsg, PROMPTS_TOPIC, LATEST_QOS)
        self.pub_fg = self.create_publisher(Image, "hpg/foreground", LATEST_QOS)
        self.pub_heat = self.create_publisher(Image, "hpg/heatmap", LATEST_QOS)
        self.published = 0
        self.worker: LatestWorker = LatestWorker(self._process, self._worker_error, name="hpg")
        self.inputs = FrameInputs(self, None, 10, lambda msgs, info: self.worker.put((msgs, info)))

    def _params_changed(self, names: set[str]) -> None:
        if any("." in n for n in names):
            self._config_changed = True

    def _worker_error(self, e: BaseException) -> None:
        self.errors(f"prompt generation failed on a frame: {type(e).__name__}: {e}")

    def _process(self, item: tuple[dict[str, Any], Any]) -> None:
        msgs, info = item
        color = msgs[COLOR_TOPIC]
        frame = prepare_frame(self, msgs, info)
        if frame is None:
            return
        try:
            prompts = self.pipeline.prompts(frame)
        except FrameError as e:
            self.errors(f"bad input frame at t={frame.stamp:.3f}: {e}")
            return
        self.pub_prompts.publish(prompts_to_msg(prompts, copy_header(color.header), frame.height, frame.width))
        self.published += 1
        if self.params.get("publish_debug"):
            self._publish_debug(color, frame)

    def _publish_debug(self, color: Image, frame: Any) -> None:
        maps = self.pipeline.debug_maps(frame.height, frame.width)
        if maps is None:
            return  # the geometric prompt source has no learned maps
        from uois_sam_ros.core.eval.visualize import heatmap_to_rgb

        fg8 = np.clip(np.round(maps[0] * 255.0), 0, 255).astype(np.uint8)
        self.pub_fg.publish(numpy_to_image(fg8, "mono8", copy_header(color.header)))
        self.pub_heat.publish(numpy_to_image(heatmap_to_rgb(maps[1]), "rgb8", copy_header(color.header)))

    def destroy_node(self) -> None:
        self.worker.stop()
        super().destroy_node()


def main(argv: list[str] | None = None) -> None:
    sys.exit(spin_node(HPGNode, argv))
