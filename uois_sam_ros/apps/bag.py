"""uois-sam-bag: datasets -> rosbag2 -> the live graph -> the paper's metrics.

  from-dataset  write a dataset (colour, aligned depth, camera_info, GT labels) to a bag
  eval          replay a bag into the graph, record /instances, match by stamp, score
                (and instances/amodal against the bag's amodal GT, when both are there)
  record        record the live graph's topics to a bag (for your own scenes)
  info          list a bag's topics, counts and frames

Lockstep replay waits for each frame's answer, so its table is reproducible and equals
uois-sam-eval on the same frames; rate replay runs on the bag clock and counts drops.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from uois_sam_ros.apps.bag_player import FrameResult
from uois_sam_ros.core.config import ConfigError, dotted_overrides
from uois_sam_ros.core.types import Intrinsics, Sample
from uois_sam_ros.ros.bag import (
    COLOR_TOPIC,
    DEPTH_TOPIC,
    GT_AMODAL_TOPIC,
    INFO_TOPIC,
    INSTANCES_TOPIC,
    STORAGES,
    BagError,
    BagFrame,
    BagTopics,
    bag_info,
    read_frames,
    write_samples,
)

PROG = "uois-sam-bag"
DATASETS = ("ocid", "osd", "phocal", "housecat6d", "uoais-sim", "folder", "synthetic")


def _tqdm(desc: str, unit: str = "frame", quiet: bool = False) -> Callable[[Iterable], Iterable]:
    def wrap(it: Iterable) -> Iterable:
        if quiet:
            return it
        from tqdm import tqdm
        total = len(it) if hasattr(it, "__len__") else None
        return tqdm(it, desc=desc, unit=unit, total=total, file=sys.stderr, leave=False)
    return wrap


# ---------------------------------------------------------------- from-dataset


def synthetic_samples(num: int, seed: int = 0, width: int = 640, height: int = 480) -> Iterator[Sample]:
    """Scenes seed, seed + 1, ... of the synthetic generator (the same scenes uois-sam-synth writes)."""
    from uois_sam_ros.core.data.synthetic import SceneConfig, generate_scene
    if num < 1:
        raise BagError(f"--num must be at least 1, got {num}")
    cfg = SceneConfig(width=width, height=height)
    for i in range(num):
        yield generate_scene(seed + i, cfg).sample()


def dataset_samples(kind: str, root: str | None, annotations: str | None = None, *,
                    intrinsics: Intrinsics | None = None, sample_every: int = 1, limit: int | None = None,
                    num: int = 10, seed: int = 0, width: int = 640, height: int = 480) -> Iterable[Sample]:
    if kind == "synthetic":
        n = num if limit is None else min(num, limit)
        return synthetic_samples(n, seed, width, height)
    if root is None:
        raise BagError(f"--root is required for --dataset {kind}")
    if not Path(root).exists():
        raise BagError(f"dataset folder not found: {root}")
    try:
        from uois_sam_ros.core.data.datasets import open_dataset
    except ImportError as e:
        raise BagError(f"dataset readers are not available ({e})") from None
    return open_dataset(kind, root, annotations, intrinsics=intrinsics, sample_every=sample_every, limit=limit)


def _intrinsics_arg(a: argparse.Namespace) -> Intrinsics | None:
    if a.camera:
        return Intrinsics.from_json(a.camera)
    if a.intrinsics:
        if not (a.width and a.height):
            raise BagError("--intrinsics fx,fy,cx,cy needs --width and --height")
        return Intrinsics.from_string(a.intrinsics, a.width, a.height)
    return None


def cmd_from_dataset(a: argparse.Namespace) -> int:
    samples = dataset_samples(a.dataset, a.root, a.annotations, intrinsics=_intrinsics_arg(a),
                              sample_every=a.sample_every, limit=a.limit, num=a.num, seed=a.seed,
                              width=a.width or 640, height=a.height or 480)
    topics = _topics(a)
    n = write_samples(a.out, samples, storage=a.storage, fps=a.fps, topics=topics,
                      progress=_tqdm("writing bag", quiet=a.quiet), dataset=a.dataset)
    print(f"wrote {n} frames ({a.dataset}) to {a.out} [{a.storage}]")
    n_amodal = bag_info(a.out).topics.get(topics.gt_amodal, ("", 0))[1]
    if n_amodal:
        print(f"amodal ground truth for {n_amodal} frames on {topics.gt_amodal}")
    return 0


def _topics(a: argparse.Namespace) -> BagTopics:
    return BagTopics(a.color_topic, a.depth_topic, a.info_topic, a.gt_topic, a.gt_amodal_topic)


# ---------------------------------------------------------------- eval


@dataclass
class EvalResult:
    """Everything `eval` reports; `rows` has one entry per bag frame."""

    table: str
    means: dict[str, float]
    rows: list[dict]
    latency_ms: dict[str, float]
    published: int
    answered: int
    unanswered: int
    mode: str
    # {mIoU_full, mIoU_occ, AP, AP50, AP75, AR, frames} over the frames with an amodal answer;
    # None when not measured (no amodal GT in the bag, or no amodal answer from the graph)
    amodal: dict[str, float] | None = None
    amodal_table: str = ""
    amodal_notes: list[str] = field(default_factory=list)  # why there is no amodal table, or its coverage

    def summary(self) -> str:
        lat = self.latency_ms
        lines = [self.table]
        if self.answered:
            lines.append("latency publish -> /instances (ms): "
                         f"mean {lat['mean']:.1f}  p50 {lat['p50']:.1f}  p95 {lat['p95']:.1f}  max {lat['max']:.1f}")
        lines.append(f"frames: {self.published} published, {self.answered} answered, "
                     f"{self.unanswered} without answer ({self.mode})")
        if self.unanswered:
            lines.append("frames without an answer are left out of the metric table")
        if self.amodal_table:
            lines.append(self.amodal_table)
        lines.extend(self.amodal_notes)
        return "\n".join(lines)

    def to_json(self, path: str | Path, extra: dict | None = None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        doc = {"mode": self.mode, "means": self.means, "latency_ms": self.latency_ms,
               "published": self.published, "answered": self.answered, "unanswered": self.unanswered,
               "amodal": self.amodal, "frames": self.rows, **(extra or {})}
        path.write_text(json.dumps(doc, indent=2, default=_json_default))


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    raise TypeError(f"cannot write {type(o).__name__} to JSON")


def latency_stats(values_s: Sequence[float]) -> dict[str, float]:
    if not values_s:
        return {k: float("nan") for k in ("mean", "p50", "p95", "max")}
    v = np.asarray(values_s, np.float64) * 1000.0
    return {"mean": float(v.mean()), "p50": float(np.percentile(v, 50)), "p95": float(np.percentile(v, 95)),
            "max": float(v.max())}


AMODAL_KEYS = ("mIoU_full", "mIoU_occ", "AP", "AP50", "AP75", "AR")


def _add_amodal(acc, f: BagFrame, answer) -> dict[str, float]:
    """One frame under uois-sam-eval --task amodal --visible predicted: the answer's amodal masks,
    matched one to one to the GT by the answer's visible masks (IoU >= 0.5); a missed GT object
    counts 0. Scores for AP are the instances' own scores (the completer's confidence is not sent)."""
    from uois_sam_ros.core.amodal.stage import gt_visible
    from uois_sam_ros.core.eval.amodal_metrics import match_by_visible
    from uois_sam_ros.core.eval.metrics import resize_nearest
    from uois_sam_ros.ros.convert import msg_to_instances

    vis, am = gt_visible(Sample(None, None, None, f.label, f.name, amodal=f.amodal, amodal_ids=f.amodal_ids))
    pred = msg_to_instances(answer)
    masks = pred.masks
    amodal = pred.amodal_masks if pred.amodal_masks is not None else masks
    if masks.shape[1:] != f.label.shape:  # a graph that answers at another resolution
        def resize(m: np.ndarray) -> np.ndarray:
            return (np.stack([resize_nearest(x.astype(np.uint8), *f.label.shape) > 0 for x in m]) if len(m)
                    else np.zeros((0, *f.label.shape), bool))
        masks, amodal = resize(masks), resize(amodal)
    return acc.add(f.name, am, vis, amodal, pred.scores, match_by_visible(masks, vis))


def score(frames: Sequence[BagFrame], results: Sequence[FrameResult], title: str, mode: str,
          amodal_stage: bool | None = None, amodal_title: str = "", amodal_topic: str = "instances/amodal",
          amodal_note: str = "") -> EvalResult:
    """Metrics over answered frames (the same accumulator uois-sam-eval uses) plus latency.

    When the bag has amodal GT and amodal answers arrived, the amodal table too, over the
    frames with both. amodal_stage: whether the graph publishes amodal_topic (None: infer
    from the answers); it only words the line that says why there is no amodal table.
    """
    from uois_sam_ros.core.eval.amodal_metrics import AmodalAccumulator, format_amodal_table
    from uois_sam_ros.core.eval.metrics import MetricAccumulator
    from uois_sam_ros.ros.convert import msg_to_instances
    acc = MetricAccumulator()
    amodal_acc = AmodalAccumulator()
    rows, lat = [], []
    for f, r in zip(frames, results, strict=True):
        row: dict = {"name": f.name, "stamp": f.stamp_ns / 1e9, "answered": r.answer is not None,
                     "latency_ms": None if r.latency_s is None else r.latency_s * 1000.0}
        if r.answer is not None:
            pred = msg_to_instances(r.answer).label_map()
            m = acc.add(f.name, pred, f.label)
            row.update({k: float(v) for k, v in m.items()})
            lat.append(r.latency_s)
        if f.amodal is not None:
            row["amodal_answered"] = r.amodal_answer is not None
            if r.amodal_answer is not None:
                a = _add_amodal(amodal_acc, f, r.amodal_answer)
                row.update({"amodal_IoU_full": a["IoU_full"], "amodal_IoU_occ": a["IoU_occ"]})
        rows.append(row)
    answered = sum(1 for r in results if r.answer is not None)
    published = sum(1 for r in results if r.published is not None)
    res = EvalResult(acc.format_table(title), acc.means(), rows, latency_stats(lat), published, answered,
                     len(results) - answered, mode)
    with_gt = sum(1 for f in frames if f.amodal is not None)
    scored = len(amodal_acc.rows)
    if amodal_stage is None:
        amodal_stage = any(r.amodal_answer is not None for r in results)
    if scored:
        m = amodal_acc.means()
        res.amodal = {**{k: float(m.get(k, math.nan)) for k in AMODAL_KEYS}, "frames": scored}
        res.amodal_table = format_amodal_table(
            {amodal_title or title: m}, f"amodal completion ({amodal_topic} vs the bag's amodal GT, "
                                       "visible masks matched at IoU >= 0.5), x100")
        res.amodal_notes.append(f"amodal: {scored} frames scored (with an {amodal_topic} answer), "
                                f"of {with_gt} with amodal GT and {answered} answered")
    elif with_gt and not amodal_stage:
        res.amodal_notes.append(f"amodal: the bag has amodal GT ({with_gt} frames) but the graph has no amodal "
                                f"stage (nothing publishes {amodal_topic}); no amodal table")
    elif with_gt:
        res.amodal_notes.append(f"amodal: the bag has amodal GT ({with_gt} frames) but no frame got an "
                                f"{amodal_topic} answer; no amodal table")
    if amodal_note and with_gt:
        res.amodal_notes.append(f"amodal: {amodal_note}")
    return res


class Graph:
    """A running graph to replay into: the in-process bringup, or nothing (external)."""

    def __init__(self, stop: Callable[[], None] | None = None, title: str = "external graph",
                 amodal_method: str = "") -> None:
        self._stop = stop
        self.title = title
        self.amodal_method = amodal_method  # the amodal node's method ('' = none or unknown)

    def stop(self) -> None:
        if self._stop is not None:
            stop, self._stop = self._stop, None
            stop()


# launch arguments of the bringup that make sense for replay (the camera is the bag)
GRAPH_ARGS = ("params_file", "single_node", "method", "sam_checkpoint", "sam_model_type", "hpg_checkpoint",
              "hdnet_checkpoint", "device", "amodal")


def graph_specs(graph_args: dict[str, str] | None = None, overrides: dict[str, object] | None = None) -> list:
    """The bringup's node descriptions without the camera; overrides are flat 'section.key' values
    applied to every node that declares them (like '/**' in the parameter file)."""
    from uois_sam_ros.ros.graph import GraphError, NodeSpec, describe_graph
    from uois_sam_ros.ros.params import param_specs

    args = {k: v for k, v in (graph_args or {}).items() if v not in (None, "")}
    bad = sorted(set(args) - set(GRAPH_ARGS))
    if bad:
        raise BagError(f"unknown graph argument(s) {bad}; valid: {list(GRAPH_ARGS)}")
    per_node: dict[str, dict] = {}
    for key, val in (overrides or {}).items():
        takers = [n for n in ("hpg", "segmentation", "amodal") if key in param_specs(n)]
        if not takers:
            raise BagError(f"--set {key}: no node of the graph has a parameter {key!r}")
        for n in takers:
            per_node.setdefault(n, {})[key] = val
    try:
        specs: list[NodeSpec] = describe_graph(args.pop("params_file", None), use_camera=False, overrides=per_node,
                                               **args)
    except GraphError as e:
        raise BagError(str(e)) from None
    return specs


def start_bringup(graph_args: dict[str, str] | None = None, overrides: dict[str, object] | None = None) -> Graph:
    """The hpg + segmentation (+ amodal) nodes of uois-sam-bringup in this process, on their own executor."""
    from uois_sam_ros.apps.bringup import start_in_background
    from uois_sam_ros.core.segment.pipeline import resolve_method
    from uois_sam_ros.ros.params import params_to_config

    specs = graph_specs(graph_args, overrides)
    seg = next(s for s in specs if s.name == "segmentation")
    try:
        title = resolve_method(params_to_config(seg.parameters))
    except ValueError:
        title = "uois-sam graph"
    amodal_method = ""
    am = next((s for s in specs if s.name == "amodal"), None)
    if am is not None:
        from uois_sam_ros.core.amodal.stage import resolve_amodal_method
        try:
            amodal_method = resolve_amodal_method(params_to_config(am.parameters).amodal)
        except ValueError:
            amodal_method = "amodal"
    return Graph(start_in_background(specs), title, amodal_method)


def evaluate(bag: str | Path, *, lockstep: bool = True, rate: float = 1.0, timeout: float = 60.0,
             topics: BagTopics = BagTopics(), instances_topic: str = INSTANCES_TOPIC,
             graph: Callable[[], Graph] | None = None, connect_timeout: float = 30.0,
             restamp: bool = True, quiet: bool = True, amodal_topic: str | None = None) -> EvalResult:
    """Replay BAG into a graph and score its /instances against the bag's GT.

    graph: starts the graph and returns its handle (default: nothing is started, the
    graph is external). The bag is fully checked before anything starts. restamp: shift the
    stamps to the present, so a graph that has seen this bag before still answers it.
    amodal_topic: the amodal node's output (default: <instances_topic>/amodal; '' = ignore it);
    scored against the bag's amodal GT when the graph publishes it.
    """
    import rclpy
    from rclpy.executors import SingleThreadedExecutor

    from uois_sam_ros.apps.bag_player import BagPlayer
    from uois_sam_ros.nodes.common import spin_until_stopped

    frames = read_frames(bag, topics)
    if not lockstep and not (rate > 0 and math.isfinite(rate)):
        raise BagError(f"--rate must be a positive number, got {rate}")
    own_init = not rclpy.ok()
    if own_init:
        rclpy.init()
    handle = graph() if graph else Graph()
    node = executor = spin = None
    try:
        node = rclpy.create_node("uois_sam_bag_player")
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        spin = threading.Thread(target=spin_until_stopped, args=(executor,), daemon=True)
        spin.start()
        if amodal_topic is None:
            amodal_topic = instances_topic.rstrip("/") + "/amodal"
        player = BagPlayer(node, topics, instances_topic, amodal_topic=amodal_topic)
        player.wait_for_graph(connect_timeout)
        if restamp:
            player.restamp(frames)
        player.warm_up(frames[0], timeout)
        if lockstep:
            results = player.play_lockstep(frames, timeout, progress=_tqdm("lockstep", quiet=quiet))
            mode = "lockstep"
        else:
            results = player.play_rate(frames, rate, timeout, progress=_tqdm(f"rate x{rate:g}", quiet=quiet))
            mode = f"rate x{rate:g}"
    finally:
        if executor is not None:
            executor.shutdown(timeout_sec=2.0)
        if spin is not None:
            spin.join(timeout=2.0)
        if node is not None:
            node.destroy_node()
        handle.stop()
        if own_init and rclpy.ok():
            rclpy.shutdown()
    # The same title as uois-sam-eval ("<dataset> <method>"), so the two tables read alike.
    dataset = bag_info(bag).dataset
    title = f"{dataset} {handle.title}" if dataset else handle.title
    amodal_title = f"{title} + {handle.amodal_method}" if handle.amodal_method else title
    return score(frames, results, title, mode, amodal_stage=player.has_amodal, amodal_title=amodal_title,
                 amodal_topic=amodal_topic or "instances/amodal", amodal_note=player.amodal_note)


def _flat_overrides(pairs: list[str]) -> dict[str, object]:
    """['pipeline.method=grid'] -> {'pipeline.method': 'grid'} (values parsed as YAML scalars)."""
    out: dict[str, object] = {}
    for key, val in _flatten(dotted_overrides(pairs)).items():
        out[key] = val
    return out


def _flatten(d: dict, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def cmd_eval(a: argparse.Namespace) -> int:
    overrides = _flat_overrides(a.set or [])
    graph_args = {k: getattr(a, k) for k in GRAPH_ARGS}
    if not a.external:
        graph_specs(graph_args, overrides)  # argument errors before anything starts
    graph = None if a.external else (lambda: start_bringup(graph_args, overrides))
    res = evaluate(a.bag, lockstep=a.rate is None, rate=a.rate or 1.0, timeout=a.timeout, topics=_topics(a),
                   instances_topic=a.instances_topic, graph=graph, connect_timeout=a.connect_timeout,
                   restamp=not a.keep_stamps, quiet=a.quiet, amodal_topic=a.amodal_topic)
    print(res.summary())
    if a.json:
        res.to_json(a.json, {"bag": str(a.bag)})
        print(f"wrote {a.json}")
    return 0


# ---------------------------------------------------------------- record / info


def record(out: str | Path, topics: Sequence[str], *, storage: str = "mcap", duration: float | None = None,
           stop: threading.Event | None = None, quiet: bool = True) -> dict[str, int]:
    """Record `topics` of the running graph until `duration` s pass, `stop` is set or Ctrl-C."""
    import rclpy
    from rclpy.executors import SingleThreadedExecutor

    from uois_sam_ros.apps.bag_player import BagRecorder

    own_init = not rclpy.ok()
    if own_init:
        rclpy.init()
    node = rclpy.create_node("uois_sam_bag_recorder")
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    rec = None
    try:
        rec = BagRecorder(node, out, topics, storage)
        end = None if duration is None else time.monotonic() + duration
        last_poll = 0.0
        while (end is None or time.monotonic() < end) and not (stop is not None and stop.is_set()):
            if time.monotonic() - last_poll > 0.5:
                for t in rec.poll():
                    if not quiet:
                        print(f"recording {t}", file=sys.stderr)
                last_poll = time.monotonic()
            executor.spin_once(timeout_sec=0.05)
    except KeyboardInterrupt:
        pass
    finally:
        counts = rec.close() if rec is not None else {}
        executor.shutdown(timeout_sec=1.0)
        node.destroy_node()
        if own_init and rclpy.ok():
            rclpy.shutdown()
    return counts


def cmd_record(a: argparse.Namespace) -> int:
    topics = a.topic or [COLOR_TOPIC, DEPTH_TOPIC, INFO_TOPIC, INSTANCES_TOPIC]
    if not a.quiet:
        print(f"recording {', '.join(topics)} to {a.out}; Ctrl-C to stop", file=sys.stderr)
    counts = record(a.out, topics, storage=a.storage, duration=a.duration, quiet=a.quiet)
    if not any(counts.values()):
        print(f"{PROG}: warning: no messages were received on {', '.join(topics)}", file=sys.stderr)
    for t in topics:
        print(f"{t}: {counts.get(t, 0)} messages")
    print(f"wrote {a.out}")
    return 0


def cmd_info(a: argparse.Namespace) -> int:
    info = bag_info(a.bag)
    print(f"bag:      {info.path}")
    print(f"storage:  {info.storage}")
    print(f"messages: {info.message_count}, duration {info.duration_ns / 1e9:.3f} s, "
          f"start {info.start_ns / 1e9:.9f} s")
    width = max((len(t) for t in info.topics), default=0)
    for t, (ty, n) in sorted(info.topics.items()):
        print(f"  {t:<{width}}  {ty:<32} {n}")
    if info.frame_names:
        print(f"frames:   {len(info.frame_names)} named (first: {next(iter(info.frame_names.values()))})")
    return 0


# ---------------------------------------------------------------- main


def _topic_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--color-topic", default=COLOR_TOPIC, help=f"colour image topic, rgb8 (default {COLOR_TOPIC})")
    p.add_argument("--depth-topic", default=DEPTH_TOPIC,
                   help=f"aligned depth topic, 16UC1 millimetres (default {DEPTH_TOPIC})")
    p.add_argument("--info-topic", default=INFO_TOPIC, help=f"camera_info topic (default {INFO_TOPIC})")
    p.add_argument("--gt-topic", default=BagTopics().gt, help="ground-truth label topic (mono16)")
    p.add_argument("--gt-amodal-topic", default=GT_AMODAL_TOPIC,
                   help=f"amodal ground-truth topic (InstanceArray; written when the dataset has amodal GT, "
                        f"default {GT_AMODAL_TOPIC})")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    sub = p.add_subparsers(dest="cmd", required=True)

    d = sub.add_parser("from-dataset", help="write a dataset to a bag")
    d.add_argument("--dataset", required=True, choices=DATASETS, help="dataset layout under --root")
    d.add_argument("--root", help="dataset folder (not for synthetic)")
    d.add_argument("--annotations", help="COCO json (uoais-sim)")
    d.add_argument("--out", required=True, help="bag directory to create")
    d.add_argument("--storage", choices=sorted(STORAGES), default="mcap", help="rosbag2 storage (default mcap)")
    d.add_argument("--fps", type=float, default=10.0, help="bag clock: frames per second")
    d.add_argument("--num", type=int, default=10, help="synthetic: number of scenes")
    d.add_argument("--seed", type=int, default=0, help="synthetic: seed of the first scene")
    d.add_argument("--width", type=int, help="synthetic image width (default 640); image width for --intrinsics")
    d.add_argument("--height", type=int, help="synthetic image height (default 480)")
    d.add_argument("--intrinsics", help="fx,fy,cx,cy for datasets without camera files")
    d.add_argument("--camera", help="camera.json with the intrinsics")
    d.add_argument("--sample-every", type=int, default=1, help="one frame in N (PhoCAL/HouseCat6D: 10)")
    d.add_argument("--limit", type=int, help="write at most N frames")
    _topic_args(d)
    d.set_defaults(func=cmd_from_dataset)

    e = sub.add_parser("eval", help="replay a bag into the graph and score /instances")
    e.add_argument("bag", help="bag directory (from-dataset output)")
    mode = e.add_mutually_exclusive_group()
    mode.add_argument("--lockstep", action="store_true", help="wait for each answer (default; reproducible)")
    mode.add_argument("--rate", type=float, help="play on the bag clock x RATE; measures drops")
    e.add_argument("--json", help="write means and per-frame rows (with latency) here")
    e.add_argument("--params-file", dest="params_file",
                   help="ROS 2 parameter file of the in-process graph (default: the package's tabletop.yaml)")
    e.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="parameter override for every node that has it, e.g. pipeline.method=weights_free")
    e.add_argument("--single-node", dest="single_node", choices=("true", "false"),
                   help="HPG inside the segmentation node (default: as in the parameter file)")
    e.add_argument("--amodal", choices=("true", "false"),
                   help="run the amodal node (default true): scored against the bag's amodal GT when it has some")
    for name in ("method", "sam_checkpoint", "sam_model_type", "hpg_checkpoint", "hdnet_checkpoint", "device"):
        e.add_argument("--" + name.replace("_", "-"), dest=name, help=f"graph launch argument {name}")
    e.add_argument("--external", action="store_true", help="do not start a graph; replay into a running one")
    e.add_argument("--instances-topic", default=INSTANCES_TOPIC,
                   help=f"InstanceArray topic to score (default {INSTANCES_TOPIC})")
    e.add_argument("--amodal-topic",
                   help="amodal InstanceArray topic to score against the bag's amodal GT (default: "
                        "<instances topic>/amodal; '' = do not look for it)")
    e.add_argument("--timeout", type=float, default=60.0,
                   help="seconds to wait for an answer (lockstep: per frame; rate: for the last frame)")
    e.add_argument("--keep-stamps", action="store_true",
                   help="publish the bag's own stamps (default: shifted to now; a running graph drops "
                        "stamps older than it has seen)")
    e.add_argument("--connect-timeout", type=float, default=30.0, help="seconds to wait for the graph")
    _topic_args(e)
    e.set_defaults(func=cmd_eval)

    r = sub.add_parser("record", help="record the live graph's topics")
    r.add_argument("--out", required=True, help="bag directory to create")
    r.add_argument("--topic", action="append", help="topic to record (repeat); default: camera topics + /instances")
    r.add_argument("--storage", choices=sorted(STORAGES), default="mcap", help="rosbag2 storage (default mcap)")
    r.add_argument("--duration", type=float, help="seconds to record (default: until Ctrl-C)")
    r.set_defaults(func=cmd_record)

    i = sub.add_parser("info", help="list a bag's topics")
    i.add_argument("bag", help="bag directory")
    i.set_defaults(func=cmd_info)
    return p


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    try:
        return a.func(a)
    except (BagError, ConfigError, FileNotFoundError, ValueError) as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
