"""vit_synth (the small SAM trained here) and its trainer uois-sam-train-sam.

Loading goes through the same load_sam as the official checkpoints (key and shape checks, errors
that name the file); SamSegmenter, HDNet and the pipeline take it like vit_b; a short training run
lowers the held-out loss below the untrained model's, and --resume continues the step counter
and the CSV log.
"""

from __future__ import annotations

import csv
import json
import shutil
import threading
import time
from functools import partial

import numpy as np
import pytest
import torch

from uois_sam_ros.core.config import SamConfig, config_from_dict
from uois_sam_ros.core.segment.hdnet import HDNet, load_hdnet, save_hdnet
from uois_sam_ros.core.segment.hpg import crop_sam_embedding
from uois_sam_ros.core.segment.sam_backend import (
    SYNTH_FORMAT,
    VIT_SYNTH_ARCH,
    SamSegmenter,
    build_sam_architecture,
    build_vit_synth,
    load_sam,
    save_sam_synth,
)
from uois_sam_ros.core.types import Frame, Prompts
from uois_sam_ros.core.weights import CheckpointError
from uois_sam_ros.training import sam as train_sam_mod
from uois_sam_ros.training.sam import (
    LOSS_UPSAMPLE,
    corrective_clicks,
    first_prompts,
    gt_masks,
    loss_grid_hw,
    mask_terms,
    prepare_image,
)

torch.set_num_threads(1)  # 2 threads on a shared, busy 2-core machine run several times slower

TINY = {"img_size": 128, "patch_size": 16, "embed_dim": 32, "depth": 2, "num_heads": 2, "mlp_ratio": 2.0,
        "window_size": 4, "global_attn_indexes": [1], "decoder_dim": 32, "decoder_depth": 1, "decoder_heads": 2,
        "decoder_mlp_dim": 64, "iou_head_hidden_dim": 32, "mask_in_chans": 4}


def _tiny(seed: int = 0):
    torch.manual_seed(seed)
    return build_vit_synth(TINY).eval()


# ------------------------------------------------------------------------------------ architecture
def test_default_architecture_is_small_and_fits_the_size_limit(tmp_path):
    model = build_sam_architecture("vit_synth")
    sd = model.state_dict()
    assert model.image_encoder.img_size == 512
    assert sd["image_encoder.pos_embed"].shape == (1, 32, 32, VIT_SYNTH_ARCH["embed_dim"])
    assert sd["image_encoder.neck.0.weight"].shape[0] == 128  # image embedding = decoder dim
    assert model.mask_decoder.transformer_dim == 128
    assert model.prompt_encoder.mask_input_size == (128, 128)
    n = sum(p.numel() for p in model.parameters())
    assert 2_000_000 < n < 5_000_000
    path = tmp_path / "sam_vit_synth.pt"
    save_sam_synth(path, model, VIT_SYNTH_ARCH, {"note": "size check"})
    assert path.stat().st_size < 20 * 2**20
    with pytest.raises(ValueError, match="takes 512"):
        build_sam_architecture("vit_synth", 768)


# ------------------------------------------------------------------------------------------ loading
def test_round_trip_through_load_sam(tmp_path):
    ref = _tiny(1)
    path = tmp_path / "synth.pt"
    save_sam_synth(path, ref, TINY, {"step": 3})
    loaded = load_sam("vit_synth", path)  # the architecture comes from the file, not from defaults
    assert loaded.image_encoder.img_size == 128 and loaded.mask_decoder.transformer_dim == 32
    a, b = ref.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k])
    assert not any(p.requires_grad for p in loaded.parameters())
    seg = SamSegmenter(SamConfig(model_type="vit_synth", checkpoint=str(path), device="cpu"))  # as a config names it
    assert seg.encoder_size == 128 and seg.token_dim == 32
    # fp16 storage loads into the fp32 model
    half = tmp_path / "half.pt"
    save_sam_synth(half, ref, TINY, half=True)
    assert half.stat().st_size < path.stat().st_size
    lh = load_sam("vit_synth", half)
    assert lh.mask_decoder.iou_token.weight.dtype == torch.float32
    torch.testing.assert_close(lh.mask_decoder.iou_token.weight, ref.mask_decoder.iou_token.weight,
                               atol=1e-3, rtol=1e-3)


