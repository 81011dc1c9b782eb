"""The tabletop graph as one OS process per node, started the way `ros2 launch` starts them.

For pip-only installs (no ros2 launch) and for the tests that must see the graph across
process boundaries: the in-process bringup never serialises an image, so only separate
processes show transport problems (DESIGN.md section 4; ros/dds.py).

Each node of uois_sam_ros.ros.graph.describe_graph runs as
  <python> <node executable> --ros-args -r __node:=NAME [-r __ns:=NS] --params-file FILE [-r A:=B ...]
with FILE a ROS 2 parameter file written from the node's parameters (as launch_ros writes
one from `parameters=[dict]`), and the package's Fast DDS profile in the environment unless
the user set their own. SIGINT/SIGTERM to the launcher go to every node; a node that has not
exited after `sigterm_timeout` (10 s; ros2 launch: 5 s, but a node's interpreter shutdown alone
takes 3-5 s on a busy 2-core machine) gets SIGTERM, and after `sigkill_timeout` more, SIGKILL.
Unlike ros2 launch, the nodes run in their own session, so a terminal's Ctrl-C reaches them
once (through the launcher), not twice; they get SIGTERM if the launcher dies.
"""

from __future__ import annotations

# First, before the imports below: holds SIGINT/SIGTERM when the launcher is the program.
from uois_sam_ros.apps import early_signals  # isort: split

import argparse
import ctypes
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import yaml

from uois_sam_ros.ros.dds import apply_default_profile
from uois_sam_ros.ros.graph import (
    LAUNCH_ARGUMENTS,
    PACKAGE,
    GraphError,
    NodeSpec,
    describe_graph_from_arguments,
)

REPO_SCRIPTS = Path(__file__).resolve().parents[2] / "scripts" / "nodes"


def node_executable(executable: str) -> list[str]:
    """How to run a node executable with this Python: the source tree's wrapper script, the
    installed one (lib/uois_sam_ros/, colcon), else the module's main (pip installs)."""
    script = REPO_SCRIPTS / executable
    if script.is_file():
        return [str(script)]
    try:
        from ament_index_python.packages import get_package_prefix

        installed = Path(get_package_prefix(PACKAGE)) / "lib" / PACKAGE / executable
        if installed.is_file():
            return [str(installed)]
    except (ImportError, LookupError, ValueError):
        pass
    return ["-c", f"from uois_sam_ros.nodes.{executable} import main; main()"]


def fully_qualified_name(spec: NodeSpec) -> str:
    ns = spec.namespace.strip("/")
    return f"/{ns}/{spec.name}" if ns else f"/{spec.name}"


def params_file_content(spec: NodeSpec) -> dict[str, Any]:
    """The node's parameters as a ROS 2 parameter file, keyed by its full name (as launch_ros does)."""
    return {fully_qualified_name(spec): {"ros__parameters": dict(spec.parameters)}}


def write_params_file(spec: NodeSpec, directory: str | Path) -> Path:
    path = Path(directory) / f"{spec.name}.params.yaml"
    path.write_text(yaml.safe_dump(params_file_content(spec), default_flow_style=False, sort_keys=True))
    return path


def node_command(spec: NodeSpec, params_file: str | Path, python: str | None = None) -> list[str]:
    """The node's command line, as ros2 launch builds it for launch_ros.actions.Node."""
    cmd = [python or sys.executable, *node_executable(spec.executable), "--ros-args", "-r",
           f"__node:={spec.name}"]
    if spec.namespace.strip("/"):
        cmd += ["-r", f"__ns:=/{spec.namespace.strip('/')}"]
    cmd += ["--params-file", str(params_file)]
    for a, b in spec.remappings:
        cmd += ["-r", f"{a}:={b}"]
    return cmd


def _parent_death_signal() -> Callable[[], None] | None:
    """A preexec_fn that makes the child get SIGTERM when the launcher dies (Linux prctl), so no
    node outlives it. libc is resolved here, in the parent: the child only calls it."""
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None

    def preexec() -> None:
        prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG

    return preexec


@dataclass
class NodeProcess:
    spec: NodeSpec
    command: list[str]
    popen: subprocess.Popen

    @property
    def name(self) -> str:
        return self.spec.name


