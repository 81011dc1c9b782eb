"""Grasping for a Franka (core/grasp): frames, the graspnet conversion, instance clouds against
analytic geometry, the antipodal sampler on a rendered box, the grasp check, GSNet's absence,
and the uois-sam-grasp CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from grasp_scene_helper import bowl_mesh, box_mesh, box_scene, cylinder_mesh, lying_cylinder_mesh, render

from uois_sam_ros.core.config import ConfigError, GraspConfig, load_config
from uois_sam_ros.core.grasp import GraspPlanner
from uois_sam_ros.core.grasp.antipodal import nms, unseen_pad_share
from uois_sam_ros.core.grasp.check import CheckSummary, MeshGeometry, ObservedGeometry
from uois_sam_ros.core.grasp.cloud import Table, build_scene, revolution_axis, round_footprint
from uois_sam_ros.core.grasp.collision import collision_free
from uois_sam_ros.core.grasp.frames import (
    ExtrinsicError,
    matrix_to_quaternion,
    parse_extrinsic,
    quaternion_to_matrix,
    transform_points,
)
from uois_sam_ros.core.grasp.franka import (
    GRASPNET_TO_FRANKA,
    MAX_OPENING,
    TCP_OFFSET,
    franka_to_graspnet,
    franka_to_graspnet_row,
    graspnet_gripper_transform,
    graspnet_rows_to_poses,
    graspnet_to_franka,
    hand_pose,
    pose_from,
)
from uois_sam_ros.core.grasp.types import Grasp


def _table(scene) -> Table:
    up, off = scene.table_in_camera()
    return Table(up, off)


# ------------------------------------------------------------------------ frames and conversion


def test_graspnet_to_franka_on_a_hand_made_grasp():
    """A graspnet grasp approaching along camera +z, closing along camera +x, fingertips 2 cm past
    its translation: ours has z = approach, y = closing, x = y x z, origin at the fingertips."""
    approach, closing = np.array([0.0, 0.0, 1.0]), np.array([1.0, 0.0, 0.0])
    r_g = np.stack([approach, closing, np.cross(approach, closing)], axis=1)  # graspnet columns
    t_g, depth = np.array([0.1, -0.05, 0.5]), 0.02
    pose = graspnet_to_franka(r_g, t_g, depth)
    np.testing.assert_allclose(pose[:3, 2], approach, atol=1e-12)  # z = approach
    np.testing.assert_allclose(pose[:3, 1], closing, atol=1e-12)  # y = closing
    np.testing.assert_allclose(pose[:3, 0], [0.0, -1.0, 0.0], atol=1e-12)  # x = y x z = -height
    np.testing.assert_allclose(pose[:3, 3], [0.1, -0.05, 0.52], atol=1e-12)  # fingertips
    np.testing.assert_allclose(hand_pose(pose)[:3, 3], [0.1, -0.05, 0.52 - TCP_OFFSET], atol=1e-12)
    assert np.linalg.det(pose[:3, :3]) == pytest.approx(1.0)
    # the fixed rotation is +90 degrees about y, and the conversion is T_g @ G(depth)
    assert np.allclose(GRASPNET_TO_FRANKA, [[0, 0, 1], [0, 1, 0], [-1, 0, 0]]) and np.linalg.det(GRASPNET_TO_FRANKA) == 1
    np.testing.assert_allclose(pose, pose_from(r_g, t_g) @ graspnet_gripper_transform(depth), atol=1e-12)
    # round trip, and a GraspGroup row (score, width, height, depth, R row-major, t, object id)
    r_back, t_back = franka_to_graspnet(pose, depth)
    np.testing.assert_allclose(r_back, r_g, atol=1e-12)
    np.testing.assert_allclose(t_back, t_g, atol=1e-12)
    row = np.concatenate([[0.9, 0.05, 0.02, depth], r_g.reshape(-1), t_g, [3]])
    poses, widths, scores, obj = graspnet_rows_to_poses(row[None])
    np.testing.assert_allclose(poses[0], pose, atol=1e-12)
    assert (widths[0], scores[0], obj[0]) == (0.05, 0.9, 3)
    np.testing.assert_allclose(franka_to_graspnet_row(pose, 0.05, 0.9, depth, object_id=3), row, atol=1e-12)
    with pytest.raises(ValueError, match="17 columns"):
        graspnet_rows_to_poses(np.zeros((2, 16)))


def test_graspnet_conversion_keeps_the_axes_for_any_rotation():
    rng = np.random.default_rng(0)
    for _ in range(5):
        q = rng.normal(size=4)
        r_g = quaternion_to_matrix(q)
        pose = graspnet_to_franka(r_g, rng.normal(size=3), 0.03)
        np.testing.assert_allclose(pose[:3, 2], r_g[:, 0], atol=1e-12)
        np.testing.assert_allclose(pose[:3, 1], r_g[:, 1], atol=1e-12)
        np.testing.assert_allclose(pose[:3, 0], -r_g[:, 2], atol=1e-12)


def test_extrinsic_forms_and_known_transform():
    # camera 1 m above the base looking straight down (optical z = base -z), turned 90 deg about z
    r = np.array([[0.0, -1.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, -1.0]])
    t = np.eye(4)
    t[:3, :3], t[:3, 3] = r, (0.4, 0.1, 1.0)
    q = matrix_to_quaternion(r)
    np.testing.assert_allclose(quaternion_to_matrix(q), r, atol=1e-12)
    from7 = parse_extrinsic(" ".join(str(v) for v in [0.4, 0.1, 1.0, *q]))
    from16 = parse_extrinsic(",".join(str(v) for v in t.reshape(-1)))
    np.testing.assert_allclose(from7, t, atol=1e-12)
    np.testing.assert_allclose(from16, t, atol=1e-12)
    assert parse_extrinsic("") is None
    # a point 0.6 m in front of the camera is 0.4 m above the base, below the camera
    np.testing.assert_allclose(transform_points(from7, [0.0, 0.0, 0.6]), [[0.4, 0.1, 0.4]], atol=1e-12)
    g = Grasp(1, pose_from(np.eye(3), [0.0, 0.0, 0.6]), 0.05, 0.9)
    gb = g.transformed(from7)
    np.testing.assert_allclose(gb.position, [0.4, 0.1, 0.4], atol=1e-12)
    np.testing.assert_allclose(gb.approach, [0.0, 0.0, -1.0], atol=1e-12)  # straight down in the base
    with pytest.raises(ExtrinsicError, match="16 numbers"):
        parse_extrinsic("1 2 3")
    with pytest.raises(ExtrinsicError, match="not a rotation"):
        parse_extrinsic(" ".join(["2"] * 12 + ["0", "0", "0", "1"]))


# ------------------------------------------------------------------------ clouds vs geometry


def test_instance_clouds_match_box_and_cylinder_geometry():
    """Box (6 x 4 x 8 cm) and cylinder (r 3 cm, h 9 cm) on a table, rendered exactly: the clouds sit
    on the true surfaces, the top heights and the footprints match, the table plane is found."""
    box = box_mesh((0.06, 0.04, 0.08), 20.0, (-0.06, 0.0))
    cyl = cylinder_mesh(0.03, 0.09, (0.07, 0.02))
    sc = render([box, cyl], width=400, height=300, f=380.0)
    scene = build_scene(sc.depth, sc.intrinsics, sc.masks)
    up, off = sc.table_in_camera()
    assert scene.table is not None and float(scene.table.up @ up) > 0.999 and scene.table.offset == pytest.approx(off, abs=0.003)
    cam = sc.cam_to_world
    world = {k: transform_points(cam, c.points) for k, c in scene.instances.items()}
    # box: every point inside the true box (+2 mm), the top at 8 cm, the top face spans 6 x 4 cm
    local = (world[1] - [-0.06, 0.0, 0.0]) @ sc.rotations[0]
    assert np.all(np.abs(local[:, 0]) <= 0.032) and np.all(np.abs(local[:, 1]) <= 0.022)
    top = local[local[:, 2] > 0.075]
    assert np.median(top[:, 2]) == pytest.approx(0.08, abs=0.002)
    assert np.ptp(top[:, 0]) == pytest.approx(0.06, abs=0.008) and np.ptp(top[:, 1]) == pytest.approx(0.04, abs=0.008)
    # cylinder: side points at radius 3 cm from its axis, top at 9 cm, footprint circle found
    rad = np.linalg.norm(world[2][:, :2] - [0.07, 0.02], axis=1)
    side = world[2][:, 2] < 0.085
    assert np.median(rad[side]) == pytest.approx(0.03, abs=0.002) and rad.max() <= 0.033
    assert np.median(world[2][~side, 2]) == pytest.approx(0.09, abs=0.002)
    e1, e2 = scene.table.basis()
    q = np.stack([scene.instances[2].points @ e1, scene.instances[2].points @ e2], axis=1)
    from scipy.spatial import ConvexHull

    circle = round_footprint(q, q[ConvexHull(q).vertices])
    assert circle is not None and circle[1] == pytest.approx(0.03, abs=0.003)
    centre_cam = transform_points(np.linalg.inv(cam), [0.07, 0.02, 0.0])[0]
    assert np.linalg.norm(circle[0] - [centre_cam @ e1, centre_cam @ e2]) < 0.004
    # centroid and oriented box of the box's visible points: inside the true box
    c_local = (transform_points(cam, scene.instances[1].centroid) - [-0.06, 0.0, 0.0]) @ sc.rotations[0]
    assert np.all(np.abs(c_local[0, :2]) <= [0.03, 0.02]) and 0 < c_local[0, 2] <= 0.08
    assert np.all(np.sort(scene.instances[1].box_extent) <= np.sort([0.06, 0.04, 0.08]) + 0.01)
    # the unseen back of the cylinder: inferred wall points lie on its true side (within 5 mm)
    hid = transform_points(cam, scene.instances[2].hidden)
    walls = np.linalg.norm(scene.instances[2].hidden_normals, axis=1) > 0
    assert walls.sum() > 50
    assert np.median(np.abs(np.linalg.norm(hid[walls, :2] - [0.07, 0.02], axis=1) - 0.03)) < 0.005


# ------------------------------------------------------------------------ sampler on a box


def test_best_grasp_on_a_box_closes_across_two_faces_within_the_jaw_and_clear_of_the_table():
    sc = box_scene()
    cfg = GraspConfig()
    result = GraspPlanner(cfg).plan(sc.depth, sc.intrinsics, sc.masks)
    assert result.warnings == []
    grasps = result.grasps[1]
    assert 1 <= len(grasps) <= cfg.top_n
    assert [g.score for g in grasps] == sorted((g.score for g in grasps), reverse=True)
    best = grasps[0]
    closing_world = sc.cam_to_world[:3, :3] @ best.closing
    faces = sc.rotations[0][:, :2].T  # the box's two horizontal face normals, world
    k = int(np.argmax(np.abs(faces @ closing_world)))
    assert abs(faces[k] @ closing_world) > math.cos(math.radians(5))  # perpendicular to a pair of faces
    across = (0.05, 0.07)[k]
    assert across < best.width <= min(across + 0.02, MAX_OPENING)
    # nothing of the hand below the table, nothing of the true box inside the hand
    up, off = sc.table_in_camera()
    table = Table(up, off)
    free, inside, low = collision_free(best.pose[None], [best.width], np.zeros((0, 3)), table, 0.05, 1, 0.0)
    assert free[0] and low[0] > 0.0
    check = MeshGeometry(sc.meshes_in_camera(), table).check(best, cfg)
    assert check.passed, check.details
    # the hand is centred on the box: its closing line passes within 1 cm of the box axis
    centre = transform_points(np.linalg.inv(sc.cam_to_world), [0.0, 0.0, 0.05])[0]
    off_axis = centre - best.position
    assert np.linalg.norm(off_axis - (off_axis @ best.closing) * best.closing - (off_axis @ best.approach) * best.approach) < 0.01


def _plan_and_check(sc, cfg=None):
    """(grasps of instance 1, their checks against the true meshes, the table) for a rendered scene."""
    cfg = cfg or GraspConfig()
    res = GraspPlanner(cfg).plan(sc.depth, sc.intrinsics, sc.masks)
    table = _table(sc)
    geo = MeshGeometry(sc.meshes_in_camera(), table)
    return res.grasps[1], [geo.check(g, cfg) for g in res.grasps[1]], table


def test_standing_6cm_can_is_completed_as_a_cylinder_and_gets_a_passing_top_down_grasp():
    """The back of a 6 cm can is its visible front turned about its axis (found from the normals and
    refined from the points): the hidden points lie on the true side; the best grasp comes straight
    down, closes across it and passes all four criteria. A 7.4 cm can still fits, tightly."""
    sc = render([cylinder_mesh(0.03, 0.12, (0.0, 0.0))])
    scene = build_scene(sc.depth, sc.intrinsics, sc.masks)
    inst, table = scene.instances[1], scene.table
    e1, e2 = table.basis()
    axis = revolution_axis(np.stack([inst.points @ e1, inst.points @ e2], 1),
                           np.stack([inst.normals @ e1, inst.normals @ e2], 1), heights=table.height(inst.points))
    centre = transform_points(np.linalg.inv(sc.cam_to_world), [0.0, 0.0, 0.0])[0]
    assert axis is not None and np.linalg.norm(axis[0] - [centre @ e1, centre @ e2]) < 0.003
    hid = transform_points(sc.cam_to_world, inst.hidden)
    far = hid[:, 1] > 0.01  # the side away from the camera (it looks along world +y)
    assert far.sum() > 100 and np.abs(np.linalg.norm(hid[far, :2], axis=1) - 0.03).max() < 0.004
    grasps, checks, table = _plan_and_check(sc)
    best = grasps[0]
    assert checks[0].passed, checks[0].details
    assert -best.approach @ table.up > math.cos(math.radians(10)) and abs(best.closing @ table.up) < 0.05
    assert 0.06 < best.width <= 0.075
    wide, wide_checks, _ = _plan_and_check(render([cylinder_mesh(0.037, 0.10, (0.0, 0.0))]))
    assert wide[0].width == pytest.approx(MAX_OPENING) and wide_checks[0].passed, wide_checks[0].details


def test_bowl_is_grasped_by_its_rim_across_the_sloped_wall():
    """A 15 cm bowl seen from above (only its inside is visible): its outside is inferred a thin wall
    further out, and the best grasp pinches the rim with the closing direction dipped along the
    wall's normal; the observed-geometry check keeps its own plain prism model."""
    sc = render([bowl_mesh(0.075, 0.05, (0.0, 0.0))])
    grasps, checks, table = _plan_and_check(sc)
    assert grasps and checks[0].passed, checks[0].details if checks else "no grasp"
    best = grasps[0]
    assert best.width < 0.03 and abs(best.closing @ table.up) > 0.25  # a rim pinch, not a horizontal squeeze
    rim = transform_points(sc.cam_to_world, best.position)[0]
    assert np.linalg.norm(rim[:2]) == pytest.approx(0.072, abs=0.01) and rim[2] > 0.03
    sampler = build_scene(sc.depth, sc.intrinsics, sc.masks).instances[1]
    observed = ObservedGeometry.build(sc.depth, sc.intrinsics, sc.masks, None, GraspConfig()).scene.instances[1]
    assert np.abs(sampler.hidden_normals @ table.up).max() > 0.3  # sloped, revolved
    assert np.abs(observed.hidden_normals @ table.up).max() < 1e-3  # vertical prism walls