def test_corrupt_truncated_and_mismatched_files_give_named_errors(tmp_path):
    good = tmp_path / "good.pt"
    save_sam_synth(good, _tiny(), TINY)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=r"SAM vit_synth checkpoint .*truncated\.pt is corrupt"):
        load_sam("vit_synth", truncated)
    with pytest.raises(CheckpointError, match="not found"):
        load_sam("vit_synth", tmp_path / "nope.pt")
    plain = tmp_path / "plain_state_dict.pt"  # an official-style file has no stored architecture
    torch.save(_tiny().state_dict(), plain)
    with pytest.raises(CheckpointError, match=r"plain_state_dict\.pt is not a vit_synth checkpoint"):
        load_sam("vit_synth", plain)
    # a state dict that does not fit the architecture stored next to it
    blob = torch.load(good, weights_only=True)
    blob["arch"] = {**TINY, "decoder_mlp_dim": 96}
    del blob["state_dict"]["mask_decoder.iou_token.weight"]
    wrong = tmp_path / "wrong_arch.pt"
    torch.save(blob, wrong)
    with pytest.raises(CheckpointError) as ei:
        load_sam("vit_synth", wrong)
    msg = str(ei.value)
    assert "wrong_arch.pt does not match the architecture" in msg
    assert "missing keys: mask_decoder.iou_token.weight" in msg
    assert "mask_decoder.transformer.layers.0.mlp.lin1.weight: file (64, 32) vs model (96, 32)" in msg
    blob["arch"] = {k: v for k, v in TINY.items() if k != "depth"}
    torch.save(blob, wrong)
    with pytest.raises(CheckpointError, match=r"wrong_arch\.pt: stored arch: missing keys \['depth'\]"):
        load_sam("vit_synth", wrong)
    blob["arch"] = {**TINY, "window_size": 3}
    torch.save(blob, wrong)
    with pytest.raises(CheckpointError, match="not tiled by window_size 3"):
        load_sam("vit_synth", wrong)
    with pytest.raises(CheckpointError, match="trained at 128"):
        load_sam("vit_synth", good, image_size=512)
    with pytest.raises(CheckpointError, match="sam.checkpoint is not set for SAM vit_synth"):
        load_sam("vit_synth", None)
    blob = torch.load(good, weights_only=True)
    assert blob["format"] == SYNTH_FORMAT


# ------------------------------------------------------------------------- the segmenter, HDNet, HPG
def test_segmenter_runs_vit_synth_like_vit_b():
    torch.manual_seed(0)
    seg = SamSegmenter(SamConfig(model_type="vit_synth", allow_random_weights=True, device="cpu"))
    assert seg.encoder_size == 512 and seg.token_dim == 128
    rgb = np.random.default_rng(0).integers(0, 255, (480, 640, 3), dtype=np.uint8)
    seg.set_frame(Frame(rgb=rgb))
    assert tuple(seg.embedding.shape) == (1, 128, 32, 32)
    assert seg.valid_lowres_hw() == (96, 128)  # 480x640 -> 384x512 in the 512 square
    assert tuple(crop_sam_embedding(seg.embedding, (480, 640), seg.encoder_size).shape) == (1, 128, 24, 32)
    pts = np.array([[10, 10], [320, 240], [630, 470]], np.float32)
    low = seg.decode_lowres(Prompts(pts, np.ones(3), np.ones(3)))
    assert low.logits.shape == (3, 4, 128, 128) and low.iou_pred.shape == (3, 4)
    assert low.t_iou.shape == (3, 128) and low.t_mask.shape == (3, 4, 128)
    dec = seg.decode(Prompts(pts, np.ones(3), np.ones(3)))
    assert dec.masks.shape == (3, 4, 480, 640) and dec.masks.dtype == bool
    hd = HDNet.for_sam(seg.model)
    assert hd.token_dim == 128
    assert hd.adapted_iou(low.iou_pred, low.t_iou, low.t_mask).shape == (3, 4)


