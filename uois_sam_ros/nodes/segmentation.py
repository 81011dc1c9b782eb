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
from collections import OrderedDict
from typing import Any

from rclpy.node import Node
from sensor_msgs.msg import CameraInfo, Image

from uois_sam_ros.core.types import Frame, FrameError, Instances, Prompts
from uois_sam_ros.msg import InstanceArray
from uois_sam_ros.msg import Prompts as PromptsMsg
from uois_sam_ros.nodes.common import ErrorLog, LatestWorker, NodeParams, StampSync, spin_node
from uois_sam_ros.ros.convert import (
    copy_header,
    frame_from_msgs,
    instances_to_msg,
    msg_to_prompts,
    stamp_to_sec,
)
from uois_sam_ros.ros.graph import COLOR_TOPIC, DEPTH_TOPIC, INFO_TOPIC, params_to_config
from uois_sam_ros.ros.image import numpy_to_image
from uois_sam_ros.ros.qos import LATEST_QOS, SENSOR_QOS

PROMPTS_TOPIC = "prompts"


def build_pipeline(node: Node, values: dict[str, Any]) -> Any:
    """The core pipeline from the node's parameters, with a clear line about which backend runs."""
    from uois_sam_ros.core.pipeline import UOISPipeline  # torch-heavy: imported when a node starts

    cfg = params_to_config(values)
    if cfg.sam.checkpoint is None and cfg.pipeline.method in ("auto", "weights_free"):
        node.get_logger().info("no SAM checkpoint (sam.checkpoint is empty): using the weights-free "
                               "geometric backend; set sam.checkpoint for the full UOIS-SAM path")
    pipeline = UOISPipeline(cfg)
    node.get_logger().info(f"pipeline method: {getattr(pipeline, 'method', cfg.pipeline.method)}")
    return pipeline


class GivenPrompts:
    """A PromptSource that returns prompts received from the hpg node (split mode)."""

    name = "given"

    def __init__(self, prompts: Prompts) -> None:
        self._prompts = prompts

    def prompts(self, frame: Frame) -> Prompts:
        return self._prompts


def run_with_prompts(pipeline: Any, frame: Frame, prompts: Prompts) -> Instances:
    """pipeline.run with the prompt source swapped for the received prompts (same selection, NMS, filters)."""
    own = getattr(pipeline, "run_with_prompts", None)
    if own is not None:
        return own(frame, prompts)
    saved = pipeline.prompt_source
    pipeline.prompt_source = GivenPrompts(prompts)
    try:
        return pipeline.run(frame)
    finally:
        pipeline.prompt_source = saved


def pipeline_prompts(pipeline: Any, frame: Frame) -> Prompts:
    """The prompts pipeline.run(frame) would use, computed without the segmenter where possible."""
    hpg = getattr(pipeline, "hpg", None)
    if hpg is not None and hpg.needs_sam_embedding:
        pipeline.run(frame)  # HPG on SAM features needs the image embedding first
        return pipeline.last_prompts
    need_depth = pipeline.method == "weights_free" or (hpg is not None and hpg.model.uses_depth)
    frame.validate(need_depth=need_depth, need_intrinsics=pipeline.method == "weights_free")
    return pipeline.prompt_source.prompts(frame)


def _stamp_key(msg: Any) -> tuple[int, int]:
    return int(msg.header.stamp.sec), int(msg.header.stamp.nanosec)


