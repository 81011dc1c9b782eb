"""The Franka hand: its geometry, its collision boxes, and the graspnet <-> Franka conversion.

Geometry (franka_description, end_effectors/common/franka_hand.xacro):

- ``panda_hand_tcp`` is 0.1034 m from ``panda_hand`` along z;
- both fingers are mounted at z = 0.0584 m and move along +y / -y by 0 to 0.04 m each, so the
  opening is at most 0.08 m;
- each finger's rubber pad is a box 17.5 mm (x) by 15.2 mm (y) by 18.5 mm (z) centred
  45.25 mm past the finger mount, i.e. at z = 0.0584 + 0.04525 = 0.10365 m: the TCP is the
  centre of the pads, and the pads reach 9.25 mm past it;
- the finger above the pad (diagonal part and screw mount) reaches at most 26 mm outwards from
  the pad's inner face and is 22 mm wide in x;
- the hand body lies between z = 0 and the finger mount; its self-collision capsule (radius
  0.04 m, length 0.1 m along y, at z = 0.04 m) bounds it by |x| <= 0.04 m and |y| <= 0.09 m.

The grasp frame of ``Grasp.msg`` is the TCP frame: origin between the pads, z = approach (from
the hand towards the object), y = closing direction (the fingers move along +-y), x = y x z.
The ``panda_hand`` pose is that frame moved back by 0.1034 m along its z axis:
``T_hand = T_grasp @ Trans(0, 0, -0.1034)``.

graspnetAPI's GraspGroup stores 17 numbers per grasp: score, width, height, depth, rotation
(3x3, row-major), translation (3), object_id. The rotation's columns are x_g = approach,
y_g = closing direction, z_g = x_g x y_g (the jaw height); the fingertips sit ``depth`` past
the translation along x_g. Converting a graspnet grasp (R_g, t_g, depth) to ours:

- axes: z = x_g (approach), y = y_g (closing), and x = y x z = y_g x x_g = -z_g.
  So R = R_g @ M with M = [[0, 0, 1], [0, 1, 0], [-1, 0, 0]] (the columns of M are our x, y, z
  written in graspnet's axes: -e3, e2, e1). M is a rotation by +90 degrees about y: det M = 1.
- origin: the point between the fingertips, t = t_g + depth * x_g = t_g + R_g @ (depth, 0, 0).

Together: ``T_grasp = T_g @ G(depth)`` with the fixed gripper transform
``G(depth) = [[M, (depth, 0, 0)], [0, 1]]``: a right-multiplication, as the graspnet-baseline
maintainers advise. The inverse is ``T_g = T_grasp @ G(depth)^-1``, which needs the depth that
graspnet should report (our grasps put the object at the pad centre; any depth is consistent).
graspnet's gripper reaches ``depth`` past the translation with its finger ends; the Franka's
pads extend 9.25 mm past the TCP, so mapping graspnet's fingertip point to the TCP makes the
Franka reach 9.25 mm deeper. Every converted grasp is collision-checked again with the Franka's
own boxes below, so that difference is checked rather than assumed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

TCP_OFFSET = 0.1034  # panda_hand -> panda_hand_tcp along z, metres
FINGER_MOUNT = 0.0584  # panda_hand -> finger joints along z, metres
MAX_OPENING = 0.08  # 2 x 0.04 m finger travel
PAD_LENGTH = 0.0185  # rubber pad extent along the approach (z), metres
PAD_HEIGHT = 0.0175  # rubber pad extent along x (the jaw height), metres
PAD_THICKNESS = 0.0152  # rubber pad extent along y, metres
FINGER_OUTER = 0.026  # the finger's farthest reach outwards from the pad's inner face, metres
FINGER_WIDTH = 0.022  # the finger's extent along x above the pad (screw mount), metres
PALM_HALF_X = 0.04  # hand body half extent along x (self-collision capsule radius), metres
PALM_HALF_Y = 0.09  # hand body half extent along y (capsule half length + radius), metres

# graspnet axes (approach, closing, height) -> ours (x = -height, y = closing, z = approach).
GRASPNET_TO_FRANKA = np.array([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [-1.0, 0.0, 0.0]])


@dataclass(frozen=True)
class Box:
    """An axis-aligned box in the grasp (TCP) frame: lo, hi corners, metres."""

    name: str
    lo: tuple[float, float, float]
    hi: tuple[float, float, float]

    def corners(self) -> np.ndarray:
        lo, hi = np.asarray(self.lo), np.asarray(self.hi)
        idx = np.array([[i, j, k] for i in (0, 1) for j in (0, 1) for k in (0, 1)])
        return np.where(idx == 0, lo, hi)

    @property
    def centre(self) -> np.ndarray:
        return (np.asarray(self.lo) + np.asarray(self.hi)) / 2

    @property
    def size(self) -> np.ndarray:
        return np.asarray(self.hi) - np.asarray(self.lo)


def hand_boxes(width: float, approach_distance: float = 0.0, margin: float = 0.0) -> list[Box]:
    """The Franka hand opened to ``width`` as boxes in the grasp frame, optionally swept back along
    the approach by ``approach_distance`` (the space the hand passes through on its last straight
    approach, graspnet-baseline's 'approach distance').

    Each finger is one box from the pad tip (z = +PAD_LENGTH/2) back to the finger mount, from the
    pad's inner face (|y| = width/2) out to FINGER_OUTER; the hand body is one box from the mount
    back to the hand frame (z = -TCP_OFFSET). Conservative: the finger's diagonal part is
    narrower than the box near the pad. ``margin`` grows every box on every side except the
    pads' inner faces (those face the object, ``finger_clearance`` away).
    """
    w2 = float(width) / 2.0
    tip = PAD_LENGTH / 2.0 + margin
    mount = FINGER_MOUNT - TCP_OFFSET  # -0.045: where the fingers leave the hand body
    back = float(approach_distance) + margin
    fx = FINGER_WIDTH / 2.0 + margin
    m = margin
    return [
        Box("left_finger", (-fx, -w2 - FINGER_OUTER - m, mount - back), (fx, -w2, tip)),
        Box("right_finger", (-fx, w2, mount - back), (fx, w2 + FINGER_OUTER + m, tip)),
        Box("palm", (-PALM_HALF_X - m, -PALM_HALF_Y - m, -TCP_OFFSET - back), (PALM_HALF_X + m, PALM_HALF_Y + m,
                                                                              mount)),
    ]


def closing_box(width: float) -> Box:
    """The space between the pads (what the fingers close on), in the grasp frame."""
    return Box("closing", (-PAD_HEIGHT / 2, -width / 2, -PAD_LENGTH / 2), (PAD_HEIGHT / 2, width / 2, PAD_LENGTH / 2))


def translation(x: float = 0.0, y: float = 0.0, z: float = 0.0) -> np.ndarray:
    t = np.eye(4)
    t[:3, 3] = (x, y, z)
    return t


def pose_from(rotation: np.ndarray, origin: np.ndarray) -> np.ndarray:
    t = np.eye(4)
    t[:3, :3] = rotation
    t[:3, 3] = origin
    return t


def hand_pose(grasp_pose: np.ndarray) -> np.ndarray:
    """The panda_hand pose for a grasp (TCP) pose: 0.1034 m back along the approach."""
    return np.asarray(grasp_pose, float) @ translation(z=-TCP_OFFSET)


def graspnet_gripper_transform(depth: float) -> np.ndarray:
    """G(depth): graspnet grasp frame -> our grasp frame (right-multiply a graspnet pose by it)."""
    g = np.eye(4)
    g[:3, :3] = GRASPNET_TO_FRANKA
    g[:3, 3] = (float(depth), 0.0, 0.0)
    return g


def graspnet_to_franka(rotation: np.ndarray, translation_g: np.ndarray, depth: float) -> np.ndarray:
    """Our 4x4 grasp pose (Grasp.msg convention) from a graspnet rotation, translation and depth."""
    return pose_from(np.asarray(rotation, float), np.asarray(translation_g, float)) @ graspnet_gripper_transform(depth)


def franka_to_graspnet(grasp_pose: np.ndarray, depth: float) -> tuple[np.ndarray, np.ndarray]:
    """(rotation, translation) of the graspnet grasp with the given depth that equals our pose."""
    t = np.asarray(grasp_pose, float) @ np.linalg.inv(graspnet_gripper_transform(depth))
    return t[:3, :3], t[:3, 3]


def graspnet_rows_to_poses(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """GraspGroup array (N, 17) -> (poses (N, 4, 4), widths, scores, object ids)."""
    a = np.asarray(rows, float)
    if a.ndim != 2 or a.shape[1] != 17:
        raise ValueError(f"a graspnet GraspGroup array has 17 columns, got shape {a.shape}")
    score, width, depth = a[:, 0], a[:, 1], a[:, 3]
    rot = a[:, 4:13].reshape(-1, 3, 3)
    trans = a[:, 13:16]
    poses = np.stack([graspnet_to_franka(r, t, d) for r, t, d in zip(rot, trans, depth)]) if len(a) else \
        np.zeros((0, 4, 4))
    return poses, width, score, a[:, 16]


def franka_to_graspnet_row(grasp_pose: np.ndarray, width: float, score: float, depth: float = 0.02,
                           height: float = 0.02, object_id: int = -1) -> np.ndarray:
    """One GraspGroup row (17 values) for our grasp, with the given depth and jaw height."""
    r, t = franka_to_graspnet(grasp_pose, depth)
    return np.concatenate([[score, width, height, depth], r.reshape(-1), t, [object_id]])