def test_hpg_sam_backbone_takes_the_128_dim_embedding(tmp_path):
    from uois_sam_ros.core.segment.hpg import HPGNet, load_hpg_checkpoint, save_hpg_checkpoint

    torch.manual_seed(0)
    sam = build_vit_synth().eval()
    with torch.no_grad():
        emb = sam.image_encoder(torch.zeros(1, 3, 512, 512))
    net = HPGNet("sam", width=8, input_size=(120, 160), head_channels=32, sam_dim=sam.mask_decoder.transformer_dim)
    fg, heat = net.eval()(crop_sam_embedding(emb, (480, 640), 512), None)
    assert fg.shape == (1, 2, 120, 160) and heat.shape == (1, 1, 120, 160)
    save_hpg_checkpoint(tmp_path / "hpg_sam.pt", net)
    assert load_hpg_checkpoint(tmp_path / "hpg_sam.pt").sam_dim == 128
    with pytest.raises(ValueError, match=r"\(B,256,h,w\)"):
        HPGNet("sam", input_size=(120, 160))(emb, None)


def test_hdnet_checkpoint_records_its_token_dim(tmp_path):
    hd = HDNet.for_sam(_tiny())
    path = tmp_path / "hdnet.pt"
    save_hdnet(path, hd, {"note": "tiny"})
    assert load_hdnet(path, sam_token_dim=32).token_dim == 32
    with pytest.raises(CheckpointError, match=r"hdnet\.pt takes 32-dim SAM tokens, but the SAM in use has a 256-dim"):
        load_hdnet(path, sam_token_dim=256)


def test_pipeline_uois_sam_with_vit_synth_and_a_sized_hdnet():
    from uois_sam_ros.core.data.synthetic import SceneConfig, generate_scene
    from uois_sam_ros.core.segment.pipeline import UOISPipeline

    frame = generate_scene(3, SceneConfig(width=320, height=240, amodal=False)).frame()
    cfg = config_from_dict({"sam": {"model_type": "vit_synth", "allow_random_weights": True, "device": "cpu"},
                            "hpg": {"device": "cpu", "fg_threshold": 0.0, "heatmap_threshold": -1e9, "top_k": 5},
                            "hdnet": {"iou_threshold": -1e9}, "pipeline": {"method": "uois_sam"}})
    pipe = UOISPipeline(cfg)
    assert pipe.hdnet.token_dim == 128
    out = pipe.run(frame)
    assert out.masks.shape[1:] == (240, 320)
    assert len(pipe.last_prompts) == 5


# ------------------------------------------------------------------------------ trainer pieces
def test_prepare_image_matches_sam_predictor_resize():
    rgb = np.random.default_rng(0).integers(0, 255, (120, 160, 3), dtype=np.uint8)
    label = np.zeros((120, 160), np.int32)
    label[30:60, 40:100] = 3
    rgb_in, lab_in = prepare_image(rgb, label, 128, None)
    assert rgb_in.shape == (96, 128, 3) and lab_in.shape == (96, 128)
    from segment_anything.utils.transforms import ResizeLongestSide

    np.testing.assert_array_equal(rgb_in, ResizeLongestSide(128).apply_image(rgb))
    ys, xs = np.nonzero(lab_in == 3)
    assert (ys.min(), ys.max(), xs.min(), xs.max()) == (24, 47, 32, 79)
    aug, lab_aug = prepare_image(rgb, label, 128, np.random.default_rng(1))
    assert aug.shape[:2] == lab_aug.shape and max(aug.shape[:2]) == 128
    assert set(np.unique(lab_aug)) <= {0, 3}


def test_prompts_lie_on_their_instances():
    label = np.zeros((96, 128), np.int32)
    label[10:40, 20:60] = 1
    label[50:90, 70:120] = 2
    ids = np.array([1, 2])
    pts, boxes = first_prompts(label, ids, np.random.default_rng(0), box_prob=0.0, box_jitter=0.0)
    assert np.isnan(boxes).all()
    for k, oid in enumerate(ids):
        assert label[int(pts[k, 1]), int(pts[k, 0])] == oid
    _, boxes = first_prompts(label, ids, np.random.default_rng(0), box_prob=1.0, box_jitter=0.0)
    np.testing.assert_allclose(boxes, [[20, 10, 59, 39], [70, 50, 119, 89]])


