"""amodal node: /instances (+ the frame they came from) in, instances/amodal out.

Subscribes camera/color/image_raw, camera/aligned_depth_to_color/image_raw,
camera/color/camera_info and instances, paired by header stamp (the instances carry their
colour frame's stamp). Publishes
- instances/amodal (InstanceArray): the input array, same header, ids, order and visible
  fields, with has_amodal, amodal_roi, amodal_mask and occlusion_rate filled;
- instances/occlusion_order (mono8 Image, N x N, same header): pixel [i, j] is 255 when
  instance instances[i] occludes instances[j] (depth along their shared boundary), else 0;
- instances/amodal_overlay (rgb8, only while somebody subscribes): visible masks tinted,
  completed hidden parts hatched, arrows from occluders to what they hide.

The completion method is amodal.method (the shipped completer by default; SAMEO or Amodal
SAM with the SAM set in sam.* and their checkpoints). An empty InstanceArray gives an empty
amodal array and an empty order, never an error.
"""

from __future__ import annotations

import copy
import sys
import threading
from typing import Any

import numpy as np
from sensor_msgs.msg import CameraInfo, Image

from uois_sam_ros.core.types import FrameError
from uois_sam_ros.msg import InstanceArray
from uois_sam_ros.nodes.common import spin_node
from uois_sam_ros.nodes.inputs import FrameNode
from uois_sam_ros.ros.convert import _crop_to_msg, copy_header, msg_to_instances, stamp_to_sec
from uois_sam_ros.ros.graph import COLOR_TOPIC, DEPTH_TOPIC
from uois_sam_ros.ros.image import numpy_to_image
from uois_sam_ros.ros.params import params_to_config
from uois_sam_ros.ros.qos import LATEST_QOS

INSTANCES_TOPIC = "instances"
AMODAL_TOPIC = "instances/amodal"
ORDER_TOPIC = "instances/occlusion_order"
OVERLAY_TOPIC = "instances/amodal_overlay"


def amodal_msg(msg: InstanceArray, amodal: np.ndarray, rates: np.ndarray) -> InstanceArray:
    """A copy of msg with every instance's amodal fields filled (same ids, order and header)."""
    out = InstanceArray(header=copy_header(msg.header), height=msg.height, width=msg.width,
                        label_map=copy.deepcopy(msg.label_map))
    for k, it in enumerate(msg.instances):
        item = copy.deepcopy(it)
        item.has_amodal = True
        item.amodal_roi, item.amodal_mask = _crop_to_msg(amodal[k], msg.header)
        item.occlusion_rate = float(np.float32(rates[k]))
        out.instances.append(item)
    return out


def order_image(order: np.ndarray, header: Any) -> Image:
    n = len(order)
    return numpy_to_image(np.where(order, np.uint8(255), np.uint8(0)).astype(np.uint8).reshape(n, n), "mono8",
                          copy_header(header))


class AmodalNode(FrameNode):
    KIND = "amodal"
    FAILURE = "amodal completion failed on a frame"

    def __init__(self, node_name: str = "amodal", **kwargs: Any) -> None:
        self.pub_amodal = self.pub_order = self.pub_overlay = None
        self.stage: Any = None
        self._next_stage: Any = None
        self._stage_lock = threading.Lock()
        self.instances_done = 0
        self.seconds = 0.0
        super().__init__(node_name, **kwargs)

    def pipeline_part(self) -> str:
        return "none"  # this node never builds the segmentation pipeline

    # -------------------------------------------------------------- models
    def _build(self, values: dict[str, Any]) -> Any:
        from uois_sam_ros.core.amodal.stage import AmodalStage  # torch-heavy: at configure

        cfg = params_to_config(values)
        stage = AmodalStage(cfg.amodal, cfg.sam)
        log = self.get_logger()
        if stage.note:
            log.info(stage.note)
        log.info(f"amodal stage loaded: method {stage.method}, device {stage.device}")
        return stage

    def load(self) -> None:
        self.stage = self._build(self.params.values())
        self.lifecycle_publisher("pub_amodal", InstanceArray, AMODAL_TOPIC, LATEST_QOS)
        self.lifecycle_publisher("pub_order", Image, ORDER_TOPIC, LATEST_QOS)
        self.lifecycle_publisher("pub_overlay", Image, OVERLAY_TOPIC, LATEST_QOS)

    def unload(self) -> None:
        with self._stage_lock:
            self.stage = self._next_stage = None

    def _validate_change(self, values: dict[str, Any], changed: set[str]) -> str | None:
        if self.stage is None or not any(n.startswith(("amodal.", "sam.")) for n in changed):
            return None  # not configured (used at the next configure), or nothing this node loads
        try:
            new = self._build(values)
        except Exception as e:  # noqa: BLE001 - any load failure rejects the change
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            self.get_logger().warning(f"parameter change rejected, keeping the loaded models: {msg}")
            return f"cannot load the new amodal models, keeping the old ones: {msg}"
        with self._stage_lock:
            self._next_stage = new
        return None

    def _current(self) -> Any:
        with self._stage_lock:
            if self._next_stage is not None:
                self.stage, self._next_stage = self._next_stage, None
            return self.stage

    def start_io(self) -> None:
        self.start_inputs({INSTANCES_TOPIC: InstanceArray}, self.params.get("frame_buffer"), "amodal")

    # -------------------------------------------------------------- frames
    def _process(self, item: tuple[dict[str, Any], CameraInfo | None]) -> None:
        msgs, info = item
        color, inst_msg = msgs[COLOR_TOPIC], msgs[INSTANCES_TOPIC]
        stage = self._current()
        if stage is None or self.inputs is None:
            return
        try:
            frame = self.inputs.frame(color, msgs[DEPTH_TOPIC], info, self.params.get("depth_scale"))
            inst = msg_to_instances(inst_msg)
            if inst.shape != (frame.height, frame.width):
                raise FrameError(f"instances are {inst.shape[1]}x{inst.shape[0]}, the frame is "
                                 f"{frame.width}x{frame.height}")
            res = stage.run(frame, inst)
        except (FrameError, ValueError) as e:
            self.errors(f"bad input at t={stamp_to_sec(color.header.stamp):.3f}: {e}")
            return
        out = amodal_msg(inst_msg, res.amodal, res.occlusion_rates)
        if not self.safe_publish(self.pub_amodal, out):
            return
        self.safe_publish(self.pub_order, order_image(res.order, inst_msg.header))
        if self.params.get("publish_overlay") and self.wanted(self.pub_overlay):
            from uois_sam_ros.core.amodal.stage import overlay_amodal

            ov = overlay_amodal(frame.rgb, inst.masks, res.amodal, res.order)
            self.safe_publish(self.pub_overlay, numpy_to_image(ov, "rgb8", copy_header(color.header)))
        self.published += 1
        self.instances_done += len(inst)
        self.seconds += res.timings.get("amodal", 0.0)
        self.stats.on_output(self.now_s(), stamp_to_sec(color.header.stamp))

    def diagnostic_values(self) -> dict[str, Any]:
        ms = 1000.0 * self.seconds / self.instances_done if self.instances_done else float("nan")
        return {"method": getattr(self.stage, "method", ""), "ms_per_instance": ms}


def main(argv: list[str] | None = None) -> None:
    sys.exit(spin_node(AmodalNode, argv))
