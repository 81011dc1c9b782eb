"""uois-sam-bench graph: where the time between a camera frame and its /instances goes.

For each mode (split: the hpg and segmentation nodes; single: the segmentation node alone) it
sends synthetic RGB-D frames (16UC1 millimetres, as a RealSense) through the graph and reports:
  core ms     UOISPipeline.run on the same frame in this process, no ROS (median): what the model
              costs. Each frame goes through the core right before the graph, so both see the same
              load on a shared machine, and in a thread of its own, as in the nodes' workers.
  graph ms    the colour image published -> its /instances received here (p50 / p95), one frame at
              a time (lockstep: nothing queues). Frames are stamped as they are sent, so the nodes'
              own stamp-based latencies are on the same clock.
  ratio       graph / core, the median over frames; overhead = ratio - 1, in %
  fps         throughput: frames published at --rate Hz for --throughput-s s, answers per second
              (the nodes drop what they cannot take, so fewer are answered than sent)
  first ms    the first frame after start-up (lazy initialisation)
and each node's steps from its /diagnostics (time_<step>_ms, nodes/common.py StepTimes), medians
in ms: arrive (stamp -> colour image in the node), sync (-> all inputs there: depth, camera_info,
prompts), queue (-> worker starts), convert (Image -> numpy), core (the core call, with its stages
core_*), output (messages built and published).

By default every node runs as its own process, the way `ros2 launch` starts them
(apps/launcher.py); --in-process runs them in this process, as uois-sam-bringup and the demo do.
The amodal node is off: only hpg and segmentation are measured. The bench uses a ROS domain of
its own (random, or --domain-id) over loopback only, so it never talks to a live graph.

    uois-sam-bench graph [--frames 10] [--method weights_free] [--modes split,single] [--in-process]
                         [--width 640 --height 480] [--set segmentation.frame_buffer=30] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

MODES = ("split", "single")
COLUMNS = ("mode", "core_ms", "graph_p50_ms", "graph_p95_ms", "ratio", "overhead_pct", "fps", "first_ms")
STAGES = ("prompts", "embedding", "decode", "postprocess", "total")


@dataclass
class BenchFrame:
    """One synthetic RGB-D frame, as the core sees it and as the graph receives it (CDR)."""

    name: str
    rgb: np.ndarray
    depth_mm: np.ndarray
    intrinsics: Any
    color: bytes
    depth: bytes
    info: bytes


@dataclass
class ModeResult:
    mode: str
    processes: bool
    latencies_ms: list[float] = field(default_factory=list)  # lockstep, per frame
    core: list[dict[str, float]] = field(default_factory=list)  # core seconds per stage, the same frames
    sent: int = 0
    answered: int = 0
    first_ms: float = math.nan
    rate_sent: int = 0
    rate_answered: int = 0
    fps: float = math.nan
    nodes: dict[str, dict[str, float]] = field(default_factory=dict)  # node -> step -> median ms
    error: str = ""


def make_frames(n: int, width: int, height: int, seed: int = 0) -> list[BenchFrame]:
    """Synthetic scenes seed.. seed+n-1 as 16UC1-millimetre frames (what a RealSense sends)."""
    from uois_sam_ros.core.data.synthetic import SceneConfig, generate_scene
    from uois_sam_ros.ros.bag import _depth_mm, camera_info_cdr, image_cdr

    frames = []
    for i in range(n):
        s = generate_scene(seed + i, SceneConfig(width=width, height=height)).sample()
        mm = _depth_mm(s.depth, s.name)
        frames.append(BenchFrame(s.name, s.rgb, mm, s.intrinsics,
                                 image_cdr(s.rgb, "rgb8", 0, "camera_color_optical_frame"),
                                 image_cdr(mm, "16UC1", 0, "camera_color_optical_frame"),
                                 camera_info_cdr(s, 0, "camera_color_optical_frame")))
    return frames


def graph_specs(mode: str, method: str, overrides: dict[str, dict[str, Any]] | None = None) -> list:
    """hpg + segmentation (split) or segmentation (single) of the tabletop graph: no camera (the
    bench is the camera), no amodal node. overrides: {node: {parameter: value}}; a node that is not
    in this mode's graph is skipped."""
    from uois_sam_ros.ros.graph import describe_graph

    names = {"segmentation"} | ({"hpg"} if mode == "split" else set())
    return describe_graph(use_camera=False, single_node=mode == "single", amodal=False, method=method or "",
                          overrides={n: v for n, v in (overrides or {}).items() if n in names})


