"""uois-sam-demo: the tabletop graph on synthetic scenes or real frames, with metrics and overlays.

Runs the same in-process graph as uois-sam-bringup, prints each frame's latency (camera
stamp to /instances), the overlap/boundary metrics against the scenes' ground truth, and
writes the instances/overlay images as PNGs.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import rclpy
from rclpy.executors import MultiThreadedExecutor
from sensor_msgs.msg import Image

from uois_sam_ros.apps.bringup import GraphStartError, build_nodes, stop_graph
from uois_sam_ros.core.segment.pipeline import resolve_method
from uois_sam_ros.msg import InstanceArray
from uois_sam_ros.ros.convert import stamp_to_sec
from uois_sam_ros.ros.graph import GraphError, describe_graph, parse_source
from uois_sam_ros.ros.image import image_to_numpy
from uois_sam_ros.ros.params import params_to_config
from uois_sam_ros.ros.qos import LATEST_QOS

T = TypeVar("T")


def run(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="uois-sam-demo", description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=5, help="frames to process (default 5)")
    ap.add_argument("--out", default="demo_out", help="folder for overlay PNGs (default demo_out)")
    ap.add_argument("--source", default="synthetic", help="synthetic | folder:DIR | realsense[:SERIAL]")
    ap.add_argument("--rate", type=float, default=1.0, help="camera rate, Hz (default 1)")
    ap.add_argument("--width", type=int, default=640, help="camera image width, px (default 640)")
    ap.add_argument("--height", type=int, default=480, help="camera image height, px (default 480)")
    ap.add_argument("--single-node", action="store_true", help="HPG inside the segmentation node")
    ap.add_argument("--method", default="", help="pipeline.method: auto | uois_sam | heatmap_hdnet | heatmap | "
                    "grid_fg | grid | weights_free (default: as in the parameter file); a SAM method without "
                    "--sam-checkpoint runs on the shipped small SAM")
    ap.add_argument("--sam-checkpoint", default="", help="SAM checkpoint (default: the shipped small SAM)")
    ap.add_argument("--params-file", default="", help="ROS parameter file (default config/tabletop.yaml)")
    args = ap.parse_args(argv)
    if args.frames < 1:
        print("error: --frames must be >= 1", file=sys.stderr)
        return 2
    try:
        cam = {**parse_source(args.source), "rate": args.rate, "width": args.width, "height": args.height}
        specs = describe_graph(args.params_file or None, single_node=args.single_node,
                               sam_checkpoint=args.sam_checkpoint, method=args.method,
                               overrides={"camera": cam})
    except GraphError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from uois_sam_ros.core.eval.metrics import MetricAccumulator
    from uois_sam_ros.core.eval.visualize import save_png

    rclpy.init()
    nodes = []
    executor = MultiThreadedExecutor(num_threads=4)
    done = threading.Event()
    sent: dict[float, object] = {}
    results: list[tuple[float, InstanceArray]] = []
    overlays: dict[tuple[int, int], Image] = {}
    acc = MetricAccumulator()
    try:
        try:
            nodes = build_nodes(specs)
        except GraphStartError as e:  # a model that does not load: one line, status 2
            print(f"error: {e}", file=sys.stderr)
            return 2
        except (RuntimeError, ValueError, FileNotFoundError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        camera = next(n for n in nodes if n.get_name() == "camera")

        def on_publish(stamp: float, sample) -> None:
            sent[stamp] = sample

        camera.on_publish.append(on_publish)
        probe = rclpy.create_node("demo_probe")
        nodes.append(probe)

        def on_instances(msg: InstanceArray) -> None:
            results.append((time.time(), msg))
            if len(results) >= args.frames:
                done.set()

        def on_overlay(msg: Image) -> None:
            overlays[(msg.header.stamp.sec, msg.header.stamp.nanosec)] = msg

        probe.create_subscription(InstanceArray, "instances", on_instances, LATEST_QOS)
        probe.create_subscription(Image, "instances/overlay", on_overlay, LATEST_QOS)
        for n in nodes:
            executor.add_node(n)
        threading.Thread(target=executor.spin, daemon=True).start()
        print(f"graph: {', '.join(s.name for s in specs)}; waiting for {args.frames} frames", flush=True)
        seen = 0
        deadline = time.monotonic() + 120 + 30 * args.frames
        while seen < args.frames and time.monotonic() < deadline:
            time.sleep(0.05)
            while seen < len(results):
                t_recv, msg = results[seen]
                seen += 1
                key = (msg.header.stamp.sec, msg.header.stamp.nanosec)
                latency = t_recv - stamp_to_sec(msg.header.stamp)
                t_src = stamp_to_sec(msg.header.stamp)
                sample = next((v for k, v in list(sent.items()) if abs(k - t_src) < 1e-5), None)
                line = f"frame {seen:3d}: {len(msg.instances):2d} instances, latency {latency * 1000:7.1f} ms"
                if sample is not None and getattr(sample, "label", None) is not None:
                    m = acc.add(sample.name, image_to_numpy(msg.label_map), sample.label)
                    line += f", F-measure {m.get('OF', float('nan')) * 100:5.1f}"
                print(line, flush=True)
                ov = _wait_for(lambda k=key: overlays.get(k), 5.0)  # published right after its InstanceArray
                if ov is not None:
                    save_png(out / f"overlay_{seen:04d}.png", image_to_numpy(ov, "rgb8"))
                else:
                    print(f"warning: no instances/overlay arrived for frame {seen}", file=sys.stderr)
        if seen < args.frames:
            print(f"error: only {seen} of {args.frames} frames arrived", file=sys.stderr)
            return 1
        dropped = camera.published - seen
        print(f"\n{seen} frames processed, {max(0, dropped)} camera frames skipped (only the latest is kept)")
        if len(acc):
            seg = next(s for s in specs if s.name == "segmentation")
            print(acc.format_table(f"{resolve_method(params_to_config(seg.parameters))} graph"))
        print(f"overlays written to {out}/")
    finally:
        stop_graph(executor, nodes)
    return 0


def _wait_for(get: Callable[[], T | None], timeout: float) -> T | None:
    """Poll get() until it returns something: the overlay and /instances are separate topics."""
    end = time.monotonic() + timeout
    while (value := get()) is None and time.monotonic() < end:
        time.sleep(0.02)
    return value


def main(argv: list[str] | None = None) -> None:
    sys.exit(run(argv))


if __name__ == "__main__":
    main()
