#!/usr/bin/env bash
# One-command set-up for a fresh Debian/Ubuntu machine (README "Set-up").
#
#   bash scripts/setup.sh            # venv in ./.venv
#   UOIS_VENV=/path bash scripts/setup.sh
#
# Steps (each skipped when its inputs have not changed since the last run, so a second
# run finishes in seconds and changes nothing):
#   1. apt packages: cmake, g++, libusb-1.0-0 (open3d, pyrealsense2)
#   2. venv + pinned Python dependencies: requirements/{torch,ros,base}.txt, in that order
#   3. patch the ROS wheels' exported CMake include paths to this venv's Python and numpy
#   4. build this package's messages into the venv (CMake + rosidl)
#   5. editable install of the Python package (console scripts, uois_sam_ros.core)
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${UOIS_VENV:-$REPO/.venv}"
PY="${UOIS_PYTHON:-python3}"
STAMPS="$VENV/.uois_stamps"

say() { printf '\033[1m[setup]\033[0m %s\n' "$*"; }
die() { printf '[setup] ERROR: %s\n' "$*" >&2; exit 1; }
hash_of() { cat "$@" | sha256sum | cut -d' ' -f1; }
stamp_ok() { [[ -f "$STAMPS/$1" && "$(cat "$STAMPS/$1")" == "$2" ]]; }
stamp_set() { mkdir -p "$STAMPS"; echo "$2" > "$STAMPS/$1"; }

# 1. system packages -------------------------------------------------------------------
APT_PKGS=(cmake g++ make libusb-1.0-0 python3-venv)
missing=()
for p in "${APT_PKGS[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
# python3-venv is only needed when the interpreter cannot make venvs by itself
if [[ " ${missing[*]} " == *" python3-venv "* ]] && "$PY" -m venv --help >/dev/null 2>&1; then
  missing=("${missing[@]/python3-venv}")
fi
missing=($(printf '%s\n' "${missing[@]}" | grep -v '^$' || true))
if ((${#missing[@]})); then
  say "apt: installing ${missing[*]}"
  SUDO=""; [[ $(id -u) -ne 0 ]] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}"
else
  say "apt: ${APT_PKGS[*]} present"
fi

# 2. venv and Python dependencies ------------------------------------------------------
"$PY" -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else 1)' \
  || die "Python 3.11 is required (the ROS 2 kilted wheels are cp311); set UOIS_PYTHON=/path/to/python3.11"
if [[ ! -x "$VENV/bin/python" ]]; then
  say "creating venv $VENV"
  "$PY" -m venv "$VENV"
fi
VPY="$VENV/bin/python"
PIP=("$VPY" -m pip install --disable-pip-version-check -q)
for req in torch ros base; do
  h=$(hash_of "$REPO/requirements/$req.txt")
  if stamp_ok "req-$req" "$h"; then
    say "pip: requirements/$req.txt up to date"
  else
    note=""; [[ $req == torch ]] && note=" (about 2.5 GB of wheels: allow a few minutes)"
    say "pip: installing requirements/$req.txt$note"
    t0=$SECONDS
    "${PIP[@]}" -r "$REPO/requirements/$req.txt" -c "$REPO/requirements/torch.txt"
    say "pip: requirements/$req.txt done in $((SECONDS - t0)) s"
    stamp_set "req-$req" "$h"
  fi
done

# 3. the ROS wheels were built under /opt/python/cp311-cp311; point their exported
#    include paths at this venv's Python and numpy headers, or CMake stops.
PYINC=$("$VPY" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
NPINC=$("$VPY" -c 'import numpy; print(numpy.get_include())')
patched=0
while IFS= read -r f; do
  if grep -q '/opt/python/cp311-cp311' "$f"; then
    sed -i -E "s#/opt/python/cp311-cp311/include/python3\.11#${PYINC}#g; s#/opt/python/cp311-cp311/lib/python3\.11/site-packages/numpy/_core/include#${NPINC}#g" "$f"
    patched=$((patched + 1))
  fi
done < <(ls "$VENV"/share/*/cmake/*rosidl_generator_pyExport.cmake 2>/dev/null)
say "cmake exports: patched $patched file(s)"

# 4. messages ----------------------------------------------------------------------------
export AMENT_PREFIX_PATH="$VENV"
export CMAKE_PREFIX_PATH="$VENV"
SITE=$("$VPY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
h=$(hash_of "$REPO"/msg/*.msg "$REPO"/srv/*.srv "$REPO/CMakeLists.txt" "$REPO/package.xml" "$REPO/requirements/ros.txt")
if stamp_ok msgs "$h" && [[ -d "$SITE/uois_sam_ros/msg" ]]; then
  say "messages: up to date"
else
  say "messages: building with CMake + rosidl"
  t0=$SECONDS
  BUILD="$VENV/.uois_build"
  rm -rf "$BUILD"
  cmake -S "$REPO" -B "$BUILD" -DCMAKE_INSTALL_PREFIX="$VENV" -DCMAKE_PREFIX_PATH="$VENV" \
    -DPython3_EXECUTABLE="$VPY" -DBUILD_TESTING=OFF -DUOIS_INSTALL_PYTHON=OFF \
    -DCMAKE_BUILD_TYPE=Release > "$VENV/.uois_cmake.log" 2>&1 \
    || { tail -30 "$VENV/.uois_cmake.log" >&2; die "CMake configure failed (log: $VENV/.uois_cmake.log)"; }
  cmake --build "$BUILD" -j"$(nproc)" >> "$VENV/.uois_cmake.log" 2>&1 \
    || { tail -30 "$VENV/.uois_cmake.log" >&2; die "message build failed (log: $VENV/.uois_cmake.log)"; }
  cmake --install "$BUILD" >> "$VENV/.uois_cmake.log" 2>&1 \
    || { tail -30 "$VENV/.uois_cmake.log" >&2; die "message install failed (log: $VENV/.uois_cmake.log)"; }
  say "messages: built in $((SECONDS - t0)) s"
  stamp_set msgs "$h"
fi

# 5. the package itself (editable: the source tree is what runs) ---------------------------
h=$(hash_of "$REPO/setup.py" "$REPO/setup.cfg"; echo "$REPO")
if stamp_ok pkg "$h" && "$VPY" -c 'import uois_sam_ros.core' >/dev/null 2>&1; then
  say "package: up to date"
else
  say "package: pip install -e ."
  "${PIP[@]}" --no-deps --no-build-isolation -e "$REPO" --config-settings editable_mode=compat
  stamp_set pkg "$h"
fi

# check -------------------------------------------------------------------------------------
cd "$(mktemp -d)"  # an empty folder: nothing there can shadow a module
"$VENV/bin/python" - <<'PYCHECK'
import uois_sam_ros.core  # noqa: F401
import rclpy  # noqa: F401
from uois_sam_ros.msg import InstanceArray  # noqa: F401
import torch, torchvision, segment_anything, timm  # noqa: E401,F401
print("[setup] ok: uois_sam_ros.core, uois_sam_ros.msg, rclpy, torch", torch.__version__,
      "torchvision", torchvision.__version__)
PYCHECK
say "done. Run the tests with:  .venv/bin/python -m pytest test"
