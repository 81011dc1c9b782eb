"""TAOS, Target-Aware Occlusion Synthesis (Amodal SAM, section 3.3): amodal training pairs
made from visible masks alone, so it works on any visible-mask dataset.

A target instance keeps its mask as the amodal ground truth; an occluder (an instance cut out
of this or another image, rescaled to a size relative to the target) is pasted over it at a
random position whose overlap with the target lies in a given range. The visible mask is the
target minus the pasted occluder, and the occluded part lies exactly under the occluder.
Finally the pasted boundary is smoothed by a Gaussian blur, only in a thin band around it
(eq. 6), so a model cannot learn to find occlusions from the jagged paste edge.

With depth, the occluder's depth is pasted too, shifted so that it stands in front of the
target (its median a random gap nearer than the target's); depth holes stay holes. The paper
also filters samples with a VLM; that is left out (no VLM here): the overlap range and the
minimum visible fraction reject the degenerate cases instead.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class TaosParams:
    """Ranges TAOS samples from."""

    overlap: tuple[float, float] = (0.1, 0.6)  # fraction of the target covered by the occluder
    scale: tuple[float, float] = (0.4, 1.4)  # occluder area / target area
    blur_sigma: float = 1.0  # Gaussian sigma of the boundary blur, px (0 = no blur)
    band_px: int = 2  # half-width of the blurred band around the pasted boundary, px
    depth_gap: tuple[float, float] = (0.02, 0.15)  # occluder this much nearer than the target, metres
    tries: int = 30  # random placements tried before giving up on a pair


@dataclass
class TaosSample:
    """One synthesised occlusion. amodal = the target's full mask; visible = amodal & ~occluder;
    occluder = the pasted occluder's mask; band = the pixels the blur may change."""

    rgb: np.ndarray
    depth: np.ndarray | None
    amodal: np.ndarray
    visible: np.ndarray
    occluder: np.ndarray
    band: np.ndarray
    overlap: float

    @property
    def occluded(self) -> np.ndarray:
        return self.amodal & ~self.visible


def _crop(mask: np.ndarray) -> tuple[int, int, int, int]:
    ys = np.flatnonzero(mask.any(axis=1))
    xs = np.flatnonzero(mask.any(axis=0))
    return int(ys[0]), int(ys[-1]) + 1, int(xs[0]), int(xs[-1]) + 1


def boundary_band(mask: np.ndarray, half_width: int) -> np.ndarray:
    """Pixels within half_width of the mask's boundary, on both sides (a dilation minus an erosion)."""
    r = max(1, int(half_width))
    k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
    m = mask.astype(np.uint8)
    return (cv2.dilate(m, k) > 0) & ~(cv2.erode(m, k, borderType=cv2.BORDER_REPLICATE) > 0)


def blur_band(rgb: np.ndarray, band: np.ndarray, sigma: float) -> np.ndarray:
    """rgb with the pixels of band replaced by a Gaussian blur of the image; others unchanged."""
    if sigma <= 0 or not band.any():
        return rgb.copy()
    blurred = cv2.GaussianBlur(rgb, (0, 0), float(sigma))
    out = rgb.copy()
    out[band] = blurred[band]
    return out


