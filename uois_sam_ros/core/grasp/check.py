"""The grasp check: does a grasp close on its target, fit the jaw, collide with nothing, and is
it antipodal? And the share of instances whose best grasp (or any of its best five) passes.

Four criteria, for a grasp on instance k:

1. closes on the target: the surface between the pads (17.5 mm x width x 18.5 mm) belongs to
   instance k: at least ``min_contact_points`` of it, and at least 80 % of all the surface
   there;
2. fits the jaw: width <= ``max_opening`` (0.08 m) and the target's extent across the pads'
   slab is no wider than the width;
3. collision-free: fewer than ``collision_points`` surface points inside the fingers, the palm
   or their approach sweep (collision.py), and the whole hand above the table plane;
4. antipodal: on each side, at least ``min_contact_points`` contacts whose surface normals lie
   within ``friction_deg`` of the closing direction.

Two sources of "the surface":

- ``ObservedGeometry``: a GraspScene built from the depth image and the ground-truth masks,
  at a finer voxel than the sampler's (what annotated real scenes allow). The hidden sides
  are the same inference the sampler makes, so with ground-truth instances this mostly checks
  the sampler's bookkeeping, not the world.
- ``MeshGeometry``: the true object meshes and the exact table plane (synthetic scenes).
  Surface points are sampled on the meshes every ~2.5 mm; contacts are found by casting 5 x 5
  rays from each pad across the closing region (open3d RaycastingScene) and reading the
  normal of the first triangle hit. Independent of the sampler's clouds and normals.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy.spatial import cKDTree

from uois_sam_ros.core.config import GraspConfig
from uois_sam_ros.core.grasp.antipodal import contact_counts
from uois_sam_ros.core.grasp.cloud import GraspScene, Table
from uois_sam_ros.core.grasp.collision import collision_free
from uois_sam_ros.core.grasp.franka import PAD_HEIGHT, PAD_LENGTH
from uois_sam_ros.core.grasp.types import Grasp

CRITERIA = ("closes_on_target", "fits_jaw", "collision_free", "antipodal")
TARGET_SHARE = 0.8  # share of the surface between the pads that must be the target's


@dataclass
class GraspCheck:
    closes_on_target: bool
    fits_jaw: bool
    collision_free: bool
    antipodal: bool
    details: dict[str, float] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return self.closes_on_target and self.fits_jaw and self.collision_free and self.antipodal

    def as_dict(self) -> dict[str, bool]:
        return {c: bool(getattr(self, c)) for c in CRITERIA} | {"passed": self.passed}


def _local(pose: np.ndarray, pts: np.ndarray) -> np.ndarray:
    return (np.asarray(pts, float) - pose[:3, 3]) @ pose[:3, :3]


def _slab(local: np.ndarray) -> np.ndarray:
    return (np.abs(local[:, 0]) <= PAD_HEIGHT / 2) & (np.abs(local[:, 2]) <= PAD_LENGTH / 2)


def _surface_criteria(grasp: Grasp, pts: np.ndarray, labels: np.ndarray, target: int, table: Table | None,
                      cfg: GraspConfig, table_clearance: float) -> tuple[bool, bool, bool, dict[str, float]]:
    """Criteria 1-3 from labelled surface points."""
    loc = _local(grasp.pose, pts)
    slab = _slab(loc)
    between = slab & (np.abs(loc[:, 1]) <= grasp.width / 2)
    n_all = int(between.sum())
    n_target = int((between & (labels == target)).sum())
    closes = n_target >= cfg.min_contact_points and n_target >= TARGET_SHARE * n_all
    near = slab & (labels == target) & (np.abs(loc[:, 1]) <= grasp.width / 2 + 0.03)
    extent = float(np.ptp(loc[near, 1])) if near.any() else 0.0
    fits = grasp.width <= cfg.max_opening + 1e-9 and extent <= grasp.width + 1e-9
    free, inside, low = collision_free(grasp.pose[None], np.array([grasp.width]), pts, table,
                                       cfg.approach_distance, cfg.collision_points, table_clearance)
    return closes, fits, bool(free[0]), {"target_points": n_target, "points_between": n_all,
                                         "target_extent": extent, "points_in_hand": float(inside[0]),
                                         "table_clearance": float(low[0])}


class ObservedGeometry:
    """The check's surface from depth + ground-truth masks (no meshes needed)."""

    def __init__(self, scene: GraspScene) -> None:
        self.scene = scene

    @classmethod
    def build(cls, depth: np.ndarray, intrinsics, masks: np.ndarray, ids=None, cfg: GraspConfig | None = None
              ) -> ObservedGeometry:
        from dataclasses import replace

        from uois_sam_ros.core.grasp.cloud import build_scene

        cfg = cfg or GraspConfig()
        fine = replace(cfg, voxel_size=0.003, scene_voxel=0.003)
        return cls(build_scene(depth, intrinsics, masks, ids, fine, refine=False))  # the plain prism model

    def check(self, grasp: Grasp, cfg: GraspConfig) -> GraspCheck:
        inst = self.scene.instances.get(grasp.instance_id)
        if inst is None:
            return GraspCheck(False, grasp.width <= cfg.max_opening, False, False, {"no_target": 1.0})
        radius = float(np.linalg.norm(inst.model_points - inst.centroid, axis=1).max()) + 0.3
        pts, lab = self.scene.obstacles_near(inst.centroid, radius)
        closes, fits, free, det = _surface_criteria(grasp, pts, lab, grasp.instance_id, self.scene.table, cfg, 0.0)
        loc = _local(grasp.pose, inst.model_points)
        nloc = inst.model_normals @ grasp.pose[:3, :3]
        sel = _slab(loc) & (np.abs(loc[:, 1]) <= grasp.width / 2)
        cos_mu = math.cos(math.radians(cfg.friction_deg))
        nl = nr = 0
        if sel.any():
            nl, nr, _, _, _ = contact_counts(loc, nloc, sel, cos_mu)
        anti = min(nl, nr) >= cfg.min_contact_points
        return GraspCheck(closes, fits, free, anti, det | {"left_contacts": nl, "right_contacts": nr})