def parse_sets(pairs: list[str]) -> dict[str, dict[str, Any]]:
    """['segmentation.frame_buffer=30', 'hpg.sync_slop=0.01'] -> {node: {parameter: value}} (YAML scalars)."""
    import yaml

    out: dict[str, dict[str, Any]] = {}
    for pair in pairs:
        key, sep, val = pair.partition("=")
        node, dot, name = key.partition(".")
        if not sep or not dot or node not in ("hpg", "segmentation"):
            raise ValueError(f"--set {pair!r}: expected hpg.PARAM=VALUE or segmentation.PARAM=VALUE")
        out.setdefault(node, {})[name] = yaml.safe_load(val)
    return out


class CoreRunner:
    """UOISPipeline.run in this process with the graph's own configuration (the single-node
    segmentation node's parameters) on the frames as the node converts them: the core time.

    It runs in a thread of its own, as the model does in a node (its worker thread), after priming
    the process's BLAS threads from the main thread as every node process does (nodes/common.py
    prime_torch_blas): on a busy 2-core machine the mask NMS alone took 65-110 ms per frame
    instead of 10 ms in a thread of an unprimed process, which would flatter the graph."""

    def __init__(self, method: str, first: BenchFrame, overrides: dict[str, dict[str, Any]] | None = None) -> None:
        from concurrent.futures import ThreadPoolExecutor

        from uois_sam_ros.core.segment.pipeline import UOISPipeline
        from uois_sam_ros.ros.params import params_to_config

        seg = next(s for s in graph_specs("single", method, overrides) if s.name == "segmentation")
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="core")
        self.pipeline = self._thread.submit(UOISPipeline, params_to_config(seg.parameters), part="full").result()
        self.scale = np.float32(seg.parameters.get("depth_scale", 0.001))
        from uois_sam_ros.nodes.common import prime_torch_blas

        prime_torch_blas()  # from the main thread, as every node process does (spin_node)
        self.run(first)  # warm-up (lazy initialisation), as the graph gets a warm-up frame

    def run(self, f: BenchFrame) -> dict[str, float]:
        """Seconds of each stage (and 'total') for one frame."""
        return self._thread.submit(self._run, f).result()

    def _run(self, f: BenchFrame) -> dict[str, float]:
        from uois_sam_ros.core.types import Frame

        frame = Frame(rgb=f.rgb, depth=f.depth_mm.astype(np.float32) * self.scale, intrinsics=f.intrinsics)
        t = time.perf_counter()
        inst = self.pipeline.run(frame)
        total = time.perf_counter() - t
        return {**{k: float(inst.timings.get(k, 0.0)) for k in STAGES if k != "total"}, "total": total}

    def close(self) -> None:
        self._thread.shutdown(wait=True)


class _Graph:
    """The graph under test, as processes or in this process; stop() tears it down."""

    def __init__(self, specs: list, processes: bool, log_dir: str) -> None:
        self.specs, self.processes, self.log_dir = specs, processes, log_dir
        self._procs: Any = None
        self._stop: Callable[[], None] | None = None

    def start(self) -> None:
        if self.processes:
            from uois_sam_ros.apps.launcher import GraphProcesses

            self._procs = GraphProcesses(self.specs, log_dir=self.log_dir).start()
            return
        from uois_sam_ros.apps.bringup import start_in_background

        # 4 executor threads, as uois-sam-bringup; the nodes share the bench's context, which stays
        # up for the next mode
        self._stop = start_in_background(self.specs)

    def log_tail(self, lines: int = 12) -> str:
        if self._procs is None:
            return ""
        return "\n".join(f"--- {name}:\n" + "\n".join(self._procs.log_text(name).splitlines()[-lines:])
                         for name in self._procs.logs)

    def stop(self) -> None:
        if self._procs is not None:
            self._procs.stop()
            self._procs = None
        if self._stop is not None:
            stop, self._stop = self._stop, None
            stop()


