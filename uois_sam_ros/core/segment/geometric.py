"""Weights-free backend: table plane, clusters standing on it, and prompt-driven region growing.

This is the default method when no SAM checkpoint is configured. Objects are what rises
above the dominant supporting plane; they are told apart by depth discontinuities,
concave creases between touching surfaces (objects are mostly convex, contacts are
concave) and, optionally, strong colour edges.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import cv2
import numpy as np
import open3d as o3d
from scipy import ndimage
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from uois_sam_ros.core.config import GeometricConfig
from uois_sam_ros.core.segment.backend import Decoded
from uois_sam_ros.core.types import Frame, FrameError, Prompts

_REF_PIXELS = 640 * 480
_MAX_PLANE_SAMPLES = 40000
_MAX_PLANES = 3

# open3d's RANSAC draws its samples from one process-wide random engine inside a parallel
# loop that stops early once a good enough plane is seen, so which samples are tried (and
# which plane wins) depended on thread timing and on other threads' fits reseeding or
# drawing from the engine mid-fit: now and then the same frame gave a slightly different
# table. Plane fits therefore run one at a time, single-threaded, each from a freshly seeded
# engine. (open3d's thread limit is process-wide: other open3d work in the process runs
# single-threaded for the few milliseconds of a fit.)
_O3D_RANDOM_LOCK = threading.Lock()


@contextmanager
def _reproducible_open3d() -> Iterator[None]:
    """Serialise users of open3d's global random engine and run open3d single-threaded."""
    with _O3D_RANDOM_LOCK:
        previous = o3d.utility.get_max_threads()
        o3d.utility.set_max_threads(1)
        try:
            yield
        finally:
            o3d.utility.set_max_threads(previous)


def _segment_plane(points: np.ndarray, cfg: GeometricConfig, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """open3d RANSAC plane: the same points and seed give the same plane in any thread."""
    pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(points))
    with _reproducible_open3d():
        o3d.utility.random.seed(seed)
        model, inl = pcd.segment_plane(cfg.plane_distance, 3, cfg.plane_iterations)
    return np.asarray(model), np.asarray(inl, dtype=np.int64)


@dataclass
class TablePlane:
    """The supporting plane in the camera frame.

    coefficients: (a, b, c, d), unit normal (a, b, c) pointing towards the camera, so
    height = n . p + d is positive above the table. inliers: (H, W) pixels on the plane.
    height: (H, W) float32 signed height in metres, NaN where depth is invalid.
    region: (H, W) filled convex hull of the table in the image (where objects may stand).
    points: (H, W, 3) float32 back-projected points, NaN where depth is invalid.
    """

    coefficients: np.ndarray
    inliers: np.ndarray
    height: np.ndarray
    region: np.ndarray
    points: np.ndarray

    @property
    def normal(self) -> np.ndarray:
        return self.coefficients[:3]


def _checked_depth(frame: Frame) -> np.ndarray:
    """Depth in metres with NaN for invalid pixels, after the frame's own checks."""
    if frame.depth is None:
        raise FrameError("the geometric backend needs depth, but the frame has none")
    if frame.intrinsics is None:
        raise FrameError("the geometric backend needs camera intrinsics, but the frame has none "
                         "(give --intrinsics fx,fy,cx,cy or --camera camera.json, or publish camera_info)")
    frame.validate(need_depth=True, need_intrinsics=True)
    d = frame.depth.astype(np.float32, copy=True)
    d[~(np.isfinite(d) & (d > 0))] = np.nan
    return d


def _backproject(depth: np.ndarray, frame: Frame) -> np.ndarray:
    k = frame.intrinsics
    h, w = depth.shape
    u = (np.arange(w, dtype=np.float32) - k.cx) / k.fx
    v = (np.arange(h, dtype=np.float32) - k.cy) / k.fy
    return np.stack([depth * u[None, :], depth * v[:, None], depth], axis=-1)


