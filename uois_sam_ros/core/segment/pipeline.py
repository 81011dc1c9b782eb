"""UOISPipeline: one frame in, instance masks out; one config value picks the method.

Methods (pipeline.method):
- uois_sam / heatmap_hdnet: HPG peaks -> SAM -> HDNet adapted IoU (Table IV row 4, the paper).
- heatmap: HPG peaks -> SAM, selected by SAM's own IoU (row 3).
- grid_fg: the 32x32 grid restricted to HPG's foreground -> the same generator (row 2).
- grid: segment-anything's SamAutomaticMaskGenerator on the 32x32 grid (row 1).
- weights_free: geometric (or HPG) prompts -> the geometric region-growing segmenter.
- auto: with sam.checkpoint set, uois_sam when hdnet.checkpoint is set too, else heatmap;
  without a SAM checkpoint, AUTO_WITHOUT_CHECKPOINT (chosen from the held-out figures in the
  README, "Which path runs by default").

A SAM method with no sam.checkpoint runs on the small SAM shipped in the package (vit_synth,
uois_sam_ros/data/sam_vit_synth.pt) and, for the HDNet methods, on the HDNet trained on it
(``with_shipped_models``; the pipeline's ``model_note`` says so, and the nodes and CLIs log it).

``grid`` with pipeline.grid_exact (the default) is SamAutomaticMaskGenerator with its defaults
(``SamSegmenter.generate_amg``): every one of the 3 multimask candidates of every grid point
whose SAM IoU exceeds sam_iou_threshold (0.88) and whose stability score, computed on the
full-resolution logits with offset 1.0, reaches stability_threshold (0.95), then box NMS at
grid_box_nms (0.7); one crop, no small-region removal. ``grid_fg`` runs the same generator on
the grid points that HPG's foreground keeps, so rows 1 and 2 differ only in their prompts.
grid_exact false is a faster approximation for both: the scheme of the other methods below,
on low-res logits.

The other methods without HDNet score like AMG per prompt: SAM's 3 multimask candidates, a
candidate must reach the stability threshold, and the prompt's best is kept above
sam_iou_threshold (0.88). With HDNet all 4 tokens compete and the threshold is 0.48. Their
selection and NMS run on SAM's low-res logits; only the surviving masks are upsampled.

Every method then runs the same mask NMS (postprocess.nms_iou) and size filter (box limit and
min_area), in the order postprocess.filter_before_nms says; for grid_exact they apply to AMG's
output at frame resolution.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from segment_anything.utils.amg import calculate_stability_score

from uois_sam_ros.core.config import Config, ConfigError
from uois_sam_ros.core.segment.hdnet import (
    PAPER_IOU_THRESHOLD,
    HDNet,
    default_hdnet_checkpoint,
    load_hdnet,
    shipped_iou_threshold,
)
from uois_sam_ros.core.segment.hpg import HPG, HPGNet, crop_sam_embedding, upsample_map
from uois_sam_ros.core.segment.postprocess import (
    filter_masks,
    filter_masks_t,
    is_host_device,
    kept_in_order,
    select_best,
    select_best_t,
    size_filter_t,
)
from uois_sam_ros.core.segment.prompting import ForegroundGridPromptSource, GridPromptSource, amg_points
from uois_sam_ros.core.segment.sam_backend import (
    AMG_THRESHOLDS,
    SamSegmenter,
    default_sam_checkpoint,
    lowres_to_hw,
    shipped_operating_point,
)
from uois_sam_ros.core.types import Frame, Instances, Prompts
from uois_sam_ros.core.weights import CheckpointError

SAM_METHODS = ("uois_sam", "heatmap_hdnet", "heatmap", "grid_fg", "grid")
METHODS = ("auto", *SAM_METHODS, "weights_free")
HPG_METHODS = ("uois_sam", "heatmap_hdnet", "heatmap", "grid_fg")


# What ``auto`` runs when no SAM checkpoint is configured: the method that scored higher on the
# held-out scenes of the README's "Which path runs by default" (uois-sam-eval --method
# weights_free,uois_sam on them). "weights_free", or "uois_sam" on the shipped small SAM.
AUTO_WITHOUT_CHECKPOINT = "weights_free"


def resolve_method(config: Config) -> str:
    m = config.pipeline.method
    if m not in METHODS:
        raise ConfigError(f"pipeline.method {m!r} is not one of {list(METHODS)}")
    if m == "auto":
        if config.sam.checkpoint:
            return "uois_sam" if (config.hdnet.checkpoint and config.hdnet.enabled) else "heatmap"
        if config.sam.allow_random_weights or AUTO_WITHOUT_CHECKPOINT == "weights_free":
            return "weights_free"
        return AUTO_WITHOUT_CHECKPOINT if default_sam_checkpoint("vit_synth") else "weights_free"
    return m


def with_shipped_models(config: Config) -> tuple[Config, str | None]:
    """The config a pipeline really loads, and a one-line note when it differs from the one given.

    A SAM method with no sam.checkpoint (and no allow_random_weights) runs on the small SAM
    shipped in the package, and the HDNet methods on the HDNet shipped with it, unless
    hdnet.checkpoint names another. The methods ranked by SAM's own IoU head (grid, grid_fg,
    heatmap, or any with hdnet.enabled false) get the small SAM's operating point from its sidecar
    in place of SAM's AMG thresholds, when those are left at 0.88 / 0.95 (other values are kept);
    the shipped HDNet likewise gets its own threshold in place of the paper's 0.48 when
    hdnet.iou_threshold is left at 0.48. Nothing changes when no small SAM is shipped: loading
    then fails with the message that says what to set."""
    import dataclasses

    method = resolve_method(config)
    if method == "weights_free" or config.sam.checkpoint or config.sam.allow_random_weights:
        return config, None
    sam_ckpt = default_sam_checkpoint("vit_synth")
    if sam_ckpt is None:
        return config, None
    sam = dataclasses.replace(config.sam, model_type="vit_synth", checkpoint=str(sam_ckpt), image_size=1024)
    hdnet = config.hdnet
    note = f"no sam.checkpoint: {method} runs on the shipped small SAM (vit_synth, {sam_ckpt.name})"
    if config.sam.model_type != "vit_synth":
        note += f" instead of {config.sam.model_type}"
    if method in ("uois_sam", "heatmap_hdnet") and hdnet.enabled:
        if hdnet.checkpoint is None:
            hd = default_hdnet_checkpoint("vit_synth")
            if hd is not None:
                hdnet = dataclasses.replace(hdnet, checkpoint=str(hd))
                note += f" and its HDNet ({hd.name})"
                t = shipped_iou_threshold(hd) if hdnet.iou_threshold == PAPER_IOU_THRESHOLD else None
                if t is not None:
                    hdnet = dataclasses.replace(hdnet, iou_threshold=t)
                    note += f" at its operating point (iou_threshold {t:g}, from {hd.with_suffix('.json').name})"
        else:
            note += f" with hdnet.checkpoint {hdnet.checkpoint}"
    elif (hdnet.sam_iou_threshold, hdnet.stability_threshold) == AMG_THRESHOLDS:
        # ranked by the small SAM's own IoU head: SAM's defaults are for the official heads
        op = shipped_operating_point(sam_ckpt)
        if op is not None:
            hdnet = dataclasses.replace(hdnet, **op)
            note += (f" at its IoU head's operating point (sam_iou_threshold {op['sam_iou_threshold']:g}, "
                     f"stability_threshold {op['stability_threshold']:g}, from {sam_ckpt.with_suffix('.json').name})")
    return dataclasses.replace(config, sam=sam, hdnet=hdnet), note


PARTS = ("full", "prompts", "masks")


def model_signature(config: Config) -> tuple:
    """Everything in a config that decides which weights are loaded; equal signatures can share
    the loaded models, and the rest of the config (thresholds) can change between frames."""
    config = with_shipped_models(config)[0]
    s, h, d, p = config.sam, config.hpg, config.hdnet, config.pipeline
    return (resolve_method(config), p.weights_free_prompts, s.model_type, s.checkpoint, s.device,
            s.allow_random_weights, s.image_size, h.backbone, h.checkpoint, h.backbone_checkpoint, h.device,
            d.enabled, d.checkpoint)


def prompts_need_sam(config: Config) -> bool:
    """True when the method's prompts come from SAM's image embedding (the ``sam`` HPG backbone):
    then prompts and masks must be computed in one process."""
    method = resolve_method(config)
    return method in HPG_METHODS and config.hpg.backbone == "sam"


class UOISPipeline:
    """Assembles prompt source + segmenter (+ HDNet) for the configured method.

    part selects what is loaded, so a process holds only the models it uses:
    - "full": prompts and masks (single-node mode, offline evaluation);
    - "prompts": the prompt source only (the hpg node; never SAM, unless the prompts
      themselves need SAM's embedding, which ``prompts_need_sam`` tells beforehand);
    - "masks": the segmenter and HDNet only; prompts are passed to ``run`` (the
      segmentation node in split mode).

    The API the nodes call: ``prompts(frame)``, ``run(frame, prompts=None)`` and
    ``reconfigure(config)``. Pre-built models may be passed (tests, training loops); otherwise
    they load from the config. After run(): last_prompts holds the prompts, hpg_maps the HPG
    (fg_prob, heatmap) at HPG resolution when HPG ran. ``device`` is the resolved torch device
    of the loaded models ('cpu' for the geometric path), for nodes to log.
    """

    def __init__(self, config: Config, *, sam_model: torch.nn.Module | None = None,
                 hpg_model: HPGNet | None = None, hdnet_model: HDNet | None = None, part: str = "full") -> None:
        if part not in PARTS:
            raise ConfigError(f"pipeline part must be one of {list(PARTS)}, got {part!r}")
        if (resolve_method(config) == "weights_free" and config.pipeline.weights_free_prompts == "hpg"
                and config.hpg.backbone == "sam"):
            raise ConfigError("pipeline.weights_free_prompts=hpg needs an HPG that runs without SAM, but "
                              "hpg.backbone=sam reads SAM's image embedding: choose hpg.backbone cnn_rgbd "
                              "(the shipped default), cnn_rgb or dinov2_vits14, or a SAM method")
        # models passed in are used as they are (tests, training loops); otherwise the shipped small
        # SAM and its HDNet stand in for a missing sam.checkpoint
        config, self.model_note = with_shipped_models(config) if sam_model is None else (config, None)
        if part == "prompts" and prompts_need_sam(config):
            raise ConfigError("hpg.backbone=sam computes prompts from SAM's image embedding: run HPG inside "
                              "the segmentation node (single_node: true) instead of a separate hpg node")
        if part == "masks" and prompts_need_sam(config):
            part = "full"  # the prompts need the embedding this process computes anyway
        self.config = config
        self.part = part
        self.method = resolve_method(config)
        self.hpg: HPG | None = None
        self.hdnet: HDNet | None = None
        self.prompt_source = None
        self.segmenter = None
        self.last_prompts = Prompts.empty()
        torch.manual_seed(config.pipeline.seed)
        pc = config.pipeline
        want_prompts, want_masks = part in ("full", "prompts"), part in ("full", "masks")
        if self.method == "weights_free":
            from uois_sam_ros.core.segment import geometric  # lazy: only the weights-free path needs it

            if pc.weights_free_prompts not in ("geometric", "hpg"):
                raise ConfigError(f"pipeline.weights_free_prompts must be 'geometric' or 'hpg', "
                                  f"got {pc.weights_free_prompts!r}")
            if want_prompts:
                if pc.weights_free_prompts == "hpg":
                    self.hpg = HPG(config.hpg, hpg_model)
                    self.prompt_source = self.hpg
                else:
                    self.prompt_source = geometric.GeometricPromptSource(config.geometric)
            if want_masks:
                # the segmenter reuses the plane fit and regions the prompt source made for the frame
                own = self.prompt_source if isinstance(self.prompt_source, geometric.GeometricPromptSource) else None
                self.segmenter = geometric.GeometricSegmenter(config.geometric, source=own)
            return
        if want_masks or prompts_need_sam(config):
            self.segmenter = SamSegmenter(config.sam, sam_model, decode_batch=pc.decode_batch)
        if want_prompts:
            if self.method in HPG_METHODS:
                self.hpg = HPG(config.hpg, hpg_model)
            if self.method == "grid":
                self.prompt_source = GridPromptSource(pc.grid_points)
            elif self.method == "grid_fg":
                self.prompt_source = ForegroundGridPromptSource(self.hpg, pc.grid_points)
            else:
                self.prompt_source = self.hpg
        if want_masks and self.method in ("uois_sam", "heatmap_hdnet") and config.hdnet.enabled:
            device = self.segmenter.device
            if hdnet_model is not None:
                self.hdnet = hdnet_model
            elif config.hdnet.checkpoint:
                # refuses an HDNet trained on another SAM model type; warns on other SAM weights
                self.hdnet = load_hdnet(config.hdnet.checkpoint, str(device), sam_model_type=config.sam.model_type,
                                        sam_checkpoint=config.sam.checkpoint, sam_token_dim=self.segmenter.token_dim)
            elif config.sam.allow_random_weights:
                self.hdnet = HDNet.for_sam(self.segmenter.model)  # random, for tests/benchmarks (like the random SAM)
            else:
                raise CheckpointError(
                    f"pipeline.method={self.method} needs HDNet weights: set hdnet.checkpoint, or use "
                    "pipeline.method=heatmap (HPG + SAM's own IoU)")
            self.hdnet = self.hdnet.to(device).eval()

    # ------------------------------------------------------------------ reconfiguration
    def can_reconfigure(self, config: Config) -> bool:
        """True when config loads the same models as the current one (only thresholds differ)."""
        return model_signature(config) == model_signature(self.config)

    def reconfigure(self, config: Config) -> None:
        """Apply a config that differs only in thresholds, keeping every loaded model.

        Raises ConfigError when the new config needs other weights (build a new pipeline then).
        Not thread-safe against a running ``run``: call it between frames.
        """
        if not self.can_reconfigure(config):
            raise ConfigError("this config changes which models are loaded: build a new UOISPipeline")
        config = with_shipped_models(config)[0]
        self.config = config
        if self.hpg is not None:
            self.hpg.cfg = config.hpg
        for part in (self.prompt_source, self.segmenter):
            if part is None:
                continue
            if hasattr(part, "n"):
                part.n = config.pipeline.grid_points
            if type(part).__name__.startswith("Geometric"):
                part.cfg = config.geometric
        if isinstance(self.segmenter, SamSegmenter):
            self.segmenter.cfg = config.sam
            self.segmenter.decode_batch = max(1, int(config.pipeline.decode_batch))

    @property
    def devices(self) -> dict[str, str]:
        """The resolved torch device of each loaded model ({'sam': 'cuda', 'hpg': 'cuda'}, ...)."""
        out: dict[str, str] = {}
        if isinstance(self.segmenter, SamSegmenter):
            out["sam"] = str(self.segmenter.device)
        if self.hpg is not None:
            out["hpg"] = self.hpg.device
        return out

    @property
    def device(self) -> str:
        """The device the pipeline computes on: SAM's, else HPG's, else 'cpu' (the geometric path)."""
        d = self.devices
        return d.get("sam") or d.get("hpg") or "cpu"

    @property
    def uses_hdnet(self) -> bool:
        return self.hdnet is not None

    @property
    def hpg_maps(self) -> tuple[np.ndarray, np.ndarray] | None:
        if self.hpg is None or self.hpg.last_fg is None:
            return None
        return self.hpg.last_fg, self.hpg.last_heatmap

    def debug_maps(self, height: int, width: int) -> tuple[np.ndarray, np.ndarray] | None:
        """HPG (fg_prob, heatmap) of the last frame at height x width, for debug images."""
        maps = self.hpg_maps
        if maps is None:
            return None
        return upsample_map(maps[0], height, width), upsample_map(maps[1], height, width)

    def _needs_depth(self, given_prompts: bool) -> bool:
        if self.method == "weights_free":
            return True
        return (not given_prompts) and self.hpg is not None and self.hpg.model.uses_depth

    def prompts(self, frame: Frame) -> Prompts:
        """The prompts ``run(frame)`` would use (needs a prompt source: part "full" or "prompts")."""
        if self.prompt_source is None:
            raise ConfigError("this pipeline was built without a prompt source (part='masks'): pass prompts to run()")
        frame.validate(need_depth=self._needs_depth(False), need_intrinsics=self.method == "weights_free")
        return self._prompts(frame, {}, None)

    def packed_regions(self) -> np.ndarray | None:
        """The weights-free regions and table plane of the last ``prompts()`` frame as one uint16
        map (geometric._Segments.packed), or None when the prompt source has none. Split mode sends it with the
        prompts, so the segmenter of the other process does not compute the regions again."""
        packed = getattr(self.prompt_source, "packed_regions", None)
        return packed() if packed is not None else None

    @property
    def takes_regions(self) -> bool:
        """``run`` can use the prompt source's packed regions (the weights-free segmenter)."""
        return self.method == "weights_free" and type(self.segmenter).__name__ == "GeometricSegmenter"

    def run(self, frame: Frame, prompts: Prompts | None = None, regions: np.ndarray | None = None) -> Instances:
        """Instances of one frame; with prompts given, they replace the prompt source's (split mode),
        and the same selection, NMS and filters follow. regions: the ``packed_regions()`` of the
        pipeline that made those prompts for this frame (weights-free only; others ignore it)."""
        if self.segmenter is None:
            raise ConfigError("this pipeline was built without a segmenter (part='prompts'): use prompts()")
        if prompts is None and self.prompt_source is None:
            raise ConfigError("this pipeline has no prompt source (part='masks'): pass the frame's prompts")
        frame.validate(need_depth=self._needs_depth(prompts is not None),
                       need_intrinsics=self.method == "weights_free")
        if self.method == "weights_free":
            return self._run_weights_free(frame, prompts, regions if self.takes_regions else None)
        if self.method in ("grid", "grid_fg") and self.config.pipeline.grid_exact:
            return self._run_grid_exact(frame, prompts)
        return self._run_sam(frame, prompts)

    def _empty(self, frame: Frame, timings: dict[str, float], t0: float) -> Instances:
        out = Instances.empty(frame.height, frame.width, stamp=frame.stamp)
        timings.setdefault("embedding", 0.0)
        timings.setdefault("decode", 0.0)
        timings.setdefault("postprocess", 0.0)
        return self._finish(out, timings, t0)

    def _embed(self, frame: Frame, timings: dict[str, float], regions: np.ndarray | None = None) -> None:
        """The segmenter's per-frame step (SAM's image embedding, the weights-free regions), once per
        frame: skipped when the prompt step already needed it."""
        if "embedding" in timings:
            return
        t = time.perf_counter()
        if regions is not None:
            self.segmenter.set_frame(frame, regions)
        else:
            self.segmenter.set_frame(frame)
        timings["embedding"] = time.perf_counter() - t

    def _prompts(self, frame: Frame, timings: dict[str, float], given: Prompts | None) -> Prompts:
        if given is None and self.hpg is not None and self.hpg.needs_sam_embedding:
            self._embed(frame, timings)  # HPG on SAM features: the embedding comes first
            self.hpg.sam_embedding = crop_sam_embedding(self.segmenter.embedding, (frame.height, frame.width),
                                                        self.segmenter.encoder_size)
        t = time.perf_counter()
        prompts = self.prompt_source.prompts(frame) if given is None else given
        timings["prompts"] = time.perf_counter() - t
        self.last_prompts = prompts
        return prompts

    @staticmethod
    def _finish(out: Instances, timings: dict[str, float], t0: float) -> Instances:
        timings["total"] = time.perf_counter() - t0
        out.timings = timings
        return out

    def _run_sam(self, frame: Frame, given: Prompts | None = None) -> Instances:
        cfg = self.config
        H, W = frame.height, frame.width
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        prompts = self._prompts(frame, timings, given)
        if len(prompts) == 0:
            return self._empty(frame, timings, t0)
        self._embed(frame, timings)

        t = time.perf_counter()
        low = self.segmenter.decode_lowres(prompts)
        valid = self.segmenter.valid_lowres_hw()
        logits = lowres_to_hw(low.logits, valid)
        with torch.inference_mode():
            if self.hdnet is not None:
                scores = self.hdnet.adapted_iou(low.iou_pred, low.t_iou, low.t_mask)
                cand = slice(0, scores.shape[1])
                threshold = cfg.hdnet.iou_threshold
            else:
                scores = low.iou_pred.clone()
                cand = slice(1, scores.shape[1]) if cfg.sam.multimask_output else slice(0, 1)
                threshold = cfg.hdnet.sam_iou_threshold
                if cfg.hdnet.stability_threshold > 0:
                    stab = calculate_stability_score(logits, self.segmenter.model.mask_threshold, 1.0)
                    scores = torch.where(stab >= cfg.hdnet.stability_threshold, scores,
                                         torch.full_like(scores, -np.inf))
        timings["decode"] = time.perf_counter() - t

        # Selection, NMS and both size filters run where the decoder's outputs are. Nothing is read
        # on the host until the kept set is known (its size says how many masks to upsample); the
        # results then come over once.
        t = time.perf_counter()
        with torch.inference_mode():
            dev = logits.device
            sc = scores.float()[:, cand]
            idx, best, keep = select_best_t(sc, threshold)
            tok = idx + cand.start
            # on the CPU reading a value costs nothing: drop the rejected prompts before the pairwise
            # IoU; on a device they stay, masked by keep, so that nothing waits
            rows = torch.nonzero(keep)[:, 0] if is_host_device(dev) else torch.arange(len(keep), device=dev)
            lowmask = logits[rows, tok[rows]] > self.segmenter.model.mask_threshold
            scale = (H / valid[0], W / valid[1])
            order, ok = filter_masks_t(lowmask, best[rows], cfg.postprocess, H, W, pixel_scale=scale,
                                       valid=keep[rows])
            kept = rows[kept_in_order(order, ok)]
            if len(kept) == 0:
                timings["postprocess"] = time.perf_counter() - t
                return self._empty(frame, timings, t0)
            tok = tok[kept]
            full = self.segmenter.upsample(low.logits[kept, tok])
            fits = size_filter_t(full, cfg.postprocess, H, W)
            ints = torch.stack([kept, tok, fits.long()]).cpu().numpy()
            vals = torch.stack([sc[kept, tok - cand.start], low.iou_pred.float()[kept, tok]]).cpu().numpy()
            full = full.cpu().numpy()
        fits = ints[2].astype(bool)
        masks, kept, final_scores, sam_iou = full[fits], ints[0][fits], vals[0][fits], vals[1][fits]
        srt = np.argsort(-final_scores, kind="stable")
        out = Instances(masks[srt], final_scores[srt], sam_iou=sam_iou[srt],
                        prompts=prompts.points[kept][srt], stamp=frame.stamp)
        timings["postprocess"] = time.perf_counter() - t
        return self._finish(out, timings, t0)

    def _run_grid_exact(self, frame: Frame, given: Prompts | None = None) -> Instances:
        """Table IV rows 1-2: SamAutomaticMaskGenerator's masks on the (foreground) grid, then the
        common NMS and size filter."""
        cfg = self.config
        H, W = frame.height, frame.width
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        prompts = self._prompts(frame, timings, given)
        if len(prompts) == 0:
            return self._empty(frame, timings, t0)
        points = amg_points(cfg.pipeline.grid_points, H, W)
        if len(points) != len(prompts) or not np.array_equal(points.astype(np.float32), prompts.points):
            points = prompts.points.astype(np.float64)  # prompts from elsewhere (split mode): as given
        self._embed(frame, timings)
        t = time.perf_counter()
        amg = self.segmenter.generate_amg(
            points, pred_iou_thresh=cfg.hdnet.sam_iou_threshold, stability_score_thresh=cfg.hdnet.stability_threshold,
            stability_score_offset=1.0, box_nms_thresh=cfg.pipeline.grid_box_nms,
            points_per_batch=cfg.pipeline.decode_batch, multimask_output=cfg.sam.multimask_output)
        timings["decode"] = time.perf_counter() - t
        t = time.perf_counter()
        order = filter_masks(amg.masks, amg.iou_pred, cfg.postprocess, H, W)
        out = Instances(amg.masks[order], amg.iou_pred[order], sam_iou=amg.iou_pred[order],
                        prompts=amg.points[order], stamp=frame.stamp)
        timings["postprocess"] = time.perf_counter() - t
        return self._finish(out, timings, t0)

    def _run_weights_free(self, frame: Frame, given: Prompts | None = None,
                          regions: np.ndarray | None = None) -> Instances:
        cfg = self.config
        H, W = frame.height, frame.width
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        prompts = self._prompts(frame, timings, given)
        if len(prompts) == 0:
            return self._empty(frame, timings, t0)
        self._embed(frame, timings, regions)
        t = time.perf_counter()
        dec = self.segmenter.decode(prompts)
        timings["decode"] = time.perf_counter() - t
        t = time.perf_counter()
        idx, best, keep = select_best(dec.scores, cfg.pipeline.weights_free_min_score)
        kept = np.flatnonzero(keep)
        masks = np.asarray(dec.masks)[kept, idx[kept]] if len(kept) else np.zeros((0, H, W), bool)
        post = cfg.postprocess
        if not cfg.geometric.box_limit:
            # regions stand on the fitted table by construction; the box limit would drop the objects
            # nearest the camera (a 22 cm canister at 0.6 m is 225 px tall), not background
            import dataclasses

            post = dataclasses.replace(post, max_box_height=10**9, max_box_width=10**9)
        order = filter_masks(masks, best[kept], post, H, W)
        kept, masks = kept[order], masks[order]
        # sam_iou stays NaN (Instance.msg): the geometric segmenter has no SAM IoU, only its own score
        out = Instances(masks, best[kept], sam_iou=None, prompts=prompts.points[kept], stamp=frame.stamp)
        timings["postprocess"] = time.perf_counter() - t
        return self._finish(out, timings, t0)