def paste_occluder(rgb: np.ndarray, depth: np.ndarray | None, target: np.ndarray,
                   occ_rgb: np.ndarray, occ_depth: np.ndarray | None, occ_mask: np.ndarray,
                   rng: np.random.Generator, params: TaosParams | None = None) -> TaosSample | None:
    """Paste the occluder (occ_mask's pixels of occ_rgb / occ_depth) over target in (rgb, depth).

    Returns None when no placement within params.tries gives an overlap in range (the occluder
    is too small or too large for this target). The inputs are not modified."""
    p = params or TaosParams()
    target = np.asarray(target, bool)
    occ_mask = np.asarray(occ_mask, bool)
    h, w = target.shape
    if rgb.shape[:2] != (h, w) or (depth is not None and depth.shape != (h, w)):
        raise ValueError(f"rgb {rgb.shape} / depth {None if depth is None else depth.shape} do not match "
                         f"the target mask {target.shape}")
    if occ_rgb.shape[:2] != occ_mask.shape:
        raise ValueError(f"occluder rgb {occ_rgb.shape} does not match its mask {occ_mask.shape}")
    t_area = int(target.sum())
    if t_area == 0 or not occ_mask.any():
        return None
    y0, y1, x0, x1 = _crop(occ_mask)
    cm = occ_mask[y0:y1, x0:x1]
    scale = float(np.sqrt(rng.uniform(*p.scale) * t_area / max(int(cm.sum()), 1)))
    ch, cw = max(1, int(round((y1 - y0) * scale))), max(1, int(round((x1 - x0) * scale)))
    if ch >= h or cw >= w:
        return None
    cm = cv2.resize(cm.astype(np.uint8), (cw, ch), interpolation=cv2.INTER_NEAREST).astype(bool)
    if not cm.any():
        return None
    crgb = cv2.resize(np.ascontiguousarray(occ_rgb[y0:y1, x0:x1]), (cw, ch), interpolation=cv2.INTER_LINEAR)
    cdep = None
    if depth is not None and occ_depth is not None:
        cdep = cv2.resize(np.ascontiguousarray(occ_depth[y0:y1, x0:x1]).astype(np.float32), (cw, ch),
                          interpolation=cv2.INTER_NEAREST)
    ty0, ty1, tx0, tx1 = _crop(target)
    for _ in range(max(1, p.tries)):
        # top-left corner so that the occluder's box overlaps the target's box
        py = int(rng.integers(max(0, ty0 - ch + 1), min(h - ch, ty1 - 1) + 1))
        px = int(rng.integers(max(0, tx0 - cw + 1), min(w - cw, tx1 - 1) + 1))
        occ = np.zeros((h, w), bool)
        occ[py:py + ch, px:px + cw] = cm
        overlap = float((occ & target).sum()) / t_area
        if p.overlap[0] <= overlap <= p.overlap[1]:
            break
    else:
        return None
    out_rgb = rgb.copy()
    out_rgb[occ] = crgb[cm]
    out_depth = None
    if depth is not None:
        out_depth = np.asarray(depth, np.float32).copy()
        if cdep is not None:
            tv = depth[target & np.isfinite(depth) & (depth > 0)]
            ov = cdep[cm & np.isfinite(cdep) & (cdep > 0)]
            if len(tv) and len(ov):
                shift = float(np.median(tv)) - float(rng.uniform(*p.depth_gap)) - float(np.median(ov))
                d = np.where(np.isfinite(cdep) & (cdep > 0), np.maximum(cdep + shift, 0.05), 0.0)
            else:
                d = np.zeros_like(cdep)  # no depth to place it by: a hole, like a dark occluder
            out_depth[occ] = d[cm]
    band = boundary_band(occ, p.band_px)
    out_rgb = blur_band(out_rgb, band, p.blur_sigma)
    return TaosSample(rgb=out_rgb, depth=out_depth, amodal=target.copy(), visible=target & ~occ, occluder=occ,
                      band=band, overlap=overlap)


def taos_from_labels(rgb: np.ndarray, depth: np.ndarray | None, label: np.ndarray, rng: np.random.Generator,
                     source: tuple[np.ndarray, np.ndarray | None, np.ndarray] | None = None,
                     params: TaosParams | None = None, min_area: int = 200) -> TaosSample | None:
    """TAOS on a visible-label image: a random instance with at least min_area px is the target,
    a random instance of source (rgb, depth, label; default this image, another instance) the
    occluder. None when the image has no usable pair."""
    ids, counts = np.unique(label[label > 0], return_counts=True)
    targets = ids[counts >= min_area]
    if len(targets) == 0:
        return None
    t = int(rng.choice(targets))
    s_rgb, s_depth, s_label = source if source is not None else (rgb, depth, label)
    s_ids = np.unique(s_label[s_label > 0])
    if source is None:
        s_ids = s_ids[s_ids != t]
    if len(s_ids) == 0:
        return None
    o = int(rng.choice(s_ids))
    return paste_occluder(rgb, depth, label == t, s_rgb, s_depth, s_label == o, rng, params)
