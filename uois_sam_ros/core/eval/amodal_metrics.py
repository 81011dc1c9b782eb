"""Amodal metrics (DESIGN.md section 5): mIoU_full / mIoU_occ (Amodal SAM, appendix A.1.1) and
class-agnostic mask AP / AP50 / AP75 / AR (SAMEO, COCO style, through pycocotools).

Per instance, with V the GT visible mask:
- IoU_full = IoU(pred, gt), both amodal masks;
- IoU_occ = IoU(pred - V, gt - V), eq. 11.

mIoU_full is the mean of IoU_full over all GT instances. mIoU_occ is the mean of IoU_occ over
the GT instances that are occluded (gt - V not empty): for an unoccluded instance the occluded
region is empty, the IoU is undefined (0/0) and the instance is left out. A prediction that is
only the visible part therefore scores mIoU_occ = 0, as the papers note (fig. 7), and its
mIoU_full can still be high. Both are reported x100 like the other tables.

With predicted visible masks (``--visible predicted``), predictions are first matched one to one
to GT instances by visible-mask IoU (Hungarian, a match needs IoU >= 0.5). A GT instance with no
match counts 0 in both means (a missed object has no completion); unmatched predictions are
false positives, which only AP sees.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import linear_sum_assignment

MATCH_IOU = 0.5


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = int(np.logical_or(a, b).sum())
    return float(np.logical_and(a, b).sum()) / union if union else math.nan


def amodal_ious(pred: np.ndarray, gt: np.ndarray, visible: np.ndarray) -> tuple[float, float]:
    """(IoU_full, IoU_occ) of one instance's (H, W) masks; IoU_occ is NaN when the instance is not
    occluded (gt - visible empty), IoU_full NaN only when both amodal masks are empty."""
    pred, gt, visible = (np.asarray(m, bool) for m in (pred, gt, visible))
    if not pred.shape == gt.shape == visible.shape:
        raise ValueError(f"mask shapes differ: pred {pred.shape}, gt {gt.shape}, visible {visible.shape}")
    full = _iou(pred, gt)
    gt_occ = gt & ~visible
    if not gt_occ.any():
        return full, math.nan
    return full, _iou(pred & ~visible, gt_occ)


def match_by_visible(pred_visible: np.ndarray, gt_visible: np.ndarray, min_iou: float = MATCH_IOU
                     ) -> list[tuple[int, int]]:
    """One-to-one (gt index, pred index) pairs maximising the summed visible IoU, each >= min_iou."""
    g, p = len(gt_visible), len(pred_visible)
    if g == 0 or p == 0:
        return []
    gf = gt_visible.reshape(g, -1).astype(np.float32)
    pf = pred_visible.reshape(p, -1).astype(np.float32)
    inter = gf @ pf.T
    union = gf.sum(1)[:, None] + pf.sum(1)[None, :] - inter
    iou = np.where(union > 0, inter / np.maximum(union, 1), 0.0)
    rows, cols = linear_sum_assignment(iou, maximize=True)
    return [(int(r), int(c)) for r, c in zip(rows, cols, strict=True) if iou[r, c] >= min_iou]


@dataclass
class AmodalAccumulator:
    """Per-instance IoUs over a dataset, and COCO-style detections for AP when pycocotools is there."""

    full: list[float] = field(default_factory=list)
    occ: list[float] = field(default_factory=list)
    full_occluded: list[float] = field(default_factory=list)
    rows: list[dict] = field(default_factory=list)
    _coco_gt: list[dict] = field(default_factory=list)
    _coco_dt: list[dict] = field(default_factory=list)
    _images: list[dict] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.full)

    def add(self, name: str, gt_amodal: np.ndarray, gt_visible: np.ndarray, pred_amodal: np.ndarray,
            pred_scores: np.ndarray | None = None, pairs: list[tuple[int, int]] | None = None) -> dict[str, float]:
        """One image. gt_*: (G, H, W); pred_amodal: (P, H, W) with scores (P,) (default 1).
        pairs: (gt, pred) matches; None = prediction k completes GT instance k (``--visible gt``)."""
        gt_amodal, gt_visible = np.asarray(gt_amodal, bool), np.asarray(gt_visible, bool)
        pred_amodal = np.asarray(pred_amodal, bool)
        if gt_amodal.shape != gt_visible.shape:
            raise ValueError(f"gt amodal {gt_amodal.shape} and visible {gt_visible.shape} differ")
        if len(pred_amodal) and pred_amodal.shape[1:] != gt_amodal.shape[1:]:
            raise ValueError(f"predictions are {pred_amodal.shape[1:]}, ground truth {gt_amodal.shape[1:]}")
        if pairs is None:
            if len(pred_amodal) != len(gt_amodal):
                raise ValueError(f"{len(pred_amodal)} completions for {len(gt_amodal)} GT instances")
            pairs = [(k, k) for k in range(len(gt_amodal))]
        match = dict(pairs)
        f_img, o_img = [], []
        for g in range(len(gt_amodal)):
            occluded = bool((gt_amodal[g] & ~gt_visible[g]).any())
            if g in match:
                full, occ = amodal_ious(pred_amodal[match[g]], gt_amodal[g], gt_visible[g])
            else:
                full, occ = 0.0, (0.0 if occluded else math.nan)
            if math.isnan(full):
                continue  # an empty GT instance with an empty completion: nothing to score
            self.full.append(full)
            f_img.append(full)
            if occluded:
                self.occ.append(occ)
                self.full_occluded.append(full)
                o_img.append(occ)
        row = {"image": name, "instances": len(f_img), "occluded": len(o_img),
               "IoU_full": float(np.mean(f_img)) if f_img else math.nan,
               "IoU_occ": float(np.mean(o_img)) if o_img else math.nan}
        self.rows.append(row)
        self._add_coco(gt_amodal, pred_amodal, pred_scores)
        return row

    def _add_coco(self, gt: np.ndarray, pred: np.ndarray, scores: np.ndarray | None) -> None:
        try:
            from pycocotools import mask as mask_utils
        except ImportError:
            return
        img_id = len(self._images) + 1
        h, w = gt.shape[1:]
        self._images.append({"id": img_id, "width": int(w), "height": int(h)})
        for m in gt:
            if not m.any():
                continue
            rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
            self._coco_gt.append({"id": len(self._coco_gt) + 1, "image_id": img_id, "category_id": 1, "iscrowd": 0,
                                  "segmentation": rle, "area": float(mask_utils.area(rle)),
                                  "bbox": [float(v) for v in mask_utils.toBbox(rle)]})
        s = np.ones(len(pred), np.float32) if scores is None else np.asarray(scores, np.float32).reshape(len(pred))
        for m, sc in zip(pred, s, strict=True):
            if not m.any():
                continue
            rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
            self._coco_dt.append({"image_id": img_id, "category_id": 1, "segmentation": rle, "score": float(sc)})

    def coco_ap(self) -> dict[str, float] | None:
        """Class-agnostic mask AP, AP50, AP75 and AR (maxDets 100), x100; None without pycocotools."""
        try:
            import contextlib
            import io

            from pycocotools.coco import COCO
            from pycocotools.cocoeval import COCOeval
        except ImportError:
            return None
        if not self._coco_gt:
            return {"AP": math.nan, "AP50": math.nan, "AP75": math.nan, "AR": math.nan}
        if not self._coco_dt:
            return {"AP": 0.0, "AP50": 0.0, "AP75": 0.0, "AR": 0.0}
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its own tables
            gt = COCO()
            gt.dataset = {"images": self._images, "annotations": self._coco_gt,
                          "categories": [{"id": 1, "name": "object"}]}
            gt.createIndex()
            dt = gt.loadRes(self._coco_dt)
            ev = COCOeval(gt, dt, iouType="segm")
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
        st = ev.stats
        return {"AP": 100 * float(st[0]), "AP50": 100 * float(st[1]), "AP75": 100 * float(st[2]),
                "AR": 100 * float(st[8])}

    def means(self, with_ap: bool = True) -> dict[str, float]:
        """mIoU_full, mIoU_occ, mIoU_full over occluded instances (x100), counts, and AP figures."""
        def mean(v: list[float]) -> float:
            return 100.0 * float(np.mean(v)) if v else math.nan

        out = {"mIoU_full": mean(self.full), "mIoU_occ": mean(self.occ),
               "mIoU_full_occluded": mean(self.full_occluded), "instances": len(self.full),
               "occluded_instances": len(self.occ), "images": len(self.rows)}
        if with_ap:
            ap = self.coco_ap()
            if ap is not None:
                out.update(ap)
        return out


def format_amodal_table(results: dict[str, dict[str, float]], title: str = "") -> str:
    """One row per method: mIoU_full, mIoU_occ, AP, AP50, AP75, AR, ms per instance."""
    cols = ("mIoU_full", "mIoU_occ", "AP", "AP50", "AP75", "AR", "ms_per_instance")
    width = max([len("method")] + [len(m) for m in results])
    lines = [title] if title else []
    lines.append(f"{'method':<{width}}  " + "  ".join(f"{c:>9}" for c in cols))
    for m, r in results.items():
        vals = []
        for c in cols:
            v = r.get(c, math.nan)
            vals.append(f"{v:9.2f}" if isinstance(v, float | int) and not math.isnan(float(v)) else f"{'-':>9}")
        lines.append(f"{m:<{width}}  " + "  ".join(vals))
    return "\n".join(lines)
