"""Amodal metrics on hand-made cases: mIoU_full, mIoU_occ (Amodal SAM eq. 11), the matching of
predicted instances, and COCO mask AP through pycocotools."""

from __future__ import annotations

import math

import numpy as np
import pytest

from uois_sam_ros.core.eval.amodal_metrics import (
    AmodalAccumulator,
    amodal_ious,
    format_amodal_table,
    match_by_visible,
)


def _rect(y0, y1, x0, x1, h=20, w=20):
    m = np.zeros((h, w), bool)
    m[y0:y1, x0:x1] = True
    return m


# GT: a 10x10 object whose right 4 columns are hidden (60 px visible, 40 px occluded)
GT = _rect(5, 15, 5, 15)
VIS = _rect(5, 15, 5, 11)


def test_visible_only_prediction_scores_zero_occ():
    full, occ = amodal_ious(VIS, GT, VIS)
    assert full == pytest.approx(60 / 100)
    assert occ == 0.0  # the prediction has no occluded part at all


def test_perfect_and_partial_completions():
    assert amodal_ious(GT, GT, VIS) == (1.0, 1.0)
    half = _rect(5, 15, 5, 13)  # completes 2 of the 4 hidden columns
    full, occ = amodal_ious(half, GT, VIS)
    assert full == pytest.approx(80 / 100) and occ == pytest.approx(20 / 40)
    over = _rect(5, 15, 5, 17)  # 2 columns too many: 40 right + 20 wrong
    full, occ = amodal_ious(over, GT, VIS)
    assert full == pytest.approx(100 / 120) and occ == pytest.approx(40 / 60)
    # an unoccluded instance has no occluded region: IoU_occ is undefined (NaN), not 0 or 1
    full, occ = amodal_ious(GT, GT, GT)
    assert full == 1.0 and math.isnan(occ)
    with pytest.raises(ValueError, match="shapes differ"):
        amodal_ious(GT[:5], GT, VIS)


def test_accumulator_means_over_instances():
    """mIoU_full averages all instances, mIoU_occ only the occluded ones."""
    acc = AmodalAccumulator()
    other = _rect(0, 4, 0, 4)  # unoccluded second instance, predicted exactly
    gt = np.stack([GT, other])
    vis = np.stack([VIS, other])
    row = acc.add("a", gt, vis, np.stack([VIS, other]))  # the visible baseline
    assert row["IoU_full"] == pytest.approx((0.6 + 1.0) / 2) and row["IoU_occ"] == 0.0
    acc.add("b", gt[:1], vis[:1], gt[:1])  # a perfect completion of the occluded one
    m = acc.means()
    assert m["mIoU_full"] == pytest.approx(100 * (0.6 + 1.0 + 1.0) / 3)
    assert m["mIoU_occ"] == pytest.approx(100 * (0.0 + 1.0) / 2)
    assert m["mIoU_full_occluded"] == pytest.approx(100 * (0.6 + 1.0) / 2)
    assert (m["instances"], m["occluded_instances"], m["images"]) == (3, 2, 2)
    with pytest.raises(ValueError, match="completions for"):
        acc.add("c", gt, vis, gt[:1])


def test_visible_baseline_has_zero_occ_over_a_dataset():
    acc = AmodalAccumulator()
    rng = np.random.default_rng(0)
    for i in range(5):
        y0, x0 = rng.integers(0, 8, 2)
        g = _rect(y0, y0 + 10, x0, x0 + 10)
        v = g & ~_rect(0, 20, x0 + int(rng.integers(3, 8)), 20)
        acc.add(str(i), g[None], v[None], v[None])
    assert acc.means(with_ap=False)["mIoU_occ"] == 0.0
    assert acc.means(with_ap=False)["mIoU_full"] > 0.0


def test_predicted_visible_masks_are_matched_and_misses_count_zero():
    a, b = _rect(0, 8, 0, 8), _rect(10, 20, 10, 20)
    gt_vis = np.stack([a, b])
    pred_vis = np.stack([b, _rect(0, 3, 12, 20)])  # finds b, plus a false positive; misses a
    pairs = match_by_visible(pred_vis, gt_vis)
    assert pairs == [(1, 0)]
    acc = AmodalAccumulator()
    acc.add("x", gt_vis, gt_vis, pred_vis, pairs=pairs)
    m = acc.means(with_ap=False)
    assert m["instances"] == 2 and m["mIoU_full"] == pytest.approx(50.0)  # b perfect, a missed (0)
    assert match_by_visible(pred_vis[:0], gt_vis) == []


def test_coco_ap_class_agnostic():
    pytest.importorskip("pycocotools")
    acc = AmodalAccumulator()
    acc.add("p", GT[None], VIS[None], GT[None], np.array([0.9]))
    m = acc.means()
    assert m["AP"] == pytest.approx(100.0) and m["AP50"] == pytest.approx(100.0) and m["AR"] == pytest.approx(100.0)
    acc2 = AmodalAccumulator()
    acc2.add("v", GT[None], VIS[None], VIS[None], np.array([0.9]))  # IoU 0.6: a hit at 0.5, a miss at 0.75
    m2 = acc2.means()
    assert m2["AP50"] == pytest.approx(100.0) and m2["AP75"] == pytest.approx(0.0)
    assert 0.0 < m2["AP"] < 100.0
    text = format_amodal_table({"completer": {**m, "ms_per_instance": 3.0}, "visible": m2}, "t")
    assert text.splitlines()[0] == "t" and "completer" in text and "3.00" in text