def test_corrective_clicks_go_to_the_centre_of_the_largest_error():
    gt = np.zeros((1, 40, 40), bool)
    gt[0, 5:35, 5:35] = True
    pred = gt.copy()
    pred[0, 5:35, 20:35] = False  # the right half is missed
    pts, lab = corrective_clicks(pred, gt)
    assert lab[0] == 1
    x, y = (pts[0] + 0.5) / LOSS_UPSAMPLE - 0.5  # back to the loss grid
    assert 24 <= x <= 30 and 11 <= y <= 28 and gt[0, int(round(y)), int(round(x))]  # mid-width of the miss
    pred = gt.copy()
    pred[0, 0:40, 36:40] = True  # a thin false positive
    pred[0, 10:30, 10:30] = False  # and a larger miss: the click goes to the miss
    _, lab = corrective_clicks(pred, gt)
    assert lab[0] == 1
    gt_small = np.zeros_like(gt)
    gt_small[0, 15:25, 15:25] = True
    pts, lab = corrective_clicks(np.ones_like(gt), gt_small)  # everything predicted: a negative click
    x, y = np.round((pts[0] + 0.5) / LOSS_UPSAMPLE - 0.5).astype(int)
    assert lab[0] == 0 and not gt_small[0, y, x]
    pts, lab = corrective_clicks(gt.copy(), gt)  # perfect: a positive click inside
    assert lab[0] == 1


def test_mask_terms_of_a_perfect_and_an_empty_prediction():
    gt_np = np.zeros((1, 20, 30), bool)
    gt_np[0, 4:14, 8:22] = True  # even edges: exactly representable on the half-resolution grid
    gt = torch.from_numpy(gt_np)
    grid = torch.full((1, 1, 20, 30), -20.0)
    grid[0, 0][gt[0]] = 20.0
    # low-res logits at half the loss grid: nearest-downsample, then the x2 bilinear upsample restores them
    low = torch.nn.functional.interpolate(grid, size=(10, 15), mode="nearest")
    lowsq = torch.full((1, 1, 16, 16), -20.0)
    lowsq[..., :10, :15] = low
    focal, dice, iou = mask_terms(lowsq, gt)
    assert float(iou[0, 0]) > 0.9 and float(dice[0, 0]) < 0.1 and float(focal[0, 0]) < 0.01
    focal_e, dice_e, iou_e = mask_terms(torch.full((1, 1, 16, 16), -20.0), gt)
    assert float(iou_e[0, 0]) == 0.0 and float(dice_e[0, 0]) > 0.9 and float(focal_e[0, 0]) > float(focal[0, 0])
    assert loss_grid_hw((96, 128), 128, 32) == (48, 64)
    assert gt_masks(np.pad(np.ones((4, 4), np.int32), ((0, 92), (0, 124))), np.array([1]), (48, 64))[0].sum() == 4


def test_schedule_warms_up_then_decays_by_steps_or_by_the_time_budget():
    s = train_sam_mod.Settings(lr=1e-3, warmup=10, max_steps=110, min_lr_ratio=0.1)
    lr = train_sam_mod.lr_at
    assert lr(0, s) == pytest.approx(1e-4) and lr(9, s) == pytest.approx(1e-3)
    assert lr(10, s) == pytest.approx(1e-3)
    assert lr(60, s) == pytest.approx(1e-3 * (0.1 + 0.9 * 0.5)) and lr(110, s) == pytest.approx(1e-4)
    # a time budget that is half spent at step 20 puts the cosine half way
    assert lr(20, s, seconds=30.0, budget_s=60.0) == pytest.approx(1e-3 * (0.1 + 0.9 * 0.5))
    assert lr(20, s, seconds=90.0, budget_s=60.0) == pytest.approx(1e-4)


# --------------------------------------------------------------------------------- training runs
def _args(work, out, steps):
    return ["--synthetic", "6", "--val-synthetic", "3", "--width", "160", "--height", "120",
            "--arch", json.dumps(TINY), "--max-steps", str(steps), "--warmup", "3", "--val-every", "8",
            "--save-every", "4", "--lr", "2e-3", "--batch-size", "2", "--prompts", "6", "--rounds", "1",
            "--out", str(out), "--work-dir", str(work), "--device", "cpu", "--threads", "1", "--quiet"]


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    d = tmp_path_factory.mktemp("train_sam")
    work, out = d / "work", d / "sam_vit_synth.pt"
    assert train_sam_mod.main(_args(work, out, 24)) == 0
    return work, out


