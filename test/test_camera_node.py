"""The camera node and its sources: software_device RealSense, folder, synthetic; clean exit (rc 0)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from uois_sam_ros.core.data.realsense import RealSenseSource, SyncerBackend
from uois_sam_ros.core.data.sources import EndOfSource, FolderSource, SourceError

REPO = Path(__file__).resolve().parents[1]

# Builds a software RealSense (colour rgb8 + depth z16) streaming into rs.syncer(100).
SOFTWARE_DEVICE = textwrap.dedent("""
    def software_realsense(rs, W, H, fps=30):
        dev = rs.software_device()
        ds, cs = dev.add_sensor("Depth"), dev.add_sensor("Color")
        intr = rs.intrinsics()
        intr.width, intr.height, intr.fx, intr.fy, intr.ppx, intr.ppy = W, H, 60.0, 61.0, W / 2, H / 2
        intr.model, intr.coeffs = rs.distortion.none, [0.0] * 5
        def stream(kind, uid, bpp, fmt):
            v = rs.video_stream()
            v.type, v.index, v.uid, v.width, v.height, v.fps, v.bpp, v.fmt = kind, 0, uid, W, H, fps, bpp, fmt
            v.intrinsics = intr
            return v
        dp = ds.add_video_stream(stream(rs.stream.depth, 0, 2, rs.format.z16))
        cp = cs.add_video_stream(stream(rs.stream.color, 1, 3, rs.format.rgb8))
        ds.add_read_only_option(rs.option.depth_units, 0.001)
        dev.create_matcher(rs.matchers.default)
        sync = rs.syncer(100)
        ds.open(dp); cs.open(cp); ds.start(sync); cs.start(sync)
        def inject(i, rgb, depth):
            for sen, prof, arr, bpp in ((ds, dp, depth, 2), (cs, cp, rgb, 3)):
                f = rs.software_video_frame()
                f.pixels, f.bpp, f.stride = arr, bpp, W * bpp
                f.timestamp, f.frame_number = i * 1000.0 / fps, i
                f.domain = rs.timestamp_domain.hardware_clock
                f.profile = prof.as_video_stream_profile()
                if bpp == 2:
                    f.depth_units = 0.001
                sen.on_video_frame(f)
        return dev, sync, intr, inject, (ds, cs)