def test_lying_marker_gets_a_passing_grasp_across_it():
    """A 22 mm pen lying on the table: its sides are below table_band, so a low object is modelled
    with a band from the depth noise, a finer voxel and normal radius; the jaws close across it with
    the fingertips just above the table."""
    sc = render([lying_cylinder_mesh(0.011, 0.13, (0.0, 0.0), 20.0)], target=(0.0, 0.0, 0.01), distance=0.5)
    inst = build_scene(sc.depth, sc.intrinsics, sc.masks).instances[1]
    assert inst.low and len(inst.points) > 300
    grasps, checks, table = _plan_and_check(sc)
    assert grasps and checks[0].passed, checks[0].details if checks else "no grasp"
    best = grasps[0]
    axis = sc.cam_to_world[:3, :3].T @ (sc.rotations[0] @ [0.0, 0.0, 1.0])
    assert abs(best.closing @ axis) < 0.1 and 0.022 < best.width < 0.035
    assert 0.009 < float(table.height(best.position)) < 0.02


def test_unseen_pad_share_is_high_behind_the_box_and_zero_beside_it():
    """A pad placed behind the box (closing along the line of sight) sits where the camera cannot
    see; one beside it (closing across the line of sight) does not."""
    sc = box_scene()
    scene = build_scene(sc.depth, sc.intrinsics, sc.masks)
    up = scene.table.up
    centre = transform_points(np.linalg.inv(sc.cam_to_world), [0.0, 0.0, 0.05])[0]  # half way up the box
    view = centre / np.linalg.norm(centre)
    along = view - (view @ up) * up
    along /= np.linalg.norm(along)

    def pose(closing):
        z = -up
        return pose_from(np.stack([np.cross(closing, z), closing, z], axis=1), centre)

    assert unseen_pad_share(scene, pose(along), 0.08) > 0.5
    assert unseen_pad_share(scene, pose(np.cross(up, along)), 0.1) == 0.0


