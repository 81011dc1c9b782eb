"""The shipped weights-free amodal completer, and the two trivial baselines.

For each visible instance the completer looks at a square RGB-D crop around it and predicts
its full (amodal) mask in that crop with a small U-Net (about 0.5M parameters, trained here
on the synthetic generator's amodal masks plus TAOS occlusions; uois-sam-train-amodal).

The crop is the instance's visible box grown by ``context`` of its side on each side, grown
further to take in the boxes of the instances in front of it (the occluders; at most
``max_context`` of the side), made square and warped to crop_size x crop_size. Its input
channels (IN_CHANNELS):

    rgb (3)          colour, scaled to [-0.5, 0.5]
    depth (1)        depth minus the instance's median visible depth, / depth_scale, clipped to +-2
    depth_valid (1)  1 where the sensor gave a depth
    visible (1)      this instance's visible mask
    occluders (1)    the instances in front of it (occlusion.py: depth along shared boundaries)
    others (1)       every other instance (side by side, or behind it)
    in_image (1)     1 inside the frame, 0 where the crop runs past the image border

The output probability is warped back to the image. Its amodal mask is (p > threshold)
united with the visible mask (a completion never removes what is seen); with
``restrict`` the added (occluded) part is kept only where something can hide the object:
other instances' pixels and depth holes (dark or transparent occluders). An unoccluded
instance therefore keeps its visible mask.

The crop geometry and the channel layout are part of the checkpoint's arch, so a checkpoint
always runs with the geometry it was trained with.
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

from uois_sam_ros.core.amodal.occlusion import occluder_masks
from uois_sam_ros.core.weights import (
    CheckpointError,
    cpu_state_dict,
    load_checked,
    read_checkpoint,
    save_torch_atomic,
)

COMPLETER_FORMAT = "uois_sam_ros.amodal_completer"
COMPLETER_FILENAME = "amodal_completer.pt"
IN_CHANNELS = ("r", "g", "b", "depth", "depth_valid", "visible", "occluders", "others", "in_image")
DEFAULT_ARCH: dict[str, Any] = {"crop_size": 64, "widths": [16, 32, 64, 96], "context": 0.5, "max_context": 1.5,
                                "min_side": 24, "depth_scale": 0.1}


# ------------------------------------------------------------------------------------ network
def _conv(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class CompleterNet(nn.Module):
    """A small U-Net: 4 scales (crop, /2, /4, /8), one skip per scale, 1 output logit per pixel."""

    def __init__(self, widths: tuple[int, ...] | list[int] = (16, 32, 64, 96), in_ch: int = len(IN_CHANNELS)) -> None:
        super().__init__()
        w1, w2, w3, w4 = (int(x) for x in widths)
        self.widths = [w1, w2, w3, w4]
        self.e1 = _conv(in_ch, w1)
        self.e2 = nn.Sequential(_conv(w1, w2), _conv(w2, w2))
        self.e3 = nn.Sequential(_conv(w2, w3), _conv(w3, w3))
        self.e4 = nn.Sequential(_conv(w3, w4), _conv(w4, w4), _conv(w4, w4))
        self.d3 = _conv(w4 + w3, w3)
        self.d2 = _conv(w3 + w2, w2)
        self.d1 = _conv(w2 + w1, w1)
        self.out = nn.Conv2d(w1, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 9, S, S) -> (B, S, S) logits; S must be a multiple of 8."""
        e1 = self.e1(x)
        e2 = self.e2(F.max_pool2d(e1, 2))
        e3 = self.e3(F.max_pool2d(e2, 2))
        e4 = self.e4(F.max_pool2d(e3, 2))
        d3 = self.d3(torch.cat([F.interpolate(e4, scale_factor=2.0, mode="nearest"), e3], 1))
        d2 = self.d2(torch.cat([F.interpolate(d3, scale_factor=2.0, mode="nearest"), e2], 1))
        d1 = self.d1(torch.cat([F.interpolate(d2, scale_factor=2.0, mode="nearest"), e1], 1))
        return self.out(d1)[:, 0]


