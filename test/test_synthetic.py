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
        # the sensor model: noisy depth stays close to the exact depth where it is valid (transparent
        # objects are left out: where they have depth at all, it is often the surface behind them)
        glass = np.isin(s.label, [i for k, i in enumerate(s.ids) if s.meta["objects"][k]["transparent"]])
        valid = (s.depth > 0) & ~glass
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
    with pytest.raises(ValueError, match="SceneConfig.floor_drop must be a range"):
        generate_scene(0, SceneConfig(floor_drop=(0.8, 0.4)))
    with pytest.raises(ValueError, match="SceneConfig.pile_prob must be a probability"):
        generate_scene(0, SceneConfig(pile_prob=1.5))
    with pytest.raises(ValueError, match="SceneConfig.table_size"):
        generate_scene(0, SceneConfig(table_size=(0.0, 1.0)))
    with pytest.raises(ValueError, match="table thickness"):
        generate_scene(0, SceneConfig(floor_drop=(0.01, 0.5)))


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


# ----------------------------------------------------------------------------- variety (issue 11)

def _cast_alone(s, k: int) -> np.ndarray:
    """Depth of object ids[k] rendered alone (inf where it is not hit), through pixel centres."""
    import open3d as o3d

    v, t = s.object_meshes[k]
    sc = o3d.t.geometry.RaycastingScene()
    sc.add_triangles(o3d.core.Tensor(v.astype(np.float32)), o3d.core.Tensor(t.astype(np.uint32)))
    h, w = s.label.shape
    K, T = s.intrinsics.K, s.cam_to_world
    vv, uu = np.mgrid[0:h, 0:w]
    d = np.stack([(uu - K[0, 2]) / K[0, 0], (vv - K[1, 2]) / K[1, 1], np.ones((h, w))], -1) @ T[:3, :3].T
    rays = np.concatenate([np.broadcast_to(T[:3, 3], d.shape), d], -1).astype(np.float32)
    return sc.cast_rays(o3d.core.Tensor(rays))["t_hit"].numpy()


def test_visible_label_is_the_nearest_object_where_there_is_depth(scenes):
    """Each labelled pixel shows the object nearest the camera along its ray, at that object's depth;
    background pixels have no (kept) object in front of the surface they show."""
    checked = 0
    for s in scenes:
        per_obj = np.stack([_cast_alone(s, k) for k in range(len(s.ids))]) if len(s.ids) else np.full(
            (1, *s.label.shape), np.inf)
        nearest = per_obj.min(0)
        hit = s.depth_clean > 0
        lab = (s.label > 0) & hit
        expect = np.where(np.isfinite(nearest), per_obj.argmin(0) + 1, 0)
        agree = (s.label == expect)[lab]
        assert agree.mean() > 0.995  # float ties at silhouettes only
        np.testing.assert_allclose(nearest[lab][agree], s.depth_clean[lab][agree], atol=1e-4)
        bg = (s.label == 0) & hit
        assert (nearest[bg] >= s.depth_clean[bg] - 1e-4).mean() > 0.995
        checked += int(lab.sum())
    assert checked > 1000


def test_amodal_contains_visible_and_matches_the_object_alone(scenes):
    for s in scenes:
        for k, i in enumerate(s.ids):
            alone = np.isfinite(_cast_alone(s, k))
            vis = s.label == i
            assert not (vis & ~s.amodal[k]).any()
            assert (s.amodal[k] ^ alone).sum() <= max(2, 0.002 * alone.sum())


FLOOR = SceneConfig(width=160, height=120, min_objects=1, max_objects=3, floor_drop=(0.55, 0.55),
                    table_size=(0.55, 0.7), distance=(1.2, 1.3), elevation_deg=(35.0, 45.0), topdown_prob=0.0,
                    wall_prob=0.0, background_clutter=(0, 0), aim_jitter=0.0)


def test_floor_lies_the_configured_height_below_the_table_top():
    for seed in range(3):
        s = generate_scene(seed, FLOOR)
        assert s.meta["floor_z"] == pytest.approx(-0.55)
        bg = s.label == 0
        for depth, tol, need in ((s.depth_clean.astype(np.float64), 1e-4, 0.05),
                                 (s.depth.astype(np.float64), 0.02, 0.03)):
            pts = _world_points(s, depth)
            ok = (depth > 0) & bg
            z = pts[..., 2][ok]
            table = np.abs(z) < tol
            floor = np.abs(z + 0.55) < tol
            assert table.sum() > need * s.label.size and floor.sum() > need * s.label.size, (seed, tol)
            # the two planes are parallel: the table top is level and the floor 0.55 m below it
            assert np.median(z[floor]) - np.median(z[table]) == pytest.approx(-0.55, abs=tol)
        # the table edge is in view: floor pixels sit beside table pixels somewhere in the image
        pts = _world_points(s, s.depth_clean.astype(np.float64))
        tab = (np.abs(pts[..., 2]) < 1e-4) & (s.depth_clean > 0)
        flo = (np.abs(pts[..., 2] + 0.55) < 1e-4) & (s.depth_clean > 0)
        near_floor = cv2.dilate(flo.astype(np.uint8), np.ones((9, 9), np.uint8)).astype(bool)
        assert (tab & near_floor).any()


