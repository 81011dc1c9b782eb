"""Write tiny copies of each dataset's on-disk layout (DESIGN.md section 5) into a folder.

Frames are small tabletop-like scenes: a table plane in depth with a few boxes on it, the
same boxes as instance ids. Each writer returns the dataset root; `scene()` gives the
arrays so tests can compare what a reader returns with what was written.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

from uois_sam_ros.core.data import rle

W, H = 64, 48
INTR = {"fx": 60.0, "fy": 61.0, "cx": 32.0, "cy": 24.0}


def scene(seed: int, w: int = W, h: int = H, n: int = 3) -> tuple[np.ndarray, np.ndarray, np.ndarray, list]:
    """(rgb uint8, depth uint16 mm, label int with ids 1..n, amodal masks) of a table with n boxes."""
    rng = np.random.default_rng(seed)
    yy = np.mgrid[:h, :w][0]
    depth = (900 - 4 * yy).astype(np.float64)  # a tilted table plane, 0.7-0.9 m
    rgb = np.full((h, w, 3), (150, 120, 90), np.uint8)
    label = np.zeros((h, w), np.int64)
    amodal = []
    for k in range(1, n + 1):
        y0, x0 = int(rng.integers(2, h - 14)), int(rng.integers(2, w - 14))
        bh, bw = int(rng.integers(6, 12)), int(rng.integers(6, 12))
        m = np.zeros((h, w), bool)
        m[y0:y0 + bh, x0:x0 + bw] = True
        amodal.append(m)
        label[m] = k
        depth[m] -= 40 + 10 * k
        rgb[m] = rng.integers(0, 255, 3)
    return rgb, np.round(depth).astype(np.uint16), label, amodal


def _write(path: Path, img: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if img.ndim == 3:
        img = cv2.cvtColor(img, cv2.COLOR_RGB2BGR)
    assert cv2.imwrite(str(path), img), path


def write_ocid(root: Path) -> dict[str, tuple[bool, np.ndarray]]:
    """OCID-dataset tree; returns {relative label path: (is_table, raw label written)}."""
    seqs = ["ARID20/table/top/seq01", "ARID20/floor/bottom/seq02",
            "ARID10/table/bottom/box/seq03", "YCB10/floor/top/mixed/seq04"]
    out = {}
    for s, seq in enumerate(seqs):
        table = "/table/" in seq
        for f in range(2):
            stem = f"result_2018-08-2{s}-1{f}-00-00"
            rgb, depth, label, _ = scene(10 * s + f)
            raw = label + 1 + int(table)  # objects start at 2 (floor) or 3 (floor + table)
            raw[label == 0] = 1  # floor everywhere else
            if table:
                raw[label == 0] = np.where(np.mgrid[:H, :W][0][label == 0] > H // 2, 2, 1)
            base = root / seq
            _write(base / "rgb" / f"{stem}.png", rgb)
            _write(base / "depth" / f"{stem}.png", depth)
            _write(base / "label" / f"{stem}.png", raw.astype(np.uint16))
            (base / "pcd").mkdir(exist_ok=True)
            out[f"{seq}/label/{stem}.png"] = (table, raw)
    return out


def write_osd(root: Path, amodal: bool = True, n: int = 3) -> Path:
    for i in range(n):
        stem = f"learn{i}"
        rgb, depth, label, am = scene(100 + i)
        _write(root / "image_color" / f"{stem}.png", rgb)
        _write(root / "disparity" / f"{stem}.png", depth)
        _write(root / "annotation" / f"{stem}.png", label.astype(np.uint8))
        (root / "pcd").mkdir(exist_ok=True)
        if amodal:
            for k, m in enumerate(am, 1):
                _write(root / "amodal_annotation" / f"{stem}_{k}.png", np.repeat((m * 255).astype(np.uint8)[..., None], 3, 2))
    return root


def write_phocal(root: Path, n_seq: int = 2, n_frames: int = 12, depth_scale: float = 1.0) -> Path:
    lines = []
    for s in range(1, n_seq + 1):
        seq = root / f"sequence_{s}"
        cam = {"rgb": {**INTR, "fx": INTR["fx"] + s, "depth_scale": depth_scale}}
        seq.mkdir(parents=True, exist_ok=True)
        (seq / "scene_camera.json").write_text(json.dumps(cam))
        for f in range(n_frames):
            stem = f"{f:06d}"
            rgb, depth, label, _ = scene(200 + 50 * s + f)
            _write(seq / "rgb" / f"{stem}.png", rgb)
            _write(seq / "depth" / f"{stem}.png", np.round(depth / depth_scale).astype(np.uint16))
            _write(seq / "mask" / f"{stem}.png", label.astype(np.uint8))
            lines.append(f"sequence_{s}/rgb/{stem}.png")
    (root / "data_list.txt").write_text("\n".join(lines) + "\n")
    return root


def write_housecat6d(root: Path, n_scene: int = 2, n_frames: int = 12) -> Path:
    for s in range(1, n_scene + 1):
        sc = root / "test_scene" / f"scene{s:02d}"
        sc.mkdir(parents=True, exist_ok=True)
        K = np.array([[INTR["fx"] * s, 0, INTR["cx"]], [0, INTR["fy"], INTR["cy"]], [0, 0, 1]])
        np.savetxt(sc / "intrinsics.txt", K)
        for f in range(n_frames):
            stem = f"{f:06d}"
            rgb, depth, label, _ = scene(400 + 50 * s + f)
            inst = np.where(label == 0, 255, label - 1)  # ids from 0, 255 = background
            _write(sc / "rgb" / f"{stem}.png", rgb)
            _write(sc / "depth" / f"{stem}.png", depth)
            _write(sc / "instance" / f"{stem}.png", inst.astype(np.uint8))
    return root


def write_uoais(root: Path, n: int = 3, compressed: bool = True) -> Path:
    """UOAIS-Sim COCO layout; the last object occludes part of the first. Returns the json path."""
    images, anns = [], []
    for i in range(n):
        rgb, depth, label, am = scene(600 + i)
        am[-1] = am[-1] | np.roll(am[0], 3, axis=1)  # grow the top object over object 1
        vis = [am[k] & ~np.any(am[k + 1:], axis=0) if k + 1 < len(am) else am[k] for k in range(len(am))]
        fn, dn = f"images/color/{i:06d}.png", f"images/depth/{i:06d}.png"
        _write(root / fn, rgb)
        _write(root / dn, depth)
        images.append({"id": i + 1, "file_name": fn, "depth_file_name": dn, "width": W, "height": H})
        for k in range(len(am)):
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "bbox": [0, 0, 1, 1],
                         "segmentation": rle.encode(am[k], compressed),
                         "visible_mask": rle.encode(vis[k], compressed), "visible_bbox": [0, 0, 1, 1],
                         "occluded_mask": rle.encode(am[k] & ~vis[k], compressed),
                         "occluded_rate": float(1 - vis[k].sum() / am[k].sum())})
    ann = root / "annotations" / "coco_anns_uoais_sim_val.json"
    ann.parent.mkdir(parents=True, exist_ok=True)
    ann.write_text(json.dumps({"images": images, "annotations": anns,
                               "categories": [{"id": 1, "name": "object"}]}))
    (root / "camera.json").write_text(json.dumps({**INTR, "width": W, "height": H}))
    return ann


def write_folder(root: Path, n: int = 3, labels: bool = True, depth: bool = True, camera: bool = True) -> Path:
    for i in range(n):
        rgb, d, label, _ = scene(800 + i)
        _write(root / "rgb" / f"frame{i:03d}.png", rgb)
        if depth:
            _write(root / "depth" / f"frame{i:03d}.png", d)
        if labels:
            _write(root / "label" / f"frame{i:03d}.png", label.astype(np.uint16))
    if camera:
        (root / "camera.json").write_text(json.dumps({**INTR, "width": W, "height": H, "depth_unit_m": 0.001}))
    return root


def write_flat_folder(root: Path, n: int = 3, labels: tuple[int, ...] = (0, 2), depth: bool = True,
                      camera: bool = True, token: str = "color") -> Path:
    """The flat layout of the camera fixtures: NNNN-color.png + NNNN-depth.png [+ NNNN-label.png]
    for the frames in labels, scene(800 + i) like write_folder, so both layouts hold the same data."""
    for i in range(n):
        rgb, d, label, _ = scene(800 + i)
        _write(root / f"{i:04d}-{token}.png", rgb)
        if depth:
            _write(root / f"{i:04d}-depth.png", d)
        if i in labels:
            _write(root / f"{i:04d}-label.png", label.astype(np.uint16))
    if camera:
        (root / "camera.json").write_text(json.dumps({**INTR, "width": W, "height": H, "depth_unit_m": 0.001}))
    (root / "LICENSE").write_text("not an image\n")
    return root
