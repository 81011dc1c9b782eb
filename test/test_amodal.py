"""Amodal completion core: the occlusion order, the completer's crop geometry and checkpoint, the
stage, the shipped completer against the convex-hull baseline on held-out rendered scenes, and the
`uois-sam-eval --task amodal` / `uois-sam-train-amodal` command lines."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from uois_sam_ros.core.amodal.completer import (
    DEFAULT_ARCH,
    CompleterNet,
    build_batch,
    convex_hull_completion,
    crop_for,
    default_completer_checkpoint,
    load_completer,
    paste_back,
    save_completer,
)
from uois_sam_ros.core.amodal.occlusion import occluder_masks, occlusion_order, occlusion_pairs
from uois_sam_ros.core.amodal.stage import AmodalStage, evaluate_amodal
from uois_sam_ros.core.config import AmodalConfig, ConfigError
from uois_sam_ros.core.data.synthetic import SceneConfig, generate_scene, write_uoais_dataset
from uois_sam_ros.core.types import Frame, Instances
from uois_sam_ros.core.weights import CheckpointError

# Held-out scene seeds: the shipped completer was trained on seeds 0..999 (syn_train) and validated
# on 10_000_000.. (syn_val); these were never seen.
HELDOUT_SEED = 50_000_000


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _two_boxes(depth_a: float, depth_b: float, gap: int = 0):
    masks = np.zeros((2, 40, 60), bool)
    masks[0, 10:30, 10:30] = True
    masks[1, 10:30, 30 + gap:50 + gap] = True
    depth = np.full((40, 60), 1.2, np.float32)
    depth[masks[0]], depth[masks[1]] = depth_a, depth_b
    return masks, depth


def test_occlusion_order_from_depth_along_the_shared_boundary():
    masks, depth = _two_boxes(0.5, 0.8)
    order = occlusion_order(masks, depth)
    assert order.tolist() == [[False, True], [False, False]]  # A (nearer) occludes B
    assert occlusion_pairs(order) == [(1, 2)]
    assert occlusion_pairs(order, np.array([7, 9])) == [(7, 9)]
    front = occluder_masks(masks, order)
    assert np.array_equal(front[1], masks[0]) and not front[0].any()
    masks, depth = _two_boxes(0.8, 0.5)
    assert occlusion_order(masks, depth).tolist() == [[False, False], [True, False]]
    masks, depth = _two_boxes(0.7, 0.705)  # side by side: within the margin, no order
    assert not occlusion_order(masks, depth).any()
    masks, depth = _two_boxes(0.5, 0.8, gap=10)  # not touching: no shared boundary
    assert not occlusion_order(masks, depth).any()
    masks, depth = _two_boxes(0.5, 0.8)
    assert not occlusion_order(masks, None).any()  # no depth: nothing can be ordered
    holes = depth.copy()
    holes[:, 25:35] = 0.0  # the boundary band has no valid depth
    assert not occlusion_order(masks, holes).any()
    with pytest.raises(ValueError, match="does not match"):
        occlusion_order(masks, depth[:10])


def test_crop_geometry_round_trips_and_takes_in_the_occluder():
    masks, depth = _two_boxes(0.5, 0.8)
    rgb = np.zeros((40, 60, 3), np.uint8)
    order = occlusion_order(masks, depth)
    b = build_batch(rgb, depth, masks, order, DEFAULT_ARCH)
    assert b.inputs.shape == (2, 9, 64, 64) and b.index.tolist() == [0, 1]
    for row, k in enumerate(b.index):
        win, (y0, y1, x0, x1) = paste_back(b.inputs[row, 5], b.crops[k], 40, 60)
        back = np.zeros((40, 60), bool)
        back[y0:y1, x0:x1] = win > 0.5
        assert (back & masks[k]).sum() / (back | masks[k]).sum() > 0.9  # the visible channel maps back
    # instance 1's crop takes in its occluder's box; the occluder channel holds instance 0
    crop1 = b.crops[1]
    assert crop1.x0 <= 10 and b.inputs[1, 6].max() == 1.0 and b.inputs[0, 6].max() == 0.0
    assert b.inputs[1, 7].max() == 0.0  # the only other instance is the occluder
    assert b.inputs[1, 8].min() == 0.0 and b.inputs[1, 8].max() == 1.0  # the crop runs past the border
    assert b.inputs[1, 3][b.inputs[1, 5] > 0.99].max() == pytest.approx(0.0)  # depth relative to the instance
    # context is bounded: a far occluder box extends the crop by at most max_context of the side
    far = np.zeros((40, 200), bool)
    far[:, 190:200] = True
    vis = np.zeros((40, 200), bool)
    vis[10:20, 10:20] = True
    c = crop_for(vis, far, DEFAULT_ARCH)
    assert c.side <= (1 + 2 * DEFAULT_ARCH["max_context"]) * 10 + 1e-6 and c.x0 + c.side < 190
    assert crop_for(np.zeros((5, 5), bool), None, DEFAULT_ARCH) is None


def test_completer_checkpoint_round_trip_and_errors(tmp_path):
    torch.manual_seed(0)
    net = CompleterNet(DEFAULT_ARCH["widths"]).eval()
    path = tmp_path / "c.pt"
    save_completer(path, net, DEFAULT_ARCH, {"note": "t"}, half=False)
    comp = load_completer(path)
    x = torch.randn(2, 9, 64, 64)
    with torch.no_grad():
        assert torch.equal(comp.model(x), net(x))
    assert comp.meta == {"note": "t"}
    half = tmp_path / "h.pt"
    save_completer(half, net, DEFAULT_ARCH)
    assert half.stat().st_size < 0.6 * path.stat().st_size
    with pytest.raises(CheckpointError, match="not found"):
        load_completer(tmp_path / "missing.pt")
    torch.save({"format": "something else"}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="other.pt"):
        load_completer(tmp_path / "other.pt")
    with pytest.raises(ValueError, match="crop_size"):
        save_completer(tmp_path / "x.pt", net, {**DEFAULT_ARCH, "crop_size": 60})


def test_stage_baselines_empty_frames_and_errors():
    masks, depth = _two_boxes(0.5, 0.8)
    rgb = np.zeros((40, 60, 3), np.uint8)
    frame = Frame(rgb=rgb, depth=depth)
    inst = Instances(masks=masks, scores=np.array([0.9, 0.8], np.float32))
    vis = AmodalStage(AmodalConfig(method="visible", device="cpu")).run(frame, inst)
    assert np.array_equal(vis.amodal, masks) and vis.occlusion_rates.tolist() == [0.0, 0.0]
    assert vis.order.tolist() == [[False, True], [False, False]]
    ring = np.zeros((1, 40, 60), bool)
    ring[0, 5:35, 5:35] = True
    ring[0, 12:28, 12:35] = False  # a C shape: its hull fills the notch
    hull = AmodalStage(AmodalConfig(method="convex_hull", device="cpu")).run(
        frame, Instances(masks=ring, scores=np.ones(1, np.float32)))
    assert hull.amodal[0, 20, 20] and 0.0 < hull.occlusion_rates[0] < 1.0
    assert np.array_equal(convex_hull_completion(ring), hull.amodal)
    empty = AmodalStage(AmodalConfig(method="convex_hull", device="cpu")).run(frame, Instances.empty(40, 60))
    assert empty.amodal.shape == (0, 40, 60) and empty.order.shape == (0, 0)
    with pytest.raises(ValueError, match="frame is 60x40"):
        AmodalStage(AmodalConfig(method="visible", device="cpu")).run(
            frame, Instances(masks=np.zeros((1, 10, 10), bool), scores=np.ones(1)))
    with pytest.raises(ConfigError, match="amodal.method"):
        AmodalStage(AmodalConfig(method="magic"))
    with pytest.raises(ConfigError, match="decoder_checkpoint"):
        AmodalStage(AmodalConfig(method="sameo", device="cpu"))


@pytest.fixture(scope="module")
def heldout_scenes():
    return [generate_scene(HELDOUT_SEED + i).sample() for i in range(5)]


def test_shipped_completer_beats_the_convex_hull_on_heldout_rendered_scenes(heldout_scenes):
    if default_completer_checkpoint() is None:
        pytest.fail("the shipped completer uois_sam_ros/data/amodal_completer.pt is missing")
    stages = {m: AmodalStage(AmodalConfig(method=m, device="cpu")) for m in ("completer", "convex_hull", "visible")}
    assert stages["completer"].method == "completer"  # the default: auto with no SAM checkpoints
    assert AmodalStage(AmodalConfig(device="cpu")).method == "completer"
    res = evaluate_amodal(heldout_scenes, stages)
    c, h, v = res["completer"], res["convex_hull"], res["visible"]
    assert c["occluded_instances"] >= 15, "the held-out scenes should hold occluded instances"
    assert v["mIoU_occ"] == 0.0
    assert c["mIoU_occ"] > h["mIoU_occ"], res
    assert c["mIoU_full"] > h["mIoU_full"] > v["mIoU_full"], res


def test_shipped_completer_beats_both_baselines_on_another_renderer():
    """Scenes of the second renderer (pybullet TinyRenderer, pybullet_data objects settled by
    physics): nothing was trained or tuned on them. The completer beats the convex hull and the
    visible mask on both mIoU_full and mIoU_occ (README: 92.2 / 35.2 vs 79.5 / 21.4 and 88.7 / 0 on 40)."""
    from uois_sam_ros.core.data.bullet import generate_bullet_scene

    scenes = [generate_bullet_scene(51_000_000 + i).sample() for i in range(8)]
    stages = {m: AmodalStage(AmodalConfig(method=m, device="cpu")) for m in ("completer", "convex_hull", "visible")}
    res = evaluate_amodal(scenes, stages)
    c, h, v = res["completer"], res["convex_hull"], res["visible"]
    assert c["occluded_instances"] >= 10, res
    for base in (h, v):
        assert c["mIoU_full"] > base["mIoU_full"], res
        assert c["mIoU_occ"] > base["mIoU_occ"], res


def _uoais(tmp_path, n: int = 2, seed: int = HELDOUT_SEED + 100):
    root = tmp_path / "uoais"
    write_uoais_dataset(root, n, seed, SceneConfig(width=320, height=240, min_objects=4, pile_prob=1.0))
    return root


def test_eval_cli_task_amodal(tmp_path):
    from uois_sam_ros.apps.eval import main

    root = _uoais(tmp_path)
    out = tmp_path / "a.json"
    rc = main(["--task", "amodal", "--dataset", "uoais-sim", "--root", str(root), "--annotations",
               str(root / "annotations.json"), "--amodal-method", "completer,convex_hull,visible", "--json", str(out),
               "--overlays", str(tmp_path / "ov"), "--no-progress"])
    assert rc == 0
    doc = json.loads(out.read_text())
    assert doc["task"] == "amodal" and doc["visible"] == "gt" and doc["method"] == "completer"
    for k in ("mIoU_full", "mIoU_occ", "AP", "AP50", "AP75", "AR"):
        assert np.isfinite(doc[k]) and doc[k] == doc["methods"]["completer"][k]
    assert doc["methods"]["visible"]["mIoU_occ"] == 0.0
    assert len(list((tmp_path / "ov").glob("*.png"))) == 2
    out2 = tmp_path / "p.json"
    rc = main(["--task", "amodal", "--visible", "predicted", "--method", "weights_free", "--dataset", "uoais-sim",
               "--root", str(root), "--annotations", str(root / "annotations.json"), "--amodal-method", "visible",
               "--json", str(out2), "--no-progress"])
    assert rc == 0
    d2 = json.loads(out2.read_text())
    # predicted visible masks may spill into the GT's hidden part, so the visible baseline's mIoU_occ is
    # small here rather than exactly 0
    assert d2["visible"] == "predicted" and 0.0 < d2["mIoU_full"] <= 100.0 and 0.0 <= d2["mIoU_occ"] < 10.0
    # a set without amodal annotations is a one-line user error
    folder = tmp_path / "plain"
    folder.mkdir()
    import cv2

    cv2.imwrite(str(folder / "0000-color.png"), np.zeros((8, 8, 3), np.uint8))
    cv2.imwrite(str(folder / "0000-label.png"), np.ones((8, 8), np.uint8))
    assert main(["--task", "amodal", "--dataset", "folder", "--root", str(folder), "--no-progress"]) == 2


def test_train_amodal_cli_completer(tmp_path):
    from uois_sam_ros.training.amodal import main

    root = _uoais(tmp_path, n=3)
    out = tmp_path / "m" / "completer.pt"
    rc = main(["--model", "completer", "--data", str(root), "--val-split", "0.34", "--epochs", "2", "--batch-size", "8",
               "--taos-per-scene", "2", "--out", str(out), "--work-dir", str(tmp_path / "w"), "--threads", "1",
               "--eval-data", str(root), "--quiet", "--device", "cpu"])
    assert rc == 0 and out.is_file()
    doc = json.loads(out.with_suffix(".json").read_text())
    assert doc["training"]["train_taos_crops"] > 0 and doc["training"]["steps_run"] >= 2
    assert set(doc["heldout"]["methods"]) == {"completer", "convex_hull", "visible"}
    assert load_completer(out).arch == DEFAULT_ARCH
    assert main(["--model", "completer", "--out", str(out), "--quiet"]) == 2  # no data: one-line error
