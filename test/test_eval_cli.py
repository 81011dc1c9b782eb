"""uois-sam-eval end to end on generated datasets: a real method run, saved predictions, errors."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
import dataset_layouts as L  # noqa: E402

from uois_sam_ros.apps.eval import main  # noqa: E402


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    """Two rendered tabletop scenes (H4's generator) in the UOAIS-Sim layout."""
    synthetic = pytest.importorskip("uois_sam_ros.core.data.synthetic")
    root = tmp_path_factory.mktemp("syn")
    synthetic.write_uoais_dataset(root, 2, seed=5, cfg=synthetic.SceneConfig(
        width=320, height=240, min_objects=3, max_objects=5))
    return root


def test_weights_free_end_to_end_then_rescore_saved_predictions(synthetic, tmp_path, capsys):
    preds, ov, out = tmp_path / "preds", tmp_path / "ov", tmp_path / "r.json"
    rc = main(["--dataset", "uoais-sim", "--root", str(synthetic), "--annotations",
               str(synthetic / "annotations.json"), "--method", "weights_free", "--save-predictions",
               str(preds), "--overlays", str(ov), "--json", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    assert text.index("Overlap") < text.index("Boundary") < text.index("%75")
    assert "uoais-sim weights_free" in text and "(2 images)" in text
    doc = json.loads(out.read_text())
    assert doc["images"] == 2 and set(doc["means"]) >= {"OP", "OR", "OF", "BP", "BR", "BF", "P75", "mIoU"}
    assert doc["means"]["OP"] > 50  # the geometric method finds objects on a rendered table
    rows = out.with_suffix(".csv").read_text().splitlines()
    assert len(rows) == 3 and rows[1].startswith("color__000000,")
    saved = sorted(preds.glob("*.png"))
    assert [p.name for p in saved] == ["color__000000.png", "color__000001.png"]
    lab = cv2.imread(str(saved[0]), cv2.IMREAD_UNCHANGED)
    assert lab.dtype == np.uint16 and lab.shape == (240, 320) and lab.max() >= 1
    assert len(list(ov.glob("*.png"))) == 2
    # Re-scoring the saved PNGs gives the same numbers without running a model.
    out2 = tmp_path / "r2.json"
    assert main(["--dataset", "uoais-sim", "--root", str(synthetic), "--annotations",
                 str(synthetic / "annotations.json"), "--predictions", str(preds), "--json", str(out2)]) == 0
    again = json.loads(out2.read_text())["means"]
    for k, v in doc["means"].items():
        assert again[k] == pytest.approx(v, abs=1e-9)


def test_predictions_of_the_ground_truth_score_100(tmp_path, capsys):
    root = L.write_folder(tmp_path / "d")
    preds = tmp_path / "p"
    preds.mkdir()
    for f in (root / "label").glob("*.png"):
        lab = cv2.imread(str(f), cv2.IMREAD_UNCHANGED)
        perm = np.array([0, 7, 3, 11], np.uint16)  # other id values, same objects
        cv2.imwrite(str(preds / f.name), perm[lab])
    out = tmp_path / "m.json"
    assert main(["--dataset", "folder", "--root", str(root), "--predictions", str(preds), "--json", str(out),
                 "--no-progress"]) == 0
    means = json.loads(out.read_text())["means"]
    assert all(means[k] == pytest.approx(100.0) for k in ("OP", "OR", "OF", "BP", "BR", "BF", "P75", "mIoU"))
    assert "100.0" in capsys.readouterr().out


def test_user_errors_exit_2_with_one_line(tmp_path, capsys):
    assert main(["--dataset", "ocid", "--root", str(tmp_path / "missing"), "--predictions", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.strip() == f"uois-sam-eval: error: ocid root folder not found: {tmp_path / 'missing'}"

    bare = L.write_folder(tmp_path / "bare", camera=False)
    assert main(["--dataset", "folder", "--root", str(bare), "--method", "weights_free"]) == 2
    err = capsys.readouterr().err
    assert "needs camera intrinsics" in err and "--intrinsics fx,fy,cx,cy" in err and "--camera camera.json" in err
    assert "Traceback" not in err

    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["--dataset", "folder", "--root", str(bare), "--predictions", str(empty)]) == 2
    assert "no prediction for frame 'frame000'" in capsys.readouterr().err

    assert main(["--dataset", "folder", "--root", str(bare), "--predictions", str(empty),
                 "--intrinsics", "1,2,3"]) == 2
    assert "fx,fy,cx,cy" in capsys.readouterr().err

    with pytest.raises(SystemExit) as e:
        main(["--dataset", "pascal", "--root", str(bare)])
    assert e.value.code == 2
    assert "invalid choice: 'pascal'" in capsys.readouterr().err


def test_intrinsics_option_fills_a_dataset_without_them(tmp_path, capsys):
    bare = L.write_folder(tmp_path / "bare", camera=False, n=1)
    out = tmp_path / "x.json"
    rc = main(["--dataset", "folder", "--root", str(bare), "--method", "weights_free", "--no-progress",
               "--intrinsics", "60,61,32,24", "--json", str(out)])
    assert rc == 0 and json.loads(out.read_text())["images"] == 1


def test_flat_folder_layout_scores_and_runs(tmp_path, capsys):
    """The camera fixtures' flat layout (NNNN-color.png + NNNN-depth.png [+ NNNN-label.png]) works too."""
    root = L.write_flat_folder(tmp_path / "flat", labels=(0, 1, 2))
    preds = tmp_path / "p"
    preds.mkdir()
    for i in range(3):
        cv2.imwrite(str(preds / f"{i:04d}.png"), L.scene(800 + i)[2].astype(np.uint16))  # paired by frame name
    out = tmp_path / "m.json"
    assert main(["--dataset", "folder", "--root", str(root), "--predictions", str(preds), "--json", str(out),
                 "--no-progress"]) == 0
    doc = json.loads(out.read_text())
    assert doc["images"] == 3 and doc["means"]["OF"] == pytest.approx(100.0)
    capsys.readouterr()


def test_method_runs_on_the_shared_fixture_folder_as_it_is(real_rgbd_dir, tmp_path, capsys):
    preds = tmp_path / "p"
    assert main(["--dataset", "folder", "--root", str(real_rgbd_dir), "--method", "weights_free", "--limit", "1",
                 "--save-predictions", str(preds), "--no-progress"]) == 0
    lab = cv2.imread(str(preds / "0000.png"), cv2.IMREAD_UNCHANGED)
    assert lab.shape == (480, 640) and lab.max() >= 1  # objects found on the real tabletop


def test_comparison_runs_every_method_on_the_same_frames(synthetic, tmp_path, capsys):
    """--method a,b: one table, the single-method scores per row, stage times, one json with both."""
    ann = str(synthetic / "annotations.json")
    single = tmp_path / "wf.json"
    assert main(["--dataset", "uoais-sim", "--root", str(synthetic), "--annotations", ann,
                 "--method", "weights_free", "--json", str(single), "--no-progress"]) == 0
    capsys.readouterr()
    out = tmp_path / "cmp.json"
    rc = main(["--dataset", "uoais-sim", "--root", str(synthetic), "--annotations", ann, "--no-progress",
               "--method", "weights_free,heatmap_hdnet", "--json", str(out),
               "--set", "sam.model_type=vit_synth", "--set", "sam.allow_random_weights=true",
               "--set", "sam.device=cpu", "--set", "hpg.top_k=4"])
    assert rc == 0
    text = capsys.readouterr().out
    head = next(line for line in text.splitlines() if line.startswith("Method"))
    for col in ("OF", "BF", "%75", "prompts", "embeddin", "decode", "postproc", "total"):
        assert col in head
    rows = {line.split("|")[0].strip(): line for line in text.splitlines() if "|" in line}
    assert set(rows) >= {"weights_free", "heatmap_hdnet"}
    assert "(2 images, every method on the same frames in one run)" in text
    assert "heatmap_hdnet: HDNet vs SAM IoU head on" in text
    doc = json.loads(out.read_text())
    assert set(doc["methods"]) == {"weights_free", "heatmap_hdnet"} and doc["images"] == 2
    # the weights-free row is exactly what the method scores alone
    alone = json.loads(single.read_text())["means"]
    for k, v in alone.items():
        assert doc["methods"]["weights_free"]["means"][k] == pytest.approx(v, abs=1e-9)
    rk = doc["methods"]["heatmap_hdnet"]["hdnet_ranking"]
    assert rk["prompts"] >= 0 and rk["all_prompts"] >= rk["prompts"]
    for k in ("auc_object_vs_background", "auc_good_pick", "spearman_on_objects"):  # a value, or null when undefined
        assert all(v is None or -1.0 <= v <= 1.0 for v in (rk[f"{k}_hdnet"], rk[f"{k}_sam"]))
    assert "  across " in text and "AUC object vs background" in text
    assert doc["methods"]["weights_free"]["hdnet_ranking"] is None
    assert doc["methods"]["heatmap_hdnet"]["ms_per_frame"]["total"] > 0
    assert (tmp_path / "cmp.weights_free.csv").is_file() and (tmp_path / "cmp.heatmap_hdnet.csv").is_file()


def test_comparison_refuses_unknown_and_repeated_methods(synthetic, capsys):
    for bad, msg in (("weights_free,nope", "unknown method nope"), ("grid,grid", "named twice")):
        with pytest.raises(SystemExit) as e:
            main(["--dataset", "uoais-sim", "--root", str(synthetic), "--method", bad])
        assert e.value.code == 2 and msg in capsys.readouterr().err


def test_sharded_evaluation_equals_one_process_exactly(tmp_path, capsys):
    """--shard I/N on each of N processes, then --merge: the same means, bit for bit, and the same
    per-image CSV in the same frame order as a single process."""
    synthetic = pytest.importorskip("uois_sam_ros.core.data.synthetic")
    root = tmp_path / "syn5"
    synthetic.write_uoais_dataset(root, 5, seed=11, cfg=synthetic.SceneConfig(
        width=320, height=240, min_objects=2, max_objects=4))
    common = ["--dataset", "uoais-sim", "--root", str(root), "--annotations", str(root / "annotations.json"),
              "--method", "weights_free", "--no-progress"]
    assert main([*common, "--json", str(tmp_path / "one.json")]) == 0
    one_text = capsys.readouterr().out
    for i in range(2):
        assert main([*common, "--shard", f"{i}/2", "--json", str(tmp_path / f"s{i}.json")]) == 0
    capsys.readouterr()
    assert json.loads((tmp_path / "s0.json").read_text())["images"] == 3  # frames 0, 2, 4
    assert main(["--merge", str(tmp_path / "s1.json"), str(tmp_path / "s0.json"),
                 "--json", str(tmp_path / "merged.json")]) == 0
    merged_text = capsys.readouterr().out
    one = json.loads((tmp_path / "one.json").read_text())
    merged = json.loads((tmp_path / "merged.json").read_text())
    assert merged["means"] == one["means"] and merged["images"] == 5
    assert (tmp_path / "merged.csv").read_text() == (tmp_path / "one.csv").read_text()
    assert merged_text.splitlines()[3].split("|", 1)[1] == one_text.splitlines()[3].split("|", 1)[1]
    # a missing shard, or shards of two different runs, are refused by name
    assert main(["--merge", str(tmp_path / "s0.json")]) == 2
    assert "need shards 0..1 once each; missing [1]" in capsys.readouterr().err
    other = json.loads((tmp_path / "s1.json").read_text())
    other["frames_total"] = 6
    (tmp_path / "x1.json").write_text(json.dumps(other))
    (tmp_path / "x1.csv").write_text((tmp_path / "s1.csv").read_text())
    assert main(["--merge", str(tmp_path / "s0.json"), str(tmp_path / "x1.json")]) == 2
    assert "is from another run (frames_total 6 != 5)" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*common, "--shard", "2/2"])
    assert "need 0 <= I < N" in capsys.readouterr().err
