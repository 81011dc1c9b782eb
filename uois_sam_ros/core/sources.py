"""Frame sources behind the camera node: RealSense, a folder of images, a dataset, synthetic scenes.

ROS-free so the demo and the benchmarks read frames the same way the camera node does.
Every source yields core ``Sample`` objects (ground truth attached where the source has it).
``read()`` returns None when no frame is available right now (a RealSense reconnecting) and
raises ``EndOfSource`` when a finite source is exhausted.

pyrealsense2 is never imported here at module level: it bundles its own Fast DDS, and a
process that loads it before ROS 2's segfaults at exit. ``RealSenseSource`` takes the module
as an argument; ROS processes get it from ``uois_sam_ros.ros.sources.import_pyrealsense2``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

import cv2
import numpy as np

from uois_sam_ros.core.types import Intrinsics, Sample

SOURCE_KINDS = ("synthetic", "folder", "dataset", "realsense")


class SourceError(RuntimeError):
    """A source that cannot be opened or read; the message says why."""


class EndOfSource(Exception):  # noqa: N818 - a signal like StopIteration, not a failure
    """A finite source has no more frames."""


class FrameSource(Protocol):
    name: str

    def read(self) -> Sample | None: ...

    def close(self) -> None: ...


# --------------------------------------------------------------------------- synthetic
class SyntheticSource:
    """Deterministic synthetic tabletop scenes (seed, seed+1, ...), with ground-truth labels."""

    name = "synthetic"

    def __init__(self, seed: int = 0, count: int = 0, width: int = 0, height: int = 0) -> None:
        from uois_sam_ros.core import synthetic  # lazy: pulls in the scene generator only when used

        self._synthetic = synthetic
        self.seed, self.count, self.width, self.height = int(seed), int(count), int(width), int(height)
        if (self.width > 0) != (self.height > 0):
            raise SourceError(f"synthetic size needs both width and height, got {width}x{height}")
        self.index = 0

    def scene_sample(self, index: int) -> Sample:
        cfg = None
        if self.width > 0:
            cfg = self._synthetic.SceneConfig(width=self.width, height=self.height)
        sample = self._synthetic.generate_scene(self.seed + index, cfg).sample()
        sample.name = f"synthetic_{self.seed + index:06d}"
        return sample

    def read(self) -> Sample:
        if self.count > 0 and self.index >= self.count:
            raise EndOfSource(f"synthetic source: all {self.count} scenes published")
        sample = self.scene_sample(self.index)
        self.index += 1
        return sample

    def close(self) -> None:
        pass


# --------------------------------------------------------------------------- folder
_COLOR_TOKENS = ("rgb-img", "color", "colour", "rgb")
_IMAGE_EXTS = (".png", ".jpg", ".jpeg")


def _depth_partner(path: Path) -> Path | None:
    """0001-color.png -> 0001-depth.png; 000080-opaque-rgb-img.jpg -> 000080-opaque-depth.png."""
    stem = path.stem
    for tok in _COLOR_TOKENS:
        idx = stem.lower().rfind(tok)
        if idx >= 0:
            base = stem[:idx] + "depth" + stem[idx + len(tok):]
            for ext in (".png", ".tif", ".tiff"):
                cand = path.with_name(base + ext)
                if cand.is_file():
                    return cand
            return None
    return None


class FolderSource:
    """A folder of NNNN-color.png + NNNN-depth.png (uint16) pairs and a camera.json.

    camera.json holds the intrinsics (fx, fy, cx, cy, width, height) and optionally
    depth_unit_m (default 0.001, i.e. millimetres).
    """

    name = "folder"

    def __init__(self, root: str | Path, loop: bool = True, camera_json: str | Path | None = None) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise SourceError(f"image folder not found: {self.root}")
        cam = Path(camera_json) if camera_json else self.root / "camera.json"
        if not cam.is_file():
            raise SourceError(f"camera intrinsics not found: {cam} (a camera.json with fx, fy, cx, cy, "
                              "width, height is needed)")
        meta = json.loads(cam.read_text())
        self.intrinsics = Intrinsics.from_dict(meta)
        self.depth_scale = float(meta.get("depth_unit_m", 0.001))
        colors = sorted(p for p in self.root.iterdir()
                        if p.suffix.lower() in _IMAGE_EXTS and "depth" not in p.stem.lower()
                        and "mask" not in p.stem.lower()
                        and any(t in p.stem.lower() for t in _COLOR_TOKENS))
        self.pairs = [(c, d) for c in colors if (d := _depth_partner(c)) is not None]
        if not self.pairs:
            raise SourceError(f"no colour/depth pairs in {self.root} (expected e.g. 0000-color.png + "
                              "0000-depth.png)")
        self.loop = loop
        self.index = 0

    def __len__(self) -> int:
        return len(self.pairs)

    def load(self, i: int) -> Sample:
        cpath, dpath = self.pairs[i]
        bgr = cv2.imread(str(cpath), cv2.IMREAD_COLOR)
        depth = cv2.imread(str(dpath), cv2.IMREAD_UNCHANGED)
        if bgr is None:
            raise SourceError(f"cannot read colour image {cpath}")
        if depth is None or depth.ndim != 2 or depth.dtype != np.uint16:
            raise SourceError(f"depth image {dpath} must be a single-channel uint16 PNG")
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        if depth.shape != rgb.shape[:2]:
            raise SourceError(f"{dpath.name} is {depth.shape[1]}x{depth.shape[0]} but {cpath.name} is "
                              f"{rgb.shape[1]}x{rgb.shape[0]}")
        intr = self.intrinsics
        if (intr.width, intr.height) != (rgb.shape[1], rgb.shape[0]):
            intr = intr.scaled(rgb.shape[1], rgb.shape[0])
        return Sample(rgb=rgb, depth=depth.astype(np.float32) * self.depth_scale, intrinsics=intr,
                      label=None, name=cpath.stem)

    def read(self) -> Sample:
        if self.index >= len(self.pairs):
            if not self.loop:
                raise EndOfSource(f"folder source: all {len(self.pairs)} frames published")
            self.index = 0
        sample = self.load(self.index)
        self.index += 1
        return sample

    def close(self) -> None:
        pass


# --------------------------------------------------------------------------- dataset
class DatasetSource:
    """Any dataset reader from core.datasets (OCID, OSD, ...), frames in dataset order."""

    name = "dataset"

    def __init__(self, kind: str, root: str | Path, annotations: str | None = None, loop: bool = False) -> None:
        from uois_sam_ros.core.datasets import open_dataset  # lazy: only when a dataset is replayed

        kwargs: dict[str, Any] = {}
        if annotations:
            kwargs["annotations"] = annotations
        try:
            self.samples = open_dataset(kind, root, **kwargs)
        except (FileNotFoundError, ValueError) as e:
            raise SourceError(f"cannot open {kind} dataset at {root}: {e}") from e
        self.loop = loop
        self._it: Iterator[Sample] = iter(self.samples)

    def read(self) -> Sample:
        try:
            return next(self._it)
        except StopIteration:
            if not self.loop:
                raise EndOfSource("dataset source: all frames published") from None
            self._it = iter(self.samples)
            try:
                return next(self._it)
            except StopIteration:
                raise EndOfSource("dataset source is empty") from None

    def close(self) -> None:
        pass


# --------------------------------------------------------------------------- realsense
class RealSenseBackend(Protocol):
    """Where framesets come from: a real ``rs.pipeline`` or, in tests, a software device."""

    def start(self) -> tuple[Any, float]:
        """Open the device; return (colour rs.intrinsics, depth scale in metres per unit)."""

    def wait(self, timeout_ms: int) -> Any:
        """The next frameset; raises RuntimeError when the device is gone or times out."""

    def stop(self) -> None: ...


class PipelineBackend:
    """A physical RealSense through rs.pipeline: colour rgb8 + depth z16 at one resolution and rate."""

    def __init__(self, rs: Any, serial: str = "", width: int = 640, height: int = 480, fps: int = 30) -> None:
        self.rs, self.serial, self.width, self.height, self.fps = rs, serial, width, height, fps
        self.pipeline = None

    def start(self) -> tuple[Any, float]:
        rs = self.rs
        cfg = rs.config()
        if self.serial:
            cfg.enable_device(self.serial)
        cfg.enable_stream(rs.stream.color, self.width, self.height, rs.format.rgb8, self.fps)
        cfg.enable_stream(rs.stream.depth, self.width, self.height, rs.format.z16, self.fps)
        pipe = rs.pipeline()
        profile = pipe.start(cfg)
        self.pipeline = pipe
        intr = profile.get_stream(rs.stream.color).as_video_stream_profile().get_intrinsics()
        scale = profile.get_device().first_depth_sensor().get_depth_scale()
        return intr, float(scale)

    def wait(self, timeout_ms: int) -> Any:
        if self.pipeline is None:
            raise RuntimeError("pipeline not started")
        return self.pipeline.wait_for_frames(timeout_ms)

    def stop(self) -> None:
        if self.pipeline is not None:
            try:
                self.pipeline.stop()
            except RuntimeError:
                pass
            self.pipeline = None


class SyncerBackend:
    """Framesets from sensors already streaming into an ``rs.syncer`` (e.g. a software device)."""

    def __init__(self, syncer: Any, color_intrinsics: Any, depth_scale: float = 0.001) -> None:
        self.syncer, self.intr, self.scale = syncer, color_intrinsics, depth_scale

    def start(self) -> tuple[Any, float]:
        return self.intr, self.scale

    def wait(self, timeout_ms: int) -> Any:
        return self.syncer.wait_for_frames(timeout_ms)

    def stop(self) -> None:
        pass


class RealSenseSource:
    """Depth aligned to colour, optional spatial/temporal/hole-filling filters, reconnect with backoff.

    The filters run on the raw depth before alignment (librealsense's recommended order).
    When the device disappears, read() returns None and retries start() after 0.5 s, 1 s,
    2 s, ... up to max_backoff, so a replugged camera comes back without a restart.
    """

    name = "realsense"

    def __init__(self, rs: Any, backend: RealSenseBackend, spatial: bool = False, temporal: bool = False,
                 hole_filling: bool = False, timeout_ms: int = 1000, max_backoff: float = 8.0,
                 log: Callable[[str], None] | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.rs, self.backend, self.timeout_ms = rs, backend, int(timeout_ms)
        self.filters = []
        if spatial:
            self.filters.append(rs.spatial_filter())
        if temporal:
            self.filters.append(rs.temporal_filter())
        if hole_filling:
            self.filters.append(rs.hole_filling_filter())
        self.align = rs.align(rs.stream.color)
        self.max_backoff, self.log, self.clock = float(max_backoff), log or (lambda m: None), clock
        self.connected = False
        self.backoff = 0.5
        self.next_try = 0.0
        self.reconnects = 0
        self.intrinsics: Intrinsics | None = None
        self.depth_scale = 0.001

    def _connect(self) -> bool:
        now = self.clock()
        if now < self.next_try:
            return False
        try:
            intr, self.depth_scale = self.backend.start()
        except RuntimeError as e:
            self.log(f"RealSense not available ({e}); retrying in {self.backoff:.1f} s")
            self.next_try = now + self.backoff
            self.backoff = min(self.backoff * 2.0, self.max_backoff)
            return False
        self.intrinsics = Intrinsics(float(intr.fx), float(intr.fy), float(intr.ppx), float(intr.ppy),
                                     int(intr.width), int(intr.height))
        self.connected, self.backoff = True, 0.5
        return True

    def read(self) -> Sample | None:
        if not self.connected and not self._connect():
            return None
        try:
            frames = self.backend.wait(self.timeout_ms)
        except RuntimeError as e:
            self.log(f"RealSense frame wait failed ({e}); reconnecting")
            self.backend.stop()
            self.connected = False
            self.reconnects += 1
            self.next_try = self.clock() + self.backoff
            return None
        return self.convert(frames)

    def convert(self, frames: Any) -> Sample | None:
        """Filter, align and copy one frameset; None while the syncer still lacks a colour/depth pair."""
        if frames.size() < 2:
            return None
        for f in self.filters:
            frames = f.process(frames).as_frameset()
        aligned = self.align.process(frames)
        depth_f, color_f = aligned.get_depth_frame(), aligned.get_color_frame()
        if not depth_f or not color_f:
            return None
        rgb = np.array(color_f.get_data(), dtype=np.uint8, copy=True)
        depth = np.asarray(depth_f.get_data(), dtype=np.uint16).astype(np.float32) * self.depth_scale
        return Sample(rgb=rgb, depth=depth, intrinsics=self.intrinsics, label=None,
                      name=f"realsense_{color_f.get_frame_number()}")

    def close(self) -> None:
        self.backend.stop()
        self.connected = False


def open_source(kind: str, params: dict[str, Any], rs_loader: Callable[[], Any] | None = None,
                log: Callable[[str], None] | None = None) -> FrameSource:
    """Build a source from the camera node's parameters (see ros/graph.py CAMERA_PARAMS)."""
    if kind == "synthetic":
        return SyntheticSource(seed=params.get("seed", 0), count=params.get("count", 0),
                               width=params.get("width", 0), height=params.get("height", 0))
    if kind == "folder":
        if not params.get("folder"):
            raise SourceError("source 'folder' needs the 'folder' parameter (a directory of colour/depth pairs)")
        return FolderSource(params["folder"], loop=params.get("loop", True))
    if kind == "dataset":
        if not params.get("dataset_root") or not params.get("dataset_kind"):
            raise SourceError("source 'dataset' needs 'dataset_kind' and 'dataset_root'")
        return DatasetSource(params["dataset_kind"], params["dataset_root"],
                             params.get("dataset_annotations") or None, loop=params.get("loop", False))
    if kind == "realsense":
        if rs_loader is None:
            import pyrealsense2 as rs  # ROS-free process: nothing else loads Fast DDS
        else:
            rs = rs_loader()
        backend = PipelineBackend(rs, params.get("serial", ""), params.get("width", 0) or 640,
                                  params.get("height", 0) or 480, params.get("fps", 30))
        return RealSenseSource(rs, backend, spatial=params.get("spatial_filter", False),
                               temporal=params.get("temporal_filter", False),
                               hole_filling=params.get("hole_filling_filter", False), log=log)
    raise SourceError(f"unknown camera source {kind!r}; choose one of {', '.join(SOURCE_KINDS)}")
