"""Weights-free backend on an analytically rendered tabletop and on the real RealSense frames."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from uois_sam_ros.core.config import GeometricConfig, config_from_dict
from uois_sam_ros.core.segment.backend import PromptableSegmenter, PromptSource
from uois_sam_ros.core.segment.geometric import GeometricPromptSource, GeometricSegmenter, fit_table_plane
from uois_sam_ros.core.types import Frame, FrameError, Intrinsics, Prompts

W, H = 240, 180
K = Intrinsics(fx=220.0, fy=220.0, cx=119.5, cy=89.5, width=W, height=H)
COLOURS = [(120, 110, 100), (200, 40, 40), (40, 160, 60), (40, 60, 200), (220, 200, 40)]


def _camera() -> tuple[np.ndarray, np.ndarray]:
    """World z up, table z = 0; the camera 0.6 m above, looking down at about 50 degrees and
    rolled a little, so the plane is tilted in the image."""
    c = np.array([0.05, -0.45, 0.55])
    target = np.array([0.0, 0.05, 0.0])
    fwd = (target - c) / np.linalg.norm(target - c)
    right = np.cross(fwd, [0.0, 0.0, 1.0])
    right /= np.linalg.norm(right)
    down = np.cross(fwd, right)
    roll = np.deg2rad(8.0)
    r2 = np.cos(roll) * right + np.sin(roll) * down
    d2 = np.cross(fwd, r2)
    rot = np.stack([r2, d2, fwd])  # rows: camera x, y, z in world coordinates
    return c, rot


def _box_hit(o, d, lo, hi):
    with np.errstate(divide="ignore", invalid="ignore"):
        t1 = (lo[None] - o[None]) / d
        t2 = (hi[None] - o[None]) / d
    tmin = np.nanmax(np.minimum(t1, t2), axis=1)
    tmax = np.nanmin(np.maximum(t1, t2), axis=1)
    return np.where((tmax >= tmin) & (tmin > 0), tmin, np.inf)


def _cyl_hit(o, d, centre, r, top):
    ox, oy = o[0] - centre[0], o[1] - centre[1]
    a = d[:, 0] ** 2 + d[:, 1] ** 2
    b = 2 * (ox * d[:, 0] + oy * d[:, 1])
    c = ox ** 2 + oy ** 2 - r ** 2
    disc = b ** 2 - 4 * a * c
    t_side = np.where(disc >= 0, (-b - np.sqrt(np.maximum(disc, 0))) / (2 * a), np.inf)
    z = o[2] + t_side * d[:, 2]
    t_side = np.where((t_side > 0) & (z >= 0) & (z <= top), t_side, np.inf)
    t_cap = (top - o[2]) / d[:, 2]
    px, py = o[0] + t_cap * d[:, 0], o[1] + t_cap * d[:, 1]
    inside = (px - centre[0]) ** 2 + (py - centre[1]) ** 2 <= r ** 2
    t_cap = np.where(inside & (t_cap > 0), t_cap, np.inf)
    return np.minimum(t_side, t_cap)


def render_scene(touching: bool = True, set_back: float = 0.02) -> tuple[Frame, np.ndarray, np.ndarray]:
    """Depth, colour and ground-truth ids by ray casting; returns (frame, ids, table normal in camera)."""
    c, rot = _camera()
    u, v = np.meshgrid(np.arange(W), np.arange(H))
    dc = np.stack([(u - K.cx) / K.fx, (v - K.cy) / K.fy, np.ones_like(u, float)], -1).reshape(-1, 3)
    dw = dc @ rot  # camera -> world directions; t along dw is the camera depth (dc_z = 1)
    hits = [np.where(dw[:, 2] < 0, -c[2] / dw[:, 2], np.inf)]  # table
    hits.append(_box_hit(c, dw, np.array([-0.20, 0.00, 0.0]), np.array([-0.12, 0.10, 0.12])))
    hits.append(_cyl_hit(c, dw, (0.02, 0.18), 0.04, 0.10))
    if touching:  # two boxes sharing part of a face, 5 cm apart in height
        hits.append(_box_hit(c, dw, np.array([0.08, -0.02, 0.0]), np.array([0.15, 0.06, 0.05])))
        hits.append(_box_hit(c, dw, np.array([0.15, -0.02 + set_back, 0.0]),
                             np.array([0.22, 0.06 + set_back, 0.10])))
    t = np.stack(hits, 1)
    ids = np.argmin(t, 1)
    depth = t[np.arange(len(t)), ids]
    ids[~np.isfinite(depth)] = -1
    depth = np.where(np.isfinite(depth) & (depth < 3.0), depth, 0.0).astype(np.float32).reshape(H, W)
    ids = ids.reshape(H, W)
    rgb = np.zeros((H, W, 3), np.uint8)
    for k, col in enumerate(COLOURS[: t.shape[1]]):
        rgb[ids == k] = col
    normal_cam = rot @ np.array([0.0, 0.0, 1.0])
    return Frame(rgb=rgb, depth=depth, intrinsics=K), ids, normal_cam


@pytest.fixture(scope="module")
def scene():
    return render_scene()


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def test_interfaces_and_config():
    assert isinstance(GeometricSegmenter(), PromptableSegmenter)
    assert isinstance(GeometricPromptSource(), PromptSource)
    assert GeometricSegmenter().name == GeometricPromptSource().name == "geometric"
    cfg = config_from_dict({"geometric": {"depth_jump": 0.03, "concave_angle": 0}})
    assert cfg.geometric.depth_jump == 0.03 and cfg.geometric.concave_angle == 0.0


def test_plane_recovered(scene):
    frame, ids, normal = scene
    tp = fit_table_plane(frame, GeometricConfig())
    angle = np.degrees(np.arccos(np.clip(abs(tp.normal @ normal), -1, 1)))
    assert angle < 2.0
    assert tp.normal @ normal > 0  # towards the camera = world up
    table = ids == 0
    assert tp.inliers[table].mean() > 0.95
    assert tp.inliers[ids > 0].mean() < 0.1  # only the bottom centimetre of the objects
    assert tp.height.shape == (H, W) and tp.height.dtype == np.float32
    # The top of the 10 cm cylinder sits 10 cm above the plane.
    top = (ids == 2) & (tp.height > 0.09)
    assert top.sum() > 20
    assert abs(float(np.median(tp.height[top])) - 0.10) < 0.005
    assert tp.region[table].mean() > 0.9


def test_height_is_nan_on_invalid_depth_and_small_specks_are_filled(scene):
    frame, ids, _ = scene
    depth = frame.depth.copy()
    depth[:10, :10] = np.nan
    depth[10:20, :10] = 0.0
    table = np.argwhere(cv2.erode((ids == 0).astype(np.uint8), np.ones((9, 9), np.uint8)) > 0)
    y, x = table[len(table) // 2]
    depth[y - 1:y + 2, x - 1:x + 2] = 0.0  # a 3x3 speck of dropout in the middle of the table
    tp = fit_table_plane(Frame(frame.rgb, depth, K), GeometricConfig(fill_specks=0))
    assert np.isnan(tp.height[:20, :10]).all() and np.isnan(tp.height[y - 1:y + 2, x - 1:x + 2]).all()
    assert np.isfinite(tp.height[ids == 0][-100:]).all()
    # By default the speck takes its neighbours' depth (they agree: no edge runs through it);
    # a hole larger than the passes reach keeps no depth inside.
    tp = fit_table_plane(Frame(frame.rgb, depth, K))
    assert np.abs(tp.height[y - 1:y + 2, x - 1:x + 2]).max() < GeometricConfig().plane_distance
    assert np.isnan(tp.height[:12, :4]).all()
    # A speck on an occluding edge stays empty: its neighbours disagree by more than the depth jump.
    d0 = frame.depth
    edge = np.zeros_like(d0, bool)
    edge[:, 1:] = np.abs(d0[:, 1:] - d0[:, :-1]) > 0.1 * np.minimum(d0[:, 1:], d0[:, :-1])
    ey, ex = np.argwhere(edge[10:-10, 10:-10])[0] + 10
    cut = frame.depth.copy()
    cut[ey - 1:ey + 2, ex - 1:ex + 2] = 0.0
    assert np.isnan(fit_table_plane(Frame(frame.rgb, cut, K)).height[ey, ex])


def test_prompts_one_per_object_inside_it(scene):
    frame, ids, _ = scene
    pr = GeometricPromptSource(GeometricConfig()).prompts(frame)
    n_obj = int(ids.max())
    assert len(pr) == n_obj
    assert (pr.labels == 1).all()
    assert ((pr.scores >= 0) & (pr.scores <= 1)).all()
    assert (np.diff(pr.scores) <= 0).all()  # best first
    hit = sorted(int(ids[int(y), int(x)]) for x, y in pr.points)
    assert hit == list(range(1, n_obj + 1))
    # Well inside: not on the object's border.
    for x, y in pr.points:
        k = ids[int(y), int(x)]
        win = ids[int(y) - 2:int(y) + 3, int(x) - 2:int(x) + 3]
        assert (win == k).all()
    capped = GeometricPromptSource(GeometricConfig(max_prompts=2)).prompts(frame)
    assert len(capped) == 2 and np.allclose(capped.scores, pr.scores[:2])


def test_decoded_masks_match_objects(scene):
    frame, ids, _ = scene
    pr = GeometricPromptSource().prompts(frame)
    seg = GeometricSegmenter()
    seg.set_frame(frame)
    dec = seg.decode(pr)
    assert dec.masks.shape == (len(pr), 1, H, W) and dec.masks.dtype == bool
    assert dec.scores.shape == dec.iou_pred.shape == (len(pr), 1)
    for (x, y), m, s in zip(pr.points, dec.masks[:, 0], dec.scores[:, 0]):
        gt = ids == ids[int(y), int(x)]
        assert _iou(m, gt) > 0.8, (x, y, _iou(m, gt))
        assert 0.5 < s <= 1.0


def test_touching_pair_is_two_instances(scene):
    frame, ids, _ = scene
    seg = GeometricSegmenter()
    seg.set_frame(frame)
    pts = []
    for k in (3, 4):
        ys, xs = np.nonzero(ids == k)
        pts.append((np.median(xs), np.median(ys)))
    dec = seg.decode(Prompts(np.array(pts), [1, 1], [1, 1]))
    a, b = dec.masks[:, 0]
    assert not (a & b).any()
    assert _iou(a, ids == 3) > 0.8 and _iou(b, ids == 4) > 0.8
    # Without the concave-crease term (and the colour term) the pair is one region: the short
    # box's top runs into the tall box's side with no depth jump.
    merged = GeometricSegmenter(GeometricConfig(concave_angle=0.0, colour_weight=0.0))
    merged.set_frame(frame)
    m = merged.decode(Prompts(np.array(pts[:1]), [1], [1])).masks[0, 0]
    assert _iou(m, (ids == 3) | (ids == 4)) > 0.8


def test_colour_term_splits_flush_pair():
    """Front faces flush (coplanar): geometry cannot tell the boxes apart, colour can."""
    frame, ids, _ = render_scene(set_back=0.0)
    pts = [tuple(np.argwhere(ids == k).mean(0)[::-1]) for k in (3, 4)]
    prompts = Prompts(np.array(pts), [1, 1], [1, 1])
    geo = GeometricSegmenter(GeometricConfig(colour_weight=0.0))
    geo.set_frame(frame)
    a = geo.decode(prompts).masks[0, 0]
    assert _iou(a, (ids == 3) | (ids == 4)) > 0.8
    col = GeometricSegmenter(GeometricConfig(colour_weight=1.0))
    col.set_frame(frame)
    dec = col.decode(prompts)
    assert _iou(dec.masks[0, 0], ids == 3) > 0.8 and _iou(dec.masks[1, 0], ids == 4) > 0.8


def test_table_background_and_zero_prompts(scene):
    frame, ids, _ = scene
    seg = GeometricSegmenter()
    seg.set_frame(frame)
    ys, xs = np.nonzero(ids == 0)
    i = len(ys) // 2
    obj_y, obj_x = np.argwhere(ids == 2).mean(0)
    p = Prompts(np.array([[xs[i], ys[i]], [obj_x, obj_y], [obj_x, obj_y], [-50, 10]]),
                [1, 0, 1, 1], [1, 1, 1, 1])
    dec = seg.decode(p)
    assert not dec.masks[0, 0].any() and dec.scores[0, 0] == 0  # on the table
    assert not dec.masks[1, 0].any() and dec.scores[1, 0] == 0  # background label
    assert dec.masks[2, 0].any() and dec.scores[2, 0] > 0
    assert not dec.masks[3, 0].any() and dec.scores[3, 0] == 0  # outside the image
    empty = seg.decode(Prompts.empty())
    assert empty.masks.shape == (0, 1, H, W) and empty.masks.dtype == bool
    assert empty.scores.shape == (0, 1) and empty.iou_pred.shape == (0, 1)


def test_empty_table_gives_no_prompts():
    frame, _, _ = render_scene(touching=False)
    # The same view with the objects removed: only the table plane.
    c, rot = _camera()
    u, v = np.meshgrid(np.arange(W), np.arange(H))
    dc = np.stack([(u - K.cx) / K.fx, (v - K.cy) / K.fy, np.ones_like(u, float)], -1)
    dz = (dc @ rot)[..., 2]
    depth = np.where(dz < 0, -c[2] / dz, 0).astype(np.float32)
    rgb = np.broadcast_to(np.array(COLOURS[0], np.uint8), frame.rgb.shape).copy()  # gone from the colour too
    pr = GeometricPromptSource().prompts(Frame(rgb, depth, K))
    assert len(pr) == 0 and pr.points.shape == (0, 2)


def test_segmenter_needs_a_frame():
    with pytest.raises(RuntimeError, match="set_frame"):
        GeometricSegmenter().decode(Prompts.empty())


def test_bad_frames_raise(scene):
    frame, _, _ = scene
    with pytest.raises(FrameError, match="needs depth"):
        fit_table_plane(Frame(frame.rgb, None, K))
    with pytest.raises(FrameError, match="no valid pixel"):
        fit_table_plane(Frame(frame.rgb, np.full((H, W), np.nan, np.float32), K))
    with pytest.raises(FrameError, match="intrinsics"):
        fit_table_plane(Frame(frame.rgb, frame.depth, None))
    with pytest.raises(FrameError, match="does not match colour size"):
        GeometricSegmenter().set_frame(Frame(frame.rgb, frame.depth[:-1], K))
    with pytest.raises(FrameError, match="float metres"):
        GeometricPromptSource().prompts(Frame(frame.rgb, (frame.depth * 1000).astype(np.uint16), K))
    # A cloud of random depths has no plane.
    rng = np.random.default_rng(0)
    noise = rng.uniform(0.3, 3.0, (H, W)).astype(np.float32)
    with pytest.raises(FrameError, match="no table plane found"):
        fit_table_plane(Frame(frame.rgb, noise, K))


def _look_from(c: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Rows: camera x, y, z in world coordinates (world z up, no roll)."""
    fwd = (target - c) / np.linalg.norm(target - c)
    right = np.cross(fwd, [0.0, 0.0, 1.0])
    right /= np.linalg.norm(right)
    return np.stack([right, np.cross(fwd, right), fwd])


