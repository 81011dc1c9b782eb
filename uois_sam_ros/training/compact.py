"""Compact copy of a UOAIS-Sim-style set for SAM training on a machine reached only by a size-capped copy.

``python -m uois_sam_ros.training.compact --src syn_train --out .gpu_data/train --max-side 512 --quality 85``

The GPU machine gets files only through the device tool's working-tree copy (64 MiB in all), and the
1000-scene training set is 700 MB of PNG colour + depth + amodal masks. SAM training
(uois-sam-train-sam --data) reads only the colour image and the visible instance masks, so this
writes just those: colour as JPEG with its longest side at most --max-side (512 = vit_synth's encoder
input, so the encoder sees the same pixels it would have resized to), and per instance the visible
mask, resized with nearest neighbour from the same label map and re-encoded as COCO RLE at the new
size. Depth, amodal ('segmentation') and occluded masks are left out; the uoais-sim reader accepts an
image entry without depth_file_name and takes the visible mask as the amodal one. Intrinsics are
scaled to the new size (pixel centres at integer coordinates), so the set stays a valid UOAIS-Sim
folder for the other readers too. Instances that vanish at the new size are dropped.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from uois_sam_ros.core.data import rle
from uois_sam_ros.core.data.datasets import DatasetError, open_dataset
from uois_sam_ros.core.types import Intrinsics

MARK = "uois_sam_ros.training.compact"  # info.compact.tool: a folder this module wrote (safe to replace)


def target_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    """(w, h) with the longest side at most max_side, aspect kept; never upscales."""
    s = max_side / max(width, height)
    if s >= 1.0:
        return width, height
    return max(1, int(round(width * s))), max(1, int(round(height * s)))


def scale_intrinsics(intr: Intrinsics, width: int, height: int) -> dict[str, float]:
    """fx, fy, cx, cy for the image resized to (width, height), with pixel centres at integer
    coordinates (the package's convention): c' = (c + 0.5) * s - 0.5."""
    sx, sy = width / intr.width, height / intr.height
    return {"fx": intr.fx * sx, "fy": intr.fy * sy, "cx": (intr.cx + 0.5) * sx - 0.5,
            "cy": (intr.cy + 0.5) * sy - 0.5}


def _bbox(mask: np.ndarray) -> list[int]:
    ys, xs = np.nonzero(mask)
    return [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)]


def compact_dataset(src: str | Path, out: str | Path, *, max_side: int = 512, quality: int = 85,
                    limit: int | None = None, annotations: str | Path | None = None,
                    progress: bool = False) -> dict[str, Any]:
    """Write the compact copy of src (a UOAIS-Sim folder) to out; returns a summary (counts, bytes).

    out is written beside itself first and then swapped in, so an interrupted export never leaves a
    half-written set; an existing out is replaced only when this module wrote it."""
    src, out = Path(src), Path(out)
    if max_side < 16:
        raise ValueError(f"--max-side must be at least 16, got {max_side}")
    if not 1 <= quality <= 100:
        raise ValueError(f"--quality must be 1..100, got {quality}")
    if not src.is_dir():
        raise DatasetError(f"source folder not found: {src}")
    if out.exists() and any(out.iterdir()) and not _written_here(out):
        raise DatasetError(f"{out} exists and was not written by {MARK}: choose an empty or new --out")
    ann = Path(annotations) if annotations else src / "annotations.json"
    ds = open_dataset("uoais-sim", src, ann, limit=limit)
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "color").mkdir(parents=True)
    images: list[dict[str, Any]] = []
    anns: list[dict[str, Any]] = []
    dropped = 0
    first: dict[str, Any] | None = None
    it: Any = range(len(ds))
    if progress:
        from tqdm import tqdm
        it = tqdm(it, desc=f"compact {src.name}", unit="img", file=sys.stderr)
    for i in it:
        s = ds[i]
        if s.label is None:
            raise DatasetError(f"{s.name} has no visible instance labels")
        h, w = s.rgb.shape[:2]
        nw, nh = target_size(w, h, max_side)
        rgb = s.rgb if (nw, nh) == (w, h) else cv2.resize(s.rgb, (nw, nh), interpolation=cv2.INTER_AREA)
        lab = s.label if (nw, nh) == (w, h) else cv2.resize(s.label.astype(np.int32), (nw, nh),
                                                              interpolation=cv2.INTER_NEAREST)
        name = f"color/{i:06d}.jpg"
        ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
        if not ok:
            raise DatasetError(f"could not encode {s.name} as JPEG")
        (tmp / name).write_bytes(buf.tobytes())
        entry: dict[str, Any] = {"id": i + 1, "file_name": name, "width": nw, "height": nh, "source_name": s.name}
        if s.intrinsics is not None:
            entry["intrinsics"] = scale_intrinsics(s.intrinsics, nw, nh)
            if first is None:
                first = {"width": nw, "height": nh, **entry["intrinsics"]}
        images.append(entry)
        for oid in range(1, int(s.label.max()) + 1):  # the reader's ids: annotation order, 1-based
            vis = lab == oid
            if not vis.any():
                dropped += int((s.label == oid).any())
                continue
            box = _bbox(vis)
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": 1, "iscrowd": 0,
                         "area": int(vis.sum()), "bbox": box, "visible_mask": rle.encode(vis), "visible_bbox": box})
    doc = {"info": {"description": f"compact copy of {src} for SAM training (colour + visible masks)",
                    "compact": {"tool": MARK, "source": str(src), "max_side": max_side, "jpeg_quality": quality,
                                "images": len(images), "instances": len(anns),
                                "instances_dropped": dropped}},
           "images": images, "annotations": anns,
           "categories": [{"id": 1, "name": "object", "supercategory": "object"}]}
    (tmp / "annotations.json").write_text(json.dumps(doc, separators=(",", ":")))
    if first is not None:
        (tmp / "camera.json").write_text(json.dumps(first, indent=1))
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    colour = sum(p.stat().st_size for p in (out / "color").iterdir())
    total = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    return {"out": str(out), "images": len(images), "instances": len(anns), "instances_dropped": dropped,
            "colour_bytes": colour, "annotation_bytes": (out / "annotations.json").stat().st_size,
            "total_bytes": total}


def _written_here(out: Path) -> bool:
    try:
        return json.loads((out / "annotations.json").read_text())["info"]["compact"]["tool"] == MARK
    except (OSError, ValueError, KeyError, TypeError):
        return False


def main(argv: list[str] | None = None) -> int:
    """The CLI: one summary line, or one error line and exit 2."""
    p = argparse.ArgumentParser(prog="python -m uois_sam_ros.training.compact", description=__doc__.splitlines()[0])
    p.add_argument("--src", required=True, help="UOAIS-Sim-style folder (uois-sam-synth --out writes one)")
    p.add_argument("--annotations", help="its COCO json (default SRC/annotations.json)")
    p.add_argument("--out", required=True, help="folder to write (replaced when this tool wrote it before)")
    p.add_argument("--max-side", type=int, default=512, help="longest image side after resizing (no upscaling)")
    p.add_argument("--quality", type=int, default=85, help="JPEG quality of the colour images")
    p.add_argument("--limit", type=int, help="only the first N images")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    a = p.parse_args(argv)
    t0 = time.time()
    try:
        r = compact_dataset(a.src, a.out, max_side=a.max_side, quality=a.quality, limit=a.limit,
                            annotations=a.annotations, progress=not a.quiet)
    except (DatasetError, ValueError, OSError) as e:
        print(f"compact: error: {e}", file=sys.stderr)
        return 2
    mib = 2.0 ** 20
    print(f"{r['out']}: {r['images']} images, {r['instances']} instances ({r['instances_dropped']} too small at "
          f"--max-side {a.max_side}), {r['total_bytes'] / mib:.2f} MiB (colour {r['colour_bytes'] / mib:.2f}, "
          f"annotations {r['annotation_bytes'] / mib:.2f}) in {time.time() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
