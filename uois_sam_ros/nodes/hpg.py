"""hpg node: frames in, point prompts out (plus debug foreground and heatmap images).

Subscribes the three camera topics; publishes prompts (uois_sam_ros/Prompts, header = the
source colour frame's), hpg/foreground (mono8, probability x 255) and hpg/heatmap (rgb8).
The prompt source is the one the core pipeline would use (HPG, the grid, or the geometric
source of the weights-free method), so split and single-node mode give the same instances.
This node loads the prompt source only, never SAM (UOISPipeline part "prompts").
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np
from sensor_msgs.msg import Image

from uois_sam_ros.core.types import FrameError
from uois_sam_ros.msg import Prompts as PromptsMsg
from uois_sam_ros.nodes.common import LatestWorker, ManagedNode, spin_node
from uois_sam_ros.nodes.inputs import PROMPTS_TOPIC, FrameInputs, PipelineHolder
from uois_sam_ros.ros.convert import copy_header, prompts_to_msg, stamp_to_sec
from uois_sam_ros.ros.graph import COLOR_TOPIC, DEPTH_TOPIC
from uois_sam_ros.ros.image import numpy_to_image
from uois_sam_ros.ros.qos import LATEST_QOS


class HPGNode(ManagedNode):
    KIND = "hpg"

    def __init__(self, node_name: str = "hpg", **kwargs: Any) -> None:
        self.holder: PipelineHolder | None = None
        self.worker: LatestWorker | None = None
        self.inputs: FrameInputs | None = None
        self.pub_prompts = self.pub_fg = self.pub_heat = None
        self.published = 0
        super().__init__(node_name, **kwargs)
        self.holder = PipelineHolder(self, "prompts")

    @property
    def pipeline(self) -> Any:
        return self.holder.pipeline if self.holder else None

    # -------------------------------------------------------------- lifecycle
    def load(self) -> None:
        self.holder.load(self.params.values())
        self.pub_prompts = self.create_lifecycle_publisher(PromptsMsg, PROMPTS_TOPIC, LATEST_QOS)
        self.pub_fg = self.create_lifecycle_publisher(Image, "hpg/foreground", LATEST_QOS)
        self.pub_heat = self.create_lifecycle_publisher(Image, "hpg/heatmap", LATEST_QOS)

    def unload(self) -> None:
        for pub in (self.pub_prompts, self.pub_fg, self.pub_heat):
            if pub is not None:
                self.destroy_lifecycle_publisher(pub)
        self.pub_prompts = self.pub_fg = self.pub_heat = None
        if self.holder is not None:
            self.holder.unload()

    def start_io(self) -> None:
        self.worker = LatestWorker(self._process, self._worker_error, name="hpg", on_drop=self.stats.on_drop)
        self.inputs = FrameInputs(self, None, 10, self.params.get("sync_slop"),
                                  lambda msgs, info: self.worker.put((msgs, info)),
                                  on_received=lambda: self.stats.on_input(self.now_s()),
                                  callback_group=self.io_group)

    def stop_io(self) -> None:
        if self.inputs is not None:
            self.inputs.close()
            self.inputs = None
        if self.worker is not None:
            self.worker.stop()
            self.worker = None

    def _validate_change(self, values: dict[str, Any], changed: set[str]) -> str | None:
        if any("." in n for n in changed):
            return self.holder.validate(values)
        return None

    # -------------------------------------------------------------- frames
    def _worker_error(self, e: BaseException) -> None:
        if self.alive():
            self.errors(f"prompt generation failed on a frame: {type(e).__name__}: {e}")

    def _process(self, item: tuple[dict[str, Any], Any]) -> None:
        msgs, info = item
        color = msgs[COLOR_TOPIC]
        pipeline = self.holder.current()
        if pipeline is None or self.inputs is None:
            return
        try:
            frame = self.inputs.frame(color, msgs[DEPTH_TOPIC], info, self.params.get("depth_scale"))
            prompts = pipeline.prompts(frame)
        except FrameError as e:
            self.errors(f"bad input frame at t={stamp_to_sec(color.header.stamp):.3f}: {e}")
            return
        msg = prompts_to_msg(prompts, copy_header(color.header), frame.height, frame.width)
        if not self.safe_publish(self.pub_prompts, msg):
            return
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

    def diagnostic_values(self) -> dict[str, Any]:
        p = self.pipeline
        return {"method": getattr(p, "method", ""), "model_loads": self.holder.loads if self.holder else 0}


def main(argv: list[str] | None = None) -> None:
    sys.exit(spin_node(HPGNode, argv))
