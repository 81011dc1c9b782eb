"""uois-sam-train-sam: train the small SAM (sam.model_type vit_synth) on synthetic tabletop scenes.

Promptable segmentation as SAM was trained, with segment-anything's own modules (image_encoder,
prompt_encoder, mask_decoder). Per image the encoder runs once; up to --prompts instances are
drawn, each prompted by one positive point drawn uniformly inside its visible mask, or (with
--box-prob) by its box with a few % jitter. All prompts of an image go through one batched
decoder call. Then --rounds corrective rounds: the next click lies in the error region of the
previous mask (positive in a false-negative region, negative in a false-positive one) at the
pixel farthest from that region's boundary (a distance transform), and the previous low-res
logits are fed back as the mask prompt.

Loss per mask: 20 * focal + 1 * dice (SAM's ratio) plus 1 * MSE between the IoU head and the
true IoU of the thresholded mask. A single point uses the 3 multimask outputs: only the one
with the lowest mask loss gets the mask loss (SAM's min-over-masks rule), and the IoU head
learns all 3. Boxes and several clicks use the single-mask output (token 0). The loss is computed
on the decoder's low-res logits upsampled x2 (256x256 for a 512 encoder, i.e. half the encoder's
input resolution) against the GT area-downsampled to that grid, over the image region only
(the encoder's padding is left out); x2 because the 128x128 logits of a 512 encoder leave small
objects only a few cells wide.

Validation (held-out images, fixed prompts): one positive point per instance; val_loss is the
round-0 point loss above, val_miou the IoU of the mask SAM's IoU head picks among the 3,
val_miou_oracle the best of the 3 (IoUs on the same 2x low-res grid). The untrained model is
scored on the same prompts before the first step; the run keeps the best-val_loss checkpoint.

--init CKPT starts from a vit_synth checkpoint's weights (its arch) with a fresh optimizer and this
run's schedule: a short run on a lent GPU continues the shipped model instead of starting over (a
--resume state holds the optimizer too, but is 3x the checkpoint's size and tied to its old run).
Then the step-0 validation ('untrained' in the log and sidecar) scores the init checkpoint.

RGB-D: --arch '{"in_chans": 4}' trains an encoder that also takes depth (core/segment/depth_channel.py);
with --init of an RGB checkpoint its patch embedding is widened with zero weights for the depth channel,
so step 0 scores exactly the RGB model and training then learns what depth adds. Data folders must
then hold depth (UOAIS-Sim layout: depth/), and colour jitter leaves the depth channel alone.

AdamW with a linear warm-up then cosine decay, gradient clipping. Augmentation: random crop
(zoom in), horizontal flip, colour jitter, sensor noise and blur.

--prefetch N prepares the next N steps' batches (reads, augmentation, prompt plans: ~30 ms of CPU per
image) in background threads while the model trains on the current one, so a GPU does not wait for
the CPU. A step's batch depends only on its step number, so the results equal the serial loop's
(--prefetch 0) exactly; corrective clicks depend on the model's masks and stay in the loop.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import shlex
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from segment_anything.modeling import Sam
from torchvision.ops import sigmoid_focal_loss

from uois_sam_ros.core.segment import decoder_layout
from uois_sam_ros.core.segment.depth_channel import ENCODER_CHANNELS, encoder_image, resize_longest_side
from uois_sam_ros.core.segment.sam_backend import (
    VIT_SYNTH_ARCH,
    build_vit_synth,
    check_synth_arch,
    read_sam_synth,
    save_sam_synth,
)
from uois_sam_ros.core.types import FrameError
from uois_sam_ros.core.weights import CheckpointError, save_torch_atomic, sha256_file
from uois_sam_ros.training.common import (
    CsvLog,
    HelpFormatter,
    TrainingError,
    fraction_indices,
    pick_device,
)
from uois_sam_ros.training.dist import DistContext, TrainerRun, init_distributed

LOSS_UPSAMPLE = 2  # the loss grid is the low-res logits upsampled x2 (half the encoder input)
FOCAL_WEIGHT, DICE_WEIGHT, IOU_WEIGHT = 20.0, 1.0, 1.0  # SAM: focal:dice 20:1, IoU MSE x1
STATE_VERSION = 1
CSV_FIELDS = ["step", "epoch", "images", "lr", "train_loss", "train_focal", "train_dice", "train_iou_mse",
              "val_loss", "val_miou", "val_miou_oracle", "best", "seconds", "img_per_s"]


@dataclass
class Settings:
    """Hyper-parameters of one run (stored in the resume state and the sidecar JSON)."""

    prompts: int = 8  # instances prompted per image (all decoded in one call)
    rounds: int = 1  # corrective-click rounds after the first prompt
    box_prob: float = 0.3  # chance that an instance's first prompt is its (jittered) box
    box_jitter: float = 0.05  # box corner noise, std as a fraction of the box side
    batch_size: int = 2  # images per optimiser step (encoded together)
    lr: float = 1e-3  # from scratch, 4e-4 stayed on the all-background plateau far longer
    weight_decay: float = 0.05
    warmup: int = 100  # linear warm-up steps
    max_steps: int = 3000  # the cosine decay ends here
    min_lr_ratio: float = 0.05  # final lr = lr * min_lr_ratio
    clip: float = 1.0  # gradient norm clip (0 = off)
    augment: bool = True
    min_area: int = 16  # instances with fewer visible px at the encoder input size are not prompted
    val_every: int = 200  # steps between validations (a CSV row and a best-checkpoint check each)
    save_every: int = 50  # steps between resume states in --work-dir
    val_prompts: int = 16  # most instances prompted per validation image
    seed: int = 0


# ------------------------------------------------------------------------------------------- data
class ImageSource:
    """Indexable (rgb uint8 (H, W, 3), visible label (H, W)) pairs, read when asked for."""

    def __init__(self, name: str, n: int, get: Callable[[int], tuple[np.ndarray, np.ndarray]],
                 index: np.ndarray | None = None) -> None:
        self.name = name
        self._n = n
        self._get = get
        self.index = np.arange(n) if index is None else np.asarray(index)

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        return self._get(int(self.index[i]))

    def subset(self, idx: np.ndarray) -> ImageSource:
        return ImageSource(self.name, self._n, self._get, self.index[np.asarray(idx, np.int64)])


def dataset_source(path: str | Path, annotations: str | Path | None = None, in_chans: int = 3) -> ImageSource:
    """A UOAIS-Sim-style folder (``uois-sam-synth --out DIR`` writes one); images are read per step.
    in_chans 4: each image is rgb + the depth channel (depth_channel.encoder_image)."""
    from uois_sam_ros.core.data.datasets import DatasetError, open_dataset

    root = Path(path)
    if not root.exists():
        raise TrainingError(f"dataset folder not found: {root}")
    if root.is_file():
        root, annotations = root.parent, root
    ann = Path(annotations) if annotations else root / "annotations.json"
    try:
        ds = open_dataset("uoais-sim", root, ann)
    except DatasetError as e:
        raise TrainingError(str(e)) from None

    def get(i: int) -> tuple[np.ndarray, np.ndarray]:
        try:
            s = ds[i]
        except DatasetError as e:
            raise TrainingError(str(e)) from None
        if s.label is None:
            raise TrainingError(f"{s.name} has no visible instance labels")
        try:
            return encoder_image(s.rgb, s.depth, in_chans), s.label
        except FrameError as e:
            raise TrainingError(f"{s.name}: {e}") from None

    return ImageSource(str(root), len(ds), get)


def synthetic_source(num: int, seed: int, width: int, height: int, desc: str = "synthetic scenes",
                     in_chans: int = 3) -> ImageSource:
    """num generator scenes (seeds seed .. seed + num - 1), rendered once and kept in memory."""
    from tqdm import tqdm

    from uois_sam_ros.core.data.synthetic import SceneConfig, generate_scene

    if num < 1:
        raise TrainingError(f"the number of synthetic scenes must be at least 1, got {num}")
    cfg = SceneConfig(width=width, height=height, amodal=False,
                      min_visible_px=max(4, int(20 * width * height / (640 * 480))))
    items = []
    for i in tqdm(range(num), desc=desc, unit="scene", file=sys.stderr, disable=num < 20):
        s = generate_scene(seed + i, cfg)
        items.append((encoder_image(s.rgb, s.depth, in_chans), s.label.astype(np.int32)))
    return ImageSource(f"synthetic:{num}@{seed}", num, lambda i: items[i])


# ----------------------------------------------------------------------------------- augmentation
def _colour_jitter(rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Brightness, contrast, saturation and hue jitter, then sensor noise and an occasional blur."""
    x = rgb.astype(np.float32)
    x = x * rng.uniform(0.7, 1.3)
    mean = x.mean()
    x = (x - mean) * rng.uniform(0.7, 1.3) + mean
    grey = x.mean(axis=2, keepdims=True)
    x = (x - grey) * rng.uniform(0.7, 1.3) + grey
    x = np.clip(x, 0, 255).astype(np.uint8)
    shift = int(rng.integers(-6, 7))
    if shift:
        hsv = cv2.cvtColor(x, cv2.COLOR_RGB2HSV)
        hsv[..., 0] = ((hsv[..., 0].astype(np.int16) + shift) % 180).astype(np.uint8)
        x = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    if rng.random() < 0.2:
        x = cv2.GaussianBlur(x, (0, 0), float(rng.uniform(0.5, 1.2)))
    sigma = rng.uniform(0.0, 6.0)
    if sigma > 0.5:
        x = np.clip(x.astype(np.float32) + rng.normal(0.0, sigma, x.shape), 0, 255).astype(np.uint8)
    return x


