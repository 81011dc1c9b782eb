"""uois-sam-bench scaling prints every table and column with numbers and writes the same figures as
JSON; the timings are never asserted. The one real check: the sharded uois-sam-eval, merged,
gives exactly the means (and per-image rows) of one process.

One --quick run (tiny sizes, one scene, one repeat, 4 eval images) serves every test.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import re

import pytest

from uois_sam_ros.bench import cli, scaling
from uois_sam_ros.core.eval.metrics import KEYS

NUM = r"-?\d+(?:\.\d+)?"


def _tables(out: str) -> dict[str, tuple[list[str], list[list[str]]]]:
    """Title prefix ('1.', 'ratio', '2a.', '2b.', '3.') -> (header cells, row cells); cells split on
    two or more spaces, rows are the lines with as many cells as the header."""
    tables = {}
    for block in out.split("\n\n"):
        lines = block.strip("\n").splitlines()
        if len(lines) < 2:
            continue
        title = lines[0].strip()
        key = "ratio" if title.startswith("ratio") else title.split(" ", 1)[0]
        header = re.split(r"\s{2,}", lines[1].strip())
        rows = [c for c in (re.split(r"\s{2,}", ln.strip()) for ln in lines[2:]) if len(c) == len(header)]
        tables[key] = (header, rows)
    return tables


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("scaling")
    path = tmp / "scaling.json"
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = scaling.main(["--quick", "--json", str(path), "--workdir", str(tmp / "work"), "--threads", "1"])
    return code, buf.getvalue(), json.loads(path.read_text()), tmp / "work"


def _numeric(cells: list[str], allow_dash: bool = False) -> None:
    for c in cells:
        assert re.fullmatch(NUM, c) or (allow_dash and c == "-"), f"not a number: {c!r} in {cells}"


@pytest.mark.slow
def test_every_table_and_column_is_printed_with_numbers(quick_run):
    code, out, _, _ = quick_run
    assert code == 0, out
    tables = _tables(out)
    expect = {"1.": scaling.SIZE_COLUMNS, "ratio": scaling.RATIO_COLUMNS, "2a.": scaling.OBJECT_COLUMNS,
              "2b.": scaling.PROMPT_COLUMNS, "3.": scaling.PROCESS_COLUMNS}
    for key, cols in expect.items():
        assert key in tables, f"table {key} missing:\n{out}"
        assert tuple(tables[key][0]) == cols, tables[key][0]
    methods = ("weights_free", "uois_sam vit_synth")
    sizes = tables["1."][1]
    for m in methods:
        got = [r[1] for r in sizes if r[0].startswith(m)]
        assert got == ["120x160", "180x320"], f"{m}: {got}\n{out}"
    for r in sizes:
        _numeric(r[2:])
    ratios = tables["ratio"][1]
    assert sorted(r[0].split(" ")[0] for r in ratios) == ["uois_sam", "weights_free"]
    for r in ratios:
        assert r[1] == "180x320" and r[2] == "3.0", r  # the pixel ratio
        _numeric(r[2:], allow_dash=True)  # a stage that does no work has no ratio
        _numeric([r[-1]])  # the total always has one
    objects = tables["2a."][1]
    for m in methods:
        assert [r[1] for r in objects if r[0].startswith(m)] == ["2", "5"], out
    for r in objects:
        _numeric(r[1:-1])
        _numeric(r[-1:], allow_dash=True)
    prompts = tables["2b."][1]
    assert [r[1] for r in prompts] == ["1", "10"], out
    for r in prompts:
        _numeric(r[1:])
    assert re.search(rf"least-squares fit: decode = {NUM} ms \+ {NUM} ms x K", out), out
    procs = tables["3."][1]
    assert [(r[0], r[1], r[2]) for r in procs] == [("1", "1", "4"), ("2", "1", "4")], out
    for r in procs:
        _numeric(r)
    assert "--merge of 2 shards == 1-process means: yes (in 1 of 1 rounds; 4 images; 1 process: OF" in out


@pytest.mark.slow
def test_json_holds_every_figure(quick_run):
    _, out, data, _ = quick_run
    for key in ("cpu", "cores", "torch", "threads", "repeats", "scenes", "methods", "sizes", "size_ratios",
                "objects", "prompts", "processes", "seconds", "section_seconds", "load_before", "load_after"):
        assert key in data, key
    assert data["threads"] == 1 and len(data["methods"]) == 2
    for row in data["sizes"] + data["objects"]:
        assert set(row["seconds"]) == set(scaling.STAGES) and row["seconds"]["total"] > 0
        assert {"K", "masks", "frames", "repeats", "method"} <= set(row)
    assert {r["pixel_ratio"] for r in data["size_ratios"]} == {3.0}
    assert {"objects", "visible", "total_ratio", "ms_per_object"} <= set(data["objects"][0])
    pr = data["prompts"]
    assert [r["K"] for r in pr["rows"]] == [1, 10] and pr["embedding_s"] > 0
    assert set(pr["fit"]) == {"fixed_ms", "per_prompt_ms"}
    proc = data["processes"]
    assert [r["processes"] for r in proc["rows"]] == [1, 2]
    for r in proc["rows"]:
        assert {"wall_s", "images_per_s", "speedup", "startup_s", "work_s", "exit_s", "images_per_s_work",
                "speedup_work", "per_process"} <= set(r)
        assert len(r["per_process"]) == r["processes"] and len(r["rounds"]) == 1
    assert f"{data['sizes'][0]['seconds']['total'] * 1000:.1f}" in out


@pytest.mark.slow
def test_merged_shards_equal_one_process_exactly(quick_run):
    """The real check: 2 concurrent --shard processes, merged, give the 1-process means and rows."""
    _, _, data, work = quick_run
    proc = data["processes"]
    one = proc["one_process_means"]
    assert set(one) == set(KEYS)
    (merge,) = proc["merges"]
    assert merge["processes"] == 2 and merge["images"] == 4
    assert merge["means"] == one
    assert proc["merge_equal"] is True
    with open(work / "p1" / "all.csv") as f:
        single = list(csv.DictReader(f))
    with open(work / "p2" / "merged.csv") as f:
        merged = list(csv.DictReader(f))
    assert len(single) == 4 and merged == single
    for i in range(2):  # each shard really did only its own frames
        with open(work / "p2" / f"s{i}.csv") as f:
            assert [r["name"] for r in csv.DictReader(f)] == [r["name"] for r in single[i::2]]


def test_options_are_checked_and_the_cli_knows_scaling(capsys):
    assert cli.SUBCOMMANDS["scaling"] == "uois_sam_ros.bench.scaling"
    assert "scaling" in cli.__doc__
    with pytest.raises(SystemExit) as e:
        scaling.main(["--sizes", "480by640"])
    assert e.value.code == 2
    with pytest.raises(SystemExit) as e:
        scaling.main(["--methods", "grid"])
    assert e.value.code == 2
    assert scaling.main(["--repeats", "0", "--processes", ""]) == 2
    assert scaling.parse_sizes("480x640,720x1280") == [(480, 640), (720, 1280)]
    assert scaling.parse_ints("1, 10,30") == [1, 10, 30] and scaling.parse_ints("") == []
    assert "HEIGHTxWIDTH" in capsys.readouterr().err
