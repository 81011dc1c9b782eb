"""Which models a pipeline loads when no SAM checkpoint is configured.

A SAM method asked for by name runs on the shipped small SAM and its HDNet, and says so in one
note; auto follows AUTO_WITHOUT_CHECKPOINT; an explicit sam.checkpoint or hdnet.checkpoint is
never replaced; a config that cannot work is refused when the pipeline is built. These tests put
a tiny vit_synth in place of the shipped one, so they hold whatever the package ships.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from uois_sam_ros.core.config import ConfigError, config_from_dict
from uois_sam_ros.core.segment import pipeline as pipeline_mod
from uois_sam_ros.core.segment.hdnet import HDNet, save_hdnet
from uois_sam_ros.core.segment.sam_backend import build_vit_synth, save_sam_synth

torch.set_num_threads(1)

TINY = {"img_size": 128, "patch_size": 16, "embed_dim": 32, "depth": 2, "num_heads": 2, "mlp_ratio": 2.0,
        "window_size": 4, "global_attn_indexes": [1], "decoder_dim": 32, "decoder_depth": 1, "decoder_heads": 2,
        "decoder_mlp_dim": 64, "iou_head_hidden_dim": 32, "mask_in_chans": 4}


@pytest.fixture()
def shipped(tmp_path, monkeypatch):
    """A tiny vit_synth and an HDNet for it, standing in for the shipped files."""
    torch.manual_seed(0)
    model = build_vit_synth(TINY)
    sam_path = tmp_path / "sam_vit_synth.pt"
    save_sam_synth(sam_path, model, TINY)
    hd_path = tmp_path / "hdnet_vit_synth.pt"
    save_hdnet(hd_path, HDNet.for_sam(model), {"note": "test"})
    monkeypatch.setattr(pipeline_mod, "default_sam_checkpoint", lambda model_type="vit_synth": sam_path)
    monkeypatch.setattr(pipeline_mod, "default_hdnet_checkpoint", lambda model_type="vit_synth": hd_path)
    return sam_path, hd_path


def _cfg(**sections):
    base = {"sam": {"device": "cpu"}, "hpg": {"device": "cpu"}}
    for k, v in sections.items():
        base.setdefault(k, {}).update(v)
    return config_from_dict(base)


def test_a_sam_method_by_name_runs_on_the_shipped_small_sam_and_its_hdnet(shipped):
    sam_path, hd_path = shipped
    cfg = _cfg(pipeline={"method": "heatmap_hdnet"})  # sam.model_type is still the default vit_l
    eff, note = pipeline_mod.with_shipped_models(cfg)
    assert eff.sam.model_type == "vit_synth" and eff.sam.checkpoint == str(sam_path)
    assert eff.hdnet.checkpoint == str(hd_path)
    assert note == (f"no sam.checkpoint: heatmap_hdnet runs on the shipped small SAM (vit_synth, {sam_path.name}) "
                    f"instead of vit_l and its HDNet ({hd_path.name})")
    pipe = pipeline_mod.UOISPipeline(cfg)
    assert pipe.model_note == note
    assert pipe.segmenter.token_dim == 32 and pipe.hdnet.token_dim == 32
    assert pipe.config.sam.checkpoint == str(sam_path)


def test_methods_without_hdnet_do_not_load_it(shipped):
    for method in ("heatmap", "grid", "grid_fg"):
        eff, note = pipeline_mod.with_shipped_models(_cfg(pipeline={"method": method},
                                                          sam={"model_type": "vit_synth"}))
        assert eff.hdnet.checkpoint is None
        assert note.startswith(f"no sam.checkpoint: {method} runs on the shipped small SAM") and "HDNet" not in note


def test_explicit_checkpoints_are_never_replaced(shipped, tmp_path):
    cfg = _cfg(pipeline={"method": "uois_sam"}, sam={"checkpoint": "/nonexistent/sam_vit_l_0b3195.pth"})
    assert pipeline_mod.with_shipped_models(cfg) == (cfg, None)
    mine = str(tmp_path / "my_hdnet.pt")
    eff, note = pipeline_mod.with_shipped_models(_cfg(pipeline={"method": "uois_sam"}, hdnet={"checkpoint": mine}))
    assert eff.hdnet.checkpoint == mine and eff.sam.checkpoint == str(shipped[0])
    assert note.endswith(f"with hdnet.checkpoint {mine}")
    # random weights (tests, benchmarks) and the weights-free path stay as they are
    rnd = _cfg(pipeline={"method": "uois_sam"}, sam={"allow_random_weights": True})
    assert pipeline_mod.with_shipped_models(rnd) == (rnd, None)
    wf = _cfg(pipeline={"method": "weights_free"})
    assert pipeline_mod.with_shipped_models(wf) == (wf, None)


def test_auto_follows_the_documented_choice(shipped, monkeypatch):
    cfg = _cfg(pipeline={"method": "auto"})
    monkeypatch.setattr(pipeline_mod, "AUTO_WITHOUT_CHECKPOINT", "weights_free")
    assert pipeline_mod.resolve_method(cfg) == "weights_free"
    monkeypatch.setattr(pipeline_mod, "AUTO_WITHOUT_CHECKPOINT", "uois_sam")
    assert pipeline_mod.resolve_method(cfg) == "uois_sam"
    assert pipeline_mod.with_shipped_models(cfg)[0].hdnet.checkpoint == str(shipped[1])
    # with no small SAM installed, auto falls back to the path that needs no weights
    monkeypatch.setattr(pipeline_mod, "default_sam_checkpoint", lambda model_type="vit_synth": None)
    assert pipeline_mod.resolve_method(cfg) == "weights_free"
    # with an official checkpoint configured, auto is the paper's method as before
    off = _cfg(pipeline={"method": "auto"}, sam={"checkpoint": "x.pth"}, hdnet={"checkpoint": "h.pt"})
    assert pipeline_mod.resolve_method(off) == "uois_sam"


def test_the_documented_auto_choice_is_a_known_method():
    assert pipeline_mod.AUTO_WITHOUT_CHECKPOINT in ("weights_free", "uois_sam")


def test_model_signature_sees_the_shipped_files(shipped):
    """Switching between 'no checkpoint' and the shipped path explicitly loads the same weights."""
    by_name = _cfg(pipeline={"method": "heatmap_hdnet"}, sam={"model_type": "vit_synth"})
    explicit = _cfg(pipeline={"method": "heatmap_hdnet"},
                    sam={"model_type": "vit_synth", "checkpoint": str(shipped[0])},
                    hdnet={"checkpoint": str(shipped[1])})
    assert pipeline_mod.model_signature(by_name) == pipeline_mod.model_signature(explicit)
    pipe = pipeline_mod.UOISPipeline(by_name)
    assert pipe.can_reconfigure(explicit)
    pipe.reconfigure(_cfg(pipeline={"method": "heatmap_hdnet"}, sam={"model_type": "vit_synth"},
                          hdnet={"iou_threshold": 0.3}))
    assert pipe.config.sam.checkpoint == str(shipped[0]) and pipe.config.hdnet.iou_threshold == 0.3


def test_weights_free_with_an_hpg_on_sam_features_is_refused_at_construction():
    cfg = _cfg(pipeline={"method": "weights_free", "weights_free_prompts": "hpg"}, hpg={"backbone": "sam"})
    with pytest.raises(ConfigError, match=r"weights_free_prompts=hpg needs an HPG that runs without SAM"):
        pipeline_mod.UOISPipeline(cfg)


def test_ranking_check_counts_wins_ties_and_losses(shipped):
    """rank_last_frame scores HDNet's pick and SAM's pick against the GT instance under the prompt."""
    from uois_sam_ros.core.data.synthetic import SceneConfig, generate_scene
    from uois_sam_ros.core.eval.ablation import RankingStats, rank_last_frame

    scene = generate_scene(5, SceneConfig(width=320, height=240, amodal=False))
    s = scene.sample()
    cfg = _cfg(pipeline={"method": "heatmap_hdnet"}, hpg={"fg_threshold": 0.0, "heatmap_threshold": -1e9,
                                                          "top_k": 6})
    pipe = pipeline_mod.UOISPipeline(cfg)
    pipe.run(s.frame())
    stats = RankingStats()
    rank_last_frame(pipe, s.label, stats)
    on_objects = sum(1 for (x, y), lab in zip(pipe.last_prompts.points, pipe.last_prompts.labels, strict=True)
                     if lab == 1 and s.label[int(round(y)), int(round(x))] > 0)
    assert stats.prompts == on_objects
    assert len(stats.iou_hdnet) == len(stats.iou_sam) == on_objects
    assert all(0.0 <= v <= 1.0 for v in stats.iou_hdnet + stats.iou_sam)
    d = stats.as_dict()
    assert d["wins"] == sum(a > b + 1e-9 for a, b in zip(stats.iou_hdnet, stats.iou_sam, strict=True))
    assert d["losses"] == sum(b > a + 1e-9 for a, b in zip(stats.iou_hdnet, stats.iou_sam, strict=True))
    assert np.isclose(d["win_rate"] + d["loss_rate"] + d["ties"] / max(d["prompts"], 1), 1.0) or d["prompts"] == 0
    # across prompts: every positive prompt, with its pick's eq. 6 quality (0 off the objects)
    positive = int((pipe.last_prompts.labels == 1).sum())
    assert len(stats.score_hdnet) == len(stats.score_sam) == len(stats.on_object) == positive
    obj = np.array(stats.on_object)
    assert obj.sum() == on_objects and d["all_prompts"] == positive and d["background_prompts"] == positive - on_objects
    for q, iou in ((stats.quality_hdnet, stats.iou_hdnet), (stats.quality_sam, stats.iou_sam)):
        assert np.array_equal(np.array(q)[obj], iou) and not np.any(np.array(q)[~obj])
    sc = np.array(stats.score_sam)
    good = np.array(stats.quality_sam) >= 0.5
    if good.any() and not good.all():  # the AUC is the share of (good, other) pairs ordered right
        pairs = [(a > b) + 0.5 * (a == b) for a in sc[good] for b in sc[~good]]
        assert np.isclose(d["auc_good_pick_sam"], np.mean(pairs))
    else:
        assert np.isnan(d["auc_good_pick_sam"])


def test_roc_auc_and_spearman_of_the_ranking_check():
    from uois_sam_ros.core.eval.ablation import roc_auc, spearman

    assert roc_auc([1, 1, 0, 0], [0.9, 0.8, 0.2, 0.1]) == 1.0
    assert roc_auc([1, 1, 0, 0], [0.1, 0.2, 0.8, 0.9]) == 0.0
    assert roc_auc([1, 0, 0], [0.5, 0.5, 0.1]) == 0.75  # a tie counts half
    assert np.isnan(roc_auc([1, 1], [0.3, 0.4]))  # no negative: undefined
    assert np.isclose(spearman([1, 2, 3, 4], [10, 20, 30, 25]), 0.8)
    assert np.isnan(spearman([1, 2], [2, 1])) and np.isnan(spearman([1, 1, 1], [1, 2, 3]))


def _sidecar(sam_path, text):
    sam_path.with_suffix(".json").write_text(text)


def test_methods_ranked_by_sams_own_head_get_the_small_sams_operating_point(shipped):
    sam_path, _ = shipped
    _sidecar(sam_path, '{"operating_point": {"sam_iou_threshold": 0.55, "stability_threshold": 0.8}}')
    for method in ("heatmap", "grid", "grid_fg"):
        eff, note = pipeline_mod.with_shipped_models(_cfg(pipeline={"method": method}))
        assert (eff.hdnet.sam_iou_threshold, eff.hdnet.stability_threshold) == (0.55, 0.8)
        assert note.endswith("at its IoU head's operating point (sam_iou_threshold 0.55, stability_threshold 0.8, "
                             "from sam_vit_synth.json)")
    # HDNet ranks with its own threshold: SAM's are left alone
    eff, note = pipeline_mod.with_shipped_models(_cfg(pipeline={"method": "heatmap_hdnet"}))
    assert (eff.hdnet.sam_iou_threshold, eff.hdnet.stability_threshold) == (0.88, 0.95)
    assert "operating point" not in note
    # ... unless HDNet is off: then SAM's head ranks again
    eff, _ = pipeline_mod.with_shipped_models(_cfg(pipeline={"method": "uois_sam"}, hdnet={"enabled": False}))
    assert eff.hdnet.sam_iou_threshold == 0.55
    # thresholds the user chose are kept
    eff, note = pipeline_mod.with_shipped_models(_cfg(pipeline={"method": "heatmap"},
                                                      hdnet={"sam_iou_threshold": 0.7}))
    assert (eff.hdnet.sam_iou_threshold, eff.hdnet.stability_threshold) == (0.7, 0.95)
    assert "operating point" not in note
    # the pipeline runs with it, and keeps it across a reconfigure
    pipe = pipeline_mod.UOISPipeline(_cfg(pipeline={"method": "heatmap"}))
    assert pipe.config.hdnet.sam_iou_threshold == 0.55
    pipe.reconfigure(_cfg(pipeline={"method": "heatmap"}, postprocess={"nms_iou": 0.4}))
    assert pipe.config.hdnet.sam_iou_threshold == 0.55 and pipe.config.postprocess.nms_iou == 0.4


@pytest.mark.parametrize("text, reason", [
    ("{not json", "JSONDecodeError"),
    ('{"operating_point": {"sam_iou_threshold": 0.5}}', "KeyError"),
    ('{"operating_point": {"sam_iou_threshold": 5, "stability_threshold": 0.8}}', "must lie in"),
])
def test_an_unreadable_operating_point_warns_and_keeps_sams_thresholds(shipped, text, reason):
    from uois_sam_ros.core.weights import OperatingPointWarning

    _sidecar(shipped[0], text)
    with pytest.warns(OperatingPointWarning, match=reason):
        eff, note = pipeline_mod.with_shipped_models(_cfg(pipeline={"method": "heatmap"}))
    assert (eff.hdnet.sam_iou_threshold, eff.hdnet.stability_threshold) == (0.88, 0.95)
    assert "operating point" not in note


def test_a_sidecar_without_an_operating_point_changes_nothing(shipped):
    _sidecar(shipped[0], '{"model_type": "vit_synth"}')
    eff, _ = pipeline_mod.with_shipped_models(_cfg(pipeline={"method": "grid"}))
    assert (eff.hdnet.sam_iou_threshold, eff.hdnet.stability_threshold) == (0.88, 0.95)


def test_the_shipped_hdnet_gets_its_own_threshold_in_place_of_the_papers(shipped):
    """The paper's 0.48 is for its HDNet on ViT-L; the shipped HDNet's sidecar names the threshold
    chosen for it on held-out scenes, used while hdnet.iou_threshold is left at 0.48."""
    from uois_sam_ros.core.weights import OperatingPointWarning

    _, hd_path = shipped
    _sidecar(hd_path, '{"operating_point": {"iou_threshold": 0.35}}')
    for method in ("heatmap_hdnet", "uois_sam"):
        eff, note = pipeline_mod.with_shipped_models(_cfg(pipeline={"method": method}))
        assert eff.hdnet.iou_threshold == 0.35
        assert note.endswith(f"and its HDNet ({hd_path.name}) at its operating point (iou_threshold 0.35, "
                             "from hdnet_vit_synth.json)")
    pipe = pipeline_mod.UOISPipeline(_cfg(pipeline={"method": "heatmap_hdnet"}))
    assert pipe.config.hdnet.iou_threshold == 0.35
    # a threshold the user chose is kept, and so is the paper's with an HDNet the user named
    eff, note = pipeline_mod.with_shipped_models(_cfg(pipeline={"method": "heatmap_hdnet"},
                                                      hdnet={"iou_threshold": 0.6}))
    assert eff.hdnet.iou_threshold == 0.6 and "operating point" not in note
    eff, _ = pipeline_mod.with_shipped_models(_cfg(pipeline={"method": "heatmap_hdnet"},
                                                   hdnet={"checkpoint": str(hd_path)}))
    assert eff.hdnet.iou_threshold == 0.48
    # the methods without HDNet do not read it
    eff, _ = pipeline_mod.with_shipped_models(_cfg(pipeline={"method": "heatmap"}))
    assert eff.hdnet.iou_threshold == 0.48
    # a sidecar with an operating point but no iou_threshold, or none at all, changes nothing
    for text in ('{"operating_point": {}}', '{"note": "x"}'):
        _sidecar(hd_path, text)
        assert pipeline_mod.with_shipped_models(_cfg(pipeline={"method": "heatmap_hdnet"}))[0].hdnet.iou_threshold \
            == 0.48
    for text, reason in (("{not json", "JSONDecodeError"), ('{"operating_point": {"iou_threshold": 2}}', "must lie in"),
                         ('{"operating_point": {"iou_threshold": "high"}}', "ValueError")):
        _sidecar(hd_path, text)
        with pytest.warns(OperatingPointWarning, match=reason):
            eff, note = pipeline_mod.with_shipped_models(_cfg(pipeline={"method": "heatmap_hdnet"}))
        assert eff.hdnet.iou_threshold == 0.48 and "operating point" not in note
