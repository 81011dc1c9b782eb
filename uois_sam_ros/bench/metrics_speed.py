"""Vectorised UOIS metric vs a straightforward per-pair implementation of the same protocol.

python -m uois_sam_ros.bench.metrics_speed [--images N] [--objects K]
Prints the time per image of each, the ratio, and the largest difference in any value.
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
from scipy.ndimage import binary_dilation
from scipy.optimize import linear_sum_assignment

from uois_sam_ros.core.eval.metrics import KEYS, disk, image_metrics


def _seg2bmap(seg: np.ndarray) -> np.ndarray:
    e = np.zeros_like(seg)
    s = np.zeros_like(seg)
    se = np.zeros_like(seg)
    e[:, :-1], s[:-1, :], se[:-1, :-1] = seg[:, 1:], seg[1:, :], seg[1:, 1:]
    b = (seg ^ e) | (seg ^ s) | (seg ^ se)
    b[-1, :] = seg[-1, :] ^ e[-1, :]
    b[:, -1] = seg[:, -1] ^ s[:, -1]
    b[-1, -1] = False
    return b


def per_pair_metrics(pred: np.ndarray, gt: np.ndarray) -> dict[str, float]:
    """The straightforward version: full-image masks and dilations for every (gt, pred) pair."""
    gids = [i for i in np.unique(gt) if i != 0]
    pids = [j for j in np.unique(pred) if j != 0]
    if not gids or not pids:
        return image_metrics(pred, gt)
    r = math.ceil(0.003 * math.hypot(*gt.shape))
    fp = disk(r).astype(bool)
    n, m = len(gids), len(pids)
    F, TP, IOU, PTP, RTP = (np.zeros((n, m)) for _ in range(5))
    gb = [_seg2bmap(gt == i) for i in gids]
    pb = [_seg2bmap(pred == j) for j in pids]
    for a, i in enumerate(gids):
        gm = gt == i
        for b, j in enumerate(pids):
            pm = pred == j
            tp = float((gm & pm).sum())
            p, rr = tp / pm.sum(), tp / gm.sum()
            F[a, b] = 2 * p * rr / (p + rr) if p + rr > 0 else 0.0
            TP[a, b], IOU[a, b] = tp, tp / (gm | pm).sum()
            PTP[a, b] = (pb[b] & binary_dilation(gb[a], structure=fp)).sum()
            RTP[a, b] = (gb[a] & binary_dilation(pb[b], structure=fp)).sum()
    rows, cols = linear_sum_assignment(F, maximize=True)
    op, orr = TP[rows, cols].sum() / (pred > 0).sum(), TP[rows, cols].sum() / (gt > 0).sum()
    nbp, nbg = sum(x.sum() for x in pb), sum(x.sum() for x in gb)
    bp = PTP[rows, cols].sum() / nbp if nbp else 0.0
    br = RTP[rows, cols].sum() / nbg if nbg else 0.0

    def f(x: float, y: float) -> float:
        return 2 * x * y / (x + y) if x + y > 0 else 0.0

    return {"OP": op, "OR": orr, "OF": f(op, orr), "BP": bp, "BR": br, "BF": f(bp, br),
            "P75": float((F[rows, cols] > 0.75).sum()) / n, "mIoU": float(IOU[rows, cols].mean())}


def scene(rng: np.random.Generator, h: int, w: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """A tabletop-like GT with k blobs and a noisy prediction of it (shifted, one merge, one miss)."""
    yy, xx = np.mgrid[:h, :w]
    gt = np.zeros((h, w), np.uint16)
    for i in range(1, k + 1):
        cy, cx = rng.uniform(60, h - 60), rng.uniform(60, w - 60)
        ry, rx = rng.uniform(15, 50), rng.uniform(15, 50)
        gt[((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1] = i
    pred = np.roll(gt, (int(rng.integers(-3, 4)), int(rng.integers(-3, 4))), axis=(0, 1)).astype(np.uint16)
    pred[pred == 2] = 1
    pred[pred == 3] = 0
    return pred, gt


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=10, help="random label-map pairs to score")
    ap.add_argument("--objects", type=int, default=10, help="objects per label map")
    ap.add_argument("--height", type=int, default=480, help="image height, px")
    ap.add_argument("--width", type=int, default=640, help="image width, px")
    a = ap.parse_args(argv)
    rng = np.random.default_rng(0)
    data = [scene(rng, a.height, a.width, a.objects) for _ in range(a.images)]
    t0 = time.perf_counter()
    fast = [image_metrics(p, g) for p, g in data]
    t1 = time.perf_counter()
    slow = [per_pair_metrics(p, g) for p, g in data]
    t2 = time.perf_counter()
    diff = max(abs(x[k] - y[k]) for x, y in zip(fast, slow) for k in KEYS)
    tv, tp = (t1 - t0) / a.images, (t2 - t1) / a.images
    print(f"{a.images} images {a.width}x{a.height}, {a.objects} objects each")
    print(f"vectorised: {tv * 1e3:8.2f} ms/image")
    print(f"per-pair:   {tp * 1e3:8.2f} ms/image")
    print(f"speed-up:   {tp / tv:8.1f}x   max |difference| over all values: {diff:.3g}")
    if diff > 1e-9:
        raise SystemExit("the vectorised metric differs from the per-pair version")


if __name__ == "__main__":
    main()
