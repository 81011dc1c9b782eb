"""Synthetic scene generator: determinism, label/amodal consistency, geometry, dataset layout."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from uois_sam_ros.core.data import rle
from uois_sam_ros.core.data.synthetic import SceneConfig, generate_scene, main, write_uoais_dataset

SMALL = SceneConfig(width=160, height=120, min_objects=4, max_objects=10)


@pytest.fixture(scope="module")
def scenes():
    return [generate_scene(s, SMALL) for s in range(6)]


def test_same_seed_same_scene_and_different_seed_differs():
    a, b = generate_scene(3, SMALL), generate_scene(3, SMALL)
    for f in ("rgb", "depth", "depth_clean", "label", "amodal", "occlusion", "ids", "cam_to_world"):
        np.testing.assert_array_equal(getattr(a, f), getattr(b, f), err_msg=f)
    assert a.intrinsics == b.intrinsics
    c = generate_scene(4, SMALL)
    assert not np.array_equal(a.rgb, c.rgb)


def test_outputs_have_documented_types_and_shapes(scenes):
    for s in scenes:
        h, w = 120, 160
        assert s.rgb.shape == (h, w, 3) and s.rgb.dtype == np.uint8
        assert s.depth.shape == (h, w) and s.depth.dtype == np.float32
        assert s.label.dtype == np.uint16
        n = len(s.ids)
        assert s.amodal.shape == (n, h, w) and s.amodal.dtype == bool
        assert s.occlusion.shape == (n,)
        np.testing.assert_array_equal(s.ids, np.arange(1, n + 1))
        assert set(np.unique(s.label)) <= {0, *s.ids.tolist()}
        assert (s.intrinsics.width, s.intrinsics.height) == (w, h)
        s.frame().validate(need_depth=True, need_intrinsics=True)
        assert s.sample().label is s.label
    assert sum(len(s.ids) for s in scenes) >= 12


def test_visible_is_inside_amodal_and_occlusion_rate_matches(scenes):
    occluded = 0
    for s in scenes:
        for k, i in enumerate(s.ids):
            vis = s.label == i
            assert vis.sum() >= SMALL.min_visible_px
            assert not (vis & ~s.amodal[k]).any(), "visible mask leaks outside the amodal mask"
            expected = 1.0 - vis.sum() / s.amodal[k].sum()
            assert s.occlusion[k] == pytest.approx(expected, abs=1e-9)
            assert 0.0 <= s.occlusion[k] < 1.0
            occluded += s.occlusion[k] > 0.05
    assert occluded >= 2, "the generator should produce occlusions"


def _world_points(s, depth):
    h, w = depth.shape
    K = s.intrinsics.K
    v, u = np.mgrid[0:h, 0:w]
    x = (u - K[0, 2]) / K[0, 0] * depth  # integer pixel coordinates are pixel centres
    y = (v - K[1, 2]) / K[1, 1] * depth
    pc = np.stack([x, y, depth], -1)
    return pc @ s.cam_to_world[:3, :3].T + s.cam_to_world[:3, 3]


def test_depth_matches_rendered_geometry(scenes):
    table_px = 0
    for s in scenes:
        pts = _world_points(s, s.depth_clean.astype(np.float64))
        hit = s.depth_clean > 0
        # each object's pixels back-project into that object's bounding box, above the table
        for k, i in enumerate(s.ids):
            o = s.meta["objects"][k]
            p = pts[s.label == i]
            assert (p >= np.array(o["aabb_min"]) - 2e-3).all() and (p <= np.array(o["aabb_max"]) + 2e-3).all()
        # background hits lie on the table top (z = 0), the floor, or the wall behind
        bg = hit & (s.label == 0)
        on_table = np.abs(pts[..., 2]) < 1e-4
        on_floor = np.abs(pts[..., 2] - s.meta["floor_z"]) < 1e-4
        table_px += int((bg & on_table).sum())
        assert (bg & (on_table | on_floor)).sum() >= 0.5 * bg.sum()
        # the sensor model: noisy depth stays close to the exact depth where it is valid
        valid = s.depth > 0
        assert valid.mean() > 0.6
        err = np.abs(s.depth[valid] - s.depth_clean[valid])
        assert np.all(err < 0.03 * s.depth_clean[valid] ** 2 + 0.002)
        assert np.median(err) < 0.005
        assert (s.depth[~hit] == 0).all()
    assert table_px > 0.2 * sum(s.label.size for s in scenes)


def test_bad_config_is_reported():
    with pytest.raises(ValueError, match="min_objects"):
        generate_scene(0, SceneConfig(min_objects=3, max_objects=2))
    with pytest.raises(ValueError, match="unknown shape"):
        generate_scene(0, SceneConfig(shapes=("teapot",)))


def test_uoais_dataset_round_trip_through_the_reader(tmp_path):
    from uois_sam_ros.core.data.datasets import open_dataset

    cfg = SceneConfig(width=160, height=120, min_objects=3, max_objects=6)
    ann = write_uoais_dataset(tmp_path, 2, seed=11, cfg=cfg)
    doc = json.loads(ann.read_text())
    assert [im["file_name"] for im in doc["images"]] == ["color/000000.png", "color/000001.png"]
    cam = json.loads((tmp_path / "camera.json").read_text())
    assert {"fx", "fy", "cx", "cy", "width", "height"} <= set(cam)
    ds = open_dataset("uoais-sim", tmp_path, ann)
    assert len(ds) == 2
    for i in range(2):
        ref = generate_scene(11 + i, cfg)
        got = ds[i]
        np.testing.assert_array_equal(got.rgb, ref.rgb)
        np.testing.assert_array_equal(got.label, ref.label)
        np.testing.assert_array_equal(got.amodal, ref.amodal)
        np.testing.assert_allclose(got.depth, ref.depth, atol=1e-6)
        assert got.intrinsics.fx == pytest.approx(ref.intrinsics.fx)
        raw = cv2.imread(str(tmp_path / "depth" / f"{i:06d}.png"), cv2.IMREAD_UNCHANGED)
        assert raw.dtype == np.uint16
    for a in doc["annotations"]:
        vis = rle.decode(a["visible_mask"])
        occ = rle.decode(a["occluded_mask"])
        am = rle.decode(a["segmentation"])
        assert not (vis & occ).any() and np.array_equal(vis | occ, am)
        assert a["occluded_rate"] == pytest.approx(1 - vis.sum() / am.sum())
        x, y, w, h = a["visible_bbox"]
        ys, xs = np.nonzero(vis)
        assert (x, y, w, h) == (xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1)


def test_synth_cli(tmp_path, capsys):
    assert main(["--out", str(tmp_path / "d"), "--num", "1", "--width", "96", "--height", "72"]) == 0
    assert (tmp_path / "d" / "annotations.json").is_file()
    assert main(["--out", str(tmp_path / "e"), "--num", "0"]) == 2
    assert "--num must be at least 1" in capsys.readouterr().err
