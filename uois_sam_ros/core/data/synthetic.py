"""Synthetic tabletop RGB-D scenes with exact visible and amodal labels.

There is no labelled data and there are no pretrained weights on the machines this
package is built on, so the small SAM and the HPG are trained on scenes from this
generator, and their quality on real RealSense frames depends on how varied the scenes
are. Everything a real frame has that a model could latch onto is randomised: a finite
table with its edge, legs and the carpet or floor around and below it, walls and
furniture behind, procedural textures (wood, carpet, printed packaging, stripes,
checkers, noise, gradients), light colour, direction, cast shadows and highlights,
exposure, white balance and sensor noise; up to 20 objects of many shapes (boxes of all
aspect ratios, books, paper-thin pads, cans, bottles, cups, mugs, bowls, plates, lids,
markers, cutlery, bricks, bags, irregular meshes) standing, lying, stacked, touching,
leaning and piled, some transparent; and the depth sensor's disparity noise and
quantisation, stereo-shadow bands, the invalid left band, holes on dark, shiny, grazing
and transparent surfaces and dropouts far away. Geometry is ray-cast with open3d's
RaycastingScene (CPU), so depth and ids are exact before the sensor model is applied.
Scenes are a pure function of (seed, SceneConfig).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import open3d as o3d

from uois_sam_ros.core.data import rle
from uois_sam_ros.core.types import Frame, Intrinsics, Sample

SHAPES = ("box", "cylinder", "sphere", "bowl", "mug", "blob", "hull", "book", "pad", "bottle", "cup", "plate",
          "lid", "marker", "cutlery", "brick", "bag")
# how often each kind is drawn relative to the others (real tabletop sets are mostly boxes, cans, mugs)
SHAPE_WEIGHTS = {"box": 3.0, "cylinder": 2.0, "bottle": 1.5, "mug": 1.5, "cup": 1.0, "bowl": 1.0, "book": 1.0,
                 "pad": 0.6, "plate": 0.7, "lid": 0.5, "marker": 1.0, "cutlery": 0.7, "brick": 0.7,
                 "sphere": 0.7, "blob": 0.5, "hull": 0.7, "bag": 0.7}
TRANSPARENT_KINDS = ("bottle", "cup", "cylinder", "bowl", "mug", "plate", "box")
_LEANERS = ("book", "pad", "plate", "lid", "box")  # flat things that lean against a taller neighbour
_TUMBLERS = ("hull", "blob", "bag")  # irregular things that rest in any orientation


@dataclass
class SceneConfig:
    """Ranges the generator samples from; defaults mimic a RealSense D435 over a table in a room.

    (lo, hi) tuples are sampled uniformly per scene; *_prob fields are per-scene (or per-object
    where said) probabilities. Setting a probability or range to 0 switches that variety off.
    """

    width: int = 640
    height: int = 480
    min_objects: int = 1
    max_objects: int = 20
    # --- camera
    fx_over_width: tuple[float, float] = (0.93, 0.99)  # RealSense colour at 640x480: fx ~ 0.957 W
    distance: tuple[float, float] = (0.5, 1.3)  # camera to look-at point (near the object cluster), metres
    # optical axis below the horizon; the real UOIS frames measure 26-49 degrees, 0.7-1.0 m to the table
    elevation_deg: tuple[float, float] = (25.0, 60.0)
    topdown_prob: float = 0.1  # per scene: a steeper, up to top-down view (60-88 degrees) instead
    roll_deg: float = 6.0
    aim_jitter: float = 0.5  # look-at offset from the cluster centre, x cluster spread: objects cut by the border
    # --- arrangement of the objects on the table
    spread: tuple[float, float] = (0.08, 0.35)  # radius of the object cluster, metres
    stack_prob: float = 0.15  # per object: placed on top of an earlier flat-topped object
    touch_prob: float = 0.35  # per object: placed touching an earlier object side by side
    lean_prob: float = 0.1  # per flat object (book, pad, plate, lid, box): leaning against a taller one
    lying_prob: float = 0.25  # per can, bottle, cup: lying on its side (markers always lie)
    pile_prob: float = 0.2  # per scene: a dense pile (small spread, mostly touching and stacked)
    shapes: tuple[str, ...] = SHAPES
    # --- the scene around the objects
    table_size: tuple[float, float] = (0.55, 2.2)  # table side lengths (a round table: its diameter), metres
    round_table_prob: float = 0.25
    table_thickness: tuple[float, float] = (0.015, 0.05)
    floor: bool = True  # a floor (and table legs, furniture) below the finite table; off: nothing below
    floor_drop: tuple[float, float] = (0.4, 0.8)  # table top height above the floor, metres
    wall_prob: float = 0.75  # a wall behind the table (sometimes a second one at the side)
    background_clutter: tuple[int, int] = (0, 6)  # chairs, cabinets, bins, boxes on the floor around the table
    # --- appearance
    object_texture_prob: float = 0.7  # per object: patterned (stripes, checker, label, wood, ...) instead of solid
    camouflage_prob: float = 0.12  # per object: albedo close to the table's
    transparent_prob: float = 0.25  # per scene: some glass/plastic objects (see-through colour, missing depth)
    transparent_fraction: float = 0.4  # per eligible object in such a scene: it is transparent
    ambient: tuple[float, float] = (0.25, 0.6)  # ambient share of the light
    colour_temp_k: tuple[float, float] = (2700.0, 7500.0)  # light colour temperature
    shadows: bool = True  # cast shadows of the key light (one occlusion ray per pixel)
    specular: tuple[float, float] = (0.0, 0.7)  # highlight strength of glossy objects
    exposure: tuple[float, float] = (0.75, 1.25)  # around auto-exposure
    gamma: tuple[float, float] = (0.85, 1.15)
    white_balance: float = 0.08  # per-channel gain jitter
    image_noise: tuple[float, float] = (0.004, 0.02)  # sensor noise sigma (0..1 intensity)
    blur_px: tuple[float, float] = (0.3, 1.1)  # Gaussian blur sigma, pixels
    # --- depth sensor (D4xx-like active stereo; depth registered to colour)
    baseline: tuple[float, float] = (0.045, 0.055)  # stereo baseline, metres: sets stereo-shadow widths
    depth_noise: tuple[float, float] = (0.0008, 0.004)  # sigma = k * z^2 (metres) at 640 px width, via disparity
    edge_dropout_px: tuple[int, int] = (0, 2)  # extra widening of the stereo-shadow bands, pixels
    hole_fraction: tuple[float, float] = (0.0, 0.03)  # blob-shaped holes anywhere
    speckle_prob: float = 0.15  # per scene: speckled dropouts (weak projector pattern)
    dark_holes: tuple[float, float] = (0.0, 0.6)  # share of dark-surface pixels that lose depth
    left_band_prob: float = 0.6  # the left band seen by one imager only is invalid
    min_range: float = 0.2  # nearer than this is invalid
    max_range: tuple[float, float] | float = (3.0, 8.0)  # farther than this is invalid (dropouts grow before)
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
    # world-frame (vertices, triangles) of object ids[k]: lets checks re-render each object alone
    object_meshes: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)

    def frame(self) -> Frame:
        return Frame(rgb=self.rgb, depth=self.depth, intrinsics=self.intrinsics)

    def sample(self) -> Sample:
        return Sample(rgb=self.rgb, depth=self.depth, intrinsics=self.intrinsics, label=self.label,
                      name=f"synthetic_{self.seed:08d}", amodal=self.amodal, amodal_ids=self.ids)


def _span(x: tuple[float, float] | float) -> tuple[float, float]:
    return (float(x), float(x)) if np.isscalar(x) else (float(x[0]), float(x[1]))


# ----------------------------------------------------------------------------- meshes

def _lathe(profile: np.ndarray, segments: int) -> tuple[np.ndarray, np.ndarray]:
    """Surface of revolution about z of a (P, 2) (radius, z) polyline.

    Profile corners sharper than 40 degrees get a second ring of vertices, so smooth
    (interpolated) normals stay crisp there (a can's rim is an edge, its side is round).
    """
    profile = np.asarray(profile, np.float64)
    if len(profile) > 2:
        seg = np.diff(profile, axis=0)
        seg /= np.maximum(np.linalg.norm(seg, axis=1, keepdims=True), 1e-12)
        turn = np.arccos(np.clip((seg[:-1] * seg[1:]).sum(1), -1, 1))
        rows = [profile[0]]
        for i in range(1, len(profile) - 1):
            rows += [profile[i]] * (2 if turn[i - 1] > np.deg2rad(40) and profile[i, 0] > 0 else 1)
        profile = np.array(rows + [profile[-1]])
    ang = np.linspace(0, 2 * np.pi, segments, endpoint=False)
    r, z = profile[:, 0], profile[:, 1]
    v = np.stack([r[:, None] * np.cos(ang)[None], r[:, None] * np.sin(ang)[None],
                  np.repeat(z[:, None], segments, 1)], -1).reshape(-1, 3)
    i = np.arange(len(profile) - 1)[:, None] * segments
    j = np.arange(segments)[None]
    a, b = i + j, i + (j + 1) % segments
    c, d = a + segments, b + segments
    tris = np.stack([np.stack([a, b, d], -1), np.stack([a, d, c], -1)], 2).reshape(-1, 3)
    return v, tris.astype(np.int64)


def _mesh_arrays(m: o3d.geometry.TriangleMesh) -> tuple[np.ndarray, np.ndarray]:
    return np.asarray(m.vertices, np.float64), np.asarray(m.triangles, np.int64)


def _box(sx: float, sy: float, sz: float, centre: tuple[float, float, float] = (0, 0, 0)
         ) -> tuple[np.ndarray, np.ndarray]:
    """Box with its base centred on `centre`."""
    v, t = _mesh_arrays(o3d.geometry.TriangleMesh.create_box(sx, sy, sz))
    return v - [sx / 2, sy / 2, 0] + np.asarray(centre, float), t


def _merge(*parts: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    vs, ts, n = [], [], 0
    for v, t in parts:
        vs.append(v)
        ts.append(t + n)
        n += len(v)
    return np.concatenate(vs), np.concatenate(ts)


def _vertex_normals(v: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Area-weighted vertex normals (winding as given; shading flips them towards the camera)."""
    fn = np.cross(v[t[:, 1]] - v[t[:, 0]], v[t[:, 2]] - v[t[:, 0]])
    vn = np.zeros_like(v)
    for k in range(3):
        np.add.at(vn, t[:, k], fn)
    return (vn / np.maximum(np.linalg.norm(vn, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def _cylinder(r: float, h: float, seg: int = 24) -> tuple[np.ndarray, np.ndarray]:
    return _lathe(np.array([[0, 0], [r, 0], [r, h], [0, h]]), seg)


def _make_shape(kind: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, dict]:
    """Vertices (object frame, base at z = 0, centred in x/y), triangles and traits of one object.

    traits: flat_top (others can stand on it), lathe (texture wraps around local z),
    lie (may lie on its side), flat (thin: stands on edge to lean).
    """
    tr = {"flat_top": False, "lathe": False, "lie": False, "flat": False, "smooth": kind not in ("box", "book", "pad",
                                                                                               "cutlery", "brick", "hull")}
    if kind == "box":  # every aspect ratio: cubes, cereal boxes, thin flat boxes, sticks
        sx, sy, sz = np.exp(rng.uniform(np.log(0.025), np.log(0.22), 3))
        if rng.random() < 0.25:  # tall packaging
            sz = rng.uniform(0.15, 0.28)
        v, t = _box(sx, sy, sz)
        tr["flat_top"] = True
    elif kind == "book":
        v, t = _box(rng.uniform(0.12, 0.28), rng.uniform(0.09, 0.21), rng.uniform(0.008, 0.05))
        tr.update(flat_top=True, flat=True)
    elif kind == "pad":  # paper-thin: notepads, coasters, envelopes
        v, t = _box(rng.uniform(0.05, 0.2), rng.uniform(0.05, 0.2), rng.uniform(0.002, 0.006))
        tr.update(flat_top=True, flat=True)
    elif kind == "cylinder":  # cans, canisters, jars
        v, t = _cylinder(rng.uniform(0.02, 0.055), rng.uniform(0.03, 0.22), 24)
        tr.update(flat_top=True, lathe=True, lie=True)
    elif kind == "bottle":
        r, h = rng.uniform(0.022, 0.045), rng.uniform(0.14, 0.28)
        rn, body = r * rng.uniform(0.3, 0.5), h * rng.uniform(0.5, 0.7)
        sh = np.linspace(0, 1, 5)[1:]
        shoulder = np.stack([rn + (r - rn) * np.cos(sh * np.pi / 2), body + (h * 0.85 - body) * sh], 1)
        prof = np.concatenate([[[0, 0], [r, 0], [r, body]], shoulder, [[rn, h], [0, h]]])
        v, t = _lathe(prof, 24)
        tr.update(lathe=True, lie=True)
    elif kind == "cup":  # open, tapered: plastic cups, glasses
        r0, h, th = rng.uniform(0.022, 0.036), rng.uniform(0.06, 0.12), 0.0025
        r1 = r0 * rng.uniform(1.0, 1.4)
        v, t = _lathe(np.array([[0, 0], [r0, 0], [r1, h], [r1 - th, h], [r0 - th, th], [0, th]]), 28)
        tr.update(lathe=True, lie=True)
    elif kind == "sphere":
        r = rng.uniform(0.02, 0.05)
        v, t = _mesh_arrays(o3d.geometry.TriangleMesh.create_sphere(r, resolution=12))
        v[:, 2] += r
    elif kind == "bowl":
        r, h, th = rng.uniform(0.05, 0.1), rng.uniform(0.035, 0.07), 0.004
        s = np.linspace(0, 1, 7)
        outer = np.stack([0.45 * r + 0.55 * r * s ** 0.7, h * s], 1)
        inner = np.stack([(0.45 * r + 0.55 * r * s ** 0.7 - th)[::-1], (th + (h - th) * s)[::-1]], 1)
        v, t = _lathe(np.concatenate([[[0.0, 0.0]], outer, inner, [[0.0, th]]]), 28)
        tr["lathe"] = True
    elif kind == "mug":
        r, h, th = rng.uniform(0.03, 0.05), rng.uniform(0.07, 0.12), 0.004
        v, t = _lathe(np.array([[0, 0], [r, 0], [r, h], [r - th, h], [r - th, th], [0, th]]), 28)
        hv, ht = _mesh_arrays(o3d.geometry.TriangleMesh.create_torus(h * 0.28, 0.006, 12, 6))
        hv = hv[:, [0, 2, 1]]  # handle in the x-z plane
        hv[:, 0] += r
        hv[:, 2] += h / 2
        v, t = _merge((v, t), (hv, ht))
        tr["lathe"] = True
    elif kind == "plate":
        r, h = rng.uniform(0.07, 0.13), rng.uniform(0.012, 0.03)
        th = min(0.005, h * 0.5)
        v, t = _lathe(np.array([[0, 0], [0.6 * r, 0], [r, h], [r - 0.003, h], [0.6 * r, th], [0, th]]), 32)
        tr.update(lathe=True, flat=True)
    elif kind == "lid":
        v, t = _cylinder(rng.uniform(0.03, 0.08), rng.uniform(0.004, 0.015), 28)
        tr.update(flat_top=True, lathe=True, flat=True)
    elif kind == "marker":  # pens, markers: a thin cylinder with a wider cap, always lying
        r, ln = rng.uniform(0.006, 0.011), rng.uniform(0.1, 0.15)
        c = rng.uniform(0.65, 0.8) * ln
        v, t = _lathe(np.array([[0, 0], [r, 0], [r, c], [r * 1.15, c], [r * 1.15, ln], [0, ln]]), 12)
        tr.update(lathe=True, lie=True)
    elif kind == "cutlery":  # long thin flat: handle + wider head
        ln, w, th = rng.uniform(0.14, 0.22), rng.uniform(0.01, 0.02), rng.uniform(0.003, 0.008)
        hl = ln * rng.uniform(0.55, 0.7)
        v, t = _merge(_box(hl, w, th, (-(ln - hl) / 2, 0, 0)),
                      _box(ln - hl, w * rng.uniform(1.2, 2.2), th, (hl / 2, 0, 0)))
        tr["flat"] = True
    elif kind == "brick":  # toy bricks (Lego to Duplo sizes) with studs
        p = rng.uniform(0.008, 0.032)
        nx, ny = int(rng.choice([2, 3, 4])), int(rng.choice([1, 2]))
        hgt = p * rng.choice([1.2, 0.4])  # brick or plate
        parts = [_box(nx * p, ny * p, hgt)]
        for i in range(nx):
            for j in range(ny):
                cv, ct = _cylinder(0.3 * p, 0.18 * p, 10)
                parts.append((cv + [(i - (nx - 1) / 2) * p, (j - (ny - 1) / 2) * p, hgt], ct))
        v, t = _merge(*parts)
    elif kind in ("blob", "bag"):  # smooth random star-shaped mesh; bags: flattened and wide
        r = rng.uniform(0.025, 0.06) if kind == "blob" else rng.uniform(0.05, 0.11)
        v, t = _mesh_arrays(o3d.geometry.TriangleMesh.create_sphere(1.0, resolution=10))
        k = rng.normal(size=(4, 3))
        bump = sum(rng.uniform(0.05, 0.25) * np.sin(v @ kk * rng.uniform(1, 3) + rng.uniform(0, 6)) for kk in k)
        scale = rng.uniform(0.6, 1.4, 3) if kind == "blob" else [rng.uniform(0.9, 1.4), rng.uniform(0.7, 1.1),
                                                                   rng.uniform(0.2, 0.4)]
        v = v * (1 + bump)[:, None] * r * np.asarray(scale)
        v[:, 2] -= v[:, 2].min()
    else:  # hull: convex hull of random points (rocks, packages, toys, tools)
        pts = rng.normal(size=(30, 3)) * rng.uniform(0.015, 0.05, 3)
        pc = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(pts))
        v, t = _mesh_arrays(pc.compute_convex_hull()[0])
        v[:, 2] -= v[:, 2].min()
    v = np.asarray(v, np.float64)
    v[:, :2] -= (v[:, :2].max(0) + v[:, :2].min(0)) / 2
    return v, np.asarray(t, np.int64), tr


def _rot_z(a: float) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]])


