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

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

from uois_sam_ros.core.types import Sample

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
        from uois_sam_ros.core.data import synthetic  # lazy: pulls in the scene generator only when used

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
class FolderSource:
    """A folder of RGB-D frames in the package's one folder format (core.data.datasets.discover_folder:
    flat NNNN-color.png + NNNN-depth.png, or rgb/ + depth/ subfolders; labels optional) and a
    camera.json with the intrinsics (fx, fy, cx, cy, width, height) and optionally depth_unit_m
    (default 0.001, i.e. millimetres). Every frame needs a depth image: the camera publishes
    aligned depth. The same folder works for ``uois-sam-eval --dataset folder``.
    """

    name = "folder"

    def __init__(self, root: str | Path, loop: bool = True, camera_json: str | Path | None = None) -> None:
        from uois_sam_ros.core.data import datasets  # lazy, as for DatasetSource

        self._datasets = datasets
        self.root = Path(root)
        if not self.root.is_dir():
            raise SourceError(f"image folder not found: {self.root}")
        self.camera_path = Path(camera_json) if camera_json else self.root / "camera.json"
        if not self.camera_path.is_file():
            raise SourceError(f"camera intrinsics not found: {self.camera_path} (a camera.json with fx, fy, cx, "
                              "cy, width, height is needed)")
        try:
            self.camera = datasets.read_camera_json(self.camera_path)
            frames = datasets.discover_folder(self.root)
        except datasets.DatasetError as e:
            raise SourceError(f"no colour/depth pairs in {self.root}: {e}") from None
        self.intrinsics, self.depth_scale = self.camera
        missing = [f.rgb.name for f in frames if f.depth is None]
        if len(missing) == len(frames):
            raise SourceError(f"no colour/depth pairs in {self.root} (expected e.g. 0000-color.png + "
                              "0000-depth.png, or rgb/0000.png + depth/0000.png)")
        if missing:
            raise SourceError(f"{self.root}: {len(missing)} colour image(s) without depth, e.g. {missing[0]}")
        self.frames = frames
        self.loop = loop
        self.index = 0

    @property
    def pairs(self) -> list[tuple[Path, Path]]:
        """(colour, depth) file of each frame."""
        return [(f.rgb, f.depth) for f in self.frames]

    def __len__(self) -> int:
        return len(self.frames)

    def load(self, i: int) -> Sample:
        try:
            return self._datasets.load_folder_frame(self.frames[i], self.camera, self.camera_path, need_depth=True)
        except self._datasets.DatasetError as e:
            raise SourceError(str(e)) from None

    def read(self) -> Sample:
        if self.index >= len(self.frames):
            if not self.loop:
                raise EndOfSource(f"folder source: all {len(self.frames)} frames published")
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
        from uois_sam_ros.core.data.datasets import open_dataset  # lazy: only when a dataset is replayed

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


def open_source(kind: str, params: dict[str, Any], rs_loader: Callable[[], Any] | None = None,
                log: Callable[[str], None] | None = None,
                info: Callable[[str], None] | None = None) -> FrameSource:
    """Build a source from the camera node's parameters (see ros/params.py CAMERA_PARAMS)."""
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
        from uois_sam_ros.core.data.realsense import PipelineBackend, RealSenseSource

        backend = PipelineBackend(rs, params.get("serial", ""), params.get("width", 0) or 640,
                                  params.get("height", 0) or 480, params.get("fps", 30))
        return RealSenseSource(rs, backend, spatial=params.get("spatial_filter", False),
                               temporal=params.get("temporal_filter", False),
                               hole_filling=params.get("hole_filling_filter", False), log=log, info=info)
    raise SourceError(f"unknown camera source {kind!r}; choose one of {', '.join(SOURCE_KINDS)}")