def test_instance_without_valid_depth_gets_no_grasp_and_a_warning():
    sc = box_scene()
    depth = sc.depth.copy()
    extra = np.zeros_like(sc.masks[0])
    extra[10:40, 10:60] = True
    depth[extra] = 0.0  # no depth at all on instance 2
    masks = np.stack([sc.masks[0], extra])
    result = GraspPlanner().plan(depth, sc.intrinsics, masks, ids=[4, 7])
    assert result.grasps[7] == [] and len(result.grasps[4]) > 0
    assert any("instance 7" in w and "no valid depth" in w for w in result.warnings), result.warnings
    # a frame where no instance has depth: still no exception, one warning per instance
    empty = GraspPlanner().plan(np.zeros_like(depth), sc.intrinsics, masks, ids=[4, 7])
    assert empty.grasps == {4: [], 7: []} and len([w for w in empty.warnings if "no grasp" in w]) == 2


def test_collision_nms_and_config_errors():
    pose = pose_from(np.eye(3), [0.0, 0.0, 0.5])
    palm_point = [[0.0, 0.0, 0.5 - 0.08]]  # 8 cm behind the TCP: inside the hand body
    between = [[0.0, 0.0, 0.5]]  # between the pads: not a collision
    assert collision_free(pose[None], [0.05], palm_point, None, 0.05, 1, 0.0)[0][0] == np.False_
    assert collision_free(pose[None], [0.05], between, None, 0.05, 1, 0.0)[0][0] == np.True_
    table = Table(np.array([0.0, 0.0, -1.0]), 0.505)  # table 5 mm past the TCP: the pad tips go through
    assert not collision_free(pose[None], [0.05], np.zeros((0, 3)), table, 0.05, 1, 0.0)[0][0]
    a = Grasp(1, pose, 0.05, 0.9)
    flipped = Grasp(1, pose @ np.diag([-1.0, -1.0, 1.0, 1.0]), 0.05, 0.8)  # 180 deg about the approach
    moved = Grasp(1, pose_from(np.eye(3), [0.05, 0.0, 0.5]), 0.05, 0.7)
    assert nms([moved, flipped, a], 0.02, math.radians(30)) == [a, moved]
    with pytest.raises(ConfigError, match="max_opening"):
        GraspPlanner(GraspConfig(max_opening=0.1))
    with pytest.raises(ConfigError, match="backend"):
        GraspPlanner(GraspConfig(backend="dexnet"))
    assert load_config(None, {"grasp": {"top_n": 3}}).grasp.top_n == 3


