"""RealSense source: capture-time mapping, reconnect with backoff, non-blocking read, distortion.

Frames are real librealsense frames from an ``rs.software_device`` (no camera needed); faults come
from a fake backend around it. pyrealsense2 is loaded through import_pyrealsense2 (rclpy first).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from std_msgs.msg import Header

from uois_sam_ros.core.data.realsense import CaptureClock, RealSenseSource, _ms_to_ns, intrinsics_from_rs
from uois_sam_ros.core.types import Intrinsics
from uois_sam_ros.ros.convert import camera_info_to_intrinsics, intrinsics_to_camera_info
from uois_sam_ros.ros.sources import import_pyrealsense2

REPO = Path(__file__).resolve().parents[1]

# Shared by the in-process tests and the node subprocess (exec'd in both).
HELPERS = textwrap.dedent("""
    import threading, time
    import numpy as np

    class SoftwareRealSense:
        '''Colour rgb8 + depth z16 software device streaming into rs.syncer(100).'''

        def __init__(self, rs, W, H, fps=30, model=None, coeffs=None, domain=None, t0_ms=0.0):
            self.rs, self.W, self.H, self.fps, self.t0_ms = rs, W, H, fps, t0_ms
            self.domain = rs.timestamp_domain.hardware_clock if domain is None else domain
            self.dev = rs.software_device()
            self.ds, self.cs = self.dev.add_sensor("Depth"), self.dev.add_sensor("Color")
            intr = rs.intrinsics()
            intr.width, intr.height, intr.fx, intr.fy, intr.ppx, intr.ppy = W, H, 60.0, 61.0, W / 2, H / 2
            intr.model = rs.distortion.none if model is None else model
            intr.coeffs = [0.0] * 5 if coeffs is None else list(coeffs)
            self.intr = intr
            def stream(kind, uid, bpp, fmt):
                v = rs.video_stream()
                v.type, v.index, v.uid, v.width, v.height, v.fps, v.bpp, v.fmt = kind, 0, uid, W, H, fps, bpp, fmt
                v.intrinsics = intr
                return v
            self.dp = self.ds.add_video_stream(stream(rs.stream.depth, 0, 2, rs.format.z16))
            self.cp = self.cs.add_video_stream(stream(rs.stream.color, 1, 3, rs.format.rgb8))
            self.ds.add_read_only_option(rs.option.depth_units, 0.001)
            self.dev.create_matcher(rs.matchers.default)
            self.sync = rs.syncer(100)
            self.ds.open(self.dp); self.cs.open(self.cp); self.ds.start(self.sync); self.cs.start(self.sync)
            self.n = 0
            self.inject()  # the syncer hands the first pair out as two singles: prime it
            while self.sync.poll_for_frames():
                pass

        def ts_ms(self, i):
            return self.t0_ms + i * 1000.0 / self.fps  # librealsense wants frame_number * 1000 / fps

        def inject(self):
            '''Frame pair number n: colour value n % 256, depth 500 + n mm.'''
            i, rs, W, H = self.n, self.rs, self.W, self.H
            rgb = np.full((H, W, 3), i % 256, np.uint8)
            depth = np.full((H, W), 500 + i, np.uint16)
            for sen, prof, arr, bpp in ((self.ds, self.dp, depth, 2), (self.cs, self.cp, rgb, 3)):
                f = rs.software_video_frame()
                f.pixels, f.bpp, f.stride = arr, bpp, W * bpp
                f.timestamp, f.frame_number, f.domain = self.ts_ms(i), i, self.domain
                f.profile = prof.as_video_stream_profile()
                if bpp == 2:
                    f.depth_units = 0.001
                sen.on_video_frame(f)
            self.n += 1
            return i

    class FakeBackend:
        '''RealSenseBackend over a software device: each wait() makes one frame pair.

        fail_waits: wait() call numbers (1-based) that raise like an unplugged camera;
        fail_starts: start() call numbers that raise; stall_s: every wait() first sleeps this long;
        pace_s: delay before each frame (a camera's frame period).
        '''

        def __init__(self, cam, fail_waits=(), fail_starts=(), stall_s=0.0, pace_s=0.0, clock=None):
            self.cam, self.fail_waits, self.fail_starts = cam, set(fail_waits), set(fail_starts)
            self.stall_s, self.pace_s, self.clock = stall_s, pace_s, clock
            self.waits = self.starts = self.stops = 0
            self.start_times, self.failed_at = [], []
            self.running = False
            self.lock = threading.Lock()
            self.threads = set()

        def start(self):
            self.starts += 1
            self.start_times.append(self.clock() if self.clock else time.monotonic())
            if self.starts in self.fail_starts:
                raise RuntimeError("No device connected")
            self.running = True
            return self.cam.intr, 0.001

        def wait(self, timeout_ms):
            self.threads.add(threading.current_thread().name)
            self.waits += 1
            if self.stall_s:
                time.sleep(self.stall_s)
            if not self.running:
                raise RuntimeError("wait_for_frames cannot be called before start()")
            if self.waits in self.fail_waits:
                self.failed_at.append(self.cam.n)
                raise RuntimeError(f"Frame didn't arrive within {timeout_ms}")
            if self.pace_s:
                time.sleep(self.pace_s)
            self.cam.inject()
            return self.cam.sync.wait_for_frames(timeout_ms)

        def stop(self):
            self.stops += 1
            self.running = False
