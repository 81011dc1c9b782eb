"""RealSense frames through pyrealsense2: depth aligned to colour, filters, reconnect, capture times.

pyrealsense2 is never imported here: it bundles its own Fast DDS, and a process that loads it
before ROS 2's segfaults at exit. ``RealSenseSource`` takes the module as an argument; ROS
processes get it from ``uois_sam_ros.ros.sources.import_pyrealsense2``.

Capture time. Every Sample carries ``capture_time_ns``: when the colour image was exposed, in
nanoseconds on the host wall clock (= ROS time when sim time is off). It comes from the colour
frame's timestamp (milliseconds) and its timestamp domain:

* ``global_time`` / ``system_time``: librealsense already expresses these on the host clock
  (global time is the device clock converted by librealsense's own host-clock fit; system time
  is the host time at arrival), so they are used as they are: ``ns = ms * 1e6``.
* ``hardware_clock``: the device's own clock, unrelated to the host's. It is mapped as
  ``capture = device_time + offset`` with ``offset = min(host_arrival - device_time)`` over the
  last ``offset_window`` frames. Host arrival is the wall clock when the frameset reached the
  grab thread. Transport delay is always positive and jitters, so the minimum is the least
  delayed frame: the mapped time never lies after a frame's arrival, and jitter does not move it.
  The window is bounded so slow clock drift is followed; it restarts after a reconnect, when
  the device clock runs backwards, or when the offset jumps by more than ``jump_s``.

Reconnect. Any librealsense error while streaming (unplug, USB reset, "Frame didn't arrive
within ...") logs one warning for the episode, stops the device and retries ``start()`` after
0.5 s, 1 s, 2 s, 4 s, then every 8 s (``min_backoff`` doubling up to ``max_backoff``) until a
frame arrives again. ``read()`` returns None meanwhile and never raises.

Threading. With ``threaded=True`` (the default, for nodes) a daemon grab thread does all the
blocking work: start, wait, filters, alignment, copying. It keeps only the newest converted
Sample in a one-item slot; ``read()`` takes it without waiting, so a stalled device never
blocks the caller (a ROS executor). ``threaded=False`` waits on the caller's thread and sees
every frame, for scripts and deterministic tests.
"""

from __future__ import annotations

import atexit
import math
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np

from uois_sam_ros.core.types import Intrinsics, Sample


class RealSenseBackend(Protocol):
    """Where framesets come from: a real ``rs.pipeline`` or, in tests, a software device."""

    def start(self) -> tuple[Any, float]:
        """Open the device; return (colour rs.intrinsics, depth scale in metres per unit)."""

    def wait(self, timeout_ms: int) -> Any:
        """The next frameset; raises RuntimeError when the device is gone or times out."""

    def stop(self) -> None: ...


class PipelineBackend:
    """A physical RealSense through rs.pipeline: colour rgb8 + depth z16 at one resolution and rate."""

    def __init__(self, rs: Any, serial: str = "", width: int = 640, height: int = 480, fps: int = 30) -> None:
        self.rs, self.serial, self.width, self.height, self.fps = rs, serial, width, height, fps
        self.pipeline = None

    def start(self) -> tuple[Any, float]:
        rs = self.rs
        cfg = rs.config()
        if self.serial:
            cfg.enable_device(self.serial)
        cfg.enable_stream(rs.stream.color, self.width, self.height, rs.format.rgb8, self.fps)
        cfg.enable_stream(rs.stream.depth, self.width, self.height, rs.format.z16, self.fps)
        pipe = rs.pipeline()
        profile = pipe.start(cfg)
        try:
            intr = profile.get_stream(rs.stream.color).as_video_stream_profile().get_intrinsics()
            scale = profile.get_device().first_depth_sensor().get_depth_scale()
        except RuntimeError:
            pipe.stop()  # do not leave a half-opened device streaming
            raise
        self.pipeline = pipe
        return intr, float(scale)

    def wait(self, timeout_ms: int) -> Any:
        if self.pipeline is None:
            raise RuntimeError("pipeline not started")
        return self.pipeline.wait_for_frames(timeout_ms)

    def stop(self) -> None:
        if self.pipeline is not None:
            try:
                self.pipeline.stop()
            except RuntimeError:
                pass
            self.pipeline = None


