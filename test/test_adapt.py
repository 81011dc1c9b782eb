"""Test-time adaptation of SAM's mask decoder: the sparse loss, the pseudo-labels, and the
mechanics (reset bit for bit, continual keeps, per-class copies, no re-encoding, files) on a
randomly initialised small SAM (vit_synth architecture)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from uois_sam_ros.core.adapt.adaptation import (
    PAPER_CONFIGS,
    DecoderAdapter,
    ImageContext,
    adapt_config_from_spec,
    adapt_spec,
    click_label,
    eroded_label,
    merge_labels,
    object_label,
    sparse_bce,
    time_adaptation_step,
    untreated_label,
)
from uois_sam_ros.core.adapt.clicks import Click, Protocol
from uois_sam_ros.core.adapt.interactive import SamClicks, run_object
from uois_sam_ros.core.config import AdaptConfig, ConfigError, SamConfig
from uois_sam_ros.core.types import Frame
from uois_sam_ros.core.weights import CheckpointError

H, W = 96, 128


# ------------------------------------------------------------------------------------ the loss
def test_sparse_bce_on_a_hand_made_mask():
    logits = torch.tensor([[2.0, 5.0, -1.0], [3.0, -7.0, 0.0]])
    labels = np.array([[1, -1, 0], [0, -1, 1]], np.int8)

    def sp(x):  # softplus: BCE(x, 0) = sp(x), BCE(x, 1) = sp(-x)
        return math.log1p(math.exp(x))

    pos = (sp(-2.0) + sp(-0.0)) / 2
    neg = (sp(-1.0) + sp(3.0)) / 2
    assert float(sparse_bce(logits, labels)) == pytest.approx(pos + neg, rel=1e-6)
    # one positive against three negatives: each side is averaged on its own
    lab2 = np.array([[1, 0, 0], [0, -1, -1]], np.int8)
    assert float(sparse_bce(logits, lab2)) == pytest.approx(sp(-2.0) + (sp(5.0) + sp(-1.0) + sp(3.0)) / 3, rel=1e-6)
    only_pos = np.array([[1, -1, -1], [-1, -1, -1]], np.int8)
    assert float(sparse_bce(logits, only_pos)) == pytest.approx(sp(-2.0), rel=1e-6)
    # unlabelled pixels get no gradient
    x = logits.clone().requires_grad_(True)
    sparse_bce(x, labels).backward()
    assert x.grad[0, 1] == 0 and x.grad[1, 1] == 0 and x.grad[0, 0] < 0 and x.grad[0, 2] > 0
    with pytest.raises(ValueError, match="no pixel is labelled"):
        sparse_bce(logits, np.full((2, 3), -1, np.int8))
    with pytest.raises(ValueError, match="shape"):
        sparse_bce(logits, np.zeros((3, 2), np.int8))


# ------------------------------------------------------------------------------------ pseudo-labels
def test_erosion_removes_exactly_the_band_at_the_boundary():
    m = np.zeros((12, 12), bool)
    m[2:10, 2:10] = True  # an 8x8 square
    lab = eroded_label(m, 1)
    fg = {tuple(p) for p in np.argwhere(lab == 1)}
    unl = {tuple(p) for p in np.argwhere(lab == -1)}
    assert fg == {(r, c) for r in range(3, 9) for c in range(3, 9)}
    ring_in = {(r, c) for r in range(2, 10) for c in range(2, 10)} - fg
    ring_out = ({(1, c) for c in range(2, 10)} | {(10, c) for c in range(2, 10)}
                | {(r, 1) for r in range(2, 10)} | {(r, 10) for r in range(2, 10)})  # a cross: no corners
    assert unl == ring_in | ring_out
    assert lab[1, 1] == 0 and lab[0, 5] == 0  # the image border does not erode the background
    assert lab.dtype == np.int8 and set(np.unique(lab)) == {-1, 0, 1}


def test_erosion_k5_equals_the_l1_ball_and_keeps_the_image_border():
    rng = np.random.default_rng(3)
    m = np.zeros((40, 40), bool)
    m[5:30, 0:22] = True  # touches the left border
    m[rng.integers(0, 40, 30), rng.integers(25, 40, 30)] ^= True  # speckle away from (15, 0)
    lab = eroded_label(m, 5)
    yy, xx = np.mgrid[:40, :40]
    fy, fx = np.nonzero(m)
    by, bx = np.nonzero(~m)
    for r, c in [(r, c) for r in range(40) for c in range(40)]:
        if m[r, c]:  # kept iff every background pixel is more than 5 steps (L1) away
            want = 1 if (np.abs(by - r) + np.abs(bx - c)).min() > 5 else -1
        else:
            want = 0 if (np.abs(fy - r) + np.abs(fx - c)).min() > 5 else -1
        assert lab[r, c] == want, (r, c)
    assert lab[15, 0] == 1  # 5+ px from any background pixel inside the image: the border does not count
    assert (eroded_label(m, 0) == untreated_label(m)).all()


def test_click_labels_merge_over_the_pseudo_label():
    clicks = [Click(1, 2, True), Click(3, 0, False), Click(1, 2, False)]
    cm = click_label(clicks, (4, 5))
    assert cm[2, 1] == 0 and cm[0, 3] == 0 and (cm == -1).sum() == 18  # the last label of a pixel wins
    with pytest.raises(ValueError, match="outside the 5x4 image"):
        click_label([Click(5, 0, True)], (4, 5))
    res = np.zeros((4, 5), bool)
    res[1:3, 1:4] = True
    u = untreated_label(res)
    assert (merge_labels(u, cm)[2, 1], merge_labels(u, cm)[1, 1]) == (0, 1)
    full = object_label(adapt_config_from_spec("R+E+CM", AdaptConfig(erosion_iterations=1)), res, clicks)
    assert full[2, 1] == 0 and full[0, 3] == 0 and (full == 1).sum() == 0  # a 2-row mask erodes away
    assert object_label(adapt_config_from_spec("R"), res, clicks) is None
    assert (object_label(adapt_config_from_spec("CM"), res, clicks) == cm).all()


def test_configuration_names():
    assert [adapt_spec(adapt_config_from_spec(s)) for s in PAPER_CONFIGS] == list(PAPER_CONFIGS)
    c = adapt_config_from_spec("e+r+cm")
    assert (c.click_adaptation, c.result_mask, c.click_mask) == ("R", "E", True) and adapt_spec(c) == "R+E+CM"
    assert adapt_config_from_spec("C", AdaptConfig(lr=1e-4)).lr == 1e-4
    for bad, msg in (("R+C", "exclude"), ("U+E", "exclude"), ("X", "unknown part"), ("CM+CM", "twice")):
        with pytest.raises(ConfigError, match=msg):
            adapt_config_from_spec(bad)
    with pytest.raises(ConfigError, match="lr"):
        adapt_config_from_spec("C", AdaptConfig(lr=0.0))


# ------------------------------------------------------------------------------------ mechanics
@pytest.fixture(scope="module")
def sam():
    from uois_sam_ros.core.segment.sam_backend import SamSegmenter, build_sam_architecture

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small ops: one thread is faster than two competing on a busy CI core
    torch.manual_seed(0)
    model = build_sam_architecture("vit_synth")
    for p in model.parameters():
        p.requires_grad_(False)
    seg = SamSegmenter(SamConfig(model_type="vit_synth", device="cpu"), model=model)
    rgb = np.full((H, W, 3), 90, np.uint8)
    rgb[30:70, 40:100] = (220, 60, 40)
    seg.set_frame(Frame(rgb=rgb))
    yield seg
    torch.set_num_threads(threads)


@pytest.fixture()
def ctx(sam):
    return ImageContext.from_predictor(sam.predictor)


def _gt() -> np.ndarray:
    m = np.zeros((H, W), bool)
    m[30:70, 40:100] = True
    return m


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


CLICKS = [Click(70, 50, True), Click(20, 20, False), Click(90, 35, True)]


def test_prediction_shapes_and_no_reencoding(sam, ctx):
    calls = []
    hook = sam.model.image_encoder.register_forward_hook(lambda *a: calls.append(1))
    try:
        ad = DecoderAdapter(sam.model, adapt_config_from_spec("R+E+CM", AdaptConfig(lr=1e-3)))
        first = ad.predict(ctx, CLICKS[:1])
        assert first.mask.shape == (H, W) and first.mask.dtype == bool and first.prompt.multimask
        assert first.lowres.shape == (1, 1, 128, 128) and first.logits.shape == (H, W)
        user = SamClicks(sam, ad)
        user.use_context(ctx)
        r = run_object(user, _gt(), Protocol(4, 0.99), "box")
        assert len(r.ious) == 4 and len(user.losses) == 5  # 4 click steps + 1 after the object
    finally:
        hook.remove()
    assert calls == []  # the cached embedding is reused: the encoder never runs again


def test_a_step_lowers_the_loss_on_the_clicked_pixels(sam, ctx):
    labels = click_label(CLICKS, (H, W))
    for lr in (1e-6, 1e-4):  # the paper's rate, and a larger one
        ad = DecoderAdapter(sam.model, AdaptConfig(click_adaptation="C", lr=lr))
        pred = ad.predict(ctx, CLICKS, grad=True)
        before = ad.step(ctx, pred.prompt, labels, logits=pred.logits)
        assert before == pytest.approx(ad.loss(ctx, pred.prompt, labels, name="x"))  # other class: original
        after = ad.loss(ctx, pred.prompt, labels)
        assert after < before
    for _ in range(5):
        ad.step(ctx, pred.prompt, labels)
    assert ad.loss(ctx, pred.prompt, labels) < after


def test_reset_restores_every_parameter_bit_for_bit(sam, ctx):
    original = {k: v.clone() for k, v in sam.model.mask_decoder.state_dict().items()}
    ad = DecoderAdapter(sam.model, adapt_config_from_spec("C+E+CM", AdaptConfig(lr=1e-3)))
    user = SamClicks(sam, ad)
    user.use_context(ctx)
    run_object(user, _gt(), Protocol(3, 0.99), "mug")
    run_object(user, _gt(), Protocol(3, 0.99), "bowl")
    assert ad.classes == ["bowl", "mug"]
    assert not _same(ad.state_dict("mug"), original) and not _same(ad.state_dict("bowl"), original)
    ad.reset("mug")
    assert _same(ad.state_dict("mug"), original) and not _same(ad.state_dict("bowl"), original)
    ad.reset(all_classes=True)
    assert _same(ad.state_dict("bowl"), original) and _same(ad.state_dict("mug"), original)
    assert _same(sam.model.mask_decoder.state_dict(), original)  # the model itself was never changed
    # after a reset the class adapts like a fresh copy (Adam's state is gone too)
    fresh = DecoderAdapter(sam.model, adapt_config_from_spec("C", AdaptConfig(lr=1e-3)))
    for a in (ad, fresh):
        pred = a.predict(ctx, CLICKS, name="mug", grad=True)
        a.step(ctx, pred.prompt, click_label(CLICKS, (H, W)), "mug", logits=pred.logits)
    assert _same(ad.state_dict("mug"), fresh.state_dict("mug"))


def test_continual_keeps_its_changes_and_reset_mode_undoes_them(sam, ctx):
    original = DecoderAdapter(sam.model).state_dict()
    cont = DecoderAdapter(sam.model, adapt_config_from_spec("C", AdaptConfig(lr=1e-3)))
    user = SamClicks(sam, cont)
    user.use_context(ctx)
    run_object(user, _gt(), Protocol(3, 0.99))
    after_one = cont.state_dict()
    assert not _same(after_one, original)
    run_object(user, _gt(), Protocol(3, 0.99))
    assert not _same(cont.state_dict(), after_one)  # it goes on from where it was

    reset = DecoderAdapter(sam.model, adapt_config_from_spec("R", AdaptConfig(lr=1e-3)))
    seen = []
    orig_after = reset.after_click

    def spy(*a, **k):
        out = orig_after(*a, **k)
        seen.append(reset.state_dict())
        return out

    reset.after_click = spy
    user = SamClicks(sam, reset)
    user.use_context(ctx)
    run_object(user, _gt(), Protocol(3, 0.99))
    assert len(seen) == 3 and not _same(seen[-1], original)  # adapted during the object ...
    assert _same(reset.state_dict(), original)  # ... and back to the weights before it, bit for bit
    # R with RM/CM: reset first, then one step that is kept
    full = DecoderAdapter(sam.model, adapt_config_from_spec("R+E+CM", AdaptConfig(lr=1e-3)))
    user = SamClicks(sam, full)
    user.use_context(ctx)
    run_object(user, _gt(), Protocol(3, 0.99))
    assert not _same(full.state_dict(), original)


def test_per_class_copies_are_selected_by_name(sam, ctx):
    labels = click_label(CLICKS, (H, W))
    ad = DecoderAdapter(sam.model, AdaptConfig(click_adaptation="C", lr=1e-3, max_classes=2))
    pred = ad.predict(ctx, CLICKS, name="mug", grad=True)
    ad.step(ctx, pred.prompt, labels, "mug", logits=pred.logits)
    assert ad.classes == ["mug"]
    assert _same(ad.state_dict("bowl"), ad.state_dict(None))  # not adapted: the original weights
    assert not _same(ad.state_dict("mug"), ad.state_dict("bowl"))
    assert not np.array_equal(ad.predict(ctx, CLICKS, name="mug").logits.numpy(),
                              ad.predict(ctx, CLICKS, name="bowl").logits.numpy())
    ad.predict(ctx, CLICKS, name="bowl", grad=True)
    with pytest.raises(ValueError, match="max_classes=2"):
        ad.predict(ctx, CLICKS, name="cup", grad=True)
    shared = DecoderAdapter(sam.model, AdaptConfig(click_adaptation="C", lr=1e-3, per_class=False))
    pred = shared.predict(ctx, CLICKS, name="mug", grad=True)
    shared.step(ctx, pred.prompt, labels, "mug", logits=pred.logits)
    assert shared.classes == [""] and _same(shared.state_dict("bowl"), shared.state_dict("mug"))


def test_save_and_load_a_class_decoder(sam, ctx, tmp_path):
    ad = DecoderAdapter(sam.model, AdaptConfig(click_adaptation="C", lr=1e-3))
    pred = ad.predict(ctx, CLICKS, name="mug", grad=True)
    ad.step(ctx, pred.prompt, click_label(CLICKS, (H, W)), "mug", logits=pred.logits)
    path = ad.save(tmp_path / "mug.pt", "mug")
    other = DecoderAdapter(sam.model)
    assert other.load(path) == "mug"
    assert _same(other.state_dict("mug"), ad.state_dict("mug"))
    assert other.load(path, "cup") == "cup" and _same(other.state_dict("cup"), ad.state_dict("mug"))
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.pt"):
        other.load(tmp_path / "junk.pt")
    from uois_sam_ros.core.segment.sam_backend import build_sam_architecture

    tiny = build_sam_architecture("vit_tiny", image_size=128)  # a 256-dim decoder
    with pytest.raises(CheckpointError, match="mismatched shapes"):
        DecoderAdapter(tiny).load(path)


def test_bad_clicks_and_the_bench(sam, ctx):
    ad = DecoderAdapter(sam.model)
    with pytest.raises(ValueError, match=r"click \(128, 5\) is outside the 128x96 image"):
        ad.predict(ctx, [Click(128, 5, True)])
    with pytest.raises(ValueError, match="at least one click"):
        ad.predict(ctx, [])
    t = time_adaptation_step(sam.model, ctx, CLICKS, repeats=2)
    assert t.forward_s > 0 and t.step_s > 0 and t.ratio == pytest.approx(t.step_s / t.forward_s)
    assert _same(ad.state_dict(), sam.model.mask_decoder.state_dict())  # the bench leaves the model alone
