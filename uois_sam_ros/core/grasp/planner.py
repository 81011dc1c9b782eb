"""GraspPlanner: depth + intrinsics + instance masks in, per-instance Franka grasps out.

The one entry point the node, the CLI and the tests use. The backend is ``grasp.backend``:
``antipodal`` (built in, the default) or ``gsnet`` (gsnet.py; imported only when selected).
"""

from __future__ import annotations

import time

import numpy as np

from uois_sam_ros.core.config import ConfigError, GraspConfig
from uois_sam_ros.core.grasp.antipodal import AntipodalSampler
from uois_sam_ros.core.grasp.cloud import Table, build_scene
from uois_sam_ros.core.grasp.types import GraspResult
from uois_sam_ros.core.types import Instances, Intrinsics

BACKENDS = ("antipodal", "gsnet")


def make_backend(cfg: GraspConfig):
    """The configured grasp backend; gsnet is imported here and only here."""
    if cfg.backend == "antipodal":
        return AntipodalSampler(cfg)
    if cfg.backend == "gsnet":
        from uois_sam_ros.core.grasp.gsnet import GSNetBackend

        return GSNetBackend(cfg)
    raise ConfigError(f"grasp.backend {cfg.backend!r} is not valid; use one of {', '.join(BACKENDS)}")


def validate(cfg: GraspConfig) -> None:
    """Raise ConfigError naming the first setting that cannot work."""
    if cfg.backend not in BACKENDS:
        raise ConfigError(f"grasp.backend {cfg.backend!r} is not valid; use one of {', '.join(BACKENDS)}")
    if not 0 < cfg.max_opening <= 0.08 + 1e-9:
        raise ConfigError(f"grasp.max_opening must be in (0, 0.08] m (the Franka hand opens 0.08 m), "
                          f"got {cfg.max_opening}")
    if not 0 < cfg.friction_deg < 90:
        raise ConfigError(f"grasp.friction_deg must be in (0, 90), got {cfg.friction_deg}")
    for name in ("voxel_size", "scene_voxel", "normal_radius", "max_depth", "max_grasp_depth"):
        if getattr(cfg, name) <= 0:
            raise ConfigError(f"grasp.{name} must be > 0, got {getattr(cfg, name)}")
    if cfg.min_depth >= cfg.max_depth:
        raise ConfigError(f"grasp.min_depth ({cfg.min_depth}) must be below grasp.max_depth ({cfg.max_depth})")
    for name in ("top_n", "min_points", "yaw_steps", "slices", "depth_steps", "max_candidates"):
        if getattr(cfg, name) < (0 if name == "top_n" else 1):
            raise ConfigError(f"grasp.{name} must be at least {0 if name == 'top_n' else 1}, got {getattr(cfg, name)}")


class GraspPlanner:
    """Grasps per instance for one frame. Not thread-safe: one planner per worker."""

    def __init__(self, cfg: GraspConfig | None = None) -> None:
        self.cfg = cfg or GraspConfig()
        validate(self.cfg)
        self.backend = make_backend(self.cfg)

    @property
    def name(self) -> str:
        return self.backend.name

    def plan(self, depth: np.ndarray, intrinsics: Intrinsics, masks: np.ndarray,
             ids: list[int] | np.ndarray | None = None, amodal: np.ndarray | None = None,
             table: Table | None = None) -> GraspResult:
        """Grasps for each mask (ids default 1..N). Instances without usable depth get no grasp
        and a warning in result.warnings; FrameError only for an unusable frame."""
        t0 = time.perf_counter()
        scene = build_scene(depth, intrinsics, masks, ids, self.cfg, amodal=amodal, table=table)
        t1 = time.perf_counter()
        grasps = self.backend.sample(scene)
        t2 = time.perf_counter()
        all_ids = list(range(1, len(masks) + 1)) if ids is None else [int(i) for i in ids]
        out = {i: grasps.get(i, []) for i in all_ids}
        warns = list(scene.warnings)
        for i in all_ids:
            if i in scene.instances and not out[i]:
                warns.append(f"instance {i}: no collision-free antipodal grasp found" if self.name == "antipodal"
                             else f"instance {i}: no grasp from {self.name}")
        return GraspResult(out, scene, warns, {"scene_s": t1 - t0, "grasps_s": t2 - t1})

    def plan_instances(self, depth: np.ndarray, intrinsics: Intrinsics, instances: Instances,
                       ids: list[int] | None = None) -> GraspResult:
        """plan() for core.Instances (ids 1..N in their order, as InstanceArray numbers them)."""
        amodal = instances.amodal_masks if self.cfg.use_amodal else None
        return self.plan(depth, intrinsics, instances.masks, ids, amodal=amodal)
