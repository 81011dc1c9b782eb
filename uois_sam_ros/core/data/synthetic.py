"""Synthetic tabletop RGB-D scenes with exact visible and amodal labels.

There is no labelled data and there are no pretrained weights on the machines this
package is built on, so the weights-free HPG checkpoint is trained on scenes from this
generator. Everything a real RealSense frame has that a model could latch onto is
randomised: table texture, lighting and shadows, camera pose and intrinsics, object
shapes and textures, and the depth sensor's noise, edge dropouts and holes. Geometry
is ray-cast with open3d's RaycastingScene (CPU), so depth and ids are exact before the
noise is added. Scenes are a pure function of the seed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import open3d as o3d

from uois_sam_ros.core.data import rle
from uois_sam_ros.core.types import Frame, Intrinsics, Sample

SHAPES = ("box", "cylinder", "sphere", "bowl", "mug", "blob", "hull")


@dataclass
class SceneConfig:
    """Ranges the generator samples from; defaults mimic a RealSense D435 over a table."""

    width: int = 640
    height: int = 480
    min_objects: int = 1
    max_objects: int = 15
    fx_over_width: tuple[float, float] = (0.93, 0.99)  # RealSense colour at 640x480: fx ~ 0.957 W
    distance: tuple[float, float] = (0.4, 1.2)  # camera to look-at point on the table, metres
    elevation_deg: tuple[float, float] = (30.0, 70.0)
    roll_deg: float = 5.0
    spread: tuple[float, float] = (0.08, 0.35)  # radius of the object cluster, metres
    stack_prob: float = 0.2  # chance that an object is placed on top of an earlier one
    shapes: tuple[str, ...] = SHAPES
    depth_noise: tuple[float, float] = (0.0008, 0.004)  # sigma = k * z^2 (metres), D4xx-like
    edge_dropout_px: tuple[int, int] = (1, 7)  # invalid band left of near objects (stereo shadow)
    hole_fraction: tuple[float, float] = (0.0, 0.04)
    max_range: float = 3.0  # depth beyond this is invalid
    min_visible_px: int = 20  # objects with fewer visible pixels are dropped (labelled background)
    amodal: bool = True  # render amodal masks (one extra ray cast per object, inside its box)


@dataclass
class SyntheticScene:
    """One rendered scene. ids[k] labels amodal[k]; label holds visible ids (0 = background)."""

    rgb: np.ndarray  # (H, W, 3) uint8
    depth: np.ndarray  # (H, W) float32 metres, 0 = invalid (noisy, like the sensor)
    depth_clean: np.ndarray  # (H, W) float32 metres, exact ray-cast depth, 0 = no hit
    intrinsics: Intrinsics
    label: np.ndarray  # (H, W) uint16 visible ids 1..N
    amodal: np.ndarray  # (N, H, W) bool
    occlusion: np.ndarray  # (N,) float 1 - |visible| / |amodal|
    ids: np.ndarray  # (N,) int
    shapes: list[str]
    cam_to_world: np.ndarray  # (4, 4) OpenCV optical frame -> world (table top is z = 0)
    seed: int = 0
    meta: dict = field(default_factory=dict)

    def frame(self) -> Frame:
        return Frame(rgb=self.rgb, depth=self.depth, intrinsics=self.intrinsics)

    def sample(self) -> Sample:
        return Sample(rgb=self.rgb, depth=self.depth, intrinsics=self.intrinsics, label=self.label,
                      name=f"synthetic_{self.seed:08d}", amodal=self.amodal, amodal_ids=self.ids)


# ----------------------------------------------------------------------------- meshes

def _lathe(profile: np.ndarray, segments: int) -> tuple[np.ndarray, np.ndarray]:
    """Surface of revolution about z of a (P, 2) (radius, z) polyline."""
    ang = np.linspace(0, 2 * np.pi, segments, endpoint=False)
    r, z = profile[:, 0], profile[:, 1]
    v = np.stack([r[:, None] * np.cos(ang)[None], r[:, None] * np.sin(ang)[None],
                  np.repeat(z[:, None], segments, 1)], -1).reshape(-1, 3)
    tris = []
    p = len(profile)
    for i in range(p - 1):
        for j in range(segments):
            a, b = i * segments + j, i * segments + (j + 1) % segments
            c, d = a + segments, b + segments
            tris += [(a, b, d), (a, d, c)]
    return v, np.asarray(tris, np.int64)


def _mesh_arrays(m: o3d.geometry.TriangleMesh) -> tuple[np.ndarray, np.ndarray]:
    return np.asarray(m.vertices, np.float64), np.asarray(m.triangles, np.int64)


def _make_shape(kind: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, float]:
    """Vertices (object frame, base at z = 0, centred in x/y), triangles, footprint radius."""
    if kind == "box":
        sx, sy, sz = rng.uniform(0.03, 0.16), rng.uniform(0.03, 0.12), rng.uniform(0.02, 0.2)
        v, t = _mesh_arrays(o3d.geometry.TriangleMesh.create_box(sx, sy, sz))
        v -= [sx / 2, sy / 2, 0]
    elif kind == "cylinder":
        r, h = rng.uniform(0.02, 0.05), rng.uniform(0.03, 0.2)
        v, t = _mesh_arrays(o3d.geometry.TriangleMesh.create_cylinder(r, h, resolution=24, split=1))
        v[:, 2] += h / 2
    elif kind == "sphere":
        r = rng.uniform(0.02, 0.05)
        v, t = _mesh_arrays(o3d.geometry.TriangleMesh.create_sphere(r, resolution=12))
        v[:, 2] += r
    elif kind == "bowl":
        r, h, th = rng.uniform(0.05, 0.1), rng.uniform(0.035, 0.07), 0.004
        s = np.linspace(0, 1, 7)
        outer = np.stack([0.45 * r + 0.55 * r * s ** 0.7, h * s], 1)
        inner = np.stack([(0.45 * r + 0.55 * r * s ** 0.7 - th)[::-1], (th + (h - th) * s)[::-1]], 1)
        prof = np.concatenate([[[0.0, 0.0]], outer, inner, [[0.0, th]]])
        v, t = _lathe(prof, 28)
    elif kind == "mug":
        r, h = rng.uniform(0.03, 0.05), rng.uniform(0.07, 0.12)
        th = 0.004
        prof = np.array([[0, 0], [r, 0], [r, h], [r - th, h], [r - th, th], [0, th]])
        v, t = _lathe(prof, 24)
        hv, ht = _mesh_arrays(o3d.geometry.TriangleMesh.create_torus(h * 0.28, 0.006, 12, 6))
        hv = hv[:, [0, 2, 1]]  # handle in the x-z plane
        hv[:, 0] += r
        hv[:, 2] += h / 2
        t = np.concatenate([t, ht + len(v)])
        v = np.concatenate([v, hv])
        return v, t, r + h * 0.28
    elif kind == "blob":  # smooth random star-shaped mesh
        r = rng.uniform(0.025, 0.06)
        v, t = _mesh_arrays(o3d.geometry.TriangleMesh.create_sphere(1.0, resolution=10))
        k = rng.normal(size=(4, 3))
        bump = sum(rng.uniform(0.05, 0.25) * np.sin(v @ kk * rng.uniform(1, 3) + rng.uniform(0, 6)) for kk in k)
        v = v * (1 + bump)[:, None] * r * rng.uniform(0.6, 1.4, 3)
        v[:, 2] -= v[:, 2].min()
    else:  # hull: convex hull of random points (rocks, packages, toys)
        pts = rng.normal(size=(30, 3)) * rng.uniform(0.015, 0.05, 3)
        pc = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(pts))
        v, t = _mesh_arrays(pc.compute_convex_hull()[0])
        v[:, 2] -= v[:, 2].min()
    v[:, :2] -= (v[:, :2].max(0) + v[:, :2].min(0)) / 2
    radius = float(np.linalg.norm(v[:, :2], axis=1).max())
    return v, t, radius


def _rot_z(a: float) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]])


def _rot_x(a: float) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    return np.array([[1.0, 0, 0], [0, c, -s], [0, s, c]])


# ----------------------------------------------------------------------------- textures

def _value_noise(rng: np.random.Generator, size: int, h: int, w: int) -> np.ndarray:
    """Smooth noise in [0, 1] at (h, w) from a (size, size) random grid."""
    g = rng.random((size, size)).astype(np.float32)
    return cv2.resize(g, (w, h), interpolation=cv2.INTER_CUBIC).clip(0, 1)


def _sample_grid(grid: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Bilinear lookup of a periodic texture at continuous texel coordinates."""
    h, w = grid.shape[:2]
    u, v = u % w, v % h
    x0, y0 = np.floor(u).astype(np.int64), np.floor(v).astype(np.int64)
    fx, fy = (u - x0)[:, None], (v - y0)[:, None]
    x1, y1 = (x0 + 1) % w, (y0 + 1) % h
    top = grid[y0, x0] * (1 - fx) + grid[y0, x1] * fx
    bot = grid[y1, x0] * (1 - fx) + grid[y1, x1] * fx
    return top * (1 - fy) + bot * fy


