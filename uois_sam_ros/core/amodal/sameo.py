"""SAMEO (Tai et al., "Segment Anything, Even Occluded"): SAM's mask decoder fine-tuned to give
amodal masks from box prompts, behind any front end that gives boxes (here: our instances).

Training (``sameo_step``), as in section 3.1 / 4.1 of the paper:
- only the mask decoder trains; the image and prompt encoders stay frozen (their output is
  computed without gradients);
- each instance is prompted by its modal (visible) or its amodal GT box, 50/50;
- the single-mask output (token 0) is supervised by the amodal GT mask with
  Dice + Focal (gamma = 2) + 0.05 * |predicted IoU - IoU(mask, GT)| (eqs. 2-5);
- Adam at lr 1e-4, no scheduler (``decoder_optimizer``);
- the dual annotation: occluded and unoccluded versions of instances are both in the data
  (training/amodal.py mixes the rendered amodal scenes, which hold both, with TAOS pairs
  whose unoccluded originals are kept), or the decoder learns to over-predict occlusion.

Inference: the box of each visible instance is the prompt; the amodal mask is the decoder's
mask united with the visible mask (a completion never removes what is seen), and the
refined confidence is front-end score x predicted IoU (eq. 6).

The shared SAM plumbing (image preparation, box decoding, the loss terms) is also used by the
Amodal SAM adapters (sca.py). Losses are computed on the decoder's low-res logits against
the GT area-resized to that grid, over the image region only (SAM pads to a square).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import sigmoid_focal_loss

from uois_sam_ros.core.segment.depth_channel import encoder_channels, encoder_image, resize_longest_side
from uois_sam_ros.core.weights import (
    CheckpointError,
    cpu_state_dict,
    load_checked,
    read_checkpoint,
    save_torch_atomic,
)

DECODER_FORMAT = "uois_sam_ros.sameo_decoder"
FOCAL_GAMMA = 2.0
IOU_WEIGHT = 0.05  # lambda of eq. 2
LR = 1e-4


@dataclass
class AmodalItem:
    """One image's instances, ready for SAM. masks are at the resized input size (h_in, w_in)."""

    image: torch.Tensor  # (1, 3, S, S) normalised and padded (Sam.preprocess)
    input_hw: tuple[int, int]  # the resized image's size inside the S x S square
    original_hw: tuple[int, int]
    visible: np.ndarray  # (K, h_in, w_in) bool
    amodal: np.ndarray  # (K, h_in, w_in) bool
    # the image encoder's output, when the caller caches it: only the decoder trains, so an
    # unchanged image need not be encoded again every step
    embedding: torch.Tensor | None = None


def prepare_image(model: nn.Module, rgb: np.ndarray, depth: np.ndarray | None = None
                  ) -> tuple[torch.Tensor, tuple[int, int]]:
    """(1, C, S, S) encoder input and the resized size, exactly as SamPredictor.set_image does
    (C = 4 for an RGB-D small SAM, which needs depth: depth_channel.encoder_image)."""
    size = int(model.image_encoder.img_size)
    resized = resize_longest_side(encoder_image(rgb, depth, encoder_channels(model)), size)
    dev = next(model.parameters()).device
    x = torch.as_tensor(resized, device=dev).permute(2, 0, 1)[None].float()
    return model.preprocess(x), (int(resized.shape[0]), int(resized.shape[1]))


def prepare_item(model: nn.Module, rgb: np.ndarray, visible: np.ndarray, amodal: np.ndarray,
                 depth: np.ndarray | None = None) -> AmodalItem:
    """An AmodalItem from a full-size image (and its depth, which an RGB-D SAM needs) and (K, H, W)
    visible / amodal masks."""
    visible, amodal = np.asarray(visible, bool), np.asarray(amodal, bool)
    if visible.shape != amodal.shape or visible.shape[1:] != rgb.shape[:2]:
        raise ValueError(f"visible {visible.shape} / amodal {amodal.shape} do not match the image {rgb.shape[:2]}")
    image, (h, w) = prepare_image(model, rgb, depth)
    return AmodalItem(image, (h, w), rgb.shape[:2], resize_masks(visible, h, w), resize_masks(amodal, h, w))


def resize_masks(masks: np.ndarray, h: int, w: int) -> np.ndarray:
    """(K, H, W) bool -> (K, h, w) bool, nearest neighbour."""
    if masks.shape[1:] == (h, w):
        return masks.copy()
    return np.stack([cv2.resize(m.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST).astype(bool)
                     for m in masks]) if len(masks) else np.zeros((0, h, w), bool)