""")


@pytest.fixture(scope="module")
def rs():
    return import_pyrealsense2()


@pytest.fixture(scope="module")
def helpers() -> dict:
    ns: dict = {}
    exec(HELPERS, ns)
    return ns


def _frame_index(sample) -> int:
    return int(round(float(sample.depth[0, 0]) * 1000.0)) - 500  # depth encodes the frame number


# ------------------------------------------------------------------------------ capture time


def test_capture_clock_host_domains_pass_through():
    c = CaptureClock()
    assert c.map("global_time", 1_700_000_000_123.5, arrival_ns=5) == 1_700_000_000_123_500_000
    assert c.map("system_time", 1_700_000_000_000.25, arrival_ns=5) == 1_700_000_000_000_250_000
    assert c.offset_ns is None  # host domains need no offset
    with pytest.raises(ValueError, match="unknown RealSense timestamp domain"):
        c.map("sensor_clock", 1.0, 0)


def test_capture_clock_hardware_running_minimum_over_window():
    c = CaptureClock(window=3, jump_s=0.5)
    host0 = 1_700_000_000_000_000_000
    delays_ms = [9.0, 4.0, 6.0, 7.0, 8.0, 5.0]
    got = []
    for i, d in enumerate(delays_ms):
        dev_ms = 1000.0 + i * 33.0
        got.append(c.map("hardware_clock", dev_ms, host0 + int((dev_ms + d) * 1e6)))
    # offset = host0 + min(delay) over the last 3 frames; capture = device time + offset
    for i, g in enumerate(got):
        best = min(delays_ms[max(0, i - 2):i + 1])
        assert g == host0 + int((1000.0 + i * 33.0 + best) * 1e6), (i, g)
    assert c.offset_ns == host0 + int(5.0 * 1e6)
    # device clock restarts (reconnect / reset): the estimate restarts too
    g = c.map("hardware_clock", 10.0, host0 + int(5000.0 * 1e6))
    assert c.resets == 1 and g == host0 + int(5000.0 * 1e6)
    # an offset jump beyond jump_s (device clock stepped back) also restarts it
    g = c.map("hardware_clock", 20.0, host0 + int((5000.0 + 10.0 + 900.0) * 1e6))
    assert c.resets == 2 and g == host0 + int(5910.0 * 1e6)


def test_software_device_capture_time_hardware_clock(rs, helpers):
    """Real frames in hardware_clock: capture = device time + min(arrival - device) over the window."""
    cam = helpers["SoftwareRealSense"](rs, 16, 12, t0_ms=0.0)
    src = RealSenseSource(rs, helpers["FakeBackend"](cam), threaded=False, offset_window=4)
    src.backend.start()
    src.intrinsics, src.depth_scale = intrinsics_from_rs(cam.intr), 0.001
    host0 = 1_700_000_000_000_000_000
    delays_ns = [3_000_000, 1_000_000, 2_500_000, 4_000_000, 1_800_000, 2_200_000, 6_000_000]
    for k, delay in enumerate(delays_ns):
        i = cam.inject()
        fs = cam.sync.wait_for_frames(1000)
        dev_ns = _ms_to_ns(cam.ts_ms(i))
        s = src.convert(fs, arrival_ns=host0 + dev_ns + delay)
        assert s is not None and _frame_index(s) == i
        best = min(delays_ns[max(0, k - 3):k + 1])
        assert s.capture_time_ns == host0 + dev_ns + best
        assert s.stamp == pytest.approx(s.capture_time_ns * 1e-9)
        assert s.capture_time_ns <= host0 + dev_ns + delay  # never after the frame arrived


@pytest.mark.parametrize("domain", ["global_time", "system_time"])
def test_software_device_capture_time_host_domains(rs, helpers, domain):
    t0 = 1_700_000_000_000.25
    cam = helpers["SoftwareRealSense"](rs, 16, 12, domain=getattr(rs.timestamp_domain, domain), t0_ms=t0)
    src = RealSenseSource(rs, helpers["FakeBackend"](cam), threaded=False, wall_clock=lambda: 42)
    got = [src.read() for _ in range(3)]
    assert all(s is not None for s in got)
    for s in got:
        assert s.capture_time_ns == _ms_to_ns(cam.ts_ms(_frame_index(s)))  # used as is


def test_read_stamps_with_wall_clock_when_hardware_domain(rs, helpers):
    """Default wall clock: the mapped capture time lies within the read's wall-clock interval."""
    cam = helpers["SoftwareRealSense"](rs, 16, 12)
    src = RealSenseSource(rs, helpers["FakeBackend"](cam), threaded=False)
    t_before = time.time_ns()
    got = [src.read() for _ in range(3)]
    t_after = time.time_ns()
    assert all(s is not None for s in got)
    for s in got:
        assert t_before - 10**8 <= s.capture_time_ns <= t_after
    stamps = [s.capture_time_ns for s in got]
    assert stamps == sorted(stamps)


