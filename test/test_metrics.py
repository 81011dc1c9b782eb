"""The UOIS metric against hand-computed cases and a straightforward per-pair oracle."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy.ndimage import binary_dilation
from scipy.optimize import linear_sum_assignment
from skimage.morphology import disk as sk_disk

from uois_sam_ros.core.data import rle
from uois_sam_ros.core.eval.metrics import KEYS, MetricAccumulator, boundary_radius, image_metrics


# ---------------------------------------------------------------- the oracle (DESIGN.md section 5, per pair)
def seg2bmap(seg: np.ndarray) -> np.ndarray:
    seg = seg.astype(bool)
    e = np.zeros_like(seg)
    s = np.zeros_like(seg)
    se = np.zeros_like(seg)
    e[:, :-1] = seg[:, 1:]
    s[:-1, :] = seg[1:, :]
    se[:-1, :-1] = seg[1:, 1:]
    b = seg ^ e | seg ^ s | seg ^ se
    b[-1, :] = seg[-1, :] ^ e[-1, :]
    b[:, -1] = seg[:, -1] ^ s[:, -1]
    b[-1, -1] = 0
    return b


def oracle(pred: np.ndarray, gt: np.ndarray) -> dict[str, float]:
    gids = [int(i) for i in np.unique(gt) if i != 0]
    pids = [int(i) for i in np.unique(pred) if i != 0]
    if not gids and not pids:
        return dict(OP=1, OR=1, OF=1, BP=1, BR=1, BF=1, P75=1, mIoU=1)
    if not pids:
        return dict(OP=1, OR=0, OF=0, BP=1, BR=0, BF=0, P75=0, mIoU=0)
    if not gids:
        return dict(OP=0, OR=1, OF=0, BP=0, BR=1, BF=0, P75=0, mIoU=0)
    r = math.ceil(0.003 * np.linalg.norm(gt.shape))
    F = np.zeros((len(gids), len(pids)))
    TP = np.zeros_like(F)
    IOU = np.zeros_like(F)
    PTP = np.zeros_like(F)
    RTP = np.zeros_like(F)
    gb = [seg2bmap(gt == i) for i in gids]
    pb = [seg2bmap(pred == j) for j in pids]
    for a, i in enumerate(gids):
        gm = gt == i
        for b, j in enumerate(pids):
            pm = pred == j
            tp = np.logical_and(gm, pm).sum()
            p, rr = tp / pm.sum(), tp / gm.sum()
            f = 2 * p * rr / (p + rr) if p + rr > 0 else 0.0
            F[a, b] = 0.0 if np.isnan(f) else f
            TP[a, b] = tp
            IOU[a, b] = tp / np.logical_or(gm, pm).sum()
            PTP[a, b] = np.logical_and(pb[b], binary_dilation(gb[a], structure=sk_disk(r))).sum()
            RTP[a, b] = np.logical_and(gb[a], binary_dilation(pb[b], structure=sk_disk(r))).sum()
    rows, cols = linear_sum_assignment(F, maximize=True)
    op = TP[rows, cols].sum() / (pred > 0).sum()
    orr = TP[rows, cols].sum() / (gt > 0).sum()
    nb_p, nb_g = sum(x.sum() for x in pb), sum(x.sum() for x in gb)
    bp = PTP[rows, cols].sum() / nb_p if nb_p else 0.0
    br = RTP[rows, cols].sum() / nb_g if nb_g else 0.0
    f = lambda x, y: 2 * x * y / (x + y) if x + y > 0 else 0.0  # noqa: E731
    return dict(OP=op, OR=orr, OF=f(op, orr), BP=bp, BR=br, BF=f(bp, br),
                P75=(F[rows, cols] > 0.75).sum() / len(gids), mIoU=IOU[rows, cols].mean())


def random_labels(rng: np.random.Generator, h: int, w: int, n: int) -> np.ndarray:
    out = np.zeros((h, w), np.int64)
    ids = rng.choice(np.arange(1, 60), size=n, replace=False)
    for k in ids:
        y0, x0 = rng.integers(0, h), rng.integers(0, w)
        hh, ww = rng.integers(1, h // 2 + 2), rng.integers(1, w // 2 + 2)
        if rng.random() < 0.5:
            out[y0:y0 + hh, x0:x0 + ww] = k
        else:
            yy, xx = np.mgrid[:h, :w]
            out[(yy - y0) ** 2 / hh ** 2 + (xx - x0) ** 2 / ww ** 2 <= 1] = k
    return out


def perturb(rng: np.random.Generator, gt: np.ndarray) -> np.ndarray:
    mode = rng.integers(0, 4)
    if mode == 0:
        return random_labels(rng, *gt.shape, int(rng.integers(0, 8)))
    pred = np.roll(gt, (int(rng.integers(-4, 5)), int(rng.integers(-4, 5))), axis=(0, 1))
    perm = rng.permutation(200)[: int(gt.max()) + 1] + 1
    perm[0] = 0
    pred = perm[pred]
    if mode == 2:  # merge two ids
        ids = np.unique(pred[pred > 0])
        if len(ids) >= 2:
            pred[pred == ids[1]] = ids[0]
    if mode == 3:  # add noise blobs
        pred = np.where(random_labels(rng, *gt.shape, 2) > 0, 250, pred)
    return pred


def assert_same(a: dict, b: dict, tol: float = 1e-9) -> None:
    for k in KEYS:
        assert abs(a[k] - b[k]) <= tol, (k, a[k], b[k])


# ---------------------------------------------------------------- hand-computed cases
def test_both_empty_scores_one_everywhere():
    z = np.zeros((20, 30), np.uint16)
    m = image_metrics(z, z)
    assert [m[k] for k in ("OP", "OR", "OF", "BP", "BR", "BF", "P75", "mIoU")] == [1.0] * 8


def test_only_gt_empty_and_only_pred_empty():
    z = np.zeros((20, 30), np.uint16)
    one = z.copy()
    one[5:10, 5:10] = 3
    m = image_metrics(one, z)  # prediction but no GT
    assert (m["OP"], m["OR"], m["OF"], m["BP"], m["BR"], m["BF"], m["P75"]) == (0, 1, 0, 0, 1, 0, 0)
    m = image_metrics(z, one)  # GT but no prediction
    assert (m["OP"], m["OR"], m["OF"], m["BP"], m["BR"], m["BF"], m["P75"]) == (1, 0, 0, 1, 0, 0, 0)


def test_perfect_prediction_scores_one_and_ignores_label_values():
    gt = np.zeros((48, 64), np.uint16)
    gt[5:20, 5:20] = 1
    gt[25:40, 30:60] = 2
    pred = np.where(gt == 1, 7, np.where(gt == 2, 3, 0))
    m = image_metrics(pred, gt)
    for k in KEYS:
        assert m[k] == pytest.approx(1.0)


def test_merge_of_two_objects():
    gt = np.zeros((40, 60), np.uint8)
    gt[0:10, 0:10] = 1  # 100 px
    gt[0:10, 20:50] = 2  # 300 px
    pred = (gt > 0).astype(np.uint8)  # one object of 400 px
    m = image_metrics(pred, gt)
    # F(1,1) = 2*(100/400)*(1)/(1.25) = 0.4; F(2,1) = 2*0.75*1/1.75 = 6/7 -> gt 2 matched.
    assert m["OP"] == pytest.approx(300 / 400)
    assert m["OR"] == pytest.approx(300 / 400)
    assert m["OF"] == pytest.approx(0.75)
    assert m["P75"] == pytest.approx(0.5)  # 6/7 > 0.75 for one of two GT objects
    assert m["mIoU"] == pytest.approx(0.75)


def test_split_of_one_object():
    gt = np.zeros((40, 60), np.uint8)
    gt[5:15, 5:45] = 4  # 400 px
    pred = np.zeros_like(gt)
    pred[5:15, 5:15] = 1  # 100 px
    pred[5:15, 15:45] = 2  # 300 px
    m = image_metrics(pred, gt)
    # F(gt, 1) = 0.4, F(gt, 2) = 6/7: the 300 px part is matched, the other is a false positive.
    assert m["OP"] == pytest.approx(300 / 400)
    assert m["OR"] == pytest.approx(300 / 400)
    assert m["P75"] == pytest.approx(1.0)
    assert m["mIoU"] == pytest.approx(0.75)


def test_shifted_mask_boundary_f_differs_from_overlap_f():
    gt = np.zeros((100, 100), np.uint8)
    gt[20:60, 20:60] = 1
    pred = np.zeros_like(gt)
    pred[22:62, 22:62] = 1  # shifted by 2 px; r = ceil(0.003 * 141.4) = 1, so boundaries miss
    assert boundary_radius(100, 100) == 1
    m = image_metrics(pred, gt)
    assert m["OF"] == pytest.approx(38 * 38 / 1600)
    assert m["BF"] < m["OF"]
    assert_same(m, oracle(pred, gt))
    big = np.zeros((480, 640), np.uint8)
    big[100:200, 100:200] = 1
    shifted = np.roll(big, 2, axis=1)
    m = image_metrics(shifted, big)  # r = 3 at 640x480: boundaries within tolerance
    assert m["BF"] == pytest.approx(1.0)
    assert m["OF"] == pytest.approx(98 / 100)


def test_ties_follow_the_row_col_orientation():
    # Two GT and two predicted objects that all miss each other: every assignment has F = 0.
    # linear_sum_assignment on the (gt x pred) matrix pairs gt1-pred1, gt2-pred2; the boundary
    # of pred1 lies next to gt1 only, so BP counts its pixels.
    gt = np.zeros((60, 80), np.uint8)
    gt[10:20, 10:20] = 1
    gt[40:50, 60:70] = 2
    pred = np.zeros_like(gt)
    pred[10:20, 20:30] = 1  # touches gt1's right side
    pred[40:50, 40:50] = 2  # far from everything
    m = image_metrics(pred, gt)
    assert m["OF"] == 0.0 and m["P75"] == 0.0
    assert m["BP"] > 0.0
    assert_same(m, oracle(pred, gt))


def test_whole_image_object_is_flagged_and_scored_zero():
    gt = np.ones((30, 40), np.uint8)
    m = image_metrics(np.ones((30, 40), np.uint8), gt)
    assert m["boundary_undefined"] == 1.0
    assert m["BP"] == 0.0 and m["BR"] == 0.0 and m["OF"] == 1.0


def test_prediction_is_resized_nearest_to_gt_size():
    gt = np.zeros((40, 60), np.uint8)
    gt[10:30, 20:40] = 1
    small = gt[::2, ::2]
    m = image_metrics(small, gt)
    assert m["OF"] == pytest.approx(1.0)


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="must be 2-D"):
        image_metrics(np.zeros((4, 4, 3)), np.zeros((4, 4)))
    with pytest.raises(ValueError, match="negative ids"):
        image_metrics(-np.ones((4, 4), np.int32), np.zeros((4, 4), np.int32))


# ---------------------------------------------------------------- properties and the oracle
def test_invariant_to_label_permutation():
    # Overlap scores never depend on the id values. Boundary scores can only through ties
    # (DESIGN.md section 5), so all keys are compared where the best matching is unique:
    # every GT object has a counterpart with F > 0.5 (such pairs cannot share an object).
    rng = np.random.default_rng(3)
    unique_cases = 0
    for _ in range(40):
        gt = random_labels(rng, 40, 50, 5)
        pred = perturb(rng, gt)
        perm = rng.permutation(300) + 1
        perm[0] = 0
        a, b = image_metrics(pred, gt), image_metrics(perm[pred], gt)
        for k in ("OP", "OR", "OF", "P75"):
            assert a[k] == pytest.approx(b[k], abs=1e-12)
        cells = np.zeros((48, 66), np.int64)
        for c, k in enumerate(rng.choice(np.arange(1, 99), 6, replace=False)):
            y, x = 24 * (c // 3) + int(rng.integers(0, 5)), 22 * (c % 3) + int(rng.integers(0, 5))
            cells[y:y + int(rng.integers(10, 18)), x:x + int(rng.integers(10, 16))] = k
        gt = cells
        shifted = np.roll(gt, (1, -1), axis=(0, 1))
        ng, npr = len(np.unique(gt[gt > 0])), len(np.unique(shifted[shifted > 0]))
        m = image_metrics(shifted, gt)
        if ng == npr and m["P75"] * ng >= ng - 0.5 and ng > 0:
            unique_cases += 1
            assert_same(m, image_metrics(perm[shifted], gt), 1e-12)
    assert unique_cases >= 10


def test_equals_the_per_pair_oracle_on_random_label_maps():
    rng = np.random.default_rng(0)
    n = 0
    for t in range(300):
        h, w = (int(rng.integers(8, 48)), int(rng.integers(8, 48))) if t % 10 else (120, 160)
        gt = random_labels(rng, h, w, int(rng.integers(0, 7)))
        pred = perturb(rng, gt)
        assert_same(image_metrics(pred, gt), oracle(pred, gt))
        n += 1
    assert n == 300


def test_accumulator_means_table_and_json(tmp_path):
    acc = MetricAccumulator()
    gt = np.zeros((40, 60), np.uint8)
    gt[0:10, 0:10] = 1
    gt[0:10, 20:50] = 2
    acc.add("perfect", gt, gt)
    acc.add("merge", (gt > 0).astype(np.uint8), gt)
    m = acc.means()
    assert m["OF"] == pytest.approx(100 * (1 + 0.75) / 2)
    assert m["P75"] == pytest.approx(100 * (1 + 0.5) / 2)
    table = acc.format_table("test")
    assert table.index("Overlap") < table.index("Boundary") < table.index("%75")
    assert "87.5" in table
    acc.to_json(tmp_path / "r.json")
    doc = json.loads((tmp_path / "r.json").read_text())
    assert doc["images"] == 2 and doc["means"]["OF"] == pytest.approx(87.5)
    lines = (tmp_path / "r.csv").read_text().splitlines()
    assert lines[0].startswith("name,OP,OR,OF") and len(lines) == 3


# ---------------------------------------------------------------- RLE (core/rle.py)
def test_rle_matches_coco_reference_strings():
    m = np.zeros((7, 5), bool)
    m[1:4, 1:3] = True
    m[6, 4] = True
    m[0, 0] = True
    assert rle.encode(m)["counts"] == "0172M0<N"  # pycocotools' string for this mask
    assert (rle.decode({"size": [7, 5], "counts": "0172M0<N"}) == m).all()
    big = np.zeros((480, 640), bool)
    big[100:400, 50:600] = True
    s = rle.encode(big)["counts"]
    assert s.startswith("Tag0\\9d5") and s.endswith("ldb0")
    assert (rle.decode({"size": [480, 640], "counts": s.encode()}) == big).all()


def test_rle_roundtrip_both_forms_and_errors():
    rng = np.random.default_rng(1)
    for _ in range(50):
        m = rng.random((int(rng.integers(1, 30)), int(rng.integers(1, 30)))) < rng.random()
        for compressed in (True, False):
            enc = rle.encode(m, compressed)
            assert (rle.decode(enc) == m).all()
            assert rle.area(enc) == m.sum()
    with pytest.raises(rle.RLEError, match="cover 5 pixels"):
        rle.decode({"size": [2, 3], "counts": [2, 3]})
    with pytest.raises(rle.RLEError, match="does not match the image size"):
        rle.decode({"size": [2, 3], "counts": [6]}, height=3, width=2)