def _cast(c: np.ndarray, rot: np.ndarray, hits_of, colours, noise: float = 0.0, seed: int = 0):
    """Ray-cast a scene given as a function of (origin, world directions) -> list of hit
    distances; returns (frame, ids, table normal in camera)."""
    u, v = np.meshgrid(np.arange(W), np.arange(H))
    dc = np.stack([(u - K.cx) / K.fx, (v - K.cy) / K.fy, np.ones_like(u, float)], -1).reshape(-1, 3)
    t = np.stack(hits_of(c, dc @ rot), 1)
    ids = np.argmin(t, 1)
    depth = t[np.arange(len(t)), ids]
    ids[~np.isfinite(depth)] = -1
    depth = np.where(np.isfinite(depth) & (depth < 5.0), depth, 0.0).reshape(H, W)
    if noise > 0:
        rng = np.random.default_rng(seed)
        depth = np.where(depth > 0, depth + rng.normal(0.0, noise, depth.shape) * depth ** 2, 0.0)
    ids = ids.reshape(H, W)
    rgb = np.zeros((H, W, 3), np.uint8)
    for k, col in enumerate(colours):
        rgb[ids == k] = col
    return Frame(rgb=rgb, depth=depth.astype(np.float32), intrinsics=K), ids, rot @ np.array([0.0, 0.0, 1.0])


