"""Point clouds for grasping: the scene around the objects, and one cloud per instance.

From an aligned depth image, the intrinsics and the instance masks:

- the workspace: valid depth between ``min_depth`` and ``max_depth``, and below ``max_height``
  above the table;
- the table plane (the weights-free backend's fit, core/segment/geometric.py), which gives
  "up" and is a collision surface of its own; points within ``table_band`` of it are table;
- the collision cloud: every workspace point above the table, without flying pixels (the
  mid-air depth a stereo camera reports at depth discontinuities), voxel-downsampled, each
  point labelled with the instance it belongs to (0 = none);
- per instance: its visible points (largest connected part, statistical outlier removal,
  voxel-downsampled), surface normals (open3d, oriented towards the camera), a centroid and an
  oriented box (upright on the table); and, with ``complete_hidden``, the hidden sides. With an amodal mask, the
  object's occluded extent first: the pixels where the amodal mask says the object continues
  behind an occluder, on their rays at the visible part's depth (or just behind the occluder).
  Then the unseen back: a single view does not see the
  back of an object, but an object that stands on the table fills (at most) the prism between
  its footprint (the convex hull of its points projected on the table; for a round footprint,
  the whole circle its visible arc lies on) and its top. Points on the walls of that prism are kept where the depth image
  does not contradict them (the camera saw through them, or they are the visible surface) and,
  with an amodal mask, where they project inside it. Their normals are the walls' outward
  normals. The antipodal test and the collision check use them, so a grasp can close on a
  side the camera does not see.

The sampler's model (build_scene's default, ``refine``) goes further; the observed grasp check
builds its own scene with ``refine=False`` (the plain model above):

- a round object (its visible normals meet at one vertical axis: revolution_axis, refined from
  the points' positions) is completed as a surface of revolution of what is seen of it, inner
  walls included, instead of a prism: a bottle's shoulder, a ball, a bowl's sloped wall keep
  their shape and normals on the far side (revolved_sides);
- an object lower than LOW_OBJECT (a lying pen, a toy brick) keeps its points down to 3 x the
  table's depth noise (not table_band, which would cut off the sides the jaws close on), at a
  finer voxel and normal radius (low_object_config), and its far side is kept however close it
  lies behind the visible surface;
- occluded points (amodal) go where their pixel rays pass nearest the vertical axis through the
  visible part (a standing object continues below its visible part, not in front of it).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field, replace

import cv2
import numpy as np
from scipy.spatial import ConvexHull, QhullError, cKDTree

from uois_sam_ros.core.config import GeometricConfig, GraspConfig
from uois_sam_ros.core.types import Frame, FrameError, Intrinsics


@dataclass
class Table:
    """The supporting plane in the camera frame: height = up . p + offset (> 0 above the table)."""

    up: np.ndarray
    offset: float

    def height(self, pts: np.ndarray) -> np.ndarray:
        return np.asarray(pts) @ self.up + self.offset

    def basis(self) -> tuple[np.ndarray, np.ndarray]:
        """Two unit vectors spanning the table plane (e1 follows the camera's x axis)."""
        return _plane_basis(self.up)


def _plane_basis(up: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ref = np.array([1.0, 0.0, 0.0])
    if abs(float(ref @ up)) > 0.9:
        ref = np.array([0.0, 0.0, 1.0])
    e1 = ref - (ref @ up) * up
    e1 /= np.linalg.norm(e1)
    return e1, np.cross(up, e1)


@dataclass
class InstanceCloud:
    """One instance's geometry in the camera frame.

    points/normals: the visible surface. hidden/hidden_normals: the inferred hidden sides
    (empty without a table or with complete_hidden off). box_*: oriented bounding box of the
    visible points: standing on the table, turned about its normal (without a table: open3d's
    robust oriented box). valid_pixels: mask pixels with usable depth.
    """

    instance_id: int
    points: np.ndarray
    normals: np.ndarray
    centroid: np.ndarray
    box_center: np.ndarray
    box_rotation: np.ndarray
    box_extent: np.ndarray
    valid_pixels: int
    hidden: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))
    hidden_normals: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))
    used_amodal: bool = False
    low: bool = False  # lower than LOW_OBJECT: modelled finer (low_object_config)

    @property
    def model_points(self) -> np.ndarray:
        return np.concatenate([self.points, self.hidden]) if len(self.hidden) else self.points

    @property
    def model_normals(self) -> np.ndarray:
        return np.concatenate([self.normals, self.hidden_normals]) if len(self.hidden) else self.normals