class _Diagnostics:
    """The latest /diagnostics status of each node, as {key: value} (values as published)."""

    def __init__(self, node: Any) -> None:
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.qos import QoSProfile

        self.latest: dict[str, dict[str, str]] = {}
        self._lock = threading.Lock()
        self.sub = node.create_subscription(DiagnosticArray, "/diagnostics", self._on, QoSProfile(depth=10))

    def _on(self, msg: Any) -> None:
        with self._lock:
            for st in msg.status:
                self.latest[st.name.split(":")[0]] = {kv.key: kv.value for kv in st.values}

    def get(self, name: str) -> dict[str, str]:
        with self._lock:
            return dict(self.latest.get(name, {}))


def _restamped(f: BenchFrame, stamp_ns: int, name: str = "") -> Any:
    from uois_sam_ros.ros.bag import BagFrame, with_stamp

    return BagFrame(stamp_ns, name or f.name, with_stamp(f.color, stamp_ns), with_stamp(f.depth, stamp_ns),
                    with_stamp(f.info, stamp_ns), None)


def _node_steps(values: dict[str, str]) -> dict[str, float]:
    """The 'time_<step>_ms' medians a node publishes in its diagnostics (none on older nodes)."""
    out = {}
    for k, v in values.items():
        if k.startswith("time_") and k.endswith("_ms"):
            try:
                out[k[len("time_"):-len("_ms")]] = float(v)
            except ValueError:
                pass
    return out


def run_mode(mode: str, frames: list[BenchFrame], args: argparse.Namespace, node: Any,
             core: CoreRunner) -> ModeResult:
    """Start the graph of one mode, measure lockstep latency, throughput and the node steps, stop it.

    Each frame goes through the core right before it goes through the graph, so that both see the
    same load on a shared machine (the ratio is taken per frame)."""
    from uois_sam_ros.apps.bag_player import BagPlayer
    from uois_sam_ros.ros.bag import BagError, BagTopics

    res = ModeResult(mode, not args.in_process)
    specs = graph_specs(mode, args.method, args.overrides)
    names = [s.name for s in specs]
    diags = _Diagnostics(node)
    log_dir = tempfile.mkdtemp(prefix=f"uois_bench_graph_{mode}_")
    graph = _Graph(specs, not args.in_process, log_dir)
    player = BagPlayer(node, BagTopics(), "instances", amodal_topic=None)
    try:
        graph.start()
        player.wait_for_graph(args.connect_timeout)
        t0 = time.monotonic()
        player.warm_up(_restamped(frames[0], time.time_ns() + 1_000_000_000, "warm-up"), args.timeout)
        res.first_ms = (time.monotonic() - t0) * 1e3
        for _ in range(args.repeats):
            for f in frames:  # lockstep, each frame stamped as it goes out
                c = core.run(f)
                (r,) = player.play_lockstep([_restamped(f, time.time_ns())], args.timeout)
                res.sent += 1
                if r.latency_s is not None:
                    res.answered += 1
                    res.latencies_ms.append(r.latency_s * 1e3)
                    res.core.append(c)
        # the nodes' step medians: wait for a diagnostics message that counts every frame
        want = 1 + res.answered
        end = time.monotonic() + 3.0
        while time.monotonic() < end and not all(_published(diags.get(n)) >= want for n in names):
            time.sleep(0.05)
        res.nodes = {n: _node_steps(diags.get(n)) for n in names}
        if args.throughput_s > 0:
            _throughput(player, frames, args, res)
    except (BagError, RuntimeError) as e:  # no answer / a node that does not configure (in-process)
        res.error = f"{e}\n{graph.log_tail()}".strip()
    finally:
        graph.stop()
        node.destroy_subscription(diags.sub)
        for sub in (player._sub, player._amodal_sub):  # noqa: SLF001 - the player has no close()
            if sub is not None:
                node.destroy_subscription(sub)
        for pub in (player._pub_color, player._pub_depth, player._pub_info):  # noqa: SLF001
            node.destroy_publisher(pub)
    return res


def _published(values: dict[str, str]) -> int:
    try:
        return int(values.get("published", "0"))
    except ValueError:
        return 0