# ------------------------------------------------------------------------ the grasp check


def test_grasp_check_passes_on_rendered_scenes_and_catches_bad_grasps():
    """Boxes and cylinders on a table: the share of instances whose top grasp passes all four
    criteria against the true meshes; and each criterion fails on a grasp made to break it."""
    cfg = GraspConfig()
    planner = GraspPlanner(cfg)
    summary = CheckSummary()
    scenes = [render([box_mesh((0.05, 0.06, 0.12), 10.0, (-0.08, 0.0)), cylinder_mesh(0.025, 0.1, (0.03, 0.05)),
                      box_mesh((0.04, 0.04, 0.05), 45.0, (0.08, -0.05))], azimuth_deg=-100.0),
              render([cylinder_mesh(0.035, 0.07, (-0.05, 0.03)), box_mesh((0.03, 0.09, 0.04), -20.0, (0.06, 0.0))],
                     elevation_deg=65.0)]
    for sc in scenes:
        res = planner.plan(sc.depth, sc.intrinsics, sc.masks)
        summary.planned += len(sc.masks)
        geo = MeshGeometry(sc.meshes_in_camera(), _table(sc))
        for k in range(1, len(sc.masks) + 1):
            summary.add([geo.check(g, cfg) for g in res.grasps[k][:5]])
    d = summary.as_dict()
    assert d["instances"] == 5
    assert d["top1_pass"] >= 0.8, summary.format()
    assert d["top5_any_pass"] >= d["top1_pass"]
    # break each criterion on the first scene's box
    sc = scenes[0]
    geo = MeshGeometry(sc.meshes_in_camera(), _table(sc))
    best = planner.plan(sc.depth, sc.intrinsics, sc.masks).grasps[1][0]
    assert geo.check(best, cfg).passed
    too_narrow = Grasp(1, best.pose, 0.03, best.score)  # the fingers land on the box
    c = geo.check(too_narrow, cfg)
    assert not c.fits_jaw and not c.collision_free
    too_wide = Grasp(1, best.pose, 0.1, best.score)
    assert not geo.check(too_wide, cfg).fits_jaw
    wrong_target = Grasp(2, best.pose, best.width, best.score)
    assert not geo.check(wrong_target, cfg).closes_on_target
    sunk = Grasp(1, best.pose @ pose_from(np.eye(3), [0.0, 0.0, 0.2]), best.width, best.score)  # 20 cm deeper
    assert not geo.check(sunk, cfg).collision_free
    turned = Grasp(1, best.pose @ pose_from(quaternion_to_matrix([0, 0, math.sin(math.radians(20)),
                                                                  math.cos(math.radians(20))]), [0, 0, 0]),
                   best.width, best.score)  # closing 40 degrees off the faces' normal
    assert not geo.check(turned, cfg).antipodal
    # the observed-geometry check (depth + GT masks) agrees on the good grasp
    obs = ObservedGeometry.build(sc.depth, sc.intrinsics, sc.masks, None, cfg)
    assert obs.check(best, cfg).passed