def _random_colour(rng: np.random.Generator) -> np.ndarray:
    r = rng.random()
    if r < 0.15:
        return np.full(3, rng.uniform(0.75, 0.95))  # white-ish
    if r < 0.3:
        return np.full(3, rng.uniform(0.05, 0.25)) + rng.uniform(0, 0.1, 3)  # dark
    hsv = np.uint8([[[rng.integers(0, 180), rng.integers(90, 256), rng.integers(90, 256)]]])
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0].astype(np.float64) / 255


def _table_texture(rng: np.random.Generator) -> tuple[np.ndarray, float]:
    """(T, T, 3) float texture and its texel size in metres."""
    t = 256
    kind = rng.choice(["wood", "wood", "noise", "plain", "tiles", "cloth"])
    if kind == "wood" or rng.random() < 0.3:
        base = np.array([rng.uniform(0.35, 0.75), rng.uniform(0.22, 0.5), rng.uniform(0.1, 0.32)])
        if rng.random() < 0.3:
            base = np.full(3, rng.uniform(0.3, 0.85))
    else:
        base = _random_colour(rng) * 0.8 + 0.15
    yy, xx = np.mgrid[0:t, 0:t].astype(np.float32)
    n1 = _value_noise(rng, 8, t, t)
    n2 = _value_noise(rng, 64, t, t)
    if kind == "wood":
        grain = 0.5 + 0.5 * np.sin(xx / t * 2 * np.pi * rng.integers(6, 20) + 6 * n1 + 2 * n2)
        shade = 0.75 + 0.25 * grain + 0.1 * (n2 - 0.5)
        if rng.random() < 0.5:  # plank seams
            shade[:, :: int(rng.integers(40, 128))] *= 0.6
    elif kind == "tiles":
        shade = 0.85 + 0.1 * n2
        step = int(rng.integers(32, 96))
        shade[::step] *= 0.6
        shade[:, ::step] *= 0.6
    elif kind == "cloth":
        shade = 0.8 + 0.1 * np.sin(xx * 1.5) * np.sin(yy * 1.5) + 0.1 * n1
    elif kind == "noise":
        shade = 0.6 + 0.4 * n1 * 0.5 + 0.2 * n2
    else:
        shade = 0.9 + 0.1 * n1
    tex = (shade[..., None] * base[None, None]).astype(np.float32)
    return tex, float(rng.uniform(0.002, 0.006))


