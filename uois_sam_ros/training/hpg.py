"""uois-sam-train-hpg: train the Heatmap-based Prompt Generator (UOIS-SAM section III-A).

Loss (paper): 0.1 * class-weighted cross-entropy on foreground (inverse-frequency weights)
+ 1 * MSE between the predicted and the GT centroid heatmap. AdamW (1e-3, wd 1e-4),
StepLR x0.1 every 10 epochs, 30 epochs, batch 32; the checkpoint with the lowest
validation loss is kept. Data: a UOAIS-Sim-style folder, or scenes from the synthetic
generator (which is how the shipped weights-free checkpoint is made).

Backbones: the small CNNs train end to end; dinov2_vits14 (the paper's setting, 336x448) stays
frozen in eval mode and only the upsampling blocks and the head learn.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from uois_sam_ros.core.config import HPGConfig
from uois_sam_ros.core.segment.hpg import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    HPGNet,
    load_hpg_checkpoint,
    normalise_depth,
    save_hpg_checkpoint,
    select_peaks,
)
from uois_sam_ros.training.common import (
    ArraySet,
    Budget,
    CsvLog,
    HelpFormatter,
    TrainingError,
    dataset_arrays,
    fraction_indices,
    pick_device,
    synthetic_arrays,
)
from uois_sam_ros.training.dist import DistContext, TrainerRun, init_distributed

DEFAULT_SIGMA = 6.0  # px at the training resolution; the paper leaves sigma open


def mask_centroids(label_map: np.ndarray) -> dict[int, tuple[float, float]]:
    """Centroid (x, y) of each visible mask from image moments (not the 3-D centre of mass)."""
    out: dict[int, tuple[float, float]] = {}
    for i in np.unique(label_map):
        if i == 0:
            continue
        m = cv2.moments((label_map == i).astype(np.uint8), binaryImage=True)
        if m["m00"] > 0:
            out[int(i)] = (m["m10"] / m["m00"], m["m01"] / m["m00"])
    return out


def heatmap_targets(label_map: np.ndarray, sigma: float = DEFAULT_SIGMA) -> np.ndarray:
    """GT heatmap: a unit Gaussian at each visible mask's centroid, combined by element-wise max."""
    label_map = np.asarray(label_map)
    if label_map.ndim != 2:
        raise ValueError(f"label map must be (H, W), got {label_map.shape}")
    if sigma <= 0:
        raise ValueError(f"sigma must be positive, got {sigma}")
    h, w = label_map.shape
    out = np.zeros((h, w), np.float32)
    r = int(math.ceil(4 * sigma))
    for cx, cy in mask_centroids(label_map).values():
        x0, x1 = max(0, int(cx) - r), min(w, int(cx) + r + 2)
        y0, y1 = max(0, int(cy) - r), min(h, int(cy) + r + 2)
        xs = np.arange(x0, x1, dtype=np.float32) - cx
        ys = np.arange(y0, y1, dtype=np.float32) - cy
        g = np.exp(-(ys[:, None] ** 2 + xs[None] ** 2) / (2 * sigma * sigma))
        np.maximum(out[y0:y1, x0:x1], g, out=out[y0:y1, x0:x1])
    return out


def make_batch(data: ArraySet, idx: np.ndarray, sigma: float, device: torch.device,
               use_depth: bool = True) -> dict[str, torch.Tensor]:
    """Network inputs normalised exactly as core.hpg.preprocess does, plus targets.

    An empty idx (a process's share of a short last batch) gives zero-length tensors."""
    h, w = data.rgb.shape[1:3]
    if len(idx) == 0:
        out = {"rgb": torch.zeros(0, 3, h, w, device=device), "fg": torch.zeros(0, h, w, dtype=torch.int64,
                                                                                device=device),
               "heatmap": torch.zeros(0, 1, h, w, device=device)}
        if use_depth:
            out["depth"] = torch.zeros(0, 1, h, w, device=device)
        return out
    rgb = torch.from_numpy(data.rgb[idx]).float().permute(0, 3, 1, 2) / 255.0
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    out = {"rgb": ((rgb - mean) / std).to(device)}
    if use_depth:
        d = np.stack([normalise_depth(data.depth[i].astype(np.float32), (h, w)) for i in idx])
        out["depth"] = torch.from_numpy(d).unsqueeze(1).to(device)
    out["fg"] = torch.from_numpy((data.label[idx] > 0).astype(np.int64)).to(device)
    out["heatmap"] = torch.from_numpy(np.stack([heatmap_targets(data.label[i], sigma) for i in idx])
                                      ).unsqueeze(1).to(device)
    return out


