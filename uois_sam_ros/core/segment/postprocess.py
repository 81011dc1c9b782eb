"""Mask selection and filters after decoding (UOIS-SAM section IV-A).

Per prompt: the highest-scoring candidate, kept if its score exceeds the threshold. Then mask
NMS (IoU 0.3) and the large-mask filter: a mask is dropped when its bounding box does not fit
in max_box_height x max_box_width (200 x 200 at 480 x 640).

Scaling: the limit is a fraction of the field of view, so each side scales with the image side
it measures: max_h = 200 * H / 480, max_w = 200 * W / 640 (1280 x 720 -> 300 x 400).
min_area scales with the pixel count. Masks may be given at a lower resolution than the image
(SAM's low-res logits): ``pixel_scale`` says how many image pixels one mask pixel spans.
"""

from __future__ import annotations

import numpy as np
import torch

from uois_sam_ros.core.config import PostprocessConfig


def scale_box_limit(cfg: PostprocessConfig, height: int, width: int) -> tuple[int, int]:
    """(max_h, max_w) for an image of height x width: each side proportional to the reference."""
    return (int(round(cfg.max_box_height * height / cfg.reference_height)),
            int(round(cfg.max_box_width * width / cfg.reference_width)))


def scale_min_area(cfg: PostprocessConfig, height: int, width: int) -> float:
    return cfg.min_area * (height * width) / (cfg.reference_height * cfg.reference_width)


def select_best(scores: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row of (K, M) scores: (index of the best candidate, its score, kept = best > threshold)."""
    scores = np.asarray(scores, np.float32)
    if scores.ndim != 2:
        raise ValueError(f"scores must be (K, M), got {scores.shape}")
    if scores.shape[0] == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.float32), np.zeros(0, bool)
    idx = np.argmax(scores, axis=1)
    best = scores[np.arange(len(scores)), idx]
    return idx, best, best > threshold


def mask_iou(a: np.ndarray | torch.Tensor, b: np.ndarray | torch.Tensor) -> np.ndarray:
    """IoU matrix between (N, H, W) and (M, H, W) bool masks."""
    ta = torch.as_tensor(np.asarray(a, bool) if isinstance(a, np.ndarray) else a).flatten(1).float()
    tb = torch.as_tensor(np.asarray(b, bool) if isinstance(b, np.ndarray) else b).flatten(1).float()
    inter = ta @ tb.T
    union = ta.sum(1)[:, None] + tb.sum(1)[None, :] - inter
    return torch.where(union > 0, inter / union.clamp(min=1), torch.zeros_like(inter)).numpy()


def mask_nms(masks: np.ndarray | torch.Tensor, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Greedy mask NMS: indices kept, best score first; a mask whose IoU with a kept one exceeds
    iou_threshold is suppressed. Cost grows with the kept set only, so 1024 grid masks are fine."""
    m = torch.as_tensor(np.asarray(masks, bool) if isinstance(masks, np.ndarray) else masks)
    n = m.shape[0]
    if n == 0:
        return np.zeros(0, np.int64)
    flat = m.reshape(n, -1).float()
    areas = flat.sum(1)
    order = np.argsort(-np.asarray(scores, np.float32), kind="stable")
    kept: list[int] = []
    for i in order:
        if kept:
            inter = flat[kept] @ flat[i]
            union = areas[kept] + areas[i] - inter
            iou = torch.where(union > 0, inter / union.clamp(min=1), torch.zeros_like(inter))
            if bool((iou > iou_threshold).any()):
                continue
        kept.append(int(i))
    return np.asarray(kept, np.int64)


def box_sizes(masks: np.ndarray | torch.Tensor) -> np.ndarray:
    """(N, 2) bounding-box height, width in mask pixels (0 for empty masks)."""
    m = torch.as_tensor(np.asarray(masks, bool) if isinstance(masks, np.ndarray) else masks)
    if m.shape[0] == 0:
        return np.zeros((0, 2), np.int64)
    out = np.zeros((m.shape[0], 2), np.int64)
    rows, cols = m.any(2).numpy(), m.any(1).numpy()
    for i in range(m.shape[0]):
        r, c = np.flatnonzero(rows[i]), np.flatnonzero(cols[i])
        if len(r):
            out[i] = (r[-1] - r[0] + 1, c[-1] - c[0] + 1)
    return out


def size_filter(masks: np.ndarray | torch.Tensor, cfg: PostprocessConfig, height: int, width: int,
                pixel_scale: tuple[float, float] = (1.0, 1.0)) -> np.ndarray:
    """Bool keep per mask: the box fits the scaled 200 x 200 limit and the area reaches min_area.

    height, width: the image size the limits scale to; pixel_scale: image pixels per mask pixel (y, x).
    """
    m = torch.as_tensor(np.asarray(masks, bool) if isinstance(masks, np.ndarray) else masks)
    if m.shape[0] == 0:
        return np.zeros(0, bool)
    max_h, max_w = scale_box_limit(cfg, height, width)
    sy, sx = pixel_scale
    hw = box_sizes(m).astype(np.float64) * [sy, sx]
    area = m.reshape(m.shape[0], -1).sum(1).numpy() * sy * sx
    return (hw[:, 0] <= max_h + 1e-6) & (hw[:, 1] <= max_w + 1e-6) & (area >= scale_min_area(cfg, height, width))


def filter_masks(masks: np.ndarray | torch.Tensor, scores: np.ndarray, cfg: PostprocessConfig,
                 height: int, width: int, pixel_scale: tuple[float, float] = (1.0, 1.0)) -> np.ndarray:
    """NMS and the size filter in the configured order; indices kept, best score first."""
    scores = np.asarray(scores, np.float32)
    idx = np.arange(len(scores))
    if cfg.filter_before_nms:
        idx = idx[size_filter(masks, cfg, height, width, pixel_scale)]
        sub = masks[torch.as_tensor(idx)] if isinstance(masks, torch.Tensor) else np.asarray(masks)[idx]
        return idx[mask_nms(sub, scores[idx], cfg.nms_iou)]
    keep = mask_nms(masks, scores, cfg.nms_iou)
    sub = masks[torch.as_tensor(keep)] if isinstance(masks, torch.Tensor) else np.asarray(masks)[keep]
    return keep[size_filter(sub, cfg, height, width, pixel_scale)]
