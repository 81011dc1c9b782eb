"""Segment Anything as a PromptableSegmenter, with the tokens HDNet needs.

Architectures: vit_h / vit_l / vit_b (segment-anything), vit_t (MobileSAM's TinyViT, module
``mobile_sam``), vit_synth (a small SAM trained here on synthetic scenes by uois-sam-train-sam;
segment-anything's own Sam / ImageEncoderViT / PromptEncoder / MaskDecoder classes in a small
configuration that its checkpoint stores next to the weights) and vit_tiny, a test/CI
architecture (ViT encoder embed 192, depth 4, 3 heads, any image_size; random weights only) so
that the whole path runs fast without official files.

Decoding: the image embedding is computed once per frame (segment-anything's SamPredictor,
which also owns the ResizeLongestSide transforms). All K prompts are then decoded in batches
by calling ``prompt_encoder`` and ``mask_decoder.predict_masks`` directly: predict_masks returns
all 4 mask tokens' masks and IoUs (``forward`` with multimask_output=True drops token 0, which
HDNet scores too). A forward hook on ``mask_decoder.transformer`` captures ``hs``, from which
T_iou = hs[:, 0] and T_mask = hs[:, 1:5]. Nothing of SAM's code is copied.

Layout: ``SamConfig.decoder`` folded (the default) decodes the K prompts with
``decoder_layout.predict_masks``: the same function of the same weights, re-ordered so that the
image side is not copied K times (equal to the library's to float32 rounding; 2-4x faster on a
CPU). ``library`` calls segment-anything's own ``predict_masks``.

Compilation: ``SamConfig.compile`` runs the image encoder through torch.compile, and on a GPU
the folded decoder too. There the decoder's batch is padded to a power of two (repeating the
last prompt, whose outputs are dropped), so a frame's prompt count costs at most one compile
per size class. On a CPU the folded decoder stays eager: it is matrix products that compiling
leaves as they are, and compiled it measured no faster (uois-sam-bench stages --compile; README).
If compiling fails (no C++ compiler, an unsupported op), one CompileFallbackWarning says why
and that part runs eagerly from then on.

Precision: ``SamConfig.dtype`` bf16 / fp16 runs the encoder and the decoder under torch.autocast
(the GPU's fast path); the embedding and every decoder output are turned back into float32, so
post-processing, HDNet and the adaptation code see the same dtypes as in fp32. fp32 runs no
autocast at all, so its results do not change.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from segment_anything import SamPredictor, sam_model_registry
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer
from segment_anything.utils.amg import (
    MaskData,
    batch_iterator,
    batched_mask_to_box,
    calculate_stability_score,
    mask_to_rle_pytorch,
    rle_to_mask,
)
from torch import nn
from torchvision.ops.boxes import batched_nms

from uois_sam_ros.core.config import SamConfig, autocast, resolve_device, resolve_dtype
from uois_sam_ros.core.segment import decoder_layout, encoder_layout
from uois_sam_ros.core.segment.backend import Decoded
from uois_sam_ros.core.segment.depth_channel import (
    DEPTH_PIXEL_MEAN,
    DEPTH_PIXEL_STD,
    ENCODER_CHANNELS,
    encoder_channels,
    encoder_image,
    resize_longest_side,
)
from uois_sam_ros.core.types import Frame, Prompts
from uois_sam_ros.core.weights import (
    OFFICIAL,
    CheckpointError,
    cpu_state_dict,
    load_checked,
    load_torch_file,
    read_operating_point,
    read_state_dict,
    save_torch_atomic,
)

SAM_MODEL_TYPES = ("vit_h", "vit_l", "vit_b", "vit_t", "vit_synth", "vit_tiny")
TEST_ONLY_TYPES = ("vit_tiny",)
SYNTH_FORMAT = "uois_sam_ros.sam_synth"
SYNTH_VERSION = 1
SYNTH_FILENAME = "sam_vit_synth.pt"

# vit_synth: a 512-px encoder (a 640x480 frame becomes 512x384, so 10-px objects stay ~8 px wide),
# 32x32 embedding grid, windowed attention (8x8 windows tile the grid exactly) with two global
# blocks, and a 128-dim prompt encoder / two-way decoder. About 3.4M parameters, 14 MB in fp32.
VIT_SYNTH_ARCH: dict[str, Any] = {
    "img_size": 512, "patch_size": 16, "embed_dim": 160, "depth": 6, "num_heads": 5, "mlp_ratio": 4.0,
    "window_size": 8, "global_attn_indexes": [2, 5], "decoder_dim": 128, "decoder_depth": 2,
    "decoder_heads": 4, "decoder_mlp_dim": 1024, "iou_head_hidden_dim": 256, "mask_in_chans": 16,
}
# sizes a stored arch may leave out (checkpoints written before they existed), with their value then;
# in_chans 4 is an RGB-D encoder (core/segment/depth_channel.py)
SYNTH_ARCH_OPTIONAL: dict[str, Any] = {"in_chans": 3}


def _build_mobile_sam_vit_t() -> nn.Module:
    with warnings.catch_warnings():  # mobile_sam re-registers timm's tiny_vit names on import
        warnings.simplefilter("ignore")
        from mobile_sam import sam_model_registry as mobile_registry

        return mobile_registry["vit_t"](checkpoint=None)


def _build_vit_tiny(image_size: int) -> Sam:
    """A small ViT SAM from segment-anything's own modules (tests/CI only, no official weights)."""
    if image_size % 64:
        raise ValueError(f"vit_tiny image_size must be a multiple of 64, got {image_size}")
    emb = image_size // 16
    return Sam(
        image_encoder=ImageEncoderViT(
            depth=4, embed_dim=192, img_size=image_size, mlp_ratio=4,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), num_heads=3, patch_size=16,
            qkv_bias=True, use_rel_pos=True, global_attn_indexes=[1, 3], window_size=8, out_chans=256),
        prompt_encoder=PromptEncoder(embed_dim=256, image_embedding_size=(emb, emb),
                                     input_image_size=(image_size, image_size), mask_in_chans=16),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=2, embedding_dim=256, mlp_dim=2048, num_heads=8),
            transformer_dim=256, iou_head_depth=3, iou_head_hidden_dim=256),
        pixel_mean=[123.675, 116.28, 103.53], pixel_std=[58.395, 57.12, 57.375],
    )


