"""sam.decoder folded (core/segment/decoder_layout.py) computes segment-anything's predict_masks.

The reference is the library's own MaskDecoder.predict_masks on the same weights, with the
transformer's output tokens read by a forward hook, on every decoder architecture the package
builds (random and shipped weights), for point, box and mask prompts. Then the segmenter and the
pipeline give the same results with either decoder, sam.compile compiles (or falls back with a
warning), and a decoder of another layout is left to the library.
"""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from uois_sam_ros.core.config import ConfigError, SamConfig, config_from_dict
from uois_sam_ros.core.segment import decoder_layout
from uois_sam_ros.core.segment.pipeline import UOISPipeline
from uois_sam_ros.core.segment.sam_backend import (
    CompileFallbackWarning,
    SamSegmenter,
    build_sam_architecture,
    default_sam_checkpoint,
    load_sam,
)
from uois_sam_ros.core.types import Prompts

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _library(model: nn.Module, emb, pe, sparse, dense):
    got = {}
    h = model.mask_decoder.transformer.register_forward_hook(lambda m, i, o: got.update(hs=o[0]))
    try:
        masks, iou = model.mask_decoder.predict_masks(emb, pe, sparse, dense)
    finally:
        h.remove()
    return masks, iou, got["hs"]


def _randomize(model: nn.Module, seed: int) -> nn.Module:
    """Random non-zero weights everywhere (rel_pos_zero_init and zero biases would hide terms)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.mask_decoder.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.5 / max(1, p.shape[-1]) ** 0.5 if p.ndim > 1 else 0.2))
    return model


def _inputs(model: nn.Module, k: int, kind: str, seed: int):
    g = torch.Generator().manual_seed(seed)
    pe_ = model.prompt_encoder
    c, s = model.mask_decoder.transformer_dim, model.image_encoder.img_size
    grid = pe_.image_embedding_size
    emb = torch.randn(1, c, *grid, generator=g)
    pts = torch.rand(k, 2, 2, generator=g) * s
    labels = torch.randint(0, 2, (k, 2), generator=g)
    boxes = torch.sort(torch.rand(k, 2, 2, generator=g) * s, dim=1).values.reshape(k, 4)
    masks = torch.randn(k, 1, 4 * grid[0], 4 * grid[1], generator=g) if kind == "mask" else None
    points = None if kind == "box" else (pts, labels)
    with torch.inference_mode():
        sparse, dense = pe_(points=points, boxes=boxes if kind in ("box", "point+box") else None, masks=masks)
        return emb, pe_.get_dense_pe(), sparse, dense


MODELS = {
    "vit_tiny": lambda: build_sam_architecture("vit_tiny", 256),
    "vit_synth": lambda: build_sam_architecture("vit_synth"),
    "vit_t": lambda: build_sam_architecture("vit_t"),
}


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize(("k", "kind"), [(1, "point"), (7, "point"), (5, "box"), (4, "point+box"), (3, "mask")])
def test_folded_equals_library_predict_masks(name: str, k: int, kind: str) -> None:
    model = _randomize(MODELS[name]().eval(), seed=k)
    assert decoder_layout.supports(model.mask_decoder)
    emb, pe, sparse, dense = _inputs(model, k, kind, seed=10 + k)
    with torch.inference_mode():
        ref = _library(model, emb, pe, sparse, dense)
        got = decoder_layout.predict_masks(model.mask_decoder, emb, pe, sparse, dense)
    for r, o, what in zip(ref, got, ("masks", "iou_pred", "hs")):
        assert o.shape == r.shape, what
        scale = float(r.abs().max())
        err = float((o - r).abs().max())
        assert err <= 2e-5 * (1.0 + scale), f"{name} {kind} K={k} {what}: max error {err:.3g} at scale {scale:.3g}"
    # the comparison can fail: a decoder whose weights differ in one tensor gives other masks
    with torch.no_grad():
        model.mask_decoder.transformer.layers[-1].cross_attn_image_to_token.out_proj.weight.mul_(3.0)
        other = decoder_layout.predict_masks(model.mask_decoder, emb, pe, sparse, dense)[0]
    assert float((other - ref[0]).abs().max()) > 1e-3


def test_folded_equals_library_on_the_shipped_small_sam() -> None:
    ckpt = default_sam_checkpoint("vit_synth")
    assert ckpt is not None, "the package ships sam_vit_synth.pt"
    model = load_sam("vit_synth", ckpt)
    emb, pe, sparse, dense = _inputs(model, 30, "point", seed=3)
    with torch.inference_mode():
        ref = _library(model, emb, pe, sparse, dense)
        got = decoder_layout.predict_masks(model.mask_decoder, emb, pe, sparse, dense)
    scale = float(ref[0].abs().max())
    assert float((got[0] - ref[0]).abs().max()) <= 2e-5 * (1.0 + scale)
    assert torch.equal(got[0] > 0, ref[0] > 0) or float(((got[0] > 0) != (ref[0] > 0)).float().mean()) < 1e-5
    assert torch.allclose(got[1], ref[1], atol=1e-5)


def test_decoder_of_another_layout_is_left_to_the_library() -> None:
    model = build_sam_architecture("vit_tiny", 256)
    dec = model.mask_decoder
    assert decoder_layout.supports(dec)
    up = list(dec.output_upscaling)
    dec.output_upscaling = nn.Sequential(*up[:3], nn.ConvTranspose2d(64, 32, 3, 2, 1, output_padding=1), up[4])
    assert not decoder_layout.supports(dec)
    seg = SamSegmenter(SamConfig(model_type="vit_tiny", allow_random_weights=True, image_size=256,
                                 device="cpu"), model)
    assert seg.folded_ok is False
    rgb = np.random.default_rng(0).integers(0, 255, (96, 128, 3), np.uint8)
    from uois_sam_ros.core.types import Frame

    seg.set_frame(Frame(rgb=rgb))
    low = seg.decode_lowres(Prompts(np.array([[40.0, 50.0], [90.0, 20.0]], np.float32), np.ones(2, np.int64), np.ones(2, np.float32)))
    assert low.logits.shape == (2, 4, 64, 64) and low.t_mask.shape == (2, 4, 256)


def test_segmenter_and_pipeline_agree_across_decoders() -> None:
    """The shipped small SAM + HDNet pipeline: the same instances with either decoder."""
    from uois_sam_ros.core.data.synthetic import generate_scene

    frame = generate_scene(4).frame()
    cfg = config_from_dict({"pipeline": {"method": "heatmap_hdnet"}, "sam": {"device": "cpu"},
                            "hpg": {"device": "cpu", "fg_threshold": 0.5}})
    pipe = UOISPipeline(cfg)
    a = pipe.run(frame)
    low_a = pipe.segmenter.decode_lowres(pipe.last_prompts)
    assert len(pipe.last_prompts) >= 5
    lib = dataclasses.replace(pipe.config, sam=dataclasses.replace(pipe.config.sam, decoder="library"))
    pipe.reconfigure(lib)
    b = pipe.run(frame)
    low_b = pipe.segmenter.decode_lowres(pipe.last_prompts)
    for f in ("logits", "iou_pred", "t_iou", "t_mask"):
        x, y = getattr(low_a, f), getattr(low_b, f)
        assert torch.allclose(x, y, atol=2e-5 * (1 + float(y.abs().max()))), f
    assert len(a) == len(b) and len(a) >= 1
    np.testing.assert_allclose(a.scores, b.scores, atol=1e-5)
    for ma, mb in zip(a.masks, b.masks):
        assert (ma != mb).sum() <= 0.001 * mb.sum() + 2


def test_sam_decoder_value_is_checked() -> None:
    with pytest.raises(ConfigError, match="sam.decoder 'fast'"):
        config_from_dict({"sam": {"decoder": "fast"}})
    assert config_from_dict({"sam": {"decoder": "library"}}).sam.decoder == "library"


def _tiny_segmenter(**cfg) -> SamSegmenter:
    torch.manual_seed(0)
    model = _randomize(build_sam_architecture("vit_tiny", 256), 1)
    seg = SamSegmenter(SamConfig(model_type="vit_tiny", allow_random_weights=True, image_size=256,
                                 device="cpu", **cfg), model)
    seg.compile_decoder_on_cpu = True  # the GPU's path: the decoder compiled too
    return seg


def test_compile_leaves_the_folded_decoder_eager_on_a_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: calls.append(fn) or fn)
    seg = SamSegmenter(SamConfig(model_type="vit_tiny", allow_random_weights=True, image_size=256,
                                 device="cpu", compile=True), build_sam_architecture("vit_tiny", 256))
    from uois_sam_ros.core.types import Frame

    seg.set_frame(Frame(rgb=np.zeros((64, 64, 3), np.uint8)))
    seg.decode_lowres(_prompts(3))
    assert len(calls) == 1 and getattr(calls[0], "__name__", "") == "forward"  # the encoder only
    assert seg._compiled_decode is None


def test_whole_tensor_upscaling_equals_the_chunked_one() -> None:
    model = _randomize(build_sam_architecture("vit_synth").eval(), 5)
    emb, pe, sparse, dense = _inputs(model, 6, "point", seed=6)
    with torch.inference_mode():
        a = decoder_layout.predict_masks(model.mask_decoder, emb, pe, sparse, dense, chunked=True)
        b = decoder_layout.predict_masks(model.mask_decoder, emb, pe, sparse, dense, chunked=False)
    assert torch.allclose(a[0], b[0], atol=1e-5 * (1 + float(a[0].abs().max())))


def _prompts(k: int) -> Prompts:
    pts = np.random.default_rng(k).uniform(5, 90, (k, 2)).astype(np.float32)
    return Prompts(pts, np.ones(k, np.int64), np.ones(k, np.float32))


def test_compiled_decoder_equals_eager_and_pads_to_few_sizes() -> None:
    from uois_sam_ros.core.types import Frame

    rgb = np.random.default_rng(1).integers(0, 255, (96, 128, 3), np.uint8)
    eager = _tiny_segmenter()
    eager.set_frame(Frame(rgb=rgb))
    comp = _tiny_segmenter(compile=True)
    comp.set_frame(Frame(rgb=rgb))  # the encoder through torch.compile
    assert "forward" in vars(comp.model.image_encoder)
    assert torch.allclose(comp.embedding, eager.embedding, atol=1e-4)
    with warnings.catch_warnings():
        warnings.simplefilter("error", CompileFallbackWarning)
        for k in (5, 7):  # both pad to 8: one compiled size
            ref, got = eager.decode_lowres(_prompts(k)), comp.decode_lowres(_prompts(k))
            assert got.logits.shape == ref.logits.shape == (k, 4, 64, 64)
            assert torch.allclose(got.logits, ref.logits, atol=1e-4)
            assert torch.allclose(got.t_mask, ref.t_mask, atol=1e-4)
    assert not comp._compile_failed
    comp.cfg = dataclasses.replace(comp.cfg, compile=False)  # a parameter change turns it off
    comp.set_frame(Frame(rgb=rgb))
    assert "forward" not in vars(comp.model.image_encoder)


def test_compile_failure_falls_back_with_one_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    from uois_sam_ros.core.types import Frame

    def broken_compile(fn, **kw):
        def call(*a, **k):
            raise RuntimeError("no C++ compiler found (simulated)")
        return call

    monkeypatch.setattr(torch, "compile", broken_compile)
    rgb = np.random.default_rng(2).integers(0, 255, (96, 128, 3), np.uint8)
    eager = _tiny_segmenter()
    eager.set_frame(Frame(rgb=rgb))
    seg = _tiny_segmenter(compile=True)
    with pytest.warns(CompileFallbackWarning, match="encoder failed .*no C\\+\\+ compiler"):
        seg.set_frame(Frame(rgb=rgb))
    with pytest.warns(CompileFallbackWarning, match="decoder failed"):
        got = seg.decode_lowres(_prompts(3))
    assert seg._compile_failed == {"encoder", "decoder"}
    assert "forward" not in vars(seg.model.image_encoder)
    assert torch.allclose(got.logits, eager.decode_lowres(_prompts(3)).logits, atol=1e-5)
    with warnings.catch_warnings():
        warnings.simplefilter("error", CompileFallbackWarning)  # said once, not per frame
        seg.set_frame(Frame(rgb=rgb))
        seg.decode_lowres(_prompts(3))


def test_folded_is_differentiable_like_the_library() -> None:
    """Training can use the folded layout: the same gradients for every decoder weight."""
    model = _randomize(build_sam_architecture("vit_synth"), 7)
    emb, pe, sparse, dense = (t.clone() for t in _inputs(model, 4, "point", seed=8))  # out of inference mode
    emb.requires_grad_(True)
    params = [p for p in model.mask_decoder.parameters()]
    for p in params:
        p.requires_grad_(True)

    def grads(fn):
        masks, iou = fn()[:2]
        loss = (masks.tanh() ** 2).mean() + iou.square().sum()
        return torch.autograd.grad(loss, [emb, *params], allow_unused=True)

    ref = grads(lambda: model.mask_decoder.predict_masks(emb, pe, sparse, dense))
    got = grads(lambda: decoder_layout.predict_masks(model.mask_decoder, emb, pe, sparse, dense))
    n = 0
    for r, g in zip(ref, got):
        if r is None or g is None:  # unused by one layout (a key bias cancels in the softmax): ~0 in the other
            other = g if r is None else r
            assert other is None or float(other.abs().max()) < 1e-6
            continue
        n += 1
        assert torch.allclose(g, r, rtol=1e-3, atol=1e-6 * (1 + float(r.abs().max()))), float((g - r).abs().max())
    assert n > 20
