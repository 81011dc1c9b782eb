"""Grasp results: one parallel-jaw grasp, and the grasps of one frame."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from uois_sam_ros.core.grasp.franka import hand_pose

if TYPE_CHECKING:
    from uois_sam_ros.core.grasp.cloud import GraspScene


@dataclass
class Grasp:
    """One grasp for a Franka hand.

    pose: 4x4 in the camera optical frame, Grasp.msg convention (origin between the pads = the
    panda_hand_tcp, z = approach, y = closing direction). width: the opening the hand needs,
    metres. score: quality in [0, 1]. details: the parts of the score and the measurements.
    """

    instance_id: int
    pose: np.ndarray
    width: float
    score: float
    details: dict[str, float] = field(default_factory=dict)

    @property
    def position(self) -> np.ndarray:
        return self.pose[:3, 3]

    @property
    def approach(self) -> np.ndarray:
        return self.pose[:3, 2]

    @property
    def closing(self) -> np.ndarray:
        return self.pose[:3, 1]

    def hand_pose(self) -> np.ndarray:
        """The panda_hand pose (0.1034 m behind the TCP along the approach)."""
        return hand_pose(self.pose)

    def transformed(self, t: np.ndarray) -> Grasp:
        """The same grasp with its pose expressed through the rigid transform t (e.g. T_base_camera)."""
        return Grasp(self.instance_id, np.asarray(t, float) @ self.pose, self.width, self.score, dict(self.details))

    def record(self, image: str) -> dict:
        """The --json record of uois-sam-grasp."""
        return {"image": image, "instance_id": int(self.instance_id),
                "pose": [[float(v) for v in row] for row in self.pose],
                "width": float(self.width), "score": float(self.score)}


@dataclass
class GraspResult:
    """The grasps of one frame: per instance id, best first; plus the scene they came from."""

    grasps: dict[int, list[Grasp]]
    scene: GraspScene | None = None
    warnings: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)

    def best(self, instance_id: int) -> Grasp | None:
        g = self.grasps.get(int(instance_id)) or []
        return g[0] if g else None

    def all(self) -> list[Grasp]:
        """Every grasp of the frame, by descending score (GraspArray order)."""
        out = [g for gs in self.grasps.values() for g in gs]
        return sorted(out, key=lambda g: -g.score)