def _rot_x(a: float) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    return np.array([[1.0, 0, 0], [0, c, -s], [0, s, c]])


def _rot_axis(axis: np.ndarray, a: float) -> np.ndarray:
    k = np.asarray(axis, float) / np.linalg.norm(axis)
    kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + np.sin(a) * kx + (1 - np.cos(a)) * kx @ kx


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    q = rng.normal(size=4)
    w, x, y, z = q / np.linalg.norm(q)
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                     [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                     [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])


# ----------------------------------------------------------------------------- textures

_LETTERS = np.array(list("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"))
_FONTS = (cv2.FONT_HERSHEY_SIMPLEX, cv2.FONT_HERSHEY_DUPLEX, cv2.FONT_HERSHEY_COMPLEX, cv2.FONT_HERSHEY_TRIPLEX)


def _value_noise(rng: np.random.Generator, size: int, h: int, w: int, periodic: bool = False) -> np.ndarray:
    """Smooth noise in [0, 1] at (h, w) from a (size, size) random grid; periodic tiles seamlessly."""
    g = rng.random((size, size)).astype(np.float32)
    if not periodic:
        return cv2.resize(g, (w, h), interpolation=cv2.INTER_CUBIC).clip(0, 1)
    big = cv2.resize(np.tile(g, (3, 3)), (3 * w, 3 * h), interpolation=cv2.INTER_CUBIC)
    return big[h:2 * h, w:2 * w].clip(0, 1)


