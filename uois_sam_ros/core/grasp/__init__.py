"""Grasping for a Franka hand: instance clouds, the antipodal sampler, the GSNet adapter, the check.

    planner = GraspPlanner(GraspConfig())
    result = planner.plan(depth_m, intrinsics, masks)      # per-instance grasps, camera frame
    result.best(1).pose                                     # 4x4, Grasp.msg convention

ROS-free, like all of core. gsnet.py (torch, the graspness code) is imported only when
grasp.backend is gsnet.
"""

from uois_sam_ros.core.grasp.planner import GraspPlanner
from uois_sam_ros.core.grasp.types import Grasp, GraspResult

__all__ = ["Grasp", "GraspPlanner", "GraspResult"]