def check_synth_arch(arch: Any, where: str = "vit_synth arch") -> dict[str, Any]:
    """A vit_synth architecture dict with exactly VIT_SYNTH_ARCH's keys and consistent sizes.

    Raises ValueError naming what is wrong (callers turn it into a CheckpointError for files)."""
    if not isinstance(arch, dict):
        raise ValueError(f"{where}: expected a dict of architecture sizes, got {type(arch).__name__}")
    arch = {**SYNTH_ARCH_OPTIONAL, **arch}
    missing = sorted(set(VIT_SYNTH_ARCH) - set(arch))
    unknown = sorted(set(arch) - set(VIT_SYNTH_ARCH) - set(SYNTH_ARCH_OPTIONAL))
    if missing or unknown:
        raise ValueError(f"{where}: " + "; ".join(
            ([f"missing keys {missing}"] if missing else []) + ([f"unknown keys {unknown}"] if unknown else [])))
    out: dict[str, Any] = {}
    try:
        for k, v in arch.items():
            if k == "global_attn_indexes":
                out[k] = [int(i) for i in v]
            elif k == "mlp_ratio":
                out[k] = float(v)
            else:
                out[k] = int(v)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: {k}={arch[k]!r} is not a number") from None
    img, patch, emb, dd = out["img_size"], out["patch_size"], out["embed_dim"], out["decoder_dim"]
    problems = []
    if min(v for k, v in out.items() if k != "global_attn_indexes") <= 0:
        problems.append("every size must be positive")
    elif img % patch:
        problems.append(f"img_size {img} is not a multiple of patch_size {patch}")
    elif (img // patch) % out["window_size"]:
        problems.append(f"the {img // patch}x{img // patch} embedding grid is not tiled by window_size "
                        f"{out['window_size']}")
    if emb % max(out["num_heads"], 1):
        problems.append(f"embed_dim {emb} is not divisible by num_heads {out['num_heads']}")
    if dd % 8 or (dd // 2) % max(out["decoder_heads"], 1):
        problems.append(f"decoder_dim {dd} must be a multiple of 8 whose half divides by decoder_heads "
                        f"{out['decoder_heads']}")
    if out["in_chans"] not in ENCODER_CHANNELS:
        problems.append(f"in_chans {out['in_chans']} must be 3 (RGB) or 4 (RGB-D)")
    if any(not 0 <= i < out["depth"] for i in out["global_attn_indexes"]):
        problems.append(f"global_attn_indexes {out['global_attn_indexes']} outside depth {out['depth']}")
    if problems:
        raise ValueError(f"{where}: " + "; ".join(problems))
    for k, v in SYNTH_ARCH_OPTIONAL.items():  # at its default an optional size is left out: old files stay equal
        if out[k] == v:
            del out[k]
    return out


def build_vit_synth(arch: dict[str, Any] | None = None) -> Sam:
    """vit_synth from segment-anything's own modules; arch defaults to VIT_SYNTH_ARCH.

    The image embedding has decoder_dim channels (the encoder neck's out_chans is the prompt
    encoder's and the decoder's dim, as in every SAM), on an (img_size / patch_size)^2 grid."""
    a = check_synth_arch(dict(VIT_SYNTH_ARCH) if arch is None else arch)
    grid = a["img_size"] // a["patch_size"]
    dim = a["decoder_dim"]
    mean, std = [123.675, 116.28, 103.53], [58.395, 57.12, 57.375]
    in_chans = a.get("in_chans", 3)
    if in_chans == 4:
        mean, std = mean + [DEPTH_PIXEL_MEAN], std + [DEPTH_PIXEL_STD]
    return Sam(
        image_encoder=ImageEncoderViT(
            img_size=a["img_size"], patch_size=a["patch_size"], in_chans=in_chans, embed_dim=a["embed_dim"],
            depth=a["depth"],
            num_heads=a["num_heads"], mlp_ratio=a["mlp_ratio"], out_chans=dim, qkv_bias=True,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), use_rel_pos=True, rel_pos_zero_init=True,
            window_size=a["window_size"], global_attn_indexes=tuple(a["global_attn_indexes"])),
        prompt_encoder=PromptEncoder(embed_dim=dim, image_embedding_size=(grid, grid),
                                     input_image_size=(a["img_size"], a["img_size"]),
                                     mask_in_chans=a["mask_in_chans"]),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=a["decoder_depth"], embedding_dim=dim,
                                          mlp_dim=a["decoder_mlp_dim"], num_heads=a["decoder_heads"]),
            transformer_dim=dim, iou_head_depth=3, iou_head_hidden_dim=a["iou_head_hidden_dim"]),
        pixel_mean=mean, pixel_std=std,
    )


