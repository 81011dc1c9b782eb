"""One tree of config dataclasses; YAML files in config/ map onto it key for key.

Defaults are the paper's values (DESIGN.md section 6). Unknown keys are an error, so
a typo in a YAML file is reported instead of silently ignored.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import io
import tokenize
import types
import typing
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A config file or override that does not fit the schema."""


SAM_DECODERS = ("folded", "library")
SAM_ENCODERS = ("chunked", "library")


@dataclass
class SamConfig:
    """Segment Anything backend. With no checkpoint the weights-free backend is used."""

    model_type: str = "vit_l"  # SAM architecture; vit_t is MobileSAM
    checkpoint: str | None = None  # path to the official .pth/.pt; never downloaded at run time
    device: str = "auto"  # auto (CUDA when available, else CPU) | cpu | cuda | cuda:N
    multimask_output: bool = True  # 3 masks per prompt from SAM's multimask tokens (HDNet scores 4 tokens)
    allow_random_weights: bool = False  # tests/benchmarks only: random weights when there is no checkpoint
    image_size: int = 1024  # encoder input side; only the test architecture vit_tiny may change it
    dtype: str = "fp32"  # fp32 | bf16 | fp16: autocast of the encoder and decoder (fp32: none; fp16 on CPU runs fp32)
    decoder: str = "folded"  # folded | library: how K prompts are decoded (folded: the same masks, 2-4x faster on CPU)
    encoder: str = "chunked"  # chunked | library: encoder CPU layouts (chunked: banded attention, NHWC convs; same embedding, vit_b 1.9-3x faster)
    compile: bool = False  # torch.compile the encoder and decoder (the first frames pay it; eager if it fails)

    def __post_init__(self) -> None:
        check_dtype(self.dtype, "sam.dtype")  # a bad value fails at load / parameter change, not per frame
        if self.decoder not in SAM_DECODERS:
            raise ConfigError(f"sam.decoder {self.decoder!r} is not valid; use one of {' | '.join(SAM_DECODERS)}")
        if self.encoder not in SAM_ENCODERS:
            raise ConfigError(f"sam.encoder {self.encoder!r} is not valid; use one of {' | '.join(SAM_ENCODERS)}")


@dataclass
class HPGConfig:
    """Heatmap-based Prompt Generator (UOIS-SAM section III-B)."""

    backbone: str = "cnn_rgbd"  # dinov2_vits14 | sam | cnn_rgb | cnn_rgbd
    checkpoint: str | None = None  # HPG weights; none = the small RGB-D checkpoint shipped in the package
    backbone_checkpoint: str | None = None  # e.g. dinov2_vits14_pretrain.pth for the DINOv2 backbone
    input_height: int = 336  # network input height, px (the paper: 336)
    input_width: int = 448  # network input width, px (the paper: 448)
    fg_threshold: float = 0.85  # foreground probability needed for a peak
    heatmap_threshold: float = 0.007  # minimum heatmap value of a peak
    top_k: int = 30  # K: the most prompts per frame (the highest heatmap peaks)
    peak_kernel: int = 0  # max-pool window for peak suppression; 0 = the HPG checkpoint's own window (shipped: 3), else the paper's 3
    device: str = "auto"  # auto (CUDA when available, else CPU) | cpu | cuda | cuda:N
    dtype: str = "fp32"  # fp32 | bf16 | fp16: autocast of the network (fp32: none; fp16 on CPU runs fp32)

    def __post_init__(self) -> None:
        check_dtype(self.dtype, "hpg.dtype")
        if isinstance(self.peak_kernel, bool) or not isinstance(self.peak_kernel, int) or self.peak_kernel < 0:
            raise ConfigError(f"hpg.peak_kernel must be an integer >= 1, or 0 for the HPG checkpoint's own "
                              f"window, got {self.peak_kernel!r}")


@dataclass
class HDNetConfig:
    """Hierarchical discrimination network: adapted IoU = SAM IoU + MLP(tokens) (eq. 5)."""

    enabled: bool = True  # add the HDNet correction to SAM's IoU (needs checkpoint)
    checkpoint: str | None = None  # trained HDNet weights (uois-sam-train-hdnet)
    iou_threshold: float = 0.48  # keep a prompt's best mask only if its adapted IoU exceeds this (shipped HDNet: 0.4 from its sidecar unless set)
    sam_iou_threshold: float = 0.88  # methods without HDNet: AMG's pred_iou_thresh (shipped small SAM: 0.4 from its sidecar unless set)
    stability_threshold: float = 0.95  # methods without HDNet: AMG's stability_score_thresh, 0 = off (shipped small SAM: 0.5 unless set)


