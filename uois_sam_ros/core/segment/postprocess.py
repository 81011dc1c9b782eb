"""Mask selection and filters after decoding (UOIS-SAM section IV-A).

Per prompt: the highest-scoring candidate, kept if its score exceeds the threshold. Then mask
NMS (IoU 0.3) and the large-mask filter: a mask is dropped when its bounding box does not fit
in max_box_height x max_box_width (200 x 200 at 480 x 640).

Scaling: the limit is a fraction of the field of view, so each side scales with the image side
it measures: max_h = 200 * H / 480, max_w = 200 * W / 640 (1280 x 720 -> 300 x 400).
min_area scales with the pixel count. Masks may be given at a lower resolution than the image
(SAM's low-res logits): ``pixel_scale`` says how many image pixels one mask pixel spans.

Each step has a torch version (``*_t``) that keeps its work on the input's device and never reads
a value on the host, so the SAM path runs them on the GPU next to the decoder's outputs; the
numpy-facing functions wrap them and give the same indices in the same order.
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


def is_host_device(device: torch.device | str) -> bool:
    """True where a tensor's values can be read without a device round trip (the CPU): there the SAM
    path drops rejected prompts before the pairwise IoU instead of carrying them masked."""
    return torch.device(device).type == "cpu"


def _as_mask_tensor(masks: np.ndarray | torch.Tensor) -> torch.Tensor:
    t = torch.from_numpy(np.ascontiguousarray(masks, bool)) if not isinstance(masks, torch.Tensor) else masks
    if t.ndim != 3:
        raise ValueError(f"masks must be (N, H, W), got {tuple(t.shape)}")
    return t if t.dtype == torch.bool else t != 0


def _check_scale(pixel_scale: tuple[float, float]) -> tuple[float, float]:
    sy, sx = float(pixel_scale[0]), float(pixel_scale[1])
    if not (0.0 <= sy < float("inf") and 0.0 <= sx < float("inf")):
        raise ValueError(f"pixel_scale must be finite and non-negative, got {pixel_scale}")
    return sy, sx


def _largest_side(limit: float, scale: float, n: int) -> int:
    """Largest integer s in [0, n] with float(s) * scale <= limit in float64 (as the numpy filter
    computed it), -1 if none: the predicate is monotone for scale >= 0, so the device compares ints."""
    if not float(0) * scale <= limit:
        return -1
    lo, hi = 0, n
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if float(mid) * scale <= limit:
            lo = mid
        else:
            hi = mid - 1
    return lo


def _smallest_area(min_area: float, sy: float, sx: float, n: int) -> int:
    """Smallest integer a in [0, n] with float(a) * sy * sx >= min_area in float64, n + 1 if none."""
    if not float(n) * sy * sx >= min_area:
        return n + 1
    lo, hi = 0, n
    while lo < hi:
        mid = (lo + hi) // 2
        if float(mid) * sy * sx >= min_area:
            hi = mid
        else:
            lo = mid + 1
    return lo


# Torch versions: every value stays on the input's device and nothing reads it on the host (no
# .item(), bool(tensor), .cpu(), .numpy(), no loop whose trip count depends on values): on a GPU
# they queue kernels and return at once. Shapes, thresholds and configs are host values.


def select_best_t(scores: torch.Tensor, threshold: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``select_best`` on a (K, M) tensor: (idx int64, best float32, keep bool), on its device.
    The first maximum wins a tie (torch.argmax, as np.argmax); best > threshold compares in float32."""
    if scores.ndim != 2:
        raise ValueError(f"scores must be (K, M), got {tuple(scores.shape)}")
    s = scores.float()
    if s.shape[0] == 0:
        return (torch.zeros(0, dtype=torch.int64, device=s.device), s.new_zeros(0),
                torch.zeros(0, dtype=torch.bool, device=s.device))
    idx = s.argmax(dim=1)
    best = s.gather(1, idx[:, None])[:, 0]
    return idx, best, best > threshold


def score_order_t(scores: torch.Tensor) -> torch.Tensor:
    """Indices by descending score, ties in index order (np.argsort(-scores, kind="stable"))."""
    return torch.argsort(-scores.float(), stable=True)