@dataclass
class GraspScene:
    """Everything the sampler and the grasp check need about one frame."""

    intrinsics: Intrinsics
    table: Table | None
    cloud: np.ndarray  # (M, 3) collision cloud: workspace points above the table, voxel-downsampled
    labels: np.ndarray  # (M,) instance id of each cloud point, 0 = not an instance
    instances: dict[int, InstanceCloud]
    warnings: list[str] = field(default_factory=list)
    label_map: np.ndarray | None = None  # (H, W) instance id per pixel, 0 = none
    workspace: np.ndarray | None = None  # (H, W) pixels in the workspace (valid depth, not below the table)
    points_image: np.ndarray | None = None  # (H, W, 3) back-projected depth, NaN where invalid
    _tree: cKDTree | None = None
    _obstacles: tuple[np.ndarray, np.ndarray] | None = None

    def obstacles(self) -> tuple[np.ndarray, np.ndarray]:
        """(points, labels): the collision cloud plus every instance's hidden sides."""
        if self._obstacles is None:
            pts = [self.cloud] + [c.hidden for c in self.instances.values() if len(c.hidden)]
            lab = [self.labels] + [np.full(len(c.hidden), c.instance_id, np.int64)
                                   for c in self.instances.values() if len(c.hidden)]
            self._obstacles = (np.concatenate(pts), np.concatenate(lab))
        return self._obstacles

    def obstacle_tree(self) -> cKDTree | None:
        """A KD-tree of obstacles()[0] (None when there are none)."""
        if self._tree is None:
            pts = self.obstacles()[0]
            self._tree = cKDTree(pts) if len(pts) else None
        return self._tree

    def obstacles_near(self, centre: np.ndarray, radius: float) -> tuple[np.ndarray, np.ndarray]:
        pts, lab = self.obstacles()
        if self.obstacle_tree() is None:
            return pts, lab
        idx = np.asarray(self._tree.query_ball_point(np.asarray(centre, float), float(radius)), np.int64)
        return pts[idx], lab[idx]


# ------------------------------------------------------------------------------ helpers


def backproject(depth: np.ndarray, intr: Intrinsics) -> np.ndarray:
    """(H, W, 3) float32 camera-frame points; NaN where depth is 0, negative or not finite."""
    d = np.asarray(depth, np.float32).copy()
    d[~(np.isfinite(d) & (d > 0))] = np.nan
    h, w = d.shape
    u = (np.arange(w, dtype=np.float32) - np.float32(intr.cx)) / np.float32(intr.fx)
    v = (np.arange(h, dtype=np.float32) - np.float32(intr.cy)) / np.float32(intr.fy)
    return np.stack([d * u[None, :], d * v[:, None], d], axis=-1)


def project(pts: np.ndarray, intr: Intrinsics) -> tuple[np.ndarray, np.ndarray]:
    """Pixel (u, v) of camera-frame points (rounded to the nearest pixel centre)."""
    z = np.maximum(pts[:, 2], 1e-9)
    u = np.round(pts[:, 0] / z * intr.fx + intr.cx).astype(np.int64)
    v = np.round(pts[:, 1] / z * intr.fy + intr.cy).astype(np.int64)
    return u, v


def voxel_downsample(points: np.ndarray, voxel: float, labels: np.ndarray | None = None
                     ) -> tuple[np.ndarray, np.ndarray | None]:
    """Mean point per voxel (and the label of the first point that fell into it)."""
    pts = np.asarray(points, np.float64).reshape(-1, 3)
    if len(pts) == 0 or voxel <= 0:
        return pts, labels
    keys = np.floor(pts / voxel).astype(np.int64)
    keys -= keys.min(axis=0)
    dims = keys.max(axis=0) + 1
    flat = (keys[:, 0] * dims[1] + keys[:, 1]) * dims[2] + keys[:, 2]
    _, first, inv = np.unique(flat, return_index=True, return_inverse=True)
    counts = np.bincount(inv).astype(np.float64)
    out = np.stack([np.bincount(inv, weights=pts[:, k]) for k in range(3)], axis=1) / counts[:, None]
    return out, (None if labels is None else np.asarray(labels)[first])


def flying_pixels(depth: np.ndarray, ratio: float = 0.03) -> np.ndarray:
    """Pixels at a depth discontinuity larger than ``ratio`` x depth in their 3x3 neighbourhood:
    a stereo camera reports mid-air depth there, which would read as an obstacle."""
    d = np.where(np.isfinite(depth) & (depth > 0), depth, 0).astype(np.float32)
    big = np.where(d > 0, d, np.float32(1e4))
    lo = cv2.erode(big, np.ones((3, 3), np.uint8))
    hi = cv2.dilate(d, np.ones((3, 3), np.uint8))
    return (d > 0) & ((hi - lo) > ratio * d)


