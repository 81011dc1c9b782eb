"""The simulated user (RITM / SimpleClick / FocSAM protocol) and NoC / FR on hand-made inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest

from uois_sam_ros.core.adapt.clicks import (
    PAPER_PROTOCOLS,
    Click,
    Protocol,
    error_distance,
    failed,
    mask_iou,
    next_click,
    noc,
    noc_fr,
)


def _box(shape, y0, y1, x0, x1) -> np.ndarray:
    m = np.zeros(shape, bool)
    m[y0:y1, x0:x1] = True
    return m


def test_first_click_is_the_first_deepest_fn_pixel_in_row_major_order():
    # FN = rows 2..6, cols 3..9: depth 3 is reached at row 4, cols 5, 6, 7; the first is col 5.
    gt = _box((10, 12), 2, 7, 3, 10)
    assert next_click(gt, np.zeros_like(gt)) == Click(5, 4, True)
    d = error_distance(gt)
    assert d.max() == pytest.approx(3.0)
    assert [tuple(p) for p in np.argwhere(d == d.max())] == [(4, 5), (4, 6), (4, 7)]


def test_clicked_pixels_are_excluded():
    gt = _box((10, 12), 2, 7, 3, 10)
    empty = np.zeros_like(gt)
    first = next_click(gt, empty)
    assert next_click(gt, empty, [first]) == Click(6, 4, True)
    assert next_click(gt, empty, [first, Click(6, 4, True)]) == Click(7, 4, True)


def test_negative_click_on_the_larger_false_positive_region():
    gt = _box((20, 20), 2, 5, 2, 5)  # FN: 3x3 (depth 2)
    pred = _box((20, 20), 8, 17, 8, 17)  # FP: 9x9 (depth 5), disjoint from gt
    c = next_click(gt, pred)
    assert c == Click(12, 12, False)


def test_a_tie_gives_a_negative_click():
    gt = _box((12, 12), 1, 4, 1, 4)  # FN 3x3, depth 2 at (2, 2)
    pred = _box((12, 12), 6, 9, 7, 10)  # FP 3x3, depth 2 at (7, 8)
    assert error_distance(gt).max() == error_distance(pred).max() == pytest.approx(2.0)
    assert next_click(gt, pred) == Click(8, 7, False)


def test_the_image_border_counts_as_boundary():
    # A 3-wide FN strip along the left border: with the one-pixel zero padding its distances
    # across are 1, 2, 1 (without padding the border column would read 3).
    gt = _box((10, 10), 0, 10, 0, 3)
    d = error_distance(gt)
    assert d[5, :4].tolist() == [1.0, 2.0, 1.0, 0.0]
    assert d[0, :3].tolist() == [1.0, 1.0, 1.0]  # the top border too
    # Against a 3x3 FP (depth 2) this is a tie -> negative; unpadded it would have been positive.
    pred = _box((10, 10), 4, 7, 5, 8)
    assert next_click(gt, pred) == Click(6, 5, False)
    assert next_click(gt, np.zeros_like(gt)) == Click(1, 1, True)  # first depth-2 pixel, row-major


def test_distances_are_exact_euclidean():
    gt = _box((30, 30), 0, 30, 0, 30) & ~_box((30, 30), 10, 11, 10, 11)
    d = error_distance(gt)
    assert d[13, 14] == pytest.approx(math.hypot(3, 4), abs=1e-4)


def test_no_click_when_nothing_is_left():
    gt = _box((8, 8), 2, 4, 2, 4)
    assert next_click(gt, gt.copy()) is None
    # every error pixel clicked already
    pred = gt.copy()
    pred[2, 2] = False
    assert next_click(gt, pred) == Click(2, 2, True)
    assert next_click(gt, pred, [Click(2, 2, True)]) is None
    with pytest.raises(ValueError, match="same size"):
        next_click(gt, gt[:4])


def test_noc_and_fr_on_hand_made_iou_sequences():
    seqs = [
        [0.50, 0.86, 0.91],  # 85 at click 2, 90 at click 3
        [0.85],  # exactly T counts
        [0.10] * 20,  # never
        [0.20] * 24 + [0.95],  # reaches 90 at click 25: a failure within 20, NoC 25 within 30
        [],  # the user could not click at all
    ]
    assert [noc(s, 0.85, 20) for s in seqs] == [2, 1, 20, 20, 20]
    assert [noc(s, 0.90, 30) for s in seqs] == [3, 30, 30, 25, 30]
    assert [failed(s, 0.85, 20) for s in seqs] == [False, False, True, True, True]
    assert [failed(s, 0.90, 30) for s in seqs] == [False, True, True, False, True]
    m, fr = noc_fr(seqs, 0.85, 20)
    assert m == pytest.approx((2 + 1 + 20 + 20 + 20) / 5) and fr == pytest.approx(60.0)
    m, fr = noc_fr(seqs, 0.90, 30)
    assert m == pytest.approx((3 + 30 + 30 + 25 + 30) / 5) and fr == pytest.approx(60.0)
    with pytest.raises(ValueError, match="zero objects"):
        noc_fr([], 0.85, 20)


def test_iou_and_protocols():
    a = _box((6, 6), 0, 2, 0, 2)
    b = _box((6, 6), 0, 2, 1, 3)
    assert mask_iou(a, b) == pytest.approx(2 / 6)
    assert mask_iou(np.zeros((3, 3), bool), np.zeros((3, 3), bool)) == 1.0
    assert [p.name for p in PAPER_PROTOCOLS] == ["20@85", "30@90"]
    assert Protocol.parse("20@85") == Protocol(20, 0.85) == Protocol.parse("20@0.85")
    for bad in ("20", "x@85", "0@85", "20@150"):
        with pytest.raises(ValueError, match="protocol"):
            Protocol.parse(bad)
