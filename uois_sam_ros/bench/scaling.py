"""uois-sam-bench scaling: how the time per frame grows with the image size and with the number of
objects and prompts, and how evaluation throughput grows with the number of processes.

Three measurements, so a reader can size a deployment from the README instead of guessing:

1. Image size: per-stage time of ``UOISPipeline.run`` at each --sizes (default 480x640 and
   720x1280, pixel ratio 3.0) on synthetic scenes rendered at that size, and the ratio of each
   stage to the first size. The core scales its pixel limits (box limit, min_area, superpixel
   and split sizes) with the image, so both sizes run the same algorithm.
2. Objects and prompts: the same per-stage time at the first size with exactly n objects
   (--objects), and, for the SAM path, the decode of K point prompts (--prompts) on one image
   embedding (prompt encoder + mask decoder + HDNet, the pipeline's "decode" stage), with a
   least-squares fit time = fixed + per-prompt x K.
3. Processes: ``uois-sam-eval --method weights_free`` on a small UOAIS-Sim set written here, one
   process against N processes running ``--shard i/N`` concurrently (each with --eval-threads
   threads), then ``--merge``; images/s, the speed-up, and whether the merged means equal the
   one-process means exactly (exit status 1 when they do not). Each process runs the CLI's own
   main behind its heavy imports, so the start-up (interpreter, torch, segment-anything: seconds)
   is reported apart from the work: on a small set it dominates the wall time.

Times: per frame the median of --repeats runs (after one warm-up run), averaged over --scenes
scenes. Imports no ROS. Timings are only printed (and written with --json), never asserted.

    uois-sam-bench scaling [--sizes 480x640,720x1280] [--objects 2,5,10,20] [--prompts 1,10,30,100]
                           [--processes 1,2] [--methods weights_free,uois_sam] [--repeats 3]
                           [--scenes 4] [--rounds 3] [--threads 2] [--json out.json] [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from uois_sam_ros.bench.speed import device_name, sam_pipeline, shipped_hpg
from uois_sam_ros.core.config import config_from_dict
from uois_sam_ros.core.segment.pipeline import UOISPipeline
from uois_sam_ros.core.segment.prompting import grid_prompts
from uois_sam_ros.core.types import Frame, Prompts

STAGES = ("prompts", "embedding", "decode", "postprocess", "total")
METHODS = ("weights_free", "uois_sam")
SIZE_COLUMNS = ("method", "size", "Mpx", *(f"{s} ms" for s in STAGES), "K", "masks")
RATIO_COLUMNS = ("method", "size", "pixels x", *(f"{s} x" for s in STAGES))
OBJECT_COLUMNS = ("method", "objects", "visible", *(f"{s} ms" for s in STAGES), "K", "masks", "total x",
                  "ms/object")
PROMPT_COLUMNS = ("model", "K", "decode ms", "ms/prompt", "x K=first", "x embedding")
PROCESS_COLUMNS = ("processes", "threads each", "images", "wall s", "images/s", "speed-up", "start-up s",
                   "work s", "exit s", "work images/s", "work speed-up")
QUICK = {"sizes": "120x160,180x320", "objects": "2,5", "prompts": "1,10", "processes": "1,2", "repeats": 1,
         "scenes": 1, "rounds": 1, "eval_scenes": 4, "eval_size": "120x160"}


# ------------------------------------------------------------------------------------- parsing
def parse_sizes(text: str) -> list[tuple[int, int]]:
    """'480x640,720x1280' -> [(480, 640), (720, 1280)]: height x width, as the issue writes them."""
    out = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        try:
            h, w = (int(v) for v in part.lower().split("x"))
        except ValueError:
            raise argparse.ArgumentTypeError(f"size {part!r}: expected HEIGHTxWIDTH, e.g. 480x640") from None
        if h < 64 or w < 64:
            raise argparse.ArgumentTypeError(f"size {part!r}: at least 64x64")
        out.append((h, w))
    if not out:
        raise argparse.ArgumentTypeError("no size given")
    return out


def parse_ints(text: str) -> list[int]:
    """'2,5,10' -> [2, 5, 10]; every value at least 1; '' -> [] (skips that measurement)."""
    try:
        vals = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated integers") from None
    if any(v < 1 for v in vals):
        raise argparse.ArgumentTypeError(f"{text!r}: every value must be at least 1")
    return vals


def parse_methods(text: str) -> list[str]:
    names = [m.strip() for m in text.split(",") if m.strip()]
    bad = [m for m in names if m not in METHODS]
    if bad:
        raise argparse.ArgumentTypeError(f"unknown method {', '.join(bad)}; choose from {', '.join(METHODS)}")
    return names


# ------------------------------------------------------------------------------------ formatting
def _load() -> str:
    try:
        return "load average " + " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "load average unknown"


def _cell(v: Any, spec: str = ".1f") -> str:
    if v is None:
        return "-"
    if isinstance(v, str):
        return v
    if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
        return str(v)
    if isinstance(v, bool):
        return "yes" if v else "no"
    return format(float(v), spec)


def print_table(title: str, columns: tuple[str, ...], rows: list[list[Any]]) -> None:
    """A plain text table: first column left-aligned, the rest right-aligned, two spaces apart."""
    cells = [[_cell(c) for c in r] for r in rows]
    widths = [max([len(columns[i])] + [len(r[i]) for r in cells]) for i in range(len(columns))]

    def line(vals: list[str] | tuple[str, ...]) -> str:
        return "  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(vals, widths)))

    print(f"\n{title}")
    print(line(columns))
    for r in cells:
        print(line(r))
    sys.stdout.flush()


def _ratio(a: float, b: float, floor: float = 1e-3) -> float | None:
    """a / b, or None where b is under floor (1 ms): a stage that does (almost) no work has no
    meaningful ratio (0.2 ms against 0.03 ms is noise, not a 6x slow-down)."""
    return a / b if b >= floor else None


# ------------------------------------------------------------------------------------- pipelines
def build_pipeline(method: str) -> tuple[UOISPipeline, str]:
    """The pipelines of `uois-sam-bench stages`: weights-free, or the shipped small SAM (vit_synth)
    with its HDNet and the shipped HPG; without a shipped HPG a random one whose thresholds let
    its top peaks through, so K is the configured maximum rather than 0."""
    if method == "weights_free":
        return UOISPipeline(config_from_dict({"pipeline": {"method": "weights_free"}})), "weights_free"
    pipe, _, shipped = sam_pipeline("vit_synth", *shipped_hpg())
    return pipe, "uois_sam vit_synth" + (" (shipped)" if shipped else " (random)")


def scene_frames(size: tuple[int, int], seeds: list[int], objects: int | None = None) -> list[tuple[Frame, int]]:
    """(frame, visible GT objects) of synthetic scenes rendered at size (height, width); with
    objects, every scene places exactly that many (some may end up hidden: 'visible' says)."""
    from uois_sam_ros.core.data.synthetic import SceneConfig, generate_scene

    h, w = size
    kw: dict[str, Any] = {"width": w, "height": h, "amodal": False}
    if objects is not None:
        kw.update(min_objects=objects, max_objects=objects)
    out = []
    for s in seeds:
        sc = generate_scene(s, SceneConfig(**kw))
        out.append((sc.frame(), int(len(np.unique(sc.label)) - (1 if (sc.label == 0).any() else 0))))
    return out


def time_groups(pipe: UOISPipeline, groups: dict[Any, list[Frame]], repeats: int) -> dict[Any, dict[str, Any]]:
    """Per group (an image size, an object count) and stage: the median of `repeats` runs of each
    frame, averaged over the group's frames; with the mean prompts K and kept masks per frame.

    One warm-up run per group first. The repeats go round every group in turn, so a spell of load
    from another job on a shared machine slows every group alike instead of one of them."""
    for frames in groups.values():
        pipe.run(frames[0])
    runs: dict[Any, list[list[dict[str, float]]]] = {g: [[] for _ in fr] for g, fr in groups.items()}
    ks: dict[Any, list[int]] = {g: [0] * len(fr) for g, fr in groups.items()}
    masks: dict[Any, list[int]] = {g: [0] * len(fr) for g, fr in groups.items()}
    for _ in range(repeats):
        for g, frames in groups.items():
            for i, f in enumerate(frames):
                inst = pipe.run(f)
                runs[g][i].append(inst.timings)
                ks[g][i] = len(pipe.last_prompts) if pipe.last_prompts is not None else 0
                masks[g][i] = len(inst)
    out = {}
    for g, per in runs.items():
        med = [{s: float(np.median([r.get(s, 0.0) for r in frame_runs])) for s in STAGES} for frame_runs in per]
        out[g] = {"seconds": {s: float(np.mean([m[s] for m in med])) for s in STAGES},
                  "K": float(np.mean(ks[g])), "masks": float(np.mean(masks[g])), "frames": len(per),
                  "repeats": repeats}
    return out


def _stage_ms(r: dict[str, Any]) -> list[float]:
    return [1000.0 * r["seconds"][s] for s in STAGES]


# ----------------------------------------------------------------------------------- 1. sizes
def bench_sizes(pipes: dict[str, UOISPipeline], sizes: list[tuple[int, int]], seeds: list[int],
                repeats: int) -> tuple[list[dict], list[dict]]:
    rows, ratios = [], []
    frames = {sz: [f for f, _ in scene_frames(sz, seeds)] for sz in sizes}
    for name, pipe in pipes.items():
        base = None
        timed = time_groups(pipe, frames, repeats)
        for sz in sizes:
            r = timed[sz]
            row = {"method": name, "size": f"{sz[0]}x{sz[1]}", "height": sz[0], "width": sz[1],
                   "pixels": sz[0] * sz[1], **r}
            rows.append(row)
            if base is None:
                base = row
            else:
                ratios.append({"method": name, "size": row["size"], "vs": base["size"],
                               "pixel_ratio": row["pixels"] / base["pixels"],
                               "stage_ratio": {s: _ratio(row["seconds"][s], base["seconds"][s]) for s in STAGES}})
    return rows, ratios


# --------------------------------------------------------------------------------- 2. objects
def bench_objects(pipes: dict[str, UOISPipeline], counts: list[int], size: tuple[int, int], seeds: list[int],
                  repeats: int) -> list[dict]:
    rows = []
    scenes = {n: scene_frames(size, seeds, objects=n) for n in counts}
    for name, pipe in pipes.items():
        base = None
        timed = time_groups(pipe, {n: [f for f, _ in scenes[n]] for n in counts}, repeats)
        for n in counts:
            r = timed[n]
            visible = float(np.mean([v for _, v in scenes[n]]))
            row = {"method": name, "objects": n, "visible": visible, **r}
            base = base or row
            row["total_ratio"] = _ratio(r["seconds"]["total"], base["seconds"]["total"])
            row["ms_per_object"] = 1000.0 * r["seconds"]["total"] / visible if visible > 0 else None
            rows.append(row)
    return rows


# --------------------------------------------------------------------------------- 2. prompts
def bench_prompts(pipe: UOISPipeline, name: str, ks: list[int], frame: Frame, repeats: int) -> dict[str, Any]:
    """Decode K grid-point prompts on one embedding, as the pipeline's decode stage does (SAM's
    prompt encoder and mask decoder in decode_batch chunks, then HDNet's adapted IoU)."""
    seg = pipe.segmenter

    def decode(p: Prompts) -> None:
        low = seg.decode_lowres(p)
        if pipe.hdnet is not None:
            with torch.inference_mode():
                pipe.hdnet.adapted_iou(low.iou_pred, low.t_iou, low.t_mask)

    embeds = []
    for _ in range(max(repeats, 1)):
        t = time.perf_counter()
        seg.set_frame(frame)
        embeds.append(time.perf_counter() - t)
    embed_s = float(np.median(embeds))
    prompts = {}
    for k in ks:
        g = grid_prompts(int(np.ceil(np.sqrt(k))), frame.height, frame.width)
        prompts[k] = Prompts(g.points[:k], g.labels[:k], g.scores[:k])
        decode(prompts[k])  # warm-up
    times: dict[int, list[float]] = {k: [] for k in ks}
    for _ in range(max(repeats, 1)):  # round the K values in turn, as time_groups does
        for k in ks:
            t = time.perf_counter()
            decode(prompts[k])
            times[k].append(time.perf_counter() - t)
    rows = [{"K": k, "seconds": float(np.median(times[k]))} for k in ks]
    for r in rows:
        r["ms_per_prompt"] = 1000.0 * r["seconds"] / r["K"]
        r["ratio_first"] = _ratio(r["seconds"], rows[0]["seconds"])
        r["ratio_embedding"] = _ratio(r["seconds"], embed_s)
    fit = None
    if len({r["K"] for r in rows}) >= 2:
        slope, icept = np.polyfit([r["K"] for r in rows], [r["seconds"] for r in rows], 1)
        fit = {"fixed_ms": 1000.0 * float(icept), "per_prompt_ms": 1000.0 * float(slope)}
    return {"model": name, "embedding_s": embed_s, "decode_batch": seg.decode_batch, "rows": rows, "fit": fit}


