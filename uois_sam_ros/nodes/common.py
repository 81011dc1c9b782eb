"""What every node shares: the lifecycle base, the latest-frame worker, declared/validated
parameters, the error log, the diagnostics, and main().

Inference never runs in a subscription callback: callbacks drop the newest input into a
one-item slot and a worker thread takes it, so a slow model skips frames instead of queueing
them and latency stays bounded (DESIGN.md section 3).

Every node is a lifecycle node (DESIGN.md section 3): ``configure`` validates the parameters
and loads the models, ``activate`` creates the subscriptions and starts publishing,
``deactivate`` stops the input, ``cleanup`` drops the models. With ``autostart`` (the default)
a node walks itself to active right after it starts, which is what ``ros2 launch`` users
expect from a driver. A configure that fails leaves the node unconfigured with the reason
logged once; the process keeps running, so a later parameter fix plus ``configure`` works.
"""

from __future__ import annotations

import math
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Generic, TypeVar

import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import ParameterDescriptor, SetParametersResult
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.parameter import Parameter
from rclpy.qos import QoSProfile

from uois_sam_ros.ros.dds import apply_default_profile
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
                 name: str = "worker", on_drop: Callable[[], None] | None = None) -> None:
        self._process, self._on_error, self._on_drop = process, on_error, on_drop
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
            if self._stop:
                return
            if self._has:
                self.dropped += 1
                if self._on_drop is not None:
                    self._on_drop()
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
        """Drop what is pending and end the thread once the running item (if any) returns."""
        with self._cond:
            self._stop = True
            self._has, self._item = False, None
            self._cond.notify_all()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)


class NodeParams:
    """Declares a node's parameters from ros/params.py's schema, with descriptions and validation.

    Run-time changes are checked against the schema (type, range, choices; read-only ones are
    refused by rclpy). ``on_validate(new_values, changed)`` may veto a change with a reason
    (the node loads a new model there, so a failed load rejects the change and the parameter
    keeps its old value); ``on_change(names)`` runs after an accepted change.
    """

    def __init__(self, node: LifecycleNode, kind: str,
                 on_change: Callable[[set[str]], None] | None = None,
                 on_validate: Callable[[dict[str, Any], set[str]], str | None] | None = None) -> None:
        self.node, self.specs = node, param_specs(kind)
        self.on_change, self.on_validate = on_change, on_validate
        for spec in self.specs.values():
            self._declare(spec)
        node.add_on_set_parameters_callback(self._validate)
        self._post_supported = hasattr(node, "add_post_set_parameters_callback")
        if self._post_supported:
            node.add_post_set_parameters_callback(self._post)

    def _declare(self, spec: ParamSpec) -> None:
        descriptor = ParameterDescriptor(description=spec.full_description, read_only=spec.read_only)
        try:
            self.node.declare_parameter(spec.name, spec.default, descriptor)
        except Exception as e:  # an override of the wrong type: say which parameter
            raise ValueError(f"parameter {spec.name!r}: {e}") from e

    def problems(self) -> list[str]:
        """Why the current values are not allowed (checked at configure)."""
        return [p for p in (self.specs[n].check(self.get(n)) for n in self.specs) if p]

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
        names = {p.name for p in params if p.name in self.specs}
        if self.on_validate is not None and names:
            new = self.values()
            new.update({p.name: p.value for p in params if p.name in self.specs})
            reason = self.on_validate(new, names)
            if reason:
                return SetParametersResult(successful=False, reason=reason)
        if not self._post_supported and self.on_change and names:
            # Humble has no post-set callback: apply after rclpy stores the values.
            threading.Timer(0.0, self.on_change, args=(names,)).start()
        return SetParametersResult(successful=True)

    def _post(self, params: list[Parameter]) -> None:
        names = {p.name for p in params if p.name in self.specs}
        if self.on_change and names:
            self.on_change(names)


