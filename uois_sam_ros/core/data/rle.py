"""COCO run-length encoding, both forms, without pycocotools.

The synthetic-data generator writes UOAIS-Sim-style annotations with `encode`, and the
dataset reader decodes them with `decode`. COCO RLE runs over the mask in column-major
(Fortran) order and starts with a run of zeros. The compressed form stores each count
(after the first two, as a difference to the count two places back) as a little-endian
sequence of 5-bit groups, each offset by 48 into printable ASCII, bit 0x20 = "more
groups follow" and bit 0x10 of the last group = sign.
"""

from __future__ import annotations

from typing import Any

import numpy as np


class RLEError(ValueError):
    """An RLE that cannot be decoded; the message says why."""


def mask_to_counts(mask: np.ndarray) -> list[int]:
    """Uncompressed counts of a 2-D mask (column-major, first run = zeros)."""
    m = np.asarray(mask)
    if m.ndim != 2:
        raise RLEError(f"mask must be 2-D, got shape {m.shape}")
    flat = m.astype(bool).ravel(order="F")
    if flat.size == 0:
        return []
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    runs = np.diff(bounds).tolist()
    if flat[0]:
        runs = [0] + runs
    return [int(r) for r in runs]


def counts_to_string(counts: list[int]) -> str:
    """Compress a counts list into COCO's string form."""
    out: list[str] = []
    for i, c in enumerate(counts):
        x = int(c) - (int(counts[i - 2]) if i > 2 else 0)
        more = True
        while more:
            ch = x & 0x1F
            x >>= 5  # arithmetic shift: negative values stay negative
            more = (x != -1) if (ch & 0x10) else (x != 0)
            if more:
                ch |= 0x20
            out.append(chr(ch + 48))
    return "".join(out)


def string_to_counts(s: str | bytes) -> list[int]:
    """Decompress COCO's string form into a counts list."""
    if isinstance(s, bytes):
        s = s.decode("ascii")
    counts: list[int] = []
    p, n = 0, len(s)
    while p < n:
        x, k, more = 0, 0, True
        while more:
            if p >= n:
                raise RLEError("compressed RLE string ends in the middle of a count")
            c = ord(s[p]) - 48
            if c < 0 or c > 63:
                raise RLEError(f"compressed RLE string has an invalid character {s[p]!r} at {p}")
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and (c & 0x10):
                x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    return counts


def encode(mask: np.ndarray, compressed: bool = True) -> dict[str, Any]:
    """{'size': [h, w], 'counts': str | list[int]} for a 2-D boolean mask."""
    m = np.asarray(mask)
    counts = mask_to_counts(m)
    return {"size": [int(m.shape[0]), int(m.shape[1])],
            "counts": counts_to_string(counts) if compressed else counts}


def decode(rle: dict[str, Any], height: int | None = None, width: int | None = None) -> np.ndarray:
    """(h, w) bool mask from an RLE dict in either form.

    Polygon lists (COCO's other segmentation form) are rasterised too, given height/width.
    """
    if isinstance(rle, list):
        return _decode_polygons(rle, height, width)
    if not isinstance(rle, dict) or "counts" not in rle:
        raise RLEError(f"expected an RLE dict with 'size' and 'counts', got {type(rle).__name__}")
    size = rle.get("size")
    if size is None:
        if height is None or width is None:
            raise RLEError("RLE has no 'size' and no image size was given")
        size = [height, width]
    h, w = int(size[0]), int(size[1])
    if height is not None and width is not None and (h, w) != (int(height), int(width)):
        raise RLEError(f"RLE size {w}x{h} does not match the image size {width}x{height}")
    counts = rle["counts"]
    if isinstance(counts, str | bytes):
        counts = string_to_counts(counts)
    counts = np.asarray(counts, dtype=np.int64)
    if (counts < 0).any():
        raise RLEError("RLE has a negative run length")
    total = int(counts.sum())
    if total != h * w:
        raise RLEError(f"RLE runs cover {total} pixels, but size {w}x{h} has {h * w}")
    values = (np.arange(len(counts)) % 2).astype(bool)
    flat = np.repeat(values, counts)
    return flat.reshape((h, w), order="F")


def _decode_polygons(polys: list, height: int | None, width: int | None) -> np.ndarray:
    import cv2

    if height is None or width is None:
        raise RLEError("polygon segmentation needs the image height and width")
    out = np.zeros((int(height), int(width)), np.uint8)
    for poly in polys:
        pts = np.asarray(poly, dtype=np.float64).reshape(-1, 2)
        if len(pts) >= 3:
            cv2.fillPoly(out, [np.round(pts).astype(np.int32)], 1)
    return out.astype(bool)


def area(rle: dict[str, Any]) -> int:
    """Foreground pixel count of an RLE without decoding it to a mask."""
    counts = rle["counts"]
    if isinstance(counts, str | bytes):
        counts = string_to_counts(counts)
    return int(sum(counts[1::2]))