def mask_boxes(masks: np.ndarray) -> np.ndarray:
    """(K, 4) float32 x0, y0, x1, y1 tight boxes in pixel-edge coordinates (x1 = last column + 1)."""
    out = np.zeros((len(masks), 4), np.float32)
    for k, m in enumerate(masks):
        ys, xs = np.flatnonzero(m.any(axis=1)), np.flatnonzero(m.any(axis=0))
        if len(ys):
            out[k] = (xs[0], ys[0], xs[-1] + 1, ys[-1] + 1)
    return out


def lowres_grid(model: nn.Module, input_hw: tuple[int, int]) -> tuple[int, int]:
    """Rows/cols of the decoder's low-res logits that cover the resized image."""
    lr = int(model.prompt_encoder.mask_input_size[0])
    size = int(model.image_encoder.img_size)
    return max(1, math.ceil(input_hw[0] * lr / size)), max(1, math.ceil(input_hw[1] * lr / size))


def masks_to_grid(masks: np.ndarray, grid_hw: tuple[int, int], input_hw: tuple[int, int], size: int,
                  lowres: int) -> np.ndarray:
    """(K, h_in, w_in) masks -> (K, gh, gw) bool on the low-res grid (>= 50 % covered).

    The low-res grid spans the padded S x S square, so the image region is resized to the
    grid cells it covers in proportion (input_hw * lowres / size), then cropped."""
    h, w = input_hw
    sh, sw = h * lowres / size, w * lowres / size
    out = np.zeros((len(masks), *grid_hw), bool)
    for k, m in enumerate(masks):
        r = cv2.resize(m.astype(np.float32), (max(1, round(sw)), max(1, round(sh))), interpolation=cv2.INTER_AREA)
        gh, gw = min(grid_hw[0], r.shape[0]), min(grid_hw[1], r.shape[1])
        out[k, :gh, :gw] = r[:gh, :gw] >= 0.5
    return out


