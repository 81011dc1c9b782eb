"""uois-sam-bench stages prints every column (the timings are never asserted), and the sam.dtype /
hpg.dtype option of the core: bf16 autocast gives nearly the same masks, fp32 stays bit-identical.

The bench runs on CPU with the smallest options (vit_synth, one repeat, a 4x4 grid, a short peak).
"""

from __future__ import annotations

import json
import re
import sys

import numpy as np
import pytest
import torch

from uois_sam_ros.bench import speed
from uois_sam_ros.core.config import ConfigError, HPGConfig, SamConfig, config_from_dict
from uois_sam_ros.core.segment.hpg import HPG
from uois_sam_ros.core.segment.sam_backend import SamSegmenter, default_sam_checkpoint

FAST = ["--models", "vit_synth", "--repeats", "1", "--threads", "1", "--peak-seconds", "0.2"]
NUM = r"-?\d+(?:\.\d+)?"


def _rows(out: str) -> dict[tuple[str, str], list[str]]:
    """(method, stage) -> the cells after the stage, for every table line of the output."""
    rows = {}
    for line in out.splitlines():
        m = re.match(r"^(\S.*?)\s{2,}(prompts|embedding|decode|postprocess|total)\s+(.*)$", line)
        if m:
            rows[(m.group(1).strip(), m.group(2))] = m.group(3).split()
    return rows


@pytest.fixture(scope="module")
def fp32_run(tmp_path_factory):
    path = tmp_path_factory.mktemp("bench") / "stages.json"
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = speed.main([*FAST, "--grid", "4", "--encoders", "chunked,library", "--ceiling", "--json", str(path)])
    return code, buf.getvalue(), json.loads(path.read_text())


def test_stages_prints_every_column_row_and_the_peak(fp32_run):
    code, out, _ = fp32_run
    assert code == 0, out
    header = next(line for line in out.splitlines() if line.startswith("method"))
    for col in speed.COLUMNS:
        assert col in header, f"column {col!r} missing from {header!r}"
    peak = re.search(rf"matmul peak: ({NUM}) GFLOP/s", out)
    assert peak and float(peak.group(1)) > 0, out
    assert "torch " + torch.__version__ in out and "device cpu (" in out
    rows = _rows(out)
    methods = {m for m, _ in rows}
    sam = next(m for m in methods if m.startswith("uois_sam vit_synth"))
    assert "weights_free" in methods, out
    for method in (sam, "weights_free"):
        for stage in speed.STAGES:
            assert (method, stage) in rows, f"{method} {stage} missing:\n{out}"
    for stage in ("prompts", "embedding", "decode", "total"):  # torch work: numbers in every FLOP column
        secs, gflop, rate, pct = rows[(sam, stage)][:4]
        for v in (secs, gflop, rate, pct):
            assert re.fullmatch(NUM, v), f"{sam} {stage}: {rows[(sam, stage)]}"
        assert float(gflop) > 0
    post = rows[(sam, "postprocess")][1:4]  # '-' when no counted torch work, else numbers (the mask IoU matmul)
    assert post == ["-", "-", "-"] or all(re.fullmatch(NUM, v) for v in post), post
    for stage in ("prompts", "embedding", "decode"):  # the geometric path runs no counted torch work here
        assert rows[("weights_free", stage)][1:4] == ["-", "-", "-"]
    k, masks = rows[(sam, "total")][4:6]
    assert int(k) >= 0 and int(masks) >= 0
    assert re.search(r"vit_synth.*: decode K=30 .* s, 4x4 grid \(16 prompts\) .* s, ratio", out), out


def test_stages_json_matches_the_printed_table(fp32_run):
    _, out, data = fp32_run
    assert data["peak"]["gflops"] > 0 and data["dtype"] == "fp32" and data["device"] == "cpu"
    assert f"{data['peak']['gflops']:.1f} GFLOP/s" in out
    rows = _rows(out)
    assert [r["method"] for r in data["rows"]][-1] == "weights_free"
    for r in data["rows"]:
        for stage in speed.STAGES:
            st = r["stages"][stage]
            cells = rows[(r["method"], stage)]
            assert cells[0] == f"{st['seconds']:.3f}"
            assert cells[1] == ("-" if st["gflop"] is None else f"{st['gflop']:.2f}")
            assert cells[3] == ("-" if st["pct_peak"] is None else f"{st['pct_peak']:.1f}")
        assert rows[(r["method"], "total")][4:6] == [str(r["K"]), str(r["masks"])]
    assert data["ratios"] and data["ratios"][0]["grid_prompts"] == 16


def test_stages_bf16_runs_on_cpu(capsys):
    assert speed.main([*FAST, "--grid", "0", "--no-weights-free", "--dtype", "bf16"]) == 0
    out = capsys.readouterr().out
    assert "dtype bf16" in out and "(bf16," in out
    rows = _rows(out)
    assert any(m.startswith("uois_sam vit_synth") and s == "total" for m, s in rows), out