def render_table_on_floor():
    """A 0.5 x 0.4 m table top (z = 0) standing 0.6 m above a floor that fills most of the view,
    seen from 1.3 m away; a box and a can stand on the table. ids: 0 floor, 1 table, 2-3 objects."""
    c = np.array([0.1, -0.9, 0.95])
    rot = _look_from(c, np.array([0.0, 0.0, -0.15]))

    def hits(o, d):
        floor = np.where(d[:, 2] < 0, (-0.6 - o[2]) / d[:, 2], np.inf)
        table = _box_hit(o, d, np.array([-0.25, -0.2, -0.03]), np.array([0.25, 0.2, 0.0]))
        box = _box_hit(o, d, np.array([-0.15, -0.05, 0.0]), np.array([-0.07, 0.05, 0.12]))
        can = _cyl_hit(o, d, (0.08, 0.02), 0.04, 0.10)
        return [floor, table, box, can]

    return _cast(c, rot, hits, [(90, 90, 110), (160, 120, 80), (200, 40, 40), (40, 60, 200)])


def _paint_table(frame: Frame, ids: np.ndarray, paint) -> Frame:
    """render_table_on_floor's frame with the table top's pixels recoloured by paint(x, y, rgb) -> rgb
    (world metres on the top, z = 0); the depth stays as it is (a print, a sheet of paper)."""
    c = np.array([0.1, -0.9, 0.95])
    rot = _look_from(c, np.array([0.0, 0.0, -0.15]))
    u, v = np.meshgrid(np.arange(W), np.arange(H))
    d = np.stack([(u - K.cx) / K.fx, (v - K.cy) / K.fy, np.ones_like(u, float)], -1) @ rot
    with np.errstate(divide="ignore"):
        t = -c[2] / d[..., 2]
    x, y = c[0] + t * d[..., 0], c[1] + t * d[..., 1]
    rgb = frame.rgb.copy()
    top = ids == 1
    rgb[top] = paint(x[top], y[top], rgb[top])
    return Frame(rgb, frame.depth, K)


def _pad(x: np.ndarray, y: np.ndarray, rgb: np.ndarray) -> np.ndarray:
    """A blue 12 x 8 cm sheet lying in front of the box and the can."""
    out = rgb.copy()
    out[(np.abs(x + 0.02) < 0.06) & (np.abs(y + 0.13) < 0.04)] = (40, 90, 210)
    return out


def test_a_flat_object_is_found_by_its_colour_and_only_with_flat_contrast():
    """A sheet lying on the table has no height for the depth; its colour against the table's
    makes it an instance (flat_contrast > 0, the default), and nothing else changes."""
    frame, ids, _ = render_table_on_floor()
    painted = _paint_table(frame, ids, _pad)
    sheet = np.all(painted.rgb == (40, 90, 210), axis=-1)
    assert sheet.sum() > 150
    assert GeometricConfig().flat_contrast > 0
    for cfg, found in ((GeometricConfig(), True), (GeometricConfig(flat_contrast=0.0), False)):
        pr = GeometricPromptSource(cfg).prompts(painted)
        seg = GeometricSegmenter(cfg)
        seg.set_frame(painted)
        masks = seg.decode(pr).masks[:, 0]
        best = max((_iou(m, sheet) for m in masks), default=0.0)
        assert (best > 0.7) == found, (cfg.flat_contrast, best)
        for k in (2, 3):  # the box and the can are found either way
            assert max(_iou(m, ids == k) for m in masks) > 0.6
        assert len(pr) == 2 + found


def test_a_checked_table_cloth_is_not_flat_objects():
    """A table top printed with 6 cm checks: every check stands out from its neighbours as much as
    a sheet would, but its colours are the table's own, so no check becomes an instance."""
    frame, ids, _ = render_table_on_floor()

    def checks(x, y, rgb):
        odd = ((np.floor(x / 0.06) + np.floor(y / 0.06)) % 2).astype(bool)
        return np.where(odd[:, None], np.array([230, 230, 225], np.uint8), rgb)

    pr = GeometricPromptSource().prompts(_paint_table(frame, ids, checks))
    assert len(pr) == 2
    # ... while a sheet on the same cloth still is one.
    both = _paint_table(frame, ids, lambda x, y, rgb: _pad(x, y, checks(x, y, rgb)))
    assert len(GeometricPromptSource().prompts(both)) == 3


def test_table_standing_on_a_floor_is_the_plane_not_the_floor():
    frame, ids, normal = render_table_on_floor()
    assert (ids == 0).sum() > 2 * (ids == 1).sum()  # the floor is by far the largest plane
    tp = fit_table_plane(frame, GeometricConfig())
    angle = np.degrees(np.arccos(np.clip(abs(tp.normal @ normal), -1, 1)))
    assert angle < 2.0
    # The camera is 0.95 m above the table top (1.55 m above the floor).
    assert abs(tp.coefficients[3] - 0.95) < 0.02
    assert tp.inliers[ids == 1].mean() > 0.8 and tp.inliers[ids == 0].mean() < 0.01
    assert np.nanmax(tp.height[ids == 0]) < -0.5  # the floor lies 0.6 m below the plane
    assert len(tp.candidates) >= 2  # the floor was fitted too, and not chosen
    pr = GeometricPromptSource().prompts(frame)
    assert sorted(int(ids[int(y), int(x)]) for x, y in pr.points) == [2, 3]