def hpg_loss(fg_logits: torch.Tensor, heatmap: torch.Tensor, fg: torch.Tensor, target_heat: torch.Tensor,
             ce_weight: float = 0.1, hm_weight: float = 1.0) -> tuple[torch.Tensor, dict[str, float]]:
    """0.1 * CE with inverse-frequency class weights (from the batch) + 1 * heatmap MSE."""
    counts = torch.bincount(fg.flatten(), minlength=2).float()
    weights = counts.sum() / (2 * counts.clamp(min=1))
    ce = F.cross_entropy(fg_logits, fg, weight=weights)
    mse = F.mse_loss(heatmap, target_heat)
    total = ce_weight * ce + hm_weight * mse
    return total, {"ce": ce.item(), "mse": mse.item(), "loss": total.item()}


def train_step(model: HPGNet, opt: torch.optim.Optimizer, batch: dict[str, torch.Tensor],
               ce_weight: float = 0.1, hm_weight: float = 1.0) -> dict[str, float]:
    model.train()
    fg_logits, heat = model(batch["rgb"], batch.get("depth"))
    loss, parts = hpg_loss(fg_logits, heat, batch["fg"], batch["heatmap"], ce_weight, hm_weight)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return parts


def _shard_loss(model: HPGNet, b: dict[str, torch.Tensor], weights: torch.Tensor, ce_norm: float, numel: int,
                world: int, ce_weight: float, hm_weight: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """This process's part of hpg_loss over a global batch: sums over its share divided by the
    global batch's normalisers, times world (DDP's gradient average undoes it)."""
    fg_logits, heat = model(b["rgb"], b.get("depth"))
    ce = F.cross_entropy(fg_logits, b["fg"], weight=weights, reduction="sum") / ce_norm
    mse = (heat - b["heatmap"]).pow(2).sum() / numel
    return world * (ce_weight * ce + hm_weight * mse), ce.detach(), mse.detach()


def shard_train_step(model: HPGNet, step: torch.nn.Module, opt: torch.optim.Optimizer, data: ArraySet,
                     idx: np.ndarray, sigma: float, device: torch.device, ctx: DistContext,
                     ce_weight: float = 0.1, hm_weight: float = 1.0) -> dict[str, float]:
    """train_step on the global batch idx with this process taking ctx.shard of it.

    The class weights and the CE normaliser come from the whole global batch's labels (every
    process has them), so the step equals train_step(make_batch(data, idx)) on one process."""
    counts = np.bincount((data.label[idx] > 0).ravel().astype(np.int64), minlength=2).astype(np.float64)
    weights = counts.sum() / (2 * np.maximum(counts, 1))
    ce_norm = float((counts * weights).sum())
    numel = int(counts.sum())
    b = make_batch(data, idx[ctx.shard(len(idx))], sigma, device, model.uses_depth)
    model.train()
    loss, ce, mse = step(b, torch.tensor(weights, dtype=torch.float32, device=device), ce_norm, numel,
                         ctx.world_size, ce_weight, hm_weight)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    ce_g, mse_g = ctx.sum([float(ce), float(mse)])
    return {"ce": ce_g, "mse": mse_g, "loss": ce_weight * ce_g + hm_weight * mse_g}


@torch.no_grad()
def evaluate_loss(model: HPGNet, data: ArraySet, sigma: float, device: torch.device, batch_size: int = 16,
                  ce_weight: float = 0.1, hm_weight: float = 1.0, dist: DistContext | None = None) -> float:
    """Mean validation loss (per image batch, weighted by batch size). With several processes
    each scores every N-th batch and the sums are all-reduced: the same figure on every process."""
    model.eval()
    ctx = dist or DistContext()
    tot, n = 0.0, 0
    starts = range(0, len(data), batch_size)
    for bi in ctx.strided(len(starts)):
        s = starts[bi]
        idx = np.arange(s, min(s + batch_size, len(data)))
        b = make_batch(data, idx, sigma, device, model.uses_depth)
        fg_logits, heat = model(b["rgb"], b.get("depth"))
        loss, _ = hpg_loss(fg_logits, heat, b["fg"], b["heatmap"], ce_weight, hm_weight)
        tot += float(loss) * len(idx)
        n += len(idx)
    tot, n = ctx.sum([tot, n])
    return tot / max(n, 1)


@torch.no_grad()
def evaluate_hpg(model: HPGNet, data: ArraySet, cfg: HPGConfig | None = None, device: str = "cpu",
                 hit_radius: float = 5.0, batch_size: int = 16) -> dict[str, float]:
    """Held-out quality of the prompts that the pipeline would get.

    fg_iou: IoU of (p_fg > 0.5) with the GT foreground, pooled over the set.
    centroid_recall: fraction of GT objects with a selected peak within hit_radius px of
    the mask centroid or inside the visible mask. prompt_precision: fraction of selected
    peaks that lie on an object.
    """
    cfg = cfg or HPGConfig()
    model.eval().to(device)
    inter = union = 0
    n_obj = n_hit = n_peaks = n_on = 0
    dev = torch.device(device)
    for s in range(0, len(data), batch_size):
        idx = np.arange(s, min(s + batch_size, len(data)))
        b = make_batch(data, idx, DEFAULT_SIGMA, dev, model.uses_depth)
        fg_logits, heat = model(b["rgb"], b.get("depth"))
        prob = torch.softmax(fg_logits, 1)[:, 1].cpu().numpy()
        heat = heat[:, 0].cpu().numpy()
        for j, i in enumerate(idx):
            lab = data.label[i]
            gt = lab > 0
            pred = prob[j] > 0.5
            inter += int((gt & pred).sum())
            union += int((gt | pred).sum())
            pr = select_peaks(prob[j], heat[j], cfg)
            pts = np.round(pr.points).astype(int)
            on = lab[pts[:, 1].clip(0, lab.shape[0] - 1), pts[:, 0].clip(0, lab.shape[1] - 1)] if len(pts) else []
            n_peaks += len(pts)
            n_on += int(np.count_nonzero(on))
            for oid, (cx, cy) in mask_centroids(lab).items():
                n_obj += 1
                if len(pts) == 0:
                    continue
                near = np.hypot(pts[:, 0] - cx, pts[:, 1] - cy).min() <= hit_radius
                inside = bool(np.any(np.asarray(on) == oid))
                n_hit += int(near or inside)
    return {"fg_iou": inter / max(union, 1), "centroid_recall": n_hit / max(n_obj, 1),
            "prompt_precision": n_on / max(n_peaks, 1), "prompts_per_image": n_peaks / max(len(data), 1),
            "objects": float(n_obj), "images": float(len(data))}


def _state_path(out: Path) -> Path:
    return out.with_name(out.stem + ".last.pt")


TRAINABLE_BACKBONES = ("cnn_rgbd", "cnn_rgb", "dinov2_vits14")
DEFAULT_INPUT = {"cnn_rgbd": (240, 320), "cnn_rgb": (240, 320), "dinov2_vits14": (336, 448)}


def check_backbone_args(backbone: str, size_hw: tuple[int, int], backbone_checkpoint: str | None,
                        random_backbone: bool) -> None:
    """User errors in the backbone options, raised before any data is loaded."""
    if backbone == "sam":
        raise TrainingError("train_hpg does not train the 'sam' backbone (it needs precomputed SAM image "
                            f"embeddings); choose one of {list(TRAINABLE_BACKBONES)}")
    if backbone not in TRAINABLE_BACKBONES:
        raise TrainingError(f"train_hpg trains {list(TRAINABLE_BACKBONES)}, not {backbone!r}")
    if backbone == "dinov2_vits14":
        h, w = size_hw
        if h % 14 or w % 14:
            raise TrainingError(f"DINOv2 ViT-S/14 needs an input size divisible by 14, got {h}x{w} "
                                "(the paper uses 336x448)")
        if not backbone_checkpoint and not random_backbone:
            raise TrainingError("--backbone dinov2_vits14 needs --backbone-checkpoint PATH (the official "
                                "dinov2_vits14_pretrain.pth); --random-backbone trains on a random frozen "
                                "backbone, for tests and smoke runs only")
        if backbone_checkpoint and random_backbone:
            raise TrainingError("give either --backbone-checkpoint or --random-backbone, not both")
    elif backbone_checkpoint:
        raise TrainingError(f"--backbone-checkpoint is for the dinov2_vits14 backbone, not {backbone!r}")


def trainable_parameters(model: HPGNet) -> list[torch.nn.Parameter]:
    """What the optimiser gets: everything but a frozen backbone."""
    return [p for p in model.parameters() if p.requires_grad]


def train_hpg(train: ArraySet, val: ArraySet, out: str | Path, *, backbone: str = "cnn_rgbd", width: int = 16,
              head_channels: int = 256, backbone_checkpoint: str | None = None, random_backbone: bool = False,
              epochs: int = 30, batch_size: int = 32, lr: float = 1e-3, weight_decay: float = 1e-4,
              step_size: int = 10, gamma: float = 0.1, ce_weight: float = 0.1, hm_weight: float = 1.0,
              sigma: float = DEFAULT_SIGMA, device: str = "cpu", seed: int = 0, resume: bool = False,
              log: str | Path | None = None, max_minutes: float = 0.0, meta: dict | None = None,
              progress: bool = True, dist: DistContext | None = None) -> dict:
    """Train, keep the lowest-validation-loss checkpoint at out, return a summary dict.

    dinov2_vits14: the backbone comes from backbone_checkpoint (or random weights when
    random_backbone), stays frozen, and is saved inside the checkpoint (about 88 MB).
    dist: several processes (see training.dist): batch_size is the global batch, device is
    dist.device, rank 0 writes the files.
    """
    ctx = dist or DistContext()
    progress = progress and ctx.is_main
    if len(train) == 0 or len(val) == 0:
        raise TrainingError("training and validation sets must both be non-empty")
    ctx.check_divisible(batch_size, "--batch-size")
    h, w = train.rgb.shape[1:3]
    check_backbone_args(backbone, (h, w), backbone_checkpoint, random_backbone)
    from tqdm import tqdm

    out = Path(out)
    dev = pick_device(device)
    torch.manual_seed(seed)
    model = HPGNet(backbone, width=width, input_size=(h, w), head_channels=head_channels,
                   backbone_checkpoint=backbone_checkpoint).to(dev)
    opt = torch.optim.AdamW(trainable_parameters(model), lr=lr, weight_decay=weight_decay, betas=(0.9, 0.999))
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=step_size, gamma=gamma)
    start, best = 0, math.inf
    state_path = _state_path(out)
    if resume:
        if not state_path.is_file():
            raise TrainingError(f"--resume: no training state at {state_path}")
        st = torch.load(state_path, map_location=dev, weights_only=True)
        model.load_state_dict(st["model"])
        opt.load_state_dict(st["optimizer"])
        sched.load_state_dict(st["scheduler"])
        start, best = int(st["epoch"]) + 1, float(st["best"])
    step = ctx.wrap(model, _shard_loss) if ctx.enabled else None
    csv = CsvLog(log, ["epoch", "lr", "train_loss", "train_ce", "train_mse", "val_loss", "best", "seconds"]
                 ) if log and ctx.is_main else None
    rng = np.random.default_rng(seed + start)
    budget = Budget(max_minutes)
    history = []
    epoch = start - 1
    for epoch in range(start, epochs):
        t0 = time.time()
        perm = rng.permutation(len(train))
        sums = {"loss": 0.0, "ce": 0.0, "mse": 0.0}
        nb = math.ceil(len(perm) / batch_size)
        bar = tqdm(range(nb), desc=f"epoch {epoch + 1}/{epochs}", unit="batch", file=sys.stderr,
                   disable=not progress)
        for bi in bar:
            idx = perm[bi * batch_size:(bi + 1) * batch_size]
            if step is not None:
                parts = shard_train_step(model, step, opt, train, idx, sigma, dev, ctx, ce_weight, hm_weight)
            else:
                parts = train_step(model, opt, make_batch(train, idx, sigma, dev, model.uses_depth), ce_weight,
                                   hm_weight)
            for k in sums:
                sums[k] += parts[k]
            bar.set_postfix(loss=f"{parts['loss']:.4f}")
        lr_now = opt.param_groups[0]["lr"]
        sched.step()
        vl = evaluate_loss(model, val, sigma, dev, ce_weight=ce_weight, hm_weight=hm_weight, dist=ctx)
        improved = vl < best
        if improved:
            best = vl
        if improved and ctx.is_main:  # save_hpg_checkpoint copies the weights to the CPU itself
            save_hpg_checkpoint(out, model, {
                **(meta or {}), "epoch": epoch + 1, "val_loss": vl, "input_height": h, "input_width": w,
                "backbone": backbone, "backbone_checkpoint": str(backbone_checkpoint or ""),
                "random_backbone": bool(random_backbone),
                "sigma": sigma, "train_images": len(train), "val_images": len(val)})
        if ctx.is_main:
            torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                        "epoch": epoch, "best": best}, state_path)
        row = {"epoch": epoch + 1, "lr": lr_now, "train_loss": sums["loss"] / nb, "train_ce": sums["ce"] / nb,
               "train_mse": sums["mse"] / nb, "val_loss": vl, "best": int(improved), "seconds": time.time() - t0}
        history.append(row)
        if csv:
            csv.write(row)
        if progress:
            print(f"epoch {epoch + 1}: train {row['train_loss']:.5f} val {vl:.5f}{' (best)' if improved else ''}",
                  file=sys.stderr)
        if ctx.any(budget.exhausted()):
            if progress:
                print(f"time budget reached after epoch {epoch + 1}", file=sys.stderr)
            break
    return {"best_val_loss": best, "epochs_run": epoch + 1 - start, "history": history, "checkpoint": str(out)}


