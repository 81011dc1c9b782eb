"""Test environment: ROS 2 over loopback only, a random domain per run, and shared paths."""

from __future__ import annotations

import os
import random
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# ../shared beside the checkout; UOIS_SHARED points elsewhere (e.g. a colcon workspace's src/).
SHARED = Path(os.environ.get("UOIS_SHARED", REPO.parent / "shared"))
FIXTURES = SHARED / "fixtures" / "real_rgbd"

# Must be set before rclpy initialises: Fast DDS would otherwise multicast off the machine,
# and parallel test runs would hear each other.
os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
# Never the caller's own domain: a test graph must not talk to a live robot's /instances.
os.environ["ROS_DOMAIN_ID"] = os.environ.get("UOIS_TEST_ROS_DOMAIN_ID") or str(random.Random().randint(1, 101))
venv = Path(sys.prefix)
if (venv / "share" / "ament_index").is_dir():
    os.environ.setdefault("AMENT_PREFIX_PATH", str(venv))


@pytest.fixture(scope="session")
def real_rgbd_dir() -> Path:
    """The RealSense fixture frames in ../shared (or $UOIS_SHARED); tests that need them skip when absent."""
    d = FIXTURES / "uois_tabletop"
    if not d.is_dir():
        pytest.skip(f"shared fixtures not found at {d}")
    return d


@pytest.fixture(scope="module")
def one_torch_thread():
    """Small models: one torch thread is faster than two fighting over a busy 2-core machine.
    Modules of such tests say pytestmark = pytest.mark.usefixtures("one_torch_thread")."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
