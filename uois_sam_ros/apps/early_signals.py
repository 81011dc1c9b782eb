"""SIGINT/SIGTERM caught from the first import of a command-line program, before its heavy imports.

Until a program installs handlers, Python turns SIGINT into a KeyboardInterrupt traceback and
SIGTERM ends the process with status -15, whatever it is doing. uois-sam-bringup imports
rclpy, numpy and the graph description before its run() can install handlers (about a second
on a busy machine), so it imports this module before anything else. When the process runs
bringup as its program (``uois-sam-bringup`` or ``python -m uois_sam_ros.apps.bringup``), a
signal from then on only sets STOP, which run() takes as a stop request. Imported by anything
else (the demo, tests), it installs nothing. Standard library only, so importing it is instant.
"""

from __future__ import annotations

import os
import signal
import sys
import threading

STOP = threading.Event()
# Module -> console script of the programs that want their signals held from the start.
PROGRAMS = {"uois_sam_ros.apps.bringup": "uois-sam-bringup", "uois_sam_ros.apps.launcher": "uois-sam-launch"}
SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _request_stop(signum: int, _frame: object) -> None:
    STOP.set()


def running_as(module: str) -> bool:
    """True when this process's program is `module` (python -m) or its console script."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    if spec is not None and spec.name == module:
        return True
    return bool(sys.argv) and os.path.basename(sys.argv[0]) == PROGRAMS.get(module)


def _install() -> bool:
    if threading.current_thread() is not threading.main_thread():
        return False
    if not any(running_as(m) for m in PROGRAMS):
        return False
    for s in SIGNALS:
        if signal.getsignal(s) in (signal.default_int_handler, signal.SIG_DFL):  # never a caller's own
            signal.signal(s, _request_stop)
    return True


INSTALLED = _install()