def default_sam_checkpoint(model_type: str = "vit_synth") -> Path | None:
    """The vit_synth checkpoint shipped in the package (uois_sam_ros/data), when it is present."""
    if model_type != "vit_synth":
        return None
    p = Path(__file__).resolve().parents[2] / "data" / SYNTH_FILENAME
    return p if p.is_file() else None


AMG_THRESHOLDS = (0.88, 0.95)  # SamAutomaticMaskGenerator's pred_iou_thresh and stability_score_thresh


def shipped_operating_point(checkpoint: str | Path) -> dict[str, float] | None:
    """The IoU-head thresholds chosen for a vit_synth checkpoint on held-out scenes (``operating_point``
    in its JSON sidecar), or None when it records none.

    SAM's automatic-mask-generator thresholds (AMG_THRESHOLDS) suit the official models, whose IoU heads
    were trained on SA-1B to be calibrated; an under-trained small SAM predicts lower IoUs for the same
    masks, and at 0.88 / 0.95 it keeps no mask at all, so the methods ranked by its own IoU head
    (grid, grid_fg, heatmap) would score 0 whatever their prompts. A sidecar that cannot be read gives
    one OperatingPointWarning naming the reason."""

    def parse(op: dict) -> dict[str, float]:
        out = {k: float(op[k]) for k in ("sam_iou_threshold", "stability_threshold")}
        if not all(0.0 <= v <= 1.0 for v in out.values()):
            raise ValueError(f"thresholds must lie in [0, 1], got {out}")
        return out

    return read_operating_point(checkpoint, parse, f"SAM's thresholds {AMG_THRESHOLDS} stay")