# ------------------------------------------------------------------------------ reconnect


def test_reconnect_backoff_schedule_and_one_warning_per_episode(rs, helpers):
    now = [0.0]
    clock = lambda: now[0]  # noqa: E731
    cam = helpers["SoftwareRealSense"](rs, 16, 12)
    # wait #3 fails (unplug); start #2, #3, #4 fail (still unplugged); wait #8 fails again later
    b = helpers["FakeBackend"](cam, fail_waits={3, 8}, fail_starts={2, 3, 4}, clock=clock)
    warnings: list[str] = []
    infos: list[str] = []
    src = RealSenseSource(rs, b, threaded=False, clock=clock, log=warnings.append, info=infos.append)
    results: dict[int, object] = {}
    for tick in range(0, 160):  # 20 s of an 8 Hz read loop (k / 8 s is exact in binary)
        now[0] = tick / 8
        results[tick] = src.read()  # never raises
    # start #1 at 0 s; wait #3 fails at 0.25 s; retries after 0.5, 1, 2, 4 s -> 0.75, 1.75, 3.75, 7.75 (ok)
    assert b.start_times[:5] == [0.0, 0.75, 1.75, 3.75, 7.75]
    assert [t for t in range(160) if results[t] is not None][:4] == [0, 1, 62, 63]
    assert all(results[t] is None for t in range(2, 62))
    # frames resume: indices continue where they stopped, pixel-exact
    s = results[62]
    assert _frame_index(s) == b.failed_at[0] and int(s.rgb[0, 0, 0]) == b.failed_at[0] % 256
    # second episode (wait #8 at tick 66): the backoff restarted at 0.5 s because frames had arrived
    assert b.starts == 6 and b.start_times[5] == 66 / 8 + 0.5
    assert src.reconnects == 2
    assert len(warnings) == 2, warnings  # one per episode, not one per retry or per tick
    assert "Frame didn't arrive within 1000" in warnings[0] and "retry in 0.5 s" in warnings[0]
    assert len(infos) == 2 and "after 3 failed start attempts" in infos[0]


