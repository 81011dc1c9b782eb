"""uois-sam-train-hdnet: train HDNet's IoU correction on a frozen SAM (UOIS-SAM eqs. 5-7).

Per image, M prompts are sampled inside the GT visible masks (objects drawn uniformly, then a
pixel inside the object) plus background prompts. SAM decodes all 4 mask tokens per prompt;
the target of each token (eq. 6) is IoU(SAM mask, GT mask) for object prompts and 0 for
background prompts; the loss is the MSE between the adapted IoU (SAM IoU + HDNet) and the
target (eq. 7). SAM is frozen, so its image embeddings are computed once and cached on
disk: every epoch after the first skips the encoder, and prompts are re-sampled each epoch.

The cache is keyed by content, never by names: one folder per SAM (model type, image size and
the sha256 of its checkpoint file, or of its random weights), one file per image (the sha256 of
its RGB array). The checkpoint records the SAM it was trained on (core.segment.hdnet.sam_record).
"""

from __future__ import annotations

import argparse
import hashlib
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from uois_sam_ros.core.config import SamConfig, resolve_device
from uois_sam_ros.core.segment.hdnet import HDNet, load_hdnet, ranked_first, sam_record, save_hdnet
from uois_sam_ros.core.segment.sam_backend import SamSegmenter
from uois_sam_ros.core.types import Frame, Prompts, Sample
from uois_sam_ros.training.common import (
    Budget,
    CsvLog,
    HelpFormatter,
    TrainingError,
    fraction_indices,
)
from uois_sam_ros.training.dist import DistContext, TrainerRun, init_distributed


def sample_prompts(label: np.ndarray, num_fg: int, num_bg: int,
                   rng: np.random.Generator) -> tuple[Prompts, np.ndarray]:
    """num_fg points inside visible masks (object chosen uniformly) + num_bg on background.

    Returns the prompts (x, y pixel centres) and the GT id under each (0 = background).
    """
    ids = [int(i) for i in np.unique(label) if i != 0]
    pts, owner = [], []
    if ids and num_fg > 0:
        for oid in rng.choice(ids, size=num_fg, replace=True):
            ys, xs = np.nonzero(label == oid)
            j = int(rng.integers(len(xs)))
            pts.append((xs[j], ys[j]))
            owner.append(int(oid))
    bys, bxs = np.nonzero(label == 0)
    if len(bxs) and num_bg > 0:
        for j in rng.integers(len(bxs), size=num_bg):
            pts.append((bxs[j], bys[j]))
            owner.append(0)
    if not pts:
        raise TrainingError("image has neither object nor background pixels to prompt")
    p = np.asarray(pts, np.float32)
    return Prompts(p, np.ones(len(p), np.int64), np.ones(len(p), np.float32)), np.asarray(owner, np.int64)


def iou_targets(masks: torch.Tensor, label: torch.Tensor, owner: torch.Tensor) -> torch.Tensor:
    """Eq. 6: (K, 4, H, W) bool SAM masks -> (K, 4) IoU with the prompt's GT mask; 0 on background."""
    gt = label[None] == owner[:, None, None]  # (K, H, W)
    gt = gt[:, None]
    inter = (masks & gt).flatten(2).sum(-1).float()
    union = (masks | gt).flatten(2).sum(-1).float()
    iou = inter / union.clamp(min=1)
    return torch.where(owner[:, None] > 0, iou, torch.zeros_like(iou))


@dataclass
class CachedImage:
    features: torch.Tensor  # SAM image embedding (1, 256, h, w)
    input_size: tuple[int, int]
    original_size: tuple[int, int]


def image_key(rgb: np.ndarray) -> str:
    """sha256 of an image's pixels (with its shape and dtype): two images that share a file name
    never share a cache entry, and the same pixels under another name do."""
    a = np.ascontiguousarray(rgb)
    h = hashlib.sha256(f"{a.shape}|{a.dtype}|".encode())
    h.update(a.tobytes())
    return h.hexdigest()


