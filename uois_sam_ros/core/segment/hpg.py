"""Heatmap-based Prompt Generator (UOIS-SAM section III-A).

A backbone feeds a chain of upsampling blocks (interpolate, conv3x3, BN, PReLU) that end in
3 channels at the network's input resolution: 2 foreground logits and 1 centroid heatmap.
Point prompts are the 3x3 max-pool peaks of the heatmap inside the thresholded foreground.

Backbones:
- ``dinov2_vits14``: the paper's frozen DINOv2 ViT-S/14 (timm ``vit_small_patch14_dinov2``),
  loading the official ``dinov2_vits14_pretrain.pth`` layout through timm's checkpoint filter.
- ``sam``: SAM's own image embedding (256 x 64 x 64; vit_synth: 128 x 32 x 32, ``sam_dim``), so no
  second encoder pass runs;
  ``forward`` then takes that embedding (cropped to the image region, see
  ``crop_sam_embedding``) in place of the rgb tensor.
- ``cnn_rgb`` / ``cnn_rgbd``: a small U-shaped CNN trained from scratch (the weights-free default).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch import nn

from uois_sam_ros.core.config import HPGConfig, autocast, resolve_device, resolve_dtype
from uois_sam_ros.core.types import Frame, FrameError, Prompts
from uois_sam_ros.core.weights import read_operating_point

BACKBONES = ("dinov2_vits14", "sam", "cnn_rgb", "cnn_rgbd")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CHECKPOINT_FORMAT = "uois_sam_ros.hpg"
DEPTH_SCALE_M = 0.2  # depth channel = (depth - median valid depth) / 0.2 m, clipped to +-5
SAM_EMBED_DIM = 256


class HPGCheckpointError(ValueError):
    """An HPG checkpoint that is missing, corrupt or does not fit the model."""


PAPER_PEAK_KERNEL = 3  # UOIS-SAM section IV: 3x3 max-pooling of the heatmap


def checkpoint_peak_kernel(checkpoint: str | Path | None) -> int:
    """The peak kernel chosen for an HPG checkpoint on held-out scenes (``operating_point.peak_kernel``
    in its JSON sidecar), else the paper's 3.

    The paper's 3x3 window suits a heatmap with one sharp peak per object. A small HPG trained here
    gives bumpier maps, and at 3x3 its 30 peaks can all sit on one or two objects (with the shipped
    one, heatmap's overlap recall on held-out scenes is 48 % at 3 and 62 % at 13; README, "Table IV")."""

    def parse(op: dict) -> int:
        k = op["peak_kernel"]
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise ValueError(f"peak_kernel must be a positive integer, got {k!r}")
        return k

    k = read_operating_point(checkpoint, parse, f"the paper's peak kernel {PAPER_PEAK_KERNEL} stays")
    return PAPER_PEAK_KERNEL if k is None else k


def default_hpg_checkpoint() -> Path | None:
    """The small RGB-D checkpoint shipped with the package, when it is present."""
    p = Path(__file__).resolve().parents[2] / "data" / "hpg_cnn_rgbd.pt"
    return p if p.is_file() else None


class UpBlock(nn.Module):
    """The paper's upsampling block: interpolate, conv3x3, BN, PReLU."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.act = nn.PReLU(cout)

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        return self.act(self.bn(self.conv(x)))


def _conv_bn(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class SmallCNN(nn.Module):
    """Four stride-2 stages (1/2 .. 1/16); returns every stage so the decoder can use skips."""

    def __init__(self, in_ch: int, width: int) -> None:
        super().__init__()
        chans = [width, width * 2, width * 4, width * 8]
        self.channels = chans
        stages = []
        prev = in_ch
        for c in chans:
            stages.append(nn.Sequential(_conv_bn(prev, c, 2), _conv_bn(c, c)))
            prev = c
        self.stages = nn.ModuleList(stages)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        for s in self.stages:
            x = s(x)
            feats.append(x)
        return feats


def build_dinov2_vits14(img_size: tuple[int, int]) -> nn.Module:
    """timm's DINOv2 ViT-S/14 at our input size, random init (weights come from the official file)."""
    import timm

    return timm.create_model("vit_small_patch14_dinov2", pretrained=False, img_size=img_size,
                             dynamic_img_size=True, num_classes=0)


def load_dinov2_official(model: nn.Module, path: str | Path) -> None:
    """Load ``dinov2_vits14_pretrain.pth`` (official layout) into the timm model, checking keys/shapes."""
    from timm.models.vision_transformer import checkpoint_filter_fn

    from uois_sam_ros.core.weights import load_checked, read_state_dict

    state = read_state_dict(path, what="DINOv2 ViT-S/14 backbone")
    if "mask_token" not in state or "pos_embed" not in state:
        raise HPGCheckpointError(
            f"{path}: not the official DINOv2 layout (expected keys 'mask_token', 'pos_embed', "
            f"'blocks.0.attn.qkv.weight', ...; found {sorted(state)[:6]}...)")
    filtered = checkpoint_filter_fn(state, model)
    load_checked(model, filtered, path, what="DINOv2 ViT-S/14 backbone")


class HPGNet(nn.Module):
    """Backbone + upsampling blocks -> (fg_logits (B,2,H,W), heatmap (B,1,H,W)) at input size.

    For backbone 'sam', ``forward(embedding, None)`` takes SAM's image embedding
    (B, 256, h, w) of the image region and returns maps at ``out_size``.
    """

    def __init__(self, backbone: str = "cnn_rgbd", *, width: int = 32,
                 input_size: tuple[int, int] = (336, 448), head_channels: int = 256,
                 backbone_checkpoint: str | None = None, sam_dim: int = SAM_EMBED_DIM) -> None:
        super().__init__()
        if backbone not in BACKBONES:
            raise ValueError(f"unknown HPG backbone {backbone!r}; choose one of {list(BACKBONES)}")
        self.backbone_name = backbone
        self.width = int(width)
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.head_channels = int(head_channels)
        self.sam_dim = int(sam_dim)  # channels of the SAM embedding (backbone 'sam': the decoder dim)
        self.uses_depth = backbone == "cnn_rgbd"
        if backbone in ("cnn_rgb", "cnn_rgbd"):
            self.backbone = SmallCNN(4 if self.uses_depth else 3, self.width)
            c = self.backbone.channels  # [w, 2w, 4w, 8w]
            self.up = nn.ModuleList([UpBlock(c[3], c[2]), UpBlock(2 * c[2], c[1]),
                                     UpBlock(2 * c[1], c[0]), UpBlock(2 * c[0], c[0])])
            last = c[0]
        else:
            if backbone == "dinov2_vits14":
                h, w = self.input_size
                if h % 14 or w % 14:
                    raise ValueError(f"DINOv2 ViT-S/14 needs an input size divisible by 14, got {h}x{w}")
                self.backbone = build_dinov2_vits14(self.input_size)
                if backbone_checkpoint:
                    load_dinov2_official(self.backbone, backbone_checkpoint)
                for p in self.backbone.parameters():  # frozen, as in the paper
                    p.requires_grad_(False)
                cin = self.backbone.embed_dim
            else:
                self.backbone = None
                cin = self.sam_dim
            ch = self.head_channels
            chans = [ch, ch // 2, ch // 4, ch // 8]
            blocks, prev = [], cin
            for c_ in chans:
                blocks.append(UpBlock(prev, c_))
                prev = c_
            self.up = nn.ModuleList(blocks)
            last = chans[-1]
        self.head = nn.Conv2d(last, 3, 1)

    def arch(self) -> dict[str, Any]:
        """Hyper-parameters stored in a checkpoint so it rebuilds itself."""
        out = {"backbone": self.backbone_name, "width": self.width,
               "input_height": self.input_size[0], "input_width": self.input_size[1],
               "head_channels": self.head_channels}
        if self.backbone_name == "sam":
            out["sam_dim"] = self.sam_dim
        return out

    def train(self, mode: bool = True) -> HPGNet:
        super().train(mode)
        if self.backbone_name == "dinov2_vits14":
            self.backbone.eval()  # frozen backbone stays in eval mode
        return self

    def forward(self, rgb: torch.Tensor, depth: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if self.backbone_name in ("cnn_rgb", "cnn_rgbd"):
            out_hw = (int(rgb.shape[-2]), int(rgb.shape[-1]))
            x = rgb
            if self.uses_depth:
                if depth is None:
                    raise ValueError("HPG backbone 'cnn_rgbd' needs a depth tensor (B,1,H,W)")
                if depth.shape[-2:] != rgb.shape[-2:]:
                    raise ValueError(f"depth {tuple(depth.shape)} and rgb {tuple(rgb.shape)} differ in size")
                x = torch.cat([rgb, depth], dim=1)
            f1, f2, f3, f4 = self.backbone(x)
            y = self.up[0](f4, f3.shape[-2:])
            y = self.up[1](torch.cat([y, f3], 1), f2.shape[-2:])
            y = self.up[2](torch.cat([y, f2], 1), f1.shape[-2:])
            y = self.up[3](torch.cat([y, f1], 1), out_hw)
        else:
            if self.backbone_name == "dinov2_vits14":
                out_hw = (int(rgb.shape[-2]), int(rgb.shape[-1]))
                with torch.no_grad():
                    tokens = self.backbone.forward_features(rgb)
                n_pre = getattr(self.backbone, "num_prefix_tokens", 1)
                gh, gw = out_hw[0] // 14, out_hw[1] // 14
                feat = tokens[:, n_pre:].transpose(1, 2).reshape(rgb.shape[0], -1, gh, gw)
            else:
                out_hw = self.input_size
                feat = rgb
                if feat.shape[1] != self.sam_dim:
                    raise ValueError(f"HPG backbone 'sam' takes SAM's image embedding (B,{self.sam_dim},h,w), "
                                     f"got {tuple(feat.shape)}")
            y = feat
            gh, gw = feat.shape[-2:]
            n = len(self.up)
            for i, blk in enumerate(self.up):
                if i == n - 1:
                    size = out_hw
                else:
                    f = 2 ** (i + 1)
                    size = (min(gh * f, out_hw[0]), min(gw * f, out_hw[1]))
                y = blk(y, size)
        out = self.head(y)
        return out[:, :2], out[:, 2:3]


def crop_sam_embedding(embedding: torch.Tensor, image_hw: tuple[int, int], encoder_size: int) -> torch.Tensor:
    """The part of SAM's padded square embedding that covers the (resized) image."""
    h, w = image_hw
    scale = encoder_size / max(h, w)
    eh, ew = embedding.shape[-2:]
    rows = max(1, math.ceil(h * scale / encoder_size * eh))
    cols = max(1, math.ceil(w * scale / encoder_size * ew))
    return embedding[..., :rows, :cols]


def preprocess(frame: Frame, cfg: HPGConfig) -> dict[str, torch.Tensor]:
    """Resize to the HPG input size; ImageNet-normalised rgb; depth centred on its median.

    Depth channel: (d - median of valid depth) / 0.2 m, clipped to [-5, 5]; invalid (0/NaN) -> 0.
    Relative depth generalises across camera heights better than absolute metres.
    """
    frame.validate()
    h, w = cfg.input_height, cfg.input_width
    rgb = cv2.resize(frame.rgb, (w, h), interpolation=cv2.INTER_AREA if frame.height > h else cv2.INTER_LINEAR)
    x = torch.from_numpy(rgb).float().permute(2, 0, 1) / 255.0
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    out = {"rgb": ((x - mean) / std).unsqueeze(0)}
    if frame.depth is not None:
        out["depth"] = torch.from_numpy(normalise_depth(frame.depth, (h, w))).view(1, 1, h, w)
    return out


def normalise_depth(depth: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """Depth (metres) -> the network's depth channel at size_hw (nearest resize keeps holes sharp)."""
    d = cv2.resize(np.asarray(depth, np.float32), (size_hw[1], size_hw[0]), interpolation=cv2.INTER_NEAREST)
    valid = np.isfinite(d) & (d > 0)
    out = np.zeros_like(d, dtype=np.float32)
    if valid.any():
        med = float(np.median(d[valid]))
        out[valid] = np.clip((d[valid] - med) / DEPTH_SCALE_M, -5.0, 5.0)
    return out


def select_peaks(fg_prob: np.ndarray, heatmap: np.ndarray, cfg: HPGConfig,
                 scale_to: tuple[int, int] | None = None) -> Prompts:
    """Top-K max-pool peaks of the heatmap inside the foreground (paper: 3x3, 0.85 / 0.007 / 30).

    A pixel is a peak when it is in the foreground (fg_prob > fg_threshold), its heatmap value
    exceeds heatmap_threshold, and it equals the max over its peak_kernel window of the heatmap
    with background set to 0 (peak_kernel 0: the paper's 3; the HPG class passes its checkpoint's
    own). Equal neighbours on a plateau are all peaks; ties in the ranking keep row-major order.
    Points are pixel centres, mapped to scale_to=(height, width) if given.
    """
    fg_prob = np.asarray(fg_prob, np.float32)
    heat = np.asarray(heatmap, np.float32)
    if fg_prob.shape != heat.shape or heat.ndim != 2:
        raise ValueError(f"fg_prob {fg_prob.shape} and heatmap {heat.shape} must be equal (H, W) maps")
    masked = np.where(fg_prob > cfg.fg_threshold, np.nan_to_num(heat, nan=0.0), 0.0).astype(np.float32)
    k = int(cfg.peak_kernel) or PAPER_PEAK_KERNEL  # HPGConfig refuses negative values
    pooled = ndimage.maximum_filter(masked, size=k, mode="constant", cval=-np.inf)
    peak = (masked == pooled) & (masked > cfg.heatmap_threshold)
    rows, cols = np.nonzero(peak)
    if len(rows) == 0 or cfg.top_k <= 0:
        return Prompts.empty()
    vals = masked[rows, cols]
    order = np.argsort(-vals, kind="stable")[: cfg.top_k]
    rows, cols, vals = rows[order], cols[order], vals[order]
    x, y = cols.astype(np.float32), rows.astype(np.float32)
    if scale_to is not None:
        H, W = scale_to
        hh, ww = heat.shape
        x = (x + 0.5) * (W / ww) - 0.5
        y = (y + 0.5) * (H / hh) - 0.5
    return Prompts(np.stack([x, y], 1), np.ones(len(x), np.int64), vals)


def save_hpg_checkpoint(path: str | Path, model: HPGNet, meta: dict | None = None, *,
                        include_backbone: bool = True) -> None:
    """Save weights plus the arch hyper-parameters, so load_hpg_checkpoint needs nothing else.

    meta must hold plain values (str/int/float/bool/lists/dicts) so weights_only loading accepts it.
    For dinov2_vits14 the frozen backbone is stored too by default (self-contained, about 88 MB of
    float32 for ViT-S/14's 21.8M parameters); include_backbone=False keeps only the trained head
    (a few MB), which then needs the official dinov2_vits14_pretrain.pth again at load time.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    if model.backbone_name == "dinov2_vits14" and not include_backbone:
        state = {k: v for k, v in state.items() if not k.startswith("backbone.")}
    torch.save({"format": CHECKPOINT_FORMAT, "version": 1, "arch": model.arch(),
                "meta": dict(meta or {}), "state_dict": state}, path)


def load_hpg_checkpoint(path: str | Path, device: str = "cpu",
                        backbone_checkpoint: str | None = None) -> HPGNet:
    """Rebuild the HPGNet stored by save_hpg_checkpoint (weights_only=True), in eval mode.

    A DINOv2 checkpoint that holds its backbone ignores backbone_checkpoint (the stored backbone is
    the one the head was trained on); a head-only one needs backbone_checkpoint.
    """
    from uois_sam_ros.core.weights import check_state_dict, read_checkpoint

    path = Path(path)
    blob = read_checkpoint(path, "HPG", CHECKPOINT_FORMAT, error=HPGCheckpointError)
    arch = blob["arch"]
    state = blob["state_dict"]
    head_only = arch["backbone"] == "dinov2_vits14" and not any(k.startswith("backbone.") for k in state)
    if head_only and not backbone_checkpoint:
        raise HPGCheckpointError(
            f"{path} holds only the HPG head of a DINOv2 model; give the backbone_checkpoint "
            "(hpg.backbone_checkpoint: the official dinov2_vits14_pretrain.pth)")
    model = HPGNet(arch["backbone"], width=int(arch["width"]),
                   input_size=(int(arch["input_height"]), int(arch["input_width"])),
                   head_channels=int(arch.get("head_channels", 256)),
                   sam_dim=int(arch.get("sam_dim", SAM_EMBED_DIM)),
                   backbone_checkpoint=backbone_checkpoint if head_only else None)
    target = model.state_dict()
    if head_only:
        target = {k: v for k, v in target.items() if not k.startswith("backbone.")}
    check_state_dict(target, state, path, what="HPG")
    model.load_state_dict(state, strict=not head_only)
    model.meta = blob.get("meta", {})
    return model.to(resolve_device(device)).eval()


class HPG:
    """PromptSource: HPG peaks as point prompts. Keeps the last maps for debug images."""

    name = "hpg"

    def __init__(self, cfg: HPGConfig, model: HPGNet | None = None) -> None:
        self.cfg = cfg
        self.device = resolve_device(cfg.device)  # resolved once: reconfigure() cannot change it
        if model is None:
            ckpt = cfg.checkpoint
            if ckpt is None and cfg.backbone == "cnn_rgbd":
                found = default_hpg_checkpoint()
                ckpt = str(found) if found else None
            if ckpt is None:
                raise HPGCheckpointError(
                    f"no HPG checkpoint for backbone {cfg.backbone!r}: set hpg.checkpoint "
                    "(the shipped default uois_sam_ros/data/hpg_cnn_rgbd.pt covers only cnn_rgbd)")
            model = load_hpg_checkpoint(ckpt, self.device, cfg.backbone_checkpoint)
        else:
            ckpt = None  # a model passed in (tests, training loops) has no sidecar
        # the checkpoint's own peak kernel, used while hpg.peak_kernel is 0 (reconfigure may change that)
        self.own_peak_kernel = checkpoint_peak_kernel(ckpt)
        resolve_dtype(cfg.dtype, self.device)  # an invalid hpg.dtype fails here, not at the first frame
        self.model = model.to(self.device).eval()
        # The CNN backbones' convolutions in NHWC on a CPU: oneDNN's layout, 2.4x faster than NCHW for
        # the shipped HPG (uois-sam-bench stages), the same maps to float32 rounding. A layout only: the
        # weights and state dict keep their values and keys.
        self.channels_last = False
        self.use_channels_last(torch.device(self.device).type == "cpu")
        self.last_fg: np.ndarray | None = None  # at HPG resolution
        self.last_heatmap: np.ndarray | None = None
        self.sam_embedding: torch.Tensor | None = None  # set by the pipeline for backbone 'sam'

    def use_channels_last(self, on: bool) -> None:
        """Run the CNN backbones' convolutions in NHWC (on) or PyTorch's default NCHW (other backbones
        always stay as they are); the bench compares the two (uois-sam-bench stages --encoders)."""
        on = on and self.model.backbone_name in ("cnn_rgb", "cnn_rgbd")
        if on != self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last if on else torch.contiguous_format)
            self.channels_last = on

    @property
    def needs_sam_embedding(self) -> bool:
        return self.model.backbone_name == "sam"

    @torch.no_grad()
    def _maps(self, frame: Frame) -> tuple[np.ndarray, np.ndarray]:
        dev = self.device
        amp = autocast(dev, resolve_dtype(self.cfg.dtype, dev))  # cfg read per call: reconfigure may change it
        if self.model.backbone_name == "sam":
            if self.sam_embedding is None:
                raise RuntimeError("HPG backbone 'sam' needs the frame's SAM embedding first "
                                   "(the pipeline sets HPG.sam_embedding after the encoder)")
            with amp:
                fg, heat = self.model(self.sam_embedding.to(dev), None)
        else:
            t = preprocess(frame, self.cfg)
            if self.model.uses_depth and "depth" not in t:
                raise FrameError("HPG backbone 'cnn_rgbd' needs depth, but the frame has none")
            fmt = torch.channels_last if self.channels_last else torch.contiguous_format
            rgb = t["rgb"].to(dev).contiguous(memory_format=fmt)
            depth = t["depth"].to(dev).contiguous(memory_format=fmt) if "depth" in t else None
            with amp:
                fg, heat = self.model(rgb, depth)
        fg, heat = fg.float(), heat.float()  # no-op in fp32; bf16/fp16 maps are thresholded in float32
        fg_prob = torch.softmax(fg, dim=1)[0, 1].float().cpu().numpy()
        heat_np = heat[0, 0].float().cpu().numpy()
        self.last_fg, self.last_heatmap = fg_prob, heat_np
        return fg_prob, heat_np

    def prompts(self, frame: Frame) -> Prompts:
        fg, heat = self._maps(frame)
        return select_peaks(fg, heat, self.peak_config(), scale_to=(frame.height, frame.width))

    def peak_config(self) -> HPGConfig:
        """The config with peak_kernel resolved: hpg.peak_kernel, or the checkpoint's own when 0."""
        if self.cfg.peak_kernel:
            return self.cfg
        return dataclasses.replace(self.cfg, peak_kernel=self.own_peak_kernel)

    def foreground(self, frame: Frame) -> np.ndarray:
        """Foreground probability at HPG resolution (for the grid_fg baseline)."""
        return self._maps(frame)[0]

    def predict(self, frame: Frame) -> tuple[np.ndarray, np.ndarray]:
        """(fg_prob, heatmap) at frame resolution, for debug images."""
        fg, heat = self._maps(frame)
        return upsample_map(fg, frame.height, frame.width), upsample_map(heat, frame.height, frame.width)


def upsample_map(m: np.ndarray, height: int, width: int) -> np.ndarray:
    return cv2.resize(np.asarray(m, np.float32), (width, height), interpolation=cv2.INTER_LINEAR)