class ErrorLog:
    """Counts input errors and logs each one (throttled per kind), so a bad frame is visible but cheap."""

    def __init__(self, node: LifecycleNode, every: float = 1.0) -> None:
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


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100) by linear interpolation, NaN for no values (numpy's default rule)."""
    if not values:
        return math.nan
    v = sorted(values)
    pos = (len(v) - 1) * q / 100.0
    lo = int(math.floor(pos))
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (pos - lo)


class Stats:
    """Input/output counts, rates and latencies over a bounded window, on a caller's clock.

    The clock is the node's (seconds), so with use_sim_time and a bag the rates and
    latencies are in bag time: a replay at 2x reports the true per-frame latency.
    """

    def __init__(self, window: int = 100) -> None:
        self.window = window
        self.received = 0
        self.published = 0
        self.dropped = 0
        self._in: deque[float] = deque(maxlen=window)
        self._out: deque[float] = deque(maxlen=window)
        self._latency: deque[float] = deque(maxlen=window)
        self._lock = threading.Lock()

    def on_input(self, now: float) -> None:
        with self._lock:
            self.received += 1
            self._in.append(now)

    def on_drop(self) -> None:
        with self._lock:
            self.dropped += 1

    def on_output(self, now: float, stamp: float | None = None) -> None:
        with self._lock:
            self.published += 1
            self._out.append(now)
            if stamp is not None and math.isfinite(stamp):
                self._latency.append(now - stamp)

    @staticmethod
    def _rate(times: deque[float], now: float) -> float:
        """Events per second over the window: (n - 1) intervals between the first and the last
        event, 0 once the last event is older than the span (the stream stopped)."""
        if len(times) < 2:
            return 0.0
        span = times[-1] - times[0]
        if span <= 0 or now - times[-1] > max(span, 1.0):
            return 0.0
        return (len(times) - 1) / span

    def snapshot(self, now: float) -> dict[str, float]:
        with self._lock:
            lat = list(self._latency)
            return {"received": self.received, "published": self.published, "dropped": self.dropped,
                    "input_rate_hz": self._rate(self._in, now), "output_rate_hz": self._rate(self._out, now),
                    "latency_p50_s": percentile(lat, 50), "latency_p95_s": percentile(lat, 95)}


class StepTimes:
    """Seconds of each step of a node's recent frames, reported as medians in the diagnostics
    (``time_<step>_ms``), so the time between a camera frame and the node's output can be told
    apart: transport in, sync wait, queue, conversion, the core call, the output messages."""

    def __init__(self, window: int = 100) -> None:
        self.window = window
        self._steps: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def add(self, steps: dict[str, float]) -> None:
        with self._lock:
            for name, seconds in steps.items():
                if math.isfinite(seconds):
                    self._steps.setdefault(name, deque(maxlen=self.window)).append(seconds)

    def medians_ms(self) -> dict[str, float]:
        with self._lock:
            return {f"time_{name}_ms": percentile(list(v), 50) * 1e3 for name, v in self._steps.items()}


DIAGNOSTICS_QOS = QoSProfile(depth=10)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.4g}"
    return str(v)


