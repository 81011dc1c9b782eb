"""Test-time adaptation of SAM's mask decoder from clicks (Schoen et al., "Adapting the Segment
Anything Model During Usage in Novel Situations"; DESIGN.md section 6).

While a user clicks an object, every click is one correctly labelled pixel, and the mask the
user accepts at the end is a (mostly) correct label of the whole image. Both are used to adapt
SAM during use, with a sparse BCE over the labelled pixels only, averaged separately over the
positive and the negative pixels (the paper's eq. 2), and Adam (lr 1e-6) on the mask decoder
alone, so that the cached image embedding is reused and the frame is never re-encoded:

- CA, click adaptation: one step after every click on all of this object's clicks so far,
  either R (the weights are reset when the object is done: deliberate over-fitting to it) or
  C (continual: the changes are kept);
- RM, the result mask, one step after each object: U (untreated) or E (foreground and
  background each eroded k = 5 times with a 3x3 cross, the band between them unlabelled);
- CM, the click mask: one step after each object on all its clicks (merged with RM when both).
  With R, the reset comes first, so RM/CM adapt the kept weights to the domain.

Per-class decoder copies, selected by name, adapt separately (a request without a class uses
the shared one); ``reset`` restores the weights the adapter was built with, bit for bit. The
decoders are parameter dicts run through ``torch.func.functional_call`` on the model's own
MaskDecoder, so the SAM model itself is never modified and the segmentation pipeline that
shares it keeps the original decoder. functional_call swaps the parameters in for the duration
of the call, so an adapter and a pipeline must not decode on the same model from two threads at
once (a node serialises them with a lock).

Prompts follow SAM's interactive use: the first click alone gives 3 candidates and SAM's IoU
head picks one; later clicks go in with the previous low-res logits as the mask prompt and
take the single-mask output. Masks and the loss live at frame resolution (the decoder's logits
upsampled by ``Sam.postprocess_masks``), where the clicks and the result mask are.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from segment_anything.utils.transforms import ResizeLongestSide
from torch import nn

from uois_sam_ros.core.adapt.clicks import Click
from uois_sam_ros.core.config import AdaptConfig, ConfigError
from uois_sam_ros.core.weights import CheckpointError, check_state_dict, read_checkpoint, save_torch_atomic

CA_MODES = ("none", "R", "C")
RM_MODES = ("none", "U", "E")
ADAPTED_FORMAT = "uois_sam_ros.adapted_decoder"
ADAPTED_VERSION = 1
SHARED_CLASS = ""  # the decoder of requests without a class name (and of every class without per_class)

# The configurations of the paper's tables (CA, RM, CM), the baseline first, the full method second.
PAPER_CONFIGS = ("none", "R+E+CM", "R+E", "C", "E", "CM", "R+CM", "R+U+CM")


# ------------------------------------------------------------------------------------ configuration
def check_adapt_config(cfg: AdaptConfig) -> AdaptConfig:
    """cfg with its modes in canonical case; ConfigError names the first bad value."""
    ca = str(cfg.click_adaptation).strip()
    rm = str(cfg.result_mask).strip()
    ca = "none" if ca.lower() in ("", "none") else ca.upper()
    rm = "none" if rm.lower() in ("", "none") else rm.upper()
    if ca not in CA_MODES:
        raise ConfigError(f"adapt.click_adaptation must be one of {list(CA_MODES)}, got {cfg.click_adaptation!r}")
    if rm not in RM_MODES:
        raise ConfigError(f"adapt.result_mask must be one of {list(RM_MODES)}, got {cfg.result_mask!r}")
    if not (np.isfinite(cfg.lr) and cfg.lr > 0):
        raise ConfigError(f"adapt.lr must be a positive number, got {cfg.lr!r}")
    if cfg.erosion_iterations < 0:
        raise ConfigError(f"adapt.erosion_iterations must be >= 0, got {cfg.erosion_iterations}")
    if cfg.steps < 1:
        raise ConfigError(f"adapt.steps must be >= 1, got {cfg.steps}")
    if cfg.max_classes < 1:
        raise ConfigError(f"adapt.max_classes must be >= 1, got {cfg.max_classes}")
    return replace(cfg, click_adaptation=ca, result_mask=rm, click_mask=bool(cfg.click_mask))


def adapt_config_from_spec(spec: str, base: AdaptConfig | None = None) -> AdaptConfig:
    """A table row as text -> AdaptConfig: 'none', or '+'-joined parts R|C, U|E, CM ('R+E+CM').

    The other fields (lr, erosion, ...) come from base. ConfigError says what is wrong."""
    base = base or AdaptConfig()
    parts = [p.strip().upper() for p in str(spec).replace(",", "+").split("+") if p.strip()]
    if parts in ([], ["NONE"]):
        return check_adapt_config(replace(base, click_adaptation="none", result_mask="none", click_mask=False))
    ca, rm, cm = "none", "none", False
    for p in parts:
        if p in ("R", "C"):
            if ca != "none":
                raise ConfigError(f"adaptation {spec!r}: R and C exclude each other (click adaptation once)")
            ca = p
        elif p in ("U", "E"):
            if rm != "none":
                raise ConfigError(f"adaptation {spec!r}: U and E exclude each other (result mask once)")
            rm = p
        elif p == "CM":
            if cm:
                raise ConfigError(f"adaptation {spec!r}: CM twice")
            cm = True
        else:
            raise ConfigError(f"adaptation {spec!r}: unknown part {p!r}; use none, or R|C, U|E and CM "
                              "joined by '+' (e.g. R+E+CM)")
    return check_adapt_config(replace(base, click_adaptation=ca, result_mask=rm, click_mask=cm))


def adapt_spec(cfg: AdaptConfig) -> str:
    """The table-row name of cfg ('none', 'R+E+CM', ...); inverse of adapt_config_from_spec."""
    cfg = check_adapt_config(cfg)
    parts = [p for p in (cfg.click_adaptation, cfg.result_mask) if p != "none"] + (["CM"] if cfg.click_mask else [])
    return "+".join(parts) or "none"


def adapts(cfg: AdaptConfig) -> bool:
    """True when cfg changes the decoder at all."""
    cfg = check_adapt_config(cfg)
    return cfg.click_adaptation != "none" or cfg.result_mask != "none" or cfg.click_mask


# ------------------------------------------------------------------------------------ labels and loss
def sparse_bce(logits: torch.Tensor, labels: torch.Tensor | np.ndarray) -> torch.Tensor:
    """The paper's eq. 2: BCE over the pixels labelled 1 averaged over them, plus BCE over the
    pixels labelled 0 averaged over them; pixels labelled -1 are ignored. A term without any
    pixel is left out. ValueError when nothing is labelled or the shapes differ."""
    lab = torch.as_tensor(labels, device=logits.device)
    if lab.shape != logits.shape:
        raise ValueError(f"labels {tuple(lab.shape)} and logits {tuple(logits.shape)} differ in shape")
    pos = lab == 1
    neg = lab == 0
    terms = []
    if bool(pos.any()):
        x = logits[pos]
        terms.append(F.binary_cross_entropy_with_logits(x, torch.ones_like(x)))
    if bool(neg.any()):
        x = logits[neg]
        terms.append(F.binary_cross_entropy_with_logits(x, torch.zeros_like(x)))
    if not terms:
        raise ValueError("sparse BCE: no pixel is labelled (all -1)")
    return terms[0] if len(terms) == 1 else terms[0] + terms[1]


_CROSS = cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3))


def untreated_label(mask: np.ndarray) -> np.ndarray:
    """U: the result mask as a dense label, (H, W) int8: 1 on the mask, 0 elsewhere."""
    return np.asarray(mask, bool).astype(np.int8)


def eroded_label(mask: np.ndarray, iterations: int = 5) -> np.ndarray:
    """E (eqs. 3-5): foreground and background each eroded `iterations` times with the 3x3 cross,
    as an (H, W) int8 label: 1 = eroded foreground, 0 = eroded background, -1 = the band between.

    Only the foreground/background boundary is pruned: outside the image counts as the same
    class as the pixel next to it (OpenCV's erosion border), so the image border erodes nothing.
    """
    m = np.asarray(mask, bool).astype(np.uint8)
    k = int(iterations)
    if k < 0:
        raise ValueError(f"erosion iterations must be >= 0, got {iterations}")
    out = np.full(m.shape, -1, np.int8)
    fg = cv2.erode(m, _CROSS, iterations=k) if k else m
    bg = cv2.erode(1 - m, _CROSS, iterations=k) if k else 1 - m
    out[bg.astype(bool)] = 0
    out[fg.astype(bool)] = 1
    return out


def click_label(clicks: Sequence[Click], shape: tuple[int, int]) -> np.ndarray:
    """The paper's eq. 1: (H, W) int8, 1 at positive clicks, 0 at negative ones, -1 elsewhere
    (a pixel clicked twice keeps its last label). ValueError for a click outside the image."""
    h, w = shape
    out = np.full((h, w), -1, np.int8)
    for c in clicks:
        if not (0 <= c.x < w and 0 <= c.y < h):
            raise ValueError(f"click ({c.x}, {c.y}) is outside the {w}x{h} image")
        out[c.y, c.x] = 1 if c.positive else 0
    return out


def merge_labels(base: np.ndarray, top: np.ndarray) -> np.ndarray:
    """base with every labelled pixel of top (not -1) written over it: the clicks are ground
    truth, so they win over the pseudo-label where both speak."""
    out = np.array(base, np.int8, copy=True)
    sel = np.asarray(top) != -1
    out[sel] = np.asarray(top, np.int8)[sel]
    return out


def object_label(cfg: AdaptConfig, result_mask: np.ndarray, clicks: Sequence[Click]) -> np.ndarray | None:
    """What the after-object step trains on (RM and/or CM), or None when cfg has neither."""
    cfg = check_adapt_config(cfg)
    label = None
    if cfg.result_mask == "U":
        label = untreated_label(result_mask)
    elif cfg.result_mask == "E":
        label = eroded_label(result_mask, cfg.erosion_iterations)
    if cfg.click_mask:
        cm = click_label(clicks, np.asarray(result_mask).shape)
        label = cm if label is None else merge_labels(label, cm)
    return label


# ------------------------------------------------------------------------------------ SAM state
@dataclass
class ImageContext:
    """What decoding and adaptation need of one encoded frame: SAM's image embedding (computed
    once by the encoder, never again) and the resize geometry of the frame."""

    embedding: torch.Tensor  # (1, C, h, w), a plain tensor (usable in autograd)
    original_size: tuple[int, int]  # frame (H, W)
    input_size: tuple[int, int]  # (H, W) after ResizeLongestSide, before the encoder's padding
    stamp: float = 0.0

    @classmethod
    def from_predictor(cls, predictor, stamp: float = 0.0) -> ImageContext:
        """From a SamPredictor after set_image (SamSegmenter.predictor after set_frame). The
        features are cloned outside inference mode: set_image makes inference tensors, which
        autograd may not save."""
        if not predictor.is_image_set:
            raise RuntimeError("the SAM predictor has no image: call set_frame first")
        emb = predictor.features.detach().clone()
        return cls(emb, tuple(int(v) for v in predictor.original_size),
                   tuple(int(v) for v in predictor.input_size), float(stamp))

    @property
    def height(self) -> int:
        return int(self.original_size[0])

    @property
    def width(self) -> int:
        return int(self.original_size[1])


@dataclass
class PromptState:
    """The prompt that produced a prediction, so that a later step can decode it again."""

    clicks: tuple[Click, ...]
    mask_input: torch.Tensor | None  # (1, 1, h, w) low-res logits of the previous mask, or None
    multimask: bool  # True: 3 candidates, SAM's IoU head picks one


@dataclass
class Prediction:
    """One decoded mask. logits keeps its autograd graph when decoded with grad=True."""

    mask: np.ndarray  # (H, W) bool at frame resolution
    score: float  # SAM's predicted IoU of the chosen mask
    logits: torch.Tensor  # (H, W) float logits at frame resolution
    lowres: torch.Tensor  # (1, 1, h, w) detached low-res logits: the next click's mask prompt
    prompt: PromptState


class _ClassDecoder:
    """One class's adapted decoder: its parameters (leaf tensors) and its own Adam state."""

    def __init__(self, original: dict[str, torch.Tensor], lr: float) -> None:
        self.params = {k: v.detach().clone().requires_grad_(True) for k, v in original.items()}
        self.lr = lr
        self.opt = torch.optim.Adam(list(self.params.values()), lr=lr)

    def snapshot(self) -> tuple[dict[str, torch.Tensor], dict]:
        return ({k: v.detach().clone() for k, v in self.params.items()}, copy.deepcopy(self.opt.state_dict()))

    def restore(self, snap: tuple[dict[str, torch.Tensor], dict]) -> None:
        values, opt_state = snap
        with torch.no_grad():
            for k, v in self.params.items():
                v.copy_(values[k])
        self.opt.load_state_dict(opt_state)

    def load(self, values: dict[str, torch.Tensor]) -> None:
        """New weights (bit for bit) and a fresh optimizer."""
        with torch.no_grad():
            for k, v in self.params.items():
                v.copy_(values[k])
        self.opt = torch.optim.Adam(list(self.params.values()), lr=self.lr)


