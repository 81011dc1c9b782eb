"""uois-sam-interactive-eval end to end: SAM (random small SAM) and the weights-free segmenter,
a dataset reader and generated scenes, the JSON / CSV outputs, the bench, and user errors."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import dataset_layouts as L  # noqa: E402

from uois_sam_ros.apps.interactive_eval import main  # noqa: E402

RANDOM_SAM = ["--set", "sam.model_type=vit_synth", "--set", "sam.allow_random_weights=true",
              "--set", "sam.device=cpu", "--threads", "1"]


@pytest.fixture(autouse=True)
def _threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)  # --threads 1 must not leak into later tests


def test_sam_configurations_on_shifted_scenes(tmp_path, capsys):
    out = tmp_path / "r.json"
    rc = main(["--dataset", "synthetic-shifted", "--count", "1", "--size", "320x240", "--max-objects", "2",
               "--configs", "none,R+E+CM,C", "--protocols", "4@85,5@90", "--lr", "1e-3", "--json", str(out),
               "--no-progress", *RANDOM_SAM])
    assert rc == 0
    text = capsys.readouterr().out
    assert "NoC4@85" in text and "FR5@90" in text and "random weights" in text
    doc = json.loads(out.read_text())
    assert doc["configs"] == ["none", "R+E+CM", "C"] and doc["protocols"] == ["4@85", "5@90"]
    assert doc["objects"] == 2 and doc["images"] == 1 and doc["adapt"]["lr"] == 1e-3
    for cfg in doc["configs"]:
        r85, r90 = doc["results"][cfg]["4@85"], doc["results"][cfg]["5@90"]
        assert 1.0 <= r85["NoC4@85"] <= 4.0 and 0.0 <= r85["FR4@85"] <= 100.0
        assert 1.0 <= r90["NoC5@90"] <= 5.0 and r85["objects"] == 2
    assert "adaptation_steps" not in doc["results"]["none"]["4@85"]
    assert doc["results"]["R+E+CM"]["4@85"]["adaptation_steps"] >= 2 + 1  # >= 1 click step + 1 per object
    rows = list(csv.DictReader(open(out.with_suffix(".csv"))))
    assert len(rows) == 3 * 2 * 2  # configs x protocols x objects
    r = rows[0]
    assert r["config"] == "none" and r["protocol"] == "4@85" and r["class"]  # synthetic shapes name classes
    ious = [float(v) for v in r["ious"].split()]
    assert len(ious) == int(r["clicks"]) <= 4 and float(r["final_iou"]) == pytest.approx(ious[-1], abs=1e-4)


def test_weights_free_on_a_dataset_reader(tmp_path, capsys):
    root = L.write_folder(tmp_path / "d", n=2)
    out = tmp_path / "wf.json"
    rc = main(["--dataset", "folder", "--root", str(root), "--segmenter", "weights_free", "--configs", "none",
               "--min-area", "10", "--json", str(out), "--no-progress"])
    assert rc == 0
    doc = json.loads(out.read_text())
    res = doc["results"]["none"]
    assert doc["segmenter"].startswith("weights_free") and doc["objects"] == 6
    # boxes standing on a table plane: the geometric regions are the objects
    assert res["20@85"]["NoC20@85"] <= 3.0 and res["20@85"]["FR20@85"] == 0.0
    assert 1.0 <= res["30@90"]["NoC30@90"] <= 30.0
    rows = list(csv.DictReader(open(out.with_suffix(".csv"))))
    assert len(rows) == 12 and rows[0]["image"] == "frame000" and rows[0]["class"] == ""


def test_bench_prints_both_times_and_the_ratio(capsys):
    rc = main(["--dataset", "synthetic", "--count", "1", "--size", "320x240", "--bench", "--bench-repeats", "2",
               *RANDOM_SAM])
    assert rc == 0
    text = capsys.readouterr().out
    assert "decoder forward" in text and "adaptation step" in text and "ratio" in text and "target < 4x" in text


@pytest.mark.parametrize("args, message", [
    (["--dataset", "synthetic", "--segmenter", "weights_free", "--configs", "none,R+E+CM"], "no decoder to adapt"),
    (["--dataset", "synthetic", "--configs", "R+C", *RANDOM_SAM], "R and C exclude each other"),
    (["--dataset", "synthetic", "--protocols", "20", *RANDOM_SAM], "CLICKS@IOU"),
    (["--dataset", "folder"], "needs --root"),
    (["--dataset", "synthetic", "--root", "x"], "--root is not used"),
    (["--dataset", "synthetic", "--size", "big"], "WIDTHxHEIGHT"),
    (["--dataset", "synthetic", "--segmenter", "weights_free", "--bench"], "needs --segmenter sam"),
    (["--dataset", "synthetic", "--set", "sam.model_type=vit_b", "--set", "sam.checkpoint=/nonexistent/sam.pth"],
     "not found"),
])
def test_user_errors_exit_2_with_one_line(args, message, capsys):
    assert main(["--count", "1", "--size", "64x48", "--no-progress", *args]) == 2  # the case's args win
    err = capsys.readouterr().err
    assert err.startswith("uois-sam-interactive-eval: error:") and message in err