def prepare_image(rgb: np.ndarray, label: np.ndarray, img_size: int, rng: np.random.Generator | None
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Resize the longest side to img_size exactly as SamPredictor does (segment-anything's
    ResizeLongestSide on the rgb; nearest for the label). With rng (training): a random crop of
    45-100 % of the area first (half of the time), then a horizontal flip and colour jitter."""
    if rgb.ndim != 3 or rgb.shape[2] not in ENCODER_CHANNELS or rgb.shape[:2] != label.shape:
        raise TrainingError(f"rgb {rgb.shape} and label {label.shape} do not form an (H, W, 3 or 4) / (H, W) pair")
    if rng is not None and rng.random() < 0.5:
        h, w = label.shape
        area = rng.uniform(0.45, 1.0)
        aspect = math.exp(rng.uniform(-0.15, 0.15))
        ch = int(round(min(h, h * math.sqrt(area) / math.sqrt(aspect))))
        cw = int(round(min(w, w * math.sqrt(area) * math.sqrt(aspect))))
        y0 = int(rng.integers(0, h - ch + 1))
        x0 = int(rng.integers(0, w - cw + 1))
        rgb, label = rgb[y0:y0 + ch, x0:x0 + cw], label[y0:y0 + ch, x0:x0 + cw]
    rgb_in = resize_longest_side(rgb, img_size)
    lab_in = cv2.resize(np.ascontiguousarray(label).astype(np.int32), (rgb_in.shape[1], rgb_in.shape[0]),
                        interpolation=cv2.INTER_NEAREST)
    if rng is not None:
        if rng.random() < 0.5:
            rgb_in, lab_in = rgb_in[:, ::-1], lab_in[:, ::-1]
        jittered = _colour_jitter(np.ascontiguousarray(rgb_in[..., :3]), rng)  # colour only, never depth
        rgb_in = jittered if rgb_in.shape[2] == 3 else np.dstack([jittered, rgb_in[..., 3:]])
    return np.ascontiguousarray(rgb_in), np.ascontiguousarray(lab_in)


# ---------------------------------------------------------------------------------------- prompts
def loss_grid_hw(input_hw: tuple[int, int], img_size: int, lowres: int) -> tuple[int, int]:
    """Rows/cols of the loss grid (low-res x LOSS_UPSAMPLE) that cover the resized image."""
    side = lowres * LOSS_UPSAMPLE
    return (max(1, math.ceil(input_hw[0] * side / img_size)), max(1, math.ceil(input_hw[1] * side / img_size)))


def gt_masks(label_in: np.ndarray, ids: np.ndarray, grid_hw: tuple[int, int]) -> np.ndarray:
    """(K, gh, gw) bool: each instance's mask area-downsampled to the loss grid, >= 50 % covered."""
    out = np.zeros((len(ids), *grid_hw), bool)
    for k, oid in enumerate(ids):
        m = (label_in == oid).astype(np.float32)
        out[k] = cv2.resize(m, (grid_hw[1], grid_hw[0]), interpolation=cv2.INTER_AREA) >= 0.5
    return out


def pick_instances(label_in: np.ndarray, most: int, min_area: int, rng: np.random.Generator) -> np.ndarray:
    """Up to `most` visible instance ids with at least min_area px, drawn without replacement."""
    ids, counts = np.unique(label_in, return_counts=True)
    ok = ids[(ids != 0) & (counts >= min_area)]
    if len(ok) > most:
        ok = rng.choice(ok, size=most, replace=False)
    return np.asarray(ok, np.int64)


def first_prompts(label_in: np.ndarray, ids: np.ndarray, rng: np.random.Generator, box_prob: float,
                  box_jitter: float) -> tuple[np.ndarray, np.ndarray]:
    """(points (K, 2) x, y at integer pixel centres of the resized image, boxes (K, 4) xyxy or NaN).

    Each instance gets a box with probability box_prob (its tight box with Gaussian corner noise of
    box_jitter x the side, clipped to the image), else one point drawn uniformly inside its mask."""
    h, w = label_in.shape
    pts = np.zeros((len(ids), 2), np.float32)
    boxes = np.full((len(ids), 4), np.nan, np.float32)
    for k, oid in enumerate(ids):
        ys, xs = np.nonzero(label_in == oid)
        if rng.random() < box_prob:
            x0, x1, y0, y1 = xs.min(), xs.max(), ys.min(), ys.max()
            bw, bh = x1 - x0 + 1, y1 - y0 + 1
            noise = rng.normal(0.0, box_jitter, 4) * np.array([bw, bh, bw, bh])
            b = np.array([x0, y0, x1, y1], np.float64) + noise
            b[[0, 2]] = np.clip(b[[0, 2]], 0, w - 1)
            b[[1, 3]] = np.clip(b[[1, 3]], 0, h - 1)
            boxes[k] = [min(b[0], b[2]), min(b[1], b[3]), max(b[0], b[2]), max(b[1], b[3])]
        else:
            j = int(rng.integers(len(xs)))
            pts[k] = (xs[j], ys[j])
    return pts, boxes


def corrective_clicks(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Next click per mask: (points (K, 2) in resized-image pixels, labels (K,) 1 = positive).

    The click is the error pixel farthest from its region's boundary (the image border counts as a
    boundary): positive when it is a missed object pixel, negative when it is a false positive.
    A perfect mask gets a positive click at the object's innermost pixel."""
    k, gh, gw = gt.shape
    pts = np.zeros((k, 2), np.float32)
    labels = np.ones(k, np.int64)

    def dist(m: np.ndarray) -> np.ndarray:
        padded = np.pad(m.astype(np.uint8), 1)
        return cv2.distanceTransform(padded, cv2.DIST_L2, 5)[1:-1, 1:-1]

    for i in range(k):
        fn, fp = gt[i] & ~pred[i], pred[i] & ~gt[i]
        d_fn = dist(fn) if fn.any() else None
        d_fp = dist(fp) if fp.any() else None
        best_fn = float(d_fn.max()) if d_fn is not None else -1.0
        best_fp = float(d_fp.max()) if d_fp is not None else -1.0
        if best_fn < 0 and best_fp < 0:
            d, lab = dist(gt[i]), 1
        elif best_fn >= best_fp:
            d, lab = d_fn, 1
        else:
            d, lab = d_fp, 0
        y, x = np.unravel_index(int(np.argmax(d)), d.shape)
        # loss-grid cell -> the resized-image pixel at its centre (pixel centres at integer coordinates)
        pts[i] = ((x + 0.5) * LOSS_UPSAMPLE - 0.5, (y + 0.5) * LOSS_UPSAMPLE - 0.5)
        labels[i] = lab
    return pts, labels


# ------------------------------------------------------------------------------------------ model
def encode(model: Sam, images: list[np.ndarray], device: torch.device) -> torch.Tensor:
    """(B, C, g, g) image embeddings of resized uint8 images (normalised and padded by Sam.preprocess)."""
    x = torch.cat([model.preprocess(torch.as_tensor(im, device=device).permute(2, 0, 1)[None].float())
                   for im in images])
    return model.image_encoder(x)


def decode(model: Sam, embedding: torch.Tensor, points: torch.Tensor | None, labels: torch.Tensor | None,
           boxes: torch.Tensor | None, masks: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """One image's prompts through prompt_encoder + mask_decoder.predict_masks: all 4 tokens,
    (K, 4, lr, lr) low-res logits and (K, 4) IoU predictions.

    The decoder runs in the folded layout (core/segment/decoder_layout.py: the same function and
    gradients, without K copies of the image side; 2.2x faster forward + backward for vit_synth on
    a CPU), or the library's code for a decoder of another layout."""
    sparse, dense = model.prompt_encoder(points=None if points is None else (points, labels), boxes=boxes,
                                         masks=masks)
    pe = model.prompt_encoder.get_dense_pe()
    if decoder_layout.supports(model.mask_decoder):
        return decoder_layout.predict_masks(model.mask_decoder, embedding, pe, sparse, dense)[:2]
    return model.mask_decoder.predict_masks(image_embeddings=embedding, image_pe=pe,
                                            sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense)


def mask_terms(logits: torch.Tensor, gt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-mask (focal, dice, true IoU) of (K, T, lr, lr) low-res logits against (K, gh, gw) GT.

    The logits are upsampled x LOSS_UPSAMPLE (bilinear, as SAM's postprocessing does) and cropped to
    the image region gh x gw; the IoU is that of the thresholded mask (no gradient)."""
    k, t = logits.shape[:2]
    gh, gw = gt.shape[-2:]
    up = F.interpolate(logits, scale_factor=LOSS_UPSAMPLE, mode="bilinear", align_corners=False)[..., :gh, :gw]
    target = gt[:, None].expand(-1, t, -1, -1).to(up.dtype)
    focal = sigmoid_focal_loss(up, target, alpha=0.25, gamma=2.0, reduction="none").flatten(2).mean(-1)
    p = up.sigmoid().flatten(2)
    tf = target.flatten(2)
    dice = 1.0 - (2.0 * (p * tf).sum(-1) + 1.0) / (p.sum(-1) + tf.sum(-1) + 1.0)
    with torch.no_grad():
        hard = (up > 0).flatten(2)
        g = tf > 0.5
        iou = (hard & g).sum(-1).float() / (hard | g).sum(-1).float().clamp(min=1.0)
    return focal, dice, iou


@dataclass
class PromptPlan:
    """One training image's instances, loss-grid GT masks and first prompts: everything of its
    loss that draws from the rng (the rounds after the first are deterministic)."""

    ids: np.ndarray
    gt: np.ndarray  # (K, gh, gw) bool
    grid: tuple[int, int]
    points: np.ndarray
    boxes: np.ndarray


def plan_prompts(label_in: np.ndarray, rng: np.random.Generator, s: Settings, img: int, lowres: int
                 ) -> PromptPlan | None:
    """The instances and first prompts of one image, or None when nothing in it can be prompted."""
    ids = pick_instances(label_in, s.prompts, s.min_area, rng)
    if len(ids) == 0:  # no object survives the crop/min_area: nothing to learn from this image
        return None
    grid = loss_grid_hw(label_in.shape, img, lowres)
    gt_np = gt_masks(label_in, ids, grid)
    keep = gt_np.reshape(len(ids), -1).any(1)
    ids, gt_np = ids[keep], gt_np[keep]
    if len(ids) == 0:
        return None
    pts0, boxes0 = first_prompts(label_in, ids, rng, s.box_prob, s.box_jitter)
    return PromptPlan(ids, gt_np, grid, pts0, boxes0)


def image_loss(model: Sam, embedding: torch.Tensor, label_in: np.ndarray, rng: np.random.Generator,
               s: Settings, device: torch.device) -> tuple[torch.Tensor | None, dict[str, float]]:
    """The promptable-segmentation loss of one image (mean over its prompts and rounds)."""
    plan = plan_prompts(label_in, rng, s, int(model.image_encoder.img_size),
                        int(model.prompt_encoder.mask_input_size[0]))
    if plan is None:
        return None, {}
    return plan_loss(model, embedding, plan, s, device)


def plan_loss(model: Sam, embedding: torch.Tensor, plan: PromptPlan, s: Settings, device: torch.device
              ) -> tuple[torch.Tensor, dict[str, float]]:
    """image_loss once the plan is drawn: the first prompts, then s.rounds corrective rounds."""
    ids, gt_np, grid, pts0, boxes0 = plan.ids, plan.gt, plan.grid, plan.points, plan.boxes
    gt = torch.from_numpy(gt_np).to(device)
    is_box = ~np.isnan(boxes0[:, 0])
    groups = [np.flatnonzero(~is_box), np.flatnonzero(is_box)]
    # clicks so far per prompt: the first point (point prompts) and the corrective ones
    clicks: list[list[tuple[float, float, int]]] = [[(float(p[0]), float(p[1]), 1)] if not b else []
                                                    for p, b in zip(pts0, is_box)]
    prev: torch.Tensor | None = None
    total = torch.zeros((), device=device)
    parts = {"focal": 0.0, "dice": 0.0, "iou_mse": 0.0}
    for r in range(s.rounds + 1):
        order = np.concatenate(groups)
        outs_l, outs_i = [], []
        for gi, rows in enumerate(groups):
            if len(rows) == 0:
                continue
            n_clicks = len(clicks[rows[0]])
            pts = lab = None
            if n_clicks:
                arr = np.asarray([clicks[i] for i in rows], np.float32)  # (k, n, 3)
                pts = torch.from_numpy(arr[..., :2]).to(device)
                lab = torch.from_numpy(arr[..., 2].astype(np.int64)).to(device)
            bx = torch.from_numpy(boxes0[rows]).to(device) if gi == 1 else None
            mk = prev[torch.as_tensor(rows, device=device)] if prev is not None else None
            lg, io = decode(model, embedding, pts, lab, bx, mk)
            outs_l.append(lg)
            outs_i.append(io)
        logits = torch.cat(outs_l)
        iou_pred = torch.cat(outs_i)
        inv = np.argsort(order)  # back to instance order
        logits, iou_pred = logits[torch.as_tensor(inv, device=device)], iou_pred[torch.as_tensor(inv, device=device)]
        if r == 0:
            focal, dice, iou = mask_terms(logits, gt)
            mloss = FOCAL_WEIGHT * focal + DICE_WEIGHT * dice  # (K, 4)
            multi = torch.as_tensor(~is_box, device=device)
            # a single point: the best of the 3 multimask outputs; a box: the single-mask token 0
            best_multi = 1 + mloss[:, 1:].argmin(1)
            chosen = torch.where(multi, best_multi, torch.zeros_like(best_multi))
            w_iou = torch.zeros_like(mloss)
            w_iou[multi, 1:] = 1.0 / 3.0
            w_iou[~multi, 0] = 1.0
        else:  # several prompts: token 0 only
            focal, dice, iou = mask_terms(logits[:, :1], gt)
            mloss = FOCAL_WEIGHT * focal + DICE_WEIGHT * dice
            chosen = torch.zeros(len(ids), dtype=torch.long, device=device)
            w_iou = torch.ones_like(mloss)
            iou_pred = iou_pred[:, :1]
        ar = torch.arange(len(ids), device=device)
        iou_mse = ((iou_pred - iou) ** 2 * w_iou).sum(1)
        total = total + (mloss[ar, chosen] + IOU_WEIGHT * iou_mse).mean()
        parts["focal"] += float(focal[ar, chosen].mean().detach())
        parts["dice"] += float(dice[ar, chosen].mean().detach())
        parts["iou_mse"] += float(iou_mse.mean().detach())
        if r < s.rounds:
            sel = logits[ar, chosen].detach()  # (K, lr, lr)
            with torch.no_grad():
                up = F.interpolate(sel[:, None], scale_factor=LOSS_UPSAMPLE, mode="bilinear",
                                   align_corners=False)[:, 0, :grid[0], :grid[1]]
            cp, cl = corrective_clicks((up > 0).cpu().numpy(), gt_np)
            for i in range(len(ids)):
                clicks[i].append((float(cp[i, 0]), float(cp[i, 1]), int(cl[i])))
            prev = sel[:, None]
    n = s.rounds + 1
    return total / n, {k: v / n for k, v in parts.items()}


@torch.no_grad()
def evaluate(model: Sam, val: ImageSource, s: Settings, device: torch.device, progress: bool = False,
             dist: DistContext | None = None) -> dict[str, float]:
    """Single-point prompts on held-out images (fixed per image): mean loss, mIoU of the mask the IoU
    head picks among the 3 multimask outputs, and of the best of the 3. With several processes each
    scores every N-th image (the prompts depend only on the image) and the sums are all-reduced."""
    from tqdm import tqdm

    ctx = dist or DistContext()
    model.eval()
    img = int(model.image_encoder.img_size)
    lowres = int(model.prompt_encoder.mask_input_size[0])
    loss_sum = iou_sum = oracle_sum = 0.0
    n = n_img = 0
    for i in tqdm(ctx.strided(len(val)), desc="validation", unit="img", file=sys.stderr, leave=False,
                  disable=not progress):
        rng = np.random.default_rng([s.seed, 7_919, int(val.index[i])])
        rgb, label = val[i]
        rgb_in, lab_in = prepare_image(rgb, label, img, None)
        ids = pick_instances(lab_in, s.val_prompts, s.min_area, rng)
        if len(ids) == 0:
            continue
        grid = loss_grid_hw(lab_in.shape, img, lowres)
        gt_np = gt_masks(lab_in, ids, grid)
        keep = gt_np.reshape(len(ids), -1).any(1)
        ids, gt_np = ids[keep], gt_np[keep]
        if len(ids) == 0:
            continue
        emb = encode(model, [rgb_in], device)
        pts, _ = first_prompts(lab_in, ids, rng, 0.0, 0.0)
        lg, io = decode(model, emb, torch.from_numpy(pts[:, None]).to(device),
                        torch.ones(len(ids), 1, dtype=torch.long, device=device), None, None)
        focal, dice, iou = mask_terms(lg[:, 1:], torch.from_numpy(gt_np).to(device))
        mloss = FOCAL_WEIGHT * focal + DICE_WEIGHT * dice
        per = mloss.min(1).values + IOU_WEIGHT * ((io[:, 1:] - iou) ** 2).mean(1)
        picked = iou.gather(1, io[:, 1:].argmax(1, keepdim=True))[:, 0]
        loss_sum += float(per.sum())
        iou_sum += float(picked.sum())
        oracle_sum += float(iou.max(1).values.sum())
        n += len(ids)
        n_img += 1
    loss_sum, iou_sum, oracle_sum, n, n_img = ctx.sum([loss_sum, iou_sum, oracle_sum, n, n_img])
    if n == 0:
        raise TrainingError("the validation images hold no instance large enough to prompt")
    return {"val_loss": loss_sum / n, "val_miou": iou_sum / n, "val_miou_oracle": oracle_sum / n,
            "val_prompts": float(n), "val_images": float(n_img)}


def _shard_loss(model: Sam, images: list[np.ndarray], plans: list[PromptPlan], n_valid: int, s: Settings,
                device: torch.device, world: int) -> tuple[torch.Tensor, list[float]]:
    """This process's part of a step's loss: the sum of its images' losses / n_valid (the global
    batch's images with a loss), times world (DDP's gradient average undoes it). No image here:
    a zero loss on the patch embedding, which every step with a loss uses anyway, so this
    process joins the gradient average without marking any unused parameter as used."""
    if not plans:
        anchor = model.image_encoder.patch_embed.proj.weight
        return anchor.sum() * 0.0, [0.0, 0.0, 0.0, 0.0]
    emb = encode(model, images, device)
    total = torch.zeros((), device=device)
    parts = [0.0, 0.0, 0.0]
    for j, plan in enumerate(plans):
        loss, p = plan_loss(model, emb[j:j + 1], plan, s, device)
        total = total + loss
        parts = [a + p[k] for a, k in zip(parts, ("focal", "dice", "iou_mse"))]
    return total * (world / n_valid), [float(total.detach()) / n_valid, *(v / n_valid for v in parts)]


def shard_train_step(model: Sam, step: torch.nn.Module, opt: torch.optim.Optimizer,
                     batch: list[tuple[np.ndarray, np.ndarray]], rng: np.random.Generator | None, s: Settings,
                     device: torch.device, ctx: DistContext, plans: list[PromptPlan | None] | None = None
                     ) -> dict[str, float] | None:
    """One optimiser step on a prepared global batch, this process encoding and decoding its
    ctx.shard of it. Every process draws every image's plan from rng in order (the single-process
    stream), so all know which images have a loss; None when none has (the step is skipped
    everywhere, as one process would). plans: already drawn that way (prepare_step), rng unused.
    Returns the global batch's mean loss and its terms."""
    if plans is None:
        if rng is None:
            raise ValueError("shard_train_step needs the step's rng or its plans")
        img = int(model.image_encoder.img_size)
        lowres = int(model.prompt_encoder.mask_input_size[0])
        plans = [plan_prompts(lab, rng, s, img, lowres) for _, lab in batch]
    n_valid = sum(p is not None for p in plans)
    if n_valid == 0:
        return None
    mine = [j for j in range(len(batch))[ctx.shard(len(batch))] if plans[j] is not None]
    loss, parts = step([batch[j][0] for j in mine], [plans[j] for j in mine], n_valid, s, device,
                       ctx.world_size)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if s.clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), s.clip)
    opt.step()
    total, focal, dice, iou_mse = ctx.sum(parts)
    return {"loss": total, "focal": focal, "dice": dice, "iou_mse": iou_mse}


