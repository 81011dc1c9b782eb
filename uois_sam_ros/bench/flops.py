"""FLOPs per pipeline stage and the matmul peak they are measured against (uois-sam-bench stages).

A stage's GFLOP/s only means something next to what the same device, threads and dtype reach
on the best-case kernel, so the peak is a square matmul measured in the same run. FLOPs come from
torch's own counter (``torch.utils.flop_counter.FlopCounterMode``: matmuls, convolutions and
attention; element-wise work, interpolation and numpy count as zero), read at the boundaries of
the pipeline's stage calls during one extra, untimed run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def sync(device: str | torch.device) -> None:
    """Wait for the device's queued kernels, so a host timer covers them (no-op on CPU)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Peak:
    """Best square-matmul throughput seen: gflops at side n in dtype."""

    gflops: float
    n: int
    dtype: str
    seconds: float  # wall time spent measuring


def matmul_peak(device: str, dtype: str = "fp32", seconds: float = 1.0,
                sizes: tuple[int, ...] | None = None) -> Peak:
    """Best GFLOP/s of n x n @ n x n matmuls (2 n^3 FLOPs each) within about `seconds`.

    Each size gets an equal share of the time, at least one warm-up and two timed products; the
    best single product counts (noise on a shared machine only ever slows a run down). CPU sizes
    are 1024 and 2048; a GPU needs 4096-8192 to approach its peak."""
    dev = torch.device(device)
    if sizes is None:
        sizes = (1024, 2048) if dev.type == "cpu" else (2048, 4096, 8192)
    dt = TORCH_DTYPES[dtype]
    t_start = time.perf_counter()
    best_gflops, best_n = 0.0, sizes[0]
    share = max(seconds, 0.0) / len(sizes)
    gen = torch.Generator(device=dev).manual_seed(0)
    for n in sizes:
        a = torch.randn(n, n, device=dev, dtype=dt, generator=gen)
        b = torch.randn(n, n, device=dev, dtype=dt, generator=gen)
        with torch.inference_mode():
            a @ b  # warm-up: kernel selection, thread pool, clocks
            sync(dev)
            t_size, reps, best = time.perf_counter(), 0, float("inf")
            while reps < 2 or time.perf_counter() - t_size < share:
                t = time.perf_counter()
                a @ b
                sync(dev)
                best = min(best, time.perf_counter() - t)
                reps += 1
        g = 2.0 * n**3 / best / 1e9
        if g > best_gflops:
            best_gflops, best_n = g, n
        del a, b
    return Peak(best_gflops, best_n, dtype, time.perf_counter() - t_start)


class StageFlops:
    """FLOPs per stage from one FlopCounterMode: the running total is read whenever a wrapped stage
    call starts or ends, and the difference goes to the stage that was active. Work outside any
    wrapped call goes to `outside` (the pipeline's post-processing)."""

    def __init__(self, counter: FlopCounterMode, outside: str = "postprocess") -> None:
        self.counter = counter
        self.flops: dict[str, int] = {}
        self._stage = outside
        self._mark = 0

    def switch(self, stage: str) -> str:
        """Charge the FLOPs since the last switch to the active stage, make `stage` active; returns the old one."""
        total = int(self.counter.get_total_flops())
        self.flops[self._stage] = self.flops.get(self._stage, 0) + total - self._mark
        self._mark = total
        old, self._stage = self._stage, stage
        return old

    def finish(self) -> dict[str, int]:
        self.switch(self._stage)
        return dict(self.flops)


def _wrap(fn: Callable, stage: str, device: torch.device, flops: StageFlops | None) -> Callable:
    def stage_call(*args: Any, **kwargs: Any) -> Any:
        prev = flops.switch(stage) if flops is not None else None
        try:
            out = fn(*args, **kwargs)
            sync(device)  # on CUDA the caller's timer then covers this stage's kernels
            return out
        finally:
            if flops is not None:
                flops.switch(prev)

    return stage_call


@contextlib.contextmanager
def instrument(pipe: Any, flops: StageFlops | None = None) -> Iterator[None]:
    """Wrap the stage calls of one UOISPipeline instance (nothing outside the bench sees it):

    prompts = prompt_source.prompts (HPG net), embedding = segmenter.set_frame (SAM image encoder),
    decode = segmenter.decode_lowres + hdnet.adapted_iou (prompt encoder, mask decoder, HDNet).
    Each call ends with a device sync, so on CUDA the pipeline's own stage timers include the
    kernels; with `flops`, FLOPs are charged to the stage whose call is running."""
    device = torch.device(getattr(pipe, "device", "cpu"))
    targets = [(pipe.prompt_source, "prompts", "prompts"), (pipe.segmenter, "set_frame", "embedding"),
               (pipe.segmenter, "decode_lowres", "decode"), (getattr(pipe, "hdnet", None), "adapted_iou", "decode")]
    done = []
    try:
        for obj, name, stage in targets:
            if obj is not None and hasattr(obj, name):
                object.__setattr__(obj, name, _wrap(getattr(obj, name), stage, device, flops))
                done.append((obj, name))
        yield
    finally:
        for obj, name in done:
            object.__delattr__(obj, name)  # the class's method shows through again


@contextlib.contextmanager
def counted_in_fp32(pipe: Any) -> Iterator[None]:
    """Run the pipe's SAM and HPG in fp32 inside: the counter decomposes composite ops (einsum)
    below autocast, which then meet mixed dtypes, and a FLOP count does not depend on the dtype."""
    swapped = []
    for part in (getattr(pipe, "segmenter", None), getattr(pipe, "hpg", None)):
        cfg = getattr(part, "cfg", None)
        if dataclasses.is_dataclass(cfg) and getattr(cfg, "dtype", "fp32") != "fp32":
            swapped.append((part, cfg))
            part.cfg = dataclasses.replace(cfg, dtype="fp32")
    try:
        yield
    finally:
        for part, cfg in swapped:
            part.cfg = cfg


def count_stage_flops(pipe: Any, frame: Any, counter: FlopCounterMode | None = None,
                      stages: StageFlops | None = None) -> dict[str, int]:
    """FLOPs of one pipe.run(frame) per stage (an extra run: the counter slows it, so it is never timed).

    The run is counted in fp32 whatever sam.dtype / hpg.dtype say (counted_in_fp32). `counter` and
    `stages` replace the plain FlopCounterMode and StageFlops (the ceiling bench records with them)."""
    counter = counter if counter is not None else FlopCounterMode(display=False)
    with counted_in_fp32(pipe), counter:
        stages = stages if stages is not None else StageFlops(counter)
        with instrument(pipe, stages):
            pipe.run(frame)
        return stages.finish()
