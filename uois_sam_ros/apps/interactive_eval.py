"""uois-sam-interactive-eval: NoC / FR of click-based interactive segmentation, with and without
test-time adaptation of SAM's mask decoder (core/adapt; Schoen et al.).

Every instance of every image (ascending ids, at least --min-area pixels) is clicked by the
simulated user of RITM / SimpleClick / FocSAM until its IoU reaches the protocol's threshold or
the click budget is spent. Each adaptation configuration of the paper's tables (none, R, C, U, E,
CM and their '+' combinations) runs over the same images in the same order with its own decoder
copies; the image embedding is computed once per image and shared. Reported per configuration:
NoC_n@T and FR_n@T for each protocol (default 20@85 and 30@90), and seconds per click.

  uois-sam-interactive-eval --dataset synthetic-shifted --count 5
  uois-sam-interactive-eval --dataset ocid --root OCID-dataset --set sam.model_type=vit_b \\
      --set sam.checkpoint=sam_vit_b_01ec64.pth --configs none,R+E+CM --json ocid_tta.json
  uois-sam-interactive-eval --dataset folder --root scenes --segmenter weights_free --configs none
  uois-sam-interactive-eval --dataset synthetic-shifted --bench   # one step vs one forward pass

--json PATH writes the summary to PATH and one row per object and run to PATH with .csv.
User errors print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from uois_sam_ros.apps.eval import UserError, intrinsics_from_args, run_cli
from uois_sam_ros.core.adapt.adaptation import PAPER_CONFIGS, adapt_config_from_spec, adapt_spec, adapts
from uois_sam_ros.core.adapt.clicks import PAPER_PROTOCOLS, Protocol, failed, noc, noc_fr
from uois_sam_ros.core.adapt.interactive import ObjectResult, object_ids, run_object
from uois_sam_ros.core.config import AdaptConfig, dotted_overrides, load_config
from uois_sam_ros.core.data.datasets import KINDS, open_dataset
from uois_sam_ros.core.types import Frame, FrameError

SYNTHETIC_KINDS = ("synthetic", "synthetic-shifted")
DEFAULT_SYNTHETIC_SEED = 70_000_000  # far from the seeds the shipped models were trained and validated on


@dataclass
class Item:
    """One image to click on: the frame, its visible instance labels, and class names by id."""

    name: str
    frame: Frame
    label: np.ndarray
    classes: dict[int, str] | None = None


@dataclass
class Run:
    """One (configuration, protocol) pair: its own click segmenter (own decoder copies) and results."""

    config: str
    protocol: Protocol
    segmenter: object
    results: list[ObjectResult] = field(default_factory=list)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="uois-sam-interactive-eval", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", required=True, choices=(*KINDS, *SYNTHETIC_KINDS),
                    help="dataset layout under --root, or scenes generated in memory (synthetic: the small "
                         "SAM's training distribution; synthetic-shifted: off it)")
    ap.add_argument("--root", help="dataset root folder (not for the synthetic kinds)")
    ap.add_argument("--annotations", help="COCO json for --dataset uoais-sim (file names relative to --root)")
    ap.add_argument("--limit", type=int, help="at most N images")
    ap.add_argument("--sample-every", type=int, default=1, help="one frame in N (PhoCAL/HouseCat6D: 10)")
    cam = ap.add_mutually_exclusive_group()
    cam.add_argument("--intrinsics", help="fx,fy,cx,cy for datasets without intrinsics (weights_free)")
    cam.add_argument("--camera", help="camera.json for datasets without intrinsics (weights_free)")
    ap.add_argument("--count", type=int, default=5, help="synthetic kinds: number of scenes")
    ap.add_argument("--seed", type=int, default=DEFAULT_SYNTHETIC_SEED,
                    help="synthetic kinds: seed of the first scene (scene i uses seed + i)")
    ap.add_argument("--size", default="640x480", help="synthetic kinds: WIDTHxHEIGHT")
    ap.add_argument("--segmenter", default="sam", choices=("sam", "weights_free"),
                    help="sam (sam.* config: official, MobileSAM or the small vit_synth) | weights_free")
    ap.add_argument("--config", help="YAML config (config/default.yaml layout; its sam section is used)")
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="config override, repeatable (e.g. --set sam.checkpoint=sam_vit_b_01ec64.pth)")
    ap.add_argument("--configs", default=",".join(PAPER_CONFIGS),
                    help="comma-separated adaptation configurations: none, or R|C, U|E, CM joined by '+' "
                         f"(default: the paper's table rows {','.join(PAPER_CONFIGS)})")
    ap.add_argument("--protocols", default=",".join(p.name for p in PAPER_PROTOCOLS),
                    help="comma-separated CLICKS@IOU, each a separate run (default 20@85,30@90)")
    ap.add_argument("--lr", type=float, default=AdaptConfig.lr, help="Adam learning rate of the decoder")
    ap.add_argument("--erosion", type=int, default=AdaptConfig.erosion_iterations,
                    help="E: erosions (3x3 cross) of foreground and background")
    ap.add_argument("--steps", type=int, default=AdaptConfig.steps, help="optimisation steps per adaptation event")
    ap.add_argument("--no-per-class", action="store_true",
                    help="one decoder for every class (default: a copy per class where the data names classes)")
    ap.add_argument("--no-mask-prompt", action="store_true",
                    help="SAM: do not feed the previous mask's low-res logits back with each click")
    ap.add_argument("--min-area", type=int, default=64, help="skip instances with fewer pixels")
    ap.add_argument("--max-objects", type=int, default=0, help="at most N instances per image (0 = all)")
    ap.add_argument("--threads", type=int, help="torch CPU threads")
    ap.add_argument("--json", metavar="PATH", help="summary to PATH, one row per object and run to PATH.csv")
    ap.add_argument("--bench", action="store_true",
                    help="only time one adaptation step against one decoder forward pass on the first image")
    ap.add_argument("--bench-repeats", type=int, default=20, help="--bench: timed repeats (median)")
    ap.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return ap


def _size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise UserError(f"--size must look like WIDTHxHEIGHT, got {text!r}") from None
    if w < 32 or h < 32:
        raise UserError(f"--size {text}: both sides must be at least 32 px")
    return w, h


def iter_items(args: argparse.Namespace) -> tuple[int, Iterator[Item]]:
    """(number of images, the images) for the chosen dataset; UserError when it cannot be read."""
    if args.dataset in SYNTHETIC_KINDS:
        from uois_sam_ros.core.adapt.interactive import shifted_scene_config
        from uois_sam_ros.core.data.synthetic import SceneConfig, generate_scene

        if args.root:
            raise UserError(f"--root is not used with --dataset {args.dataset} (scenes are generated)")
        w, h = _size(args.size)
        cfg = shifted_scene_config(w, h) if args.dataset == "synthetic-shifted" else SceneConfig(width=w, height=h)
        n = args.count if args.limit is None else min(args.count, args.limit)
        if n < 1:
            raise UserError("--count must be at least 1")

        def gen() -> Iterator[Item]:
            for i in range(n):
                s = generate_scene(args.seed + i, cfg)
                yield Item(f"{args.dataset}_{args.seed + i}", s.frame(), s.label,
                           {int(oid): str(k) for oid, k in zip(s.ids, s.shapes)})

        return n, gen()
    if not args.root:
        raise UserError(f"--dataset {args.dataset} needs --root")
    ds = open_dataset(args.dataset, args.root, args.annotations, intrinsics=intrinsics_from_args(args),
                      sample_every=args.sample_every, limit=args.limit)
    if len(ds) == 0:
        raise UserError(f"{args.dataset} at {args.root}: no frames to evaluate")

    def read() -> Iterator[Item]:
        for i in range(len(ds)):
            s = ds[i]
            if s.label is None:
                raise UserError(f"frame {s.name} has no ground-truth label: the simulated user needs one")
            yield Item(s.name, s.frame(), np.asarray(s.label))

    return len(ds), read()


def _sam_segmenter(args: argparse.Namespace):
    """The SamSegmenter the config asks for; with no sam.checkpoint, the shipped small SAM."""
    from uois_sam_ros.core.segment.sam_backend import SamSegmenter, default_sam_checkpoint

    cfg = load_config(args.config, dotted_overrides(args.set))
    sam = cfg.sam
    note = ""
    if not sam.checkpoint and not sam.allow_random_weights:
        shipped = default_sam_checkpoint("vit_synth")
        if shipped is None:
            raise UserError("no SAM checkpoint: give --set sam.model_type=TYPE --set sam.checkpoint=PATH "
                            "(no small SAM is shipped in this install), or --segmenter weights_free")
        sam = dataclasses.replace(sam, model_type="vit_synth", checkpoint=str(shipped), image_size=1024)
        note = f" (shipped {shipped.name})"
    elif not sam.checkpoint:
        note = " (random weights)"
    seg = SamSegmenter(sam)
    return seg, f"{seg.name}{note}", sam


def build_runs(args: argparse.Namespace, specs: list[str], protocols: list[Protocol]):
    """(runs, segmenter description, the SamSegmenter or None, per-image preparation function)."""
    from uois_sam_ros.core.adapt.interactive import GeometricClicks, SamClicks

    base = AdaptConfig(lr=args.lr, erosion_iterations=args.erosion, steps=args.steps,
                       per_class=not args.no_per_class)
    cfgs = {}
    for spec in specs:
        cfg = adapt_config_from_spec(spec, base)
        cfgs[adapt_spec(cfg)] = cfg
    if args.segmenter == "weights_free":
        bad = [name for name, c in cfgs.items() if adapts(c)]
        if bad:
            raise UserError(f"--segmenter weights_free has no decoder to adapt; configurations {bad} need SAM "
                            "(use --configs none)")
        from uois_sam_ros.core.segment.geometric import GeometricSegmenter

        geo = GeometricSegmenter(load_config(args.config, dotted_overrides(args.set)).geometric)

        def prepare_geo(item: Item, runs: list[Run]) -> None:
            try:
                item.frame.validate(need_depth=True, need_intrinsics=True)
            except FrameError as e:
                raise UserError(f"{item.name}: the weights-free segmenter needs depth and intrinsics: {e}") from None
            geo.set_frame(item.frame)

        runs = [Run(name, p, GeometricClicks(geo)) for name in cfgs for p in protocols]
        return runs, "weights_free (geometric)", None, prepare_geo

    from uois_sam_ros.core.adapt.adaptation import DecoderAdapter, ImageContext

    seg, desc, sam_cfg = _sam_segmenter(args)
    runs = []
    for name, cfg in cfgs.items():
        for p in protocols:
            runs.append(Run(name, p, SamClicks(seg, DecoderAdapter(seg.model, cfg),
                                               mask_prompt=not args.no_mask_prompt)))

    def prepare_sam(item: Item, runs: list[Run]) -> None:
        seg.set_frame(item.frame)  # the encoder runs once per image, for every run
        ctx = ImageContext.from_predictor(seg.predictor, item.frame.stamp)
        for r in runs:
            r.segmenter.use_context(ctx)

    return runs, desc, seg, prepare_sam


def summarise(runs: list[Run]) -> dict[str, dict[str, dict]]:
    """{config: {protocol: {NoC, FR, objects, ...}}} from the runs' object results."""
    out: dict[str, dict[str, dict]] = {}
    for r in runs:
        p = r.protocol
        seqs = [o.ious for o in r.results]
        clicks = sum(len(o.ious) for o in r.results)
        secs = sum(o.seconds for o in r.results)
        row = {"objects": len(seqs), "clicks": clicks, "seconds_per_click": secs / clicks if clicks else None}
        if seqs:
            m_noc, fr = noc_fr(seqs, p.threshold, p.max_clicks)
            row.update({f"NoC{p.name}": m_noc, f"FR{p.name}": fr,
                        "final_iou": float(np.mean([s[-1] if s else 0.0 for s in seqs]))})
        losses = getattr(r.segmenter, "losses", [])
        if losses:
            row["adaptation_steps"] = len(losses)
            row["mean_loss_before_step"] = float(np.mean(losses))
        out.setdefault(r.config, {})[p.name] = row
    return out


