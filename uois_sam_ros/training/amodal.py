"""uois-sam-train-amodal: train the amodal completer, a SAMEO decoder or Amodal SAM's adapters.

--model completer  the shipped weights-free completer (core/amodal/completer.py): a small
    U-Net on each instance's RGB-D crop. Training samples are built once (cached in --work-dir):
    every instance of every training scene with its crop inputs (occluders from the depth
    occlusion order, exactly as at run time) and its amodal GT in the crop, plus TAOS
    occlusions pasted over unoccluded instances (their unoccluded originals stay in too: the
    dual annotation). Loss BCE + Dice on the crop; Adam, cosine decay; horizontal flips.
--model sameo      SAM's mask decoder fine-tuned for amodal masks (core/amodal/sameo.py): box
    prompts modal/amodal 50/50, Dice + Focal + 0.05 L1(IoU), Adam 1e-4, decoder only.
--model sca        Amodal SAM's Spatial Completion Adapters (core/amodal/sca.py), SAM frozen:
    Dice + 10 BCE + regional consistency, AdamW 1e-4 decaying to 5e-5.

Data: UOAIS-Sim-format folders whose json has amodal masks ('segmentation'), or, with
--visible-only, any visible-mask set in that layout, whose amodal pairs all come from TAOS.
--synthetic N renders generator scenes (with amodal masks) instead of reading a folder.

Like the other trainers: --max-minutes budget, --resume from --work-dir, a CSV log, --threads,
--device, --seed, the best checkpoint by validation, and OUT.json beside --out with the
command, the data and the held-out figures (--eval-data: mIoU_full / mIoU_occ against the
visible-mask and convex-hull baselines, and ms per instance).

Under torchrun every process runs the same command (training/dist.py): --batch-size (completer)
or --images-per-step (sameo/sca) is the global batch, each process takes its contiguous share of
it, and rank 0 writes the files.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from uois_sam_ros.core.amodal.completer import (
    DEFAULT_ARCH,
    CompleterNet,
    build_batch,
    check_arch,
    crop_target,
    save_completer,
)
from uois_sam_ros.core.amodal.occlusion import occlusion_order
from uois_sam_ros.core.amodal.taos import TaosParams, paste_occluder
from uois_sam_ros.core.weights import save_torch_atomic
from uois_sam_ros.training.common import CsvLog, HelpFormatter, TrainingError, pick_device
from uois_sam_ros.training.dist import DistContext, TrainerRun, init_distributed

STATE_VERSION = 1


@dataclass
class Scene:
    """One training image: visible and amodal masks (K, H, W) of its instances."""

    name: str
    rgb: np.ndarray
    depth: np.ndarray | None
    visible: np.ndarray
    amodal: np.ndarray


# ------------------------------------------------------------------------------------------ data
def scene_from_sample(s: Any, visible_only: bool = False) -> Scene:
    """A Scene from a core Sample; visible_only ignores the amodal masks (TAOS-only training)."""
    if s.label is None:
        raise TrainingError(f"{s.name} has no visible instance labels")
    if s.amodal is None or s.amodal_ids is None:
        if not visible_only:
            raise TrainingError(f"{s.name} has no amodal masks; use --visible-only for TAOS-only training")
        ids = np.unique(s.label[s.label > 0])
        vis = np.stack([s.label == i for i in ids]) if len(ids) else np.zeros((0, *s.label.shape), bool)
        return Scene(s.name, s.rgb, s.depth, vis, vis.copy())
    if len(s.amodal_ids) == 0:
        empty = np.zeros((0, *s.label.shape), bool)
        return Scene(s.name, s.rgb, s.depth, empty, empty.copy())
    vis = np.stack([s.label == i for i in s.amodal_ids])
    keep = vis.any(axis=(1, 2))  # fully hidden instances have no visible mask to complete
    vis, am = vis[keep], np.asarray(s.amodal, bool)[keep] | vis[keep]
    return Scene(s.name, s.rgb, s.depth, vis, vis.copy() if visible_only else am)


def read_scenes(path: str | Path | None, annotations: str | Path | None = None, limit: int | None = None,
                synthetic: int = 0, seed: int = 0, visible_only: bool = False) -> Iterator[Scene]:
    """Scenes of a UOAIS-Sim-style folder (annotations default DIR/annotations.json), or `synthetic`
    generator scenes from seed on."""
    if path:
        from uois_sam_ros.core.data.datasets import DatasetError, open_dataset

        root = Path(path)
        if not root.exists():
            raise TrainingError(f"dataset folder not found: {root}")
        if root.is_file():
            root, annotations = root.parent, root
        try:
            ds = open_dataset("uoais-sim", root, Path(annotations) if annotations else root / "annotations.json",
                              limit=limit)
            for i in range(len(ds)):
                yield scene_from_sample(ds[i], visible_only)
        except DatasetError as e:
            raise TrainingError(str(e)) from None
    elif synthetic > 0:
        from uois_sam_ros.core.data.synthetic import generate_scene

        for i in range(synthetic if limit is None else min(limit, synthetic)):
            yield scene_from_sample(generate_scene(seed + i).sample(), visible_only)
    else:
        raise TrainingError("give --data DIR (UOAIS-Sim-style folder with amodal masks) or --synthetic N")


def taos_scene(scene: Scene, source: Scene, rng: np.random.Generator, params: TaosParams,
               max_occlusion: float = 0.05, min_area: int = 200) -> tuple[Scene, int] | None:
    """TAOS on a scene: an (almost) unoccluded instance is the target, an instance of source the
    occluder. Returns the new scene (the occluder is an extra instance, the others lose the
    pixels it covers) and the target's index, or None when no pair fits."""
    k = len(scene.visible)
    if k == 0 or len(source.visible) == 0:
        return None
    va = scene.visible.reshape(k, -1).sum(1)
    aa = scene.amodal.reshape(k, -1).sum(1)
    ok = np.flatnonzero((va >= min_area) & (va >= (1 - max_occlusion) * aa))
    if len(ok) == 0:
        return None
    t = int(rng.choice(ok))
    o = int(rng.integers(len(source.visible)))
    if source is scene and o == t:
        o = (o + 1) % k
        if o == t:
            return None
    ts = paste_occluder(scene.rgb, scene.depth, scene.visible[t], source.rgb, source.depth, source.visible[o], rng,
                        params)
    if ts is None:
        return None
    vis = np.concatenate([scene.visible & ~ts.occluder, ts.occluder[None]])
    am = np.concatenate([scene.amodal, ts.occluder[None]])
    am[t] = scene.amodal[t]
    return Scene(scene.name + "+taos", ts.rgb, ts.depth, vis, am), t