def check_arch(arch: Any, where: str = "completer arch") -> dict[str, Any]:
    """A complete, consistent arch dict (DEFAULT_ARCH's keys); ValueError naming the problem."""
    if not isinstance(arch, dict) or set(arch) != set(DEFAULT_ARCH):
        raise ValueError(f"{where}: expected the keys {sorted(DEFAULT_ARCH)}, got {arch!r}")
    a = {"crop_size": int(arch["crop_size"]), "widths": [int(w) for w in arch["widths"]],
         "context": float(arch["context"]), "max_context": float(arch["max_context"]),
         "min_side": int(arch["min_side"]), "depth_scale": float(arch["depth_scale"])}
    if a["crop_size"] < 16 or a["crop_size"] % 8 or len(a["widths"]) != 4 or min(a["widths"]) < 1:
        raise ValueError(f"{where}: crop_size must be a multiple of 8 (>= 16) and widths 4 positive numbers: {a}")
    if not 0 <= a["context"] <= a["max_context"] or a["depth_scale"] <= 0 or a["min_side"] < 1:
        raise ValueError(f"{where}: need 0 <= context <= max_context, depth_scale > 0, min_side >= 1: {a}")
    return a


# ----------------------------------------------------------------------------------- geometry
@dataclass(frozen=True)
class Crop:
    """A square crop: image edge coordinates x0, y0 of its corner and its side, in pixels."""

    x0: float
    y0: float
    side: float
    size: int

    def to_crop(self) -> np.ndarray:
        """2x3 affine: image pixel centres -> crop pixel centres (for cv2.warpAffine)."""
        a = self.side / self.size
        bx, by = self.x0 + 0.5 * a - 0.5, self.y0 + 0.5 * a - 0.5
        return np.array([[1 / a, 0, -bx / a], [0, 1 / a, -by / a]], np.float64)

    def image_window(self, height: int, width: int) -> tuple[int, int, int, int]:
        """The image pixels the crop covers, clipped: y0, y1, x0, x1 (exclusive)."""
        return (max(0, math.floor(self.y0)), min(height, math.ceil(self.y0 + self.side)),
                max(0, math.floor(self.x0)), min(width, math.ceil(self.x0 + self.side)))


def _box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    ys = np.flatnonzero(mask.any(axis=1))
    if not len(ys):
        return None
    xs = np.flatnonzero(mask.any(axis=0))
    return int(xs[0]), int(ys[0]), int(xs[-1]) + 1, int(ys[-1]) + 1


def crop_for(visible: np.ndarray, occluders: np.ndarray | None, arch: dict[str, Any]) -> Crop | None:
    """The square crop of an instance (see the module doc); None for an empty mask."""
    b = _box(visible)
    if b is None:
        return None
    x0, y0, x1, y1 = (float(v) for v in b)
    w, h = x1 - x0, y1 - y0
    c, cmax = arch["context"], arch["max_context"]
    lo_x, lo_y, hi_x, hi_y = x0 - c * w, y0 - c * h, x1 + c * w, y1 + c * h
    if occluders is not None:
        ob = _box(occluders)
        if ob is not None:  # take in the occluders' boxes, up to max_context
            lo_x = min(lo_x, max(float(ob[0]), x0 - cmax * w))
            lo_y = min(lo_y, max(float(ob[1]), y0 - cmax * h))
            hi_x = max(hi_x, min(float(ob[2]), x1 + cmax * w))
            hi_y = max(hi_y, min(float(ob[3]), y1 + cmax * h))
    side = max(hi_x - lo_x, hi_y - lo_y, float(arch["min_side"]))
    cx, cy = (lo_x + hi_x) / 2, (lo_y + hi_y) / 2
    return Crop(cx - side / 2, cy - side / 2, side, int(arch["crop_size"]))


