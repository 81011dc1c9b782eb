"""Prompt sources of the Table IV baselines: SAM's 32x32 grid, and the grid inside HPG's foreground.

The grid is segment-anything's own ``build_point_grid`` (the automatic mask generator's), scaled
to pixel centres of the frame.
"""

from __future__ import annotations

import numpy as np
from segment_anything.utils.amg import build_point_grid

from uois_sam_ros.core.types import Frame, Prompts


def grid_prompts(n_per_side: int, height: int, width: int) -> Prompts:
    """n x n points, row-major, at (i + 0.5) / n of the image, in pixel coordinates."""
    if n_per_side <= 0:
        raise ValueError(f"pipeline.grid_points must be positive, got {n_per_side}")
    g = build_point_grid(n_per_side)  # in [0, 1], x then y
    pts = g * np.array([width, height], np.float64) - 0.5
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