def test_no_floor_config_has_nothing_below_the_table():
    s = generate_scene(2, SceneConfig(width=160, height=120, floor=False, wall_prob=0.0))
    assert s.meta["floor_z"] is None and s.meta["clutter"] == 0
    pts = _world_points(s, s.depth_clean.astype(np.float64))
    hit = s.depth_clean > 0
    assert (pts[..., 2][hit] > -0.06).all()  # table top and its edge only
    assert (~hit).any()


def test_transparent_objects_lose_most_of_their_depth():
    cfg = SceneConfig(width=160, height=120, min_objects=4, max_objects=8, transparent_prob=1.0,
                      transparent_fraction=1.0, shapes=("bottle", "cup", "cylinder", "bowl", "mug", "box"))
    seen = 0
    for seed in range(4):
        s = generate_scene(seed, cfg)
        for k, i in enumerate(s.ids):
            o = s.meta["objects"][k]
            vis = s.label == i
            assert o["transparent"], o["kind"]  # every object of these kinds was made transparent
            assert (s.depth_clean[vis] > 0).all()  # the geometry is there and labelled ...
            if vis.sum() >= 60:
                assert (s.depth[vis] == 0).mean() > 0.5  # ... but the sensor mostly sees no depth on it
                seen += 1
    assert seen >= 4
    # opaque scenes keep most of their object depth
    s = generate_scene(0, SceneConfig(width=160, height=120, min_objects=4, max_objects=8, transparent_prob=0.0))
    fg = s.label > 0
    assert not any(o["transparent"] for o in s.meta["objects"])
    assert (s.depth[fg] > 0).mean() > 0.6