def _aniso_noise(rng: np.random.Generator, ny: int, nx: int, t: int) -> np.ndarray:
    """Periodic (t, t) noise in [0, 1], stretched along x (ny >> nx: streaks, grain)."""
    g = rng.random((ny, nx)).astype(np.float32)
    big = cv2.resize(np.tile(g, (3, 3)), (3 * t, 3 * t), interpolation=cv2.INTER_CUBIC)
    return big[t:2 * t, t:2 * t].clip(0, 1)


def _random_colour(rng: np.random.Generator) -> np.ndarray:
    r = rng.random()
    if r < 0.15:
        return np.full(3, rng.uniform(0.75, 0.95))  # white-ish
    if r < 0.28:
        return np.full(3, rng.uniform(0.04, 0.2)) + rng.uniform(0, 0.06, 3)  # dark
    if r < 0.36:
        return np.full(3, rng.uniform(0.3, 0.65)) + rng.uniform(-0.04, 0.04, 3)  # grey, metal
    hsv = np.uint8([[[rng.integers(0, 180), rng.integers(70, 256), rng.integers(80, 256)]]])
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0].astype(np.float64) / 255


def _wood_colour(rng: np.random.Generator) -> np.ndarray:
    light = rng.uniform(0.25, 1.0)
    return np.array([0.75, 0.52, 0.3]) * light + rng.uniform(-0.05, 0.05, 3)