class SyncerBackend:
    """Framesets from sensors already streaming into an ``rs.syncer`` (e.g. a software device)."""

    def __init__(self, syncer: Any, color_intrinsics: Any, depth_scale: float = 0.001) -> None:
        self.syncer, self.intr, self.scale = syncer, color_intrinsics, depth_scale

    def start(self) -> tuple[Any, float]:
        return self.intr, self.scale

    def wait(self, timeout_ms: int) -> Any:
        return self.syncer.wait_for_frames(timeout_ms)

    def stop(self) -> None:
        pass


def _enum_name(value: Any) -> str:
    """'brown_conrady' from rs.distortion.brown_conrady (pybind enums have .name)."""
    return str(getattr(value, "name", str(value).rsplit(".", 1)[-1]))


def intrinsics_from_rs(intr: Any) -> Intrinsics:
    """Core Intrinsics, with distortion, from an ``rs.intrinsics``.

    The model mapping is realsense2_camera's (base_realsense_node.cpp, updateStreamCalibData):
    kannala_brandt4 -> "equidistant" with the first 4 coefficients; every other model -> "plumb_bob"
    with the first 5. That covers brown_conrady (exactly plumb_bob), modified_brown_conrady and
    inverse_brown_conrady (approximately; realsense2_camera labels them plumb_bob too), none
    (all zeros) and ftheta (which realsense2_camera also passes as plumb_bob; no colour stream uses it).
    """
    coeffs = [float(c) for c in intr.coeffs]
    if _enum_name(intr.model) == "kannala_brandt4":
        model, d = "equidistant", tuple(coeffs[:4])
    else:
        model, d = "plumb_bob", tuple(coeffs[:5])
    return Intrinsics(float(intr.fx), float(intr.fy), float(intr.ppx), float(intr.ppy), int(intr.width),
                      int(intr.height), distortion_model=model, distortion=d)


def _ms_to_ns(ms: float) -> int:
    """Milliseconds (a double, as librealsense gives them) to integer ns without float64 overflow of
    precision: an epoch time in ms * 1e6 would lose the last ~100 ns to rounding."""
    whole = math.floor(ms)
    return int(whole) * 1_000_000 + int(round((ms - whole) * 1e6))


class CaptureClock:
    """Maps frame timestamps (ms, in their librealsense domain) to host wall-clock nanoseconds.

    See the module docstring for the mapping. Host-clock domains pass through; hardware_clock
    gets the running-minimum offset over the last ``window`` frames.
    """

    HOST_DOMAINS = ("global_time", "system_time")

    def __init__(self, window: int = 60, jump_s: float = 0.5) -> None:
        if window < 1:
            raise ValueError(f"offset window must be at least 1 frame, got {window}")
        self.window, self.jump_ns = int(window), int(jump_s * 1e9)
        self.offsets: deque[int] = deque(maxlen=self.window)
        self.last_device_ns: int | None = None
        self.resets = 0

    def reset(self) -> None:
        """Forget the offset estimate (after a reconnect: the device clock may have restarted)."""
        if self.offsets:
            self.resets += 1
        self.offsets.clear()
        self.last_device_ns = None

    @property
    def offset_ns(self) -> int | None:
        """Current device -> host offset estimate (hardware_clock only), None before the first frame."""
        return min(self.offsets) if self.offsets else None

    def map(self, domain: str, timestamp_ms: float, arrival_ns: int) -> int:
        """Host wall-clock ns of a frame stamped ``timestamp_ms`` in ``domain``, that arrived at ``arrival_ns``."""
        ts_ns = _ms_to_ns(timestamp_ms)
        if domain in self.HOST_DOMAINS:
            return ts_ns
        if domain != "hardware_clock":
            raise ValueError(f"unknown RealSense timestamp domain {domain!r}")
        sample = int(arrival_ns) - ts_ns
        best = self.offset_ns
        went_back = self.last_device_ns is not None and ts_ns < self.last_device_ns
        if best is not None and (went_back or sample - best > self.jump_ns):
            self.reset()  # device clock restarted or jumped: the old offsets describe another clock
        self.offsets.append(sample)
        self.last_device_ns = ts_ns
        return ts_ns + min(self.offsets)


