"""Polling wait shared by the tests that drive rclpy nodes from a spinning thread."""

from __future__ import annotations

import time
from collections.abc import Callable


def wait_until(cond: Callable[[], object], timeout: float = 30.0) -> bool:
    """True as soon as cond() is truthy (checked every 20 ms), False once timeout seconds passed."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.02)
    return False
