"""Prompt sources of the Table IV baselines: SAM's 32x32 grid, and the grid inside HPG's foreground.

The grid is exactly the points SamAutomaticMaskGenerator gives SAM: segment-anything's
``build_point_grid`` scaled by (width, height), i.e. x = (i + 0.5) / n * W. Pixel coordinates
follow the package convention (README "Messages"): integer coordinates are pixel centres, as in
SAM's prompt encoder and OpenCV, so AMG's points sit half a pixel right of / below the exact
fractions of the image; they are kept as they are so that the grid method equals AMG.
"""

from __future__ import annotations

import numpy as np
from segment_anything.utils.amg import build_point_grid

from uois_sam_ros.core.types import Frame, Prompts


def amg_points(n_per_side: int, height: int, width: int) -> np.ndarray:
    """(n*n, 2) float64 (x, y): SamAutomaticMaskGenerator's point grid for a height x width image."""
    if n_per_side <= 0:
        raise ValueError(f"pipeline.grid_points must be positive, got {n_per_side}")
    g = build_point_grid(n_per_side)  # in [0, 1], x then y, row-major
    return g * np.array([width, height])[None, :]


def grid_prompts(n_per_side: int, height: int, width: int) -> Prompts:
    """The AMG grid as Prompts (float32), row-major."""
    pts = amg_points(n_per_side, height, width)
    k = len(pts)
    return Prompts(pts, np.ones(k, np.int64), np.ones(k, np.float32))


def restrict_to_foreground(prompts: Prompts, fg_prob: np.ndarray, threshold: float,
                           height: int, width: int) -> Prompts:
    """Keep prompts whose pixel (nearest sample of fg_prob, given at any resolution) exceeds threshold."""
    if len(prompts) == 0:
        return prompts
    fh, fw = fg_prob.shape
    cols = np.clip(np.floor((prompts.points[:, 0] + 0.5) * fw / width), 0, fw - 1).astype(int)
    rows = np.clip(np.floor((prompts.points[:, 1] + 0.5) * fh / height), 0, fh - 1).astype(int)
    vals = fg_prob[rows, cols]
    keep = vals > threshold
    return Prompts(prompts.points[keep], prompts.labels[keep], vals[keep])


class GridPromptSource:
    """The SAM automatic-generator baseline's prompts (Table IV row 1)."""

    name = "grid"

    def __init__(self, n_per_side: int = 32) -> None:
        self.n = n_per_side

    def prompts(self, frame: Frame) -> Prompts:
        return grid_prompts(self.n, frame.height, frame.width)


class ForegroundGridPromptSource:
    """Grid points where HPG's foreground probability exceeds its threshold (Table IV row 2)."""

    name = "grid_fg"

    def __init__(self, hpg, n_per_side: int = 32) -> None:  # hpg: core.hpg.HPG
        self.hpg = hpg
        self.n = n_per_side

    def prompts(self, frame: Frame) -> Prompts:
        fg = self.hpg.foreground(frame)
        return restrict_to_foreground(grid_prompts(self.n, frame.height, frame.width), fg,
                                      self.hpg.cfg.fg_threshold, frame.height, frame.width)