def _o3d():
    import open3d as o3d  # imported on first use: core modules import quickly

    return o3d


def estimate_normals(points: np.ndarray, radius: float, max_nn: int = 30) -> np.ndarray:
    """Unit normals (PCA of neighbours within radius) pointing towards the camera (the origin)."""
    if len(points) < 3:
        return np.tile([0.0, 0.0, -1.0], (len(points), 1))
    o3d = _o3d()
    pc = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(np.asarray(points, np.float64)))
    pc.estimate_normals(o3d.geometry.KDTreeSearchParamHybrid(radius=float(radius), max_nn=int(max_nn)))
    n = np.asarray(pc.normals).copy()
    flip = np.einsum("ij,ij->i", n, points) > 0  # a normal facing the camera has n . p < 0
    n[flip] *= -1
    return n


def largest_part(points: np.ndarray, eps: float, keep_ratio: float = 0.2) -> np.ndarray:
    """Mask of the points in the largest connected part (DBSCAN, eps) and in parts at least
    keep_ratio of its size: a mask that bleeds onto the background at a depth edge leaves a
    separate cluster far behind the object."""
    if len(points) < 10:
        return np.ones(len(points), bool)
    o3d = _o3d()
    pc = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(np.asarray(points, np.float64)))
    lab = np.asarray(pc.cluster_dbscan(eps=float(eps), min_points=3))
    good = lab >= 0
    if not good.any():
        return np.ones(len(points), bool)
    sizes = np.bincount(lab[good])
    keep = np.flatnonzero(sizes >= keep_ratio * sizes.max())
    return np.isin(lab, keep)


def remove_outliers(points: np.ndarray, neighbors: int, std: float) -> np.ndarray:
    """Mask of the points kept by statistical outlier removal (open3d); all kept if too few."""
    if neighbors <= 0 or len(points) <= neighbors + 1:
        return np.ones(len(points), bool)
    o3d = _o3d()
    pc = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(np.asarray(points, np.float64)))
    _, idx = pc.remove_statistical_outlier(int(neighbors), float(std))
    keep = np.zeros(len(points), bool)
    keep[np.asarray(idx, np.int64)] = True
    return keep


