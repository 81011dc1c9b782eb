"""device: auto — one resolver (core.config.resolve_device) for every place a device reaches torch."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from uois_sam_ros.core.config import Config, ConfigError, config_from_dict, load_config, resolve_device

REPO = Path(__file__).resolve().parents[1]
NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only behaviour")


def test_defaults_are_auto_in_the_dataclasses_and_default_yaml():
    assert Config().sam.device == "auto" and Config().hpg.device == "auto"
    cfg = load_config(REPO / "config" / "default.yaml")
    assert cfg.sam.device == "auto" and cfg.hpg.device == "auto"


@NO_CUDA
def test_resolver_on_a_cpu_machine():
    assert resolve_device("cpu") == "cpu"
    assert resolve_device("auto") == "cpu" and resolve_device(None) == "cpu" and resolve_device(" AUTO ") == "cpu"
    for name in ("cuda", "cuda:0"):  # asked for explicitly: an error, never a silent CPU fallback
        with pytest.raises(ConfigError, match=f"device '{name}': CUDA is not available on this machine; use auto or cpu"):
            resolve_device(name)


def test_resolver_with_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("auto") == "cuda"
    assert resolve_device("cuda") == "cuda" and resolve_device("cuda:1") == "cuda:1"
    with pytest.raises(ConfigError, match=r"device 'cuda:2': this machine has 2 CUDA device\(s\) \(cuda:0..cuda:1\)"):
        resolve_device("cuda:2")


@pytest.mark.parametrize("bad", ["gpu", "cuda:x", "cuda:", "tpu:0", "cpu:0"])
def test_invalid_device_strings(bad):
    with pytest.raises(ConfigError, match=rf"device '{bad}' is not valid; use auto \| cpu \| cuda \| cuda:N"):
        resolve_device(bad)


def test_pipeline_exposes_the_resolved_device():
    from uois_sam_ros.core.segment.hpg import HPGNet
    from uois_sam_ros.core.segment.pipeline import UOISPipeline

    expect = resolve_device("auto")
    tiny = {"model_type": "vit_tiny", "allow_random_weights": True, "image_size": 128}
    p = UOISPipeline(config_from_dict({"sam": tiny, "pipeline": {"method": "heatmap"}}),
                     hpg_model=HPGNet("cnn_rgbd", width=4))
    assert p.device == expect and p.devices == {"sam": expect, "hpg": expect}
    assert str(next(p.segmenter.model.parameters()).device).startswith(expect)
    assert str(next(p.hpg.model.parameters()).device).startswith(expect)
    assert p.segmenter.device == torch.device(expect)
    prompts_only = UOISPipeline(config_from_dict({"sam": tiny, "pipeline": {"method": "heatmap"}}),
                                hpg_model=HPGNet("cnn_rgbd", width=4), part="prompts")
    assert prompts_only.devices == {"hpg": expect} and prompts_only.device == expect
    assert UOISPipeline(config_from_dict({"pipeline": {"method": "weights_free"}})).device == "cpu"


@NO_CUDA
def test_pipeline_asked_for_cuda_without_one_says_so():
    from uois_sam_ros.core.segment.pipeline import UOISPipeline

    cfg = config_from_dict({"sam": {"model_type": "vit_tiny", "allow_random_weights": True, "image_size": 128,
                                    "device": "cuda"}, "pipeline": {"method": "grid"}})
    with pytest.raises(ConfigError, match="CUDA is not available"):
        UOISPipeline(cfg)


@NO_CUDA
def test_train_hdnet_cli_device_default_is_auto(tmp_path, capsys):
    from uois_sam_ros.training import hdnet as thd

    out = tmp_path / "h.pt"
    args = ["--sam-type", "vit_tiny", "--sam-image-size", "128", "--allow-random-sam", "--synthetic", "3",
            "--width", "64", "--height", "48", "--val-split", "0.34", "--epochs", "1", "--num-prompts", "2",
            "--num-bg", "1", "--cache-dir", str(tmp_path / "c"), "--out", str(out)]
    assert thd.main([*args, "--device", "cuda"]) == 2
    assert "CUDA is not available" in capsys.readouterr().err
    assert thd.main(args) == 0  # default --device auto: the CPU here
    assert out.is_file()
