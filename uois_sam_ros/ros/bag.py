"""rosbag2 files without rosbag2: `rosbags` writes and reads them (apps/bag_player.py plays and records).

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
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
from rosbags.rosbag2 import Reader, StoragePlugin, Writer
from rosbags.typesys import Stores, get_types_from_msg, get_typestore
from rosbags.typesys.store import Typestore

from uois_sam_ros.core.types import Sample
from uois_sam_ros.ros.image import decode_pixels, encode_pixels, paste_crop

PACKAGE = "uois_sam_ros"
COLOR_TOPIC = "/camera/color/image_raw"
DEPTH_TOPIC = "/camera/aligned_depth_to_color/image_raw"
INFO_TOPIC = "/camera/color/camera_info"
GT_TOPIC = "/ground_truth/label"
GT_AMODAL_TOPIC = "/ground_truth/amodal"
INSTANCES_TOPIC = "/instances"
AMODAL_TOPIC = "/instances/amodal"  # the amodal node's output (nodes/amodal.py), relative to its namespace
FRAMES_KEY = "uois_sam_ros.frames"  # custom_data: JSON [[stamp_ns, name], ...]
DATASET_KEY = "uois_sam_ros.dataset"  # custom_data: the dataset kind the bag was made from
IMAGE = "sensor_msgs/msg/Image"
CAMERA_INFO = "sensor_msgs/msg/CameraInfo"
INSTANCE_ARRAY = "uois_sam_ros/msg/InstanceArray"
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
    gt_amodal: str = GT_AMODAL_TOPIC  # InstanceArray of GT amodal masks; optional in a bag


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


def _image_msg(array_: np.ndarray, encoding: str, stamp_ns: int, frame_id: str):
    """A rosbags sensor_msgs/Image holding `array_` (also nested in our InstanceArray)."""
    data, step = encode_pixels(array_, encoding)
    return typestore().types[IMAGE](
        header=_header(stamp_ns, frame_id), height=int(array_.shape[0]), width=int(array_.shape[1]),
        encoding=encoding, is_bigendian=0, step=int(step), data=np.frombuffer(data, np.uint8))


def image_cdr(array_: np.ndarray, encoding: str, stamp_ns: int, frame_id: str) -> bytes:
    """CDR bytes of a sensor_msgs/Image holding `array_`."""
    return bytes(typestore().serialize_cdr(_image_msg(array_, encoding, stamp_ns, frame_id), IMAGE))


def _tight_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """x0, y0, x1, y1 (exclusive) of a mask; all zero when empty (as ros/convert.py crops)."""
    ys = np.flatnonzero(mask.any(axis=1))
    xs = np.flatnonzero(mask.any(axis=0))
    if not len(ys):
        return 0, 0, 0, 0
    return int(xs[0]), int(ys[0]), int(xs[-1]) + 1, int(ys[-1]) + 1


def _crop(mask: np.ndarray, stamp_ns: int, frame_id: str):
    """(RegionOfInterest, mono8 Image) of a mask's tight box, 255 = object, like instances_to_msg."""
    x0, y0, x1, y1 = _tight_box(mask)
    roi = typestore().types["sensor_msgs/msg/RegionOfInterest"](
        x_offset=x0, y_offset=y0, height=y1 - y0, width=x1 - x0, do_rectify=False)
    crop = np.where(mask[y0:y1, x0:x1], np.uint8(255), np.uint8(0)).astype(np.uint8)
    return roi, _image_msg(crop, "mono8", stamp_ns, frame_id)