def test_short_training_lowers_the_validation_loss(trained):
    work, out = trained
    rows = _rows(work / "train_log.csv")
    assert [int(r["step"]) for r in rows] == [0, 8, 16, 24]
    untrained = float(rows[0]["val_loss"])
    best = min(float(r["val_loss"]) for r in rows[1:])
    assert best < 0.9 * untrained, (best, untrained)
    side = json.loads(out.with_suffix(".json").read_text())
    assert side["heldout"]["trained"]["val_loss"] == pytest.approx(best, rel=1e-4)
    assert side["heldout"]["untrained"]["val_loss"] == pytest.approx(untrained, rel=1e-4)
    assert side["arch"] == {**TINY, "global_attn_indexes": [1]}
    assert side["training"]["steps_run"] == 24 and side["training"]["command"].startswith("uois-sam-train-sam")
    assert side["bytes"] == out.stat().st_size and side["parameters"] > 0
    model = load_sam("vit_synth", out)  # the shipped-style file loads through the official loader
    assert model.image_encoder.img_size == 128
    meta = torch.load(out, weights_only=True)["meta"]
    assert meta["val_loss"] == pytest.approx(best, rel=1e-4) and meta["untrained_val_loss"] == pytest.approx(untrained, rel=1e-4)


def test_resume_continues_the_step_counter_and_the_csv(trained, tmp_path):
    work0, out0 = trained
    work, out = tmp_path / "work", tmp_path / "sam.pt"
    shutil.copytree(work0, work)
    shutil.copy(out0, out)
    # a row written after the last saved state (a run killed in between) is dropped on resume
    with open(work / "train_log.csv", "a") as f:
        f.write("26,0,0,0,,,,,9.9,0,0,0,0,\n")
    assert torch.load(work / "last.pt", weights_only=True)["step"] == 24
    assert train_sam_mod.main(_args(work, out, 32) + ["--resume"]) == 0
    assert torch.load(work / "last.pt", weights_only=True)["step"] == 32
    rows = _rows(work / "train_log.csv")
    assert [int(r["step"]) for r in rows] == [0, 8, 16, 24, 32]
    assert float(rows[0]["val_loss"]) == pytest.approx(float(_rows(work0 / "train_log.csv")[0]["val_loss"]))
    side = json.loads(out.with_suffix(".json").read_text())
    assert side["training"]["steps_run"] == 32


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert train_sam_mod.main(["--out", str(tmp_path / "x.pt")]) == 2
    assert "give --data DIR" in capsys.readouterr().err
    assert train_sam_mod.main(["--synthetic", "2", "--arch", "{\"depth\": 0}", "--out", str(tmp_path / "x.pt")]) == 2
    assert "--arch" in capsys.readouterr().err
    assert train_sam_mod.main(["--data", str(tmp_path / "missing"), "--out", str(tmp_path / "x.pt")]) == 2
    assert "not found" in capsys.readouterr().err
    assert train_sam_mod.main(["--synthetic", "2", "--resume", "--arch", json.dumps(TINY), "--width", "160",
                               "--height", "120", "--work-dir", str(tmp_path / "w"),
                               "--out", str(tmp_path / "x.pt")]) == 2
    assert "no training state" in capsys.readouterr().err
    (tmp_path / "w").mkdir(exist_ok=True)
    torch.save({"version": 1}, tmp_path / "w" / "last.pt")
    assert train_sam_mod.main(["--synthetic", "2", "--arch", json.dumps(TINY), "--width", "160", "--height", "120",
                               "--work-dir", str(tmp_path / "w"), "--out", str(tmp_path / "x.pt")]) == 2
    assert "pass --resume" in capsys.readouterr().err