@dataclass
class _Obj:
    kind: str
    verts: np.ndarray  # world
    tris: np.ndarray
    rot: np.ndarray
    pos: np.ndarray
    radius: float
    top: float
    tex: dict


def _object_texture(rng: np.random.Generator) -> dict:
    mode = rng.choice(["solid", "solid", "band", "stripes", "noise", "checker", "label"])
    return {"mode": str(mode), "c0": _random_colour(rng), "c1": _random_colour(rng),
            "freq": float(rng.uniform(30, 150)), "axis": rng.normal(size=3),
            "phase": float(rng.uniform(0, 6.3)), "spec": float(rng.uniform(0.0, 0.6)),
            "shine": float(rng.uniform(8, 60)), "band": sorted(rng.uniform(0.15, 0.85, 2).tolist()),
            "noise_dirs": rng.normal(size=(5, 3)) * rng.uniform(20, 120)}


def _shade_object(tex: dict, local: np.ndarray, height: float) -> np.ndarray:
    """Albedo (P, 3) at object-frame points; a function of geometry, so consistent across views."""
    c0, c1 = tex["c0"][None], tex["c1"][None]
    mode = tex["mode"]
    if mode == "solid":
        return np.repeat(c0, len(local), 0)
    if mode in ("band", "label"):
        zr = local[:, 2] / max(height, 1e-6)
        a, b = tex["band"]
        m = ((zr > a) & (zr < b)).astype(np.float64)[:, None]
        if mode == "label":  # printed label: band with high-frequency pattern
            m = m * (0.5 + 0.5 * np.sin(local @ tex["noise_dirs"][0] * 3))[:, None]
        return c0 * (1 - m) + c1 * m
    if mode == "stripes":
        ax = tex["axis"] / np.linalg.norm(tex["axis"])
        m = (np.sin(local @ ax * tex["freq"] + tex["phase"]) > 0).astype(np.float64)[:, None]
        return c0 * (1 - m) + c1 * m
    if mode == "checker":
        k = tex["freq"] / 3
        m = ((np.floor(local[:, 0] * k) + np.floor(local[:, 1] * k) + np.floor(local[:, 2] * k)) % 2)[:, None]
        return c0 * (1 - m) + c1 * m
    s = sum(np.sin(local @ d + i) for i, d in enumerate(tex["noise_dirs"])) / 5
    m = (0.5 + 0.5 * np.tanh(2 * s))[:, None]
    return c0 * (1 - m) + c1 * m


