"""What a stage could reach with its own matrix shapes (uois-sam-bench stages --ceiling).

A stage's "% of peak" compares it with a large square matmul. When a stage is far below that, two
causes are possible, and they need different fixes:

- its products are small or thin (a 64-token window's attention, a 1 x 128 x 128 token MLP), and the
  BLAS cannot run such shapes near the peak even alone: only other shapes (batching, folding, a
  different model) help;
- its products would run fast, but the time goes to the work between them (element-wise passes,
  softmax, layer norms, copies, Python): fusing or removing that work helps.

This module tells them apart. During one extra, untimed run it records every op that torch's FLOP
counter counts (matmuls, convolutions, attention) with its arguments' shapes, strides and dtypes, per
stage. Each distinct call is then run again alone on fresh tensors of the same layout, the best of a
few runs is kept, and the stage's ceiling is its FLOPs over the sum of those times: the rate its own
products reach on this device with nothing else in between. The stage's measured time minus that sum
is the time spent outside its counted products.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils._pytree import tree_map
from torch.utils.flop_counter import FlopCounterMode

from uois_sam_ros.bench.flops import StageFlops, count_stage_flops, sync


@dataclass(frozen=True)
class _Spec:
    """A tensor argument's layout, enough to make a fresh one like it."""

    shape: tuple[int, ...]
    stride: tuple[int, ...]
    dtype: torch.dtype
    device: str

    def make(self, gen: torch.Generator) -> torch.Tensor:
        # One storage big enough for the strides (an expanded argument has stride 0), filled once.
        n = 1 + sum((s - 1) * st for s, st in zip(self.shape, self.stride) if s > 0) if all(self.shape) else 0
        if self.dtype.is_floating_point:
            base = torch.randn(max(n, 1), generator=gen, device=self.device).to(self.dtype)
        else:
            base = torch.zeros(max(n, 1), dtype=self.dtype, device=self.device)
        return base.as_strided(self.shape, self.stride)


def _spec(x: Any) -> Any:
    if isinstance(x, torch.Tensor):
        return _Spec(tuple(x.shape), tuple(x.stride()), x.dtype, str(x.device))
    return x


def _describe(op: Any, args: tuple) -> str:
    """'mm (4096x160)@(160x640)': the op and its tensor arguments' shapes."""
    shapes = ["x".join(map(str, a.shape)) for a in args if isinstance(a, _Spec)]
    return f"{str(op).split('.')[-1]} " + "@".join(f"({s})" for s in shapes)


@dataclass
class OpCall:
    """One distinct counted call of a stage: how often it ran and its FLOPs per run."""

    op: Any
    args: tuple
    kwargs: dict
    flops: int
    count: int = 0
    seconds: float = float("nan")  # best time of one call, run alone

    @property
    def label(self) -> str:
        return _describe(self.op, self.args)


@dataclass
class StageOps:
    calls: dict[str, OpCall] = field(default_factory=dict)

    @property
    def flops(self) -> int:
        return sum(c.flops * c.count for c in self.calls.values())

    @property
    def alone_seconds(self) -> float:
        return sum(c.seconds * c.count for c in self.calls.values())


class _Recorder(FlopCounterMode):
    """torch's FLOP counter that also keeps each counted call's argument layouts, under the stage
    that was active (switched by flops.instrument through the StageFlops it drives)."""

    def __init__(self) -> None:
        super().__init__(display=False)
        self.stages: dict[str, StageOps] = {}
        self.stage = "postprocess"

    def _count_flops(self, func_packet: Any, out: Any, args: tuple, kwargs: dict) -> Any:
        if func_packet in self.flop_registry:
            flops = int(self.flop_registry[func_packet](*args, **kwargs, out_val=out))
            a, k = tree_map(_spec, tuple(args)), tree_map(_spec, dict(kwargs))
            key = repr((func_packet, a, sorted(k.items())))
            ops = self.stages.setdefault(self.stage, StageOps())
            call = ops.calls.get(key)
            if call is None:
                call = ops.calls[key] = OpCall(func_packet, a, k, flops)
            call.count += 1
        return super()._count_flops(func_packet, out, args, kwargs)


class _Switch(StageFlops):
    """StageFlops that also tells the recorder which stage is running."""

    def __init__(self, recorder: _Recorder) -> None:
        super().__init__(recorder)
        self.recorder = recorder

    def switch(self, stage: str) -> str:
        old = super().switch(stage)
        self.recorder.stage = stage
        return old


