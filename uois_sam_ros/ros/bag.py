"""rosbag2 files without rosbag2: `rosbags` writes and reads them, rclpy plays and records.

`ros2 bag` cannot be installed from PyPI (DESIGN.md section 4), yet the bags we write must
play with `ros2 bag play` elsewhere: a standard metadata.yaml, the message definitions and
type hashes of our own messages (registered here from msg/*.msg) and CDR payloads that are
byte-for-byte what rclpy would serialise. Playing publishes those bytes unchanged, and
recording writes the raw CDR an rclpy subscription receives, so nothing is re-encoded.
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
import struct
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.serialization import deserialize_message
from rosbags.rosbag2 import Reader, StoragePlugin, Writer
from rosbags.typesys import Stores, get_types_from_msg, get_typestore
from rosbags.typesys.store import Typestore
from sensor_msgs.msg import CameraInfo, Image

from uois_sam_ros.core.types import Sample
from uois_sam_ros.ros.image import decode_pixels, encode_pixels

PACKAGE = "uois_sam_ros"
COLOR_TOPIC = "/camera/color/image_raw"
DEPTH_TOPIC = "/camera/aligned_depth_to_color/image_raw"
INFO_TOPIC = "/camera/color/camera_info"
GT_TOPIC = "/ground_truth/label"
INSTANCES_TOPIC = "/instances"
FRAMES_KEY = "uois_sam_ros.frames"  # custom_data: JSON [[stamp_ns, name], ...]
DATASET_KEY = "uois_sam_ros.dataset"  # custom_data: the dataset kind the bag was made from
IMAGE = "sensor_msgs/msg/Image"
CAMERA_INFO = "sensor_msgs/msg/CameraInfo"
STORAGES = {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}


class BagError(ValueError):
    """A bag that cannot be written, read or replayed; the message says why."""


@dataclass(frozen=True)
class BagTopics:
    """Topic names inside a bag (realsense2_camera names by default)."""

    color: str = COLOR_TOPIC
    depth: str = DEPTH_TOPIC
    info: str = INFO_TOPIC
    gt: str = GT_TOPIC


# ---------------------------------------------------------------- typestore


def msg_dir() -> Path:
    """Where our .msg files are: the source tree, else the ament share directory."""
    candidates = [Path(__file__).resolve().parents[2] / "msg"]
    for prefix in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep):
        if prefix:
            candidates.append(Path(prefix) / "share" / PACKAGE / "msg")
    candidates.append(Path(sys.prefix) / "share" / PACKAGE / "msg")
    for c in candidates:
        if (c / "InstanceArray.msg").is_file():
            return c
    raise BagError(f"cannot find {PACKAGE} message definitions (InstanceArray.msg) in any of "
                   f"{[str(c) for c in candidates]}")


@lru_cache(maxsize=1)
def typestore() -> Typestore:
    """The kilted typestore with uois_sam_ros/msg/* registered from their .msg text."""
    store = get_typestore(Stores.ROS2_KILTED)
    types: dict = {}
    for path in sorted(msg_dir().glob("*.msg")):
        types.update(get_types_from_msg(path.read_text(), f"{PACKAGE}/msg/{path.stem}"))
    store.register(types)
    return store


def _header(stamp_ns: int, frame_id: str):
    ts = typestore().types
    sec, nsec = divmod(int(stamp_ns), 1_000_000_000)
    return ts["std_msgs/msg/Header"](stamp=ts["builtin_interfaces/msg/Time"](sec=sec, nanosec=nsec),
                                     frame_id=frame_id)


def image_cdr(array_: np.ndarray, encoding: str, stamp_ns: int, frame_id: str) -> bytes:
    """CDR bytes of a sensor_msgs/Image holding `array_`."""
    data, step = encode_pixels(array_, encoding)
    msg = typestore().types[IMAGE](
        header=_header(stamp_ns, frame_id), height=int(array_.shape[0]), width=int(array_.shape[1]),
        encoding=encoding, is_bigendian=0, step=int(step), data=np.frombuffer(data, np.uint8))
    return bytes(typestore().serialize_cdr(msg, IMAGE))


def camera_info_cdr(sample: Sample, stamp_ns: int, frame_id: str) -> bytes:
    """CDR bytes of the plumb_bob, zero-distortion camera_info of a sample's intrinsics."""
    k = sample.intrinsics
    ts = typestore().types
    msg = ts[CAMERA_INFO](
        header=_header(stamp_ns, frame_id), height=int(k.height), width=int(k.width),
        distortion_model="plumb_bob", d=np.zeros(5), k=k.K.reshape(-1).astype(np.float64),
        r=np.eye(3).reshape(-1),
        p=np.array([k.fx, 0.0, k.cx, 0.0, 0.0, k.fy, k.cy, 0.0, 0.0, 0.0, 1.0, 0.0]),
        binning_x=0, binning_y=0,
        roi=ts["sensor_msgs/msg/RegionOfInterest"](x_offset=0, y_offset=0, height=0, width=0, do_rectify=False))
    return bytes(typestore().serialize_cdr(msg, CAMERA_INFO))


def stamp_of(cdr: bytes, msgtype: str) -> int:
    """Header stamp in nanoseconds of a serialised stamped message."""
    msg = typestore().deserialize_cdr(cdr, msgtype)
    return int(msg.header.stamp.sec) * 1_000_000_000 + int(msg.header.stamp.nanosec)


def image_from_cdr(cdr: bytes) -> np.ndarray:
    msg = typestore().deserialize_cdr(cdr, IMAGE)
    return decode_pixels(np.asarray(msg.data), int(msg.height), int(msg.width), msg.encoding,
                         int(msg.step), bool(msg.is_bigendian))


# ---------------------------------------------------------------- writing


def _depth_mm(depth: np.ndarray, name: str) -> np.ndarray:
    d = np.asarray(depth, dtype=np.float64)
    mm = np.where(np.isfinite(d) & (d > 0), np.round(d * 1000.0), 0.0)
    if mm.max(initial=0) > 65535:
        raise BagError(f"{name}: depth {mm.max() / 1000:.1f} m does not fit 16UC1 millimetres")
    return mm.astype(np.uint16)


def _label_u16(label: np.ndarray, name: str) -> np.ndarray:
    lab = np.asarray(label)
    if lab.ndim != 2:
        raise BagError(f"{name}: ground-truth label must be (H, W), got shape {lab.shape}")
    if lab.size and (lab.min() < 0 or lab.max() > 65535):
        raise BagError(f"{name}: label ids must be in 0..65535 for mono16, got {lab.min()}..{lab.max()}")
    return lab.astype(np.uint16)


def write_samples(path: str | Path, samples: Iterable[Sample], *, storage: str = "mcap",
                  fps: float = 10.0, start_ns: int = 1_700_000_000 * 1_000_000_000,
                  frame_id: str = "camera_color_optical_frame", topics: BagTopics = BagTopics(),
                  progress: Callable[[Iterable], Iterable] | None = None, dataset: str = "") -> int:
    """Write samples as colour + aligned depth + camera_info + GT label, all with one stamp per frame.

    Stamps are start_ns + i / fps, so a bag is reproducible and the bag time runs at fps.
    Returns the number of frames written; the partial bag is removed on error.
    """
    path = Path(path)
    if storage not in STORAGES:
        raise BagError(f"unknown storage {storage!r}; use one of {sorted(STORAGES)}")
    if path.exists():
        raise BagError(f"output {path} exists already; choose a new path (bags are never overwritten)")
    if fps <= 0:
        raise BagError(f"fps must be > 0, got {fps}")
    store = typestore()
    writer = Writer(path, version=Writer.VERSION_LATEST, storage_plugin=STORAGES[storage])
    writer.open()
    names: list[list] = []
    try:
        conns = {
            "color": writer.add_connection(topics.color, IMAGE, typestore=store),
            "depth": writer.add_connection(topics.depth, IMAGE, typestore=store),
            "info": writer.add_connection(topics.info, CAMERA_INFO, typestore=store),
            "gt": writer.add_connection(topics.gt, IMAGE, typestore=store),
        }
        it = progress(samples) if progress else samples
        for i, s in enumerate(it):
            t = int(start_ns + round(i * 1e9 / fps))
            if s.depth is None:
                raise BagError(f"{s.name}: sample has no depth; the graph needs aligned depth")
            if s.intrinsics is None:
                raise BagError(f"{s.name}: sample has no intrinsics; give --intrinsics or --camera")
            if s.label is None:
                raise BagError(f"{s.name}: sample has no ground-truth label")
            rgb = np.asarray(s.rgb)
            if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
                raise BagError(f"{s.name}: rgb must be (H, W, 3) uint8, got {rgb.shape} {rgb.dtype}")
            for what, arr in (("depth", s.depth), ("label", s.label)):
                if np.asarray(arr).shape != rgb.shape[:2]:
                    raise BagError(f"{s.name}: {what} size {np.asarray(arr).shape} does not match colour "
                                   f"size {rgb.shape[:2]}")
            writer.write(conns["info"], t, camera_info_cdr(s, t, frame_id))
            writer.write(conns["depth"], t, image_cdr(_depth_mm(s.depth, s.name), "16UC1", t, frame_id))
            writer.write(conns["color"], t, image_cdr(rgb, "rgb8", t, frame_id))
            writer.write(conns["gt"], t, image_cdr(_label_u16(s.label, s.name), "mono16", t, frame_id))
            names.append([t, s.name])
        if not names:
            raise BagError("the dataset yielded no frames; nothing to write")
        writer.set_custom_data(FRAMES_KEY, json.dumps(names))
        if dataset:
            writer.set_custom_data(DATASET_KEY, dataset)
        writer.close()
    except BaseException:
        writer.abort()
        _remove_tree(path)
        raise
    return len(names)


def _remove_tree(path: Path) -> None:
    if path.is_dir():
        for p in path.iterdir():
            p.unlink()
        path.rmdir()


# ---------------------------------------------------------------- reading


def _storage_files(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.suffix in (".mcap", ".db3"))


def open_reader(path: str | Path) -> Reader:
    """An opened rosbags Reader, or BagError naming what is wrong with the bag."""
    path = Path(path)
    if not path.exists():
        raise BagError(f"bag not found: {path}")
    if not path.is_dir():
        raise BagError(f"{path} is a file; give the bag directory (the one with metadata.yaml)")
    if not (path / "metadata.yaml").is_file():
        raise BagError(f"{path} has no metadata.yaml; it is not a rosbag2 directory")
    try:
        reader = Reader(path)
        reader.open()
    except Exception as e:  # rosbags, sqlite3 and mcap all raise their own types
        raise BagError(f"cannot read bag {path}: {_corrupt_hint(e)}") from None
    return reader


def _corrupt_hint(e: Exception) -> str:
    text = str(e) or type(e).__name__
    if isinstance(e, sqlite3.DatabaseError | EOFError) or any(
            w in text.lower() for w in ("malformed", "truncat", "magic", "unexpected end", "not a database",
                                        "invalid", "short")):
        return f"the storage file is truncated or corrupt ({type(e).__name__}: {text})"
    return f"{type(e).__name__}: {text}"


def read_messages(path: str | Path, topics: Sequence[str] | None = None) -> dict[str, list[tuple[int, bytes]]]:
    """All (bag time ns, CDR bytes) per topic; checks the counts against metadata.yaml.

    A storage file that is shorter than its metadata says (a copy cut off, a recorder
    killed) gives BagError instead of a silently short evaluation.
    """
    path = Path(path)
    reader = open_reader(path)
    try:
        conns = [c for c in reader.connections if topics is None or c.topic in topics]
        out: dict[str, list[tuple[int, bytes]]] = {c.topic: [] for c in conns}
        try:
            for conn, t, raw in reader.messages(connections=conns):
                out[conn.topic].append((int(t), bytes(raw)))
        except Exception as e:
            raise BagError(f"cannot read bag {path}: {_corrupt_hint(e)}") from None
        expected: dict[str, int] = {}
        for c in conns:
            expected[c.topic] = expected.get(c.topic, 0) + int(c.msgcount)
        for topic, n in expected.items():
            if len(out[topic]) != n:
                raise BagError(f"cannot read bag {path}: the storage file is truncated or corrupt "
                               f"({topic}: metadata.yaml lists {n} messages, the file holds {len(out[topic])})")
        return out
    finally:
        reader.close()


@dataclass
class BagInfo:
    path: Path
    storage: str
    topics: dict[str, tuple[str, int]]  # name -> (type, count)
    start_ns: int
    duration_ns: int
    message_count: int
    frame_names: dict[int, str] = field(default_factory=dict)
    dataset: str = ""  # the dataset kind written by from-dataset ('' when unknown)


def bag_info(path: str | Path) -> BagInfo:
    path = Path(path)
    reader = open_reader(path)
    try:
        topics: dict[str, tuple[str, int]] = {}
        for c in reader.connections:
            t, n = topics.get(c.topic, (c.msgtype, 0))
            topics[c.topic] = (t, n + int(c.msgcount))
        names: dict[int, str] = {}
        metadata = getattr(reader.storage, "metadata", None)
        custom = (getattr(metadata, "custom", None) or {}) if metadata else {}
        raw = custom.get(FRAMES_KEY)
        if raw:
            try:
                names = {int(t): str(n) for t, n in json.loads(raw)}
            except (ValueError, TypeError):
                names = {}
        files = _storage_files(path)
        storage = "mcap" if files and files[0].suffix == ".mcap" else "sqlite3"
        n = reader.message_count
        return BagInfo(path, storage, topics, reader.start_time if n else 0,
                       reader.duration if n else 0, n, names, str(custom.get(DATASET_KEY, "")))
    finally:
        reader.close()


@dataclass
class BagFrame:
    """One replayable frame: the raw CDR of its inputs and its ground truth."""

    stamp_ns: int
    name: str
    color: bytes
    depth: bytes
    info: bytes
    label: np.ndarray | None


def _require(info: BagInfo, topic: str, msgtype: str, what: str) -> None:
    if topic not in info.topics:
        have = ", ".join(f"{t} ({ty}, {n})" for t, (ty, n) in sorted(info.topics.items())) or "no topics"
        raise BagError(f"bag {info.path} has no {what} topic {topic}; it has: {have}")
    if info.topics[topic][0] != msgtype:
        raise BagError(f"bag {info.path}: topic {topic} is {info.topics[topic][0]}, expected {msgtype}")


def read_frames(path: str | Path, topics: BagTopics = BagTopics(), need_gt: bool = True) -> list[BagFrame]:
    """The frames of an evaluation bag, paired by header stamp, in stamp order."""
    path = Path(path)
    info = bag_info(path)
    _require(info, topics.color, IMAGE, "colour")
    _require(info, topics.depth, IMAGE, "depth")
    _require(info, topics.info, CAMERA_INFO, "camera_info")
    if need_gt:
        _require(info, topics.gt, IMAGE, "ground-truth label")
    wanted = [topics.color, topics.depth, topics.info] + ([topics.gt] if need_gt else [])
    msgs = read_messages(path, wanted)
    color = msgs[topics.color]
    depth = msgs[topics.depth]
    if not color:
        raise BagError(f"bag {path}: topic {topics.color} has no messages")
    if len(depth) != len(color):
        raise BagError(f"bag {path}: depth/colour count mismatch: {len(color)} colour messages on "
                       f"{topics.color} but {len(depth)} depth messages on {topics.depth}")
    c_by = _by_stamp(color, IMAGE, topics.color, path)
    d_by = _by_stamp(depth, IMAGE, topics.depth, path)
    if set(d_by) != set(c_by):
        bad = sorted(set(d_by) - set(c_by))
        raise BagError(f"bag {path}: {len(bad)} depth stamps on {topics.depth} match no colour stamp "
                       f"(first: {_sec(bad[0]) if bad else '?'} s); depth must be aligned to colour")
    infos = sorted(_by_stamp(msgs[topics.info], CAMERA_INFO, topics.info, path).items())
    if not infos:
        raise BagError(f"bag {path}: topic {topics.info} has no messages; the graph needs intrinsics")
    labels: dict[int, np.ndarray] = {}
    if need_gt:
        g_by = _by_stamp(msgs[topics.gt], IMAGE, topics.gt, path)
        bad = sorted(set(g_by) - set(c_by))
        if bad:
            raise BagError(f"bag {path}: {len(bad)} ground-truth label stamps on {topics.gt} match no colour "
                           f"stamp (first: {_sec(bad[0])} s); GT must carry its colour frame's stamp")
        labels = {t: image_from_cdr(raw) for t, raw in g_by.items()}
        missing = sorted(set(c_by) - set(g_by))
        if missing:
            raise BagError(f"bag {path}: {len(missing)} colour frames have no ground-truth label "
                           f"(first: {_sec(missing[0])} s)")
    frames = []
    for t in sorted(c_by):
        cam = next((raw for ts, raw in reversed(infos) if ts <= t), infos[0][1])
        frames.append(BagFrame(t, info.frame_names.get(t, _sec(t)), c_by[t], d_by[t], cam, labels.get(t)))
    return frames


def _sec(t_ns: int) -> str:
    return f"{t_ns / 1e9:.9f}"


def _by_stamp(items: list[tuple[int, bytes]], msgtype: str, topic: str, path: Path) -> dict[int, bytes]:
    out: dict[int, bytes] = {}
    for _, raw in items:
        try:
            t = stamp_of(raw, msgtype)
        except Exception as e:
            raise BagError(f"bag {path}: a message on {topic} cannot be decoded as {msgtype}: {e}") from None
        if t in out:
            raise BagError(f"bag {path}: two messages on {topic} have the same stamp {_sec(t)} s")
        out[t] = raw
    return out


# ---------------------------------------------------------------- rclpy: play and record


def with_stamp(cdr: bytes, stamp_ns: int) -> bytes:
    """The same serialised stamped message with header.stamp replaced, bytes otherwise untouched.

    std_msgs/Header comes first in every stamped message, so its stamp is the first 8 bytes
    after the 4-byte encapsulation header (int32 sec, uint32 nanosec).
    """
    if len(cdr) < 12 or cdr[0] != 0 or cdr[1] not in (0, 1):
        raise BagError("not a CDR-encoded message (bad encapsulation header)")
    sec, nsec = divmod(int(stamp_ns), 1_000_000_000)
    out = bytearray(cdr)
    struct.pack_into("<iI" if cdr[1] == 1 else ">iI", out, 4, sec, nsec)
    return bytes(out)


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


__all__ = [
    "BagError", "BagFrame", "BagInfo", "BagPlayer", "BagRecorder", "BagTopics", "FrameResult",
    "bag_info", "image_from_cdr", "msg_dir", "open_reader", "read_frames", "read_messages",
    "typestore", "write_samples",
]
