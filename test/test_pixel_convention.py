"""One pixel-coordinate convention: integer coordinates are pixel centres (x right, y down).

The synthetic renderer, the depth back-projection (core.segment.geometric), HPG's peaks and the
prompts SAM receives all use it, so a pixel found in an image back-projects to the 3D point the
renderer drew there.
"""

from __future__ import annotations

import numpy as np
import pytest

from uois_sam_ros.core.config import HPGConfig
from uois_sam_ros.core.data.synthetic import SceneConfig, generate_scene
from uois_sam_ros.core.segment.geometric import _backproject
from uois_sam_ros.core.segment.hpg import select_peaks
from uois_sam_ros.core.types import Frame


@pytest.fixture(scope="module")
def scene():
    return generate_scene(11, SceneConfig(width=160, height=120, min_objects=2, max_objects=3))


def _to_world(s, pts_cam: np.ndarray) -> np.ndarray:
    return pts_cam @ s.cam_to_world[:3, :3].T + s.cam_to_world[:3, 3]


def test_a_table_point_at_a_known_position_round_trips(scene):
    """Pick pixels, intersect their centre rays with the table plane z = 0 analytically (the known
    3D points), and check that the renderer's depth there and the back-projection agree."""
    s = scene
    k = s.intrinsics
    R, t = s.cam_to_world[:3, :3], s.cam_to_world[:3, 3]
    checked = 0
    for v0, u0 in zip(*np.nonzero((s.label == 0) & (s.depth_clean > 0))):
        ray_w = R @ np.array([(u0 - k.cx) / k.fx, (v0 - k.cy) / k.fy, 1.0])
        if abs(ray_w[2]) < 1e-6:
            continue
        lam = -t[2] / ray_w[2]  # depth along the optical axis: the camera-frame z of the ray is 1
        known = t + lam * ray_w
        if lam <= 0 or abs(s.depth_clean[v0, u0] - lam) > 1e-3:
            continue  # this pixel sees the floor or the wall, not the table
        frame = Frame(rgb=s.rgb, depth=s.depth_clean, intrinsics=k)
        p = _to_world(s, _backproject(s.depth_clean.astype(np.float64), frame)[v0, u0].astype(np.float64))
        np.testing.assert_allclose(p, known, atol=2e-5)  # float32 depth at < 1.5 m
        assert abs(s.depth_clean[v0, u0] - lam) < 2e-5
        checked += 1
        if checked >= 200:
            break
    assert checked >= 200


def test_back_projected_table_lies_on_the_table_plane_and_half_a_pixel_would_show(scene):
    s = scene
    frame = Frame(rgb=s.rgb, depth=s.depth_clean, intrinsics=s.intrinsics)
    pts = _to_world(s, _backproject(s.depth_clean.astype(np.float64), frame).astype(np.float64))
    table = (s.label == 0) & (np.abs(pts[..., 2]) < 1e-3)
    assert table.sum() > 0.2 * table.size
    assert np.abs(pts[..., 2][table]).max() < 5e-5
    # the other convention (pixel centre at u + 0.5) puts the same pixels measurably off the plane
    k = s.intrinsics
    shifted = Frame(rgb=s.rgb, depth=s.depth_clean, intrinsics=type(k)(k.fx, k.fy, k.cx - 0.5, k.cy - 0.5,
                                                                       k.width, k.height))
    off = _to_world(s, _backproject(s.depth_clean.astype(np.float64), shifted).astype(np.float64))
    assert np.median(np.abs(off[..., 2][table])) > 10 * np.median(np.abs(pts[..., 2][table]))


def test_an_object_centroid_back_projects_inside_the_object(scene):
    """A found object's pixel (its mask centroid) back-projects into that object's 3D box."""
    s = scene
    frame = Frame(rgb=s.rgb, depth=s.depth_clean, intrinsics=s.intrinsics)
    pts = _to_world(s, _backproject(s.depth_clean.astype(np.float64), frame).astype(np.float64))
    for k, i in enumerate(s.ids):
        ys, xs = np.nonzero(s.label == i)
        d = np.hypot(xs - xs.mean(), ys - ys.mean())
        j = int(np.argmin(d))  # the object pixel nearest its centroid
        o = s.meta["objects"][k]
        p = pts[ys[j], xs[j]]
        assert (p >= np.array(o["aabb_min"]) - 1e-4).all() and (p <= np.array(o["aabb_max"]) + 1e-4).all()


def test_hpg_peaks_are_pixel_centres_at_any_resolution():
    fg = np.ones((30, 40), np.float32)
    heat = np.zeros((30, 40), np.float32)
    heat[7, 12] = 1.0
    cfg = HPGConfig(fg_threshold=0.5, heatmap_threshold=0.1, top_k=5)
    same = select_peaks(fg, heat, cfg)
    np.testing.assert_array_equal(same.points, [[12.0, 7.0]])  # (x = column, y = row)
    # at twice the resolution the HPG cell (12, 7) covers pixels 24..25 x 14..15: its centre
    up = select_peaks(fg, heat, cfg, scale_to=(60, 80))
    np.testing.assert_allclose(up.points, [[24.5, 14.5]])