_LIVE: weakref.WeakSet[RealSenseSource] = weakref.WeakSet()


@atexit.register
def _close_live_sources() -> None:
    """Stop grab threads a script forgot to close, so no daemon thread is inside librealsense at exit."""
    for src in list(_LIVE):
        src.close()


class RealSenseSource:
    """Depth aligned to colour, optional spatial/temporal/hole-filling filters, reconnect with backoff.

    The filters run on the raw depth before alignment (librealsense's recommended order). The
    module docstring describes capture times, the reconnect schedule and the grab thread.
    ``log`` gets one warning per failure episode; ``info`` (default: ``log``) the recovery note.
    ``clock`` (monotonic seconds) schedules retries; ``wall_clock`` (ns) measures frame arrival.
    """

    name = "realsense"

    def __init__(self, rs: Any, backend: RealSenseBackend, spatial: bool = False, temporal: bool = False,
                 hole_filling: bool = False, timeout_ms: int = 1000, max_backoff: float = 8.0,
                 log: Callable[[str], None] | None = None, clock: Callable[[], float] = time.monotonic, *,
                 threaded: bool = True, min_backoff: float = 0.5, info: Callable[[str], None] | None = None,
                 wall_clock: Callable[[], int] = time.time_ns, offset_window: int = 60) -> None:
        if not 0 < min_backoff <= max_backoff:
            raise ValueError(f"need 0 < min_backoff <= max_backoff, got {min_backoff}, {max_backoff}")
        self.rs, self.backend, self.timeout_ms = rs, backend, int(timeout_ms)
        self.filters = []
        if spatial:
            self.filters.append(rs.spatial_filter())
        if temporal:
            self.filters.append(rs.temporal_filter())
        if hole_filling:
            self.filters.append(rs.hole_filling_filter())
        self.align = rs.align(rs.stream.color)
        self.min_backoff, self.max_backoff = float(min_backoff), float(max_backoff)
        self.log = log or (lambda m: None)
        self.info = info or self.log
        self.clock, self.wall_clock = clock, wall_clock
        self.threaded = bool(threaded)
        self.capture_clock = CaptureClock(offset_window)
        self.connected = False
        self.backoff = self.min_backoff
        self.next_try = 0.0
        self.reconnects = 0  # streams lost mid-way (each one started a reconnect)
        self.failing = False  # inside a failure episode (warned once, retrying quietly)
        self.attempts = 0  # failed start() calls in the current episode
        self.intrinsics: Intrinsics | None = None
        self.depth_scale = 0.001
        self._slot: Sample | None = None
        self._slot_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ---------------------------------------------------------------- failure handling

    def _fail(self, what: str) -> None:
        """Enter (or stay in) a failure episode: warn once, stop the device, schedule the next start()."""
        now = self.clock()
        if not self.failing:
            self.failing, self.attempts = True, 0
            self.log(f"RealSense {what}; retry in {self.backoff:g} s "
                     f"(backoff doubling up to {self.max_backoff:g} s)")
        if self.connected:
            self.connected = False
            self._stop_backend()
        self.next_try = now + self.backoff
        self.backoff = min(self.backoff * 2.0, self.max_backoff)

    def _stop_backend(self) -> None:
        try:
            self.backend.stop()
        except Exception:  # noqa: BLE001 - a dying device may fail to stop; it is being dropped anyway
            pass

    def _connect(self) -> bool:
        if self.clock() < self.next_try:
            return False
        try:
            intr, scale = self.backend.start()
        except RuntimeError as e:
            self._fail(f"not available ({e})")
            self.attempts += 1
            return False
        self.connected = True  # before anything else can raise, so a failure below stops the device
        self.intrinsics = intrinsics_from_rs(intr)
        self.depth_scale = float(scale)
        self.capture_clock.reset()  # a restarted device may have restarted its clock
        return True

    def _step(self) -> Sample | None:
        """One grab: connect if due, wait for a frameset, convert it. Blocks up to timeout_ms."""
        if not self.connected and not self._connect():
            return None
        try:
            frames = self.backend.wait(self.timeout_ms)
            arrival = int(self.wall_clock())
            sample = self.convert(frames, arrival)
        except RuntimeError as e:
            self.reconnects += 1
            self._fail(f"stream failed ({e}); reconnecting")
            return None
        if sample is not None and self.failing:
            self.info(f"RealSense streaming again (after {self.attempts} failed start attempts)")
            self.failing, self.attempts = False, 0
        if sample is not None:
            self.backoff = self.min_backoff  # only a delivered frame proves the device works again
        return sample

    def _guarded_step(self) -> Sample | None:
        """_step that never raises: an unexpected error is one more failure, retried with backoff."""
        try:
            return self._step()
        except Exception as e:  # noqa: BLE001 - the source must outlive any device or driver error
            self._fail(f"grab failed unexpectedly ({type(e).__name__}: {e})")
            return None

    # ---------------------------------------------------------------- grab thread

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                try:
                    sample = self._guarded_step()
                except Exception:  # noqa: BLE001 - only a failing log callback gets here; keep grabbing
                    self._stop.wait(0.05)
                    continue
                if sample is not None:
                    with self._slot_lock:
                        self._slot = sample  # newest wins: an unread older frame is dropped
                elif not self.connected:
                    # between retries: sleep in short slices so close() is answered promptly
                    self._stop.wait(min(max(self.next_try - self.clock(), 0.0), 0.05))
        finally:
            self.connected = False
            self._stop_backend()  # the only thread that touches the backend stops it

    def _ensure_thread(self) -> bool:
        if self._thread is not None and self._thread.is_alive():
            return not self._stop.is_set()  # a closing thread still owns the backend: wait for it
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="realsense-grab", daemon=True)
        self._thread.start()
        _LIVE.add(self)
        return True

    # ---------------------------------------------------------------- public

    def read(self) -> Sample | None:
        """The newest frame, or None (no new frame yet, or reconnecting). Never raises.

        Threaded: returns at once. Unthreaded: waits up to timeout_ms on the caller's thread.
        """
        if not self.threaded:
            return self._guarded_step()
        if not self._ensure_thread():
            return None
        with self._slot_lock:
            sample, self._slot = self._slot, None
        return sample

    def convert(self, frames: Any, arrival_ns: int | None = None) -> Sample | None:
        """Filter, align and copy one frameset; None while the syncer still lacks a colour/depth pair."""
        if frames.size() < 2:
            return None
        raw_color = frames.get_color_frame()
        if not raw_color:
            return None
        capture_ns = self.capture_clock.map(_enum_name(raw_color.get_frame_timestamp_domain()),
                                            raw_color.get_timestamp(),
                                            self.wall_clock() if arrival_ns is None else arrival_ns)
        for f in self.filters:
            frames = f.process(frames).as_frameset()
        aligned = self.align.process(frames)
        depth_f, color_f = aligned.get_depth_frame(), aligned.get_color_frame()
        if not depth_f or not color_f:
            return None
        rgb = np.array(color_f.get_data(), dtype=np.uint8, copy=True)
        depth = np.asarray(depth_f.get_data(), dtype=np.uint16).astype(np.float32) * self.depth_scale
        return Sample(rgb=rgb, depth=depth, intrinsics=self.intrinsics, label=None,
                      name=f"realsense_{color_f.get_frame_number()}", stamp=capture_ns * 1e-9,
                      capture_time_ns=capture_ns)

    def close(self, timeout: float | None = None) -> None:
        """Stop the grab thread (bounded join) and the device; a later read() opens it again."""
        thread = self._thread
        if thread is not None and thread.is_alive():
            self._stop.set()
            thread.join(self.timeout_ms / 1000.0 + 1.0 if timeout is None else timeout)
            if thread.is_alive():
                self.log("RealSense grab thread is still inside a librealsense call; "
                         "it stops the device when that call returns")
                return
        elif not self.threaded:
            self._stop_backend()
        self._thread = None
        self.connected = False
        self.failing, self.attempts = False, 0
        self.backoff, self.next_try = self.min_backoff, 0.0
        with self._slot_lock:
            self._slot = None
