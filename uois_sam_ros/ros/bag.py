"""rosbag2 files without rosbag2: `rosbags` writes and reads them (apps/bag_player.py plays and records).

`ros2 bag` cannot be installed from PyPI (DESIGN.md section 4), yet the bags we write must
play with `ros2 bag play` elsewhere: a standard metadata.yaml, the message definitions and
type hashes of our own messages (registered here from msg/*.msg) and CDR payloads that are
byte-for-byte what rclpy would serialise. Playing publishes those bytes unchanged, and
recording writes the raw CDR an rclpy subscription receives, so nothing is re-encoded.
"""

from __future__ import annotations

import json
import os
import sqlite3
import struct
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
from rosbags.rosbag2 import Reader, StoragePlugin, Writer
from rosbags.typesys import Stores, get_types_from_msg, get_typestore
from rosbags.typesys.store import Typestore

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
    """CDR bytes of a sample's camera_info, with its distortion model and coefficients (zeros of the
    model's length when it has none), as ros/convert.py's intrinsics_to_camera_info writes it live."""
    k = sample.intrinsics
    ts = typestore().types
    model = getattr(k, "distortion_model", "") or "plumb_bob"
    coeffs = tuple(getattr(k, "distortion", ()) or ())
    zeros = {"plumb_bob": 5, "equidistant": 4, "rational_polynomial": 8}.get(model, 0)
    msg = ts[CAMERA_INFO](
        header=_header(stamp_ns, frame_id), height=int(k.height), width=int(k.width),
        distortion_model=model, d=np.asarray(coeffs if coeffs else [0.0] * zeros, np.float64),
        k=k.K.reshape(-1).astype(np.float64),
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

__all__ = [
    "BagError", "BagFrame", "BagInfo", "BagTopics",
    "bag_info", "image_from_cdr", "msg_dir", "open_reader", "read_frames", "read_messages",
    "typestore", "with_stamp", "write_samples",
]