def _load_data(a: argparse.Namespace, size_hw: tuple[int, int]) -> tuple[ArraySet, ArraySet]:
    if a.data:
        data = dataset_arrays(a.data, size_hw, annotations=a.annotations)
    elif a.synthetic > 0:
        data = synthetic_arrays(a.synthetic, a.synthetic_seed, size_hw, cache=a.cache)
    else:
        raise TrainingError("give --data DIR (UOAIS-Sim-style folder) or --synthetic N")
    if a.val_data:
        val = dataset_arrays(a.val_data, size_hw, annotations=a.val_annotations)
        train = data
    elif a.val_synthetic > 0:
        val = synthetic_arrays(a.val_synthetic, a.val_seed, size_hw,
                               cache=(Path(a.cache).with_suffix(".val.npz") if a.cache else None),
                               desc="validation scenes")
        train = data
    else:
        n_val = max(1, int(round(a.val_split * len(data))))
        if n_val >= len(data):
            raise TrainingError(f"{len(data)} images are too few to split off {n_val} for validation")
        perm = np.random.default_rng(a.seed).permutation(len(data))
        val, train = data.subset(np.sort(perm[:n_val])), data.subset(np.sort(perm[n_val:]))
    train = train.subset(fraction_indices(len(train), a.data_fraction, a.seed))
    return train, val


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="uois-sam-train-hpg", description=__doc__.splitlines()[0],
                                formatter_class=HelpFormatter)
    src = p.add_argument_group("data")
    src.add_argument("--data", help="UOAIS-Sim-style folder (annotations json + color/depth images)")
    src.add_argument("--annotations", help="COCO json of --data, file names relative to --data "
                     "(default DATA/annotations.json)")
    src.add_argument("--synthetic", type=int, default=0, help="instead: render N synthetic training scenes")
    src.add_argument("--synthetic-seed", type=int, default=0, help="seed of the first synthetic training scene")
    src.add_argument("--val-data", help="validation folder (default: --val-split of the training data)")
    src.add_argument("--val-annotations", help="COCO json of --val-data (default VAL_DATA/annotations.json)")
    src.add_argument("--val-synthetic", type=int, default=0, help="render M synthetic validation scenes")
    src.add_argument("--val-seed", type=int, default=10_000_000,
                     help="seed of the first synthetic validation scene (far from the training seeds)")
    src.add_argument("--val-split", type=float, default=0.1,
                     help="fraction of the training data held out for validation when no --val-data/--val-synthetic")
    src.add_argument("--data-fraction", type=float, default=1.0, help="use this fraction of the training images")
    src.add_argument("--cache", help="npz cache of the synthetic training arrays")
    m = p.add_argument_group("model")
    m.add_argument("--backbone", default="cnn_rgbd", choices=list(TRAINABLE_BACKBONES),
                   help="dinov2_vits14 = the paper's frozen DINOv2 ViT-S/14 (only the upsampling head learns); "
                   "its checkpoint stores the backbone too, about 88 MB ('sam' is not trainable here)")
    m.add_argument("--backbone-checkpoint", metavar="PATH",
                   help="official dinov2_vits14_pretrain.pth (required for --backbone dinov2_vits14)")
    m.add_argument("--random-backbone", action="store_true",
                   help="dinov2_vits14 with random frozen weights instead of --backbone-checkpoint "
                   "(tests / smoke runs only; the result is useless for real images)")
    m.add_argument("--width", type=int, default=16, help="CNN base width")
    m.add_argument("--head-channels", type=int, default=256,
                   help="channels of the first DINOv2 upsampling block (halved per block)")
    m.add_argument("--input-height", type=int, default=None, help="default 240 (CNN) / 336 (DINOv2)")
    m.add_argument("--input-width", type=int, default=None, help="default 320 (CNN) / 448 (DINOv2)")
    t = p.add_argument_group("optimisation (paper defaults)")
    t.add_argument("--epochs", type=int, default=30, help="training epochs")
    t.add_argument("--batch-size", type=int, default=32, help="images per optimiser step")
    t.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate")
    t.add_argument("--weight-decay", type=float, default=1e-4, help="AdamW weight decay")
    t.add_argument("--step-size", type=int, default=10, help="StepLR: epochs between learning-rate drops")
    t.add_argument("--gamma", type=float, default=0.1, help="StepLR: factor of each drop")
    t.add_argument("--ce-weight", type=float, default=0.1, help="weight of the foreground cross-entropy term")
    t.add_argument("--hm-weight", type=float, default=1.0, help="weight of the heatmap MSE term")
    t.add_argument("--sigma", type=float, default=DEFAULT_SIGMA, help="GT Gaussian sigma, px at input size")
    o = p.add_argument_group("run")
    o.add_argument("--out", help="checkpoint path (best validation loss); CNN: well under 5 MB, "
                   "dinov2_vits14: about 88 MB (frozen backbone stored, so it loads on its own)")
    o.add_argument("--log", help="CSV log path (default: OUT with .csv)")
    o.add_argument("--resume", action="store_true", help="continue from OUT's .last.pt state")
    o.add_argument("--device", default="auto", help="auto (cuda when available, else cpu), cpu, cuda or cuda:N")
    o.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")
    o.add_argument("--seed", type=int, default=0, help="seed of initialisation, shuffling and the data-fraction subset")
    o.add_argument("--max-minutes", type=float, default=0.0, help="stop after the epoch that passes this budget")
    o.add_argument("--eval", action="store_true", help="print held-out prompt metrics of the best checkpoint")
    o.add_argument("--evaluate", metavar="CKPT", help="no training: score CKPT (and an untrained net of the "
                   "same architecture) on the validation data (--val-data or --val-synthetic)")
    return p


