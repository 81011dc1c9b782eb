"""The inputs of the hpg and segmentation nodes: camera subscriptions, approximate-time sync,
each frame's camera_info, a watchdog that says why nothing pairs, the core pipeline built
from the node's parameters (with run-time reconfiguration), and FrameNode, the lifecycle
skeleton both nodes share.

Both nodes import this module; neither imports the other.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from rclpy.node import Node
from sensor_msgs.msg import CameraInfo, Image

from uois_sam_ros.core.types import Frame, FrameError
from uois_sam_ros.nodes.common import LatestWorker, ManagedNode
from uois_sam_ros.ros.convert import frame_from_msgs
from uois_sam_ros.ros.graph import COLOR_TOPIC, DEPTH_TOPIC, INFO_TOPIC
from uois_sam_ros.ros.params import params_to_config
from uois_sam_ros.ros.qos import LATEST_QOS, SENSOR_QOS

PROMPTS_TOPIC = "prompts"
# The hpg node's weights-free regions and table plane of each frame (mono16, geometric._Segments.packed),
# published before its prompts, so that the segmentation node does not compute them again.
REGIONS_TOPIC = "hpg/regions"
NS = 1_000_000_000


def _key(msg: Any) -> tuple[int, int]:
    return int(msg.header.stamp.sec), int(msg.header.stamp.nanosec)


def _ns(key: tuple[int, int]) -> int:
    return key[0] * NS + key[1]


class StampSync:
    """Match messages from several topics by header stamp, exactly or within ``slop_ns``
    (message_filters is not installable here).

    The first topic is the pivot (the colour image): a set is the pivot message plus, from every
    other topic, the message whose stamp is closest to it, and it is only delivered when all
    stamps of the set lie within slop of each other (max - min <= slop). slop 0 is exact
    matching. Each topic keeps at most ``depth`` messages; after a delivery everything at or
    before the delivered stamps is dropped, so nothing is ever delivered late or twice.
    """

    JUMP_BACK_NS = 2 * NS  # a stamp this far behind the last delivered one means a restart

    def __init__(self, topics: list[str], depth: int = 10, slop_ns: int = 0) -> None:
        self.topics = list(topics)
        self.depth = max(1, int(depth))
        self.slop_ns = max(0, int(slop_ns))
        self.buffers: dict[str, OrderedDict[tuple[int, int], Any]] = {t: OrderedDict() for t in self.topics}
        self._lock = threading.Lock()
        self.last: tuple[int, int] = (-1, -1)
        self.delivered = 0

    def reset(self) -> None:
        with self._lock:
            self._reset()

    def _reset(self) -> None:
        for b in self.buffers.values():
            b.clear()
        self.last = (-1, -1)

    def newest(self, topic: str) -> tuple[int, int] | None:
        b = self.buffers[topic]
        return max(b) if b else None

    def add(self, topic: str, msg: Any) -> dict[str, Any] | None:
        key = _key(msg)
        with self._lock:
            if key <= self.last:
                if _ns(self.last) - _ns(key) < self.JUMP_BACK_NS:
                    return None  # older than what was already delivered
                # Time jumped backwards (a bag restarted or looped, a sim clock reset):
                # start over instead of ignoring every frame from now on.
                self._reset()
            buf = self.buffers[topic]
            buf[key] = msg
            while len(buf) > self.depth:
                buf.popitem(last=False)
            return self._match_exact(key) if self.slop_ns == 0 else self._match()

    def _match_exact(self, key: tuple[int, int]) -> dict[str, Any] | None:
        """_match for slop 0 in O(topics): a set is delivered as soon as it is complete, so the only
        set that can be complete now is the one of the stamp that just arrived."""
        if not all(key in self.buffers[t] for t in self.topics):
            return None
        return self._deliver({t: key for t in self.topics})

    def _deliver(self, keys: dict[str, tuple[int, int]]) -> dict[str, Any]:
        """The set `keys` (topic -> stamp), dropping it and everything older from the buffers."""
        out = {t: self.buffers[t][k] for t, k in keys.items()}
        self.last = keys[self.topics[0]]
        for t, k in keys.items():
            b = self.buffers[t]
            for old in [o for o in b if o <= k]:
                del b[old]
        self.delivered += 1
        return out

    def _closest(self, topic: str, pivot_ns: int) -> tuple[int, int] | None:
        best, best_d = None, None
        for k in self.buffers[topic]:
            d = abs(_ns(k) - pivot_ns)
            if d <= self.slop_ns and (best_d is None or d < best_d or (d == best_d and k > best)):
                best, best_d = k, d
        return best

    def _match(self) -> dict[str, Any] | None:
        pivot_topic, others = self.topics[0], self.topics[1:]
        for pk in sorted(self.buffers[pivot_topic], reverse=True):  # newest complete set wins
            pns = _ns(pk)
            keys = {pivot_topic: pk}
            for t in others:
                k = self._closest(t, pns)
                if k is None:
                    break
                keys[t] = k
            else:
                stamps = [_ns(k) for k in keys.values()]
                if max(stamps) - min(stamps) > self.slop_ns:
                    continue
                return self._deliver(keys)
        return None


class PairingWatch:
    """Says once per episode why synced inputs stopped pairing, instead of going silent.

    An episode starts when messages keep arriving but no set has paired for ``after`` seconds,
    and ends at the next delivered set.
    """

    def __init__(self, sync: StampSync, warn: Callable[[str], None], after: float = 3.0,
                 names: dict[str, str] | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.sync, self.warn, self.after, self.clock = sync, warn, after, clock
        self.names = names or {}
        self.last_rx: dict[str, float] = {}
        self.counts: dict[str, int] = dict.fromkeys(sync.topics, 0)
        self.last_pair = clock()
        self.warned = False
        self.episodes = 0

    def received(self, topic: str) -> None:
        self.last_rx[topic] = self.clock()
        self.counts[topic] = self.counts.get(topic, 0) + 1

    def paired(self) -> None:
        self.last_pair = self.clock()
        self.warned = False

    def reason(self) -> str:
        now = self.clock()
        name = self.names.get
        silent = [t for t in self.sync.topics if now - self.last_rx.get(t, -1e18) > self.after]
        if silent:
            got = ", ".join(f"{name(t, t)}: {self.counts.get(t, 0)}" for t in self.sync.topics)
            return (f"nothing received for {self.after:g} s on {', '.join(name(t, t) for t in silent)} "
                    f"(messages so far: {got}); check the topic names, remaps and QoS")
        pivot = self.sync.topics[0]
        pk = self.sync.newest(pivot)
        parts = []
        for t in self.sync.topics[1:]:
            k = self.sync.newest(t)
            if pk is not None and k is not None:
                parts.append(f"{name(t, t)} {(_ns(k) - _ns(pk)) / 1e9:+.3f} s")
        return (f"messages arrive but no set has paired for {self.after:g} s: newest stamps relative to "
                f"{name(pivot, pivot)}: {', '.join(parts) or 'n/a'}; sync_slop is "
                f"{self.sync.slop_ns / 1e9:g} s (raise it for drivers whose streams are stamped apart)")

    def check(self) -> bool:
        """Warn if an episode just started; True when it warned."""
        now = self.clock()
        if self.warned or now - self.last_pair < self.after or not self.last_rx:
            return False
        if now - max(self.last_rx.values()) > self.after:
            return False  # nothing arrives at all: the camera is off, nothing to pair
        self.warned = True
        self.episodes += 1
        self.warn(f"no synced input for {now - self.last_pair:.1f} s: {self.reason()}")
        return True


class FrameInputs:
    """Camera subscriptions + stamp sync + each frame's own camera_info, shared by the hpg and
    segmentation nodes. Created at activate, destroyed at deactivate.

    A frame is paired with the camera_info of its stamp (within sync_slop), not with the latest
    one: topics are not ordered against each other, so the latest camera_info may still be the
    previous frame's. Once a camera_info has matched a frame by stamp (realsense2_camera, bags,
    our camera node), each frame waits up to INFO_WAIT for its own; a camera whose camera_info
    stamps never match its images gets the latest camera_info at once.
    """

    INFO_WAIT = 0.5  # seconds a synced frame waits for its camera_info
    ATTACH_WAIT = 0.1  # seconds the worker waits for an attachment that came with the previous frame

    def __init__(self, node: Node, extra: dict[str, type] | None, depth: int, slop_s: float,
                 on_set: Callable[[dict[str, Any], CameraInfo | None], None],
                 on_received: Callable[[], None] | None = None, warn_after: float = 3.0,
                 callback_group: Any = None, attach: dict[str, type] | None = None) -> None:
        """extra: topics every set must have (prompts in split mode). attach: topics whose message of a
        frame's stamp the worker may pick up (``attached``) but that no set waits for."""
        self.node, self.on_set, self.on_received = node, on_set, on_received
        self.info: CameraInfo | None = None  # the latest
        self.info_stamped = False
        self._infos: OrderedDict[tuple[int, int], CameraInfo] = OrderedDict()
        self._info_depth = max(10, int(depth))
        self.pending: tuple[dict[str, Any], float] | None = None
        self._lock = threading.Lock()
        topics = [COLOR_TOPIC, DEPTH_TOPIC] + list(extra or {})
        self.sync = StampSync(topics, depth=depth, slop_ns=int(round(slop_s * NS)))
        names = {t: node.resolve_topic_name(t) for t in topics}
        self.watch = PairingWatch(self.sync, node.get_logger().warning, after=warn_after, names=names)
        self.received = 0
        # Per colour stamp: when its image arrived (node clock, monotonic), then when its set was
        # handed to the worker; the node reads them back as its arrive/sync/queue steps.
        self._arrived: OrderedDict[tuple[int, int], tuple[float, float]] = OrderedDict()
        self._timing: OrderedDict[tuple[int, int], tuple[float, float, float]] = OrderedDict()
        self._now = getattr(node, "now_s", None) or (lambda: node.get_clock().now().nanoseconds * 1e-9)
        self._attached: dict[str, OrderedDict[tuple[int, int], Any]] = {t: OrderedDict() for t in (attach or {})}
        self._attach_cond = threading.Condition(self._lock)
        cg = callback_group
        self._entities: list[Any] = [
            node.create_timer(0.1, self._check_pending, callback_group=cg),
            node.create_timer(1.0, self.watch.check, callback_group=cg),
            node.create_subscription(Image, COLOR_TOPIC, lambda m: self._add(COLOR_TOPIC, m), SENSOR_QOS,
                                     callback_group=cg),
            node.create_subscription(Image, DEPTH_TOPIC, lambda m: self._add(DEPTH_TOPIC, m), SENSOR_QOS,
                                     callback_group=cg),
            node.create_subscription(CameraInfo, INFO_TOPIC, self._info, SENSOR_QOS, callback_group=cg),
        ]
        # Attachments first: when one and a set-completing message are ready in the same executor
        # wait, the attachment is taken first (the hpg node publishes its regions before its prompts).
        for topic, mtype in (attach or {}).items():
            self._entities.append(node.create_subscription(mtype, topic, lambda m, t=topic: self._on_attach(t, m),
                                                           LATEST_QOS, callback_group=cg))
        for topic, mtype in (extra or {}).items():
            self._entities.append(node.create_subscription(mtype, topic, lambda m, t=topic: self._add(t, m),
                                                           LATEST_QOS, callback_group=cg))

    def close(self) -> None:
        """Destroy the subscriptions and timers (deactivate)."""
        for e in self._entities:
            if hasattr(e, "cancel"):
                e.cancel()
                self.node.destroy_timer(e)
            else:
                self.node.destroy_subscription(e)
        self._entities = []
        with self._lock:
            self.pending = None

    def _on_attach(self, topic: str, msg: Any) -> None:
        with self._attach_cond:
            buf = self._attached[topic]
            buf[_key(msg)] = msg
            while len(buf) > self.sync.depth:
                buf.popitem(last=False)
            self._attach_cond.notify_all()

    def attached(self, topic: str, msg: Any, wait: float = 0.0) -> Any | None:
        """The message on attach topic `topic` with the stamp of `msg`, waiting up to `wait` s for it
        (worker thread); None when it does not come. Older ones are dropped."""
        key = _key(msg)
        end = time.monotonic() + wait
        with self._attach_cond:
            buf = self._attached.get(topic)
            if buf is None:
                return None
            while key not in buf:
                left = end - time.monotonic()
                if left <= 0:
                    return None
                self._attach_cond.wait(left)
            out = buf.pop(key)
            for old in [k for k in buf if k < key]:
                del buf[old]
            return out

    def _info_for(self, key: tuple[int, int]) -> CameraInfo | None:
        exact = self._infos.get(key)
        if exact is not None or self.sync.slop_ns == 0:
            return exact
        best, best_d = None, None
        for k, m in self._infos.items():
            d = abs(_ns(k) - _ns(key))
            if d <= self.sync.slop_ns and (best_d is None or d < best_d):
                best, best_d = m, d
        return best

    def _info(self, msg: CameraInfo) -> None:
        key = _key(msg)
        with self._lock:
            self.info = msg
            self._infos[key] = msg
            while len(self._infos) > self._info_depth:
                self._infos.popitem(last=False)
            pending = self.pending
            if pending is None:
                return
            if self._info_for(_key(pending[0][COLOR_TOPIC])) is msg:
                self.info_stamped = True
            elif self.info_stamped:
                return  # not this frame's camera_info: keep waiting for it
            self.pending = None
        self._deliver(pending[0], msg)

    def _deliver(self, msgs: dict[str, Any], info: CameraInfo | None) -> None:
        """Hand a complete set to the node, noting when (the sync step ends here)."""
        key = _key(msgs[COLOR_TOPIC])
        with self._lock:
            arrived = self._arrived.pop(key, None)
            if arrived is not None:
                stamp = _ns(key) / NS
                self._timing[key] = (arrived[0] - stamp, arrived[1], time.monotonic())
                while len(self._timing) > 4:
                    self._timing.popitem(last=False)
        self.on_set(msgs, info)

    def timing(self, msg: Any) -> dict[str, float]:
        """The arrive (stamp -> colour image received), sync (-> set complete) and queue (-> now)
        seconds of the frame of ``msg``'s stamp, once (the worker calls it as it starts)."""
        with self._lock:
            t = self._timing.pop(_key(msg), None)
        if t is None:
            return {}
        return {"arrive": t[0], "sync": t[2] - t[1], "queue": time.monotonic() - t[2]}

    def _add(self, topic: str, msg: Any) -> None:
        if topic == COLOR_TOPIC:
            arrived = (self._now(), time.monotonic())
            with self._lock:
                self._arrived[_key(msg)] = arrived
                while len(self._arrived) > self.sync.depth:
                    self._arrived.popitem(last=False)
        self.watch.received(topic)
        out = self.sync.add(topic, msg)
        if out is None:
            return
        self.watch.paired()
        self.received += 1
        if self.on_received is not None:
            self.on_received()
        with self._lock:
            info = self._info_for(_key(out[COLOR_TOPIC]))
            if info is not None:
                self.info_stamped = True
            elif self.info is None or self.info_stamped:
                # Give this frame's camera_info a moment to arrive (a newer frame replaces it).
                self.pending = (out, time.monotonic())
                return
            else:
                info = self.info  # this camera's camera_info stamps do not follow its images
        self._deliver(out, info)

    def _check_pending(self) -> None:
        with self._lock:
            pending = self.pending
            if pending is None or time.monotonic() - pending[1] < self.INFO_WAIT:
                return
            self.pending = None
            info = self.info
        # Its own camera_info was lost (best-effort QoS): the latest is the best guess. None:
        # the worker reports the missing camera_info.
        self._deliver(pending[0], info)

    def frame(self, color: Image, depth: Image, info: CameraInfo | None, depth_scale: float) -> Frame:
        if info is None:
            raise FrameError(f"no camera_info received on {self.node.resolve_topic_name(INFO_TOPIC)} yet: "
                             "cannot use this frame without intrinsics")
        return frame_from_msgs(color, depth, info, depth_scale=depth_scale)


