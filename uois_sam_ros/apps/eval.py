"""uois-sam-eval: reproduce the paper's tables offline (DESIGN.md section 5 protocol).

Runs a method (the full UOIS-SAM, a Table IV ablation row, or the weights-free path) over a
dataset, or re-scores saved label PNGs with --predictions, and prints Overlap P R F |
Boundary P R F | %75 as in the paper. User errors print one line and exit with status 2.

  uois-sam-eval --dataset ocid --root OCID-dataset --method uois_sam --config my.yaml
  uois-sam-eval --dataset folder --root my_scenes --method weights_free --camera camera.json
  uois-sam-eval --dataset osd --root OSD-0.2-depth --predictions preds/ --json osd.json
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

from uois_sam_ros.core.config import ConfigError, dotted_overrides, load_config
from uois_sam_ros.core.data.datasets import KINDS, DatasetError, open_dataset, read_camera_json
from uois_sam_ros.core.eval.metrics import MetricAccumulator, resize_nearest
from uois_sam_ros.core.types import FrameError, Intrinsics

METHOD_CHOICES = ("auto", "uois_sam", "grid", "grid_fg", "heatmap", "heatmap_hdnet", "weights_free")


class UserError(Exception):
    """Reported as one line, exit status 2."""


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="uois-sam-eval", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", required=True, choices=KINDS, help="dataset layout under --root")
    ap.add_argument("--root", required=True, help="dataset root folder")
    ap.add_argument("--annotations", help="COCO json for --dataset uoais-sim (file names relative to --root)")
    ap.add_argument("--method", default="auto", type=_methods,
                    help="auto | uois_sam | Table IV rows grid, grid_fg, heatmap, heatmap_hdnet | weights_free; "
                         "a comma-separated list runs each on the same frames in one pass and prints one table "
                         "with the stage times (and, for HDNet methods, HDNet's picks against SAM's IoU head)")
    ap.add_argument("--config", help="YAML config (config/default.yaml layout)")
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="config override, repeatable (e.g. --set sam.checkpoint=sam_vit_l_0b3195.pth)")
    ap.add_argument("--limit", type=int, help="evaluate at most N frames")
    ap.add_argument("--sample-every", type=int, default=1, help="one frame in N (PhoCAL/HouseCat6D: 10)")
    cam = ap.add_mutually_exclusive_group()
    cam.add_argument("--intrinsics", help="fx,fy,cx,cy for datasets without intrinsics")
    cam.add_argument("--camera", help="camera.json for datasets without intrinsics")
    ap.add_argument("--save-predictions", metavar="DIR", help="write uint16 label PNGs at GT size, <name>.png")
    ap.add_argument("--overlays", metavar="DIR", help="write prediction overlays, <name>.png")
    ap.add_argument("--json", metavar="PATH", help="dataset means (x100) to PATH, per-image rows to PATH.csv")
    ap.add_argument("--predictions", metavar="DIR",
                    help="re-evaluate saved uint16 label PNGs (paired by file stem) without running a model")
    ap.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return ap


def _methods(text: str) -> list[str]:
    names = [m.strip() for m in str(text).split(",") if m.strip()]
    bad = [m for m in names if m not in METHOD_CHOICES]
    if not names or bad:
        raise argparse.ArgumentTypeError(f"unknown method {', '.join(bad) or repr(text)}; choose from "
                                         f"{', '.join(METHOD_CHOICES)} (comma-separated for a comparison)")
    if len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(f"a method is named twice in {text!r}")
    return names


def _intrinsics(args: argparse.Namespace) -> Intrinsics | None:
    if args.intrinsics:
        try:
            return Intrinsics.from_string(args.intrinsics, 0, 0)
        except ValueError as e:
            raise UserError(str(e)) from None
    if args.camera:
        if not Path(args.camera).is_file():
            raise UserError(f"--camera file not found: {args.camera}")
        return read_camera_json(Path(args.camera))[0]
    return None


def _read_prediction(pred_dir: Path, name: str) -> np.ndarray:
    path = pred_dir / f"{name}.png"
    if not path.is_file():
        raise UserError(f"no prediction for frame {name!r}: expected {path}")
    lab = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if lab is None or lab.ndim != 2:
        raise UserError(f"{path} is not a single-channel label PNG (uint8/uint16 instance ids)")
    return lab


def _check_inputs(ds, method: str, cfg, dataset: str) -> None:
    from uois_sam_ros.core.segment.pipeline import resolve_method

    if resolve_method(cfg) == "weights_free" and cfg.pipeline.weights_free_prompts == "geometric":
        first = ds[0]
        if first.intrinsics is None:
            raise UserError(f"method {method} needs camera intrinsics, but {dataset} has none: "
                            "give --intrinsics fx,fy,cx,cy or --camera camera.json")
        if first.depth is None:
            raise UserError(f"method {method} needs depth, but {first.name} has none")


def run_comparison(args: argparse.Namespace, ds) -> list:
    """Every method of --method on each frame in turn: one table, one set of frames, one run."""
    from tqdm import tqdm

    from uois_sam_ros.core.eval.ablation import MethodResult, RankingStats, format_comparison, rank_last_frame
    from uois_sam_ros.core.segment.pipeline import UOISPipeline, resolve_method

    if args.predictions or args.save_predictions or args.overlays:
        raise UserError("--predictions, --save-predictions and --overlays take one --method")
    pipes, results = [], []
    for m in args.method:
        overrides = dotted_overrides(args.set)
        overrides.setdefault("pipeline", {})["method"] = m
        cfg = load_config(args.config, overrides)
        _check_inputs(ds, m, cfg, args.dataset)
        pipe = UOISPipeline(cfg)
        if pipe.model_note:
            print(f"uois-sam-eval: {pipe.model_note}", file=sys.stderr)
        name = m if m != "auto" else f"auto={resolve_method(cfg)}"
        pipes.append(pipe)
        results.append(MethodResult(name, ranking=RankingStats() if pipe.uses_hdnet else None))
    bar = tqdm(range(len(ds)), desc=f"eval {args.dataset} x{len(pipes)} methods", unit="img",
               disable=args.no_progress, file=sys.stderr)
    for i in bar:
        s = ds[i]
        if s.label is None:
            raise UserError(f"frame {s.name} has no ground-truth label; a comparison needs labels")
        frame = s.frame()
        for pipe, res in zip(pipes, results, strict=True):
            try:
                inst = pipe.run(frame)
            except FrameError as e:
                raise UserError(f"{s.name}: {e}") from None
            pred = resize_nearest(np.asarray(inst.label_map()), *s.label.shape)
            res.acc.add(s.name, pred, s.label)
            res.add_timings(inst.timings or {})
            if res.ranking is not None:
                rank_last_frame(pipe, s.label, res.ranking, pipe.config.sam.multimask_output)
        bar.set_postfix({r.method[:10]: f"{r.acc.means()['OF']:.1f}" for r in results})
    bar.close()
    print(format_comparison(results, f"{args.dataset} {args.root}"))
    if args.json:
        import json

        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        doc = {"dataset": args.dataset, "root": str(args.root), "images": len(ds), "methods": {}}
        for r in results:
            r.acc.to_json(path.with_name(f"{path.stem}.{r.method.replace('=', '-')}.json"), {"method": r.method})
            doc["methods"][r.method] = {"means": r.acc.means(), "ms_per_frame": r.mean_ms(),
                                        "hdnet_ranking": r.ranking.as_dict() if r.ranking else None}
        path.write_text(json.dumps(doc, indent=2))
    return results


def run(args: argparse.Namespace) -> MetricAccumulator:
    from tqdm import tqdm

    ds = open_dataset(args.dataset, args.root, args.annotations, intrinsics=_intrinsics(args),
                      sample_every=args.sample_every, limit=args.limit)
    if len(ds) == 0:
        raise UserError(f"{args.dataset} at {args.root}: no frames to evaluate")
    if len(args.method) > 1:
        return run_comparison(args, ds)
    args.method = args.method[0]
    pipeline = None
    pred_dir = None
    title = f"{args.dataset}"
    if args.predictions:
        pred_dir = Path(args.predictions)
        if not pred_dir.is_dir():
            raise UserError(f"--predictions folder not found: {pred_dir}")
        title += " (saved)"
    else:
        overrides = dotted_overrides(args.set)
        overrides.setdefault("pipeline", {})["method"] = args.method
        cfg = load_config(args.config, overrides)
        from uois_sam_ros.core.segment.pipeline import UOISPipeline, resolve_method

        method = resolve_method(cfg)
        title += f" {method}"
        _check_inputs(ds, method, cfg, args.dataset)
        pipeline = UOISPipeline(cfg)
        if pipeline.model_note:
            print(f"uois-sam-eval: {pipeline.model_note}", file=sys.stderr)

    acc = MetricAccumulator()
    save_dir = Path(args.save_predictions) if args.save_predictions else None
    ov_dir = Path(args.overlays) if args.overlays else None
    bar = tqdm(range(len(ds)), desc=f"eval {args.dataset}", unit="img", disable=args.no_progress,
               file=sys.stderr)
    for i in bar:
        s = ds[i]
        if s.label is None and save_dir is None and ov_dir is None:
            raise UserError(f"frame {s.name} has no ground-truth label; nothing to score "
                            "(use --save-predictions or --overlays to only run the method)")
        if pipeline is None:
            pred = _read_prediction(pred_dir, s.name)
        else:
            try:
                pred = pipeline.run(s.frame()).label_map()
            except FrameError as e:
                raise UserError(f"{s.name}: {e}") from None
        gh, gw = s.label.shape if s.label is not None else s.rgb.shape[:2]
        pred = resize_nearest(np.asarray(pred), gh, gw)
        if save_dir is not None:
            save_dir.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(save_dir / f"{s.name}.png"), pred.astype(np.uint16))
        if ov_dir is not None:
            from uois_sam_ros.core.eval.visualize import overlay_instances, save_png

            vis = resize_nearest(pred, *s.rgb.shape[:2])
            save_png(ov_dir / f"{s.name}.png", overlay_instances(s.rgb, vis))
        if s.label is not None:
            m = acc.add(s.name, pred, s.label)
            bar.set_postfix(OF=f"{100 * m['OF']:.1f}", BF=f"{100 * m['BF']:.1f}")
    bar.close()
    if len(acc):
        print(acc.format_table(title))
    if args.json:
        acc.to_json(args.json, {"dataset": args.dataset, "root": str(args.root), "method": title})
    return acc


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        run(args)
    except (UserError, DatasetError, ConfigError, FileNotFoundError) as e:
        print(f"uois-sam-eval: error: {e}", file=sys.stderr)
        return 2
    except ValueError as e:
        # Bad checkpoints (weights.CheckpointError) and other input errors raised by the method.
        if type(e).__name__ in ("CheckpointError", "RLEError"):
            print(f"uois-sam-eval: error: {e}", file=sys.stderr)
            return 2
        raise
    except ImportError as e:
        print(f"uois-sam-eval: error: a module this method needs is missing: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
