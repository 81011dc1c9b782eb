"""uois-sam-sweep: Table V, the effect of the training-data fraction, as one command.

For each fraction (default 1/5/10/50/100 %), HPG is trained from scratch on that seeded
subset of the training set and scored on the same held-out set (foreground IoU, centroid
recall, prompt precision, validation loss). Runs on synthetic data when no dataset is given.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from uois_sam_ros.core.segment.hpg import load_hpg_checkpoint
from uois_sam_ros.training.common import (
    ArraySet,
    CsvLog,
    HelpFormatter,
    TrainingError,
    dataset_arrays,
    fraction_indices,
    pick_device,
    synthetic_arrays,
)
from uois_sam_ros.training.hpg import DEFAULT_SIGMA, evaluate_hpg, train_hpg

DEFAULT_FRACTIONS = (0.01, 0.05, 0.1, 0.5, 1.0)
COLUMNS = ["fraction", "train_images", "val_loss", "fg_iou", "centroid_recall", "prompt_precision"]


def run_sweep(train: ArraySet, val: ArraySet, out_dir: str | Path, fractions=DEFAULT_FRACTIONS, *,
              epochs: int = 30, batch_size: int = 32, width: int = 16, step_size: int = 10,
              sigma: float = DEFAULT_SIGMA, device: str = "cpu", seed: int = 0,
              progress: bool = True) -> list[dict]:
    """Train one HPG per fraction and score it on val; returns one row per fraction."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    log = CsvLog(out_dir / "table_v.csv", COLUMNS)
    rows = []
    for f in fractions:
        sub = train.subset(fraction_indices(len(train), f, seed))
        ckpt = out_dir / f"hpg_frac{f:g}.pt"
        res = train_hpg(sub, val, ckpt, width=width, epochs=epochs, batch_size=batch_size, step_size=step_size,
                        sigma=sigma, device=device, seed=seed, log=out_dir / f"hpg_frac{f:g}.csv",
                        meta={"data_fraction": f}, progress=progress)
        m = evaluate_hpg(load_hpg_checkpoint(ckpt), val, device=device)
        row = {"fraction": f, "train_images": len(sub), "val_loss": res["best_val_loss"], **m}
        log.write(row)
        rows.append(row)
    return rows


def format_table(rows: list[dict]) -> str:
    head = "| data % | images | val loss | fg IoU | centroid recall | prompt precision |"
    lines = [head, "|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {100 * r['fraction']:g} | {r['train_images']} | {r['val_loss']:.4f} | "
                     f"{r['fg_iou']:.3f} | {r['centroid_recall']:.3f} | {r['prompt_precision']:.3f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="uois-sam-sweep", description=__doc__.splitlines()[0],
                                formatter_class=HelpFormatter)
    p.add_argument("--data", help="UOAIS-Sim-style training folder (default: synthetic scenes)")
    p.add_argument("--annotations", help="COCO json of --data (default DATA/annotations.json)")
    p.add_argument("--val-data", help="held-out folder (default: synthetic scenes)")
    p.add_argument("--val-annotations", help="COCO json of --val-data (default VAL_DATA/annotations.json)")
    p.add_argument("--synthetic", type=int, default=500, help="synthetic training scenes when no --data")
    p.add_argument("--val-synthetic", type=int, default=50, help="synthetic held-out scenes when no --val-data")
    p.add_argument("--fractions", default=",".join(f"{f:g}" for f in DEFAULT_FRACTIONS),
                   help="comma-separated training-data fractions, one HPG each (Table V)")
    p.add_argument("--epochs", type=int, default=30, help="training epochs per fraction")
    p.add_argument("--step-size", type=int, default=10, help="StepLR: epochs between learning-rate drops")
    p.add_argument("--batch-size", type=int, default=32, help="images per optimiser step")
    p.add_argument("--width", type=int, default=16, help="CNN base width")
    p.add_argument("--input-height", type=int, default=240, help="HPG input height, px")
    p.add_argument("--input-width", type=int, default=320, help="HPG input width, px")
    p.add_argument("--device", default="auto", help="auto (cuda when available, else cpu), cpu, cuda or cuda:N")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")
    p.add_argument("--seed", type=int, default=0, help="seed of the scenes, subsets and initialisation")
    p.add_argument("--out", default="out/sweep", help="folder for checkpoints, logs and table_v.csv/md")
    a = p.parse_args(argv)
    try:
        a.device = str(pick_device(a.device))  # 'auto' -> the device torch is given
        fr = [float(x) for x in a.fractions.split(",") if x.strip()]
        if not fr:
            raise TrainingError("--fractions is empty")
        if a.threads > 0:
            torch.set_num_threads(a.threads)
        size = (a.input_height, a.input_width)
        train = (dataset_arrays(a.data, size, annotations=a.annotations) if a.data
                 else synthetic_arrays(a.synthetic, a.seed, size))
        val = (dataset_arrays(a.val_data, size, annotations=a.val_annotations) if a.val_data
               else synthetic_arrays(a.val_synthetic, 10_000_000 + a.seed, size, desc="held-out scenes"))
        rows = run_sweep(train, val, a.out, fr, epochs=a.epochs, batch_size=a.batch_size, width=a.width,
                         step_size=a.step_size, device=a.device, seed=a.seed)
    except (TrainingError, ValueError, FileNotFoundError) as e:
        print(f"uois-sam-sweep: error: {e}", file=sys.stderr)
        return 2
    table = format_table(rows)
    Path(a.out, "table_v.md").write_text(table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
