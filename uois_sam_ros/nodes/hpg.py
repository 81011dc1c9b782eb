"""hpg node: frames in, point prompts out (plus debug foreground and heatmap images).

Subscribes the three camera topics; publishes prompts (uois_sam_ros/Prompts, header = the
source colour frame's), hpg/foreground (mono8, probability x 255) and hpg/heatmap (rgb8), and
with the geometric prompt source hpg/regions (mono16, geometric._Segments.packed) just before
the prompts: the frame's regions and table plane, which the segmentation node would otherwise
compute a second time.
The prompt source is the one the core pipeline would use (HPG, the grid, or the geometric
source of the weights-free method), so split and single-node mode give the same instances.
This node loads the prompt source only, never SAM (UOISPipeline part "prompts").
"""

from __future__ import annotations

import sys
import time
from typing import Any

import numpy as np
from sensor_msgs.msg import Image

from uois_sam_ros.core.types import FrameError
from uois_sam_ros.msg import Prompts as PromptsMsg
from uois_sam_ros.nodes.common import spin_node
from uois_sam_ros.nodes.inputs import PROMPTS_TOPIC, REGIONS_TOPIC, FrameNode
from uois_sam_ros.ros.convert import copy_header, prompts_to_msg, stamp_to_sec
from uois_sam_ros.ros.graph import COLOR_TOPIC, DEPTH_TOPIC
from uois_sam_ros.ros.image import numpy_to_image
from uois_sam_ros.ros.qos import LATEST_QOS


class HPGNode(FrameNode):
    KIND = "hpg"
    FAILURE = "prompt generation failed on a frame"

    def __init__(self, node_name: str = "hpg", **kwargs: Any) -> None:
        self.pub_prompts = self.pub_regions = self.pub_fg = self.pub_heat = None
        super().__init__(node_name, **kwargs)

    def pipeline_part(self) -> str:
        return "prompts"

    # -------------------------------------------------------------- lifecycle
    def load(self) -> None:
        self.holder.load(self.params.values())
        self.lifecycle_publisher("pub_prompts", PromptsMsg, PROMPTS_TOPIC, LATEST_QOS)
        self.lifecycle_publisher("pub_regions", Image, REGIONS_TOPIC, LATEST_QOS)
        self.lifecycle_publisher("pub_fg", Image, "hpg/foreground", LATEST_QOS)
        self.lifecycle_publisher("pub_heat", Image, "hpg/heatmap", LATEST_QOS)

    def start_io(self) -> None:
        self.start_inputs(None, 10, "hpg")

    # -------------------------------------------------------------- frames
    def _process(self, item: tuple[dict[str, Any], Any]) -> None:
        msgs, info = item
        color = msgs[COLOR_TOPIC]
        pipeline = self.holder.current()
        if pipeline is None or self.inputs is None:
            return
        steps = self.inputs.timing(color)
        try:
            t = time.perf_counter()
            frame = self.inputs.frame(color, msgs[DEPTH_TOPIC], info, self.params.get("depth_scale"))
            steps["convert"] = time.perf_counter() - t
            t = time.perf_counter()
            prompts = pipeline.prompts(frame)
            steps["core"] = time.perf_counter() - t
        except FrameError as e:
            self.errors(f"bad input frame at t={stamp_to_sec(color.header.stamp):.3f}: {e}")
            return
        t = time.perf_counter()
        # The regions first: the segmentation node takes them with the prompts of the same stamp.
        regions = pipeline.packed_regions() if self.wanted(self.pub_regions) else None
        if regions is not None:
            self.safe_publish(self.pub_regions, numpy_to_image(regions, "mono16", copy_header(color.header)))
        msg = prompts_to_msg(prompts, copy_header(color.header), frame.height, frame.width)
        if not self.safe_publish(self.pub_prompts, msg):
            return
        steps["output"] = time.perf_counter() - t
        self.steps.add(steps)
        self.published += 1
        self.stats.on_output(self.now_s(), stamp_to_sec(color.header.stamp))
        if self.params.get("publish_debug") and (self.wanted(self.pub_fg) or self.wanted(self.pub_heat)):
            self._publish_debug(pipeline, color, frame)

    def _publish_debug(self, pipeline: Any, color: Image, frame: Any) -> None:
        maps = pipeline.debug_maps(frame.height, frame.width)
        if maps is None:
            return  # the geometric prompt source has no learned maps
        from uois_sam_ros.core.eval.visualize import heatmap_to_rgb

        fg8 = np.clip(np.round(maps[0] * 255.0), 0, 255).astype(np.uint8)
        self.safe_publish(self.pub_fg, numpy_to_image(fg8, "mono8", copy_header(color.header)))
        self.safe_publish(self.pub_heat, numpy_to_image(heatmap_to_rgb(maps[1]), "rgb8", copy_header(color.header)))


def main(argv: list[str] | None = None) -> None:
    sys.exit(spin_node(HPGNode, argv))
