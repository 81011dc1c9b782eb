"""What every node shares: the latest-frame worker, declared/validated parameters, error log, main.

Inference never runs in a subscription callback: callbacks drop the newest input into a
one-item slot and a worker thread takes it, so a slow model skips frames instead of queueing
them and latency stays bounded (DESIGN.md section 3).
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from typing import Any, Generic, TypeVar

import rclpy
from rcl_interfaces.msg import ParameterDescriptor, SetParametersResult
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from rclpy.parameter import Parameter

from uois_sam_ros.ros.params import ParamSpec, param_specs

T = TypeVar("T")

_PTYPE = {"bool": Parameter.Type.BOOL, "int": Parameter.Type.INTEGER, "double": Parameter.Type.DOUBLE,
          "string": Parameter.Type.STRING}


class LatestWorker(Generic[T]):
    """A one-item slot and a thread that processes whatever is newest.

    put() replaces an unprocessed item (counted in .dropped), so the worker always starts on
    the newest input. Exceptions from process() are passed to on_error and the thread goes on.
    """

    def __init__(self, process: Callable[[T], None], on_error: Callable[[BaseException], None],
                 name: str = "worker") -> None:
        self._process, self._on_error = process, on_error
        self._cond = threading.Condition()
        self._item: T | None = None
        self._has = False
        self._stop = False
        self.dropped = 0
        self.processed = 0
        self.busy = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def put(self, item: T) -> None:
        with self._cond:
            if self._has:
                self.dropped += 1
            self._item, self._has = item, True
            self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._has and not self._stop:
                    self._cond.wait()
                if self._stop:
                    return
                item, self._item, self._has = self._item, None, False
                self.busy = True
            try:
                self._process(item)  # type: ignore[arg-type]
            except BaseException as e:  # noqa: BLE001 - reported, the worker must keep serving
                self._on_error(e)
            finally:
                with self._cond:
                    self.busy = False
                    self.processed += 1
                    self._cond.notify_all()

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """True once nothing is pending or running (tests, shutdown)."""
        end = time.monotonic() + timeout
        with self._cond:
            while self._has or self.busy:
                left = end - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def stop(self, timeout: float = 5.0) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)


class NodeParams:
    """Declares a node's parameters from ros/params.py's schema, with descriptions and validation.

    Run-time changes are checked against the schema (type, range, choices; read-only ones are
    refused by rclpy); on_change(names) runs after an accepted change.
    """

    def __init__(self, node: Node, kind: str, on_change: Callable[[set[str]], None] | None = None) -> None:
        self.node, self.specs = node, param_specs(kind)
        self.on_change = on_change
        self._lock = threading.Lock()
        for spec in self.specs.values():
            self._declare(spec)
        bad = [p for p in (self.specs[n].check(self.get(n)) for n in self.specs) if p]
        if bad:
            raise ValueError("; ".join(bad))
        node.add_on_set_parameters_callback(self._validate)
        if hasattr(node, "add_post_set_parameters_callback"):
            node.add_post_set_parameters_callback(self._post)
        self._post_supported = hasattr(node, "add_post_set_parameters_callback")

    def _declare(self, spec: ParamSpec) -> None:
        descriptor = ParameterDescriptor(description=spec.full_description, read_only=spec.read_only)
        try:
            self.node.declare_parameter(spec.name, spec.default, descriptor)
        except Exception as e:  # an override of the wrong type: say which parameter
            raise ValueError(f"parameter {spec.name!r}: {e}") from e

    def get(self, name: str) -> Any:
        return self.node.get_parameter(name).value

    def values(self) -> dict[str, Any]:
        return {n: self.get(n) for n in self.specs}

    def _validate(self, params: list[Parameter]) -> SetParametersResult:
        for p in params:
            spec = self.specs.get(p.name)
            if spec is None:
                continue
            if p.type_ != _PTYPE[spec.type]:
                return SetParametersResult(successful=False,
                                           reason=f"{p.name} must be a {spec.type}, got {p.type_.name}")
            problem = spec.check(p.value)
            if problem:
                return SetParametersResult(successful=False, reason=problem)
        if not self._post_supported and self.on_change:
            # Humble has no post-set callback: apply after rclpy stores the values.
            names = {p.name for p in params}
            threading.Timer(0.0, self.on_change, args=(names,)).start()
        return SetParametersResult(successful=True)

    def _post(self, params: list[Parameter]) -> None:
        if self.on_change:
            self.on_change({p.name for p in params})


class ErrorLog:
    """Counts input errors and logs each one (throttled per kind), so a bad frame is visible but cheap."""

    def __init__(self, node: Node, every: float = 1.0) -> None:
        self.node, self.every = node, every
        self.count = 0
        self.last_message = ""
        self._last: dict[str, float] = {}
        self._lock = threading.Lock()

    def __call__(self, message: str, kind: str = "") -> None:
        with self._lock:
            self.count += 1
            self.last_message = message
            now = time.monotonic()
            key = kind or message
            if now - self._last.get(key, -1e9) < self.every:
                return
            self._last[key] = now
        self.node.get_logger().error(message)


def spin_node(factory: Callable[[], Node], argv: list[str] | None = None) -> int:
    """Shared main: init, spin until Ctrl-C or shutdown, clean up, exit code 0 (1 on a start-up error)."""
    rclpy.init(args=argv if argv is not None else sys.argv)
    node = None
    code = 0
    try:
        node = factory()
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except (RuntimeError, ValueError, FileNotFoundError) as e:  # start-up errors: a line, not a traceback
        print(f"error: {e}", file=sys.stderr)
        code = 1
    finally:
        if node is not None:
            node.destroy_node()
        if rclpy.ok():
            rclpy.try_shutdown()
    return code