def oriented_box(points: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(centre, rotation, extent) of an oriented bounding box (open3d, robust for planar points)."""
    pts = np.asarray(points, np.float64)
    if len(pts) >= 4:
        o3d = _o3d()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                box = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(pts)).get_oriented_bounding_box(robust=True)
            return np.asarray(box.center).copy(), np.asarray(box.R).copy(), np.asarray(box.extent).copy()
        except RuntimeError:
            pass
    lo, hi = (pts.min(0), pts.max(0)) if len(pts) else (np.zeros(3), np.zeros(3))
    return (lo + hi) / 2, np.eye(3), hi - lo


def upright_box(points: np.ndarray, table: Table) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(centre, rotation, extent) of the smallest box standing on the table (turned about its
    normal: the minimum-area rectangle of the footprint) that holds the points."""
    e1, e2 = table.basis()
    q = np.stack([points @ e1, points @ e2], axis=1)
    h = table.height(points)
    (cx, cy), (size_a, size_b), ang = cv2.minAreaRect(q.astype(np.float32))
    a = np.radians(ang)
    a1 = np.cos(a) * e1 + np.sin(a) * e2
    a2 = np.cross(table.up, a1)
    base = -table.offset * table.up
    centre = base + cx * e1 + cy * e2 + (h.max() + h.min()) / 2 * table.up
    return centre, np.stack([a1, a2, table.up], axis=1), np.array([size_a, size_b, h.max() - h.min()])


def fit_table(depth: np.ndarray, intr: Intrinsics) -> Table:
    """The table plane of the frame (raises FrameError when there is none)."""
    h, w = depth.shape
    frame = Frame(rgb=np.zeros((h, w, 3), np.uint8), depth=np.asarray(depth, np.float32), intrinsics=intr)
    from uois_sam_ros.core.segment.geometric import fit_table_plane

    plane = fit_table_plane(frame, GeometricConfig())
    c = np.asarray(plane.coefficients, float)
    return Table(up=c[:3] / np.linalg.norm(c[:3]), offset=float(c[3] / np.linalg.norm(c[:3])))


# ------------------------------------------------------------------------------ building


def check_inputs(depth: np.ndarray, intr: Intrinsics | None, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Validated float32 depth (metres, NaN invalid) and bool masks; FrameError naming the problem."""
    if intr is None:
        raise FrameError("grasp planning needs camera intrinsics (camera_info)")
    d = np.asarray(depth)
    if d.ndim != 2:
        raise FrameError(f"depth must have shape (H, W), got {d.shape}")
    if not np.issubdtype(d.dtype, np.floating):
        raise FrameError(f"depth must be float metres, got {d.dtype}")
    if (intr.width, intr.height) != (d.shape[1], d.shape[0]):
        raise FrameError(f"intrinsics are for {intr.width}x{intr.height}, depth is {d.shape[1]}x{d.shape[0]}")
    m = np.asarray(masks, bool)
    if m.ndim != 3 or m.shape[1:] != d.shape:
        raise FrameError(f"masks must be (N, {d.shape[0]}, {d.shape[1]}), got {m.shape}")
    d = d.astype(np.float32, copy=True)
    d[~(np.isfinite(d) & (d > 0))] = np.nan
    return d, m


def build_scene(depth: np.ndarray, intr: Intrinsics, masks: np.ndarray, ids: list[int] | np.ndarray | None = None,
                cfg: GraspConfig | None = None, amodal: np.ndarray | None = None,
                table: Table | None = None, refine: bool = True) -> GraspScene:
    """The grasp scene of one frame. masks: (N, H, W) visible masks; ids: their instance ids
    (default 1..N); amodal: optional (N, H, W) amodal masks. An instance without enough valid
    depth gets no cloud and a warning in scene.warnings (never an exception). refine: the
    sampler's model (round objects completed as surfaces of revolution); False keeps the plain
    prism completion (the observed grasp check's own model)."""
    cfg = cfg or GraspConfig()
    d, masks = check_inputs(depth, intr, masks)
    ids = list(range(1, len(masks) + 1)) if ids is None else [int(i) for i in ids]
    if len(ids) != len(masks):
        raise FrameError(f"{len(ids)} instance ids for {len(masks)} masks")
    warn: list[str] = []
    valid = np.isfinite(d) & (d >= cfg.min_depth) & (d <= cfg.max_depth)
    if table is None:
        try:
            table = fit_table(np.where(valid, d, 0.0), intr) if valid.sum() > 100 else None
        except FrameError as e:
            warn.append(f"no table plane ({e}): no table collision check, 'up' is the camera's -y axis")
            table = None
        if table is None and not warn:
            warn.append("no table plane (too little valid depth): 'up' is the camera's -y axis")
    pts = backproject(d, intr)
    height = table.height(pts.reshape(-1, 3)).reshape(d.shape) if table is not None else None
    above = valid.copy()
    if height is not None:
        above &= (height > cfg.table_band) & (height < cfg.max_height)

    # collision cloud: labelled, no flying pixels, voxel-downsampled
    label = np.zeros(d.shape, np.int64)
    for k in np.argsort([m.sum() for m in masks])[::-1]:  # smaller masks win overlaps
        label[masks[k]] = ids[k]
    keep = above & ~flying_pixels(d)
    cloud, cl = voxel_downsample(pts[keep], cfg.scene_voxel, label[keep])
    cloud_labels = np.zeros(0, np.int64) if cl is None else cl.astype(np.int64)

    noise = table_noise(height, label, valid, cfg.table_band) if (refine and height is not None) else None
    instances: dict[int, InstanceCloud] = {}
    for k, iid in enumerate(ids):
        m = masks[k] & above
        n_valid = int((masks[k] & valid).sum())
        cfg_k, behind = cfg, None
        if noise is not None:
            hk = height[masks[k] & valid & (height > 0) & (height < cfg.max_height)]
            if len(hk) >= cfg.min_points and np.percentile(hk, 98) < LOW_OBJECT:
                cfg_k, behind = low_object_config(cfg, float(np.percentile(hk, 98)), noise), REVOLVE_BEHIND
                m = masks[k] & valid & (height > cfg_k.table_band) & (height < cfg.max_height)
        if m.sum() < cfg.min_points:
            why = ("no valid depth" if n_valid == 0 else
                   f"only {int(m.sum())} of its {int(masks[k].sum())} pixels have valid depth above the table")
            warn.append(f"instance {iid}: {why} (need {cfg.min_points}); no grasp")
            continue
        p, _ = voxel_downsample(pts[m], cfg_k.voxel_size)
        p = p[largest_part(p, 3.0 * cfg_k.voxel_size)]
        p = p[remove_outliers(p, cfg.outlier_neighbors, cfg.outlier_std)]
        if len(p) < max(3, cfg.min_points // 4):
            warn.append(f"instance {iid}: only {len(p)} points left after outlier removal; no grasp")
            continue
        n = estimate_normals(p, cfg_k.normal_radius)
        centre, rot, ext = upright_box(p, table) if table is not None else oriented_box(p)
        inst = InstanceCloud(iid, p, n, p.mean(0), centre, rot, ext, n_valid, low=behind is not None)
        if cfg.complete_hidden and table is not None:
            am = amodal[k] if (amodal is not None and cfg.use_amodal) else None
            occ = (occluded_points(p, pts, d, masks[k], am, table, cfg_k, upright=refine) if am is not None
                   else np.zeros((0, 3)))
            walls, wn = hidden_sides(np.concatenate([p, occ]), table, d, intr, am, cfg_k,
                                     normals=n if refine else None, behind=behind)
            # occluded points bound the object but have no trustworthy normal: zero, never a contact
            inst.hidden = np.concatenate([walls, occ])
            inst.hidden_normals = np.concatenate([wn, np.zeros_like(occ)])
            inst.used_amodal = am is not None
        instances[iid] = inst
    workspace = valid if height is None else valid & (height > -cfg.table_band) & (height < cfg.max_height)
    return GraspScene(intr, table, cloud, cloud_labels, instances, warn, label, workspace, pts)


LOW_OBJECT = 0.03  # an instance whose top is lower than this (a lying pen, a brick) is modelled finer, metres


def table_noise(height: np.ndarray, label: np.ndarray, valid: np.ndarray, band: float) -> float:
    """Robust standard deviation (1.4826 x MAD) of the table's heights: the depth noise there."""
    h = height[valid & (label == 0) & (np.abs(height) < band)]
    if len(h) < 50:
        return band
    return float(1.4826 * np.median(np.abs(h - np.median(h))))


def low_object_config(cfg: GraspConfig, top: float, noise: float) -> GraspConfig:
    """The instance-cloud settings for an object lower than LOW_OBJECT: a lying pen's sides, where
    the jaws close, lie within table_band of the table and are narrower than normal_radius. So the
    band shrinks to 3 x the table's depth noise (at least 3 mm), and the voxel (to top / 8, at
    least 2 mm) and the normal radius (to top / 2) follow the object's size."""
    voxel = min(cfg.voxel_size, max(0.002, top / 8))
    return replace(cfg, table_band=float(np.clip(3.0 * noise, 0.003, cfg.table_band)), voxel_size=voxel,
                   normal_radius=min(cfg.normal_radius, max(2.5 * voxel, top / 2)))


def occluded_points(visible: np.ndarray, pts: np.ndarray, depth: np.ndarray, mask: np.ndarray,
                    amodal: np.ndarray, table: Table, cfg: GraspConfig, upright: bool = False) -> np.ndarray:
    """Where the amodal mask says the object continues behind an occluder: points on those
    pixels' rays at the visible part's median depth, or just behind the occluder if that is
    farther, kept between the table and the visible top (voxel-downsampled). upright: at the
    ray's point nearest the vertical axis through the visible part's centroid instead of at the
    median depth: the hidden lower part of a standing object lies under its visible part, not
    in front of it (where a camera looking down puts the median depth of lower pixels)."""
    occ = np.asarray(amodal, bool) & ~np.asarray(mask, bool) & np.isfinite(depth)
    if not occ.any() or len(visible) == 0:
        return np.zeros((0, 3))
    z_occ = depth[occ]
    if upright:
        ray = pts[occ] / z_occ[:, None]  # unit depth along each pixel's ray
        ray_h = ray - np.outer(ray @ table.up, table.up)
        c = visible.mean(axis=0)
        c_h = c - (c @ table.up) * table.up
        z_ref = (ray_h @ c_h) / np.maximum(np.einsum("ij,ij->i", ray_h, ray_h), 1e-12)
    else:
        z_ref = float(np.median(visible[:, 2]))
    z = np.maximum(z_occ + 2 * cfg.voxel_size, z_ref)
    p = pts[occ] * (z / z_occ)[:, None]  # the same pixel ray at depth z
    h = table.height(p)
    top = float(np.percentile(table.height(visible), 98))
    p = p[(h > cfg.table_band) & (h <= top + cfg.voxel_size)]
    return voxel_downsample(p, cfg.voxel_size)[0] if len(p) else np.zeros((0, 3))


def round_footprint(q: np.ndarray, hull: np.ndarray, tol: float = 0.003) -> tuple[np.ndarray, float] | None:
    """(centre, radius) when the footprint looks round: a circle through most of the hull's
    vertices (a single view of a can, a bottle, a ball or a cup shows an arc of it, closed by a
    straight chord where the back is unseen) that contains every point; else None."""
    if len(hull) < 6:
        return None
    keep = np.ones(len(hull), bool)
    for _ in range(3):
        h = hull[keep]
        if len(h) < 5:
            return None
        a = np.column_stack([2 * h, np.ones(len(h))])  # Kasa: x^2 + y^2 = 2 c.x + (r^2 - |c|^2)
        sol, *_ = np.linalg.lstsq(a, (h ** 2).sum(axis=1), rcond=None)
        c = sol[:2]
        rad = float(np.sqrt(max(sol[2] + c @ c, 0.0)))
        res = np.abs(np.linalg.norm(hull - c, axis=1) - rad)
        keep = res <= tol
    on_arc = _arc_share(hull, keep)
    if not 0.005 < rad < 0.12 or on_arc < 0.5 or (np.linalg.norm(q - c, axis=1) > rad + tol).any():
        return None
    return c, rad


def _arc_share(poly: np.ndarray, on: np.ndarray) -> float:
    """Share of the polygon's perimeter whose both end vertices are flagged."""
    e = np.linalg.norm(np.roll(poly, -1, axis=0) - poly, axis=1)
    both = on & np.roll(on, -1)
    return float(e[both].sum() / max(e.sum(), 1e-12))


def hidden_sides(points: np.ndarray, table: Table, depth: np.ndarray, intr: Intrinsics,
                 amodal: np.ndarray | None, cfg: GraspConfig, normals: np.ndarray | None = None,
                 behind: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Points and outward normals on the walls of the prism between the instance's footprint
    (the convex hull of its points projected on the table) and its top, where the depth image
    does not contradict them; with an amodal mask, only where they project inside it.

    With ``normals`` (of the first len(normals) points, the visible ones) a round footprint is
    completed as a surface of revolution instead (revolved_sides): a bottle's shoulder, a
    sphere, a bowl's sloped wall (inside and out) keep their shape and normals on the far side.
    behind: see _carve (a low object's far side lies within the prism's tolerance of its top)."""
    e1, e2 = table.basis()
    h = table.height(points)
    top = float(np.percentile(h, 98))
    if top <= cfg.table_band:
        return np.zeros((0, 3)), np.zeros((0, 3))
    q = np.stack([points @ e1, points @ e2], axis=1)
    try:
        hull = ConvexHull(q)
    except (QhullError, ValueError):
        return np.zeros((0, 3)), np.zeros((0, 3))
    poly = q[hull.vertices]  # counter-clockwise
    if normals is not None:
        nv = len(normals)
        axis = revolution_axis(q[:nv], np.stack([normals @ e1, normals @ e2], axis=1), heights=h[:nv])
        rev = revolved_sides(points[:nv], normals, axis, table, cfg) if axis is not None else None
        if rev is not None:
            return _carve(*rev, depth, intr, amodal, cfg, behind=REVOLVE_BEHIND)
    circle = round_footprint(q, poly)
    if circle is not None:  # a round object's back is the rest of its circle, not the hull's chord
        c, rad = circle
        ang = np.linspace(0, 2 * np.pi, 64, endpoint=False)
        poly = c + rad * np.stack([np.cos(ang), np.sin(ang)], axis=1)
    step = cfg.voxel_size if behind is not None else max(cfg.voxel_size, 0.004)  # a low object: finer
    heights = np.arange(cfg.table_band + step / 2, top, step)
    if len(heights) == 0:
        heights = np.array([(cfg.table_band + top) / 2])
    wall_q, wall_n = [], []
    for a, b in zip(poly, np.roll(poly, -1, axis=0)):
        e = b - a
        ln = float(np.linalg.norm(e))
        if ln < 1e-6:
            continue
        s = (np.arange(max(1, int(np.ceil(ln / step)))) + 0.5) / max(1, int(np.ceil(ln / step)))
        wall_q.append(a + s[:, None] * e)
        wall_n.append(np.tile([e[1] / ln, -e[0] / ln], (len(s), 1)))  # outward for a CCW polygon
    if not wall_q:
        return np.zeros((0, 3)), np.zeros((0, 3))
    wq, wn = np.concatenate(wall_q), np.concatenate(wall_n)
    # 3D: in-plane position + height along up (the plane's own offset places z = 0 on the table)
    base = -table.offset * table.up
    pts = (base + wq[:, 0:1] * e1 + wq[:, 1:2] * e2)[:, None, :] + heights[None, :, None] * table.up
    nrm = np.repeat((wn[:, 0:1] * e1 + wn[:, 1:2] * e2)[:, None, :], len(heights), axis=1)
    pts, nrm = pts.reshape(-1, 3), nrm.reshape(-1, 3)
    return _carve(pts, nrm, depth, intr, amodal, cfg, behind=behind)


REVOLVE_BEHIND = 0.003  # a revolved point this far behind the visible surface is a hidden surface (a thin wall's far side)
REVOLVE_SIDE = 0.3  # |radial normal| above which a point is on an outer (+) or inner (-) wall, not a cap
THIN_WALL = 0.006  # assumed thickness of a wall seen only from the inside (a bowl from above), metres


def _carve(pts: np.ndarray, nrm: np.ndarray, depth: np.ndarray, intr: Intrinsics, amodal: np.ndarray | None,
           cfg: GraspConfig, behind: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The inferred points the depth image does not contradict: not where the camera saw past
    them, not on the visible surface (the visible points have it), and with an amodal mask,
    inside it. behind: a point more than this behind the visible surface is hidden, however
    close (default: the prism's tolerance on both sides)."""
    ok = pts[:, 2] > 1e-3
    pts, nrm = pts[ok], nrm[ok]
    u, v = project(pts, intr)
    hgt, wid = depth.shape
    inside = (u >= 0) & (u < wid) & (v >= 0) & (v < hgt)
    keep = np.ones(len(pts), bool)
    ui, vi = u[inside], v[inside]
    obs = depth[vi, ui]
    z = pts[inside, 2]
    tol = max(0.01, 3.0 * cfg.voxel_size)
    seen = np.isfinite(obs)
    if behind is None:
        through = seen & (obs > z + tol)  # the camera saw past this point: nothing is there
        surface = seen & (np.abs(obs - z) <= tol)  # on the visible surface: the visible points have it
    else:
        front = max(0.005, 1.5 * cfg.voxel_size)
        through = seen & (obs > z + front)
        surface = seen & (obs >= z - behind) & (obs <= z + front)
    drop = through | surface
    if amodal is not None:
        am = cv2.dilate(np.asarray(amodal, np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
        drop |= ~am[vi, ui]
    keep[np.flatnonzero(inside)[drop]] = False
    return pts[keep], nrm[keep]


def revolution_axis(q: np.ndarray, nq: np.ndarray, max_ratio: float = 0.15, heights: np.ndarray | None = None
                    ) -> tuple[np.ndarray, float] | None:
    """(centre, radius) in the table plane when the horizontal normals of the visible points meet
    at one vertical axis, as those of a surface of revolution do (a can, a bottle, a cup, a
    sphere, a bowl), else None: the least-squares meeting point of the normal lines, accepted
    when they come from enough directions and most pass it closer than max_ratio x their
    point's distance from it (about 8 degrees of normal error; a box's faces give parallel
    families that meet nowhere, a lying can's are all parallel). With the points' heights above
    the table, the centre is then refined from their positions (_refine_axis)."""
    ln = np.linalg.norm(nq, axis=1)
    ok = ln > 0.5
    for it in range(3):  # all walls first, then only the outer ones: an inside's normals are the noisier
        if ok.sum() < 10:
            return None
        d = nq[ok] / ln[ok, None]
        proj = np.eye(2)[None] - d[:, :, None] * d[:, None, :]  # projections across each normal line
        a = proj.sum(axis=0)
        if np.linalg.cond(a) > 10.0:
            return None
        c = np.linalg.solve(a, np.einsum("kij,kj->i", proj, q[ok]))
        outer = (ln > 0.5) & (np.einsum("ij,ij->i", nq, q - c) > REVOLVE_SIDE * np.linalg.norm(q - c, axis=1))
        if it == 2 or outer.sum() < 10 or (outer == ok).all():
            break
        ok = outer
    res = np.linalg.norm(np.einsum("kij,kj->ki", proj, q[ok] - c), axis=1)
    rho = np.linalg.norm(q[ok] - c, axis=1)
    rad = float(np.median(rho))
    if float(np.median(res / np.maximum(rho, 1e-3))) > max_ratio or not 0.005 < rad < 0.12:
        return None
    if heights is not None:
        c = _refine_axis(q, nq, heights, c, rad)
    return c, rad


def _refine_axis(q: np.ndarray, nq: np.ndarray, heights: np.ndarray, c: np.ndarray, rad: float,
                 band: float = 0.004) -> np.ndarray:
    """The axis from the points' positions, which are sharper than their normals: one circle per
    height band and wall side (outer, inner), all about one centre (a linear least-squares fit,
    |q|^2 = 2 q.c + k per circle). A one-sided view biases the normals' meeting point towards
    the camera by millimetres, enough to swap a mug's 4 mm wall inside out."""
    rel = q - c
    rho = np.maximum(np.linalg.norm(rel, axis=1), 1e-9)
    n_rad = np.einsum("ij,ij->i", nq, rel) / rho
    side = np.where(n_rad > REVOLVE_SIDE, 0, np.where(n_rad < -REVOLVE_SIDE, 1, -1))
    use = side >= 0
    if use.sum() < 10:
        return c
    out = c
    for _ in range(4):  # refit without the points off their circle (a mug's handle, mixed normals)
        if use.sum() < 10:
            break
        group = np.floor(heights[use] / band).astype(np.int64) * 2 + side[use]
        _, g = np.unique(group, return_inverse=True)
        a = np.zeros((int(use.sum()), 2 + int(g.max()) + 1))
        a[:, :2] = 2 * q[use]
        a[np.arange(len(g)), 2 + g] = 1.0
        sol, *_ = np.linalg.lstsq(a, (q[use] ** 2).sum(axis=1), rcond=None)
        if not np.isfinite(sol).all():
            break
        out = sol[:2]
        r2 = sol[2:][g] + out @ out
        res = np.abs(np.linalg.norm(q[use] - out, axis=1) - np.sqrt(np.maximum(r2, 0.0)))
        bad = res > max(0.002, 2.5 * float(np.median(res)))
        if not bad.any():
            break
        idx = np.flatnonzero(use)
        use[idx[bad]] = False
    return out if np.linalg.norm(out - c) < 0.5 * rad else c


def revolved_sides(points: np.ndarray, normals: np.ndarray, circle: tuple[np.ndarray, float], table: Table,
                   cfg: GraspConfig) -> tuple[np.ndarray, np.ndarray] | None:
    """A round object as the surface of revolution of what the camera sees of it: about the
    vertical axis of ``circle`` (revolution_axis), per height band of ``step`` the median radius and
    mean (radial, vertical) normal of its outer walls (normals pointing away from the axis) and
    of its inner walls (a bowl's or a cup's inside), turned into full rings. Outer bands the
    camera missed take the radius and normal of the nearest seen band (a prism below the lowest
    one); when only the inside is seen, the outside is the inside moved THIN_WALL out along its
    normal. None when too little of a wall is seen. Caps (a can's lid, a rim's top) are not
    revolved."""
    e1, e2 = table.basis()
    up = table.up
    q = np.stack([points @ e1, points @ e2], axis=1)
    nq = np.stack([normals @ e1, normals @ e2], axis=1)
    nu = normals @ up
    h = table.height(points)
    c = np.asarray(circle[0], float)
    rel = q - c
    rho = np.linalg.norm(rel, axis=1)
    radial = rel / np.maximum(rho, 1e-9)[:, None]
    n_rad = np.einsum("ij,ij->i", nq, radial)
    step = max(cfg.voxel_size, 0.004)
    top = float(np.percentile(h, 98))
    edges = np.arange(cfg.table_band, top + step, step)
    if len(edges) < 2:
        return None
    mids = (edges[:-1] + edges[1:]) / 2
    band = np.clip(np.digitize(h, edges) - 1, 0, len(mids) - 1)
    rings: dict[int, list[tuple[int, float, float, float]]] = {1: [], -1: []}
    for side in (1, -1):
        on = (side * n_rad > REVOLVE_SIDE) & (rho > 1e-3)
        for k in np.unique(band[on]):
            sel = on & (band == k)
            if sel.sum() < 3:
                continue
            a, b = float(n_rad[sel].mean()), float(nu[sel].mean())
            ln = float(np.hypot(a, b))
            rings[side].append((int(k), float(np.median(rho[sel])), a / ln, b / ln))
    if len(rings[1]) >= 2:
        # outer wall on every band: the nearest seen band's radius and normal where the camera missed it
        seen = {k: (r, a, b) for k, r, a, b in rings[1]}
        ks = np.array(sorted(seen))
        outer = [(mids[k], *seen[int(ks[np.argmin(np.abs(ks - k))])]) for k in range(len(mids))]
    elif len(rings[-1]) >= 2:
        # only the inside is seen (a bowl from above): the outside is its wall, THIN_WALL further out
        outer = [(mids[k] - b * THIN_WALL, r - a * THIN_WALL, -a, -b) for k, r, a, b in rings[-1]]
    else:
        return None
    pts, nrm = [], []
    base = -table.offset * up
    for z, r, a, b in outer + [(mids[k], r, a, b) for k, r, a, b in rings[-1]]:
        m = max(8, int(np.ceil(2 * np.pi * r / step)))
        ang = np.arange(m) * 2 * np.pi / m
        rad2 = np.stack([np.cos(ang), np.sin(ang)], axis=1)
        p2 = c + r * rad2
        dirs = rad2[:, 0:1] * e1 + rad2[:, 1:2] * e2
        pts.append(base + p2[:, 0:1] * e1 + p2[:, 1:2] * e2 + z * up)
        nrm.append(a * dirs + b * up)
    return np.concatenate(pts), np.concatenate(nrm)
