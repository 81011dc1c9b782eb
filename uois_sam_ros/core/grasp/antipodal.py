"""The built-in antipodal grasp sampler (weights-free, the default backend).

Per instance, on its cloud (visible points plus the inferred hidden sides, cloud.py):

1. Hand orientations. The closing direction y lies in the table plane, at ``yaw_steps``
   angles over 180 degrees plus the two axes of the footprint's minimum-area rectangle (a box's
   faces). The approach z is straight down onto the table, or tilted about y by up to
   ``max_tilt_deg`` (``tilt_steps`` per side); and, from straight down, rolled about x by
   +-ROLLS_DEG, so that the closing direction dips below the table plane (across a sloped wall:
   a bowl's rim). Never away from the camera: a hand that comes from the far side passes
   through what the camera cannot see. x = y x z.
2. Hand positions. Along x, ``slices`` positions over the object (quantiles of its points and
   its centroid); the pads are 17.5 mm high there. Along z, the pad centre goes ``d`` past the
   first surface the pads would meet, for d in max_grasp_depth x (1..depth_steps)/depth_steps,
   but never so deep that the fingertips (or, rolled, the lower finger) come within
   ``table_clearance`` of the table (flat objects are taken at their rim, a lying pen with the
   fingertips just above the table). Along y, the hand is centred on what lies between the
   pads: all of it, or each part separated from the rest by a gap a finger fits into (the
   wall of a mug or a bowl). Some of it must be visible, not only inferred.
3. Width: that extent plus ``finger_clearance`` on each side, at most ``max_opening`` (0.08);
   an object too wide for the full clearance still fits with TIGHT_CLEARANCE (a 7.5 cm can).
   Nothing else of the object may lie within a finger's reach behind a pad in the jaw's slab
   (a wall cut obliquely is longer than the width).
4. Antipodal test (GPD): at least ``min_contact_points`` surface points on each side, within
   1 cm of the extreme, whose outward normals lie within ``friction_deg`` of the closing
   direction (pointing away from the hand's centre); THIN_CONTACTS on a low object
   (cloud.LOW_OBJECT: a lying pen's contact band is a few millimetres high).
5. Collision check (collision.py) of the fingers, the palm and the approach sweep against the
   collision cloud of the whole scene (the target included) plus every instance's hidden
   sides, and of the hand against the table plane; the candidates are checked best first (by the
   score below, at most ``max_candidates``) until 4 x ``top_n`` are collision-free.
6. Score in [0, 1]: 0.3 x antipodal quality (how far inside the friction cone the contact
   normals are) + 0.25 x centring (distance of the object's centroid from the closing line,
   Gaussian with 3 cm sigma: less torque) + 0.15 x cos(tilt) (the approach's angle from straight
   down: the easiest approach for an arm above a table) + 0.3 x (1 - |closing . view|)
   (closing across the line of sight puts both contacts on the object's silhouette, which the
   camera sees); then times 1 - W_UNSEEN x the share of the worse pad's space the camera could
   not see (unseen_pad_share: behind an object's observed surface, where only inference says
   what is there).
7. Grasp NMS (a grasp within ``nms_distance`` and ``nms_angle_deg`` of a better one is
   dropped; a parallel-jaw grasp equals itself turned 180 degrees about its approach) and the
   ``top_n`` best.

Without a table plane 'up' is the camera's -y axis and there is no table collision surface.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from uois_sam_ros.core.config import GraspConfig
from uois_sam_ros.core.grasp.cloud import GraspScene, InstanceCloud, Table, _plane_basis, project
from uois_sam_ros.core.grasp.collision import collision_free
from uois_sam_ros.core.grasp.frames import rotation_angle
from uois_sam_ros.core.grasp.franka import (
    FINGER_OUTER,
    FINGER_WIDTH,
    PAD_HEIGHT,
    PAD_LENGTH,
    PAD_THICKNESS,
    pose_from,
)
from uois_sam_ros.core.grasp.types import Grasp

CONTACT_BAND = 0.01  # contact points lie within this of the extreme along the closing axis, metres
THIN_CONTACTS = 3  # contacts per side needed on a low object (cloud.LOW_OBJECT) instead of min_contact_points
TIGHT_CLEARANCE = 0.0025  # an object too wide for finger_clearance on both sides may still take this, metres
ROLLS_DEG = (20.0, 40.0)  # closing directions dipped this far below the table plane (both ways), degrees
MIN_PAD_OVERLAP = 0.005  # the pads must reach this far past the first surface, metres
COLLISION_BATCH = 24  # candidates collision-checked per step, best first
EXTRA_FREE = 4  # stop checking once top_n x this are collision-free (NMS keeps top_n of them)
W_ANTIPODAL, W_CENTRE, W_TILT, W_VIEW = 0.3, 0.25, 0.15, 0.3  # score weights (sum 1)
W_UNSEEN = 0.5  # the score shrinks by this x the unseen share of the worse pad (unseen_pad_share)
UNSEEN_TOL = 0.01  # a pad point this far behind the observed surface is unseen, metres
_FLIP = np.diag([-1.0, -1.0, 1.0])  # 180 degrees about the approach: the same parallel-jaw grasp


def up_vector(table: Table | None) -> np.ndarray:
    return table.up if table is not None else np.array([0.0, -1.0, 0.0])


def _horizontal(point: np.ndarray, up: np.ndarray) -> np.ndarray:
    """The horizontal part of the unit line of sight from the camera (the origin) to a point:
    length cos(elevation), so zero when the camera looks straight down on it."""
    v = np.asarray(point, float) / max(float(np.linalg.norm(point)), 1e-9)
    return v - (v @ up) * up


def _segments(py: np.ndarray, sel: np.ndarray, gap: float) -> list[np.ndarray]:
    """The selected points split where they leave a gap along y wide enough for a finger (a mug's
    or a bowl's wall can be grasped on its own), plus all of them together."""
    idx = np.flatnonzero(sel)
    order = idx[np.argsort(py[idx])]
    cuts = np.flatnonzero(np.diff(py[order]) > gap)
    out = [sel]
    if len(cuts):
        for part in np.split(order, cuts + 1):
            m = np.zeros_like(sel)
            m[part] = True
            out.append(m)
    return out


def hand_rotations(up: np.ndarray, yaws: np.ndarray, tilts: np.ndarray, rolls: np.ndarray | None = None
                   ) -> tuple[np.ndarray, np.ndarray]:
    """(R (K, 3, 3), tilt of each: the approach's angle from straight down) for closing
    directions at the yaws (in the plane normal to up) and approaches tilted about the closing
    direction from straight down; then, for the straight-down approach only, each nonzero roll
    turns the closing direction and the approach together about x (the closing direction dips
    below the table plane: across a sloped wall, a bowl's rim)."""
    e1, e2 = _plane_basis(up)
    out, tilt = [], []
    for phi in yaws:
        y = math.cos(phi) * e1 + math.sin(phi) * e2
        h = np.cross(up, y)
        for th in tilts:
            z = -math.cos(th) * up + math.sin(th) * h
            x = np.cross(y, z)
            out.append(np.stack([x, y, z], axis=1))
            tilt.append(abs(th))
        x = np.cross(y, -up)
        for rho in (rolls if rolls is not None else ()):
            if abs(rho) < 1e-9:
                continue
            yr = math.cos(rho) * y - math.sin(rho) * up
            zr = -math.sin(rho) * y - math.cos(rho) * up
            out.append(np.stack([x, yr, zr], axis=1))
            tilt.append(abs(rho))
    return np.array(out), np.array(tilt)


def contact_counts(local: np.ndarray, nloc: np.ndarray, sel: np.ndarray, cos_mu: float
                   ) -> tuple[int, int, float, float, float]:
    """Antipodal contacts of the points ``sel`` (between the pads) in grasp coordinates:
    (left count, right count, quality in [cos_mu, 1] or 0, y_lo, y_hi)."""
    py = local[sel, 1]
    ny = nloc[sel, 1]
    lo, hi = float(py.min()), float(py.max())
    left = (py <= lo + CONTACT_BAND) & (ny <= -cos_mu)
    right = (py >= hi - CONTACT_BAND) & (ny >= cos_mu)
    nl, nr = int(left.sum()), int(right.sum())
    q = min(float(-ny[left].mean()), float(ny[right].mean())) if nl and nr else 0.0
    return nl, nr, q, lo, hi


class AntipodalSampler:
    """Parallel-jaw grasps for a Franka hand on instance clouds; see the module docstring."""

    name = "antipodal"

    def __init__(self, cfg: GraspConfig | None = None) -> None:
        self.cfg = cfg or GraspConfig()

    def sample(self, scene: GraspScene, instance_ids: list[int] | None = None) -> dict[int, list[Grasp]]:
        ids = list(scene.instances) if instance_ids is None else [i for i in instance_ids if i in scene.instances]
        return {i: self.sample_instance(scene, scene.instances[i]) for i in ids}

    # ------------------------------------------------------------------ candidates
    def _yaws(self, inst: InstanceCloud, up: np.ndarray) -> np.ndarray:
        n = max(1, int(self.cfg.yaw_steps))
        yaws = list(np.arange(n) * math.pi / n)
        e1, e2 = _plane_basis(up)
        q = np.stack([inst.model_points @ e1, inst.model_points @ e2], axis=1).astype(np.float32)
        if len(q) >= 3:
            (_, _), (_, _), ang = cv2.minAreaRect(q)
            a = math.radians(ang)
            yaws += [a % math.pi, (a + math.pi / 2) % math.pi]
        return np.array(yaws)

    def _tilts(self) -> np.ndarray:
        k = max(0, int(self.cfg.tilt_steps))
        if k == 0 or self.cfg.max_tilt_deg <= 0:
            return np.zeros(1)
        step = math.radians(self.cfg.max_tilt_deg) / k
        return np.array([0.0] + [s * j * step for j in range(1, k + 1) for s in (1, -1)])

    def candidates(self, scene: GraspScene, inst: InstanceCloud) -> list[dict]:
        """Every hand pose that passes the width and antipodal tests (no collision check yet)."""
        cfg = self.cfg
        up = up_vector(scene.table)
        pts, nrm = inst.model_points, inst.model_normals
        n_visible = len(inst.points)
        centroid = pts.mean(axis=0)
        view = _horizontal(centroid, up)
        cos_mu = math.cos(math.radians(cfg.friction_deg))
        rolls = np.radians([s * r for r in ROLLS_DEG for s in (1, -1)])
        rots, tilts = hand_rotations(up, self._yaws(inst, up), self._tilts(), rolls)
        depths = cfg.max_grasp_depth * np.arange(1, max(1, cfg.depth_steps) + 1) / max(1, cfg.depth_steps)
        need = max(1, int(cfg.min_contact_points))
        if inst.low:  # a lying pen's contact band is a few mm high: it never shows 6 points a side
            need = min(need, THIN_CONTACTS)
        gap = PAD_THICKNESS + 2 * cfg.finger_clearance  # a finger fits into a gap this wide
        out = []
        for r, tilt in zip(rots, tilts):
            if tilt > 0 and float(r[:, 2] @ view) < -0.05:
                continue  # tilted away from the camera: the hand would come through the unseen side
            local = pts @ r
            nloc = nrm @ r
            px = local[:, 0]
            cx = float(centroid @ r[:, 0])
            slices = np.unique(np.round(np.concatenate(
                [np.quantile(px, np.linspace(0.15, 0.85, max(1, cfg.slices))), [cx]]) / 0.004) * 0.004)
            k_up = float(r[:, 2] @ up)  # height change per metre along the approach (< 0)
            for xc in slices:
                idx = np.flatnonzero(np.abs(px - xc) <= PAD_HEIGHT / 2)
                if len(idx) < 2 * need:
                    continue
                sl, nsl, vis = local[idx], nloc[idx], idx < n_visible  # the slice's points only
                first = float(sl[:, 2].min())
                ta_max = np.inf
                if scene.table is not None and k_up < -1e-6:
                    # the pad tips and the fingers' outer corners stay table_clearance above the table
                    base = scene.table.height(r @ np.array([xc, 0.0, 0.0]))
                    reach = (PAD_LENGTH / 2 * -k_up + FINGER_WIDTH / 2 * abs(float(r[:, 0] @ up))
                             + (cfg.max_opening / 2 + FINGER_OUTER) * abs(float(r[:, 1] @ up)))
                    ta_max = (base - reach - cfg.table_clearance - 1e-4) / -k_up  # 0.1 mm: not on the limit
                tas = sorted({round(min(first + d, ta_max), 4) for d in depths})
                for ta in tas:
                    if ta < first - PAD_LENGTH / 2 + MIN_PAD_OVERLAP:
                        continue  # the pads would barely reach the object
                    sel = np.abs(sl[:, 2] - ta) <= PAD_LENGTH / 2
                    if sel.sum() < 2 * need:
                        continue
                    for part in _segments(sl[:, 1], sel, gap):
                        if part.sum() < 2 * need or not (part & vis).any():
                            continue  # nothing seen between the pads: the grasp would rest on inference
                        nl, nr, q, lo, hi = contact_counts(sl, nsl, part, cos_mu)
                        width = min(hi - lo + 2 * cfg.finger_clearance, cfg.max_opening)
                        if nl < need or nr < need or hi - lo + 2 * TIGHT_CLEARANCE > cfg.max_opening:
                            continue
                        around = sel & (np.abs(sl[:, 1] - (lo + hi) / 2) <= width / 2 + FINGER_OUTER)
                        if np.ptp(sl[around, 1]) > width:
                            continue  # more of the object right behind a pad (a wall cut obliquely)
                        t = r @ np.array([xc, (lo + hi) / 2, ta])
                        out.append({"R": r, "t": t, "width": width, "quality": q, "tilt": float(tilt),
                                    "contacts": min(nl, nr), "depth": float(ta - first),
                                    "view": abs(float(r[:, 1] @ view))})
        for c in out:
            c["score"] = self._score(c, centroid, cos_mu)
        return out

    @staticmethod
    def _score(c: dict, centroid: np.ndarray, cos_mu: float) -> float:
        q_anti = float(np.clip((c["quality"] - cos_mu) / max(1e-6, 1.0 - cos_mu), 0.0, 1.0))
        y = c["R"][:, 1]
        off = centroid - c["t"]
        dist = float(np.linalg.norm(off - (off @ y) * y))
        q_centre = math.exp(-0.5 * (dist / 0.03) ** 2)
        q_tilt = math.cos(c["tilt"])  # the approach's angle from straight down
        q_view = 1.0 - c["view"]
        c["q_antipodal"], c["q_centre"], c["q_tilt"], c["q_view"] = q_anti, q_centre, q_tilt, q_view
        return W_ANTIPODAL * q_anti + W_CENTRE * q_centre + W_TILT * q_tilt + W_VIEW * q_view

    # ------------------------------------------------------------------ selection
    def sample_instance(self, scene: GraspScene, inst: InstanceCloud) -> list[Grasp]:
        cfg = self.cfg
        cands = self.candidates(scene, inst)
        if not cands:
            return []
        cands.sort(key=lambda c: -c["score"])
        cands = cands[:max(1, int(cfg.max_candidates))]
        poses = np.array([pose_from(c["R"], c["t"]) for c in cands])
        widths = np.array([c["width"] for c in cands])
        obstacles, _ = scene.obstacles()
        tree = scene.obstacle_tree()
        # Best first, in batches, until enough are collision-free for NMS to pick top_n from.
        free = np.zeros(len(cands), bool)
        inside = np.zeros(len(cands))
        low = np.zeros(len(cands))
        enough = max(1, int(cfg.top_n)) * EXTRA_FREE
        for s in range(0, len(cands), COLLISION_BATCH):
            sl = slice(s, s + COLLISION_BATCH)
            free[sl], inside[sl], low[sl] = collision_free(
                poses[sl], widths[sl], obstacles, scene.table, cfg.approach_distance, cfg.collision_points,
                cfg.table_clearance, cfg.collision_margin, tree)
            if free.sum() >= enough:
                break
        grasps = []
        for k in np.flatnonzero(free):
            c = cands[k]
            unseen = unseen_pad_share(scene, poses[k], float(widths[k]))
            details = {"q_antipodal": c["q_antipodal"], "q_centre": c["q_centre"], "q_tilt": c["q_tilt"],
                       "q_view": c["q_view"], "unseen": unseen,
                       "contacts": float(c["contacts"]), "depth": c["depth"], "points_in_hand": float(inside[k]),
                       "table_clearance": float(low[k])}
            score = float(c["score"]) * (1.0 - W_UNSEEN * unseen)
            grasps.append(Grasp(inst.instance_id, poses[k], float(widths[k]), score, details))
        return nms(grasps, cfg.nms_distance, math.radians(cfg.nms_angle_deg))[:max(0, int(cfg.top_n))]


def unseen_pad_share(scene: GraspScene, pose: np.ndarray, width: float, tol: float = UNSEEN_TOL) -> float:
    """Share of the space a pad will occupy that the camera could not see, on the worse pad:
    points that project onto an instance but lie more than tol behind its observed surface. What
    is there (the back of a deep box, a hidden handle, an occluded neighbour) is only inferred."""
    if scene.points_image is None or scene.label_map is None:
        return 0.0
    g = np.linspace(-0.5, 0.5, 3)
    xs, zs = np.meshgrid(g * PAD_HEIGHT, g * PAD_LENGTH)
    worst = 0.0
    h, w = scene.label_map.shape
    for side in (-1.0, 1.0):
        ys = side * (width / 2 + np.array([0.25, 0.75]) * PAD_THICKNESS)
        loc = np.array([[x, y, z] for y in ys for x, z in zip(xs.ravel(), zs.ravel())])
        p = loc @ pose[:3, :3].T + pose[:3, 3]
        if (p[:, 2] <= 1e-3).any():
            continue
        u, v = project(p, scene.intrinsics)
        ok = (u >= 0) & (u < w) & (v >= 0) & (v < h)
        if not ok.any():
            continue
        obs = scene.points_image[v[ok], u[ok], 2]
        hidden = np.isfinite(obs) & (obs < p[ok, 2] - tol) & (scene.label_map[v[ok], u[ok]] > 0)
        worst = max(worst, float(hidden.sum()) / len(p))
    return worst


def same_grasp(a: Grasp, b: Grasp, distance: float, angle: float) -> bool:
    if np.linalg.norm(a.position - b.position) >= distance:
        return False
    ra, rb = a.pose[:3, :3], b.pose[:3, :3]
    return min(rotation_angle(ra, rb), rotation_angle(ra, rb @ _FLIP)) < angle


def nms(grasps: list[Grasp], distance: float, angle: float) -> list[Grasp]:
    """Greedy grasp NMS by score: drop a grasp close in position and rotation to a kept one."""
    kept: list[Grasp] = []
    for g in sorted(grasps, key=lambda g: -g.score):
        if not any(same_grasp(g, k, distance, angle) for k in kept):
            kept.append(g)
    return kept