def save_sam_synth(path: str | Path, model: Sam, arch: dict[str, Any], meta: dict | None = None,
                   half: bool = False) -> None:
    """Write a vit_synth checkpoint: the arch dict, the state dict (fp16 with half) and plain meta.

    Written to a temporary file first, so a run killed mid-write never leaves a truncated file."""
    arch = check_synth_arch(arch)
    save_torch_atomic({"format": SYNTH_FORMAT, "version": SYNTH_VERSION, "arch": arch, "meta": dict(meta or {}),
                       "state_dict": cpu_state_dict(model, half)}, path)


def read_sam_synth(path: str | Path, what: str = "SAM vit_synth") -> tuple[dict[str, Any], dict, dict]:
    """(arch, state dict, meta) of a save_sam_synth file; every failure is a CheckpointError naming it."""
    blob = load_torch_file(path, what, kind="torch file")
    if not isinstance(blob, dict) or blob.get("format") != SYNTH_FORMAT:
        raise CheckpointError(f"{what} checkpoint {path} is not a vit_synth checkpoint (no format={SYNTH_FORMAT!r} "
                              "header with its architecture; uois-sam-train-sam writes them)")
    state = blob.get("state_dict")
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{what} checkpoint {path} does not hold a state dict of tensors")
    try:
        arch = check_synth_arch(blob.get("arch"), f"{what} checkpoint {path}: stored arch")
    except ValueError as e:
        raise CheckpointError(str(e)) from None
    meta = blob.get("meta") if isinstance(blob.get("meta"), dict) else {}
    return arch, state, meta


def build_sam_architecture(model_type: str, image_size: int = 1024, arch: dict[str, Any] | None = None) -> nn.Module:
    """The architecture with random weights (load_sam puts the official weights in).

    vit_synth is built from arch (default VIT_SYNTH_ARCH); its encoder size is arch's img_size, and
    image_size must be that or the config default 1024 (which then means "the stored size")."""
    if model_type not in SAM_MODEL_TYPES:
        raise ValueError(f"unknown sam.model_type {model_type!r}; choose one of {list(SAM_MODEL_TYPES)}")
    if model_type == "vit_synth":
        a = check_synth_arch(dict(VIT_SYNTH_ARCH) if arch is None else arch)
        if image_size not in (1024, a["img_size"]):
            raise ValueError(f"sam.image_size={image_size}: this vit_synth encoder takes {a['img_size']} "
                             "(its checkpoint stores the size; leave sam.image_size at its default)")
        return build_vit_synth(a).eval()
    if model_type != "vit_tiny" and image_size != 1024:
        raise ValueError(f"sam.image_size={image_size}: the official {model_type} weights need 1024 "
                         "(only the test architecture vit_tiny accepts another size)")
    if model_type == "vit_tiny":
        model = _build_vit_tiny(image_size)
    elif model_type == "vit_t":
        model = _build_mobile_sam_vit_t()
    else:
        model = sam_model_registry[model_type](checkpoint=None)
    return model.eval()


