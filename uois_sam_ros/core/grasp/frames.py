"""Frames: the hand-eye extrinsic (camera -> robot base), quaternions and pose transforms.

Grasps are computed in the camera optical frame (x right, y down, z forward). A robot wants
them in its base frame (``panda_link0``): ``T_base_grasp = T_base_camera @ T_camera_grasp``,
where ``T_base_camera`` maps camera coordinates to base coordinates (the pose of the camera
optical frame in the base frame, what ``tf2_echo panda_link0 camera_color_optical_frame``
prints). It is given as 16 numbers (a row-major 4x4) or 7 numbers ``x y z qx qy qz qw``
(ROS order: translation, then the quaternion with w last).
"""

from __future__ import annotations

import re

import numpy as np


class ExtrinsicError(ValueError):
    """An extrinsic that cannot be a rigid transform; the message says why."""


def quaternion_to_matrix(q: np.ndarray | list[float]) -> np.ndarray:
    """3x3 rotation from a quaternion (x, y, z, w), normalised first."""
    x, y, z, w = (float(v) for v in q)
    n = np.sqrt(x * x + y * y + z * z + w * w)
    if not np.isfinite(n) or n < 1e-9:
        raise ExtrinsicError(f"quaternion {list(q)} has no direction (norm {n})")
    x, y, z, w = x / n, y / n, z / n, w / n
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                     [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                     [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])


def matrix_to_quaternion(r: np.ndarray) -> np.ndarray:
    """Quaternion (x, y, z, w) with w >= 0 of a 3x3 rotation (Shepperd's method)."""
    m = np.asarray(r, float)
    tr = m[0, 0] + m[1, 1] + m[2, 2]
    if tr > 0:
        s = 2.0 * np.sqrt(tr + 1.0)
        q = np.array([(m[2, 1] - m[1, 2]) / s, (m[0, 2] - m[2, 0]) / s, (m[1, 0] - m[0, 1]) / s, s / 4])
    elif m[0, 0] > m[1, 1] and m[0, 0] > m[2, 2]:
        s = 2.0 * np.sqrt(1.0 + m[0, 0] - m[1, 1] - m[2, 2])
        q = np.array([s / 4, (m[0, 1] + m[1, 0]) / s, (m[0, 2] + m[2, 0]) / s, (m[2, 1] - m[1, 2]) / s])
    elif m[1, 1] > m[2, 2]:
        s = 2.0 * np.sqrt(1.0 + m[1, 1] - m[0, 0] - m[2, 2])
        q = np.array([(m[0, 1] + m[1, 0]) / s, s / 4, (m[1, 2] + m[2, 1]) / s, (m[0, 2] - m[2, 0]) / s])
    else:
        s = 2.0 * np.sqrt(1.0 + m[2, 2] - m[0, 0] - m[1, 1])
        q = np.array([(m[0, 2] + m[2, 0]) / s, (m[1, 2] + m[2, 1]) / s, s / 4, (m[1, 0] - m[0, 1]) / s])
    q /= np.linalg.norm(q)
    return -q if q[3] < 0 else q


def check_rigid(t: np.ndarray, what: str = "transform", tol: float = 1e-3) -> np.ndarray:
    """t as a float 4x4 if it is a rigid transform (orthonormal rotation, det +1, last row 0 0 0 1)."""
    t = np.asarray(t, float)
    if t.shape != (4, 4):
        raise ExtrinsicError(f"{what} must be 4x4, got shape {t.shape}")
    if not np.all(np.isfinite(t)):
        raise ExtrinsicError(f"{what} has non-finite entries")
    if not np.allclose(t[3], [0, 0, 0, 1], atol=tol):
        raise ExtrinsicError(f"{what}: the last row must be 0 0 0 1, got {t[3].tolist()}")
    r = t[:3, :3]
    err = float(np.abs(r @ r.T - np.eye(3)).max())
    if err > tol or np.linalg.det(r) < 0:
        raise ExtrinsicError(f"{what}: the 3x3 part is not a rotation (|R R^T - I| = {err:.2g}, "
                             f"det = {np.linalg.det(r):.3f})")
    return t


def parse_extrinsic(text: str | list[float] | np.ndarray | None) -> np.ndarray | None:
    """T_base_camera from '' (None: no extrinsic), 16 numbers (row-major 4x4) or 7 numbers
    (x y z qx qy qz qw). Numbers may be separated by spaces, commas or brackets."""
    if text is None:
        return None
    if isinstance(text, str):
        parts = [p for p in re.split(r"[\s,;\[\]()]+", text.strip()) if p]
        if not parts:
            return None
        try:
            vals = [float(p) for p in parts]
        except ValueError as e:
            raise ExtrinsicError(f"camera_to_base must be numbers: {e}") from None
    else:
        vals = [float(v) for v in np.asarray(text, float).reshape(-1)]
    if len(vals) == 16:
        return check_rigid(np.array(vals).reshape(4, 4), "camera_to_base")
    if len(vals) == 7:
        t = np.eye(4)
        t[:3, :3] = quaternion_to_matrix(vals[3:])
        t[:3, 3] = vals[:3]
        if not np.all(np.isfinite(t)):
            raise ExtrinsicError("camera_to_base has non-finite entries")
        return t
    raise ExtrinsicError(f"camera_to_base needs 16 numbers (a row-major 4x4) or 7 (x y z qx qy qz qw), "
                         f"got {len(vals)}")


def transform_poses(t: np.ndarray, poses: np.ndarray) -> np.ndarray:
    """t @ each pose of (N, 4, 4) poses."""
    return np.einsum("ij,njk->nik", np.asarray(t, float), np.asarray(poses, float).reshape(-1, 4, 4))


def transform_points(t: np.ndarray, pts: np.ndarray) -> np.ndarray:
    p = np.asarray(pts, float).reshape(-1, 3)
    return p @ t[:3, :3].T + t[:3, 3]


def rotation_angle(a: np.ndarray, b: np.ndarray) -> float:
    """Angle (radians) of the rotation between two 3x3 rotations."""
    c = (np.trace(np.asarray(a).T @ np.asarray(b)) - 1.0) / 2.0
    return float(np.arccos(np.clip(c, -1.0, 1.0)))
