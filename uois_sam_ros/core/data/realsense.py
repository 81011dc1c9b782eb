"""RealSense frames through pyrealsense2: depth aligned to colour, filters, reconnect with backoff.

pyrealsense2 is never imported here: it bundles its own Fast DDS, and a process that loads it
before ROS 2's segfaults at exit. ``RealSenseSource`` takes the module as an argument; ROS
processes get it from ``uois_sam_ros.ros.sources.import_pyrealsense2``.
"""

from __future__ import annotations

import time
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
        self.pipeline = pipe
        intr = profile.get_stream(rs.stream.color).as_video_stream_profile().get_intrinsics()
        scale = profile.get_device().first_depth_sensor().get_depth_scale()
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


class RealSenseSource:
    """Depth aligned to colour, optional spatial/temporal/hole-filling filters, reconnect with backoff.

    The filters run on the raw depth before alignment (librealsense's recommended order).
    When the device disappears, read() returns None and retries start() after 0.5 s, 1 s,
    2 s, ... up to max_backoff, so a replugged camera comes back without a restart.
    """

    name = "realsense"

    def __init__(self, rs: Any, backend: RealSenseBackend, spatial: bool = False, temporal: bool = False,
                 hole_filling: bool = False, timeout_ms: int = 1000, max_backoff: float = 8.0,
                 log: Callable[[str], None] | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.rs, self.backend, self.timeout_ms = rs, backend, int(timeout_ms)
        self.filters = []
        if spatial:
            self.filters.append(rs.spatial_filter())
        if temporal:
            self.filters.append(rs.temporal_filter())
        if hole_filling:
            self.filters.append(rs.hole_filling_filter())
        self.align = rs.align(rs.stream.color)
        self.max_backoff, self.log, self.clock = float(max_backoff), log or (lambda m: None), clock
        self.connected = False
        self.backoff = 0.5
        self.next_try = 0.0
        self.reconnects = 0
        self.intrinsics: Intrinsics | None = None
        self.depth_scale = 0.001

    def _connect(self) -> bool:
        now = self.clock()
        if now < self.next_try:
            return False
        try:
            intr, self.depth_scale = self.backend.start()
        except RuntimeError as e:
            self.log(f"RealSense not available ({e}); retrying in {self.backoff:.1f} s")
            self.next_try = now + self.backoff
            self.backoff = min(self.backoff * 2.0, self.max_backoff)
            return False
        self.intrinsics = Intrinsics(float(intr.fx), float(intr.fy), float(intr.ppx), float(intr.ppy),
                                     int(intr.width), int(intr.height))
        self.connected, self.backoff = True, 0.5
        return True

    def read(self) -> Sample | None:
        if not self.connected and not self._connect():
            return None
        try:
            frames = self.backend.wait(self.timeout_ms)
        except RuntimeError as e:
            self.log(f"RealSense frame wait failed ({e}); reconnecting")
            self.backend.stop()
            self.connected = False
            self.reconnects += 1
            self.next_try = self.clock() + self.backoff
            return None
        return self.convert(frames)

    def convert(self, frames: Any) -> Sample | None:
        """Filter, align and copy one frameset; None while the syncer still lacks a colour/depth pair."""
        if frames.size() < 2:
            return None
        for f in self.filters:
            frames = f.process(frames).as_frameset()
        aligned = self.align.process(frames)
        depth_f, color_f = aligned.get_depth_frame(), aligned.get_color_frame()
        if not depth_f or not color_f:
            return None
        rgb = np.array(color_f.get_data(), dtype=np.uint8, copy=True)
        depth = np.asarray(depth_f.get_data(), dtype=np.uint16).astype(np.float32) * self.depth_scale
        return Sample(rgb=rgb, depth=depth, intrinsics=self.intrinsics, label=None,
                      name=f"realsense_{color_f.get_frame_number()}")

    def close(self) -> None:
        self.backend.stop()
        self.connected = False
