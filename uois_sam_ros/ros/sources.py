"""The one safe way for a ROS process to load pyrealsense2.

pyrealsense2 bundles its own Fast DDS. If it is loaded before rclpy in a process that then
creates a node, Python segfaults at exit (rc 139, DESIGN.md section 4); loaded after rclpy
it is harmless. This module imports rclpy at its top, so anything that gets pyrealsense2
through import_pyrealsense2() has rclpy's libraries loaded first.
"""

from __future__ import annotations

import sys
import warnings
from types import ModuleType

# Checked before rclpy is imported below: was pyrealsense2 loaded first?
_PRELOADED = "pyrealsense2" in sys.modules and "rclpy" not in sys.modules

import rclpy  # noqa: E402,F401 - must be loaded before pyrealsense2 (see above)


class RealSenseImportOrderWarning(RuntimeWarning):
    """pyrealsense2 was imported before rclpy: the process will crash at exit."""


def import_pyrealsense2() -> ModuleType:
    """pyrealsense2, loaded after rclpy; warns when the caller already loaded it in the wrong order."""
    if _PRELOADED:
        warnings.warn("pyrealsense2 was imported before rclpy in this process; its bundled Fast DDS "
                      "will make Python segfault at exit. Import rclpy (or uois_sam_ros.nodes.camera) "
                      "first.", RealSenseImportOrderWarning, stacklevel=2)
    try:
        import pyrealsense2
    except ImportError as e:
        raise ImportError("the realsense source needs pyrealsense2 (pip install pyrealsense2)") from e
    return pyrealsense2