def _cone_hit(o, d, centre, z0, r0, z1, r1):
    """The side of a cone frustum about a vertical axis, radius r0 at z0 to r1 at z1."""
    k = (r1 - r0) / (z1 - z0)
    ox, oy, oz = o[0] - centre[0], o[1] - centre[1], o[2]
    base = r0 - k * z0  # radius = base + k z
    a = d[:, 0] ** 2 + d[:, 1] ** 2 - (k * d[:, 2]) ** 2
    b = 2 * (ox * d[:, 0] + oy * d[:, 1] - k * d[:, 2] * (base + k * oz))
    c = ox ** 2 + oy ** 2 - (base + k * oz) ** 2
    disc = np.maximum(b ** 2 - 4 * a * c, 0)
    best = np.full(len(d), np.inf)
    for sign in (-1.0, 1.0):
        t = (-b + sign * np.sqrt(disc)) / (2 * a)
        z = oz + t * d[:, 2]
        ok = (b ** 2 - 4 * a * c >= 0) & (t > 0) & (z >= z0) & (z <= z1)
        best = np.where(ok & (t < best), t, best)
    return best


def render_bottle(noise: float = 0.0015):
    """A tall bottle (body 15 cm, shoulder, neck up to 23 cm) with a white label band around its
    middle, on a table, with RealSense-like depth noise. ids: 0 table, 1 body, 2 label, 3 neck."""
    c, rot = _camera()
    axis = (0.0, 0.1)

    def hits(o, d):
        table = np.where(d[:, 2] < 0, -o[2] / d[:, 2], np.inf)
        body = np.minimum(_cyl_hit(o, d, axis, 0.035, 0.15), _cone_hit(o, d, axis, 0.15, 0.035, 0.19, 0.013))
        label = np.full_like(body, np.inf)
        z = o[2] + body * d[:, 2]
        on_label = np.isfinite(body) & (z > 0.05) & (z < 0.10)
        label[on_label], body[on_label] = body[on_label], np.inf
        neck = _cyl_hit(o, d, axis, 0.013, 0.23)
        return [table, body, label, neck]

    return _cast(c, rot, hits, [(120, 110, 100), (30, 60, 200), (235, 235, 235), (30, 60, 200)], noise=noise)


def test_tall_bottle_is_one_instance():
    frame, ids, _ = render_bottle()
    pr = GeometricPromptSource().prompts(frame)
    assert len(pr) == 1, pr.points  # not body, label and neck apart
    seg = GeometricSegmenter()
    seg.set_frame(frame)
    m = seg.decode(pr).masks[0, 0]
    assert _iou(m, ids > 0) > 0.85


def _real_frames(d: Path):
    k = Intrinsics.from_json(d / "camera.json")
    for c in sorted(d.glob("*-color.png")):
        dp = d / c.name.replace("-color", "-depth")
        if not dp.is_file():
            continue
        rgb = cv2.cvtColor(cv2.imread(str(c)), cv2.COLOR_BGR2RGB)
        depth = cv2.imread(str(dp), cv2.IMREAD_UNCHANGED).astype(np.float32) / 1000.0
        yield c.name, Frame(rgb, depth, k)


def _instances(frame: Frame) -> tuple[np.ndarray, np.ndarray]:
    """Prompt source + segmenter + the simple selection: drop empty masks and masks mostly
    covered by a higher-scoring one."""
    pr = GeometricPromptSource().prompts(frame)
    seg = GeometricSegmenter()
    seg.set_frame(frame)
    dec = seg.decode(pr)
    keep: list[int] = []
    for i in np.argsort(-dec.scores[:, 0], kind="stable"):
        m = dec.masks[i, 0]
        if not m.any():
            continue
        if any((m & dec.masks[j, 0]).sum() > 0.5 * m.sum() for j in keep):
            continue
        keep.append(int(i))
    return dec.masks[keep, 0], seg.plane.inliers


def test_real_tabletop_frames(real_rgbd_dir):
    frames = list(_real_frames(real_rgbd_dir))
    assert len(frames) >= 8
    for name, frame in frames:
        masks, inliers = _instances(frame)
        assert 1 <= len(masks) <= 30, (name, len(masks))
        assert masks.mean(axis=(1, 2)).max() < 0.4, name
        assert inliers.mean() > 0.15, name  # the table is a large part of every view
        # Instances are not the table: table-height pixels in a mask lie within the image hull
        # of its raised part (the floor inside a bowl or a cup), not around it.
        outside = 0
        for m in masks:
            raised = m & ~inliers
            ys, xs = np.nonzero(raised)
            hull = np.zeros(m.shape, np.uint8)
            if len(xs) >= 3:
                cv2.fillConvexPoly(hull, cv2.convexHull(np.stack([xs, ys], 1).astype(np.int32)), 1)
            outside += int((m & inliers & (hull == 0)).sum())
        assert outside < 0.05 * masks.sum(), name


# Object centres picked by eye on the colour images (x, y).
REAL_OBJECTS = {
    "0000": {"mustard": (270, 100), "drill": (345, 130), "navy mug": (205, 195), "white mug": (300, 250),
             "small can": (173, 262), "spam": (75, 310), "cheez-it": (495, 245), "teal bowl": (200, 360),
             "white bowl": (372, 350), "soup can": (540, 370)},
    "0005": {"bag": (128, 95), "left box": (245, 125), "right box": (445, 200)},
    "0006": {"wipes": (140, 120), "bag": (80, 215), "r2d2": (250, 120), "eraser": (275, 200),
             "cup top": (365, 170), "mug": (365, 300), "cup bottom": (530, 390), "red box": (290, 250),
             "lego": (418, 215), "food box": (510, 215), "marker L": (160, 212), "marker R": (590, 290)},
}


def _found_alone(masks: np.ndarray, objects: dict) -> tuple[set, list]:
    """Objects whose centre exactly one mask covers, that mask covering no other centre; and the
    masks that cover several centres (objects merged)."""
    hits = {k: [j for j in range(len(masks)) if masks[j, y, x]] for k, (x, y) in objects.items()}
    per_mask: dict[int, list] = {}
    for k, js in hits.items():
        for j in js:
            per_mask.setdefault(j, []).append(k)
    alone = {k for k, js in hits.items() if len(js) == 1 and len(per_mask[js[0]]) == 1}
    return alone, [v for v in per_mask.values() if len(v) > 1]


def _real(real_rgbd_dir: Path, name: str) -> Frame:
    return dict(_real_frames(real_rgbd_dir))[f"{name}-color.png"]


def test_real_table_on_carpet_0005(real_rgbd_dir):
    """A small table on a carpet: the plane is the table top (the carpet lies well below it) and
    each of the three objects is one mask."""
    frame = _real(real_rgbd_dir, "0005")
    tp = fit_table_plane(frame)
    on_table = ((300, 300), (400, 330), (200, 230))
    assert all(tp.inliers[y - 5:y + 6, x - 5:x + 6].mean() > 0.8 for x, y in on_table)
    carpet = tp.height[20:60, 560:630]  # the carpet behind the table
    assert np.nanmedian(carpet) < -0.2
    masks, _ = _instances(frame)
    alone, merged = _found_alone(masks, REAL_OBJECTS["0005"])
    assert alone == set(REAL_OBJECTS["0005"]) and not merged
    assert len(masks) >= 3


