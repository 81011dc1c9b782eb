"""SAMEO on a tiny random vit_synth: the loss, the decoder-only step, the checkpoint, the stage,
and a short fine-tune on TAOS occlusions that raises held-out mIoU_occ above the untrained decoder."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from uois_sam_ros.core.amodal.sameo import (
    decoder_optimizer,
    load_decoder,
    mask_boxes,
    pick_boxes,
    predict_item,
    prepare_item,
    refined_confidence,
    sameo_loss,
    sameo_step,
    save_decoder,
)
from uois_sam_ros.core.amodal.taos import TaosParams, paste_occluder
from uois_sam_ros.core.eval.amodal_metrics import AmodalAccumulator
from uois_sam_ros.core.segment.sam_backend import build_vit_synth, save_sam_synth
from uois_sam_ros.core.weights import CheckpointError

TINY = {"img_size": 128, "patch_size": 16, "embed_dim": 32, "depth": 2, "num_heads": 2, "mlp_ratio": 2.0,
        "window_size": 4, "global_attn_indexes": [1], "decoder_dim": 32, "decoder_depth": 1, "decoder_heads": 2,
        "decoder_mlp_dim": 64, "iou_head_hidden_dim": 32, "mask_in_chans": 4}
H, W = 96, 128


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _sam(seed: int = 0):
    torch.manual_seed(seed)
    return build_vit_synth(TINY).eval()


def _occlusion(rng: np.random.Generator):
    """A flat-coloured ellipse (the target) on a textured background, half hidden by a pasted box
    of another colour: (rgb, visible (1, H, W), amodal (1, H, W)), or None."""
    rgb = (rng.integers(0, 60, (H, W, 3)) + 40).astype(np.uint8)
    yy, xx = np.mgrid[:H, :W]
    cy, cx = rng.integers(30, 66), rng.integers(35, 93)
    ry, rx = rng.integers(12, 22), rng.integers(14, 26)
    target = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
    rgb[target] = rng.integers(150, 256, 3)
    occ_rgb = np.zeros_like(rgb)
    occ_rgb[:] = rng.integers(0, 256, 3)
    occ_mask = np.zeros((H, W), bool)
    occ_mask[10:40, 10:40] = True
    s = paste_occluder(rgb, None, target, occ_rgb, None, occ_mask, rng,
                       TaosParams(overlap=(0.2, 0.5), scale=(0.5, 0.9), blur_sigma=0.8))
    if s is None:
        return None
    return s.rgb, s.visible[None], s.amodal[None]


def _items(model, seed: int, n: int) -> list:
    rng = np.random.default_rng(seed)
    out = []
    while len(out) < n:
        made = _occlusion(rng)
        if made is not None:
            out.append(prepare_item(model, *made))
    return out


def _miou(model, items) -> dict:
    acc = AmodalAccumulator()
    for i, it in enumerate(items):
        am, _ = predict_item(model, it)
        acc.add(str(i), it.amodal, it.visible, am)
    return acc.means(with_ap=False)


def test_loss_terms_and_boxes():
    gt = torch.zeros(2, 8, 8, dtype=torch.bool)
    gt[:, 2:6, 2:6] = True
    good = torch.where(gt, 10.0, -10.0)
    loss, parts = sameo_loss(good, torch.tensor([1.0, 1.0]), gt)
    assert parts["iou"] == pytest.approx(1.0) and parts["dice"] < 0.01 and float(loss) < 0.02
    bad_iou = sameo_loss(good, torch.tensor([0.0, 0.0]), gt)[0]
    assert float(bad_iou - loss) == pytest.approx(0.05, abs=1e-4)  # 0.05 x |0 - 1|
    worse = sameo_loss(-good, torch.tensor([0.0, 0.0]), gt)[0]
    assert float(worse) > 1.0
    vis = np.zeros((2, 10, 10), bool)
    am = np.zeros((2, 10, 10), bool)
    vis[:, 2:5, 2:5], am[:, 2:5, 2:8] = True, True
    assert mask_boxes(vis)[0].tolist() == [2, 2, 5, 5]
    picks = np.stack([pick_boxes(vis, am, np.random.default_rng(s))[0] for s in range(200)])
    modal = (picks[:, 2] == 5).mean()
    assert 0.35 < modal < 0.65  # modal or amodal box, 50/50
    assert refined_confidence(np.array([0.5, 1.0]), np.array([0.8, 1.3])).tolist() == pytest.approx([0.4, 1.0])


def test_sameo_fine_tune_raises_heldout_miou_occ_and_trains_only_the_decoder(tmp_path):
    model = _sam(0)
    train, held = _items(model, 1, 16), _items(model, 2, 10)
    untrained = _miou(model, held)
    enc_before = {k: v.clone() for k, v in model.image_encoder.state_dict().items()}
    dec_before = {k: v.clone() for k, v in model.mask_decoder.state_dict().items()}
    opt = decoder_optimizer(model, lr=2e-3)
    rng = np.random.default_rng(3)
    for step in range(60):
        batch = [train[(3 * step + j) % len(train)] for j in range(3)]
        out = sameo_step(model, opt, batch, rng)
        assert np.isfinite(out["loss"])
    trained = _miou(model, held)
    assert trained["mIoU_occ"] > untrained["mIoU_occ"] + 5.0, (untrained, trained)
    assert trained["mIoU_full"] > untrained["mIoU_full"]
    for k, v in model.image_encoder.state_dict().items():
        assert torch.equal(v, enc_before[k]), f"encoder weight {k} changed"
    assert any(not torch.equal(v, dec_before[k]) for k, v in model.mask_decoder.state_dict().items())
    # the decoder checkpoint holds the decoder only, and loads into a fresh SAM of the same width
    path = tmp_path / "sameo.pt"
    save_decoder(path, model, {"steps": 60})
    fresh = _sam(0)
    assert load_decoder(path, fresh) == {"steps": 60}
    assert _miou(fresh, held) == trained
    with pytest.raises(CheckpointError, match="width 32"):
        load_decoder(path, build_vit_synth({**TINY, "decoder_dim": 64, "iou_head_hidden_dim": 64}))

    # the amodal stage runs SAMEO from config: SAM checkpoint + decoder checkpoint
    from uois_sam_ros.core.amodal.stage import AmodalStage
    from uois_sam_ros.core.config import AmodalConfig, SamConfig
    from uois_sam_ros.core.types import Frame, Instances

    sam_path = tmp_path / "sam.pt"
    save_sam_synth(sam_path, _sam(0), TINY)
    stage = AmodalStage(AmodalConfig(decoder_checkpoint=str(path), device="cpu"),
                        SamConfig(model_type="vit_synth", checkpoint=str(sam_path), device="cpu"))
    assert stage.method == "sameo"
    rgb, vis, am = _occlusion(np.random.default_rng(5)) or _occlusion(np.random.default_rng(6))
    res = stage.run(Frame(rgb=rgb), Instances(masks=vis, scores=np.array([0.5], np.float32)))
    assert res.amodal.shape == vis.shape and not (vis & ~res.amodal).any()
    assert 0.0 <= res.confidence[0] <= 0.5  # front-end score x predicted IoU


@pytest.mark.parametrize("kind", ["sameo", "sca"])
def test_train_amodal_cli_sam_paths(tmp_path, kind):
    """uois-sam-train-amodal --model sameo / sca on a tiny vit_synth: a checkpoint the stage loads."""
    from uois_sam_ros.core.amodal.stage import AmodalStage
    from uois_sam_ros.core.config import AmodalConfig, SamConfig
    from uois_sam_ros.core.data.synthetic import SceneConfig, write_uoais_dataset
    from uois_sam_ros.training.amodal import main

    root = tmp_path / "data"
    write_uoais_dataset(root, 3, 70_000_000, SceneConfig(width=160, height=120, min_objects=3, pile_prob=1.0))
    sam_path = tmp_path / "sam.pt"
    save_sam_synth(sam_path, _sam(0), TINY)
    out = tmp_path / f"{kind}.pt"
    rc = main(["--model", kind, "--data", str(root), "--val-split", "0.34", "--sam-checkpoint", str(sam_path),
               "--steps", "2", "--val-every", "2", "--images-per-step", "1", "--max-instances", "2",
               "--out", str(out), "--work-dir", str(tmp_path / "w"), "--quiet", "--device", "cpu"])
    assert rc == 0 and out.is_file()
    doc = __import__("json").loads(out.with_suffix(".json").read_text())
    assert doc["training"]["steps"] == 2 and "val_miou_occ" in doc["training"]["untrained"]
    key = "decoder_checkpoint" if kind == "sameo" else "sca_checkpoint"
    stage = AmodalStage(AmodalConfig(device="cpu", **{key: str(out)}),
                        SamConfig(model_type="vit_synth", checkpoint=str(sam_path), device="cpu"))
    assert stage.method == ("sameo" if kind == "sameo" else "amodal_sam")
    rgb, vis, _ = _occlusion(np.random.default_rng(5)) or _occlusion(np.random.default_rng(6))
    from uois_sam_ros.core.types import Frame, Instances

    res = stage.run(Frame(rgb=rgb), Instances(masks=vis, scores=np.ones(1, np.float32)))
    assert res.amodal.shape == vis.shape and not (vis & ~res.amodal).any()


def _scene_items(model, seeds: range) -> list:
    """Rendered scenes with their amodal masks, as SAMEO items with the embedding cached (the
    encoder is frozen): only scenes with an occluded instance, at most 6 instances each."""
    from uois_sam_ros.core.data.synthetic import SceneConfig, generate_scene

    cfg = SceneConfig(width=320, height=240, min_objects=4, max_objects=9)
    out = []
    for seed in seeds:
        s = generate_scene(seed, cfg)
        vis = np.stack([s.label == i for i in s.ids]) if len(s.ids) else np.zeros((0, 240, 320), bool)
        keep = [k for k in range(len(s.ids)) if vis[k].sum() >= 60][:6]
        if not keep or not any((s.amodal[k] & ~vis[k]).any() for k in keep):
            continue
        it = prepare_item(model, s.rgb, vis[keep], s.amodal[keep])
        with torch.no_grad():
            it.embedding = model.image_encoder(it.image)
        out.append(it)
    return out


def test_sameo_fine_tune_of_the_shipped_small_sam_raises_heldout_miou_occ():
    """The issue's test on the small SAM trained here: a short decoder-only fine-tune on rendered
    occlusions (seeds never used for training or validation) beats the shipped decoder on held-out
    scenes in mIoU_occ. The long run (README) goes further; this checks the direction with margin."""
    from uois_sam_ros.core.segment.sam_backend import default_sam_checkpoint, load_sam

    ckpt = default_sam_checkpoint("vit_synth")
    assert ckpt is not None, "the package ships sam_vit_synth.pt"
    torch.manual_seed(0)
    model = load_sam("vit_synth", ckpt).eval()
    train = _scene_items(model, range(920_000, 920_030))
    held = _scene_items(model, range(921_000, 921_014))
    assert len(train) >= 20 and len(held) >= 10
    before = _miou(model, held)
    opt = decoder_optimizer(model, lr=1e-4)
    rng = np.random.default_rng(0)
    order = np.random.default_rng(0).permutation(len(train))
    for step in range(45):
        out = sameo_step(model, opt, [train[order[(4 * step + j) % len(train)]] for j in range(4)], rng)
        assert np.isfinite(out["loss"])
    after = _miou(model, held)
    # measured on the shipped checkpoint (part 2): mIoU_occ 31.6 -> 33.8, mIoU_full 83.7 -> 82.8 (45 steps;
    # 34.2 / 82.8 after 30 steps with another sample order). The first small SAM started lower and
    # gained more (28.4 -> 31.8 at lr 2e-4, which on this one costs 1.9 points of mIoU_full).
    assert after["occluded_instances"] == before["occluded_instances"] >= 30
    assert after["mIoU_occ"] > before["mIoU_occ"] + 1.5, (before, after)
    assert after["mIoU_full"] > before["mIoU_full"] - 1.5, (before, after)