def amodal_gt_cdr(label: np.ndarray, amodal: np.ndarray, ids: np.ndarray, stamp_ns: int, frame_id: str) -> bytes:
    """CDR bytes of an InstanceArray holding a frame's amodal GT, in the shape the amodal node publishes.

    One Instance per GT object: id = its visible label id, mask/roi = its visible mask (label == id),
    amodal_mask/amodal_roi = its amodal mask, score 1; label_map = the GT label. Using the graph's own
    message type lets `ros2 bag play` show the GT next to instances/amodal in the same tools.
    """
    ts = typestore().types
    lab = np.asarray(label)
    h, w = lab.shape
    items = []
    for k, i in enumerate(np.asarray(ids).reshape(-1)):
        vis = lab == i
        am = np.asarray(amodal[k], bool)
        roi, mask = _crop(vis, stamp_ns, frame_id)
        a_roi, a_mask = _crop(am, stamp_ns, frame_id)
        area, a_area = int(vis.sum()), int(am.sum())
        rate = float(np.clip(1.0 - area / a_area, 0.0, 1.0)) if a_area else math.nan
        items.append(ts[f"{PACKAGE}/msg/Instance"](
            id=int(i), score=1.0, sam_iou=math.nan, prompt_x=math.nan, prompt_y=math.nan, area=area,
            roi=roi, mask=mask, has_amodal=True, amodal_roi=a_roi, amodal_mask=a_mask,
            occlusion_rate=float(np.float32(rate))))
    msg = ts[INSTANCE_ARRAY](header=_header(stamp_ns, frame_id), height=int(h), width=int(w), instances=items,
                             label_map=_image_msg(lab.astype(np.uint16), "mono16", stamp_ns, frame_id))
    return bytes(typestore().serialize_cdr(msg, INSTANCE_ARRAY))


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


def _amodal_gt(s: Sample, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray] | None:
    """(amodal (N, H, W) bool, ids (N,)) of a sample, checked, or None when it has no amodal GT."""
    if s.amodal is None and s.amodal_ids is None:
        return None
    if s.amodal is None or s.amodal_ids is None:
        raise BagError(f"{s.name}: sample has amodal masks without amodal_ids or the reverse; need both")
    am = np.asarray(s.amodal).astype(bool, copy=False)
    ids = np.asarray(s.amodal_ids).reshape(-1)
    if am.ndim != 3 or am.shape[1:] != shape:
        raise BagError(f"{s.name}: amodal masks must be (N, {shape[0]}, {shape[1]}) like the colour image, "
                       f"got {am.shape}")
    if len(ids) != len(am):
        raise BagError(f"{s.name}: {len(am)} amodal masks but {len(ids)} amodal_ids")
    if len(ids) and (ids.min() < 1 or ids.max() > 65535 or len(set(ids.tolist())) != len(ids)):
        raise BagError(f"{s.name}: amodal_ids must be distinct label ids in 1..65535, got {ids.tolist()}")
    return am, ids


