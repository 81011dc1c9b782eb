"""segmentation node: frames (+ prompts from hpg) in, /instances out.

Subscribes camera/color/image_raw, camera/aligned_depth_to_color/image_raw,
camera/color/camera_info and, in split mode, prompts and hpg/regions (the weights-free regions
of the prompts' frame, rebuilt here instead of computed again; computed when they do not come). Publishes instances (InstanceArray,
header = the source colour frame's), instances/label (mono16) and instances/overlay (rgb8,
only computed while somebody subscribes). With single_node=true the prompt source runs here
and the prompts topic is not used. In split mode this node loads the segmenter and HDNet
only (UOISPipeline part "masks"); the prompt source lives in the hpg node.

Service ~/refine (uois_sam_ros/Refine): clicks on one object of a recent frame give its refined
mask, and the corrected instances are published again on instances with that frame's stamp.
The last refine_frames frames are kept with their instances and SAM image embedding
(core/adapt/refine.py), and SAM's mask decoder adapts from the clicks as the adapt.* parameters
say (test-time adaptation). The worker's pipeline.run and a request share one lock: the adapter
decodes by swapping parameters into the very SAM model the pipeline runs.
"""

from __future__ import annotations

import sys
import time
from contextlib import nullcontext
from typing import Any

from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import Header

from uois_sam_ros.core.types import Frame, FrameError
from uois_sam_ros.msg import InstanceArray
from uois_sam_ros.msg import Prompts as PromptsMsg
from uois_sam_ros.nodes.common import spin_node
from uois_sam_ros.nodes.inputs import PROMPTS_TOPIC, REGIONS_TOPIC, FrameInputs, FrameNode
from uois_sam_ros.ros.convert import copy_header, instances_to_msg, msg_to_prompts, stamp_to_sec
from uois_sam_ros.ros.graph import COLOR_TOPIC, DEPTH_TOPIC
from uois_sam_ros.ros.image import ImageConversionError, image_to_numpy, numpy_to_image
from uois_sam_ros.ros.params import params_to_config
from uois_sam_ros.ros.qos import LATEST_QOS
from uois_sam_ros.srv import Refine

REFINE_SERVICE = "~/refine"


def stamp_ns(stamp: Any) -> int:
    """A builtin_interfaces/Time as exact integer nanoseconds (the refine cache's key)."""
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