class ManagedNode(LifecycleNode):
    """The lifecycle skeleton every node of the graph uses.

    Subclasses implement ``load()`` (configure: build models from self.params; raise to fail
    with a one-line reason), ``start_io()`` / ``stop_io()`` (activate / deactivate: the
    subscriptions and timers) and ``unload()`` (cleanup). Publishers are created in ``load``
    with ``create_lifecycle_publisher`` so they only publish while active.
    """

    KIND = ""

    def __init__(self, node_name: str, **kwargs: Any) -> None:
        super().__init__(node_name, **kwargs)
        self.params = NodeParams(self, self.KIND, on_change=self._params_changed, on_validate=self._validate_change)
        self.errors = ErrorLog(self)
        self.stats = Stats()
        self.steps = StepTimes()
        self.last_error = ""
        self.model_loaded = False
        self.configure_failure = ""  # the reason of the last failed configure ('' when none)
        self.quiet_configure = False  # bringup/demo report a failed configure themselves (one line)
        self.io_group = MutuallyExclusiveCallbackGroup()  # inputs run beside parameter/lifecycle services
        self._state = "unconfigured"
        self._lifecycle_pubs: list[str] = []  # attribute names of the publishers made at configure
        # Set when the process shuts down or the node is destroyed. Workers check this flag, never
        # context.ok(): on Kilted, Context.shutdown() destroys the nodes while holding the lock
        # that ok() takes, so a worker asking ok() would stall the node's teardown.
        self._closing = False
        self.context.on_shutdown(self._mark_closing)
        self._diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", DIAGNOSTICS_QOS)
        self._diag_timer = self.create_timer(1.0, self.publish_diagnostics)

    # -------------------------------------------------------------- to implement
    def load(self) -> None:
        """Build models and publishers (``lifecycle_publisher``) from self.params (configure)."""

    def unload(self) -> None:
        """Drop models (cleanup); the publishers are released by the base."""

    def start_io(self) -> None:
        """Create subscriptions and timers (activate)."""

    def stop_io(self) -> None:
        """Destroy subscriptions and timers, stop workers (deactivate)."""

    def _validate_change(self, values: dict[str, Any], changed: set[str]) -> str | None:
        return None

    def _params_changed(self, names: set[str]) -> None:
        pass

    # -------------------------------------------------------------- lifecycle
    @property
    def state(self) -> str:
        """unconfigured | inactive | active | finalized (as the lifecycle services report)."""
        return self._state

    def now_s(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    def _mark_closing(self) -> None:
        self._closing = True

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        if self._closing:  # a signal arrived during start-up: nothing to load, nothing to report
            return TransitionCallbackReturn.FAILURE
        problems = self.params.problems()
        try:
            if problems:
                raise ValueError("; ".join(problems))
            self.load()
        except Exception as e:  # noqa: BLE001 - one line, no traceback; the node stays unconfigured
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            self.configure_failure = self.last_error = reason
            try:
                self._release()
            except Exception:  # noqa: BLE001 - a half-built node is dropped as far as it goes
                pass
            if not self.quiet_configure:
                self.get_logger().error(f"configure failed, staying unconfigured: {reason}")
            return TransitionCallbackReturn.FAILURE
        self.configure_failure = ""
        self.model_loaded = True
        self._state = "inactive"
        return super().on_configure(state)

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        ret = super().on_activate(state)  # enables the lifecycle publishers
        try:
            self.start_io()
        except Exception as e:  # noqa: BLE001
            self.last_error = str(e)
            self.get_logger().error(f"activate failed: {e}")
            self.stop_io()
            return TransitionCallbackReturn.FAILURE
        self._state = "active"
        self.get_logger().info("active")
        return ret

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.stop_io()
        self._state = "inactive"
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release()
        self.model_loaded = False
        self._state = "unconfigured"
        return super().on_cleanup(state)

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.stop_io()
        self._release()
        self.model_loaded = False
        self._state = "finalized"
        return super().on_shutdown(state)

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.stop_io()
        self._state = "unconfigured"
        return TransitionCallbackReturn.SUCCESS

    def autostart(self) -> bool:
        """configure + activate (the ``autostart`` parameter); False when configure failed."""
        if self.trigger_configure() != TransitionCallbackReturn.SUCCESS:
            return False
        return self.trigger_activate() == TransitionCallbackReturn.SUCCESS

    # -------------------------------------------------------------- helpers
    def lifecycle_publisher(self, attr: str, msg_type: Any, topic: str, qos: QoSProfile) -> Any:
        """A lifecycle publisher stored as ``self.<attr>``; cleanup destroys it and sets the attribute
        back to None, so every node drops its publishers the same way."""
        pub = self.create_lifecycle_publisher(msg_type, topic, qos)
        setattr(self, attr, pub)
        self._lifecycle_pubs.append(attr)
        return pub

    def _release(self) -> None:
        """unload() plus the publishers made by lifecycle_publisher (cleanup, shutdown, failed configure)."""
        try:
            self.unload()
        finally:
            for attr in self._lifecycle_pubs:
                pub = getattr(self, attr, None)
                if pub is not None:
                    self.destroy_lifecycle_publisher(pub)
                setattr(self, attr, None)
            self._lifecycle_pubs = []

    def alive(self) -> bool:
        """False once the process shuts down (Ctrl-C) or the node is destroyed: workers then finish
        silently."""
        return not self._closing

    def safe_publish(self, pub: Any, msg: Any) -> bool:
        """Publish unless the process is shutting down (no 'context is invalid' noise on Ctrl-C)."""
        if pub is None or self._closing:
            return False
        try:
            pub.publish(msg)
        except Exception as e:
            text = str(e)
            if self._closing or "context" in text or "Destroyable" in text or "destruction" in text:
                return False  # the context went away between the check and the publish
            raise
        return True

    @staticmethod
    def wanted(pub: Any) -> bool:
        """Somebody subscribes: debug and overlay images are only computed then."""
        try:
            return pub is not None and pub.get_subscription_count() > 0
        except Exception:  # noqa: BLE001 - a destroyed publisher during shutdown
            return False

    def diagnostic_values(self) -> dict[str, Any]:
        """Node-specific key/values added to the diagnostics (subclasses extend)."""
        return {}

    def diagnostic_status(self) -> DiagnosticStatus:
        snap = self.stats.snapshot(self.now_s())
        values: dict[str, Any] = {"state": self.state, "model_loaded": self.model_loaded, **snap,
                                  "input_errors": self.errors.count, **self.steps.medians_ms(),
                                  **self.diagnostic_values(),
                                  "last_error": self.last_error or self.errors.last_message}
        st = DiagnosticStatus()
        st.name = f"{self.get_name()}: {self.get_fully_qualified_name()}"
        st.hardware_id = "uois_sam_ros"
        if self.configure_failure:
            st.level, st.message = DiagnosticStatus.ERROR, f"not configured: {self.configure_failure}"
        elif self.state != "active":
            st.level, st.message = DiagnosticStatus.WARN, self.state
        elif self.errors.count and values["last_error"]:
            st.level, st.message = DiagnosticStatus.WARN, "active, with input errors"
        else:
            st.level, st.message = DiagnosticStatus.OK, "active"
        st.values = [KeyValue(key=k, value=_fmt(v)) for k, v in values.items()]
        return st

    def close_resources(self) -> None:
        """Release what the node holds besides models and I/O (the camera's device), at destroy."""

    def destroy_node(self) -> None:
        self._closing = True
        try:
            self.stop_io()
            self.close_resources()
        finally:
            super().destroy_node()

    def publish_diagnostics(self) -> None:
        arr = DiagnosticArray()
        arr.header.stamp = self.get_clock().now().to_msg()
        arr.status = [self.diagnostic_status()]
        self.safe_publish(self._diag_pub, arr)


def prime_torch_blas() -> bool:
    """One multi-threaded BLAS call from the main thread, once torch is loaded; True when it ran.

    Nodes run their models in worker threads. Measured on a busy 2-core machine: until the main
    thread of the process has made one threaded BLAS call, every matrix-vector product made from
    another thread paid OpenMP synchronisation (25 ms instead of 4 ms for the (k, 640x480) products
    of the mask NMS; the weights-free pipeline took 320-370 ms per frame instead of 235 ms). After one
    such call from the main thread, the same products from the workers run at their single-thread
    speed. Does nothing when torch was never imported (camera node; a node started with
    autostart false, whose configure comes later through a service) or off the main thread.
    """
    torch = sys.modules.get("torch")
    if torch is None or threading.current_thread() is not threading.main_thread():
        return False
    with torch.inference_mode():
        torch.ones(4, 1 << 17) @ torch.ones(1 << 17)  # large enough for the threaded path
    return True


def spin_until_stopped(executor: Any) -> None:
    """executor.spin() until Ctrl-C, an rclpy shutdown or SIGTERM; every caller's way to spin.

    SIGTERM's handler can shut the context down between two waits; the executor then raises
    RCLError ("context is not valid") instead of ExternalShutdownException. That is still a
    requested stop; anything raised while the context is up is a bug and propagates."""
    try:
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except Exception:
        if rclpy.ok():
            raise


def shutdown_executor(executor: Any, timeout_sec: float = 1.0) -> bool:
    """executor.shutdown(), after the callbacks already handed to its threads have run; True when they did.

    rclpy's (kilted) MultiThreadedExecutor.shutdown() destroys the executor's guard condition first
    and joins its thread pool after. A callback still queued in the pool when spin() returned (Ctrl-C,
    SIGTERM) then fails on that guard condition, and its task prints "The following exception was
    never retrieved: cannot use Destroyable because destruction was requested" at exit: a stray
    error line on every few signals. Waiting for those callbacks while the guard condition still
    exists leaves nothing to fail. The submitted tasks are the executor's ``_futures`` list (not
    public API); an executor without one has nothing queued.
    """
    deadline = time.monotonic() + timeout_sec
    queued = list(getattr(executor, "_futures", ()))
    while any(not t.done() for t in queued) and time.monotonic() < deadline:
        time.sleep(0.005)
    drained = all(t.done() for t in queued)
    executor.shutdown(timeout_sec=max(0.0, deadline - time.monotonic()))
    return drained


def spin_node(factory: Callable[[], ManagedNode], argv: list[str] | None = None) -> int:
    """Shared main: init, autostart, spin until Ctrl-C / SIGTERM / shutdown, clean up.

    Exit code 0 on a signal or shutdown, whatever the node's state (a node whose configure
    failed keeps running unconfigured); 1 only when the node cannot even be constructed
    (a parameter of the wrong type), with one line on stderr.
    """
    profile = apply_default_profile()  # before rclpy.init: Fast DDS reads its profile once per process
    rclpy.init(args=argv if argv is not None else sys.argv)
    node = None
    code = 0
    executor = MultiThreadedExecutor(num_threads=2)
    try:
        try:
            node = factory()
        except (RuntimeError, ValueError, FileNotFoundError) as e:
            if rclpy.ok():  # not a signal during start-up
                print(f"error: {e}", file=sys.stderr)
                code = 1
            return code
        if profile:
            node.get_logger().info(f"Fast DDS profile: {profile} (shared memory for camera-sized messages)")
        if node.get_parameter("autostart").value and not node._closing:
            node.autostart()
        if node._closing:
            return code  # a signal during start-up: exit without spinning
        prime_torch_blas()  # after configure loaded the models (and torch)
        executor.add_node(node)
        spin_until_stopped(executor)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass  # a signal during start-up
    finally:
        if node is not None:
            node._closing = True
            try:
                node.stop_io()
            except Exception:  # noqa: BLE001 - shutting down anyway
                pass
        shutdown_executor(executor, timeout_sec=1.0)
        if node is not None:
            try:
                node.destroy_node()
            except Exception:  # noqa: BLE001 - the context may already have destroyed it
                pass
        rclpy.try_shutdown()
    return code
