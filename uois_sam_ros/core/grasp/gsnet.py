"""GSNet adapter: instance-level GSNet (graspness) grasps, for users who have it installed.

UOIS-SAM grasps with GSNet run on the scene and grasps assigned to instances by their masks.
This adapter does the same with the graspness implementation (models/graspnet.py: GraspNet,
pred_decode; dataset/graspnet_dataset.py: minkowski_collate_fn; MinkowskiEngine) and a
user-given checkpoint. None of that ships with this package, and nothing here is imported
unless ``grasp.backend`` is ``gsnet``; when it is selected but missing, GSNetUnavailable says
what is missing and how to point to it (``grasp.gsnet_repo``, ``grasp.gsnet_checkpoint``).

Per frame: the workspace points (the table included, as GSNet was trained on) are sampled to
``gsnet_points`` and voxelised at 5 mm (graspness' defaults); the network's GraspGroup rows
(17 values each) are converted to the Franka hand (franka.graspnet_to_franka: T_g @ G(depth));
each grasp goes to the instance under its fingertip point in the label map (the majority in a
5 x 5 pixel window), or to the instance most of the cloud between its pads belongs to; then
the same Franka collision check, grasp NMS and top-N as the built-in sampler.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np

from uois_sam_ros.core.config import GraspConfig
from uois_sam_ros.core.grasp.antipodal import nms
from uois_sam_ros.core.grasp.cloud import GraspScene, project, voxel_downsample
from uois_sam_ros.core.grasp.collision import collision_free
from uois_sam_ros.core.grasp.franka import PAD_HEIGHT, PAD_LENGTH, graspnet_rows_to_poses
from uois_sam_ros.core.grasp.types import Grasp

GSNET_VOXEL = 0.005  # graspness' voxel_size for the sparse convolutions, metres


class GSNetUnavailable(ImportError):
    """grasp.backend=gsnet was selected but its code, its dependencies or its weights are missing."""


def _import_graspness(repo: str | None):
    """(GraspNet, pred_decode, minkowski_collate_fn, torch) or GSNetUnavailable naming what is missing."""
    if repo:
        root = Path(repo).expanduser()
        if not (root / "models" / "graspnet.py").is_file():
            raise GSNetUnavailable(f"grasp.gsnet_repo {root} has no models/graspnet.py: point it at a checkout of "
                                   "the graspness implementation")
        if str(root) not in sys.path:
            sys.path.insert(0, str(root))
    import importlib.util

    if importlib.util.find_spec("models") is None:  # say so before importing torch (seconds)
        raise GSNetUnavailable(
            "grasp.backend=gsnet needs the graspness implementation (models/graspnet.py) importable: no 'models' "
            "package found. Set grasp.gsnet_repo to its folder, or use grasp.backend=antipodal (built in, no weights)")
    try:
        import torch
        from models.graspnet import GraspNet, pred_decode  # the graspness implementation
    except ImportError as e:
        raise GSNetUnavailable(
            f"grasp.backend=gsnet needs the graspness implementation (models/graspnet.py) and its "
            f"dependencies (torch, MinkowskiEngine, knn/pointnet2 ops) importable: {e}. Set grasp.gsnet_repo to "
            "its folder, or use grasp.backend=antipodal (built in, no weights)") from e
    try:
        from dataset.graspnet_dataset import minkowski_collate_fn
    except ImportError as e:
        raise GSNetUnavailable(f"grasp.backend=gsnet: the graspness implementation's dataset/graspnet_dataset.py "
                               f"(minkowski_collate_fn) cannot be imported: {e}") from e
    return GraspNet, pred_decode, minkowski_collate_fn, torch


class GSNetBackend:
    """Instance-level GSNet; see the module docstring."""

    name = "gsnet"

    def __init__(self, cfg: GraspConfig) -> None:
        self.cfg = cfg
        if not cfg.gsnet_checkpoint:
            raise GSNetUnavailable("grasp.backend=gsnet needs grasp.gsnet_checkpoint (a graspness checkpoint, "
                                   "e.g. minkuresunet_realsense.tar); none is set")
        ckpt = Path(cfg.gsnet_checkpoint).expanduser()
        if not ckpt.is_file():
            raise GSNetUnavailable(f"grasp.gsnet_checkpoint not found: {ckpt}")
        net_cls, self._decode, self._collate, torch = _import_graspness(cfg.gsnet_repo)
        from uois_sam_ros.core.config import resolve_device

        self.torch = torch
        self.device = resolve_device(cfg.device)
        state = torch.load(str(ckpt), map_location=self.device, weights_only=True)
        state = state.get("model_state_dict", state) if isinstance(state, dict) else state
        self.net = net_cls(seed_feat_dim=512, is_training=False)
        try:
            self.net.load_state_dict(state)
        except RuntimeError as e:
            raise GSNetUnavailable(f"{ckpt} does not fit graspness' GraspNet: {str(e).splitlines()[0]}") from e
        self.net.to(self.device).eval()
        self.rng = np.random.default_rng(cfg.seed)

    def predict(self, points: np.ndarray) -> np.ndarray:
        """GraspGroup rows (M, 17) for a camera-frame scene cloud."""
        n = len(points)
        k = int(self.cfg.gsnet_points)
        idx = self.rng.choice(n, k, replace=n < k) if n else np.zeros(0, np.int64)
        cloud = np.asarray(points, np.float32)[idx]
        batch = self._collate([{"point_clouds": cloud, "coors": cloud / GSNET_VOXEL,
                                "feats": np.ones_like(cloud)}])
        for key, val in batch.items():
            if hasattr(val, "to"):
                batch[key] = val.to(self.device)
        with self.torch.no_grad():
            preds = self._decode(self.net(batch))
        return preds[0].detach().cpu().numpy()

    def sample(self, scene: GraspScene) -> dict[int, list[Grasp]]:
        if scene.points_image is None or scene.workspace is None:
            return {}
        pts, _ = voxel_downsample(scene.points_image[scene.workspace], GSNET_VOXEL / 2)
        if len(pts) == 0:
            return {}
        return assign_grasps(self.predict(pts), scene, self.cfg)


def _instance_of(pose: np.ndarray, width: float, scene: GraspScene) -> int:
    """The instance a grasp is on: the label under its fingertip point (5 x 5 majority), else the
    instance most of the labelled cloud between the pads belongs to (0 = none)."""
    lab = scene.label_map
    if lab is not None:
        u, v = project(pose[None, :3, 3], scene.intrinsics)
        h, w = lab.shape
        if 0 <= u[0] < w and 0 <= v[0] < h:
            win = lab[max(0, v[0] - 2):v[0] + 3, max(0, u[0] - 2):u[0] + 3].ravel()
            win = win[win > 0]
            if len(win):
                ids, counts = np.unique(win, return_counts=True)
                return int(ids[np.argmax(counts)])
    loc = (scene.cloud - pose[:3, 3]) @ pose[:3, :3]
    between = ((np.abs(loc[:, 0]) <= PAD_HEIGHT / 2) & (np.abs(loc[:, 1]) <= width / 2)
               & (np.abs(loc[:, 2]) <= PAD_LENGTH / 2) & (scene.labels > 0))
    if not between.any():
        return 0
    ids, counts = np.unique(scene.labels[between], return_counts=True)
    return int(ids[np.argmax(counts)]) if counts.max() >= 3 else 0


def assign_grasps(rows: np.ndarray, scene: GraspScene, cfg: GraspConfig) -> dict[int, list[Grasp]]:
    """GraspGroup rows -> Franka grasps per instance: conversion, assignment by mask, the Franka
    collision check, grasp NMS, top-N. Grasps on no instance or wider than the hand are dropped."""
    poses, widths, scores, _ = graspnet_rows_to_poses(rows)  # graspnet's width is the opening
    ok = widths <= cfg.max_opening + 1e-9
    owners = np.array([_instance_of(p, w, scene) if o else 0 for p, w, o in zip(poses, widths, ok)], np.int64)
    keep = np.flatnonzero(ok & np.isin(owners, list(scene.instances)))
    if len(keep) == 0:
        return {}
    best = []  # the best max_candidates per instance get the collision check
    for i in np.unique(owners[keep]):
        mine = keep[owners[keep] == i]
        best.append(mine[np.argsort(-scores[mine], kind="stable")][:max(1, int(cfg.max_candidates))])
    keep = np.concatenate(best)
    obstacles, _ = scene.obstacles()
    free, inside, low = collision_free(poses[keep], widths[keep], obstacles, scene.table, cfg.approach_distance,
                                       cfg.collision_points, cfg.table_clearance, cfg.collision_margin)
    out: dict[int, list[Grasp]] = {}
    for j, k in enumerate(keep):
        if free[j]:
            out.setdefault(int(owners[k]), []).append(
                Grasp(int(owners[k]), poses[k], float(widths[k]), float(np.clip(scores[k], 0.0, 1.0)),
                      {"gsnet_score": float(scores[k]), "points_in_hand": float(inside[j]),
                       "table_clearance": float(low[j])}))
    angle = math.radians(cfg.nms_angle_deg)
    return {i: nms(g, cfg.nms_distance, angle)[:max(0, int(cfg.top_n))] for i, g in out.items()}
