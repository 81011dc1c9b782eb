"""With the shipped small SAM on shifted synthetic scenes (a fixed held-out set), test-time
adaptation lowers the loss on the clicked pixels and does not raise NoC@85 (issue 13).

The model is the vit_synth checkpoint shipped in the package (sam_backend.default_sam_checkpoint,
uois_sam_ros/data/sam_vit_synth.pt); the test skips, saying so, only while that file is absent.
"""

from __future__ import annotations

import numpy as np
import pytest

from uois_sam_ros.core.adapt.adaptation import (
    DecoderAdapter,
    ImageContext,
    adapt_config_from_spec,
    click_label,
)
from uois_sam_ros.core.adapt.clicks import Protocol, noc_fr
from uois_sam_ros.core.adapt.interactive import SamClicks, object_ids, run_object, shifted_scene_config
from uois_sam_ros.core.config import AdaptConfig, SamConfig
from uois_sam_ros.core.segment import sam_backend

HELDOUT_SEEDS = (71_000_000, 71_000_001)  # shifted scenes far from every training / validation seed
OBJECTS_PER_SCENE = 4
PROTOCOL = Protocol(20, 0.85)


def test_adaptation_lowers_the_clicked_pixel_loss_and_does_not_raise_noc85(one_torch_thread):
    ckpt = sam_backend.default_sam_checkpoint("vit_synth")
    if ckpt is None:
        pytest.skip(f"no small SAM shipped in the package ({sam_backend.SYNTH_FILENAME} under uois_sam_ros/data); "
                    "this test runs once uois-sam-train-sam's checkpoint is shipped there")
    from uois_sam_ros.core.data.synthetic import generate_scene

    model = sam_backend.load_sam("vit_synth", ckpt, device="cpu")
    seg = sam_backend.SamSegmenter(SamConfig(model_type="vit_synth", checkpoint=str(ckpt), device="cpu"), model=model)
    baseline = DecoderAdapter(model)
    adapted = DecoderAdapter(model, adapt_config_from_spec("R+E+CM"))  # the paper's full method, lr 1e-6
    base_ious, adapted_ious, before, after = [], [], [], []
    for seed in HELDOUT_SEEDS:
        scene = generate_scene(seed, shifted_scene_config())
        seg.set_frame(scene.frame())
        ctx = ImageContext.from_predictor(seg.predictor)
        users = [SamClicks(seg, baseline), SamClicks(seg, adapted)]
        for u in users:
            u.use_context(ctx)
        classes = {int(i): k for i, k in zip(scene.ids, scene.shapes)}
        for oid in object_ids(scene.label, 64)[:OBJECTS_PER_SCENE]:
            gt = scene.label == oid
            rb = run_object(users[0], gt, PROTOCOL, classes[oid])
            ra = run_object(users[1], gt, PROTOCOL, classes[oid])
            base_ious.append(rb.ious)
            adapted_ious.append(ra.ious)
            # One click-adaptation step (the paper's lr) on this object's clicks lowers their loss.
            probe = DecoderAdapter(model, AdaptConfig(click_adaptation="C"))
            labels = click_label(rb.clicks, ctx.original_size)
            pred = probe.predict(ctx, rb.clicks, grad=True)
            before.append(probe.step(ctx, pred.prompt, labels, logits=pred.logits))
            after.append(probe.loss(ctx, pred.prompt, labels))
    assert len(base_ious) >= 4
    assert float(np.mean(after)) < float(np.mean(before))
    assert all(a <= b + 1e-6 for a, b in zip(after, before))
    noc_base, _ = noc_fr(base_ious, PROTOCOL.threshold, PROTOCOL.max_clicks)
    noc_adapted, _ = noc_fr(adapted_ious, PROTOCOL.threshold, PROTOCOL.max_clicks)
    assert noc_adapted <= noc_base, (noc_adapted, noc_base)
