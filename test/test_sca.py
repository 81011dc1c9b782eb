"""Spatial Completion Adapters (Amodal SAM): zero-initialised adapters leave SAM unchanged,
trained ones change it, checkpoints round-trip, the regional-consistency loss and box priors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from uois_sam_ros.core.amodal.sca import (
    SpatialCompletion,
    adapter_optimizer,
    box_prior,
    default_blocks,
    expand_boxes,
    load_sca,
    regional_consistency_loss,
    save_sca,
    sca_step,
)
from uois_sam_ros.core.segment.sam_backend import build_vit_synth
from uois_sam_ros.core.weights import CheckpointError

TINY = {"img_size": 128, "patch_size": 16, "embed_dim": 32, "depth": 3, "num_heads": 2, "mlp_ratio": 2.0,
        "window_size": 4, "global_attn_indexes": [2], "decoder_dim": 32, "decoder_depth": 1, "decoder_heads": 2,
        "decoder_mlp_dim": 64, "iou_head_hidden_dim": 32, "mask_in_chans": 4}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _sam(seed: int = 0):
    torch.manual_seed(seed)
    return build_vit_synth(TINY).eval()


def test_default_blocks_are_shallow_middle_deep():
    assert default_blocks(12) == (0, 6, 11)
    assert default_blocks(6) == (0, 3, 5)
    assert default_blocks(1) == (0,)


def test_zero_initialised_adapters_leave_the_encoder_bit_identical():
    sam = _sam()
    x = torch.randn(2, 3, 128, 128)
    with torch.no_grad():
        ref = sam.image_encoder(x)
        sca = SpatialCompletion.for_encoder(sam.image_encoder, hidden=8).attach(sam.image_encoder)
        assert sca.blocks == (0, 1, 2) and all(a.iterations == 3 for a in sca.adapters.values())
        prior = box_prior(torch.tensor([[10.0, 20.0, 70.0, 90.0], [0.0, 0.0, 128.0, 128.0]]), 128)
        got = sca.encode(sam.image_encoder, x, prior)
        assert torch.equal(got, ref)  # bit-identical, not merely close
        assert torch.equal(sam.image_encoder(x), ref)  # no prior set: the hooks pass through
        # a trained (non-zero) output gate changes the features, and only where adapters act
        for a in sca.adapters.values():
            a.gate_out.fill_(0.5)
        moved = sca.encode(sam.image_encoder, x, prior)
        assert not torch.equal(moved, ref)
        sca.detach()
        assert torch.equal(sam.image_encoder(x), ref)


def test_adapter_checkpoint_round_trip_and_mismatch(tmp_path):
    sam = _sam()
    sca = SpatialCompletion.for_encoder(sam.image_encoder, hidden=8)
    with torch.no_grad():
        for a in sca.adapters.values():
            a.gate_out.normal_()
    path = tmp_path / "sca.pt"
    save_sca(path, sca, {"note": "test"})
    back = load_sca(path, sam.image_encoder)
    for k, v in sca.state_dict().items():
        assert torch.equal(v, back.state_dict()[k])
    x = torch.randn(1, 3, 128, 128)
    prior = box_prior(torch.tensor([[8.0, 8.0, 60.0, 60.0]]), 128)
    other = _sam()  # the same weights as sam
    sca.attach(other.image_encoder)
    with torch.no_grad():
        assert torch.equal(sca.encode(other.image_encoder, x, prior), back.encode(sam.image_encoder, x, prior))
    wide = build_vit_synth({**TINY, "embed_dim": 48, "num_heads": 2})
    with pytest.raises(CheckpointError, match="width 32"):
        load_sca(path, wide.image_encoder)
    (tmp_path / "bad.pt").write_bytes(b"nope")
    with pytest.raises(CheckpointError, match="bad.pt"):
        load_sca(tmp_path / "bad.pt")


def test_box_expansion_and_prior():
    b = expand_boxes(np.array([[10.0, 20.0, 20.0, 40.0]]), 0.2)
    assert b.tolist() == [[8.0, 16.0, 22.0, 44.0]]  # 0.2 of the side on each side: 1.44x the area
    clipped = expand_boxes(np.array([[0.0, 0.0, 10.0, 10.0]]), 0.2, width=11.0, height=11.0)
    assert clipped.tolist() == [[0.0, 0.0, 11.0, 11.0]]
    p = box_prior(torch.tensor([[2.0, 1.0, 5.0, 3.0]]), 8)
    assert p.shape == (1, 1, 8, 8)
    expect = np.zeros((8, 8))
    expect[1:3, 2:5] = 1  # pixel centres (i + 0.5) inside the box
    assert np.array_equal(p[0, 0].numpy(), expect)


def test_regional_consistency_loss():
    f = torch.zeros(2, 3, 4, 4)
    vis = torch.zeros(2, 4, 4, dtype=torch.bool)
    occ = torch.zeros(2, 4, 4, dtype=torch.bool)
    vis[:, :2], occ[:, 2:] = True, True
    f[0, 0] = 1.0  # item 0: the same feature everywhere -> cos 1 -> loss 0
    f[1, 0, :2] = 1.0
    f[1, 1, 2:] = 1.0  # item 1: orthogonal features -> loss 1
    assert float(regional_consistency_loss(f[:1], vis[:1], occ[:1])) == pytest.approx(0.0, abs=1e-6)
    assert float(regional_consistency_loss(f[1:], vis[1:], occ[1:])) == pytest.approx(1.0, abs=1e-6)
    assert float(regional_consistency_loss(f, vis, occ)) == pytest.approx(0.5, abs=1e-6)
    # an unoccluded item is left out; masks on a finer grid are area-resized to the features
    none = torch.zeros_like(occ)
    assert float(regional_consistency_loss(f, vis, none)) == 0.0
    fine_vis = vis.repeat_interleave(2, 1).repeat_interleave(2, 2)
    fine_occ = occ.repeat_interleave(2, 1).repeat_interleave(2, 2)
    assert float(regional_consistency_loss(f, fine_vis, fine_occ)) == pytest.approx(0.5, abs=1e-6)


def test_sca_step_trains_only_the_adapters():
    from uois_sam_ros.core.amodal.sameo import prepare_item

    sam = _sam()
    sca = SpatialCompletion.for_encoder(sam.image_encoder, hidden=8).attach(sam.image_encoder)
    opt = adapter_optimizer(sam, sca, lr=1e-2)
    before = {k: v.clone() for k, v in sam.state_dict().items()}
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (96, 128, 3), dtype=np.uint8)
    vis = np.zeros((2, 96, 128), bool)
    vis[0, 20:50, 20:40] = True
    vis[1, 50:80, 70:110] = True
    am = vis.copy()
    am[0, 20:50, 40:60] = True
    item = prepare_item(sam, rgb, vis, am)
    out = sca_step(sam, sca, opt, [item], rng, max_instances=2)
    assert set(out) == {"loss", "seg", "reg"} and np.isfinite(out["loss"])
    assert any(float(a.gate_out.detach().abs().sum()) > 0 for a in sca.adapters.values())  # the gates moved off zero
    for k, v in sam.state_dict().items():
        assert torch.equal(v, before[k]), f"SAM weight {k} changed"