def write_samples(path: str | Path, samples: Iterable[Sample], *, storage: str = "mcap",
                  fps: float = 10.0, start_ns: int = 1_700_000_000 * 1_000_000_000,
                  frame_id: str = "camera_color_optical_frame", topics: BagTopics = BagTopics(),
                  progress: Callable[[Iterable], Iterable] | None = None, dataset: str = "") -> int:
    """Write samples as colour + aligned depth + camera_info + GT label, all with one stamp per frame.

    Samples with amodal GT (Sample.amodal / amodal_ids) also get an InstanceArray on
    topics.gt_amodal under the same stamp (amodal_gt_cdr); samples without write nothing there.
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
            label = _label_u16(s.label, s.name)
            writer.write(conns["gt"], t, image_cdr(label, "mono16", t, frame_id))
            amodal = _amodal_gt(s, rgb.shape[:2])
            if amodal is not None:
                if "gt_amodal" not in conns:  # only bags made from sets with amodal GT have the topic
                    conns["gt_amodal"] = writer.add_connection(topics.gt_amodal, INSTANCE_ARRAY, typestore=store)
                writer.write(conns["gt_amodal"], t, amodal_gt_cdr(label, amodal[0], amodal[1], t, frame_id))
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
    amodal: np.ndarray | None = None  # (N, H, W) bool GT amodal masks; None when the bag has none for it
    amodal_ids: np.ndarray | None = None  # (N,) the visible label id of each amodal mask


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
    has_amodal = need_gt and topics.gt_amodal in info.topics
    if has_amodal:
        _require(info, topics.gt_amodal, INSTANCE_ARRAY, "amodal ground-truth")
    wanted = ([topics.color, topics.depth, topics.info] + ([topics.gt] if need_gt else [])
              + ([topics.gt_amodal] if has_amodal else []))
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
        _gt_stamps_in(g_by, c_by, "ground-truth label", topics.gt, path)
        labels = {t: image_from_cdr(raw) for t, raw in g_by.items()}
        missing = sorted(set(c_by) - set(g_by))
        if missing:
            raise BagError(f"bag {path}: {len(missing)} colour frames have no ground-truth label "
                           f"(first: {_sec(missing[0])} s)")
    amodal: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    if has_amodal:
        a_by = _by_stamp(msgs[topics.gt_amodal], INSTANCE_ARRAY, topics.gt_amodal, path)
        _gt_stamps_in(a_by, c_by, "amodal ground-truth", topics.gt_amodal, path)
        amodal = {t: _amodal_from_cdr(raw, labels[t].shape, f"bag {path}: {topics.gt_amodal} at {_sec(t)} s")
                  for t, raw in a_by.items()}
    frames = []
    for t in sorted(c_by):
        cam = next((raw for ts, raw in reversed(infos) if ts <= t), infos[0][1])
        am, ids = amodal.get(t, (None, None))
        frames.append(BagFrame(t, info.frame_names.get(t, _sec(t)), c_by[t], d_by[t], cam, labels.get(t), am, ids))
    return frames


def _mask_from(roi, img, height: int, width: int, what: str) -> np.ndarray:
    """Full-size bool mask from an roi crop (mono8); BagError names the instance field."""
    try:
        crop = decode_pixels(np.asarray(img.data), int(img.height), int(img.width), img.encoding, int(img.step),
                             bool(img.is_bigendian))
    except Exception as e:
        raise BagError(f"{what}: {e}") from None
    if img.encoding != "mono8" or crop.shape != (roi.height, roi.width):
        raise BagError(f"{what}: mask is {img.encoding} {crop.shape[1]}x{crop.shape[0]}, expected mono8 "
                       f"{roi.width}x{roi.height} (its roi)")
    return paste_crop(crop, roi.x_offset, roi.y_offset, height, width, what, BagError)


def _amodal_from_cdr(cdr: bytes, shape: tuple[int, int], where: str) -> tuple[np.ndarray, np.ndarray]:
    """(amodal (N, H, W) bool, ids (N,)) of one amodal GT InstanceArray (amodal_gt_cdr's inverse)."""
    msg = typestore().deserialize_cdr(cdr, INSTANCE_ARRAY)
    h, w = int(msg.height), int(msg.width)
    if (h, w) != tuple(shape):
        raise BagError(f"{where}: amodal GT is {w}x{h}, the ground-truth label {shape[1]}x{shape[0]}")
    masks, ids = [], []
    for it in msg.instances:
        if not it.has_amodal:
            raise BagError(f"{where}: instance {it.id} has no amodal mask (has_amodal false)")
        masks.append(_mask_from(it.amodal_roi, it.amodal_mask, h, w, f"{where}: instance {it.id} amodal_mask"))
        ids.append(int(it.id))
    am = np.stack(masks) if masks else np.zeros((0, h, w), bool)
    return am, np.asarray(ids, np.int64)


def _gt_stamps_in(gt_by: dict[int, bytes], color_by: dict[int, bytes], what: str, topic: str, path: Path) -> None:
    """Ground truth is matched to frames by stamp: one that matches no colour frame is an error."""
    bad = sorted(set(gt_by) - set(color_by))
    if bad:
        raise BagError(f"bag {path}: {len(bad)} {what} stamps on {topic} match no colour stamp "
                       f"(first: {_sec(bad[0])} s); GT must carry its colour frame's stamp")


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
    "amodal_gt_cdr", "bag_info", "image_from_cdr", "msg_dir", "open_reader", "read_frames", "read_messages",
    "typestore", "with_stamp", "write_samples",
]
