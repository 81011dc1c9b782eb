"""What scripts/gpu_train_sam.sh relies on before any GPU minute is spent.

The compact export (training.compact) must give the SAM trainer the same instances at the smaller
size (nearest-neighbour masks from the same label map, JPEG colour close to the area-resized PNG,
intrinsics scaled), and uois-sam-train-sam --init must start from the checkpoint's weights (the
step-0 validation scores exactly that model) and refuse bad inits with one line and exit 2.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from uois_sam_ros.core.data.datasets import DatasetError, open_dataset
from uois_sam_ros.core.data.synthetic import SceneConfig, write_uoais_dataset
from uois_sam_ros.core.segment.sam_backend import build_vit_synth, load_sam, save_sam_synth
from uois_sam_ros.core.weights import sha256_file
from uois_sam_ros.training import sam as train_sam_mod
from uois_sam_ros.training.compact import compact_dataset, target_size
from uois_sam_ros.training.compact import main as compact_main

torch.set_num_threads(1)  # a shared, busy 2-core machine

TINY = {"img_size": 128, "patch_size": 16, "embed_dim": 32, "depth": 2, "num_heads": 2, "mlp_ratio": 2.0,
        "window_size": 4, "global_attn_indexes": [1], "decoder_dim": 32, "decoder_depth": 1, "decoder_heads": 2,
        "decoder_mlp_dim": 64, "iou_head_hidden_dim": 32, "mask_in_chans": 4}


@pytest.fixture(scope="module")
def uoais(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("uoais") / "src"
    write_uoais_dataset(src, 2, 5, SceneConfig(width=320, height=240, min_objects=3, max_objects=6))
    return src


# ------------------------------------------------------------------------------------ compact export
def test_target_size_keeps_the_aspect_and_never_upscales():
    assert target_size(640, 480, 512) == (512, 384)
    assert target_size(480, 640, 512) == (384, 512)
    assert target_size(320, 240, 512) == (320, 240)


def test_compact_round_trip_keeps_instances_colour_and_intrinsics(uoais, tmp_path):
    out = tmp_path / "compact"
    r = compact_dataset(uoais, out, max_side=160, quality=90)
    assert r["images"] == 2 and not (out / "depth").exists()
    doc = json.loads((out / "annotations.json").read_text())
    assert all("segmentation" not in a and "occluded_mask" not in a for a in doc["annotations"])
    assert all("depth_file_name" not in im for im in doc["images"])
    src_ds = open_dataset("uoais-sim", uoais, uoais / "annotations.json")
    ds = open_dataset("uoais-sim", out, out / "annotations.json")
    assert len(ds) == len(src_ds) == 2
    for i in range(2):
        a, b = src_ds[i], ds[i]
        assert b.rgb.shape == (120, 160, 3) and b.depth is None
        # masks: the source label map resized with nearest neighbour, ids renumbered in order
        small = cv2.resize(a.label.astype(np.int32), (160, 120), interpolation=cv2.INTER_NEAREST)
        kept = [k for k in range(1, int(a.label.max()) + 1) if (small == k).any()]
        assert len(kept) >= 3
        expect = np.zeros_like(small)
        for new, old in enumerate(kept, 1):
            expect[small == old] = new
        np.testing.assert_array_equal(b.label, expect)
        # which is what the trainer's own resize (prepare_image at a 160 encoder) makes of the original
        _, lab_in = train_sam_mod.prepare_image(a.rgb, a.label, 160, None)
        np.testing.assert_array_equal(lab_in, small)
        # and close to the area-resized original masks (nearest is a quarter pixel off at x0.5)
        inter = union = 0
        for new, old in enumerate(kept, 1):
            area = cv2.resize((a.label == old).astype(np.float32), (160, 120), interpolation=cv2.INTER_AREA) >= 0.5
            i_k, u_k = (area & (b.label == new)).sum(), (area | (b.label == new)).sum()
            inter, union = inter + i_k, union + u_k
            assert area.sum() < 100 or i_k / u_k > 0.8, (i, old, i_k / u_k)
        assert inter / union > 0.9
        # amodal = visible when the amodal masks are left out
        np.testing.assert_array_equal(b.amodal.any(0), b.label > 0)
        ref = cv2.resize(a.rgb, (160, 120), interpolation=cv2.INTER_AREA).astype(np.float32)
        mse = float(((b.rgb.astype(np.float32) - ref) ** 2).mean())
        assert 10 * np.log10(255.0 ** 2 / mse) > 30.0  # JPEG on the renderer's sensor noise: ~32 dB here
        # intrinsics: x 0.5, pixel centres at integer coordinates
        assert b.intrinsics.fx == pytest.approx(a.intrinsics.fx * 0.5)
        assert b.intrinsics.cx == pytest.approx((a.intrinsics.cx + 0.5) * 0.5 - 0.5)
        assert (b.intrinsics.width, b.intrinsics.height) == (160, 120)


def test_the_sam_trainer_reads_the_compact_set_and_reexport_replaces_it(uoais, tmp_path, capsys):
    out = tmp_path / "c"
    assert compact_main(["--src", str(uoais), "--out", str(out), "--max-side", "200", "--limit", "1", "--quiet"]) == 0
    assert "1 images" in capsys.readouterr().out
    src = train_sam_mod.dataset_source(out)
    assert len(src) == 1
    rgb, label = src[0]
    assert rgb.shape == (150, 200, 3) and label.shape == (150, 200) and label.max() >= 1
    assert compact_main(["--src", str(uoais), "--out", str(out), "--max-side", "100", "--quiet"]) == 0
    assert len(train_sam_mod.dataset_source(out)) == 2 and not out.with_name("c.partial").exists()
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("x")
    with pytest.raises(DatasetError, match="not written by"):
        compact_dataset(uoais, foreign)
    assert compact_main(["--src", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2
    assert "not found" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------- --init
def _init_ckpt(path: Path, seed: int = 3) -> Path:
    torch.manual_seed(seed)
    save_sam_synth(path, build_vit_synth(TINY), TINY, {"note": "init"})
    return path


def _args(tmp: Path, init: Path | None, *extra: str) -> list[str]:
    a = ["--synthetic", "3", "--val-synthetic", "2", "--width", "160", "--height", "120", "--max-steps", "1",
         "--warmup", "1", "--batch-size", "1", "--prompts", "2", "--rounds", "0", "--val-every", "1",
         "--out", str(tmp / "sam.pt"), "--work-dir", str(tmp / "work"), "--device", "cpu", "--threads", "1",
         "--quiet", *extra]
    return a + (["--init", str(init)] if init else [])


def test_init_starts_from_the_checkpoint_and_records_it(tmp_path):
    init = _init_ckpt(tmp_path / "init.pt")
    assert train_sam_mod.main(_args(tmp_path, init)) == 0
    with open(tmp_path / "work" / "train_log.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == [0, 1]
    # the step-0 validation is the init checkpoint's model on the same images and prompts
    val = train_sam_mod.synthetic_source(2, 10_000_000, 160, 120)
    s = train_sam_mod.Settings()
    expect = train_sam_mod.evaluate(load_sam("vit_synth", init), val, s, torch.device("cpu"))
    assert float(rows[0]["val_loss"]) == pytest.approx(expect["val_loss"], rel=1e-5)
    torch.manual_seed(0)  # what the run would have started from without --init
    fresh = train_sam_mod.evaluate(build_vit_synth(TINY).eval(), val, s, torch.device("cpu"))
    assert abs(fresh["val_loss"] - expect["val_loss"]) > 1e-3
    side = json.loads((tmp_path / "sam.json").read_text())
    assert side["training"]["init"] == str(init)
    assert side["training"]["init_sha256"] == sha256_file(init)
    assert side["arch"] == TINY and "fine-tuned from" in side["notes"]
    assert torch.load(tmp_path / "sam.pt", weights_only=True)["meta"]["init"] == str(init)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("case", ["missing", "corrupt", "not_synth", "arch", "resume"])
def test_bad_init_is_one_line_and_exit_2(tmp_path, capsys, case):
    init = tmp_path / "init.pt"
    extra: list[str] = []
    if case == "corrupt":
        init.write_bytes(b"\x80\x04 not a torch zip")
    elif case == "not_synth":
        torch.save({"state_dict": {}}, init)
    elif case in ("arch", "resume"):
        _init_ckpt(init)
        extra = ["--arch", json.dumps({"depth": 3})] if case == "arch" else ["--resume"]
    assert train_sam_mod.main(_args(tmp_path, init, *extra)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("uois-sam-train-sam")
    assert {"missing": "not found", "corrupt": "corrupt", "not_synth": "not a vit_synth checkpoint",
            "arch": "conflicts with the arch of --init", "resume": "give one of them"}[case] in err
    assert not (tmp_path / "sam.pt").exists()
