"""One training run over several processes: torchrun + DistributedDataParallel for every trainer.

``torchrun --nproc_per_node N -m uois_sam_ros.training.<trainer> <the same options>`` starts N
processes; torchrun gives each RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT.
init_distributed() reads them, joins the process group (gloo on CPU; NCCL on CUDA, one GPU per
process: cuda:LOCAL_RANK) and returns a DistContext. Without those variables, or with
WORLD_SIZE=1, the context is the single process and every helper here is a no-op, so a trainer
keeps one code path and a plain run behaves exactly as before.

The contract a trainer keeps (why one N-process step equals the single-process step):

- The CLI's batch is the global batch. Every process draws the same global order (same seeds)
  and takes its contiguous 1/N share of each global batch (DistContext.shard); the batch must
  be a multiple of N (check_divisible). A short last batch of an epoch is split as evenly as it
  goes, so a process may get nothing; it still joins the step.
- Each process's loss is its share's sum divided by the global batch's normaliser, times N:
  DDP averages gradients over the N processes, so the averaged gradient is that of the
  single-process mean over the global batch, also when images differ in their number of
  pixels, prompts or valid samples. BatchNorm layers use the global batch's statistics
  (GlobalBatchNorm, also on CPU, where torch's SyncBatchNorm does not run).
- Validation: every process scores every N-th item and the sums are all-reduced, so all
  processes hold the same figures and take the same best-checkpoint decision.
- Stop decisions (time budgets) are all-reduced, so no process waits in a collective that
  another has left. Files, CSV rows, progress bars and prints come from rank 0 only.

A trainer adopts it in four places: ``ctx = init_distributed(device)`` in main (and
``ctx.close(ok)`` at the end), ``ctx.check_divisible(batch)``, ``step = ctx.wrap(model, loss_fn)``
(the forward DDP sees is loss_fn(model, ...)), and ``ctx.sum`` / ``ctx.any`` / ``ctx.is_main``
where figures, stops and files are decided.
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from uois_sam_ros.training.common import TrainingError

ENV_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


class DistError(TrainingError):
    """A multi-process set-up that cannot work (inconsistent torchrun variables, a batch that does
    not split over the processes, processes that disagree). everywhere: every process raises the
    same error, so only rank 0 needs to print it."""

    def __init__(self, message: str, everywhere: bool = False) -> None:
        super().__init__(message)
        self.everywhere = everywhere


@dataclass(frozen=True)
class Launch:
    """What torchrun told this process."""

    rank: int
    world_size: int
    local_rank: int
    local_world_size: int | None = None


def _int_var(env: Mapping[str, str], name: str) -> int:
    raw = env[name]
    try:
        return int(raw)
    except ValueError:
        raise DistError(f"torchrun variable {name}={raw!r} is not an integer") from None


def read_launch(env: Mapping[str, str] | None = None) -> Launch | None:
    """RANK / WORLD_SIZE / LOCAL_RANK (+ LOCAL_WORLD_SIZE, MASTER_ADDR/PORT) checked for consistency.

    None when none of the three is set (a plain run). Raises DistError naming the variable when
    only some are set, when one is not an integer or out of range, or when a multi-process run
    has no MASTER_ADDR / MASTER_PORT."""
    env = os.environ if env is None else env
    present = [k for k in ENV_VARS if env.get(k) not in (None, "")]
    if not present:
        return None
    missing = [k for k in ENV_VARS if k not in present]
    if missing:
        have = ", ".join(f"{k}={env[k]}" for k in present)
        raise DistError(f"torchrun variables are inconsistent: {', '.join(missing)} not set while {have} is; "
                        "start the trainer with torchrun (it sets RANK, WORLD_SIZE and LOCAL_RANK) or unset them")
    rank, world, local = (_int_var(env, k) for k in ENV_VARS)
    if world < 1:
        raise DistError(f"torchrun variables are inconsistent: WORLD_SIZE={world} must be at least 1")
    if not 0 <= rank < world:
        raise DistError(f"torchrun variables are inconsistent: RANK={rank} is outside 0..{world - 1} "
                        f"(WORLD_SIZE={world})")
    local_world = None
    if env.get("LOCAL_WORLD_SIZE") not in (None, ""):
        local_world = _int_var(env, "LOCAL_WORLD_SIZE")
        if not 1 <= local_world <= world:
            raise DistError(f"torchrun variables are inconsistent: LOCAL_WORLD_SIZE={local_world} is outside "
                            f"1..WORLD_SIZE ({world})")
    top = local_world if local_world is not None else world
    if not 0 <= local < top:
        what = "LOCAL_WORLD_SIZE" if local_world is not None else "WORLD_SIZE"
        raise DistError(f"torchrun variables are inconsistent: LOCAL_RANK={local} is outside 0..{top - 1} "
                        f"({what}={top})")
    if world > 1:
        lacking = [k for k in ("MASTER_ADDR", "MASTER_PORT") if env.get(k) in (None, "")]
        if lacking:
            raise DistError(f"torchrun variables are inconsistent: WORLD_SIZE={world} but {' and '.join(lacking)} "
                            "not set (torchrun sets them; the processes cannot find each other without)")
        _int_var(env, "MASTER_PORT")
    return Launch(rank, world, local, local_world)


# ----------------------------------------------------------------------------------- batch norm
def _all_reduce(t: torch.Tensor) -> torch.Tensor:
    import torch.distributed as td

    td.all_reduce(t)
    return t


class _GlobalBatchNormFn(torch.autograd.Function):
    """Batch normalisation with the statistics of the whole global batch (SyncBatchNorm's maths).

    The per-channel sums are accumulated in float64, as torch's CPU batch_norm does: float32 sums
    over a batch lose enough to move a small network's gradients by percents (seen on HPG)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,
                running_mean: torch.Tensor | None, running_var: torch.Tensor | None, momentum: float,
                eps: float) -> torch.Tensor:
        c = x.shape[1]
        dims = [0, *range(2, x.dim())]
        shape = [1, c] + [1] * (x.dim() - 2)
        s = torch.cat([x.sum(dims, dtype=torch.float64),
                       torch.tensor([x.numel() // c if c else 0], dtype=torch.float64, device=x.device)])
        s = _all_reduce(s)
        n = float(s[c])
        if n < 1:
            raise ValueError("GlobalBatchNorm: the global batch is empty")
        mean = s[:c] / n
        xc = x - mean.to(x.dtype).view(shape)
        var = _all_reduce(xc.pow(2).sum(dims, dtype=torch.float64)) / n
        invstd = (var + eps).rsqrt()
        xhat = xc * invstd.to(x.dtype).view(shape)
        if running_mean is not None and running_var is not None:
            running_mean.mul_(1 - momentum).add_(mean.to(running_mean.dtype), alpha=momentum)
            running_var.mul_(1 - momentum).add_((var * (n / max(n - 1.0, 1.0))).to(running_var.dtype),
                                                alpha=momentum)
        ctx.save_for_backward(xhat, invstd, weight)
        ctx.n = n
        y = xhat
        if weight is not None:
            y = y * weight.view(shape)
        if bias is not None:
            y = y + bias.view(shape)
        return y

    @staticmethod
    def backward(ctx: Any, dy: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        xhat, invstd, weight = ctx.saved_tensors
        c = xhat.shape[1]
        dims = [0, *range(2, xhat.dim())]
        shape = [1, c] + [1] * (xhat.dim() - 2)
        sum_dy = dy.sum(dims, dtype=torch.float64)
        sum_dy_xhat = (dy * xhat).sum(dims, dtype=torch.float64)
        tot = _all_reduce(torch.cat([sum_dy, sum_dy_xhat]))  # the global batch's sums
        scale = invstd if weight is None else invstd * weight.to(torch.float64)
        dx = None
        if ctx.needs_input_grad[0]:
            mean_dy = (tot[:c] / ctx.n).to(dy.dtype).view(shape)
            mean_dy_xhat = (tot[c:] / ctx.n).to(dy.dtype).view(shape)
            dx = (dy - mean_dy - xhat * mean_dy_xhat) * scale.to(dy.dtype).view(shape)
        # the parameters' gradients are this process's part: DDP sums (and averages) them
        dw = sum_dy_xhat.to(weight.dtype) if weight is not None and ctx.needs_input_grad[1] else None
        db = sum_dy.to(dy.dtype) if ctx.needs_input_grad[2] else None
        return dx, dw, db, None, None, None, None


class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose training statistics are those of the whole global batch, on any device.

    Forward all-reduces the per-channel sums (mean) and squared deviations (variance) over the
    default process group; backward all-reduces the sums of the output gradient, so the
    N-process gradient equals the single-process one (torch's SyncBatchNorm does the same, but
    on GPUs only). Eval mode, and a single process, use _BatchNorm's own path. Same
    parameters, buffers and state-dict keys as nn.BatchNorm*d."""

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        import torch.distributed as td

        if not (self.training and td.is_available() and td.is_initialized() and td.get_world_size() > 1):
            return super().forward(x)
        self._check_input_dim(x)
        momentum = 0.0
        if self.track_running_stats:
            self.num_batches_tracked.add_(1)
            momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
        track = self.track_running_stats
        return _GlobalBatchNormFn.apply(x, self.weight, self.bias, self.running_mean if track else None,
                                        self.running_var if track else None, momentum, self.eps)


def global_batchnorm(module: nn.Module) -> nn.Module:
    """Swap every BatchNorm*d in module for a GlobalBatchNorm that keeps the same parameter and
    buffer objects (an optimiser made earlier stays valid). Returns module (or its replacement)."""
    bn = nn.modules.batchnorm._BatchNorm
    if isinstance(module, bn) and not isinstance(module, (GlobalBatchNorm, nn.SyncBatchNorm)):
        new = GlobalBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                              module.track_running_stats)
        if module.affine:
            new.weight, new.bias = module.weight, module.bias
        if module.track_running_stats:
            new.running_mean, new.running_var = module.running_mean, module.running_var
            new.num_batches_tracked = module.num_batches_tracked
        new.train(module.training)
        return new
    for name, child in module.named_children():
        new = global_batchnorm(child)
        if new is not child:
            setattr(module, name, new)
    return module


class LossModule(nn.Module):
    """forward(*a) = fn(model, *a): the one forward per step that DDP hooks, whatever the model's
    own call pattern (SAM's encoder/decoder calls, HDNet's adapted_iou, a loss on top)."""

    def __init__(self, model: nn.Module, fn: Callable[..., Any]) -> None:
        super().__init__()
        self.model = model
        self.fn = fn

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(self.model, *args, **kwargs)


# --------------------------------------------------------------------------------------- context
class DistContext:
    """This process's place in the run; every method is a no-op (or the identity) for one process."""

    def __init__(self, rank: int = 0, world_size: int = 1, local_rank: int = 0,
                 device: torch.device | str = "cpu", owns_group: bool = False) -> None:
        self.rank, self.world_size, self.local_rank = int(rank), int(world_size), int(local_rank)
        self.device = torch.device(device)
        self.owns_group = owns_group

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def __repr__(self) -> str:
        return f"DistContext(rank={self.rank}, world_size={self.world_size}, device={self.device})"

    # ---- batches
    def check_divisible(self, batch: int, option: str) -> None:
        """The global batch must split into world_size equal shares."""
        if self.enabled and batch % self.world_size:
            raise DistError(f"{option} {batch} does not split over {self.world_size} processes: the global batch "
                            f"must be a multiple of WORLD_SIZE (each process takes {option} / WORLD_SIZE)",
                            everywhere=True)

    def shard(self, n: int) -> slice:
        """This process's contiguous share of a global batch of n items (shares differ by at most
        one item when n does not split evenly, e.g. an epoch's short last batch)."""
        base, extra = divmod(int(n), self.world_size)
        start = self.rank * base + min(self.rank, extra)
        return slice(start, start + base + (1 if self.rank < extra else 0))

    def strided(self, n: int) -> range:
        """Items rank, rank + N, ... of n: this process's part of a validation pass."""
        return range(self.rank, int(n), self.world_size)

    # ---- model
    def wrap(self, model: nn.Module, fn: Callable[..., Any], find_unused: bool = False,
             batchnorm: bool = True) -> nn.Module:
        """A module whose forward is fn(model, ...). Several processes: DDP over it (gradients
        averaged in backward), with model's BatchNorms made global first (batchnorm=True).
        find_unused: some parameters may get no gradient in a step (DDP then checks the graph).
        Call on every process at the same point (DDP broadcasts rank 0's weights)."""
        if self.enabled and batchnorm:
            global_batchnorm(model)
        step = LossModule(model, fn)
        if not self.enabled:
            return step
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(step, device_ids=ids, find_unused_parameters=find_unused)

    # ---- collectives (all processes must call them at the same point)
    def _comm_device(self) -> torch.device:
        import torch.distributed as td

        return self.device if td.get_backend() == "nccl" else torch.device("cpu")

    def sum(self, values: Sequence[float]) -> list[float]:
        """Element-wise sum over the processes (float64); ints come back as ints."""
        values = list(values)
        if not self.enabled:
            return values
        import torch.distributed as td

        t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=self._comm_device())
        td.all_reduce(t)
        return [int(round(r)) if isinstance(v, (int, np.integer)) and not isinstance(v, bool) else float(r)
                for v, r in zip(values, t.tolist())]

    def max(self, value: float) -> float:
        """The largest value over the processes (e.g. elapsed seconds, so all see the same clock)."""
        if not self.enabled:
            return value
        import torch.distributed as td

        t = torch.tensor([float(value)], dtype=torch.float64, device=self._comm_device())
        td.all_reduce(t, op=td.ReduceOp.MAX)
        return float(t.item())

    def any(self, flag: bool) -> bool:
        """True on every process when it is True on any (a stop decision nobody is left out of)."""
        return bool(flag) if not self.enabled else self.max(1.0 if flag else 0.0) > 0.5

    def gather(self, value: Any) -> list[Any]:
        """Every process's value (picklable), in rank order."""
        if not self.enabled:
            return [value]
        import torch.distributed as td

        out: list[Any] = [None] * self.world_size
        td.all_gather_object(out, value)
        return out

    def check_same(self, what: str, value: Any) -> None:
        """Raise the same DistError on every process when the processes disagree on value."""
        vals = self.gather(value)
        bad = [r for r, v in enumerate(vals) if v != vals[0]]
        if bad:
            raise DistError(f"the processes disagree on {what}: rank 0 has {vals[0]!r}, rank {bad[0]} has "
                            f"{vals[bad[0]]!r}; every process must run the same command on the same data",
                            everywhere=True)

    def raise_any(self, error: str | None) -> None:
        """Raise on every process when any process has an error message (the first by rank); one
        process: TrainingError(error) as a plain run would."""
        if not self.enabled:
            if error:
                raise TrainingError(error)
            return
        errs = self.gather(error)
        for r, e in enumerate(errs):
            if e:
                raise DistError(f"rank {r}: {e}", everywhere=True)

    def barrier(self) -> None:
        if self.enabled:
            import torch.distributed as td

            td.barrier()

    @contextmanager
    def rank0_first(self) -> Iterator[None]:
        """Rank 0 runs the block first (e.g. renders data and writes a cache), then the others run it
        (and read the cache) rather than all writing the same file at once. When rank 0 fails in
        the block the others raise its error instead of waiting for it."""
        if not self.enabled:
            yield
            return
        if self.is_main:
            try:
                yield
            except Exception as e:
                self.gather(str(e) or type(e).__name__)
                raise
            self.gather(None)
            return
        err = self.gather(None)[0]
        if err:
            raise DistError(f"rank 0: {err}", everywhere=True)
        yield

    def print(self, *args: Any) -> None:
        """Print to stderr from rank 0 only."""
        if self.is_main:
            print(*args, file=sys.stderr)

    def close(self, ok: bool = True) -> None:
        """End of a run: barrier (only after success: a failed process must not wait for the others)
        and destroy the process group when this context created it."""
        if not self.enabled:
            return
        import torch.distributed as td

        if not td.is_initialized():
            return
        if ok:
            td.barrier()
        if self.owns_group:
            td.destroy_process_group()


def init_distributed(device: str | torch.device = "cpu", env: Mapping[str, str] | None = None) -> DistContext:
    """The DistContext of this process; joins the process group under torchrun.

    device: the resolved --device ('cpu', 'cuda' or 'cuda:N'). With several processes 'cuda'
    becomes cuda:LOCAL_RANK with NCCL, 'cpu' uses gloo; an explicit cuda:N is refused (each
    process owns the GPU of its LOCAL_RANK). A process group that is already initialised is
    used as it is and left open at close(). Raises DistError for an inconsistent set-up."""
    import torch.distributed as td

    dev = torch.device(device)
    env = os.environ if env is None else env
    if td.is_available() and td.is_initialized():
        rank, world = td.get_rank(), td.get_world_size()
        local = int(env.get("LOCAL_RANK", rank)) if str(env.get("LOCAL_RANK", "")).isdigit() else rank
        if world > 1 and dev.type == "cuda":
            dev = torch.device("cuda", local)
        return DistContext(rank, world, local, dev, owns_group=False)
    launch = read_launch(env)
    if launch is None or launch.world_size == 1:
        return DistContext(device=dev)
    if not td.is_available():
        raise DistError("this torch build has no torch.distributed; run a single process")
    if dev.type == "cuda":
        if dev.index is not None:
            raise DistError(f"--device {device} names one GPU, but under torchrun each of the {launch.world_size} "
                            "processes uses cuda:LOCAL_RANK; pass --device cuda (or auto)", everywhere=True)
        n = torch.cuda.device_count()
        if launch.local_rank >= n:
            raise DistError(f"LOCAL_RANK={launch.local_rank} but this machine has {n} CUDA device(s): start at most "
                            f"{n} processes per node (torchrun --nproc_per_node {n})")
        dev = torch.device("cuda", launch.local_rank)
        torch.cuda.set_device(dev)
        backend = "nccl"
    elif dev.type == "cpu":
        backend = "gloo"
    else:
        raise DistError(f"--device {device} is not supported with several processes (cpu: gloo, cuda: NCCL)",
                        everywhere=True)
    kwargs: dict[str, Any] = {"device_id": dev} if backend == "nccl" else {}
    td.init_process_group(backend=backend, init_method="env://", rank=launch.rank,
                          world_size=launch.world_size, **kwargs)
    ctx = DistContext(launch.rank, launch.world_size, launch.local_rank, dev, owns_group=True)
    try:
        # two processes on one node with the same LOCAL_RANK would share a GPU and a progress slot
        where = ctx.gather((socket.gethostname(), launch.local_rank, dev.type))
        seen: dict[tuple[str, int], int] = {}
        for r, (host, local, kind) in enumerate(where):
            if kind != dev.type:
                raise DistError(f"the processes disagree on the device: rank 0 uses {where[0][2]}, rank {r} uses "
                                f"{kind}; give every process the same --device", everywhere=True)
            if (host, local) in seen:
                raise DistError(f"torchrun variables are inconsistent: ranks {seen[(host, local)]} and {r} both have "
                                f"LOCAL_RANK={local} on {host}", everywhere=True)
            seen[(host, local)] = r
    except DistError:
        td.destroy_process_group()
        raise
    return ctx


class TrainerRun:
    """A trainer's main in one ``with``: a user error (TrainingError, ValueError, FileNotFoundError)
    becomes one stderr line (``error_line``) and exit status 2 instead of a traceback, and the
    process group is closed on the way out, told whether the run ended well.

        with TrainerRun("uois-sam-train-x") as run:
            run.ctx = ctx = init_distributed(device)
            ...
            return 0
        return run.code  # only reached after a reported error
    """

    ERRORS = (TrainingError, ValueError, FileNotFoundError)

    def __init__(self, prog: str) -> None:
        self.prog = prog
        self.ctx: DistContext | None = None
        self.code = 0

    def __enter__(self) -> TrainerRun:
        return self

    def __exit__(self, etype: type[BaseException] | None, e: BaseException | None, tb: Any) -> bool:
        reported = etype is not None and issubclass(etype, self.ERRORS)
        if reported:
            line = error_line(self.prog, e, self.ctx)
            if line:
                print(line, file=sys.stderr)
            self.code = 2
        if self.ctx is not None:
            self.ctx.close(etype is None)
        return reported


def error_line(prog: str, e: BaseException, ctx: DistContext | None) -> str | None:
    """The one-line error a trainer prints, or None on ranks > 0 when every process raised it."""
    if ctx is not None and ctx.enabled:
        if isinstance(e, DistError) and e.everywhere and not ctx.is_main:
            return None
        if not (isinstance(e, DistError) and e.everywhere):
            return f"{prog}: error (rank {ctx.rank} of {ctx.world_size}): {e}"
    return f"{prog}: error: {e}"