def test_backoff_caps_at_max(rs, helpers):
    now = [0.0]
    cam = helpers["SoftwareRealSense"](rs, 8, 6)
    b = helpers["FakeBackend"](cam, fail_starts=set(range(1, 100)), clock=lambda: now[0])
    warnings: list[str] = []
    src = RealSenseSource(rs, b, threaded=False, clock=lambda: now[0], log=warnings.append)
    for tick in range(0, 600):  # 60 s at 10 Hz
        now[0] = tick / 10
        assert src.read() is None
    gaps = np.diff(b.start_times)
    assert list(gaps[:6]) == pytest.approx([0.5, 1.0, 2.0, 4.0, 8.0, 8.0])
    assert np.allclose(gaps[4:], 8.0)
    assert len(warnings) == 1 and "not available (No device connected)" in warnings[0]


def test_unexpected_backend_error_never_escapes_read(rs, helpers):
    now = [0.0]

    class Broken:
        def start(self):
            raise OSError("usb: permission denied")  # not a RuntimeError

        def wait(self, timeout_ms):
            raise AssertionError("never reached")

        def stop(self):
            pass

    warnings: list[str] = []
    src = RealSenseSource(rs, Broken(), threaded=False, clock=lambda: now[0], log=warnings.append)
    assert src.read() is None and src.read() is None
    assert len(warnings) == 1 and "OSError: usb: permission denied" in warnings[0]
    assert src.next_try == pytest.approx(0.5)


# ------------------------------------------------------------------------------ grab thread


def test_threaded_read_never_blocks_on_a_stalled_device(rs, helpers):
    cam = helpers["SoftwareRealSense"](rs, 8, 6)
    b = helpers["FakeBackend"](cam, stall_s=2.0)
    logs: list[str] = []
    src = RealSenseSource(rs, b, log=logs.append)
    worst = 0.0
    for _ in range(5):
        t = time.monotonic()
        assert src.read() is None
        worst = max(worst, time.monotonic() - t)
        time.sleep(0.05)
    assert worst < 0.25, f"read() blocked {worst:.3f} s"  # the device stalls 2 s
    assert b.threads == {"realsense-grab"}  # the blocking wait ran on the grab thread only
    t = time.monotonic()
    src.close(timeout=0.2)  # bounded: the grab thread is still inside the 2 s wait
    assert time.monotonic() - t < 0.5
    assert any("still inside a librealsense call" in m for m in logs)
    src._thread.join(3.0)  # when the stalled call returns, the thread exits and stops the device
    assert not src._thread.is_alive() and b.stops >= 1


def test_threaded_newest_sample_and_clean_close(rs, helpers):
    cam = helpers["SoftwareRealSense"](rs, 8, 6)
    b = helpers["FakeBackend"](cam, pace_s=1 / 60)
    src = RealSenseSource(rs, b)
    got = []
    end = time.monotonic() + 5.0
    while time.monotonic() < end and len(got) < 4:
        t = time.monotonic()
        s = src.read()
        assert time.monotonic() - t < 0.25  # never waits for the camera
        if s is not None:
            got.append(_frame_index(s))
        time.sleep(0.05)  # slower than the camera: frames pile up, only the newest is kept
    assert len(got) == 4 and got == sorted(got) and len(set(got)) == 4
    assert got[-1] - got[0] > 3, "older frames were dropped, not queued"
    thread = src._thread
    t = time.monotonic()
    src.close()
    assert time.monotonic() - t < 1.0 and not thread.is_alive() and b.stops == 1
    # a read after close() opens the device again (a lifecycle node's deactivate / activate)
    end = time.monotonic() + 5.0
    while time.monotonic() < end and src.read() is None:
        time.sleep(0.02)
    assert b.starts == 2 and src._thread is not thread and src._thread.is_alive()
    src.close()
    assert b.stops == 2


