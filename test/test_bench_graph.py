"""uois-sam-bench graph: the table comes out complete, every lockstep frame is answered, --json has the
figures. Speed is measured by the bench, never asserted here (a shared 2-core machine is too noisy)."""

from __future__ import annotations

import json
import os
import re

import pytest

pytest.importorskip("rclpy")
pytest.importorskip("uois_sam_ros.msg")

from uois_sam_ros.bench.graph import COLUMNS, main, parse_sets  # noqa: E402

NUMBER = r"[-+]?\d+(?:\.\d+)?"


def test_graph_bench_in_process_prints_every_column_and_answers_every_frame(tmp_path, capsys):
    out = tmp_path / "graph.json"
    # the conftest's domain: the bench must not move this test session to another one
    domain = os.environ["ROS_DOMAIN_ID"]
    code = main(["--frames", "2", "--width", "320", "--height", "240", "--in-process", "--throughput-s", "1",
                 "--rate", "15", "--domain-id", domain, "--json", str(out)])
    text = capsys.readouterr().out
    assert code == 0, text
    assert os.environ["ROS_DOMAIN_ID"] == domain
    head = next(ln for ln in text.splitlines() if ln.startswith("mode"))
    for col in ("core ms", "graph p50", "p95", "ratio", "overhead", "fps", "first ms", "answered"):
        assert col in head
    for mode in ("split", "single"):
        (row,) = [ln for ln in text.splitlines() if ln.startswith(mode + " ")]
        # core, p50, p95, ratio, overhead %, fps, first ms: numbers, then answered/sent
        m = re.fullmatch(rf"{mode}\s+" + r"\s+".join([rf"({NUMBER})"] * 4) + rf"\s+({NUMBER}) %\s+({NUMBER})"
                         rf"\s+({NUMBER})\s+(\d+)/(\d+)", row.strip())
        assert m, row
        assert m.group(8) == m.group(9) == "2", "every lockstep frame is answered"
        assert f"{mode}: core stages" in text
    assert "segmentation steps (median ms): arrive" in text  # the nodes' diagnostics reached the bench
    assert "hpg steps (median ms): arrive" in text

    data = json.loads(out.read_text())
    assert {"rows", "method", "width", "height", "frames", "in_process"} <= set(data)
    assert data["in_process"] is True and (data["width"], data["height"]) == (320, 240)
    assert [r["mode"] for r in data["rows"]] == ["split", "single"]
    for r in data["rows"]:
        assert set(COLUMNS) <= set(r)
        assert all(isinstance(r[k], (int, float)) for k in COLUMNS if k != "mode"), r
        assert r["sent"] == r["answered"] == 2 and len(r["graph_per_frame_ms"]) == len(r["core_per_frame_ms"]) == 2
        assert r["rate_sent"] >= r["rate_answered"] >= 1
        assert {"prompts", "decode", "postprocess", "total"} <= set(r["core_stages_ms"])
        assert {"arrive", "sync", "queue", "convert", "core", "output"} <= set(r["nodes"]["segmentation"])
        assert not r["error"]


def test_set_options_and_bad_arguments():
    assert parse_sets(["segmentation.frame_buffer=30", "hpg.publish_debug=false"]) == \
        {"segmentation": {"frame_buffer": 30}, "hpg": {"publish_debug": False}}
    with pytest.raises(ValueError):
        parse_sets(["camera.rate=1"])
    assert main(["--modes", "both"]) == 2
    assert main(["--set", "segmentation.no_such_parameter=1"]) == 2