def evaluate_checkpoint(ckpt: str | Path, val: ArraySet, device: str = "cpu", seed: int = 0,
                        backbone_checkpoint: str | None = None) -> dict:
    """Held-out metrics of a checkpoint next to an untrained network of the same architecture.

    For DINOv2 the untrained network shares the checkpoint's frozen backbone; only its head is fresh.
    """
    model = load_hpg_checkpoint(ckpt, device, backbone_checkpoint)
    torch.manual_seed(seed)
    untrained = HPGNet(model.backbone_name, width=model.width, input_size=model.input_size,
                       head_channels=model.head_channels)
    if model.backbone is not None and model.backbone_name == "dinov2_vits14":
        untrained.backbone.load_state_dict(model.backbone.state_dict())
    return {"trained": evaluate_hpg(model, val, device=device),
            "untrained": evaluate_hpg(untrained, val, device=device)}


def main(argv: list[str] | None = None) -> int:
    """The CLI; under torchrun every process runs it with the same options (see training.dist)."""
    a = build_parser().parse_args(argv)
    with TrainerRun("uois-sam-train-hpg") as run:
        a.device = str(pick_device(a.device))  # 'auto' -> the device torch is given
        run.ctx = ctx = init_distributed(a.device)  # a plain run: one process, a.device unchanged
        a.device = str(ctx.device)
        if a.threads > 0:
            torch.set_num_threads(a.threads)
        dh, dw = DEFAULT_INPUT.get(a.backbone, (240, 320))
        size = (a.input_height or dh, a.input_width or dw)
        if a.evaluate:
            if not ctx.is_main:  # scoring is one process's job
                return 0
            size = load_hpg_checkpoint(a.evaluate, backbone_checkpoint=a.backbone_checkpoint).input_size
            if a.val_data:
                val = dataset_arrays(a.val_data, size)
            elif a.val_synthetic > 0:
                val = synthetic_arrays(a.val_synthetic, a.val_seed, size, desc="held-out scenes")
            else:
                raise TrainingError("--evaluate needs --val-data DIR or --val-synthetic M")
            res = evaluate_checkpoint(a.evaluate, val, a.device, a.seed, a.backbone_checkpoint)
            for k, m in res.items():
                print(f"{k:9s} " + " ".join(f"{n}={v:.4f}" for n, v in m.items()))
            return 0
        if not a.out:
            raise TrainingError("--out is required for training")
        check_backbone_args(a.backbone, size, a.backbone_checkpoint, a.random_backbone)
        ctx.check_divisible(a.batch_size, "--batch-size")
        with ctx.rank0_first():  # rank 0 writes the --cache files, the others then read them
            train, val = _load_data(a, size)
        ctx.check_same("the training / validation image counts", (len(train), len(val)))
        ctx.print(f"training on {len(train)} images, validating on {len(val)}, input {size[0]}x{size[1]}")
        meta = {"data": a.data or f"synthetic:{a.synthetic}@{a.synthetic_seed}", "data_fraction": a.data_fraction,
                "lr": a.lr, "batch_size": a.batch_size, "width": a.width}
        if ctx.enabled:
            meta["world_size"] = ctx.world_size
        res = train_hpg(train, val, a.out, backbone=a.backbone, width=a.width, head_channels=a.head_channels,
                        backbone_checkpoint=a.backbone_checkpoint, random_backbone=a.random_backbone,
                        epochs=a.epochs,
                        batch_size=a.batch_size, lr=a.lr, weight_decay=a.weight_decay, step_size=a.step_size,
                        gamma=a.gamma, ce_weight=a.ce_weight, hm_weight=a.hm_weight, sigma=a.sigma,
                        device=a.device, seed=a.seed, resume=a.resume,
                        log=a.log or Path(a.out).with_suffix(".csv"), max_minutes=a.max_minutes, meta=meta,
                        dist=ctx)
        if ctx.is_main:
            print(f"best validation loss {res['best_val_loss']:.5f}; checkpoint {res['checkpoint']}")
        if a.eval and ctx.is_main:
            model = load_hpg_checkpoint(a.out)
            print({k: round(v, 4) for k, v in evaluate_hpg(model, val, device=a.device).items()})
        return 0
    return run.code


if __name__ == "__main__":
    raise SystemExit(main())