@dataclass
class PostprocessConfig:
    """Filters after mask selection (UOIS-SAM section IV-A)."""

    nms_iou: float = 0.3  # mask NMS IoU threshold
    max_box_height: int = 200  # masks with a taller box are dropped, px at the reference size
    max_box_width: int = 200  # masks with a wider box are dropped, px at the reference size
    reference_height: int = 480  # image height the size limits refer to; they scale per axis with the image
    reference_width: int = 640  # image width the size limits refer to
    min_area: int = 50  # smallest mask kept, px at the reference size (scaled with the image area)
    filter_before_nms: bool = False  # size filter before NMS (the paper: NMS first)


@dataclass
class GeometricConfig:
    """Weights-free backend: table plane + depth/colour region growing."""

    plane_distance: float = 0.01  # RANSAC inlier distance to the table plane, metres
    plane_iterations: int = 200  # RANSAC iterations of each plane fit
    plane_candidates: int = 4  # planes fitted in turn (table, floor, wall, ...) to choose the table from
    table_min_step: float = 0.25  # a parallel plane this far above another is a table on a floor, metres
    table_min_area: float = 0.04  # ... if its visible inliers cover this area, m^2 (a box top covers less)
    min_height: float = 0.008  # points this far above the plane belong to objects, metres
    max_height: float = 0.5  # ignore points higher than this above the table
    depth_jump: float = 0.02  # relative depth discontinuity that stops region growing
    fill_specks: int = 2  # passes that fill invalid-depth specks from agreeing 5x5 neighbours (each ~4 px wider); 0 = off
    split_valley: float = 0.05  # objects joined by smoothed depth split at a valley this deep, metres
    split_valley_ratio: float = 0.4  # ... or this share of the lower peak's height, if less (bowl rims stay)
    enclosed_fraction: float = 0.7  # a region this much enclosed by another, behind it, is its inside
    hollow_fit: float = 0.08  # neighbours whose points lie on one upright surface of revolution (radius error under this share of it) are one hollow object (0 = off)
    hollow_cover: float = 150.0  # degrees of its axis a wall must go around to take in what lies inside it (a bowl's bottom)
    halo_px: int = 24  # depth bleed onto the table is cut to colour edges in this band, px (0 = off)
    halo_ratio: float = 2.0  # ... if the table's colours explain a pixel this many times better
    colour_weight: float = 1.0  # > 0: also split at strong colour edges, re-joined where convex (0 = off)
    max_prompts: int = 30  # most objects (prompts) per frame
    colour_edge: float = 30.0  # CIELAB distance that counts as a strong colour edge (scaled by colour_weight)
    concave_angle: float = 30.0  # degrees; concave creases sharper than this separate touching objects (0 = off)
    normal_step: int = 3  # pixel baseline of the depth-image normals (larger = smoother)
    split_box_px: int = 200  # regions with a larger box (px) get the superpixel junction test (0 = off)
    superpixel_px: int = 12  # ... superpixel spacing, px at 640x480
    junction_px: int = 8  # span (px at 640x480) of the junction test between pieces split by colour
    junction_angle: float = 15.0  # degrees; at that span, a turn this sharp and concave is a junction
    junction_fraction: float = 0.3  # colour pieces re-join unless this share of the border is a junction
    colour_join: float = 14.0  # ... and re-join anyway when their mean CIELAB a*b* agree within this (one colour, shaded faces; 0 = off)
    colour_join_hue: float = 15.0  # ... or when their mean hue angles agree within this, degrees (a face lit near white keeps its hue, not its chroma; 0 = off)
    colour_join_chroma: float = 10.0  # ... if both are at least this saturated (a*b* chroma): greys, whites and blacks all sit near 0
    min_region_pixels: int = 150  # smallest object region at 640x480 (scaled with the image area)
    bump_contrast: float = 6.0  # > 0: small low regions within this CIELAB distance of the open table around them are depth noise (0 = off)
    bump_px: int = 600  # ... "small": fewer px than this at 640x480
    bump_height: float = 0.025  # ... "low": 90 % of their points below this above the table, metres
    min_support: float = 0.5  # share of a region's footprint where the table is seen (not past its edge) to keep it
    wall_area: float = 0.15  # a region this big (share of the image), out of the image on 3+ sides, facing up < 30 %: a wall, not an object (0 = off)
    seed: int = 1  # RANSAC seed, so that a frame always gives the same plane
    box_limit: bool = False  # apply postprocess's 200x200 box limit (made for SAM's background masks) here too
    flat_contrast: float = 15.0  # > 0: table-level blobs this far (CIELAB, L halved) from the local table colour are flat objects (0 = off)
    flat_max_fraction: float = 0.08  # ... a flat object covers at most this share of the table's pixels


