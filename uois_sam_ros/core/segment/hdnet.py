"""Hierarchical Discrimination Network (UOIS-SAM eq. 5): adapted IoU = SAM IoU + MLP(tokens).

The MLP has the architecture of SAM's IoU head (segment-anything's own ``MLP`` class: 3 linear
layers, hidden 256, ReLU). It runs on each of the 4 mask tokens concatenated with the repeated
IoU token, i.e. on (K, 4, 2C), with one output per token, giving the 4 score corrections.
Only this MLP trains; SAM stays frozen.

The token size is the SAM's decoder dim (256 for the official SAMs, 128 for vit_synth):
``HDNet.for_sam(sam)`` sizes it from ``sam.mask_decoder.transformer_dim``, the checkpoint stores
it (arch.token_dim), and ``load_hdnet(..., sam_token_dim=...)`` refuses a mismatch.

HDNet learns a correction to one SAM's tokens, so a checkpoint records the SAM it was trained
on (``sam``: model type, image size and the sha256 of the SAM checkpoint file, None for random
weights). ``load_hdnet`` refuses another model type and warns when the SAM weights differ.
"""

from __future__ import annotations

import functools
import os
import warnings
from pathlib import Path
from typing import Any

import torch
from segment_anything.modeling.mask_decoder import MLP
from torch import nn

from uois_sam_ros.core.config import resolve_device
from uois_sam_ros.core.weights import (
    CheckpointError,
    check_state_dict,
    read_checkpoint,
    read_operating_point,
    sha256_file,
)

CHECKPOINT_FORMAT = "uois_sam_ros.hdnet"
CHECKPOINT_VERSION = 2  # 2 added the 'sam' record; version 1 files load without the check


SYNTH_HDNET_FILENAME = "hdnet_vit_synth.pt"  # shipped next to the small SAM it was trained on
PAPER_IOU_THRESHOLD = 0.48  # the paper's threshold on the adapted IoU (for its HDNet on ViT-L)


def default_hdnet_checkpoint(sam_model_type: str = "vit_synth") -> Path | None:
    """The HDNet shipped in the package for the shipped small SAM, when it is present (the
    official SAMs have no shipped HDNet: train one with uois-sam-train-hdnet)."""
    if sam_model_type != "vit_synth":
        return None
    p = Path(__file__).resolve().parents[2] / "data" / SYNTH_HDNET_FILENAME
    return p if p.is_file() else None


def shipped_iou_threshold(checkpoint: str | Path | None) -> float | None:
    """The adapted-IoU threshold chosen for an HDNet checkpoint on held-out scenes
    (``operating_point.iou_threshold`` in its JSON sidecar), or None when it records none.

    The paper's 0.48 was set for its HDNet on ViT-L; an HDNet on another SAM adapts another IoU
    scale. The shipped small SAM's head runs at a threshold chosen on held-out scenes, and so does
    its HDNet, so that Table IV compares the two at operating points chosen the same way. A sidecar
    that cannot be read gives one OperatingPointWarning naming the reason."""

    def parse(op: dict) -> float | None:
        if "iou_threshold" not in op:
            return None
        t = float(op["iou_threshold"])
        if not 0.0 <= t <= 1.0:
            raise ValueError(f"iou_threshold must lie in [0, 1], got {t}")
        return t

    return read_operating_point(checkpoint, parse, f"the paper's {PAPER_IOU_THRESHOLD} stays")


