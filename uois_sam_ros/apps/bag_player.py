"""Play bag frames into a live graph and record its topics: rclpy on top of ros/bag.py's encoding.

Playing publishes the bag's CDR bytes unchanged (only the stamp may be shifted), and
recording writes the raw CDR an rclpy subscription receives, so nothing is re-encoded.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.serialization import deserialize_message
from rosbags.rosbag2 import Writer
from sensor_msgs.msg import CameraInfo, Image

from uois_sam_ros.ros.bag import (
    INSTANCES_TOPIC,
    STORAGES,
    BagError,
    BagFrame,
    BagTopics,
    typestore,
    with_stamp,
)


def _qos(reliable: bool, depth: int = 1) -> QoSProfile:
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth,
                      reliability=ReliabilityPolicy.RELIABLE if reliable else ReliabilityPolicy.BEST_EFFORT,
                      durability=DurabilityPolicy.VOLATILE)


@dataclass
class FrameResult:
    """What happened to one replayed frame."""

    stamp_ns: int
    name: str
    published: float | None = None  # time.monotonic() when the colour image went out
    answered: float | None = None
    answer: object | None = None  # the InstanceArray (rclpy) with this frame's stamp

    @property
    def latency_s(self) -> float | None:
        if self.published is None or self.answered is None:
            return None
        return self.answered - self.published


class BagPlayer:
    """Publishes bag frames into a live graph and collects the /instances that answer them.

    Matching is by header stamp: every node carries the source colour stamp to its outputs.
    Publishers are reliable, which matches best-effort and reliable subscribers alike.
    """

    def __init__(self, node: Node, topics: BagTopics = BagTopics(), instances_topic: str = INSTANCES_TOPIC,
                 output_type: type | None = None) -> None:
        if output_type is None:
            from uois_sam_ros.msg import InstanceArray
            output_type = InstanceArray
        self.node = node
        self.topics = topics
        self.instances_topic = instances_topic
        self.output_type = output_type
        self._pub_color = node.create_publisher(Image, topics.color, _qos(True, 2))
        self._pub_depth = node.create_publisher(Image, topics.depth, _qos(True, 2))
        self._pub_info = node.create_publisher(CameraInfo, topics.info, _qos(True, 2))
        self._sub = None
        self.offset_ns = 0  # added to every stamp on the wire (restamp)
        self._cond = threading.Condition()
        self._answers: dict[int, tuple[float, object]] = {}

    def _on_answer(self, msg) -> None:
        now = time.monotonic()
        t = int(msg.header.stamp.sec) * 1_000_000_000 + int(msg.header.stamp.nanosec) - self.offset_ns
        with self._cond:
            self._answers.setdefault(t, (now, msg))
            self._cond.notify_all()

    def wait_for_graph(self, timeout: float = 20.0) -> None:
        """Wait until the graph subscribes to our inputs and publishes the output topic.

        The output subscription copies the publisher's reliability, so a best-effort and a
        reliable /instances both connect.
        """
        deadline = time.monotonic() + timeout
        out_name = self.node.resolve_topic_name(self.instances_topic)
        while True:
            missing = [p.topic_name for p in (self._pub_color, self._pub_depth, self._pub_info)
                       if p.get_subscription_count() == 0]
            pubs = self.node.get_publishers_info_by_topic(out_name)
            if not pubs:
                missing.append(f"{out_name} (no publisher)")
            if not missing:
                break
            if time.monotonic() > deadline:
                raise BagError(f"the graph did not connect within {timeout:.0f} s: nothing on "
                               f"{', '.join(missing)} (is the graph running, with these topic names?)")
            time.sleep(0.05)
        if self._sub is None:
            reliable = all(p.qos_profile.reliability == ReliabilityPolicy.RELIABLE for p in pubs)
            self._sub = self.node.create_subscription(self.output_type, self.instances_topic,
                                                      self._on_answer, _qos(reliable, 10))
            while self._sub.get_publisher_count() == 0:
                if time.monotonic() > deadline:
                    raise BagError(f"could not subscribe to {out_name}: incompatible QoS?")
                time.sleep(0.05)

    def restamp(self, frames: Sequence[BagFrame], now_ns: int | None = None) -> None:
        """Shift all stamps so the bag starts 1 s after now (the warm-up frame goes at now).

        Nodes drop inputs not newer than what they already processed, so a bag replayed
        twice into a running graph would otherwise get no answers. Answers are matched
        back to bag frames through the same offset.
        """
        if frames:
            now_ns = time.time_ns() if now_ns is None else now_ns
            self.offset_ns = now_ns + 1_000_000_000 - frames[0].stamp_ns

    def warm_up(self, frame: BagFrame, timeout: float = 60.0) -> float:
        """Send one frame under a stamp 1 s before the bag until the graph answers it.

        Models load lazily and DDS may drop the very first best-effort images after
        discovery; neither should count as a dropped frame or a slow answer. Returns the
        seconds the first answer took.
        """
        t = frame.stamp_ns + self.offset_ns - 1_000_000_000
        msgs = [with_stamp(raw, t) for raw in (frame.info, frame.depth, frame.color)]
        t0 = time.monotonic()
        deadline = t0 + timeout
        while True:
            for pub, m in zip((self._pub_info, self._pub_depth, self._pub_color), msgs, strict=True):
                pub.publish(m)
            if self._wait(t - self.offset_ns, min(deadline, time.monotonic() + 2.0)):
                return time.monotonic() - t0
            if time.monotonic() >= deadline:
                raise BagError(f"the graph did not answer a warm-up frame on {self.instances_topic} within "
                               f"{timeout:.0f} s (is it the right graph? check its log)")

    def _publish(self, frame: BagFrame) -> float:
        def wire(raw: bytes) -> bytes:
            return with_stamp(raw, frame.stamp_ns + self.offset_ns) if self.offset_ns else raw
        self._pub_info.publish(wire(frame.info))
        self._pub_depth.publish(wire(frame.depth))
        now = time.monotonic()
        self._pub_color.publish(wire(frame.color))
        return now

    def _wait(self, stamp_ns: int, until: float) -> bool:
        with self._cond:
            while stamp_ns not in self._answers:
                left = until - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.1))
            return True

    def _results(self, frames: Sequence[BagFrame], published: dict[int, float]) -> list[FrameResult]:
        with self._cond:
            answers = dict(self._answers)
        out = []
        for f in frames:
            r = FrameResult(f.stamp_ns, f.name, published.get(f.stamp_ns))
            if f.stamp_ns in answers and r.published is not None:
                r.answered, r.answer = answers[f.stamp_ns]
            out.append(r)
        return out

    def play_lockstep(self, frames: Sequence[BagFrame], timeout: float = 60.0, resend: float = 5.0,
                      progress: Callable[[Iterable], Iterable] | None = None) -> list[FrameResult]:
        """One frame at a time: publish, wait for its answer (or `timeout`), then the next.

        Camera topics are best effort, so a frame lost in transport is sent again (same
        stamp, same bytes) after max(resend, 3 x the slowest answer so far) without an
        answer; latency still counts from the first send.
        """
        published: dict[int, float] = {}
        slowest = 0.0
        for f in (progress(frames) if progress else frames):
            first = published[f.stamp_ns] = self._publish(f)
            end = first + timeout
            while not self._wait(f.stamp_ns, min(end, time.monotonic() + max(resend, 3 * slowest))):
                if time.monotonic() >= end:
                    break
                self._publish(f)
            with self._cond:
                if f.stamp_ns in self._answers:
                    slowest = max(slowest, self._answers[f.stamp_ns][0] - first)
        return self._results(frames, published)

    def play_rate(self, frames: Sequence[BagFrame], rate: float = 1.0, timeout: float = 30.0,
                  progress: Callable[[Iterable], Iterable] | None = None) -> list[FrameResult]:
        """Publish on the bag's clock scaled by `rate`, never waiting for answers.

        Afterwards it waits for the last frame's answer (at most `timeout` s); frames the
        graph dropped meanwhile are reported as unanswered, never waited for one by one.
        """
        if not rate > 0 or not math.isfinite(rate):
            raise BagError(f"--rate must be a positive number, got {rate}")
        published: dict[int, float] = {}
        t0 = time.monotonic()
        s0 = frames[0].stamp_ns if frames else 0
        for f in (progress(frames) if progress else frames):
            due = t0 + (f.stamp_ns - s0) / 1e9 / rate
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            published[f.stamp_ns] = self._publish(f)
        if frames:
            self._wait(frames[-1].stamp_ns, time.monotonic() + timeout)
            time.sleep(0.05)  # answers already in flight for earlier frames
        return self._results(frames, published)


class BagRecorder:
    """Writes topics of the live graph to a new bag as raw CDR, stamped with receive time.

    Topics are subscribed as soon as they appear in the graph (poll()); their type comes
    from the graph. Reliability is copied from the publishers, so nothing is refused.
    """

    def __init__(self, node: Node, out: str | Path, topics: Sequence[str], storage: str = "mcap") -> None:
        if storage not in STORAGES:
            raise BagError(f"unknown storage {storage!r}; use one of {sorted(STORAGES)}")
        out = Path(out)
        if out.exists():
            raise BagError(f"output {out} exists already; choose a new path (bags are never overwritten)")
        if not topics:
            raise BagError("no topics to record")
        self.node = node
        self.path = out
        self.topics = [node.resolve_topic_name(t) for t in topics]
        self.store = typestore()
        self.writer = Writer(out, version=Writer.VERSION_LATEST, storage_plugin=STORAGES[storage])
        self.writer.open()
        self.counts: dict[str, int] = {}
        self._conns: dict[str, object] = {}
        self._subs: list = []
        self._lock = threading.Lock()
        self._closed = False

    def poll(self) -> list[str]:
        """Subscribe to wanted topics that have appeared; returns those newly subscribed."""
        new = []
        types = dict(self.node.get_topic_names_and_types())
        for topic in self.topics:
            if topic in self._conns or topic not in types:
                continue
            msgtype = types[topic][0]
            if msgtype not in self.store.types:
                raise BagError(f"cannot record {topic}: type {msgtype} is unknown to the typestore")
            pubs = self.node.get_publishers_info_by_topic(topic)
            if not pubs:
                continue
            reliable = all(p.qos_profile.reliability == ReliabilityPolicy.RELIABLE for p in pubs)
            msg_cls = _import_type(msgtype)
            with self._lock:
                self._conns[topic] = self.writer.add_connection(topic, msgtype, typestore=self.store)
                self.counts[topic] = 0
            self._subs.append(self.node.create_subscription(
                msg_cls, topic, lambda raw, tp=topic: self._on_msg(tp, raw), _qos(reliable, 10), raw=True))
            new.append(topic)
        return new

    def _on_msg(self, topic: str, raw: bytes) -> None:
        t = self.node.get_clock().now().nanoseconds
        with self._lock:
            if self._closed:
                return
            self.writer.write(self._conns[topic], t, bytes(raw))
            self.counts[topic] += 1

    def close(self) -> dict[str, int]:
        """Finish the bag (metadata.yaml); returns messages per topic."""
        with self._lock:
            if self._closed:
                return dict(self.counts)
            self._closed = True
            for s in self._subs:
                self.node.destroy_subscription(s)
            self.writer.close()
        return dict(self.counts)


def _import_type(msgtype: str) -> type:
    pkg, _, name = msgtype.split("/")
    import importlib
    return getattr(importlib.import_module(f"{pkg}.msg"), name)


def rclpy_message(cdr: bytes, msg_cls: type):
    """An rclpy message from CDR bytes (rosbags and rclpy share the wire format)."""
    return deserialize_message(cdr, msg_cls)


