"""The amodal stage of the graph: visible instances in, amodal masks, occlusion rates and the
occlusion order out. One class for the node, the eval CLI and the bag tools, whatever the method:

- completer   the shipped weights-free completer (completer.py), the default;
- sameo       the SAM set in ``sam.*`` with a SAMEO-fine-tuned mask decoder, prompted by each
              visible box; confidence = the instance's score x the predicted IoU;
- amodal_sam  the same SAM with Spatial Completion Adapters (sca.py) and its own decoder,
              prompted by the visible box expanded by ``box_expand``, with that box as prior;
- convex_hull, visible   the two trivial baselines.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from uois_sam_ros.core.amodal.occlusion import OcclusionParams, occlusion_order
from uois_sam_ros.core.config import AmodalConfig, ConfigError, SamConfig, resolve_device
from uois_sam_ros.core.types import Frame, Instances

AMODAL_METHODS = ("auto", "completer", "sameo", "amodal_sam", "convex_hull", "visible")


@dataclass
class AmodalResult:
    """amodal: (N, H, W) bool (each contains its visible mask); occlusion_rates: (N,) 1 - |V|/|A|
    (NaN for an empty mask); order: (N, N) bool, [i, j] = i occludes j; confidence: (N,)."""

    amodal: np.ndarray
    occlusion_rates: np.ndarray
    order: np.ndarray
    confidence: np.ndarray
    timings: dict[str, float] = field(default_factory=dict)

    def attach(self, inst: Instances) -> Instances:
        """The instances with amodal_masks and occlusion_rates filled (a new object, same order)."""
        return Instances(masks=inst.masks, scores=inst.scores, sam_iou=inst.sam_iou, prompts=inst.prompts,
                         amodal_masks=self.amodal, occlusion_rates=self.occlusion_rates, stamp=inst.stamp,
                         timings={**inst.timings, **self.timings})


def resolve_amodal_method(cfg: AmodalConfig) -> str:
    m = cfg.method
    if m not in AMODAL_METHODS:
        raise ConfigError(f"amodal.method {m!r} is not one of {', '.join(AMODAL_METHODS)}")
    if m == "auto":
        return "sameo" if cfg.decoder_checkpoint else "amodal_sam" if cfg.sca_checkpoint else "completer"
    return m


def occlusion_rates(visible: np.ndarray, amodal: np.ndarray) -> np.ndarray:
    n = len(visible)
    v = visible.reshape(n, -1).sum(1).astype(np.float64)
    a = amodal.reshape(n, -1).sum(1).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(a > 0, 1.0 - v / np.maximum(a, 1), np.nan).astype(np.float32)


class AmodalStage:
    """Loads the method's models once (configure); ``run`` completes one frame's instances."""

    def __init__(self, cfg: AmodalConfig, sam_cfg: SamConfig | None = None) -> None:
        self.cfg = cfg
        self.method = resolve_amodal_method(cfg)
        self.device = resolve_device(cfg.device)
        self.note = ""
        self.completer = self.sam = self.sca = None
        if self.method == "completer":
            from uois_sam_ros.core.amodal.completer import load_completer

            self.completer = load_completer(cfg.checkpoint, device=self.device, threshold=cfg.threshold,
                                            restrict=cfg.restrict_to_occluders)
        elif self.method in ("sameo", "amodal_sam"):
            self._load_sam(sam_cfg or SamConfig())

    def _load_sam(self, sam_cfg: SamConfig) -> None:
        from uois_sam_ros.core.amodal.sameo import load_decoder
        from uois_sam_ros.core.segment.sam_backend import default_sam_checkpoint, load_sam

        need = "decoder_checkpoint" if self.method == "sameo" else "sca_checkpoint"
        if not getattr(self.cfg, need):
            what = ("the fine-tuned mask decoder written by uois-sam-train-amodal --model sameo" if self.method == "sameo"
                    else "the adapters written by uois-sam-train-amodal --model sca")
            raise ConfigError(f"amodal.method {self.method} needs amodal.{need} ({what})")
        ckpt = sam_cfg.checkpoint
        mtype = sam_cfg.model_type
        if ckpt is None and default_sam_checkpoint("vit_synth") is not None and not sam_cfg.allow_random_weights:
            mtype, ckpt = "vit_synth", str(default_sam_checkpoint("vit_synth"))
            self.note = f"amodal {self.method}: no sam.checkpoint, using the shipped small SAM {ckpt}"
        self.sam = load_sam(mtype, ckpt, allow_random=sam_cfg.allow_random_weights, device=self.device,
                            image_size=sam_cfg.image_size)
        if self.method == "sameo":
            load_decoder(self.cfg.decoder_checkpoint, self.sam)
        else:
            from uois_sam_ros.core.amodal.sca import load_sca

            self.sca = load_sca(self.cfg.sca_checkpoint, self.sam.image_encoder).to(self.device).eval()
        self.sam.eval()

    def order(self, frame: Frame, masks: np.ndarray) -> np.ndarray:
        return occlusion_order(masks, frame.depth, OcclusionParams(band_px=self.cfg.occlusion_band,
                                                                   margin=self.cfg.occlusion_margin))

    def run(self, frame: Frame, inst: Instances) -> AmodalResult:
        """Complete every instance of the frame (masks at the frame's size)."""
        masks = np.asarray(inst.masks, bool)
        if masks.shape[1:] != (frame.height, frame.width):
            raise ValueError(f"instance masks are {masks.shape[2]}x{masks.shape[1]}, the frame is "
                             f"{frame.width}x{frame.height}")
        t0 = time.perf_counter()
        n = len(masks)
        if n == 0:
            e = np.zeros(0, np.float32)
            return AmodalResult(masks.copy(), e, np.zeros((0, 0), bool), e, {"amodal": 0.0})
        order = self.order(frame, masks)
        t1 = time.perf_counter()
        scores = np.asarray(inst.scores, np.float32)
        if self.method == "completer":
            amodal, conf = self.completer.complete(frame.rgb, frame.depth, masks, order)
            conf = scores * conf
        elif self.method == "convex_hull":
            from uois_sam_ros.core.amodal.completer import convex_hull_completion

            amodal, conf = convex_hull_completion(masks), scores.copy()
        elif self.method == "visible":
            amodal, conf = masks.copy(), scores.copy()
        else:
            amodal, conf = self._run_sam(frame, masks, scores)
        t2 = time.perf_counter()
        return AmodalResult(amodal, occlusion_rates(masks, amodal), order, conf.astype(np.float32),
                            {"occlusion_order": t1 - t0, "amodal": t2 - t0})

    def _run_sam(self, frame: Frame, masks: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        import torch
        import torch.nn.functional as F

        from uois_sam_ros.core.amodal.sameo import decode_boxes, mask_boxes, prepare_image, refined_confidence
        from uois_sam_ros.core.amodal.sca import box_prior, expand_boxes

        model = self.sam
        size = int(model.image_encoder.img_size)
        image, (h, w) = prepare_image(model, frame.rgb, frame.depth)
        scale = size / max(frame.height, frame.width)  # ResizeLongestSide's factor
        boxes = torch.from_numpy(mask_boxes(masks) * scale).to(image.device)
        with torch.no_grad():
            if self.sca is None:  # SAMEO: one embedding, every box decoded in one call
                logits, iou = decode_boxes(model, model.image_encoder(image), boxes)
            else:  # Amodal SAM: the encoder runs once per instance, with its box prior
                boxes = expand_boxes(boxes, self.cfg.box_expand, w, h).to(image.device)
                outs = [decode_boxes(model, self.sca.encode(model.image_encoder, image,
                                                            box_prior(boxes[k:k + 1], size, image.device)),
                                     boxes[k:k + 1]) for k in range(len(masks))]
                logits, iou = torch.cat([o[0] for o in outs]), torch.cat([o[1] for o in outs])
            up = F.interpolate(logits, size=(size, size), mode="bilinear", align_corners=False)[..., :h, :w]
            up = F.interpolate(up, size=(frame.height, frame.width), mode="bilinear", align_corners=False)[:, 0]
        amodal = (up > model.mask_threshold).cpu().numpy() | masks
        return amodal, refined_confidence(scores, iou.float().cpu().numpy())

    def describe(self) -> dict[str, Any]:
        return {"method": self.method, "device": self.device, "note": self.note}


def overlay_amodal(rgb: np.ndarray, visible: np.ndarray, amodal: np.ndarray, order: np.ndarray | None = None
                   ) -> np.ndarray:
    """Visible masks tinted in each instance's colour (as instances/overlay), the completed hidden
    parts hatched in the same colour with the amodal outline, and an arrow from each occluder to
    the instance it hides."""
    import cv2

    from uois_sam_ros.core.eval.visualize import _palette, overlay_instances

    visible, amodal = np.asarray(visible, bool), np.asarray(amodal, bool)
    n = len(visible)
    label = np.zeros(rgb.shape[:2], np.uint16)
    for k in range(n - 1, -1, -1):
        label[visible[k]] = k + 1
    out = overlay_instances(rgb, label).copy()
    if n == 0:
        return out
    pal = _palette(n)
    h, w = rgb.shape[:2]
    yy, xx = np.mgrid[:h, :w]
    hatch = ((yy + xx) // 3) % 3 == 0
    for k in range(n):
        hidden = amodal[k] & ~visible[k]
        c = tuple(int(v) for v in pal[k + 1])
        out[hidden & hatch] = pal[k + 1]
        cnts, _ = cv2.findContours(amodal[k].astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(out, cnts, -1, c, 1)
    if order is not None and order.size:
        centres = []
        for k in range(n):
            ys, xs = np.nonzero(visible[k])
            centres.append((int(xs.mean()), int(ys.mean())) if len(xs) else None)
        for i, j in zip(*np.nonzero(order), strict=True):
            if centres[i] is not None and centres[j] is not None:
                cv2.arrowedLine(out, centres[i], centres[j], (255, 255, 255), 1, tipLength=0.15)
    return out


def gt_visible(sample: Any) -> tuple[np.ndarray, np.ndarray]:
    """(visible (K, H, W), amodal (K, H, W)) of a Sample's annotated instances that are visible at
    all (a fully hidden instance has nothing to complete from and is not evaluated)."""
    if sample.amodal is None or sample.amodal_ids is None or sample.label is None:
        raise ValueError(f"{sample.name} has no amodal annotations (a UOAIS-Sim json with 'segmentation' masks, "
                         "or OSD-Amodal's amodal_annotation/ folder)")
    h, w = sample.label.shape
    if len(sample.amodal_ids) == 0:
        e = np.zeros((0, h, w), bool)
        return e, e.copy()
    vis = np.stack([sample.label == i for i in sample.amodal_ids])
    am = np.asarray(sample.amodal, bool)
    if am.shape[1:] != (h, w):
        raise ValueError(f"{sample.name}: amodal masks are {am.shape[2]}x{am.shape[1]}, the label {w}x{h}")
    keep = vis.any(axis=(1, 2))
    return vis[keep], am[keep] | vis[keep]


def evaluate_amodal(samples: Any, stages: dict[str, AmodalStage], front_end: Any = None, progress: bool = False,
                    overlay_dir: Any = None) -> dict[str, dict[str, Any]]:
    """Every stage on the same frames, scored with core/eval/amodal_metrics.

    front_end None: each stage completes the GT visible masks (``--visible gt``, the papers'
    protocol, scores 1). Otherwise front_end.run(frame) gives the instances (``--visible
    predicted``), matched to the GT by visible IoU. Per method: the metric means, plus
    ms_per_instance (the whole amodal stage, occlusion order included)."""
    from tqdm import tqdm

    from uois_sam_ros.core.eval.amodal_metrics import AmodalAccumulator, match_by_visible
    from uois_sam_ros.core.eval.metrics import resize_nearest

    accs = {m: AmodalAccumulator() for m in stages}
    secs = dict.fromkeys(stages, 0.0)
    n_inst = 0
    for s in tqdm(samples, desc="amodal eval", unit="img", file=sys.stderr, disable=not progress):
        vis, am = gt_visible(s)
        frame = s.frame()
        if front_end is None:
            inst = Instances(masks=vis, scores=np.ones(len(vis), np.float32))
        else:
            inst = front_end.run(frame)
            if inst.shape != vis.shape[1:]:
                inst = Instances(masks=np.stack([resize_nearest(m.astype(np.uint8), *vis.shape[1:]) > 0
                                                 for m in inst.masks]) if len(inst) else
                                 np.zeros((0, *vis.shape[1:]), bool), scores=inst.scores)
        n_inst += len(inst)
        pairs = None if front_end is None else match_by_visible(inst.masks, vis)
        for k, (name, stage) in enumerate(stages.items()):
            t = time.perf_counter()
            res = stage.run(frame, inst)
            secs[name] += time.perf_counter() - t
            accs[name].add(s.name, am, vis, res.amodal, res.confidence, pairs)
            if overlay_dir is not None and k == 0:
                from uois_sam_ros.core.eval.visualize import save_png

                save_png(Path(overlay_dir) / f"{s.name}.png", overlay_amodal(s.rgb, inst.masks, res.amodal, res.order))
    return {m: {**a.means(), "ms_per_instance": 1000.0 * secs[m] / max(n_inst, 1)} for m, a in accs.items()}