# ----------------------------------------------------------------------------- scene

def _camera(rng: np.random.Generator, cfg: SceneConfig, target: np.ndarray) -> np.ndarray:
    dist = rng.uniform(*cfg.distance)
    elev = np.deg2rad(rng.uniform(*cfg.elevation_deg))
    az = rng.uniform(0, 2 * np.pi)
    pos = target + dist * np.array([np.cos(elev) * np.cos(az), np.cos(elev) * np.sin(az), np.sin(elev)])
    z = (target - pos) / np.linalg.norm(target - pos)
    x = np.cross(z, [0, 0, 1.0])
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    roll = np.deg2rad(rng.uniform(-cfg.roll_deg, cfg.roll_deg))
    x, y = np.cos(roll) * x + np.sin(roll) * y, -np.sin(roll) * x + np.cos(roll) * y
    T = np.eye(4)
    T[:3, :3] = np.stack([x, y, z], 1)
    T[:3, 3] = pos
    return T


def _place_objects(rng: np.random.Generator, cfg: SceneConfig, n: int) -> list[_Obj]:
    spread = rng.uniform(*cfg.spread)
    objs: list[_Obj] = []
    for _ in range(n):
        kind = str(rng.choice(list(cfg.shapes)))
        v, t, radius = _make_shape(kind, rng)
        height = float(v[:, 2].max())
        rot = _rot_z(rng.uniform(0, 2 * np.pi))
        if kind in ("hull", "blob", "box") and rng.random() < 0.25:  # lying / tilted objects
            rot = rot @ _rot_x(rng.uniform(-0.5, 0.5))
        stackable = [o for o in objs if o.kind in ("box", "cylinder", "hull") and o.radius > 0.6 * radius]
        pos = None
        if stackable and rng.random() < cfg.stack_prob:
            base = stackable[int(rng.integers(len(stackable)))]
            pos = np.array([*(base.pos[:2] + rng.normal(0, 0.3 * base.radius, 2)), base.top])
        else:
            for attempt in range(12):
                xy = rng.normal(0, spread, 2) if attempt < 11 else rng.uniform(-1.5, 1.5, 2) * spread
                # touching is allowed (a few mm of overlap), intersecting is not
                if all(np.linalg.norm(xy - o.pos[:2]) > radius + o.radius - 0.004
                       for o in objs if o.pos[2] < 1e-6):
                    pos = np.array([xy[0], xy[1], 0.0])
                    break
        if pos is None:
            continue
        wv = v @ rot.T + pos
        wv[:, 2] -= min(0.0, wv[:, 2].min() - pos[2])  # tilted objects must not sink into their support
        objs.append(_Obj(kind, wv, t, rot, pos, radius, float(wv[:, 2].max()), _object_texture(rng)))
        objs[-1].tex["height"] = height
    return objs