def schedule_progress(step: int, s: Settings, seconds: float = 0.0, budget_s: float = 0.0) -> float:
    """How far the run is, 0..1: steps after the warm-up out of max_steps, or the time spent out of
    the time budget (when there is one), whichever is further."""
    p = (step - s.warmup) / max(1, s.max_steps - s.warmup)
    if budget_s > 0:
        p = max(p, seconds / budget_s)
    return min(1.0, max(0.0, p))


def lr_at(step: int, s: Settings, seconds: float = 0.0, budget_s: float = 0.0) -> float:
    """Linear warm-up to s.lr over s.warmup steps, then cosine decay to s.lr * min_lr_ratio at the
    end of the run (max_steps, or the time budget when that comes first)."""
    if s.warmup > 0 and step < s.warmup:
        return s.lr * (step + 1) / s.warmup
    t = schedule_progress(step, s, seconds, budget_s)
    return s.lr * (s.min_lr_ratio + (1 - s.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t)))


# -------------------------------------------------------------------------------------- training
def _truncate_csv(path: Path, last_step: int) -> None:
    """Drop rows written after the resume state was saved (a run killed between the two)."""
    if not path.is_file():
        return
    with path.open(newline="") as f:
        rows = list(csv.reader(f))
    if not rows:
        return
    head, body = rows[0], rows[1:]
    kept = [r for r in body if r and r[0].isdigit() and int(r[0]) <= last_step]
    if len(kept) != len(body):
        with path.open("w", newline="") as f:
            csv.writer(f).writerows([head, *kept])