def weights_sha256(model: torch.nn.Module) -> str:
    """sha256 over a model's parameters and buffers (names, shapes and bytes), for weights with no file."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        c = t.detach().cpu().contiguous()
        h.update(f"{name}|{tuple(c.shape)}|{c.dtype}|".encode())
        h.update(c.reshape(-1).view(torch.uint8).numpy().tobytes() if c.numel() else b"")
    return h.hexdigest()


def sam_cache_key(seg: SamSegmenter, record: dict | None = None) -> str:
    """The cache folder of one SAM: model type, encoder size and the content hash of its weights
    (the checkpoint file's sha256; random weights: 'random-' + the hash of the weights themselves,
    which the seed determines)."""
    record = record or sam_record(seg.cfg.model_type, seg.cfg.checkpoint, seg.encoder_size)
    digest = record.get("checkpoint_sha256")
    weights = digest[:32] if digest else "random-" + weights_sha256(seg.model)[:24]
    return f"{record['model_type']}_{record['image_size']}_{weights}"


class FeatureCache:
    """SAM image embeddings on disk (or in memory without a root): root/<sam key>/<image sha256>.pt."""

    def __init__(self, root: str | Path | None, model_key: str) -> None:
        self.root = Path(root) / model_key if root else None
        if self.root:
            self.root.mkdir(parents=True, exist_ok=True)
        self.mem: dict[str, CachedImage] = {}
        self.hits = self.misses = 0

    def _path(self, key: str) -> Path | None:
        if self.root is None:
            return None
        return self.root / f"{key[:40]}.pt"

    def get(self, seg: SamSegmenter, sample: Sample) -> CachedImage:
        key = image_key(sample.rgb)
        if key in self.mem:
            self.hits += 1
            return self.mem[key]
        p = self._path(key)
        if p is not None and p.is_file():
            blob = torch.load(p, map_location="cpu", weights_only=True)
            c = CachedImage(blob["features"], tuple(blob["input_size"]), tuple(blob["original_size"]))
            self.hits += 1
        else:
            seg.set_frame(Frame(rgb=sample.rgb, depth=sample.depth if seg.in_chans == 4 else None))
            pr = seg.predictor
            c = CachedImage(pr.features.detach().cpu(), tuple(pr.input_size), tuple(pr.original_size))
            if p is not None:
                tmp = p.with_suffix(f".{os.getpid()}.tmp")  # processes of one run may write the same entry
                torch.save({"features": c.features, "input_size": list(c.input_size),
                            "original_size": list(c.original_size)}, tmp)
                tmp.replace(p)  # a run killed mid-write leaves no truncated entry behind
            self.misses += 1
        if self.root is None:
            self.mem[key] = c
        return c


def _set_cached(seg: SamSegmenter, c: CachedImage) -> None:
    """Put a cached embedding into segment-anything's predictor, as set_image would."""
    seg.use_embedding(c.features.to(seg.device), c.input_size, c.original_size)


def _check_label(sample: Sample) -> np.ndarray:
    if sample.label is None:
        raise TrainingError(f"sample {sample.name} has no label; HDNet training needs visible instance labels")
    return sample.label


def hdnet_batch(seg: SamSegmenter, cache: FeatureCache, sample: Sample, num_fg: int, num_bg: int,
                rng: np.random.Generator) -> dict[str, torch.Tensor]:
    """Frozen-SAM outputs and eq. 6 targets for one image's sampled prompts."""
    _check_label(sample)
    return prompted_batch(seg, cache, sample, *sample_prompts(sample.label, num_fg, num_bg, rng))


def prompted_batch(seg: SamSegmenter, cache: FeatureCache, sample: Sample, prompts: Prompts,
                   owner: np.ndarray) -> dict[str, torch.Tensor]:
    """hdnet_batch for prompts drawn already: processes of one run draw every image's prompts
    from the shared stream (so it stays the single-process one) and decode only their own."""
    _set_cached(seg, cache.get(seg, sample))
    low = seg.decode_lowres(prompts)
    masks = seg.upsample(low.logits)  # (K, 4, H, W) bool at the image size
    target = iou_targets(masks.cpu(), torch.from_numpy(sample.label.astype(np.int64)), torch.from_numpy(owner))
    return {"t_iou": low.t_iou.clone(), "t_mask": low.t_mask.clone(), "iou_pred": low.iou_pred.clone(),
            "target": target.to(low.iou_pred.device),
            "on_object": torch.from_numpy(np.asarray(owner) > 0).to(low.iou_pred.device)}


