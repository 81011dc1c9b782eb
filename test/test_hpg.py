"""HPG: network shapes per backbone, DINOv2 official-layout loading, checkpoints, peak selection."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from uois_sam_ros.core.config import ConfigError, HPGConfig, config_from_dict
from uois_sam_ros.core.segment.hpg import (
    HPG,
    HPGCheckpointError,
    HPGNet,
    checkpoint_peak_kernel,
    crop_sam_embedding,
    default_hpg_checkpoint,
    load_hpg_checkpoint,
    normalise_depth,
    preprocess,
    save_hpg_checkpoint,
    select_peaks,
)
from uois_sam_ros.core.types import Frame, FrameError
from uois_sam_ros.core.weights import CheckpointError, OperatingPointWarning

torch.set_num_threads(2)


def _cfg(**kw) -> HPGConfig:
    base = dict(fg_threshold=0.85, heatmap_threshold=0.007, top_k=30, peak_kernel=3)
    base.update(kw)
    return HPGConfig(**base)


# ---------------------------------------------------------------- peak selection


def test_peaks_exact_points_and_scores():
    heat = np.zeros((20, 30), np.float32)
    heat[5, 7] = 0.9
    heat[12, 20] = 0.5
    heat[15, 3] = 0.2
    fg = np.ones_like(heat)
    p = select_peaks(fg, heat, _cfg())
    assert p.points.tolist() == [[7, 5], [20, 12], [3, 15]]  # x = column, y = row, by score
    np.testing.assert_allclose(p.scores, [0.9, 0.5, 0.2])
    assert p.labels.tolist() == [1, 1, 1]


def test_peaks_heatmap_threshold_is_strict():
    heat = np.zeros((10, 10), np.float32)
    heat[2, 2] = 0.007  # equal to the threshold: not above it
    heat[7, 7] = 0.0071
    p = select_peaks(np.ones_like(heat), heat, _cfg())
    assert p.points.tolist() == [[7, 7]]


def test_peaks_need_foreground_above_threshold():
    heat = np.zeros((10, 10), np.float32)
    heat[2, 2] = 0.8
    heat[7, 7] = 0.6
    fg = np.zeros_like(heat)
    fg[2, 2] = 0.85  # not above 0.85
    fg[7, 7] = 0.86
    p = select_peaks(fg, heat, _cfg())
    assert p.points.tolist() == [[7, 7]]


def test_peaks_3x3_suppression():
    heat = np.zeros((12, 12), np.float32)
    heat[5, 5] = 0.9
    heat[4, 4] = 0.8  # diagonal neighbour: suppressed by the 3x3 window
    heat[5, 7] = 0.7  # two columns away: its own local max in 3x3, not in 5x5
    p = select_peaks(np.ones_like(heat), heat, _cfg())
    assert p.points.tolist() == [[5, 5], [7, 5]]
    p5 = select_peaks(np.ones_like(heat), heat, _cfg(peak_kernel=5))
    assert p5.points.tolist() == [[5, 5]]


def test_peaks_top_k_cap_keeps_the_highest():
    heat = np.zeros((40, 40), np.float32)
    vals = np.linspace(0.1, 0.9, 50)
    coords = [(r, c) for r in range(1, 40, 4) for c in range(1, 40, 4)][:50]
    for (r, c), v in zip(coords, vals):
        heat[r, c] = v
    p = select_peaks(np.ones_like(heat), heat, _cfg(top_k=30))
    assert len(p) == 30
    np.testing.assert_allclose(p.scores, np.sort(vals)[::-1][:30], rtol=1e-6)


def test_peaks_scale_to_original_resolution():
    heat = np.zeros((336, 448), np.float32)
    heat[0, 0] = 0.5
    heat[168, 224] = 0.9
    p = select_peaks(np.ones_like(heat), heat, _cfg(), scale_to=(480, 640))
    # pixel centres map centre to centre: (c + 0.5) * 640 / 448 - 0.5
    np.testing.assert_allclose(p.points, [[224.5 * 640 / 448 - 0.5, 168.5 * 480 / 336 - 0.5],
                                          [0.5 * 640 / 448 - 0.5, 0.5 * 480 / 336 - 0.5]], rtol=1e-5)


def test_peaks_empty_and_shape_mismatch():
    assert len(select_peaks(np.ones((8, 8)), np.zeros((8, 8)), _cfg())) == 0
    with pytest.raises(ValueError, match="must be equal"):
        select_peaks(np.ones((8, 8)), np.zeros((8, 9)), _cfg())


# ---------------------------------------------------------------- network


@pytest.mark.parametrize("backbone", ["cnn_rgbd", "cnn_rgb"])
def test_cnn_outputs_at_input_resolution(backbone):
    net = HPGNet(backbone, width=8).eval()
    rgb = torch.randn(2, 3, 96, 128)
    depth = torch.randn(2, 1, 96, 128) if backbone == "cnn_rgbd" else None
    fg, heat = net(rgb, depth)
    assert fg.shape == (2, 2, 96, 128) and heat.shape == (2, 1, 96, 128)
    blocks = [m for m in net.modules() if type(m).__name__ == "UpBlock"]
    assert len(blocks) == 4
    assert isinstance(blocks[0].act, torch.nn.PReLU) and isinstance(blocks[0].bn, torch.nn.BatchNorm2d)


def test_cnn_rgbd_requires_depth():
    with pytest.raises(ValueError, match="needs a depth tensor"):
        HPGNet("cnn_rgbd", width=8)(torch.randn(1, 3, 64, 64), None)


def test_sam_backbone_takes_the_embedding():
    net = HPGNet("sam", input_size=(96, 128), head_channels=32).eval()
    emb = torch.randn(1, 256, 64, 64)
    crop = crop_sam_embedding(emb, (480, 640), 1024)
    assert crop.shape == (1, 256, 48, 64)  # 480x640 -> 768x1024 of the 1024 square
    fg, heat = net(crop, None)
    assert fg.shape == (1, 2, 96, 128) and heat.shape == (1, 1, 96, 128)
    with pytest.raises(ValueError, match="SAM's image embedding"):
        net(torch.randn(1, 3, 96, 128), None)


def test_unknown_backbone():
    with pytest.raises(ValueError, match="unknown HPG backbone 'resnet'"):
        HPGNet("resnet")


@pytest.fixture(scope="module")
def official_dinov2() -> dict[str, torch.Tensor]:
    """A random state dict with the official dinov2_vits14_pretrain.pth layout (518 px, 1370 tokens)."""
    import timm

    ref = timm.create_model("vit_small_patch14_dinov2", pretrained=False, img_size=518, num_classes=0)
    sd = {k: v.clone() for k, v in ref.state_dict().items()}
    sd["mask_token"] = torch.zeros(1, 384)
    return sd


def test_dinov2_loads_official_layout(tmp_path, official_dinov2):
    sd = official_dinov2
    assert sd["pos_embed"].shape == (1, 1370, 384) and "blocks.11.ls2.gamma" in sd
    path = tmp_path / "dinov2_vits14_pretrain.pth"
    torch.save(sd, path)
    net = HPGNet("dinov2_vits14", input_size=(112, 140), head_channels=32, backbone_checkpoint=str(path)).eval()
    got = net.backbone.state_dict()
    torch.testing.assert_close(got["blocks.3.attn.qkv.weight"], sd["blocks.3.attn.qkv.weight"])
    torch.testing.assert_close(got["patch_embed.proj.weight"], sd["patch_embed.proj.weight"])
    assert got["pos_embed"].shape == (1, 1 + 8 * 10, 384)  # resampled to the 112x140 grid
    assert not any(p.requires_grad for p in net.backbone.parameters())  # frozen, as in the paper
    fg, heat = net(torch.randn(1, 3, 112, 140))
    assert fg.shape == (1, 2, 112, 140) and heat.shape == (1, 1, 112, 140)


def test_dinov2_wrong_file_is_named(tmp_path, official_dinov2):
    bad = tmp_path / "not_dino.pth"
    torch.save({"weight": torch.zeros(3)}, bad)
    with pytest.raises(HPGCheckpointError, match="not the official DINOv2 layout"):
        HPGNet("dinov2_vits14", input_size=(112, 140), backbone_checkpoint=str(bad))
    sd = dict(official_dinov2)
    sd["blocks.0.attn.qkv.weight"] = torch.zeros(10, 384)
    del sd["norm.bias"]
    torch.save(sd, bad)
    with pytest.raises(CheckpointError, match=r"missing keys: norm.bias.*mismatched shapes: blocks.0.attn.qkv.weight"):
        HPGNet("dinov2_vits14", input_size=(112, 140), backbone_checkpoint=str(bad))


# ---------------------------------------------------------------- checkpoints


def test_checkpoint_round_trip(tmp_path):
    torch.manual_seed(0)
    net = HPGNet("cnn_rgbd", width=8, input_size=(64, 80)).eval()
    path = tmp_path / "hpg.pt"
    save_hpg_checkpoint(path, net, {"epochs": 3, "val_loss": 0.25})
    loaded = load_hpg_checkpoint(path)
    assert loaded.arch() == net.arch() and loaded.meta == {"epochs": 3, "val_loss": 0.25}
    x, d = torch.randn(1, 3, 64, 80), torch.randn(1, 1, 64, 80)
    with torch.no_grad():
        for a, b in zip(net(x, d), loaded(x, d)):
            torch.testing.assert_close(a, b)


def test_checkpoint_errors(tmp_path):
    with pytest.raises(HPGCheckpointError, match="not found"):
        load_hpg_checkpoint(tmp_path / "nope.pt")
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"\x00garbage" * 100)
    with pytest.raises(HPGCheckpointError, match="corrupt"):
        load_hpg_checkpoint(corrupt)
    plain = tmp_path / "plain.pt"
    torch.save({"a": torch.zeros(1)}, plain)
    with pytest.raises(HPGCheckpointError, match="not an HPG checkpoint"):
        load_hpg_checkpoint(plain)
    net = HPGNet("cnn_rgb", width=8)
    path = tmp_path / "hpg.pt"
    save_hpg_checkpoint(path, net)
    blob = torch.load(path, weights_only=True)
    blob["arch"]["width"] = 16  # weights no longer fit the declared arch
    torch.save(blob, path)
    with pytest.raises(CheckpointError, match="mismatched shapes"):
        load_hpg_checkpoint(path)


def test_default_checkpoint_is_the_packaged_file():
    p = default_hpg_checkpoint()
    if p is not None:
        assert p.name == "hpg_cnn_rgbd.pt" and p.is_file()
        assert load_hpg_checkpoint(p).backbone_name == "cnn_rgbd"


def test_peak_kernel_zero_is_the_papers_3_in_select_peaks():
    heat = np.zeros((12, 12), np.float32)
    heat[5, 5], heat[4, 4], heat[5, 7] = 0.9, 0.8, 0.7
    ones = np.ones_like(heat)
    assert (select_peaks(ones, heat, _cfg(peak_kernel=0)).points.tolist()
            == select_peaks(ones, heat, _cfg(peak_kernel=3)).points.tolist() == [[5, 5], [7, 5]])
    for bad in (-2, 2.5, True):
        with pytest.raises(ConfigError, match="hpg.peak_kernel must be an integer >= 1, or 0"):
            _cfg(peak_kernel=bad)
    with pytest.raises(ConfigError, match="hpg.peak_kernel"):
        config_from_dict({"hpg": {"peak_kernel": -1}})


def _hpg_file(tmp_path, sidecar: str | None):
    net = HPGNet("cnn_rgbd", width=8, input_size=(48, 64))
    path = tmp_path / "hpg.pt"
    save_hpg_checkpoint(path, net)
    if sidecar is not None:
        path.with_suffix(".json").write_text(sidecar)
    return path


def test_the_checkpoints_own_peak_kernel_is_used_while_the_config_says_0(tmp_path):
    path = _hpg_file(tmp_path, '{"operating_point": {"peak_kernel": 7}}')
    assert checkpoint_peak_kernel(path) == 7
    hpg = HPG(_cfg(peak_kernel=0, checkpoint=str(path), device="cpu"))
    assert hpg.own_peak_kernel == 7 and hpg.peak_config().peak_kernel == 7
    hpg.cfg = _cfg(peak_kernel=5, checkpoint=str(path))  # as UOISPipeline.reconfigure does
    assert hpg.peak_config().peak_kernel == 5
    hpg.cfg = _cfg(peak_kernel=0, checkpoint=str(path))
    assert hpg.peak_config().peak_kernel == 7
    # a model passed in, a checkpoint without a sidecar or without an operating point: the paper's 3
    assert HPG(_cfg(peak_kernel=0, device="cpu"), HPGNet("cnn_rgbd", width=8)).peak_config().peak_kernel == 3
    path.with_suffix(".json").unlink()
    assert checkpoint_peak_kernel(path) == 3
    path.with_suffix(".json").write_text('{"arch": {}}')
    assert checkpoint_peak_kernel(path) == 3


@pytest.mark.parametrize("text, reason", [
    ("{oops", "JSONDecodeError"),
    ('{"operating_point": {}}', "KeyError"),
    ('{"operating_point": {"peak_kernel": 0}}', "positive integer"),
    ('{"operating_point": {"peak_kernel": 2.5}}', "positive integer"),
])
def test_an_unreadable_peak_kernel_warns_and_keeps_the_papers(tmp_path, text, reason):
    path = _hpg_file(tmp_path, text)
    with pytest.warns(OperatingPointWarning, match=reason):
        assert checkpoint_peak_kernel(path) == 3


def test_the_shipped_hpg_carries_its_operating_point():
    p = default_hpg_checkpoint()
    if p is None:
        pytest.skip("no HPG shipped in the package")
    # the paper's 3x3: this HPG's heatmap has one sharp peak per object (its sidecar gives the sweep)
    assert checkpoint_peak_kernel(p) == 3
    assert HPG(HPGConfig(device="cpu")).peak_config().peak_kernel == 3  # the config default is 0


# ---------------------------------------------------------------- preprocessing and the prompt source


def _frame(h=120, w=160, depth=True) -> Frame:
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
    d = np.full((h, w), 0.8, np.float32)
    d[:10] = 0.0
    d[10:20] = np.nan
    d[60:80, 60:80] = 0.7
    return Frame(rgb=rgb, depth=d if depth else None)


def test_preprocess_shapes_and_depth_normalisation():
    cfg = _cfg(input_height=60, input_width=80)
    t = preprocess(_frame(), cfg)
    assert t["rgb"].shape == (1, 3, 60, 80) and t["depth"].shape == (1, 1, 60, 80)
    assert abs(float(t["rgb"].mean())) < 2.5
    d = normalise_depth(_frame().depth, (120, 160))
    assert np.all(d[:20] == 0)  # invalid (0 and NaN) -> 0
    assert d[70, 70] == pytest.approx((0.7 - 0.8) / 0.2)  # centred on the median (0.8 m)
    assert np.isfinite(d).all()
    assert "depth" not in preprocess(_frame(depth=False), cfg)


def test_hpg_prompt_source_maps_to_frame_pixels():
    torch.manual_seed(0)
    net = HPGNet("cnn_rgbd", width=8).eval()
    hpg = HPG(_cfg(input_height=48, input_width=64, fg_threshold=0.0, heatmap_threshold=-1e9, top_k=5), net)
    fr = _frame()
    p = hpg.prompts(fr)
    assert len(p) == 5 and hpg.last_fg.shape == (48, 64)
    assert (p.points[:, 0] >= -0.5).all() and (p.points[:, 0] <= 160).all()
    assert (p.points[:, 1] >= -0.5).all() and (p.points[:, 1] <= 120).all()
    # the scores are the heatmap values at the peaks
    peaks = select_peaks(hpg.last_fg, hpg.last_heatmap, hpg.cfg)
    np.testing.assert_allclose(p.scores, peaks.scores)
    fg, heat = hpg.predict(fr)
    assert fg.shape == (120, 160) and heat.shape == (120, 160) and (fg >= 0).all() and (fg <= 1).all()
    with pytest.raises(FrameError, match="needs depth"):
        hpg.prompts(_frame(depth=False))


def test_hpg_without_checkpoint_is_a_clear_error():
    with pytest.raises(HPGCheckpointError, match="set hpg.checkpoint"):
        HPG(_cfg(backbone="dinov2_vits14"))


def test_the_cpu_runs_the_cnn_channels_last_with_the_same_maps_and_prompts():
    """On a CPU the CNN backbones run in NHWC (oneDNN's layout, faster): same maps to float32
    rounding, same peaks, and the network's state dict keeps its keys and values."""
    import copy

    net = load_hpg_checkpoint(default_hpg_checkpoint())
    ref_state = {k: v.clone() for k, v in net.state_dict().items()}
    cfg = _cfg(fg_threshold=0.0, heatmap_threshold=-1e9)  # its 30 highest peaks, whatever the scene
    fr = _frame(h=240, w=320)
    fast = HPG(cfg, copy.deepcopy(net))
    assert fast.channels_last
    assert fast.model.backbone.stages[0][0][0].weight.is_contiguous(memory_format=torch.channels_last)
    plain = HPG(cfg, copy.deepcopy(net))
    plain.use_channels_last(False)
    assert plain.model.backbone.stages[0][0][0].weight.is_contiguous()
    pf, pp = fast.prompts(fr), plain.prompts(fr)
    np.testing.assert_allclose(fast.last_fg, plain.last_fg, atol=1e-5)
    np.testing.assert_allclose(fast.last_heatmap, plain.last_heatmap, atol=1e-5)
    assert len(pf) == 30
    np.testing.assert_array_equal(pf.points, pp.points)
    state = fast.model.state_dict()
    assert set(state) == set(ref_state) and all(torch.equal(state[k], ref_state[k]) for k in ref_state)
    # not on other backbones
    assert not HPG(cfg, HPGNet("sam", sam_dim=32).eval()).channels_last