def _image_indices(step: int, batch: int, n: int, seed: int, cache: dict[int, np.ndarray]) -> list[int]:
    """Images of one step: a fresh seeded permutation per epoch, so a resumed run sees the same order."""
    out = []
    for k in range(batch):
        g = step * batch + k
        e = g // n
        if e not in cache:
            cache.clear()
            cache[e] = np.random.default_rng([seed, 104_729, e]).permutation(n)
        out.append(int(cache[e][g % n]))
    return out


@dataclass
class StepBatch:
    """Everything of one step that does not depend on the model: the augmented images (rgb, label
    at the encoder's input size) and each image's prompt plan (None: nothing to prompt in it)."""

    step: int
    batch: list[tuple[np.ndarray, np.ndarray]]
    plans: list[PromptPlan | None]


class PrefetchStopped(Exception):
    """Raised inside a worker when the prefetcher closes mid-batch; it never reaches the trainer."""


def prepare_step(train: ImageSource, step: int, indices: list[int], s: Settings, img_size: int, lowres: int,
                 stop: threading.Event | None = None) -> StepBatch:
    """The batch of one step, drawn exactly as the serial loop always drew it: one stream
    np.random.default_rng([seed, step]) for the augmentation of every image in order, then for every
    image's prompt plan in order (the corrective rounds draw nothing). It depends only on step and
    indices, so it may be made ahead and in any thread. stop: checked between images so a closing
    prefetcher does not wait for a whole batch."""
    rng = np.random.default_rng([s.seed, step])
    batch = []
    for i in indices:
        if stop is not None and stop.is_set():
            raise PrefetchStopped
        batch.append(prepare_image(*train[i], img_size, rng if s.augment else None))
    plans = []
    for _, lab in batch:
        if stop is not None and stop.is_set():
            raise PrefetchStopped
        plans.append(plan_prompts(lab, rng, s, img_size, lowres))
    return StepBatch(step, batch, plans)