class DecoderAdapter:
    """Adapts one SAM's mask decoder from clicks; the paper's modes come from an AdaptConfig.

    model: a segment-anything Sam (official, MobileSAM or the small vit_synth). The weights its
    mask decoder has when the adapter is built are "the original" that ``reset`` restores.
    The object lifecycle the interactive loop calls: ``begin_object`` -> (``predict`` ->
    ``after_click``) per click -> ``end_object``.
    """

    def __init__(self, model: nn.Module, cfg: AdaptConfig | None = None) -> None:
        self.model = model
        self.cfg = check_adapt_config(cfg or AdaptConfig())
        self.decoder = model.mask_decoder
        self.device = next(model.mask_decoder.parameters()).device
        self._original = {k: v.detach().clone() for k, v in self.decoder.named_parameters()}
        self._decoders: dict[str, _ClassDecoder] = {}
        self._snap: tuple[str, tuple] | None = None
        self.transform = ResizeLongestSide(int(model.image_encoder.img_size))
        with torch.no_grad():
            self._pe = model.prompt_encoder.get_dense_pe().detach().clone()

    # ---------------------------------------------------------------- decoders by class
    def class_key(self, name: str | None) -> str:
        """The decoder a class name selects ('' when per_class is off or no name is given)."""
        return str(name) if (self.cfg.per_class and name) else SHARED_CLASS

    @property
    def classes(self) -> list[str]:
        """Names of the decoder copies held (the shared one is '')."""
        return sorted(self._decoders)

    def _class(self, name: str | None, create: bool) -> _ClassDecoder | None:
        key = self.class_key(name)
        dec = self._decoders.get(key)
        if dec is None and create:
            if len(self._decoders) >= self.cfg.max_classes:
                raise ValueError(f"adapt.max_classes={self.cfg.max_classes} decoder copies are held "
                                 f"({', '.join(repr(c) for c in self.classes)}); cannot add class {key!r} "
                                 "(raise adapt.max_classes, or reset a class)")
            dec = self._decoders[key] = _ClassDecoder(self._original, self.cfg.lr)
        return dec

    def params(self, name: str | None = None) -> dict[str, torch.Tensor]:
        """The decoder parameters a class decodes with (the original ones until it adapts)."""
        dec = self._class(name, create=False)
        return self._original if dec is None else dec.params

    def state_dict(self, name: str | None = None) -> dict[str, torch.Tensor]:
        """A detached copy of a class's decoder weights, keyed like Sam.mask_decoder's state dict."""
        return {k: v.detach().clone() for k, v in self.params(name).items()}

    def original_state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.clone() for k, v in self._original.items()}

    def reset(self, name: str | None = None, *, all_classes: bool = False) -> None:
        """Restore the original weights bit for bit (one class, or every class) and forget Adam's
        state; a pending per-object snapshot of that class is dropped."""
        keys = list(self._decoders) if all_classes else [self.class_key(name)]
        for key in keys:
            dec = self._decoders.get(key)
            if dec is not None:
                dec.load(self._original)
            if self._snap is not None and self._snap[0] == key:
                self._snap = None

    # ---------------------------------------------------------------- decoding
    def _decode(self, ctx: ImageContext, prompt: PromptState, params: dict[str, torch.Tensor]
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(logits (H, W), lowres (1, 1, h, w), score ()) for one prompt; grad follows the mode."""
        xy = np.array([[c.x, c.y] for c in prompt.clicks], np.float64)
        coords = self.transform.apply_coords(xy, ctx.original_size)
        pts = torch.as_tensor(coords, dtype=torch.float32, device=self.device)[None]
        lbl = torch.as_tensor([1 if c.positive else 0 for c in prompt.clicks], dtype=torch.int64,
                              device=self.device)[None]
        with torch.no_grad():  # the prompt encoder is not adapted
            sparse, dense = self.model.prompt_encoder(points=(pts, lbl), boxes=None, masks=prompt.mask_input)
        low, iou = torch.func.functional_call(
            self.decoder, params, args=(),
            kwargs={"image_embeddings": ctx.embedding, "image_pe": self._pe, "sparse_prompt_embeddings": sparse,
                    "dense_prompt_embeddings": dense, "multimask_output": prompt.multimask})
        j = int(torch.argmax(iou[0]).item()) if prompt.multimask else 0
        low = low[:, j:j + 1]
        full = self.model.postprocess_masks(low, ctx.input_size, ctx.original_size)[0, 0]
        return full, low, iou[0, j]

    def _check_clicks(self, ctx: ImageContext, clicks: Sequence[Click]) -> tuple[Click, ...]:
        if len(clicks) == 0:
            raise ValueError("no click: at least one click is needed to decode a mask")
        for c in clicks:
            if not (0 <= c.x < ctx.width and 0 <= c.y < ctx.height):
                raise ValueError(f"click ({c.x}, {c.y}) is outside the {ctx.width}x{ctx.height} image")
        return tuple(clicks)

    def predict(self, ctx: ImageContext, clicks: Sequence[Click], mask_input: torch.Tensor | None = None,
                name: str | None = None, *, multimask: bool | None = None, grad: bool = False) -> Prediction:
        """The mask for an object's clicks so far with the decoder of class `name`.

        mask_input: the previous prediction's ``lowres`` (None for the first click).
        multimask: default True for a lone first click without mask_input (SAM's rule).
        grad: keep the graph in ``logits`` so that ``after_click`` can step on it without
        decoding again (the decoder of `name` is created for it)."""
        prompt = PromptState(self._check_clicks(ctx, clicks), mask_input,
                             (len(clicks) == 1 and mask_input is None) if multimask is None else bool(multimask))
        if grad:
            self._class(name, create=True)
            full, low, score = self._decode(ctx, prompt, self.params(name))
        else:
            with torch.no_grad():
                full, low, score = self._decode(ctx, prompt, self.params(name))
        mask = (full.detach() > self.model.mask_threshold).cpu().numpy()
        return Prediction(mask, float(score.detach()), full, low.detach(), prompt)

    def loss(self, ctx: ImageContext, prompt: PromptState, labels: np.ndarray, name: str | None = None) -> float:
        """The sparse BCE of a class's current decoder on labels (no step; for checks and figures)."""
        with torch.no_grad():
            full, _, _ = self._decode(ctx, prompt, self.params(name))
            return float(sparse_bce(full, labels))

    def step(self, ctx: ImageContext, prompt: PromptState, labels: np.ndarray, name: str | None = None,
             logits: torch.Tensor | None = None) -> float:
        """cfg.steps Adam steps of the class's decoder on the sparse BCE of labels; returns the loss
        before the first step. logits: a ``predict(grad=True)`` result's logits for this very
        prompt and decoder, to save the first forward pass."""
        dec = self._class(name, create=True)
        labels_t = torch.as_tensor(np.asarray(labels, np.int8), device=self.device)
        first = None
        for i in range(self.cfg.steps):
            full = logits if (i == 0 and logits is not None and logits.requires_grad) else \
                self._decode(ctx, prompt, dec.params)[0]
            loss = sparse_bce(full, labels_t)
            dec.opt.zero_grad(set_to_none=True)
            loss.backward()
            dec.opt.step()
            first = float(loss.detach()) if first is None else first
        return float(first)

    # ---------------------------------------------------------------- the paper's modes
    def begin_object(self, name: str | None = None) -> None:
        """R: remember the class's weights (and Adam state) to return to after this object."""
        self._snap = None
        if self.cfg.click_adaptation == "R":
            dec = self._class(name, create=True)
            self._snap = (self.class_key(name), dec.snapshot())

    def click_grad(self) -> bool:
        """Whether predictions during an object need their graph (click adaptation is on)."""
        return self.cfg.click_adaptation != "none"

    def after_click(self, ctx: ImageContext, pred: Prediction, name: str | None = None) -> float | None:
        """CA (R or C): a step on all clicks so far against this click's mask; returns the loss
        before the step, None when CA is off."""
        if self.cfg.click_adaptation == "none":
            return None
        labels = click_label(pred.prompt.clicks, ctx.original_size)
        return self.step(ctx, pred.prompt, labels, name, logits=pred.logits)

    def end_object(self, ctx: ImageContext, final: Prediction | None, name: str | None = None) -> float | None:
        """After the user is done: R resets the class's weights, then RM / CM take one step on the
        result mask and / or the clicks, decoding the final prompt again. Returns that step's
        loss before it, None when there is none."""
        key = self.class_key(name)
        if self._snap is not None and self._snap[0] == key and key in self._decoders:
            self._decoders[key].restore(self._snap[1])
        self._snap = None
        if final is None:
            return None
        label = object_label(self.cfg, final.mask, final.prompt.clicks)
        if label is None or not (label != -1).any():
            return None
        return self.step(ctx, final.prompt, label, name)

    # ---------------------------------------------------------------- files
    def save(self, path: str | Path, name: str | None = None, meta: dict | None = None) -> Path:
        """Write a class's decoder weights (torch.save, written to a temporary file first)."""
        blob = {"format": ADAPTED_FORMAT, "version": ADAPTED_VERSION, "class_name": self.class_key(name),
                "meta": dict(meta or {}), "state_dict": {k: v.cpu() for k, v in self.state_dict(name).items()}}
        return save_torch_atomic(blob, path)

    def load(self, path: str | Path, name: str | None = None) -> str:
        """Load a saved decoder as class `name` (default: the class it was saved as); returns
        the class. CheckpointError when the file is not one, or does not fit this SAM."""
        what = "adapted SAM mask decoder"
        blob = read_checkpoint(path, what, ADAPTED_FORMAT)
        state = blob.get("state_dict")
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise CheckpointError(f"{what} checkpoint {path} does not hold a state dict of tensors")
        check_state_dict(self._original, state, path, what)
        cls_name = str(blob.get("class_name", "")) if name is None else name
        dec = self._class(cls_name or None, create=True)
        dec.load({k: v.to(self.device, self._original[k].dtype) for k, v in state.items()})
        return self.class_key(cls_name or None)


# ------------------------------------------------------------------------------------ benchmark
@dataclass
class StepTiming:
    """Median seconds of one decoder forward pass (no grad) and of one adaptation step (forward
    with grad, sparse BCE, backward, Adam) on the same prompt, measured in one run."""

    forward_s: float
    step_s: float
    repeats: int

    @property
    def ratio(self) -> float:
        return self.step_s / self.forward_s if self.forward_s > 0 else float("inf")


def time_adaptation_step(model: nn.Module, ctx: ImageContext, clicks: Sequence[Click],
                         repeats: int = 10, lr: float = 1e-6) -> StepTiming:
    """Time one adaptation step against one decoder forward pass for the same multi-click prompt
    (with a mask prompt, as every click after the first). Uses its own adapter, so the model's
    decoder and any other adapter stay as they are. Both include the upsampling to frame size."""
    adapter = DecoderAdapter(model, AdaptConfig(click_adaptation="C", lr=lr))
    first = adapter.predict(ctx, clicks[:1])
    labels = click_label(clicks, ctx.original_size)
    sync = torch.cuda.synchronize if adapter.device.type == "cuda" else (lambda: None)
    fwd, stp = [], []
    for i in range(int(repeats) + 1):  # the first round warms up
        sync()
        t = time.perf_counter()
        adapter.predict(ctx, clicks, first.lowres, "bench")
        sync()
        t1 = time.perf_counter()
        pred = adapter.predict(ctx, clicks, first.lowres, "bench", grad=True)
        adapter.step(ctx, pred.prompt, labels, "bench", logits=pred.logits)
        sync()
        t2 = time.perf_counter()
        if i:
            fwd.append(t1 - t)
            stp.append(t2 - t1)
    return StepTiming(float(np.median(fwd)), float(np.median(stp)), int(repeats))
