"""uois_sam_ros.core imports no ROS: by source scan, at run time, and from a pip install without ROS."""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CORE = REPO / "uois_sam_ros" / "core"

# Top-level modules (and package subtrees) that core may not import: the ROS client and
# message packages, our generated messages, and the layers above core (DESIGN.md section 1).
FORBIDDEN = ("rclpy", "sensor_msgs", "std_msgs", "builtin_interfaces", "geometry_msgs", "visualization_msgs",
             "rosidl_runtime_py", "launch", "launch_ros", "uois_sam_ros.msg", "uois_sam_ros.ros",
             "uois_sam_ros.nodes", "uois_sam_ros.apps")


def _is_forbidden(name: str) -> bool:
    return any(name == f or name.startswith(f + ".") for f in FORBIDDEN)


def forbidden_imports(source: str, module: str) -> list[str]:
    """'line N: name' for every forbidden import in source; module is the file's dotted name."""
    tree = ast.parse(source)
    package = module.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # resolve "from ..ros import x" against the file's package
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            names = [mod] + [f"{mod}.{a.name}" for a in node.names]
        elif (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)
              and ((isinstance(node.func, ast.Name) and node.func.id == "__import__")
                   or (isinstance(node.func, ast.Attribute) and node.func.attr == "import_module"))):
            names = [node.args[0].value]
        hits = [n for n in names if _is_forbidden(n)]
        if hits:
            found.append(f"line {node.lineno}: {hits[0]}")
    return found


def core_files() -> list[Path]:
    return sorted(CORE.rglob("*.py"))


def test_scanner_catches_every_import_form() -> None:
    src = textwrap.dedent("""
        import numpy as np
        import rclpy.node
        from sensor_msgs.msg import Image
        from uois_sam_ros import msg
        from uois_sam_ros.msg import InstanceArray
        from ..ros.image import numpy_to_image
        from . import types
        import importlib
        importlib.import_module("std_msgs.msg")
        __import__("launch")
        import launcher_tool
    """)
    found = forbidden_imports(src, "uois_sam_ros.core.example")
    assert found == ["line 3: rclpy.node", "line 4: sensor_msgs.msg", "line 5: uois_sam_ros.msg",
                     "line 6: uois_sam_ros.msg", "line 7: uois_sam_ros.ros.image",
                     "line 10: std_msgs.msg", "line 11: launch"]


def test_core_sources_import_no_ros() -> None:
    files = core_files()
    assert len(files) >= 3, f"core package not found under {CORE}"
    bad = {}
    for f in files:
        rel = f.relative_to(REPO).with_suffix("")
        module = ".".join(rel.parts).removesuffix(".__init__")
        if f.name == "__init__.py":
            module += ".__init__"
        hits = forbidden_imports(f.read_text(), module)
        if hits:
            bad[str(f.relative_to(REPO))] = hits
    assert not bad, f"core modules import ROS or upper layers: {bad}"


def test_importing_every_core_module_loads_no_rclpy() -> None:
    code = textwrap.dedent("""
        import importlib, json, pkgutil, sys
        import uois_sam_ros.core as core
        names = ["uois_sam_ros.core"] + [m.name for m in pkgutil.walk_packages(core.__path__, "uois_sam_ros.core.")]
        for n in names:
            importlib.import_module(n)
        print(json.dumps({"modules": names, "loaded": sorted(sys.modules)}))
    """)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env,
                       cwd=REPO)
    assert r.returncode == 0, f"importing the core modules failed:\n{r.stderr[-3000:]}"
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert "uois_sam_ros.core.types" in out["modules"] and "uois_sam_ros.core.config" in out["modules"]
    ros = [m for m in out["loaded"] if _is_forbidden(m) or m.startswith("rclpy")]
    assert not ros, f"importing uois_sam_ros.core.* loaded ROS modules: {ros}"


def _base_python() -> Path:
    """The interpreter the project venv was made from: it has no ROS."""
    cfg = Path(sys.prefix) / "pyvenv.cfg"
    if cfg.is_file():
        for line in cfg.read_text().splitlines():
            key, _, value = line.partition("=")
            if key.strip() == "executable" and Path(value.strip()).is_file():
                return Path(value.strip())
    return Path(getattr(sys, "_base_executable", sys.executable))


@pytest.mark.slow
def test_pip_install_without_ros(tmp_path: Path) -> None:
    base = _base_python()
    probe = subprocess.run([str(base), "-c", "import rclpy"], capture_output=True)
    if probe.returncode == 0:
        pytest.skip(f"base interpreter {base} has rclpy itself; cannot test a ROS-free install with it")
    src = tmp_path / "src"
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(
        ".venv", ".git", "build", "install", "log", "__pycache__", "*.egg-info", ".pytest_cache",
        ".ruff_cache", "out", ".whl", ".gl"))
    venv = tmp_path / "venv"
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "VIRTUAL_ENV", "AMENT_PREFIX_PATH", "LD_LIBRARY_PATH", "PYTHONHOME")}

    def run(*cmd: str, timeout: int = 240) -> subprocess.CompletedProcess:
        return subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout, env=env, cwd=tmp_path)

    r = run(str(base), "-m", "venv", str(venv))
    assert r.returncode == 0, r.stderr
    py = str(venv / "bin" / "python")
    pip = (py, "-m", "pip", "install", "--disable-pip-version-check", "-q")
    r = run(*pip, "numpy", "pyyaml")
    if r.returncode != 0 and ("Could not find a version" in r.stderr or "NewConnectionError" in r.stderr
                              or "Network is unreachable" in r.stderr):
        pytest.skip(f"PyPI not reachable for numpy/pyyaml: {r.stderr.strip()[-300:]}")
    assert r.returncode == 0, r.stderr
    r = run(*pip, "--no-deps", str(src), timeout=300)
    assert r.returncode == 0, f"pip install . failed:\n{r.stdout}\n{r.stderr}"
    shutil.rmtree(src)  # the import below must come from the venv, not a source tree
    check = textwrap.dedent("""
        import importlib, json
        import uois_sam_ros.core as core
        from uois_sam_ros.core import Frame, Instances
        res = {"core_file": core.__file__, "types": [Frame.__name__, Instances.__name__]}
        for name in ("uois_sam_ros.msg", "rclpy"):
            try:
                importlib.import_module(name)
                res[name] = "imported"
            except ImportError as e:
                res[name] = type(e).__name__
        print(json.dumps(res))
    """)
    r = run(py, "-c", check)
    assert r.returncode == 0, f"import uois_sam_ros.core failed in a ROS-free venv:\n{r.stderr}"
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert res["core_file"].startswith(str(venv)), res
    assert res["types"] == ["Frame", "Instances"]
    assert res["uois_sam_ros.msg"] == "ModuleNotFoundError", res
    assert res["rclpy"] == "ModuleNotFoundError", res