def decode_boxes(model: nn.Module, embedding: torch.Tensor, boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Box prompts (K, 4) in encoder-input pixels -> single-mask low-res logits (K, 1, lr, lr) and
    predicted IoU (K,). embedding: (1, C, g, g), shared by all K prompts."""
    sparse, dense = model.prompt_encoder(points=None, boxes=boxes, masks=None)
    logits, iou = model.mask_decoder(image_embeddings=embedding, image_pe=model.prompt_encoder.get_dense_pe(),
                                     sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                                     multimask_output=False)
    return logits, iou[:, 0]


def dice_loss(logits: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """Per-mask soft Dice loss 1 - 2|P G| / (|P| + |G|) (eq. 3), smoothed by 1."""
    p = logits.sigmoid().flatten(1)
    g = gt.float().flatten(1)
    return 1.0 - (2.0 * (p * g).sum(1) + 1.0) / (p.sum(1) + g.sum(1) + 1.0)


def hard_iou(logits: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """Per-mask IoU of logits > 0 with gt (no gradient); empty vs empty is 1."""
    with torch.no_grad():
        p = (logits > 0).flatten(1)
        g = gt.bool().flatten(1)
        inter, union = (p & g).sum(1).float(), (p | g).sum(1).float()
        return torch.where(union > 0, inter / union.clamp(min=1.0), torch.ones_like(union))


def crop_logits(logits: torch.Tensor, grid_hw: tuple[int, int]) -> torch.Tensor:
    """(K, 1, lr, lr) -> (K, gh, gw): the cells over the image (drops the padding)."""
    return logits[:, 0, : grid_hw[0], : grid_hw[1]]


def sameo_loss(logits: torch.Tensor, iou_pred: torch.Tensor, gt: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
    """Dice + Focal(gamma 2) + 0.05 * L1(IoU) of (K, gh, gw) logits against (K, gh, gw) amodal GT."""
    target = gt.float()
    dice = dice_loss(logits, target)
    focal = sigmoid_focal_loss(logits, target, alpha=-1.0, gamma=FOCAL_GAMMA, reduction="none").flatten(1).mean(1)
    iou = hard_iou(logits, target)
    l1 = (iou_pred - iou).abs()
    loss = (dice + focal + IOU_WEIGHT * l1).mean()
    return loss, {"dice": float(dice.detach().mean()), "focal": float(focal.detach().mean()),
                  "iou_l1": float(l1.detach().mean()), "iou": float(iou.mean())}


def decoder_optimizer(model: nn.Module, lr: float = LR) -> torch.optim.Optimizer:
    """Freeze everything but the mask decoder; Adam over the decoder (the paper: lr 1e-4)."""
    for p in model.parameters():
        p.requires_grad_(False)
    for p in model.mask_decoder.parameters():
        p.requires_grad_(True)
    return torch.optim.Adam(model.mask_decoder.parameters(), lr=lr)


def pick_boxes(visible: np.ndarray, amodal: np.ndarray, rng: np.random.Generator, modal_prob: float = 0.5
               ) -> np.ndarray:
    """Each instance's prompt box: its modal (visible) box with probability modal_prob, else its
    amodal box (SAMEO: 50/50). Instances with an empty visible mask use the amodal box."""
    modal, full = mask_boxes(visible), mask_boxes(amodal)
    use_modal = (rng.random(len(visible)) < modal_prob) & visible.any(axis=(1, 2))
    return np.where(use_modal[:, None], modal, full).astype(np.float32)


def item_targets(model: nn.Module, item: AmodalItem) -> tuple[torch.Tensor, tuple[int, int]]:
    """(K, gh, gw) amodal GT on the low-res grid, and that grid's size."""
    grid = lowres_grid(model, item.input_hw)
    lr, size = int(model.prompt_encoder.mask_input_size[0]), int(model.image_encoder.img_size)
    dev = item.image.device
    return torch.from_numpy(masks_to_grid(item.amodal, grid, item.input_hw, size, lr)).to(dev), grid


def sameo_step(model: nn.Module, optimizer: torch.optim.Optimizer, items: list[AmodalItem],
               rng: np.random.Generator, modal_prob: float = 0.5) -> dict[str, float]:
    """One optimiser step of the decoder over a batch of images (all their instances)."""
    model.mask_decoder.train()
    losses, parts = [], []
    for item in items:
        if len(item.amodal) == 0:
            continue
        if item.embedding is not None:
            emb = item.embedding
        else:
            with torch.no_grad():
                emb = model.image_encoder(item.image)
        boxes = torch.from_numpy(pick_boxes(item.visible, item.amodal, rng, modal_prob)).to(emb.device)
        gt, grid = item_targets(model, item)
        logits, iou = decode_boxes(model, emb, boxes)
        loss, p = sameo_loss(crop_logits(logits, grid), iou, gt)
        losses.append(loss)
        parts.append(p)
    if not losses:
        return {}
    total = torch.stack(losses).mean()
    optimizer.zero_grad(set_to_none=True)
    total.backward()
    optimizer.step()
    model.mask_decoder.eval()
    return {"loss": float(total.detach()), **{k: float(np.mean([p[k] for p in parts])) for k in parts[0]}}


@torch.no_grad()
def predict_item(model: nn.Module, item: AmodalItem, boxes: np.ndarray | None = None,
                 embedding: torch.Tensor | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Amodal masks at the resized input size (K, h_in, w_in) and predicted IoUs (K,), prompted by
    the visible boxes (or the boxes given, in encoder-input pixels). The visible mask is kept."""
    k = len(item.visible)
    h, w = item.input_hw
    if k == 0:
        return np.zeros((0, h, w), bool), np.zeros(0, np.float32)
    if embedding is None:
        embedding = item.embedding
    emb = model.image_encoder(item.image) if embedding is None else embedding
    b = mask_boxes(item.visible) if boxes is None else np.asarray(boxes, np.float32)
    logits, iou = decode_boxes(model, emb, torch.from_numpy(b).to(emb.device))
    size = int(model.image_encoder.img_size)
    up = F.interpolate(logits, size=(size, size), mode="bilinear", align_corners=False)[:, 0, :h, :w]
    return (up > model.mask_threshold).cpu().numpy() | item.visible, iou.float().cpu().numpy()


def refined_confidence(front_score: np.ndarray | float, iou_pred: np.ndarray) -> np.ndarray:
    """SAMEO eq. 6: the front end's score times the decoder's predicted IoU."""
    return np.asarray(front_score, np.float32) * np.clip(np.asarray(iou_pred, np.float32), 0.0, 1.0)


def save_decoder(path: str | Path, model: nn.Module, meta: dict | None = None) -> None:
    """The fine-tuned mask decoder only (the rest of SAM is unchanged, so the file is small)."""
    save_torch_atomic({"format": DECODER_FORMAT, "meta": dict(meta or {}),
                       "transformer_dim": int(model.mask_decoder.transformer_dim),
                       "state_dict": cpu_state_dict(model.mask_decoder)}, path)


def load_decoder(path: str | Path, model: nn.Module) -> dict[str, Any]:
    """Put a save_decoder file's weights into model.mask_decoder (checked key by key); its meta."""
    blob = read_checkpoint(path, "SAMEO decoder", DECODER_FORMAT)
    dim = int(model.mask_decoder.transformer_dim)
    if int(blob.get("transformer_dim", -1)) != dim:
        raise CheckpointError(f"SAMEO decoder {path} is for a SAM decoder of width {blob.get('transformer_dim')}, "
                              f"this SAM's decoder has width {dim} (check sam.model_type / sam.checkpoint)")
    load_checked(model.mask_decoder, blob.get("state_dict") or {}, path, what="SAMEO decoder")
    return blob.get("meta") or {}
