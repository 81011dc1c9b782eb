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
from collections.abc import Callable
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


# ValueError subclasses (by name: the modules that define them load lazily) that are input errors
INPUT_VALUE_ERRORS = ("CheckpointError", "RLEError")


def run_cli(prog: str, run: Callable[[argparse.Namespace], object], args: argparse.Namespace, *,
            value_errors: tuple[str, ...] = INPUT_VALUE_ERRORS,
            import_hint: str = "a module this tool needs is missing: ") -> int:
    """A tool's main: run(args), with bad input (UserError, DatasetError, ConfigError, a missing
    file, the named ValueErrors, a missing optional module) reported as one line and exit 2;
    anything else is a bug and keeps its traceback."""
    try:
        run(args)
    except (UserError, DatasetError, ConfigError, FileNotFoundError) as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    except ValueError as e:
        if type(e).__name__ in value_errors:
            print(f"{prog}: error: {e}", file=sys.stderr)
            return 2
        raise
    except ImportError as e:
        print(f"{prog}: error: {import_hint}{e}", file=sys.stderr)
        return 2
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="uois-sam-eval", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", choices=KINDS, help="dataset layout under --root (required unless --merge)")
    ap.add_argument("--root", help="dataset root folder (required unless --merge)")
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
    ap.add_argument("--shard", type=_shard, metavar="I/N",
                    help="evaluate only frames I, I+N, I+2N, ... (0 <= I < N); each shard writes its own --json, "
                         "and --merge joins them into the table of one process")
    ap.add_argument("--merge", nargs="+", metavar="JSON",
                    help="join the --json files of the N shards of one run (any order) and print and write "
                         "(--json) the table a single process gives, frame order included")
    ap.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    am = ap.add_argument_group("amodal completion (--task amodal; needs amodal GT: UOAIS-Sim json, OSD-Amodal)")
    am.add_argument("--task", choices=("segmentation", "amodal"), default="segmentation",
                    help="segmentation: the overlap/boundary table; amodal: mIoU_full, mIoU_occ and mask AP/AP50/AP75/AR "
                         "of amodal completion")
    am.add_argument("--visible", choices=("gt", "predicted"), default="gt",
                    help="gt: complete the GT visible masks (the papers' protocol, completion quality alone); "
                         "predicted: complete the instances of --method, matched to the GT by visible IoU >= 0.5")
    am.add_argument("--amodal-method", default="completer,convex_hull,visible", type=_amodal_methods,
                    help="comma-separated amodal.method values run on the same frames in one table "
                         "(completer, sameo, amodal_sam, convex_hull, visible, auto); checkpoints via --set amodal.*")
    return ap


def _amodal_methods(text: str) -> list[str]:
    from uois_sam_ros.core.amodal.stage import AMODAL_METHODS

    names = [m.strip() for m in str(text).split(",") if m.strip()]
    bad = [m for m in names if m not in AMODAL_METHODS]
    if not names or bad or len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(f"bad --amodal-method {text!r}: choose distinct names from "
                                         f"{', '.join(AMODAL_METHODS)}")
    return names