def _texture(rng: np.random.Generator, kind: str, c0: np.ndarray, c1: np.ndarray, t: int = 128) -> np.ndarray:
    """(t, t, 3) float32 seamless albedo tile of one procedural kind, colours c0 (base) and c1."""
    yy, xx = (np.mgrid[0:t, 0:t].astype(np.float32) + 0.5) / t
    c0, c1 = np.asarray(c0, np.float32), np.asarray(c1, np.float32)
    if kind == "label":  # printed packaging: panels, logos and lines of text
        img = np.empty((t, t, 3), np.uint8)
        img[:] = np.clip(c0 * 255, 0, 255).astype(np.uint8)
        for _ in range(int(rng.integers(1, 4))):
            x0, y0 = rng.integers(-t // 4, t, 2)
            w, h = rng.integers(t // 8, t // 1.5, 2)
            col = _random_colour(rng) if rng.random() < 0.6 else c1
            cv2.rectangle(img, (int(x0), int(y0)), (int(x0 + w), int(y0 + h)), (col * 255).tolist(), -1)
        for _ in range(int(rng.integers(0, 3))):
            cv2.circle(img, tuple(int(c) for c in rng.integers(0, t, 2)), int(rng.integers(t // 16, t // 4)),
                       (_random_colour(rng) * 255).tolist(), -1, cv2.LINE_AA)
        for _ in range(int(rng.integers(1, 6))):
            text = "".join(_LETTERS[rng.integers(0, len(_LETTERS), int(rng.integers(3, 10)))])
            dark = rng.random() < 0.6
            col = (rng.uniform(0, 0.2, 3) if dark else rng.uniform(0.85, 1.0, 3)) * 255
            cv2.putText(img, text, (int(rng.integers(-t // 4, t // 2)), int(rng.integers(t // 8, t))),
                        _FONTS[int(rng.integers(len(_FONTS)))], float(rng.uniform(0.25, 1.0)), col.tolist(),
                        int(rng.integers(1, 3)), cv2.LINE_AA)
        return img.astype(np.float32) / 255
    if kind == "solid":
        m = 0.04 * _value_noise(rng, 6, t, t, True)
        return np.clip(c0 * (0.98 + m)[..., None], 0, 1).astype(np.float32)
    if kind == "stripes":
        a, b = (int(rng.integers(1, 10)), 0) if rng.random() < 0.6 else tuple(int(x) for x in rng.integers(0, 7, 2))
        a, b = (a, b) if (a, b) != (0, 0) else (3, 1)
        if rng.random() < 0.5:
            a, b = b, a
        ph = (a * xx + b * yy + rng.random()) % 1.0
        m = (ph < rng.uniform(0.2, 0.7)).astype(np.float32)
    elif kind == "checker":
        n = int(rng.choice([2, 4, 6, 8, 12]))
        m = ((np.floor(xx * n) + np.floor(yy * n)) % 2).astype(np.float32)
    elif kind == "gradient":
        a, b = rng.integers(0, 3, 2)
        m = (0.5 - 0.5 * np.cos(2 * np.pi * (max(a, 1) * xx + b * yy))).astype(np.float32)
    elif kind == "wood":  # planks along x: fine, slightly wavy grain lines and streaks, seams
        warp = _aniso_noise(rng, 6, 2, t)
        lines = (0.5 + 0.5 * np.sin(2 * np.pi * int(rng.integers(12, 48)) * (yy + rng.uniform(0.02, 0.06) * warp)))
        streak = _aniso_noise(rng, int(rng.integers(32, 96)), 3, t)
        planks = int(rng.integers(1, 7))
        plank = np.floor(yy * planks).astype(int)
        tone = 1 + rng.uniform(-0.12, 0.12, planks)[plank]
        m = np.clip(0.5 * lines ** 3 + 0.6 * (streak - 0.5) + 0.25, 0, 1)
        tex = c0[None, None] * ((1 - rng.uniform(0.2, 0.45) * m) * tone)[..., None]
        if planks > 1:
            seam = np.minimum((yy * planks) % 1, 1 - (yy * planks) % 1) < 0.5 / t * planks
            tex[seam] *= 0.55
        return np.clip(tex, 0, 1).astype(np.float32)
    elif kind == "carpet":  # fine fibres over a mottled base
        fib = cv2.GaussianBlur(rng.random((t, t)).astype(np.float32), (0, 0), 0.6)
        fib = (fib - fib.mean()) / (fib.std() + 1e-6)
        mot = _value_noise(rng, int(rng.integers(4, 12)), t, t, True)
        shade = 1.0 + 0.18 * fib + 0.25 * (mot - 0.5)
        tex = c0[None, None] * shade[..., None]
        flecks = rng.random((t, t)) < rng.uniform(0.0, 0.08)
        tex[flecks] = c1
        return np.clip(tex, 0, 1).astype(np.float32)
    elif kind == "cloth":
        n = int(rng.integers(8, 48))
        m = (0.5 + 0.25 * np.sin(2 * np.pi * n * xx) + 0.25 * np.sin(2 * np.pi * n * yy)).astype(np.float32)
        if rng.random() < 0.4:  # gingham
            k = int(rng.integers(2, 8))
            m = 0.5 * (((xx * k) % 1 < 0.5).astype(np.float32) + ((yy * k) % 1 < 0.5)) + 0.1 * m
        c1 = c0 * rng.uniform(0.6, 0.9) if rng.random() < 0.6 else c1
    elif kind == "tiles":
        n = int(rng.integers(1, 5))
        gx, gy = (xx * n) % 1, (yy * n) % 1
        grout = (np.minimum(gx, 1 - gx) < 0.03) | (np.minimum(gy, 1 - gy) < 0.03)
        m = np.where(grout, 1.0, 0.15 * _value_noise(rng, 16, t, t, True)).astype(np.float32)
        c1 = c0 * rng.uniform(0.5, 0.8)
    else:  # noise: marbled / camouflage-like blend of two colours
        n = _value_noise(rng, int(rng.integers(3, 16)), t, t, True)
        m = np.clip((n - 0.5) * rng.uniform(1.5, 6) + 0.5, 0, 1).astype(np.float32)
    tex = c0[None, None] * (1 - m[..., None]) + c1[None, None] * m[..., None]
    grain = 1 + 0.03 * (_value_noise(rng, 24, t, t, True) - 0.5)
    return np.clip(tex * grain[..., None], 0, 1).astype(np.float32)


def _lookup(tex: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Bilinear, wrapping lookup of a (T, T, 3) tile at texel coordinates (u, v); returns (P, 3)."""
    n = u.size
    if n == 0:
        return np.zeros((0, 3), np.float32)
    h, w = tex.shape[:2]
    cols = 1024
    rows = -(-n // cols)
    mu = np.zeros(rows * cols, np.float32)
    mv = np.zeros(rows * cols, np.float32)
    mu[:n] = np.mod(u, w)  # remap stores coordinates as 16-bit fixed point: keep them small
    mv[:n] = np.mod(v, h)
    out = cv2.remap(tex, mu.reshape(rows, cols), mv.reshape(rows, cols), cv2.INTER_LINEAR,
                    borderMode=cv2.BORDER_WRAP)
    return out.reshape(-1, 3)[:n]


@dataclass
class _Surface:
    """A rendered mesh and its material; local = (world - pos) @ rot."""

    kind: str  # object, table, legs, floor, wall, clutter
    verts: np.ndarray
    tris: np.ndarray
    tex: np.ndarray  # (T, T, 3) float32 albedo tile
    scale: float  # metres covered by one tile (mapping "cyl": along z; around: one turn)
    mapping: str  # "xy": planar in local x-y; "box": by dominant local axis; "cyl": around local z
    rot: np.ndarray = field(default_factory=lambda: np.eye(3))
    pos: np.ndarray = field(default_factory=lambda: np.zeros(3))
    spec: float = 0.0
    shine: float = 20.0
    obj: int = -1  # index into the placed objects, -1 for scenery
    transparent: bool = False
    texture: str = "solid"
    vnormals: np.ndarray | None = None  # per-vertex normals for smooth shading (None: flat)


def _surface_albedo(s: _Surface, pts: np.ndarray, nrm: np.ndarray) -> np.ndarray:
    local = (pts - s.pos.astype(np.float32)) @ s.rot.astype(np.float32)
    t = s.tex.shape[0]
    k = t / s.scale
    if s.mapping == "xy":
        u, v = local[:, 0] * k, local[:, 1] * k
    elif s.mapping == "cyl":
        nl = nrm @ s.rot.astype(np.float32)
        side = np.abs(nl[:, 2]) < 0.7
        ang = (np.arctan2(local[:, 1], local[:, 0]) / (2 * np.pi) + 0.5) * t
        u = np.where(side, ang, local[:, 0] * k + 0.5 * t)
        v = np.where(side, -local[:, 2] * k, local[:, 1] * k + 0.5 * t)  # texture rows run down the side
    else:  # each face shows the tile upright and unmirrored when seen from outside
        nl = nrm @ s.rot.astype(np.float32)
        ax = np.abs(nl).argmax(1)
        sgn = np.sign(nl[np.arange(len(nl)), ax])
        u = np.where(ax == 0, sgn * local[:, 1], np.where(ax == 1, -sgn * local[:, 0], local[:, 0])) * k
        v = np.where(ax == 2, local[:, 1], -local[:, 2]) * k + ax * (0.31 * t)  # faces show other parts
    return _lookup(s.tex, u, v)


def _kelvin_rgb(k: float) -> np.ndarray:
    """Approximate linear-ish RGB of a black body at k kelvin, mean 1 (tabulated sRGB white points)."""
    ks = np.array([2000, 2700, 3000, 4000, 5000, 6000, 6500, 7000, 8000], float)
    rgb = np.array([[255, 137, 14], [255, 169, 87], [255, 180, 107], [255, 209, 163], [255, 228, 206],
                    [255, 243, 239], [255, 249, 253], [245, 243, 255], [227, 233, 255]], float) / 255
    c = np.array([np.interp(k, ks, rgb[:, i]) for i in range(3)])
    return c / c.mean()


# ----------------------------------------------------------------------------- scene layout

@dataclass
class _Obj:
    kind: str
    verts: np.ndarray  # world
    tris: np.ndarray
    rot: np.ndarray  # object frame -> world
    pos: np.ndarray  # object-frame origin in the world
    foot: np.ndarray  # (M, 2) convex footprint, world x-y
    axes: np.ndarray  # (M, 2) unit edge normals of the footprint
    centre: np.ndarray  # (2,) footprint centroid
    radius: float  # footprint radius about centre
    z0: float
    z1: float
    traits: dict
    upright: bool
    support: int = -1  # index of the object it stands on, -1 = the table
    size: float = 0.1  # largest extent, metres


def _footprint(xy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    hull = cv2.convexHull(xy.astype(np.float32)).reshape(-1, 2).astype(np.float64)
    e = np.roll(hull, -1, 0) - hull
    n = np.stack([e[:, 1], -e[:, 0]], 1)
    ln = np.linalg.norm(n, axis=1)
    return hull, n[ln > 1e-9] / ln[ln > 1e-9, None]


def _penetration(a: _Obj, b: _Obj) -> float:
    """Smallest overlap of the two convex footprints over their separating-axis candidates (<0: apart)."""
    axes = np.concatenate([a.axes, b.axes])
    pa, pb = a.foot @ axes.T, b.foot @ axes.T
    return float(np.minimum(pa.max(0) - pb.min(0), pb.max(0) - pa.min(0)).min())


def _posed(kind: str, v: np.ndarray, t: np.ndarray, tr: dict, rot: np.ndarray, xy: np.ndarray, z: float,
           upright: bool) -> _Obj:
    """The object rotated by rot with its lowest point at height z and its frame origin above xy."""
    w = v @ rot.T
    pos = np.array([xy[0], xy[1], z - w[:, 2].min()])
    w = w + pos
    foot, axes = _footprint(w[:, :2])
    centre = foot.mean(0)
    return _Obj(kind, w, t, rot, pos, foot, axes, centre, float(np.linalg.norm(foot - centre, axis=1).max()),
                float(w[:, 2].min()), float(w[:, 2].max()), tr, upright,
                size=float((w.max(0) - w.min(0)).max()))


def _shift(o: _Obj, d: np.ndarray) -> _Obj:
    o.verts = o.verts + [d[0], d[1], 0]
    o.pos = o.pos + [d[0], d[1], 0]
    o.foot = o.foot + d
    o.centre = o.centre + d
    return o


@dataclass
class _Table:
    round: bool
    half: np.ndarray  # half side lengths; round: radius in both
    rot: np.ndarray  # table frame -> world (yaw)
    thickness: float

    @property
    def reach(self) -> float:
        return float(self.half[0] if self.round else np.linalg.norm(self.half))

    def contains(self, xy: np.ndarray, margin: float) -> bool:
        loc = np.atleast_2d(xy) @ self.rot[:2, :2]
        if self.round:
            return bool((np.linalg.norm(loc, axis=1) <= self.half[0] - margin).all())
        return bool((np.abs(loc) <= self.half - margin).all())

    def sample(self, rng: np.random.Generator, margin: float) -> np.ndarray:
        m = np.minimum(margin, 0.8 * self.half)
        if self.round:
            r, a = (self.half[0] - m[0]) * np.sqrt(rng.random()), rng.uniform(0, 2 * np.pi)
            loc = np.array([r * np.cos(a), r * np.sin(a)])
        else:
            loc = rng.uniform(-(self.half - m), self.half - m)
        return self.rot[:2, :2] @ loc


def _place_objects(rng: np.random.Generator, cfg: SceneConfig, n: int, table: _Table
                   ) -> tuple[list[_Obj], np.ndarray, float, bool]:
    """Objects on the table: scattered, touching, stacked, leaning, lying, piled; no interpenetration.

    Footprints are convex polygons; two objects collide when their height ranges overlap and
    their footprints overlap by more than 2 mm (contact is allowed). Returns the objects, the
    cluster centre, its spread and whether the scene is a dense pile.
    """
    pile = rng.random() < cfg.pile_prob
    spread = rng.uniform(*cfg.spread) * (rng.uniform(0.35, 0.6) if pile else 1.0)
    touch = max(cfg.touch_prob, 0.7) if pile and cfg.touch_prob > 0 else cfg.touch_prob
    stack = min(0.6, cfg.stack_prob * (2.0 if pile else 1.0))
    centre = table.sample(rng, np.full(2, 0.6 * spread + 0.05))
    kinds = [k for k in SHAPES if k in cfg.shapes]
    w = np.array([SHAPE_WEIGHTS[k] for k in kinds])
    objs: list[_Obj] = []
    for _ in range(n):
        kind = str(rng.choice(kinds, p=w / w.sum()))
        v, t, tr = _make_shape(kind, rng)
        lean = kind in _LEANERS and rng.random() < cfg.lean_prob
        lying = tr["lie"] and (kind == "marker" or rng.random() < cfg.lying_prob)
        pose = _rot_x(np.pi / 2) if lying else np.eye(3)
        if kind in _TUMBLERS and rng.random() < 0.5:
            pose = _random_rotation(rng)
        upright = not lying and kind not in _TUMBLERS
        placed = None
        for attempt in range(16):
            yaw = rng.uniform(0, 2 * np.pi)
            r = rng.random()
            grounds = [o for o in objs if o.support == -1]
            if lean and grounds and r < 0.8:
                o = _lean(rng, kind, v, t, tr, objs)
            elif objs and r < stack:
                o = _stack(rng, kind, v, t, tr, _rot_z(yaw) @ pose, upright, objs)
            elif grounds and r < stack + touch:
                nb = grounds[int(rng.integers(len(grounds)))]
                o = _posed(kind, v, t, tr, _rot_z(yaw) @ pose, np.zeros(2), 0.0, upright)
                o = _touching(rng, o, nb)
            else:
                s = spread * (1.0 if attempt < 10 else 1.8)
                xy = centre + rng.normal(0, 0.6 * s, 2)
                o = _posed(kind, v, t, tr, _rot_z(yaw) @ pose, np.zeros(2), 0.0, upright)
                o = _shift(o, xy - o.centre)
            if o is not None and table.contains(o.foot, 0.003) and _free(o, objs):
                placed = o
                break
        if placed is not None:
            objs.append(placed)
    return objs, centre, spread, pile


def _slide_out(o: _Obj, nb: _Obj, d: np.ndarray, gap: float) -> _Obj:
    """Put o's footprint centre on nb's, then slide it back along -d until the footprints just touch
    (bisection on the separating-axis overlap; both are convex), plus a gap."""
    o = _shift(o, nb.centre - o.centre)
    lo, hi = 0.0, o.radius + nb.radius + 0.01
    base = o.foot.copy()
    for _ in range(14):
        mid = 0.5 * (lo + hi)
        o.foot = base - d * mid
        if _penetration(o, nb) > 0:
            lo = mid
        else:
            hi = mid
    o.foot = base
    return _shift(o, -d * (hi + gap))


def _touching(rng: np.random.Generator, o: _Obj, nb: _Obj) -> _Obj:
    """o beside nb, touching it, approached from a random direction."""
    a = rng.uniform(0, 2 * np.pi)
    return _slide_out(o, nb, np.array([np.cos(a), np.sin(a)]), rng.uniform(0.0, 0.002))


def _lean(rng: np.random.Generator, kind: str, v: np.ndarray, t: np.ndarray, tr: dict, objs: list[_Obj]
          ) -> _Obj | None:
    """A flat object standing on its lower edge, tilted until its top rests against a taller neighbour."""
    tall = [o for o in objs if o.support == -1 and o.z1 > 0.05]
    if not tall:
        return None
    nb = tall[int(rng.integers(len(tall)))]
    a = rng.uniform(0, 2 * np.pi)
    d = np.array([np.cos(a), np.sin(a), 0.0])
    stand = _rot_x(np.pi / 2) if tr["flat"] else np.eye(3)
    rot = _rot_axis(np.cross([0, 0, 1.0], d), rng.uniform(0.2, 0.55)) @ _rot_z(a - np.pi / 2) @ stand
    o = _posed(kind, v, t, tr, rot, np.zeros(2), 0.0, False)
    if o.z1 > nb.z1 + 0.01:
        return None
    return _slide_out(o, nb, d[:2], rng.uniform(0.0, 0.002))


def _stack(rng: np.random.Generator, kind: str, v: np.ndarray, t: np.ndarray, tr: dict, rot: np.ndarray,
           upright: bool, objs: list[_Obj]) -> _Obj | None:
    """On top of an earlier flat-topped, upright object, with its centre over the base's top."""
    o = _posed(kind, v, t, tr, rot, np.zeros(2), 0.0, upright)
    bases = [i for i, b in enumerate(objs) if b.traits["flat_top"] and b.upright and o.radius < 1.4 * b.radius + 0.01]
    if not bases:
        return None
    bi = bases[int(rng.integers(len(bases)))]
    b = objs[bi]
    o = _posed(kind, v, t, tr, rot, np.zeros(2), b.z1, upright)
    target = b.centre + rng.normal(0, 0.25 * b.radius, 2)
    o = _shift(o, target - o.centre)
    loc = b.foot - o.centre  # the new centre must lie inside the base's (convex) footprint
    cross = loc[:, 0] * np.roll(loc, -1, 0)[:, 1] - loc[:, 1] * np.roll(loc, -1, 0)[:, 0]
    if not ((cross >= 0).all() or (cross <= 0).all()):
        return None
    o.support = bi
    return o


def _free(o: _Obj, objs: list[_Obj]) -> bool:
    for p in objs:
        if p.z1 <= o.z0 + 1e-4 or o.z1 <= p.z0 + 1e-4:
            continue
        if np.linalg.norm(p.centre - o.centre) > p.radius + o.radius:
            continue
        if _penetration(o, p) > 0.002:
            return False
    return True


def _camera(rng: np.random.Generator, cfg: SceneConfig, target: np.ndarray) -> tuple[np.ndarray, dict]:
    dist = rng.uniform(*cfg.distance)
    top = rng.random() < cfg.topdown_prob
    elev = np.deg2rad(rng.uniform(60.0, 88.0) if top else rng.uniform(*cfg.elevation_deg))
    az = rng.uniform(0, 2 * np.pi)
    back = np.array([np.cos(elev) * np.cos(az), np.cos(elev) * np.sin(az), np.sin(elev)])
    pos = target + dist * back
    z = -back
    x = np.array([-np.sin(az), np.cos(az), 0.0])  # horizontal, right of the view direction (any elevation)
    y = np.cross(z, x)
    roll = np.deg2rad(rng.uniform(-cfg.roll_deg, cfg.roll_deg))
    x, y = np.cos(roll) * x + np.sin(roll) * y, -np.sin(roll) * x + np.cos(roll) * y
    T = np.eye(4)
    T[:3, :3] = np.stack([x, y, z], 1)
    T[:3, 3] = pos
    return T, {"distance": float(dist), "elevation_deg": float(np.rad2deg(elev)), "azimuth": float(az)}


def _table_surfaces(rng: np.random.Generator, cfg: SceneConfig, floor_z: float | None) -> tuple[_Table, list]:
    """Table top (top face at z = 0, centred at the origin), its legs, and their materials."""
    rot = _rot_z(rng.uniform(0, 2 * np.pi))
    th = rng.uniform(*cfg.table_thickness)
    is_round = rng.random() < cfg.round_table_prob
    if is_round:
        rad = max(rng.uniform(*cfg.table_size) / 2, 0.3)
        table = _Table(True, np.array([rad, rad]), rot, th)
        tv, tt = _lathe(np.array([[0, -th], [rad, -th], [rad, 0], [0, 0]]), 48)
    else:
        a, b = sorted(rng.uniform(*cfg.table_size, 2))
        table = _Table(False, np.array([b, min(a, 1.2)]) / 2, rot, th)
        tv, tt = _box(2 * table.half[0], 2 * table.half[1], th, (0, 0, -th))
    tv = tv @ rot.T
    c1 = None
    r = rng.random()
    if r < 0.5:
        kind, c0 = "wood", _wood_colour(rng)
    elif r < 0.7:
        kind, c0 = "solid", np.full(3, rng.uniform(0.55, 0.9)) * _kelvin_rgb(rng.uniform(3000, 7000)) ** 0.3
    elif r < 0.8:  # laminate / stone: two close tones
        kind, c0 = "noise", _random_colour(rng) * 0.6 + 0.2
        c1 = c0 * rng.uniform(0.8, 0.95)
    elif r < 0.9:
        kind, c0 = "cloth", _random_colour(rng)
    else:  # patterned tablecloth / tiles, muted towards grey
        kind, c0 = str(rng.choice(["tiles", "checker", "stripes"])), _random_colour(rng) * 0.6 + 0.25
        c1 = c0 * rng.uniform(0.6, 0.85) if rng.random() < 0.5 else _random_colour(rng) * 0.5 + 0.3
    tex = _texture(rng, kind, c0, c1 if c1 is not None else _random_colour(rng), 256)
    top = _Surface("table", tv, tt, tex, rng.uniform(0.4, 1.5), "xy", rot=rot,
                   spec=rng.uniform(0.0, 0.35), shine=rng.uniform(5, 40), texture=kind)
    surfs = [top]
    if floor_z is not None:
        legs = []
        lw = rng.uniform(0.03, 0.07)
        h = -th - floor_z
        if is_round and rng.random() < 0.5:  # pedestal and foot
            cv, ct = _cylinder(lw, h, 16)
            fv, ft = _cylinder(min(0.7 * table.half[0], rng.uniform(0.18, 0.3)), 0.02, 24)
            legs = [(cv + [0, 0, floor_z], ct), (fv + [0, 0, floor_z], ft)]
        else:
            inset = rng.uniform(0.02, 0.09)
            corners = ([[np.cos(a), np.sin(a)] for a in np.arange(4) * np.pi / 2 + np.pi / 4] if is_round
                       else [[sx, sy] for sx in (-1, 1) for sy in (-1, 1)])
            square = rng.random() < 0.7
            for c in np.asarray(corners, float):
                p = c * (table.half * (0.72 if is_round else 1.0) - inset - lw / 2)
                if square:
                    legs.append(_box(lw, lw, h, (p[0], p[1], floor_z)))
                else:
                    cv, ct = _cylinder(lw / 2, h, 12)
                    legs.append((cv + [p[0], p[1], floor_z], ct))
        lv, lt = _merge(*legs)
        lv = lv @ rot.T
        lc = c0 * rng.uniform(0.5, 1.0) if rng.random() < 0.6 else _random_colour(rng)
        surfs.append(_Surface("legs", lv, lt, _texture(rng, "solid", lc, lc, 32), 0.5, "box",
                              spec=rng.uniform(0, 0.3)))
    return table, surfs


def _floor_surface(rng: np.random.Generator, floor_z: float) -> _Surface:
    r = rng.random()
    if r < 0.6:  # carpet: blue-grey, grey, brown, green
        base = np.array([[0.22, 0.26, 0.32], [0.3, 0.3, 0.3], [0.35, 0.28, 0.22], [0.2, 0.28, 0.22],
                         [0.15, 0.17, 0.22]])[int(rng.integers(5))] * rng.uniform(0.6, 1.6)
        kind, c1, scale = "carpet", _random_colour(rng) * 0.5, rng.uniform(0.15, 0.5)
    elif r < 0.8:
        kind, base, c1, scale = "wood", _wood_colour(rng), None, rng.uniform(0.4, 1.0)
    else:
        base = np.clip(np.full(3, rng.uniform(0.35, 0.85)) + rng.uniform(-0.06, 0.06, 3), 0, 1)
        kind, c1, scale = "tiles", None, rng.uniform(0.3, 1.2)
    tex = _texture(rng, kind, base, _random_colour(rng) if c1 is None else c1, 256)
    v = np.array([[-15, -15, floor_z], [15, -15, floor_z], [15, 15, floor_z], [-15, 15, floor_z]], float)
    return _Surface("floor", v, np.array([[0, 1, 2], [0, 2, 3]]), tex, scale, "xy", rot=_rot_z(rng.uniform(0, 6.3)),
                    spec=rng.uniform(0, 0.15), texture=kind)


def _wall_surfaces(rng: np.random.Generator, cfg: SceneConfig, table: _Table, target: np.ndarray,
                   fwd: np.ndarray, low: float) -> tuple[list[_Surface], float]:
    """A wall behind the table (as seen from the camera), sometimes a second one at the side."""
    surfs: list[_Surface] = []
    far = 30.0
    if rng.random() >= cfg.wall_prob:
        return surfs, far
    side = np.array([-fwd[1], fwd[0]])
    c0 = np.clip(np.full(3, rng.uniform(0.55, 0.95)) * _kelvin_rgb(rng.uniform(3500, 7500)) ** 0.25, 0, 1)
    if rng.random() < 0.3:
        c0 = _random_colour(rng) * 0.5 + 0.4
    kind = "solid" if rng.random() < 0.6 else str(rng.choice(["label", "noise", "stripes", "tiles"]))
    tex = _texture(rng, kind, c0, _random_colour(rng), 128)
    far = float(np.abs(table.rot[:2, :2].T @ fwd) @ table.half if not table.round else table.half[0])
    far += rng.uniform(0.2, 2.5)
    walls = [(fwd, far)]
    if rng.random() < 0.35:
        s = side * rng.choice([-1.0, 1.0])
        walls.append((s, table.reach + rng.uniform(0.3, 2.0)))
    for n, d in walls:
        c = target[:2] + n * d
        t = np.array([-n[1], n[0]])
        v = np.array([[*(c + 8 * t), low], [*(c - 8 * t), low], [*(c - 8 * t), 3.0], [*(c + 8 * t), 3.0]])
        rot = np.stack([np.array([t[0], t[1], 0.0]), np.array([0, 0, 1.0]), np.array([n[0], n[1], 0.0])], 1)
        surfs.append(_Surface("wall", v, np.array([[0, 1, 2], [0, 2, 3]]), tex, rng.uniform(1.0, 3.0), "xy",
                              rot=rot, pos=np.array([*c, 0.0]), spec=rng.uniform(0, 0.1), texture=kind))
    return surfs, far


def _clutter_surfaces(rng: np.random.Generator, cfg: SceneConfig, table: _Table, target: np.ndarray,
                      fwd: np.ndarray, wall_d: float, cam_xy: np.ndarray, floor_z: float) -> list[_Surface]:
    """Furniture and boxes on the floor around the table (background: never labelled)."""
    out: list[_Surface] = []
    n = int(rng.integers(cfg.background_clutter[0], cfg.background_clutter[1] + 1))
    for _ in range(n):
        kind = str(rng.choice(["chair", "chair", "cabinet", "bin", "box"]))
        if kind == "chair":
            s, sh = rng.uniform(0.38, 0.5), rng.uniform(0.4, 0.5)
            lw = 0.03
            parts = [_box(s, s, 0.05, (0, 0, sh)), _box(s, 0.04, rng.uniform(0.3, 0.5), (0, -s / 2 + 0.02, sh + 0.05))]
            parts += [_box(lw, lw, sh, (sx * (s / 2 - lw), sy * (s / 2 - lw), 0)) for sx in (-1, 1) for sy in (-1, 1)]
            v, t = _merge(*parts)
        elif kind == "cabinet":
            v, t = _box(rng.uniform(0.4, 1.0), rng.uniform(0.3, 0.6), rng.uniform(0.5, 1.4))
        elif kind == "bin":
            v, t = _cylinder(rng.uniform(0.12, 0.25), rng.uniform(0.25, 0.6), 20)
        else:
            v, t = _box(*rng.uniform(0.2, 0.6, 3))
        rot = _rot_z(rng.uniform(0, 2 * np.pi))
        for _attempt in range(6):
            a = rng.uniform(0, 2 * np.pi)
            d = table.reach + rng.uniform(0.15, 2.0)
            xy = target[:2] + d * np.array([np.cos(a), np.sin(a)])
            w = v @ rot.T + [xy[0], xy[1], floor_z]
            along = (w[:, :2] - target[:2]) @ fwd  # beside or behind the table, never between it and the camera
            ok = along.max() < wall_d - 0.05 and along.min() > -0.3 and \
                np.linalg.norm(w[:, :2] - cam_xy, axis=1).min() > 0.6 and \
                not any(table.contains(p, -0.05) for p in w[:, :2])
            if ok:
                c0 = _random_colour(rng) * rng.uniform(0.4, 1.0)
                tk = str(rng.choice(["solid", "noise", "cloth", "wood", "label"]))
                out.append(_Surface("clutter", w, t, _texture(rng, tk, c0, _random_colour(rng), 64),
                                    rng.uniform(0.2, 0.8), "box", rot=rot, pos=np.array([xy[0], xy[1], floor_z]),
                                    spec=rng.uniform(0, 0.3), texture=tk))
                break
    return out


def _object_surface(rng: np.random.Generator, cfg: SceneConfig, o: _Obj, k: int, table_colour: np.ndarray,
                    transparent: bool) -> _Surface:
    c0, c1 = _random_colour(rng), _random_colour(rng)
    if rng.random() < cfg.camouflage_prob:  # nearly the table's colour
        c0 = np.clip(table_colour * rng.uniform(0.85, 1.15) + rng.uniform(-0.04, 0.04, 3), 0, 1)
    if rng.random() < cfg.object_texture_prob:
        pool = (["label"] * 4 + ["stripes", "checker", "noise", "gradient"] if o.kind in ("box", "cylinder", "book")
                else ["stripes", "checker", "noise", "gradient", "wood", "label", "label"])
        kind = str(rng.choice(pool))
    else:
        kind = "solid"
    if o.kind in ("marker", "cylinder") and kind == "solid" and rng.random() < 0.5:
        kind = "band"
    if kind == "band":  # one colour with a band (caps, lids, labels around a can)
        tex = np.empty((64, 64, 3), np.float32)
        tex[:] = c0
        a, b = sorted(rng.integers(0, 64, 2))
        tex[a:b + 1] = c1
    else:
        tex = _texture(rng, kind, c0, c1, 128)
    if transparent:
        tint = np.clip(np.array([0.92, 0.95, 0.96]) + rng.uniform(-0.06, 0.04, 3), 0, 1)
        tex = np.broadcast_to(tint.astype(np.float32), (8, 8, 3)).copy()
        kind = "glass"
    height = max(o.z1 - o.z0, 0.01)
    ext = o.verts.max(0) - o.verts.min(0)
    scale = (height if o.traits["lathe"] and o.upright else float(ext.max())) if kind in ("label", "band") \
        else rng.uniform(0.04, 0.25)
    if o.traits["lathe"]:
        local = (o.verts - o.pos) @ o.rot
        scale = float(local[:, 2].max() - local[:, 2].min()) if kind in ("label", "band") else scale
    glossy = rng.random() < 0.5 or transparent
    vn = _vertex_normals(o.verts, o.tris) if o.traits["smooth"] else None
    return _Surface("object", o.verts, o.tris, tex, max(scale, 0.005), "cyl" if o.traits["lathe"] else "box",
                    rot=o.rot, pos=o.pos, spec=rng.uniform(*cfg.specular) * (1.0 if glossy else 0.3) + 0.3 * transparent,
                    shine=rng.uniform(10, 80), obj=k, transparent=transparent, texture=kind, vnormals=vn)


# ----------------------------------------------------------------------------- rendering

def _rays(K: np.ndarray, T: np.ndarray, us: np.ndarray, vs: np.ndarray) -> np.ndarray:
    """Rays through the centres of pixels (us, vs). Integer pixel coordinates are pixel centres
    (README "Messages"; OpenCV's and SAM's convention), so pixel (u, v) deprojects with
    ((u - cx) / fx, (v - cy) / fy, 1) * depth, as core.segment.geometric does."""
    out = np.empty((*np.broadcast_shapes(np.shape(us), np.shape(vs)), 6), np.float32)
    out[..., :3] = T[:3, 3]
    x = ((us - K[0, 2]) / K[0, 0]).astype(np.float32)[..., None]
    y = ((vs - K[1, 2]) / K[1, 1]).astype(np.float32)[..., None]
    R = T[:3, :3].astype(np.float32)
    out[..., 3:] = x * R[:, 0] + y * R[:, 1] + R[:, 2]
    return out


def _add(scene: o3d.t.geometry.RaycastingScene, v: np.ndarray, t: np.ndarray) -> int:
    return int(scene.add_triangles(o3d.core.Tensor(v.astype(np.float32)), o3d.core.Tensor(t.astype(np.uint32))))


def _raycast(surfs: list[_Surface], rays: np.ndarray, skip: set[int] = frozenset()) -> tuple:
    """Cast rays at all surfaces but `skip`.

    Returns the scene, t (inf = miss), surface index (-1 = miss) and the shading normal of each
    ray (the face normal, or the interpolated vertex normal of smooth surfaces), not yet
    oriented, and the face normal.
    """
    scene = o3d.t.geometry.RaycastingScene()
    gid_to_surf = []
    for i, s in enumerate(surfs):
        if i not in skip:
            _add(scene, s.verts, s.tris)
            gid_to_surf.append(i)
    hit = scene.cast_rays(o3d.core.Tensor(rays))
    t = hit["t_hit"].numpy()
    g = hit["geometry_ids"].numpy().astype(np.int64)
    ok = np.isfinite(t)
    lut = np.asarray(gid_to_surf + [-1], np.int64)
    sid = np.where(ok, lut[np.where(ok, g, len(gid_to_surf))], -1)
    face = hit["primitive_normals"].numpy().astype(np.float32)
    shade = face.copy()
    prim = hit["primitive_ids"].numpy().astype(np.int64)
    uv = hit["primitive_uvs"].numpy().astype(np.float32)
    for i, s in enumerate(surfs):
        if s.vnormals is None or i in skip:
            continue
        m = np.flatnonzero(sid == i)
        if len(m):
            tri = s.tris[prim[m]]
            a, b = uv[m, :1], uv[m, 1:]
            n = (1 - a - b) * s.vnormals[tri[:, 0]] + a * s.vnormals[tri[:, 1]] + b * s.vnormals[tri[:, 2]]
            n /= np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-9)
            shade[m] = n
    return scene, t, sid, shade, face


def _albedo(surfs: list[_Surface], sid: np.ndarray, pts: np.ndarray, nrm: np.ndarray
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Albedo, specular strength and shininess of hit points (sid: surface index per point)."""
    p = len(sid)
    alb = np.zeros((p, 3), np.float32)
    spec = np.zeros(p, np.float32)
    shine = np.ones(p, np.float32)
    key = sid.astype(np.int16)  # few surfaces: a 16-bit stable sort is a radix sort
    order = np.argsort(key, kind="stable")
    starts = np.searchsorted(key[order], np.arange(len(surfs) + 1))
    for i, s in enumerate(surfs):
        idx = order[starts[i]:starts[i + 1]]
        if len(idx):
            alb[idx] = _surface_albedo(s, pts[idx], nrm[idx])
            spec[idx], shine[idx] = s.spec, s.shine
    return alb, spec, shine


@dataclass
class _Light:
    direction: np.ndarray
    colour: np.ndarray
    ambient: float
    ambient_colour: np.ndarray
    shadow_strength: float
    softness: float


def _light(rng: np.random.Generator, cfg: SceneConfig) -> _Light:
    el, az = np.deg2rad(rng.uniform(35, 88)), rng.uniform(0, 2 * np.pi)
    d = np.array([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)])
    kelvin = rng.uniform(*cfg.colour_temp_k)
    amb_k = np.clip(kelvin + rng.uniform(-1500, 1500), *cfg.colour_temp_k)
    return _Light(d, _kelvin_rgb(kelvin), rng.uniform(*cfg.ambient), _kelvin_rgb(amb_k),
                  rng.uniform(0.3, 0.75), rng.uniform(1.0, 4.0))


def _lit(alb: np.ndarray, spec: np.ndarray, shine: np.ndarray, nrm: np.ndarray, view: np.ndarray,
         light: _Light, shadow: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Lambert + hemisphere ambient + Blinn-Phong highlight; returns colour and highlight strength."""
    ld = light.direction.astype(np.float32)
    ndl = np.clip(nrm @ ld, 0, 1)
    direct = ndl * (1 - light.shadow_strength * shadow) * np.float32(1 - light.ambient)
    amb = np.float32(light.ambient) * (0.7 + 0.3 * nrm[:, 2])
    ac, lc = light.ambient_colour.astype(np.float32), light.colour.astype(np.float32)
    col = alb * (amb[:, None] * ac + direct[:, None] * lc)
    hl = np.zeros(len(alb), np.float32)
    m = np.flatnonzero((spec > 0) & (ndl > 0) & (shadow < 0.99))
    if len(m):
        h = ld[None] + view[m]
        nh = np.einsum("ij,ij->i", nrm[m], h) / np.sqrt(np.einsum("ij,ij->i", h, h))
        near = nh > 0.6  # below this every shininess used here leaves < 0.02 of the highlight
        m, nh = m[near], nh[near]
        hl[m] = spec[m] * nh ** shine[m] * (1 - shadow[m])
        col[m] += hl[m, None] * lc
    return col, hl


def _shadows(scene: o3d.t.geometry.RaycastingScene, pts: np.ndarray, nrm: np.ndarray, light: _Light) -> np.ndarray:
    lit = np.flatnonzero((nrm @ light.direction.astype(np.float32)) > 0)
    out = np.ones(len(pts), np.float32)
    if len(lit):
        r = np.empty((len(lit), 6), np.float32)
        r[:, :3] = pts[lit] + nrm[lit] * np.float32(2e-3)
        r[:, 3:] = light.direction
        out[lit] = scene.test_occlusions(o3d.core.Tensor(r)).numpy()
    return out


# ----------------------------------------------------------------------------- scene

_POSITIVE = ("distance", "table_size", "table_thickness", "floor_drop", "baseline", "colour_temp_k", "blur_px",
             "exposure", "gamma", "fx_over_width", "spread")


def _check_ranges(cfg: SceneConfig) -> None:
    """One clear error for a malformed range or probability instead of a failure deep in the renderer."""
    for f in cfg.__dataclass_fields__:
        v = getattr(cfg, f)
        if f.endswith("_prob") or f in ("transparent_fraction", "object_texture_prob", "camouflage_prob"):
            if not 0.0 <= float(v) <= 1.0:
                raise ValueError(f"SceneConfig.{f} must be a probability in [0, 1], got {v}")
        elif isinstance(v, tuple) and f != "shapes":
            lo, hi = _span(v)
            if not lo <= hi or lo < 0 or (f in _POSITIVE and lo <= 0):
                raise ValueError(f"SceneConfig.{f} must be a range (lo, hi) with {'0 <' if f in _POSITIVE else '0 <='}"
                                 f" lo <= hi, got {v}")
    if cfg.elevation_deg[1] >= 90.0:
        raise ValueError(f"SceneConfig.elevation_deg must stay below 90 degrees, got {cfg.elevation_deg}")
    if cfg.floor and cfg.floor_drop[0] <= cfg.table_thickness[1]:
        raise ValueError(f"SceneConfig.floor_drop {cfg.floor_drop} must exceed the table thickness "
                         f"{cfg.table_thickness}")


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
    _check_ranges(cfg)
    rng = np.random.default_rng(seed)
    W, H = cfg.width, cfg.height
    fx = W * rng.uniform(*cfg.fx_over_width)
    intr = Intrinsics(fx, fx * rng.uniform(0.995, 1.005), W / 2 + rng.uniform(-0.02, 0.02) * W,
                      H / 2 + rng.uniform(-0.02, 0.02) * H, W, H)
    K = intr.K

    # --- layout: table (top at z = 0), objects, camera, floor, walls, furniture
    floor_z = -rng.uniform(*cfg.floor_drop) if cfg.floor else None
    table, scenery = _table_surfaces(rng, cfg, floor_z)
    n = int(rng.integers(cfg.min_objects, cfg.max_objects + 1))
    objs, centre, spread, pile = _place_objects(rng, cfg, n, table)
    if objs:
        centre = np.mean([o.centre for o in objs], 0)
    target = np.array([*(centre + rng.normal(0, cfg.aim_jitter * spread, 2)), rng.uniform(0.0, 0.05)])
    T, cam_meta = _camera(rng, cfg, target)
    fwd = target[:2] - T[:2, 3]
    fwd = fwd / np.linalg.norm(fwd) if np.linalg.norm(fwd) > 1e-6 else np.array([1.0, 0.0])
    low = floor_z if floor_z is not None else -5.0
    walls, wall_d = _wall_surfaces(rng, cfg, table, target, fwd, low)
    scenery += walls
    if floor_z is not None:
        scenery.append(_floor_surface(rng, floor_z))
        scenery += _clutter_surfaces(rng, cfg, table, target, fwd, wall_d, T[:2, 3], floor_z)
    table_colour = scenery[0].tex.reshape(-1, 3).mean(0)
    clear = rng.random() < cfg.transparent_prob
    surfs = [_object_surface(rng, cfg, o, k, table_colour,
                             clear and o.kind in TRANSPARENT_KINDS and rng.random() < cfg.transparent_fraction)
             for k, o in enumerate(objs)] + scenery
    n_obj = len(objs)
    glass = {i for i, s in enumerate(surfs) if s.transparent}

    # --- primary cast: exact depth and ids
    vs, us = np.arange(H, dtype=np.float64)[:, None], np.arange(W, dtype=np.float64)[None]
    rays = _rays(K, T, us, vs).reshape(-1, 6)
    scene, t_hit, sid, normals, faces = _raycast(surfs, rays)
    valid = np.isfinite(t_hit)
    # depth along the optical axis: the camera-frame z of the ray direction is 1 by construction
    depth_clean = np.where(valid, t_hit, 0.0).astype(np.float32).reshape(H, W)
    label = np.where((sid >= 0) & (sid < n_obj), sid + 1, 0).astype(np.int32).reshape(H, W)

    # --- shading
    idx = np.flatnonzero(valid)
    d = rays[idx, 3:]
    pts = rays[idx, :3] + d * t_hit[idx, None]
    view = d / -np.sqrt(np.einsum("ij,ij->i", d, d))[:, None]
    geo = faces[idx]  # face normals: shadow-ray offsets and grazing angles
    cos_geo = np.einsum("ij,ij->i", geo, view)
    geo[cos_geo < 0] *= -1
    cos_geo = np.abs(cos_geo)
    nrm = normals[idx]  # shading normals
    nrm[np.einsum("ij,ij->i", nrm, view) < 0] *= -1
    psid = sid[idx]
    light = _light(rng, cfg)
    opaque_scene = scene
    if glass:  # glass casts (almost) no shadow; the scene without it also shows what lies behind it
        g_px = np.flatnonzero(np.isin(psid, list(glass)))
        opaque_scene, t2, sid2, n2, f2 = _raycast(surfs, rays[idx[g_px]], skip=glass)
    shadow = np.zeros(len(idx), np.float32)
    if cfg.shadows:  # on every other row and column (they are blurred anyway), then upsampled
        sub = np.zeros((H, W), bool)
        sub[::2, ::2] = True
        pick = np.flatnonzero(sub.reshape(-1)[idx])
        sm = np.zeros(H * W, np.float32)
        sm[idx[pick]] = _shadows(opaque_scene, pts[pick], geo[pick], light)
        half = cv2.GaussianBlur(sm.reshape(H, W)[::2, ::2], (0, 0), max(light.softness * W / 1280, 0.3))
        shadow = cv2.resize(half, (W, H), interpolation=cv2.INTER_LINEAR).reshape(-1)[idx]
    alb, spec, shine = _albedo(surfs, psid, pts, nrm)
    col, highlight = _lit(alb, spec, shine, nrm, view, light, shadow)
    trans_depth = None
    if glass:
        ok2 = np.isfinite(t2)
        p2 = rays[idx[g_px], :3] + rays[idx[g_px], 3:] * np.where(ok2, t2, 0)[:, None]
        v2 = view[g_px]
        n2[np.einsum("ij,ij->i", n2, v2) < 0] *= -1
        f2[np.einsum("ij,ij->i", f2, v2) < 0] *= -1
        s2 = np.where(ok2, sid2, 0)
        a2, sp2, sh2 = _albedo(surfs, s2, p2, n2)
        sh = _shadows(opaque_scene, p2, f2, light) if cfg.shadows else np.zeros(len(p2), np.float32)
        behind, _ = _lit(a2, sp2, sh2, n2, v2, light, sh * 0.8)
        behind[~ok2] = 0.2
        cos = np.abs(np.einsum("ij,ij->i", nrm[g_px], v2))
        rim = (1 - cos) ** 2
        tau = rng.uniform(0.55, 0.85)
        col[g_px] = (behind * alb[g_px] * tau * (1 - 0.5 * rim[:, None]) + col[g_px] * rng.uniform(0.08, 0.25)
                     + (rim * rng.uniform(0.08, 0.3))[:, None] * light.colour + highlight[g_px, None] * light.colour)
        trans_depth = (g_px, np.where(ok2, t2, 0.0).astype(np.float32), psid[g_px])

    img = np.zeros((H * W, 3), np.float32)
    img[:] = rng.uniform(0.05, 0.3)
    img[idx] = col
    img = img.reshape(H, W, 3)
    # camera: auto exposure, white balance, vignetting, blur, sensor noise, gamma
    gain = rng.uniform(0.38, 0.55) / max(float(img.mean()), 1e-3) * rng.uniform(*cfg.exposure)
    awb = light.colour ** -rng.uniform(0.5, 1.0)
    img *= (gain * awb / awb.mean() * (1 + rng.uniform(-cfg.white_balance, cfg.white_balance, 3))).astype(np.float32)
    r2 = (((us - W / 2) ** 2 + (vs - H / 2) ** 2) / (W * W / 4 + H * H / 4)).astype(np.float32)
    img *= (1 - rng.uniform(0, 0.35) * r2)[..., None]
    img = cv2.GaussianBlur(img, (0, 0), rng.uniform(*cfg.blur_px) * W / 640)
    sigma = rng.uniform(*cfg.image_noise)
    noise = rng.standard_normal(img.shape, dtype=np.float32)
    img = img + noise * (sigma * (0.4 + np.sqrt(np.clip(img, 0, None))))
    lut = ((np.arange(4096) / 4095.0) ** rng.uniform(*cfg.gamma) * 255 + 0.5).astype(np.uint8)
    rgb = lut[(np.clip(img, 0, 1) * 4095 + 0.5).astype(np.int32)]

    # --- depth sensor model
    extra = np.zeros(H * W, bool)  # per-surface dropouts
    # dark materials (by their mean albedo: printed ink is mostly IR-transparent) lose patches
    dark_surf = np.array([float(s.tex.mean()) < 0.15 for s in surfs] + [False])
    dark = _value_noise(rng, 16, H, W).reshape(-1)[idx]
    extra[idx] = dark_surf[psid] & (dark < rng.uniform(*cfg.dark_holes))
    extra[idx] |= highlight > 0.6  # saturated highlights lose the IR pattern too
    extra[idx] |= (cos_geo < 0.12) & (rng.random(len(idx)) < 0.5)  # grazing
    z_seen = depth_clean.reshape(-1).copy()
    tr_meta: dict[int, float] = {}
    if trans_depth is not None:  # glass: mostly no depth; elsewhere the surface behind or its own
        g_px, behind_t, g_sid = trans_depth
        field_ = _value_noise(rng, 12, H, W).reshape(-1)[idx[g_px]]
        for s in sorted(set(g_sid.tolist())):
            m = g_sid == s
            miss = rng.uniform(0.6, 0.95)
            q = np.quantile(field_[m], [miss, miss + (1 - miss) * rng.uniform(0.3, 1.0)])
            px = idx[g_px[m]]
            extra[px[field_[m] < q[0]]] = True
            see_through = (field_[m] >= q[0]) & (field_[m] < q[1])
            z_seen[px[see_through]] = behind_t[m][see_through]
            tr_meta[s] = miss
    depth = _sensor_depth(rng, cfg, z_seen.reshape(H, W), extra.reshape(H, W), fx, W, H)

    # --- labels: drop tiny visible fragments, then compact ids
    counts = np.bincount(label.ravel(), minlength=n_obj + 1)
    keep = [k for k in range(n_obj) if counts[k + 1] >= cfg.min_visible_px]
    remap = np.zeros(n_obj + 1, np.int32)
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
    vis_area = counts[np.asarray(keep, int) + 1].astype(np.float64) if keep else np.zeros(0)
    am_area = amodal.sum(axis=(1, 2)).astype(np.float64)
    occlusion = 1.0 - vis_area / np.maximum(am_area, 1)
    new_id = {k: i + 1 for i, k in enumerate(keep)}

    def support(k: int) -> int:
        s = objs[k].support
        return 0 if s < 0 else new_id.get(s, -1)

    meta = {"objects": [{"kind": objs[k].kind, "position": objs[k].pos.tolist(),
                         "aabb_min": objs[k].verts.min(0).tolist(), "aabb_max": objs[k].verts.max(0).tolist(),
                         "support": support(k), "transparent": surfs[k].transparent,
                         "texture": surfs[k].texture, "upright": objs[k].upright} for k in keep],
            "floor_z": float(floor_z) if floor_z is not None else None,
            "table": {"round": table.round, "half_size": table.half.tolist(), "thickness": table.thickness,
                      "texture": scenery[0].texture},
            "light": light.direction.tolist(), "pile": bool(pile), "spread": float(spread),
            "camera": cam_meta, "walls": len(walls),
            "clutter": sum(s.kind == "clutter" for s in surfs)}
    return SyntheticScene(rgb=rgb, depth=depth, depth_clean=depth_clean, intrinsics=intr, label=label,
                          amodal=amodal, occlusion=occlusion, ids=ids, shapes=[objs[k].kind for k in keep],
                          cam_to_world=T, seed=int(seed), meta=meta,
                          object_meshes=[(objs[k].verts.astype(np.float32), objs[k].tris) for k in keep])


def _sensor_depth(rng: np.random.Generator, cfg: SceneConfig, z: np.ndarray, extra: np.ndarray, fx: float,
                  W: int, H: int) -> np.ndarray:
    """RealSense-like depth from the depth the sensor sees (0 = no return).

    Active stereo: noise and 1/32-pixel quantisation live in disparity (so depth error grows with
    z^2), the right imager cannot see the background just left of nearer surfaces (stereo
    shadow, its width is the disparity jump) nor the left band of the image; edges, blobs,
    speckle and far ranges drop out; output is rounded to millimetres.
    """
    base = rng.uniform(*cfg.baseline)
    hit = z > 0
    disp = np.where(hit, fx * base / np.maximum(z, 1e-6), 0.0).astype(np.float32)  # pixels of this image
    u = np.arange(W, dtype=np.float32)[None]
    key = u - disp  # column in the right image
    suffix = np.minimum.accumulate(key[:, ::-1], axis=1)[:, ::-1]
    right_min = np.full_like(key, np.inf)
    right_min[:, :-1] = suffix[:, 1:]
    invalid = ~hit | (right_min < key - 0.5)  # something nearer covers the point in the right imager
    e0, e1 = cfg.edge_dropout_px
    grow = int(rng.integers(e0, e1 + 1)) if e1 > 0 else 0
    if grow:
        invalid = cv2.dilate(invalid.astype(np.uint8), np.ones((1, 2 * grow + 1), np.uint8)).astype(bool) | ~hit
    if rng.random() < cfg.left_band_prob:
        invalid |= key < 0
    invalid |= extra
    # noise in disparity at the nominal 640-px focal length (metric noise independent of image size)
    f_nom = fx * 640.0 / W
    sig_d = rng.uniform(*cfg.depth_noise) * f_nom * base
    low = cv2.resize(rng.standard_normal((H // 16 + 2, W // 16 + 2)).astype(np.float32), (W, H),
                     interpolation=cv2.INTER_CUBIC)
    low /= max(float(low.std()), 1e-6)
    d_nom = np.where(hit, f_nom * base / np.maximum(z, 1e-6), 1.0)
    d_nom = d_nom + sig_d * (0.5 * low + 0.85 * rng.standard_normal((H, W), dtype=np.float32))
    d_nom = np.round(d_nom * 32) / 32
    depth = np.where(d_nom > 0, f_nom * base / np.maximum(d_nom, 1e-6), 0.0)
    gy, gx = np.gradient(z)
    invalid |= (np.hypot(gx, gy) > 0.03 * np.maximum(z, 0.1)) & (rng.random((H, W)) < 0.5)
    hf = rng.uniform(*cfg.hole_fraction)
    if hf > 0:
        hn = _value_noise(rng, int(rng.integers(6, 20)), H, W)
        invalid |= hn > np.quantile(hn[::7, ::7], 1 - hf)
    if rng.random() < cfg.speckle_prob:
        sp = _value_noise(rng, max(W // 6, 4), H, W)
        invalid |= sp > np.quantile(sp[::7, ::7], 1 - rng.uniform(0.03, 0.15))
    far = _span(cfg.max_range)
    max_r = rng.uniform(*far)
    fade = np.clip((z - 0.6 * max_r) / (0.4 * max_r), 0, 1) * 0.6
    invalid |= (z < cfg.min_range) | (z > max_r) | (rng.random((H, W)) < fade)
    return np.where(invalid, 0.0, np.round(depth * 1000) / 1000).astype(np.float32)


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
                        progress: bool = False, generator: Callable[[int], SyntheticScene] | None = None) -> Path:
    """Write num scenes in the UOAIS-Sim COCO layout; returns the annotations json path.

    Layout: out_dir/color/NNNNNN.png, out_dir/depth/NNNNNN.png (uint16 mm),
    out_dir/annotations.json, out_dir/camera.json (intrinsics of the first image;
    each image entry also carries its own). Scene i uses seed + i. generator(seed), when
    given, renders the scenes instead of generate_scene(seed, cfg) (e.g. the held-out
    pybullet renderer, bullet.generate_bullet_scene).
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
    renderer = None
    for i in it:
        s = generator(seed + i) if generator is not None else generate_scene(seed + i, cfg)
        renderer = renderer or s.meta.get("renderer", "uois_sam_ros open3d ray caster")
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
                         "shape": s.shapes[k], "transparent": bool(s.meta["objects"][k]["transparent"])})
    ann_path = out / "annotations.json"
    ann_path.write_text(json.dumps({
        "info": {"description": "uois_sam_ros synthetic tabletop scenes (UOAIS-Sim layout)", "seed": seed,
                 "renderer": renderer},
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
    p.add_argument("--min-objects", type=int, default=None,
                   help=f"fewest objects per scene (default {SceneConfig.min_objects}; bullet: 3)")
    p.add_argument("--max-objects", type=int, default=None,
                   help=f"most objects per scene (default {SceneConfig.max_objects}; bullet: 10)")
    p.add_argument("--renderer", choices=("raycast", "bullet"), default="raycast",
                   help="raycast: this generator (training data); bullet: pybullet TinyRenderer scenes of "
                        "pybullet_data objects (held-out test data)")
    a = p.parse_args(argv)
    counts = {k: v for k, v in (("min_objects", a.min_objects), ("max_objects", a.max_objects)) if v is not None}
    from uois_sam_ros.core.data import bullet  # needs pybullet only when it renders

    try:
        cfg = SceneConfig(width=a.width, height=a.height, **counts)
        gen = None
        if a.renderer == "bullet":
            bullet.require_pybullet()
            bcfg = bullet.BulletSceneConfig(width=a.width, height=a.height, **counts)

            def gen(s: int) -> SyntheticScene:
                return bullet.generate_bullet_scene(s, bcfg)
        path = write_uoais_dataset(a.out, a.num, a.seed, cfg, progress=True, generator=gen)
    except (ValueError, OSError, bullet.PybulletMissing) as e:
        print(f"uois-sam-synth: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {a.num} scenes: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
