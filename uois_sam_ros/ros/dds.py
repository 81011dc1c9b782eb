"""The package's Fast DDS profile: camera-sized messages over shared memory between processes.

Fast DDS's default shared-memory segment is 512 KiB per participant. A 640x480 rgb8 image
(0.9 MB) and its 16UC1 depth (0.6 MB) do not fit, so between processes the frames went out
as fragmented UDP, and with best-effort QoS one lost fragment lost the frame: run as one
process per node, the graph answered about one frame in eight. The shipped profile
(uois_sam_ros/data/fastdds_shm.xml) gives every participant a larger segment.

apply_default_profile() points Fast DDS at that profile unless the user configured Fast DDS
themselves. It must run before rclpy.init(): Fast DDS reads the profile once per process,
when the first participant is created. It prints nothing; callers log what it returns.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping
from pathlib import Path

# Fast DDS 3.x (ROS 2 Kilted and later) reads FASTDDS_DEFAULT_PROFILES_FILE. Fast DDS 2.x
# (Humble, Iron, Jazzy) reads FASTRTPS_DEFAULT_PROFILES_FILE, which Kilted's rmw_fastrtps
# warns about, so the legacy name is set only where ROS_DISTRO names a Fast DDS 2.x distro.
PROFILE_ENV = "FASTDDS_DEFAULT_PROFILES_FILE"
LEGACY_PROFILE_ENV = "FASTRTPS_DEFAULT_PROFILES_FILE"
FASTDDS2_DISTROS = ("humble", "iron", "jazzy")

# Any of these means the user configures Fast DDS (or another middleware) on purpose: keep theirs.
_USER_CONFIG_ENV = (
    PROFILE_ENV,
    LEGACY_PROFILE_ENV,
    "RMW_FASTRTPS_USE_QOS_FROM_XML",  # QoS from the user's XML profiles
    "FASTDDS_BUILTIN_TRANSPORTS",  # the user picked Fast DDS's transports by name
    "SKIP_DEFAULT_XML_FILE",
)

# Shared-memory segment per participant in the shipped profile (keep equal to the XML).
SEGMENT_SIZE = 16 * 1024 * 1024


def default_profile_path() -> Path:
    """The profile XML shipped inside the Python package (pip and colcon installs alike)."""
    return Path(__file__).resolve().parents[1] / "data" / "fastdds_shm.xml"


def user_configured(env: MutableMapping[str, str] | None = None) -> str | None:
    """The name of the variable through which the user configures the middleware, else None."""
    env = os.environ if env is None else env
    ours = str(default_profile_path())
    for name in _USER_CONFIG_ENV:
        if env.get(name) and env.get(name) != ours:  # our own profile, set by a parent process, is not theirs
            return name
    rmw = env.get("RMW_IMPLEMENTATION", "")
    if rmw and "fastrtps" not in rmw:  # e.g. rmw_cyclonedds_cpp: a Fast DDS profile means nothing
        return "RMW_IMPLEMENTATION"
    return None


def apply_default_profile(env: MutableMapping[str, str] | None = None) -> str | None:
    """Point Fast DDS at the shipped profile unless the user configured it; the path set, or None.

    Call before rclpy.init(). Child processes started with this environment inherit it, so
    the launcher and the launch file get the same transport in every node.
    """
    env = os.environ if env is None else env
    if user_configured(env) is not None:
        return None
    path = default_profile_path()
    if not path.is_file():  # a broken install: Fast DDS would log an error per process
        return None
    env[PROFILE_ENV] = str(path)
    if env.get("ROS_DISTRO", "").strip().lower() in FASTDDS2_DISTROS:
        env[LEGACY_PROFILE_ENV] = str(path)
    return str(path)