PREFETCH_THREAD = "uois-sam-batch"  # worker thread names (tests look for leftovers)


class BatchPrefetcher:
    """The batches of the coming steps, made in background threads while the model trains.

    Why: on a GPU the CPU side of a step (reading, augmenting, planning prompts: ~30 ms per image)
    would leave the device idle. A batch depends only on its step (prepare_step), so a batch made
    ahead equals the serial one. The images of a step draw from one sequential stream, so one
    thread makes a whole batch (splitting its images would change the draws); with threads > 1
    the threads work on different steps. depth 0: no thread, each batch is made when asked for.
    make(step, indices, stop) builds a batch in a worker; indices(step) runs in the caller's thread
    (its permutation cache is not shared). An exception of a worker is raised by get() of its step,
    unchanged, as the serial loop would raise it; close() (or leaving the with block) cancels the
    batches not started, stops the running ones at the next image and joins the threads."""

    def __init__(self, make: Callable[[int, list[int], threading.Event], StepBatch],
                 indices: Callable[[int], list[int]], first: int, end: int, depth: int = 1,
                 threads: int = 1) -> None:
        if depth < 0 or threads < 1:
            raise TrainingError(f"--prefetch must be >= 0 and --loader-threads >= 1, got {depth} and {threads}")
        self._make, self._indices, self._end, self.depth = make, indices, end, depth
        self._stop = threading.Event()
        self._pending: deque[tuple[int, Future[StepBatch]]] = deque()
        self._pool = (ThreadPoolExecutor(max_workers=min(threads, depth), thread_name_prefix=PREFETCH_THREAD)
                      if depth > 0 else None)
        self._fill(first)

    def _fill(self, nxt: int) -> None:
        """Queue the steps after the pending ones (from nxt when none is) up to depth, before end."""
        if self._pool is None:
            return
        if self._pending:
            nxt = self._pending[-1][0] + 1
        while len(self._pending) < self.depth and nxt < self._end:
            self._pending.append((nxt, self._pool.submit(self._make, nxt, self._indices(nxt), self._stop)))
            nxt += 1

    def _drop(self) -> None:
        while self._pending:
            self._pending.popleft()[1].cancel()

    def get(self, step: int) -> StepBatch:
        """The batch of step; it re-raises the exception that making it raised."""
        if self._pool is not None and self._pending and self._pending[0][0] != step:
            self._drop()  # not the step that was expected next: start over from it
        self._fill(step)
        if not self._pending:  # serial, or a step at or past end
            return self._make(step, self._indices(step), self._stop)
        fut = self._pending.popleft()[1]
        self._fill(step + 1)  # the next ones start before this one is waited for
        return fut.result()

    def close(self) -> None:
        """Cancel what is queued, stop what runs at its next image, join the threads."""
        self._stop.set()
        self._drop()
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def __enter__(self) -> BatchPrefetcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def write_sidecar(out: Path, arch: dict, s: Settings, info: dict[str, Any]) -> Path:
    """out.json next to the checkpoint: how it was trained and what it scores (hpg_cnn_rgbd.json's style)."""
    side = out.with_suffix(".json")
    model = build_vit_synth(arch)
    init = (info.get("training") or {}).get("init")
    how = (f"fine-tuned from {init} (--init: its weights, a fresh optimizer and schedule)" if init
           else "trained from scratch")
    before = ("the --init checkpoint" if init else "the same architecture at its initial weights")
    doc = {"checkpoint": out.name, "model_type": "vit_synth", "arch": arch,
           "parameters": sum(p.numel() for p in model.parameters()),
           "bytes": out.stat().st_size if out.is_file() else None, **info,
           "settings": asdict(s),
           "notes": ("segment-anything's Sam (ImageEncoderViT, PromptEncoder, MaskDecoder with TwoWayTransformer) "
                     f"{how} by uois-sam-train-sam; val_loss = 20 focal + dice (min over the 3 "
                     "multimask outputs) + IoU-head MSE for one positive point per instance; val_miou = IoU of "
                     f"the mask the IoU head picks, on the 2x low-res grid; 'untrained' = {before}, "
                     "same images and prompts, measured in the same run")}
    side.write_text(json.dumps(doc, indent=1))
    return side


def read_init(path: str | Path) -> tuple[dict, dict]:
    """(arch, state dict) of an --init checkpoint; a missing or unreadable file is a TrainingError."""
    try:
        arch, state, _ = read_sam_synth(path, "--init")
    except CheckpointError as e:
        raise TrainingError(str(e)) from None
    return arch, state


PATCH_EMBED_KEY = "image_encoder.patch_embed.proj.weight"


def init_fits(init_arch: dict, arch: dict) -> bool:
    """Whether a run of arch may start from a checkpoint of init_arch: the same arch, or the same
    with an RGB encoder widened to RGB-D (widen_input)."""
    a, b = dict(init_arch), dict(arch)
    return a == b or (a.pop("in_chans", 3) == 3 and b.pop("in_chans", 3) == 4 and a == b)


