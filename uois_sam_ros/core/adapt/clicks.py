"""The simulated user of the interactive-segmentation benchmarks, and NoC / FR.

The click protocol is the one RITM, SimpleClick and FocSAM share (DESIGN.md section 6,
"Interactive clicks"), so figures are comparable with theirs:

- error regions FN = GT and not pred, FP = pred and not GT;
- each region is padded with one pixel of zeros (the image border then counts as boundary), its
  exact L2 distance transform is taken and the padding cropped;
- pixels that were already clicked are zeroed;
- the click is positive when the largest FN distance exceeds the largest FP distance, so a tie
  gives a negative click;
- it goes on the first maximum in row-major order, so the simulation is deterministic.

NoC_n@T is the 1-based index of the first click whose IoU reaches T, else n; FR_n@T is the
percentage of objects that never reach T within n clicks.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class Click:
    """One click in pixel coordinates: x = column, y = row; positive = on the object."""

    x: int
    y: int
    positive: bool


@dataclass(frozen=True)
class Protocol:
    """n clicks at most, success at IoU >= threshold (a fraction: 0.85 for NoC@85)."""

    max_clicks: int
    threshold: float

    @property
    def name(self) -> str:
        """'20@85' for 20 clicks at IoU 0.85."""
        return f"{self.max_clicks}@{round(self.threshold * 100):d}"

    @classmethod
    def parse(cls, text: str) -> Protocol:
        """'20@85' (or '20@0.85') -> Protocol(20, 0.85); ValueError says what is wrong."""
        try:
            n, t = text.strip().split("@")
            n_i, t_f = int(n), float(t)
        except ValueError:
            raise ValueError(f"protocol {text!r} must look like CLICKS@IOU, e.g. 20@85") from None
        thr = t_f / 100.0 if t_f > 1.0 else t_f
        if n_i < 1 or not 0.0 < thr <= 1.0:
            raise ValueError(f"protocol {text!r}: clicks must be >= 1 and IoU in (0, 100]")
        return cls(n_i, thr)


# The paper's two protocols: NoC_20@85 / FR_20@85 and NoC_30@90 / FR_30@90.
PAPER_PROTOCOLS = (Protocol(20, 0.85), Protocol(30, 0.90))


def error_distance(region: np.ndarray) -> np.ndarray:
    """Exact L2 distance of each region pixel to the nearest non-region pixel, the image border
    counting as non-region (one pixel of zero padding); 0 outside the region. float32 (H, W)."""
    padded = np.pad(np.asarray(region, bool), 1).astype(np.uint8)
    return cv2.distanceTransform(padded, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)[1:-1, 1:-1]


def clicked_map(clicks: Iterable[Click], shape: tuple[int, int]) -> np.ndarray:
    """(H, W) bool, true at every clicked pixel."""
    out = np.zeros(shape, bool)
    for c in clicks:
        out[c.y, c.x] = True
    return out


def next_click(gt: np.ndarray, pred: np.ndarray, clicks: Sequence[Click] = ()) -> Click | None:
    """The simulated user's next click on pred for the object gt, or None when no unclicked
    error pixel is left (pred equals gt, or every error pixel was clicked already)."""
    gt = np.asarray(gt, bool)
    pred = np.asarray(pred, bool)
    if gt.shape != pred.shape or gt.ndim != 2:
        raise ValueError(f"gt {gt.shape} and pred {pred.shape} must be (H, W) masks of the same size")
    fn = error_distance(gt & ~pred)
    fp = error_distance(pred & ~gt)
    if clicks:
        done = clicked_map(clicks, gt.shape)
        fn[done] = 0.0
        fp[done] = 0.0
    fn_max, fp_max = float(fn.max()), float(fp.max())
    if fn_max <= 0.0 and fp_max <= 0.0:
        return None
    positive = fn_max > fp_max
    dist, best = (fn, fn_max) if positive else (fp, fp_max)
    y, x = np.unravel_index(int(np.argmax(dist == best)), dist.shape)  # first maximum, row-major
    return Click(int(x), int(y), positive)


def mask_iou(pred: np.ndarray, gt: np.ndarray) -> float:
    """IoU of two bool masks; two empty masks agree completely (1.0)."""
    pred = np.asarray(pred, bool)
    gt = np.asarray(gt, bool)
    union = int(np.count_nonzero(pred | gt))
    return 1.0 if union == 0 else int(np.count_nonzero(pred & gt)) / union


def noc(ious: Sequence[float], threshold: float, max_clicks: int) -> int:
    """NoC_n@T of one object: the 1-based index of the first IoU >= T among the first n, else n.
    ious[k] is the IoU after click k + 1; a shorter sequence means the user stopped clicking."""
    for k, v in enumerate(list(ious)[:max_clicks]):
        if v >= threshold:
            return k + 1
    return int(max_clicks)


def failed(ious: Sequence[float], threshold: float, max_clicks: int) -> bool:
    """True when the object never reaches IoU T within n clicks (counts towards FR_n@T)."""
    return not any(v >= threshold for v in list(ious)[:max_clicks])


def noc_fr(sequences: Sequence[Sequence[float]], threshold: float, max_clicks: int) -> tuple[float, float]:
    """(mean NoC_n@T, FR_n@T in percent) over objects' IoU sequences; ValueError when empty."""
    if len(sequences) == 0:
        raise ValueError("NoC / FR of zero objects is undefined")
    nocs = [noc(s, threshold, max_clicks) for s in sequences]
    fails = [failed(s, threshold, max_clicks) for s in sequences]
    return float(np.mean(nocs)), 100.0 * float(np.mean(fails))