# ------------------------------------------------------------------------------- 3. processes
def _eval_env(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "OPENCV_FOR_THREADS_NUM"):
        env[k] = str(threads)
    return env


# uois-sam-eval's own main (the console script's entry point) behind the imports it needs, so the
# process can say when its start-up (interpreter, torch, segment-anything) ended and its work began
_EVAL = """
import json, sys, time
import torch
import uois_sam_ros.core.segment.geometric
import uois_sam_ros.core.segment.pipeline
from uois_sam_ros.apps import eval as e
ready = time.time()
code = e.main(sys.argv[1:])
print("__scaling__" + json.dumps({"ready": ready, "end": time.time()}), flush=True)
sys.exit(code)
"""
MARK = "__scaling__"


def _run_concurrently(cmds: list[list[str]], env: dict[str, str]) -> tuple[float, list[dict[str, float]]]:
    """Start every command at once; (wall seconds until the last exits, per process its start-up,
    work and exit seconds from the marker line _EVAL prints). Raises RuntimeError with the stderr
    of a failing command. The output is small (a table), so polling before reading cannot block."""
    launch = time.time()
    t0 = time.perf_counter()
    procs = [subprocess.Popen(c, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for c in cmds]
    exited: list[float | None] = [None] * len(procs)
    while any(e is None for e in exited):
        for i, p in enumerate(procs):
            if exited[i] is None and p.poll() is not None:
                exited[i] = time.time()
        time.sleep(0.005)
    wall = time.perf_counter() - t0
    each = []
    for p, c, gone in zip(procs, cmds, exited):
        out, err = p.communicate()
        if p.returncode != 0:
            raise RuntimeError(f"{' '.join(c[3:])} exited {p.returncode}:\n{err.strip()}")
        mark = next((ln for ln in out.splitlines() if ln.startswith(MARK)), None)
        if mark is not None and gone is not None:
            t = json.loads(mark[len(MARK):])
            each.append({"startup_s": t["ready"] - launch, "work_s": t["end"] - t["ready"],
                         "exit_s": gone - t["end"]})
    return wall, each


def bench_processes(counts: list[int], n_images: int, size: tuple[int, int], threads: int,
                    workdir: Path, rounds: int = 1, warm: bool = True) -> dict[str, Any]:
    """uois-sam-eval --method weights_free on n_images UOAIS-Sim scenes: one process, then each
    count > 1 as concurrent --shard i/N processes and a --merge, whose means must equal one process's.

    `rounds` times every configuration, in turn and in alternating order (a spell of load from
    another job then hits every configuration); each figure is the median over the rounds."""
    from uois_sam_ros.apps import eval as eval_app
    from uois_sam_ros.core.data.synthetic import SceneConfig, write_uoais_dataset

    root = workdir / "uoais_sim"
    ann = write_uoais_dataset(root, n_images, seed=100, cfg=SceneConfig(width=size[1], height=size[0]))
    env = _eval_env(threads)
    base = [sys.executable, "-c", _EVAL, "--dataset", "uoais-sim", "--root", str(root),
            "--annotations", str(ann), "--method", "weights_free", "--no-progress"]
    if warm:  # the imports once, untimed: the file cache is then as warm for 1 process as for N
        _run_concurrently([[sys.executable, "-c", _EVAL.split("ready =")[0]]], env)
    configs = sorted(set(counts) | {1})
    timings: dict[int, list[dict[str, Any]]] = {n: [] for n in configs}
    means: dict[int, list[dict]] = {n: [] for n in configs}
    for rnd in range(rounds):
        for n in configs if rnd % 2 == 0 else configs[::-1]:
            out = workdir / f"p{n}"
            out.mkdir(parents=True, exist_ok=True)
            if n == 1:
                cmds = [[*base, "--json", str(out / "all.json")]]
            else:
                cmds = [[*base, "--shard", f"{i}/{n}", "--json", str(out / f"s{i}.json")] for i in range(n)]
            wall, each = _run_concurrently(cmds, env)
            if n == 1:
                doc = json.loads((out / "all.json").read_text())
            else:
                buf = io.StringIO()
                with contextlib.redirect_stdout(buf):
                    code = eval_app.main(["--merge", *(str(out / f"s{i}.json") for i in range(n)),
                                          "--json", str(out / "merged.json")])
                if code != 0:
                    raise RuntimeError(f"uois-sam-eval --merge exited {code}:\n{buf.getvalue()}")
                doc = json.loads((out / "merged.json").read_text())
            means[n].append({"images": int(doc["images"]), "means": doc["means"]})
            timings[n].append({"wall_s": wall, "per_process": each,
                               "startup_s": float(np.mean([e["startup_s"] for e in each])) if each else None,
                               "work_s": max((e["work_s"] for e in each), default=None),
                               "exit_s": float(np.mean([e["exit_s"] for e in each])) if each else None})

    def med(n: int, key: str) -> float | None:
        vals = [t[key] for t in timings[n] if t[key] is not None]
        return float(np.median(vals)) if vals else None

    one = means[1][0]["means"]
    merges = [{"processes": n, "images": m["images"], "means": m["means"],
               "equal": m["means"] == one and m["images"] == n_images}
              for n in configs if n > 1 for m in means[n]]
    rows = []
    for n in configs:
        wall, work = med(n, "wall_s"), med(n, "work_s")
        rows.append({"processes": n, "threads": threads, "images": means[n][0]["images"], "wall_s": wall,
                     "images_per_s": n_images / wall, "startup_s": med(n, "startup_s"), "work_s": work,
                     "exit_s": med(n, "exit_s"),
                     "images_per_s_work": n_images / work if work else None, "rounds": timings[n],
                     "per_process": timings[n][-1]["per_process"]})
    first = rows[0]
    for r in rows:
        r["speedup"] = r["images_per_s"] / first["images_per_s"]
        a, b = r["images_per_s_work"], first["images_per_s_work"]
        r["speedup_work"] = a / b if a and b else None
    return {"images": n_images, "size": f"{size[0]}x{size[1]}", "rounds": rounds, "rows": rows,
            "one_process_means": one, "one_process_identical_across_rounds": all(m["means"] == one for m in means[1]),
            "merges": merges, "merge_equal": all(m["equal"] for m in merges) if merges else None}


# ----------------------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="uois-sam-bench scaling", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=parse_sizes, default=None, help="HEIGHTxWIDTH list (default 480x640,720x1280)")
    ap.add_argument("--objects", type=parse_ints, default=None,
                    help="objects per scene, comma-separated (default 2,5,10,20; '' skips)")
    ap.add_argument("--prompts", type=parse_ints, default=None,
                    help="K prompts decoded on one embedding (default 1,10,30,100; '' skips)")
    ap.add_argument("--processes", type=parse_ints, default=None,
                    help="uois-sam-eval processes, 1 always included (default 1,2; '' skips)")
    ap.add_argument("--methods", type=parse_methods, default=list(METHODS),
                    help="weights_free,uois_sam (uois_sam: the shipped small SAM, vit_synth)")
    ap.add_argument("--repeats", type=int, default=None, help="timed runs per frame after one warm-up (default 3)")
    ap.add_argument("--scenes", type=int, default=None, help="scenes per size / object count (default 4)")
    ap.add_argument("--eval-scenes", type=int, default=None, help="UOAIS-Sim images for the process test (default 24)")
    ap.add_argument("--eval-size", type=parse_sizes, default=None, help="their HEIGHTxWIDTH (default 480x640)")
    ap.add_argument("--rounds", type=int, default=None,
                    help="times each process configuration is run, in turn; the median is shown (default 3)")
    ap.add_argument("--eval-threads", type=int, default=1, help="torch/BLAS/OpenCV threads per eval process (default 1)")
    ap.add_argument("--threads", type=int, default=2, help="torch and OpenCV threads of the in-process measurements (default 2)")
    ap.add_argument("--workdir", type=Path, help="keep the eval set and its JSON here (default: a temporary folder)")
    ap.add_argument("--json", type=Path, help="also write every figure here as JSON")
    ap.add_argument("--quick", action="store_true",
                    help="tiny settings for tests: 120x160 and 180x320, 2 and 5 objects, K 1 and 10, one repeat, "
                         "one scene, one round, 4 eval images at 120x160 (explicit options still win)")
    return ap


def _resolve(args: argparse.Namespace) -> None:
    """Fill the options left unset: --quick's tiny values, else the defaults of a full run."""
    full = {"sizes": "480x640,720x1280", "objects": "2,5,10,20", "prompts": "1,10,30,100", "processes": "1,2",
            "repeats": 3, "scenes": 4, "rounds": 3, "eval_scenes": 24, "eval_size": "480x640"}
    src = QUICK if args.quick else full
    parsers = {"sizes": parse_sizes, "objects": parse_ints, "prompts": parse_ints, "processes": parse_ints,
               "eval_size": parse_sizes}
    for k, v in src.items():
        if getattr(args, k) is None:
            setattr(args, k, parsers[k](v) if k in parsers else v)
    args.eval_size = args.eval_size[0]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _resolve(args)
    if min(args.repeats, args.scenes, args.rounds, args.eval_scenes, args.threads, args.eval_threads) < 1:
        print("error: --repeats, --scenes, --rounds, --eval-scenes, --threads and --eval-threads must be at least 1",
              file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)
    seeds = list(range(args.scenes))
    size0 = f"{args.sizes[0][0]}x{args.sizes[0][1]}"
    t_start = time.perf_counter()
    print(f"cpu {device_name('cpu')} ({os.cpu_count()} cores visible), torch {torch.__version__}, {args.threads} threads "
          f"(torch and OpenCV); {_load()}")
    print(f"per frame: median of {args.repeats} runs after one warm-up, mean over {args.scenes} synthetic scenes; "
          f"times in ms", flush=True)
    pipes = {}
    for m in args.methods:
        pipe, name = build_pipeline(m)
        pipes[name] = pipe
    result: dict[str, Any] = {
        "cpu": device_name("cpu"), "cores": os.cpu_count(), "torch": torch.__version__, "threads": args.threads,
        "repeats": args.repeats, "scenes": args.scenes, "methods": list(pipes), "load_before": _load()}

    took: dict[str, float] = {"build": time.perf_counter() - t_start}
    t = time.perf_counter()
    rows, ratios = bench_sizes(pipes, args.sizes, seeds, args.repeats)
    took["sizes"] = time.perf_counter() - t
    print_table("1. time per frame against image size (synthetic scenes)", SIZE_COLUMNS,
                [[r["method"], r["size"], r["pixels"] / 1e6, *_stage_ms(r), r["K"], r["masks"]] for r in rows])
    if ratios:
        print_table(f"   ratio to {size0} ('-': the stage takes under 1 ms)", RATIO_COLUMNS,
                    [[r["method"], r["size"], r["pixel_ratio"], *(r["stage_ratio"][s] for s in STAGES)]
                     for r in ratios])
    result["sizes"] = rows
    result["size_ratios"] = ratios

    if args.objects:
        t = time.perf_counter()
        orows = bench_objects(pipes, args.objects, args.sizes[0], seeds, args.repeats)
        took["objects"] = time.perf_counter() - t
        print_table(f"2a. time per frame against objects in the scene ({size0}; visible = GT instances seen)",
                    OBJECT_COLUMNS,
                    [[r["method"], r["objects"], r["visible"], *_stage_ms(r), r["K"], r["masks"], r["total_ratio"],
                      r["ms_per_object"]] for r in orows])
        result["objects"] = orows

    sam = next((n for n in pipes if n.startswith("uois_sam")), None)
    if args.prompts and sam is not None:
        t = time.perf_counter()
        frame = scene_frames(args.sizes[0], [0])[0][0]
        pr = bench_prompts(pipes[sam], sam, args.prompts, frame, args.repeats)
        took["prompts"] = time.perf_counter() - t
        print_table(f"2b. decode against prompts K on one embedding ({size0}; SAM decoder + HDNet, "
                    f"decode_batch {pr['decode_batch']}; image embedding {1000 * pr['embedding_s']:.1f} ms)",
                    PROMPT_COLUMNS,
                    [[pr["model"], r["K"], 1000 * r["seconds"], r["ms_per_prompt"], r["ratio_first"],
                      r["ratio_embedding"]] for r in pr["rows"]])
        if pr["fit"] is not None:
            print(f"   least-squares fit: decode = {pr['fit']['fixed_ms']:.1f} ms + "
                  f"{pr['fit']['per_prompt_ms']:.2f} ms x K")
        result["prompts"] = pr
    elif args.prompts:
        print("\n2b. skipped: the prompt sweep needs the SAM path (--methods ...,uois_sam)")

    if args.processes:
        t = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="uois_scaling_") as tmp:
            work = args.workdir or Path(tmp)
            pr = bench_processes(args.processes, args.eval_scenes, args.eval_size, args.eval_threads, work,
                                 rounds=args.rounds, warm=not args.quick)
        print_table(f"3. uois-sam-eval --method weights_free throughput against processes ({pr['images']} UOAIS-Sim "
                    f"images at {pr['size']}; shards run concurrently; median of {pr['rounds']} rounds; start-up = launch to "
                    "imports done and exit = end of work to process gone, means over the processes; work = the "
                    "slowest process's eval main)",
                    PROCESS_COLUMNS,
                    [[r["processes"], r["threads"], r["images"], r["wall_s"], r["images_per_s"], r["speedup"],
                      r["startup_s"], r["work_s"], r["exit_s"], r["images_per_s_work"], r["speedup_work"]]
                     for r in pr["rows"]])
        keys = ", ".join(f"{k} {pr['one_process_means'][k]:.2f}" for k in ("OF", "BF"))
        for n in sorted({m["processes"] for m in pr["merges"]}):
            ms = [m for m in pr["merges"] if m["processes"] == n]
            ok = sum(m["equal"] for m in ms)
            print(f"   --merge of {n} shards == 1-process means: {'yes' if ok == len(ms) else 'NO'} "
                  f"(in {ok} of {len(ms)} rounds; {pr['images']} images; 1 process: {keys})")
        result["processes"] = pr
        took["processes"] = time.perf_counter() - t
    result["load_after"] = _load()
    result["seconds"] = time.perf_counter() - t_start
    result["section_seconds"] = took
    print(f"\n{_load()}; bench took {result['seconds']:.0f} s ("
          + ", ".join(f"{k} {v:.0f} s" for k, v in took.items()) + ")")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {args.json}")
    if args.processes and result["processes"]["merge_equal"] is False:
        print("error: the merged shard means differ from the 1-process means", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
