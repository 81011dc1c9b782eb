"""Per-prompt selection, mask NMS and the scaled size filter on hand-made masks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from uois_sam_ros.core.config import PostprocessConfig
from uois_sam_ros.core.segment.postprocess import (
    box_sizes,
    filter_masks,
    mask_iou,
    mask_nms,
    scale_box_limit,
    select_best,
    size_filter,
)


def _rect(h, w, y0, x0, y1, x1):
    m = np.zeros((h, w), bool)
    m[y0:y1, x0:x1] = True
    return m


def test_select_best_per_prompt_and_threshold():
    scores = np.array([[0.1, 0.6, 0.3, 0.2], [0.40, 0.47, 0.48, 0.1], [0.9, 0.2, 0.95, 0.5]], np.float32)
    idx, best, keep = select_best(scores, 0.48)
    assert idx.tolist() == [1, 2, 2]
    np.testing.assert_allclose(best, [0.6, 0.48, 0.95])
    assert keep.tolist() == [True, False, True]  # 0.48 is not above 0.48
    idx, best, keep = select_best(np.zeros((0, 4)), 0.48)
    assert len(idx) == len(best) == len(keep) == 0
    with pytest.raises(ValueError, match=r"\(K, M\)"):
        select_best(np.zeros(4), 0.5)


def test_mask_iou_values():
    a = _rect(10, 10, 0, 0, 4, 4)  # 16 px
    b = _rect(10, 10, 2, 2, 6, 6)  # overlap 4 -> IoU 4 / 28
    iou = mask_iou(np.stack([a, b]), np.stack([a, b, np.zeros_like(a)]))
    np.testing.assert_allclose(iou, [[1, 4 / 28, 0], [4 / 28, 1, 0]], rtol=1e-6)


def test_mask_nms_suppresses_above_threshold_only():
    a = _rect(20, 20, 0, 0, 10, 10)  # 100 px, score 0.9
    b = _rect(20, 20, 0, 0, 10, 5)  # inside a: IoU 0.5 -> suppressed at 0.3
    c = _rect(20, 20, 0, 7, 10, 17)  # overlap with a 30 px: IoU 30 / 170 = 0.176 -> kept
    d = _rect(20, 20, 15, 15, 20, 20)  # disjoint
    masks = np.stack([b, a, c, d])
    scores = np.array([0.5, 0.9, 0.8, 0.1])
    assert mask_nms(masks, scores, 0.3).tolist() == [1, 2, 3]
    assert mask_nms(masks, scores, 0.1).tolist() == [1, 3]  # 0.176 > 0.1: c goes too
    assert mask_nms(torch.as_tensor(masks), scores, 0.3).tolist() == [1, 2, 3]
    # the higher score wins regardless of order
    assert mask_nms(masks, np.array([0.95, 0.9, 0.8, 0.1]), 0.3).tolist() == [0, 2, 3]
    assert len(mask_nms(np.zeros((0, 5, 5), bool), np.zeros(0), 0.3)) == 0


def test_scale_box_limit_per_axis():
    cfg = PostprocessConfig()
    assert scale_box_limit(cfg, 480, 640) == (200, 200)
    assert scale_box_limit(cfg, 720, 1280) == (300, 400)
    assert scale_box_limit(cfg, 240, 320) == (100, 100)


def test_box_sizes():
    m = np.stack([_rect(30, 40, 3, 5, 13, 25), np.zeros((30, 40), bool)])
    assert box_sizes(m).tolist() == [[10, 20], [0, 0]]


def test_size_filter_drops_boxes_larger_than_200_at_480x640():
    cfg = PostprocessConfig()
    h, w = 480, 640
    fits = _rect(h, w, 0, 0, 200, 200)  # exactly 200 x 200: kept
    tall = _rect(h, w, 0, 0, 201, 50)  # 201 rows: dropped
    wide = _rect(h, w, 0, 0, 50, 201)
    tiny = _rect(h, w, 0, 0, 7, 7)  # 49 px < min_area 50
    small = _rect(h, w, 0, 0, 5, 10)  # 50 px
    keep = size_filter(np.stack([fits, tall, wide, tiny, small]), cfg, h, w)
    assert keep.tolist() == [True, False, False, False, True]
    # at 720 x 1280 the same 201-row mask fits (limit 300 x 400), min_area scales by 3
    H, W = 720, 1280
    m = np.stack([_rect(H, W, 0, 0, 201, 350), _rect(H, W, 0, 0, 301, 10), _rect(H, W, 0, 0, 10, 10)])
    assert size_filter(m, cfg, H, W).tolist() == [True, False, False]


def test_size_filter_with_low_res_masks():
    cfg = PostprocessConfig()
    low = np.stack([_rect(120, 160, 0, 0, 50, 50), _rect(120, 160, 0, 0, 51, 10)])  # x4 -> 200 / 204 rows
    assert size_filter(low, cfg, 480, 640, pixel_scale=(4.0, 4.0)).tolist() == [True, False]


def test_filter_order_nms_then_size_or_size_then_nms():
    h, w = 480, 640
    big = _rect(h, w, 0, 0, 300, 300)  # too big, best score
    obj = _rect(h, w, 0, 0, 190, 190)  # IoU with big 0.40 -> suppressed by big under NMS first
    masks = np.stack([big, obj])
    scores = np.array([0.9, 0.8])
    assert filter_masks(masks, scores, PostprocessConfig(), h, w).tolist() == []
    assert filter_masks(masks, scores, PostprocessConfig(filter_before_nms=True), h, w).tolist() == [1]
