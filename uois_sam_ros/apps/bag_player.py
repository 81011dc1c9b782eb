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
    AMODAL_TOPIC,
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
    amodal_answered: float | None = None
    amodal_answer: object | None = None  # the instances/amodal InstanceArray with this frame's stamp

    @property
    def latency_s(self) -> float | None:
        if self.published is None or self.answered is None:
            return None
        return self.answered - self.published


class BagPlayer:
    """Publishes bag frames into a live graph and collects the /instances that answer them.

    Matching is by header stamp: every node carries the source colour stamp to its outputs.
    Publishers are reliable, which matches best-effort and reliable subscribers alike.
    When the graph publishes `amodal_topic` (the amodal node runs), its answers are collected
    the same way; amodal_topic '' or None never looks for it.
    """

    newest_sent_ns = 0  # the newest stamp any player of this process has put on the wire (restamp)

    def __init__(self, node: Node, topics: BagTopics = BagTopics(), instances_topic: str = INSTANCES_TOPIC,
                 output_type: type | None = None, amodal_topic: str | None = AMODAL_TOPIC) -> None:
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
        self.amodal_topic = amodal_topic or None
        self._amodal_sub = None
        self._amodal: dict[int, tuple[float, object]] = {}
        self.amodal_lockstep = True  # false after the warm-up frame got no amodal answer: collect only
        self.amodal_note = ""

    @property
    def has_amodal(self) -> bool:
        """True once the graph was seen publishing amodal_topic (and we subscribe to it)."""
        return self._amodal_sub is not None

    def _on_answer(self, msg, answers: dict | None = None) -> None:
        now = time.monotonic()
        t = int(msg.header.stamp.sec) * 1_000_000_000 + int(msg.header.stamp.nanosec) - self.offset_ns
        with self._cond:
            (self._answers if answers is None else answers).setdefault(t, (now, msg))
            self._cond.notify_all()

    def _subscribe(self, topic: str, callback: Callable, deadline: float):
        """A subscription to an output topic with its publishers' reliability, once connected."""
        name = self.node.resolve_topic_name(topic)
        pubs = self.node.get_publishers_info_by_topic(name)
        reliable = bool(pubs) and all(p.qos_profile.reliability == ReliabilityPolicy.RELIABLE for p in pubs)
        sub = self.node.create_subscription(self.output_type, topic, callback, _qos(reliable, 10))
        while sub.get_publisher_count() == 0:
            if time.monotonic() > deadline:
                self.node.destroy_subscription(sub)
                raise BagError(f"could not subscribe to {name}: incompatible QoS?")
            time.sleep(0.05)
        return sub

    def detect_amodal(self, grace: float = 0.0) -> bool:
        """Subscribe to amodal_topic if the graph publishes it (waiting up to `grace` s for discovery).

        Lockstep waits for amodal answers only when this found a publisher, so a graph without
        the amodal node costs nothing.
        """
        if self._amodal_sub is not None or self.amodal_topic is None:
            return self._amodal_sub is not None
        name = self.node.resolve_topic_name(self.amodal_topic)
        end = time.monotonic() + grace
        while not self.node.get_publishers_info_by_topic(name):
            if time.monotonic() >= end:
                return False
            time.sleep(0.05)
        try:
            self._amodal_sub = self._subscribe(self.amodal_topic, lambda m: self._on_answer(m, self._amodal),
                                               time.monotonic() + max(grace, 5.0))
        except BagError as e:  # the segmentation figures need not suffer from it
            self.amodal_note = str(e)
            self.amodal_topic = None
            return False
        return True

    def wait_for_graph(self, timeout: float = 20.0, amodal_grace: float = 1.0) -> None:
        """Wait until the graph subscribes to our inputs and publishes the output topic.

        The output subscription copies the publisher's reliability, so a best-effort and a
        reliable /instances both connect. Then the amodal topic is looked for (detect_amodal):
        its publisher may be discovered a little after /instances, hence amodal_grace.
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
            self._sub = self._subscribe(self.instances_topic, self._on_answer, deadline)
        self.detect_amodal(max(0.0, min(amodal_grace, deadline - time.monotonic())))

    def restamp(self, frames: Sequence[BagFrame], now_ns: int | None = None) -> None:
        """Shift all stamps so the bag starts 1 s after now (the warm-up frame goes at now).

        Nodes drop inputs not newer than what they already processed, so a bag replayed
        twice into a running graph would otherwise get no answers. Answers are matched
        back to bag frames through the same offset.
        """
        if frames:
            now_ns = time.time_ns() if now_ns is None else now_ns
            # Lockstep plays a bag as fast as the graph answers, so its stamps (restamped into the
            # future) can still be ahead of the clock when it ends. A bag played into the same
            # graph right after must start after them, or every node drops its frames as older
            # than what it already delivered.
            now_ns = max(now_ns, BagPlayer.newest_sent_ns + 1_000_000)
            self.offset_ns = now_ns + 1_000_000_000 - frames[0].stamp_ns

    @staticmethod
    def _sent(stamp_ns: int) -> None:
        BagPlayer.newest_sent_ns = max(BagPlayer.newest_sent_ns, int(stamp_ns))

    def warm_up(self, frame: BagFrame, timeout: float = 60.0) -> float:
        """Send one frame under a stamp 1 s before the bag until the graph answers it.

        Models load lazily and DDS may drop the very first best-effort images after
        discovery; neither should count as a dropped frame or a slow answer. Returns the
        seconds the first answer took.
        """
        t = frame.stamp_ns + self.offset_ns - 1_000_000_000
        msgs = [with_stamp(raw, t) for raw in (frame.info, frame.depth, frame.color)]

        def send() -> None:
            for pub, m in zip((self._pub_info, self._pub_depth, self._pub_color), msgs, strict=True):
                pub.publish(m)
            self._sent(t)
        t0 = time.monotonic()
        deadline = t0 + timeout
        send()
        if not self._await(t - self.offset_ns, send, deadline, 2.0, self._answers):
            raise BagError(f"the graph did not answer a warm-up frame on {self.instances_topic} within "
                           f"{timeout:.0f} s (is it the right graph? check its log)")
        took = time.monotonic() - t0
        # The amodal node loads lazily too, so its first answer is awaited here as well. Its
        # publisher may only now be discovered; then its answer to this stamp may have gone out
        # before we subscribed (nodes never answer a stamp twice), so a fresh stamp goes out.
        had = self.has_amodal
        if not self.detect_amodal():
            return took
        if not had:
            t += 1_000_000
            msgs = [with_stamp(raw, t) for raw in (frame.info, frame.depth, frame.color)]
            send()
        if not self._await(t - self.offset_ns, send, deadline, 2.0, self._amodal):
            self.amodal_lockstep = False
            self.amodal_note = (f"the graph did not answer the warm-up frame on {self.amodal_topic} within "
                                f"{timeout:.0f} s; its answers were collected, not waited for")
        return took

    def _await(self, stamp_ns: int, send: Callable[[], object], end: float, every: float,
               answers: dict[int, tuple[float, object]]) -> bool:
        """Wait for an answer until `end`, sending the frame again every `every` s without one
        (camera topics are best effort); a node that already processed it ignores the copy."""
        while not self._wait(stamp_ns, min(end, time.monotonic() + every), answers):
            if time.monotonic() >= end:
                return False
            send()
        return True

    def _publish(self, frame: BagFrame) -> float:
        def wire(raw: bytes) -> bytes:
            return with_stamp(raw, frame.stamp_ns + self.offset_ns) if self.offset_ns else raw
        self._pub_info.publish(wire(frame.info))
        self._pub_depth.publish(wire(frame.depth))
        now = time.monotonic()
        self._pub_color.publish(wire(frame.color))
        self._sent(frame.stamp_ns + self.offset_ns)
        return now

    def _wait(self, stamp_ns: int, until: float, answers: dict[int, tuple[float, object]] | None = None) -> bool:
        answers = self._answers if answers is None else answers
        with self._cond:
            while stamp_ns not in answers:
                left = until - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.1))
            return True

    def _results(self, frames: Sequence[BagFrame], published: dict[int, float]) -> list[FrameResult]:
        with self._cond:
            answers, amodal = dict(self._answers), dict(self._amodal)
        out = []
        for f in frames:
            r = FrameResult(f.stamp_ns, f.name, published.get(f.stamp_ns))
            if f.stamp_ns in answers and r.published is not None:
                r.answered, r.answer = answers[f.stamp_ns]
            if f.stamp_ns in amodal and r.published is not None:
                r.amodal_answered, r.amodal_answer = amodal[f.stamp_ns]
            out.append(r)
        return out

    def play_lockstep(self, frames: Sequence[BagFrame], timeout: float = 60.0, resend: float = 5.0,
                      progress: Callable[[Iterable], Iterable] | None = None) -> list[FrameResult]:
        """One frame at a time: publish, wait for its answer (or `timeout`), then the next.

        Camera topics are best effort, so a frame lost in transport is sent again (same
        stamp, same bytes) after max(resend, 3 x the slowest answer so far) without an
        answer; latency still counts from the first send. When the graph has the amodal
        node, the frame's instances/amodal answer is awaited too (same deadline), so the
        amodal figures do not depend on timing either.
        """
        published: dict[int, float] = {}
        slowest = slowest_amodal = 0.0
        for f in (progress(frames) if progress else frames):
            first = published[f.stamp_ns] = self._publish(f)
            end = first + timeout
            if self._await(f.stamp_ns, lambda f=f: self._publish(f), end, max(resend, 3 * slowest), self._answers):
                slowest = max(slowest, self._answers[f.stamp_ns][0] - first)
                if self.has_amodal and self.amodal_lockstep and self._await(
                        f.stamp_ns, lambda f=f: self._publish(f), end, max(resend, 3 * slowest_amodal), self._amodal):
                    slowest_amodal = max(slowest_amodal, self._amodal[f.stamp_ns][0] - first)
        return self._results(frames, published)

    def play_rate(self, frames: Sequence[BagFrame], rate: float = 1.0, timeout: float = 30.0,
                  progress: Callable[[Iterable], Iterable] | None = None) -> list[FrameResult]:
        """Publish on the bag's clock scaled by `rate`, never waiting for answers.

        Afterwards it waits for the last frame's answer (at most `timeout` s); frames the
        graph dropped meanwhile are reported as unanswered, never waited for one by one.
        Amodal answers are collected as they arrive (the last frame's within the same wait).
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
            end = time.monotonic() + timeout
            if self._wait(frames[-1].stamp_ns, end) and self.has_amodal:
                self._wait(frames[-1].stamp_ns, end, self._amodal)
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