def _object_colour_spread(s) -> list[tuple[float, float]]:
    """(colour std, mean high-pass magnitude) inside each object's eroded visible mask, uint8 units."""
    f = s.rgb.astype(np.float32)
    fine = np.abs(f - cv2.GaussianBlur(f, (0, 0), 2.0)).mean(2)  # patterns, not shading across faces
    out = []
    for i in s.ids:
        inner = cv2.erode((s.label == i).astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
        if inner.sum() >= 150:
            out.append((float(f[inner].std(0).mean()), float(fine[inner].mean())))
    return out


def test_textured_objects_vary_in_colour_and_solid_ones_much_less():
    base = dict(width=320, height=240, min_objects=5, max_objects=8, transparent_prob=0.0, specular=(0.0, 0.0),
                shapes=("box", "book", "cylinder"), camouflage_prob=0.0, image_noise=(0.004, 0.004))
    tex = np.array([v for seed in range(3) for v in _object_colour_spread(generate_scene(seed, SceneConfig(
        **base, object_texture_prob=1.0)))])
    solid = np.array([v for seed in range(3) for v in _object_colour_spread(generate_scene(seed, SceneConfig(
        **base, object_texture_prob=0.0)))])
    assert len(tex) >= 6 and len(solid) >= 6
    assert np.median(tex[:, 0]) > 15.0  # patterns, labels, text: a wide spread of colours inside each object
    assert np.median(tex[:, 1]) > 4.0  # ... with fine detail
    assert np.median(tex[:, 1]) > 2.0 * np.median(solid[:, 1])  # solid ones vary by shading and noise only


def test_scenes_differ_in_table_and_object_textures(scenes):
    more = [generate_scene(s, SMALL) for s in range(6, 12)]
    tables = {s.meta["table"]["texture"] for s in scenes + more}
    assert len(tables) >= 3
    kinds = {o["texture"] for s in scenes for o in s.meta["objects"]}
    assert len(kinds) >= 5


def test_objects_rest_on_the_table_or_on_their_support_and_some_are_stacked():
    stacked_scenes = 0
    cfg = SceneConfig(width=160, height=120, min_objects=6, max_objects=12)
    for seed in range(12):
        s = generate_scene(seed, cfg)
        objs = s.meta["objects"]
        stacked = False
        for o in objs:
            if o["support"] == 0:
                assert o["aabb_min"][2] == pytest.approx(0.0, abs=1e-6)  # on the table top
            elif o["support"] > 0:
                base = objs[o["support"] - 1]
                assert o["aabb_min"][2] == pytest.approx(base["aabb_max"][2], abs=1e-6)  # on top of its support
                stacked = True
        stacked_scenes += stacked
    assert 3 <= stacked_scenes <= 11


def test_dense_piles_occlude_heavily():
    pile = SceneConfig(width=160, height=120, min_objects=10, max_objects=14, pile_prob=1.0)
    spread = SceneConfig(width=160, height=120, min_objects=10, max_objects=14, pile_prob=0.0,
                         spread=(0.3, 0.35), touch_prob=0.0, stack_prob=0.0)
    occ_pile = np.concatenate([generate_scene(s, pile).occlusion for s in range(4)])
    occ_spread = np.concatenate([generate_scene(s, spread).occlusion for s in range(4)])
    assert all(generate_scene(s, pile).meta["pile"] for s in range(2))
    assert occ_pile.mean() > occ_spread.mean() + 0.05
    assert (occ_pile > 0.3).mean() > 0.15


def test_objects_are_cut_by_the_image_border_in_some_scenes():
    cut = 0
    for s in range(8):
        sc = generate_scene(s, SMALL)
        for i in sc.ids:
            vis = sc.label == i
            on_border = vis[0].any() or vis[-1].any() or vis[:, 0].any() or vis[:, -1].any()
            cut += bool(on_border)
    assert cut >= 3


def test_camera_poses_follow_the_config():
    cfg = SceneConfig(width=96, height=72, distance=(0.6, 0.7), elevation_deg=(30.0, 40.0), topdown_prob=0.0,
                      roll_deg=0.0, min_objects=2, max_objects=3)
    for seed in range(4):
        s = generate_scene(seed, cfg)
        z_axis = s.cam_to_world[:3, 2]
        elev = np.degrees(np.arcsin(-z_axis[2]))
        assert 30.0 - 1e-6 <= elev <= 40.0 + 1e-6
        assert s.meta["camera"]["elevation_deg"] == pytest.approx(elev)
        assert abs(s.cam_to_world[2, 0]) < 1e-9  # no roll: image x axis is horizontal
        assert s.cam_to_world[2, 1] < 0  # image y points down in the world


def test_stereo_shadow_is_on_the_left_of_near_objects_and_noise_grows_with_distance():
    shadow_lost, mirror_lost = [], []
    near_err, far_err = [], []
    cfg = SceneConfig(min_objects=6, max_objects=10, hole_fraction=(0.0, 0.0), speckle_prob=0.0,
                      transparent_prob=0.0, dark_holes=(0.0, 0.0), left_band_prob=0.0, edge_dropout_px=(0, 0))
    for seed in range(3):
        s = generate_scene(seed, cfg)
        fg = s.label > 0
        z = s.depth_clean
        # background pixels not touching an object with an object pixel k = 2..6 px to their right
        # (left) whose disparity exceeds theirs by more than k + 1 px even at the smallest baseline:
        # the right imager cannot see them (it can)
        away = ~cv2.dilate(fg.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool) & (z > 0)
        disp = np.where(z > 0, s.intrinsics.fx * cfg.baseline[0] / np.maximum(z, 1e-6), 0.0)
        shadowed = np.zeros_like(fg)
        mirrored = np.zeros_like(fg)
        for k in range(2, 7):
            shadowed[:, :-k] |= fg[:, k:] & (disp[:, k:] - disp[:, :-k] > k + 1)
            mirrored[:, k:] |= fg[:, :-k] & (disp[:, :-k] - disp[:, k:] > k + 1)
        shadow_lost.append(s.depth[away & shadowed] == 0)
        mirror_lost.append(s.depth[away & mirrored & ~shadowed] == 0)
        ok = (s.depth > 0) & (z > 0)
        err = np.abs(s.depth - z)
        near_err.append(err[ok & (z < 0.8)])
        far_err.append(err[ok & (z > 1.6)])
    shadow_lost, mirror_lost = np.concatenate(shadow_lost), np.concatenate(mirror_lost)
    assert len(shadow_lost) > 50 and len(mirror_lost) > 50
    assert shadow_lost.mean() > 0.9 and mirror_lost.mean() < 0.2
    near_err, far_err = np.concatenate(near_err), np.concatenate(far_err)
    assert len(near_err) > 100 and len(far_err) > 100
    assert np.mean(far_err) > 2 * np.mean(near_err)
    # metric depth is quantised to millimetres, as RealSense z16
    q = s.depth[s.depth > 0].astype(np.float64) * 1000
    assert np.abs(q - np.round(q)).max() < 1e-3


def test_shapes_of_every_kind_render():
    from uois_sam_ros.core.data.synthetic import SHAPES

    seen = set()
    for seed in range(8):
        s = generate_scene(seed, SceneConfig(width=160, height=120, min_objects=12, max_objects=16))
        seen |= set(s.shapes)
    assert len(seen) >= len(SHAPES) - 3
    for kind in ("marker", "pad", "plate", "cutlery"):
        s = generate_scene(1, SceneConfig(width=160, height=120, min_objects=3, max_objects=3, shapes=(kind,),
                                          lean_prob=0.0))
        assert set(s.shapes) == {kind}
        for o in s.meta["objects"]:
            ext = np.subtract(o["aabb_max"], o["aabb_min"])
            assert ext[2] < 0.035 and ext[:2].max() > 2.5 * ext[2]  # thin and flat things lie flat
