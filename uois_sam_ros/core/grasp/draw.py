"""Grasp overlays: the Franka hand of each grasp drawn over the image (numpy + OpenCV only).

Each grasp is drawn as the hand seen by the camera: the two fingers (pad tip to finger mount,
at the grasp's width), the hand's bottom edge between them, and the wrist line back along the
approach; the colour goes from red (score 0) to green (score 1), thicker for an instance's best.
"""

from __future__ import annotations

import cv2
import numpy as np

from uois_sam_ros.core.grasp.franka import FINGER_MOUNT, PAD_LENGTH, TCP_OFFSET
from uois_sam_ros.core.grasp.types import Grasp
from uois_sam_ros.core.types import Intrinsics


def hand_outline(grasp: Grasp) -> list[tuple[np.ndarray, np.ndarray]]:
    """Segments (camera frame) of the hand's schematic outline."""
    w2 = grasp.width / 2
    tip, mount, wrist = PAD_LENGTH / 2, FINGER_MOUNT - TCP_OFFSET, -TCP_OFFSET
    local = [((0, -w2, tip), (0, -w2, mount)), ((0, w2, tip), (0, w2, mount)),
             ((0, -w2, mount), (0, w2, mount)), ((0, 0, mount), (0, 0, wrist))]
    r, t = grasp.pose[:3, :3], grasp.pose[:3, 3]
    return [(r @ np.asarray(a) + t, r @ np.asarray(b) + t) for a, b in local]


def _pixel(p: np.ndarray, k: Intrinsics) -> tuple[int, int] | None:
    if p[2] <= 1e-3:
        return None
    return int(round(p[0] / p[2] * k.fx + k.cx)), int(round(p[1] / p[2] * k.fy + k.cy))


def score_colour(score: float) -> tuple[int, int, int]:
    s = float(np.clip(score, 0.0, 1.0))
    return int(round(255 * (1 - s))), int(round(255 * s)), 40


def draw_grasps(rgb: np.ndarray, grasps: list[Grasp], intrinsics: Intrinsics, per_instance: int = 3,
                label: bool = True) -> np.ndarray:
    """A copy of rgb with the best ``per_instance`` grasps of each instance drawn (best last, on top)."""
    img = np.ascontiguousarray(np.asarray(rgb, np.uint8).copy())
    by_inst: dict[int, list[Grasp]] = {}
    for g in sorted(grasps, key=lambda g: -g.score):
        by_inst.setdefault(g.instance_id, []).append(g)
    scale = max(1, int(round(img.shape[1] / 640)))
    for iid, gs in by_inst.items():
        for rank, g in reversed(list(enumerate(gs[:per_instance]))):
            col = score_colour(g.score)
            thick = (3 if rank == 0 else 1) * scale
            for a, b in hand_outline(g):
                pa, pb = _pixel(a, intrinsics), _pixel(b, intrinsics)
                if pa is not None and pb is not None:
                    cv2.line(img, pa, pb, col, thick, cv2.LINE_AA)
            if rank == 0 and label:
                p = _pixel(g.position, intrinsics)
                if p is not None:
                    cv2.putText(img, f"{iid}:{g.score:.2f}", (p[0] + 4, p[1] - 4), cv2.FONT_HERSHEY_SIMPLEX,
                                0.4 * scale, (255, 255, 255), 1, cv2.LINE_AA)
    return img