""")


def _env() -> dict:
    env = dict(os.environ)
    env["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    return env


def test_realsense_source_with_software_device():
    from uois_sam_ros.ros.sources import import_pyrealsense2

    rs = import_pyrealsense2()
    ns: dict = {}
    exec(SOFTWARE_DEVICE, ns)
    W, H = 64, 48
    dev, sync, intr, inject, _ = ns["software_realsense"](rs, W, H)
    src = RealSenseSource(rs, SyncerBackend(sync, intr, 0.001), spatial=False, hole_filling=False,
                          threaded=False)  # waits on this thread, so every injected frame is seen
    rng = np.random.default_rng(0)
    frames = {}
    for i in range(8):
        rgb = rng.integers(0, 255, (H, W, 3), dtype=np.uint8)
        depth = np.full((H, W), 500 + 10 * i, np.uint16)
        frames[i] = (rgb, depth)
        inject(i, rgb, depth)
    got = [s for s in (src.read() for _ in range(8)) if s is not None]
    assert len(got) >= 4
    for s in got:
        i = int(round((float(s.depth[0, 0]) - 0.5) / 0.01))  # depth encodes the frame number
        assert np.array_equal(s.rgb, frames[i][0]), "colour must come back pixel-exact with its depth"
        valid = s.depth > 0  # alignment may leave unmapped border pixels empty
        assert valid.mean() > 0.9
        assert np.allclose(s.depth[valid], frames[i][1][valid].astype(np.float32) * 0.001)
        assert s.intrinsics.fx == pytest.approx(60.0) and (s.intrinsics.width, s.intrinsics.height) == (W, H)


def test_realsense_reconnects_with_backoff():
    from uois_sam_ros.ros.sources import import_pyrealsense2

    rs = import_pyrealsense2()
    now = [0.0]

    class Flaky:
        def __init__(self):
            self.starts = 0

        def start(self):
            self.starts += 1
            if self.starts <= 2:
                raise RuntimeError("No device connected")
            i = rs.intrinsics()
            i.width, i.height, i.fx, i.fy, i.ppx, i.ppy = 4, 4, 1.0, 1.0, 2.0, 2.0
            return i, 0.001

        def wait(self, timeout_ms):
            raise RuntimeError("Frame didn't arrive within 1000")

        def stop(self):
            pass

    logs: list[str] = []
    b = Flaky()
    src = RealSenseSource(rs, b, log=logs.append, clock=lambda: now[0], threaded=False)
    assert src.read() is None and b.starts == 1  # fails, retry after 0.5 s
    assert src.read() is None and b.starts == 1  # too early: no retry
    now[0] = 0.6
    assert src.read() is None and b.starts == 2  # fails again, backoff doubled to 1 s
    now[0] = 1.0
    assert src.read() is None and b.starts == 2
    now[0] = 1.7
    assert src.read() is None and b.starts == 3 and src.connected is False  # connected, then the wait failed
    assert src.reconnects == 1
    assert len(logs) == 1 and "retry in 0.5 s" in logs[0], logs  # one warning per failure episode


def test_folder_source(real_rgbd_dir):
    src = FolderSource(real_rgbd_dir, loop=False)
    assert len(src) == 9
    s = src.read()
    assert s.rgb.shape == (480, 640, 3) and s.depth.dtype == np.float32
    assert s.intrinsics.fx == pytest.approx(612.937)
    assert 0.2 < float(np.median(s.depth[s.depth > 0])) < 3.0  # millimetres became metres
    for _ in range(8):
        src.read()
    with pytest.raises(EndOfSource):
        src.read()


def test_folder_source_errors(tmp_path):
    with pytest.raises(SourceError, match="image folder not found"):
        FolderSource(tmp_path / "nope")
    with pytest.raises(SourceError, match="camera.json"):
        FolderSource(tmp_path)
    (tmp_path / "camera.json").write_text('{"fx": 1, "fy": 1, "cx": 1, "cy": 1, "width": 4, "height": 4}')
    with pytest.raises(SourceError, match="no colour/depth pairs"):
        FolderSource(tmp_path)


def _run_script(body: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", body], cwd=REPO, env=_env(), capture_output=True,
                          text=True, timeout=timeout)


NODE_SCRIPT = """
import time, numpy as np
{first_import}
import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.parameter import Parameter
from sensor_msgs.msg import Image, CameraInfo
from uois_sam_ros.nodes.camera import CameraNode
from uois_sam_ros.ros.qos import SENSOR_QOS
from uois_sam_ros.ros.image import image_to_numpy
{setup}
rclpy.init()
node = CameraNode("camera", parameter_overrides=[Parameter(k, value=v) for k, v in {params!r}.items()],
                  **kw)
assert node.autostart(), node.configure_failure  # what spin_node does for autostart: true
probe = rclpy.create_node("probe")
got = {{"color": [], "depth": [], "info": []}}
probe.create_subscription(Image, "camera/color/image_raw", got["color"].append, SENSOR_QOS)
probe.create_subscription(Image, "camera/aligned_depth_to_color/image_raw", got["depth"].append, SENSOR_QOS)
probe.create_subscription(CameraInfo, "camera/color/camera_info", got["info"].append, SENSOR_QOS)
ex = SingleThreadedExecutor(); ex.add_node(node); ex.add_node(probe)
end = time.monotonic() + 20
while time.monotonic() < end and len(got["color"]) < {want}:
    {pump}
    ex.spin_once(timeout_sec=0.05)
ex.spin_once(timeout_sec=0.2)
dep = {{(m.header.stamp.sec, m.header.stamp.nanosec): m for m in got["depth"]}}
pairs = [(m, dep[(m.header.stamp.sec, m.header.stamp.nanosec)]) for m in got["color"]
         if (m.header.stamp.sec, m.header.stamp.nanosec) in dep]