def _throughput(player: Any, frames: list[BenchFrame], args: argparse.Namespace, res: ModeResult) -> None:
    """Publish at args.rate Hz for args.throughput_s s (frames cycled), count the answers."""
    n = max(2, int(round(args.rate * args.throughput_s)))
    step = int(1e9 / args.rate)
    start = time.time_ns() + 200_000_000
    burst = [_restamped(frames[k % len(frames)], start + k * step, f"rate-{k}") for k in range(n)]
    player.offset_ns = 0
    results = player.play_rate(burst, 1.0, args.timeout)
    answered = sorted(r.answered for r in results if r.answered is not None)
    res.rate_sent, res.rate_answered = len(results), len(answered)
    if len(answered) >= 2 and answered[-1] > answered[0]:
        res.fps = (len(answered) - 1) / (answered[-1] - answered[0])


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else math.nan


def summarise(results: list[ModeResult]) -> dict[str, Any]:
    """The table rows (and everything behind them) as plain data for --json."""
    rows = []
    for r in results:
        core_ms = [c["total"] * 1e3 for c in r.core]
        ratios = [g / c for g, c in zip(r.latencies_ms, core_ms) if c > 0]
        ratio = float(np.median(ratios)) if ratios else math.nan
        rows.append({"mode": r.mode, "processes": r.processes, "core_ms": _pct(core_ms, 50),
                     "graph_p50_ms": _pct(r.latencies_ms, 50), "graph_p95_ms": _pct(r.latencies_ms, 95),
                     "ratio": ratio, "overhead_pct": (ratio - 1.0) * 100.0, "fps": r.fps, "first_ms": r.first_ms,
                     "sent": r.sent, "answered": r.answered, "rate_sent": r.rate_sent, "rate_answered": r.rate_answered,
                     "core_stages_ms": {k: _pct([c[k] * 1e3 for c in r.core], 50) for k in STAGES},
                     "core_per_frame_ms": core_ms, "graph_per_frame_ms": r.latencies_ms,
                     "nodes": r.nodes, "error": r.error})
    return {"rows": rows}


def _f(v: float | None, fmt: str = ".1f") -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, fmt)


def format_table(summary: dict[str, Any], title: str) -> str:
    """The table, then per mode the core stages, the per-frame figures and the nodes' steps."""
    head = (f"{'mode':<8}{'core ms':>9}{'graph p50':>11}{'p95':>8}{'ratio':>7}{'overhead':>10}{'fps':>7}"
            f"{'first ms':>10}{'answered':>10}")
    lines = [title, "", head, "-" * len(head)]
    for r in summary["rows"]:
        answered = f"{r['answered']}/{r['sent']}"
        lines.append(f"{r['mode']:<8}{_f(r['core_ms']):>9}{_f(r['graph_p50_ms']):>11}{_f(r['graph_p95_ms']):>8}"
                     f"{_f(r['ratio'], '.2f'):>7}{_f(r['overhead_pct'], '+.0f') + ' %':>10}{_f(r['fps'], '.2f'):>7}"
                     f"{_f(r['first_ms'], '.0f'):>10}{answered:>10}")
    lines.append("(ratio: median over frames of graph / core; fps: answers per second with frames published "
                 "faster than the graph answers)")
    for r in summary["rows"]:
        lines += ["", f"{r['mode']}: core stages (median ms): "
                  + ", ".join(f"{k} {_f(v)}" for k, v in r["core_stages_ms"].items())]
        lines.append("  per frame, core / graph (ms): " + " ".join(
            f"{_f(c, '.0f')}/{_f(g, '.0f')}" for c, g in zip(r["core_per_frame_ms"], r["graph_per_frame_ms"])))
        lines.append(f"  throughput: {r['rate_answered']}/{r['rate_sent']} published frames answered")
        for name, steps in r["nodes"].items():
            if steps:
                lines.append(f"  {name} steps (median ms): " + ", ".join(f"{k} {_f(v)}" for k, v in steps.items()))
        if r["error"]:
            lines.append(f"  error: {r['error']}")
    return "\n".join(lines)


def _no_nan(o: Any) -> Any:
    """NaN (no value) as null, so the file is strict JSON."""
    if isinstance(o, float) and not math.isfinite(o):
        return None
    if isinstance(o, dict):
        return {k: _no_nan(v) for k, v in o.items()}
    if isinstance(o, list):
        return [_no_nan(v) for v in o]
    return o