def ranked_first(adapted: torch.Tensor, iou_pred: torch.Tensor, multimask: bool = True
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """(HDNet's token, SAM head's token) per prompt of (K, 4) scores: HDNet ranks all 4 tokens (the
    pipeline with HDNet), SAM's head the 3 multimask ones (SamAutomaticMaskGenerator), or token 0
    alone without multimask. The one rule of every HDNet-versus-head comparison."""
    head = 1 + iou_pred[:, 1:].argmax(1) if multimask else torch.zeros_like(iou_pred[:, 0], dtype=torch.int64)
    return adapted.argmax(1), head


class HDNetSamWarning(UserWarning):
    """The HDNet checkpoint was trained on other SAM weights of the same model type."""


class HDNet(nn.Module):
    def __init__(self, token_dim: int = 256, hidden_dim: int = 256, num_layers: int = 3) -> None:
        super().__init__()
        self.token_dim, self.hidden_dim, self.num_layers = token_dim, hidden_dim, num_layers
        self.mlp = MLP(2 * token_dim, hidden_dim, 1, num_layers)

    @classmethod
    def for_sam(cls, sam: nn.Module, hidden_dim: int = 256, num_layers: int = 3) -> HDNet:
        """An HDNet sized for this SAM's tokens (its mask decoder's transformer dim)."""
        return cls(int(sam.mask_decoder.transformer_dim), hidden_dim, num_layers)

    def forward(self, t_iou: torch.Tensor, t_mask: torch.Tensor) -> torch.Tensor:
        """t_iou (K, C), t_mask (K, 4, C) -> (K, 4) corrections to SAM's IoU prediction."""
        if t_iou.ndim != 2 or t_mask.ndim != 3 or t_mask.shape[0] != t_iou.shape[0] \
                or t_mask.shape[2] != t_iou.shape[1] or t_iou.shape[1] != self.token_dim:
            raise ValueError(f"HDNet expects T_iou (K, {self.token_dim}) and T_mask (K, M, {self.token_dim}), "
                             f"got {tuple(t_iou.shape)} and {tuple(t_mask.shape)}")
        rep = t_iou[:, None, :].expand(-1, t_mask.shape[1], -1)
        return self.mlp(torch.cat([rep, t_mask], dim=-1)).squeeze(-1)

    def adapted_iou(self, iou_pred: torch.Tensor, t_iou: torch.Tensor, t_mask: torch.Tensor) -> torch.Tensor:
        """Eq. 5: S' = MLP(concat(repeat(T_iou), T_mask)) + S."""
        return self(t_iou, t_mask) + iou_pred


@functools.lru_cache(maxsize=16)
def _sha256_cached(path: str, size: int, mtime_ns: int) -> str:
    return sha256_file(path)


def checkpoint_sha256(path: str | Path) -> str:
    """sha256 of a file, computed once per process for an unchanged file (SAM ViT-H is 2.5 GB)."""
    p = Path(path).resolve()
    try:
        st = os.stat(p)
    except OSError as e:
        raise CheckpointError(f"SAM checkpoint not found: {path}") from e
    return _sha256_cached(str(p), st.st_size, st.st_mtime_ns)


def sam_record(model_type: str, checkpoint: str | Path | None, image_size: int = 1024) -> dict[str, Any]:
    """What an HDNet checkpoint stores about its SAM; checkpoint None = random weights."""
    return {"model_type": str(model_type), "image_size": int(image_size),
            "checkpoint_sha256": checkpoint_sha256(checkpoint) if checkpoint else None}


def save_hdnet(path: str | Path, model: HDNet, meta: dict | None = None, sam: dict[str, Any] | None = None) -> None:
    """Write an HDNet checkpoint; sam is ``sam_record(...)`` of the SAM it was trained on."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    blob = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION,
            "arch": {"token_dim": model.token_dim, "hidden_dim": model.hidden_dim,
                     "num_layers": model.num_layers},
            "meta": dict(meta or {}),
            "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}}
    if sam is not None:
        blob["sam"] = dict(sam)
    torch.save(blob, path)


def check_sam_record(path: str | Path, record: dict[str, Any] | None, sam_model_type: str,
                     sam_checkpoint: str | Path | None) -> None:
    """Raise when the HDNet at path was trained on another SAM model type; warn when only the
    weights differ (the same weights re-saved elsewhere hash differently). No record: no check."""
    if not record:
        return
    trained = record.get("model_type")
    if trained and trained != sam_model_type:
        raise CheckpointError(
            f"HDNet checkpoint {path} was trained on SAM {trained}, but the SAM in use is {sam_model_type}: "
            f"set sam.model_type={trained} with its checkpoint, or train HDNet for {sam_model_type} "
            f"(uois-sam-train-hdnet --sam-type {sam_model_type})")
    want = record.get("checkpoint_sha256")
    if want is None and not sam_checkpoint:
        return  # random weights both times (tests, benchmarks)
    if want is None:
        have = f"the checkpoint {sam_checkpoint}"
    elif not sam_checkpoint:
        have = "random weights"
    else:
        digest = checkpoint_sha256(sam_checkpoint)  # hashed only when it can match (a 1.2 GB file: ~2 s)
        if digest == want:
            return
        have = f"sha256 {digest[:12]}..."
    trained_on = "random weights" if want is None else f"sha256 {want[:12]}..."
    warnings.warn(f"HDNet checkpoint {path} was trained on SAM {trained} {trained_on}, but the SAM in use "
                  f"has {have}; its scores may not fit these weights", HDNetSamWarning, stacklevel=3)


def load_hdnet(path: str | Path, device: str = "cpu", *, sam_model_type: str | None = None,
               sam_checkpoint: str | Path | None = None, sam_token_dim: int | None = None) -> HDNet:
    """Load a save_hdnet file (weights_only=True); errors name the file and what is wrong.

    With sam_model_type (the SAM in use; sam_checkpoint its file, None = random weights) the
    checkpoint's SAM record is checked: another model type is an error, other weights a warning.
    With sam_token_dim (the SAM's decoder dim) an HDNet built for other token sizes is an error.
    """
    path = Path(path)
    blob = read_checkpoint(path, "HDNet", CHECKPOINT_FORMAT)
    arch = blob["arch"]
    if sam_token_dim is not None and int(arch["token_dim"]) != int(sam_token_dim):
        raise CheckpointError(f"HDNet checkpoint {path} takes {int(arch['token_dim'])}-dim SAM tokens, but the SAM "
                              f"in use has a {int(sam_token_dim)}-dim mask decoder: train HDNet on this SAM")
    model = HDNet(int(arch["token_dim"]), int(arch["hidden_dim"]), int(arch["num_layers"]))
    check_state_dict(model.state_dict(), blob["state_dict"], path, what="HDNet")
    record = blob.get("sam")
    if sam_model_type is not None:
        check_sam_record(path, record, sam_model_type, sam_checkpoint)
    model.load_state_dict(blob["state_dict"])
    model.meta = blob.get("meta", {})
    model.sam_record = dict(record) if record else None
    return model.to(resolve_device(device)).eval()
