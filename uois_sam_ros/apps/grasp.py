"""uois-sam-grasp: Franka grasps offline, over any dataset reader, with the grasp check.

Runs the segmentation (or reads the ground-truth instances with --instances gt), then the
grasp planner (config section ``grasp``: the built-in antipodal sampler, or GSNet), on every
frame; checks each instance's grasps (core/grasp/check.py: closes on the target, fits the
jaw, collision-free, antipodal) and prints the share of instances whose best grasp passes
all four, the same for the best five, and the planning time per instance. User errors print
one line and exit with status 2.

  uois-sam-grasp --dataset uoais-sim --root synth --annotations synth/annotations.json --instances gt
  uois-sam-grasp --synthetic 20 --seed 9100 --instances gt --overlays out/ --json grasps.json
  uois-sam-grasp --dataset ocid --root OCID-dataset --method uois_sam --set sam.checkpoint=sam_vit_l.pth

--synthetic N renders N scenes in-process (scene i uses seed + i) and checks against their true
meshes and table; a dataset is checked against its depth and ground-truth masks. --json PATH
writes one record per grasp (top-N per instance): {"image": <frame name, as in uois-sam-eval's
CSV>, "instance_id": k, "pose": <4x4, camera optical frame, Grasp.msg convention>,
"width": metres, "score": s}.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from uois_sam_ros.apps.eval import (
    INPUT_VALUE_ERRORS,
    METHOD_CHOICES,
    UserError,
    intrinsics_from_args,
    run_cli,
)
from uois_sam_ros.core.config import Config, dotted_overrides, load_config
from uois_sam_ros.core.data.datasets import KINDS, open_dataset
from uois_sam_ros.core.types import FrameError, Sample


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="uois-sam-grasp", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--dataset", choices=KINDS, help="dataset layout under --root")
    src.add_argument("--synthetic", type=int, metavar="N", help="render N synthetic scenes in-process instead")
    ap.add_argument("--root", help="dataset root folder")
    ap.add_argument("--annotations", help="COCO json for --dataset uoais-sim (file names relative to --root)")
    ap.add_argument("--seed", type=int, default=9100, help="--synthetic: seed of the first scene (default 9100)")
    ap.add_argument("--instances", choices=("segment", "gt"), default="segment",
                    help="segment: run the segmentation method; gt: the ground-truth instances")
    ap.add_argument("--method", default="auto", choices=METHOD_CHOICES, help="segmentation method (--instances segment)")
    ap.add_argument("--config", help="YAML config (config/default.yaml layout; the grasp section sets the planner)")
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="config override, repeatable (e.g. --set grasp.top_n=10)")
    ap.add_argument("--check", choices=("auto", "mesh", "observed", "none"), default="auto",
                    help="grasp check geometry: mesh (true meshes, --synthetic only), observed (depth + GT masks); "
                         "auto: mesh for --synthetic, observed for datasets with labels")
    ap.add_argument("--limit", type=int, help="at most N frames")
    ap.add_argument("--sample-every", type=int, default=1, help="one frame in N")
    cam = ap.add_mutually_exclusive_group()
    cam.add_argument("--intrinsics", help="fx,fy,cx,cy for datasets without intrinsics")
    cam.add_argument("--camera", help="camera.json for datasets without intrinsics")
    ap.add_argument("--json", metavar="PATH", help="write the grasps (one record per grasp) to PATH")
    ap.add_argument("--report", metavar="PATH", help="write the grasp check summary (JSON) to PATH")
    ap.add_argument("--overlays", metavar="DIR", help="write overlays with the grasps drawn, <name>.png")
    ap.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return ap


@dataclass
class Item:
    """One frame to grasp in: the sample, and the true geometry when it is known."""

    sample: Sample
    synthetic: object | None = None


def frames(args: argparse.Namespace) -> tuple[int, Iterator[Item]]:
    if args.synthetic is not None:
        if args.synthetic < 1:
            raise UserError(f"--synthetic needs at least 1 scene, got {args.synthetic}")
        from uois_sam_ros.core.data.synthetic import generate_scene

        n = args.synthetic if args.limit is None else min(args.synthetic, args.limit)

        def gen() -> Iterator[Item]:
            for i in range(n):
                s = generate_scene(args.seed + i)
                yield Item(s.sample(), s)

        return n, gen()
    if not args.root:
        raise UserError("--dataset needs --root")
    ds = open_dataset(args.dataset, args.root, args.annotations, intrinsics=intrinsics_from_args(args),
                      sample_every=args.sample_every, limit=args.limit)
    if len(ds) == 0:
        raise UserError(f"{args.dataset} at {args.root}: no frames")
    return len(ds), (Item(ds[i]) for i in range(len(ds)))


def gt_instances(s: Sample) -> tuple[list[int], np.ndarray, np.ndarray | None]:
    """(ids, masks, amodal masks or None) of a sample's ground truth."""
    if s.label is None:
        raise UserError(f"frame {s.name} has no ground-truth label (needed by --instances gt and the check)")
    ids = [int(i) for i in np.unique(s.label) if i != 0]
    masks = np.stack([s.label == i for i in ids]) if ids else np.zeros((0, *s.label.shape), bool)
    amodal = None
    if s.amodal is not None and s.amodal_ids is not None and len(ids):
        pos = {int(i): k for k, i in enumerate(s.amodal_ids)}
        if all(i in pos for i in ids):
            amodal = np.stack([s.amodal[pos[i]] for i in ids])
    return ids, masks, amodal


