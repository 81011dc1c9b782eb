"""Shared by test_processes.py and test_signals.py: a topic listener in the test process and
the check for error lines in what a process printed.

The listener runs on its own rclpy context (and domain, when given), so it is a separate DDS
participant from anything else in the test process, and the graph's processes are separate
processes from it: every message it records crossed a process boundary.
"""

from __future__ import annotations

import itertools
import os
import random
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import rclpy
from rclpy.context import Context
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import QoSProfile

# What a clean exit must not print (stdout and stderr together).
ERROR_MARKERS = ("Error", "[ERROR]", "[FATAL]", "error:", "Traceback", "terminate called", "RCLError",
                 "Segmentation fault", "core dumped", "never retrieved", "Exception ignored")


def error_lines(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if any(m in ln for m in ERROR_MARKERS)]


def other_domain(domain: int, k: int) -> int:
    """A ROS domain id other than `domain` (1..101), different for each k = 1, 2, ..."""
    return (domain - 1 + k) % 101 + 1


def random_delay(lo: float, hi: float) -> float:
    return random.Random().uniform(lo, hi)


def stamp_ns(msg: Any) -> int:
    return msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec


def _ticks_of(pid: int) -> int:
    try:
        fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    except OSError:
        return 0
    return int(fields[11]) + int(fields[12])  # utime + stime


def _busy_ticks() -> int:
    cpu = [int(v) for v in open("/proc/stat").readline().split()[1:]]
    return sum(cpu[:8]) - cpu[3] - cpu[4]  # all but idle and iowait


class OtherLoad:
    """How many CPU cores other work used while a test's own processes ran (Linux /proc).

    A pipeline that needs most of a 2-core machine cannot keep 1 Hz while other jobs take the
    cores; this tells that case apart from a regression of the graph itself.
    """

    def __init__(self) -> None:
        self.hz = os.sysconf("SC_CLK_TCK")
        self.t0, self.busy0, self.self0 = time.monotonic(), _busy_ticks(), _ticks_of(os.getpid())
        self.cores = float("nan")

    def stop(self, own_pids: list[int]) -> float:
        """Cores used by others since construction; own_pids started after it (their whole CPU counts)."""
        wall = time.monotonic() - self.t0
        busy = _busy_ticks() - self.busy0
        mine = sum(_ticks_of(p) for p in own_pids) + _ticks_of(os.getpid()) - self.self0
        self.cores = max(0.0, (busy - mine) / self.hz / wall)
        return self.cores


class TopicListener:
    """Records, per topic, the header stamp of each message: arrival time and image size."""

    _ids = itertools.count()

    def __init__(self, topics: dict[str, tuple[type, QoSProfile]], domain_id: int | None = None) -> None:
        self.context = Context()
        rclpy.init(context=self.context, domain_id=domain_id)
        self.node = rclpy.create_node(f"uois_test_listener_{next(self._ids)}", context=self.context)
        self.stamps: dict[str, dict[int, tuple[float, int, int]]] = {t: {} for t in topics}
        for topic, (msg_type, qos) in topics.items():
            self.node.create_subscription(msg_type, topic, partial(self._on_msg, topic), qos)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)

    def _on_msg(self, topic: str, msg: Any) -> None:
        self.stamps[topic].setdefault(stamp_ns(msg), (time.monotonic(), getattr(msg, "width", 0),
                                                      getattr(msg, "height", 0)))

    def spin_until(self, done: Callable[[], bool], timeout: float,
                   alive: Callable[[], bool] = lambda: True) -> bool:
        """Spin until done() (True), timeout or alive() turns False (False)."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if done():
                return True
            if not alive():
                return False
            self.executor.spin_once(timeout_sec=0.05)
        return done()

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)