# ------------------------------------------------------------------------ GSNet adapter


def test_gsnet_selected_but_absent_says_so(tmp_path):
    with pytest.raises(ImportError, match="gsnet_checkpoint"):
        GraspPlanner(GraspConfig(backend="gsnet"))
    ckpt = tmp_path / "minkuresunet_realsense.tar"
    ckpt.write_bytes(b"not a checkpoint")
    with pytest.raises(ImportError, match="graspness implementation"):
        GraspPlanner(GraspConfig(backend="gsnet", gsnet_checkpoint=str(ckpt)))
    with pytest.raises(ImportError, match="no models/graspnet.py"):
        GraspPlanner(GraspConfig(backend="gsnet", gsnet_checkpoint=str(ckpt), gsnet_repo=str(tmp_path)))


def test_gsnet_rows_are_converted_assigned_by_mask_and_collision_checked():
    """The adapter's post-processing on hand-made GraspGroup rows (what GSNet outputs)."""
    from uois_sam_ros.core.grasp.gsnet import assign_grasps

    sc = box_scene()
    cfg = GraspConfig()
    scene = build_scene(sc.depth, sc.intrinsics, sc.masks, None, cfg)
    good = GraspPlanner(cfg).plan(sc.depth, sc.intrinsics, sc.masks).grasps[1][0]
    row = franka_to_graspnet_row(good.pose, good.width, 0.7, depth=0.02)
    deep = franka_to_graspnet_row(good.pose @ pose_from(np.eye(3), [0, 0, 0.15]), good.width, 0.9, depth=0.02)
    wide = franka_to_graspnet_row(good.pose, 0.12, 0.95, depth=0.02)
    off = franka_to_graspnet_row(pose_from(np.eye(3), [0.3, 0.3, 0.4]), 0.05, 0.99, depth=0.02)
    out = assign_grasps(np.stack([row, deep, wide, off]), scene, cfg)
    assert list(out) == [1] and len(out[1]) == 1  # the deep one collides, too wide / on nothing dropped
    np.testing.assert_allclose(out[1][0].pose, good.pose, atol=1e-9)
    assert out[1][0].score == pytest.approx(0.7)


