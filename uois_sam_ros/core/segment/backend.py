"""The two interfaces every method is assembled from: a prompt source and a promptable segmenter.

SAM (any size) and the weights-free geometric segmenter both implement PromptableSegmenter;
HPG, the SAM grid baselines and the geometric clusterer implement PromptSource. The
pipeline only talks to these, so a config value picks the method (Table IV rows).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from uois_sam_ros.core.types import Frame, Prompts


@dataclass
class Decoded:
    """Candidate masks for K prompts, M candidates each.

    masks: (K, M, H, W) bool at frame resolution.
    iou_pred: (K, M) the segmenter's own quality estimate (SAM's IoU head).
    scores: (K, M) the score used for selection (iou_pred + HDNet correction when enabled).
    """

    masks: np.ndarray
    iou_pred: np.ndarray
    scores: np.ndarray


@runtime_checkable
class PromptableSegmenter(Protocol):
    name: str

    def set_frame(self, frame: Frame) -> None:
        """Compute per-frame state once (SAM: the image embedding)."""

    def decode(self, prompts: Prompts) -> Decoded:
        """Decode all prompts of the current frame in one batch."""


@runtime_checkable
class PromptSource(Protocol):
    name: str

    def prompts(self, frame: Frame) -> Prompts:
        """Point prompts for one frame (may be empty)."""