def widen_input(state: dict, in_chans: int) -> dict:
    """An RGB checkpoint's state for an encoder of in_chans inputs: the patch embedding's new
    channels start at zero, so the widened model computes exactly what the RGB one did and
    training then learns what the depth channel adds."""
    w = state[PATCH_EMBED_KEY]
    if w.shape[1] >= in_chans:
        return state
    extra = torch.zeros(w.shape[0], in_chans - w.shape[1], *w.shape[2:], dtype=w.dtype)
    return {**state, PATCH_EMBED_KEY: torch.cat([w, extra], 1)}


def arch_difference(have: dict, want: dict) -> str:
    """'key: have -> want' for each architecture size that differs (for one-line errors)."""
    return ", ".join(f"{k}: {have.get(k)!r} -> {want.get(k)!r}" for k in sorted(set(have) | set(want))
                     if have.get(k) != want.get(k))


def train_sam(train: ImageSource, val: ImageSource, out: str | Path, work_dir: str | Path, *,
              arch: dict | None = None, settings: Settings | None = None, device: str = "cpu",
              resume: bool = False, log: str | Path | None = None, max_minutes: float = 0.0,
              meta: dict | None = None, progress: bool = True, dist: DistContext | None = None,
              init: str | Path | None = None, prefetch: int = 1, loader_threads: int = 1) -> dict:
    """Train vit_synth; the best validation checkpoint goes to out (+ out.json), the resume state to
    work_dir/last.pt every save_every steps. Returns a summary.

    init: a vit_synth checkpoint (save_sam_synth) whose weights the run starts from; its arch is the
    run's (an arch given as well must equal it), the optimizer and schedule are this run's own. The
    path and its sha256 go into meta (and the resume state, so a resumed run still records them).

    max_minutes > 0 is a wall-clock budget for the whole run, resumed parts included: training
    stops when it is spent and the cosine decay ends there if that comes before max_steps.
    dist: several processes (see training.dist): batch_size is the global batch, device is
    dist.device, rank 0 writes the files; the clock of the budget is the slowest process's.
    prefetch: batches made ahead in loader_threads background threads (BatchPrefetcher), 0 = made
    in the loop; the result is the same either way (every process makes the whole global batch)."""
    from tqdm import tqdm

    ctx = dist or DistContext()
    progress = progress and ctx.is_main
    s = settings or Settings()
    if len(train) == 0 or len(val) == 0:
        raise TrainingError("training and validation sets must both be non-empty")
    if s.batch_size < 1 or s.prompts < 1 or s.rounds < 0 or s.max_steps < 1:
        raise TrainingError("--batch-size, --prompts and --max-steps must be >= 1 and --rounds >= 0")
    if prefetch < 0 or loader_threads < 1:
        raise TrainingError(f"--prefetch must be >= 0 and --loader-threads >= 1, got {prefetch} and {loader_threads}")
    ctx.check_divisible(s.batch_size, "--batch-size")
    out, work = Path(out), Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    state_path = work / "last.pt"
    log_path = Path(log) if log else work / "train_log.csv"
    dev = pick_device(device)
    meta = dict(meta or {})
    init_state = None
    if init is not None:
        if resume:
            raise TrainingError("--init starts a new run from a checkpoint's weights; --resume continues a "
                                "saved state: give one of them")
        init_arch, init_state = read_init(init)
        if arch is not None and not init_fits(init_arch, check_synth_arch(arch)):
            raise TrainingError(f"--init {init}: its arch differs from the one asked for: "
                                f"{arch_difference(init_arch, check_synth_arch(arch))}")
        arch = init_arch if arch is None else check_synth_arch(arch)
        init_state = widen_input(init_state, arch.get("in_chans", 3))
        meta["init"], meta["init_sha256"] = str(init), sha256_file(init)
    if resume and not state_path.is_file():
        ctx.raise_any(f"--resume: no training state at {state_path}")
    elif not resume and state_path.is_file():
        ctx.raise_any(f"{state_path} holds an earlier run: pass --resume to continue it, or choose another "
                      "--work-dir")
    ctx.raise_any(None)  # every process has passed these checks before rank 0 writes anything
    if resume:
        st = torch.load(state_path, map_location="cpu", weights_only=True)
        if st.get("version") != STATE_VERSION:
            raise TrainingError(f"{state_path} is not a uois-sam-train-sam state (version {st.get('version')})")
        arch = check_synth_arch(st["arch"])
        # the run's hyper-parameters come from the state; only the step budget may grow
        saved = Settings(**{f.name: st["settings"][f.name] for f in fields(Settings) if f.name in st["settings"]})
        saved.max_steps = max(saved.max_steps, s.max_steps)
        s = saved
        for k, v in (st.get("init") or {}).items():  # the weights the resumed run started from
            meta.setdefault(k, v)
    else:
        arch = check_synth_arch(dict(VIT_SYNTH_ARCH) if arch is None else arch)
    ctx.check_divisible(s.batch_size, "--batch-size")  # a resumed run's batch comes from its state
    torch.manual_seed(s.seed)
    model = build_vit_synth(arch)
    if init_state is not None:
        try:
            model.load_state_dict(init_state)
        except RuntimeError as e:
            raise TrainingError(f"--init {init}: its weights do not fit its own arch: "
                                f"{str(e).splitlines()[0]}") from None
    model = model.to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=s.lr, weight_decay=s.weight_decay, betas=(0.9, 0.999))
    step, best, best_step, untrained, history, prior_s = 0, math.inf, -1, None, [], 0.0
    if resume:
        model.load_state_dict(st["model"])
        opt.load_state_dict(st["optimizer"])
        step, best, best_step = int(st["step"]), float(st["best"]), int(st["best_step"])
        prior_s = float(st.get("seconds", 0.0))
        untrained, history = st.get("untrained"), list(st.get("history", []))
        if ctx.is_main:
            _truncate_csv(log_path, step)
    csv_log = CsvLog(log_path, CSV_FIELDS) if ctx.is_main else None
    step_fn = ctx.wrap(model, _shard_loss, find_unused=True) if ctx.enabled else None
    img_size = int(model.image_encoder.img_size)
    n = len(train)
    t_start = time.time()
    budget_s = max_minutes * 60.0

    def elapsed() -> float:
        return prior_s + time.time() - t_start

    def clock() -> float:
        """elapsed() for the budget's stop and learning-rate decisions: the same on every process."""
        return ctx.max(elapsed()) if ctx.enabled and budget_s > 0 else elapsed()

    def save_state() -> None:
        if not ctx.is_main:
            return
        save_torch_atomic({"version": STATE_VERSION, "arch": arch, "settings": asdict(s), "step": step,
                           "best": best, "best_step": best_step, "untrained": untrained, "history": history,
                           "seconds": elapsed(), "model": model.state_dict(), "optimizer": opt.state_dict(),
                           "train_images": n,
                           "init": {k: meta[k] for k in ("init", "init_sha256") if k in meta}}, state_path)

    def sidecar() -> None:
        if not ctx.is_main:
            return
        keys = ("val_loss", "val_miou", "val_miou_oracle")
        b = next(h for h in history if h["step"] == best_step)
        write_sidecar(out, arch, s, {
            "training": {**meta, "best_step": best_step, "steps_run": step, "images_seen": step * s.batch_size,
                         "train_images": n, "val_history": [{k: h[k] for k in ("step", *keys)} for h in history]},
            "heldout": {"val_images": int(b["val_images"]), "prompts": int(b["val_prompts"]),
                        "trained": {k: b[k] for k in keys}, "untrained": {k: untrained[k] for k in keys}}})

    def validate(sums: dict, n_steps: int, seconds: float, imgs: int) -> dict:
        nonlocal best, best_step
        v = evaluate(model, val, s, dev, progress, dist=ctx)
        history.append({"step": step, **v})
        improved = v["val_loss"] < best
        if improved:
            best, best_step = v["val_loss"], step
        if improved and ctx.is_main:
            save_sam_synth(out, model, arch, {**meta, "step": step, **v,
                                              "untrained_val_loss": untrained["val_loss"],
                                              "untrained_val_miou": untrained["val_miou"]})
            sidecar()
        row = {"step": step, "epoch": round(step * s.batch_size / n, 3), "images": step * s.batch_size,
               "lr": opt.param_groups[0]["lr"], "val_loss": v["val_loss"], "val_miou": v["val_miou"],
               "val_miou_oracle": v["val_miou_oracle"], "best": int(improved), "seconds": round(seconds, 1),
               "img_per_s": imgs / seconds if seconds > 0 else ""}
        if n_steps:
            row.update({f"train_{k}": sums[k] / n_steps for k in ("loss", "focal", "dice", "iou_mse")})
        if csv_log:
            csv_log.write(row)
        if progress:
            print(f"step {step}: val loss {v['val_loss']:.4f} mIoU {v['val_miou']:.3f} (best of 3 "
                  f"{v['val_miou_oracle']:.3f}){' (best)' if improved else ''}", file=sys.stderr)
        return v

    lowres = int(model.prompt_encoder.mask_input_size[0])
    perm_cache: dict[int, np.ndarray] = {}
    # the first batches are made during the step-0 validation already
    batches = BatchPrefetcher(lambda k, idx, stop: prepare_step(train, k, idx, s, img_size, lowres, stop),
                              lambda k: _image_indices(k, s.batch_size, n, s.seed, perm_cache),
                              step, s.max_steps, prefetch, loader_threads)
    try:
        if untrained is None:  # the untrained model on the same images and prompts, before any step
            untrained = evaluate(model, val, s, dev, progress, dist=ctx)
            if progress:
                print(f"{'init' if 'init' in meta else 'untrained'}: val loss {untrained['val_loss']:.4f} "
                      f"mIoU {untrained['val_miou']:.3f}", file=sys.stderr)
            if csv_log:
                csv_log.write({"step": 0, "epoch": 0.0, "images": 0, "lr": 0.0, "val_loss": untrained["val_loss"],
                               "val_miou": untrained["val_miou"], "val_miou_oracle": untrained["val_miou_oracle"],
                               "best": 0, "seconds": 0.0})
            save_state()
        sums = {"loss": 0.0, "focal": 0.0, "dice": 0.0, "iou_mse": 0.0}
        n_steps, imgs, t_win = 0, 0, time.time()
        bar = tqdm(total=s.max_steps, initial=step, desc="train vit_synth", unit="step", file=sys.stderr,
                   disable=not progress)
        while step < s.max_steps and not (budget_s > 0 and clock() >= budget_s):
            model.train()
            # every process prepares the whole global batch (prepare_step: one seeded stream per step)
            prepared = batches.get(step)
            batch = prepared.batch
            lr = lr_at(step, s, clock(), budget_s)
            for g in opt.param_groups:
                g["lr"] = lr
            if step_fn is not None:
                done_step = shard_train_step(model, step_fn, opt, batch, None, s, dev, ctx, plans=prepared.plans)
                if done_step is not None:
                    for k in sums:
                        sums[k] += done_step[k]
                    n_steps += 1
                batch_losses = []
            else:
                emb = encode(model, [b[0] for b in batch], dev)
                batch_losses, parts = [], []
                for j, plan in enumerate(prepared.plans):
                    if plan is not None:  # as image_loss, with the plan drawn ahead
                        loss, p = plan_loss(model, emb[j:j + 1], plan, s, dev)
                        batch_losses.append(loss)
                        parts.append(p)
            if batch_losses:
                total = torch.stack(batch_losses).mean()
                opt.zero_grad(set_to_none=True)
                total.backward()
                if s.clip > 0:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), s.clip)
                opt.step()
                sums["loss"] += float(total.detach())
                for k in ("focal", "dice", "iou_mse"):
                    sums[k] += float(np.mean([p[k] for p in parts]))
                n_steps += 1
            imgs += len(batch)
            step += 1
            el = time.time() - t_win
            bar.update(1)
            bar.set_postfix(loss=f"{sums['loss'] / max(n_steps, 1):.3f}", img_s=f"{imgs / max(el, 1e-9):.2f}", lr=f"{lr:.1e}")
            out_of_time = budget_s > 0 and clock() >= budget_s
            done = step >= s.max_steps or out_of_time
            if step % s.val_every == 0 or done:
                validate(sums, n_steps, el, imgs)
                sums = dict.fromkeys(sums, 0.0)
                n_steps, imgs, t_win = 0, 0, time.time()
                save_state()
            elif step % s.save_every == 0:
                save_state()
            if done:
                if out_of_time and progress:
                    print(f"time budget of {max_minutes:g} min reached after step {step}", file=sys.stderr)
                break
        bar.close()
    finally:
        batches.close()  # also on an error or Ctrl-C: no thread outlives the run
    if best_step >= 0 and ctx.is_main and out.is_file():
        sidecar()  # the final step count and the whole validation history
    return {"best_val_loss": best, "best_step": best_step, "steps": step, "untrained": untrained,
            "history": history, "checkpoint": str(out), "seconds": time.time() - t_start}