def test_threaded_reconnect_resumes_frames(rs, helpers):
    cam = helpers["SoftwareRealSense"](rs, 8, 6)
    b = helpers["FakeBackend"](cam, fail_waits={5}, fail_starts={2}, pace_s=0.01)
    warnings: list[str] = []
    src = RealSenseSource(rs, b, log=warnings.append, info=lambda m: None, min_backoff=0.05)
    after = []
    end = time.monotonic() + 5.0
    while time.monotonic() < end and len(after) < 3:
        s = src.read()
        if s is not None and b.failed_at and _frame_index(s) >= b.failed_at[0]:
            after.append(_frame_index(s))
        time.sleep(0.01)
    src.close()
    assert len(after) == 3 and b.starts >= 3 and src.reconnects == 1
    assert len(warnings) == 1 and "reconnecting" in warnings[0]
    gap = b.start_times[2] - b.start_times[1]
    assert 0.09 <= gap < 1.0  # second retry waited the doubled backoff (0.1 s)


# ------------------------------------------------------------------------------ distortion


def test_intrinsics_from_rs_distortion_models(rs):
    def rs_intr(model, coeffs):
        i = rs.intrinsics()
        i.width, i.height, i.fx, i.fy, i.ppx, i.ppy = 64, 48, 50.0, 51.0, 32.0, 24.0
        i.model, i.coeffs = model, coeffs
        return i

    c = [0.12, -0.25, 0.001, -0.002, 0.05]
    for model in ("brown_conrady", "modified_brown_conrady", "inverse_brown_conrady"):
        k = intrinsics_from_rs(rs_intr(getattr(rs.distortion, model), c))
        assert k.distortion_model == "plumb_bob" and k.distortion == pytest.approx(c, abs=1e-7)
    k = intrinsics_from_rs(rs_intr(rs.distortion.kannala_brandt4, [0.3, -0.1, 0.02, -0.004, 0.0]))
    assert k.distortion_model == "equidistant" and k.distortion == pytest.approx([0.3, -0.1, 0.02, -0.004], abs=1e-7)
    k = intrinsics_from_rs(rs_intr(rs.distortion.none, [0.0] * 5))
    assert k.distortion_model == "plumb_bob" and k.distortion == ()
    assert (k.fx, k.fy, k.cx, k.cy, k.width, k.height) == (50.0, 51.0, 32.0, 24.0, 64, 48)


def test_software_device_brown_conrady_reaches_sample_and_camera_info(rs, helpers):
    c = [0.12, -0.25, 0.001, -0.002, 0.05]
    cam = helpers["SoftwareRealSense"](rs, 16, 12, model=rs.distortion.brown_conrady, coeffs=c)
    src = RealSenseSource(rs, helpers["FakeBackend"](cam), threaded=False)
    s = src.read()
    assert s is not None
    assert s.intrinsics.distortion_model == "plumb_bob"
    assert s.intrinsics.distortion == pytest.approx(c, abs=1e-7)
    info = intrinsics_to_camera_info(s.intrinsics, Header(frame_id="camera_color_optical_frame"))
    assert info.distortion_model == "plumb_bob" and list(info.d) == pytest.approx(c, abs=1e-7)
    assert camera_info_to_intrinsics(info) == s.intrinsics


def test_camera_info_distortion_round_trip():
    h = Header(frame_id="cam")
    k = Intrinsics(600.0, 601.0, 320.5, 240.5, 640, 480, "plumb_bob", (0.1, -0.2, 0.001, 0.002, 0.03))
    info = intrinsics_to_camera_info(k, h)
    assert info.distortion_model == "plumb_bob" and list(info.d) == [0.1, -0.2, 0.001, 0.002, 0.03]
    assert camera_info_to_intrinsics(info) == k
    fisheye = Intrinsics(300.0, 300.0, 320.0, 240.0, 640, 480, "equidistant", (0.3, -0.1, 0.02, -0.004))
    info = intrinsics_to_camera_info(fisheye, h)
    assert info.distortion_model == "equidistant" and len(info.d) == 4
    assert camera_info_to_intrinsics(info) == fisheye
    # none: five zeros on the wire, () in core, equal to an Intrinsics built without distortion
    plain = Intrinsics(600.0, 601.0, 320.5, 240.5, 640, 480)
    info = intrinsics_to_camera_info(plain, h)
    assert info.distortion_model == "plumb_bob" and list(info.d) == [0.0] * 5
    back = camera_info_to_intrinsics(info)
    assert back == plain and back.distortion == ()
    assert intrinsics_to_camera_info(Intrinsics(1, 1, 1, 1, 2, 2, "equidistant"), h).d.tolist() == [0.0] * 4
    # resizing keeps the model and coefficients
    assert k.scaled(320, 240).distortion == k.distortion and k.scaled(320, 240).distortion_model == "plumb_bob"
    assert Intrinsics.from_dict({"fx": 1, "fy": 1, "cx": 1, "cy": 1, "width": 2, "height": 2,
                                 "distortion_model": "plumb_bob", "D": [0.1, 0, 0, 0, 0]}).distortion[0] == 0.1