def test_real_table_on_carpet_0006(real_rgbd_dir):
    """The cluttered small table: what used to be merged (wipes + bag, R2-D2 + eraser + red box)
    comes apart; the red marker lying flat on the left, below what the depth can tell, is found by
    its colour (flat_contrast)."""
    frame = _real(real_rgbd_dir, "0006")
    tp = fit_table_plane(frame)
    on_table = ((450, 350), (250, 330), (480, 420))
    assert all(tp.inliers[y - 5:y + 6, x - 5:x + 6].mean() > 0.8 for x, y in on_table)
    assert np.nanmedian(tp.height[20:60, 450:630]) < -0.2  # the carpet lies well below the plane
    masks, _ = _instances(frame)
    assert len(masks) >= 8
    alone, merged = _found_alone(masks, REAL_OBJECTS["0006"])
    assert {"wipes", "bag", "r2d2", "eraser", "cup top", "mug", "cup bottom", "marker L"} <= alone, alone
    assert all(len(m) <= 2 for m in merged), merged


def test_same_chroma_joins_shaded_faces_of_one_colour_only():
    """Lit and shaded yellow (the same a*b*, another lightness) join; greys never (a*b* near 0 for
    every grey), nor yellow and blue."""
    from uois_sam_ros.core.segment.geometric import _same_chroma

    colours = {1: (255, 220, 0), 2: (225, 194, 0), 3: (128, 128, 128), 4: (50, 50, 50), 5: (0, 0, 255)}
    piece = np.repeat(np.arange(1, 6), 20).reshape(10, 10)
    rgb = np.zeros((10, 10, 3), np.uint8)
    for k, c in colours.items():
        rgb[piece == k] = c
    lab = cv2.cvtColor(rgb.astype(np.float32) / 255.0, cv2.COLOR_RGB2LAB)  # as the segmenter converts it
    pa, pb = np.array([1, 3, 1, 2]), np.array([2, 4, 5, 5])
    np.testing.assert_array_equal(_same_chroma(piece, lab, pa, pb, 6, 14.0, 10.0), [True, False, False, False])
    # a looser chroma floor lets the greys join, a tighter colour tolerance parts the yellows
    assert _same_chroma(piece, lab, pa, pb, 6, 14.0, 0.0)[1]
    assert not _same_chroma(piece, lab, pa, pb, 6, 1.0, 10.0)[0]


def test_same_hue_joins_a_face_lit_near_white_only_with_colour_join_hue():
    """A pale lit yellow (chroma 33) and a saturated yellow (chroma 76) are 45 apart in a*b* but
    14.5 degrees apart in hue: colour_join_hue 15 joins them; 10 does not, nor does 15 join yellow
    with orange-red (43 degrees of hue apart) or with a grey."""
    from uois_sam_ros.core.segment.geometric import _same_chroma

    colours = {1: (255, 250, 185), 2: (225, 185, 20), 3: (230, 90, 40), 4: (128, 128, 128)}
    piece = np.repeat(np.arange(1, 5), 25).reshape(10, 10)
    rgb = np.zeros((10, 10, 3), np.uint8)
    for k, c in colours.items():
        rgb[piece == k] = c
    lab = cv2.cvtColor(rgb.astype(np.float32) / 255.0, cv2.COLOR_RGB2LAB)
    pa, pb = np.array([1, 2, 2]), np.array([2, 3, 4])
    assert not _same_chroma(piece, lab, pa, pb, 5, 14.0, 10.0, 0.0).any()  # a*b* alone: all apart
    np.testing.assert_array_equal(_same_chroma(piece, lab, pa, pb, 5, 14.0, 10.0, 15.0), [True, False, False])
    assert not _same_chroma(piece, lab, pa, pb, 5, 14.0, 10.0, 10.0)[0]


def test_real_bottle_in_light_and_shade_is_one_region_0008(real_rgbd_dir):
    """0008's teal bottle: light and shade cut its body at colour edges, and those faces meet in
    concave junctions, so the junction test alone kept the pieces apart. colour_join rejoins them."""
    frame = _real(real_rgbd_dir, "0008")
    body = ((355, 110), (352, 150), (345, 175))  # upper, middle and lower body

    def regions(colour_join: float) -> set:
        seg = GeometricSegmenter(GeometricConfig(colour_join=colour_join))
        seg.set_frame(frame)
        return {int(seg._seg.labels[y, x]) for x, y in body}

    assert len(regions(0.0)) >= 2
    one = regions(14.0)
    assert len(one) == 1 and 0 not in one


def test_depth_noise_on_a_dark_table_is_not_objects_0004(real_rgbd_dir):
    """0004's dark table top returns bumps of 1 to 2 cm in its depth, of the table's own colour:
    bump_contrast drops them; the objects on it stay (a bump filter that also ate low objects of
    another colour would lose the brick, the cup and the can here)."""
    frame = _real(real_rgbd_dir, "0004")
    specks = ((130, 258), (45, 325), (344, 127))  # x, y inside the false regions, picked on the overlays
    objects = {"canister": (235, 120), "can": (425, 170), "cup": (468, 276), "brick": (245, 280)}

    def labels(bump_contrast: float) -> GeometricSegmenter:
        seg = GeometricSegmenter(GeometricConfig(bump_contrast=bump_contrast))
        seg.set_frame(frame)
        return seg._seg.labels

    off, on = labels(0.0), labels(6.0)
    assert all(off[y, x] > 0 for x, y in specks)  # without the step each speck is a region ...
    assert all(on[y, x] == 0 for x, y in specks)  # ... with it, none is
    assert all(on[y, x] > 0 for x, y in objects.values())
    assert len({int(on[y, x]) for x, y in objects.values()}) == len(objects)


def test_a_low_bump_goes_only_when_it_has_the_tables_colour():
    """Three small boxes on a grey table seen at a slant: a grey one 1.5 cm high is dropped as
    depth noise; a red one as low, and a grey one 4 cm high, stay."""
    k = Intrinsics(fx=525.0, fy=525.0, cx=319.5, cy=239.5, width=640, height=480)
    v, u = np.mgrid[0:480, 0:640].astype(np.float64)
    ray = np.stack([(u - k.cx) / k.fx, (v - k.cy) / k.fy, np.ones_like(u)], -1)
    n = np.array([0.0, np.sin(np.deg2rad(50)), np.cos(np.deg2rad(50))])  # the table's normal, towards the camera's back

    def depth_at(h: float) -> np.ndarray:  # z of the plane n.X = 0.9 - h (h above the table)
        return (0.9 - h) / (ray @ n)

    depth = depth_at(0.0)
    rgb = np.full((480, 640, 3), 120, np.uint8)
    boxes = {"grey low": (slice(300, 320), slice(200, 220), 0.015, (120, 120, 120)),
             "red low": (slice(300, 320), slice(320, 340), 0.015, (200, 40, 40)),
             "grey high": (slice(300, 320), slice(440, 460), 0.04, (120, 120, 120))}
    for ys, xs, h, col in boxes.values():
        depth[ys, xs] = depth_at(h)[ys, xs]
        rgb[ys, xs] = col
    frame = Frame(rgb, depth.astype(np.float32), k)

    def centres(bump_contrast: float) -> dict:
        seg = GeometricSegmenter(GeometricConfig(bump_contrast=bump_contrast, flat_contrast=0.0))
        seg.set_frame(frame)
        return {name: int(seg._seg.labels[310, xs.start + 10]) for name, (_, xs, _, _) in boxes.items()}

    on = centres(6.0)
    assert on["grey low"] == 0 and on["red low"] > 0 and on["grey high"] > 0, on
    assert all(v > 0 for v in centres(0.0).values())  # without the step all three are regions


