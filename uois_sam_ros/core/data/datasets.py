"""Readers for the benchmark datasets and for plain user folders, all yielding core.types.Sample.

Each reader applies its dataset's ground-truth convention (DESIGN.md section 5) so that
`Sample.label` is always "0 = background, other values = visible instances". Depth is
float32 metres (0 = invalid). Intrinsics come from the dataset where it has them; where
it has none, the `intrinsics` argument (the CLI's --intrinsics / --camera) fills them in.
An Intrinsics with width = height = 0 means "whatever size the image has".

`sample_every=N` keeps one frame in N (within each sequence for PhoCAL / HouseCat6D, which
are videos; the papers use 1 in 10), `limit` caps the count after that.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from uois_sam_ros.core.data import rle
from uois_sam_ros.core.types import Intrinsics, Sample

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
KINDS = ("ocid", "osd", "phocal", "housecat6d", "uoais-sim", "folder")
OCID_SETS = ("ARID20", "ARID10", "YCB10")


class DatasetError(ValueError):
    """A dataset that cannot be read; the message names the path and what was expected."""


# ------------------------------------------------------------------------------------ file helpers
def read_rgb(path: Path) -> np.ndarray:
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise DatasetError(f"cannot read colour image {path}")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def read_depth(path: Path, scale: float = 0.001) -> np.ndarray:
    """uint16 depth PNG (millimetres by default) -> float32 metres, 0 = invalid."""
    d = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if d is None:
        raise DatasetError(f"cannot read depth image {path}")
    if d.ndim != 2:
        raise DatasetError(f"depth image {path} must have one channel, got shape {d.shape}")
    out = d.astype(np.float32) * np.float32(scale)
    out[~np.isfinite(out)] = 0
    return out


def read_label(path: Path) -> np.ndarray:
    """Instance-id PNG (8 or 16 bit); a 3-channel file uses its first channel."""
    lab = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if lab is None:
        raise DatasetError(f"cannot read label image {path}")
    if lab.ndim == 3:
        lab = lab[..., 0]
    return lab.astype(np.int64)


def _check_size(what: Path, a: np.ndarray | None, rgb: np.ndarray) -> None:
    if a is not None and a.shape[:2] != rgb.shape[:2]:
        raise DatasetError(f"{what}: size {a.shape[1]}x{a.shape[0]} does not match the colour image "
                           f"{rgb.shape[1]}x{rgb.shape[0]}")


def _images(d: Path) -> list[Path]:
    return sorted(p for p in d.iterdir() if p.suffix.lower() in IMAGE_EXTS) if d.is_dir() else []


def _by_stem(d: Path) -> dict[str, Path]:
    return {p.stem: p for p in _images(d)}


def _intrinsics_from_numbers(vals: np.ndarray, w: int, h: int, where: Path) -> Intrinsics:
    v = np.asarray(vals, np.float64).ravel()
    if v.size >= 9:
        K = v[:9].reshape(3, 3)
        return Intrinsics(K[0, 0], K[1, 1], K[0, 2], K[1, 2], w, h)
    if v.size == 4:
        return Intrinsics(v[0], v[1], v[2], v[3], w, h)
    raise DatasetError(f"{where}: expected a 3x3 matrix or fx fy cx cy, got {v.size} numbers")


def read_camera_json(path: Path) -> tuple[Intrinsics, float]:
    """camera.json: {fx, fy, cx, cy, width, height} or {K, width, height}; optional depth_scale
    or depth_unit_m (metres per depth unit, default 0.001)."""
    try:
        d = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise DatasetError(f"cannot read camera file {path}: {e}") from e
    if "width" not in d or "height" not in d:
        d = {**d, "width": 0, "height": 0}
    try:
        intr = Intrinsics.from_dict(d)
    except ValueError as e:
        raise DatasetError(f"{path}: {e}") from e
    return intr, float(d.get("depth_scale", d.get("depth_unit_m", 0.001)))


# ------------------------------------------------------------------------------------ the dataset
class Dataset:
    """A list of frame loaders; indexing loads one Sample."""

    def __init__(self, name: str, root: Path, loaders: list[tuple[str, Callable[[], Sample]]],
                 intrinsics: Intrinsics | None = None) -> None:
        self.name = name
        self.root = root
        self._loaders = loaders
        self.intrinsics = intrinsics

    def __len__(self) -> int:
        return len(self._loaders)

    @property
    def names(self) -> list[str]:
        return [n for n, _ in self._loaders]

    def __getitem__(self, i: int) -> Sample:
        if not -len(self) <= i < len(self):
            raise IndexError(f"{self.name} has {len(self)} frames, index {i} is out of range")
        s = self._loaders[i][1]()
        if s.intrinsics is None and self.intrinsics is not None:
            s.intrinsics = self._fit(self.intrinsics, s)
        return s

    def __iter__(self):
        for i in range(len(self)):
            yield self[i]

    def _fit(self, intr: Intrinsics, s: Sample) -> Intrinsics:
        h, w = s.rgb.shape[:2]
        if (intr.width, intr.height) in ((0, 0), (w, h)):
            return Intrinsics(intr.fx, intr.fy, intr.cx, intr.cy, w, h)
        raise DatasetError(f"the given intrinsics are for {intr.width}x{intr.height}, but {s.name} is {w}x{h}")


def _select(items: list, sample_every: int, limit: int | None) -> list:
    if sample_every < 1:
        raise DatasetError(f"sample_every must be >= 1, got {sample_every}")
    items = items[::sample_every]
    return items[:limit] if limit is not None else items


def _select_per_sequence(frames: list[tuple[Path, str]], sample_every: int, limit: int | None) -> list:
    """One frame in N within each sequence (videos), keeping the listed order."""
    if sample_every < 1:
        raise DatasetError(f"sample_every must be >= 1, got {sample_every}")
    seen: dict[Path, int] = {}
    out = []
    for seq, stem in frames:
        n = seen.get(seq, 0)
        seen[seq] = n + 1
        if n % sample_every == 0:
            out.append((seq, stem))
    return out[:limit] if limit is not None else out


def _flat_name(rel: Path) -> str:
    """A file-system-safe unique stem for a relative path (predictions are paired by it)."""
    parts = [p for p in rel.with_suffix("").parts if p not in ("rgb", "image_color")]
    return "__".join(parts)


# ------------------------------------------------------------------------------------ OCID
def ocid_table_sequence(path: Path) -> bool:
    """True when a frame lies in a `table` sequence: the component after ARID20/ARID10/YCB10.

    Not a 'table' substring anywhere in the path (a known bug of the reference code); if the
    set folder was renamed, an exact `table` component is the fallback.
    """
    parts = Path(path).parts
    for i, p in enumerate(parts[:-1]):
        if p in OCID_SETS:
            return parts[i + 1] == "table"
    return "table" in parts


def read_ocid(root: Path, sample_every: int = 1, limit: int | None = None) -> list:
    """OCID-dataset (any sub-tree of it)::

        OCID-dataset/
          ARID20/{floor,table}/{bottom,top}/seqNN/{rgb,depth,label,pcd}/<stem>.png
          ARID10/{floor,table}/{bottom,top}/{box,curved,fruits,mixed,non-fruits,...}/seqNN/...
          YCB10/{floor,table}/{bottom,top}/{box,cuboid,curved,mixed,...}/seqNN/...

    depth: uint16 mm. label: id 0 = none, 1 = floor, 2 = table (in table sequences), >= 2 or
    >= 3 objects. Floor (and table in table sequences) become background. No intrinsics.
    """
    labels = sorted(p for p in root.rglob("*.png") if p.parent.name == "label")
    items = []
    for lab in labels:
        seq = lab.parent.parent
        rgb = seq / "rgb" / lab.name
        if rgb.is_file():
            items.append((seq, rgb, lab))
    if not items:
        raise DatasetError(f"no OCID frames under {root}: expected .../seqNN/rgb/*.png with .../seqNN/label/*.png")
    out = []
    for seq, rgb, lab in _select(items, sample_every, limit):
        depth = seq / "depth" / lab.name
        table = ocid_table_sequence(lab.resolve())

        def load(rgb=rgb, lab=lab, depth=depth, table=table) -> Sample:
            img = read_rgb(rgb)
            label = read_label(lab)
            label[label == 1] = 0
            if table:
                label[label == 2] = 0
            d = read_depth(depth) if depth.is_file() else None
            _check_size(lab, label, img)
            _check_size(depth, d, img)
            return Sample(img, d, None, label, _flat_name(rgb.relative_to(root)))

        out.append((_flat_name(rgb.relative_to(root)), load))
    return out


# ------------------------------------------------------------------------------------ OSD
def read_osd(root: Path, sample_every: int = 1, limit: int | None = None) -> list:
    """OSD-0.2-depth, with the OSD-Amodal annotations when present::

        OSD-0.2-depth/
          image_color/<stem>.png      annotation/<stem>.png (0 = background)
          disparity/<stem>.png        (uint16 depth in mm, despite the name)
          pcd/<stem>.pcd
          amodal_annotation/<stem>_<id>.png     (OSD-Amodal: one mask per object, nonzero = inside)
          occlusion_annotation/<stem>_<id>.png  (OSD-Amodal; not needed here)

    The amodal files' <id> is the object's id in annotation/<stem>.png. No intrinsics.
    """
    rgbs = _images(root / "image_color")
    if not rgbs:
        raise DatasetError(f"no OSD frames under {root}: expected image_color/*.png and annotation/*.png")
    amodal: dict[str, list[tuple[int, Path]]] = {}
    for p in _images(root / "amodal_annotation"):
        m = re.fullmatch(r"(.+)_(\d+)", p.stem)
        if m:
            amodal.setdefault(m.group(1), []).append((int(m.group(2)), p))
    out = []
    for rgb in _select(rgbs, sample_every, limit):
        lab = root / "annotation" / f"{rgb.stem}.png"
        depth = root / "disparity" / f"{rgb.stem}.png"
        if not lab.is_file():
            raise DatasetError(f"OSD frame {rgb.name} has no annotation/{lab.name}")

        def load(rgb=rgb, lab=lab, depth=depth, am=sorted(amodal.get(rgb.stem, []))) -> Sample:
            img = read_rgb(rgb)
            label = read_label(lab)
            d = read_depth(depth) if depth.is_file() else None
            _check_size(lab, label, img)
            _check_size(depth, d, img)
            masks = ids = None
            if am:
                masks = np.stack([read_label(p) > 0 for _, p in am])
                ids = np.array([i for i, _ in am], np.int64)
                _check_size(am[0][1], masks[0], img)
            return Sample(img, d, None, label, rgb.stem, amodal=masks, amodal_ids=ids)

        out.append((rgb.stem, load))
    return out


# ------------------------------------------------------------------------------------ PhoCAL
def read_phocal(root: Path, sample_every: int = 1, limit: int | None = None) -> list:
    """PhoCAL::

        PhoCAL/
          data_list.txt           one frame a line: 'sequence_N/rgb/000000.png' or 'sequence_N 000000'
          sequence_N/
            scene_camera.json     {"rgb": {"fx", "fy", "cx", "cy", "width"?, "height"?, "depth_scale"}}
            rgb/000000.png  depth/000000.png (uint16, x depth_scale = mm)  mask/000000.png (0 = bg)

    Without data_list.txt every sequence_*/rgb/*.png is used.
    """
    lst = root / "data_list.txt"
    frames: list[tuple[Path, str]] = []
    if lst.is_file():
        for n, line in enumerate(lst.read_text().splitlines(), 1):
            tok = line.strip().split()
            if not tok or tok[0].startswith("#"):
                continue
            if len(tok) >= 2:
                seq, stem = root / tok[0], Path(tok[1]).stem
            else:
                p = Path(tok[0])
                seq, stem = root / (p.parent.parent if p.parent.name == "rgb" else p.parent), p.stem
            rgb = seq / "rgb" / f"{stem}.png"
            if not rgb.is_file():
                raise DatasetError(f"{lst}:{n}: frame {line.strip()!r} has no file {rgb}")
            frames.append((seq, stem))
    else:
        for seq in sorted(p for p in root.iterdir() if p.is_dir() and (p / "rgb").is_dir()):
            frames += [(seq, p.stem) for p in _images(seq / "rgb")]
    if not frames:
        raise DatasetError(f"no PhoCAL frames under {root}: expected data_list.txt and sequence_*/rgb/*.png")
    cams: dict[Path, tuple[Intrinsics | None, float]] = {}
    out = []
    for seq, stem in _select_per_sequence(frames, sample_every, limit):
        if seq not in cams:
            cams[seq] = _phocal_camera(seq)

        def load(seq=seq, stem=stem, cam=cams[seq]) -> Sample:
            img = read_rgb(seq / "rgb" / f"{stem}.png")
            h, w = img.shape[:2]
            intr = cam[0] and Intrinsics(cam[0].fx, cam[0].fy, cam[0].cx, cam[0].cy, w, h)
            dp, mp = seq / "depth" / f"{stem}.png", seq / "mask" / f"{stem}.png"
            d = read_depth(dp, cam[1] / 1000.0) if dp.is_file() else None
            label = read_label(mp) if mp.is_file() else None
            _check_size(dp, d, img)
            _check_size(mp, label, img)
            return Sample(img, d, intr, label, f"{seq.name}__{stem}")

        out.append((f"{seq.name}__{stem}", load))
    return out


def _phocal_camera(seq: Path) -> tuple[Intrinsics | None, float]:
    f = seq / "scene_camera.json"
    if not f.is_file():
        return None, 1.0
    try:
        d = json.loads(f.read_text())
        c = d.get("rgb", d)
        intr = Intrinsics(float(c["fx"]), float(c["fy"]), float(c["cx"]), float(c["cy"]), 0, 0)
        return intr, float(c.get("depth_scale", 1.0))
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise DatasetError(f"{f}: expected {{'rgb': {{fx, fy, cx, cy, depth_scale}}}}: {e}") from e


# ------------------------------------------------------------------------------------ HouseCat6D
def read_housecat6d(root: Path, sample_every: int = 1, limit: int | None = None) -> list:
    """HouseCat6D::

        HouseCat6D/
          sceneNN/                 (scene folders, possibly under test/ or val_scene/...)
            intrinsics.txt         3x3 K (or fx fy cx cy)
            rgb/000000.png  depth/000000.png (uint16 mm)  instance/000000.png (255 = background)

    255 becomes 0 (background).
    """
    scenes = sorted({p.parent.parent for p in root.rglob("*.png") if p.parent.name == "rgb"
                     and (p.parent.parent / "instance").is_dir()})
    frames = [(s, p.stem) for s in scenes for p in _images(s / "rgb")]
    if not frames:
        raise DatasetError(f"no HouseCat6D frames under {root}: expected <scene>/rgb/*.png with <scene>/instance/*.png")
    Ks: dict[Path, np.ndarray | None] = {}
    out = []
    for scene, stem in _select_per_sequence(frames, sample_every, limit):
        if scene not in Ks:
            kf = scene / "intrinsics.txt"
            try:
                Ks[scene] = np.loadtxt(kf) if kf.is_file() else None
            except ValueError as e:
                raise DatasetError(f"{kf}: not a numeric matrix: {e}") from e
        name = _flat_name((scene / stem).relative_to(root))

        def load(scene=scene, stem=stem, K=Ks[scene], name=name) -> Sample:
            img = read_rgb(scene / "rgb" / f"{stem}.png")
            h, w = img.shape[:2]
            intr = None if K is None else _intrinsics_from_numbers(K, w, h, scene / "intrinsics.txt")
            dp, ip = scene / "depth" / f"{stem}.png", scene / "instance" / f"{stem}.png"
            d = read_depth(dp) if dp.is_file() else None
            label = read_label(ip) if ip.is_file() else None
            if label is not None:
                label[label == 255] = 0
            _check_size(dp, d, img)
            _check_size(ip, label, img)
            return Sample(img, d, intr, label, name)

        out.append((name, load))
    return out


# ------------------------------------------------------------------------------------ UOAIS-Sim (COCO)
_IMAGE_FIELDS = ("depth_file_name", "width", "height", "intrinsics", "K", "depth_scale")


def _merge_image_entries(images: list, by_image: dict, where: Path) -> list[tuple[dict, list]]:
    """One frame per file_name: some exporters write one image entry per annotation, so entries
    that name the same file are one frame with the annotations of all of them (each annotation
    once). Frames keep the order of their first entry by id; the entries must agree on the other
    fields (depth file, size, intrinsics)."""
    frames: dict[str, tuple[dict, list, set]] = {}
    for im in sorted(images, key=lambda i: i.get("id", 0) if isinstance(i, dict) else 0):
        if not isinstance(im, dict) or "file_name" not in im:
            raise DatasetError(f"{where}: image entry {im.get('id') if isinstance(im, dict) else im!r} "
                               "has no file_name")
        fn = im["file_name"]
        if fn not in frames:
            frames[fn] = (dict(im), [], set())
        merged, objs, seen = frames[fn]
        for k in _IMAGE_FIELDS:
            if k in im and k in merged and im[k] != merged[k]:
                raise DatasetError(f"{where}: image entries {merged.get('id')} and {im.get('id')} both list "
                                   f"{fn} but disagree on {k}: {merged[k]!r} vs {im[k]!r}")
            if k in im:
                merged[k] = im[k]
        if im.get("id") in seen:
            continue  # the same entry twice: its annotations count once
        seen.add(im.get("id"))
        objs.extend(by_image.get(im.get("id"), []))
    return [(merged, objs) for merged, objs, _ in frames.values()]


def read_uoais_sim(root: Path, annotations: Path | None, sample_every: int = 1,
                   limit: int | None = None) -> list:
    """UOAIS-Sim-style COCO json (file names relative to root)::

        images[]:      {id, file_name, depth_file_name, width, height,
                        [intrinsics: {fx, fy, cx, cy} | [fx, fy, cx, cy] | 3x3, or K]}
        annotations[]: {image_id, bbox, segmentation (amodal RLE), visible_mask (RLE),
                        visible_bbox, occluded_mask (RLE), occluded_rate}

    RLEs may be compressed strings or count lists. Depth PNGs: uint16 mm (or 'depth_scale'
    in metres per unit on the image entry). Instance k (1-based, in annotation order) is
    drawn where its visible mask is set; amodal masks come from 'segmentation'. Image entries
    that list the same file_name are one frame with all their annotations.
    A root/camera.json supplies intrinsics the images do not carry.
    """
    if annotations is None:
        raise DatasetError("uoais-sim needs --annotations FILE.json (COCO-style, file names relative to --root)")
    annotations = Path(annotations)
    if not annotations.is_file():
        raise DatasetError(f"annotation file not found: {annotations}")
    try:
        doc = json.loads(annotations.read_text())
        images = doc["images"]
        anns = doc.get("annotations", [])
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise DatasetError(f"{annotations}: not a COCO-style json with 'images' and 'annotations': {e}") from e
    cam = read_camera_json(root / "camera.json") if (root / "camera.json").is_file() else None
    by_image: dict = {}
    for a in anns:
        by_image.setdefault(a.get("image_id"), []).append(a)
    out = []
    for im, objs in _select(_merge_image_entries(images, by_image, annotations), sample_every, limit):
        name = _flat_name(Path(im["file_name"]))

        def load(im=im, name=name, objs=objs) -> Sample:
            img = read_rgb(root / im["file_name"])
            h, w = img.shape[:2]
            if (int(im.get("height", h)), int(im.get("width", w))) != (h, w):
                raise DatasetError(f"{im['file_name']}: json says {im.get('width')}x{im.get('height')}, "
                                   f"image is {w}x{h}")
            d = None
            if im.get("depth_file_name"):
                d = read_depth(root / im["depth_file_name"], float(im.get("depth_scale", cam[1] if cam else 0.001)))
                _check_size(root / im["depth_file_name"], d, img)
            intr = None
            if "intrinsics" in im or "K" in im:
                v = im.get("intrinsics", im.get("K"))
                if isinstance(v, dict):
                    v = [v.get(k) for k in ("fx", "fy", "cx", "cy")]
                try:
                    intr = _intrinsics_from_numbers(np.asarray(v, np.float64), w, h, annotations)
                except (TypeError, ValueError) as e:
                    raise DatasetError(f"{annotations}: bad intrinsics on {im['file_name']}: {v!r}") from e
            elif cam is not None:
                c = cam[0]
                intr = Intrinsics(c.fx, c.fy, c.cx, c.cy, w, h)
            label = np.zeros((h, w), np.int64)
            amodal = []
            for k, a in enumerate(sorted(objs, key=lambda a: a.get("id", 0)), 1):
                try:
                    vis = rle.decode(a["visible_mask"], h, w) if "visible_mask" in a else None
                    am = rle.decode(a["segmentation"], h, w) if "segmentation" in a else None
                except rle.RLEError as e:
                    raise DatasetError(f"{annotations}: annotation {a.get('id')} of {im['file_name']}: {e}") from e
                if vis is None:
                    vis = am
                if vis is None:
                    raise DatasetError(f"{annotations}: annotation {a.get('id')} has no visible_mask or segmentation")
                label[vis] = k
                amodal.append(am if am is not None else vis)
            masks = np.stack(amodal) if amodal else np.zeros((0, h, w), bool)
            return Sample(img, d, intr, label, name, amodal=masks,
                          amodal_ids=np.arange(1, len(amodal) + 1, dtype=np.int64))

        out.append((name, load))
    if not out:
        raise DatasetError(f"{annotations}: no images listed")
    return out


# ------------------------------------------------------------------------------------ user folders
# The one folder format of the package: `uois-sam-eval --dataset folder`, `uois-sam-bag from-dataset
# --dataset folder` and the camera node's `folder` source all read it through discover_folder().
COLOR_TOKENS = ("rgb-img", "rgb_img", "color", "colour", "rgb")
_COLOR_RE = re.compile(r"(?:^|(?<=[-_. ]))(" + "|".join(re.escape(t) for t in COLOR_TOKENS) + r")(?=$|[-_. ])",
                       re.IGNORECASE)
_NOT_COLOR_RE = re.compile(r"(?:^|[-_. ])(depth|label|mask)(?:$|[-_. ])", re.IGNORECASE)
DEPTH_EXTS = (".png", ".tif", ".tiff")
FOLDER_HELP = ("rgb/<stem>.png (optional depth/<stem>.png, label/<stem>.png) or flat NNNN-color.png "
               "(optional NNNN-depth.png, NNNN-label.png), plus an optional camera.json")


@dataclass(frozen=True)
class FolderFrame:
    """One frame of a user folder: its name (predictions are paired by it) and its files."""

    name: str
    rgb: Path
    depth: Path | None
    label: Path | None


def _partner(d: Path, base: str, exts: tuple[str, ...]) -> Path | None:
    for ext in exts:
        p = d / f"{base}{ext}"
        if p.is_file():
            return p
    return None


def _flat_frames(root: Path) -> list[FolderFrame]:
    """NNNN-color.png beside NNNN-depth.png / NNNN-label.png (also -colour, -rgb, -rgb-img, any
    separator, e.g. 000080-opaque-rgb-img.jpg + 000080-opaque-depth.png)."""
    out = []
    for p in _images(root):
        if _NOT_COLOR_RE.search(p.stem):
            continue
        matches = list(_COLOR_RE.finditer(p.stem))
        if not matches:
            continue
        m = matches[-1]  # the last colour token names the frame
        pre, post = p.stem[: m.start()], p.stem[m.end():]
        name = (pre.rstrip("-_. ") + ("_" if pre.strip("-_. ") and post.strip("-_. ") else "")
                + post.lstrip("-_. ")) or p.stem
        out.append(FolderFrame(name, p, _partner(root, f"{pre}depth{post}", DEPTH_EXTS),
                               _partner(root, f"{pre}label{post}", (".png",))))
    return out


def discover_folder(root: str | Path) -> list[FolderFrame]:
    """The frames of a user folder, in either layout, sorted by name::

        root/rgb/<stem>.png|jpg  [depth/<stem>.png]  [label/<stem>.png]  [camera.json]
        root/NNNN-color.png      [NNNN-depth.png]    [NNNN-label.png]    [camera.json]

    rgb/ wins when it holds images. Depth and labels are optional per frame (callers that need
    depth say so). Raises DatasetError when there is no frame or two frames get the same name.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"folder not found: {root}")
    rgbs = _images(root / "rgb")
    if rgbs:
        depths, labels = _by_stem(root / "depth"), _by_stem(root / "label")
        frames = [FolderFrame(p.stem, p, depths.get(p.stem), labels.get(p.stem)) for p in rgbs]
    else:
        frames = _flat_frames(root)
    if not frames:
        raise DatasetError(f"no images under {root}: a folder dataset needs {FOLDER_HELP}")
    seen: dict[str, Path] = {}
    for f in frames:
        if f.name in seen:
            raise DatasetError(f"{seen[f.name].name} and {f.rgb.name} in {f.rgb.parent} are both frame {f.name!r}")
        seen[f.name] = f.rgb
    return sorted(frames, key=lambda f: f.name)


def folder_camera(root: str | Path, camera_json: str | Path | None = None) -> tuple[Intrinsics, float] | None:
    """(intrinsics, metres per depth unit) from camera_json or root/camera.json; None when absent."""
    path = Path(camera_json) if camera_json else Path(root) / "camera.json"
    if camera_json and not path.is_file():
        raise DatasetError(f"camera file not found: {path}")
    return read_camera_json(path) if path.is_file() else None


def fit_intrinsics(intr: Intrinsics, w: int, h: int, where: str | Path) -> Intrinsics:
    """Intrinsics for a w x h image: as given for 0x0 or the same size, scaled for a uniform resize
    (same aspect ratio); another aspect ratio (a crop) is an error."""
    if (intr.width, intr.height) in ((0, 0), (w, h)):
        return dataclasses.replace(intr, width=w, height=h)
    if intr.width > 0 and intr.height > 0 and abs(w / h - intr.width / intr.height) < 0.01 * w / h:
        return intr.scaled(w, h)
    raise DatasetError(f"{where} is for {intr.width}x{intr.height}, the image is {w}x{h} (another aspect ratio)")


def load_folder_frame(f: FolderFrame, cam: tuple[Intrinsics, float] | None, camera_path: str | Path = "camera.json",
                      need_depth: bool = False) -> Sample:
    """Read one FolderFrame: rgb, depth in metres (x the camera's depth unit, default 1 mm), labels."""
    img = read_rgb(f.rgb)
    h, w = img.shape[:2]
    if need_depth and f.depth is None:
        raise DatasetError(f"{f.rgb.name} has no depth image (expected {f.name}-depth.png or depth/{f.name}.png)")
    d = read_depth(f.depth, cam[1] if cam else 0.001) if f.depth else None
    label = read_label(f.label) if f.label else None
    _check_size(f.depth, d, img)
    _check_size(f.label, label, img)
    intr = fit_intrinsics(cam[0], w, h, camera_path) if cam is not None else None
    return Sample(img, d, intr, label, f.name)


def read_folder(root: Path, sample_every: int = 1, limit: int | None = None) -> list:
    """A plain folder of user data (see discover_folder for the two layouts)::

        rgb/<stem>.png|jpg, depth/<stem>.png, label/<stem>.png    or
        NNNN-color.png, NNNN-depth.png, NNNN-label.png
        camera.json   optional {fx, fy, cx, cy, width, height[, depth_scale | depth_unit_m]}

    Depth: uint16 x the camera's depth unit (default 1 mm). Labels: instance ids, 0 = background.
    """
    frames = discover_folder(root)
    cam = folder_camera(root)
    cam_path = root / "camera.json"
    return [(f.name, lambda f=f: load_folder_frame(f, cam, cam_path)) for f in _select(frames, sample_every, limit)]


# ------------------------------------------------------------------------------------ entry point
def open_dataset(kind: str, root: str | Path, annotations: str | Path | None = None, *,
                 intrinsics: Intrinsics | None = None, sample_every: int = 1,
                 limit: int | None = None) -> Dataset:
    """Open one of KINDS at root. Raises DatasetError with a one-line reason."""
    k = kind.lower().replace("_", "-")
    if k in ("uoais", "coco"):
        k = "uoais-sim"
    if k not in KINDS:
        raise DatasetError(f"unknown dataset {kind!r}; choose one of {', '.join(KINDS)}")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DatasetError(f"{k} root folder not found: {root}")
    if limit is not None and limit < 0:
        raise DatasetError(f"limit must be >= 0, got {limit}")
    if k == "ocid":
        loaders = read_ocid(root, sample_every, limit)
    elif k == "osd":
        loaders = read_osd(root, sample_every, limit)
    elif k == "phocal":
        loaders = read_phocal(root, sample_every, limit)
    elif k == "housecat6d":
        loaders = read_housecat6d(root, sample_every, limit)
    elif k == "uoais-sim":
        loaders = read_uoais_sim(root, Path(annotations) if annotations else None, sample_every, limit)
    else:
        loaders = read_folder(root, sample_every, limit)
    return Dataset(k, root, loaders, intrinsics)
