"""Data types shared by every stage: one frame in, prompts in the middle, instances out."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


class FrameError(ValueError):
    """A frame that cannot be processed; the message says what is wrong with it."""


@dataclass(frozen=True)
class Intrinsics:
    """Pinhole intrinsics of the colour camera (depth is registered to colour).

    distortion_model / distortion follow sensor_msgs/CameraInfo ("plumb_bob": k1 k2 p1 p2 k3,
    "equidistant": k1..k4). An empty (or all-zero) distortion means none; it is stored as ().
    """

    fx: float
    fy: float
    cx: float
    cy: float
    width: int
    height: int
    distortion_model: str = "plumb_bob"
    distortion: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        d = tuple(float(c) for c in (self.distortion or ()))
        object.__setattr__(self, "distortion", d if any(c != 0.0 for c in d) else ())
        object.__setattr__(self, "distortion_model", str(self.distortion_model or "plumb_bob"))

    @property
    def K(self) -> np.ndarray:
        return np.array([[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]])

    def scaled(self, width: int, height: int) -> Intrinsics:
        """Intrinsics for the same camera resized to (width, height)."""
        sx, sy = width / self.width, height / self.height
        # distortion coefficients act on normalised coordinates, so a resize keeps them
        return Intrinsics(self.fx * sx, self.fy * sy, self.cx * sx, self.cy * sy, int(width), int(height),
                          self.distortion_model, self.distortion)

    @classmethod
    def from_dict(cls, d: dict) -> Intrinsics:
        """Accepts {fx, fy, cx, cy, width, height} or a 3x3 'K' / 'intrinsics' matrix.

        Optional: 'distortion_model' and 'distortion' (or 'D'), a list of coefficients.
        """
        try:
            dist = {"distortion_model": str(d.get("distortion_model") or "plumb_bob"),
                    "distortion": tuple(float(c) for c in (d.get("distortion", d.get("D")) or ()))}
            if "K" in d or "intrinsics" in d:
                K = np.asarray(d.get("K", d.get("intrinsics")), dtype=float).reshape(3, 3)
                return cls(float(K[0, 0]), float(K[1, 1]), float(K[0, 2]), float(K[1, 2]),
                           int(d["width"]), int(d["height"]), **dist)
            return cls(float(d["fx"]), float(d["fy"]), float(d["cx"]), float(d["cy"]),
                       int(d["width"]), int(d["height"]), **dist)
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"intrinsics need fx, fy, cx, cy, width, height (or K, width, height); got {d!r}: {e}") from e

    @classmethod
    def from_json(cls, path: str | Path) -> Intrinsics:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"camera intrinsics file not found: {path}")
        return cls.from_dict(json.loads(path.read_text()))

    @classmethod
    def from_string(cls, s: str, width: int, height: int) -> Intrinsics:
        """Parse 'fx,fy,cx,cy' (the --intrinsics CLI option)."""
        parts = [p for p in s.replace(" ", "").split(",") if p]
        if len(parts) != 4:
            raise ValueError(f"--intrinsics expects 'fx,fy,cx,cy', got {s!r}")
        fx, fy, cx, cy = (float(p) for p in parts)
        return cls(fx, fy, cx, cy, int(width), int(height))


@dataclass
class Frame:
    """One RGB(-D) observation.

    rgb: (H, W, 3) uint8. depth: (H, W) float32 metres, registered to colour; 0 or NaN
    marks invalid pixels. stamp: seconds (the source stamp travels to the outputs).
    """

    rgb: np.ndarray
    depth: np.ndarray | None = None
    intrinsics: Intrinsics | None = None
    stamp: float = 0.0
    frame_id: str = "camera_color_optical_frame"

    @property
    def height(self) -> int:
        return int(self.rgb.shape[0])

    @property
    def width(self) -> int:
        return int(self.rgb.shape[1])

    def validate(self, need_depth: bool = False, need_intrinsics: bool = False) -> None:
        """Raise FrameError naming the first problem, so callers can log it and go on."""
        rgb = self.rgb
        if not isinstance(rgb, np.ndarray):
            raise FrameError(f"rgb must be a numpy array, got {type(rgb).__name__}")
        if rgb.ndim != 3 or rgb.shape[2] != 3:
            raise FrameError(f"rgb must have shape (H, W, 3), got {rgb.shape}")
        if rgb.shape[0] == 0 or rgb.shape[1] == 0:
            raise FrameError(f"rgb image is empty: shape {rgb.shape}")
        if rgb.dtype != np.uint8:
            raise FrameError(f"rgb must be uint8, got {rgb.dtype}")
        if self.depth is not None:
            d = self.depth
            if d.ndim != 2:
                raise FrameError(f"depth must have shape (H, W), got {d.shape}")
            if d.shape != rgb.shape[:2]:
                raise FrameError(
                    f"depth size {d.shape[1]}x{d.shape[0]} does not match colour size "
                    f"{rgb.shape[1]}x{rgb.shape[0]} (depth must be aligned to colour)")
            if not np.issubdtype(d.dtype, np.floating):
                raise FrameError(f"depth must be float metres, got {d.dtype} (convert 16UC1 millimetres with /1000)")
            valid = np.isfinite(d) & (d > 0)
            if not valid.any():
                raise FrameError("depth has no valid pixel (all zero, NaN or negative)")
        elif need_depth:
            raise FrameError("this method needs depth, but the frame has none")
        if need_intrinsics and self.intrinsics is None:
            raise FrameError("this method needs camera intrinsics, but the frame has none "
                             "(give --intrinsics fx,fy,cx,cy or --camera camera.json, or publish camera_info)")
        if self.intrinsics is not None and (self.intrinsics.width, self.intrinsics.height) != (self.width, self.height):
            raise FrameError(
                f"intrinsics are for {self.intrinsics.width}x{self.intrinsics.height}, "
                f"image is {self.width}x{self.height}")


@dataclass
class Prompts:
    """K point prompts in pixel coordinates (x = column, y = row)."""

    points: np.ndarray  # (K, 2) float32
    labels: np.ndarray  # (K,) int64, 1 = foreground, 0 = background
    scores: np.ndarray  # (K,) float32

    def __post_init__(self) -> None:
        self.points = np.asarray(self.points, dtype=np.float32).reshape(-1, 2)
        k = len(self.points)
        self.labels = np.asarray(self.labels, dtype=np.int64).reshape(k)
        self.scores = np.asarray(self.scores, dtype=np.float32).reshape(k)

    def __len__(self) -> int:
        return len(self.points)

    @classmethod
    def empty(cls) -> Prompts:
        return cls(np.zeros((0, 2), np.float32), np.zeros(0, np.int64), np.zeros(0, np.float32))


@dataclass
class Instances:
    """Instance masks for one frame, sorted by descending score.

    masks: (N, H, W) bool visible masks. scores: adapted IoU (or backend score).
    sam_iou: SAM's own IoU prediction (NaN where the backend has none).
    prompts: (N, 2) the prompt that produced each mask. timings: seconds per stage.
    """

    masks: np.ndarray
    scores: np.ndarray
    sam_iou: np.ndarray | None = None
    prompts: np.ndarray | None = None
    amodal_masks: np.ndarray | None = None
    occlusion_rates: np.ndarray | None = None
    stamp: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.masks = np.asarray(self.masks, dtype=bool)
        if self.masks.ndim != 3:
            raise ValueError(f"masks must be (N, H, W), got {self.masks.shape}")
        n = len(self.masks)
        self.scores = np.asarray(self.scores, dtype=np.float32).reshape(n)
        self.sam_iou = (np.full(n, np.nan, np.float32) if self.sam_iou is None
                        else np.asarray(self.sam_iou, np.float32).reshape(n))
        self.prompts = (np.full((n, 2), np.nan, np.float32) if self.prompts is None
                        else np.asarray(self.prompts, np.float32).reshape(n, 2))

    def __len__(self) -> int:
        return len(self.masks)

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.masks.shape[1]), int(self.masks.shape[2])

    @classmethod
    def empty(cls, height: int, width: int, stamp: float = 0.0) -> Instances:
        return cls(np.zeros((0, height, width), bool), np.zeros(0, np.float32), stamp=stamp)

    def label_map(self) -> np.ndarray:
        """uint16 map, 0 = background, k = instance k (1-based); higher score wins overlaps."""
        h, w = self.shape
        out = np.zeros((h, w), np.uint16)
        order = np.argsort(-self.scores, kind="stable")
        for rank in order[::-1]:  # lowest score first, so the best is painted last
            out[self.masks[rank]] = rank + 1
        return out

    def boxes(self) -> np.ndarray:
        """(N, 4) int boxes x0, y0, x1, y1 (exclusive), zeros for empty masks."""
        out = np.zeros((len(self), 4), np.int64)
        for i, m in enumerate(self.masks):
            ys = np.flatnonzero(m.any(axis=1))
            xs = np.flatnonzero(m.any(axis=0))
            if len(ys):
                out[i] = (xs[0], ys[0], xs[-1] + 1, ys[-1] + 1)
        return out


@dataclass
class Sample:
    """One dataset image with its ground truth, as every dataset reader yields it.

    label: (H, W) visible (modal) instance ids, 0 = background, after the dataset's
    conventions are applied (OCID floor/table removed, HouseCat6D 255 -> 0).
    amodal: (N, H, W) bool amodal masks for the ids in amodal_ids, when the set has them.
    """

    rgb: np.ndarray
    depth: np.ndarray | None
    intrinsics: Intrinsics | None
    label: np.ndarray | None
    name: str
    amodal: np.ndarray | None = None
    amodal_ids: np.ndarray | None = None
    stamp: float = 0.0
    # When the image was captured, ns on the host wall clock (ROS time without sim time); None when
    # the source cannot tell (the camera node then stamps with the publish time).
    capture_time_ns: int | None = None

    def frame(self) -> Frame:
        return Frame(rgb=self.rgb, depth=self.depth, intrinsics=self.intrinsics, stamp=self.stamp)