def format_table(summary: dict, protocols: list[Protocol], title: str) -> str:
    cols = [k for p in protocols for k in (f"NoC{p.name}", f"FR{p.name}")]
    lines = [title, f"{'config':<10}" + "".join(f"{c:>12}" for c in cols) + f"{'s/click':>10}{'objects':>9}"]
    for cfg, by_p in summary.items():
        cells, spc, n = [], [], 0
        for p in protocols:
            row = by_p.get(p.name, {})
            for c in (f"NoC{p.name}", f"FR{p.name}"):
                v = row.get(c)
                cells.append(f"{v:>12.3f}" if v is not None else f"{'-':>12}")
            if row.get("seconds_per_click") is not None:
                spc.append(row["seconds_per_click"])
            n = max(n, row.get("objects", 0))
        s = f"{np.mean(spc):>10.3f}" if spc else f"{'-':>10}"
        lines.append(f"{cfg:<10}" + "".join(cells) + s + f"{n:>9d}")
    return "\n".join(lines)


def write_outputs(path: Path, doc: dict, runs: list[Run]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2))
    fields = ["config", "protocol", "image", "instance", "class", "area", "clicks", "noc", "failed",
              "final_iou", "seconds", "ious"]
    with open(path.with_suffix(".csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        for r in runs:
            p = r.protocol
            for o in r.results:
                w.writerow({"config": r.config, "protocol": p.name, "image": o.image, "instance": o.instance,
                            "class": o.class_name or "", "area": o.area, "clicks": len(o.ious),
                            "noc": noc(o.ious, p.threshold, p.max_clicks),
                            "failed": int(failed(o.ious, p.threshold, p.max_clicks)),
                            "final_iou": f"{o.ious[-1]:.6f}" if o.ious else "",
                            "seconds": f"{o.seconds:.4f}", "ious": " ".join(f"{v:.4f}" for v in o.ious)})


def bench(args: argparse.Namespace, items: Iterator[Item]) -> dict:
    """Time one adaptation step against one decoder forward pass (median, same run, same prompt):
    the first object of the first image, with the simulated user's first three clicks."""
    from uois_sam_ros.core.adapt.adaptation import DecoderAdapter, ImageContext, time_adaptation_step
    from uois_sam_ros.core.adapt.interactive import SamClicks

    if args.segmenter != "sam":
        raise UserError("--bench times SAM's decoder: it needs --segmenter sam")
    seg, desc, _ = _sam_segmenter(args)
    item = next(items)
    ids = object_ids(item.label, args.min_area)
    if not ids:
        raise UserError(f"{item.name}: no instance of at least --min-area {args.min_area} px to click on")
    gt = item.label == ids[0]
    seg.set_frame(item.frame)
    ctx = ImageContext.from_predictor(seg.predictor)
    # the simulated user's first three clicks on the unadapted SAM: a real multi-click prompt
    user = SamClicks(seg, DecoderAdapter(seg.model), mask_prompt=not args.no_mask_prompt)
    user.use_context(ctx)
    res = run_object(user, gt, Protocol(3, 1.0), None, item.name, ids[0])
    clicks = res.clicks
    t = time_adaptation_step(seg.model, ctx, clicks, repeats=args.bench_repeats, lr=args.lr)
    print(f"bench {desc} on {item.name} ({item.frame.width}x{item.frame.height}, {len(clicks)} clicks, "
          f"device {seg.device}): decoder forward {1000 * t.forward_s:.2f} ms, adaptation step "
          f"{1000 * t.step_s:.2f} ms, ratio {t.ratio:.2f}x (target < 4x; median of {t.repeats})")
    return {"forward_s": t.forward_s, "step_s": t.step_s, "ratio": t.ratio, "repeats": t.repeats,
            "image": item.name, "segmenter": desc}


def run(args: argparse.Namespace) -> dict:
    from tqdm import tqdm

    if args.threads:
        import torch

        torch.set_num_threads(max(1, args.threads))
    specs = [s.strip() for s in args.configs.split(",") if s.strip()]
    if not specs:
        raise UserError("--configs is empty")
    try:
        protocols = [Protocol.parse(p) for p in args.protocols.split(",") if p.strip()]
    except ValueError as e:
        raise UserError(str(e)) from None
    if not protocols:
        raise UserError("--protocols is empty")
    n_images, items = iter_items(args)
    if args.bench:
        return bench(args, items)
    runs, desc, _, prepare = build_runs(args, specs, protocols)
    n_objects = 0
    t0 = time.perf_counter()
    bar = tqdm(total=n_images, desc=f"interactive {args.dataset}", unit="img", disable=args.no_progress,
               file=sys.stderr)
    for item in items:
        ids = object_ids(item.label, args.min_area)
        if args.max_objects > 0:
            ids = ids[: args.max_objects]
        if ids:
            prepare(item, runs)
        for oid in ids:
            gt = item.label == oid
            cls = item.classes.get(oid) if item.classes else None
            for r in runs:
                r.results.append(run_object(r.segmenter, gt, r.protocol, cls, item.name, oid))
            n_objects += 1
            bar.set_postfix(objects=n_objects)
        bar.update(1)
    bar.close()
    if n_objects == 0:
        raise UserError(f"no instance of at least --min-area {args.min_area} px in {n_images} image(s)")
    summary = summarise(runs)
    title = (f"{args.dataset}: {desc}, {n_objects} objects in {n_images} images, "
             f"lr {args.lr:g}, {time.perf_counter() - t0:.0f} s")
    print(format_table(summary, protocols, title))
    doc = {"tool": "uois-sam-interactive-eval", "dataset": args.dataset, "root": args.root,
           "segmenter": desc, "images": n_images, "objects": n_objects,
           "protocols": [p.name for p in protocols], "configs": list(summary),
           "adapt": {"lr": args.lr, "erosion_iterations": args.erosion, "steps": args.steps,
                     "per_class": not args.no_per_class, "mask_prompt": not args.no_mask_prompt},
           "min_area": args.min_area, "results": summary}
    if args.dataset in SYNTHETIC_KINDS:
        doc.update({"seed": args.seed, "count": args.count, "size": args.size})
    if args.json:
        write_outputs(Path(args.json), doc, runs)
    return doc


def main(argv: list[str] | None = None) -> int:
    return run_cli("uois-sam-interactive-eval", run, build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