class PipelineHolder:
    """The node's core pipeline, and its run-time reconfiguration.

    Threshold changes are applied between frames with no reload (``reconfigure``). A change
    that needs other weights loads a new pipeline in the parameter-service thread while the
    worker keeps serving frames with the old one; the worker swaps it in atomically before its
    next frame. A failed load returns the reason, which the node puts in SetParametersResult:
    the change is rejected and the parameter keeps its old value.
    """

    def __init__(self, node: Node, part: str) -> None:
        self.node, self.part = node, part
        self.pipeline: Any = None
        self.loads = 0
        self._pending: tuple[str, Any] | None = None
        self._lock = threading.Lock()

    def build(self, values_or_config: Any) -> Any:
        from uois_sam_ros.core.segment.pipeline import UOISPipeline  # torch-heavy: at configure

        cfg = params_to_config(values_or_config) if isinstance(values_or_config, dict) else values_or_config
        pipeline = UOISPipeline(cfg, part=self.part)
        self.loads += 1
        log = self.node.get_logger()
        device = getattr(pipeline, "device", None) or cfg.sam.device
        if pipeline.method == "weights_free" and cfg.sam.checkpoint is None:
            log.info("no SAM checkpoint (sam.checkpoint is empty): weights-free geometric backend; "
                     "set sam.checkpoint, or pipeline.method uois_sam for the shipped small SAM")
        if getattr(pipeline, "model_note", None):
            log.info(pipeline.model_note)
        log.info(f"pipeline loaded: method {pipeline.method}, part {pipeline.part}, device {device}")
        return pipeline

    def load(self, values: dict[str, Any]) -> None:
        self.pipeline = self.build(values)
        with self._lock:
            self._pending = None

    def unload(self) -> None:
        with self._lock:
            self.pipeline, self._pending = None, None

    def validate(self, values: dict[str, Any]) -> str | None:
        """Prepare a core-parameter change; the reason it cannot be applied, or None."""
        from uois_sam_ros.core.config import ConfigError

        try:
            cfg = params_to_config(values)
        except (ConfigError, ValueError) as e:
            return str(e)
        with self._lock:
            pending = self._pending
        base = pending[1] if pending and pending[0] == "swap" else self.pipeline
        if base is None:
            return None  # not configured: the values are used at the next configure
        if base.can_reconfigure(cfg):
            if pending and pending[0] == "swap":
                base.reconfigure(cfg)  # not serving yet: safe to change now
            else:
                with self._lock:
                    self._pending = ("reconfigure", cfg)
            return None
        try:
            new = self.build(cfg)
        except Exception as e:  # noqa: BLE001 - any load failure rejects the change
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            self.node.get_logger().warning(f"parameter change rejected, keeping the loaded models: {msg}")
            return f"cannot load the new models, keeping the old ones: {msg}"
        with self._lock:
            self._pending = ("swap", new)
        return None

    def current(self) -> Any:
        """The pipeline for the next frame, with any pending change applied (worker thread)."""
        with self._lock:
            pending, self._pending = self._pending, None
        if pending is not None and self.pipeline is not None:
            kind, obj = pending
            if kind == "swap":
                self.pipeline = obj
            else:
                self.pipeline.reconfigure(obj)
        return self.pipeline


