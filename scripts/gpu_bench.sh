#!/usr/bin/env bash
# uois-sam-bench stages on a GPU machine that has Python + a CUDA torch stack, but no ROS and no
# package index (README "Benchmarks"). Three modes, so that the GPU minutes go to measuring:
#
#   bash scripts/gpu_bench.sh prepare [WHEELS]  # here, with PyPI: fetch the wheels the GPU machine lacks
#   bash scripts/gpu_bench.sh dry-run [WHEELS]  # here: the same install into a temporary venv that sees
#                                               # only a CPU torch stack, then a 1-repeat CPU bench
#   bash scripts/gpu_bench.sh run [WHEELS]      # there: install, then fp32 and bf16 benches into $OUT
#
# WHEELS defaults to .whl in the repo root (git-ignored; name it in the device tool's carry).
# Environment: PYTHON (the interpreter that holds torch; run: python3, prepare/dry-run: .venv/bin/python
# when present), OUT (run: where the JSON and logs go, default out/gpu_bench), MODELS, DTYPES, REPEATS,
# GRID, THREADS, DECODERS (default folded,library: both decoder layouts per model), ENCODERS (default
# chunked; chunked,library adds the library's encoder attention per model), COMPILE=1 (adds
# --compile: sam.compile, its compile time is paid in the warm-up) (run's bench options), DEVICE (run: cuda;
# cpu walks the same path on a machine without one).
#
# The install, in every mode: a venv made with --without-pip whose site-packages holds a .pth that adds
# the torch interpreter's site-packages *after* the venv's own. Not --system-site-packages: the GPU
# machine's python3 is itself a venv (/opt/torch/.venv), and a venv made from it with
# --system-site-packages sees the base interpreter's packages, not that venv's torch. The carried
# wheels go into the venv (so they shadow other versions there) with --no-index --no-deps: timm
# declares huggingface_hub and safetensors, which it only imports when present, and a resolver
# without an index would fail on them. The package itself: pip install --no-deps --no-build-isolation .
# (an isolated build would need setuptools from an index). Then an import probe names anything missing.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MODE="${1:-}"
WHEELS="$(realpath -m "${2:-$REPO/.whl}")"

# Pure-Python wheels the bench imports that no CUDA torch image is expected to have (pins:
# requirements/base.txt). py3-none-any, so one file serves 3.11 here and 3.12 there.
REQUIRED=(segment-anything==1.0 timm==1.0.31 mobilesam-mirror==1.0.0)
# module:requirement pairs installed only where the module does not import (a bare torch install has
# neither; the H200 image has both). pyyaml is binary: prepare fetches cp312 and this Python's build.
FALLBACK=(yaml:pyyaml==6.0.3 tqdm:tqdm==4.70.1)
# What the bench imports and the torch image must provide itself (binary, matched to its torch).
PROBE="import torch, torchvision, numpy, cv2, scipy, yaml, segment_anything, timm, mobile_sam, uois_sam_ros.bench.speed"

say() { printf '[gpu_bench] %s\n' "$*"; }
die() { printf '[gpu_bench] ERROR: %s\n' "$*" >&2; exit 1; }
default_python() { if [[ -x "$REPO/.venv/bin/python" ]]; then echo "$REPO/.venv/bin/python"; else echo python3; fi; }

prepare() {
    local py="${PYTHON:-$(default_python)}"
    mkdir -p "$WHEELS"
    say "downloading into $WHEELS with $py"
    local dl=("$py" -m pip download --disable-pip-version-check -q --no-deps --only-binary=:all: -d "$WHEELS")
    "${dl[@]}" --python-version 3.12 --implementation cp --abi cp312 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 --platform any "${REQUIRED[@]}" "${FALLBACK[@]#*:}"
    "${dl[@]}" "${FALLBACK[@]#*:}"  # this machine's builds, for dry-run
    ls -l "$WHEELS"
    say "$(du -sh "$WHEELS" | cut -f1) in $WHEELS"
}