def load_sam(model_type: str, checkpoint: str | Path | None, *, allow_random: bool = False,
             device: str = "cpu", image_size: int = 1024) -> nn.Module:
    """Build model_type and load the official checkpoint, checking every key and shape.

    vit_synth: the architecture comes from the checkpoint's stored arch dict, then the same key
    and shape checks apply (a state dict that does not fit its own arch is a CheckpointError).
    Without a checkpoint (allow_random) it is VIT_SYNTH_ARCH with random weights."""
    device = resolve_device(device)
    what = f"SAM {model_type}"
    if checkpoint is None:
        model = build_sam_architecture(model_type, image_size)
        if not allow_random:
            if model_type == "vit_synth":
                shipped = default_sam_checkpoint("vit_synth")
                hint = (f"the shipped {shipped}" if shipped else
                        f"a {SYNTH_FILENAME} trained with uois-sam-train-sam (none is shipped in this install)")
                raise CheckpointError(f"sam.checkpoint is not set for SAM vit_synth: give the path to {hint}, "
                                      "or use pipeline.method=weights_free")
            hint = OFFICIAL[model_type].filename if model_type in OFFICIAL else "a checkpoint"
            raise CheckpointError(
                f"sam.checkpoint is not set for SAM {model_type}: give the path to {hint} "
                "(scripts/download_weights.sh fetches it), or use pipeline.method=weights_free")
    elif model_type == "vit_synth":
        arch, state, _ = read_sam_synth(checkpoint, what=what)
        if image_size not in (1024, arch["img_size"]):
            raise CheckpointError(f"sam.image_size={image_size}, but the vit_synth checkpoint {checkpoint} "
                                  f"was trained at {arch['img_size']} (leave sam.image_size at its default)")
        model = build_vit_synth(arch).eval()
        load_checked(model, state, checkpoint, what=what)
    else:
        model = build_sam_architecture(model_type, image_size)
        state = read_state_dict(checkpoint, what=what)
        load_checked(model, state, checkpoint, what=what)
    for p in model.parameters():
        p.requires_grad_(False)
    return model.to(device).eval()


def sam_token_dim(model: nn.Module) -> int:
    """The mask decoder's transformer dim: the size of T_iou / T_mask (what HDNet is built for)."""
    return int(model.mask_decoder.transformer_dim)


class CompileFallbackWarning(UserWarning):
    """sam.compile could not compile a part; it runs eagerly (the message says why)."""


@dataclass
class LowRes:
    """Decoder outputs for K prompts before any upsampling.

    logits: (K, 4, h, w) low-res mask logits over the padded encoder square (h = w = 4 x embedding).
    iou_pred: (K, 4) SAM's IoU head. t_iou: (K, C). t_mask: (K, 4, C).
    """

    logits: torch.Tensor
    iou_pred: torch.Tensor
    t_iou: torch.Tensor
    t_mask: torch.Tensor


@dataclass
class AmgMasks:
    """SamAutomaticMaskGenerator's output for one image, in its order (box NMS, best first).

    masks: (N, H, W) bool at frame resolution. iou_pred, stability: (N,). points: (N, 2) float64,
    the prompt that produced each mask (the coordinates SAM was given).
    """

    masks: np.ndarray
    iou_pred: np.ndarray
    stability: np.ndarray
    points: np.ndarray