def test_stages_fp16_on_cpu_warns_and_runs_fp32(capsys):
    assert speed.main(["--models", "", "--no-weights-free", "--threads", "1", "--peak-seconds", "0.1",
                       "--dtype", "fp16"]) == 0
    out = capsys.readouterr().out
    warn = [line for line in out.splitlines() if line.startswith("warning:")]
    assert len(warn) == 1 and "fp16" in warn[0] and "fp32" in warn[0]
    assert "dtype fp32" in out


def test_stages_bad_dtype_and_missing_cuda_exit_2(capsys):
    assert speed.main(["--dtype", "fp8"]) == 2
    assert "fp8" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert speed.main(["--device", "cuda"]) == 2


def test_bench_imports_no_ros():
    """The core bench must run where ROS is absent (scripts/gpu_bench.sh on a bare GPU machine)."""
    import subprocess

    code = ("import sys; sys.modules['rclpy'] = None; import uois_sam_ros.bench.speed, uois_sam_ros.bench.flops; "
            "bad = sorted(m for m, v in sys.modules.items() if v is not None and m.split('.')[0] in ('rclpy', 'rosbags', 'std_msgs', "
            "'sensor_msgs') or m.startswith('uois_sam_ros.ros') or m.startswith('uois_sam_ros.nodes')); "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


# ------------------------------------------------------------------------------ core: dtype option
@pytest.fixture(scope="module")
def small_sam():
    path = default_sam_checkpoint("vit_synth")
    if path is None:
        pytest.skip("the package ships no vit_synth checkpoint")
    return str(path)


@pytest.fixture(scope="module")
def frame_and_prompts():
    from uois_sam_ros.core.data.synthetic import generate_scene

    frame = generate_scene(1).frame()
    torch.set_num_threads(1)
    hpg = HPG(HPGConfig(device="cpu"))
    return frame, hpg.prompts(frame)


def _decode(seg: SamSegmenter, frame, prompts):
    seg.set_frame(frame)
    low = seg.decode_lowres(prompts)
    return low, seg.upsample(low.logits).numpy()


def test_sam_bf16_matches_fp32_masks(small_sam, frame_and_prompts):
    frame, prompts = frame_and_prompts
    assert len(prompts) > 0
    fp32 = SamSegmenter(SamConfig(model_type="vit_synth", checkpoint=small_sam, device="cpu"))
    bf16 = SamSegmenter(SamConfig(model_type="vit_synth", checkpoint=small_sam, device="cpu", dtype="bf16"),
                        model=fp32.model)
    low32, m32 = _decode(fp32, frame, prompts)
    low16, m16 = _decode(bf16, frame, prompts)
    assert bf16.embedding.dtype == torch.float32  # consumers downstream see float32
    for a, b in zip((low32.logits, low32.iou_pred, low32.t_iou, low32.t_mask),
                    (low16.logits, low16.iou_pred, low16.t_iou, low16.t_mask)):
        assert a.shape == b.shape and b.dtype == torch.float32
    assert m16.shape == m32.shape == (len(prompts), 4, frame.height, frame.width)
    inter, union = np.logical_and(m32, m16).sum(), np.logical_or(m32, m16).sum()
    assert union > 0 and inter / union > 0.9, f"bf16 vs fp32 mask IoU {inter / union:.3f}"


def test_sam_fp32_runs_no_autocast_and_is_bit_identical(small_sam, frame_and_prompts, monkeypatch):
    frame, prompts = frame_and_prompts
    seg = SamSegmenter(SamConfig(model_type="vit_synth", checkpoint=small_sam, device="cpu"))
    assert SamConfig().dtype == "fp32" and HPGConfig().dtype == "fp32"
    first, m1 = _decode(seg, frame, prompts)

    def no_autocast(*a, **k):
        raise AssertionError("fp32 must not enter torch.autocast")

    monkeypatch.setattr(torch, "autocast", no_autocast)
    second, m2 = _decode(seg, frame, prompts)
    HPG(HPGConfig(device="cpu")).prompts(frame)
    for a, b in zip((first.logits, first.iou_pred, first.t_iou, first.t_mask),
                    (second.logits, second.iou_pred, second.t_iou, second.t_mask)):
        assert torch.equal(a, b)
    assert np.array_equal(m1, m2)


def test_hpg_bf16_prompts_and_invalid_dtypes(frame_and_prompts):
    frame, prompts = frame_and_prompts
    bf = HPG(HPGConfig(device="cpu", dtype="bf16")).prompts(frame)
    assert bf.points.dtype == prompts.points.dtype and len(bf) > 0
    with pytest.raises(ConfigError, match="dtype 'half' is not valid"):
        HPG(HPGConfig(device="cpu", dtype="half"))
    with pytest.raises(ConfigError, match="fp32 \\| bf16 \\| fp16"):
        SamSegmenter(config_from_dict({"sam": {"model_type": "vit_tiny", "allow_random_weights": True,
                                               "image_size": 128, "device": "cpu", "dtype": "int8"}}).sam)


def test_fp16_on_cpu_falls_back_to_fp32_with_one_warning(monkeypatch):
    from uois_sam_ros.core import config

    monkeypatch.setattr(config, "_warned_fp16_cpu", False)
    with pytest.warns(config.DtypeFallbackWarning, match="fp16 on CPU runs as fp32"):
        assert config.resolve_dtype("fp16", "cpu") is None
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert config.resolve_dtype("fp16", "cpu") is None  # once per process
    assert config.resolve_dtype("bf16", "cpu") is torch.bfloat16
    assert config.resolve_dtype("fp32", "cpu") is None


def test_stages_times_both_decoder_layouts_on_one_model(tmp_path, capsys):
    """--decoders folded,library: one row per layout on the same loaded model, and their ratio."""
    path = tmp_path / "dec.json"
    code = speed.main([*FAST, "--grid", "0", "--no-weights-free", "--decoders", "folded,library",
                       "--json", str(path)])
    out = capsys.readouterr().out
    assert code == 0, out
    rows = _rows(out)
    assert {m for m, _ in rows} == {"uois_sam vit_synth (shipped) folded", "uois_sam vit_synth (shipped) library"}
    m = re.search(rf"vit_synth \(shipped\) decode: folded ({NUM}) s, library ({NUM}) s \(({NUM})x\)", out)
    assert m, out
    assert float(m.group(3)) == pytest.approx(float(m.group(2)) / float(m.group(1)), rel=0.02)
    data = json.loads(path.read_text())
    assert [r["decoder"] for r in data["rows"]] == ["folded", "library"]
    # the folded layout runs fewer counted FLOPs for the same masks (the image side is not copied K times)
    g = {r["decoder"]: r["stages"]["decode"]["gflop"] for r in data["rows"]}
    assert 0 < g["folded"] < g["library"]
    assert data["rows"][0]["masks"] == data["rows"][1]["masks"]


def test_stages_refuses_an_unknown_decoder(capsys):
    assert speed.main([*FAST, "--decoders", "folded,fast"]) == 2
    assert "--decoders 'folded,fast'" in capsys.readouterr().err


def test_stages_ceiling_and_both_encoder_layouts(fp32_run):
    """--ceiling prints, per SAM stage, its counted products run alone; their FLOPs are the
    counter's. --encoders chunked,library times both encoder layouts and prints their ratio."""
    code, out, doc = fp32_run
    assert code == 0, out
    rows = _rows(out)
    for layout in ("chunked", "library"):
        assert len(rows[(f"uois_sam vit_synth (shipped) {layout}", "embedding")]) == 4
        for st in ("prompts", "embedding", "decode"):
            assert re.search(rf"ceiling uois_sam vit_synth \(shipped\) {layout} {st}: \d+ counted products "
                             rf"\(\d+ distinct\), run alone {NUM} s = {NUM} GFLOP/s = {NUM} % of peak; the stage "
                             rf"took {NUM} s, {NUM} s of it outside them", out), (layout, st)
    for st in ("embedding", "prompts"):
        assert re.search(rf"vit_synth \(shipped\) {st}: chunked {NUM} s, library {NUM} s \({NUM}x\)", out)
    sam_rows = [r for r in doc["rows"] if r["model_type"] == "vit_synth"]
    assert [r["encoder"] for r in sam_rows] == ["chunked", "library"]
    for r in sam_rows:
        for st in ("prompts", "embedding", "decode"):
            c = r["ceiling"][st]
            assert c["gflop"] == pytest.approx(r["stages"][st]["gflop"])  # the same products as the counter's
            assert c["alone_seconds"] > 0 and c["ceiling_pct_peak"] > 0 and c["calls"] >= c["distinct"] >= 1
            assert c["outside_seconds"] == pytest.approx(c["stage_seconds"] - c["alone_seconds"])
            assert 1 <= len(c["top"]) <= 3 and sum(t["share"] for t in c["top"]) <= 1 + 1e-9
    assert [r["stage"] for r in doc["encoder_ratios"]] == ["embedding", "prompts"]
    ratio = doc["encoder_ratios"][0]
    assert ratio["encoder"] == "chunked" and ratio["reference"] == "library" and ratio["seconds"] > 0


def test_ceiling_remakes_strided_and_expanded_arguments():
    from uois_sam_ros.bench.ceiling import _spec

    base = torch.randn(4, 1, 6).expand(4, 5, 6)  # stride 0, as a broadcast bias
    s = _spec(base.transpose(1, 2))
    t = s.make(torch.Generator().manual_seed(0))
    assert t.shape == (4, 6, 5) and t.stride() == base.transpose(1, 2).stride() and t.dtype == torch.float32
    assert _spec(3) == 3 and _spec(None) is None
