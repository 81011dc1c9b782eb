"""UOISPipeline: one frame in, instance masks out; one config value picks the method.

Methods (pipeline.method):
- uois_sam / heatmap_hdnet: HPG peaks -> SAM -> HDNet adapted IoU (Table IV row 4, the paper).
- heatmap: HPG peaks -> SAM, selected by SAM's own IoU (row 3).
- grid_fg: the 32x32 grid restricted to HPG's foreground -> SAM IoU (row 2).
- grid: the 32x32 grid -> SAM IoU, the automatic-generator baseline (row 1).
- weights_free: geometric (or HPG) prompts -> the geometric region-growing segmenter.
- auto: with sam.checkpoint set, uois_sam when hdnet.checkpoint is set too, else heatmap;
  without a SAM checkpoint, weights_free.

Methods without HDNet score like SamAutomaticMaskGenerator: SAM's 3 multimask candidates,
a candidate must reach the stability threshold, and the prompt's best is kept above
sam_iou_threshold (0.88). With HDNet all 4 tokens compete and the threshold is 0.48.
Every method then runs the same NMS and size filter. Selection and NMS run on SAM's low-res
logits; only the surviving masks are upsampled to the frame.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from segment_anything.utils.amg import calculate_stability_score

from uois_sam_ros.core.config import Config, ConfigError
from uois_sam_ros.core.hdnet import HDNet, load_hdnet
from uois_sam_ros.core.hpg import HPG, HPGNet, crop_sam_embedding, upsample_map
from uois_sam_ros.core.postprocess import filter_masks, select_best, size_filter
from uois_sam_ros.core.prompting import ForegroundGridPromptSource, GridPromptSource
from uois_sam_ros.core.sam_backend import SamSegmenter, lowres_to_hw
from uois_sam_ros.core.types import Frame, Instances, Prompts
from uois_sam_ros.core.weights import CheckpointError

SAM_METHODS = ("uois_sam", "heatmap_hdnet", "heatmap", "grid_fg", "grid")
METHODS = ("auto", *SAM_METHODS, "weights_free")
HPG_METHODS = ("uois_sam", "heatmap_hdnet", "heatmap", "grid_fg")


def resolve_method(config: Config) -> str:
    m = config.pipeline.method
    if m not in METHODS:
        raise ConfigError(f"pipeline.method {m!r} is not one of {list(METHODS)}")
    if m == "auto":
        if config.sam.checkpoint:
            return "uois_sam" if (config.hdnet.checkpoint and config.hdnet.enabled) else "heatmap"
        return "weights_free"
    return m


class UOISPipeline:
    """Assembles prompt source + segmenter (+ HDNet) for the configured method.

    Pre-built models may be passed (tests, training loops); otherwise they load from the config.
    After run(): last_prompts holds the prompts, hpg_maps the HPG (fg_prob, heatmap) at HPG
    resolution when HPG ran.
    """

    def __init__(self, config: Config, *, sam_model: torch.nn.Module | None = None,
                 hpg_model: HPGNet | None = None, hdnet_model: HDNet | None = None) -> None:
        self.config = config
        self.method = resolve_method(config)
        self.hpg: HPG | None = None
        self.hdnet: HDNet | None = None
        self.last_prompts = Prompts.empty()
        torch.manual_seed(config.pipeline.seed)
        pc = config.pipeline
        if self.method == "weights_free":
            from uois_sam_ros.core import geometric  # lazy: needs open3d

            if pc.weights_free_prompts == "hpg":
                self.hpg = HPG(config.hpg, hpg_model)
                self.prompt_source = self.hpg
                self.segmenter = geometric.GeometricSegmenter(config.geometric)
            elif pc.weights_free_prompts == "geometric":
                self.prompt_source = geometric.GeometricPromptSource(config.geometric)
                # the segmenter reuses the plane fit and regions the prompt source made for the frame
                self.segmenter = geometric.GeometricSegmenter(config.geometric, source=self.prompt_source)
            else:
                raise ConfigError(f"pipeline.weights_free_prompts must be 'geometric' or 'hpg', "
                                  f"got {pc.weights_free_prompts!r}")
            return
        self.segmenter = SamSegmenter(config.sam, sam_model, decode_batch=pc.decode_batch)
        if self.method in HPG_METHODS:
            self.hpg = HPG(config.hpg, hpg_model)
        if self.method == "grid":
            self.prompt_source = GridPromptSource(pc.grid_points)
        elif self.method == "grid_fg":
            self.prompt_source = ForegroundGridPromptSource(self.hpg, pc.grid_points)
        else:
            self.prompt_source = self.hpg
        if self.method in ("uois_sam", "heatmap_hdnet") and config.hdnet.enabled:
            if hdnet_model is not None:
                self.hdnet = hdnet_model
            elif config.hdnet.checkpoint:
                self.hdnet = load_hdnet(config.hdnet.checkpoint, config.sam.device)
            elif config.sam.allow_random_weights:
                self.hdnet = HDNet()  # random, for tests/benchmarks only (like the random SAM)
            else:
                raise CheckpointError(
                    f"pipeline.method={self.method} needs HDNet weights: set hdnet.checkpoint, or use "
                    "pipeline.method=heatmap (HPG + SAM's own IoU)")
            self.hdnet = self.hdnet.to(config.sam.device).eval()

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

    def run(self, frame: Frame) -> Instances:
        need_depth = self.method == "weights_free" or (self.hpg is not None and self.hpg.model.uses_depth)
        frame.validate(need_depth=need_depth, need_intrinsics=self.method == "weights_free")
        if self.method == "weights_free":
            return self._run_weights_free(frame)
        return self._run_sam(frame)

    def _empty(self, frame: Frame, timings: dict[str, float], t0: float) -> Instances:
        out = Instances.empty(frame.height, frame.width, stamp=frame.stamp)
        timings.setdefault("embedding", 0.0)
        timings.setdefault("decode", 0.0)
        timings.setdefault("postprocess", 0.0)
        return self._finish(out, timings, t0)

    def _prompts(self, frame: Frame, timings: dict[str, float]) -> Prompts:
        t = time.perf_counter()
        prompts = self.prompt_source.prompts(frame)
        timings["prompts"] = time.perf_counter() - t
        self.last_prompts = prompts
        return prompts

    @staticmethod
    def _finish(out: Instances, timings: dict[str, float], t0: float) -> Instances:
        timings["total"] = time.perf_counter() - t0
        out.timings = timings
        return out

    def _run_sam(self, frame: Frame) -> Instances:
        cfg = self.config
        H, W = frame.height, frame.width
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        embedded = False
        if self.hpg is not None and self.hpg.needs_sam_embedding:
            t = time.perf_counter()
            self.segmenter.set_frame(frame)
            timings["embedding"] = time.perf_counter() - t
            self.hpg.sam_embedding = crop_sam_embedding(self.segmenter.embedding, (H, W),
                                                        self.segmenter.encoder_size)
            embedded = True
        prompts = self._prompts(frame, timings)
        if len(prompts) == 0:
            return self._empty(frame, timings, t0)
        if not embedded:
            t = time.perf_counter()
            self.segmenter.set_frame(frame)
            timings["embedding"] = time.perf_counter() - t

        t = time.perf_counter()
        low = self.segmenter.decode_lowres(prompts)
        valid = self.segmenter.valid_lowres_hw()
        logits = lowres_to_hw(low.logits, valid)
        with torch.inference_mode():
            if self.hdnet is not None:
                scores = self.hdnet.adapted_iou(low.iou_pred, low.t_iou, low.t_mask)
                cand = np.arange(scores.shape[1])
                threshold = cfg.hdnet.iou_threshold
            else:
                scores = low.iou_pred.clone()
                cand = np.arange(1, scores.shape[1]) if cfg.sam.multimask_output else np.array([0])
                threshold = cfg.hdnet.sam_iou_threshold
                if cfg.hdnet.stability_threshold > 0:
                    stab = calculate_stability_score(logits, self.segmenter.model.mask_threshold, 1.0)
                    scores = torch.where(stab >= cfg.hdnet.stability_threshold, scores,
                                         torch.full_like(scores, -np.inf))
        timings["decode"] = time.perf_counter() - t

        t = time.perf_counter()
        sc = scores.float().cpu().numpy()[:, cand]
        idx, best, keep = select_best(sc, threshold)
        kept = np.flatnonzero(keep)
        if len(kept) == 0:
            timings["postprocess"] = time.perf_counter() - t
            return self._empty(frame, timings, t0)
        tok = cand[idx[kept]]
        sel_logits = logits[torch.as_tensor(kept), torch.as_tensor(tok)]
        lowmask = sel_logits > self.segmenter.model.mask_threshold
        scale = (H / valid[0], W / valid[1])
        order = filter_masks(lowmask, best[kept], cfg.postprocess, H, W, pixel_scale=scale)
        kept = kept[order]
        tok = tok[order]
        masks = np.zeros((0, H, W), bool)
        if len(kept):
            full = self.segmenter.upsample(low.logits[torch.as_tensor(kept), torch.as_tensor(tok)]).cpu().numpy()
            ok = size_filter(full, cfg.postprocess, H, W)
            masks, kept, tok = full[ok], kept[ok], tok[ok]
        final_scores = sc[kept, np.searchsorted(cand, tok)] if len(kept) else np.zeros(0, np.float32)
        sam_iou = low.iou_pred.float().cpu().numpy()[kept, tok] if len(kept) else np.zeros(0, np.float32)
        srt = np.argsort(-final_scores, kind="stable")
        out = Instances(masks[srt], final_scores[srt], sam_iou=sam_iou[srt],
                        prompts=prompts.points[kept][srt], stamp=frame.stamp)
        timings["postprocess"] = time.perf_counter() - t
        return self._finish(out, timings, t0)

    def _run_weights_free(self, frame: Frame) -> Instances:
        cfg = self.config
        H, W = frame.height, frame.width
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        prompts = self._prompts(frame, timings)
        if len(prompts) == 0:
            return self._empty(frame, timings, t0)
        t = time.perf_counter()
        self.segmenter.set_frame(frame)
        timings["embedding"] = time.perf_counter() - t
        t = time.perf_counter()
        dec = self.segmenter.decode(prompts)
        timings["decode"] = time.perf_counter() - t
        t = time.perf_counter()
        idx, best, keep = select_best(dec.scores, cfg.pipeline.weights_free_min_score)
        kept = np.flatnonzero(keep)
        masks = np.asarray(dec.masks)[kept, idx[kept]] if len(kept) else np.zeros((0, H, W), bool)
        order = filter_masks(masks, best[kept], cfg.postprocess, H, W)
        kept, masks = kept[order], masks[order]
        iou = np.asarray(dec.iou_pred, np.float32)
        out = Instances(masks, best[kept], sam_iou=iou[kept, idx[kept]] if len(kept) else None,
                        prompts=prompts.points[kept], stamp=frame.stamp)
        timings["postprocess"] = time.perf_counter() - t
        return self._finish(out, timings, t0)