class SamSegmenter:
    """PromptableSegmenter over any SAM; decode_lowres keeps the tokens for HDNet."""

    # sam.compile leaves the folded decoder eager on a CPU (measured no faster); tests set this to
    # walk the compiled decoder's path (padding, fallback) on a CPU
    compile_decoder_on_cpu = False

    def __init__(self, cfg: SamConfig, model: nn.Module | None = None, decode_batch: int = 64) -> None:
        self.cfg = cfg
        device = resolve_device(cfg.device)
        self.model = model.to(device) if model is not None else load_sam(
            cfg.model_type, cfg.checkpoint, allow_random=cfg.allow_random_weights,
            device=device, image_size=cfg.image_size)
        self.name = f"sam_{cfg.model_type}"
        self.device = torch.device(device)
        self.decode_batch = max(1, int(decode_batch))
        resolve_dtype(cfg.dtype, device)  # an invalid sam.dtype fails here, not at the first frame
        self.predictor = SamPredictor(self.model)
        self._hs: torch.Tensor | None = None
        self.model.mask_decoder.transformer.register_forward_hook(self._capture)
        self.folded_ok = decoder_layout.supports(self.model.mask_decoder)
        self._compiled_decode: Any = None
        self._compile_failed: set[str] = set()

    def _capture(self, module: nn.Module, inputs: tuple, output: tuple) -> None:
        self._hs = output[0]

    @property
    def encoder_size(self) -> int:
        return int(self.model.image_encoder.img_size)

    @property
    def token_dim(self) -> int:
        """Channels of the decoder tokens and of the image embedding (256 for official SAMs)."""
        return sam_token_dim(self.model)

    @property
    def embedding(self) -> torch.Tensor:
        if not self.predictor.is_image_set:
            raise RuntimeError("call set_frame before reading the embedding")
        return self.predictor.features

    def _amp_dtype(self) -> torch.dtype | None:
        """The autocast dtype of cfg.dtype (read per call: reconfigure may change it); None = fp32."""
        return resolve_dtype(self.cfg.dtype, str(self.device))

    def _compile_fallback(self, part: str, err: Exception) -> None:
        """Run `part` eagerly from now on, and say once why."""
        self._compile_failed.add(part)
        warnings.warn(f"sam.compile: compiling the {part} failed ({type(err).__name__}: {str(err)[:300]}); "
                      f"the {part} runs eagerly", CompileFallbackWarning, stacklevel=3)

    def _set_encoder_compiled(self, on: bool) -> None:
        """Route image_encoder calls through torch.compile (an instance-level forward, so the module,
        its state dict and every other caller stay as they are), or back to the class's forward."""
        enc = self.model.image_encoder
        if on and "forward" not in vars(enc):
            enc.forward = torch.compile(type(enc).forward.__get__(enc), dynamic=False)
        elif not on and "forward" in vars(enc):
            del enc.forward

    @property
    def in_chans(self) -> int:
        """3 for an RGB encoder (every official SAM), 4 for an RGB-D vit_synth."""
        return encoder_channels(self.model)

    def _set_image(self, image: np.ndarray) -> None:
        """SamPredictor.set_image for 3 channels; for RGB-D the same steps with the depth channel
        resized on its own (depth_channel.resize_longest_side), since set_image's PIL resize and
        set_torch_image's checks know only RGB."""
        if image.shape[2] == 3:
            self.predictor.set_image(image, image_format="RGB")
            return
        x = torch.as_tensor(resize_longest_side(image, self.encoder_size), device=self.device)
        x = x.permute(2, 0, 1).contiguous()[None]
        self.use_embedding(self.model.image_encoder(self.model.preprocess(x)), tuple(x.shape[-2:]),
                           tuple(image.shape[:2]))

    def use_embedding(self, features: torch.Tensor, input_size: tuple[int, int],
                      original_size: tuple[int, int]) -> None:
        """Put an image embedding into the predictor as set_image leaves it (an RGB-D encode, or
        an embedding cached by a trainer), so decoding reads it like any other frame's."""
        p = self.predictor
        p.reset_image()
        p.features, p.input_size, p.original_size = features, tuple(input_size), tuple(original_size)
        p.is_image_set = True

    def set_frame(self, frame: Frame) -> None:
        frame.validate(need_depth=self.in_chans == 4)
        image = encoder_image(frame.rgb, frame.depth, self.in_chans)
        dt = self._amp_dtype()
        want = bool(self.cfg.compile) and "encoder" not in self._compile_failed
        self._set_encoder_compiled(want)
        chunked = self.cfg.encoder == "chunked"  # eager runs only: the compiler sees the library's attention
        # the convolutions NHWC on a CPU with the chunked layout, NCHW otherwise (cfg read per call:
        # reconfigure may switch it; the weights are converted only when it changes)
        encoder_layout.set_convolution_layout(self.model.image_encoder, chunked and self.device.type == "cpu")
        try:
            with torch.inference_mode(), autocast(str(self.device), dt), \
                    encoder_layout.layout(self.model.image_encoder, chunked and not want):
                self._set_image(image)
        except Exception as e:  # noqa: BLE001 - any compiler failure: fall back, then the eager error (if any) is real
            if not want:
                raise
            self._compile_fallback("encoder", e)
            self._set_encoder_compiled(False)
            with torch.inference_mode(), autocast(str(self.device), dt), \
                    encoder_layout.layout(self.model.image_encoder, chunked):
                self._set_image(image)
        if dt is not None:  # consumers (decoder outside autocast, HPG 'sam', adaptation) expect float32
            self.predictor.features = self.predictor.features.float()

    def valid_lowres_hw(self) -> tuple[int, int]:
        """Rows/cols of the low-res logits that cover the image (the rest is padding)."""
        ih, iw = self.predictor.input_size
        lr = self.model.prompt_encoder.mask_input_size[0]
        scale = lr / self.encoder_size
        return max(1, int(round(ih * scale))), max(1, int(round(iw * scale)))

    @torch.inference_mode()
    def decode_lowres(self, prompts: Prompts) -> LowRes:
        if not self.predictor.is_image_set:
            raise RuntimeError("call set_frame before decode")
        k = len(prompts)
        if k == 0:
            raise ValueError("zero prompts: nothing to decode (callers return empty Instances)")
        coords = self.predictor.transform.apply_coords(prompts.points.astype(np.float64),
                                                       self.predictor.original_size)
        coords_t = torch.as_tensor(coords, dtype=torch.float32, device=self.device)[:, None, :]
        labels_t = torch.as_tensor(prompts.labels, dtype=torch.int64, device=self.device)[:, None]
        dt = self._amp_dtype()
        folded = self.cfg.decoder == "folded" and self.folded_ok
        compiled = (folded and bool(self.cfg.compile) and "decoder" not in self._compile_failed
                    and (self.device.type != "cpu" or self.compile_decoder_on_cpu))
        n_tok = self.model.mask_decoder.num_mask_tokens
        outs: list[tuple[torch.Tensor, ...]] = []
        with autocast(str(self.device), dt):
            pe = self.model.prompt_encoder.get_dense_pe()
            for s in range(0, k, self.decode_batch):
                c, lab = coords_t[s:s + self.decode_batch], labels_t[s:s + self.decode_batch]
                n = c.shape[0]
                if compiled:  # a few static batch sizes: pad with the last prompt, drop its outputs
                    size = min(1 << (n - 1).bit_length(), max(self.decode_batch, n))
                    c = torch.cat([c, c[-1:].expand(size - n, -1, -1)])
                    lab = torch.cat([lab, lab[-1:].expand(size - n, -1)])
                sparse, dense = self.model.prompt_encoder(points=(c, lab), boxes=None, masks=None)
                if folded:
                    logits, iou, hs = self._folded(self.predictor.features, pe, sparse, dense, compiled)
                else:
                    logits, iou = self.model.mask_decoder.predict_masks(
                        image_embeddings=self.predictor.features, image_pe=pe,
                        sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense)
                    hs = self._hs
                outs.append((logits[:n], iou[:n], hs[:n, 0].clone(), hs[:n, 1:1 + n_tok].clone()))
        cat = [torch.cat([o[i] for o in outs]) for i in range(4)]
        if dt is not None:
            cat = [c.float() for c in cat]
        return LowRes(*cat)

    def _folded(self, feats: torch.Tensor, pe: torch.Tensor, sparse: torch.Tensor, dense: torch.Tensor,
                compiled: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        dec = self.model.mask_decoder
        if compiled:
            if self._compiled_decode is None:
                self._compiled_decode = torch.compile(decoder_layout.predict_masks, dynamic=False)
            try:
                return self._compiled_decode(dec, feats, pe, sparse, dense, chunked=False)
            except Exception as e:  # noqa: BLE001 - a compiler failure: the eager call below is the real test
                self._compile_fallback("decoder", e)
        return decoder_layout.predict_masks(dec, feats, pe, sparse, dense)

    @torch.inference_mode()
    def upsample(self, logits: torch.Tensor) -> torch.Tensor:
        """(N, h, w) or (N, M, h, w) low-res logits -> bool masks at the frame's resolution."""
        squeeze = logits.ndim == 3
        x = logits[:, None] if squeeze else logits
        if x.shape[0] == 0:
            h, w = self.predictor.original_size
            return torch.zeros((0, *x.shape[1:2], h, w), dtype=torch.bool)[:, 0 if squeeze else slice(None)]
        masks = self.model.postprocess_masks(x, self.predictor.input_size, self.predictor.original_size)
        masks = masks > self.model.mask_threshold
        return masks[:, 0] if squeeze else masks

    @torch.inference_mode()
    def generate_amg(self, points: np.ndarray, *, pred_iou_thresh: float = 0.88,
                     stability_score_thresh: float = 0.95, stability_score_offset: float = 1.0,
                     box_nms_thresh: float = 0.7, points_per_batch: int = 64,
                     multimask_output: bool = True) -> AmgMasks:
        """segment-anything's SamAutomaticMaskGenerator on the current frame, one crop (the whole
        image), no small-region removal: every candidate (3 per point with multimask_output) whose
        predicted IoU exceeds pred_iou_thresh and whose stability score on the full-resolution logits
        reaches stability_score_thresh (a threshold <= 0 disables its filter, as in AMG), then box NMS.

        It calls the library's own SamPredictor.predict_torch and amg helpers step for step
        (``_process_batch`` / ``_process_crop``), so the result equals AMG's for the same points and
        points_per_batch. AMG's crop-edge box filter is left out: with one full-image crop it removes
        nothing. points: (K, 2) float64 pixel coordinates, as AMG computes them.
        """
        if not self.predictor.is_image_set:
            raise RuntimeError("call set_frame before generate_amg")
        pts = np.asarray(points, np.float64).reshape(-1, 2)
        h, w = self.predictor.original_size
        empty = AmgMasks(np.zeros((0, h, w), bool), np.zeros(0, np.float32), np.zeros(0, np.float32),
                         np.zeros((0, 2), np.float64))
        if len(pts) == 0:
            return empty
        thr = self.model.mask_threshold
        dt = self._amp_dtype()
        data = MaskData()
        for (batch,) in batch_iterator(max(1, int(points_per_batch)), pts):
            coords = self.predictor.transform.apply_coords(batch, (h, w))
            in_points = torch.as_tensor(coords, device=self.predictor.device)
            in_labels = torch.ones(in_points.shape[0], dtype=torch.int, device=in_points.device)
            with autocast(str(self.device), dt):
                masks, iou, _ = self.predictor.predict_torch(in_points[:, None, :], in_labels[:, None],
                                                             multimask_output=multimask_output, return_logits=True)
            if dt is not None:
                masks, iou = masks.float(), iou.float()
            b = MaskData(masks=masks.flatten(0, 1), iou_preds=iou.flatten(0, 1),
                         points=torch.as_tensor(batch.repeat(masks.shape[1], axis=0)))
            del masks
            if pred_iou_thresh > 0.0:
                b.filter(b["iou_preds"] > pred_iou_thresh)
            b["stability_score"] = calculate_stability_score(b["masks"], thr, stability_score_offset)
            if stability_score_thresh > 0.0:
                b.filter(b["stability_score"] >= stability_score_thresh)
            b["masks"] = b["masks"] > thr
            b["boxes"] = batched_mask_to_box(b["masks"])
            b["rles"] = mask_to_rle_pytorch(b["masks"])
            del b["masks"]
            data.cat(b)
        if len(data["rles"]) == 0:
            return empty
        keep = batched_nms(data["boxes"].float(), data["iou_preds"], torch.zeros(len(data["boxes"])),
                           iou_threshold=box_nms_thresh)
        data.filter(keep)
        data.to_numpy()
        return AmgMasks(np.stack([rle_to_mask(r) for r in data["rles"]]).astype(bool),
                        np.asarray(data["iou_preds"], np.float32), np.asarray(data["stability_score"], np.float32),
                        np.asarray(data["points"], np.float64).reshape(-1, 2))

    def decode(self, prompts: Prompts) -> Decoded:
        """All 4 candidates per prompt at frame resolution; scores = SAM's IoU (no HDNet here)."""
        low = self.decode_lowres(prompts)
        masks = self.upsample(low.logits).cpu().numpy()
        iou = low.iou_pred.float().cpu().numpy()
        return Decoded(masks=masks, iou_pred=iou, scores=iou.copy())


def lowres_to_hw(logits: torch.Tensor, valid_hw: tuple[int, int]) -> torch.Tensor:
    """Crop low-res logits to the image region (drops the encoder's padding)."""
    return logits[..., : valid_hw[0], : valid_hw[1]]


def resize_bool(masks: np.ndarray, height: int, width: int) -> np.ndarray:
    """Nearest-neighbour resize of (N, h, w) bool masks."""
    if masks.shape[1:] == (height, width):
        return masks
    t = torch.from_numpy(masks.astype(np.uint8))[:, None].float()
    return F.interpolate(t, size=(height, width), mode="nearest")[:, 0].bool().numpy()
