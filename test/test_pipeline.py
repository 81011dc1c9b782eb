"""UOISPipeline end to end: method selection, the tiny-SAM path, the weights-free path, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from uois_sam_ros.core.config import ConfigError, config_from_dict
from uois_sam_ros.core.segment.hdnet import HDNet
from uois_sam_ros.core.segment.hpg import HPGNet
from uois_sam_ros.core.segment.pipeline import UOISPipeline, resolve_method
from uois_sam_ros.core.segment.postprocess import mask_iou, scale_box_limit
from uois_sam_ros.core.types import Frame
from uois_sam_ros.core.weights import CheckpointError

torch.set_num_threads(2)
TINY = {"model_type": "vit_tiny", "allow_random_weights": True, "image_size": 256}


def _cfg(method: str, **sections):
    d = {"sam": dict(TINY), "pipeline": {"method": method, "grid_points": 6}}
    for k, v in sections.items():
        d.setdefault(k, {}).update(v)
    return config_from_dict(d)


@pytest.fixture(scope="module")
def scene():
    from uois_sam_ros.core.data.synthetic import generate_scene

    return generate_scene(0).sample()


@pytest.fixture(scope="module")
def hpg_net():
    torch.manual_seed(0)
    return HPGNet("cnn_rgbd", width=8).eval()


def _hdnet(bias: float) -> HDNet:
    torch.manual_seed(0)
    net = HDNet().eval()
    with torch.no_grad():  # a constant correction makes the outcome of the threshold known
        net.mlp.layers[-1].weight.zero_()
        net.mlp.layers[-1].bias.fill_(bias)
    return net


def test_resolve_method():
    assert resolve_method(config_from_dict({})) == "weights_free"
    assert resolve_method(config_from_dict({"sam": {"checkpoint": "x.pth"}})) == "heatmap"
    assert resolve_method(config_from_dict({"sam": {"checkpoint": "x.pth"}, "hdnet": {"checkpoint": "h.pt"}})) == "uois_sam"
    assert resolve_method(config_from_dict({"pipeline": {"method": "grid"}})) == "grid"
    with pytest.raises(ConfigError, match="pipeline.method 'sam_auto' is not one of"):
        resolve_method(config_from_dict({"pipeline": {"method": "sam_auto"}}))


def test_sam_method_without_checkpoint_names_it(monkeypatch):
    """With no small SAM installed either (the shipped one stands in otherwise)."""
    from uois_sam_ros.core.segment import pipeline as pipeline_mod

    monkeypatch.setattr(pipeline_mod, "default_sam_checkpoint", lambda model_type="vit_synth": None)
    with pytest.raises(CheckpointError, match="sam.checkpoint is not set"):
        UOISPipeline(config_from_dict({"pipeline": {"method": "grid"}, "sam": {"model_type": "vit_tiny"}}))


def test_hdnet_method_without_hdnet_weights_names_it(hpg_net):
    cfg = _cfg("uois_sam")
    cfg.sam.allow_random_weights = False
    from uois_sam_ros.core.segment.sam_backend import build_sam_architecture

    with pytest.raises(CheckpointError, match="set hdnet.checkpoint"):
        UOISPipeline(cfg, sam_model=build_sam_architecture("vit_tiny", 256), hpg_model=hpg_net)


def _check_instances(inst, frame, threshold, prompts, cfg):
    H, W = frame.height, frame.width
    assert inst.masks.shape[1:] == (H, W)
    assert np.all(np.diff(inst.scores) <= 0)  # sorted by score
    assert np.all(inst.scores > threshold)
    if len(inst) > 1:
        iou = mask_iou(inst.masks, inst.masks)
        assert iou[~np.eye(len(inst), dtype=bool)].max() <= cfg.postprocess.nms_iou + 0.02
    max_h, max_w = scale_box_limit(cfg.postprocess, H, W)
    boxes = inst.boxes()
    assert np.all(boxes[:, 3] - boxes[:, 1] <= max_h) and np.all(boxes[:, 2] - boxes[:, 0] <= max_w)
    # every instance came from one of this frame's prompts
    for p in inst.prompts:
        assert np.any(np.all(np.isclose(prompts.points, p), axis=1))
    assert {"prompts", "embedding", "decode", "postprocess", "total"} <= set(inst.timings)


def test_uois_sam_tiny_end_to_end(scene, hpg_net):
    big = {"max_box_height": 480, "max_box_width": 640}  # random SAM masks are noisy and large
    cfg = _cfg("uois_sam", hpg={"fg_threshold": 0.0, "heatmap_threshold": -1e9, "top_k": 12}, postprocess=big)
    frame = scene.frame()
    keep_all = UOISPipeline(cfg, hpg_model=hpg_net, hdnet_model=_hdnet(+10.0))
    inst = keep_all.run(frame)
    assert keep_all.method == "uois_sam" and keep_all.uses_hdnet
    assert len(keep_all.last_prompts) == 12
    assert 1 <= len(inst) <= 12
    _check_instances(inst, frame, cfg.hdnet.iou_threshold, keep_all.last_prompts, cfg)
    # adapted IoU = SAM IoU + 10 (eq. 5 with a constant correction)
    np.testing.assert_allclose(inst.scores, inst.sam_iou + 10.0, rtol=1e-5)
    fg, heat = keep_all.debug_maps(frame.height, frame.width)
    assert fg.shape == heat.shape == (frame.height, frame.width)
    # the same frame with a correction of -10 keeps nothing: the 0.48 threshold is applied
    none = UOISPipeline(cfg, sam_model=keep_all.segmenter.model, hpg_model=hpg_net, hdnet_model=_hdnet(-10.0))
    empty = none.run(frame)
    assert len(empty) == 0 and empty.masks.shape == (0, frame.height, frame.width)


def test_zero_prompts_give_empty_instances(scene, hpg_net):
    cfg = _cfg("heatmap", hpg={"fg_threshold": 1.0})  # no probability exceeds 1.0
    p = UOISPipeline(cfg, hpg_model=hpg_net)
    inst = p.run(scene.frame())
    assert len(p.last_prompts) == 0 and len(inst) == 0
    assert inst.timings["embedding"] == 0.0  # no encoder pass without prompts


def test_grid_and_foreground_grid_prompts(scene, hpg_net):
    lax = {"sam_iou_threshold": -1e9, "stability_threshold": 0.0}
    big = {"max_box_height": 480, "max_box_width": 640}
    frame = scene.frame()
    grid = UOISPipeline(_cfg("grid", hdnet=lax, postprocess=big))
    inst = grid.run(frame)
    assert len(grid.last_prompts) == 36 and grid.hpg is None
    assert len(inst) >= 1
    _check_instances(inst, frame, -1e9, grid.last_prompts, grid.config)
    np.testing.assert_allclose(inst.scores, inst.sam_iou)  # no HDNet: SAM's IoU is the score
    fg = UOISPipeline(_cfg("grid_fg", hdnet=lax, postprocess=big, hpg={"fg_threshold": 0.5}),
                      sam_model=grid.segmenter.model, hpg_model=hpg_net)
    fg.run(frame)
    kept = fg.last_prompts.points
    assert len(kept) <= 36
    all_pts = grid.last_prompts.points
    assert all(np.any(np.all(np.isclose(all_pts, q), axis=1)) for q in kept)
    assert np.all(fg.last_prompts.scores > 0.5)


def test_sam_path_on_a_real_frame(real_rgbd_dir, hpg_net):
    import cv2

    from uois_sam_ros.core.types import Intrinsics

    rgb = cv2.cvtColor(cv2.imread(str(real_rgbd_dir / "0000-color.png")), cv2.COLOR_BGR2RGB)
    depth = cv2.imread(str(real_rgbd_dir / "0000-depth.png"), cv2.IMREAD_UNCHANGED).astype(np.float32) / 1000.0
    frame = Frame(rgb=rgb, depth=depth, intrinsics=Intrinsics.from_json(real_rgbd_dir / "camera.json"))
    cfg = _cfg("heatmap", hpg={"fg_threshold": 0.0, "heatmap_threshold": -1e9, "top_k": 5},
               hdnet={"sam_iou_threshold": -1e9, "stability_threshold": 0.0},
               postprocess={"max_box_height": 480, "max_box_width": 640})
    p = UOISPipeline(cfg, hpg_model=hpg_net)
    inst = p.run(frame)
    assert inst.masks.shape[1:] == (480, 640) and 1 <= len(inst) <= 5
    _check_instances(inst, frame, -1e9, p.last_prompts, cfg)


# A simple rendered scene: separated, opaque, upright objects of the common kinds (the default
# generator also renders piles, stacks, transparent and camouflaged objects).
SIMPLE_SCENE = dict(max_objects=6, stack_prob=0, touch_prob=0, lean_prob=0, pile_prob=0, transparent_prob=0,
                    aim_jitter=0.0, lying_prob=0, spread=(0.2, 0.3), camouflage_prob=0, speckle_prob=0,
                    shapes=("box", "cylinder", "sphere", "bowl", "mug"))


def test_weights_free_finds_the_rendered_objects():
    from uois_sam_ros.core.data.synthetic import SceneConfig, generate_scene

    p = UOISPipeline(config_from_dict({"pipeline": {"method": "weights_free"}}))
    assert p.method == "weights_free"
    for seed in (0, 3):
        s = generate_scene(seed, SceneConfig(**SIMPLE_SCENE)).sample()
        inst = p.run(s.frame())
        ids = [i for i in np.unique(s.label) if i]
        assert len(inst) == len(ids)
        gt = np.stack([s.label == i for i in ids])
        assert mask_iou(gt, inst.masks).max(axis=1).min() > 0.7
        assert {"prompts", "embedding", "decode", "postprocess", "total"} <= set(inst.timings)
        # no SAM ran: sam_iou is NaN (Instance.msg), the score is the geometric confidence
        assert np.isnan(inst.sam_iou).all() and np.isfinite(inst.scores).all()
    from std_msgs.msg import Header

    from uois_sam_ros.ros.convert import instances_to_msg

    msg = instances_to_msg(inst, Header(frame_id="camera"))
    assert len(msg.instances) == len(inst) and all(np.isnan(it.sam_iou) for it in msg.instances)


def _simple_scene_results(method: str, seeds, **sections) -> list[tuple[int, int, int]]:
    """(objects, instances, objects matched at IoU > 0.7) per simple scene, shipped models."""
    from uois_sam_ros.core.data.synthetic import SceneConfig, generate_scene

    p = UOISPipeline(config_from_dict({"pipeline": {"method": method}, **sections}))
    assert p.model_note is not None and "shipped small SAM" in p.model_note
    out = []
    for seed in seeds:
        s = generate_scene(seed, SceneConfig(**SIMPLE_SCENE)).sample()
        inst = p.run(s.frame())
        gt = np.stack([s.label == i for i in np.unique(s.label) if i])
        best = mask_iou(gt, inst.masks).max(axis=1) if len(inst) else np.zeros(len(gt))
        out.append((len(gt), len(inst), int((best > 0.7).sum())))
    return out


def test_the_shipped_small_sam_and_hdnet_find_the_simple_rendered_objects():
    """HPG -> small SAM -> HDNet -> filters, all shipped weights, on the first 8 simple scenes.

    Measured with the shipped models: every object found (IoU > 0.7) and no extra mask in 3 of the 8
    scenes (seeds 0, 1, 5); seed 7 has all its objects plus two extra masks; 20 of 28 objects matched.
    What it misses: seed 6 is a close-up whose boxes are wider than the paper's 200 x 200 px filter
    allows; in seeds 2, 3 and 4 a mask covers only part of an object (and seed 2 has two extra masks).
    Random weights match none."""
    res = _simple_scene_results("heatmap_hdnet", range(8))
    assert res[0] == (4, 4, 4)  # seed 0: all four objects, no extra mask
    whole = sum(n == k == m for n, k, m in res)
    all_found = sum(n == m for n, _, m in res)
    matched = sum(m for _, _, m in res)
    assert whole >= 3 and all_found >= 4 and matched >= 18, res


def test_the_small_sams_operating_point_keeps_its_masks():
    """SAM's own thresholds (0.88 / 0.95) are for the official models; the shipped small SAM's head
    predicts lower IoUs, and at its operating point (from its sidecar) heatmap finds the objects
    that thresholds near SAM's drop."""
    seeds = (0, 1, 7)
    at_op = _simple_scene_results("heatmap", seeds)
    near_sams = _simple_scene_results("heatmap", seeds, hdnet={"sam_iou_threshold": 0.85, "stability_threshold": 0.9})
    assert sum(m for *_, m in at_op) >= 8  # measured: 10 of 10 objects (and one extra mask)
    assert sum(k for _, k, _ in near_sams) <= 4  # measured: 1 instance (none at exactly 0.88 / 0.95)
    assert sum(m for *_, m in near_sams) < sum(m for *_, m in at_op)


