"""uois-sam-bringup: the tabletop graph in one process, for pip-only installs (no ros2 launch).

Same nodes, parameters and remaps as launch/tabletop.launch.py: both come from
uois_sam_ros.ros.graph.describe_graph_from_arguments. All nodes share one
MultiThreadedExecutor; inference runs in each node's own worker thread.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from typing import Any

import rclpy
from rclpy.context import Context
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter

from uois_sam_ros.ros.graph import (
    LAUNCH_ARGUMENTS,
    GraphError,
    NodeSpec,
    describe_graph_from_arguments,
    remap_cli_args,
)


def node_class(spec: NodeSpec) -> type[Node]:
    module, _, cls = spec.module.partition(":")
    return getattr(importlib.import_module(module), cls)


class GraphStartError(RuntimeError):
    """A node of the graph could not be configured; the message names the node and the reason."""


def build_nodes(specs: list[NodeSpec], context: Context | None = None,
                extra_kwargs: dict[str, dict[str, Any]] | None = None) -> list[Node]:
    """Instantiate every node of the description and, where its ``autostart`` parameter says so
    (the default), configure and activate it, as a process started by ``ros2 launch`` does by
    itself. A node that fails to configure raises GraphStartError with its one-line reason (the
    node does not log it too); on any failure the nodes already made are destroyed."""
    nodes: list[Node] = []
    try:
        for spec in specs:
            overrides = [Parameter(k, value=v) for k, v in spec.parameters.items()]
            kwargs = dict((extra_kwargs or {}).get(spec.name, {}))
            node = node_class(spec)(spec.name, namespace=spec.namespace, parameter_overrides=overrides,
                                    cli_args=remap_cli_args(spec), context=context, **kwargs)
            nodes.append(node)
            if spec.parameters.get("autostart", True) and hasattr(node, "autostart"):
                node.quiet_configure = True
                if not node.autostart():
                    reason = node.configure_failure or node.last_error or "activate failed"
                    raise GraphStartError(f"node {spec.name!r} could not be configured: {reason}")
                node.quiet_configure = False
    except BaseException:
        for n in nodes:
            n.destroy_node()
        raise
    return nodes


def stop_graph(executor: MultiThreadedExecutor, nodes: list[Node]) -> None:
    """The in-process graph's teardown (bringup, demo): executor, then nodes, then the rclpy context."""
    executor.shutdown()
    for n in nodes:
        n.destroy_node()
    rclpy.try_shutdown()


def add_graph_arguments(ap: argparse.ArgumentParser) -> None:
    for name, default, help_text in LAUNCH_ARGUMENTS:
        ap.add_argument("--" + name.replace("_", "-"), dest=name, default=default,
                        help=f"{help_text} (default {default!r})")


def graph_arguments(ns: argparse.Namespace) -> dict[str, str]:
    return {name: str(getattr(ns, name)) for name, _, _ in LAUNCH_ARGUMENTS}


def run(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="uois-sam-bringup", description=__doc__.splitlines()[0])
    add_graph_arguments(ap)
    ap.add_argument("--duration", type=float, default=0.0, help="stop after this many seconds (0 = Ctrl-C)")
    args = ap.parse_args(argv)
    try:
        specs = describe_graph_from_arguments(graph_arguments(args))
    except (GraphError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    rclpy.init()
    nodes: list[Node] = []
    executor = MultiThreadedExecutor(num_threads=4)
    try:
        nodes = build_nodes(specs)
        for n in nodes:
            executor.add_node(n)
        print("running: " + ", ".join(f"{s.namespace}/{s.name}" for s in specs), flush=True)
        end = time.monotonic() + args.duration if args.duration > 0 else None
        while rclpy.ok() and (end is None or time.monotonic() < end):
            executor.spin_once(timeout_sec=0.1)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except GraphStartError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (RuntimeError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        stop_graph(executor, nodes)
    return 0


def main(argv: list[str] | None = None) -> None:
    sys.exit(run(argv))


if __name__ == "__main__":
    main()
