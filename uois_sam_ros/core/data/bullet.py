"""Held-out tabletop scenes from a second, independent renderer: pybullet's TinyRenderer.

Every training scene comes from synthetic.py (open3d ray caster, our procedural shapes, our
shading and sensor model). Held-out figures must not share any of that, so here the objects
are pybullet_data meshes (1000 procedural random_urdfs, duck, teddy, lego, soccer ball, jenga
and domino blocks, mug, ...), their placement is a physics simulation (dropped in a cluster,
settled, piled and stacked), and rasterisation, shading and shadows are TinyRenderer's. The
output is the same SyntheticScene, so the UOAIS-Sim writer and the dataset readers take it
unchanged. Scenes are a pure function of (seed, BulletSceneConfig). pybullet is imported
only when a scene is generated.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import cv2
import numpy as np

from uois_sam_ros.core.data.synthetic import SyntheticScene
from uois_sam_ros.core.types import Intrinsics

RENDERER = "pybullet-tiny"
_MISSING = "pybullet is not installed: bash scripts/setup.sh installs it (requirements/base.txt)"
# family -> (pybullet_data URDFs, relative draw weight, keeps its own texture). Mostly the
# procedural random_urdfs: shapes nothing in our generator resembles.
FAMILIES: dict[str, tuple[tuple[str, ...], float, bool]] = {
    "random_urdf": (tuple(f"random_urdfs/{i:03d}/{i:03d}.urdf" for i in range(1000)), 6.0, False),
    "duck": (("duck_vhacd.urdf",), 0.6, True),
    "teddy": (("teddy_vhacd.urdf",), 0.5, False),
    "lego": (("lego/lego.urdf",), 0.6, False),
    "soccerball": (("soccerball.urdf",), 0.3, True),
    "jenga": (("jenga/jenga.urdf",), 0.7, True),
    "domino": (("domino/domino.urdf",), 0.5, True),
    "cube": (("cube_small.urdf",), 0.6, True),
    "block": (("block.urdf",), 0.4, False),
    "sphere": (("sphere2.urdf",), 0.3, True),
    "mug": (("objects/mug.urdf",), 0.5, False),
}
# pybullet_data images for objects that have UVs (duck, ball, jenga, domino, cube, sphere)
TEXTURES = ("checker_blue.png", "checker_grid.jpg", "cube.png", "tex256.png", "uvmap.png", "colors16.png",
            "table/table.png", "jenga/jenga.png", "domino/domino.jpg", "duckCM.png")
# surfaces for the table and floor, cut and tiled from pybullet_data images by _surface_textures()
SURFACES = ("wood", "beige", "metal", "tablecloth", "checker")
_NEAR, _FAR = 0.05, 12.0


@dataclass
class BulletSceneConfig:
    """Ranges the held-out generator samples from, uniformly per scene unless said otherwise.

    Deliberately few: the point is a different distribution from SceneConfig's, not another
    knob-for-knob copy. Defaults: a RealSense-like camera 0.5-1.2 m from a cluster of 3-10
    pybullet_data objects on a finite table.
    """

    width: int = 640
    height: int = 480
    min_objects: int = 3
    max_objects: int = 10
    fx_over_width: tuple[float, float] = (0.93, 0.97)  # RealSense colour: fx ~ 0.95 W
    distance: tuple[float, float] = (0.5, 1.2)  # camera to the look-at point near the cluster, metres
    elevation_deg: tuple[float, float] = (30.0, 65.0)  # optical axis below the horizon
    object_size: tuple[float, float] = (0.03, 0.2)  # largest side of an object, metres
    spread: tuple[float, float] = (0.05, 0.2)  # radius of the drop cluster, metres
    stack_prob: float = 0.25  # per object: dropped onto an earlier one
    table_half_size: tuple[float, float] = (0.35, 0.9)  # metres; small tables show their edge
    floor_prob: float = 0.8  # per scene: a floor below the table (else background colour)
    settle_steps: int = 400  # most physics steps at 240 Hz (stops earlier when everything rests)
    min_visible_px: int = 20  # objects with fewer visible pixels are removed from the scene


class PybulletMissing(RuntimeError):
    """pybullet is not importable (the CLI turns this into one line and exit status 2)."""


def require_pybullet():
    """Import pybullet lazily: only this generator needs it. Returns (pybullet, pybullet_data)."""
    try:
        import pybullet
        import pybullet_data
    except ImportError as e:
        raise PybulletMissing(_MISSING) from e
    return pybullet, pybullet_data


class _Client:
    """pybullet's functions bound to one DIRECT connection, so concurrent scenes never mix.

    (pybullet_utils.BulletClient does the same but prints 'argv[0]=' on every connect.)
    """

    def __init__(self, pybullet) -> None:
        self._pybullet = pybullet
        self.id = pybullet.connect(pybullet.DIRECT)

    def __getattr__(self, name: str):
        return functools.partial(getattr(self._pybullet, name), physicsClientId=self.id)


def gl_projection(K: np.ndarray, width: int, height: int, near: float = _NEAR, far: float = _FAR) -> np.ndarray:
    """OpenGL projection (4x4, row-major) under which TinyRenderer draws on the pixel grid of K.

    TinyRenderer samples pixel corners, and flips rows after rasterising bottom-up: column u is
    sampled at NDC x = 2 u / W - 1 and output row v at y = 1 - 2 (v + 1) / H. The offsets below
    put OpenCV pixel centres (integers) there; test_bullet_scenes checks it to 0.1 px.
    """
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    P = np.zeros((4, 4))
    P[0, 0], P[0, 2] = 2 * fx / width, 1 - 2 * cx / width
    P[1, 1], P[1, 2] = 2 * fy / height, 2 * (cy + 1) / height - 1
    P[2, 2], P[2, 3] = -(far + near) / (far - near), -2 * far * near / (far - near)
    P[3, 2] = -1.0
    return P


def gl_view(cam_to_world: np.ndarray) -> np.ndarray:
    """OpenGL view matrix (world -> camera with y up, z back) of an OpenCV cam_to_world."""
    return np.diag([1.0, -1.0, -1.0, 1.0]) @ np.linalg.inv(cam_to_world)


def zbuffer_to_metres(zbuf: np.ndarray, near: float = _NEAR, far: float = _FAR) -> np.ndarray:
    """Metric depth along the optical axis from the OpenGL [0, 1] depth buffer."""
    return (far * near / (far - (far - near) * np.asarray(zbuf, np.float64))).astype(np.float32)


_surface_dir: str | None = None


def _surface_textures(data: str) -> dict[str, str]:
    """Table and floor textures, written once per process: pybullet_data images are single tiles
    (the jenga wood carries labels), stretched over a 1.5 m table they look like nothing real."""
    global _surface_dir
    import atexit
    import os
    import shutil
    import tempfile

    if _surface_dir is None or not os.path.isdir(_surface_dir):
        out = tempfile.mkdtemp(prefix="uois_bullet_tex_")
        atexit.register(shutil.rmtree, out, True)
        d = os.path.join
        wood = cv2.imread(d(data, "jenga/jenga.png"))[530:1010, 262:505]
        tray = cv2.imread(d(data, "tray/tray.jpg"))
        h, w = tray.shape[:2]
        cv2.imwrite(d(out, "wood.png"), np.tile(wood, (1, 4, 1)))  # planks
        cv2.imwrite(d(out, "beige.png"), cv2.imread(d(data, "table/table.png")))
        cv2.imwrite(d(out, "metal.png"), tray[h // 3:2 * h // 3, w // 4:3 * w // 4])
        cv2.imwrite(d(out, "tablecloth.png"), np.tile(cv2.imread(d(data, "checker_blue.png")), (3, 3, 1)))
        cv2.imwrite(d(out, "checker.png"), np.tile(cv2.imread(d(data, "checker_grid.jpg")), (2, 2, 1)))
        _surface_dir = out
    return {k: f"{_surface_dir}/{k}.png" for k in SURFACES}


def _look_at(rng: np.random.Generator, cfg: BulletSceneConfig, target: np.ndarray) -> tuple[np.ndarray, dict]:
    """OpenCV cam_to_world looking at target from a random distance, elevation, azimuth, small roll."""
    dist = rng.uniform(*cfg.distance)
    elev = np.deg2rad(rng.uniform(*cfg.elevation_deg))
    az = rng.uniform(0, 2 * np.pi)
    back = np.array([np.cos(elev) * np.cos(az), np.cos(elev) * np.sin(az), np.sin(elev)])
    z = -back
    x = np.array([-np.sin(az), np.cos(az), 0.0])
    y = np.cross(z, x)
    roll = np.deg2rad(rng.uniform(-5, 5))
    x, y = np.cos(roll) * x + np.sin(roll) * y, -np.sin(roll) * x + np.cos(roll) * y
    T = np.eye(4)
    T[:3, :3] = np.stack([x, y, z], 1)
    T[:3, 3] = target + dist * back
    return T, {"distance": float(dist), "elevation_deg": float(np.rad2deg(elev)), "azimuth": float(az)}


def _colour(rng: np.random.Generator, lo: float = 0.15, hi: float = 1.0, sat: float = 1.0) -> list[float]:
    """A random RGBA colour with value in [lo, hi] (HSV sampled: greys and vivid colours both occur)."""
    h, s, v = rng.random(), sat * rng.uniform(0, 1) ** 0.7, rng.uniform(lo, hi)
    rgb = cv2.cvtColor(np.array([[[h * 179, s * 255, v * 255]]], np.uint8), cv2.COLOR_HSV2RGB)[0, 0] / 255.0
    return [*map(float, rgb), 1.0]


def _random_quat(rng: np.random.Generator) -> list[float]:
    q = rng.standard_normal(4)
    return (q / np.linalg.norm(q)).tolist()


def _sensor_depth(rng: np.random.Generator, z: np.ndarray, fx: float) -> np.ndarray:
    """Modest D4xx-like depth: disparity noise and 1/8 px quantisation, edge dropouts, a few holes, mm.

    Deliberately not synthetic.py's sensor model, so held-out depth does not share its quirks.
    """
    H, W = z.shape
    hit = z > 0
    fb = fx * 0.05  # 5 cm baseline
    disp = np.where(hit, fb / np.maximum(z, 1e-6), 0.0)
    disp = disp + rng.uniform(0.03, 0.08) * rng.standard_normal((H, W))
    disp = np.round(disp * 8) / 8
    depth = np.where(disp > 0, fb / np.maximum(disp, 1e-6), 0.0)
    gy, gx = np.gradient(z)
    invalid = ~hit | (disp <= 0) | (z < 0.2)
    invalid |= (np.hypot(gx, gy) > 0.02 * np.maximum(z, 0.1)) & (rng.random((H, W)) < 0.6)
    holes = np.zeros((H, W), np.uint8)
    for _ in range(int(rng.integers(0, 5))):
        c = (int(rng.integers(0, W)), int(rng.integers(0, H)))
        ax = (int(rng.integers(2, max(3, W // 40))), int(rng.integers(2, max(3, H // 40))))
        cv2.ellipse(holes, c, ax, float(rng.uniform(0, 180)), 0, 360, 1, -1)
    invalid |= holes.astype(bool)
    return np.where(invalid, 0.0, np.round(depth * 1000) / 1000).astype(np.float32)


def generate_bullet_scene(seed: int, cfg: BulletSceneConfig | None = None) -> SyntheticScene:
    """Simulate and render one held-out scene; identical output for identical (seed, cfg)."""
    cfg = cfg or BulletSceneConfig()
    if cfg.min_objects < 1 or cfg.max_objects < cfg.min_objects:
        raise ValueError(f"need 1 <= min_objects <= max_objects, got {cfg.min_objects}, {cfg.max_objects}")
    if cfg.width < 8 or cfg.height < 8:
        raise ValueError(f"image size {cfg.width}x{cfg.height} is too small")
    pybullet, pybullet_data = require_pybullet()
    pb = _Client(pybullet)
    try:
        pb.setAdditionalSearchPath(pybullet_data.getDataPath())
        return _simulate_and_render(pb, pybullet, pybullet_data.getDataPath(), np.random.default_rng(seed), cfg,
                                    int(seed))
    finally:
        pb.disconnect()


def _simulate_and_render(pb, pybullet, data_path: str, rng: np.random.Generator, cfg: BulletSceneConfig,
                         seed: int) -> SyntheticScene:
    W, H = cfg.width, cfg.height
    fx = W * rng.uniform(*cfg.fx_over_width)
    intr = Intrinsics(fx, fx * rng.uniform(0.995, 1.005), W / 2 + rng.uniform(-0.01, 0.01) * W,
                      H / 2 + rng.uniform(-0.01, 0.01) * H, W, H)
    K = intr.K
    pb.setGravity(0, 0, -9.81)
    tex_files = {**{t: t for t in TEXTURES}, **_surface_textures(data_path)}
    loaded: dict[str, int] = {}

    def texture(name: str) -> int:  # loaded when first used: loading all takes longer than a render
        if name not in loaded:
            loaded[name] = pb.loadTexture(tex_files[name])
        return loaded[name]

    # --- table (top face at z = 0), optional floor
    half = np.array([*rng.uniform(*cfg.table_half_size, 2), rng.uniform(0.01, 0.025)])
    yaw = rng.uniform(0, np.pi)
    table_q = pb.getQuaternionFromEuler([0, 0, yaw])
    col = pb.createCollisionShape(pybullet.GEOM_BOX, halfExtents=half.tolist())
    vis = pb.createVisualShape(pybullet.GEOM_MESH, fileName="table/table.obj", meshScale=(2 * half).tolist(),
                               rgbaColor=_colour(rng, 0.35, 1.0, 0.5))
    table = pb.createMultiBody(0, col, vis, [0, 0, -half[2]], table_q)
    table_tex = SURFACES[int(rng.integers(len(SURFACES)))] if rng.random() < 0.75 else None
    if table_tex:  # a light tint only: the texture is multiplied by the colour
        pb.changeVisualShape(table, -1, textureUniqueId=texture(table_tex), rgbaColor=_colour(rng, 0.75, 1.0, 0.3))
    scenery = [table]
    floor_z = None
    if rng.random() < cfg.floor_prob:
        floor_z = -rng.uniform(0.4, 0.8)
        fv = pb.createVisualShape(pybullet.GEOM_MESH, fileName="table/table.obj", meshScale=[12, 12, 0.02],
                                  rgbaColor=_colour(rng, 0.2, 0.8, 0.4))
        floor = pb.createMultiBody(0, -1, fv, [0, 0, floor_z - 0.01])
        if rng.random() < 0.5:
            pb.changeVisualShape(floor, -1, textureUniqueId=texture(SURFACES[int(rng.integers(len(SURFACES)))]))
        scenery.append(floor)

    # --- objects: dropped in a cluster, above whatever they would overlap, then settled
    R = np.array(pb.getMatrixFromQuaternion(table_q)).reshape(3, 3)
    spread = rng.uniform(*cfg.spread)
    room = np.maximum(half[:2] - spread - 0.05, 0.0)
    centre = R[:2, :2] @ (rng.uniform(-1, 1, 2) * room * 0.7)
    names = list(FAMILIES)
    w = np.array([FAMILIES[f][1] for f in names])
    n = int(rng.integers(cfg.min_objects, cfg.max_objects + 1))
    bodies: list[int] = []
    info: list[dict] = []
    for _ in range(n):
        fam = names[int(rng.choice(len(names), p=w / w.sum()))]
        files, _, own_tex = FAMILIES[fam]
        urdf = files[int(rng.integers(len(files)))]
        probe = pb.loadURDF(urdf)
        lo, hi = (np.array(a) for a in pb.getAABB(probe))
        pb.removeBody(probe)
        size = float(rng.uniform(*cfg.object_size))
        scale = size / max(float((hi - lo).max()), 1e-6)
        upright = fam in ("duck", "teddy", "mug") and rng.random() < 0.7
        q = pb.getQuaternionFromEuler([0, 0, rng.uniform(0, 2 * np.pi)]) if upright else _random_quat(rng)
        if bodies and rng.random() < cfg.stack_prob:
            xy = np.array(pb.getBasePositionAndOrientation(bodies[int(rng.integers(len(bodies)))])[0][:2])
            xy = xy + rng.normal(0, 0.01, 2)
        else:
            r, a = spread * np.sqrt(rng.random()), rng.uniform(0, 2 * np.pi)
            xy = centre + r * np.array([np.cos(a), np.sin(a)])
        b = pb.loadURDF(urdf, [xy[0], xy[1], 1.0], q, globalScaling=scale)
        lo, hi = (np.array(a) for a in pb.getAABB(b))
        floor_top = 0.0
        for o in bodies:  # rest it above every earlier object its footprint overlaps
            olo, ohi = (np.array(a) for a in pb.getAABB(o))
            if (lo[:2] < ohi[:2]).all() and (olo[:2] < hi[:2]).all():
                floor_top = max(floor_top, float(ohi[2]))
        pb.resetBasePositionAndOrientation(b, [xy[0], xy[1], 1.0 - lo[2] + floor_top + 0.003], q)
        pb.changeDynamics(b, -1, lateralFriction=0.8, rollingFriction=0.002, spinningFriction=0.002,
                          linearDamping=0.1, angularDamping=0.3)
        tex = None
        if own_tex and rng.random() < 0.6:
            pb.changeVisualShape(b, -1, rgbaColor=[1, 1, 1, 1])
        else:
            pb.changeVisualShape(b, -1, rgbaColor=_colour(rng))
            if own_tex and rng.random() < 0.5:  # has UVs: a random pybullet_data image
                tex = TEXTURES[int(rng.integers(len(TEXTURES)))]
                pb.changeVisualShape(b, -1, textureUniqueId=texture(tex))
        bodies.append(b)
        info.append({"kind": fam, "urdf": urdf, "scale": float(scale), "size_m": size, "texture": tex,
                     "transparent": False})
    steps = 0
    while steps < cfg.settle_steps:
        for _ in range(20):
            pb.stepSimulation()
        steps += 20
        if steps >= 100 and all(np.abs(pb.getBaseVelocity(b)[0]).max() < 2e-3
                                and np.abs(pb.getBaseVelocity(b)[1]).max() < 2e-2 for b in bodies):
            break
    # drop what fell off the table (getAABB is loose for rotated meshes: test the origin instead)
    keep = []
    for b, m in zip(bodies, info):
        if pb.getBasePositionAndOrientation(b)[0][2] < -0.03:
            pb.removeBody(b)
        else:
            keep.append((b, m))

    # --- camera at the settled cluster, light
    pos = np.array([pb.getBasePositionAndOrientation(b)[0] for b, _ in keep]) if keep else np.zeros((1, 3))
    target = pos.mean(0)
    target[2] = 0.0
    target[:2] += rng.normal(0, 0.3 * spread, 2)
    T, cam_meta = _look_at(rng, cfg, target)
    view = pb.computeViewMatrix(T[:3, 3].tolist(), (T[:3, 3] + T[:3, 2]).tolist(), (-T[:3, 1]).tolist())
    le, la = np.deg2rad(rng.uniform(35, 85)), rng.uniform(0, 2 * np.pi)
    light = {"lightDirection": (3 * np.array([np.cos(le) * np.cos(la), np.cos(le) * np.sin(la), np.sin(le)])).tolist(),
             "lightColor": (np.clip(1 + rng.normal(0, 0.08, 3), 0.7, 1.0)).tolist(),
             "lightDistance": 3.0, "lightAmbientCoeff": float(rng.uniform(0.3, 0.65)),
             "lightDiffuseCoeff": float(rng.uniform(0.35, 0.75)), "lightSpecularCoeff": float(rng.uniform(0.0, 0.4))}

    def render(w: int, h: int, Kc: np.ndarray, shadow: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        P = gl_projection(Kc, w, h)
        _, _, rgba, zbuf, seg = pb.getCameraImage(w, h, view, P.flatten(order="F").tolist(), shadow=int(shadow),
                                                  renderer=pybullet.ER_TINY_RENDERER, **light)
        return (np.asarray(rgba, np.uint8).reshape(h, w, 4)[..., :3], np.asarray(zbuf, np.float32).reshape(h, w),
                np.asarray(seg, np.int32).reshape(h, w))

    rgb, zbuf, seg = render(W, H, K, True)
    counts = {b: int((seg == b).sum()) for b, _ in keep}
    if any(0 < counts[b] < cfg.min_visible_px for b, _ in keep):  # visible fragments: remove, render again
        for b, _ in keep:
            if counts[b] < cfg.min_visible_px:
                pb.removeBody(b)
        keep = [(b, m) for b, m in keep if counts[b] >= cfg.min_visible_px]
        rgb, zbuf, seg = render(W, H, K, True)
    else:
        keep = [(b, m) for b, m in keep if counts[b] >= cfg.min_visible_px]
    depth_clean = np.where(seg >= 0, zbuffer_to_metres(zbuf), 0.0).astype(np.float32)
    label = np.zeros((H, W), np.uint16)
    for k, (b, _) in enumerate(keep):
        label[seg == b] = k + 1

    # --- amodal: each object alone (everything else moved behind the camera), rendered in its box only
    away = (T[:3, 3] - 50 * T[:3, 2]).tolist()
    poses = {b: pb.getBasePositionAndOrientation(b) for b, _ in keep}
    for b in [*scenery, *poses]:
        pb.resetBasePositionAndOrientation(b, away, [0, 0, 0, 1])
    amodal = np.zeros((len(keep), H, W), bool)
    aabbs: dict[int, tuple] = {}
    missing = 0
    for k, (b, _) in enumerate(keep):
        pb.resetBasePositionAndOrientation(b, *poses[b])
        aabbs[b] = pb.getAABB(b)  # conservative for rotated meshes
        u0, v0, u1, v1 = _projected_box(np.array(aabbs[b]), K, T, W, H)
        Kc = K.copy()
        Kc[0, 2] -= u0
        Kc[1, 2] -= v0
        _, _, s = render(u1 - u0, v1 - v0, Kc, False)
        amodal[k, v0:v1, u0:u1] = s == b
        vis = label == k + 1
        missing += int((vis & ~amodal[k]).sum())
        amodal[k] |= vis  # guards rasterisation ties only: meta["amodal_missing_px"] counts them
        pb.resetBasePositionAndOrientation(b, away, [0, 0, 0, 1])

    # --- camera: mild blur, exposure, noise; depth sensor
    img = cv2.GaussianBlur(rgb.astype(np.float32), (0, 0), rng.uniform(0.3, 0.7) * W / 640)
    img = img * rng.uniform(0.9, 1.1) + rng.normal(0, rng.uniform(1.0, 3.0), img.shape)
    rgb = np.clip(img + 0.5, 0, 255).astype(np.uint8)
    depth = _sensor_depth(rng, depth_clean, fx)

    ids = np.arange(1, len(keep) + 1)
    vis_area = np.array([(label == i).sum() for i in ids], np.float64)
    occlusion = 1.0 - vis_area / np.maximum(amodal.sum(axis=(1, 2)), 1)
    objects = []
    for b, m in keep:
        p, q = poses[b]
        objects.append({**m, "position": list(p), "orientation": list(q), "aabb_min": list(aabbs[b][0]),
                        "aabb_max": list(aabbs[b][1])})
    meta = {"renderer": RENDERER, "objects": objects, "floor_z": floor_z, "steps": steps,
            "table": {"half_size": half.tolist(), "yaw": float(yaw), "texture": table_tex},
            "light": light, "camera": cam_meta, "amodal_missing_px": missing}
    return SyntheticScene(rgb=rgb, depth=depth, depth_clean=depth_clean, intrinsics=intr, label=label,
                          amodal=amodal, occlusion=occlusion, ids=ids, shapes=[m["kind"] for _, m in keep],
                          cam_to_world=T, seed=seed, meta=meta)


def _projected_box(aabb: np.ndarray, K: np.ndarray, T: np.ndarray, W: int, H: int) -> tuple[int, int, int, int]:
    """Pixel box (u0, v0, u1, v1) that holds the projection of a world AABB, clipped to the image."""
    corners = np.array([[aabb[i][0], aabb[j][1], aabb[k][2]] for i in (0, 1) for j in (0, 1) for k in (0, 1)])
    pc = (corners - T[:3, 3]) @ T[:3, :3]
    if (pc[:, 2] < 0.02).any():  # reaches behind the camera: the whole image
        return 0, 0, W, H
    uv = pc[:, :2] / pc[:, 2:3] * [K[0, 0], K[1, 1]] + [K[0, 2], K[1, 2]]
    u0, v0 = np.floor(uv.min(0)).astype(int) - 2
    u1, v1 = np.ceil(uv.max(0)).astype(int) + 3
    u0, v0, u1, v1 = max(u0, 0), max(v0, 0), min(u1, W), min(v1, H)
    if u1 <= u0 or v1 <= v0:
        return 0, 0, 1, 1
    return int(u0), int(v0), int(u1), int(v1)
