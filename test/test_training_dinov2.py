"""HPG training with the paper's frozen DINOv2 ViT-S/14 backbone (random weights, small input)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from uois_sam_ros.core.config import HPGConfig
from uois_sam_ros.core.segment.hpg import (
    HPG,
    HPGCheckpointError,
    HPGNet,
    load_hpg_checkpoint,
    save_hpg_checkpoint,
)
from uois_sam_ros.core.types import Frame
from uois_sam_ros.training import hpg as thpg
from uois_sam_ros.training.common import synthetic_arrays

torch.set_num_threads(2)
SIZE = (112, 140)  # 8 x 10 DINOv2 patches: fast on CPU
HEAD = 32


@pytest.fixture(scope="module")
def tiny_set():
    return synthetic_arrays(6, 0, SIZE)


def _loss(model, batch) -> float:
    """Loss in training mode (BN on batch statistics), the quantity the step minimises."""
    model.train()
    with torch.no_grad():
        fg, hm = model(batch["rgb"])
        return thpg.hpg_loss(fg, hm, batch["fg"], batch["heatmap"])[0].item()


def test_one_step_trains_only_the_head(tiny_set):
    torch.manual_seed(0)
    model = HPGNet("dinov2_vits14", input_size=SIZE, head_channels=HEAD)
    assert not model.uses_depth
    params = thpg.trainable_parameters(model)
    backbone_ids = {id(p) for p in model.backbone.parameters()}
    assert params and not any(id(p) in backbone_ids for p in params)
    assert len(params) == sum(1 for n, _ in model.named_parameters() if not n.startswith("backbone."))
    opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=1e-4)
    batch = thpg.make_batch(tiny_set, np.arange(4), 3.0, torch.device("cpu"), use_depth=False)
    bb_before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    head_before = {n: p.detach().clone() for n, p in model.named_parameters() if not n.startswith("backbone.")}
    before = _loss(model, batch)
    thpg.train_step(model, opt, batch)
    assert model.up.training and not model.backbone.training  # frozen backbone stays in eval mode
    assert _loss(model, batch) < before
    for k, v in model.backbone.state_dict().items():
        assert torch.equal(v, bb_before[k]), f"backbone tensor {k} changed"
    assert all(p.grad is None for p in model.backbone.parameters())
    changed = [n for n, p in model.named_parameters() if n in head_before and not torch.equal(p, head_before[n])]
    assert set(changed) == set(head_before)  # every head parameter moved


def test_cli_trains_dinov2_and_checkpoint_loads_alone(tmp_path, capsys):
    out = tmp_path / "dino.pt"
    rc = thpg.main(["--backbone", "dinov2_vits14", "--random-backbone", "--synthetic", "4", "--val-synthetic", "2",
                    "--input-height", str(SIZE[0]), "--input-width", str(SIZE[1]), "--head-channels", str(HEAD),
                    "--epochs", "1", "--batch-size", "2", "--out", str(out), "--threads", "2"])
    assert rc == 0, capsys.readouterr().err
    assert "best validation loss" in capsys.readouterr().out
    loaded = load_hpg_checkpoint(out)  # no backbone_checkpoint: the frozen backbone is stored
    assert loaded.backbone_name == "dinov2_vits14" and loaded.input_size == SIZE and loaded.head_channels == HEAD
    assert loaded.meta["random_backbone"] is True and loaded.meta["epoch"] == 1
    # the stored backbone is bit-identical to its seeded random init: training never touched it
    torch.manual_seed(0)
    init = HPGNet("dinov2_vits14", input_size=SIZE, head_channels=HEAD)
    for k, v in init.backbone.state_dict().items():
        assert torch.equal(loaded.backbone.state_dict()[k], v), k
    assert not torch.equal(loaded.head.weight, init.head.weight)
    # the training state of the (only, hence best) epoch gives the same outputs as the checkpoint
    init.load_state_dict(torch.load(thpg._state_path(out), weights_only=True)["model"])
    x = torch.randn(2, 3, *SIZE)
    with torch.no_grad():
        for a, b in zip(init.eval()(x), loaded(x)):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    # and it runs as the pipeline's prompt source
    cfg = HPGConfig(backbone="dinov2_vits14", checkpoint=str(out), input_height=SIZE[0], input_width=SIZE[1],
                    fg_threshold=0.0, heatmap_threshold=-1e9, top_k=3)
    hpg = HPG(cfg)
    rgb = np.random.default_rng(0).integers(0, 255, (240, 320, 3), dtype=np.uint8)
    assert len(hpg.prompts(Frame(rgb=rgb))) == 3 and hpg.last_fg.shape == SIZE


def test_save_load_same_outputs_and_head_only(tmp_path):
    torch.manual_seed(1)
    net = HPGNet("dinov2_vits14", input_size=SIZE, head_channels=HEAD).eval()
    full, head = tmp_path / "full.pt", tmp_path / "head.pt"
    save_hpg_checkpoint(full, net, {"note": "x"})
    save_hpg_checkpoint(head, net, include_backbone=False)
    assert full.stat().st_size > 80e6 > 10e6 > head.stat().st_size  # ViT-S/14 float32 is ~88 MB
    loaded = load_hpg_checkpoint(full)
    assert loaded.meta == {"note": "x"} and loaded.arch() == net.arch()
    x = torch.randn(1, 3, *SIZE)
    with torch.no_grad():
        for a, b in zip(net(x), loaded(x)):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    with pytest.raises(HPGCheckpointError, match="only the HPG head.*backbone_checkpoint"):
        load_hpg_checkpoint(head)


def test_cli_dinov2_needs_backbone_checkpoint(tmp_path, capsys):
    out = str(tmp_path / "x.pt")
    assert thpg.main(["--backbone", "dinov2_vits14", "--synthetic", "2", "--out", out]) == 2
    err = capsys.readouterr().err
    assert "--backbone-checkpoint" in err and "--random-backbone" in err and "Traceback" not in err
    assert not (tmp_path / "x.pt").exists()
    assert thpg.main(["--backbone", "dinov2_vits14", "--random-backbone", "--input-height", "100",
                      "--synthetic", "2", "--out", out]) == 2
    assert "divisible by 14, got 100x448" in capsys.readouterr().err
    assert thpg.main(["--backbone", "dinov2_vits14", "--backbone-checkpoint", str(tmp_path / "none.pth"),
                      "--synthetic", "2", "--val-synthetic", "1", "--input-height", "112", "--input-width", "140",
                      "--out", out]) == 2
    assert "DINOv2 ViT-S/14 backbone checkpoint not found" in capsys.readouterr().err
    with pytest.raises(thpg.TrainingError, match="does not train the 'sam' backbone"):
        thpg.check_backbone_args("sam", SIZE, None, False)
    with pytest.raises(thpg.TrainingError, match="--backbone-checkpoint is for the dinov2_vits14"):
        thpg.check_backbone_args("cnn_rgbd", SIZE, "x.pth", False)