class FrameInputs:
    """Camera subscriptions + stamp sync + each frame's own camera_info, shared by the hpg and
    segmentation nodes.

    A frame is paired with the camera_info of the same stamp, not with the latest one: topics
    are not ordered against each other, so the latest camera_info may still be the previous
    frame's (a different camera, or a re-calibrated one, gives different intrinsics). Once a
    camera_info has matched a frame by stamp (realsense2_camera, bags, our camera node), each
    frame waits up to INFO_WAIT for its own; a camera whose camera_info stamps never match its
    images gets the latest camera_info at once.
    """

    INFO_WAIT = 0.5  # seconds a synced frame waits for its camera_info (the first one: else an error)

    def __init__(self, node: Node, extra: dict[str, type] | None, depth: int, on_set) -> None:
        self.node, self.on_set = node, on_set
        self.info: CameraInfo | None = None  # the latest
        self.info_stamped = False  # a camera_info has matched a frame's stamp: frames wait for their own
        self._infos: OrderedDict[tuple[int, int], CameraInfo] = OrderedDict()
        self._info_depth = max(10, int(depth))
        self.pending: tuple[dict[str, Any], float] | None = None
        self._lock = threading.Lock()
        node.create_timer(0.1, self._check_pending)
        topics = [COLOR_TOPIC, DEPTH_TOPIC] + list(extra or {})
        self.sync = StampSync(topics, depth=depth)
        self.received = 0
        node.create_subscription(Image, COLOR_TOPIC, lambda m: self._add(COLOR_TOPIC, m), SENSOR_QOS)
        node.create_subscription(Image, DEPTH_TOPIC, lambda m: self._add(DEPTH_TOPIC, m), SENSOR_QOS)
        node.create_subscription(CameraInfo, INFO_TOPIC, self._info, SENSOR_QOS)
        for topic, mtype in (extra or {}).items():
            node.create_subscription(mtype, topic, lambda m, t=topic: self._add(t, m), LATEST_QOS)

    def _info(self, msg: CameraInfo) -> None:
        key = _stamp_key(msg)
        with self._lock:
            self.info = msg
            self._infos[key] = msg
            while len(self._infos) > self._info_depth:
                self._infos.popitem(last=False)
            pending = self.pending
            if pending is None:
                return
            if _stamp_key(pending[0][COLOR_TOPIC]) == key:
                self.info_stamped = True
            elif self.info_stamped:
                return  # not this frame's camera_info: keep waiting for it
            self.pending = None
        self.on_set(pending[0], msg)

    def _add(self, topic: str, msg: Any) -> None:
        out = self.sync.add(topic, msg)
        if out is None:
            return
        self.received += 1
        with self._lock:
            info = self._infos.get(_stamp_key(out[COLOR_TOPIC]))
            if info is not None:
                self.info_stamped = True
            elif self.info is None or self.info_stamped:
                # Give this frame's camera_info a moment to arrive (a newer frame replaces it).
                self.pending = (out, time.monotonic())
                return
            else:
                info = self.info  # this camera's camera_info stamps do not follow its images
        self.on_set(out, info)

    def _check_pending(self) -> None:
        with self._lock:
            pending = self.pending
            if pending is None or time.monotonic() - pending[1] < self.INFO_WAIT:
                return
            self.pending = None
            info = self.info
        # Its own camera_info was lost (best-effort QoS): the latest is the best guess. None:
        # the worker reports the missing camera_info.
        self.on_set(pending[0], info)

    def frame(self, color: Image, depth: Image, info: CameraInfo | None, depth_scale: float) -> Frame:
        if info is None:
            raise FrameError(f"no camera_info received on {self.node.resolve_topic_name(INFO_TOPIC)} yet: "
                             "cannot use this frame without intrinsics")
        return frame_from_msgs(color, depth, info, depth_scale=depth_scale)


def prepare_frame(node: Any, msgs: dict[str, Any], info: CameraInfo | None) -> Frame | None:
    """The start of every worker step of the hpg and segmentation nodes: the synced messages
    as a Frame (a bad one is logged and skipped), and the pipeline rebuilt if a core
    parameter changed since the last frame."""
    color = msgs[COLOR_TOPIC]
    try:
        frame = node.inputs.frame(color, msgs[DEPTH_TOPIC], info, node.params.get("depth_scale"))
    except FrameError as e:
        node.errors(f"bad input frame at t={stamp_to_sec(color.header.stamp):.3f}: {e}")
        return None
    if node._config_changed:
        node._config_changed = False
        node.pipeline = build_pipeline(node, node.params.values())
    return frame


class SegmentationNode(Node):
    def __init__(self, node_name: str = "segmentation", **kwargs: Any) -> None:
        super().__init__(node_name, **kwargs)
        self._config_changed = False
        self.params = NodeParams(self, "segmentation", on_change=self._params_changed)
        self.single = bool(self.params.get("single_node"))
        self.errors = ErrorLog(self)
        self.pipeline = build_pipeline(self, self.params.values())
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
                inst = run_with_prompts(self.pipeline, frame, msg_to_prompts(msgs[PROMPTS_TOPIC]))
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
            from uois_sam_ros.core.visualize import overlay_instances

            overlay = overlay_instances(frame.rgb, inst.label_map())
            self.pub_overlay.publish(numpy_to_image(overlay, "rgb8", copy_header(color.header)))
        self.published += 1
        self.latencies.append(time.time() - frame.stamp)

    def destroy_node(self) -> None:
        self.worker.stop()
        super().destroy_node()


def main(argv: list[str] | None = None) -> None:
    sys.exit(spin_node(SegmentationNode, argv))