def completer_samples(scene: Scene, arch: dict[str, Any], only: list[int] | None = None
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(inputs (M, 9, S, S) float16, amodal targets (M, S, S) bool, occluded flags (M,)) of a scene."""
    order = occlusion_order(scene.visible, scene.depth)
    b = build_batch(scene.rgb, scene.depth, scene.visible, order, arch, only=only)
    tg = np.stack([crop_target(scene.amodal[k], b.crops[k]) for k in b.index]) if len(b.index) else \
        np.zeros((0, arch["crop_size"], arch["crop_size"]), bool)
    occ = np.array([bool((scene.amodal[k] & ~scene.visible[k]).any()) for k in b.index], bool)
    return b.inputs.astype(np.float16), tg, occ


def build_completer_set(scenes: Iterator[Scene], arch: dict[str, Any], taos_per_scene: int, seed: int,
                        progress: bool = True, desc: str = "crops") -> dict[str, np.ndarray]:
    """All crops of all scenes, plus taos_per_scene TAOS samples per scene (occluders from the
    same or the previous scene)."""
    from tqdm import tqdm

    rng = np.random.default_rng([seed, 17])
    params = TaosParams()
    xs, ys, occ, taos = [], [], [], []
    prev: Scene | None = None
    for scene in tqdm(scenes, desc=desc, unit="scene", file=sys.stderr, disable=not progress):
        x, y, o = completer_samples(scene, arch)
        xs.append(x)
        ys.append(y)
        occ.append(o)
        taos.append(np.zeros(len(x), bool))
        for _ in range(taos_per_scene):
            src = prev if prev is not None and rng.random() < 0.5 else scene
            made = taos_scene(scene, src, rng, params)
            if made is None:
                continue
            ts, t = made
            x, y, o = completer_samples(ts, arch, only=[t])
            xs.append(x)
            ys.append(y)
            occ.append(o)
            taos.append(np.ones(len(x), bool))
        prev = scene
    if not xs:
        raise TrainingError("no training scenes")
    return {"x": np.concatenate(xs), "y": np.concatenate(ys), "occluded": np.concatenate(occ),
            "taos": np.concatenate(taos)}


def load_or_build(cache: Path | None, builder) -> dict[str, np.ndarray]:
    if cache is not None and cache.is_file():
        z = np.load(cache)
        return {k: z[k] for k in z.files}
    d = builder()
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(cache.stem + ".tmp.npz")
        np.savez(tmp, **d)
        tmp.replace(cache)
    return d


# ------------------------------------------------------------------------------------- completer
@dataclass
class CompleterSettings:
    epochs: float = 4.0
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 1e-4
    min_lr_ratio: float = 0.05
    dice_weight: float = 1.0
    taos_per_scene: int = 3
    augment: bool = True
    seed: int = 0


HIDE_WEIGHT = 4.0  # extra BCE weight where a hidden part can be (other instances, depth holes)


def pixel_weights(x: torch.Tensor) -> torch.Tensor:
    """(B, S, S) BCE weights from the crop inputs: 1 + HIDE_WEIGHT on the pixels the completion is
    decided on (other instances' pixels or depth holes inside the image, outside the visible mask),
    where the amodal GT differs from the visible mask; elsewhere the answer is nearly given."""
    vis, occ, oth, valid, inside = x[:, 5], x[:, 6], x[:, 7], x[:, 4], x[:, 8]
    hide = ((occ > 0.5) | (oth > 0.5) | (valid < 0.5)) & (vis < 0.5) & (inside > 0.5)
    return 1.0 + HIDE_WEIGHT * hide.float()


def completer_loss(logits: torch.Tensor, target: torch.Tensor, dice_weight: float = 1.0,
                   weight: torch.Tensor | None = None) -> torch.Tensor:
    """(Weighted) BCE over the crop + soft Dice of the amodal mask."""
    t = target.float()
    bce = F.binary_cross_entropy_with_logits(logits, t, weight=weight)
    p = logits.sigmoid().flatten(1)
    tf = t.flatten(1)
    dice = 1.0 - (2.0 * (p * tf).sum(1) + 1.0) / (p.sum(1) + tf.sum(1) + 1.0)
    return bce + dice_weight * dice.mean()


@torch.no_grad()
def completer_val(model: CompleterNet, val: dict[str, np.ndarray], device: torch.device, s: CompleterSettings,
                  dist: DistContext | None = None) -> dict[str, float]:
    """Crop-level validation: loss, and the IoU of the hidden part (p > 0.5 outside the visible
    channel) against the GT hidden part, over the occluded samples. With several processes each
    scores every N-th chunk of 256 crops and the sums are all-reduced."""
    model.eval()
    ctx = dist or DistContext()
    losses, inter, union = [], 0.0, 0.0
    starts = range(0, len(val["x"]), 256)
    for a in (starts[i] for i in ctx.strided(len(starts))):
        x = torch.from_numpy(val["x"][a:a + 256].astype(np.float32)).to(device)
        y = torch.from_numpy(val["y"][a:a + 256]).to(device)
        lg = model(x)
        losses.append(float(completer_loss(lg, y, s.dice_weight, pixel_weights(x))) * len(x))
        vis = x[:, 5] > 0.5
        occ = torch.from_numpy(val["occluded"][a:a + 256]).to(device)
        pred_h = (lg > 0) & ~vis & occ[:, None, None]
        gt_h = y & ~vis & occ[:, None, None]
        inter += float((pred_h & gt_h).sum())
        union += float((pred_h | gt_h).sum())
    loss_sum, inter, union = ctx.sum([float(np.sum(losses)), inter, union])
    return {"val_loss": float(loss_sum / max(len(val["x"]), 1)),
            "val_hidden_iou": inter / union if union else math.nan}


def _completer_shard_loss(model: CompleterNet, x: torch.Tensor, y: torch.Tensor, n_global: int, dice_weight: float,
                          world: int) -> tuple[torch.Tensor, torch.Tensor]:
    """This process's part of completer_loss over a global batch of n_global crops: its crops' BCE
    and Dice sums / the global batch's normalisers, times world (DDP's gradient average undoes it)."""
    logits = model(x)
    t = y.float()
    numel = n_global * t.shape[-2] * t.shape[-1]
    bce = F.binary_cross_entropy_with_logits(logits, t, weight=pixel_weights(x), reduction="sum") / numel
    p = logits.sigmoid().flatten(1)
    tf = t.flatten(1)
    dice = (1.0 - (2.0 * (p * tf).sum(1) + 1.0) / (p.sum(1) + tf.sum(1) + 1.0)).sum() / n_global
    part = bce + dice_weight * dice
    return world * part, part.detach()


def completer_batch(train: dict[str, np.ndarray], idx: np.ndarray, flip: np.ndarray | None, device: torch.device
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Crops idx (float32 inputs, bool targets) on device, flipped horizontally where flip is True."""
    x = torch.from_numpy(train["x"][idx].astype(np.float32)).to(device)
    y = torch.from_numpy(train["y"][idx]).to(device)
    if flip is not None:
        f = torch.from_numpy(flip).to(device)
        x = torch.where(f[:, None, None, None], x.flip(-1), x)
        y = torch.where(f[:, None, None], y.flip(-1), y)
    return x, y


def shard_completer_step(model: CompleterNet, step: torch.nn.Module, opt: torch.optim.Optimizer,
                         train: dict[str, np.ndarray], idx: np.ndarray, flip: np.ndarray | None,
                         s: CompleterSettings, device: torch.device, ctx: DistContext) -> float:
    """One optimiser step on the global batch idx (its flips drawn by every process), this process
    taking ctx.shard of it; the global batch's mean loss. Equals the single-process step."""
    part = ctx.shard(len(idx))
    x, y = completer_batch(train, idx[part], None if flip is None else flip[part], device)
    model.train()
    loss, mine = step(x, y, len(idx), s.dice_weight, ctx.world_size)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return ctx.sum([float(mine)])[0]


def train_completer(train: dict[str, np.ndarray], val: dict[str, np.ndarray], out: str | Path, work_dir: str | Path,
                    arch: dict[str, Any], s: CompleterSettings, device: str = "cpu", resume: bool = False,
                    max_minutes: float = 0.0, meta: dict | None = None, progress: bool = True,
                    dist: DistContext | None = None) -> dict[str, Any]:
    """Train on prepared crops; the best-val_loss checkpoint goes to out (fp16, with arch + meta).

    dist: several processes (see training.dist): s.batch_size is the global batch, device is
    dist.device, rank 0 writes the files; the clock of the budget is the slowest process's."""
    from tqdm import tqdm

    ctx = dist or DistContext()
    progress = progress and ctx.is_main
    ctx.check_divisible(s.batch_size, "--batch-size")
    dev = torch.device(device)
    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    state_path = work / "completer_last.pt"
    torch.manual_seed(s.seed)
    model = CompleterNet(arch["widths"]).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=s.lr, weight_decay=s.weight_decay)
    n = len(train["x"])
    steps_per_epoch = max(1, n // s.batch_size)
    total_steps = max(1, int(round(s.epochs * steps_per_epoch)))
    step, best, best_step, history, prior_s = 0, math.inf, -1, [], 0.0
    st = torch.load(state_path, map_location="cpu", weights_only=True) if resume and state_path.is_file() else None
    ctx.raise_any(f"{state_path} is from another run (arch or format differs); drop --resume"
                  if st is not None and (st.get("version") != STATE_VERSION or st.get("arch") != arch) else None)
    if st is not None:
        model.load_state_dict(st["model"])
        opt.load_state_dict(st["optimizer"])
        step, best, best_step, prior_s = int(st["step"]), float(st["best"]), int(st["best_step"]), float(st["seconds"])
        history = list(st.get("history", []))
    step_fn = ctx.wrap(model, _completer_shard_loss) if ctx.enabled else None
    log = CsvLog(work / "completer_log.csv", ["step", "epoch", "lr", "train_loss", "val_loss", "val_hidden_iou",
                                              "best", "seconds"]) if ctx.is_main else None
    t0 = time.time()
    budget = max_minutes * 60.0

    def elapsed() -> float:
        return prior_s + time.time() - t0

    def clock() -> float:
        """elapsed() for the budget's stop and learning-rate decisions: the same on every process."""
        return ctx.max(elapsed()) if ctx.enabled and budget > 0 else elapsed()

    def save_state() -> None:
        if not ctx.is_main:
            return
        save_torch_atomic({"version": STATE_VERSION, "arch": arch, "step": step, "best": best,
                           "best_step": best_step, "seconds": elapsed(), "history": history,
                           "model": model.state_dict(), "optimizer": opt.state_dict()}, state_path)

    untrained = completer_val(model, val, dev, s, ctx) if step == 0 else None
    rng = np.random.default_rng([s.seed, 3])
    bar = tqdm(total=total_steps, initial=step, desc="train completer", unit="step", file=sys.stderr,
               disable=not progress)
    run_loss, run_n = 0.0, 0
    while step < total_steps and not (budget > 0 and clock() >= budget):
        frac = min(1.0, max(step / total_steps, clock() / budget if budget > 0 else 0.0))
        lr = s.lr * (s.min_lr_ratio + (1 - s.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * frac)))
        for g in opt.param_groups:
            g["lr"] = lr
        epoch_rng = np.random.default_rng([s.seed, step // steps_per_epoch])
        perm = epoch_rng.permutation(n)
        idx = np.sort(perm[(step % steps_per_epoch) * s.batch_size:][:s.batch_size])
        flip = rng.random(len(idx)) < 0.5 if s.augment else None  # every process draws the global batch's
        if step_fn is not None:
            run_loss += shard_completer_step(model, step_fn, opt, train, idx, flip, s, dev, ctx)
        else:
            x, y = completer_batch(train, idx, flip, dev)
            model.train()
            loss = completer_loss(model(x), y, s.dice_weight, pixel_weights(x))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            run_loss += float(loss.detach())
        run_n += 1
        step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{run_loss / run_n:.4f}", lr=f"{lr:.1e}")
        done = step >= total_steps or (budget > 0 and clock() >= budget)
        if step % steps_per_epoch == 0 or done:
            v = completer_val(model, val, dev, s, ctx)
            improved = v["val_loss"] < best
            if improved:
                best, best_step = v["val_loss"], step
            if improved and ctx.is_main:
                save_completer(out, model, arch, {**(meta or {}), "step": step, **v})
            history.append({"step": step, "epoch": round(step / steps_per_epoch, 3), **v,
                            "train_loss": run_loss / max(run_n, 1)})
            if log:
                log.write({"step": step, "epoch": round(step / steps_per_epoch, 3), "lr": lr,
                          "train_loss": run_loss / max(run_n, 1), **v, "best": int(improved),
                          "seconds": round(elapsed(), 1)})
            if progress:
                print(f"step {step}: val loss {v['val_loss']:.4f} hidden IoU {v['val_hidden_iou']:.3f}"
                      f"{' (best)' if improved else ''}", file=sys.stderr)
            run_loss, run_n = 0.0, 0
            save_state()
    bar.close()
    return {"best_val_loss": best, "best_step": best_step, "steps": step, "history": history,
            "untrained": untrained, "seconds": elapsed(), "steps_per_epoch": steps_per_epoch,
            "parameters": sum(p.numel() for p in model.parameters())}


# ------------------------------------------------------------------------------- held-out figures
def heldout_figures(checkpoint: str | Path, path: str | Path, annotations: str | Path | None = None,
                    device: str = "cpu") -> tuple[int, dict[str, dict[str, float]]]:
    """(scenes, figures): mIoU_full / mIoU_occ (x100), AP figures and ms per instance of the
    completer and the two baselines on a held-out UOAIS-Sim folder, GT visible masks as input
    (the papers' protocol), through the same evaluation as uois-sam-eval --task amodal."""
    from uois_sam_ros.core.amodal.stage import AmodalStage, evaluate_amodal
    from uois_sam_ros.core.config import AmodalConfig
    from uois_sam_ros.core.data.datasets import DatasetError, open_dataset

    root = Path(path)
    try:
        ds = open_dataset("uoais-sim", root, Path(annotations) if annotations else root / "annotations.json")
    except DatasetError as e:
        raise TrainingError(str(e)) from None
    stages = {"completer": AmodalStage(AmodalConfig(method="completer", checkpoint=str(checkpoint), device=device)),
              "convex_hull": AmodalStage(AmodalConfig(method="convex_hull", device=device)),
              "visible": AmodalStage(AmodalConfig(method="visible", device=device))}
    return len(ds), evaluate_amodal((ds[i] for i in range(len(ds))), stages)


# ------------------------------------------------------------------------------------ SAMEO / SCA
@dataclass
class SamSettings:
    steps: int = 200
    images_per_step: int = 2
    lr: float = 1e-4
    final_lr: float = 5e-5  # sca: AdamW decays from lr to this (the paper: 1e-4 to 5e-5)
    taos_prob: float = 0.5  # chance that an image also gets a TAOS occlusion
    max_instances: int = 8  # instances per image per step
    modal_prob: float = 0.5  # sameo: chance of the modal box as the prompt
    box_expand: float = 0.2  # sca: box prompt / prior expansion
    reg_weight: float = 1.0  # sca: weight of the regional-consistency loss
    val_every: int = 50
    seed: int = 0


def sam_items(model: Any, scenes: list[Scene], rng: np.random.Generator, s: SamSettings, taos: bool = True) -> list:
    """AmodalItems for a batch of scenes: at most max_instances instances each, plus (with
    probability taos_prob) a TAOS version of the scene whose unoccluded original stays too."""
    from uois_sam_ros.core.amodal.sameo import prepare_item

    items = []
    for sc in scenes:
        variants = [sc]
        if taos and rng.random() < s.taos_prob:
            made = taos_scene(sc, sc, rng, TaosParams())
            if made is not None:
                variants.append(made[0])
        for v in variants:
            k = len(v.visible)
            if k == 0:
                continue
            idx = np.sort(rng.choice(k, size=min(k, s.max_instances), replace=False))
            items.append(prepare_item(model, v.rgb, v.visible[idx], v.amodal[idx], v.depth))
    return items


@torch.no_grad()
def sam_val(model: Any, items: list, sca: Any = None, box_expand: float = 0.2, dist: DistContext | None = None
            ) -> dict[str, float]:
    """mIoU_full / mIoU_occ (x100) on prepared held-out items, visible boxes as prompts. With
    several processes each scores every N-th item and the IoU sums are all-reduced."""
    from uois_sam_ros.core.amodal.sameo import mask_boxes, predict_item
    from uois_sam_ros.core.amodal.sca import box_prior, expand_boxes
    from uois_sam_ros.core.eval.amodal_metrics import AmodalAccumulator

    ctx = dist or DistContext()
    acc = AmodalAccumulator()
    size = int(model.image_encoder.img_size)
    for i in ctx.strided(len(items)):
        it = items[i]
        if sca is None:
            am, _ = predict_item(model, it)
        else:
            h, w = it.input_hw
            boxes = expand_boxes(mask_boxes(it.visible), box_expand, w, h)
            am = np.zeros_like(it.visible)
            for k in range(len(it.visible)):
                emb = sca.encode(model.image_encoder, it.image, box_prior(boxes[k:k + 1], size, it.image.device))
                am[k:k + 1], _ = predict_item(model, type(it)(it.image, it.input_hw, it.original_hw,
                                                               it.visible[k:k + 1], it.amodal[k:k + 1]),
                                              boxes[k:k + 1].numpy(), emb)
        acc.add(str(i), it.amodal, it.visible, am)
    full, n_full, occ, n_occ = ctx.sum([float(np.sum(acc.full)), len(acc.full), float(np.sum(acc.occ)), len(acc.occ)])
    # = acc.means()'s 100 * mean over the instances, on one process
    return {"val_miou_full": 100.0 * full / n_full if n_full else math.nan,
            "val_miou_occ": 100.0 * occ / n_occ if n_occ else math.nan}


def _zero_loss(model: torch.nn.Module) -> torch.Tensor:
    """0 on every trained parameter: a process with nothing in a step still joins the gradient
    average (DDP expects a gradient for each of them)."""
    return sum(p.sum() for p in model.parameters() if p.requires_grad) * 0.0


def _sameo_shard_loss(model: Any, items: list, boxes: list[np.ndarray], n_items: int, world: int
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """This process's part of sameo_step's loss: the sum of its items' losses (each as sameo_step
    computes it, with the boxes drawn already) / n_items (the global batch's items), times world
    (DDP's gradient average undoes it)."""
    from uois_sam_ros.core.amodal.sameo import crop_logits, decode_boxes, item_targets, sameo_loss

    if not items:
        return _zero_loss(model), torch.zeros(())
    total = torch.zeros((), device=items[0].image.device)
    for item, b in zip(items, boxes, strict=True):
        if item.embedding is not None:
            emb = item.embedding
        else:
            with torch.no_grad():
                emb = model.image_encoder(item.image)
        gt, grid = item_targets(model, item)
        logits, iou = decode_boxes(model, emb, torch.from_numpy(b).to(emb.device))
        total = total + sameo_loss(crop_logits(logits, grid), iou, gt)[0]
    return total * (world / n_items), total.detach() / n_items


def _sca_shard_loss(parts: torch.nn.ModuleDict, items: list, picks: list[np.ndarray], n_items: int,
                    box_expand: float, reg_weight: float, world: int) -> tuple[torch.Tensor, torch.Tensor]:
    """This process's part of sca_step's loss (parts: 'sam' and its 'sca' adapters): the sum of its
    items' losses, each as sca_step computes it with the instances drawn already (picks), / n_items,
    times world (DDP's gradient average undoes it)."""
    from uois_sam_ros.core.amodal.sca import sca_item_loss

    model, sca = parts["sam"], parts["sca"]
    if not items:
        return _zero_loss(sca), torch.zeros(())
    total = torch.zeros((), device=items[0].image.device)
    for item, idx in zip(items, picks, strict=True):
        total = total + sca_item_loss(model, sca, item, idx, box_expand, reg_weight)[0]
    return total * (world / n_items), total.detach() / n_items


def shard_sam_step(kind: str, model: Any, sca: Any, step: torch.nn.Module, opt: torch.optim.Optimizer,
                   scenes: list[Scene], rng: np.random.Generator, s: SamSettings, ctx: DistContext
                   ) -> dict[str, float]:
    """sameo_step / sca_step on a global batch of scenes, this process taking ctx.shard of the
    scenes (with their TAOS copies). Every process prepares every scene's items and draws every
    item's boxes (sameo) or instances (sca) from rng in order, the single-process stream, so all
    know the global item count, the loss normaliser. {} when no item has an instance (no step,
    on every process, as on one). Returns the global batch's mean loss."""
    from uois_sam_ros.core.amodal.sameo import pick_boxes

    per_scene = [sam_items(model, [sc], rng, s) for sc in scenes]  # = sam_items(model, scenes, rng, s)
    items = [(j, it) for j, its in enumerate(per_scene) for it in its]
    draws: list[np.ndarray | None] = []
    for _, it in items:  # in the order sameo_step / sca_step draw
        k = len(it.amodal)
        if k == 0:
            draws.append(None)
        elif kind == "sameo":
            draws.append(pick_boxes(it.visible, it.amodal, rng, s.modal_prob))
        else:
            draws.append(np.sort(rng.choice(k, size=min(k, s.max_instances), replace=False)))
    n_items = sum(d is not None for d in draws)
    if n_items == 0:
        return {}
    share = set(range(len(scenes))[ctx.shard(len(scenes))])
    mine = [i for i, (j, _) in enumerate(items) if j in share and draws[i] is not None]
    trained = model.mask_decoder if sca is None else sca
    trained.train()
    args = ([items[i][1] for i in mine], [draws[i] for i in mine], n_items)
    if sca is None:
        loss, part = step(*args, ctx.world_size)
    else:
        loss, part = step(*args, s.box_expand, s.reg_weight, ctx.world_size)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    trained.eval()
    return {"loss": ctx.sum([float(part)])[0]}


def train_sam_amodal(kind: str, model: Any, train: list[Scene], val: list[Scene], out: str | Path,
                     work_dir: str | Path, s: SamSettings, resume: bool = False, max_minutes: float = 0.0,
                     meta: dict | None = None, progress: bool = True, dist: DistContext | None = None
                     ) -> dict[str, Any]:
    """SAMEO decoder (kind 'sameo') or SCA adapters (kind 'sca') on scenes; the checkpoint with the
    best validation mIoU_full + mIoU_occ goes to out, with the untrained figures in its meta.

    dist: several processes (see training.dist): s.images_per_step is the global batch, model is
    on dist.device, rank 0 writes the files; the clock of the budget is the slowest process's."""
    from tqdm import tqdm

    from uois_sam_ros.core.amodal.sameo import decoder_optimizer, sameo_step, save_decoder
    from uois_sam_ros.core.amodal.sca import SpatialCompletion, adapter_optimizer, save_sca, sca_step

    ctx = dist or DistContext()
    progress = progress and ctx.is_main
    ctx.check_divisible(s.images_per_step, "--images-per-step")
    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    state_path = work / f"{kind}_last.pt"
    dev = next(model.parameters()).device
    torch.manual_seed(s.seed)
    sca = None
    if kind == "sameo":
        opt = decoder_optimizer(model, s.lr)
    else:
        sca = SpatialCompletion.for_encoder(model.image_encoder).to(dev)
        sca.attach(model.image_encoder)
        opt = adapter_optimizer(model, sca, s.lr)
    trained = model.mask_decoder if sca is None else sca
    step, best, best_step, history, prior_s = 0, -math.inf, -1, [], 0.0
    vrng = np.random.default_rng([s.seed, 99])
    val_items = sam_items(model, val, vrng, s, taos=False)
    untrained = sam_val(model, val_items, sca, s.box_expand, ctx)
    st = torch.load(state_path, map_location="cpu", weights_only=True) if resume and state_path.is_file() else None
    ctx.raise_any(f"{state_path} is from another kind of run; drop --resume"
                  if st is not None and (st.get("version") != STATE_VERSION or st.get("kind") != kind) else None)
    if st is not None:
        trained.load_state_dict(st["model"])
        opt.load_state_dict(st["optimizer"])
        step, best, best_step, prior_s = int(st["step"]), float(st["best"]), int(st["best_step"]), float(st["seconds"])
        history, untrained = list(st.get("history", [])), st.get("untrained", untrained)
    step_fn = None
    if ctx.enabled:  # DDP over the trained part: the decoder's parameters, or the adapters'
        step_fn = ctx.wrap(model, _sameo_shard_loss) if sca is None else \
            ctx.wrap(torch.nn.ModuleDict({"sam": model, "sca": sca}), _sca_shard_loss)
    log = CsvLog(work / f"{kind}_log.csv", ["step", "lr", "train_loss", "val_miou_full", "val_miou_occ", "best",
                                            "seconds"]) if ctx.is_main else None
    t0 = time.time()
    budget = max_minutes * 60.0

    def elapsed() -> float:
        return prior_s + time.time() - t0

    def clock() -> float:
        """elapsed() for the budget's stop decisions: the same on every process."""
        return ctx.max(elapsed()) if ctx.enabled and budget > 0 else elapsed()

    def save(v: dict) -> None:
        m = {**(meta or {}), "step": step, **v, "untrained": untrained}
        if sca is None:
            save_decoder(out, model, m)
        else:
            save_sca(out, sca, m)

    bar = tqdm(total=s.steps, initial=step, desc=f"train {kind}", unit="step", file=sys.stderr, disable=not progress)
    losses: list[float] = []
    while step < s.steps and not (budget > 0 and clock() >= budget):
        rng = np.random.default_rng([s.seed, step])
        pick = rng.choice(len(train), size=min(s.images_per_step, len(train)), replace=False)
        lr = s.lr
        if sca is not None:
            lr = s.lr + (s.final_lr - s.lr) * step / max(s.steps - 1, 1)
            for g in opt.param_groups:
                g["lr"] = lr
        if step_fn is not None:
            r = shard_sam_step(kind, model, sca, step_fn, opt, [train[i] for i in pick], rng, s, ctx)
        elif sca is None:
            r = sameo_step(model, opt, sam_items(model, [train[i] for i in pick], rng, s), rng, s.modal_prob)
        else:
            r = sca_step(model, sca, opt, sam_items(model, [train[i] for i in pick], rng, s), rng, s.box_expand,
                         s.reg_weight, s.max_instances)
        if r:
            losses.append(r["loss"])
        step += 1
        bar.update(1)
        done = step >= s.steps or (budget > 0 and clock() >= budget)
        if step % s.val_every == 0 or done:
            v = sam_val(model, val_items, sca, s.box_expand, ctx)
            score = v["val_miou_full"] + v["val_miou_occ"]
            improved = score > best
            if improved:
                best, best_step = score, step
            if improved and ctx.is_main:
                save(v)
            history.append({"step": step, **v, "train_loss": float(np.mean(losses)) if losses else math.nan})
            if log:
                log.write({"step": step, "lr": lr, "train_loss": float(np.mean(losses)) if losses else "", **v,
                           "best": int(improved), "seconds": round(elapsed(), 1)})
            losses = []
            if ctx.is_main:
                save_torch_atomic({"version": STATE_VERSION, "kind": kind, "step": step, "best": best,
                                   "best_step": best_step, "seconds": elapsed(), "history": history,
                                   "untrained": untrained, "model": trained.state_dict(),
                                   "optimizer": opt.state_dict()}, state_path)
    bar.close()
    if sca is not None:
        sca.detach()
    return {"untrained": untrained, "history": history, "best_step": best_step, "steps": step,
            "seconds": elapsed()}


# ------------------------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="uois-sam-train-amodal", description=__doc__.splitlines()[0],
                                formatter_class=HelpFormatter)
    p.add_argument("--model", required=True, choices=("completer", "sameo", "sca"), help="what to train")
    d = p.add_argument_group("data")
    d.add_argument("--data", help="UOAIS-Sim-style folder (json with amodal 'segmentation' masks)")
    d.add_argument("--annotations", help="COCO json of --data (default DATA/annotations.json)")
    d.add_argument("--synthetic", type=int, default=0, help="instead: render N generator scenes (with amodal masks)")
    d.add_argument("--synthetic-seed", type=int, default=0, help="seed of the first synthetic scene")
    d.add_argument("--visible-only", action="store_true",
                   help="ignore the json's amodal masks: every amodal pair comes from TAOS (any visible-mask set)")
    d.add_argument("--limit", type=int, help="read at most N training scenes")
    d.add_argument("--val-data", help="validation folder (default: --val-split of the training scenes)")
    d.add_argument("--val-annotations", help="COCO json of --val-data")
    d.add_argument("--val-limit", type=int, default=60, help="most validation scenes")
    d.add_argument("--val-split", type=float, default=0.1, help="fraction held out when no --val-data")
    d.add_argument("--eval-data", help="held-out folder for the figures in OUT.json (never trained on)")
    d.add_argument("--eval-annotations", help="COCO json of --eval-data")
    t = p.add_argument_group("training")
    cs, ss = CompleterSettings(), SamSettings()
    t.add_argument("--epochs", type=float, default=cs.epochs, help="completer: passes over the crops")
    t.add_argument("--batch-size", type=int, default=cs.batch_size, help="completer: crops per step")
    t.add_argument("--lr", type=float, help=f"learning rate (completer {cs.lr:g}, sameo/sca {ss.lr:g})")
    t.add_argument("--taos-per-scene", type=int, default=cs.taos_per_scene,
                   help="completer: TAOS occlusions added per training scene")
    t.add_argument("--arch", help="completer: JSON object overriding DEFAULT_ARCH, e.g. '{\"crop_size\": 48}'")
    t.add_argument("--steps", type=int, default=ss.steps, help="sameo/sca: optimiser steps")
    t.add_argument("--images-per-step", type=int, default=ss.images_per_step, help="sameo/sca: images per step")
    t.add_argument("--taos-prob", type=float, default=ss.taos_prob, help="sameo/sca: chance of a TAOS copy per image")
    t.add_argument("--max-instances", type=int, default=ss.max_instances, help="sameo/sca: instances per image")
    t.add_argument("--val-every", type=int, default=ss.val_every, help="sameo/sca: steps between validations")
    t.add_argument("--sam-type", default="vit_synth", help="sameo/sca: sam.model_type of the SAM")
    t.add_argument("--sam-checkpoint", help="sameo/sca: its checkpoint (default: the shipped small SAM)")
    t.add_argument("--box-expand", type=float, default=ss.box_expand, help="sca: box prompt / prior expansion")
    o = p.add_argument_group("run")
    o.add_argument("--out", required=True, help="checkpoint to write (OUT.json beside it)")
    o.add_argument("--work-dir", default="out/train_amodal",
                   help="cached crops, resume state and CSV log; keep it outside the package folder")
    o.add_argument("--resume", action="store_true", help="continue from WORK_DIR's last state")
    o.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    o.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")
    o.add_argument("--seed", type=int, default=0, help="seed of initialisation, sampling, TAOS and splits")
    o.add_argument("--max-minutes", type=float, default=0.0, help="wall-clock budget of training (0 = none)")
    o.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def _scenes(a: argparse.Namespace) -> tuple[list[Scene], list[Scene]]:
    train = list(read_scenes(a.data, a.annotations, a.limit, a.synthetic, a.synthetic_seed, a.visible_only))
    if not train:
        raise TrainingError("no training scenes")
    if a.val_data:
        val = list(read_scenes(a.val_data, a.val_annotations, a.val_limit, visible_only=a.visible_only))
    else:
        n_val = max(1, int(round(a.val_split * len(train))))
        if n_val >= len(train):
            raise TrainingError(f"{len(train)} scenes are too few to hold out {n_val} for validation")
        perm = np.random.default_rng(a.seed).permutation(len(train))
        val = [train[i] for i in np.sort(perm[:n_val])][: a.val_limit]
        train = [train[i] for i in np.sort(perm[n_val:])]
    return train, val


def _main_completer(a: argparse.Namespace, meta: dict, dev: str, ctx: DistContext) -> dict:
    arch = dict(DEFAULT_ARCH)
    if a.arch:
        try:
            arch.update(json.loads(a.arch))
        except (json.JSONDecodeError, TypeError) as e:
            raise TrainingError(f"--arch is not a JSON object: {e}") from None
    try:
        arch = check_arch(arch, "--arch")
    except ValueError as e:
        raise TrainingError(str(e)) from None
    s = CompleterSettings(epochs=a.epochs, batch_size=a.batch_size, lr=a.lr or CompleterSettings.lr,
                          taos_per_scene=a.taos_per_scene, seed=a.seed)
    ctx.check_divisible(s.batch_size, "--batch-size")
    work = Path(a.work_dir)
    with ctx.rank0_first():  # rank 0 writes the cached crops (--val-data), the others then read them
        train, val = _completer_sets(a, arch, s, work, not a.quiet and ctx.is_main)
    ctx.check_same("the training / validation crop counts", (len(train["x"]), len(val["x"])))
    ctx.print(f"completer: {len(train['x'])} training crops ({int(train['taos'].sum())} TAOS, "
              f"{int(train['occluded'].sum())} occluded), {len(val['x'])} validation crops")
    res = train_completer(train, val, a.out, work, arch, s, dev, a.resume, a.max_minutes, meta, not a.quiet, ctx)
    doc = {"checkpoint": Path(a.out).name, "arch": arch, "parameters": res["parameters"],
           "training": {**meta, "settings": asdict(s), "train_crops": int(len(train["x"])),
                        "train_taos_crops": int(train["taos"].sum()), "val_crops": int(len(val["x"])),
                        "steps_run": res["steps"], "steps_per_epoch": res["steps_per_epoch"],
                        "best_step": res["best_step"], "seconds": round(res["seconds"], 1),
                        "untrained": res["untrained"], "val_history": res["history"]}}
    if a.eval_data and Path(a.out).is_file() and ctx.is_main:  # scoring is one process's job
        n_scenes, figs = heldout_figures(a.out, a.eval_data, a.eval_annotations, dev)
        doc["heldout"] = {"data": a.eval_data, "scenes": n_scenes, "protocol": "GT visible masks as input "
                          "(--visible gt); mIoU x100, mIoU_occ over occluded instances", "methods": figs}
        for m, f in figs.items():
            print(f"{m:12s} mIoU_full {f['mIoU_full']:.2f}  mIoU_occ {f['mIoU_occ']:.2f}  "
                  f"ms/instance {f['ms_per_instance']:.2f}")
    return doc


def _completer_sets(a: argparse.Namespace, arch: dict[str, Any], s: CompleterSettings, work: Path,
                    progress: bool) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The training and validation crops (cached in work with --val-data)."""
    tag = f"{Path(a.data).name if a.data else f'synthetic{a.synthetic}'}_{a.limit}_{a.taos_per_scene}_{a.seed}_" \
          f"{arch['crop_size']}{'_vis' if a.visible_only else ''}"
    if a.val_data:
        train = load_or_build(work / f"crops_train_{tag}.npz", lambda: build_completer_set(
            read_scenes(a.data, a.annotations, a.limit, a.synthetic, a.synthetic_seed, a.visible_only), arch,
            s.taos_per_scene, s.seed, progress, "train crops"))
        val = load_or_build(work / f"crops_val_{Path(a.val_data).name}_{a.val_limit}_{arch['crop_size']}.npz",
                            lambda: build_completer_set(read_scenes(a.val_data, a.val_annotations, a.val_limit), arch,
                                                        0, s.seed, progress, "val crops"))
    else:
        tr, va = _scenes(a)
        train = build_completer_set(iter(tr), arch, s.taos_per_scene, s.seed, progress, "train crops")
        val = build_completer_set(iter(va), arch, 0, s.seed, progress, "val crops")
    return train, val


def _main_sam(a: argparse.Namespace, meta: dict, dev: str, ctx: DistContext) -> dict:
    from uois_sam_ros.core.segment.sam_backend import default_sam_checkpoint, load_sam

    ckpt = a.sam_checkpoint or (str(default_sam_checkpoint(a.sam_type)) if default_sam_checkpoint(a.sam_type) else None)
    if ckpt is None:
        raise TrainingError(f"--sam-checkpoint is needed for {a.sam_type} (no shipped checkpoint)")
    ctx.check_divisible(a.images_per_step, "--images-per-step")
    model = load_sam(a.sam_type, ckpt, device=dev)
    with ctx.rank0_first():  # a folder that cannot be read: rank 0 says so, the others stop quietly
        train, val = _scenes(a)
    ctx.check_same("the training / validation scene counts", (len(train), len(val)))
    s = SamSettings(steps=a.steps, images_per_step=a.images_per_step, lr=a.lr or SamSettings.lr,
                    taos_prob=a.taos_prob, max_instances=a.max_instances, box_expand=a.box_expand,
                    val_every=a.val_every, seed=a.seed)
    res = train_sam_amodal(a.model, model, train, val, a.out, a.work_dir, s, a.resume, a.max_minutes,
                           {**meta, "sam_type": a.sam_type, "sam_checkpoint": ckpt}, not a.quiet, ctx)
    best = next((h for h in res["history"] if h["step"] == res["best_step"]), None)
    if best and ctx.is_main:
        print(f"{a.model}: best val mIoU_full {best['val_miou_full']:.2f} mIoU_occ {best['val_miou_occ']:.2f} "
              f"at step {res['best_step']} (untrained {res['untrained']['val_miou_full']:.2f} / "
              f"{res['untrained']['val_miou_occ']:.2f})")
    return {"checkpoint": Path(a.out).name, "training": {**meta, "settings": asdict(s), "sam_type": a.sam_type,
                                                         "sam_checkpoint": ckpt, **res}}


def main(argv: list[str] | None = None) -> int:
    """The CLI; under torchrun every process runs it with the same options (see training.dist)."""
    a = build_parser().parse_args(argv)
    with TrainerRun("uois-sam-train-amodal") as run:
        dev = str(pick_device(a.device))  # 'auto' -> the device torch is given
        run.ctx = ctx = init_distributed(dev)  # a plain run: one process, dev unchanged
        dev = str(ctx.device)
        if a.threads > 0:
            torch.set_num_threads(a.threads)
        meta = {"command": "uois-sam-train-amodal " + shlex.join(sys.argv[1:] if argv is None else argv),
                "data": a.data or f"synthetic:{a.synthetic}@{a.synthetic_seed}",
                "val_data": a.val_data or f"{a.val_split} split", "device": dev}
        if ctx.enabled:
            meta["world_size"] = ctx.world_size
        doc = _main_completer(a, meta, dev, ctx) if a.model == "completer" else _main_sam(a, meta, dev, ctx)
        out = Path(a.out)
        if ctx.is_main and out.is_file():
            out.with_suffix(".json").write_text(json.dumps(doc, indent=1, default=float))
            print(f"checkpoint {out} ({out.stat().st_size / 1e6:.2f} MB), notes {out.with_suffix('.json')}")
        elif ctx.is_main:
            print("no checkpoint written (no validation ran)", file=sys.stderr)
        return 0
    return run.code


if __name__ == "__main__":
    raise SystemExit(main())