@dataclass
class PipelineConfig:
    """Which method runs: the full method, a Table IV ablation row, or the weights-free path."""

    method: str = "auto"  # auto | uois_sam | grid | grid_fg | heatmap | heatmap_hdnet | weights_free
    weights_free_prompts: str = "geometric"  # prompt source of the weights-free method
    grid_points: int = 32  # points per side of the SAM automatic-generator grid
    grid_exact: bool = True  # grid, grid_fg: SamAutomaticMaskGenerator exactly (full-res); false = faster low-res approximation
    grid_box_nms: float = 0.7  # grid_exact: AMG's box NMS IoU (box_nms_thresh) before the common filters
    decode_batch: int = 64  # prompts decoded per batch (memory bound on CPU)
    weights_free_min_score: float = 0.3  # weights-free segmenter: keep a region above this confidence
    seed: int = 1  # seed of the random parts of a method, so that a frame always gives the same result


@dataclass
class AdaptConfig:
    """Test-time adaptation of SAM's mask decoder from clicks (Schoen et al.; core/adapt)."""

    click_adaptation: str = "none"  # CA, a step after every click: none | R (reset per object) | C (continual)
    result_mask: str = "none"  # RM, a step on the result mask after each object: none | U (untreated) | E (eroded)
    click_mask: bool = False  # CM: a step on all of an object's clicks after it (merged with RM when both)
    lr: float = 1e-6  # Adam learning rate (the paper: 1e-6); only the mask decoder is optimised
    erosion_iterations: int = 5  # E: erosions with a 3x3 cross, foreground and background separately (k)
    steps: int = 1  # optimisation steps per adaptation event (the paper: 1)
    per_class: bool = True  # one decoder copy per class name; false: every class shares one decoder
    max_classes: int = 16  # most per-class decoder copies held (each is the decoder plus Adam's two moments)


@dataclass
class GraspConfig:
    """Grasps for a Franka hand from instance point clouds (core/grasp)."""

    backend: str = "antipodal"  # antipodal (built in, weights-free) | gsnet (graspness GSNet, needs its code and weights)
    top_n: int = 5  # grasps kept per instance after grasp NMS, best first
    max_opening: float = 0.08  # widest opening the hand may use, metres (Franka hand: 0.08)
    finger_clearance: float = 0.005  # free space between each pad and the object as the hand arrives, metres
    approach_distance: float = 0.05  # straight last approach swept by the hand and checked for collisions, metres
    friction_deg: float = 20.0  # half angle of the friction cone the contact normals must lie in, degrees
    min_contact_points: int = 6  # surface points per finger whose normals lie in the friction cone (GPD: 6)
    collision_points: int = 2  # a hand pose collides when this many scene points lie inside the hand
    collision_margin: float = 0.005  # the sampler grows the hand by this for its collision check, metres
    table_clearance: float = 0.003  # the fingertips must stay this far above the table plane, metres
    table_band: float = 0.008  # points this close to the table plane are table, not object, metres
    min_depth: float = 0.15  # workspace: nearest depth used, metres
    max_depth: float = 2.0  # workspace: farthest depth used, metres
    max_height: float = 0.5  # workspace: points higher than this above the table are ignored, metres
    voxel_size: float = 0.004  # instance clouds are downsampled to this voxel, metres
    scene_voxel: float = 0.005  # the collision cloud is downsampled to this voxel, metres (graspnet-baseline: 0.01)
    outlier_neighbors: int = 20  # statistical outlier removal on instance clouds: neighbours per point (0 = off)
    outlier_std: float = 2.0  # ... a point farther than mean + this x std from its neighbours is dropped
    normal_radius: float = 0.015  # surface normals from the neighbours within this radius, metres
    min_points: int = 30  # an instance with fewer valid depth points gets no grasp (and a warning)
    complete_hidden: bool = True  # infer the unseen sides: footprint walls down to the table, carved by the depth
    use_amodal: bool = True  # when instances carry amodal masks, the unseen sides stay inside them
    yaw_steps: int = 12  # closing directions tried in the table plane (plus the footprint's box axes)
    max_tilt_deg: float = 60.0  # largest approach tilt away from straight down, degrees
    tilt_steps: int = 2  # tilts tried on each side of straight down (2: 0, +-30, +-60 degrees)
    slices: int = 5  # jaw positions tried along the object
    depth_steps: int = 3  # how deep the pad centre goes past the first surface: max_grasp_depth x k / depth_steps
    max_grasp_depth: float = 0.03  # ... the deepest of those, metres (graspnet: depths 0.01 to 0.04)
    max_candidates: int = 400  # best candidates per instance that get the collision check
    nms_distance: float = 0.02  # grasp NMS: a grasp this close to a better one (metres) ...
    nms_angle_deg: float = 30.0  # ... and rotated less than this (degrees) is dropped
    gsnet_checkpoint: str | None = None  # gsnet: the graspness checkpoint (.tar); never downloaded
    gsnet_repo: str | None = None  # gsnet: folder of the graspness implementation (models/graspnet.py), if not on sys.path
    gsnet_points: int = 15000  # gsnet: scene points fed to the network
    device: str = "auto"  # gsnet: auto (CUDA when available, else CPU) | cpu | cuda | cuda:N
    seed: int = 1  # seed of the random point sampling, so that a frame always gives the same grasps