def match_to_gt(pred: np.ndarray, gt: np.ndarray, min_iou: float = 0.5) -> list[int]:
    """For each predicted mask, the index of the GT mask it matches (IoU >= min_iou, one-to-one,
    Hungarian on IoU), or -1."""
    from scipy.optimize import linear_sum_assignment

    out = [-1] * len(pred)
    if len(pred) == 0 or len(gt) == 0:
        return out
    p = pred.reshape(len(pred), -1).astype(np.float32)
    g = gt.reshape(len(gt), -1).astype(np.float32)
    inter = p @ g.T
    union = p.sum(1)[:, None] + g.sum(1)[None] - inter
    iou = inter / np.maximum(union, 1)
    rows, cols = linear_sum_assignment(iou, maximize=True)
    for r, c in zip(rows, cols):
        if iou[r, c] >= min_iou:
            out[r] = int(c)
    return out


def run(args: argparse.Namespace) -> dict:
    from tqdm import tqdm

    from uois_sam_ros.core.grasp import GraspPlanner
    from uois_sam_ros.core.grasp.check import CheckSummary, MeshGeometry, ObservedGeometry

    cfg: Config = load_config(args.config, dotted_overrides(args.set) if args.set else None)
    check_mode = args.check
    if check_mode == "auto":
        check_mode = "mesh" if args.synthetic is not None else "observed"
    if check_mode == "mesh" and args.synthetic is None:
        raise UserError("--check mesh needs the true meshes of --synthetic scenes")
    planner = GraspPlanner(cfg.grasp)
    pipeline = None
    if args.instances == "segment":
        cfg.pipeline.method = args.method
        from uois_sam_ros.core.segment.pipeline import UOISPipeline

        pipeline = UOISPipeline(cfg)
    n, items = frames(args)
    summary = CheckSummary()
    records: list[dict] = []
    ov_dir = Path(args.overlays) if args.overlays else None
    bar = tqdm(items, total=n, desc="grasp", unit="img", disable=args.no_progress, file=sys.stderr)
    for item in bar:
        s = item.sample
        if s.depth is None:
            raise UserError(f"{s.name} has no depth: grasps need depth")
        if s.intrinsics is None:
            raise UserError(f"{s.name} has no camera intrinsics: give --intrinsics fx,fy,cx,cy or --camera camera.json")
        has_gt = s.label is not None
        if args.instances == "gt":
            ids, masks, amodal = gt_instances(s)
        else:
            try:
                inst = pipeline.run(s.frame())
            except FrameError as e:
                raise UserError(f"{s.name}: {e}") from None
            ids, masks, amodal = list(range(1, len(inst) + 1)), inst.masks, inst.amodal_masks
        t0 = time.perf_counter()
        try:
            result = planner.plan(s.depth, s.intrinsics, masks, ids, amodal=amodal)
        except FrameError as e:
            raise UserError(f"{s.name}: {e}") from None
        summary.seconds += time.perf_counter() - t0
        summary.planned += len(ids)
        for g in result.all():
            records.append(g.record(s.name))
        if check_mode != "none" and has_gt:
            gt_ids, gt_masks, _ = gt_instances(s)
            geo = (MeshGeometry.from_synthetic(item.synthetic) if check_mode == "mesh" else
                   ObservedGeometry.build(s.depth, s.intrinsics, gt_masks, gt_ids, cfg.grasp))
            if args.instances == "gt":
                per_gt = {i: result.grasps.get(i, []) for i in gt_ids}
            else:  # the grasps of the predicted instance that matches each GT instance, on that GT id
                match = match_to_gt(masks, gt_masks)
                per_gt = {i: [] for i in gt_ids}
                for k, j in enumerate(match):
                    if j >= 0:
                        per_gt[gt_ids[j]] = [type(g)(gt_ids[j], g.pose, g.width, g.score, g.details)
                                             for g in result.grasps.get(ids[k], [])]
            for gs in per_gt.values():
                summary.add([geo.check(g, cfg.grasp) for g in gs[:5]])
            d = summary.as_dict()
            bar.set_postfix(top1=f"{100 * d['top1_pass']:.0f}%", top5=f"{100 * d['top5_any_pass']:.0f}%")
        if ov_dir is not None:
            from uois_sam_ros.core.eval.visualize import overlay_instances, save_png
            from uois_sam_ros.core.grasp.draw import draw_grasps

            lab = np.zeros(s.rgb.shape[:2], np.uint16)
            for i, m in zip(ids, masks):
                lab[m] = i
            img = draw_grasps(overlay_instances(s.rgb, lab, alpha=0.35), result.all(), s.intrinsics)
            save_png(ov_dir / f"{s.name}.png", img)
    bar.close()
    out = summary.as_dict() | {"frames": n, "backend": planner.name, "instances_source": args.instances,
                               "check": check_mode}
    if check_mode != "none" and summary.instances:
        print(summary.format(f"grasp check ({check_mode} geometry, {planner.name}, {args.instances} instances)"))
    else:
        print(f"{len(records)} grasps on {summary.planned} instances in {n} frames; "
              f"{1000 * summary.seconds / max(1, summary.planned):.0f} ms per instance (no check: no ground truth)")
    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(records))
    if args.report:
        path = Path(args.report)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(out, indent=2))
    return out


def main(argv: list[str] | None = None) -> int:
    # GSNetUnavailable is an ImportError that says what is missing; ExtrinsicError a bad extrinsic
    return run_cli("uois-sam-grasp", run, build_parser().parse_args(argv),
                   value_errors=(*INPUT_VALUE_ERRORS, "ExtrinsicError"), import_hint="")


if __name__ == "__main__":
    sys.exit(main())
