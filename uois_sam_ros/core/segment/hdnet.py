"""Hierarchical Discrimination Network (UOIS-SAM eq. 5): adapted IoU = SAM IoU + MLP(tokens).

The MLP has the architecture of SAM's IoU head (segment-anything's own ``MLP`` class: 3 linear
layers, hidden 256, ReLU). It runs on each of the 4 mask tokens concatenated with the repeated
IoU token, i.e. on (K, 4, 2C), with one output per token, giving the 4 score corrections.
Only this MLP trains; SAM stays frozen.
"""

from __future__ import annotations

from pathlib import Path

import torch
from segment_anything.modeling.mask_decoder import MLP
from torch import nn

from uois_sam_ros.core.weights import check_state_dict, read_checkpoint

CHECKPOINT_FORMAT = "uois_sam_ros.hdnet"


class HDNet(nn.Module):
    def __init__(self, token_dim: int = 256, hidden_dim: int = 256, num_layers: int = 3) -> None:
        super().__init__()
        self.token_dim, self.hidden_dim, self.num_layers = token_dim, hidden_dim, num_layers
        self.mlp = MLP(2 * token_dim, hidden_dim, 1, num_layers)

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


def save_hdnet(path: str | Path, model: HDNet, meta: dict | None = None) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"format": CHECKPOINT_FORMAT, "version": 1,
                "arch": {"token_dim": model.token_dim, "hidden_dim": model.hidden_dim,
                         "num_layers": model.num_layers},
                "meta": dict(meta or {}),
                "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}}, path)


def load_hdnet(path: str | Path, device: str = "cpu") -> HDNet:
    """Load a save_hdnet file (weights_only=True); errors name the file and what is wrong."""
    path = Path(path)
    blob = read_checkpoint(path, "HDNet", CHECKPOINT_FORMAT)
    arch = blob["arch"]
    model = HDNet(int(arch["token_dim"]), int(arch["hidden_dim"]), int(arch["num_layers"]))
    check_state_dict(model.state_dict(), blob["state_dict"], path, what="HDNet")
    model.load_state_dict(blob["state_dict"])
    model.meta = blob.get("meta", {})
    return model.to(device).eval()