def _refine_plane(pts: np.ndarray) -> np.ndarray:
    """Least-squares plane through the inliers (RANSAC's 3-point plane is noisy)."""
    c = pts.mean(axis=0)
    _, _, vt = np.linalg.svd(pts - c, full_matrices=False)
    n = vt[2]
    return np.array([*n, -float(n @ c)])


def _orient(plane: np.ndarray) -> np.ndarray:
    """Normal towards the camera: the origin must have positive height."""
    plane = plane / np.linalg.norm(plane[:3])
    return -plane if plane[3] < 0 else plane


def fit_table_plane(frame: Frame, cfg: GeometricConfig | None = None) -> TablePlane:
    """Find the table: the plane with the most support among the few largest, nearest first on ties."""
    cfg = cfg or GeometricConfig()
    depth = _checked_depth(frame)
    pts = _backproject(depth, frame)
    valid = np.isfinite(depth)
    idx = np.flatnonzero(valid.ravel())
    if len(idx) < 3 * max(cfg.cluster_min_points, 10):
        raise FrameError(f"no table plane found: only {len(idx)} pixels have valid depth")
    rng = np.random.default_rng(cfg.seed)
    if len(idx) > _MAX_PLANE_SAMPLES:
        idx = rng.choice(idx, _MAX_PLANE_SAMPLES, replace=False)
    sample = pts.reshape(-1, 3)[idx].astype(np.float64)
    candidates: list[tuple[int, np.ndarray]] = []
    remaining = sample
    min_inliers = max(int(0.05 * len(sample)), 3 * cfg.cluster_min_points)
    for k in range(_MAX_PLANES):
        if len(remaining) < min_inliers:
            break
        _, inl = _segment_plane(remaining, cfg, cfg.seed + k)
        if len(inl) < min_inliers:
            break
        candidates.append((len(inl), _orient(_refine_plane(remaining[inl]))))
        keep = np.ones(len(remaining), bool)
        keep[inl] = False
        remaining = remaining[keep]
    if not candidates:
        raise FrameError(f"no table plane found: no plane has {min_inliers} of {len(sample)} sampled "
                         f"points within {cfg.plane_distance} m")
    # The largest plane may be the floor under the table: among well-supported planes
    # parallel to the largest one, the table is the one nearest the camera (smallest d).
    big_count, big = max(candidates, key=lambda c: c[0])
    parallel = [p for c, p in candidates
                if c >= 0.4 * big_count and abs(float(p[:3] @ big[:3])) > np.cos(np.deg2rad(15.0))]
    plane = min(parallel, key=lambda p: p[3])
    height = (pts @ plane[:3].astype(np.float32) + np.float32(plane[3])).astype(np.float32)
    near = valid & (np.abs(height) < cfg.plane_distance)
    plane = _orient(_refine_plane(pts[near].astype(np.float64)))
    height = (pts @ plane[:3].astype(np.float32) + np.float32(plane[3])).astype(np.float32)
    # Pixels min_height above the plane belong to objects, even within the RANSAC distance.
    inliers = valid & (np.abs(height) < cfg.plane_distance) & (height <= cfg.min_height)
    return TablePlane(plane, inliers, height, _table_region(inliers), pts)


