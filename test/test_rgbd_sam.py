"""The RGB-D small SAM (vit_synth with in_chans 4): the depth channel, the resize, the widening of an
RGB checkpoint, and the segmenter, SAMEO's input and the trainer taking depth."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from segment_anything.utils.transforms import ResizeLongestSide

from uois_sam_ros.core.amodal.sameo import prepare_image as sameo_prepare_image
from uois_sam_ros.core.config import SamConfig
from uois_sam_ros.core.segment.depth_channel import (
    DEPTH_CENTRE,
    DEPTH_STEP_M,
    depth_code,
    encoder_channels,
    encoder_image,
    resize_longest_side,
)
from uois_sam_ros.core.segment.sam_backend import (
    SamSegmenter,
    build_vit_synth,
    check_synth_arch,
    load_sam,
    save_sam_synth,
)
from uois_sam_ros.core.types import Frame, FrameError, Prompts
from uois_sam_ros.training import sam as train_sam_mod
from uois_sam_ros.training.sam import PATCH_EMBED_KEY, init_fits, widen_input

torch.set_num_threads(1)

TINY = {"img_size": 128, "patch_size": 16, "embed_dim": 32, "depth": 2, "num_heads": 2, "mlp_ratio": 2.0,
        "window_size": 4, "global_attn_indexes": [1], "decoder_dim": 32, "decoder_depth": 1, "decoder_heads": 2,
        "decoder_mlp_dim": 64, "iou_head_hidden_dim": 32, "mask_in_chans": 4}
TINY_D = {**TINY, "in_chans": 4}


def _scene(h: int = 120, w: int = 160) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    rgb = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
    depth = np.full((h, w), 0.8, np.float32)
    depth[30:70, 40:90] = 0.7  # a box 10 cm in front of the table
    depth[:10] = 0.0  # a band without depth
    depth[100:105, 10:20] = np.nan
    return rgb, depth


def test_depth_code_is_relative_to_the_median_and_keeps_holes_at_zero():
    _, depth = _scene()
    code = depth_code(depth)
    assert code.dtype == np.uint8 and code.shape == depth.shape
    assert code[50, 120] == DEPTH_CENTRE  # the table is the median
    assert code[50, 60] == DEPTH_CENTRE - round(0.1 / DEPTH_STEP_M)  # 10 cm nearer: 25 levels lower
    assert (code[:10] == 0).all() and (code[100:105, 10:20] == 0).all()
    assert code[depth > 0].min() >= 1  # no valid pixel looks like a hole
    # the same scene 30 cm farther from the camera codes the same: only the steps matter
    shifted = np.where(depth > 0, depth + 0.3, depth)
    assert np.array_equal(depth_code(shifted), code)
    far = depth.copy()
    far[60:62, 100:110] = 5.0  # beyond the +-0.5 m range: clipped, not wrapped
    assert depth_code(far)[60, 100] == 255
    assert not depth_code(np.zeros((4, 4), np.float32)).any()


def test_encoder_image_and_its_errors():
    rgb, depth = _scene()
    assert encoder_image(rgb, depth, 3) is rgb
    four = encoder_image(rgb, depth, 4)
    assert four.shape == (120, 160, 4) and np.array_equal(four[..., :3], rgb)
    assert np.array_equal(four[..., 3], depth_code(depth))
    with pytest.raises(FrameError, match="takes RGB-D.*no depth"):
        encoder_image(rgb, None, 4)
    with pytest.raises(FrameError, match="does not match colour size"):
        encoder_image(rgb, depth[:, :100], 4)
    with pytest.raises(ValueError, match="3 \\(RGB\\) or 4"):
        encoder_image(rgb, depth, 2)


def test_resize_keeps_the_colour_as_sam_resizes_it_and_never_blends_holes():
    rgb, depth = _scene(480, 640)
    four = encoder_image(rgb, depth, 4)
    out = resize_longest_side(four, 512)
    assert out.shape == (384, 512, 4)
    # the colour is exactly SamPredictor's resize, whatever the depth channel holds (PIL would take
    # the fourth channel for alpha and blacken the colour over every hole)
    assert np.array_equal(out[..., :3], ResizeLongestSide(512).apply_image(rgb))
    assert set(np.unique(out[..., 3])) <= set(np.unique(four[..., 3]))  # nearest: no blended depths
    assert (out[:6, :, 3] == 0).all()
    assert np.array_equal(resize_longest_side(rgb, 512), ResizeLongestSide(512).apply_image(rgb))


def test_arch_in_chans_is_optional_checked_and_builds_a_four_channel_encoder():
    assert "in_chans" not in check_synth_arch(TINY)  # RGB archs stay as they were stored
    assert check_synth_arch({**TINY, "in_chans": 3}) == check_synth_arch(TINY)
    assert check_synth_arch(TINY_D)["in_chans"] == 4
    with pytest.raises(ValueError, match="in_chans 5"):
        check_synth_arch({**TINY, "in_chans": 5})
    model = build_vit_synth(TINY_D)
    assert encoder_channels(model) == 4 and encoder_channels(build_vit_synth(TINY)) == 3
    assert model.pixel_mean.shape == (4, 1, 1)


def test_widening_an_rgb_checkpoint_changes_nothing_until_the_depth_weights_learn():
    torch.manual_seed(0)
    rgb_model = build_vit_synth(TINY).eval()
    state = widen_input(rgb_model.state_dict(), 4)
    assert state[PATCH_EMBED_KEY].shape[1] == 4 and not state[PATCH_EMBED_KEY][:, 3].any()
    wide = build_vit_synth(TINY_D).eval()
    wide.load_state_dict(state)
    rgb, depth = _scene()
    x3 = torch.as_tensor(resize_longest_side(rgb, 128)).permute(2, 0, 1)[None].float()
    x4 = torch.as_tensor(resize_longest_side(encoder_image(rgb, depth, 4), 128)).permute(2, 0, 1)[None].float()
    with torch.no_grad():
        e3 = rgb_model.image_encoder(rgb_model.preprocess(x3))
        e4 = wide.image_encoder(wide.preprocess(x4))
        assert torch.allclose(e3, e4, atol=1e-5)
        wide.image_encoder.patch_embed.proj.weight[:, 3] = 0.05  # once they are not zero, depth counts
        assert not torch.allclose(e3, wide.image_encoder(wide.preprocess(x4)), atol=1e-3)
    assert init_fits(check_synth_arch(TINY), check_synth_arch(TINY_D))
    assert not init_fits(check_synth_arch(TINY_D), check_synth_arch(TINY))  # never narrowed
    assert not init_fits(check_synth_arch(TINY), check_synth_arch({**TINY_D, "depth": 3}))


def test_segmenter_and_sameo_feed_depth_to_an_rgbd_sam(tmp_path):
    torch.manual_seed(1)
    model = build_vit_synth(TINY_D).eval()
    with torch.no_grad():
        model.image_encoder.patch_embed.proj.weight[:, 3] += 0.05
    path = tmp_path / "rgbd.pt"
    save_sam_synth(path, model, TINY_D)
    loaded = load_sam("vit_synth", path)
    assert encoder_channels(loaded) == 4
    seg = SamSegmenter(SamConfig(model_type="vit_synth", checkpoint=str(path), device="cpu"))
    assert seg.in_chans == 4
    rgb, depth = _scene()
    with pytest.raises(FrameError, match="needs depth"):
        seg.set_frame(Frame(rgb=rgb))
    seg.set_frame(Frame(rgb=rgb, depth=depth))
    assert seg.predictor.original_size == (120, 160) and seg.predictor.input_size == (96, 128)
    x = torch.as_tensor(resize_longest_side(encoder_image(rgb, depth, 4), 128)).permute(2, 0, 1)[None].float()
    with torch.no_grad():
        want = loaded.image_encoder(loaded.preprocess(x))
    assert torch.allclose(seg.embedding, want, atol=1e-5)
    emb_a = seg.embedding.clone()
    seg.set_frame(Frame(rgb=rgb, depth=np.where(depth > 0, 0.8, 0).astype(np.float32)))  # the box flattened
    assert not torch.allclose(emb_a, seg.embedding, atol=1e-4)
    dec = seg.decode(Prompts(np.array([[60, 50]], np.float32), np.ones(1), np.ones(1)))
    assert dec.masks.shape == (1, 4, 120, 160)
    # SAMEO's encoder input is the same image the segmenter encodes
    image, hw = sameo_prepare_image(loaded, rgb, depth)
    assert hw == (96, 128) and image.shape == (1, 4, 128, 128)
    assert torch.allclose(image, loaded.preprocess(x))
    with pytest.raises(FrameError, match="no depth"):
        sameo_prepare_image(loaded, rgb)


def test_trainer_widens_an_rgb_init_to_rgbd_and_trains_it(tmp_path, capsys):
    torch.manual_seed(2)
    init = tmp_path / "rgb.pt"
    save_sam_synth(init, build_vit_synth(TINY).eval(), TINY)
    work, out = tmp_path / "w", tmp_path / "rgbd.pt"
    args = ["--synthetic", "4", "--val-synthetic", "2", "--width", "160", "--height", "120", "--init", str(init),
            "--arch", json.dumps({"in_chans": 4}), "--max-steps", "4", "--warmup", "1", "--val-every", "4",
            "--save-every", "4", "--lr", "2e-3", "--batch-size", "2", "--prompts", "4", "--rounds", "0",
            "--out", str(out), "--work-dir", str(work), "--device", "cpu", "--threads", "1", "--quiet"]
    assert train_sam_mod.main(args) == 0
    side = json.loads(out.with_suffix(".json").read_text())
    assert side["arch"]["in_chans"] == 4
    rows = (work / "train_log.csv").read_text().splitlines()
    assert len(rows) == 3  # header, the init's validation, step 4
    model = load_sam("vit_synth", out)
    w = model.image_encoder.patch_embed.proj.weight
    assert w.shape[1] == 4 and w[:, 3].abs().sum() > 0  # the depth weights started at zero and learned
    # an RGB-D checkpoint cannot start an RGB run
    assert train_sam_mod.main(["--synthetic", "2", "--width", "160", "--height", "120", "--init", str(out),
                               "--arch", json.dumps({"in_chans": 3}), "--out", str(tmp_path / "x.pt"),
                               "--work-dir", str(tmp_path / "w2"), "--device", "cpu", "--quiet"]) == 2
    assert "only in_chans 3 -> 4 may differ" in capsys.readouterr().err