def _rays(K: np.ndarray, T: np.ndarray, us: np.ndarray, vs: np.ndarray) -> np.ndarray:
    """Rays through the centres of pixels (us, vs). Integer pixel coordinates are pixel centres
    (README "Messages"; OpenCV's and SAM's convention), so pixel (u, v) deprojects with
    ((u - cx) / fx, (v - cy) / fy, 1) * depth, as core.segment.geometric does."""
    d_cam = np.stack([(us - K[0, 2]) / K[0, 0], (vs - K[1, 2]) / K[1, 1], np.ones_like(us, float)], -1)
    d = d_cam @ T[:3, :3].T
    o = np.broadcast_to(T[:3, 3], d.shape)
    return np.concatenate([o, d], -1).astype(np.float32)


def _add(scene: o3d.t.geometry.RaycastingScene, v: np.ndarray, t: np.ndarray) -> int:
    return int(scene.add_triangles(o3d.core.Tensor(v.astype(np.float32)), o3d.core.Tensor(t.astype(np.uint32))))


def _quad(cx: float, cy: float, z: float, lx: float, ly: float, rot: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    v = np.array([[-lx, -ly, 0], [lx, -ly, 0], [lx, ly, 0], [-lx, ly, 0]]) / 2
    v = v @ rot.T + [cx, cy, z]
    return v, np.array([[0, 1, 2], [0, 2, 3]])


def generate_scene(seed: int, cfg: SceneConfig | None = None) -> SyntheticScene:
    """Render one random tabletop scene; identical output for identical (seed, cfg)."""
    cfg = cfg or SceneConfig()
    if cfg.min_objects < 1 or cfg.max_objects < cfg.min_objects:
        raise ValueError(f"need 1 <= min_objects <= max_objects, got {cfg.min_objects}, {cfg.max_objects}")
    if cfg.width < 8 or cfg.height < 8:
        raise ValueError(f"image size {cfg.width}x{cfg.height} is too small")
    bad = sorted(set(cfg.shapes) - set(SHAPES))
    if bad or not cfg.shapes:
        raise ValueError(f"unknown shape(s) {bad}; choose from {SHAPES}")
    rng = np.random.default_rng(seed)
    W, H = cfg.width, cfg.height
    fx = W * rng.uniform(*cfg.fx_over_width)
    intr = Intrinsics(fx, fx * rng.uniform(0.995, 1.005), W / 2 + rng.uniform(-0.02, 0.02) * W,
                      H / 2 + rng.uniform(-0.02, 0.02) * H, W, H)
    K = intr.K

    n = int(rng.integers(cfg.min_objects, cfg.max_objects + 1))
    objs = _place_objects(rng, cfg, n)
    target = np.array([*rng.normal(0, 0.05, 2), 0.0])
    T = _camera(rng, cfg, target)

    scene = o3d.t.geometry.RaycastingScene()
    table_rot = _rot_z(rng.uniform(0, 2 * np.pi))
    tl = rng.uniform(0.9, 2.2, 2)
    toff = rng.uniform(-0.35, 0.35, 2) * tl
    tv, tt = _quad(toff[0], toff[1], 0.0, tl[0], tl[1], table_rot)
    table_id = _add(scene, tv, tt)
    floor_z = -rng.uniform(0.6, 0.8)
    fv, ft = _quad(0, 0, floor_z, 12, 12, np.eye(3))
    floor_id = _add(scene, fv, ft)
    wall_id = -1
    if rng.random() < 0.7:  # a wall behind the table, as seen by a camera looking over it
        back = -T[:3, 2].copy()
        back[2] = 0
        back /= max(np.linalg.norm(back), 1e-9)
        wd = rng.uniform(0.8, 2.5)
        c = -back * wd
        side = np.cross([0, 0, 1.0], back)
        wv = np.array([c + side * 6 + [0, 0, floor_z], c - side * 6 + [0, 0, floor_z],
                       c - side * 6 + [0, 0, 3], c + side * 6 + [0, 0, 3]])
        wall_id = _add(scene, wv, np.array([[0, 1, 2], [0, 2, 3]]))
    obj_ids = [_add(scene, o.verts, o.tris) for o in objs]

    vs, us = np.mgrid[0:H, 0:W]
    rays = _rays(K, T, us.astype(np.float64), vs.astype(np.float64))
    hit = scene.cast_rays(o3d.core.Tensor(rays))
    t_hit = hit["t_hit"].numpy()
    gid = hit["geometry_ids"].numpy().astype(np.int64)
    normals = hit["primitive_normals"].numpy().astype(np.float64)
    valid = np.isfinite(t_hit)
    # depth along the optical axis: the camera-frame z of the ray direction is 1 by construction
    depth_clean = np.where(valid, t_hit, 0.0).astype(np.float32)

    label = np.zeros((H, W), np.int32)
    for k, g in enumerate(obj_ids):
        label[gid == g] = k + 1

    # --- shading
    d = rays[..., 3:].astype(np.float64)
    pts = rays[..., :3] + d * np.where(valid, t_hit, 0)[..., None]
    dn = d / np.linalg.norm(d, axis=-1, keepdims=True)
    flip = (normals * dn).sum(-1) > 0
    normals[flip] *= -1
    albedo = np.zeros((H, W, 3))
    bg = _random_colour(rng) * rng.uniform(0.3, 0.9)
    albedo[:] = bg
    ttex, texel = _table_texture(rng)
    m = gid == table_id
    if m.any():
        loc = (pts[m] - [toff[0], toff[1], 0]) @ table_rot
        albedo[m] = _sample_grid(ttex, loc[:, 0] / texel, loc[:, 1] / texel).reshape(-1, 3)
    m = gid == floor_id
    if m.any():
        ftex, _ = _table_texture(rng)
        albedo[m] = _sample_grid(ftex, pts[m][:, 0] / 0.004, pts[m][:, 1] / 0.004).reshape(-1, 3) * 0.7
    if wall_id >= 0:
        albedo[gid == wall_id] = _random_colour(rng) * 0.5 + 0.4
    spec = np.zeros((H, W))
    shine = np.ones((H, W))
    for k, (o, g) in enumerate(zip(objs, obj_ids)):
        m = gid == g
        if m.any():
            local = (pts[m] - o.pos) @ o.rot
            albedo[m] = _shade_object(o.tex, local, o.tex["height"])
            spec[m] = o.tex["spec"]
            shine[m] = o.tex["shine"]
        del k

    light = np.array([*rng.normal(0, 0.6, 2), 1.0])
    light /= np.linalg.norm(light)
    ambient = rng.uniform(0.25, 0.55)
    lit = np.clip((normals * light).sum(-1), 0, 1)
    # cast shadows: one occlusion ray per lit pixel towards the light
    sm = valid & (lit > 0)
    shadow = np.zeros((H, W), bool)
    if sm.any():
        origin = pts[sm] + normals[sm] * 1e-3
        srays = np.concatenate([origin, np.broadcast_to(light, origin.shape)], -1).astype(np.float32)
        shadow[sm] = scene.test_occlusions(o3d.core.Tensor(srays)).numpy()
        shadow = cv2.GaussianBlur(shadow.astype(np.float32), (0, 0), rng.uniform(0.5, 2.0)) > 0.5
    direct = lit * np.where(shadow, 0.15, 1.0)
    refl = 2 * (normals * light).sum(-1, keepdims=True) * normals - light
    specular = spec * np.clip((refl * -dn).sum(-1), 0, 1) ** shine * (~shadow)
    img = albedo * (ambient + (1 - ambient) * direct)[..., None] + specular[..., None]
    img = np.where(valid[..., None], img, bg * 0.6)
    # camera: exposure, white balance, vignetting, blur, sensor noise
    img *= rng.uniform(0.75, 1.25) * rng.uniform(0.9, 1.1, 3)
    r2 = ((us - W / 2) ** 2 + (vs - H / 2) ** 2) / (W * W / 4 + H * H / 4)
    img *= (1 - rng.uniform(0, 0.35) * r2)[..., None]
    img = cv2.GaussianBlur(img.astype(np.float32), (0, 0), rng.uniform(0.3, 1.0))
    img = img + rng.normal(0, rng.uniform(0.005, 0.02), img.shape).astype(np.float32)
    rgb = (np.clip(img, 0, 1) ** rng.uniform(0.85, 1.1) * 255 + 0.5).astype(np.uint8)

    # --- depth sensor model
    z = depth_clean.astype(np.float64)
    k_noise = rng.uniform(*cfg.depth_noise)
    smooth = cv2.resize(rng.normal(size=(H // 8 + 1, W // 8 + 1)), (W, H), interpolation=cv2.INTER_LINEAR)
    noise = (0.6 * smooth + 0.8 * rng.normal(size=(H, W))) * k_noise * z ** 2
    depth = np.where(valid, z + noise, 0.0)
    invalid = ~valid | (z > cfg.max_range)
    band = int(rng.integers(cfg.edge_dropout_px[0], cfg.edge_dropout_px[1] + 1))
    for s in range(1, band + 1):  # stereo shadow: background just left of a nearer surface
        nearer = np.zeros((H, W), bool)
        nearer[:, :-s] = z[:, s:] < z[:, :-s] - 0.02
        invalid |= nearer & (rng.random((H, W)) < 0.8)
    gy, gx = np.gradient(z)
    edges = (np.hypot(gx, gy) > 0.03 * np.maximum(z, 0.1)) & (rng.random((H, W)) < 0.5)
    invalid |= edges
    hf = rng.uniform(*cfg.hole_fraction)
    if hf > 0:
        hn = _value_noise(rng, 24, H, W)
        invalid |= hn > np.quantile(hn, 1 - hf)
    invalid |= specular > 0.8  # saturated highlights lose depth
    depth = np.where(invalid, 0.0, np.round(depth * 1000) / 1000).astype(np.float32)

    # --- labels: drop tiny visible fragments, then compact ids
    keep = [k for k in range(len(objs)) if (label == k + 1).sum() >= cfg.min_visible_px]
    remap = np.zeros(len(objs) + 1, np.int32)
    for new, k in enumerate(keep):
        remap[k + 1] = new + 1
    label = remap[label].astype(np.uint16)
    ids = np.arange(1, len(keep) + 1)
    amodal = np.zeros((len(keep), H, W), bool)
    for new, k in enumerate(keep):
        vis = label == new + 1
        if cfg.amodal:
            amodal[new] = _amodal_mask(objs[k], K, T, H, W) | vis  # | vis guards float ties only
        else:
            amodal[new] = vis
    vis_area = np.array([(label == i).sum() for i in ids], np.float64)
    am_area = amodal.sum(axis=(1, 2)).astype(np.float64)
    occlusion = 1.0 - vis_area / np.maximum(am_area, 1)
    return SyntheticScene(rgb=rgb, depth=depth, depth_clean=depth_clean, intrinsics=intr, label=label,
                          amodal=amodal, occlusion=occlusion, ids=ids, shapes=[objs[k].kind for k in keep],
                          cam_to_world=T, seed=int(seed),
                          meta={"objects": [{"kind": objs[k].kind, "position": objs[k].pos.tolist(),
                                             "aabb_min": objs[k].verts.min(0).tolist(),
                                             "aabb_max": objs[k].verts.max(0).tolist()} for k in keep],
                                "floor_z": float(floor_z), "light": light.tolist()})


def _amodal_mask(o: _Obj, K: np.ndarray, T: np.ndarray, H: int, W: int) -> np.ndarray:
    """Full projected silhouette: cast rays at the object alone, inside its projected box."""
    out = np.zeros((H, W), bool)
    pc = (o.verts - T[:3, 3]) @ T[:3, :3]
    front = pc[:, 2] > 1e-3
    if not front.any():
        return out
    uv = pc[front, :2] / pc[front, 2:3] * [K[0, 0], K[1, 1]] + [K[0, 2], K[1, 2]]
    u0, v0 = np.floor(uv.min(0)).astype(int) - 1
    u1, v1 = np.ceil(uv.max(0)).astype(int) + 1
    u0, v0, u1, v1 = max(u0, 0), max(v0, 0), min(u1, W), min(v1, H)
    if u1 <= u0 or v1 <= v0:
        return out
    sc = o3d.t.geometry.RaycastingScene()
    _add(sc, o.verts, o.tris)
    vs, us = np.mgrid[v0:v1, u0:u1]
    hit = sc.cast_rays(o3d.core.Tensor(_rays(K, T, us.astype(np.float64), vs.astype(np.float64))))
    out[v0:v1, u0:u1] = np.isfinite(hit["t_hit"].numpy())
    return out


# ----------------------------------------------------------------------------- dataset writer

def _bbox(mask: np.ndarray) -> list[float]:
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return [0.0, 0.0, 0.0, 0.0]
    return [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)]


def write_uoais_dataset(out_dir: str | Path, num: int, seed: int = 0, cfg: SceneConfig | None = None,
                        progress: bool = False) -> Path:
    """Write num scenes in the UOAIS-Sim COCO layout; returns the annotations json path.

    Layout: out_dir/color/NNNNNN.png, out_dir/depth/NNNNNN.png (uint16 mm),
    out_dir/annotations.json, out_dir/camera.json (intrinsics of the first image;
    each image entry also carries its own). Scene i uses seed + i.
    """
    if num < 1:
        raise ValueError(f"--num must be at least 1, got {num}")
    cfg = cfg or SceneConfig()
    out = Path(out_dir)
    (out / "color").mkdir(parents=True, exist_ok=True)
    (out / "depth").mkdir(parents=True, exist_ok=True)
    images, anns = [], []
    it = range(num)
    if progress:
        from tqdm import tqdm
        it = tqdm(it, desc="synthetic scenes", unit="scene")
    first_intr = None
    for i in it:
        s = generate_scene(seed + i, cfg)
        name = f"{i:06d}.png"
        cv2.imwrite(str(out / "color" / name), cv2.cvtColor(s.rgb, cv2.COLOR_RGB2BGR))
        cv2.imwrite(str(out / "depth" / name), np.round(s.depth * 1000).clip(0, 65535).astype(np.uint16))
        intr = s.intrinsics
        first_intr = first_intr or intr
        images.append({"id": i + 1, "file_name": f"color/{name}", "depth_file_name": f"depth/{name}",
                       "width": intr.width, "height": intr.height, "seed": seed + i,
                       "intrinsics": {"fx": intr.fx, "fy": intr.fy, "cx": intr.cx, "cy": intr.cy}})
        for k, oid in enumerate(s.ids):
            vis = s.label == oid
            am = s.amodal[k]
            occ = am & ~vis
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": 1, "iscrowd": 0,
                         "area": int(am.sum()), "bbox": _bbox(am), "segmentation": rle.encode(am),
                         "visible_mask": rle.encode(vis), "visible_bbox": _bbox(vis),
                         "occluded_mask": rle.encode(occ), "occluded_rate": float(s.occlusion[k]),
                         "shape": s.shapes[k]})
    ann_path = out / "annotations.json"
    ann_path.write_text(json.dumps({
        "info": {"description": "uois_sam_ros synthetic tabletop scenes (UOAIS-Sim layout)", "seed": seed},
        "images": images, "annotations": anns,
        "categories": [{"id": 1, "name": "object", "supercategory": "object"}]}))
    assert first_intr is not None
    (out / "camera.json").write_text(json.dumps({
        "width": first_intr.width, "height": first_intr.height, "fx": first_intr.fx, "fy": first_intr.fy,
        "cx": first_intr.cx, "cy": first_intr.cy, "depth_unit_m": 0.001}, indent=1))
    return ann_path


def main(argv: list[str] | None = None) -> int:
    """uois-sam-synth: write a UOAIS-Sim-style synthetic dataset."""
    import argparse
    import sys

    p = argparse.ArgumentParser(prog="uois-sam-synth", description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--num", type=int, default=100, help="number of scenes")
    p.add_argument("--seed", type=int, default=0, help="seed of the first scene (scene i uses seed + i)")
    p.add_argument("--width", type=int, default=640, help="image width, px")
    p.add_argument("--height", type=int, default=480, help="image height, px")
    p.add_argument("--min-objects", type=int, default=1, help="fewest objects per scene")
    p.add_argument("--max-objects", type=int, default=15, help="most objects per scene")
    a = p.parse_args(argv)
    try:
        cfg = SceneConfig(width=a.width, height=a.height, min_objects=a.min_objects, max_objects=a.max_objects)
        path = write_uoais_dataset(a.out, a.num, a.seed, cfg, progress=True)
    except (ValueError, OSError) as e:
        print(f"uois-sam-synth: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {a.num} scenes: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
