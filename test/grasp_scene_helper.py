"""Analytic test scenes for the grasp tests: boxes (and cylinders) on a table, ray-cast exactly.

A pinhole camera looks at the objects from a known pose; depth is the exact ray-cast depth
(open3d RaycastingScene), so the tests can compare the point clouds and grasps with the
geometry that produced them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import open3d as o3d

from uois_sam_ros.core.types import Intrinsics


@dataclass
class AnalyticScene:
    depth: np.ndarray  # (H, W) float32 metres, 0 = no hit
    intrinsics: Intrinsics
    masks: np.ndarray  # (N, H, W) bool, object k's visible pixels
    cam_to_world: np.ndarray  # (4, 4) camera optical frame -> world (table top z = 0, up +z)
    meshes: list[tuple[np.ndarray, np.ndarray]]  # world vertices, triangles of each object
    rotations: list[np.ndarray]  # object frame -> world

    def meshes_in_camera(self) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        r, t = self.cam_to_world[:3, :3], self.cam_to_world[:3, 3]
        return {k + 1: ((v - t) @ r, tri) for k, (v, tri) in enumerate(self.meshes)}

    def table_in_camera(self) -> tuple[np.ndarray, float]:
        """(up, offset): height above the table = up . p + offset for camera-frame points."""
        r, t = self.cam_to_world[:3, :3], self.cam_to_world[:3, 3]
        return r.T @ np.array([0.0, 0.0, 1.0]), float(t[2])


def rot_z(deg: float) -> np.ndarray:
    a = np.radians(deg)
    return np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1.0]])


def look_at(eye: np.ndarray, target: np.ndarray) -> np.ndarray:
    """cam_to_world of an OpenCV optical frame at eye looking at target, image x roughly horizontal."""
    z = target - eye
    z /= np.linalg.norm(z)
    x = np.cross(z, [0.0, 0.0, 1.0])
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    t = np.eye(4)
    t[:3, :3] = np.stack([x, y, z], axis=1)
    t[:3, 3] = eye
    return t


def box_mesh(size: tuple[float, float, float], yaw_deg: float, xy: tuple[float, float]) -> tuple:
    sx, sy, sz = size
    m = o3d.geometry.TriangleMesh.create_box(sx, sy, sz)
    v = np.asarray(m.vertices) - [sx / 2, sy / 2, 0]
    r = rot_z(yaw_deg)
    return v @ r.T + [xy[0], xy[1], 0.0], np.asarray(m.triangles), r


def cylinder_mesh(radius: float, height: float, xy: tuple[float, float]) -> tuple:
    m = o3d.geometry.TriangleMesh.create_cylinder(radius, height, resolution=48, split=1)
    v = np.asarray(m.vertices) + [xy[0], xy[1], height / 2]
    return v, np.asarray(m.triangles), np.eye(3)


def render(objects: list[tuple], width: int = 320, height: int = 240, f: float = 300.0, distance: float = 0.6,
           elevation_deg: float = 50.0, azimuth_deg: float = -90.0, target=(0.0, 0.0, 0.04)) -> AnalyticScene:
    """Ray-cast the objects (from box_mesh / cylinder_mesh) on a 2 m table."""
    rc = o3d.t.geometry.RaycastingScene()
    table = o3d.geometry.TriangleMesh.create_box(2.0, 2.0, 0.02)
    tv = np.asarray(table.vertices) - [1.0, 1.0, 0.02]
    rc.add_triangles(o3d.core.Tensor(tv.astype(np.float32)), o3d.core.Tensor(np.asarray(table.triangles, np.uint32)))
    ids = []
    for v, t, _ in objects:
        ids.append(rc.add_triangles(o3d.core.Tensor(np.asarray(v, np.float32)), o3d.core.Tensor(np.asarray(t, np.uint32))))
    el, az = np.radians(elevation_deg), np.radians(azimuth_deg)
    target = np.asarray(target, float)
    eye = target + distance * np.array([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)])
    cam = look_at(eye, target)
    intr = Intrinsics(f, f, (width - 1) / 2, (height - 1) / 2, width, height)
    u, v = np.meshgrid(np.arange(width, dtype=float), np.arange(height, dtype=float))
    d_cam = np.stack([(u - intr.cx) / f, (v - intr.cy) / f, np.ones_like(u)], axis=-1).reshape(-1, 3)
    d_world = d_cam @ cam[:3, :3].T  # camera-frame z of each direction is 1: t_hit is the depth
    rays = np.concatenate([np.tile(eye, (len(d_world), 1)), d_world], axis=1).astype(np.float32)
    ans = rc.cast_rays(o3d.core.Tensor(rays))
    t_hit = ans["t_hit"].numpy().reshape(height, width)
    gid = ans["geometry_ids"].numpy().reshape(height, width)
    depth = np.where(np.isfinite(t_hit), t_hit, 0.0).astype(np.float32)
    masks = np.stack([gid == i for i in ids]) if ids else np.zeros((0, height, width), bool)
    return AnalyticScene(depth, intr, masks, cam, [(o[0], o[1]) for o in objects], [o[2] for o in objects])


def box_scene(**kw) -> AnalyticScene:
    """One 5 x 7 x 10 cm box, turned 30 degrees, seen from 0.6 m at 50 degrees elevation."""
    return render([box_mesh((0.05, 0.07, 0.10), 30.0, (0.0, 0.0))], **kw)


def lathe_mesh(profile: list[tuple[float, float]], xy: tuple[float, float], segments: int = 48) -> tuple:
    """A surface of revolution about the world z axis through xy: the (radius, height) polyline
    profile turned through 360 degrees (a bowl, a bottle)."""
    prof = np.asarray(profile, float)
    ang = np.arange(segments) * 2 * np.pi / segments
    v = np.array([[r * np.cos(a), r * np.sin(a), z] for r, z in prof for a in ang])
    tris = []
    for i in range(len(prof) - 1):
        for j in range(segments):
            a, b = i * segments + j, i * segments + (j + 1) % segments
            c, d = a + segments, b + segments
            tris += [[a, b, d], [a, d, c]]
    return v + [xy[0], xy[1], 0.0], np.array(tris, np.int64), np.eye(3)


def bowl_mesh(radius: float, height: float, xy: tuple[float, float], wall: float = 0.004) -> tuple:
    """An open bowl: a 4 mm wall from a base of 0.45 x radius out to radius at the rim."""
    s = np.linspace(0.0, 1.0, 8)
    outer = [(0.45 * radius + 0.55 * radius * t ** 0.7, height * t) for t in s]
    inner = [(r - wall, wall + (height - wall) * t) for (r, _), t in zip(outer[::-1], s[::-1])]
    return lathe_mesh([(0.0, 0.0)] + outer + inner + [(0.0, wall)], xy)


def lying_cylinder_mesh(radius: float, length: float, xy: tuple[float, float], yaw_deg: float = 0.0) -> tuple:
    """A cylinder (a pen, a marker) lying on the table, its axis horizontal at yaw_deg."""
    m = o3d.geometry.TriangleMesh.create_cylinder(radius, length, resolution=24, split=1)
    rx = np.array([[1.0, 0, 0], [0, 0, -1.0], [0, 1.0, 0]])  # its axis (z) to world y
    r = rot_z(yaw_deg) @ rx
    v = np.asarray(m.vertices) @ r.T + [xy[0], xy[1], radius]
    return v, np.asarray(m.triangles), r
