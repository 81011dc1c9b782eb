"""Spatial Completion Adapters (Amodal SAM, section 3.2 and appendix A.1.3).

An SCA sits after a block of SAM's ViT image encoder. It concatenates the block's feature map
with the box-prior mask M_spec (1 inside the target's box, expanded by 0.2 of its side on each
side, 0 elsewhere; area-downsampled to the token grid) and runs three iterations of a gated
convolution:

    G = sigmoid(F_gate([E, M]))    O = G * LeakyReLU(F_feat([E, M]))    (eq. 5)

Adapters go at a shallow, a middle and a deep block. To stay light next to a 768- or
1024-channel encoder, each adapter works on a ``hidden``-channel projection of the features
(1x1 down, the gated iterations, 1x1 up); its result is added to the block output through a
per-channel output gate that starts at zero, so an untrained adapter leaves the encoder's
output bit-identical and training starts from SAM exactly (encoder-focused adaptation: the
encoder and decoder weights stay frozen, only the adapters learn).

The adapters attach to any segment-anything ImageEncoderViT (the official vit_b/l/h and
vit_synth) by forward hooks, so no SAM code is copied: ``encode(encoder, images, prior)`` sets
the prior for one call. Without a prior (a plain ``encoder(x)``, e.g. SamPredictor) the
adapters pass the features through unchanged.

Also here: the regional-consistency loss (eq. 9) on the adapted features, and the adapters'
training step (Dice + 10 * BCE + regional consistency; the adversarial shape term of eq. 10 is
left out, see ``sca_step``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from uois_sam_ros.core.weights import (
    CheckpointError,
    cpu_state_dict,
    load_checked,
    read_checkpoint,
    save_torch_atomic,
)

SCA_FORMAT = "uois_sam_ros.sca_adapters"
BCE_WEIGHT = 10.0  # L_seg = Dice + alpha * BCE, alpha = 10 (eq. 8)


def default_blocks(depth: int) -> tuple[int, ...]:
    """Shallow, middle and deep: the first, the middle and the last block (fewer when depth < 3)."""
    if depth < 1:
        raise ValueError(f"encoder depth must be >= 1, got {depth}")
    return tuple(sorted({0, depth // 2, depth - 1}))


class SpatialCompletionAdapter(nn.Module):
    """One SCA: features (B, H, W, C) + prior (B, 1, H, W) -> features + gate_out * completion."""

    def __init__(self, dim: int, hidden: int = 64, iterations: int = 3) -> None:
        super().__init__()
        if iterations < 1:
            raise ValueError(f"iterations must be >= 1, got {iterations}")
        self.dim, self.hidden, self.iterations = int(dim), int(hidden), int(iterations)
        self.down = nn.Conv2d(dim, hidden, 1)
        self.feat = nn.ModuleList(nn.Conv2d(hidden + 1, hidden, 3, padding=1) for _ in range(iterations))
        self.gate = nn.ModuleList(nn.Conv2d(hidden + 1, hidden, 3, padding=1) for _ in range(iterations))
        self.up = nn.Conv2d(hidden, dim, 1)
        self.gate_out = nn.Parameter(torch.zeros(dim))  # zero: an untrained adapter changes nothing

    def forward(self, x: torch.Tensor, prior: torch.Tensor) -> torch.Tensor:
        e = self.down(x.permute(0, 3, 1, 2))
        m = prior.to(e.dtype)
        for f, g in zip(self.feat, self.gate, strict=True):
            em = torch.cat([e, m], dim=1)
            e = torch.sigmoid(g(em)) * F.leaky_relu(f(em), 0.2)
        return x + self.up(e).permute(0, 2, 3, 1) * self.gate_out


class SpatialCompletion(nn.Module):
    """The SCAs of one image encoder, attached to its blocks by forward hooks."""

    def __init__(self, dim: int, depth: int, blocks: tuple[int, ...] | None = None, hidden: int = 64,
                 iterations: int = 3) -> None:
        super().__init__()
        self.blocks = tuple(int(b) for b in (default_blocks(depth) if blocks is None else blocks))
        if any(not 0 <= b < depth for b in self.blocks):
            raise ValueError(f"adapter blocks {self.blocks} outside the encoder's {depth} blocks")
        self.dim, self.depth, self.hidden, self.iterations = int(dim), int(depth), int(hidden), int(iterations)
        self.adapters = nn.ModuleDict({str(b): SpatialCompletionAdapter(dim, hidden, iterations) for b in self.blocks})
        self._prior: torch.Tensor | None = None
        self._handles: list[Any] = []

    @classmethod
    def for_encoder(cls, encoder: nn.Module, **kwargs: Any) -> SpatialCompletion:
        dim = int(encoder.pos_embed.shape[-1]) if encoder.pos_embed is not None else int(encoder.blocks[0].norm1.normalized_shape[0])
        return cls(dim, len(encoder.blocks), **kwargs)

    def arch(self) -> dict[str, Any]:
        return {"dim": self.dim, "depth": self.depth, "blocks": list(self.blocks), "hidden": self.hidden,
                "iterations": self.iterations}

    def attach(self, encoder: nn.Module) -> SpatialCompletion:
        """Hook the adapters onto encoder.blocks (once; attach again after detach)."""
        if self._handles:
            raise RuntimeError("the adapters are already attached to an encoder")
        if len(encoder.blocks) != self.depth:
            raise ValueError(f"the adapters were built for {self.depth} blocks, the encoder has {len(encoder.blocks)}")
        for b in self.blocks:
            self._handles.append(encoder.blocks[b].register_forward_hook(self._hook(str(b))))
        return self

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def _hook(self, key: str):
        def run(module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
            if self._prior is None:
                return output
            return self.adapters[key](output, self._prior)
        return run

    def encode(self, encoder: nn.Module, images: torch.Tensor, prior: torch.Tensor) -> torch.Tensor:
        """encoder(images) with the adapters on. images: (B, 3, S, S) preprocessed (Sam.preprocess);
        prior: (B, 1, S, S) box-prior masks at the encoder input size."""
        if not self._handles:
            raise RuntimeError("attach the adapters to the encoder first")
        if prior.shape[0] != images.shape[0] or prior.shape[-2:] != images.shape[-2:]:
            raise ValueError(f"prior {tuple(prior.shape)} does not match images {tuple(images.shape)}")
        g = encoder.patch_embed.proj.stride[0]
        self._prior = F.interpolate(prior.float(), size=(images.shape[-2] // g, images.shape[-1] // g), mode="area")
        try:
            return encoder(images)
        finally:
            self._prior = None


def expand_boxes(boxes: torch.Tensor | Any, ratio: float, width: float | None = None,
                 height: float | None = None) -> torch.Tensor:
    """(K, 4) x0, y0, x1, y1 boxes grown by ratio x their side on each side (Amodal SAM: 0.2,
    so the area is 1.44x), clipped to [0, width] x [0, height] when given."""
    b = torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4).clone()
    bw, bh = (b[:, 2] - b[:, 0]) * ratio, (b[:, 3] - b[:, 1]) * ratio
    b[:, 0] -= bw
    b[:, 2] += bw
    b[:, 1] -= bh
    b[:, 3] += bh
    if width is not None:
        b[:, 0::2] = b[:, 0::2].clamp(0, width)
    if height is not None:
        b[:, 1::2] = b[:, 1::2].clamp(0, height)
    return b


def box_prior(boxes: torch.Tensor, size: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """(K, 1, size, size) M_spec: 1 inside each box (encoder-input pixel coordinates), else 0."""
    b = torch.as_tensor(boxes, dtype=torch.float32, device=device).reshape(-1, 4)
    c = torch.arange(size, device=device, dtype=torch.float32) + 0.5
    inx = (c[None, :] >= b[:, 0:1]) & (c[None, :] <= b[:, 2:3])
    iny = (c[None, :] >= b[:, 1:2]) & (c[None, :] <= b[:, 3:4])
    return (iny[:, :, None] & inx[:, None, :]).float()[:, None]


def regional_consistency_loss(features: torch.Tensor, visible: torch.Tensor, occluded: torch.Tensor) -> torch.Tensor:
    """1 - cos(E_vis, E_occ) (eq. 9): E_x is the mask-weighted mean feature of region x.

    features: (B, C, h, w); visible, occluded: (B, h, w) or (B, 1, h, w) masks on any grid (they
    are area-resized to the features' grid). Items whose visible or occluded region is empty on
    that grid (an unoccluded instance) are left out; with none left the loss is 0."""
    b, c, h, w = features.shape

    def grid(m: torch.Tensor) -> torch.Tensor:
        m = m.float().reshape(b, 1, *m.shape[-2:])
        return F.interpolate(m, size=(h, w), mode="area")[:, 0] if m.shape[-2:] != (h, w) else m[:, 0]

    mv, mo = grid(visible), grid(occluded)
    sv, so = mv.sum((1, 2)), mo.sum((1, 2))
    keep = (sv > 1e-6) & (so > 1e-6)
    if not keep.any():
        return features.sum() * 0.0
    ev = (features * mv[:, None]).sum((2, 3)) / sv.clamp(min=1e-6)[:, None]
    eo = (features * mo[:, None]).sum((2, 3)) / so.clamp(min=1e-6)[:, None]
    cos = F.cosine_similarity(ev[keep], eo[keep], dim=1)
    return (1.0 - cos).mean()


def save_sca(path: str | Path, sca: SpatialCompletion, meta: dict | None = None) -> None:
    save_torch_atomic({"format": SCA_FORMAT, "arch": sca.arch(), "meta": dict(meta or {}),
                       "state_dict": cpu_state_dict(sca)}, path)


def load_sca(path: str | Path, encoder: nn.Module | None = None) -> SpatialCompletion:
    """Adapters from save_sca; with encoder, checked against it (depth and width) and attached."""
    blob = read_checkpoint(path, "SCA adapters", SCA_FORMAT)
    arch = blob.get("arch")
    if not isinstance(arch, dict):
        raise CheckpointError(f"SCA adapters checkpoint {path} has no arch")
    try:
        sca = SpatialCompletion(int(arch["dim"]), int(arch["depth"]), tuple(arch["blocks"]), int(arch["hidden"]),
                                int(arch["iterations"]))
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"SCA adapters checkpoint {path}: bad arch {arch!r}: {e}") from None
    load_checked(sca, blob.get("state_dict") or {}, path, what="SCA adapters")
    if encoder is not None:
        want = SpatialCompletion.for_encoder(encoder)
        if (want.dim, want.depth) != (sca.dim, sca.depth):
            raise CheckpointError(f"SCA adapters {path} are for an encoder of width {sca.dim} and depth {sca.depth}; "
                                  f"this SAM's encoder has width {want.dim} and depth {want.depth}")
        sca.attach(encoder)
    return sca


# ------------------------------------------------------------------------------------- training
def adapter_optimizer(model: nn.Module, sca: SpatialCompletion, lr: float = 1e-4) -> torch.optim.Optimizer:
    """Encoder-focused adaptation: SAM frozen (encoder and decoder), AdamW over the adapters only
    (the paper: lr 1e-4 decaying to 5e-5; the trainer applies the decay)."""
    for p in model.parameters():
        p.requires_grad_(False)
    for p in sca.parameters():
        p.requires_grad_(True)
    return torch.optim.AdamW(sca.parameters(), lr=lr)


def sca_item_loss(model: nn.Module, sca: SpatialCompletion, item: Any, idx: np.ndarray, box_expand: float = 0.2,
                  reg_weight: float = 1.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One training item's loss for its instances idx: (Dice + 10 * BCE averaged over them + reg_weight * L_reg,
    the Dice + BCE part, L_reg). sca_step and the multi-process trainer both sum these."""
    from uois_sam_ros.core.amodal.sameo import crop_logits, decode_boxes, dice_loss, item_targets, mask_boxes

    size = int(model.image_encoder.img_size)
    vis, am = item.visible[idx], item.amodal[idx]
    h, w = item.input_hw
    boxes = expand_boxes(mask_boxes(np.where(vis.any(axis=(1, 2))[:, None, None], vis, am)),
                         box_expand, w, h).to(item.image.device)
    prior = box_prior(boxes, size, item.image.device)
    emb = sca.encode(model.image_encoder, item.image.expand(len(idx), -1, -1, -1), prior)
    sub = type(item)(item.image, item.input_hw, item.original_hw, vis, am)
    gt, grid = item_targets(model, sub)
    logits = torch.cat([decode_boxes(model, emb[i:i + 1], boxes[i:i + 1])[0] for i in range(len(idx))])
    lg = crop_logits(logits, grid)
    seg = (dice_loss(lg, gt) + BCE_WEIGHT * F.binary_cross_entropy_with_logits(
        lg, gt.float(), reduction="none").flatten(1).mean(1)).mean()
    vis_in = torch.from_numpy(np.pad(vis, ((0, 0), (0, size - h), (0, size - w)))).to(emb.device)
    occ_in = torch.from_numpy(np.pad(am & ~vis, ((0, 0), (0, size - h), (0, size - w)))).to(emb.device)
    reg = regional_consistency_loss(emb, vis_in, occ_in)
    return seg + reg_weight * reg, seg, reg


def sca_step(model: nn.Module, sca: SpatialCompletion, optimizer: torch.optim.Optimizer, items: list,
             rng: Any, box_expand: float = 0.2, reg_weight: float = 1.0, max_instances: int = 4) -> dict[str, float]:
    """One optimiser step of the adapters: L = Dice + 10 * BCE + L_reg (eqs. 7-9).

    Each instance is encoded with its own box prior (its visible box expanded by box_expand on
    each side, the same box as the decoder's prompt), so an image with K instances costs K
    encoder passes; at most max_instances are drawn per image.

    Left out: the holistic topological regularisation L_hol (eq. 10), an adversarial term with a
    mask discriminator. On the paper's own ablation (Table 6) it adds about 1 point of mIoU; here
    it would double the training cost and bring GAN instability to CPU-sized runs, and the shipped
    completer's training (which has no discriminator either) already learns object shapes from
    the rendered amodal masks."""
    sca.train()
    losses, seg_parts, reg_parts = [], [], []
    for item in items:
        k = len(item.amodal)
        if k == 0:
            continue
        idx = np.sort(rng.choice(k, size=min(k, max_instances), replace=False))
        loss, seg, reg = sca_item_loss(model, sca, item, idx, box_expand, reg_weight)
        losses.append(loss)
        seg_parts.append(float(seg.detach()))
        reg_parts.append(float(reg.detach()))
    if not losses:
        return {}
    total = torch.stack(losses).mean()
    optimizer.zero_grad(set_to_none=True)
    total.backward()
    optimizer.step()
    sca.eval()
    return {"loss": float(total.detach()), "seg": float(np.mean(seg_parts)), "reg": float(np.mean(reg_parts))}
