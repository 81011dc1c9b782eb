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
from uois_sam_ros.nodes.common import LatestWorker, ManagedNode, spin_node
from uois_sam_ros.nodes.inputs import PROMPTS_TOPIC, FrameInputs, PipelineHolder
from uois_sam_ros.ros.convert import copy_header, instances_to_msg, msg_to_prompts, stamp_to_sec
from uois_sam_ros.ros.graph import COLOR_TOPIC, DEPTH_TOPIC
from uois_sam_ros.ros.image import numpy_to_image
from uois_sam_ros.ros.qos import LATEST_QOS


class SegmentationNode(ManagedNode):
    KIND = "segmentation"

    def __init__(self, node_name: str = "segmentation", **kwargs: Any) -> None:
        self.holder: PipelineHolder | None = None
        self.worker: LatestWorker | None = None
        self.inputs: FrameInputs | None = None
        self.pub_instances = self.pub_label = self.pub_overlay = None
        self.published = 0
        super().__init__(node_name, **kwargs)
        self.single = bool(self.params.get("single_node"))
        self.holder = PipelineHolder(self, "full" if self.single else "masks")

    @property
    def pipeline(self) -> Any:
        return self.holder.pipeline if self.holder else None

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
        self.pub_instances = self.create_lifecycle_publisher(InstanceArray, "instances", LATEST_QOS)
        self.pub_label = self.create_lifecycle_publisher(Image, "instances/label", LATEST_QOS)
        self.pub_overlay = self.create_lifecycle_publisher(Image, "instances/overlay", LATEST_QOS)
        if not self.single and self.pipeline.part == "full":
            self.get_logger().info("hpg.backbone=sam: prompts need SAM's image embedding, so they are "
                                   f"computed here; the {PROMPTS_TOPIC} topic is not used")

    def unload(self) -> None:
        for pub in (self.pub_instances, self.pub_label, self.pub_overlay):
            if pub is not None:
                self.destroy_lifecycle_publisher(pub)
        self.pub_instances = self.pub_label = self.pub_overlay = None
        if self.holder is not None:
            self.holder.unload()

    def start_io(self) -> None:
        self.worker = LatestWorker(self._process, self._worker_error, name="segmentation",
                                   on_drop=self.stats.on_drop)
        extra = None if self.prompts_here else {PROMPTS_TOPIC: PromptsMsg}
        self.inputs = FrameInputs(self, extra, self.params.get("frame_buffer"), self.params.get("sync_slop"),
                                  lambda msgs, info: self.worker.put((msgs, info)),
                                  on_received=lambda: self.stats.on_input(self.now_s()),
                                  callback_group=self.io_group)
        mode = "single-node (prompts computed here)" if self.prompts_here else f"split (prompts from {PROMPTS_TOPIC})"
        self.get_logger().info(f"segmentation: {mode}")

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
            self.errors(f"segmentation failed on a frame: {type(e).__name__}: {e}")

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
        p = self.pipeline
        return {"method": getattr(p, "method", ""), "mode": "single" if self.prompts_here else "split",
                "model_loads": self.holder.loads if self.holder else 0}


def main(argv: list[str] | None = None) -> None:
    sys.exit(spin_node(SegmentationNode, argv))
