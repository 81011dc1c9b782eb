"""Pieces every trainer shares: data loading into arrays, devices, CSV logs, time budgets."""

from __future__ import annotations

import argparse
import csv
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from uois_sam_ros.core.types import Sample


class HelpFormatter(argparse.HelpFormatter):
    """--help shows each option's default, unless it is None or the help text already says it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        d = action.default
        if d is None or d is False or d == argparse.SUPPRESS or "default" in text or not action.option_strings:
            return text
        return f"{text} (default: %(default)s)"


class TrainingError(ValueError):
    """A user error in a training run (missing data, bad option); printed without a traceback."""


def pick_device(name: str) -> torch.device:
    """--device through core.config.resolve_device ('auto' = cuda when available, else cpu)."""
    from uois_sam_ros.core.config import ConfigError, resolve_device

    try:
        return torch.device(resolve_device(name))
    except ConfigError as e:
        raise TrainingError(f"--device: {e}") from None


@dataclass
class ArraySet:
    """Images resized to one training size, kept as compact arrays (uint8 rgb, float16 depth)."""

    rgb: np.ndarray  # (N, H, W, 3) uint8
    depth: np.ndarray  # (N, H, W) float16 metres, 0 = invalid
    label: np.ndarray  # (N, H, W) uint16 visible ids
    names: list[str]

    def __len__(self) -> int:
        return len(self.rgb)

    def subset(self, idx: np.ndarray) -> ArraySet:
        return ArraySet(self.rgb[idx], self.depth[idx], self.label[idx], [self.names[i] for i in idx])

    def save(self, path: str | Path) -> None:
        np.savez(path, rgb=self.rgb, depth=self.depth, label=self.label, names=np.array(self.names))

    @classmethod
    def load(cls, path: str | Path) -> ArraySet:
        z = np.load(path, allow_pickle=False)
        return cls(z["rgb"], z["depth"], z["label"], [str(n) for n in z["names"]])


def samples_to_arrays(samples, size_hw: tuple[int, int], total: int | None = None,
                      desc: str = "loading") -> ArraySet:
    """Resize Samples (rgb area, depth/label nearest) to size_hw and stack them."""
    from tqdm import tqdm

    h, w = size_hw
    rgbs, depths, labels, names = [], [], [], []
    for s in tqdm(samples, total=total, desc=desc, unit="img", file=sys.stderr):
        s: Sample
        if s.label is None:
            raise TrainingError(f"sample {s.name} has no label; training needs visible instance labels")
        if s.depth is None:
            raise TrainingError(f"sample {s.name} has no depth; the RGB-D HPG needs depth images")
        interp = cv2.INTER_AREA if s.rgb.shape[0] > h else cv2.INTER_LINEAR
        rgbs.append(cv2.resize(s.rgb, (w, h), interpolation=interp))
        d = np.nan_to_num(np.asarray(s.depth, np.float32), nan=0.0)
        depths.append(cv2.resize(d, (w, h), interpolation=cv2.INTER_NEAREST).astype(np.float16))
        labels.append(cv2.resize(np.asarray(s.label, np.uint16), (w, h), interpolation=cv2.INTER_NEAREST))
        names.append(s.name)
    if not rgbs:
        raise TrainingError("the dataset is empty")
    return ArraySet(np.stack(rgbs), np.stack(depths), np.stack(labels), names)


def synthetic_arrays(num: int, seed: int, size_hw: tuple[int, int], cache: str | Path | None = None,
                     desc: str = "synthetic scenes") -> ArraySet:
    """num generator scenes rendered directly at size_hw (cached to an .npz when cache is given)."""
    from uois_sam_ros.core.data.synthetic import SceneConfig, generate_scene

    if cache is not None and Path(cache).is_file():
        a = ArraySet.load(cache)
        if len(a) == num and a.rgb.shape[1:3] == tuple(size_hw):
            return a
    cfg = SceneConfig(width=size_hw[1], height=size_hw[0], amodal=False,
                      min_visible_px=max(4, int(20 * size_hw[0] * size_hw[1] / (640 * 480))))
    gen = (generate_scene(seed + i, cfg).sample() for i in range(num))
    a = samples_to_arrays(gen, size_hw, total=num, desc=desc)
    if cache is not None:
        Path(cache).parent.mkdir(parents=True, exist_ok=True)
        a.save(cache)
    return a


def dataset_arrays(path: str | Path, size_hw: tuple[int, int], limit: int | None = None,
                   annotations: str | Path | None = None) -> ArraySet:
    """A UOAIS-Sim-style folder read with the shared dataset reader.

    annotations: the COCO json whose file names are relative to path (the real UOAIS-Sim keeps
    it in annotations/); default path/annotations.json. A json given as path uses its folder as root.
    """
    from uois_sam_ros.core.data.datasets import DatasetError, open_dataset

    p = Path(path)
    if not p.exists():
        raise TrainingError(f"dataset folder not found: {p}")
    if annotations is not None:
        root, ann = p, Path(annotations)
    else:
        root, ann = (p.parent, p) if p.is_file() else (p, p / "annotations.json")
    try:
        ds = open_dataset("uoais-sim", root, ann, limit=limit)
        n = len(ds)
        return samples_to_arrays((ds[i] for i in range(n)), size_hw, total=n, desc=f"reading {root.name}")
    except DatasetError as e:
        raise TrainingError(str(e)) from None


def fraction_indices(n: int, fraction: float, seed: int) -> np.ndarray:
    """A seeded subset of ceil(fraction * n) indices (Table V's data fractions)."""
    if not 0 < fraction <= 1:
        raise TrainingError(f"--data-fraction must be in (0, 1], got {fraction}")
    k = max(1, int(np.ceil(fraction * n)))
    return np.sort(np.random.default_rng(seed).permutation(n)[:k])


class CsvLog:
    """Append-only CSV with a fixed header (resumed runs keep appending)."""

    def __init__(self, path: str | Path, fields: list[str]) -> None:
        self.path = Path(path)
        self.fields = fields
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not self.path.is_file() or self.path.stat().st_size == 0:
            with self.path.open("w", newline="") as f:
                csv.writer(f).writerow(fields)

    def write(self, row: dict) -> None:
        with self.path.open("a", newline="") as f:
            csv.writer(f).writerow([_fmt(row.get(k, "")) for k in self.fields])


def _fmt(v) -> str:
    return f"{v:.6g}" if isinstance(v, float) else str(v)


class Budget:
    """Wall-clock budget in minutes (0 = none), checked between epochs."""

    def __init__(self, minutes: float) -> None:
        self.end = time.monotonic() + minutes * 60 if minutes > 0 else None

    def exhausted(self) -> bool:
        return self.end is not None and time.monotonic() > self.end
