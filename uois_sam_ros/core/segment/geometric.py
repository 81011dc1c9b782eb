"""Weights-free backend: the table plane, the objects standing on it, and prompt-driven regions.

This is the default method when no SAM checkpoint is configured. Objects are what rises above
the supporting plane. Steps, each fixing a failure seen on real RealSense frames:

1. Plane: a few planes are fitted in turn (seeded RANSAC); the table is chosen among those
   facing up, and a parallel plane well above a large one (a table standing on the floor or a
   carpet) wins over the larger, lower one.
2. Regions: above-table pixels are linked unless a depth discontinuity or a concave crease
   (objects are mostly convex, contacts are concave) lies between them.
3. Hills: the sensor smooths depth across gaps, so neighbouring objects are often joined by a
   ramp. Each region is split into the basins of its height map, and basins are merged back
   unless a clear valley lies between their peaks (a saddle-dynamics test), so one object with
   a noisy top stays whole while two objects joined by a ramp come apart.
4. Colour (colour_weight > 0): regions are cut at strong colour edges and the pieces re-joined
   unless their common border is a concave junction or an occluding edge seen at a wider span
   (the print on a box is convex or flat across its colour edges; two objects pressed together
   meet in a concave corner). Regions too large for one object (split_box_px) are cut into
   colour superpixels instead, so that an edge with gaps cannot hide where objects meet.
5. Inside of hollow objects: a region seen through another one's opening (the inside of a mug
   or bowl: enclosed by it, or behind its rim and level with it) is joined to it; slivers and
   crumbs join the region they mostly border. The creases of a bowl's or mug's inside still
   cut it into walls, inside and bottom: neighbours whose points lie on one upright surface of
   revolution (a radius per height about an axis normal to the table), or inside such a wall,
   are joined too (hollow_fit), and a region that is such a wall takes in the pixels inside it
   down to the table (a bowl's bottom is at table height, and its near rim is often lost to the
   sensor, so there is no hole to fill).
6. Halo: depth bleeds onto the table around objects; a colour watershed from the object cores
   and the table moves region borders back onto the colour edges (halo_px).
7. Flat objects (flat_contrast > 0): sheets, pads, markers and cutlery lying down are too thin
   for the depth. Blobs at table level whose colour stands out from the table's local colour
   (and from its own pattern) and that have open table all around become regions too.

Everything after the plane fit runs at a working resolution of about 320x240 (the regions are
mapped back to full resolution, where table pixels are excluded again), so a 640x480 frame
takes a few tenths of a second on one CPU core.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np
from scipy import ndimage
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from uois_sam_ros.core.config import GeometricConfig
from uois_sam_ros.core.segment.backend import Decoded
from uois_sam_ros.core.types import Frame, FrameError, Prompts

_REF_PIXELS = 640 * 480
_MAX_PLANE_SAMPLES = 20000  # points the plane candidates are fitted on
_RANSAC_EVAL = 2500  # points each RANSAC hypothesis is scored on
_WORK_SHORT_SIDE = 240  # the working resolution's short side (about 320x240)
_UP_MAX_NY = 0.3  # a supporting plane's normal points up in the image (camera y is down)
_PARALLEL_DEG = 15.0


@dataclass
class PlaneCandidate:
    """One fitted plane: unit normal towards the camera, inlier count among the samples, and the
    metric area its inliers cover (m^2, extrapolated from the samples to the whole frame)."""

    coefficients: np.ndarray
    count: int
    area: float

    @property
    def normal(self) -> np.ndarray:
        return self.coefficients[:3]


@dataclass
class TablePlane:
    """The supporting plane in the camera frame.

    coefficients: (a, b, c, d), unit normal (a, b, c) pointing towards the camera, so
    height = n . p + d is positive above the table. inliers: (H, W) pixels on the plane.
    height: (H, W) float32 signed height in metres, NaN where depth is invalid.
    region: (H, W) filled convex hull of the table in the image (where objects may stand).
    points: (H, W, 3) float32 back-projected points, NaN where depth is invalid.
    candidates: every plane that was fitted, the chosen one among them.
    fit_pixels: flat indices (ascending) of the pixels the final least-squares fit used: the
    coefficients are exactly ``_fit_ls`` of their points, so another process that has the same
    depth can rebuild the plane from them (``plane_from_fit_pixels``) without fitting it again.
    """

    coefficients: np.ndarray
    inliers: np.ndarray
    height: np.ndarray
    region: np.ndarray
    points: np.ndarray
    candidates: list[PlaneCandidate] = field(default_factory=list)
    fit_pixels: np.ndarray | None = None

    @property
    def normal(self) -> np.ndarray:
        return self.coefficients[:3]

    def axes(self) -> tuple[np.ndarray, np.ndarray]:
        """Two unit vectors spanning the plane: coordinates of points seen from above the table."""
        n = self.normal.astype(np.float64)
        e1 = np.cross(n, [0.0, 0.0, 1.0])
        if np.linalg.norm(e1) < 1e-3:
            e1 = np.array([1.0, 0.0, 0.0])
        e1 /= np.linalg.norm(e1)
        return e1, np.cross(n, e1)


def _checked_depth(frame: Frame, cfg: GeometricConfig) -> np.ndarray:
    """Depth in metres with NaN for invalid pixels, after the frame's own checks, with its
    invalid specks filled (_fill_specks): every plane fit of a frame sees the same depth."""
    if frame.depth is None:
        raise FrameError("the geometric backend needs depth, but the frame has none")
    if frame.intrinsics is None:
        raise FrameError("the geometric backend needs camera intrinsics, but the frame has none "
                         "(give --intrinsics fx,fy,cx,cy or --camera camera.json, or publish camera_info)")
    frame.validate(need_depth=True, need_intrinsics=True)
    d = frame.depth.astype(np.float32, copy=True)
    d[~(np.isfinite(d) & (d > 0))] = np.nan
    return _fill_specks(d, cfg.fill_specks, cfg.depth_jump)


def _fill_specks(depth: np.ndarray, passes: int, jump: float) -> np.ndarray:
    """Depth with small invalid specks filled: a pixel without depth takes the mean of the valid
    pixels in its 5x5 neighbourhood when at least 8 of them are valid and they agree within the
    relative depth jump (no depth edge runs through). Each pass closes holes about 4 px wider;
    larger holes, and holes on an object's outline, stay invalid. The sensor's speckle dropout
    would otherwise break regions into fragments and leave objects without depth."""
    if passes <= 0:
        return depth
    d = depth
    kernel = np.ones((5, 5), np.uint8)
    for _ in range(passes):
        bad = ~np.isfinite(d)
        if not bad.any():
            break
        ok = (~bad).astype(np.float32)
        z = np.where(bad, 0.0, d).astype(np.float32)
        cnt = cv2.boxFilter(ok, -1, (5, 5), normalize=False, borderType=cv2.BORDER_CONSTANT)
        tot = cv2.boxFilter(z, -1, (5, 5), normalize=False, borderType=cv2.BORDER_CONSTANT)
        zmin = cv2.erode(np.where(bad, np.inf, d).astype(np.float32), kernel, borderType=cv2.BORDER_REPLICATE)
        zmax = cv2.dilate(np.where(bad, -np.inf, d).astype(np.float32), kernel,
                          borderType=cv2.BORDER_REPLICATE)
        with np.errstate(invalid="ignore"):
            fill = bad & (cnt >= 8) & (zmax - zmin <= jump * zmin)
        if not fill.any():
            break
        d = d.copy()
        d[fill] = tot[fill] / cnt[fill]
    return d


def _backproject(depth: np.ndarray, frame: Frame) -> np.ndarray:
    k = frame.intrinsics
    h, w = depth.shape
    u = (np.arange(w, dtype=np.float32) - k.cx) / k.fx
    v = (np.arange(h, dtype=np.float32) - k.cy) / k.fy
    return np.stack([depth * u[None, :], depth * v[:, None], depth], axis=-1)


def _fit_ls(pts: np.ndarray) -> np.ndarray:
    """Least-squares plane (RANSAC's 3-point plane is noisy), normal towards the camera."""
    c = pts.mean(axis=0)
    _, _, vt = np.linalg.svd(pts - c, full_matrices=False)
    n = vt[2]
    return _orient(np.array([*n, -float(n @ c)]))


def _orient(plane: np.ndarray) -> np.ndarray:
    """Normal towards the camera: the origin must have positive height."""
    plane = plane / np.linalg.norm(plane[:3])
    return -plane if plane[3] < 0 else plane


def _ransac(pts: np.ndarray, dist: float, iterations: int, rng: np.random.Generator) -> np.ndarray | None:
    """Inlier mask of the best plane through `pts` (seeded, so the same input gives the same plane
    in any thread), refined by least squares on its inliers."""
    n = len(pts)
    if n < 3:
        return None
    ev = (pts if n <= _RANSAC_EVAL else pts[rng.integers(0, n, _RANSAC_EVAL)]).astype(np.float32)
    tri = pts[rng.integers(0, n, size=(max(1, iterations), 3))]
    normals = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    norm = np.linalg.norm(normals, axis=1)
    ok = norm > 1e-9
    if not ok.any():
        return None
    normals = normals[ok] / norm[ok, None]
    d = -(normals * tri[ok, 0]).sum(1)
    counts = (np.abs(ev @ normals.T.astype(np.float32) + d[None, :].astype(np.float32)) < dist).sum(0)
    best = int(np.argmax(counts))
    inl = np.abs(pts @ normals[best] + d[best]) < dist
    for _ in range(2):  # least squares on the inliers, then the inliers of that plane
        if inl.sum() < 3:
            return None
        plane = _fit_ls(pts[inl])
        inl = np.abs(pts @ plane[:3] + plane[3]) < dist
    return inl


def _plane_candidates(sample: np.ndarray, cfg: GeometricConfig, frame: Frame, n_valid: int,
                      min_inliers: int) -> list[PlaneCandidate]:
    """Up to cfg.plane_candidates planes, each fitted on the samples the earlier ones left."""
    rng = np.random.default_rng(cfg.seed)
    k = frame.intrinsics
    pixel_area = sample[:, 2] ** 2 / (k.fx * k.fy)  # m^2 a pixel covers facing the camera
    rays = sample / np.linalg.norm(sample, axis=1, keepdims=True)
    out: list[PlaneCandidate] = []
    left = np.arange(len(sample))
    for _ in range(max(1, cfg.plane_candidates)):
        if len(left) < min_inliers:
            break
        inl = _ransac(sample[left], cfg.plane_distance, cfg.plane_iterations, rng)
        if inl is None or inl.sum() < min_inliers:
            break
        idx = left[inl]
        plane = _fit_ls(sample[idx])
        cos = np.maximum(np.abs(rays[idx] @ plane[:3]), 0.1)  # grazing views: bounded
        area = float((pixel_area[idx] / cos).sum()) * n_valid / len(sample)
        out.append(PlaneCandidate(plane, int(len(idx)), area))
        left = left[~inl]
    return out


def _choose_table(cands: list[PlaneCandidate], cfg: GeometricConfig) -> PlaneCandidate:
    """The plane objects stand on.

    Walls face the camera sideways (a camera looking down sees their normal pointing down in the
    image), so only planes whose normal points up are supports, and only those parallel to the
    one with the most points (of those that cover a table's area, if any). Among those that
    cover a table's area (table_min_area), from the lowest up, a plane replaces the current one
    when it lies a table's height above it (table_min_step) or has more points: a table standing on a floor or a carpet beats the larger
    floor, while the top of a box, a few centimetres up and smaller, does not beat the table.
    """
    up = [c for c in cands if c.normal[1] <= _UP_MAX_NY] or cands
    # The reference orientation comes from a plane of a table's size when there is one: the face
    # of a box right in front of the camera can have the most points and cover a few cm^2.
    ref = max([c for c in up if c.area >= cfg.table_min_area] or up, key=lambda c: c.count)
    cos_par = np.cos(np.deg2rad(_PARALLEL_DEG))
    group = sorted((c for c in up if c is ref or float(c.normal @ ref.normal) > cos_par),
                   key=lambda c: -c.coefficients[3])  # lowest (farthest from the camera) first
    big = [c for c in group if c.area >= cfg.table_min_area]
    if not big:
        return ref
    cur = big[0]
    for c in big[1:]:
        if float(cur.coefficients[3] - c.coefficients[3]) >= cfg.table_min_step or c.count > cur.count:
            cur = c
    return cur


def fit_table_plane(frame: Frame, cfg: GeometricConfig | None = None) -> TablePlane:
    """Find the table: see _choose_table for how it is told from a floor, a wall or a box top."""
    cfg = cfg or GeometricConfig()
    depth = _checked_depth(frame, cfg)
    pts = _backproject(depth, frame)
    valid = np.isfinite(depth)
    idx = np.flatnonzero(valid.ravel())
    min_pts = 30
    if len(idx) < 3 * min_pts:
        raise FrameError(f"no table plane found: only {len(idx)} pixels have valid depth")
    rng = np.random.default_rng(cfg.seed)
    if len(idx) > _MAX_PLANE_SAMPLES:
        idx = np.sort(rng.choice(idx, _MAX_PLANE_SAMPLES, replace=False))
    sample = pts.reshape(-1, 3)[idx].astype(np.float64)
    min_inliers = max(int(0.03 * len(sample)), min_pts)
    cands = _plane_candidates(sample, cfg, frame, int(valid.sum()), min_inliers)
    if not cands:
        raise FrameError(f"no table plane found: no plane has {min_inliers} of {len(sample)} sampled "
                         f"points within {cfg.plane_distance} m")
    plane = _choose_table(cands, cfg).coefficients
    height = (pts @ plane[:3].astype(np.float32) + np.float32(plane[3])).astype(np.float32)
    near = np.flatnonzero((valid & (np.abs(height) < cfg.plane_distance)).ravel())
    if len(near) > _MAX_PLANE_SAMPLES:
        near = near[np.linspace(0, len(near) - 1, _MAX_PLANE_SAMPLES).astype(np.int64)]
    return _plane_from(pts, valid, near, cfg, None, cands)


def _plane_from(pts: np.ndarray, valid: np.ndarray, near: np.ndarray, cfg: GeometricConfig,
                region: np.ndarray | None, cands: list[PlaneCandidate]) -> TablePlane:
    """The final least-squares plane on the pixels `near` (flat, ascending) and what follows from it."""
    plane = _fit_ls(pts.reshape(-1, 3)[near].astype(np.float64))
    height = (pts @ plane[:3].astype(np.float32) + np.float32(plane[3])).astype(np.float32)
    # Pixels min_height above the plane belong to objects, even within the RANSAC distance.
    inliers = valid & (np.abs(height) < cfg.plane_distance) & (height <= cfg.min_height)
    region = _table_region(inliers) if region is None else region
    return TablePlane(plane, inliers, height, region, pts, cands, near)


def plane_from_fit_pixels(frame: Frame, cfg: GeometricConfig, fit_pixels: np.ndarray,
                          region: np.ndarray) -> TablePlane:
    """The TablePlane fit_table_plane gave for this frame, from its fit pixels and table region
    (TablePlane.fit_pixels, .region): the same coefficients, bit for bit, at the cost of one
    least-squares fit instead of the RANSAC search. ``candidates`` is empty."""
    depth = _checked_depth(frame, cfg)
    if region.shape != depth.shape:
        raise FrameError(f"table region is {region.shape[1]}x{region.shape[0]} but the frame is "
                         f"{depth.shape[1]}x{depth.shape[0]}")
    valid = np.isfinite(depth)
    near = np.asarray(fit_pixels, np.int64)
    if len(near) < 3 or not valid.ravel()[near].all():
        raise FrameError("the table plane's fit pixels do not match this frame's valid depth")
    return _plane_from(_backproject(depth, frame), valid, near, cfg, np.asarray(region, bool), [])


def _table_region(inliers: np.ndarray) -> np.ndarray:
    """Filled convex hull of the sizeable patches of plane pixels (objects cut the table
    into several patches; specks where the plane crosses other surfaces are left out)."""
    m = cv2.morphologyEx(inliers.astype(np.uint8), cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
    n, lab, stats, _ = cv2.connectedComponentsWithStats(m, connectivity=8)
    region = np.zeros(inliers.shape, np.uint8)
    if n <= 1:
        return region.astype(bool)
    areas = stats[1:, cv2.CC_STAT_AREA]
    keep = 1 + np.flatnonzero(areas >= max(0.1 * areas.max(), min(0.002 * inliers.size, areas.max())))
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


def _downsample_points(pts: np.ndarray, s: int, jump: float) -> np.ndarray:
    """(ceil(H/s), ceil(W/s), 3) points: the mean of each s x s block where its valid depths agree
    (within the relative depth jump; averaging lowers the noise the normals see), else the
    block's centre pixel (a block across a depth edge must not make a flying point)."""
    if s == 1:
        return pts
    H, W, _ = pts.shape
    hb, wb = -(-H // s), -(-W // s)
    pad = np.full((hb * s, wb * s, 3), np.nan, np.float32)
    pad[:H, :W] = pts
    z = pad[..., 2]
    ok = np.isfinite(z)
    kernel = np.ones((s, s), np.uint8)
    anchor = (0, 0)
    zmin = cv2.erode(np.where(ok, z, np.inf).astype(np.float32), kernel, anchor=anchor,
                     borderType=cv2.BORDER_REPLICATE)[::s, ::s]
    zmax = cv2.dilate(np.where(ok, z, -np.inf).astype(np.float32), kernel, anchor=anchor,
                      borderType=cv2.BORDER_REPLICATE)[::s, ::s]
    cnt = cv2.resize(ok.astype(np.float32), (wb, hb), interpolation=cv2.INTER_AREA)
    total = cv2.resize(np.where(ok[..., None], pad, 0).astype(np.float32), (wb, hb),
                       interpolation=cv2.INTER_AREA)
    mean = total / np.maximum(cnt, 1e-6)[..., None]
    with np.errstate(invalid="ignore"):
        good = (2 * cnt >= 1.0) & (zmax - zmin <= jump * zmin)
    centre = pad[s // 2::s, s // 2::s][:hb, :wb]
    return np.where(good[..., None], mean, centre).astype(np.float32)


def _smooth_over(x: np.ndarray, mask: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian smoothing of x over the mask only (normalised convolution); 0 outside it."""
    w = mask.astype(np.float32)
    num = cv2.GaussianBlur(np.where(mask, x, 0).astype(np.float32), (0, 0), sigma)
    den = cv2.GaussianBlur(w, (0, 0), sigma)
    return np.where(mask, num / np.maximum(den, 1e-6), 0.0).astype(np.float32)


def _hill_basins(h: np.ndarray, fg: np.ndarray) -> np.ndarray:
    """Steepest-ascent basins of h over fg: each pixel follows its highest 8-neighbour up to a
    local maximum; pixels sharing a maximum form a basin. (H, W) int64 ids (the maximum's flat
    index), -1 off fg. Ties break towards the lower index, so the result is deterministic."""
    hh, ww = h.shape
    idx = np.arange(hh * ww, dtype=np.int64).reshape(hh, ww)
    val = np.where(fg, h, -np.inf)
    pv = np.pad(val, 1, constant_values=-np.inf)
    pi = np.pad(idx, 1, constant_values=-1)
    best, bestv = idx.copy(), val.copy()
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            if dy == 0 and dx == 0:
                continue
            v = pv[1 + dy:1 + dy + hh, 1 + dx:1 + dx + ww]
            better = v > bestv
            best[better] = pi[1 + dy:1 + dy + hh, 1 + dx:1 + dx + ww][better]
            bestv[better] = v[better]
    parent = best.ravel()
    for _ in range(64):
        nxt = parent[parent]
        if np.array_equal(nxt, parent):
            break
        parent = nxt
    return np.where(fg.ravel(), parent, -1).reshape(hh, ww)


def _max_by_label(values: np.ndarray, labels: np.ndarray, n: int) -> np.ndarray:
    """(n,) maximum of values per label 0..n-1 (-inf where a label has none)."""
    out = np.full(n, -np.inf)
    present = np.unique(labels)
    out[present] = ndimage.maximum(values, labels, present)
    return out


def _pair_keys(a: np.ndarray, b: np.ndarray, n: int) -> np.ndarray:
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    return lo.astype(np.int64) * n + hi


def _plan_view(p: np.ndarray, h: np.ndarray, axes: tuple[np.ndarray, np.ndarray],
               limit: int = 300) -> np.ndarray:
    """Up to `limit` (evenly subsampled) of a region's points with a finite height, seen from
    above the table: (k, 4) table-plane u, v, height and camera depth, float64."""
    ok = np.isfinite(h)
    p, h = p[ok].astype(np.float64), h[ok].astype(np.float64)
    if len(p) > limit:
        idx = np.linspace(0, len(p) - 1, limit).astype(int)
        p, h = p[idx], h[idx]
    return np.stack([p @ axes[0], p @ axes[1], h, p[:, 2]], 1)


@dataclass
class _Revolution:
    """An upright surface of revolution fitted to table-plane points (u, v, height): the axis
    (cu, cv) and R(h)^2 = a + b h + c h^2 over the fitted height range."""

    cu: float
    cv: float
    coef: np.ndarray  # a, b, c
    h_lo: float
    h_hi: float
    radius: float  # median radius of the fitted points
    err: np.ndarray  # radius error of every fitted point, metres

    def radius_at(self, h: np.ndarray) -> np.ndarray:
        h = np.clip(h, self.h_lo, self.h_hi)
        return np.sqrt(np.maximum(self.coef[0] + self.coef[1] * h + self.coef[2] * h * h, 0.0))

    def rho(self, f: np.ndarray) -> np.ndarray:
        return np.hypot(f[:, 0] - self.cu, f[:, 1] - self.cv)

    def coverage(self, f: np.ndarray) -> float:
        """Degrees of the circle around the axis that f's points cover (in 30 degree bins)."""
        ang = np.arctan2(f[:, 1] - self.cv, f[:, 0] - self.cu)
        bins = np.bincount(((ang + np.pi) / (np.pi / 6)).astype(int) % 12, minlength=12)
        return 30.0 * float((bins >= max(2, 0.02 * len(f))).sum())


def _fit_revolution(f: np.ndarray) -> _Revolution | None:
    """Least-squares fit of (u-cu)^2 + (v-cv)^2 = R(h)^2, R^2 quadratic in h (linear in its
    unknowns), twice: the worst 20 % of points are dropped for the second fit (depth bleeds at
    rims and creases). None if it is degenerate or no object's size (radius 1.5 to 20 cm)."""
    if len(f) < 10:
        return None
    u, v, h = f[:, 0], f[:, 1], f[:, 2]
    A = np.stack([2 * u, 2 * v, np.ones_like(u), h, h * h], 1)
    y = u * u + v * v
    h_lo, h_hi = (float(x) for x in np.percentile(h, [2, 98]))
    keep = np.ones(len(f), bool)
    for _ in range(2):
        sol, *_ = np.linalg.lstsq(A[keep], y[keep], rcond=None)
        cu, cv = float(sol[0]), float(sol[1])
        coef = sol[2:] + np.array([cu * cu + cv * cv, 0.0, 0.0])
        rev = _Revolution(cu, cv, coef, h_lo, h_hi, 0.0, np.zeros(0))
        rho = rev.rho(f)
        err = np.abs(rho - rev.radius_at(h))
        keep = err <= np.percentile(err, 80)
    rev.radius, rev.err = float(np.median(rho)), err
    if not 0.015 <= rev.radius <= 0.2 or not np.isfinite(err).all():
        return None
    return rev


def _hollow_tolerance(rev: _Revolution, tol: float, depth: float) -> float:
    """Radius error allowed: a share of the radius, at least the sensor's noise at that depth."""
    return max(0.003, 0.009 * depth, tol * rev.radius)


def _one_revolution(fa: np.ndarray, fb: np.ndarray, tol: float, depth: float) -> bool:
    """Do two point sets lie on one upright surface of revolution (80 % of each set's points within
    the tolerance of the radius)?"""
    rev = _fit_revolution(np.concatenate([fa, fb]))
    if rev is None:
        return False
    lim = _hollow_tolerance(rev, tol, depth)
    return bool(np.percentile(rev.err[:len(fa)], 80) <= lim and np.percentile(rev.err[len(fa):], 80) <= lim)


def _hollow_fit(f: np.ndarray, tol: float, depth: float, min_cover: float) -> _Revolution | None:
    """f's own surface of revolution, if f is the wall of a hollow object: 80 % of its points on
    it, around at least min_cover degrees of its axis (so that the axis is pinned down)."""
    rev = _fit_revolution(f)
    if rev is None or np.percentile(rev.err, 80) > _hollow_tolerance(rev, tol, depth):
        return None
    return rev if rev.coverage(f) >= min_cover else None


def _inside(rev: _Revolution, f: np.ndarray, tol: float, depth: float, floor: bool = True) -> np.ndarray:
    """Which of f's points lie inside rev's wall (within the tolerance) and not above its top; with
    floor=False also not below its wall's foot (an object under a sphere or a mug is not in it)."""
    lim = _hollow_tolerance(rev, tol, depth)
    ok = (rev.rho(f) <= rev.radius_at(f[:, 2]) + lim) & (f[:, 2] <= rev.h_hi + lim)
    return ok if floor else ok & (f[:, 2] >= rev.h_lo - lim)


def _same_chroma(piece: np.ndarray, lab: np.ndarray, pa: np.ndarray, pb: np.ndarray, n: int,
                 max_delta: float, min_chroma: float, max_hue: float = 0.0) -> np.ndarray:
    """Per pair of pieces (pa[i], pb[i]): both clearly coloured (mean a*b* chroma at least min_chroma)
    and of one colour (mean a*, b* within max_delta). Light and shade change a surface's lightness
    far more than its hue and saturation: the lit and shaded faces of a uniformly coloured object
    (a toy brick's studs, a bottle's curve) that a colour edge cut apart meet in concave junctions
    too, and only their colour says they belong together. Greys, whites and blacks all have a*b*
    near 0, so their pieces are left to the junction test. max_hue > 0: pieces whose mean hue
    angles (in the a*b* plane) agree within max_hue degrees are of one colour too: a face lit to
    near the sensor's white loses chroma, not hue (0004's yellow brick: studs at chroma 26, its
    shaded side at 59, 14 degrees of hue apart). lab: the float CIELAB image."""
    flat = piece.ravel()
    cnt = np.maximum(np.bincount(flat, minlength=n), 1)
    ma = np.bincount(flat, weights=lab[..., 1].ravel(), minlength=n) / cnt
    mb = np.bincount(flat, weights=lab[..., 2].ravel(), minlength=n) / cnt
    chroma = np.hypot(ma, mb)
    same = np.hypot(ma[pa] - ma[pb], mb[pa] - mb[pb]) < max_delta
    if max_hue > 0:
        hue = np.degrees(np.arctan2(mb, ma))
        same |= np.abs((hue[pa] - hue[pb] + 180.0) % 360.0 - 180.0) < max_hue
    return same & (np.minimum(chroma[pa], chroma[pb]) >= min_chroma)


class _UnionFind:
    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, a: int) -> int:
        p = self.parent
        while p[a] != a:
            p[a] = p[p[a]]
            a = p[a]
        return a


# Packed regions (pack_regions): one uint16 per pixel, so one frame's regions and table plane
# cross a process boundary as a mono16 image and the segmenter there does not compute them again.
REGION_ID_MASK = (1 << 14) - 1  # bits 0-13: the region id (0 = table / background)
TABLE_REGION_BIT = 1 << 14  # the table's image region (TablePlane.region)
PLANE_FIT_BIT = 1 << 15  # a pixel the table plane was fitted on (TablePlane.fit_pixels)


class _Segments:
    """One frame's region structure (see the module docstring): self.labels is the (H, W) int32
    map of object regions 1..N at frame resolution, 0 for table and background."""

    def __init__(self, frame: Frame, cfg: GeometricConfig, packed: np.ndarray | None = None) -> None:
        self.cfg = cfg
        self.frame = frame
        self._flat_ids: set[int] = set()  # working-resolution ids of the regions _flat_objects added
        self._top_rows: np.ndarray | None = None  # _table_top_rows, once per frame
        self._insides: dict[int, np.ndarray | None] = {}  # _hollow_inside per region, once per frame
        H, W = frame.height, frame.width
        if packed is not None:
            packed = _check_packed(packed, H, W)
            self.plane = plane_from_fit_pixels(frame, cfg, np.flatnonzero(packed & PLANE_FIT_BIT),
                                               (packed & TABLE_REGION_BIT) != 0)
        else:
            self.plane = fit_table_plane(frame, cfg)
        self.min_pixels = max(10, int(round(cfg.min_region_pixels * H * W / _REF_PIXELS)))
        self.valid = np.isfinite(self.plane.height)
        self.above = self.valid & (self.plane.height > cfg.min_height) & (self.plane.height < cfg.max_height)
        s = max(1, int(round(min(H, W) / _WORK_SHORT_SIDE)))
        self.stride = s
        self.labels_shape = (H, W)
        if packed is not None:  # ids 1..N in first-appearance order already (_renumber)
            self.labels = (packed & REGION_ID_MASK).astype(np.int32)
            self._slices = ndimage.find_objects(self.labels)
            return
        work = self._segment_work(s)
        # Back to frame resolution: each pixel takes its working cell's region, and only pixels
        # that rise above the table keep it (holes are filled per mask in mask_of).
        self.labels, self._slices = self._renumber(self._to_full(work, s))

    def packed(self) -> np.ndarray | None:
        """These regions and table plane as one (H, W) uint16 map (REGION_ID_MASK, TABLE_REGION_BIT,
        PLANE_FIT_BIT); None when there are too many regions for 14 bits."""
        n = int(self.labels.max()) if self.labels.size else 0
        if n > REGION_ID_MASK or self.plane.fit_pixels is None:
            return None
        out = self.labels.astype(np.uint16)
        out[self.plane.region] |= TABLE_REGION_BIT
        out.ravel()[self.plane.fit_pixels] |= PLANE_FIT_BIT
        return out

    def _to_full(self, work: np.ndarray, s: int) -> np.ndarray:
        """Working-resolution regions at frame resolution: each pixel takes its cell's region;
        pixels on or below the table drop it, and above-table pixels next to a region (cut off by
        the coarser grid) join it."""
        H, W = self.labels_shape
        rows = np.minimum(np.arange(H) // s, work.shape[0] - 1)
        cols = np.minimum(np.arange(W) // s, work.shape[1] - 1)
        full = work.astype(np.int32)[rows[:, None], cols[None, :]]
        if s == 1:
            return full
        low = self.valid & (self.plane.height <= self.cfg.min_height)
        if self._flat_ids:
            low &= ~np.isin(full, np.fromiter(self._flat_ids, np.int32))
        full[low] = 0
        if full.max() < np.iinfo(np.uint16).max:
            grown = full.astype(np.uint16)
            kernel = np.ones((3, 3), np.uint8)
            for _ in range(s):
                grown = cv2.dilate(grown, kernel)
            fill = (full == 0) & self.above & (grown > 0)
            full[fill] = grown[fill]
        return full

    # ------------------------------------------------------------------ working resolution
    def _segment_work(self, s: int) -> np.ndarray:
        cfg = self.cfg
        pts = _downsample_points(self.plane.points, s, cfg.depth_jump)
        plane = self.plane.coefficients
        height = (pts @ plane[:3].astype(np.float32) + np.float32(plane[3])).astype(np.float32)
        hw, ww = height.shape
        depth = pts[..., 2]
        valid = np.isfinite(depth)
        above = valid & (height > cfg.min_height) & (height < cfg.max_height)
        inliers = valid & (np.abs(height) < cfg.plane_distance) & (height <= cfg.min_height)
        rgb = cv2.resize(self.frame.rgb, (ww, hw), interpolation=cv2.INTER_AREA) if s > 1 else self.frame.rgb
        npx = hw * ww
        ref = min(self.frame.height, self.frame.width) / 480  # pixel sizes are given at 640x480
        min_px = max(5, int(round(cfg.min_region_pixels * npx / _REF_PIXELS)))
        lab = None
        if cfg.colour_weight > 0:
            blur = cv2.GaussianBlur(rgb, (3, 3), 0)
            lab = cv2.cvtColor(blur.astype(np.float32) / 255.0, cv2.COLOR_RGB2LAB)
        step = max(1, round(cfg.normal_step / s))
        normals = _normals(pts, step) if cfg.concave_angle > 0 else None
        jspan = max(2, round(cfg.junction_px * ref / s))
        if lab is not None:
            # The junction test looks across a wider span on smoothed normals: depth noise of a
            # few millimetres turns pixel-scale normals by tens of degrees.
            sm = np.stack([_smooth_over(pts[..., i], above, jspan / 2) for i in range(3)], -1)
            sm = np.where(above[..., None], sm, pts)
            jnormals = _normals(sm, max(1, jspan // 2))
        ids = np.arange(npx).reshape(hw, ww)
        # Every link between two above-table neighbours: geometry keeps it (no depth jump, no
        # concave crease), colour keeps it (no strong colour edge), and, at a wider span, whether
        # it crosses a concave junction (for re-joining pieces that colour alone separated).
        la_, lb_, geo_, col_, cav_ = [], [], [], [], []
        for axis in (0, 1):
            a = (slice(None, -1), slice(None)) if axis == 0 else (slice(None), slice(None, -1))
            b = (slice(1, None), slice(None)) if axis == 0 else (slice(None), slice(1, None))
            both = above[a] & above[b]
            da, db = depth[a], depth[b]
            with np.errstate(invalid="ignore"):
                geo = np.abs(da - db) <= cfg.depth_jump * np.minimum(da, db)
            if cfg.concave_angle > 0:
                geo &= ~self._concave(pts, normals, axis, step, cfg.concave_angle)
            col = np.zeros(geo.shape, np.float32)
            cav = np.zeros_like(geo)
            if lab is not None:
                l1, l2 = _span(lab, axis, 1)
                col = np.linalg.norm(l1 - l2, axis=-1) * cfg.colour_weight
                cav = self._concave(sm, jnormals, axis, jspan, cfg.junction_angle) | \
                    self._occluding(pts, axis, jspan)
            la_.append(ids[a][both])
            lb_.append(ids[b][both])
            geo_.append(geo[both])
            col_.append(col[both])
            cav_.append(cav[both])
        la, lb = np.concatenate(la_), np.concatenate(lb_)
        geo, col, cav = np.concatenate(geo_), np.concatenate(col_), np.concatenate(cav_)
        comp = self._components(la[geo], lb[geo], above)
        hs = _smooth_over(np.nan_to_num(height), above, 1.0)
        regions = self._split_hills(comp, hs, above, la[geo], lb[geo])
        if lab is not None:
            regions = self._split_colour(regions, la, lb, geo, col, cav, above, blur, lab, min_px)
            big = self._oversized(regions, hs)
            if cfg.split_box_px > 0 and big.any():
                regions = self._split_colour(regions, la, lb, geo, col, cav, above, blur, lab, min_px, only=big)
        regions = self._join_parts(regions, pts, hs, rgb)
        regions = self._absorb_slivers(regions, min_px)
        if cfg.hollow_fit > 0:
            regions = self._join_hollow(regions, pts, height, min_px)
        regions = self._drop_small_and_flat(regions, height, min_px)
        if cfg.bump_contrast > 0 and lab is not None:
            regions = self._drop_bumps(regions, height, lab, valid, cfg.bump_px * npx / _REF_PIXELS)
        if cfg.halo_px > 0:
            band = max(1, round(cfg.halo_px * ref / s))
            regions = self._trim_halo(regions, cv2.GaussianBlur(rgb, (3, 3), 0), inliers, band, min_px)
        if cfg.flat_contrast > 0:
            regions = self._flat_objects(regions, rgb, lab, height, valid, min_px)
        return regions

    @staticmethod
    def _concave(pts: np.ndarray, normals: np.ndarray, axis: int, step: int, angle: float) -> np.ndarray:
        """Links that cross a concave crease: normals `step` pixels to either side turn
        against the direction of travel by more than `angle` degrees."""
        na, nb = _span(normals, axis, step - 1)
        pa, pb = _span(pts, axis, step - 1)
        cos = (na * nb).sum(-1)
        with np.errstate(invalid="ignore"):
            turn = ((nb - na) * (pb - pa)).sum(-1)
            return (cos < np.cos(np.deg2rad(angle))) & (turn < 0)

    @staticmethod
    def _occluding(pts: np.ndarray, axis: int, step: int) -> np.ndarray:
        """Links across an occluding edge that the sensor smoothed into a ramp: the points `step`
        pixels to either side lie more than a centimetre apart and nearly along the viewing ray
        (within 25 degrees), as no surface of one object seen from the front does."""
        pa, pb = _span(pts, axis, step - 1)
        d = pb - pa
        ray = pa + pb
        with np.errstate(invalid="ignore", divide="ignore"):
            dn = np.linalg.norm(d, axis=-1)
            cos = np.abs((d * ray).sum(-1)) / (dn * np.linalg.norm(ray, axis=-1))
            return (dn > 0.01) & (cos > np.cos(np.deg2rad(25.0)))

    @staticmethod
    def _components(r: np.ndarray, c: np.ndarray, above: np.ndarray) -> np.ndarray:
        """Connected components of the above-table pixels over the links (r, c); 0 elsewhere."""
        npx = above.size
        graph = coo_matrix((np.ones(len(r), np.uint8), (r, c)), shape=(npx, npx))
        _, comp = connected_components(graph, directed=False)
        comp = comp.reshape(above.shape).astype(np.int64) + 1
        comp[~above] = 0
        return comp

    def _split_colour(self, regions: np.ndarray, la: np.ndarray, lb: np.ndarray, geo: np.ndarray,
                      col: np.ndarray, cav: np.ndarray, above: np.ndarray, rgb: np.ndarray, lab: np.ndarray,
                      min_px: int, only: np.ndarray | None = None) -> np.ndarray:
        """Split regions at colour edges, then join the pieces back unless their common border is
        a concave junction (or a depth jump): the print on a box or a can is convex or flat
        across its colour edges, while two objects pressed together meet in a concave corner,
        however much the sensor blurs it. Pieces of one clear colour join whatever their border
        (colour_join: shaded faces of one object, _same_chroma). Pieces only join within the region
        they came from.

        Pieces are the areas that strong colour edges (colour_edge) enclose; with `only` (a flag
        per region) the flagged regions are cut into colour superpixels instead (a colour
        watershed from a grid of seeds), whose borders follow the colour edges even where an
        edge has gaps, so that every place where one object meets the next is tested."""
        if only is None:
            keep = geo & (col <= self.cfg.colour_edge)
            sp = self._components(la[keep], lb[keep], above)
        else:
            sp = self._superpixels(regions, above, rgb, only)
            if sp is None:
                return regions
        key = regions * (int(sp.max()) + 1) + sp
        key[~above] = 0
        _, piece = np.unique(key, return_inverse=True)
        piece = piece.reshape(regions.shape)
        reg = regions.ravel()
        same = reg[la] == reg[lb]
        # Crumbs: pieces too small to be an object, and slivers with hardly any pixel inside them
        # (the colour test cuts every link of a strip one or two pixels wide, such as the band
        # along a colour edge or a face seen at a grazing angle). First each joins, once, the
        # neighbour it shares most border with (they would otherwise bridge two objects, or keep
        # the two sides of a colour edge from ever meeting); then the pieces left face the test.
        n = int(piece.max()) + 1
        inner = np.zeros(piece.shape, bool)
        c0 = piece[1:-1, 1:-1]
        inner[1:-1, 1:-1] = ((c0 == piece[:-2, 1:-1]) & (c0 == piece[2:, 1:-1])
                             & (c0 == piece[1:-1, :-2]) & (c0 == piece[1:-1, 2:]))
        size = np.bincount(piece.ravel(), minlength=n)
        crumb = (size < min_px) | (np.bincount(piece[inner], minlength=n) < 0.25 * size)
        crumb[0] = False
        uf = _UnionFind(n)
        pairs = self._pairs(piece, la, lb, same, n)
        if pairs is None:
            return regions
        uk, total, _ = pairs
        pa_u, pb_u = uk // n, uk % n
        attached = ~crumb
        order = np.argsort(-total, kind="stable")
        for _ in range(3):  # crumbs next to crumbs only attach once their neighbour has
            for idx in order:
                for x, y in ((int(pa_u[idx]), int(pb_u[idx])), (int(pb_u[idx]), int(pa_u[idx]))):
                    if not attached[x] and attached[y]:
                        uf.parent[uf.find(x)] = uf.find(y)
                        attached[x] = True
            if attached.all():
                break
        root = np.array([uf.find(i) for i in range(n)])
        piece = root[piece]
        # The junction test between the pieces now left. Every link along a common border votes:
        # a depth jump or a crease counts against joining as much as a concave junction does.
        bad = cav | ~geo
        pairs = self._pairs(piece, la, lb, same, n, bad)
        if pairs is None:
            return np.where(above, piece, 0)
        uk, total, against = pairs
        ok = against < self.cfg.junction_fraction * total
        if self.cfg.colour_join > 0:
            ok |= _same_chroma(piece, lab, uk // n, uk % n, n, self.cfg.colour_join, self.cfg.colour_join_chroma,
                               self.cfg.colour_join_hue)
        for kk in uk[ok]:
            a, b = uf.find(int(kk // n)), uf.find(int(kk % n))
            if a != b:
                uf.parent[b] = a
        root = np.array([uf.find(i) for i in range(n)])
        out = root[piece]
        out[~above] = 0
        return out

    @staticmethod
    def _pairs(piece: np.ndarray, la: np.ndarray, lb: np.ndarray, same: np.ndarray, n: int,
               bad: np.ndarray | None = None) -> tuple | None:
        """Neighbouring pieces (links within one region): pair keys, links per pair, and of those
        the `bad` ones."""
        flat = piece.ravel()
        pa, pb = flat[la], flat[lb]
        sel = (pa != pb) & same & (pa > 0) & (pb > 0)
        if not sel.any():
            return None
        k = _pair_keys(pa[sel], pb[sel], n)
        uk, inv = np.unique(k, return_inverse=True)
        total = np.bincount(inv)
        against = np.bincount(inv, weights=bad[sel].astype(np.float64)) if bad is not None else None
        return uk, total, against

    def _superpixels(self, regions: np.ndarray, above: np.ndarray, rgb: np.ndarray,
                     only: np.ndarray) -> np.ndarray | None:
        """Colour watershed superpixels inside the flagged regions (0 elsewhere)."""
        g = max(3, int(round(self.cfg.superpixel_px * min(self.frame.height, self.frame.width) / 480
                             / self.stride)))
        hh, ww = regions.shape
        inside = above & only[regions]
        markers = np.zeros((hh, ww), np.int32)
        ys, xs = np.mgrid[g // 2:hh:g, g // 2:ww:g]
        ys, xs = ys.ravel(), xs.ravel()
        on = inside[ys, xs]
        if on.sum() < 2:
            return None
        markers[ys[on], xs[on]] = np.arange(1, int(on.sum()) + 1, dtype=np.int32)
        cv2.watershed(np.ascontiguousarray(rgb), markers)
        sp = np.maximum(markers, 0)
        # Watershed lines (-1) take a neighbouring superpixel.
        line = inside & (sp == 0)
        if line.any():
            grown = cv2.dilate(sp.astype(np.float32), np.ones((3, 3), np.uint8)).astype(np.int32)
            sp[line] = grown[line]
        sp[~inside] = 0
        return sp

    def _oversized(self, regions: np.ndarray, hs: np.ndarray) -> np.ndarray:
        """Per region id: its box exceeds split_box_px (at 640x480) in height or width, but not
        twice that, and it does not rise to near max_height: a wall or furniture behind the
        table would only fall apart into object-sized pieces."""
        H, W = self.labels_shape
        lim_h = self.cfg.split_box_px * H / 480 / self.stride
        lim_w = self.cfg.split_box_px * W / 640 / self.stride
        out = np.zeros(int(regions.max()) + 1, bool)
        for k, sl in enumerate(ndimage.find_objects(regions), start=1):
            if sl is None:
                continue
            bh, bw = sl[0].stop - sl[0].start, sl[1].stop - sl[1].start
            if (bh > lim_h or bw > lim_w) and bh <= 2 * lim_h and bw <= 2 * lim_w:
                out[k] = np.percentile(hs[sl][regions[sl] == k], 95) < 0.8 * self.cfg.max_height
        return out

    def _split_hills(self, comp: np.ndarray, hs: np.ndarray, above: np.ndarray,
                     r: np.ndarray, c: np.ndarray) -> np.ndarray:
        """Regions -> hills: basins of the smoothed height inside each region, merged in order of
        falling saddle height unless the lower peak stands clearly above the saddle (a valley
        of split_valley, or split_valley_ratio of that peak's height, at least 4 mm)."""
        cfg = self.cfg
        basin = _hill_basins(hs, above)
        key = comp * (basin.size + 1) + basin + 1
        key[~above] = 0
        uniq, piece = np.unique(key, return_inverse=True)
        piece = piece.reshape(comp.shape)  # 0 = background (key 0 sorts first)
        n = len(uniq)
        if n <= 2:
            return (piece > 0).astype(np.int64)
        flat = piece.ravel()
        peak = _max_by_label(hs.ravel(), flat, n)
        pa, pb = flat[r], flat[c]
        cross = (pa != pb) & (pa > 0) & (pb > 0)
        if cross.any():
            sad = np.minimum(hs.ravel()[r[cross]], hs.ravel()[c[cross]])
            k = _pair_keys(pa[cross], pb[cross], n)
            order = np.lexsort((-sad, k))
            k, sad = k[order], sad[order]
            first = np.r_[True, k[1:] != k[:-1]]
            pk, ps = k[first], sad[first]  # the highest pass between each pair
            uf = _UnionFind(n)
            top = peak.tolist()
            for i in np.argsort(-ps, kind="stable"):
                a, b = uf.find(int(pk[i] // n)), uf.find(int(pk[i] % n))
                if a == b:
                    continue
                low = min(top[a], top[b])
                valley = low - float(ps[i])
                if valley >= max(0.004, min(cfg.split_valley, cfg.split_valley_ratio * low)):
                    continue
                uf.parent[b] = a
                top[a] = max(top[a], top[b])
            root = np.array([uf.find(i) for i in range(n)])
            piece = root[piece]
        piece[~above] = 0
        return piece

    def _join_parts(self, regions: np.ndarray, pts: np.ndarray, hs: np.ndarray,
                    rgb: np.ndarray) -> np.ndarray:
        """Join the inside of a hollow object to it. Its rim occludes the inside (a depth jump) and
        the inside meets its walls in a concave crease, so the region steps above cut it off:

        - enclosed: a region mostly surrounded by one other region (enclosed_fraction of its
          border) and behind it, or much lower than it (the bottom of a bowl);
        - seen through the opening: a region behind another along their common border, where
          that border is the other's top (its rim), whose own top is level with that rim, no
          wider than it, of a similar colour, and which together with it is hardly wider in
          the table plane than it alone (a separate object behind would add its own width).
        """
        frac = self.cfg.enclosed_fraction
        if frac <= 0:
            return regions
        depth = pts[..., 2]
        lab = cv2.cvtColor(rgb, cv2.COLOR_RGB2LAB).astype(np.float32)
        n_plane, d_plane = self.plane.normal.astype(np.float32), np.float32(self.plane.coefficients[3])
        e1, e2 = (e.astype(np.float32) for e in self.plane.axes())
        for _ in range(3):
            n = int(regions.max()) + 1
            if n <= 2:
                return regions
            a = np.concatenate([regions[:-1].ravel(), regions[:, :-1].ravel()])
            b = np.concatenate([regions[1:].ravel(), regions[:, 1:].ravel()])
            da = np.concatenate([depth[:-1].ravel(), depth[:, :-1].ravel()])
            db = np.concatenate([depth[1:].ravel(), depth[:, 1:].ravel()])
            ha = np.concatenate([hs[:-1].ravel(), hs[:, :-1].ravel()])
            hb = np.concatenate([hs[1:].ravel(), hs[:, 1:].ravel()])
            diff = a != b
            a, b, da, db, ha, hb = a[diff], b[diff], da[diff], db[diff], ha[diff], hb[diff]
            # Both directions: (region, neighbour, region behind?, neighbour's height there).
            src, dst = np.concatenate([a, b]), np.concatenate([b, a])
            with np.errstate(invalid="ignore"):
                behind = np.concatenate([da > db, db > da])
            hdst = np.concatenate([hb, ha])
            # Links to pixels without depth say nothing about what surrounds a region.
            known = np.concatenate([np.isfinite(db), np.isfinite(da)])
            perim = np.bincount(src[known], minlength=n)
            sel = (src > 0) & (dst > 0)
            if not sel.any():
                return regions
            k = src[sel] * n + dst[sel]
            uk, inv = np.unique(k, return_inverse=True)
            cnt = np.bincount(inv)
            nbehind = np.bincount(inv, weights=behind[sel].astype(np.float64))
            hmed = np.bincount(inv, weights=hdst[sel]) / cnt
            top = _max_by_label(hs.ravel(), regions.ravel(), n)
            slices = ndimage.find_objects(regions)
            stats: dict[int, tuple | None] = {}
            mapping = np.arange(n)
            changed = False
            for idx in np.argsort(-cnt, kind="stable"):
                inner, outer = int(uk[idx] // n), int(uk[idx] % n)
                if mapping[outer] != outer or mapping[inner] != inner or cnt[idx] < 3:
                    continue
                is_behind = nbehind[idx] >= 0.6 * cnt[idx]
                enclosed = (cnt[idx] >= frac * max(perim[inner], 1)
                            and (is_behind or top[inner] < 0.5 * top[outer]))
                through = (is_behind and hmed[idx] >= 0.75 * top[outer]
                           and abs(top[inner] - top[outer]) <= max(0.01, 0.15 * top[outer]))
                if through and not enclosed:
                    for r in (inner, outer):
                        if r not in stats:
                            stats[r] = self._region_stats(regions, r, slices[r - 1], pts, lab, n_plane,
                                                          d_plane, e1, e2)
                    through = self._same_object(stats[inner], stats[outer])
                if enclosed or through:
                    mapping[inner] = outer
                    changed = True
            if not changed:
                break
            regions = mapping[regions]
        return regions

    def _join_hollow(self, regions: np.ndarray, pts: np.ndarray, height: np.ndarray,
                     min_px: int) -> np.ndarray:
        """Join the pieces of one upright hollow object that the steps above cut apart: a mug's
        inside and outside (its rim occludes the inside), a bowl's walls (the concave crease of
        its inside). Such an object is a surface of revolution about an axis normal to the table,
        so the points of all its pieces lie at one radius per height from that axis; two separate
        objects do not share an axis, and straight faces fit no radius."""
        n = int(regions.max()) + 1
        if n <= 2:
            return regions
        # Neighbours across a gap of up to 2 pixels: the creases leave thin unlabelled seams.
        a = np.concatenate([regions[:-d].ravel() for d in (1, 2, 3)] + [regions[:, :-d].ravel() for d in (1, 2, 3)])
        b = np.concatenate([regions[d:].ravel() for d in (1, 2, 3)] + [regions[:, d:].ravel() for d in (1, 2, 3)])
        sel = (a != b) & (a > 0) & (b > 0)
        if not sel.any():
            return regions
        uk, cnt = np.unique(_pair_keys(a[sel], b[sel], n), return_counts=True)
        axes = self.plane.axes()
        sizes = np.bincount(regions.ravel(), minlength=n)
        slices = ndimage.find_objects(regions)
        feet: dict[int, np.ndarray] = {}  # root -> _plan_view of its points
        walls: dict[int, _Revolution | None] = {}
        tol, cover = self.cfg.hollow_fit, self.cfg.hollow_cover

        def foot(k: int) -> np.ndarray:
            if k not in feet:
                sl = slices[k - 1]
                m = regions[sl] == k
                feet[k] = _plan_view(pts[sl][m], height[sl][m], axes)
            return feet[k]

        def wall(k: int, f: np.ndarray, z: float) -> _Revolution | None:
            if k not in walls:
                walls[k] = _hollow_fit(f[:, :3], tol, z, cover)
            return walls[k]

        uf = _UnionFind(n)
        for idx in np.argsort(-cnt, kind="stable"):
            if cnt[idx] < 3:
                break
            ra, rb = uf.find(int(uk[idx] // n)), uf.find(int(uk[idx] % n))
            if ra == rb or sizes[ra] < min_px or sizes[rb] < min_px:
                continue
            fa, fb = foot(ra), foot(rb)
            if len(fa) < 10 or len(fb) < 10:
                continue
            z = float(np.median(np.concatenate([fa[:, 3], fb[:, 3]])))
            ga, gb = fa[:, :3], fb[:, :3]
            # One wall seen in pieces shares heights; objects stacked on one axis do not.
            la, ha_ = np.percentile(ga[:, 2], [10, 90])
            lb, hb_ = np.percentile(gb[:, 2], [10, 90])
            shared = min(ha_, hb_) - max(la, lb) >= 0.5 * min(ha_ - la, hb_ - lb)
            joined = shared and _one_revolution(ga, gb, tol, z)
            if not joined:  # the bottom (or the inside) within the walls of the other
                for w, o, fw in ((ra, gb, fa), (rb, ga, fb)):
                    rev = wall(w, fw, z)
                    if rev is not None and _inside(rev, o, tol, z, floor=False).mean() >= 0.9:
                        joined = True
                        break
            if not joined:
                continue
            uf.parent[rb] = ra
            both = np.concatenate([fa, fb])
            if len(both) > 600:
                both = both[np.linspace(0, len(both) - 1, 600).astype(int)]
            feet[ra] = both
            sizes[ra] += sizes[rb]
            feet.pop(rb, None)
            walls.pop(ra, None)
            walls.pop(rb, None)
        mapping = np.array([uf.find(k) for k in range(n)])
        return mapping[regions]

    @staticmethod
    def _region_stats(regions: np.ndarray, k: int, sl: tuple | None, pts: np.ndarray, lab: np.ndarray,
                      n_plane: np.ndarray, d_plane: np.float32, e1: np.ndarray,
                      e2: np.ndarray) -> tuple | None:
        """Region k's footprint in table-plane coordinates (a subsample) and its mean chroma
        (CIELAB a, b)."""
        if sl is None:
            return None
        m = regions[sl] == k
        p = pts[sl][m]
        p = p[np.isfinite(p[:, 2])]
        if len(p) == 0:
            return None
        if len(p) > 400:
            p = p[np.linspace(0, len(p) - 1, 400).astype(int)]
        q = p - (p @ n_plane + d_plane)[:, None] * n_plane[None, :]
        uv = np.stack([q @ e1, q @ e2], 1).astype(np.float32)
        return uv, lab[sl][m][:, 1:].mean(0)

    @staticmethod
    def _same_object(si: tuple | None, so: tuple | None) -> bool:
        """The inner region could be seen through the outer one's opening: no wider than it, of a
        similar colour, and together no more than 20% wider in the table plane."""
        if si is None or so is None:
            return False
        if float(np.linalg.norm(si[1] - so[1])) > 30.0:
            return False

        def diam(uv: np.ndarray) -> float:
            hull = cv2.convexHull(uv).reshape(-1, 2)
            d = hull[:, None, :] - hull[None, :, :]
            return float(np.sqrt((d ** 2).sum(-1).max())) if len(hull) > 1 else 0.0

        d_in, d_out = diam(si[0]), diam(so[0])
        return d_in <= 1.05 * d_out and diam(np.concatenate([si[0], so[0]])) <= 1.2 * d_out

    @staticmethod
    def _absorb_slivers(regions: np.ndarray, min_px: int) -> np.ndarray:
        """Small pieces (under 3 x min_px) and slivers (hardly any pixel inside) that share a
        good part of their border (30%) with a larger region join it: the rim of a lid, the edge
        of a box seen at a grazing angle, a strip the colour test cut off."""
        n = int(regions.max()) + 1
        if n <= 2:
            return regions
        a = np.concatenate([regions[:-1].ravel(), regions[:, :-1].ravel()])
        b = np.concatenate([regions[1:].ravel(), regions[:, 1:].ravel()])
        diff = a != b
        src, dst = np.concatenate([a[diff], b[diff]]), np.concatenate([b[diff], a[diff]])
        perim = np.bincount(src, minlength=n)
        size = np.bincount(regions.ravel(), minlength=n)
        inner = np.zeros(regions.shape, bool)
        c0 = regions[1:-1, 1:-1]
        inner[1:-1, 1:-1] = ((c0 == regions[:-2, 1:-1]) & (c0 == regions[2:, 1:-1])
                             & (c0 == regions[1:-1, :-2]) & (c0 == regions[1:-1, 2:]))
        interior = np.bincount(regions[inner], minlength=n)
        small = (size < 3 * min_px) | (interior < 0.25 * size)
        sel = (src > 0) & (dst > 0) & small[src]
        if not sel.any():
            return regions
        k = src[sel] * n + dst[sel]
        uk, cnt = np.unique(k, return_counts=True)
        mapping = np.arange(n)
        for i in np.argsort(-cnt, kind="stable"):
            piece, into = int(uk[i] // n), int(uk[i] % n)
            if mapping[piece] != piece or size[into] <= size[piece] or cnt[i] < 0.3 * perim[piece]:
                continue
            while mapping[into] != into:
                into = mapping[into]
            mapping[piece] = into
        return mapping[regions]

    def _drop_small_and_flat(self, regions: np.ndarray, height: np.ndarray, min_px: int) -> np.ndarray:
        """Regions too small to be an object, and flat ones barely above the plane (depth noise on
        the table, bands along its far edge): an object rises clearly above min_height somewhere."""
        n = int(regions.max()) + 1
        sizes = np.bincount(regions.ravel(), minlength=n)
        drop = sizes < min_px
        drop[0] = True
        for k, sl in enumerate(ndimage.find_objects(regions), start=1):
            if sl is None or drop[k]:
                continue
            hk = height[sl][regions[sl] == k]
            if np.percentile(np.nan_to_num(hk), 90) < 1.5 * self.cfg.min_height:
                drop[k] = True
        out = regions.copy()
        out[drop[regions]] = 0
        return out

    def _drop_bumps(self, regions: np.ndarray, height: np.ndarray, lab: np.ndarray, valid: np.ndarray,
                    most_px: float) -> np.ndarray:
        """Small low regions of the table's own colour: depth noise (a dark or glossy table top
        returns bumps of a centimetre or two), not objects, which differ from the table in colour
        or rise clearly above it. Judged against the open table in a ring around the region; one
        that is mostly walled in by other regions (a piece of an object) is left alone."""
        cfg = self.cfg
        out = regions
        r = 4
        free = valid & (regions == 0) & (height <= cfg.min_height)
        sizes = np.bincount(regions.ravel())
        for k, sl in enumerate(ndimage.find_objects(regions), start=1):
            if sl is None or sizes[k] >= most_px:
                continue
            box = tuple(slice(max(0, a.start - r), a.stop + r) for a in sl)
            m = regions[box] == k
            if np.percentile(np.nan_to_num(height[box][m]), 90) >= cfg.bump_height:
                continue
            ring = (cv2.dilate(m.astype(np.uint8), np.ones((2 * r + 1, 2 * r + 1), np.uint8)) > 0) & ~m
            open_ring = ring & free[box]  # table seen around it (no depth there counts as neither)
            if (ring & (regions[box] > 0)).sum() > 0.5 * ring.sum() or open_ring.sum() < 10:
                continue
            if np.linalg.norm(lab[box][m].mean(0) - lab[box][open_ring].mean(0)) < cfg.bump_contrast:
                if out is regions:
                    out = regions.copy()
                out[box][m] = 0
        return out

    def _trim_halo(self, regions: np.ndarray, rgb: np.ndarray, inliers: np.ndarray, band: int,
                   min_px: int) -> np.ndarray:
        """Move region borders onto the colour edges: the sensor's depth bleeds onto the table
        around objects, so a depth region is too large by up to `band` pixels.

        A colour watershed (OpenCV's, on the image gradient) floods from each region's core
        (deeper than `band` inside it, or its central part when it is thinner) and from the
        table's pixels; a border pixel the table's flood reaches first goes back to the table.
        Pixels never join a region or change region here. Each region then keeps its largest
        piece."""
        fg = regions > 0
        if not fg.any() or not inliers.any():
            return regions
        n = int(regions.max())
        dist = cv2.distanceTransform(np.pad(fg, 1).astype(np.uint8), cv2.DIST_L2, 3)[1:-1, 1:-1]
        deepest = _max_by_label(dist.ravel(), regions.ravel(), n + 1).astype(np.float32)
        core = fg & (dist >= np.minimum(float(band), 0.6 * deepest)[regions])
        markers = np.where(core, regions, 0).astype(np.int32)
        markers[inliers] = n + 1
        cv2.watershed(np.ascontiguousarray(rgb), markers)
        cand = fg & (markers == n + 1)
        if not cand.any():
            return regions
        # The flood can also cross a weak object-table edge and stop at a stronger edge inside a
        # printed object: a pixel goes only if its colour is the table's rather than its core's.
        lab = cv2.cvtColor(rgb, cv2.COLOR_RGB2LAB)  # 8-bit: L, a, b in 0..255
        q = (lab[..., 0].astype(np.int64) // 32) * 256 + (lab[..., 1].astype(np.int64) // 16) * 16 \
            + lab[..., 2].astype(np.int64) // 16
        table = markers == n + 1
        table &= ~fg
        ys, xs = np.nonzero(cand)
        qk = q[ys, xs]
        # Colour models only of the regions that might lose pixels (compact ids 0..m-1).
        touched = np.unique(regions[ys, xs])
        cid = np.full(n + 1, -1, np.int64)
        cid[touched] = np.arange(len(touched))
        m = len(touched)
        cr = cid[regions[core]]
        use = cr >= 0
        pt = np.bincount(q[table], minlength=2048).astype(np.float32)
        pc = np.bincount(cr[use] * 2048 + q[core][use], minlength=m * 2048).astype(np.float32)
        pt = ndimage.uniform_filter(pt.reshape(8, 16, 16), 3).ravel()
        pc = ndimage.uniform_filter(pc.reshape(m, 8, 16, 16), (1, 3, 3, 3)).reshape(m, 2048)
        pt = pt / max(float(pt.sum()), 1e-9) + 1e-5
        pc = pc / np.maximum(pc.sum(1, keepdims=True), 1e-9) + 1e-5
        keep = pt[qk] < self.cfg.halo_ratio * pc[cid[regions[ys, xs]], qk]
        cand[ys[keep], xs[keep]] = False
        out = regions.copy()
        out[cand] = 0
        # Each region keeps its largest piece; pieces 2 pixels apart count as one (the seams
        # between the pieces _join_hollow joined).
        for k, sl in enumerate(ndimage.find_objects(out), start=1):
            if sl is None:
                continue
            m = out[sl] == k
            cc_k, ncc = ndimage.label(cv2.dilate(np.pad(m, 2).astype(np.uint8), np.ones((3, 3), np.uint8),
                                                 iterations=1)[2:-2, 2:-2] > 0)
            if ncc > 1:
                sizes = np.bincount(cc_k[m], minlength=ncc + 1)
                sizes[0] = 0
                out[sl][(cc_k != int(np.argmax(sizes))) & m] = 0
        sizes = np.bincount(out.ravel())
        small = sizes < min_px
        small[0] = False
        out[small[out]] = 0
        return out

    def _flat_objects(self, regions: np.ndarray, rgb: np.ndarray, lab: np.ndarray | None, height: np.ndarray,
                      valid: np.ndarray, min_px: int) -> np.ndarray:
        """Objects too thin for the depth (pads, paper, cutlery, lids lying down): blobs at table
        level whose colour stands out from the table's colour around them.

        The table's colour is estimated locally (a normalised Gaussian average over table-level
        pixels, a second time without the first pass's blobs), so wood grain, gradual shading and
        a table of any colour are its own background. Lightness counts half: shadows mostly darken.
        A blob is kept when it lies inside the table's outline, away from its border and from the
        objects found by depth (shadows and reflections hug them), is compact enough and covers
        less than flat_max_fraction of the table. The ids of these regions are remembered so that
        going back to frame resolution keeps their table-level pixels."""
        cfg = self.cfg
        hw, ww = regions.shape
        region = cv2.resize(self.plane.region.astype(np.uint8), (ww, hw), interpolation=cv2.INTER_NEAREST) > 0
        near_obj = cv2.dilate((regions > 0).astype(np.uint8), np.ones((9, 9), np.uint8)) > 0
        level = valid & (height <= cfg.min_height) & (height > -cfg.plane_distance) & region
        inner = cv2.erode(region.astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
        table_px = int(level.sum())
        if table_px < 20 * min_px:
            return regions
        if lab is None:  # colour_weight 0: the region steps did not convert the image
            lab = cv2.cvtColor(cv2.GaussianBlur(rgb, (3, 3), 0).astype(np.float32) / 255.0, cv2.COLOR_RGB2LAB)
        lab = lab * np.array([0.5, 1.0, 1.0], np.float32)
        sigma = 0.12 * min(hw, ww)
        f = 4 if min(hw, ww) >= 64 else 1  # the wide averages at a quarter of the size: 16x fewer pixels

        def blur(x: np.ndarray) -> np.ndarray:
            small = cv2.resize(x, (ww // f, hw // f), interpolation=cv2.INTER_AREA) if f > 1 else x
            small = cv2.GaussianBlur(small, (0, 0), sigma / f)
            return cv2.resize(small, (ww, hw), interpolation=cv2.INTER_LINEAR) if f > 1 else small

        weight = level.astype(np.float32)
        cand = np.zeros_like(level)
        for it in range(2):
            w = weight * ~(cv2.dilate(cand.astype(np.uint8), np.ones((5, 5), np.uint8)) > 0)
            den = np.maximum(blur(w), 1e-6)
            bg = blur(lab * w[..., None]) / den[..., None]
            contrast = np.linalg.norm(lab - bg, axis=-1)
            # A patterned table (a checked cloth, strong grain) varies by itself: a blob must also
            # stand out from that variation (3 local standard deviations).
            limit = cfg.flat_contrast
            if it:  # the table's own variation, without the first pass's blobs
                spread = np.sqrt(np.maximum(blur(w * contrast ** 2), 0.0) / den)
                limit = np.maximum(limit, 3.0 * spread)
            cand = level & ~near_obj & (den > 0.05) & (contrast > limit)
            cand = cv2.morphologyEx(cand.astype(np.uint8), cv2.MORPH_OPEN, np.ones((3, 3), np.uint8)) > 0
        cc, n = ndimage.label(cand, structure=np.ones((3, 3), int))
        if n == 0:
            return regions
        out = regions.copy()
        nxt = int(regions.max()) + 1
        free = level & ~near_obj & ~cand  # open table around the blobs
        table_lab = lab[free]
        if len(table_lab) > 20000:
            table_lab = table_lab[np.linspace(0, len(table_lab) - 1, 20000).astype(int)]
        for k, sl in enumerate(ndimage.find_objects(cc), start=1):
            m = cc[sl] == k
            area = int(m.sum())
            if area < min_px or area > cfg.flat_max_fraction * table_px or not inner[sl][m].all():
                continue
            if sl[0].start == 0 or sl[1].start == 0 or sl[0].stop == hw or sl[1].stop == ww:
                continue  # cut by the image border: as likely a piece of the table's pattern
            # Lying on the table means table all around: the bottom of a bowl or a cup seen
            # through its opening is table-level too, but walled in by its object.
            r = 3
            box = tuple(slice(max(0, a.start - r), b + r) for a, b in zip(sl, (sl[0].stop, sl[1].stop)))
            mk = cc[box] == k
            ring = (cv2.dilate(mk.astype(np.uint8), np.ones((2 * r + 1, 2 * r + 1), np.uint8)) > 0) & ~mk
            if free[box][ring].mean() < 0.75:
                continue
            cnts, _ = cv2.findContours(m.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
            hull = max(float(cv2.contourArea(cv2.convexHull(np.concatenate(cnts)))), 1.0)
            if area / hull < 0.7:
                continue
            # A colour the table itself shows in many places (the other squares of a checked
            # cloth, the dark lines of a grain) is the table's pattern, not an object on it.
            if len(table_lab) and (np.linalg.norm(table_lab - lab[sl][m].mean(0), axis=-1) < 10.0).mean() > 0.05:
                continue
            out[sl][m] = nxt
            self._flat_ids.add(nxt)
            nxt += 1
        return out

    @staticmethod
    def _renumber(labels: np.ndarray) -> tuple[np.ndarray, list]:
        """Ids 1..N in order of first appearance (row-major), so label maps stay small."""
        flat = labels.ravel()
        uniq, first = np.unique(flat, return_index=True)
        keep = uniq != 0
        uniq, first = uniq[keep], first[keep]
        order = uniq[np.argsort(first, kind="stable")]
        lut = np.zeros(int(labels.max()) + 1 if labels.size else 1, np.int32)
        lut[order] = np.arange(1, len(order) + 1, dtype=np.int32)
        out = lut[labels]
        return out, ndimage.find_objects(out)

    # ------------------------------------------------------------------ queries
    def region(self, x: float, y: float) -> tuple[np.ndarray, tuple] | None:
        """Mask (and its box) of the region under (x, y), snapping to a region within a few pixels."""
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
        return self.mask_of(lab), self.box_of(lab)

    def mask_of(self, lab: int) -> np.ndarray:
        """Region `lab` at frame resolution, with the holes that belong to no other region and are
        not table (invalid depth on specular or transparent patches, a mug's dark inside)."""
        out = np.zeros(self.labels.shape, bool)
        sl = self._slices[lab - 1] if 0 < lab <= len(self._slices) else None
        if sl is None:
            return out
        sub = self.labels[sl]
        m = sub == lab
        # Holes count after a small closing: a bowl's or a cup's bottom is at table height and
        # the inside of its rim is often broken by invalid depth, so the hole is not quite closed.
        r = max(1, int(round(0.01 * min(self.labels.shape))))
        closed = cv2.morphologyEx(np.pad(m, r).astype(np.uint8), cv2.MORPH_CLOSE,
                                  cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1)))
        filled = ndimage.binary_fill_holes(closed[r:-r, r:-r])
        out[sl] = m | (filled & (sub == 0))
        if self.cfg.hollow_fit > 0:
            if lab not in self._insides:
                self._insides[lab] = self._hollow_inside(m, sl)
            inside = self._insides[lab]
            if inside is not None:
                out[sl] |= inside
        return out

    def _hollow_inside(self, m: np.ndarray, sl: tuple) -> np.ndarray | None:
        """The inside of a hollow object whose region is its wall: a bowl's or a cup's bottom is
        at table height (so no region of its own), and its near rim is often lost to the depth
        sensor (so no hole to fill either). Where the region's points lie on an upright surface
        of revolution, the unlabelled pixels within the region's image hull whose points lie
        inside that surface, no lower than the table, join it (past the hull, the table around
        the object's foot would join too: measured worse on the rendered sets). m: the region
        within its box sl; returns the pixels to add within sl, or None."""
        axes = self.plane.axes()
        f = _plan_view(self.plane.points[sl][m], self.plane.height[sl][m], axes)
        if len(f) < 30:
            return None
        z = float(np.median(f[:, 3]))
        tol = self.cfg.hollow_fit
        rev = _hollow_fit(f[:, :3], tol, z, self.cfg.hollow_cover)
        if rev is None:
            return None
        ys, xs = np.nonzero(m)
        hull = np.zeros(m.shape, np.uint8)
        cv2.fillConvexPoly(hull, cv2.convexHull(np.stack([xs, ys], 1).astype(np.int32)), 1)
        cy, cx = np.nonzero((hull > 0) & (self.labels[sl] == 0))
        if len(cy) == 0:
            return None
        p = self.plane.points[sl][cy, cx].astype(np.float64)
        hh = self.plane.height[sl][cy, cx].astype(np.float64)
        with np.errstate(invalid="ignore"):
            good = np.isfinite(hh) & (hh >= -self.cfg.plane_distance)
        good[good] &= _inside(rev, np.stack([p @ axes[0], p @ axes[1], hh], 1)[good], tol, z)
        if not good.any():
            return None
        out = np.zeros(m.shape, bool)
        out[cy[good], cx[good]] = True
        return out

    def _table_top_rows(self) -> np.ndarray:
        """Per image column, the first row (from the top) inside the table's outline; the image
        height where the outline does not reach that column."""
        if self._top_rows is None:
            seen = self.plane.region
            h = seen.shape[0]
            self._top_rows = np.where(seen.any(0), np.argmax(seen, axis=0), h)
        return self._top_rows

    def support(self, mask: np.ndarray, sl: tuple | None = None) -> float:
        """How far the table is seen under the region. Its points are dropped onto the plane; each
        footprint point is evidence for the table where its pixel lies inside the table's outline,
        and against it where the pixel shows something behind the plane (the floor past the
        table's edge). Where the pixel shows something in
        front of the plane (the object itself, or another), or the footprint falls below the
        image, the table counts as there if it is seen farther up that image column: an object
        hides its own footprint, and one near the camera stands where the image ends. Past the
        top of the image, or past the table's far edge, is against (a wall, a chair behind);
        past the sides, or no depth, says nothing; no evidence at all is no support.
        sl: a box (slices) that holds the whole mask, to look at less of the frame."""
        sl = sl or (slice(None), slice(None))
        ys, xs = np.nonzero(mask[sl] & self.valid[sl])
        if len(ys) == 0:
            return 0.0
        ys = ys + (sl[0].start or 0)
        xs = xs + (sl[1].start or 0)
        if len(ys) > 2000:
            sel = np.linspace(0, len(ys) - 1, 2000).astype(int)
            ys, xs = ys[sel], xs[sel]
        p = self.plane.points[ys, xs].astype(np.float64)
        n, d = self.plane.normal, self.plane.coefficients[3]
        q = p - (p @ n + d)[:, None] * n[None, :]
        k = self.frame.intrinsics
        z = np.maximum(q[:, 2], 1e-6)
        h, w = mask.shape
        u = np.round(k.fx * q[:, 0] / z + k.cx)
        v = np.round(k.fy * q[:, 1] / z + k.cy)
        cols = (u >= 0) & (u < w)
        top = self._table_top_rows()
        uc = np.clip(u, 0, w - 1).astype(int)
        table_beyond = cols & (v > top[uc])  # the table is seen farther up the column
        inside = cols & (v >= 0) & (v < h)
        vi = np.clip(v, 0, h - 1).astype(int)
        on_table = inside & self.plane.region[vi, uc]
        seen = np.where(inside, self.plane.points[vi, uc, 2], np.nan)
        with np.errstate(invalid="ignore"):
            margin = self.cfg.plane_distance + 0.02 * z
            behind = inside & ~on_table & (seen > z + margin)
            hidden = inside & ~on_table & (seen < z - margin)
        below = cols & (v >= h)
        hidden_or_below = hidden | below
        n_for = int(on_table.sum() + (hidden_or_below & table_beyond).sum())
        n_against = int(behind.sum() + (hidden & ~table_beyond).sum() + (v < 0).sum())
        return n_for / max(n_for + n_against, 1)

    def is_wall(self, mask: np.ndarray, sl: tuple, min_area: float) -> bool:
        """A wall or a cupboard beside the table rather than an object on it: it covers min_area of
        the image or more, runs out of the image on three sides or four, and hardly any of it
        (under 30 %) faces up. An object that close to the camera shows its top; the table's
        own support test cannot tell a wall the table stands against, which rises right from it."""
        H, W = mask.shape
        if int(mask[sl].sum()) < min_area * H * W:
            return False
        if (sl[0].start == 0) + (sl[1].start == 0) + (sl[0].stop == H) + (sl[1].stop == W) < 3:
            return False
        p = self.plane.points[sl][::2, ::2]
        m = mask[sl][::2, ::2]
        dx = np.zeros_like(p)
        dy = np.zeros_like(p)
        dx[:, 1:-1] = p[:, 2:] - p[:, :-2]
        dy[1:-1] = p[2:] - p[:-2]
        n = np.cross(dx, dy)
        norm = np.linalg.norm(n, axis=-1)
        with np.errstate(invalid="ignore"):
            ok = m & np.isfinite(norm) & (norm > 0)
        if ok.sum() < 20:
            return False
        cos_up = np.abs((n[ok] / norm[ok][:, None]) @ self.plane.normal.astype(np.float32))
        return float((cos_up > np.cos(np.deg2rad(30.0))).mean()) < 0.3

    def wall_plane(self, mask: np.ndarray, sl: tuple) -> np.ndarray | None:
        """The plane (a, b, c, d) of a region is_wall found (seeded RANSAC on a subsample), so that
        the pieces of the same wall that the region steps cut off can be told by it."""
        p = self.plane.points[sl][mask[sl]]
        p = p[np.isfinite(p[:, 2])].astype(np.float64)
        if len(p) > 4000:
            p = p[np.linspace(0, len(p) - 1, 4000).astype(int)]
        inl = _ransac(p, 0.01, 100, np.random.default_rng(self.cfg.seed))
        return None if inl is None else _fit_ls(p[inl])

    def on_walls(self, sub: np.ndarray, sl: tuple, walls: list[np.ndarray]) -> bool:
        """Does the region (sub: its mask within its box sl) lie on one of these wall planes (80 %
        of its points within 1.5 cm)? A piece of the wall, or a poster on it; an object standing
        against a wall rises from it."""
        p = self.plane.points[sl][sub]
        p = p[np.isfinite(p[:, 2])].astype(np.float64)
        if len(p) == 0:
            return False
        return any(float((np.abs(p @ w[:3] + w[3]) < 0.015).mean()) >= 0.8 for w in walls)

    def confidence(self, mask: np.ndarray, sl: tuple | None = None, support: float | None = None) -> float:
        """Solidity x table support: a real object is a near-convex blob standing on the
        table; a region that leaked through a missing edge is ragged, and clutter off the
        table has no support. support: the region's support, if the caller has it already."""
        sub = mask[sl] if sl is not None else mask
        area = int(sub.sum())
        if area < self.min_pixels:
            return 0.0
        cnts, _ = cv2.findContours(sub.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        hull = cv2.convexHull(np.concatenate(cnts))
        hull_area = max(float(cv2.contourArea(hull)), 1.0)
        solidity = min(1.0, area / hull_area)
        if support is None:
            support = self.support(mask, sl)
        return float(np.clip(solidity * support, 0.0, 1.0))

    def box_of(self, lab: int) -> tuple | None:
        """The box (slices) that holds mask_of(lab), holes included."""
        return self._slices[lab - 1] if 0 < lab <= len(self._slices) else None


def _check_packed(packed: np.ndarray, height: int, width: int) -> np.ndarray:
    packed = np.asarray(packed)
    if packed.dtype != np.uint16 or packed.shape != (height, width):
        raise FrameError(f"packed regions must be a {width}x{height} uint16 map, got shape {packed.shape} "
                         f"and dtype {packed.dtype.name}")
    return packed


class GeometricSegmenter:
    """Promptable segmenter without weights: the region under each prompt pixel."""

    name = "geometric"

    def __init__(self, cfg: GeometricConfig | None = None,
                 source: GeometricPromptSource | None = None) -> None:
        self.cfg = cfg or GeometricConfig()
        self.source = source
        self._seg: _Segments | None = None

    def set_frame(self, frame: Frame, packed: np.ndarray | None = None) -> None:
        """The plane fit and region structure: taken from the prompt source when it just
        computed them for this very frame and config, or rebuilt from `packed` (the prompt
        source's ``packed()`` regions of this frame, sent by another process), instead of
        computing them twice."""
        seg = self.source.last_segments if self.source is not None else None
        if seg is None or seg.frame is not frame or seg.cfg != self.cfg:
            seg = _Segments(frame, self.cfg) if packed is None else _Segments(frame, self.cfg, packed)
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
            found = seg.region(x, y)
            if found is None:
                continue
            masks[i, 0], sl = found
            scores[i, 0] = seg.confidence(masks[i, 0], sl)
        return Decoded(masks=masks, iou_pred=scores.copy(), scores=scores)

    def decode_clicks(self, points: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, float]:
        """One object's mask from all of its clicks (interactive refinement; decode() takes one
        prompt per object): the union of the regions under the positive clicks, minus every pixel
        nearer to a negative click than to all positive ones, so that a negative click cuts its
        side of the region off. Returns (mask (H, W) bool, confidence); with no positive click
        on an object the mask is empty and the confidence 0.

        points: (K, 2) x, y pixels; labels: (K,) 1 = positive, 0 = negative. ValueError names a
        click outside the image or a label that is neither."""
        if self._seg is None:
            raise RuntimeError("GeometricSegmenter.set_frame() must be called before decode_clicks()")
        seg = self._seg
        h, w = seg.labels.shape
        pts = np.asarray(points, np.float64).reshape(-1, 2)
        lab = np.asarray(labels).reshape(-1)
        if len(lab) != len(pts):
            raise ValueError(f"{len(pts)} click points but {len(lab)} labels")
        for (x, y), lb in zip(pts, lab):
            if not (np.isfinite(x) and np.isfinite(y) and -0.5 <= x < w - 0.5 and -0.5 <= y < h - 0.5):
                raise ValueError(f"click ({x:g}, {y:g}) is outside the {w}x{h} image")
            if lb not in (0, 1):
                raise ValueError(f"click label must be 1 (positive) or 0 (negative), got {lb!r}")
        pos, neg = pts[lab == 1], pts[lab == 0]
        mask = np.zeros((h, w), bool)
        for x, y in pos:
            found = seg.region(x, y)
            if found is not None:
                mask |= found[0]
        if len(neg) and mask.any():
            ys, xs = np.nonzero(mask)

            def nearest(p: np.ndarray) -> np.ndarray:
                d = np.full(len(xs), np.inf)
                for x, y in p:
                    d = np.minimum(d, (xs - x) ** 2 + (ys - y) ** 2)
                return d

            cut = nearest(neg) < nearest(pos)
            mask[ys[cut], xs[cut]] = False
        return mask, (seg.confidence(mask) if mask.any() else 0.0)


class GeometricPromptSource:
    """One foreground point per object region standing on the table."""

    name = "geometric"

    def __init__(self, cfg: GeometricConfig | None = None) -> None:
        self.cfg = cfg or GeometricConfig()
        self.last_segments: _Segments | None = None

    def packed_regions(self) -> np.ndarray | None:
        """The last prompts() call's regions and table plane as a uint16 map (_Segments.packed), for
        a GeometricSegmenter in another process (``set_frame(frame, packed)``)."""
        return self.last_segments.packed() if self.last_segments is not None else None

    def prompts(self, frame: Frame) -> Prompts:
        cfg = self.cfg
        seg = _Segments(frame, cfg)
        self.last_segments = seg
        pts, scs = [], []
        kept, walls = [], []
        for lab in range(1, int(seg.labels.max()) + 1):
            m = seg.mask_of(lab)
            sl = seg.box_of(lab)
            if sl is None:
                continue
            sup = seg.support(m, sl)
            if sup < cfg.min_support:
                continue
            if cfg.wall_area > 0 and seg.is_wall(m, sl, cfg.wall_area):
                w = seg.wall_plane(m, sl)
                if w is not None:
                    walls.append(w)
                continue
            kept.append((lab, sl, m[sl], seg.confidence(m, sl, sup)))
        for lab, sl, sub, score in kept:
            if walls and seg.on_walls(sub, sl, walls):
                continue
            # The point deepest inside the region: far from every edge SAM-style decoders
            # (and the region lookup) could confuse with a neighbour.
            core = seg.labels[sl] == lab
            dist = cv2.distanceTransform(np.pad(core, 1).astype(np.uint8), cv2.DIST_L2, 5)[1:-1, 1:-1]
            y, x = np.unravel_index(int(np.argmax(dist)), dist.shape)
            pts.append((float(x + sl[1].start), float(y + sl[0].start)))
            scs.append(score)
        if not pts:
            return Prompts.empty()
        order = np.argsort(-np.asarray(scs), kind="stable")[: cfg.max_prompts]
        pts_a = np.asarray(pts, np.float32)[order]
        return Prompts(pts_a, np.ones(len(order), np.int64), np.asarray(scs, np.float32)[order])
