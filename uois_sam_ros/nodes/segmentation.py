"""segmentation node: frames (+ prompts from hpg) in, /instances out.

Subscribes camera/color/image_raw, camera/aligned_depth_to_color/image_raw,
camera/color/camera_info and, in split mode, prompts. Publishes instances (InstanceArray,
header = the source colour frame's), instances/label (mono16) and instances/overlay (rgb8,
only computed while somebody subscribes). With single_node=true the prompt source runs here
and the prompts topic is not used. In split mode this node loads the segmenter and HDNet
only (UOISPipeline part "masks"); the prompt source lives in the hpg node.
"""

from __future__ import annotations

import sys
from typing import Any

from sensor_msgs.msg import CameraInfo, Image

from uois_sam_ros.core.types import Frame, FrameError
from uois_sam_ros.msg import InstanceArray
from uois_sam_ros.msg import Prompts as PromptsMsg
from uois_sam_ros.nodes.common import spin_node
from uois_sam_ros.nodes.inputs import PROMPTS_TOPIC, FrameNode
from uois_sam_ros.ros.convert import copy_header, instances_to_msg, msg_to_prompts, stamp_to_sec
from uois_sam_ros.ros.graph import COLOR_TOPIC, DEPTH_TOPIC
from uois_sam_ros.ros.image import numpy_to_image
from uois_sam_ros.ros.qos import LATEST_QOS


class SegmentationNode(FrameNode):
    KIND = "segmentation"
    FAILURE = "segmentation failed on a frame"

    def __init__(self, node_name: str = "segmentation", **kwargs: Any) -> None:
        self.pub_instances = self.pub_label = self.pub_overlay = None
        super().__init__(node_name, **kwargs)

    def pipeline_part(self) -> str:
        return "full" if self.single else "masks"

    @property
    def single(self) -> bool:
        return bool(self.params.get("single_node"))  # read-only: fixed for the node's life

    @property
    def latencies(self) -> list[float]:
        """Stamp-to-publish seconds of the recent frames (node clock), oldest first."""
        return list(self.stats._latency)

    @property
    def prompts_here(self) -> bool:
        """Prompts are computed in this node: single-node mode, or prompts that need SAM's embedding."""
        return self.single or (self.pipeline is not None and self.pipeline.part == "full")

    # -------------------------------------------------------------- lifecycle
    def load(self) -> None:
        self.holder.load(self.params.values())
        self.lifecycle_publisher("pub_instances", InstanceArray, "instances", LATEST_QOS)
        self.lifecycle_publisher("pub_label", Image, "instances/label", LATEST_QOS)
        self.lifecycle_publisher("pub_overlay", Image, "instances/overlay", LATEST_QOS)
        if not self.single and self.pipeline.part == "full":
            self.get_logger().info("hpg.backbone=sam: prompts need SAM's image embedding, so they are "
                                   f"computed here; the {PROMPTS_TOPIC} topic is not used")

    def start_io(self) -> None:
        extra = None if self.prompts_here else {PROMPTS_TOPIC: PromptsMsg}
        self.start_inputs(extra, self.params.get("frame_buffer"), "segmentation")
        mode = "single-node (prompts computed here)" if self.prompts_here else f"split (prompts from {PROMPTS_TOPIC})"
        self.get_logger().info(f"segmentation: {mode}")

    # -------------------------------------------------------------- frames
    def _process(self, item: tuple[dict[str, Any], CameraInfo | None]) -> None:
        msgs, info = item
        color = msgs[COLOR_TOPIC]
        pipeline = self.holder.current()
        if pipeline is None or self.inputs is None:
            return
        try:
            frame = self.inputs.frame(color, msgs[DEPTH_TOPIC], info, self.params.get("depth_scale"))
            given = msg_to_prompts(msgs[PROMPTS_TOPIC]) if PROMPTS_TOPIC in msgs else None
            inst = pipeline.run(frame, given)
        except FrameError as e:
            self.errors(f"bad input frame at t={stamp_to_sec(color.header.stamp):.3f}: {e}")
            return
        self.publish(inst, color, frame)

    def publish(self, inst: Any, color: Image, frame: Frame) -> None:
        out = instances_to_msg(inst, copy_header(color.header))
        if not self.safe_publish(self.pub_instances, out):
            return
        self.safe_publish(self.pub_label, out.label_map)
        if self.params.get("publish_overlay") and self.wanted(self.pub_overlay):
            from uois_sam_ros.core.eval.visualize import overlay_instances

            overlay = overlay_instances(frame.rgb, inst.label_map())
            self.safe_publish(self.pub_overlay, numpy_to_image(overlay, "rgb8", copy_header(color.header)))
        self.published += 1
        self.stats.on_output(self.now_s(), stamp_to_sec(color.header.stamp))

    def diagnostic_values(self) -> dict[str, Any]:
        return {**super().diagnostic_values(), "mode": "single" if self.prompts_here else "split"}


def main(argv: list[str] | None = None) -> None:
    sys.exit(spin_node(SegmentationNode, argv))
