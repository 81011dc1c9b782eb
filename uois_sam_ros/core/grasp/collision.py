"""Collision check of the Franka hand against a point cloud and the table plane.

Modelled on graspnet-baseline's model-free collision detector (scene points inside the
fingers, the palm, or the space swept on the approach count as collisions; voxel 0.01,
approach distance 0.05), with the Franka hand's own boxes (franka.py) instead of graspnet's
generic gripper, a point-count threshold instead of a volume ratio, and the table as an exact
plane: the fingertips must stay ``table_clearance`` above it, however the table was sampled.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree

from uois_sam_ros.core.grasp.cloud import Table
from uois_sam_ros.core.grasp.franka import hand_boxes

_CHUNK_ELEMENTS = 500_000  # grasps x points per vectorised step (bounded memory)


def points_in_hand(poses: np.ndarray, widths: np.ndarray, points: np.ndarray,
                   approach_distance: float, margin: float = 0.0, tree: cKDTree | None = None) -> np.ndarray:
    """(K,) number of points inside each hand (fingers, palm and their approach sweep), the
    boxes grown by ``margin`` (franka.hand_boxes). With ``tree`` (a cKDTree of ``points``) only
    the points within the hand's bounding sphere are tested, pose by pose."""
    poses = np.asarray(poses, np.float32).reshape(-1, 4, 4)
    widths = np.asarray(widths, float).reshape(-1)
    pts = np.asarray(points, np.float32).reshape(-1, 3)
    out = np.zeros(len(poses), np.int64)
    if len(pts) == 0 or len(poses) == 0:
        return out
    boxes = [hand_boxes(w, approach_distance, margin) for w in widths]
    lo_all = np.array([[b.lo for b in bs] for bs in boxes], np.float32)  # (K, B, 3)
    hi_all = np.array([[b.hi for b in bs] for bs in boxes], np.float32)
    if tree is not None:
        c_loc = (lo_all.min(axis=1) + hi_all.max(axis=1)) / 2  # (K, 3) bounding box centre, grasp frame
        rad = np.linalg.norm(hi_all.max(axis=1) - lo_all.min(axis=1), axis=1) / 2
        centres = np.einsum("kij,kj->ki", poses[:, :3, :3], c_loc) + poses[:, :3, 3]
        for k in range(len(poses)):
            idx = tree.query_ball_point(centres[k], float(rad[k]))
            if not idx:
                continue
            loc = (pts[idx] - poses[k, :3, 3]) @ poses[k, :3, :3]
            inside = np.all((loc[:, None, :] > lo_all[k][None]) & (loc[:, None, :] < hi_all[k][None]), axis=2)
            out[k] = int(inside.any(axis=1).sum())
        return out
    step = max(1, _CHUNK_ELEMENTS // len(pts))
    for s in range(0, len(poses), step):
        r = poses[s:s + step, :3, :3]
        t = poses[s:s + step, :3, 3]
        local = np.einsum("mj,kji->kmi", pts, r) - np.einsum("kj,kji->ki", t, r)[:, None, :]
        lo = lo_all[s:s + step, None]  # (k, 1, B, 3)
        hi = hi_all[s:s + step, None]
        loc = local[:, :, None, :]
        hit = np.all((loc > lo) & (loc < hi), axis=3).any(axis=2)
        out[s:s + step] = hit.sum(axis=1)
    return out


def table_clearance(poses: np.ndarray, widths: np.ndarray, table: Table | None,
                    approach_distance: float) -> np.ndarray:
    """(K,) lowest height above the table of any corner of the hand boxes (inf without a table)."""
    poses = np.asarray(poses, float).reshape(-1, 4, 4)
    if table is None:
        return np.full(len(poses), np.inf)
    out = np.empty(len(poses))
    for k, (p, w) in enumerate(zip(poses, np.asarray(widths, float).reshape(-1))):
        corners = np.concatenate([b.corners() for b in hand_boxes(w, approach_distance)])
        out[k] = float(table.height(corners @ p[:3, :3].T + p[:3, 3]).min())
    return out


def collision_free(poses: np.ndarray, widths: np.ndarray, points: np.ndarray, table: Table | None,
                   approach_distance: float, max_points: int, clearance: float, margin: float = 0.0,
                   tree: cKDTree | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(free (K,) bool, points inside (K,), table clearance (K,)): free when fewer than
    ``max_points`` points lie in the hand (boxes grown by ``margin``) and every hand corner is
    ``clearance`` above the table."""
    inside = points_in_hand(poses, widths, points, approach_distance, margin, tree)
    low = table_clearance(poses, widths, table, approach_distance)
    return (inside < max(1, int(max_points))) & (low >= clearance), inside, low