def hdnet_loss(model: HDNet, b: dict[str, torch.Tensor]) -> torch.Tensor:
    """Eq. 7: MSE between the adapted IoU (eq. 5) and the eq. 6 target."""
    return F.mse_loss(model.adapted_iou(b["iou_pred"], b["t_iou"], b["t_mask"]), b["target"])


def train_step(model: HDNet, opt: torch.optim.Optimizer, b: dict[str, torch.Tensor]) -> float:
    model.train()
    loss = hdnet_loss(model, b)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.item()


def _shard_loss(model: HDNet, b: dict[str, torch.Tensor], k_global: int, world: int
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """This process's part of eq. 7 over a global batch of k_global prompts: the sum of its rows'
    mean squared errors / k_global, times world (DDP's gradient average undoes it)."""
    err = (model.adapted_iou(b["iou_pred"], b["t_iou"], b["t_mask"]) - b["target"]).pow(2).mean(1).sum() / k_global
    return world * err, err.detach()


def shard_train_step(model: HDNet, step: torch.nn.Module, opt: torch.optim.Optimizer, seg: SamSegmenter,
                     cache: FeatureCache, images: list[Sample], num_fg: int, num_bg: int,
                     rng: np.random.Generator, ctx: DistContext) -> float:
    """train_step on a global batch of images, this process decoding ctx.shard of them. Every
    process draws every image's prompts from rng (the single-process stream), so the prompt
    count, and with it the loss normaliser, is that of the global batch."""
    drawn = [sample_prompts(_check_label(im), num_fg, num_bg, rng) for im in images]
    k_global = sum(len(owner) for _, owner in drawn)
    mine = range(len(images))[ctx.shard(len(images))]
    bs = [prompted_batch(seg, cache, images[j], *drawn[j]) for j in mine]
    if bs:
        b = {k: torch.cat([x[k] for x in bs]) for k in bs[0]}
    else:  # a short last batch left this process nothing: it still joins the gradient average
        c, dev = model.token_dim, seg.device
        b = {"t_iou": torch.zeros(0, c, device=dev), "t_mask": torch.zeros(0, 4, c, device=dev),
             "iou_pred": torch.zeros(0, 4, device=dev), "target": torch.zeros(0, 4, device=dev)}
    model.train()
    loss, err = step(b, k_global, ctx.world_size)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return ctx.sum([float(err)])[0]


def train_hdnet(seg: SamSegmenter, train: list[Sample], val: list[Sample], out: str | Path, *,
                epochs: int = 10, lr: float = 1e-3, weight_decay: float = 1e-4, num_prompts: int = 30,
                num_bg: int = 10, images_per_step: int = 4, cache_dir: str | Path | None = None,
                seed: int = 0, log: str | Path | None = None, max_minutes: float = 0.0,
                meta: dict | None = None, progress: bool = True, dist: DistContext | None = None) -> dict:
    """Train HDNet on frozen-SAM tokens; keeps the lowest-validation-loss checkpoint at out, which
    records the SAM (model type, image size, checkpoint sha256) from seg.cfg.

    dist: several processes (see training.dist): images_per_step is the global batch, seg runs
    on dist.device, rank 0 writes the files."""
    from tqdm import tqdm

    ctx = dist or DistContext()
    progress = progress and ctx.is_main
    if not train or not val:
        raise TrainingError("training and validation sets must both be non-empty")
    ctx.check_divisible(images_per_step, "--images-per-step")
    torch.manual_seed(seed)
    dev = seg.device
    model = HDNet.for_sam(seg.model).to(dev)  # token size = the SAM decoder's dim
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    record = sam_record(seg.cfg.model_type, seg.cfg.checkpoint, seg.encoder_size)
    cache = FeatureCache(cache_dir, sam_cache_key(seg, record))
    step = ctx.wrap(model, _shard_loss) if ctx.enabled else None
    csv = CsvLog(log, ["epoch", "train_loss", "val_loss", "val_sam_only", "val_objects_mse", "val_objects_mse_sam",
                       "val_pick_better", "val_pick_worse", "best", "seconds",
                       "cache_hits", "cache_misses"]) if log and ctx.is_main else None
    best = math.inf
    history = []
    budget = Budget(max_minutes)
    val_rng_seed = seed + 999_983
    for epoch in range(epochs):
        t0 = time.time()
        rng = np.random.default_rng(seed + epoch)
        order = rng.permutation(len(train))
        losses = []
        bar = tqdm(range(0, len(order), images_per_step), desc=f"epoch {epoch + 1}/{epochs}", unit="step",
                   file=sys.stderr, disable=not progress)
        for s in bar:
            if step is not None:
                losses.append(shard_train_step(model, step, opt, seg, cache,
                                               [train[i] for i in order[s:s + images_per_step]],
                                               num_prompts, num_bg, rng, ctx))
            else:
                bs = [hdnet_batch(seg, cache, train[i], num_prompts, num_bg, rng)
                      for i in order[s:s + images_per_step]]
                b = {k: torch.cat([x[k] for x in bs]) for k in bs[0]}
                losses.append(train_step(model, opt, b))
            bar.set_postfix(loss=f"{losses[-1]:.4f}")
        v = evaluate_hdnet(model, seg, cache, val, num_prompts, num_bg, val_rng_seed, dist=ctx)
        vl, v_sam = v.mse, v.mse_sam
        n_obj = max(v.object_prompts, 1)
        objects = {"val_objects_mse": v.mse_objects, "val_objects_mse_sam": v.mse_objects_sam,
                   "val_pick_better": v.better / n_obj, "val_pick_worse": v.worse / n_obj}
        improved = vl < best
        if improved:
            best = vl
        if improved and ctx.is_main:
            save_hdnet(out, model, {**(meta or {}), "epoch": epoch + 1, "val_loss": vl, "val_sam_only": v_sam,
                                    **objects, "sam": seg.name, "num_prompts": num_prompts, "num_bg": num_bg},
                       sam=record)
        hits, misses = ctx.sum([cache.hits, cache.misses])  # over all processes
        row = {"epoch": epoch + 1, "train_loss": float(np.mean(losses)), "val_loss": vl, "val_sam_only": v_sam,
               **objects, "best": int(improved), "seconds": time.time() - t0, "cache_hits": hits,
               "cache_misses": misses}
        history.append(row)
        if csv:
            csv.write(row)
        if progress:
            print(f"epoch {epoch + 1}: train {row['train_loss']:.5f} val {vl:.5f} (SAM IoU alone {v_sam:.5f})"
                  f"{' (best)' if improved else ''}; {v.line()}", file=sys.stderr)
        if ctx.any(budget.exhausted()):
            break
    return {"best_val_loss": best, "history": history, "checkpoint": str(out)}


@dataclass
class HDNetValidation:
    """Held-out figures of one validation pass. mse / mse_sam: eq. 7 over all prompts (the
    checkpoint criterion). On the object prompts alone: their MSEs, and how often the mask HDNet
    ranks first (of SAM's 4 tokens, as the pipeline picks) has a higher / lower target IoU than the one
    SAM's own head ranks first (of the 3 multimask tokens, as SamAutomaticMaskGenerator picks). An MSE
    gain that comes only from the background prompts lowers mse without better picks."""

    mse: float
    mse_sam: float
    mse_objects: float
    mse_objects_sam: float
    object_prompts: int
    better: int
    worse: int

    def line(self) -> str:
        n = max(self.object_prompts, 1)
        return (f"object prompts: MSE {self.mse_objects:.5f} (SAM {self.mse_objects_sam:.5f}), HDNet's pick "
                f"better in {100 * self.better / n:.1f} % / worse in {100 * self.worse / n:.1f} % of "
                f"{self.object_prompts}")


def pick_counts(adapted: torch.Tensor, iou_pred: torch.Tensor, target: torch.Tensor) -> tuple[int, int]:
    """(better, worse): prompts whose top-ranked adapted-IoU token has a strictly higher / lower
    target than the token SAM's head ranks first (hdnet.ranked_first)."""
    rows = torch.arange(len(target), device=target.device)
    t_h, t_s = ranked_first(adapted, iou_pred)
    hd, sam = target[rows, t_h], target[rows, t_s]
    return int((hd > sam + 1e-9).sum()), int((hd < sam - 1e-9).sum())


@torch.no_grad()
def evaluate_hdnet(model: HDNet, seg: SamSegmenter, cache: FeatureCache, data: list[Sample], num_fg: int,
                   num_bg: int, seed: int, dist: DistContext | None = None) -> HDNetValidation:
    """HDNet against SAM's own IoU head on fixed held-out prompts (eq. 6 targets).

    With several processes each draws every image's prompts (one stream, as one process would),
    decodes every N-th image, and the sums are all-reduced."""
    model.eval()
    ctx = dist or DistContext()
    rng = np.random.default_rng(seed)
    se_a = se_s = n = se_oa = se_os = n_o = better = worse = 0.0
    mine = set(ctx.strided(len(data)))
    for i, s in enumerate(data):
        if ctx.enabled:
            drawn = sample_prompts(_check_label(s), num_fg, num_bg, rng)
            if i not in mine:
                continue
            b = prompted_batch(seg, cache, s, *drawn)
        else:
            b = hdnet_batch(seg, cache, s, num_fg, num_bg, rng)
        adapted = model.adapted_iou(b["iou_pred"], b["t_iou"], b["t_mask"])
        err_a, err_s = (adapted - b["target"]) ** 2, (b["iou_pred"] - b["target"]) ** 2
        se_a += float(err_a.sum())
        se_s += float(err_s.sum())
        n += b["target"].numel()
        obj = b["on_object"]
        se_oa += float(err_a[obj].sum())
        se_os += float(err_s[obj].sum())
        n_o += float(obj.sum())
        up, down = pick_counts(adapted[obj], b["iou_pred"][obj], b["target"][obj])
        better += up
        worse += down
    se_a, se_s, n, se_oa, se_os, n_o, better, worse = ctx.sum([se_a, se_s, n, se_oa, se_os, n_o, better, worse])
    return HDNetValidation(se_a / max(n, 1), se_s / max(n, 1), se_oa / max(4 * n_o, 1), se_os / max(4 * n_o, 1),
                           int(n_o), int(better), int(worse))


def _samples(a: argparse.Namespace) -> tuple[list[Sample], list[Sample]]:
    if a.data:
        from uois_sam_ros.core.data.datasets import DatasetError, open_dataset

        root = Path(a.data)
        ann = Path(a.annotations) if a.annotations else root / "annotations.json"
        try:
            ds = open_dataset("uoais-sim", root, ann)
            data = [ds[i] for i in range(len(ds))]
        except DatasetError as e:
            raise TrainingError(str(e)) from None
    elif a.synthetic > 0:
        from uois_sam_ros.core.data.synthetic import SceneConfig, generate_scene

        cfg = SceneConfig(width=a.width, height=a.height, amodal=False)
        data = [generate_scene(a.synthetic_seed + i, cfg).sample() for i in range(a.synthetic)]
    else:
        raise TrainingError("give --data DIR (UOAIS-Sim-style folder) or --synthetic N")
    n_val = max(1, int(round(a.val_split * len(data))))
    if n_val >= len(data):
        raise TrainingError(f"{len(data)} images are too few to split off {n_val} for validation")
    perm = np.random.default_rng(a.seed).permutation(len(data))
    val = [data[i] for i in sorted(perm[:n_val])]
    train = [data[i] for i in sorted(perm[n_val:])]
    train = [train[i] for i in fraction_indices(len(train), a.data_fraction, a.seed)]
    return train, val


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="uois-sam-train-hdnet", description=__doc__.splitlines()[0],
                                formatter_class=HelpFormatter)
    p.add_argument("--sam-type", default="vit_l", help="vit_h | vit_l | vit_b | vit_t | vit_synth | vit_tiny (tests)")
    p.add_argument("--sam-checkpoint", help="official SAM checkpoint (required except with --allow-random-sam)")
    p.add_argument("--allow-random-sam", action="store_true", help="random SAM weights (pipeline tests only)")
    p.add_argument("--sam-image-size", type=int, default=1024, help="encoder side (vit_tiny only)")
    p.add_argument("--data", help="UOAIS-Sim-style folder")
    p.add_argument("--annotations", help="annotations json (default DATA/annotations.json)")
    p.add_argument("--synthetic", type=int, default=0, help="instead: N synthetic scenes")
    p.add_argument("--synthetic-seed", type=int, default=0, help="seed of the first synthetic scene")
    p.add_argument("--width", type=int, default=640, help="synthetic image width")
    p.add_argument("--height", type=int, default=480, help="synthetic image height")
    p.add_argument("--val-split", type=float, default=0.1, help="fraction of the images held out for validation")
    p.add_argument("--data-fraction", type=float, default=1.0, help="use this fraction of the training images")
    p.add_argument("--num-prompts", type=int, default=30, help="M prompts inside the GT masks per image")
    p.add_argument("--num-bg", type=int, default=10, help="background prompts per image (target 0)")
    p.add_argument("--images-per-step", type=int, default=4,
                   help="images (each with its M + background prompts) per optimiser step")
    p.add_argument("--epochs", type=int, default=10, help="training epochs (the first also fills the SAM cache)")
    p.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate")
    p.add_argument("--weight-decay", type=float, default=1e-4, help="AdamW weight decay")
    p.add_argument("--cache-dir", default="out/sam_features", help="where SAM embeddings are cached")
    p.add_argument("--out", required=True, help="HDNet checkpoint path (best validation loss)")
    p.add_argument("--log", help="CSV log (default OUT with .csv)")
    p.add_argument("--device", default="auto", help="auto (cuda when available, else cpu), cpu, cuda or cuda:N")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")
    p.add_argument("--seed", type=int, default=0, help="seed of initialisation, prompt sampling and splits")
    p.add_argument("--max-minutes", type=float, default=0.0,
                   help="stop after the epoch that passes this budget (0 = no limit)")
    a = p.parse_args(argv)
    with TrainerRun("uois-sam-train-hdnet") as run:
        if a.threads > 0:
            torch.set_num_threads(a.threads)
        device = resolve_device(a.device)  # ConfigError (a ValueError): one line, status 2
        run.ctx = ctx = init_distributed(device)  # under torchrun: cuda:LOCAL_RANK or the CPU, one process each
        device = str(ctx.device)
        from uois_sam_ros.core.weights import CheckpointError

        torch.manual_seed(a.seed)  # random SAM weights (--allow-random-sam) follow the seed
        try:
            seg = SamSegmenter(SamConfig(model_type=a.sam_type, checkpoint=a.sam_checkpoint, device=device,
                                         allow_random_weights=a.allow_random_sam, image_size=a.sam_image_size))
        except CheckpointError as e:
            raise TrainingError(str(e)) from None
        ctx.check_divisible(a.images_per_step, "--images-per-step")
        train, val = _samples(a)
        ctx.check_same("the training / validation image counts", (len(train), len(val)))
        ctx.print(f"training HDNet on {len(train)} images, validating on {len(val)}")
        meta = {"data": a.data or f"synthetic:{a.synthetic}"}
        if ctx.enabled:
            meta["world_size"] = ctx.world_size
        res = train_hdnet(seg, train, val, a.out, epochs=a.epochs, lr=a.lr, weight_decay=a.weight_decay,
                          num_prompts=a.num_prompts, num_bg=a.num_bg, images_per_step=a.images_per_step,
                          cache_dir=a.cache_dir, seed=a.seed, log=a.log or Path(a.out).with_suffix(".csv"),
                          max_minutes=a.max_minutes, meta=meta, dist=ctx)
        if ctx.is_main:
            m = load_hdnet(res["checkpoint"])
            print(f"best validation MSE {res['best_val_loss']:.5f} (epoch {m.meta.get('epoch')}, SAM IoU alone "
                  f"{m.meta.get('val_sam_only', float('nan')):.5f}); checkpoint {res['checkpoint']}")
        return 0
    return run.code


if __name__ == "__main__":
    raise SystemExit(main())
