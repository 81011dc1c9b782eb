"""uois-sam-bench stages: per-stage time of each pipeline at 480x640, and how close each torch stage
comes to the device's matmul peak measured in the same run.

Rows: the shipped small SAM (vit_synth), vit_t and vit_b with random weights (vit_l / vit_h when
named in --models), then the weights-free backend. Random weights time the same arithmetic as the
official ones. Per stage: median seconds of --repeats runs (after one warm-up), then the stage's
GFLOP from torch's FLOP counter on one extra, untimed run, the GFLOP/s that time gives and its
share of the peak. Stages that run no torch work (post-processing, the weights-free path) show '-'.
Also the ratio of decoding K=30 prompts to decoding the --grid x --grid point grid, on the same
embedding. Imports no ROS: it runs wherever the core runs (scripts/gpu_bench.sh).

--decoders folded,library times each SAM row with each decoder layout (sam.decoder) on the same
loaded model, one after the other, and prints their decode-time ratio; --encoders chunked,library
does the same for the encoders' CPU layouts (sam.encoder: SAM's attention in bands and its
convolutions NHWC; with it, the HPG CNN's convolutions NHWC) and the embedding time; --compile
runs them through torch.compile (sam.compile; the warm-up run pays the compilation). --ceiling adds,
per SAM row and stage, what the stage's own products reach when each runs alone (bench/ceiling.py):
the stage's best case with its shapes, and the time it spends outside them.

    uois-sam-bench stages [--models vit_synth,vit_t,vit_b] [--device cpu|cuda] [--dtype fp32|bf16|fp16]
                          [--decoders folded[,library]] [--encoders chunked[,library]] [--compile]
                          [--ceiling] [--repeats 2] [--grid 32] [--json out.json]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from uois_sam_ros.bench import ceiling
from uois_sam_ros.bench.flops import count_stage_flops, instrument, matmul_peak, sync
from uois_sam_ros.core.config import DTYPES, SAM_DECODERS, SAM_ENCODERS, config_from_dict
from uois_sam_ros.core.segment.hpg import HPGNet, default_hpg_checkpoint, load_hpg_checkpoint
from uois_sam_ros.core.segment.pipeline import UOISPipeline
from uois_sam_ros.core.segment.prompting import grid_prompts
from uois_sam_ros.core.segment.sam_backend import default_sam_checkpoint
from uois_sam_ros.core.types import Frame, Intrinsics, Prompts

STAGES = ("prompts", "embedding", "decode", "postprocess", "total")
COLUMNS = ("method", "stage", "seconds", "GFLOP", "GFLOP/s", "% peak", "K", "masks")
WIDTHS = (52, 12, 10, 10, 10, 8, 5, 6)


# ---------------------------------------------------------------------------------------- frame
def plain_frame(height: int = 480, width: int = 640, seed: int = 0) -> Frame:
    """A tabletop RGB-D frame ray-cast in numpy alone (boxes and cylinders on a table, a floor
    behind it), for machines without open3d, such as a bare GPU machine. Deterministic."""
    rng = np.random.default_rng(seed)
    fx = fy = 615.0
    cx, cy = (width - 1) / 2, (height - 1) / 2
    cam_h, pitch = 0.65, np.deg2rad(50.0)  # camera 65 cm above the table, looking 50 degrees down
    ex = np.array([1.0, 0.0, 0.0])
    ey = np.array([0.0, -np.sin(pitch), -np.cos(pitch)])
    ez = np.array([0.0, np.cos(pitch), -np.sin(pitch)])
    u, v = np.meshgrid(np.arange(width, dtype=np.float64), np.arange(height, dtype=np.float64))
    rc = np.stack([(u - cx) / fx, (v - cy) / fy, np.ones_like(u)], -1)  # camera ray, z = 1: t is the depth
    ray = rc @ np.stack([ex, ey, ez])  # world ray (X right, Y away, Z up)
    org = np.array([0.0, 0.0, cam_h])
    depth = np.full((height, width), np.inf)
    normal = np.zeros((height, width, 3))
    colour = np.zeros((height, width, 3))

    def hit(t: np.ndarray, n: np.ndarray, c: np.ndarray) -> None:
        m = (t > 1e-6) & (t < depth)
        depth[m] = t[m]
        normal[m] = n[m] if n.ndim == 3 else n
        colour[m] = c[m] if c.ndim == 3 else c

    with np.errstate(divide="ignore", invalid="ignore"):
        for z0, (x0, x1, y0, y1), base in ((0.0, (-0.55, 0.55, 0.15, 1.1), (170, 130, 90)),
                                           (-0.72, (-9, 9, -9, 9), (95, 95, 100))):
            t = (z0 - cam_h) / ray[..., 2]
            p = org + t[..., None] * ray
            inside = (p[..., 0] >= x0) & (p[..., 0] <= x1) & (p[..., 1] >= y0) & (p[..., 1] <= y1)
            grain = 12.0 * np.sin(p[..., 1] * 90.0 + np.sin(p[..., 0] * 13.0) * 2.0)[..., None]
            hit(np.where(inside, t, np.inf), np.array([0.0, 0.0, 1.0]), np.clip(np.array(base) + grain, 0, 255))
        centres: list[np.ndarray] = []
        while len(centres) < 9:
            c = np.array([rng.uniform(-0.3, 0.3), rng.uniform(0.45, 0.85)])
            if all(np.linalg.norm(c - o) > 0.12 for o in centres):
                centres.append(c)
        for i, (px, py) in enumerate(centres):
            size, hgt = rng.uniform(0.035, 0.055), rng.uniform(0.04, 0.16)
            col = rng.uniform(30, 230, 3)
            if i % 2 == 0:  # axis-aligned box: slab test
                lo, hi = np.array([px - size, py - size * 0.7, 0.0]), np.array([px + size, py + size * 0.7, hgt])
                t1, t2 = (lo - org) / ray, (hi - org) / ray
                tn, tf = np.minimum(t1, t2), np.maximum(t1, t2)
                t_near, axis = tn.max(-1), tn.argmax(-1)
                ok = (t_near <= tf.min(-1)) & (t_near > 0)
                n = np.zeros_like(ray)
                np.put_along_axis(n, axis[..., None], -np.sign(np.take_along_axis(ray, axis[..., None], -1)), -1)
                hit(np.where(ok, t_near, np.inf), n, col)
            else:  # vertical cylinder: side wall, then the top cap
                d2 = ray[..., 0] ** 2 + ray[..., 1] ** 2
                ox, oy = org[0] - px, org[1] - py
                b = ox * ray[..., 0] + oy * ray[..., 1]
                disc = b * b - d2 * (ox * ox + oy * oy - size * size)
                t = (-b - np.sqrt(disc)) / d2
                z = cam_h + t * ray[..., 2]
                side = (disc > 0) & (z >= 0) & (z <= hgt)
                pn = np.stack([ox + t * ray[..., 0], oy + t * ray[..., 1], np.zeros_like(t)], -1) / size
                hit(np.where(side, t, np.inf), pn, col)
                tc = (hgt - cam_h) / ray[..., 2]
                cap = (ox + tc * ray[..., 0]) ** 2 + (oy + tc * ray[..., 1]) ** 2 <= size * size
                hit(np.where(cap, tc, np.inf), np.array([0.0, 0.0, 1.0]), col)
    light = np.array([0.3, -0.5, 1.0]) / np.linalg.norm([0.3, -0.5, 1.0])
    shade = 0.35 + 0.65 * np.clip(normal @ light, 0.0, 1.0)
    rgb = np.clip(colour * shade[..., None] + rng.normal(0, 3, colour.shape), 0, 255).astype(np.uint8)
    d = np.where(np.isfinite(depth), depth, 0.0).astype(np.float32)
    return Frame(rgb=rgb, depth=d, intrinsics=Intrinsics(fx, fy, cx, cy, width, height))


def bench_frame(kind: str = "auto") -> tuple[Frame, str]:
    """(frame, description): synthetic scene 0 (open3d's renderer), or plain_frame where open3d
    is missing (auto) or asked for (plain)."""
    if kind in ("auto", "synthetic"):
        try:
            from uois_sam_ros.core.data.synthetic import generate_scene
        except ImportError as e:
            if kind == "synthetic":
                raise
            return plain_frame(), f"plain numpy scene (synthetic unavailable: {e})"
        return generate_scene(0).frame(), "synthetic scene 0"
    return plain_frame(), "plain numpy scene"


# ----------------------------------------------------------------------------------- formatting
def device_name(device: str) -> str:
    """What ran the numbers: the GPU's name, or the CPU model from /proc/cpuinfo."""
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def shipped_hpg() -> tuple[Any, bool]:
    """The HPG of the SAM rows: the shipped checkpoint, else a random cnn_rgbd (False)."""
    ckpt = default_hpg_checkpoint()
    return (load_hpg_checkpoint(ckpt), True) if ckpt else (HPGNet("cnn_rgbd").eval(), False)


def sam_pipeline(model_type: str, hpg: Any, hpg_shipped: bool, device: str = "cpu",
                 dtype: str = "fp32") -> tuple[UOISPipeline, str, bool]:
    """(pipeline, row name, shipped) of the uois_sam rows: vit_synth with the shipped small SAM and
    its HDNet when the package has them, every other type (and a missing vit_synth) with random
    weights and a random HDNet sized for its tokens: the same arithmetic as the official weights."""
    hpg_cfg: dict[str, Any] = {"device": device, "dtype": dtype}
    if not hpg_shipped:  # a random HPG rarely clears 0.85: take its top 30 peaks so K = 30 is timed
        hpg_cfg.update(fg_threshold=0.0, heatmap_threshold=-1e9)
    shipped = model_type == "vit_synth" and default_sam_checkpoint("vit_synth") is not None
    cfg = config_from_dict({"sam": {"model_type": model_type, "allow_random_weights": not shipped,
                                    "device": device, "dtype": dtype},
                            "hpg": hpg_cfg, "pipeline": {"method": "uois_sam"}})
    name = f"uois_sam {model_type} (shipped)" if shipped else f"uois_sam {model_type}"
    return UOISPipeline(cfg, hpg_model=hpg), name, shipped


def _fmt(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def _line(cells: tuple[str, ...]) -> str:
    # left columns always end in two spaces (a long row name would otherwise run into its stage)
    return "".join(c.ljust(w - 2) + "  " if i < 2 else f"{c:>{w}}" for i, (c, w) in enumerate(zip(cells, WIDTHS)))


def stage_rows(seconds: dict[str, float], flops: dict[str, int], peak: float) -> dict[str, dict]:
    """Per stage: seconds, GFLOP (None when the stage ran no counted torch work), GFLOP/s, % of peak."""
    out: dict[str, dict] = {}
    counted = {k: v for k, v in flops.items() if k in STAGES and v > 0}
    for k in STAGES:
        s = float(seconds.get(k, 0.0))
        f = sum(counted.values()) if k == "total" else counted.get(k)
        g = None if not f else f / 1e9
        rate = g / s if g is not None and s > 0 else None
        out[k] = {"seconds": s, "gflop": g, "gflops": rate,
                  "pct_peak": 100.0 * rate / peak if rate is not None and peak > 0 else None}
    return out


def print_rows(name: str, stages: dict[str, dict], k: int, masks: int) -> None:
    for st in STAGES:
        r = stages[st]
        tail = (str(k), str(masks)) if st == "total" else ("", "")
        print(_line((name, st, f"{r['seconds']:.3f}", _fmt(r["gflop"], ".2f"), _fmt(r["gflops"], ".1f"),
                     _fmt(r["pct_peak"], ".1f"), *tail)))


def _median(runs: list[dict[str, float]]) -> dict[str, float]:
    return {k: float(np.median([r.get(k, 0.0) for r in runs])) for k in STAGES}


def _timed(pipe: UOISPipeline, frame: Frame, repeats: int, cuda: bool) -> tuple[dict[str, float], Any]:
    """Median stage times of `repeats` runs after one warm-up; on CUDA each stage call syncs."""
    runs, inst = [], None
    with instrument(pipe) if cuda else contextlib.nullcontext():
        for _ in range(repeats + 1):
            inst = pipe.run(frame)
            runs.append(inst.timings)
    return _median(runs[1:]), inst


# ----------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="uois-sam-bench stages", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="vit_synth,vit_t,vit_b",
                    help="comma-separated SAM types: vit_synth (the shipped small SAM and its HDNet when the "
                         "package has them), vit_t, vit_b, vit_l, vit_h (random weights); \"\" for weights-free only")
    ap.add_argument("--repeats", type=int, default=2, help="timed runs per row (after one warm-up)")
    ap.add_argument("--grid", type=int, default=32, help="grid points per side for the K=30 ratio (0: skip it)")
    ap.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    ap.add_argument("--dtype", default="fp32", help="fp32 | bf16 | fp16: autocast of SAM and HPG "
                                                    "(sam.dtype, hpg.dtype); fp16 on CPU runs fp32")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    ap.add_argument("--peak-seconds", type=float, default=1.0, help="time spent measuring the matmul peak")
    ap.add_argument("--frame", choices=("plain", "synthetic", "auto"), default="plain",
                    help="plain: a numpy-rendered tabletop, the same on every machine (no open3d); synthetic: scene 0 "
                         "of uois-sam-synth (needs open3d); auto: synthetic where open3d imports, else plain")
    ap.add_argument("--no-weights-free", action="store_true", help="skip the weights-free row")
    ap.add_argument("--decoders", default="folded",
                    help="comma-separated sam.decoder layouts to time per SAM row: folded (the default), library "
                         "(segment-anything's predict_masks)")
    ap.add_argument("--encoders", default="chunked",
                    help="comma-separated sam.encoder attention layouts to time per SAM row: chunked (the default), "
                         "library (segment-anything's Attention.forward)")
    ap.add_argument("--compile", action="store_true", help="sam.compile: torch.compile the encoder and decoder")
    ap.add_argument("--ceiling", action="store_true",
                    help="per SAM row and stage: its counted products run alone (best case for its shapes) and the "
                         "time outside them")
    ap.add_argument("--json", type=Path, help="also write the peak and every row here as JSON")
    args = ap.parse_args(argv)
    if args.dtype not in DTYPES:
        print(f"error: --dtype {args.dtype!r} is not valid; use one of {' | '.join(DTYPES)}", file=sys.stderr)
        return 2
    decoders = [d.strip() for d in args.decoders.split(",") if d.strip()]
    bad = [d for d in decoders if d not in SAM_DECODERS]
    if bad or not decoders:
        print(f"error: --decoders {args.decoders!r}: use one or more of {','.join(SAM_DECODERS)}", file=sys.stderr)
        return 2
    encoders = [e.strip() for e in args.encoders.split(",") if e.strip()]
    bad = [e for e in encoders if e not in SAM_ENCODERS]
    if bad or not encoders:
        print(f"error: --encoders {args.encoders!r}: use one or more of {','.join(SAM_ENCODERS)}", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("error: --device cuda but no CUDA device is available", file=sys.stderr)
        return 2
    cuda = args.device.startswith("cuda")
    dtype = args.dtype
    if dtype == "fp16" and not cuda:
        print("warning: --dtype fp16 on CPU runs fp32 (CPU autocast in fp16 is slow or unsupported; "
              "bf16 runs on CPU)", flush=True)
        dtype = "fp32"
    frame, frame_desc = bench_frame(args.frame)
    hpg, hpg_shipped = shipped_hpg()
    peak = matmul_peak(args.device, dtype, args.peak_seconds)
    print(f"device {args.device} ({device_name(args.device)}), torch {torch.__version__}, {args.threads} threads, "
          f"dtype {dtype}; frame {frame.height}x{frame.width}: {frame_desc}; HPG "
          f"{'shipped checkpoint' if hpg_shipped else 'random cnn_rgbd'}")
    tf32 = {"matmul": torch.backends.cuda.matmul.allow_tf32, "cudnn_conv": torch.backends.cudnn.allow_tf32}
    print(f"matmul peak: {peak.gflops:.1f} GFLOP/s ({dtype}, {peak.n}x{peak.n} @ {peak.n}x{peak.n}, best of "
          f"{peak.seconds:.1f} s)" + (f"; TF32 matmul {'on' if tf32['matmul'] else 'off'}, cuDNN conv "
                                      f"{'on' if tf32['cudnn_conv'] else 'off'} (fp32 convs may pass the fp32 peak)"
                                      if cuda and dtype == "fp32" else ""))
    print(f"median of {args.repeats} runs; GFLOP from torch's FLOP counter on one extra run; "
          f"'-' = no counted torch work", flush=True)
    print(_line(COLUMNS))
    result: dict[str, Any] = {
        "torch": torch.__version__, "device": args.device, "device_name": device_name(args.device),
        "dtype": dtype, "dtype_asked": args.dtype, "threads": args.threads, "repeats": args.repeats,
        "frame": frame_desc, "hpg": "shipped" if hpg_shipped else "random",
        "peak": {"gflops": peak.gflops, "n": peak.n, "dtype": peak.dtype, "seconds": peak.seconds},
        "tf32": tf32 if cuda else None, "compile": args.compile, "rows": [], "ratios": [], "decoder_ratios": [],
        "encoder_ratios": []}
    ratio_lines = []
    for mt in [m.strip() for m in args.models.split(",") if m.strip()]:
        pipe, base_name, shipped = sam_pipeline(mt, hpg, hpg_shipped, args.device, dtype)
        decode_s: dict[str, float] = {}
        embed_s: dict[str, float] = {}
        prompt_s: dict[str, float] = {}
        for decoder in decoders:
            for encoder in encoders:
                pipe.reconfigure(dataclasses.replace(pipe.config, sam=dataclasses.replace(
                    pipe.config.sam, decoder=decoder, encoder=encoder, compile=args.compile)))
                tag = ([decoder] if len(decoders) > 1 else []) + ([encoder] if len(encoders) > 1 else [])
                name = " ".join([base_name, *tag, *(["compiled"] if args.compile else [])])
                secs = _sam_row(pipe, name, mt, shipped, decoder, encoder, frame, peak, args, cuda, result,
                                ratio_lines)
                if encoder == encoders[0]:
                    decode_s[decoder] = secs["decode"]
                if decoder == decoders[0]:
                    embed_s[encoder] = secs["embedding"]
                    prompt_s[encoder] = secs["prompts"]
        for label, times, key in (("decode", decode_s, "decoder"), ("embedding", embed_s, "encoder"),
                                  ("prompts", prompt_s, "encoder")):
            names = list(times)
            if len(names) < 2:
                continue
            ref = names[-1]
            for d in names[:-1]:
                line = (f"{mt}{' (shipped)' if shipped else ''} {label}: {d} {times[d]:.3f} s, {ref} "
                        f"{times[ref]:.3f} s ({times[ref] / max(times[d], 1e-9):.2f}x)")
                ratio_lines.append(line)
                result[f"{key}_ratios"].append({"model": mt, "stage": label, key: d, "seconds": times[d],
                                                "reference": ref, "reference_seconds": times[ref]})
        del pipe
        if cuda:
            torch.cuda.empty_cache()
    if not args.no_weights_free:
        try:
            wf = UOISPipeline(config_from_dict({"pipeline": {"method": "weights_free"}}))
            secs, inst = _timed(wf, frame, args.repeats, False)
            stages = stage_rows(secs, count_stage_flops(wf, frame), peak.gflops)
            k = len(wf.last_prompts) if wf.last_prompts is not None else 0
            print_rows("weights_free (cpu)" if cuda else "weights_free", stages, k, len(inst))
            result["rows"].append({"method": "weights_free", "model_type": None, "shipped": False, "K": k,
                                   "masks": len(inst), "stages": stages})
        except ImportError as e:
            print(f"weights_free: unavailable ({e})")
    for line in ratio_lines:
        print(line)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {args.json}")
    return 0


def _sam_row(pipe: UOISPipeline, name: str, mt: str, shipped: bool, decoder: str, encoder: str, frame: Frame,
             peak: Any, args: argparse.Namespace, cuda: bool, result: dict[str, Any],
             ratio_lines: list[str]) -> dict[str, float]:
    """Time, count and print one SAM row (its K=30 / grid ratio, its ceiling); returns its stage seconds."""
    hpg = getattr(pipe, "hpg", None)
    if hpg is not None and not cuda:  # the library layout: HPG's convolutions in NCHW too
        hpg.use_channels_last(encoder == "chunked")
    secs, inst = _timed(pipe, frame, args.repeats, cuda)
    if args.ceiling:
        ops, flops = ceiling.record_stage_ops(pipe, frame)
    else:
        flops = count_stage_flops(pipe, frame)
    stages = stage_rows(secs, flops, peak.gflops)
    k = len(pipe.last_prompts) if pipe.last_prompts is not None else 0
    print_rows(name, stages, k, len(inst))
    sys.stdout.flush()
    row: dict[str, Any] = {"method": name, "model_type": mt, "shipped": shipped, "decoder": decoder,
                           "encoder": encoder, "compile": bool(args.compile), "K": k, "masks": len(inst),
                           "stages": stages}
    if args.ceiling:
        ceiling.time_alone(ops, args.device)
        row["ceiling"] = ceiling.ceiling_rows(ops, secs, peak.gflops)
        ceiling.print_ceiling(name, row["ceiling"])
        sys.stdout.flush()
    if args.grid > 0:  # decoding K=30 vs the grid, on the embedding of this frame
        seg = pipe.segmenter
        seg.set_frame(frame)  # the run above skips the encoder when HPG finds no prompt
        sync(args.device)
        g6 = grid_prompts(6, frame.height, frame.width)
        k30 = Prompts(g6.points[:30], g6.labels[:30], g6.scores[:30])
        grid = grid_prompts(args.grid, frame.height, frame.width)
        seg.decode_lowres(k30)  # warm (a compiled decoder compiles this size here)
        sync(args.device)
        t = time.perf_counter()
        seg.decode_lowres(k30)
        sync(args.device)
        t30 = time.perf_counter() - t
        t = time.perf_counter()
        for s in range(0, len(grid), 256):
            seg.decode_lowres(Prompts(grid.points[s:s + 256], grid.labels[s:s + 256], grid.scores[s:s + 256]))
        sync(args.device)
        tg = time.perf_counter() - t
        mname = name.removeprefix("uois_sam ")
        ratio_lines.append(f"{mname}: decode K=30 {t30:.3f} s, {args.grid}x{args.grid} grid "
                           f"({len(grid)} prompts) {tg:.3f} s, ratio {t30 / tg:.4f} ({tg / t30:.1f}x faster)")
        ratio = {"k30_s": t30, "grid": args.grid, "grid_prompts": len(grid), "grid_s": tg, "ratio": t30 / tg}
        row["grid_ratio"] = ratio
        result["ratios"].append({"model": mname, **ratio})
    result["rows"].append(row)
    return {k: float(secs.get(k, 0.0)) for k in STAGES}


if __name__ == "__main__":
    sys.exit(main())
