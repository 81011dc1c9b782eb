"""Occlusion order: which instance occludes which, from depth along shared boundaries.

Two instances that touch in the image share a boundary. At an occlusion boundary the
occluder's pixels next to it are nearer to the camera than the occluded instance's pixels
next to it (the occluded surface continues behind). Objects standing side by side, or a
contact seen edge-on, show about the same depth on both sides. So for each touching pair the
median valid depth of each side's band along the shared boundary is compared; a difference
above a margin says which one is in front. Depth holes (0 / NaN) are ignored; a pair with too
few valid pixels on either side gets no order.

Only direct occlusions are reported (no transitive closure): the completer needs the masks
that lie over an instance, and "A hides part of B" is what a planner asks.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class OcclusionParams:
    """Thresholds of the boundary test (AmodalConfig carries the same fields)."""

    band_px: int = 3  # width of the band on each side of the shared boundary, px
    margin: float = 0.01  # metres nearer that makes a side the occluder (RealSense noise ~1 % at 1 m)
    relative_margin: float = 0.01  # ... or this fraction of the depth, if larger
    min_pixels: int = 8  # valid depth pixels needed on each side


def _box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    ys = np.flatnonzero(mask.any(axis=1))
    if not len(ys):
        return None
    xs = np.flatnonzero(mask.any(axis=0))
    return int(ys[0]), int(ys[-1]) + 1, int(xs[0]), int(xs[-1]) + 1


def occlusion_order(masks: np.ndarray, depth: np.ndarray | None,
                    params: OcclusionParams | None = None) -> np.ndarray:
    """(N, N) bool, [i, j] True when instance i occludes instance j (i is in front along their
    shared boundary). masks: (N, H, W) bool visible masks; depth: (H, W) metres, 0/NaN invalid.
    Without depth nothing can be ordered and the matrix is all False."""
    p = params or OcclusionParams()
    masks = np.asarray(masks, bool)
    if masks.ndim != 3:
        raise ValueError(f"masks must be (N, H, W), got shape {masks.shape}")
    n, h, w = masks.shape
    out = np.zeros((n, n), bool)
    if depth is None or n < 2:
        return out
    depth = np.asarray(depth, np.float32)
    if depth.shape != (h, w):
        raise ValueError(f"depth {depth.shape} does not match the masks' {h}x{w}")
    valid = np.isfinite(depth) & (depth > 0)
    r = max(1, int(p.band_px))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
    boxes = [_box(m) for m in masks]
    for i in range(n):
        bi = boxes[i]
        if bi is None:
            continue
        for j in range(i + 1, n):
            bj = boxes[j]
            if bj is None:
                continue
            # the pair's region: both boxes, grown by the band, clipped to the image
            y0, y1 = max(min(bi[0], bj[0]) - r, 0), min(max(bi[1], bj[1]) + r, h)
            x0, x1 = max(min(bi[2], bj[2]) - r, 0), min(max(bi[3], bj[3]) + r, w)
            if min(bi[1], bj[1]) + r < max(bi[0], bj[0]) or min(bi[3], bj[3]) + r < max(bi[2], bj[2]):
                continue  # boxes farther apart than the band: cannot touch
            mi = masks[i, y0:y1, x0:x1].astype(np.uint8)
            mj = masks[j, y0:y1, x0:x1].astype(np.uint8)
            near_j = cv2.dilate(mj, kernel).astype(bool)
            near_i = cv2.dilate(mi, kernel).astype(bool)
            ok = valid[y0:y1, x0:x1]
            side_i = mi.astype(bool) & near_j & ok  # i's pixels along the shared boundary
            side_j = mj.astype(bool) & near_i & ok
            if side_i.sum() < p.min_pixels or side_j.sum() < p.min_pixels:
                continue
            d = depth[y0:y1, x0:x1]
            di, dj = float(np.median(d[side_i])), float(np.median(d[side_j]))
            margin = max(p.margin, p.relative_margin * min(di, dj))
            if dj - di > margin:
                out[i, j] = True
            elif di - dj > margin:
                out[j, i] = True
    return out


def occluder_masks(masks: np.ndarray, order: np.ndarray) -> np.ndarray:
    """(N, H, W) bool: for each instance, the union of the instances that occlude it."""
    masks = np.asarray(masks, bool)
    out = np.zeros_like(masks)
    for j in range(len(masks)):
        front = np.flatnonzero(order[:, j])
        if len(front):
            out[j] = masks[front].any(axis=0)
    return out


def occlusion_pairs(order: np.ndarray, ids: np.ndarray | None = None) -> list[tuple[int, int]]:
    """[(occluder id, occluded id), ...] in row-major order; ids default to 1..N."""
    ids = np.arange(1, len(order) + 1) if ids is None else np.asarray(ids)
    return [(int(ids[i]), int(ids[j])) for i, j in zip(*np.nonzero(order), strict=True)]
