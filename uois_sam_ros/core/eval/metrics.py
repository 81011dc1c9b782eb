"""UOIS overlap / boundary P/R/F and %75, the protocol of the papers' tables (DESIGN.md section 5).

Matches Xie et al.'s `multilabel_metrics` (as used by UCN) value for value, with the
tie-break fixed: F has GT ids as rows and predicted ids as columns, both ascending, in
float64, and is solved by `linear_sum_assignment(F, maximize=True)`. It is vectorised:
one bincount gives every pairwise intersection, one pass over shifted label maps gives
every object's boundary pixels, and boundaries are dilated only for the matched pairs,
inside a crop around each GT boundary. The straightforward per-pair version lives in the
tests as the oracle.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import cv2
import numpy as np
from scipy.optimize import linear_sum_assignment

KEYS = ("OP", "OR", "OF", "BP", "BR", "BF", "P75", "mIoU")
HEADERS = ("P", "R", "F", "P", "R", "F", "%75", "mIoU")
BOUND_TH = 0.003


def boundary_radius(height: int, width: int) -> int:
    """Tolerance in pixels: ceil(0.003 * image diagonal) (3 at 640x480, 5 at 1280x720)."""
    return int(math.ceil(BOUND_TH * math.hypot(height, width)))


def disk(r: int) -> np.ndarray:
    """Pixels with x^2 + y^2 <= r^2 (skimage's disk), as a uint8 kernel."""
    y, x = np.mgrid[-r:r + 1, -r:r + 1]
    return (x * x + y * y <= r * r).astype(np.uint8)


def resize_nearest(label: np.ndarray, height: int, width: int) -> np.ndarray:
    """Nearest-neighbour resize of a label map (OpenCV's INTER_NEAREST sampling, any dtype)."""
    h, w = label.shape
    if (h, w) == (height, width):
        return label
    rows = np.minimum((np.arange(height) * h) // height, h - 1)
    cols = np.minimum((np.arange(width) * w) // width, w - 1)
    return label[rows[:, None], cols[None, :]]


def _check_label(a: np.ndarray, what: str) -> np.ndarray:
    a = np.asarray(a)
    if a.ndim != 2:
        raise ValueError(f"{what} label map must be 2-D (H, W), got shape {a.shape}")
    if a.dtype == bool:
        return a.astype(np.int64)
    if not np.issubdtype(a.dtype, np.integer):
        if np.issubdtype(a.dtype, np.floating) and np.all(np.isfinite(a)) and np.all(a == np.round(a)):
            a = a.astype(np.int64)
        else:
            raise ValueError(f"{what} label map must hold integer ids, got dtype {a.dtype}")
    if a.size and a.min() < 0:
        raise ValueError(f"{what} label map has negative ids (min {a.min()})")
    return a


def _dense(label: np.ndarray) -> tuple[np.ndarray, int]:
    """Relabel to 0..K keeping the ascending order of the nonzero ids (0 stays background)."""
    ids, inv = np.unique(label, return_inverse=True)
    inv = inv.reshape(label.shape)
    if len(ids) and ids[0] == 0:
        return inv.astype(np.int64), len(ids) - 1
    return inv.astype(np.int64) + 1, len(ids)


def _boundary_pixels(dense: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Flat pixel indices and ids of every object's seg2bmap boundary, all ids at once.

    seg2bmap marks p for mask s when s(p) differs from s at p's east, south or south-east
    neighbour; on the last row / column the missing neighbours act as copies of the pixel
    (edge replication reproduces its special cases exactly). So p is a boundary pixel of
    id k iff k is among {L(p), E(p), S(p), SE(p)} and those four are not all k.
    """
    pad = np.pad(dense, ((0, 1), (0, 1)), mode="edge")
    c = pad[:-1, :-1]
    e, s, se = pad[:-1, 1:], pad[1:, :-1], pad[1:, 1:]
    edge = (c != e) | (c != s) | (c != se)
    pix = np.flatnonzero(edge)
    vals = np.stack([c.ravel()[pix], e.ravel()[pix], s.ravel()[pix], se.ravel()[pix]])
    keys = (pix[None, :] * (k + 1) + vals).ravel()
    keys = np.unique(keys[vals.ravel() > 0])
    return keys // (k + 1), keys % (k + 1)


def _empty_result(op: float, or_: float, of: float, p75: float) -> dict[str, float]:
    # mIoU follows %75: a correctly empty prediction is perfect, any other empty case scores 0.
    return {"OP": op, "OR": or_, "OF": of, "BP": op, "BR": or_, "BF": of, "P75": p75, "mIoU": p75,
            "boundary_undefined": 0.0}


def _f(p: float, r: float) -> float:
    return 2 * p * r / (p + r) if p + r > 0 else 0.0


def image_metrics(pred: np.ndarray, gt: np.ndarray) -> dict[str, float]:
    """Overlap/boundary P, R, F, %75 and matched-pair mean IoU of one image (fractions).

    pred is resized to gt's size with nearest neighbour. 'boundary_undefined' is 1.0 when
    a boundary denominator was 0 (an object covering the whole image); BP/BR are 0 then.
    """
    gt = _check_label(gt, "ground-truth")
    pred = _check_label(pred, "predicted")
    H, W = gt.shape
    pred = resize_nearest(pred, H, W)
    g, ng = _dense(gt)
    p, npr = _dense(pred)
    if npr == 0 and ng == 0:
        return _empty_result(1.0, 1.0, 1.0, 1.0)
    if npr == 0:
        return _empty_result(1.0, 0.0, 0.0, 0.0)
    if ng == 0:
        return _empty_result(0.0, 1.0, 0.0, 0.0)

    conf = np.bincount((g * (npr + 1) + p).ravel(), minlength=(ng + 1) * (npr + 1)).reshape(ng + 1, npr + 1)
    tp = conf[1:, 1:].astype(np.float64)
    g_area = conf[1:, :].sum(axis=1).astype(np.float64)
    p_area = conf[:, 1:].sum(axis=0).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        prec = tp / p_area[None, :]
        rec = tp / g_area[:, None]
        F = 2 * prec * rec / (prec + rec)
    F[~np.isfinite(F)] = 0.0
    rows, cols = linear_sum_assignment(F, maximize=True)

    tp_m = tp[rows, cols]
    op = tp_m.sum() / p_area.sum()
    or_ = tp_m.sum() / g_area.sum()
    iou = tp_m / (g_area[rows] + p_area[cols] - tp_m)
    p75 = float((F[rows, cols] > 0.75).sum()) / ng

    r = boundary_radius(H, W)
    kern = disk(r)
    gpix, gid = _boundary_pixels(g, ng)
    ppix, pid = _boundary_pixels(p, npr)
    gb_count = np.bincount(gid, minlength=ng + 1)[1:]
    pb_count = np.bincount(pid, minlength=npr + 1)[1:]
    g_order, p_order = np.argsort(gid, kind="stable"), np.argsort(pid, kind="stable")
    g_start = np.concatenate([[0], np.cumsum(np.bincount(gid, minlength=ng + 1))])
    p_start = np.concatenate([[0], np.cumsum(np.bincount(pid, minlength=npr + 1))])

    ptp = rtp = 0
    for i, j in zip(rows + 1, cols + 1):
        gi = gpix[g_order[g_start[i]:g_start[i + 1]]]
        pj = ppix[p_order[p_start[j]:p_start[j + 1]]]
        if len(gi) == 0 or len(pj) == 0:
            continue
        ptp += _hits_within(gi, pj, W, H, r, kern)
        rtp += _hits_within(pj, gi, W, H, r, kern)
    undefined = pb_count.sum() == 0 or gb_count.sum() == 0
    bp = ptp / pb_count.sum() if pb_count.sum() > 0 else 0.0
    br = rtp / gb_count.sum() if gb_count.sum() > 0 else 0.0
    return {"OP": float(op), "OR": float(or_), "OF": _f(op, or_), "BP": float(bp), "BR": float(br),
            "BF": _f(bp, br), "P75": p75, "mIoU": float(iou.mean()), "boundary_undefined": float(undefined)}


def _hits_within(src: np.ndarray, dst: np.ndarray, W: int, H: int, r: int, kern: np.ndarray) -> int:
    """How many dst pixels lie in the disk dilation of the src pixels (flat indices)."""
    sy, sx = src // W, src % W
    dy, dx = dst // W, dst % W
    y0, x0 = max(int(sy.min()) - r, 0), max(int(sx.min()) - r, 0)
    y1, x1 = min(int(sy.max()) + r + 1, H), min(int(sx.max()) + r + 1, W)
    inside = (dy >= y0) & (dy < y1) & (dx >= x0) & (dx < x1)
    if not inside.any():
        return 0
    crop = np.zeros((y1 - y0, x1 - x0), np.uint8)
    crop[sy - y0, sx - x0] = 1
    dil = cv2.dilate(crop, kern, borderType=cv2.BORDER_CONSTANT, borderValue=0)
    return int(dil[dy[inside] - y0, dx[inside] - x0].sum())


class MetricAccumulator:
    """Per-image rows and the dataset means (arithmetic mean of per-image values, x100)."""

    def __init__(self) -> None:
        self.rows: list[dict] = []

    def add(self, name: str, pred: np.ndarray, gt: np.ndarray) -> dict[str, float]:
        m = image_metrics(pred, gt)
        self.rows.append({"name": name, **m})
        return m

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def boundary_undefined(self) -> int:
        """Images whose boundary P or R was 0/0 (reported as 0, as the reference's NaN is not)."""
        return int(sum(r["boundary_undefined"] for r in self.rows))

    def means(self) -> dict[str, float]:
        if not self.rows:
            return {k: float("nan") for k in KEYS}
        return {k: 100.0 * float(np.mean([r[k] for r in self.rows])) for k in KEYS}

    def format_table(self, title: str = "") -> str:
        """The paper's column order: Overlap P R F | Boundary P R F | %75 (then mIoU)."""
        m = self.means()
        head1 = f"{'':<22}| {'Overlap':^23} | {'Boundary':^23} |{'':>7} |"
        head2 = f"{'Method':<22}| " + " ".join(f"{h:>7}" for h in HEADERS[:3]) + " | " + \
            " ".join(f"{h:>7}" for h in HEADERS[3:6]) + f" | {HEADERS[6]:>6} | {HEADERS[7]:>6}"
        vals = [m[k] for k in KEYS]
        line = f"{(title or 'result')[:22]:<22}| " + " ".join(f"{v:7.1f}" for v in vals[:3]) + " | " + \
            " ".join(f"{v:7.1f}" for v in vals[3:6]) + f" | {vals[6]:6.1f} | {vals[7]:6.1f}"
        out = [head1, head2, "-" * len(head2), line, f"({len(self.rows)} images"]
        if self.boundary_undefined:
            out[-1] += f"; {self.boundary_undefined} with an undefined boundary score, counted as 0"
        out[-1] += ")"
        return "\n".join(out)

    @classmethod
    def from_csv(cls, path: str | Path) -> MetricAccumulator:
        """The rows a to_json CSV holds, in its order (floats round-trip exactly through repr)."""
        acc = cls()
        with open(path, newline="") as f:
            for r in csv.DictReader(f):
                try:
                    row = {"name": r["name"], **{k: float(r[k]) for k in KEYS},
                           "boundary_undefined": float(r["boundary_undefined"])}
                except (KeyError, ValueError, TypeError) as e:
                    raise ValueError(f"{path}: not a per-image metrics CSV of uois-sam-eval ({e})") from None
                acc.rows.append(row)
        return acc

    def to_json(self, path: str | Path, extra: dict | None = None) -> None:
        """Dataset means (x100) to PATH and the per-image rows to PATH with a .csv suffix."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        doc = {"images": len(self.rows), "boundary_undefined": self.boundary_undefined,
               "means": self.means(), **(extra or {})}
        path.write_text(json.dumps(doc, indent=2))
        with open(path.with_suffix(".csv"), "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=["name", *KEYS, "boundary_undefined"])
            w.writeheader()
            for r in self.rows:
                w.writerow({k: r[k] for k in w.fieldnames})