def box_sizes_t(masks: torch.Tensor) -> torch.Tensor:
    """(N, 2) int64 bounding-box height, width in mask pixels (0 for empty masks), on masks' device."""
    m = _as_mask_tensor(masks)
    n, h, w = m.shape
    if n == 0 or h == 0 or w == 0:
        return torch.zeros((n, 2), dtype=torch.int64, device=m.device)
    sides = []
    for occupied, size in ((m.any(2), h), (m.any(1), w)):
        pos = torch.arange(size, device=m.device)
        first = torch.where(occupied, pos, size).amin(1)
        last = torch.where(occupied, pos, -1).amax(1)
        sides.append((last - first + 1).clamp(min=0))  # empty: -1 - size + 1 < 0 -> 0
    return torch.stack(sides, 1)


def size_filter_t(masks: torch.Tensor, cfg: PostprocessConfig, height: int, width: int,
                  pixel_scale: tuple[float, float] = (1.0, 1.0)) -> torch.Tensor:
    """``size_filter`` as a bool (N,) tensor on masks' device. The float64 limits of the numpy
    filter become exact integer limits on the host (side <= max_h / max_w, area >= min_area)."""
    m = _as_mask_tensor(masks)
    n = m.shape[0]
    if n == 0:
        return torch.zeros(0, dtype=torch.bool, device=m.device)
    sy, sx = _check_scale(pixel_scale)
    max_h, max_w = scale_box_limit(cfg, height, width)
    h_lim = _largest_side(max_h + 1e-6, sy, m.shape[1])
    w_lim = _largest_side(max_w + 1e-6, sx, m.shape[2])
    a_min = _smallest_area(scale_min_area(cfg, height, width), sy, sx, m.shape[1] * m.shape[2])
    hw = box_sizes_t(m)
    area = m.reshape(n, -1).sum(1)
    return (hw[:, 0] <= h_lim) & (hw[:, 1] <= w_lim) & (area >= a_min)