class GraphProcesses:
    """Start, signal and reap one process per node of a graph description.

    The nodes get SIGTERM when the thread that started them ends (Linux parent-death signal):
    start them from the thread that lives as long as the graph should.
    """

    def __init__(self, specs: list[NodeSpec], *, python: str | None = None,
                 env: Mapping[str, str] | None = None, log_dir: str | Path | None = None,
                 sigterm_timeout: float = 10.0, sigkill_timeout: float = 5.0) -> None:
        """log_dir: each node's stdout and stderr go to <log_dir>/<name>.log (default: this terminal)."""
        if not specs:
            raise GraphError("the graph description has no nodes")
        self.specs = list(specs)
        self.python = python or sys.executable
        self.env = dict(os.environ if env is None else env)
        self.profile = apply_default_profile(self.env)  # None: the user's own Fast DDS settings
        self.log_dir = Path(log_dir) if log_dir is not None else None
        self.sigterm_timeout, self.sigkill_timeout = sigterm_timeout, sigkill_timeout
        self.processes: list[NodeProcess] = []
        self.logs: dict[str, Path] = {}
        self._tmp: tempfile.TemporaryDirectory | None = None

    def start(self) -> GraphProcesses:
        self._tmp = tempfile.TemporaryDirectory(prefix="uois_launch_")
        preexec = _parent_death_signal()
        try:
            for spec in self.specs:
                cmd = node_command(spec, write_params_file(spec, self._tmp.name), self.python)
                out: IO | None = None
                if self.log_dir is not None:
                    self.log_dir.mkdir(parents=True, exist_ok=True)
                    self.logs[spec.name] = self.log_dir / f"{spec.name}.log"
                    out = open(self.logs[spec.name], "wb")  # the child keeps its own copy
                try:
                    popen = subprocess.Popen(cmd, env=self.env, stdin=subprocess.DEVNULL, stdout=out,
                                             stderr=subprocess.STDOUT if out else None,
                                             start_new_session=True, preexec_fn=preexec)
                finally:
                    if out is not None:
                        out.close()
                self.processes.append(NodeProcess(spec, cmd, popen))
        except BaseException:
            self.kill()
            raise
        return self

    def log_text(self, name: str) -> str:
        """What node `name` printed so far (with log_dir)."""
        path = self.logs.get(name)
        return path.read_text(errors="replace") if path is not None and path.is_file() else ""

    @property
    def pids(self) -> dict[str, int]:
        return {p.name: p.popen.pid for p in self.processes}

    def poll(self) -> dict[str, int | None]:
        return {p.name: p.popen.poll() for p in self.processes}

    def send_signal(self, sig: int) -> None:
        for p in self.processes:
            if p.popen.poll() is None:
                try:
                    p.popen.send_signal(sig)
                except ProcessLookupError:
                    pass

    def wait(self, timeout: float | None = None) -> dict[str, int | None]:
        """Exit codes once every node has exited (None for those still running at the timeout)."""
        end = None if timeout is None else time.monotonic() + timeout
        for p in self.processes:
            try:
                p.popen.wait(None if end is None else max(0.0, end - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        return self.poll()

    def stop(self, sig: int = signal.SIGINT) -> dict[str, int | None]:
        """Signal every node, escalate to SIGTERM then SIGKILL for those that hang; the exit codes."""
        self.send_signal(sig)
        codes = self.wait(self.sigterm_timeout)
        if any(c is None for c in codes.values()):
            self.send_signal(signal.SIGTERM)
            codes = self.wait(self.sigkill_timeout)
        if any(c is None for c in codes.values()):
            self.kill()
            codes = self.wait(5.0)
        self._cleanup()
        return codes

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)
        self.wait(5.0)
        self._cleanup()

    def _cleanup(self) -> None:
        if self._tmp is not None and all(p.popen.poll() is not None for p in self.processes):
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> GraphProcesses:
        return self.start() if not self.processes else self

    def __exit__(self, *exc: object) -> None:
        if any(p.popen.poll() is None for p in self.processes):
            self.stop()
        self._cleanup()


def exit_status(codes: Mapping[str, int | None]) -> int:
    """0 when every node exited 0; else the first failure (a signal N as 128 + N, like a shell)."""
    for code in codes.values():
        if code is None:
            return 1
        if code != 0:
            return 128 - code if code < 0 else code
    return 0


def run(argv: list[str] | None = None, *, exiting: bool = False) -> int:
    """Start the graph, forward SIGINT/SIGTERM to every node, return 0 when all exited 0.

    A node that fails (exits non-zero) stops the graph. exiting=True (main): the process ends
    right after, so signals stay ignored instead of getting their old handlers back.
    """
    stopping: list[int] = []

    def on_signal(signum: int, _frame: Any) -> None:
        if not stopping:
            stopping.append(signum)

    signals = (signal.SIGINT, signal.SIGTERM)
    old = {s: signal.signal(s, on_signal) for s in signals}
    if early_signals.STOP.is_set():  # a signal during the imports
        stopping.append(signal.SIGINT)
    try:
        ap = argparse.ArgumentParser(prog="uois-sam-launch", description=__doc__.splitlines()[0])
        for name, default, help_text in LAUNCH_ARGUMENTS:
            ap.add_argument("--" + name.replace("_", "-"), dest=name, default=default,
                            help=f"{help_text} (default {default!r})")
        ap.add_argument("--duration", type=float, default=0.0, help="stop after this many seconds (0 = Ctrl-C)")
        args = ap.parse_args(argv)
        try:
            specs = describe_graph_from_arguments({n: str(getattr(args, n)) for n, _, _ in LAUNCH_ARGUMENTS})
        except (GraphError, ValueError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        if stopping:
            return 0
        return _run_graph(GraphProcesses(specs), args.duration, stopping)
    finally:
        for s in signals:
            signal.signal(s, signal.SIG_IGN if exiting else old[s])


def _run_graph(graph: GraphProcesses, duration: float, stopping: list[int]) -> int:
    try:
        graph.start()
    except OSError as e:
        print(f"error: cannot start the node processes: {e}", file=sys.stderr)
        return 1
    try:
        print("running: " + ", ".join(f"{n} (pid {pid})" for n, pid in graph.pids.items()), flush=True)
        end = time.monotonic() + duration if duration > 0 else None
        while not stopping and (end is None or time.monotonic() < end):
            codes = graph.poll()
            failed = {n: c for n, c in codes.items() if c not in (None, 0)}
            if failed:
                name, code = next(iter(failed.items()))
                print(f"launcher: node {name} exited with {code}; stopping the graph", file=sys.stderr)
                break
            if all(c is not None for c in codes.values()):
                break
            time.sleep(0.1)
        return exit_status(graph.stop(stopping[0] if stopping else signal.SIGINT))
    finally:
        if any(p.popen.poll() is None for p in graph.processes):
            graph.kill()


def main(argv: list[str] | None = None) -> None:
    sys.exit(run(argv, exiting=True))


if __name__ == "__main__":
    main()
