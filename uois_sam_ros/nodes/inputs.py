"""The camera inputs of the hpg and segmentation nodes: subscriptions, stamp sync, each frame's
camera_info, and the core pipeline built from the node's parameters.

Both nodes import this module; neither imports the other.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from typing import Any

from rclpy.node import Node
from sensor_msgs.msg import CameraInfo, Image

from uois_sam_ros.core.types import Frame, FrameError
from uois_sam_ros.ros.convert import frame_from_msgs, stamp_to_sec
from uois_sam_ros.ros.graph import COLOR_TOPIC, DEPTH_TOPIC, INFO_TOPIC
from uois_sam_ros.ros.params import params_to_config
from uois_sam_ros.ros.qos import LATEST_QOS, SENSOR_QOS


class StampSync:
    """Match messages from several topics by exact header stamp (message_filters is not installable).

    Each topic keeps at most `depth` messages by stamp; when every topic holds a stamp, that
    set is returned and everything at or before it is dropped (never delivered late).
    """

    def __init__(self, topics: list[str], depth: int = 10) -> None:
        self.topics = list(topics)
        self.depth = max(1, int(depth))
        self.buffers: dict[str, OrderedDict[tuple[int, int], Any]] = {t: OrderedDict() for t in self.topics}
        self._lock = threading.Lock()
        self.last: tuple[int, int] = (-1, -1)

    JUMP_BACK_NS = 2_000_000_000  # a stamp this far behind the last delivered one means a restart

    def reset(self) -> None:
        for b in self.buffers.values():
            b.clear()
        self.last = (-1, -1)

    def add(self, topic: str, msg: Any) -> dict[str, Any] | None:
        key = (int(msg.header.stamp.sec), int(msg.header.stamp.nanosec))
        with self._lock:
            if key <= self.last:
                back_ns = (self.last[0] - key[0]) * 1_000_000_000 + (self.last[1] - key[1])
                if back_ns < self.JUMP_BACK_NS:
                    return None  # older than what was already delivered
                # Time jumped backwards (a bag restarted or looped, a sim clock reset):
                # start over instead of ignoring every frame from now on.
                self.reset()
            buf = self.buffers[topic]
            buf[key] = msg
            while len(buf) > self.depth:
                buf.popitem(last=False)
            if all(key in self.buffers[t] for t in self.topics):
                out = {t: self.buffers[t][key] for t in self.topics}
                self.last = key
                for t in self.topics:
                    b = self.buffers[t]
                    for k in [k for k in b if k <= key]:
                        del b[k]
                return out
        return None



PROMPTS_TOPIC = "prompts"


def build_pipeline(node: Node, values: dict[str, Any], part: str = "full") -> Any:
    """The core pipeline from the node's parameters, with a clear line about which backend runs."""
    from uois_sam_ros.core.segment.pipeline import UOISPipeline  # torch-heavy: imported when a node starts

    cfg = params_to_config(values)
    if cfg.sam.checkpoint is None and cfg.pipeline.method in ("auto", "weights_free"):
        node.get_logger().info("no SAM checkpoint (sam.checkpoint is empty): using the weights-free "
                               "geometric backend; set sam.checkpoint for the full UOIS-SAM path")
    pipeline = UOISPipeline(cfg, part=part)
    node.get_logger().info(f"pipeline method: {getattr(pipeline, 'method', cfg.pipeline.method)}")
    return pipeline


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
        node.pipeline = build_pipeline(node, node.params.values(), node.pipeline.part)
    return frame