def mask_iou_t(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU matrix of (N, P) and (M, P) flattened 0/1 float masks, on their device (0 where both are
    empty). Products of 0/1 entries are exact counts in float32 (TF32 too: 0 and 1 are exact)."""
    inter = a @ b.T
    union = a.sum(1)[:, None] + b.sum(1)[None, :] - inter
    return torch.where(union > 0, inter / union.clamp(min=1), torch.zeros_like(inter))


def _nms_keep(m: torch.Tensor, order: torch.Tensor, iou_threshold: float,
              valid: torch.Tensor | None) -> torch.Tensor:
    n = m.shape[0]
    flat = m.reshape(n, -1)[order].float()
    iou = mask_iou_t(flat, flat)
    # spare[j, i]: a kept j (before i in the order) leaves i alone
    spare = ~torch.triu(iou > iou_threshold, diagonal=1)
    alive = torch.ones(n, dtype=torch.bool, device=m.device) if valid is None else valid[order].clone()
    for i in range(n - 1):  # greedy: alive[i] is final once the masks before it are done
        alive[i + 1:].logical_and_(torch.where(alive[i], spare[i, i + 1:], True))  # two kernels
    keep = torch.empty_like(alive)
    keep[order] = alive
    return keep


def mask_nms_t(masks: torch.Tensor, scores: torch.Tensor, iou_threshold: float,
               valid: torch.Tensor | None = None) -> torch.Tensor:
    """Greedy mask NMS as a bool (N,) keep tensor in input order, on masks' device: best score
    first (``score_order_t``), a mask whose IoU with a kept one exceeds iou_threshold is dropped.
    valid (bool (N,), optional): masks outside it are neither kept nor suppress others, as if absent.
    The kept indices, best first: ``kept_in_order(score_order_t(scores), keep)``."""
    m = _as_mask_tensor(masks)
    if m.shape[0] == 0:
        return torch.zeros(0, dtype=torch.bool, device=m.device)
    return _nms_keep(m, score_order_t(torch.as_tensor(scores, device=m.device)), iou_threshold, valid)


def filter_masks_t(masks: torch.Tensor, scores: torch.Tensor, cfg: PostprocessConfig, height: int, width: int,
                   pixel_scale: tuple[float, float] = (1.0, 1.0),
                   valid: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``filter_masks`` on the device: (order, keep), the score order and the bool (N,) masks that
    pass NMS and the size filter in the configured order; masks outside valid count as absent.
    The kept indices, best first, are ``order[keep[order]]`` (``kept_in_order``)."""
    m = _as_mask_tensor(masks)
    n = m.shape[0]
    order = score_order_t(torch.as_tensor(scores, device=m.device))
    if n == 0:
        return order, torch.zeros(0, dtype=torch.bool, device=m.device)
    ok = size_filter_t(m, cfg, height, width, pixel_scale)
    if cfg.filter_before_nms:
        return order, _nms_keep(m, order, cfg.nms_iou, ok if valid is None else ok & valid)
    return order, _nms_keep(m, order, cfg.nms_iou, valid) & ok


def kept_in_order(order: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """The kept indices, best first. Its length depends on the values: on a GPU this is the one
    step that waits for the device."""
    return order[keep[order]]


# The numpy-facing versions (the weights-free and grid paths, other modules): the torch versions
# above on the masks' device, results as numpy.


def select_best(scores: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row of (K, M) scores: (index of the best candidate, its score, kept = best > threshold)."""
    scores = np.asarray(scores, np.float32)
    if scores.ndim != 2:
        raise ValueError(f"scores must be (K, M), got {scores.shape}")
    return tuple(t.numpy() for t in select_best_t(torch.from_numpy(scores), threshold))


def mask_iou(a: np.ndarray | torch.Tensor, b: np.ndarray | torch.Tensor) -> np.ndarray:
    """IoU matrix between (N, H, W) and (M, H, W) bool masks."""
    ta = torch.as_tensor(np.asarray(a, bool) if isinstance(a, np.ndarray) else a).flatten(1).float()
    tb = torch.as_tensor(np.asarray(b, bool) if isinstance(b, np.ndarray) else b).flatten(1).float()
    return mask_iou_t(ta, tb).numpy()


def _scores_on(scores: np.ndarray | torch.Tensor, device: torch.device) -> torch.Tensor:
    if isinstance(scores, torch.Tensor):
        return scores.to(device=device, dtype=torch.float32)
    return torch.from_numpy(np.asarray(scores, np.float32).reshape(-1)).to(device)


def mask_nms(masks: np.ndarray | torch.Tensor, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Greedy mask NMS: indices kept, best score first; a mask whose IoU with a kept one exceeds
    iou_threshold is suppressed (``mask_nms_t`` on the masks' device)."""
    m = _as_mask_tensor(masks)
    s = _scores_on(scores, m.device)
    return kept_in_order(score_order_t(s), mask_nms_t(m, s, iou_threshold)).cpu().numpy()


def box_sizes(masks: np.ndarray | torch.Tensor) -> np.ndarray:
    """(N, 2) bounding-box height, width in mask pixels (0 for empty masks)."""
    return box_sizes_t(_as_mask_tensor(masks)).cpu().numpy()


def size_filter(masks: np.ndarray | torch.Tensor, cfg: PostprocessConfig, height: int, width: int,
                pixel_scale: tuple[float, float] = (1.0, 1.0)) -> np.ndarray:
    """Bool keep per mask: the box fits the scaled 200 x 200 limit and the area reaches min_area.

    height, width: the image size the limits scale to; pixel_scale: image pixels per mask pixel (y, x).
    """
    return size_filter_t(_as_mask_tensor(masks), cfg, height, width, pixel_scale).cpu().numpy()


def filter_masks(masks: np.ndarray | torch.Tensor, scores: np.ndarray, cfg: PostprocessConfig,
                 height: int, width: int, pixel_scale: tuple[float, float] = (1.0, 1.0)) -> np.ndarray:
    """NMS and the size filter in the configured order; indices kept, best score first."""
    m = _as_mask_tensor(masks)
    order, keep = filter_masks_t(m, _scores_on(scores, m.device), cfg, height, width, pixel_scale)
    return kept_in_order(order, keep).cpu().numpy()