# ------------------------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="uois-sam-train-sam", description=__doc__.splitlines()[0],
                                formatter_class=HelpFormatter)
    d = p.add_argument_group("data")
    d.add_argument("--data", help="UOAIS-Sim-style folder (uois-sam-synth --out DIR writes one); read per step")
    d.add_argument("--annotations", help="COCO json of --data, file names relative to --data "
                   "(default DATA/annotations.json)")
    d.add_argument("--synthetic", type=int, default=0,
                   help="instead: render N generator scenes once, kept in memory (quick runs)")
    d.add_argument("--synthetic-seed", type=int, default=0, help="seed of the first synthetic training scene")
    d.add_argument("--width", type=int, default=640, help="synthetic image width")
    d.add_argument("--height", type=int, default=480, help="synthetic image height")
    d.add_argument("--val-data", help="validation folder (default: --val-split of the training data)")
    d.add_argument("--val-annotations", help="COCO json of --val-data (default VAL_DATA/annotations.json)")
    d.add_argument("--val-synthetic", type=int, default=0, help="render M synthetic validation scenes")
    d.add_argument("--val-seed", type=int, default=10_000_000, help="seed of the first synthetic validation scene")
    d.add_argument("--val-split", type=float, default=0.05,
                   help="fraction of the training data held out when no --val-data / --val-synthetic")
    d.add_argument("--val-max", type=int, default=48, help="most validation images (each costs ~0.4 s on one CPU thread)")
    d.add_argument("--data-fraction", type=float, default=1.0, help="use this fraction of the training images")
    m = p.add_argument_group("model")
    m.add_argument("--arch", help="JSON object overriding vit_synth sizes, e.g. '{\"depth\": 4, "
                   "\"global_attn_indexes\": [1, 3]}' (default: VIT_SYNTH_ARCH)")
    m.add_argument("--init", help="start from this vit_synth checkpoint's weights and arch (a fresh optimizer "
                   "and schedule; --arch, when given, must agree with it, except '{\"in_chans\": 4}', which widens "
                   "an RGB checkpoint to RGB-D with the depth channel's weights at zero; not with --resume)")
    t = p.add_argument_group("training")
    dflt = Settings()
    t.add_argument("--max-steps", type=int, default=dflt.max_steps, help="optimiser steps (end of the cosine decay)")
    t.add_argument("--epochs", type=float, default=0.0, help="instead: this many passes over the training images")
    t.add_argument("--batch-size", type=int, default=dflt.batch_size, help="images per step")
    t.add_argument("--prompts", type=int, default=dflt.prompts, help="instances prompted per image")
    t.add_argument("--rounds", type=int, default=dflt.rounds, help="corrective-click rounds (0 = first prompt only)")
    t.add_argument("--box-prob", type=float, default=dflt.box_prob, help="chance of a box as the first prompt")
    t.add_argument("--box-jitter", type=float, default=dflt.box_jitter, help="box corner noise, fraction of the side")
    t.add_argument("--lr", type=float, default=dflt.lr, help="AdamW peak learning rate")
    t.add_argument("--weight-decay", type=float, default=dflt.weight_decay, help="AdamW weight decay")
    t.add_argument("--warmup", type=int, default=dflt.warmup, help="linear warm-up steps")
    t.add_argument("--min-lr-ratio", type=float, default=dflt.min_lr_ratio, help="final lr / peak lr (cosine)")
    t.add_argument("--clip", type=float, default=dflt.clip, help="gradient norm clip (0 = off)")
    t.add_argument("--no-augment", action="store_true", help="no crop / flip / colour augmentation")
    t.add_argument("--val-every", type=int, default=dflt.val_every, help="steps between validations")
    t.add_argument("--save-every", type=int, default=dflt.save_every, help="steps between resume states")
    t.add_argument("--val-prompts", type=int, default=dflt.val_prompts, help="most instances per validation image")
    o = p.add_argument_group("run")
    o.add_argument("--out", required=True, help="best checkpoint (state dict + arch + meta) and OUT.json next to it")
    o.add_argument("--work-dir", default="out/train_sam",
                   help="resume state (last.pt) and the CSV log; keep it outside the package folder")
    o.add_argument("--log", help="CSV log (default WORK_DIR/train_log.csv)")
    o.add_argument("--resume", action="store_true", help="continue from WORK_DIR/last.pt")
    o.add_argument("--device", default="auto", help="auto (cuda when available, else cpu), cpu, cuda or cuda:N")
    o.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")
    o.add_argument("--prefetch", type=int, default=1,
                   help="batches (images, augmentation, prompt plans) prepared ahead in background threads while "
                   "the model trains, so a GPU need not wait for the CPU; 0 = in the loop. Same results either way")
    o.add_argument("--loader-threads", type=int, default=1,
                   help="threads preparing the --prefetch batches, each a whole batch of its own step (a step's "
                   "images draw from one random stream), so at most --prefetch of them are busy")
    o.add_argument("--seed", type=int, default=0, help="seed of initialisation, sampling, augmentation and splits")
    o.add_argument("--max-minutes", type=float, default=0.0,
                   help="wall-clock budget of the whole run, resumes included (0 = none): training stops "
                   "(validates, saves) when it is spent, and the cosine decay ends there if that comes first")
    o.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def _load_sources(a: argparse.Namespace, in_chans: int = 3) -> tuple[ImageSource, ImageSource]:
    if a.data:
        data = dataset_source(a.data, a.annotations, in_chans)
    elif a.synthetic > 0:
        data = synthetic_source(a.synthetic, a.synthetic_seed, a.width, a.height, in_chans=in_chans)
    else:
        raise TrainingError("give --data DIR (UOAIS-Sim-style folder) or --synthetic N")
    if a.val_data:
        val, train = dataset_source(a.val_data, a.val_annotations, in_chans), data
    elif a.val_synthetic > 0:
        val = synthetic_source(a.val_synthetic, a.val_seed, a.width, a.height, desc="validation scenes",
                               in_chans=in_chans)
        train = data
    else:
        n_val = max(1, int(round(a.val_split * len(data))))
        if n_val >= len(data):
            raise TrainingError(f"{len(data)} images are too few to split off {n_val} for validation")
        perm = np.random.default_rng(a.seed).permutation(len(data))
        val, train = data.subset(np.sort(perm[:n_val])), data.subset(np.sort(perm[n_val:]))
    if a.val_max > 0 and len(val) > a.val_max:
        val = val.subset(np.arange(a.val_max))
    train = train.subset(fraction_indices(len(train), a.data_fraction, a.seed))
    return train, val