assert pairs, "colour and depth share a stamp"
(c, d), i = pairs[-1], got["info"][-1]
assert c.encoding == "rgb8" and d.encoding == "16UC1", (c.encoding, d.encoding)
assert c.header.stamp.sec > 1e9, "real (wall clock) stamps"
{check}
print("FRAMES", len(got["color"]), c.width, c.height, i.k[0])
ex.shutdown(); node.destroy_node(); probe.destroy_node(); rclpy.shutdown()
"""


def test_camera_node_software_device_process_exits_cleanly():
    """Software RealSense through the node in its own process; exit code 0 after shutdown."""
    setup = "ns = {}\nexec(" + repr(SOFTWARE_DEVICE) + ", ns)\n" + textwrap.dedent("""
        from uois_sam_ros.ros.sources import import_pyrealsense2
        from uois_sam_ros.core.data.realsense import RealSenseSource, SyncerBackend
        rs = import_pyrealsense2()
        dev, sync, intr, inject, sensors = ns["software_realsense"](rs, 64, 48)
        rgb = np.arange(64 * 48 * 3, dtype=np.uint32).reshape(48, 64, 3).astype(np.uint8)
        n = [0]
        def pump():
            inject(n[0], rgb, np.full((48, 64), 750, np.uint16)); n[0] += 1
        kw = {"source": RealSenseSource(rs, SyncerBackend(sync, intr, 0.001))}
    """)
    check = ("assert np.array_equal(image_to_numpy(c), rgb)\n"
             "assert int(image_to_numpy(d)[0, 0]) == 750\nassert abs(i.k[0] - 60.0) < 1e-6")
    body = NODE_SCRIPT.format(first_import="", setup=setup, params={"rate": 30.0, "source": "realsense"},
                              want=3, pump="pump()", check=check)
    r = _run_script(body)
    assert r.returncode == 0, f"rc={r.returncode}\n{r.stdout}\n{r.stderr[-3000:]}"
    assert "FRAMES" in r.stdout


def test_pyrealsense2_loaded_first_through_guard_exits_cleanly():
    """Even when a user's script loads pyrealsense2 first via the guard, rclpy is loaded before it."""
    body = textwrap.dedent("""
        from uois_sam_ros.ros.sources import import_pyrealsense2
        rs = import_pyrealsense2()
        rs.software_device()
        import rclpy
        rclpy.init(); n = rclpy.create_node("x"); n.destroy_node(); rclpy.shutdown()
        print("DONE")
    """)
    r = _run_script(body)
    assert r.returncode == 0 and "DONE" in r.stdout, f"rc={r.returncode} {r.stderr[-2000:]}"


def test_import_order_warning():
    body = textwrap.dedent("""
        import warnings
        import pyrealsense2
        from uois_sam_ros.ros.sources import import_pyrealsense2, RealSenseImportOrderWarning
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            import_pyrealsense2()
        assert any(issubclass(x.category, RealSenseImportOrderWarning) for x in w)
        print("WARNED")
        import os; os._exit(0)  # this process has the bad order; skip the exit-time crash
    """)
    r = _run_script(body)
    assert "WARNED" in r.stdout, r.stderr[-2000:]


def test_camera_node_synthetic_process(tmp_path):
    body = NODE_SCRIPT.format(first_import="", setup="kw = {}", want=2, pump="pass",
                              params={"rate": 20.0, "source": "synthetic", "width": 160, "height": 120},
                              check="assert (c.width, c.height) == (160, 120)\n"
                                    "assert (image_to_numpy(d) > 0).any()")
    r = _run_script(body)
    assert r.returncode == 0, f"rc={r.returncode}\n{r.stderr[-3000:]}"
    assert "FRAMES" in r.stdout


def test_camera_node_folder_process(real_rgbd_dir):
    body = NODE_SCRIPT.format(first_import="", setup="kw = {}", want=2, pump="pass",
                              params={"rate": 20.0, "source": "folder", "folder": str(real_rgbd_dir)},
                              check="assert (c.width, c.height) == (640, 480) and abs(i.k[0] - 612.937) < 1e-3")
    r = _run_script(body)
    assert r.returncode == 0, f"rc={r.returncode}\n{r.stderr[-3000:]}"


def test_camera_node_main_exits_zero_on_sigint(real_rgbd_dir):
    """The installed entry point: SIGINT -> clean shutdown, exit code 0."""
    import signal

    p = subprocess.Popen([sys.executable, "-c", "from uois_sam_ros.nodes.camera import main; main()",
                          "--ros-args", "-p", "source:=folder", "-p", f"folder:={real_rgbd_dir}"],
                         cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(4)
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 0, err[-2000:]
    assert "source folder" in err