# install VENV HOST_SITE: the venv, the .pth to HOST_SITE, the carried wheels, the package
install_into() {
    local venv="$1" host_site="$2" base_py="$3"
    [[ -d "$WHEELS" ]] || die "no wheel folder $WHEELS: run 'bash scripts/gpu_bench.sh prepare' where PyPI is reachable"
    "$base_py" -m venv --without-pip "$venv"
    local vsite
    vsite="$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
    # addsitedir (not a bare path line) also runs the host's own .pth files
    echo "import site; site.addsitedir('$host_site')" > "$vsite/zz_host_torch.pth"
    "$venv/bin/python" -m pip --version >/dev/null || die "no pip in $host_site (the venv uses the host's pip)"
    local pip=("$venv/bin/python" -m pip install --disable-pip-version-check -q --no-index --no-deps
               --no-build-isolation --find-links "$WHEELS")
    "${pip[@]}" "${REQUIRED[@]}"
    local pair
    for pair in "${FALLBACK[@]}"; do
        if ! "$venv/bin/python" -c "import ${pair%%:*}" 2>/dev/null; then
            say "the machine lacks ${pair%%:*}: installing ${pair#*:} from $WHEELS"
            "${pip[@]}" "${pair#*:}"
        fi
    done
    # build a copy: pip writes build/ and *.egg-info next to setup.py, and the checkout stays clean
    local src="$venv/src"
    mkdir -p "$src"
    (cd "$REPO" && tar --exclude=__pycache__ -cf - setup.py setup.cfg pyproject.toml uois_sam_ros) | tar -xf - -C "$src"
    "${pip[@]}" "$src"
    (cd / && "$venv/bin/python" -W ignore -c "$PROBE") || die "import probe failed in $venv (see above): carry the missing wheel"
    (cd / && "$venv/bin/python" -c "import sys, torch, uois_sam_ros; sys.modules['rclpy'] = None
print(f'python {sys.version.split()[0]}, torch {torch.__version__} from {torch.__file__}')
print(f'uois_sam_ros from {uois_sam_ros.__file__}')")
}

host_site_of() {  # the site-packages directory that holds the interpreter's torch
    "$1" -c 'import os, torch; print(os.path.dirname(os.path.dirname(torch.__file__)))' \
        || die "$1 has no torch: set PYTHON to the interpreter that holds the CUDA torch stack"
}

base_of() {  # the real interpreter behind a (possibly venv) python, to make a venv from
    "$1" -c 'import sys; print(getattr(sys, "_base_executable", sys.executable))'
}

# dry-run: emulate the GPU machine here. The host is a folder of symlinks to the distributions a CUDA
# torch image has (torch and what it requires, torchvision, numpy, opencv, scipy, pillow, pip,
# setuptools), taken from this checkout's venv; segment-anything, timm, mobilesam-mirror, open3d, rclpy,
# pyyaml and tqdm are left out, so they come from the wheels or are proved unneeded.
emulate_host() {
    local py="$1" dest="$2"
    "$py" - "$dest" <<'EOF'
import importlib.metadata as md
import os
import re
import sys

from pip._vendor.packaging.requirements import Requirement

dest = sys.argv[1]
os.makedirs(dest, exist_ok=True)
norm = lambda n: re.sub(r"[-_.]+", "-", n).lower()
todo = ["torch", "torchvision", "numpy", "opencv-python-headless", "scipy", "pillow", "pip", "setuptools", "wheel"]
seen, linked = set(), 0
while todo:
    name = norm(todo.pop())
    if name in seen:
        continue
    seen.add(name)
    try:
        dist = md.distribution(name)
    except md.PackageNotFoundError:
        continue
    for r in dist.requires or []:
        req = Requirement(r)
        if req.marker is None or req.marker.evaluate({"extra": ""}):
            todo.append(req.name)
    tops = {str(f).split("/")[0] for f in dist.files or [] if not str(f).startswith("..")}
    root = str(dist.locate_file(""))
    for top in sorted(tops):
        src, dst = os.path.join(root, top), os.path.join(dest, top)
        if os.path.exists(src) and not os.path.lexists(dst):
            os.symlink(src, dst)
            linked += 1
print(f"[gpu_bench] emulated host: {len(seen)} distributions, {linked} links in {dest}")
EOF
}

bench() {  # bench VENV ARGS...: from a neutral directory, so the installed copy runs, never the checkout
    local venv="$1"
    shift
    (cd / && "$venv/bin/uois-sam-bench" stages "$@")
}

# sourced (scripts/gpu_train_sam.sh sources it for the install above): the functions only
if [[ "${BASH_SOURCE[0]}" != "$0" ]]; then return 0; fi

case "$MODE" in
prepare)
    prepare
    ;;
dry-run)
    start=$SECONDS
    py="${PYTHON:-$(default_python)}"
    tmp="$(mktemp -d /tmp/gpu_bench_dry.XXXXXX)"
    trap 'rm -rf "$tmp"' EXIT
    base_py="$(base_of "$py")"
    emulate_host "$py" "$tmp/host"
    install_into "$tmp/venv" "$tmp/host" "$base_py"
    for mod in rclpy open3d; do
        if (cd / && "$tmp/venv/bin/python" -c "import $mod" 2>/dev/null); then die "$mod imports in the dry-run venv"; fi
    done
    say "install done in $((SECONDS - start)) s (no rclpy, no open3d); CPU bench:"
    OMP_NUM_THREADS="${THREADS:-2}" bench "$tmp/venv" --device cpu --models vit_synth --repeats 1 --grid 4 \
        --threads "${THREADS:-2}" --peak-seconds 0.5 --decoders folded,library --encoders chunked,library --json "$tmp/stages.json"
    say "dry-run passed in $((SECONDS - start)) s"
    ;;
run)
    start=$SECONDS
    py="${PYTHON:-python3}"
    out="$(realpath -m "${OUT:-$REPO/out/gpu_bench}")"
    mkdir -p "$out"
    device="${DEVICE:-cuda}"
    if [[ "$device" == cuda* ]]; then
        "$py" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' \
            || die "$py: torch sees no CUDA device"
    fi
    command -v nvidia-smi >/dev/null && nvidia-smi -L | tee "$out/nvidia_smi.txt"
    host_site="$(host_site_of "$py")"
    base_py="$(base_of "$py")"
    tmp="$(mktemp -d /tmp/gpu_bench.XXXXXX)"
    trap 'rm -rf "$tmp"' EXIT
    install_into "$tmp/venv" "$host_site" "$base_py" 2>&1 | tee "$out/install.log"
    say "install done in $((SECONDS - start)) s"
    for dt in ${DTYPES:-fp32 bf16}; do
        set +e
        PYTHONUNBUFFERED=1 bench "$tmp/venv" --device "$device" --dtype "$dt" \
            --models "${MODELS:-vit_synth,vit_t,vit_b,vit_l,vit_h}" --repeats "${REPEATS:-3}" --grid "${GRID:-32}" \
            --threads "${THREADS:-8}" --decoders "${DECODERS:-folded,library}" \
            --encoders "${ENCODERS:-chunked}" ${COMPILE:+--compile} \
            --json "$out/stages_$dt.json" 2>&1 | tee "$out/stages_$dt.log"
        rc=${PIPESTATUS[0]}
        set -e
        say "--dtype $dt: exit $rc after $((SECONDS - start)) s"
    done
    say "results in $out"
    ;;
*)
    sed -n '2,8p' "$0"
    exit 2
    ;;
esac