def record_stage_ops(pipe: Any, frame: Any) -> tuple[dict[str, StageOps], dict[str, int]]:
    """Every counted call of one pipe.run(frame), per stage, and the counter's FLOPs per stage
    (the same numbers count_stage_flops gives; the two are checked against each other in the tests)."""
    rec = _Recorder()
    flops = count_stage_flops(pipe, frame, counter=rec, stages=_Switch(rec))
    return rec.stages, flops


def time_alone(ops: dict[str, StageOps], device: str = "cpu", min_seconds: float = 0.02,
               max_reps: int = 20, passes: int = 2, progress: Callable[[str], None] | None = None) -> None:
    """Fill each call's best time when run alone on fresh tensors of its layout (one warm-up, then
    at least 3 runs and up to max_reps while they last under min_seconds in all), the best over
    `passes` passes through all of them: on a shared machine a slow spell of a few seconds (after a
    stage that freed gigabytes) would otherwise stand for the whole of one product's runs."""
    for c in (c for so in ops.values() for c in so.calls.values()):
        c.seconds = float("inf")
    for p in range(passes):
        _time_pass(ops, device, min_seconds, max_reps, progress if p == 0 else None)


def _time_pass(ops: dict[str, StageOps], device: str, min_seconds: float, max_reps: int,
               progress: Callable[[str], None] | None) -> None:
    gen = torch.Generator(device=device).manual_seed(0)
    for stage, so in ops.items():
        if progress is not None:
            progress(f"{stage}: {len(so.calls)} distinct products")
        for call in so.calls.values():
            args = tree_map(lambda x: x.make(gen) if isinstance(x, _Spec) else x, call.args)
            kwargs = tree_map(lambda x: x.make(gen) if isinstance(x, _Spec) else x, call.kwargs)
            with torch.inference_mode():
                call.op(*args, **kwargs)
                sync(device)
                best, reps, t0 = float("inf"), 0, time.perf_counter()
                while reps < 3 or (reps < max_reps and time.perf_counter() - t0 < min_seconds):
                    t = time.perf_counter()
                    call.op(*args, **kwargs)
                    sync(device)
                    best = min(best, time.perf_counter() - t)
                    reps += 1
            call.seconds = min(call.seconds, best)
            del args, kwargs


def ceiling_rows(ops: dict[str, StageOps], seconds: dict[str, float], peak: float,
                 top: int = 3) -> dict[str, dict]:
    """Per stage with counted work: its products' time alone, the GFLOP/s and % of peak that gives
    (the ceiling), the stage's time outside them, and its `top` products by time alone."""
    out: dict[str, dict] = {}
    for stage, so in ops.items():
        alone, flops = so.alone_seconds, so.flops
        if flops <= 0 or not alone > 0:
            continue
        rate = flops / alone / 1e9
        calls = sorted(so.calls.values(), key=lambda c: -c.seconds * c.count)
        out[stage] = {
            "gflop": flops / 1e9, "distinct": len(so.calls), "calls": sum(c.count for c in so.calls.values()),
            "alone_seconds": alone, "ceiling_gflops": rate, "ceiling_pct_peak": 100.0 * rate / peak if peak else None,
            "stage_seconds": float(seconds.get(stage, 0.0)),
            "outside_seconds": float(seconds.get(stage, 0.0)) - alone,
            "top": [{"op": c.label, "count": c.count, "share": c.seconds * c.count / alone,
                     "gflops": c.flops / c.seconds / 1e9 if c.seconds > 0 else None,
                     "pct_peak": 100.0 * c.flops / c.seconds / 1e9 / peak if c.seconds > 0 and peak else None}
                    for c in calls[:top]],
        }
    return out


def print_ceiling(name: str, rows: dict[str, dict]) -> None:
    for stage in ("prompts", "embedding", "decode", "postprocess"):
        r = rows.get(stage)
        if r is None:
            continue
        pct = "-" if r["ceiling_pct_peak"] is None else f"{r['ceiling_pct_peak']:.1f} %"
        print(f"  ceiling {name} {stage}: {r['calls']} counted products ({r['distinct']} distinct), run alone "
              f"{r['alone_seconds']:.3f} s = {r['ceiling_gflops']:.1f} GFLOP/s = {pct} of peak; the stage took "
              f"{r['stage_seconds']:.3f} s, {r['outside_seconds']:.3f} s of it outside them")
        for t in r["top"]:
            tp = "-" if t["pct_peak"] is None else f"{t['pct_peak']:.0f} %"
            print(f"    {100 * t['share']:4.0f} % of it: {t['count']} x {t['op']} at {tp} of peak")