def test_real_frame_0000_still_good(real_rgbd_dir):
    masks, _ = _instances(_real(real_rgbd_dir, "0000"))
    alone, merged = _found_alone(masks, REAL_OBJECTS["0000"])
    assert len(alone) >= 9 and not merged, (alone, merged)


def test_real_transparent_frame(real_rgbd_dir):
    d = real_rgbd_dir.parent / "d435_transparent"
    if not d.is_dir():
        pytest.skip(f"{d} not found")
    k = Intrinsics.from_json(d / "camera.json")
    rgb = cv2.cvtColor(cv2.imread(str(d / "000000080-transparent-rgb-img.jpg")), cv2.COLOR_BGR2RGB)
    depth = cv2.imread(str(d / "000000080-transparent-depth.png"), cv2.IMREAD_UNCHANGED) / 1000.0
    masks, inliers = _instances(Frame(rgb, depth.astype(np.float32), k))
    assert 1 <= len(masks) <= 30
    assert masks.mean(axis=(1, 2)).max() < 0.4



def _in_threads(*jobs) -> None:
    """Run (fn, args) jobs in parallel threads; re-raise the first error here."""
    import threading

    errors: list[BaseException] = []

    def guard(fn, args) -> None:
        try:
            fn(*args)
        except BaseException as e:  # noqa: BLE001 - re-raised in the test thread
            errors.append(e)

    threads = [threading.Thread(target=guard, args=job) for job in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


def _assert_same(ref: tuple, out: tuple, names: tuple[str, ...]) -> None:
    for name, x, y in zip(names, ref, out, strict=True):
        assert x.dtype == y.dtype and x.shape == y.shape, name
        assert x.tobytes() == y.tobytes(), f"{name} differ between runs on the same frame"


def _synthetic_frame(seed: int) -> Frame:
    from uois_sam_ros.core.data.synthetic import SceneConfig, generate_scene

    s = generate_scene(seed, SceneConfig(width=320, height=240))
    mm = np.clip(np.round(s.depth.astype(np.float64) * 1000.0), 0, 65535).astype(np.uint16)
    return Frame(rgb=s.rgb, depth=mm.astype(np.float32) * np.float32(0.001), intrinsics=s.intrinsics)


def test_weights_free_pipeline_bit_reproducible_across_threads():
    """The same frame gives the very same instances, run again and from another thread, also
    while another pipeline works on another frame at the same time (as the hpg and
    segmentation nodes do)."""
    from uois_sam_ros.core.segment.pipeline import UOISPipeline

    cfg = config_from_dict({"pipeline": {"method": "weights_free"}})
    a, b = _synthetic_frame(13), _synthetic_frame(14)
    names = ("masks", "scores", "sam_iou", "prompts")

    def run(frame: Frame, out: list) -> None:
        inst = UOISPipeline(cfg).run(frame)
        out.append((inst.masks, inst.scores, inst.sam_iou, inst.prompts))

    ref: list[tuple] = []
    run(a, ref)
    assert len(ref[0][0]) > 0, "the synthetic scene should have objects"
    again: list[tuple] = []
    run(a, again)
    _in_threads((run, (a, again)))
    _in_threads((run, (a, again)), (run, (b, [])))
    assert len(again) == 3
    for out in again:
        _assert_same(ref[0], out, names)


def test_table_plane_bit_reproducible_under_concurrency():
    """Each RANSAC fit draws from its own generator seeded from the config (open3d's used one
    process-wide engine inside a parallel loop, and concurrent fits now and then gave a slightly
    different plane): the same frame gives the very same plane, also from several threads."""
    cfg = GeometricConfig()
    frames = {13: _synthetic_frame(13), 14: _synthetic_frame(14)}
    names = ("plane", "inliers", "height")
    ref = {k: fit_table_plane(f, cfg) for k, f in frames.items()}
    seen: dict[int, list[tuple]] = {k: [] for k in frames}

    def fit_many(k: int, n: int) -> None:
        for _ in range(n):
            tp = fit_table_plane(frames[k], cfg)
            seen[k].append((tp.coefficients, tp.inliers, tp.height))

    _in_threads((fit_many, (13, 20)), (fit_many, (14, 20)))
    for k, outs in seen.items():
        assert len(outs) == 20
        for out in outs:
            _assert_same((ref[k].coefficients, ref[k].inliers, ref[k].height), out, names)


def test_segmenter_reuses_the_prompt_sources_regions_for_the_same_frame(monkeypatch):
    """The weights-free pipeline fits the plane and grows regions once per frame, and the
    shared result is exactly what a segmenter computing its own gives."""
    from uois_sam_ros.core.segment import geometric

    cfg = GeometricConfig()
    frame, other = _synthetic_frame(13), _synthetic_frame(14)
    source = GeometricPromptSource(cfg)
    prompts = source.prompts(frame)
    assert len(prompts) > 0
    independent = GeometricSegmenter(cfg)
    independent.set_frame(frame)
    expected = independent.decode(prompts)

    built: list[Frame] = []
    real = geometric._Segments

    def counting(f, c):
        built.append(f)
        return real(f, c)

    monkeypatch.setattr(geometric, "_Segments", counting)
    shared = GeometricSegmenter(cfg, source=source)
    shared.set_frame(frame)
    got = shared.decode(prompts)
    assert built == []  # nothing recomputed for the frame the source just saw
    assert np.array_equal(got.masks, expected.masks) and np.array_equal(got.scores, expected.scores)
    shared.set_frame(other)  # another frame: computed afresh, never the stale regions
    assert built == [other]
    assert shared.plane is not source.last_segments.plane


def render_near_and_behind():
    """A table top running out of the image at its bottom edge, 0.7 m above a floor: a box on the
    table in the bottom-left corner, so near the camera that its base is out of view; a can in the
    middle; and a post standing on the floor past the table's far edge, rising 0.25 m above the
    table top. ids: 0 floor, 1 table, 2 near box, 3 can, 4 post."""
    c = np.array([0.0, -0.55, 0.5])
    rot = _look_from(c, np.array([0.0, 0.1, 0.0]))

    def hits(o, d):
        floor = np.where(d[:, 2] < 0, (-0.7 - o[2]) / d[:, 2], np.inf)
        table = _box_hit(o, d, np.array([-0.4, -0.6, -0.03]), np.array([0.4, 0.25, 0.0]))
        near = _box_hit(o, d, np.array([-0.3, -0.34, 0.0]), np.array([-0.17, -0.2, 0.15]))
        can = _cyl_hit(o, d, (0.05, 0.0), 0.04, 0.10)
        post = _box_hit(o, d, np.array([0.1, 0.3, -0.7]), np.array([0.2, 0.4, 0.25]))
        return [floor, table, near, can, post]

    return _cast(c, rot, hits, [(90, 90, 110), (160, 120, 80), (200, 40, 40), (40, 60, 200), (40, 160, 60)])


def test_an_object_hiding_its_own_footprint_is_kept_and_one_past_the_tables_far_edge_is_not():
    """The table under an object is mostly hidden by the object itself, and near the camera it
    is out of the image: the table seen farther up those image columns supports it. A post
    standing behind the table's far edge hides its footprint too, but no table lies beyond it."""
    frame, ids, _ = render_near_and_behind()
    near_box = ids == 2
    assert near_box[-1].any() and near_box[:, 0].any()  # cut by the image's bottom and left edges
    assert (ids == 4).sum() > 100 and (ids == 0).sum() > 100  # the post and the floor are in view
    src = GeometricPromptSource()
    pr = src.prompts(frame)
    assert sorted(int(ids[int(y), int(x)]) for x, y in pr.points) == [2, 3]
    seg = src.last_segments
    post = seg.labels[ids == 4]
    lab = np.bincount(post[post > 0]).argmax()  # the post is a region, just not a supported one
    assert seg.support(seg.mask_of(lab)) < 0.2


def test_a_box_face_right_in_front_of_the_camera_is_not_taken_for_the_table():
    """A tall box 15 cm from a camera looking down at 15 degrees: its front face has twice the
    table's pixels but covers a few hundred cm^2; the table, seen at a grazing angle, is the
    plane that covers a table's area."""
    c = np.array([0.0, -0.6, 0.3])
    rot = _look_from(c, np.array([0.0, 0.5, 0.0]))

    def hits(o, d):
        table = np.where(d[:, 2] < 0, -o[2] / d[:, 2], np.inf)
        box = _box_hit(o, d, np.array([-0.02, -0.45, 0.0]), np.array([0.14, -0.35, 0.32]))
        return [table, box]

    frame, ids, normal = _cast(c, rot, hits, [(160, 120, 80), (200, 40, 40)])
    assert (ids == 1).sum() > 1.5 * (ids == 0).sum()
    tp = fit_table_plane(frame)
    face = max(tp.candidates, key=lambda cd: cd.count)
    assert abs(float(face.normal @ normal)) < 0.5 and face.area < GeometricConfig().table_min_area
    assert float(tp.normal @ normal) > 0.99
    assert abs(tp.coefficients[3] - 0.3) < 0.01  # the camera is 0.3 m above the table
    assert tp.inliers[ids == 0].mean() > 0.9 and (tp.height[ids == 1] > 0.05).mean() > 0.9


def _wall_scene(against: bool = False):
    """A table in front of a wall that rises from its back and left edges, seen diagonally from
    0.35 m up: the wall fills half the image and runs out of it at the top and both sides.
    ids: 0 floor, 1 table, 2 wall, 3 box, 4 can (5: a box standing against the wall)."""
    c = np.array([0.25, -0.2, 0.35])
    rot = _look_from(c, np.array([-0.15, 0.25, 0.0]))

    def hits(o, d):
        floor = np.where(d[:, 2] < 0, (-0.7 - o[2]) / d[:, 2], np.inf)
        table = _box_hit(o, d, np.array([-0.22, -0.8, -0.03]), np.array([0.6, 0.6, 0.0]))
        wall = _box_hit(o, d, np.array([-0.4, -3.0, -0.7]), np.array([-0.22, 3.0, 2.0]))
        box = _box_hit(o, d, np.array([0.0, 0.0, 0.0]), np.array([0.08, 0.08, 0.1]))
        can = _cyl_hit(o, d, (0.15, 0.2), 0.04, 0.10)
        out = [floor, table, wall, box, can]
        if against:
            out.append(_box_hit(o, d, np.array([-0.22, 0.05, 0.0]), np.array([-0.15, 0.13, 0.12])))
        return out

    colours = [(90, 90, 110), (160, 120, 80), (230, 230, 225), (200, 40, 40), (40, 60, 200), (40, 160, 60)]
    return _cast(c, rot, hits, colours[:6 if against else 5])


def test_a_wall_beside_the_table_is_not_an_object_but_a_near_wide_box_is():
    """The wall rises right from the table, so the table-support test keeps it (wall_area = 0);
    its size, running out of the image on three sides and facing sideways, drop it. A wide box
    near the camera is as big and cut by three borders too, but its top faces up."""
    frame, ids, _ = _wall_scene()
    wall = ids == 2
    assert wall.mean() > 0.3 and wall[0].any() and wall[:, 0].any() and wall[:, -1].any()

    def objects(f, truth, cfg):
        pr = GeometricPromptSource(cfg).prompts(f)
        return sorted(int(truth[int(y), int(x)]) for x, y in pr.points)

    assert objects(frame, ids, GeometricConfig()) == [3, 4]
    assert 2 in objects(frame, ids, GeometricConfig(wall_area=0.0))

    c = np.array([0.0, -0.5, 0.45])
    rot = _look_from(c, np.array([0.0, 0.15, 0.0]))

    def hits(o, d):
        table = np.where(d[:, 2] < 0, -o[2] / d[:, 2], np.inf)
        return [table, _box_hit(o, d, np.array([-0.3, -0.3, 0.0]), np.array([0.3, -0.1, 0.08]))]

    frame, ids, _ = _cast(c, rot, hits, [(160, 120, 80), (200, 40, 40)])
    box = ids == 1
    assert box.mean() > 0.3 and box[-1].any() and box[:, 0].any() and box[:, -1].any()
    assert objects(frame, ids, GeometricConfig()) == [1]


def _rim_roots(o, d, centre, r):
    """Entry and exit distances of rays through an infinite upright cylinder (inf / -inf: miss)."""
    ox, oy = o[0] - centre[0], o[1] - centre[1]
    a = d[:, 0] ** 2 + d[:, 1] ** 2
    b = 2 * (ox * d[:, 0] + oy * d[:, 1])
    c = ox ** 2 + oy ** 2 - r ** 2
    disc = b ** 2 - 4 * a * c
    s = np.sqrt(np.maximum(disc, 0))
    return np.where(disc >= 0, (-b - s) / (2 * a), np.inf), np.where(disc >= 0, (-b + s) / (2 * a), -np.inf)


def _mug_hits(o, d, centre, r_in, r_out, top, bottom):
    """Outer wall, rim, inner wall and floor of an open cylinder (a mug without handle) whose
    floor is `bottom` above the table."""
    def z(t):
        return o[2] + t * d[:, 2]

    def rho(t):
        return np.hypot(o[0] + t * d[:, 0] - centre[0], o[1] + t * d[:, 1] - centre[1])

    t_out, _ = _rim_roots(o, d, centre, r_out)
    outer = np.where((t_out > 0) & (z(t_out) >= 0) & (z(t_out) <= top), t_out, np.inf)
    t_top = (top - o[2]) / d[:, 2]
    rim = np.where((t_top > 0) & (rho(t_top) >= r_in) & (rho(t_top) <= r_out), t_top, np.inf)
    through = (t_top > 0) & (rho(t_top) < r_in)
    _, t_exit = _rim_roots(o, d, centre, r_in)
    inner = np.where(through & (t_exit > t_top) & (z(t_exit) >= bottom) & (z(t_exit) <= top), t_exit, np.inf)
    t_bot = (bottom - o[2]) / d[:, 2]
    floor = np.where(through & (t_bot > t_top) & (rho(t_bot) < r_in), t_bot, np.inf)
    return [outer, rim, inner, floor]


@pytest.mark.parametrize("noise", [0.0, 0.0015])
def test_a_bowl_seen_into_is_one_object_with_its_inside_and_touching_cans_stay_apart(noise):
    """A red bowl (an open cylinder, 12 cm wide, 5 cm high) with a white inside, seen from 45
    degrees: its rim occludes the inside, and the floor inside is 4 mm up, below min_height.
    Without hollow_fit it falls into pieces; with it, one prompt and one mask (IoU > 0.9 with
    the whole bowl, its floor included). Three touching cans of one radius fit no single
    surface of revolution, so they stay three."""
    c = np.array([0.0, -0.4, 0.45])
    rot = _look_from(c, np.array([0.0, 0.05, 0.0]))

    def hits(o, d):
        table = np.where(d[:, 2] < 0, -o[2] / d[:, 2], np.inf)
        return [table, *_mug_hits(o, d, (-0.03, 0.05), 0.055, 0.06, 0.05, 0.004),
                _cyl_hit(o, d, (0.1, 0.02), 0.035, 0.11)]

    colours = [(160, 120, 80), (200, 40, 40), (200, 40, 40), (235, 235, 230), (235, 235, 230), (40, 60, 200)]
    frame, ids, _ = _cast(c, rot, hits, colours, noise=noise)
    truth = np.where((ids >= 1) & (ids <= 4), 1, np.where(ids == 5, 2, 0))
    assert (ids == 3).sum() > 300 and (ids == 4).sum() > 100  # the inside and its floor are in view

    def run(cfg):
        pr = GeometricPromptSource(cfg).prompts(frame)
        seg = GeometricSegmenter(cfg)
        seg.set_frame(frame)
        masks = seg.decode(pr).masks[:, 0]
        objs = [int(truth[int(y), int(x)]) for x, y in pr.points]
        return objs, [_iou(m, truth == k) for m, k in zip(masks, objs)], masks

    objs, ious, masks = run(GeometricConfig())
    assert sorted(objs) == [1, 2]
    assert min(ious) > 0.9
    assert masks[objs.index(1)][ids == 4].mean() > 0.9  # the floor, at table height
    objs, ious, _ = run(GeometricConfig(hollow_fit=0.0))
    assert objs.count(1) >= 2 and max(i for i, k in zip(ious, objs) if k == 1) < 0.5

    # The sensor loses the middle of the near rim (real D435 frames of white bowls): it reads as
    # table, so the walls no longer enclose the floor, and only the wall's own surface of
    # revolution says where its inside is.
    table_only, _, _ = _cast(c, rot, lambda o, d: [np.where(d[:, 2] < 0, -o[2] / d[:, 2], np.inf)],
                             [(160, 120, 80)])
    wall = (ids == 1) | (ids == 2)
    cols = np.nonzero(wall.any(0))[0]
    mid = np.abs(np.arange(W) - cols.mean()) < 0.25 * (cols.max() - cols.min())
    lost = wall & mid[None, :] & (np.arange(H)[:, None] > np.median(np.nonzero(ids == 4)[0]))
    assert lost.sum() > 100
    depth = np.where(lost, table_only.depth, frame.depth)
    frame = Frame(rgb=frame.rgb, depth=depth.astype(np.float32), intrinsics=K)
    truth[lost] = 0
    objs, ious, masks = run(GeometricConfig())
    assert sorted(objs) == [1, 2]
    assert masks[objs.index(1)][ids == 4].mean() > 0.9

    def cans(o, d):
        table = np.where(d[:, 2] < 0, -o[2] / d[:, 2], np.inf)
        return [table] + [_cyl_hit(o, d, (x, 0.03), 0.035, 0.08) for x in (0.03, 0.1, -0.04)]

    frame, ids, _ = _cast(c, rot, cans, [(160, 120, 80), (200, 40, 40), (40, 60, 200), (40, 160, 60)], noise=noise)
    pr = GeometricPromptSource(GeometricConfig()).prompts(frame)
    assert sorted(int(ids[int(y), int(x)]) for x, y in pr.points) == [1, 2, 3]


def test_pieces_of_a_wall_go_with_it_and_a_box_against_it_stays():
    """The sensor cuts a piece out of the wall (a ring of invalid depth, as on the real D435 frames
    000000123 and 000000130 of d435_transparent, whose wall left coloured fragments): the piece is
    too small for the wall test, rises right from the table like the wall, so only its lying in
    the wall's plane tells it. A box standing against the wall rises from that plane and stays."""
    frame, ids, _ = _wall_scene(against=True)
    wall = ids == 2
    island = np.zeros(wall.shape, bool)
    island[30:70, 10:50] = True
    island &= wall
    assert island.sum() > 1000 and (ids == 5).sum() > 300
    ring = cv2.dilate(island.astype(np.uint8), np.ones((33, 33), np.uint8)).astype(bool) & ~island & wall
    frame = Frame(rgb=frame.rgb, depth=np.where(ring, 0.0, frame.depth).astype(np.float32), intrinsics=K)
    src = GeometricPromptSource(GeometricConfig())
    pr = src.prompts(frame)
    assert sorted(int(ids[int(y), int(x)]) for x, y in pr.points) == [3, 4, 5]
    # The island is a region of its own that passes the support test: without the wall-plane test
    # it would be a prompt.
    seg = src.last_segments
    k = np.bincount(seg.labels[island]).argmax()
    assert k > 0 and (seg.labels == k)[island].mean() > 0.8
    m, sl = seg.mask_of(int(k)), seg.box_of(int(k))
    assert seg.support(m, sl) >= GeometricConfig().min_support and not seg.is_wall(m, sl, 0.15)


def test_surface_of_revolution_fit_recovers_a_bowl_and_refuses_boxes_and_stacks():
    """_fit_revolution on points of a conical bowl wall (radius 4 cm at the foot to 6 cm at the
    rim, axis at (0.10, -0.20)), seen over 200 degrees with 1 mm noise: axis within 2 mm, radius
    at foot and rim within 2 mm. Two faces of a box fit no such surface within the tolerance;
    pieces of the bowl's wall do, and a can standing beside it does not share its surface."""
    from uois_sam_ros.core.segment.geometric import _fit_revolution, _hollow_fit, _one_revolution

    rng = np.random.default_rng(3)
    th = rng.uniform(np.deg2rad(-10), np.deg2rad(190), 600)
    h = rng.uniform(0.0, 0.06, 600)
    r = 0.04 + h / 0.06 * 0.02
    wall = np.stack([0.10 + r * np.cos(th), -0.20 + r * np.sin(th), h], 1)
    wall[:, :2] += rng.normal(0.0, 0.001, (600, 2))
    rev = _fit_revolution(wall)
    assert rev is not None
    assert abs(rev.cu - 0.10) < 0.002 and abs(rev.cv + 0.20) < 0.002
    assert abs(rev.radius_at(np.array([0.0]))[0] - 0.04) < 0.002
    assert abs(rev.radius_at(np.array([0.06]))[0] - 0.06) < 0.002
    assert _hollow_fit(wall, 0.08, 0.6, 150.0) is not None
    assert _hollow_fit(wall[th < np.deg2rad(50)], 0.08, 0.6, 150.0) is None  # too little of the circle
    left, right = wall[th < np.deg2rad(90)], wall[th >= np.deg2rad(90)]
    assert _one_revolution(left, right, 0.08, 0.6)

    # Two visible faces of a 10 cm box standing beside the bowl.
    s = rng.uniform(0.0, 0.1, 300)
    hb = rng.uniform(0.0, 0.08, 300)
    face1 = np.stack([0.25 + s, np.full(300, -0.25), hb], 1)
    face2 = np.stack([np.full(300, 0.25), -0.25 + s, hb], 1)
    box = np.concatenate([face1, face2])
    assert _hollow_fit(box, 0.08, 0.6, 150.0) is None
    # A can of the bowl's rim radius right beside it: its own axis, not the bowl's.
    tc = rng.uniform(np.deg2rad(-10), np.deg2rad(190), 300)
    can = np.stack([0.22 + 0.05 * np.cos(tc), -0.20 + 0.05 * np.sin(tc), rng.uniform(0.0, 0.06, 300)], 1)
    assert not _one_revolution(wall, can, 0.08, 0.6)