class FrameNode(ManagedNode):
    """The part of the hpg and segmentation nodes that is the same: a PipelineHolder for one
    pipeline part, synced camera inputs (plus extra topics) feeding a latest-frame worker, and
    core-parameter changes routed through the holder. Subclasses set FAILURE (the worker's error
    prefix), implement ``pipeline_part()``, ``load()`` and ``_process()``, and call
    ``start_inputs()`` from ``start_io()``."""

    FAILURE = "processing failed on a frame"

    def __init__(self, node_name: str, **kwargs: Any) -> None:
        self.holder: PipelineHolder | None = None
        self.worker: LatestWorker | None = None
        self.inputs: FrameInputs | None = None
        self.published = 0
        super().__init__(node_name, **kwargs)
        self.holder = PipelineHolder(self, self.pipeline_part())

    def pipeline_part(self) -> str:
        """Which part of UOISPipeline this node loads (read once parameters are declared)."""
        raise NotImplementedError

    @property
    def pipeline(self) -> Any:
        return self.holder.pipeline if self.holder else None

    def unload(self) -> None:
        if self.holder is not None:
            self.holder.unload()

    def start_inputs(self, extra: dict[str, type] | None, depth: int, name: str,
                     attach: dict[str, type] | None = None) -> None:
        self.worker = LatestWorker(self._process, self._worker_error, name=name, on_drop=self.stats.on_drop)
        self.inputs = FrameInputs(self, extra, depth, self.params.get("sync_slop"),
                                  lambda msgs, info: self.worker.put((msgs, info)),
                                  on_received=lambda: self.stats.on_input(self.now_s()),
                                  callback_group=self.io_group, attach=attach)

    def stop_io(self) -> None:
        if self.inputs is not None:
            self.inputs.close()
            self.inputs = None
        if self.worker is not None:
            self.worker.stop()
            self.worker = None

    def _process(self, item: tuple[dict[str, Any], CameraInfo | None]) -> None:
        raise NotImplementedError

    def _validate_change(self, values: dict[str, Any], changed: set[str]) -> str | None:
        if any("." in n for n in changed):  # core parameters are the dotted ones
            return self.holder.validate(values)
        return None

    def _worker_error(self, e: BaseException) -> None:
        if self.alive():
            self.errors(f"{self.FAILURE}: {type(e).__name__}: {e}")

    def diagnostic_values(self) -> dict[str, Any]:
        return {"method": getattr(self.pipeline, "method", ""),
                "model_loads": self.holder.loads if self.holder else 0}