def test_weights_free_needs_depth(scene):
    from uois_sam_ros.core.types import FrameError

    p = UOISPipeline(config_from_dict({"pipeline": {"method": "weights_free"}}))
    with pytest.raises(FrameError, match="needs depth"):
        p.run(Frame(rgb=scene.rgb, intrinsics=scene.intrinsics))


# --------------------------------------------------------------------------- Table IV row 1 = AMG
def _amg_scene() -> np.ndarray:
    rgb = np.zeros((96, 128, 3), np.uint8)  # three flat blocks: the random SAM gives varied masks
    rgb[10:40, 10:50] = (255, 0, 0)
    rgb[50:90, 70:120] = (0, 255, 0)
    rgb[20:70, 60:80] = (0, 0, 255)
    return rgb


@pytest.fixture(scope="module")
def amg_sam():
    """A tiny random SAM whose logits reach beyond +-1, so that stability scores are not all 0."""
    from uois_sam_ros.core.segment.sam_backend import build_sam_architecture

    torch.manual_seed(1)
    model = build_sam_architecture("vit_tiny", 256)
    with torch.no_grad():
        for mlp in model.mask_decoder.output_hypernetworks_mlps:
            mlp.layers[-1].weight.mul_(40.0)
    return model


def test_grid_method_equals_segment_anythings_automatic_mask_generator(amg_sam):
    from segment_anything import SamAutomaticMaskGenerator

    rgb = _amg_scene()
    n = 6
    free = SamAutomaticMaskGenerator(amg_sam, points_per_side=n, pred_iou_thresh=0.0,
                                     stability_score_thresh=0.0, box_nms_thresh=1.0).generate(rgb)
    assert len(free) == 3 * n * n  # nothing filtered: every multimask candidate of every point
    # thresholds at low quantiles, so that each filter removes some candidates and keeps others
    iou_t = float(np.quantile([a["predicted_iou"] for a in free], 0.25))
    stab_t = float(np.quantile([a["stability_score"] for a in free], 0.25))
    neutral = {"nms_iou": 1.0, "max_box_height": 10_000, "max_box_width": 10_000, "min_area": 0}
    kept = {}
    for box_nms in (1.0, 0.99):  # 0.99: identical full-image boxes are suppressed, distinct ones kept
        ref = SamAutomaticMaskGenerator(amg_sam, points_per_side=n, pred_iou_thresh=iou_t,
                                        stability_score_thresh=stab_t, box_nms_thresh=box_nms).generate(rgb)
        # bit for bit needs the library's encoder layout too (sam.encoder chunked rounds differently)
        cfg = _cfg("grid", pipeline={"grid_points": n, "grid_box_nms": box_nms}, sam={"encoder": "library"},
                   hdnet={"sam_iou_threshold": iou_t, "stability_threshold": stab_t}, postprocess=neutral)
        assert cfg.pipeline.grid_exact  # the default
        p = UOISPipeline(cfg, sam_model=amg_sam)
        inst = kept[box_nms] = p.run(Frame(rgb=rgb))
        assert 0 < len(inst) == len(ref) < len(free)
        ref = sorted(ref, key=lambda a: -a["predicted_iou"])
        for i, a in enumerate(ref):
            np.testing.assert_array_equal(inst.masks[i], a["segmentation"])
            assert inst.scores[i] == np.float32(a["predicted_iou"]) == inst.sam_iou[i]
            np.testing.assert_array_equal(inst.prompts[i], np.float32(a["point_coords"][0]))
        if box_nms == 1.0:  # several candidates of one point survive: not one mask per prompt
            _, counts = np.unique(inst.prompts, axis=0, return_counts=True)
            assert counts.max() > 1
    # the pipeline's common NMS and size filter then apply to AMG's output
    strict = _cfg("grid", pipeline={"grid_points": n, "grid_box_nms": 1.0},
                  hdnet={"sam_iou_threshold": iou_t, "stability_threshold": stab_t},
                  postprocess={**neutral, "nms_iou": 0.3})
    filtered = UOISPipeline(strict, sam_model=amg_sam).run(Frame(rgb=rgb))
    assert len(kept[1.0]) > len(kept[0.99]) > 1  # the box NMS did suppress some
    assert 0 < len(filtered) < len(kept[1.0])
    if len(filtered) > 1:
        iou = mask_iou(filtered.masks, filtered.masks)
        assert iou[~np.eye(len(filtered), dtype=bool)].max() <= 0.3


def test_grid_low_res_approximation_keeps_one_mask_per_prompt(amg_sam):
    rgb = _amg_scene()
    cfg = _cfg("grid", pipeline={"grid_points": 4, "grid_exact": False},
               hdnet={"sam_iou_threshold": -1e9, "stability_threshold": 0.0},
               postprocess={"nms_iou": 1.0, "max_box_height": 10_000, "max_box_width": 10_000, "min_area": 0})
    inst = UOISPipeline(cfg, sam_model=amg_sam).run(Frame(rgb=rgb))
    assert len(inst) == 16  # the best candidate of each of the 4 x 4 points
    assert len(np.unique(inst.prompts, axis=0)) == 16