class MeshGeometry:
    """The check's surface from true meshes in the camera frame (synthetic scenes)."""

    SPACING = 0.0025  # metres between surface samples
    RAYS = 5  # rays per pad side (RAYS x RAYS per pad)

    def __init__(self, meshes: dict[int, tuple[np.ndarray, np.ndarray]], table: Table | None) -> None:
        import open3d as o3d

        self.table = table
        self.ids = list(meshes)
        self.rc = o3d.t.geometry.RaycastingScene()
        self.geom_to_id: dict[int, int] = {}
        pts, lab = [], []
        for iid, (v, t) in meshes.items():
            v = np.asarray(v, np.float32)
            t = np.asarray(t, np.uint32)
            gid = self.rc.add_triangles(o3d.core.Tensor(v), o3d.core.Tensor(t))
            self.geom_to_id[int(gid)] = int(iid)
            m = o3d.geometry.TriangleMesh(o3d.utility.Vector3dVector(v.astype(np.float64)),
                                          o3d.utility.Vector3iVector(t.astype(np.int32)))
            n = max(50, int(m.get_surface_area() / self.SPACING ** 2))
            s = np.asarray(m.sample_points_uniformly(number_of_points=n).points)
            pts.append(s)
            lab.append(np.full(len(s), iid, np.int64))
        self.points = np.concatenate(pts) if pts else np.zeros((0, 3))
        self.labels = np.concatenate(lab) if lab else np.zeros(0, np.int64)
        self.tree = cKDTree(self.points) if len(self.points) else None

    @classmethod
    def from_synthetic(cls, scene) -> MeshGeometry:
        """From core.data.synthetic.SyntheticScene: object meshes and the table (world z = 0)."""
        t = np.asarray(scene.cam_to_world, float)
        r, p = t[:3, :3], t[:3, 3]
        meshes = {int(i): ((np.asarray(v, float) - p) @ r, t_) for i, (v, t_) in zip(scene.ids, scene.object_meshes)}
        up = r.T @ np.array([0.0, 0.0, 1.0])  # world z in the camera frame; height = z_world
        return cls(meshes, Table(up=up, offset=float(p[2])))

    def _rays(self, grasp: Grasp, side: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(target hit (R,), distance (R,), facing normals (R, 3)) of rays from one pad inwards."""
        import open3d as o3d

        g = np.linspace(-0.4, 0.4, self.RAYS)
        xs, zs = np.meshgrid(g * PAD_HEIGHT, g * PAD_LENGTH)
        origins_l = np.stack([xs.ravel(), np.full(xs.size, side * grasp.width / 2), zs.ravel()], axis=1)
        r, t = grasp.pose[:3, :3], grasp.pose[:3, 3]
        origins = origins_l @ r.T + t
        d = np.tile(-side * r[:, 1], (len(origins), 1))
        ans = self.rc.cast_rays(o3d.core.Tensor(np.concatenate([origins, d], 1).astype(np.float32)))
        dist = ans["t_hit"].numpy().astype(float)
        gid = ans["geometry_ids"].numpy().astype(np.int64)
        nrm = ans["primitive_normals"].numpy().astype(float)
        hit_id = np.array([self.geom_to_id.get(int(k), 0) for k in gid])
        flip = np.einsum("ij,ij->i", nrm, d) > 0
        nrm[flip] *= -1
        within = np.isfinite(dist) & (dist <= grasp.width)
        return np.where(within, hit_id, 0), dist, np.einsum("ij,ij->i", -nrm, d)

    def check(self, grasp: Grasp, cfg: GraspConfig) -> GraspCheck:
        centre = grasp.position
        if self.tree is None:
            return GraspCheck(False, grasp.width <= cfg.max_opening, True, False, {})
        idx = np.asarray(self.tree.query_ball_point(centre, 0.35), np.int64)
        closes, fits, free, det = _surface_criteria(grasp, self.points[idx], self.labels[idx], grasp.instance_id,
                                                    self.table, cfg, 0.0)
        cos_mu = math.cos(math.radians(cfg.friction_deg))
        counts = []
        for side in (-1, 1):
            hit, _, cos = self._rays(grasp, side)
            counts.append(int(((hit == grasp.instance_id) & (cos >= cos_mu)).sum()))
        anti = min(counts) >= min(cfg.min_contact_points, self.RAYS * self.RAYS)
        return GraspCheck(closes, fits, free, anti, det | {"left_contacts": counts[0], "right_contacts": counts[1]})


@dataclass
class CheckSummary:
    """Pass shares over instances: 'top1' = the best grasp passes all four criteria; 'top5_any'
    = at least one of the best five does; 'top5' = share of all top-5 grasps that pass (an
    instance without grasps counts as failing)."""

    instances: int = 0
    top1: int = 0
    top5_any: int = 0
    top5_pass: int = 0
    top5_total: int = 0
    per_criterion: dict[str, int] = field(default_factory=lambda: dict.fromkeys(CRITERIA, 0))
    no_grasp: int = 0
    seconds: float = 0.0  # planning time (scene + sampling) summed over frames
    planned: int = 0  # instances planning ran for

    def add(self, checks: list[GraspCheck]) -> None:
        """One instance's checks of its grasps, best first (empty: no grasp)."""
        self.instances += 1
        if not checks:
            self.no_grasp += 1
            self.top5_total += 5
            return
        best = checks[0]
        self.top1 += best.passed
        for c in CRITERIA:
            self.per_criterion[c] += bool(getattr(best, c))
        top = checks[:5]
        self.top5_any += any(c.passed for c in top)
        self.top5_pass += sum(c.passed for c in top)
        self.top5_total += 5

    def as_dict(self) -> dict[str, float]:
        n = max(1, self.instances)
        out = {"instances": self.instances, "top1_pass": self.top1 / n, "top5_any_pass": self.top5_any / n,
               "top5_pass": self.top5_pass / max(1, self.top5_total), "no_grasp": self.no_grasp / n,
               "ms_per_instance": 1000.0 * self.seconds / max(1, self.planned)}
        out |= {f"top1_{c}": self.per_criterion[c] / n for c in CRITERIA}
        return out

    def format(self, title: str = "grasp check") -> str:
        d = self.as_dict()
        return (f"{title}: {self.instances} instances | top-1 passes all four: {100 * d['top1_pass']:.1f} % | "
                f"top-5: {100 * d['top5_any_pass']:.1f} % have a passing grasp, {100 * d['top5_pass']:.1f} % of "
                f"the top-5 grasps pass | no grasp: {100 * d['no_grasp']:.1f} %\n"
                f"  top-1 per criterion: " + ", ".join(f"{c} {100 * d['top1_' + c]:.1f} %" for c in CRITERIA) +
                f"\n  {d['ms_per_instance']:.0f} ms per instance (scene + sampling, CPU)")
