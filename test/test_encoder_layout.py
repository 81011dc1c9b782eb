"""sam.encoder chunked (core/segment/encoder_layout.py) computes segment-anything's Attention.forward.

The banded attention is compared with the library's forward on the same modules: windowed and
global blocks with non-zero relative positions, several bands per tensor, the whole shipped small
SAM's embedding, autocast, and the gradient path (which must stay the library's)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from segment_anything.modeling.image_encoder import Attention

from uois_sam_ros.core.config import ConfigError, SamConfig, config_from_dict
from uois_sam_ros.core.segment import encoder_layout
from uois_sam_ros.core.segment.sam_backend import SamSegmenter, build_sam_architecture, default_sam_checkpoint
from uois_sam_ros.core.types import Frame, Intrinsics

torch.set_num_threads(1)


def _attention(dim: int = 64, heads: int = 4, size: tuple[int, int] = (12, 10), seed: int = 0) -> Attention:
    torch.manual_seed(seed)
    m = Attention(dim, heads, use_rel_pos=True, input_size=size).eval()
    with torch.no_grad():  # the library zero-initialises them: non-zero so that the two terms count
        m.rel_pos_h.normal_(0, 0.5)
        m.rel_pos_w.normal_(0, 0.5)
    return m


@pytest.mark.parametrize("size,batch", [((12, 10), 1), ((7, 7), 6)])  # one global map; six windows
def test_banded_attention_equals_the_library(size, batch, monkeypatch):
    m = _attention(size=size)
    x = torch.randn(batch, *size, 64)
    with torch.inference_mode():
        ref = Attention.forward(m, x)
        whole = encoder_layout.chunked_forward(m, x)
        # bands of a few rows: the scores of 3 rows are under the limit, of 4 not
        monkeypatch.setattr(encoder_layout, "CHUNK_BYTES", batch * 4 * 3 * size[1] * size[0] * size[1] * 4)
        assert encoder_layout._rows_per_band(batch * 4, size[0], size[1], 4, x.device) == 3
        banded = encoder_layout.chunked_forward(m, x)
    assert banded.shape == ref.shape == x.shape
    torch.testing.assert_close(whole, ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(banded, ref, rtol=1e-5, atol=1e-6)
    assert not torch.equal(ref, Attention.forward(_attention(size=size, seed=1), x).detach())


def test_without_relative_positions_too():
    torch.manual_seed(0)
    m = Attention(32, 2, use_rel_pos=False).eval()
    x = torch.randn(1, 5, 6, 32)
    with torch.inference_mode():
        torch.testing.assert_close(encoder_layout.chunked_forward(m, x), Attention.forward(m, x))


def test_gradients_take_the_library_path():
    """In-place softmax has no gradient: with autograd on, the library's forward runs."""
    m = _attention()
    x = torch.randn(1, 12, 10, 64, requires_grad=True)
    y = encoder_layout.chunked_forward(m, x)
    y.square().sum().backward()
    g = x.grad.clone()
    x.grad = None
    Attention.forward(m, x).square().sum().backward()
    torch.testing.assert_close(g, x.grad)
    assert m.rel_pos_h.grad is not None and m.rel_pos_h.grad.abs().sum() > 0


def test_under_bf16_autocast_it_follows_the_librarys_dtype_rules():
    m = _attention()
    x = torch.randn(1, 12, 10, 64)
    with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16):
        ref = Attention.forward(m, x)
        out = encoder_layout.chunked_forward(m, x)
    assert out.dtype == ref.dtype
    torch.testing.assert_close(out.float(), ref.float(), rtol=0.05, atol=0.02)


def test_layout_installs_and_removes_the_instance_forward():
    enc = build_sam_architecture("vit_tiny", 256).image_encoder
    mods = encoder_layout.attention_modules(enc)
    assert len(mods) == len(enc.blocks)
    with encoder_layout.layout(enc, True):
        assert all("forward" in vars(m) for m in mods)
    assert not any("forward" in vars(m) for m in mods)
    with encoder_layout.layout(enc, False):
        assert not any("forward" in vars(m) for m in mods)
    assert set(enc.state_dict()) == set(build_sam_architecture("vit_tiny", 256).image_encoder.state_dict())