def test_image_without_promptable_instances_gives_no_loss():
    """A crop with no object (or only objects under min_area) is skipped, not a crash (seen at step 78)."""
    model = _tiny()
    img = int(model.image_encoder.img_size)
    emb = torch.zeros(1, int(model.prompt_encoder.embed_dim), img // 16, img // 16)
    s = train_sam_mod.Settings()
    rng = np.random.default_rng(0)
    empty = np.zeros((img, img), np.int64)
    assert train_sam_mod.image_loss(model, emb, empty, rng, s, torch.device("cpu")) == (None, {})
    speck = empty.copy()
    speck[5, 5] = 3  # one pixel: below min_area
    assert train_sam_mod.image_loss(model, emb, speck, rng, s, torch.device("cpu")) == (None, {})


# ---------------------------------------------------------------------------- background batches
# Batches made ahead in worker threads (--prefetch, --loader-threads) must give the serial loop's
# training exactly, surface a worker's error as the trainer's, and leave no thread behind.
@pytest.fixture(scope="module")
def small_sets():
    train = train_sam_mod.synthetic_source(5, 0, 160, 120)
    val = train_sam_mod.synthetic_source(2, 10_000_000, 160, 120)
    return train, val


def _settings(steps, **kw):
    return train_sam_mod.Settings(**{"prompts": 4, "rounds": 1, "batch_size": 2, "lr": 2e-3, "warmup": 100,
                                     "max_steps": steps, "val_every": 2, "save_every": 2, **kw})


def _run(sets, work, steps, resume=False, **kw):
    train, val = sets
    train_sam_mod.train_sam(train, val, work / "sam.pt", work, arch=TINY, settings=_settings(steps), device="cpu",
                            resume=resume, progress=False, **kw)
    return torch.load(work / "last.pt", weights_only=True)


def _same_state(a, b):
    assert a["step"] == b["step"]
    assert a["model"].keys() == b["model"].keys()
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[i][k], sb[i][k]) for i in sa for k in sa[i])
    assert [h["val_loss"] for h in a["history"]] == [h["val_loss"] for h in b["history"]]


def _no_batch_threads():
    return not [t for t in threading.enumerate() if t.name.startswith(train_sam_mod.PREFETCH_THREAD)]


def test_prefetched_batches_equal_the_serial_ones(small_sets):
    train, _ = small_sets
    s = _settings(8, box_prob=0.5)
    cache: dict = {}

    def make(k, idx, stop):
        return train_sam_mod.prepare_step(train, k, idx, s, 128, 32, stop)

    def indices(k):
        return train_sam_mod._image_indices(k, s.batch_size, len(train), s.seed, cache)

    serial = [make(k, indices(k), None) for k in range(8)]
    with train_sam_mod.BatchPrefetcher(make, indices, 0, 8, depth=3, threads=2) as pf:
        ahead = [pf.get(k) for k in (0, 1, 2, 5, 6, 7)]  # a jump (as after a resume) starts over
    assert _no_batch_threads()
    for a in ahead:
        b = serial[a.step]
        assert all(np.array_equal(x, y) for ab, bb in zip(a.batch, b.batch) for x, y in zip(ab, bb))
        assert len(a.plans) == len(b.plans) == 2
        for pa, pb in zip(a.plans, b.plans):
            assert (pa is None) == (pb is None)
            if pa is not None:
                assert pa.grid == pb.grid and np.array_equal(pa.ids, pb.ids) and np.array_equal(pa.gt, pb.gt)
                assert np.array_equal(pa.points, pb.points) and np.array_equal(pa.boxes, pb.boxes, equal_nan=True)
    # the serial loop's own stream: augmentation of every image in order, then every image's plan
    rng = np.random.default_rng([s.seed, 3])
    batch = [prepare_image(*train[i], 128, rng) for i in indices(3)]
    plans = [train_sam_mod.plan_prompts(lab, rng, s, 128, 32) for _, lab in batch]
    assert np.array_equal(batch[1][0], serial[3].batch[1][0])
    assert np.array_equal(plans[1].points, serial[3].plans[1].points)


def test_prefetch_trains_exactly_as_the_serial_loop(small_sets, tmp_path):
    serial = _run(small_sets, tmp_path / "serial", 4, prefetch=0)
    _same_state(serial, _run(small_sets, tmp_path / "ahead", 4, prefetch=1))
    _same_state(serial, _run(small_sets, tmp_path / "pool", 4, prefetch=3, loader_threads=2))
    rows = [_rows(tmp_path / d / "train_log.csv") for d in ("serial", "ahead", "pool")]
    assert [r["train_loss"] for r in rows[0]] == [r["train_loss"] for r in rows[1]] == [r["train_loss"] for r in rows[2]]
    assert _no_batch_threads()