@dataclass
class AmodalConfig:
    """Amodal completion (core/amodal): each instance's full shape, and which instance occludes which."""

    method: str = "auto"  # which completion runs; auto = sameo with a decoder_checkpoint, amodal_sam with an sca_checkpoint, else the completer
    checkpoint: str | None = None  # completer weights (uois-sam-train-amodal); none = the completer shipped in the package
    decoder_checkpoint: str | None = None  # sameo: the amodal-fine-tuned mask decoder of the SAM set in sam.*
    sca_checkpoint: str | None = None  # amodal_sam: Spatial Completion Adapters for the encoder of the SAM set in sam.*
    threshold: float = 0.5  # completer: probability above which a pixel is part of the amodal mask
    restrict_to_occluders: bool = True  # completer: the hidden part lies only under other instances or depth holes
    box_expand: float = 0.2  # amodal_sam: the box prompt and box prior grow by this x their side on each side
    occlusion_band: int = 3  # occlusion order: depth band compared on each side of a shared boundary, px
    occlusion_margin: float = 0.01  # occlusion order: a side this much nearer (metres, or 1 % of the depth) is in front
    device: str = "auto"  # auto (CUDA when available, else CPU) | cpu | cuda | cuda:N


@dataclass
class Config:
    sam: SamConfig = field(default_factory=SamConfig)
    hpg: HPGConfig = field(default_factory=HPGConfig)
    hdnet: HDNetConfig = field(default_factory=HDNetConfig)
    postprocess: PostprocessConfig = field(default_factory=PostprocessConfig)
    geometric: GeometricConfig = field(default_factory=GeometricConfig)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    grasp: GraspConfig = field(default_factory=GraspConfig)
    amodal: AmodalConfig = field(default_factory=AmodalConfig)
    adapt: AdaptConfig = field(default_factory=AdaptConfig)  # the segmentation node's ~/refine service

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


DEVICE_HELP = "auto | cpu | cuda | cuda:N"