def _shard(text: str) -> tuple[int, int]:
    try:
        i, n = (int(v) for v in str(text).split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shard {text!r}: expected I/N, e.g. 0/2") from None
    if n < 1 or not 0 <= i < n:
        raise argparse.ArgumentTypeError(f"--shard {text!r}: need 0 <= I < N")
    return i, n


def merge_shards(paths: list[str]) -> tuple[MetricAccumulator, dict]:
    """The accumulator a single process would hold: shard rows put back in dataset order (frame g of
    the run is row g // N of shard g % N), so the means are computed over the same sequence."""
    import json

    docs = []
    for p in paths:
        path = Path(p)
        if not path.is_file():
            raise UserError(f"--merge: file not found: {path}")
        try:
            doc = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise UserError(f"--merge: {path} is not JSON ({e})") from None
        if not isinstance(doc, dict) or "shard" not in doc or "frames_total" not in doc:
            raise UserError(f"--merge: {path} was not written by uois-sam-eval --shard ... --json")
        if not path.with_suffix(".csv").is_file():
            raise UserError(f"--merge: {path.with_suffix('.csv')} (its per-image rows) is missing")
        docs.append((path, doc))
    n = docs[0][1]["shard"][1]
    first = docs[0][1]
    for path, doc in docs:
        for key in ("dataset", "root", "method", "frames_total"):
            if doc.get(key) != first.get(key):
                raise UserError(f"--merge: {path} is from another run ({key} {doc.get(key)!r} != {first.get(key)!r})")
        if doc["shard"][1] != n:
            raise UserError(f"--merge: {path} is shard {doc['shard'][0]}/{doc['shard'][1]}, the others are of {n}")
    have = sorted(doc["shard"][0] for _, doc in docs)
    if have != list(range(n)):
        missing = sorted(set(range(n)) - set(have))
        raise UserError(f"--merge: need shards 0..{n - 1} once each; missing {missing}, given {have}")
    by_shard = {doc["shard"][0]: MetricAccumulator.from_csv(path.with_suffix(".csv")).rows for path, doc in docs}
    acc = MetricAccumulator()
    for g in range(int(first["frames_total"])):
        rows = by_shard[g % n]
        if g // n < len(rows):
            acc.rows.append(rows[g // n])
    return acc, {k: first.get(k) for k in ("dataset", "root", "method")}


def run_merge(args: argparse.Namespace) -> MetricAccumulator:
    acc, meta = merge_shards(args.merge)
    print(acc.format_table(meta.get("method") or ""))
    if args.json:
        acc.to_json(args.json, meta)
    return acc


def _methods(text: str) -> list[str]:
    names = [m.strip() for m in str(text).split(",") if m.strip()]
    bad = [m for m in names if m not in METHOD_CHOICES]
    if not names or bad:
        raise argparse.ArgumentTypeError(f"unknown method {', '.join(bad) or repr(text)}; choose from "
                                         f"{', '.join(METHOD_CHOICES)} (comma-separated for a comparison)")
    if len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(f"a method is named twice in {text!r}")
    return names


def intrinsics_from_args(args: argparse.Namespace) -> Intrinsics | None:
    """--intrinsics fx,fy,cx,cy or --camera camera.json (shared by the dataset CLIs)."""
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

    if args.predictions or args.save_predictions or args.overlays or args.shard:
        raise UserError("--predictions, --save-predictions, --overlays and --shard take one --method")
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
                                        "hdnet_ranking": _nan_to_none(r.ranking.as_dict()) if r.ranking else None}
        path.write_text(json.dumps(doc, indent=2))
    return results


def _nan_to_none(d: dict) -> dict:
    """Undefined statistics (no object, or no background prompt) as JSON null, not the non-standard NaN."""
    return {k: None if isinstance(v, float) and v != v else v for k, v in d.items()}


def run_amodal(args: argparse.Namespace, ds) -> dict:
    """--task amodal: every --amodal-method on the same frames, one table, --json with the figures."""
    import json

    from uois_sam_ros.core.amodal.stage import AmodalStage, evaluate_amodal, gt_visible
    from uois_sam_ros.core.eval.amodal_metrics import format_amodal_table

    if args.predictions or args.save_predictions or args.shard or len(args.method) > 1:
        raise UserError("--task amodal takes one --method and no --predictions, --save-predictions or --shard")
    try:
        gt_visible(ds[0])
    except ValueError as e:
        raise UserError(f"--task amodal: {e}") from None
    cfgs = {}
    for m in args.amodal_method:
        overrides = dotted_overrides(args.set)
        overrides.setdefault("amodal", {})["method"] = m
        overrides.setdefault("pipeline", {})["method"] = args.method[0]
        cfgs[m] = load_config(args.config, overrides)
    stages = {}
    for m, cfg in cfgs.items():
        st = AmodalStage(cfg.amodal, cfg.sam)
        if st.note:
            print(f"uois-sam-eval: {st.note}", file=sys.stderr)
        stages[m if m != "auto" else f"auto={st.method}"] = st
    front = None
    if args.visible == "predicted":
        from uois_sam_ros.core.segment.pipeline import UOISPipeline, resolve_method

        cfg = next(iter(cfgs.values()))
        _check_inputs(ds, resolve_method(cfg), cfg, args.dataset)
        front = UOISPipeline(cfg)
    try:
        res = evaluate_amodal((ds[i] for i in range(len(ds))), stages, front, progress=not args.no_progress,
                              overlay_dir=args.overlays)
    except FrameError as e:
        raise UserError(str(e)) from None
    title = f"{args.dataset} {args.root}: amodal, --visible {args.visible}" + (
        f" (instances of {args.method[0]})" if front is not None else "") + ", x100"
    print(format_amodal_table(res, title))
    if args.json:
        first = next(iter(res.values()))
        doc = {**{k: first[k] for k in ("mIoU_full", "mIoU_occ", "AP", "AP50", "AP75", "AR") if k in first},
               "task": "amodal", "visible": args.visible, "dataset": args.dataset, "root": str(args.root),
               "images": len(ds), "method": next(iter(res)), "methods": res}
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(doc, indent=2))
    return res


def run(args: argparse.Namespace) -> MetricAccumulator:
    from tqdm import tqdm

    if args.merge:
        return run_merge(args)
    if not args.dataset or not args.root:
        raise UserError("--dataset and --root are required (except with --merge)")
    ds = open_dataset(args.dataset, args.root, args.annotations, intrinsics=intrinsics_from_args(args),
                      sample_every=args.sample_every, limit=args.limit)
    if len(ds) == 0:
        raise UserError(f"{args.dataset} at {args.root}: no frames to evaluate")
    if args.task == "amodal":
        return run_amodal(args, ds)
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
    frames = range(len(ds)) if args.shard is None else range(args.shard[0], len(ds), args.shard[1])
    bar = tqdm(frames, desc=f"eval {args.dataset}" + (f" shard {args.shard[0]}/{args.shard[1]}" if args.shard else ""),
               unit="img", disable=args.no_progress, file=sys.stderr)
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
        extra = {"dataset": args.dataset, "root": str(args.root), "method": title}
        if args.shard is not None:
            extra.update(shard=list(args.shard), frames_total=len(ds))
        acc.to_json(args.json, extra)
    return acc


def main(argv: list[str] | None = None) -> int:
    return run_cli("uois-sam-eval", run, build_parser().parse_args(argv),
                   import_hint="a module this method needs is missing: ")


if __name__ == "__main__":
    sys.exit(main())