def main(argv: list[str] | None = None) -> int:
    """The CLI; under torchrun every process runs it with the same options (see training.dist)."""
    a = build_parser().parse_args(argv)
    with TrainerRun("uois-sam-train-sam") as run:
        dev = str(pick_device(a.device))
        run.ctx = ctx = init_distributed(dev)  # a plain run: one process, dev unchanged
        dev = str(ctx.device)
        if a.threads > 0:
            torch.set_num_threads(a.threads)
        if a.init and a.resume:
            raise TrainingError("--init starts a new run from a checkpoint's weights; --resume continues a "
                                "saved state: give one of them")
        over: dict = {}
        if a.arch:
            try:
                over = json.loads(a.arch)
            except json.JSONDecodeError as e:
                raise TrainingError(f"--arch is not JSON: {e}") from None
            if not isinstance(over, dict):
                raise TrainingError("--arch must be a JSON object of vit_synth sizes")
        # with --init the checkpoint's arch is the base, and --arch may only repeat it
        base = read_init(a.init)[0] if a.init else dict(VIT_SYNTH_ARCH)
        try:
            arch = check_synth_arch({**base, **over}, "--arch")
        except ValueError as e:
            raise TrainingError(str(e)) from None
        if a.init and not init_fits(base, arch):
            raise TrainingError(f"--arch conflicts with the arch of --init {a.init}: {arch_difference(base, arch)} "
                                "(only in_chans 3 -> 4 may differ: an RGB checkpoint widened to RGB-D)")
        ctx.check_divisible(a.batch_size, "--batch-size")
        train, val = _load_sources(a, arch.get("in_chans", 3))
        ctx.check_same("the training / validation image counts", (len(train), len(val)))
        s = Settings(prompts=a.prompts, rounds=a.rounds, box_prob=a.box_prob, box_jitter=a.box_jitter,
                     batch_size=a.batch_size, lr=a.lr, weight_decay=a.weight_decay, warmup=a.warmup,
                     max_steps=a.max_steps, min_lr_ratio=a.min_lr_ratio, clip=a.clip, augment=not a.no_augment,
                     val_every=a.val_every, save_every=a.save_every, val_prompts=a.val_prompts, seed=a.seed)
        if a.epochs > 0:
            s.max_steps = max(1, math.ceil(a.epochs * len(train) / max(a.batch_size, 1)))
        if min(s.val_every, s.save_every, s.val_prompts) < 1:
            raise TrainingError("--val-every, --save-every and --val-prompts must be >= 1")
        on = f"{ctx.world_size} processes ({ctx.device.type})" if ctx.enabled else dev
        ctx.print(f"training vit_synth on {len(train)} images, validating on {len(val)}; {s.max_steps} steps of "
                  f"{s.batch_size} images on {on}")
        meta = {"command": "uois-sam-train-sam " + shlex.join(sys.argv[1:] if argv is None else argv),
                "data": a.data or f"synthetic:{a.synthetic}@{a.synthetic_seed}",
                "val_data": a.val_data or (f"synthetic:{a.val_synthetic}@{a.val_seed}" if a.val_synthetic
                                           else f"{a.val_split} split"),
                "data_fraction": a.data_fraction, "device": dev}
        if ctx.enabled:
            meta["world_size"] = ctx.world_size
        res = train_sam(train, val, a.out, a.work_dir, arch=arch, settings=s, device=dev, resume=a.resume,
                        log=a.log, max_minutes=a.max_minutes, meta=meta, progress=not a.quiet, dist=ctx,
                        init=a.init, prefetch=a.prefetch, loader_threads=a.loader_threads)
        u = res["untrained"]
        best = next((h for h in res["history"] if h["step"] == res["best_step"]), None)
        if best and ctx.is_main:
            print(f"best validation loss {best['val_loss']:.4f} mIoU {best['val_miou']:.3f} at step {res['best_step']} "
                  f"({'init' if a.init else 'untrained'}: {u['val_loss']:.4f} / {u['val_miou']:.3f}); "
                  f"checkpoint {res['checkpoint']}")
        return 0
    return run.code


if __name__ == "__main__":
    raise SystemExit(main())
