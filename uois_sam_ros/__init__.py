"""uois_sam_ros: unseen object instance segmentation (UOIS-SAM) for ROS 2.

The hand-written code and the generated messages (``uois_sam_ros.msg``) can live in two
directories (the editable source tree and the venv's site-packages where CMake installed
the messages), so the package path is extended to cover both.
"""

from pkgutil import extend_path

__path__ = extend_path(__path__, __name__)  # noqa: F821

__version__ = "0.1.0"