def test_resume_with_prefetch_equals_an_uninterrupted_serial_run(small_sets, tmp_path):
    # warm-up longer than the run: the lr of a step does not depend on max_steps, which a resume raises
    straight = _run(small_sets, tmp_path / "straight", 4, prefetch=0)
    _run(small_sets, tmp_path / "parts", 2, prefetch=2)
    _same_state(straight, _run(small_sets, tmp_path / "parts", 4, resume=True, prefetch=2))
    assert _no_batch_threads()


def _within(fn, seconds=60.0):
    """fn()'s exception (or None) from a daemon thread, so that a hang fails the test instead of the suite."""
    box: list = []

    def target():
        try:
            fn()
            box.append(None)
        except BaseException as e:  # noqa: BLE001 - handed to the test
            box.append(e)

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), "the trainer hung"
    return box[0]


def test_an_error_while_preparing_a_batch_is_the_trainers_error(small_sets, tmp_path):
    train, val = small_sets

    def broken(exc):
        def get(i):
            if i == 3:
                raise exc
            return train[i]
        return train_sam_mod.ImageSource("broken", len(train), get)

    def run(src, work, **kw):
        return partial(train_sam_mod.train_sam, src, val, work / "sam.pt", work, arch=TINY, settings=_settings(8),
                       progress=False, **kw)

    for k, (prefetch, threads) in enumerate([(1, 1), (3, 2)]):
        e = _within(run(broken(train_sam_mod.TrainingError("image 3 is unreadable")), tmp_path / f"w{k}",
                        prefetch=prefetch, loader_threads=threads))
        assert isinstance(e, train_sam_mod.TrainingError) and str(e) == "image 3 is unreadable"
        assert _no_batch_threads()
    # anything else propagates unchanged, as it does from the serial loop
    e = _within(run(broken(RuntimeError("boom")), tmp_path / "wr", prefetch=2))
    assert isinstance(e, RuntimeError) and str(e) == "boom"
    assert _no_batch_threads()


def test_cli_reports_an_unreadable_image_met_by_the_prefetcher(tmp_path, capsys):
    from uois_sam_ros.core.data.synthetic import SceneConfig, write_uoais_dataset

    data = tmp_path / "data"
    write_uoais_dataset(data, 5, 0, SceneConfig(width=160, height=120))
    (data / "color" / "000002.png").unlink()
    args = ["--data", str(data), "--val-synthetic", "2", "--width", "160", "--height", "120", "--arch", json.dumps(TINY),
            "--max-steps", "8", "--batch-size", "2", "--prompts", "4", "--val-every", "8", "--device", "cpu",
            "--threads", "1", "--quiet", "--out", str(tmp_path / "x.pt"), "--work-dir", str(tmp_path / "w"),
            "--prefetch", "2", "--loader-threads", "2"]
    box: list = []
    assert _within(lambda: box.append(train_sam_mod.main(args))) is None
    assert box == [2]
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "cannot read colour image" in err[-1] and "000002.png" in err[-1], err
    assert _no_batch_threads()
    assert train_sam_mod.main(args[:-4] + ["--prefetch", "-1"]) == 2
    assert "--prefetch must be >= 0" in capsys.readouterr().err


def test_closing_the_prefetcher_does_not_wait_for_a_whole_batch():
    slow = train_sam_mod.ImageSource("slow", 8, lambda i: (time.sleep(0.2), (np.zeros((32, 32, 3), np.uint8),
                                                                         np.zeros((32, 32), np.int64)))[1])
    s = train_sam_mod.Settings(batch_size=8, augment=False)

    def make(k, idx, stop):
        return train_sam_mod.prepare_step(slow, k, idx, s, 32, 8, stop)

    pf = train_sam_mod.BatchPrefetcher(make, lambda k: list(range(8)), 0, 10, depth=2, threads=2)
    time.sleep(0.3)
    t0 = time.perf_counter()
    pf.close()
    assert time.perf_counter() - t0 < 0.6  # a batch takes 1.6 s: the workers stopped at their next image
    assert _no_batch_threads()