# ------------------------------------------------------------------------------ node process

NODE_SCRIPT = """
import time
import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.parameter import Parameter
from sensor_msgs.msg import Image, CameraInfo
from uois_sam_ros.nodes.camera import CameraNode
from uois_sam_ros.ros.qos import SENSOR_QOS
from uois_sam_ros.ros.image import image_to_numpy
from uois_sam_ros.ros.sources import import_pyrealsense2
from uois_sam_ros.core.data.realsense import RealSenseSource
rs = import_pyrealsense2()
HELPERS
cam = SoftwareRealSense(rs, 32, 24, model=rs.distortion.brown_conrady, coeffs=[0.1, -0.2, 0.001, 0.002, 0.03])
# wait #15 raises like an unplugged camera; the first reconnect attempt (start #2) fails too
backend = FakeBackend(cam, fail_waits={15}, fail_starts={2}, pace_s=1 / 30)
warnings, infos = [], []
src = RealSenseSource(rs, backend, log=warnings.append, info=infos.append, min_backoff=0.2)
rclpy.init()
node = CameraNode("camera", parameter_overrides=[Parameter("rate", value=30.0),
                                                 Parameter("source", value="realsense")], source=src)
if hasattr(node, "trigger_configure"):  # lifecycle node: bring it up unless autostart already did
    state = node._state_machine.current_state[1]
    if state == "unconfigured":
        node.trigger_configure()
        state = node._state_machine.current_state[1]
    if state == "inactive":
        node.trigger_activate()
probe = rclpy.create_node("probe")
color, info = [], []
probe.create_subscription(Image, "camera/color/image_raw", color.append, SENSOR_QOS)
probe.create_subscription(CameraInfo, "camera/color/camera_info", info.append, SENSOR_QOS)
ex = SingleThreadedExecutor(); ex.add_node(node); ex.add_node(probe)
def after_failure():
    if not backend.failed_at:
        return []
    return [m for m in color if int(image_to_numpy(m)[0, 0, 0]) >= backend.failed_at[0]]
end = time.monotonic() + 25
longest = 0.0
while time.monotonic() < end and len(after_failure()) < 5:
    t = time.monotonic()
    ex.spin_once(timeout_sec=0.05)
    longest = max(longest, time.monotonic() - t)
assert backend.failed_at, "the fake camera never failed"
assert len(after_failure()) >= 5, f"images after the failure: {len(after_failure())} of {len(color)}"
assert src.reconnects == 1 and backend.starts >= 3, (src.reconnects, backend.starts)
assert len(warnings) == 1 and "Frame didn't arrive" in warnings[0], warnings
assert len(infos) == 1 and "streaming again" in infos[0], infos
assert longest < 1.0, f"an executor step took {longest:.2f} s"
assert info and info[-1].distortion_model == "plumb_bob" and abs(info[-1].d[0] - 0.1) < 1e-6
stamps = [m.header.stamp.sec + m.header.stamp.nanosec * 1e-9 for m in color]
assert abs(stamps[-1] - time.time()) < 2.0, "stamps are on the host wall clock"
print("RESUMED", len(color), len(after_failure()), backend.starts, f"{longest:.3f}")
ex.shutdown(); node.destroy_node(); probe.destroy_node(); rclpy.shutdown()
"""


def test_camera_node_keeps_publishing_after_device_failure():
    """CameraNode over RealSenseSource: a mid-stream error, a failed retry, then images again; rc 0."""
    body = NODE_SCRIPT.replace("HELPERS", "exec(" + repr(HELPERS) + ")")
    r = subprocess.run([sys.executable, "-c", body], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, f"rc={r.returncode}\n{r.stdout}\n{r.stderr[-3000:]}"
    assert "RESUMED" in r.stdout