def _private_ros_env(domain_id: int | None) -> int:
    """Loopback discovery and a domain of the bench's own, before rclpy starts (children inherit it)."""
    os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    domain = domain_id if domain_id is not None else random.Random().randint(1, 101)
    os.environ["ROS_DOMAIN_ID"] = str(domain)
    return domain


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="uois-sam-bench graph", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=10, help="lockstep frames per mode (after one warm-up frame)")
    ap.add_argument("--method", default="weights_free", help="pipeline.method of the graph and the core")
    ap.add_argument("--modes", default="split,single", help="comma-separated: split, single")
    ap.add_argument("--in-process", action="store_true",
                    help="run the nodes in this process (uois-sam-bringup) instead of one process per node")
    ap.add_argument("--repeats", type=int, default=1, help="passes over the frames (each frame: core, then graph)")
    ap.add_argument("--width", type=int, default=640)
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--rate", type=float, default=30.0, help="Hz at which frames are published for the throughput")
    ap.add_argument("--throughput-s", type=float, default=4.0, help="seconds of publishing at --rate (0 = skip)")
    ap.add_argument("--timeout", type=float, default=60.0, help="s to wait for one frame's answer")
    ap.add_argument("--connect-timeout", type=float, default=120.0,
                    help="s for the graph to start (imports and model loading in every process)")
    ap.add_argument("--set", action="append", default=[], metavar="NODE.PARAM=VALUE",
                    help="a parameter of the hpg or segmentation node (core parameters reach the core time "
                         "through segmentation.*), e.g. segmentation.frame_buffer=30; repeatable")
    ap.add_argument("--domain-id", type=int, default=None, help="ROS domain of the bench (default: random)")
    ap.add_argument("--json", default="", help="write the table and the per-frame figures here")
    args = ap.parse_args(argv)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    bad = [m for m in modes if m not in MODES]
    if bad or not modes:
        print(f"error: --modes takes {', '.join(MODES)}; got {args.modes!r}", file=sys.stderr)
        return 2
    if args.frames < 1 or args.repeats < 1 or args.rate <= 0:
        print("error: --frames and --repeats must be >= 1, --rate > 0", file=sys.stderr)
        return 2
    try:
        args.overrides = parse_sets(args.set)
        for mode in modes:
            graph_specs(mode, args.method, args.overrides)
    except ValueError as e:  # GraphError too: an unknown parameter, a bad value
        print(f"error: {e}", file=sys.stderr)
        return 2
    domain = _private_ros_env(args.domain_id)

    from uois_sam_ros.ros.dds import apply_default_profile

    apply_default_profile()  # the bench publishes camera-sized images too: the same shared memory
    frames = make_frames(args.frames, args.width, args.height)
    core = CoreRunner(args.method, frames[0], args.overrides)

    import rclpy
    from rclpy.executors import SingleThreadedExecutor

    from uois_sam_ros.nodes.common import spin_until_stopped

    own_init = not rclpy.ok()  # a caller (a test) may have initialised rclpy already
    if own_init:
        rclpy.init()
    node = rclpy.create_node("uois_bench_graph")
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    spin = threading.Thread(target=spin_until_stopped, args=(executor,), daemon=True)
    spin.start()
    results = []
    try:
        for mode in modes:
            results.append(run_mode(mode, frames, args, node, core))
    finally:
        core.close()
        executor.shutdown(timeout_sec=2.0)
        spin.join(timeout=2.0)
        node.destroy_node()
        if own_init:
            rclpy.try_shutdown()
    summary = summarise(results)
    where = "in-process (one executor)" if args.in_process else "one process per node"
    title = (f"uois-sam-bench graph: {args.method}, {args.width}x{args.height}, {args.frames} frames, {where}, "
             f"ROS domain {domain}, {os.cpu_count()} CPUs")
    print(format_table(summary, title))
    if args.json:
        summary.update({"method": args.method, "width": args.width, "height": args.height, "frames": args.frames,
                        "in_process": bool(args.in_process), "rate_hz": args.rate, "throughput_s": args.throughput_s,
                        "cpus": os.cpu_count()})
        with open(args.json, "w") as fh:
            json.dump(_no_nan(summary), fh, indent=1)
    return 1 if any(r.error or r.answered < r.sent for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