# ------------------------------------------------------------------------ the CLI


def _write_folder(root, scenes) -> None:
    """A folder dataset (NNNN-color/-depth/-label.png + camera.json) of analytic scenes."""
    import cv2

    root.mkdir(parents=True, exist_ok=True)
    k = scenes[0].intrinsics
    (root / "camera.json").write_text(json.dumps({"fx": k.fx, "fy": k.fy, "cx": k.cx, "cy": k.cy,
                                                  "width": k.width, "height": k.height}))
    for i, sc in enumerate(scenes):
        label = np.zeros(sc.depth.shape, np.uint16)
        for j, m in enumerate(sc.masks):
            label[m] = j + 1
        rgb = np.full((*sc.depth.shape, 3), 90, np.uint8)
        rgb[label > 0] = (200, 60, 40)
        cv2.imwrite(str(root / f"{i:04d}-color.png"), rgb)
        cv2.imwrite(str(root / f"{i:04d}-depth.png"), np.round(sc.depth * 1000).astype(np.uint16))
        cv2.imwrite(str(root / f"{i:04d}-label.png"), label)


def test_grasp_cli_over_a_dataset_reader(tmp_path, capsys):
    from uois_sam_ros.apps.grasp import main

    _write_folder(tmp_path / "frames", [box_scene(), render([box_mesh((0.04, 0.06, 0.08), -15.0, (0.0, 0.0)),
                                                             cylinder_mesh(0.03, 0.1, (0.09, 0.03))])])
    out_json, report, ov = tmp_path / "g.json", tmp_path / "check.json", tmp_path / "ov"
    rc = main(["--dataset", "folder", "--root", str(tmp_path / "frames"), "--instances", "gt", "--json", str(out_json),
               "--report", str(report), "--overlays", str(ov), "--no-progress", "--set", "grasp.top_n=2"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "3 instances | top-1 passes all four: 100.0 %" in printed and "ms per instance" in printed
    records = json.loads(out_json.read_text())
    assert {r["image"] for r in records} == {"0000", "0001"}  # uois-sam-eval's frame names
    for r in records:
        assert set(r) == {"image", "instance_id", "pose", "width", "score"}
        pose = np.array(r["pose"])
        assert pose.shape == (4, 4) and np.allclose(pose[3], [0, 0, 0, 1])
        assert np.allclose(pose[:3, :3] @ pose[:3, :3].T, np.eye(3), atol=1e-6)
        assert 0 < r["width"] <= 0.08 and 0 <= r["score"] <= 1
    per_inst: dict[tuple, int] = {}
    for r in records:
        key = (r["image"], r["instance_id"])
        per_inst[key] = per_inst.get(key, 0) + 1
    assert set(per_inst) == {("0000", 1), ("0001", 1), ("0001", 2)} and max(per_inst.values()) <= 2
    rep = json.loads(report.read_text())
    assert rep["check"] == "observed" and rep["instances"] == 3 and rep["top1_pass"] == 1.0
    assert (ov / "0000.png").is_file() and (ov / "0001.png").is_file()
    assert main(["--dataset", "folder", "--no-progress"]) == 2
    assert "needs --root" in capsys.readouterr().err
    assert main(["--dataset", "folder", "--root", str(tmp_path / "frames"), "--check", "mesh", "--no-progress"]) == 2
    assert "--synthetic" in capsys.readouterr().err


def test_mesh_check_from_a_synthetic_scene_uses_its_camera_pose():
    """MeshGeometry.from_synthetic puts the world meshes and the table (world z = 0) in the camera frame."""
    from types import SimpleNamespace

    sc = box_scene()
    fake = SimpleNamespace(ids=np.array([1]), object_meshes=sc.meshes, cam_to_world=sc.cam_to_world)
    geo = MeshGeometry.from_synthetic(fake)
    up, off = sc.table_in_camera()
    assert float(geo.table.up @ up) == pytest.approx(1.0) and geo.table.offset == pytest.approx(off)
    cam_pts = (sc.meshes[0][0] - sc.cam_to_world[:3, 3]) @ sc.cam_to_world[:3, :3]
    assert np.abs(geo.table.height(cam_pts)).min() < 1e-9  # the box stands on the table
    best = GraspPlanner().plan(sc.depth, sc.intrinsics, sc.masks).grasps[1][0]
    assert geo.check(best, GraspConfig()).passed


# ------------------------------------------------------------------------ graph and README


def test_graph_gains_the_grasp_node_and_launch_equals_bringup(monkeypatch):
    from pathlib import Path

    from test_graph import _load_launch_file_with_recorders

    from uois_sam_ros.ros.graph import (
        LAUNCH_ARGUMENTS,
        describe_graph,
        describe_graph_from_arguments,
        launch_node_kwargs,
    )
    from uois_sam_ros.ros.params import GRASP_PARAMS, GRASP_SECTIONS, config_param_specs, param_table

    assert "grasp" not in [s.name for s in describe_graph()]  # opt-in: launch argument grasp:=true
    specs = describe_graph(grasp=True)
    grasp = specs[-1]
    assert grasp.name == "grasp" and grasp.executable == "grasp" and grasp.module.endswith(":GraspNode")
    assert grasp.parameters["use_amodal"] is True  # the amodal node runs: grasp reads instances/amodal
    from uois_sam_ros.ros.params import param_specs

    declared = param_specs("grasp")
    assert declared["grasp.max_opening"].default == pytest.approx(0.08) and "sam.checkpoint" not in declared
    assert "grasp.top_n" not in param_specs("segmentation")
    assert describe_graph(grasp=True, amodal=False)[-1].parameters["use_amodal"] is False
    assert dict((n, d) for n, d, _ in LAUNCH_ARGUMENTS)["grasp"] == "false"
    mod, rec = _load_launch_file_with_recorders(monkeypatch)
    ld = mod.generate_launch_description()
    defaults = {a.name: a.default for a in rec["args"]}
    ld[-1].function({**defaults, "grasp": "true", "namespace": "robot1"})
    assert rec["nodes"] == [launch_node_kwargs(s) for s in describe_graph_from_arguments(
        {**defaults, "grasp": "true", "namespace": "robot1"})]
    assert rec["nodes"][-1]["name"] == "grasp" and rec["nodes"][-1]["namespace"] == "/robot1"
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    for heading, specs_ in (("### Node `grasp`", GRASP_PARAMS), ("### Grasp parameters", config_param_specs(GRASP_SECTIONS))):
        start = readme.index(heading)
        assert param_table(specs_) in readme[start:readme.find("\n#", start + len(heading))], heading
