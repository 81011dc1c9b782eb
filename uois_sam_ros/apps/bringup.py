"""uois-sam-bringup: the tabletop graph in one process, for pip-only installs (no ros2 launch).

Same nodes, parameters and remaps as launch/tabletop.launch.py: both come from
uois_sam_ros.ros.graph.describe_graph_from_arguments. All nodes share one
MultiThreadedExecutor; inference runs in each node's own worker thread.

SIGINT and SIGTERM only ask the graph to stop (rclpy installs no handlers here), so a second
Ctrl-C during the teardown cannot interrupt it halfway; the exit status is 0 either way.
"""

from __future__ import annotations

# First, before the heavy imports below: holds SIGINT/SIGTERM when bringup is the program.
from uois_sam_ros.apps import early_signals  # isort: split

import argparse
import importlib
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import rclpy
from rclpy.context import Context
from rclpy.exceptions import InvalidHandle
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.signals import SignalHandlerOptions

from uois_sam_ros.nodes.common import prime_torch_blas, spin_until_stopped
from uois_sam_ros.ros.dds import apply_default_profile
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
    prime_torch_blas()  # the workers' BLAS calls (nodes/common.py); from the main thread only
    return nodes


def start_in_background(specs: list[NodeSpec], num_threads: int = 4) -> Callable[[], None]:
    """The described nodes in this process, spun by their own executor on a daemon thread, for a
    caller that drives the graph from its main thread (uois-sam-bag eval, uois-sam-bench graph).
    Returns stop(): executor, thread, then the nodes; the rclpy context stays up for the caller."""
    nodes = build_nodes(specs)
    executor = MultiThreadedExecutor(num_threads=num_threads)
    for n in nodes:
        executor.add_node(n)
    thread = threading.Thread(target=spin_until_stopped, args=(executor,), daemon=True)
    thread.start()

    def stop() -> None:
        executor.shutdown(timeout_sec=2.0)
        thread.join(timeout=5.0)
        for n in nodes:
            n.destroy_node()

    return stop


def stop_graph(executor: MultiThreadedExecutor, nodes: list[Node]) -> None:
    """The in-process graph's teardown (bringup, demo): executor, then nodes, then the rclpy context.

    Each node stops its own inputs and worker before it is destroyed, so a frame in flight is
    finished and published while its publishers still exist. The context goes last: on Kilted,
    shutting it down first destroys the nodes while holding the context lock, and a worker
    that checks ``context.ok()`` then waits for that lock until the worker join times out.
    Each step runs even if an earlier one failed.
    """
    context = nodes[0].context if nodes else None
    try:
        executor.shutdown(timeout_sec=5.0)
        _fetch_teardown_races(executor)
    finally:
        try:
            for n in nodes:
                n.destroy_node()
        finally:
            rclpy.try_shutdown(context=context)


def _fetch_teardown_races(executor: MultiThreadedExecutor) -> None:
    """rclpy's MultiThreadedExecutor.shutdown() (Kilted) destroys its guard condition without
    waiting for the callbacks still running; one that finishes then fails on that guard with
    InvalidHandle, and the never-fetched exception is printed at exit ("The following exception
    was never retrieved"). Those belong to the shutdown, not to the graph: fetch them. Any other
    exception stays unfetched, so rclpy still prints it."""
    for task in list(getattr(executor, "_futures", ())):
        if task.done() and isinstance(task._exception, InvalidHandle):  # noqa: SLF001 - rclpy Task
            task.exception()


def add_graph_arguments(ap: argparse.ArgumentParser) -> None:
    for name, default, help_text in LAUNCH_ARGUMENTS:
        ap.add_argument("--" + name.replace("_", "-"), dest=name, default=default,
                        help=f"{help_text} (default {default!r})")


def graph_arguments(ns: argparse.Namespace) -> dict[str, str]:
    return {name: str(getattr(ns, name)) for name, _, _ in LAUNCH_ARGUMENTS}


class StopRequest:
    """SIGINT/SIGTERM set an event instead of raising KeyboardInterrupt or killing the process.

    Held for the whole run: a signal during start-up, spinning or teardown (a second Ctrl-C)
    only asks for the stop that is already under way, so the teardown always runs to its end.
    On leaving, the previous handlers come back, or (exiting=True, the command line) signals
    are ignored for the few hundred ms of interpreter shutdown that follow. Only possible in
    the main thread; elsewhere nothing is installed and rclpy's own handlers are used.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, exiting: bool = False) -> None:
        self.event = threading.Event()
        self.exiting = exiting
        self._previous: dict[int, Any] = {}
        self.installed = threading.current_thread() is threading.main_thread()

    def _handle(self, signum: int, _frame: Any) -> None:
        self.event.set()

    def __enter__(self) -> StopRequest:
        if self.installed:
            self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
            if early_signals.STOP.is_set():  # the command line: a signal during the imports
                self.event.set()
        return self

    def __exit__(self, *exc: object) -> None:
        for s, h in self._previous.items():
            signal.signal(s, signal.SIG_IGN if self.exiting else h)

    def is_set(self) -> bool:
        return self.event.is_set()


def run(argv: list[str] | None = None, *, exiting: bool = False) -> int:
    """The bringup; 0 after a signal, --duration or shutdown. exiting=True: the process ends
    right after (main), so signals stay ignored instead of getting their old handlers back."""
    with StopRequest(exiting) as stop:
        ap = argparse.ArgumentParser(prog="uois-sam-bringup", description=__doc__.splitlines()[0])
        add_graph_arguments(ap)
        ap.add_argument("--duration", type=float, default=0.0, help="stop after this many seconds (0 = Ctrl-C)")
        args = ap.parse_args(argv)
        try:
            specs = describe_graph_from_arguments(graph_arguments(args))
        except (GraphError, ValueError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        if stop.is_set():
            return 0
        apply_default_profile()  # before rclpy.init: Fast DDS reads its profile once per process
        rclpy.init(signal_handler_options=SignalHandlerOptions.NO if stop.installed else None)
        nodes: list[Node] = []
        executor = MultiThreadedExecutor(num_threads=4)
        code = 0
        try:
            nodes = build_nodes(specs)
            if not stop.is_set():  # a signal during start-up: straight to the teardown
                for n in nodes:
                    executor.add_node(n)
                print("running: " + ", ".join(f"{s.namespace}/{s.name}" for s in specs), flush=True)
            end = time.monotonic() + args.duration if args.duration > 0 else None
            while not stop.is_set() and rclpy.ok() and (end is None or time.monotonic() < end):
                executor.spin_once(timeout_sec=0.1)
        except (KeyboardInterrupt, ExternalShutdownException):
            pass
        except GraphStartError as e:
            print(f"error: {e}", file=sys.stderr)
            code = 2
        except (RuntimeError, ValueError, FileNotFoundError) as e:
            print(f"error: {e}", file=sys.stderr)
            code = 1
        finally:
            stop_graph(executor, nodes)
        sys.stdout.flush()
    return code


def main(argv: list[str] | None = None) -> None:
    sys.exit(run(argv, exiting=True))


if __name__ == "__main__":
    main()