class SegmentationNode(FrameNode):
    KIND = "segmentation"
    FAILURE = "segmentation failed on a frame"

    def __init__(self, node_name: str = "segmentation", **kwargs: Any) -> None:
        self.pub_instances = self.pub_label = self.pub_overlay = None
        self.refiner: Any = None  # core.adapt.refine.Refiner, from configure to cleanup
        self.srv_refine: Any = None
        self._regions_seen = False  # the previous frame came with the hpg node's regions
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
        from uois_sam_ros.core.adapt.adaptation import check_adapt_config  # torch-heavy: at configure
        from uois_sam_ros.core.adapt.refine import Refiner

        values = self.params.values()
        adapt = check_adapt_config(params_to_config(values).adapt)  # a bad mode fails configure, named
        self.holder.load(values)
        self.refiner = Refiner(values["refine_frames"], adapt, values["decoder_dir"] or None, self.get_logger())
        self.refiner.bind(self.pipeline)
        self.lifecycle_publisher("pub_instances", InstanceArray, "instances", LATEST_QOS)
        self.lifecycle_publisher("pub_label", Image, "instances/label", LATEST_QOS)
        self.lifecycle_publisher("pub_overlay", Image, "instances/overlay", LATEST_QOS)
        if not self.single and self.pipeline.part == "full":
            self.get_logger().info("hpg.backbone=sam: prompts need SAM's image embedding, so they are "
                                   f"computed here; the {PROMPTS_TOPIC} topic is not used")

    def unload(self) -> None:
        if self.refiner is not None:
            self._finish_object()
            self.refiner.clear()
            self.refiner = None
        super().unload()

    def start_io(self) -> None:
        extra = None if self.prompts_here else {PROMPTS_TOPIC: PromptsMsg}
        attach = None if self.prompts_here else {REGIONS_TOPIC: Image}
        self._regions_seen = False
        self.start_inputs(extra, self.params.get("frame_buffer"), "segmentation", attach)
        # Its own group: a request (decoding, adaptation steps) never holds up the camera callbacks.
        self.srv_refine = self.create_service(Refine, REFINE_SERVICE, self._on_refine,
                                              callback_group=MutuallyExclusiveCallbackGroup())
        mode = "single-node (prompts computed here)" if self.prompts_here else f"split (prompts from {PROMPTS_TOPIC})"
        refine = f"; {self.resolve_service_name(REFINE_SERVICE)}: {self._mode_text()}" if self.refiner else ""
        self.get_logger().info(f"segmentation: {mode}{refine}")

    def stop_io(self) -> None:
        super().stop_io()
        srv, self.srv_refine = self.srv_refine, None
        if srv is not None:
            self._finish_object()  # first: its decoder file must not depend on a clean teardown
            try:
                self.destroy_service(srv)
            except Exception:  # noqa: BLE001 - the context is already gone (Ctrl-C): nothing to release
                pass

    def _mode_text(self) -> str:
        mode = self.refiner.mode
        return "weights-free segmenter, no adaptation" if mode == "weights_free" else f"adaptation {mode}"

    def _finish_object(self) -> None:
        """End the object being clicked (its after-object step, its decoder file)."""
        if self.refiner is None:
            return
        try:
            self.refiner.finish()
        except Exception as e:  # noqa: BLE001 - stopping anyway; say why the last step was lost
            self.errors(f"refine: ending the last object failed: {type(e).__name__}: {e}")

    # -------------------------------------------------------------- frames
    def _process(self, item: tuple[dict[str, Any], CameraInfo | None]) -> None:
        msgs, info = item
        color = msgs[COLOR_TOPIC]
        refiner = self.refiner
        with refiner.lock if refiner is not None else nullcontext():
            pipeline = self.holder.current()
            if pipeline is None or self.inputs is None:
                return
            if refiner is not None:
                refiner.bind(pipeline)  # a swapped pipeline (new weights) starts a new cache
            steps = self.inputs.timing(color)
            try:
                t = time.perf_counter()
                frame = self.inputs.frame(color, msgs[DEPTH_TOPIC], info, self.params.get("depth_scale"))
                given = msg_to_prompts(msgs[PROMPTS_TOPIC]) if PROMPTS_TOPIC in msgs else None
                regions = self._regions(color, frame) if given is not None and pipeline.takes_regions else None
                steps["convert"] = time.perf_counter() - t
                t = time.perf_counter()
                inst = pipeline.run(frame, given, regions)
                steps["core"] = time.perf_counter() - t
                steps.update({f"core_{k}": v for k, v in (inst.timings or {}).items() if k != "total"})
            except FrameError as e:
                self.errors(f"bad input frame at t={stamp_to_sec(color.header.stamp):.3f}: {e}")
                return
            if refiner is not None:
                try:  # before the segmenter sees another frame: the embedding is this frame's
                    refiner.add(stamp_ns(color.header.stamp), frame, inst, copy_header(color.header))
                except Exception as e:  # noqa: BLE001 - the frame's result is still published
                    self.errors(f"refine: could not keep the frame: {type(e).__name__}: {e}", "refine_cache")
        self.publish(inst, color, frame, steps)

    def _regions(self, color: Image, frame: Frame) -> Any:
        """The hpg node's packed weights-free regions of this frame (published just before its
        prompts), or None: then the segmenter computes them itself. Waits for them briefly only
        while they keep coming, so an hpg node that sends none costs nothing."""
        msg = self.inputs.attached(REGIONS_TOPIC, color, FrameInputs.ATTACH_WAIT if self._regions_seen else 0.0)
        self._regions_seen = msg is not None
        if msg is None:
            return None
        try:
            packed = image_to_numpy(msg, expected_encoding="mono16")
        except ImageConversionError as e:
            self.errors(f"{self.resolve_topic_name(REGIONS_TOPIC)}: {e}; computing the regions here", "regions")
            return None
        if packed.shape != (frame.height, frame.width):
            self.errors(f"{self.resolve_topic_name(REGIONS_TOPIC)} is {packed.shape[1]}x{packed.shape[0]} but the "
                        f"frame is {frame.width}x{frame.height}; computing the regions here", "regions")
            return None
        return packed

    def publish(self, inst: Any, color: Image, frame: Frame, steps: dict[str, float] | None = None) -> None:
        t = time.perf_counter()
        if not self._publish_instances(inst, color.header, frame)[1]:
            return
        if steps is not None:
            steps["output"] = time.perf_counter() - t
            self.steps.add(steps)
        self.published += 1
        self.stats.on_output(self.now_s(), stamp_to_sec(color.header.stamp))

    def _publish_instances(self, inst: Any, header: Header, frame: Frame) -> tuple[InstanceArray, bool]:
        """instances, instances/label and (when wanted) instances/overlay of one frame; the
        InstanceArray and whether it went out."""
        out = instances_to_msg(inst, copy_header(header))
        if not self.safe_publish(self.pub_instances, out):
            return out, False
        self.safe_publish(self.pub_label, out.label_map)
        if self.params.get("publish_overlay") and self.wanted(self.pub_overlay):
            from uois_sam_ros.core.eval.visualize import overlay_instances

            overlay = overlay_instances(frame.rgb, inst.label_map())
            self.safe_publish(self.pub_overlay, numpy_to_image(overlay, "rgb8", copy_header(header)))
        return out, True

    # -------------------------------------------------------------- ~/refine
    def _on_refine(self, req: Refine.Request, resp: Refine.Response) -> Refine.Response:
        """One object's clicks -> its refined instance, re-published with the frame's stamp.
        Every failure is a response with success=false and the reason; the node keeps serving."""
        from uois_sam_ros.core.adapt.refine import RefineError, stamp_text

        refiner = self.refiner
        resp.success = False
        if refiner is None:
            resp.message = "the segmentation node is not configured: no model to refine with"
            return resp
        clicks = [(c.x, c.y, c.positive) for c in req.clicks]
        try:
            res = refiner.refine(stamp_ns(req.stamp), clicks, int(req.instance_id), req.class_name)
        except RefineError as e:
            resp.message = str(e)
            self.get_logger().warning(f"refine request refused: {e}")
            return resp
        except Exception as e:  # noqa: BLE001 - a request must never take the node down
            resp.message = f"refine failed: {type(e).__name__}: {e}"
            self.errors(resp.message, "refine")
            return resp
        out, sent = self._publish_instances(res.instances, res.entry.meta, res.entry.frame)
        resp.instance = out.instances[res.index]
        resp.success = True
        what = f", class {req.class_name!r}" if req.class_name and refiner.adapter is not None else ""
        resp.message = (f"instance {res.instance_id} of the frame at {stamp_text(res.entry.stamp_ns)}: "
                        f"{int(res.mask.sum())} px, score {res.score:.3f}; {len(clicks)} click(s), "
                        f"{res.decoded} decoded now; {self._mode_text()}{what}"
                        + ("" if sent else "; instances not re-published (shutting down)"))
        return resp

    def _validate_change(self, values: dict[str, Any], changed: set[str]) -> str | None:
        if any(n.startswith("adapt.") for n in changed):
            from uois_sam_ros.core.adapt.adaptation import check_adapt_config
            from uois_sam_ros.core.config import ConfigError

            try:
                check_adapt_config(params_to_config(values).adapt)
            except (ConfigError, ValueError) as e:
                return str(e)
        return super()._validate_change(values, changed)

    def _params_changed(self, names: set[str]) -> None:
        super()._params_changed(names)
        refiner = self.refiner
        if refiner is None:
            return
        if "refine_frames" in names:
            refiner.set_capacity(self.params.get("refine_frames"))
        if any(n.startswith("adapt.") for n in names):
            refiner.set_config(params_to_config(self.params.values()).adapt)  # ends the open object

    def diagnostic_values(self) -> dict[str, Any]:
        out = {**super().diagnostic_values(), "mode": "single" if self.prompts_here else "split"}
        if self.refiner is not None:
            out.update({"refine_frames_cached": len(self.refiner.stamps), "refine_requests": self.refiner.requests,
                        "adaptation": self.refiner.mode})
        return out


def main(argv: list[str] | None = None) -> None:
    sys.exit(spin_node(SegmentationNode, argv))