def _table_region(inliers: np.ndarray) -> np.ndarray:
    """Filled convex hull of the sizeable patches of plane pixels (objects cut the table
    into several patches; specks where the plane crosses other surfaces are left out)."""
    m = cv2.morphologyEx(inliers.astype(np.uint8), cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
    n, lab, stats, _ = cv2.connectedComponentsWithStats(m, connectivity=8)
    region = np.zeros(inliers.shape, np.uint8)
    if n <= 1:
        return region.astype(bool)
    areas = stats[1:, cv2.CC_STAT_AREA]
    keep = 1 + np.flatnonzero(areas >= max(0.1 * areas.max(), 0.002 * inliers.size))
    ys, xs = np.nonzero(np.isin(lab, keep))
    hull = cv2.convexHull(np.stack([xs, ys], axis=1).astype(np.int32))
    cv2.fillConvexPoly(region, hull, 1)
    return region.astype(bool)


def _normals(pts: np.ndarray, step: int) -> np.ndarray:
    """Per-pixel unit normals from central differences over `step` pixels, towards the camera."""
    s = max(1, int(step))
    p = np.nan_to_num(pts, nan=0.0)
    dx = np.zeros_like(p)
    dy = np.zeros_like(p)
    dx[:, s:-s] = p[:, 2 * s:] - p[:, :-2 * s]
    dy[s:-s] = p[2 * s:] - p[:-2 * s]
    n = np.cross(dx, dy)
    norm = np.linalg.norm(n, axis=-1, keepdims=True)
    n = np.where(norm > 0, n / np.maximum(norm, 1e-12), 0.0)
    flip = (n * p).sum(-1) > 0
    n[flip] = -n[flip]
    return n.astype(np.float32)


def _span(x: np.ndarray, axis: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """For each link (i, i+1) along `axis`, the values k pixels further out on either side,
    so that a blurred edge is still seen as one step."""
    n = x.shape[axis]
    i = np.clip(np.arange(n - 1) - k, 0, n - 1)
    j = np.clip(np.arange(1, n) + k, 0, n - 1)
    return np.take(x, i, axis=axis), np.take(x, j, axis=axis)


class _Segments:
    """One frame's region structure: connected components of above-table pixels whose
    neighbour links cross no depth jump, concave crease or (optionally) colour edge."""

    def __init__(self, frame: Frame, cfg: GeometricConfig) -> None:
        self.cfg = cfg
        self.frame = frame
        self.plane = fit_table_plane(frame, cfg)
        h, w = frame.height, frame.width
        self.min_pixels = max(10, int(round(cfg.min_region_pixels * h * w / _REF_PIXELS)))
        height = self.plane.height
        pts = self.plane.points
        depth = pts[..., 2]
        self.valid = np.isfinite(depth)
        above = self.valid & (height > cfg.min_height) & (height < cfg.max_height)
        self.above = above
        lab = None
        if cfg.colour_weight > 0:
            blur = cv2.GaussianBlur(frame.rgb, (3, 3), 0)
            lab = cv2.cvtColor(blur.astype(np.float32) / 255.0, cv2.COLOR_RGB2LAB)
        normals = _normals(pts, cfg.normal_step) if cfg.concave_angle > 0 else None
        rows, cols = [], []
        ids = np.arange(h * w).reshape(h, w)
        for axis in (0, 1):
            a = (slice(None, -1), slice(None)) if axis == 0 else (slice(None), slice(None, -1))
            b = (slice(1, None), slice(None)) if axis == 0 else (slice(None), slice(1, None))
            keep = above[a] & above[b]
            da, db = depth[a], depth[b]
            with np.errstate(invalid="ignore"):
                keep &= np.abs(da - db) <= cfg.depth_jump * np.minimum(da, db)
            if lab is not None:
                la, lb = _span(lab, axis, 1)
                de = np.linalg.norm(la - lb, axis=-1)
                keep &= de * cfg.colour_weight <= cfg.colour_edge
            if normals is not None:
                keep &= ~self._concave(pts, normals, axis, cfg)
            rows.append(ids[a][keep])
            cols.append(ids[b][keep])
        r = np.concatenate(rows)
        c = np.concatenate(cols)
        graph = coo_matrix((np.ones(len(r), np.uint8), (r, c)), shape=(h * w, h * w))
        _, comp = connected_components(graph, directed=False)
        comp = comp.reshape(h, w) + 1
        comp[~above] = 0
        comp = self._split_by_clusters(comp)
        sizes = np.bincount(comp.ravel())
        drop = sizes < self.min_pixels
        drop[0] = True
        # Flat regions barely above the plane are depth noise on the table (bands along its
        # far edge, specks), not objects: an object rises clearly above min_height somewhere.
        for k in np.flatnonzero(~drop):
            if np.percentile(height[comp == k], 90) < 1.5 * cfg.min_height:
                drop[k] = True
        comp[drop[comp]] = 0
        # Renumber 1..N so label maps stay small.
        _, inv = np.unique(comp, return_inverse=True)
        self.labels = inv.reshape(h, w).astype(np.int32) + int(not (comp == 0).any())

    def _split_by_clusters(self, comp: np.ndarray) -> np.ndarray:
        """DBSCAN on voxel centroids of the object points: drops flying pixels and splits
        what is apart in 3-D even where the image regions touch."""
        cfg = self.cfg
        ys, xs = np.nonzero(comp > 0)
        if len(ys) == 0:
            return comp
        p = self.plane.points[ys, xs].astype(np.float64)
        keys = np.floor(p / cfg.voxel_size).astype(np.int64)
        _, inv, counts = np.unique(keys, axis=0, return_inverse=True, return_counts=True)
        inv = inv.ravel()
        cent = np.zeros((len(counts), 3))
        np.add.at(cent, inv, p)
        cent /= counts[:, None]
        pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(cent))
        vlab = np.asarray(pcd.cluster_dbscan(cfg.cluster_eps, cfg.cluster_min_points))[inv]
        out = np.zeros_like(comp, dtype=np.int64)
        ok = vlab >= 0
        out[ys[ok], xs[ok]] = (vlab[ok].astype(np.int64) * (int(comp.max()) + 1) + comp[ys[ok], xs[ok]] + 1)
        return out

    def _concave(self, pts: np.ndarray, normals: np.ndarray, axis: int, cfg: GeometricConfig) -> np.ndarray:
        """Links that cross a concave crease: normals `step` pixels to either side turn
        against the direction of travel by more than concave_angle."""
        s = max(1, int(cfg.normal_step))
        na, nb = _span(normals, axis, s - 1)
        pa, pb = _span(pts, axis, s - 1)
        cos = (na * nb).sum(-1)
        with np.errstate(invalid="ignore"):
            turn = ((nb - na) * (pb - pa)).sum(-1)
            return (cos < np.cos(np.deg2rad(cfg.concave_angle))) & (turn < 0)

    def region(self, x: float, y: float) -> np.ndarray | None:
        """Mask of the region under (x, y), snapping to a region within a few pixels."""
        h, w = self.labels.shape
        xi = int(np.clip(round(float(x)), 0, w - 1))
        yi = int(np.clip(round(float(y)), 0, h - 1))
        lab = int(self.labels[yi, xi])
        if lab == 0:
            r = max(2, round(0.005 * max(h, w)))
            win = self.labels[max(0, yi - r):yi + r + 1, max(0, xi - r):xi + r + 1]
            if not win.any() or not (self.above[max(0, yi - r):yi + r + 1, max(0, xi - r):xi + r + 1]).any():
                return None
            vals, counts = np.unique(win[win > 0], return_counts=True)
            lab = int(vals[np.argmax(counts)])
        return self.mask_of(lab)

    def mask_of(self, lab: int) -> np.ndarray:
        m = self.labels == lab
        # Holes inside a region that belong to no other region and are not table (invalid depth
        # on specular or transparent patches, texture cut out by colour edges) belong to it.
        return m | (ndimage.binary_fill_holes(m) & (self.labels == 0) & ~self.plane.inliers)

    def support(self, mask: np.ndarray) -> float:
        """Fraction of the region's footprint (points dropped onto the plane) inside the table."""
        ys, xs = np.nonzero(mask & self.valid)
        if len(ys) == 0:
            return 0.0
        if len(ys) > 2000:
            sel = np.linspace(0, len(ys) - 1, 2000).astype(int)
            ys, xs = ys[sel], xs[sel]
        p = self.plane.points[ys, xs].astype(np.float64)
        n, d = self.plane.normal, self.plane.coefficients[3]
        q = p - (p @ n + d)[:, None] * n[None, :]
        k = self.frame.intrinsics
        z = np.maximum(q[:, 2], 1e-6)
        h, w = mask.shape
        u = np.clip(np.round(k.fx * q[:, 0] / z + k.cx), 0, w - 1).astype(int)
        v = np.clip(np.round(k.fy * q[:, 1] / z + k.cy), 0, h - 1).astype(int)
        return float(self.plane.region[v, u].mean())

    def confidence(self, mask: np.ndarray) -> float:
        """Solidity x table support: a real object is a near-convex blob standing on the
        table; a region that leaked through a missing edge is ragged, and clutter off the
        table has no support."""
        area = int(mask.sum())
        if area < self.min_pixels:
            return 0.0
        cnts, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        hull = cv2.convexHull(np.concatenate(cnts))
        hull_area = max(float(cv2.contourArea(hull)), 1.0)
        solidity = min(1.0, area / hull_area)
        return float(np.clip(solidity * self.support(mask), 0.0, 1.0))


class GeometricSegmenter:
    """Promptable segmenter without weights: the region grown from each prompt pixel."""

    name = "geometric"

    def __init__(self, cfg: GeometricConfig | None = None,
                 source: GeometricPromptSource | None = None) -> None:
        self.cfg = cfg or GeometricConfig()
        self.source = source
        self._seg: _Segments | None = None

    def set_frame(self, frame: Frame) -> None:
        """The plane fit and region structure: taken from the prompt source when it just
        computed them for this very frame and config, instead of computing them twice."""
        seg = self.source.last_segments if self.source is not None else None
        if seg is None or seg.frame is not frame or seg.cfg != self.cfg:
            seg = _Segments(frame, self.cfg)
        self._seg = seg

    @property
    def plane(self) -> TablePlane:
        if self._seg is None:
            raise RuntimeError("GeometricSegmenter.set_frame() must be called before use")
        return self._seg.plane

    def decode(self, prompts: Prompts) -> Decoded:
        """One candidate per prompt; background prompts and prompts off the objects give an
        empty mask with score 0."""
        if self._seg is None:
            raise RuntimeError("GeometricSegmenter.set_frame() must be called before decode()")
        seg = self._seg
        h, w = seg.labels.shape
        k = len(prompts)
        masks = np.zeros((k, 1, h, w), bool)
        scores = np.zeros((k, 1), np.float32)
        for i, ((x, y), label) in enumerate(zip(prompts.points, prompts.labels)):
            if label != 1 or not (np.isfinite(x) and np.isfinite(y)):
                continue
            if not (-0.5 <= x < w - 0.5 and -0.5 <= y < h - 0.5):
                continue
            m = seg.region(x, y)
            if m is None:
                continue
            masks[i, 0] = m
            scores[i, 0] = seg.confidence(m)
        return Decoded(masks=masks, iou_pred=scores.copy(), scores=scores)


class GeometricPromptSource:
    """One foreground point per cluster of points standing on the table."""

    name = "geometric"

    def __init__(self, cfg: GeometricConfig | None = None) -> None:
        self.cfg = cfg or GeometricConfig()
        self.last_segments: _Segments | None = None

    def prompts(self, frame: Frame) -> Prompts:
        cfg = self.cfg
        seg = _Segments(frame, cfg)
        self.last_segments = seg
        pts, scs = [], []
        for lab in range(1, int(seg.labels.max()) + 1):
            m = seg.labels == lab
            if seg.support(m) < cfg.min_support:
                continue
            # The point deepest inside the region: far from every edge SAM-style decoders
            # (and the region grower) could confuse with a neighbour.
            dist = cv2.distanceTransform(np.pad(m, 1).astype(np.uint8), cv2.DIST_L2, 5)[1:-1, 1:-1]
            y, x = np.unravel_index(int(np.argmax(dist)), dist.shape)
            pts.append((float(x), float(y)))
            scs.append(seg.confidence(seg.mask_of(lab)))
        if not pts:
            return Prompts.empty()
        order = np.argsort(-np.asarray(scs), kind="stable")[: cfg.max_prompts]
        pts_a = np.asarray(pts, np.float32)[order]
        return Prompts(pts_a, np.ones(len(order), np.int64), np.asarray(scs, np.float32)[order])
