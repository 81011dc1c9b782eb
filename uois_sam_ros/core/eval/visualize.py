"""Overlay drawing shared by the nodes, the CLIs and the benchmarks (numpy + OpenCV only).

All images are RGB uint8; save_png converts to OpenCV's BGR only at the file boundary.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from uois_sam_ros.core.types import Prompts

_GOLDEN = 0.618033988749895


def _palette(n: int) -> np.ndarray:
    """(n + 1, 3) colours; entry 0 is black. Hues step by the golden ratio so that
    neighbouring ids differ strongly; saturation/value cycle to keep large sets apart."""
    out = np.zeros((n + 1, 3), np.uint8)
    if n == 0:
        return out
    ids = np.arange(1, n + 1)
    hue = ((ids * _GOLDEN) % 1.0 * 180).astype(np.uint8)  # OpenCV hue range is 0..179
    sat = (255 - 60 * ((ids // 7) % 2)).astype(np.uint8)
    val = (255 - 50 * ((ids // 3) % 2)).astype(np.uint8)
    hsv = np.stack([hue, sat, val], axis=1)[None]
    out[1:] = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0]
    return out


def colorize_labels(label_map: np.ndarray) -> np.ndarray:
    """(H, W) integer ids -> (H, W, 3) uint8; the colour depends only on the id, 0 is black."""
    lab = np.asarray(label_map)
    if lab.ndim != 2:
        raise ValueError(f"label_map must be (H, W), got shape {lab.shape}")
    if not np.issubdtype(lab.dtype, np.integer):
        raise ValueError(f"label_map must hold integer ids, got {lab.dtype}")
    if lab.size and lab.min() < 0:
        raise ValueError("label_map ids must be >= 0")
    n = int(lab.max()) if lab.size else 0
    return _palette(n)[lab]


def _check_rgb(rgb: np.ndarray) -> np.ndarray:
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"rgb must be (H, W, 3) uint8, got shape {rgb.shape} dtype {rgb.dtype}")
    return rgb


def overlay_instances(rgb: np.ndarray, label_map: np.ndarray, alpha: float = 0.5,
                      prompts: Prompts | None = None, boundaries: bool = True) -> np.ndarray:
    """Tint each instance with its colour, outline it, and mark prompts (green fg, red bg)."""
    rgb = _check_rgb(rgb)
    lab = np.asarray(label_map)
    if lab.shape != rgb.shape[:2]:
        raise ValueError(f"label_map size {lab.shape} does not match image size {rgb.shape[:2]}")
    colours = colorize_labels(lab)
    fg = lab > 0
    out = rgb.copy()
    mixed = (1.0 - alpha) * rgb[fg].astype(np.float32) + alpha * colours[fg].astype(np.float32)
    out[fg] = np.clip(np.round(mixed), 0, 255).astype(np.uint8)
    if boundaries:
        # A pixel is on a boundary when a 4-neighbour has another id (instances and background).
        edge = np.zeros(lab.shape, bool)
        edge[:-1] |= lab[:-1] != lab[1:]
        edge[1:] |= lab[:-1] != lab[1:]
        edge[:, :-1] |= lab[:, :-1] != lab[:, 1:]
        edge[:, 1:] |= lab[:, :-1] != lab[:, 1:]
        edge &= fg
        out[edge] = 255
    if prompts is not None and len(prompts):
        r = max(3, round(0.008 * max(lab.shape)))
        for (x, y), label in zip(prompts.points, prompts.labels):
            if not (np.isfinite(x) and np.isfinite(y)):
                continue
            c = (0, 255, 0) if int(label) == 1 else (255, 0, 0)
            centre = (int(round(float(x))), int(round(float(y))))
            cv2.circle(out, centre, r + 2, (0, 0, 0), -1, lineType=cv2.LINE_AA)
            cv2.circle(out, centre, r, c, -1, lineType=cv2.LINE_AA)
    return out


def depth_to_rgb(depth: np.ndarray, lo: float | None = None, hi: float | None = None) -> np.ndarray:
    """Colour-mapped depth (near = warm); invalid pixels (0, NaN, negative) are black."""
    d = np.asarray(depth, dtype=np.float32)
    if d.ndim != 2:
        raise ValueError(f"depth must be (H, W), got shape {d.shape}")
    valid = np.isfinite(d) & (d > 0)
    out = np.zeros((*d.shape, 3), np.uint8)
    if not valid.any():
        return out
    vals = d[valid]
    lo = float(np.percentile(vals, 1)) if lo is None else float(lo)
    hi = float(np.percentile(vals, 99)) if hi is None else float(hi)
    scaled = np.zeros(d.shape, np.uint8)
    scaled[valid] = np.clip(np.round(255 * (1.0 - (vals - lo) / max(hi - lo, 1e-9))), 0, 255).astype(np.uint8)
    coloured = cv2.cvtColor(cv2.applyColorMap(scaled, cv2.COLORMAP_TURBO), cv2.COLOR_BGR2RGB)
    out[valid] = coloured[valid]
    return out


def heatmap_to_rgb(x: np.ndarray) -> np.ndarray:
    """(H, W) values in [0, 1] (clipped; NaN shown as 0) -> (H, W, 3) uint8 with the inferno map."""
    a = np.asarray(x, dtype=np.float32)
    if a.ndim != 2:
        raise ValueError(f"heatmap must be (H, W), got shape {a.shape}")
    a = np.clip(np.nan_to_num(a, nan=0.0), 0.0, 1.0)
    u8 = np.round(a * 255).astype(np.uint8)
    return cv2.cvtColor(cv2.applyColorMap(u8, cv2.COLORMAP_INFERNO), cv2.COLOR_BGR2RGB)


def save_png(path: str | Path, rgb: np.ndarray) -> Path:
    """Write an RGB (or single-channel) uint8 image, creating the parent folders."""
    path = Path(path)
    img = np.asarray(rgb)
    if img.dtype != np.uint8 or not (img.ndim == 2 or (img.ndim == 3 and img.shape[2] == 3)):
        raise ValueError(f"save_png needs (H, W) or (H, W, 3) uint8, got shape {img.shape} dtype {img.dtype}")
    path.parent.mkdir(parents=True, exist_ok=True)
    bgr = img if img.ndim == 2 else cv2.cvtColor(img, cv2.COLOR_RGB2BGR)
    if not cv2.imwrite(str(path), bgr):
        raise OSError(f"could not write PNG to {path}")
    return path