def _warp(img: np.ndarray, crop: Crop, nearest: bool = False) -> np.ndarray:
    flags = cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR
    return cv2.warpAffine(img, crop.to_crop(), (crop.size, crop.size), flags=flags,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def crop_inputs(rgb: np.ndarray, depth: np.ndarray | None, visible: np.ndarray, occluders: np.ndarray,
                others: np.ndarray, crop: Crop, depth_scale: float) -> np.ndarray:
    """(9, S, S) float32 network input of one instance (channel order IN_CHANNELS)."""
    s = crop.size
    out = np.zeros((len(IN_CHANNELS), s, s), np.float32)
    out[0:3] = _warp(rgb, crop).astype(np.float32).transpose(2, 0, 1) / 255.0 - 0.5
    if depth is not None:
        d = np.nan_to_num(np.asarray(depth, np.float32), nan=0.0, posinf=0.0, neginf=0.0)
        ok = d > 0
        ref = d[visible & ok]
        if len(ref):
            dc = _warp(d, crop, nearest=True)
            valid = dc > 0
            out[3] = np.where(valid, np.clip((dc - float(np.median(ref))) / depth_scale, -2.0, 2.0), 0.0)
            out[4] = valid
    masks = np.stack([visible, occluders, others], axis=-1).astype(np.float32)
    out[5:8] = _warp(masks, crop).transpose(2, 0, 1)
    h, w = visible.shape
    out[8] = _warp(np.ones((h, w), np.float32), crop)
    return out


def crop_target(mask: np.ndarray, crop: Crop) -> np.ndarray:
    """(S, S) bool: a full-size mask (the amodal GT) in crop coordinates (>= 50 % covered)."""
    return _warp(np.asarray(mask, np.float32), crop) >= 0.5


def paste_back(prob: np.ndarray, crop: Crop, height: int, width: int) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """The crop's (S, S) map warped back onto the image window it covers: (window map, window)."""
    y0, y1, x0, x1 = crop.image_window(height, width)
    if y1 <= y0 or x1 <= x0:
        return np.zeros((0, 0), np.float32), (y0, y1, x0, x1)
    m = crop.to_crop().copy()
    m[:, 2] += m[:, 0] * x0 + m[:, 1] * y0  # window pixel (0, 0) is image pixel (x0, y0)
    win = cv2.warpAffine(prob.astype(np.float32), m, (x1 - x0, y1 - y0), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                         borderMode=cv2.BORDER_REPLICATE)
    return win, (y0, y1, x0, x1)


@dataclass
class CropBatch:
    """Network inputs for the instances of one frame; crops[k] is None for an empty mask."""

    inputs: np.ndarray  # (M, 9, S, S) for the non-empty instances
    index: np.ndarray  # (M,) which instance each row is
    crops: list[Crop | None]


def build_batch(rgb: np.ndarray, depth: np.ndarray | None, masks: np.ndarray, order: np.ndarray,
                arch: dict[str, Any], only: list[int] | None = None) -> CropBatch:
    """Crops and inputs of every instance of a frame (masks (N, H, W); order from occlusion_order),
    or of the instances in only (training)."""
    masks = np.asarray(masks, bool)
    front = occluder_masks(masks, order)
    union = masks.any(axis=0) if len(masks) else None
    rows, index, crops = [], [], []
    for k, m in enumerate(masks):
        crop = crop_for(m, front[k], arch) if only is None or k in only else None
        crops.append(crop)
        if crop is None:
            continue
        others = union & ~m & ~front[k]
        rows.append(crop_inputs(rgb, depth, m, front[k], others, crop, arch["depth_scale"]))
        index.append(k)
    s = int(arch["crop_size"])
    inputs = np.stack(rows) if rows else np.zeros((0, len(IN_CHANNELS), s, s), np.float32)
    return CropBatch(inputs, np.asarray(index, np.int64), crops)


# ---------------------------------------------------------------------------------- inference
class AmodalCompleter:
    """The completer network with its arch; ``complete`` runs it on one frame's instances."""

    def __init__(self, model: CompleterNet, arch: dict[str, Any], device: str = "cpu", threshold: float = 0.5,
                 restrict: bool = True, batch: int = 64) -> None:
        self.arch = check_arch(arch)
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.threshold, self.restrict, self.batch = float(threshold), bool(restrict), max(1, int(batch))

    @torch.no_grad()
    def probabilities(self, inputs: np.ndarray) -> np.ndarray:
        """(M, S, S) sigmoid outputs for (M, 9, S, S) inputs."""
        out = []
        for s in range(0, len(inputs), self.batch):
            x = torch.from_numpy(np.ascontiguousarray(inputs[s:s + self.batch])).to(self.device)
            out.append(torch.sigmoid(self.model(x)).float().cpu().numpy())
        s = int(self.arch["crop_size"])
        return np.concatenate(out) if out else np.zeros((0, s, s), np.float32)

    def complete(self, rgb: np.ndarray, depth: np.ndarray | None, masks: np.ndarray, order: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray]:
        """(amodal masks (N, H, W) bool, confidence (N,)): the confidence is the mean probability
        over the predicted amodal pixels (1 for an empty mask's empty completion)."""
        masks = np.asarray(masks, bool)
        n, h, w = masks.shape
        amodal = masks.copy()
        conf = np.ones(n, np.float32)
        batch = build_batch(rgb, depth, masks, order, self.arch)
        probs = self.probabilities(batch.inputs)
        union = masks.any(axis=0) if n else np.zeros((h, w), bool)
        holes = np.zeros((h, w), bool) if depth is None else ~(np.isfinite(depth) & (depth > 0))
        for row, k in enumerate(batch.index):
            win, (y0, y1, x0, x1) = paste_back(probs[row], batch.crops[k], h, w)
            if win.size == 0:
                continue
            add = win > self.threshold
            if self.restrict:  # the hidden part lies under other instances or depth holes
                add &= (union[y0:y1, x0:x1] & ~masks[k, y0:y1, x0:x1]) | holes[y0:y1, x0:x1]
            amodal[k, y0:y1, x0:x1] |= add
            full = amodal[k, y0:y1, x0:x1]
            conf[k] = float(np.where(masks[k, y0:y1, x0:x1], 1.0, win)[full].mean()) if full.any() else 1.0
        return amodal, conf


def convex_hull_completion(masks: np.ndarray) -> np.ndarray:
    """Baseline: each visible mask's convex hull (filled), united with the mask."""
    masks = np.asarray(masks, bool)
    out = masks.copy()
    for k, m in enumerate(masks):
        pts = cv2.findNonZero(m.astype(np.uint8))
        if pts is None:
            continue
        hull = cv2.convexHull(pts)
        canvas = np.zeros(m.shape, np.uint8)
        cv2.fillConvexPoly(canvas, hull, 1)
        out[k] |= canvas.astype(bool)
    return out


# -------------------------------------------------------------------------------- checkpoints
def default_completer_checkpoint() -> Path | None:
    """The completer shipped in the package (uois_sam_ros/data), when it is present."""
    p = Path(__file__).resolve().parents[2] / "data" / COMPLETER_FILENAME
    return p if p.is_file() else None


def save_completer(path: str | Path, model: CompleterNet, arch: dict[str, Any], meta: dict | None = None,
                   half: bool = True) -> None:
    """Write arch + state dict (fp16 by default: half the size, no measurable loss) + meta."""
    arch = check_arch(arch)
    save_torch_atomic({"format": COMPLETER_FORMAT, "arch": arch, "meta": dict(meta or {}),
                       "state_dict": cpu_state_dict(model, half)}, path)


def load_completer(path: str | Path | None = None, device: str = "cpu", **kwargs: Any) -> AmodalCompleter:
    """The completer of a save_completer file (default: the shipped one). CheckpointError names
    the file and what is wrong with it."""
    if path is None:
        path = default_completer_checkpoint()
        if path is None:
            raise CheckpointError(f"no amodal completer checkpoint: {COMPLETER_FILENAME} is not in this install "
                                  "(train one with uois-sam-train-amodal --model completer, set amodal.checkpoint)")
    blob = read_checkpoint(path, "amodal completer", COMPLETER_FORMAT)
    try:
        arch = check_arch(blob.get("arch"), f"amodal completer checkpoint {path}")
    except ValueError as e:
        raise CheckpointError(str(e)) from None
    model = CompleterNet(arch["widths"])
    state = blob.get("state_dict")
    if not isinstance(state, dict):
        raise CheckpointError(f"amodal completer checkpoint {path} holds no state dict")
    ref = model.state_dict()
    state = {k: (v.to(ref[k].dtype) if k in ref and v.is_floating_point() else v) for k, v in state.items()}
    load_checked(model, state, path, what="amodal completer")
    comp = AmodalCompleter(model, arch, device=device, **kwargs)
    comp.meta = blob.get("meta") or {}
    return comp