def test_mobile_sams_tinyvit_has_no_such_attention():
    pytest.importorskip("mobile_sam")
    enc = build_sam_architecture("vit_t", 1024).image_encoder
    assert not encoder_layout.attention_modules(enc)


def test_the_shipped_small_sam_gives_the_same_embedding_either_way():
    """sam.encoder chunked (banded attention, NHWC convolutions on a CPU) against library, on the
    shipped weights: the same embedding, contiguous as the library's, every block banded."""
    path = default_sam_checkpoint("vit_synth")
    assert path is not None
    rng = np.random.default_rng(0)
    rgb = (rng.random((240, 320, 3)) * 255).astype(np.uint8)
    frame = Frame(rgb=rgb, intrinsics=Intrinsics(300.0, 300.0, 160.0, 120.0, 320, 240))
    lib = SamSegmenter(SamConfig(model_type="vit_synth", checkpoint=str(path), device="cpu", encoder="library"))
    lib.set_frame(frame)
    fast = SamSegmenter(SamConfig(model_type="vit_synth", checkpoint=str(path), device="cpu"))
    assert fast.cfg.encoder == "chunked"
    assert lib.model.image_encoder.patch_embed.proj.weight.is_contiguous()
    calls = []
    orig = encoder_layout.chunked_forward

    def counting(mod, x):
        calls.append(tuple(x.shape))
        return orig(mod, x)

    import unittest.mock as mock

    with mock.patch.object(encoder_layout, "chunked_forward", counting):
        fast.set_frame(frame)
    assert len(calls) == len(fast.model.image_encoder.blocks)  # every block ran the banded attention
    conv = fast.model.image_encoder.patch_embed.proj  # NHWC on a CPU
    assert conv.weight.is_contiguous(memory_format=torch.channels_last) and not conv.weight.is_contiguous()
    assert fast.embedding.is_contiguous() and fast.embedding.shape == lib.embedding.shape
    torch.testing.assert_close(fast.embedding, lib.embedding, rtol=1e-4, atol=1e-5)
    assert not any("forward" in vars(m) for m in encoder_layout.attention_modules(fast.model.image_encoder))
    # switched back (reconfigure): the library's attention and NCHW weights again, the same embedding
    chunked_embedding = fast.embedding.clone()
    fast.cfg = SamConfig(model_type="vit_synth", checkpoint=str(path), device="cpu", encoder="library")
    calls.clear()
    with mock.patch.object(encoder_layout, "chunked_forward", counting):
        fast.set_frame(frame)
    assert not calls and conv.weight.is_contiguous()
    torch.testing.assert_close(fast.embedding, lib.embedding)
    fast.cfg = SamConfig(model_type="vit_synth", checkpoint=str(path), device="cpu")
    fast.set_frame(frame)
    torch.testing.assert_close(fast.embedding, chunked_embedding)
    # and the masks decoded from them
    from uois_sam_ros.core.types import Prompts

    pts = Prompts(np.array([[80.0, 60.0], [200.0, 150.0]], np.float32), np.ones(2), np.ones(2))
    a, b = lib.decode(pts), fast.decode(pts)
    assert (np.asarray(a.masks) != np.asarray(b.masks)).mean() < 1e-4
    np.testing.assert_allclose(np.asarray(a.scores), np.asarray(b.scores), atol=1e-4)


def test_bad_value_is_a_config_error():
    with pytest.raises(ConfigError, match="sam.encoder 'fast'"):
        config_from_dict({"sam": {"encoder": "fast"}})
    assert config_from_dict({"sam": {"encoder": "library"}}).sam.encoder == "library"
    assert SamConfig().encoder == "chunked"