def resolve_device(name: str | None) -> str:
    """The torch device string a config's device value means: 'auto' is CUDA when
    ``torch.cuda.is_available()``, else CPU. One function, so every model of a process agrees.

    Asking for CUDA where there is none is an error, not a silent fallback to CPU: a robot
    configured for the GPU should not quietly run ten times slower. Raises ConfigError.
    """
    import torch  # lazy: the config tree itself stays importable without torch

    raw = "auto" if name is None else str(name)
    s = raw.strip().lower()
    if s in ("", "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if s == "cpu":
        return "cpu"
    if s == "cuda" or s.startswith("cuda:"):
        idx = s[5:] if s.startswith("cuda:") else "0"
        if not idx.isdigit():
            raise ConfigError(f"device {raw!r} is not valid; use {DEVICE_HELP}")
        if not torch.cuda.is_available():
            raise ConfigError(f"device {raw!r}: CUDA is not available on this machine; use auto or cpu")
        n = torch.cuda.device_count()
        if int(idx) >= n:
            raise ConfigError(f"device {raw!r}: this machine has {n} CUDA device(s) (cuda:0..cuda:{n - 1})")
        return s
    raise ConfigError(f"device {raw!r} is not valid; use {DEVICE_HELP}")


DTYPES = ("fp32", "bf16", "fp16")
_warned_fp16_cpu = False


def check_dtype(value: Any, where: str = "dtype") -> str:
    """The normalised dtype name; ConfigError naming `where` for anything but fp32 | bf16 | fp16."""
    s = "fp32" if value is None else str(value).strip().lower()
    if s not in DTYPES:
        raise ConfigError(f"{where} {value!r} is not valid; use one of {' | '.join(DTYPES)}")
    return s


class DtypeFallbackWarning(UserWarning):
    """fp16 was asked for on a CPU, where it runs as fp32."""


def resolve_dtype(name: str | None, device: str) -> Any:
    """The autocast dtype a config's dtype value means on device: None for fp32, so that fp32 runs
    no autocast at all and its results stay bit-identical; torch.bfloat16 or torch.float16 else.

    fp16 on a CPU returns None (fp32) with one DtypeFallbackWarning per process: CPU autocast in
    fp16 is slow or unsupported, while bf16 runs there. An unknown value raises ConfigError.
    """
    import torch  # lazy: the config tree itself stays importable without torch

    global _warned_fp16_cpu
    s = check_dtype(name)
    if s == "fp32":
        return None
    if s == "fp16" and torch.device(device).type == "cpu":
        if not _warned_fp16_cpu:
            _warned_fp16_cpu = True
            warnings.warn("dtype fp16 on CPU runs as fp32 (CPU autocast in fp16 is slow or unsupported; "
                          "bf16 runs on CPU)", DtypeFallbackWarning, stacklevel=2)
        return None
    return torch.bfloat16 if s == "bf16" else torch.float16


def autocast(device: str, dtype: Any) -> contextlib.AbstractContextManager:
    """torch.autocast for a resolve_dtype result; a no-op context for None (fp32)."""
    if dtype is None:
        return contextlib.nullcontext()
    import torch

    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


def field_docs(cls: type) -> dict[str, str]:
    """Each field's trailing '# ...' comment: one text for the YAML keys, ROS parameters and README.

    Empty when the source is not available (a frozen install); callers fall back to the name.
    """
    try:
        src = inspect.getsource(cls)
    except (OSError, TypeError):
        return {}
    names = {f.name for f in dataclasses.fields(cls)}
    out: dict[str, str] = {}
    line_name: dict[int, str] = {}
    for tok in tokenize.generate_tokens(io.StringIO(src).readline):
        if tok.type == tokenize.NAME and tok.start[1] == 4 and tok.string in names:
            line_name.setdefault(tok.start[0], tok.string)
        elif tok.type == tokenize.COMMENT and tok.start[0] in line_name:
            out[line_name[tok.start[0]]] = tok.string.lstrip("#").strip()
    return out


def _coerce(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, where)
            except ConfigError:
                continue
        raise ConfigError(f"{where}: {value!r} does not fit {tp}")
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        (inner, *_) = typing.get_args(tp) or (Any,)
        return origin(_coerce(v, inner, f"{where}[]") for v in value)
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, where)
    return value


def _build(cls: type, data: Any, where: str) -> Any:
    if data is None:
        return cls()
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{where or 'config'}: unknown key(s) {unknown}; valid keys are {sorted(names)}")
    kwargs = {k: _coerce(v, hints[k], f"{where + '.' if where else ''}{k}") for k, v in data.items()}
    return cls(**kwargs)


def config_from_dict(data: dict | None) -> Config:
    return _build(Config, data or {}, "")


def load_config(path: str | Path | None = None, overrides: dict | None = None) -> Config:
    """Load a YAML config (safe_load) and apply nested overrides on top of it."""
    data: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            loaded = yaml.safe_load(path.read_text())
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML: {e}") from e
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{path}: top level must be a mapping, got {type(loaded).__name__}")
        data = loaded or {}
        # A ROS 2 parameter file may nest the tree under a node name / ros__parameters.
        if "ros__parameters" in data:
            data = data["ros__parameters"]
    if overrides:
        data = _merge(data, overrides)
    try:
        return config_from_dict(data)
    except ConfigError as e:
        raise ConfigError(f"{path or 'config'}: {e}") from None


def _merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def dotted_overrides(pairs: list[str]) -> dict:
    """['sam.device=cuda', 'hpg.top_k=20'] -> nested dict, values parsed as YAML scalars."""
    out: dict = {}
    for p in pairs:
        if "=" not in p:
            raise ConfigError(f"override {p!r} must look like section.key=value")
        key, val = p.split("=", 1)
        node = out
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = yaml.safe_load(val)
    return out
