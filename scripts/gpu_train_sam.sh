#!/usr/bin/env bash
# Continue training the small SAM (vit_synth) and then its HDNet on a lent GPU machine, in one call of
# the device tool, so that its few minutes go to training (README "A small SAM trained here"):
#
#   bash scripts/gpu_train_sam.sh prepare   # here: .gpu_data/{train,val} (compact JPEG sets) + .whl/ (wheels)
#   bash scripts/gpu_train_sam.sh dry-run   # here: the same install into a temporary venv that sees only a
#                                           # CPU torch stack, then the same trainers on a few images, 2 steps
#   bash scripts/gpu_train_sam.sh run       # there: install, train SAM (--init the shipped checkpoint), HDNet
#
# The device tool call (a session lent a GPU; about 15 device-minutes in all, 10 per call):
#
#   run(command="bash scripts/gpu_train_sam.sh run", carry=[".whl", ".gpu_data"], timeout_s=600)
#
# It brings back ($OUT, 7 files): sam_vit_synth.pt + .json (best validation checkpoint and its sidecar),
# sam_train_log.csv, hdnet_vit_synth.pt + .csv, run.log, summary.json. A fresh start costs 1-2 of the 15
# minutes, so there is no time for a second full run: dry-run here first. If the call fails within its first
# minute (the machine stays warm 30 s), rerun at once with a smaller budget, e.g.
# command="BUDGET_S=420 bash scripts/gpu_train_sam.sh run".
#
# Why these defaults. The payload is capped at 64 MiB (tracked files 18 MiB, of which the shipped SAM is
# 13 MiB; wheels 4.4 MiB), so prepare writes 1000 training scenes at 512x384, JPEG quality 85 (26 MiB of
# colour + 3 MiB of visible-mask RLE) and 40 validation scenes: about 53 MiB in all. 512 is the encoder's
# input, so the masks are bit-identical to what the trainer made of the 640x480 originals. vit_synth has
# 3.4 M parameters: an H200 is idle most of a step, and the step time is the trainer's single Python
# process (JPEG decode, augmentation, prompt sampling, one decoder call per image and round). So the
# batch (BATCH=16) is sized for steps, not memory, and PROMPTS=16 (nearly every instance: 9.5 per image on
# average) costs little more than 8 per image, since an image's prompts share one decoder call. ROUNDS=1
# and the trainer's default box prompts (30 %) also train the single-mask output (token 0), which the
# shipped run (points only, no rounds) never trained. The run starts from the shipped checkpoint
# (--init: its weights, a fresh AdamW, LR=1e-3 after WARMUP=50 steps, cosine to 5 % at the time budget).
# Time: BUDGET_S=560 s for the whole script (timeout_s 600 minus a margin for the tool); the SAM run gets
# what the install, 60 s of trainer start-up and final validation, and HDNet (HDNET_MINUTES=1 + 45 s to
# load 1000 images) leave, about 6 minutes; MINUTES=M fixes it instead. Each trainer also runs under
# `timeout`, so a slow start cannot push the whole call past its limit (the SAM file on disk is always the
# best validation checkpoint so far, written atomically).
#
# Environment: OUT (run: default out/gpu_train_sam), PYTHON (run: python3; prepare/dry-run: .venv/bin/python),
# WHEELS (.whl), DATA / VAL (.gpu_data/train, .gpu_data/val), INIT (default the shipped
# uois_sam_ros/data/sam_vit_synth.pt; 'none' = from scratch), BATCH, PROMPTS, ROUNDS, LR, WARMUP, MAX_STEPS,
# VAL_EVERY, SAVE_EVERY, MINUTES, BUDGET_S, HDNET_MINUTES (0 = no HDNet), HDNET_IPS (images per HDNet step),
# PREFETCH, LOADER_THREADS (batch preparation ahead of the GPU), SAM_EXTRA / HDNET_EXTRA (more trainer options), KEEP_STATE=1 (the resume state under $OUT/work instead of
# /tmp; at ~41 MB it is over the tool's 16 MB per-file return limit, so only for a machine whose disk
# stays), DEVICE (run: cuda). prepare: SRC_TRAIN, SRC_VAL (/work/train/syn_{train,val}), VAL_LIMIT (40),
# MAX_SIDE (512), QUALITY (85), LIMIT_MIB (60, the payload prepare accepts).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# the venv + wheel install of gpu_bench.sh (its functions; sourcing runs no mode, but sets MODE and WHEELS)
# shellcheck source=scripts/gpu_bench.sh
source "$REPO/scripts/gpu_bench.sh" lib "${WHEELS:-$REPO/.whl}"
MODE="${1:-}"
say() { printf '[gpu_train_sam] %s\n' "$*"; }
die() { printf '[gpu_train_sam] ERROR: %s\n' "$*" >&2; exit 1; }
PROBE="$PROBE, uois_sam_ros.training.sam, uois_sam_ros.training.hdnet, uois_sam_ros.training.compact"

DATA="$(realpath -m "${DATA:-$REPO/.gpu_data/train}")"
VAL="$(realpath -m "${VAL:-$REPO/.gpu_data/val}")"
INIT="${INIT:-$REPO/uois_sam_ros/data/sam_vit_synth.pt}"
START=$SECONDS

elapsed() { echo $((SECONDS - START)); }

payload_bytes() {  # what the device tool sends: tracked + untracked-not-ignored files, plus the carried folders
    local files carried
    files="$(cd "$REPO" && git ls-files -z --cached --others --exclude-standard \
        | xargs -0 stat -c %s 2>/dev/null | awk '{s += $1} END {print s + 0}')"
    carried="$(du -sb "$REPO/.whl" "$REPO/.gpu_data" 2>/dev/null | awk '{s += $1} END {print s + 0}')"
    echo "$files $carried"
}

payload() {  # a readable payload_bytes
    payload_bytes | awk '{printf "%.1f MiB (repository files %.1f, .whl + .gpu_data %.1f)\n", ($1 + $2) / 2^20, $1 / 2^20, $2 / 2^20}'
}

payload_ok() {  # payload_ok LIMIT_MIB: exit status 0 when the payload fits
    payload_bytes | awk -v l="$1" '{exit !($1 + $2 <= l * 2^20)}'
}

verify_data() {  # verify_data PY: both sets open with the trainer's reader; first and last image load
    (cd / && "$1" - "$DATA" "$VAL" <<'EOF'
import sys

from uois_sam_ros.training.sam import dataset_source

for path in sys.argv[1:]:
    src = dataset_source(path)
    shapes = {src[i][0].shape for i in (0, len(src) - 1)}
    print(f"[gpu_train_sam] {path}: {len(src)} images, e.g. {sorted(shapes)}")
EOF
    ) || die "the training data does not load (carry .gpu_data; build it with 'bash scripts/gpu_train_sam.sh prepare')"
}

# train_all VENV OUT DEVICE HD_DATA TMP: the SAM run, then HDNet on its checkpoint, then summary.json
train_all() {
    local venv="$1" out="$2" device="$3" hd_data="$4" tmp="$5"
    local init_args=() work="$tmp/work" sam_rc=0 hd_rc=skipped t_sam t_hd=0 minutes limit rem hm
    if [[ "$INIT" != none ]]; then init_args=(--init "$(realpath "$INIT")"); fi
    [[ "${KEEP_STATE:-0}" == 1 ]] && work="$out/work"
    local hd_min="${HDNET_MINUTES:-1}"
    # the SAM budget: MINUTES, or what is left after 60 s of trainer overheads and HDNet's share
    minutes="${MINUTES:-$(awk -v b="$BUDGET_S" -v e="$(elapsed)" -v h="$hd_min" \
        'BEGIN {m = (b - e - 60 - (h > 0 ? h * 60 + 45 : 0)) / 60; if (m < 0.5) m = 0.5; printf "%.2f", m}')}"
    limit="$(awk -v m="$minutes" 'BEGIN {printf "%d", m * 60 + 90}')"
    say "SAM: $minutes min (hard limit $limit s), batch $BATCH, $PROMPTS prompts, $ROUNDS rounds, lr $LR, init ${INIT}"
    t_sam=$SECONDS
    set +e
    # shellcheck disable=SC2086  # SAM_EXTRA: several options
    (cd / && PYTHONUNBUFFERED=1 TQDM_MININTERVAL=30 timeout -k 15 "$limit" "$venv/bin/uois-sam-train-sam" \
        --data "$DATA" --val-data "$VAL" --val-max "${VAL_MAX:-40}" --data-fraction "${DATA_FRACTION:-1.0}" \
        --device "$device" "${init_args[@]}" --batch-size "$BATCH" --prompts "$PROMPTS" --rounds "$ROUNDS" \
        --lr "$LR" --warmup "$WARMUP" --max-steps "$MAX_STEPS" --max-minutes "$minutes" \
        --val-every "$VAL_EVERY" --save-every "$SAVE_EVERY" --threads "${THREADS:-0}" \
        --prefetch "$PREFETCH" --loader-threads "$LOADER_THREADS" \
        --work-dir "$work" --log "$out/sam_train_log.csv" --out "$out/sam_vit_synth.pt" ${SAM_EXTRA:-})
    sam_rc=$?
    set -e
    t_sam=$((SECONDS - t_sam))
    say "SAM: exit $sam_rc after $t_sam s (script at $(elapsed) s)"
    rem=$((BUDGET_S - $(elapsed) - 15))
    if awk -v h="$hd_min" 'BEGIN {exit !(h <= 0)}'; then
        say "HDNet: skipped (HDNET_MINUTES=$hd_min)"
    elif [[ ! -f "$out/sam_vit_synth.pt" ]]; then
        say "HDNet: skipped (no SAM checkpoint)"
    elif ((rem < 60)); then
        say "HDNet: skipped (only $rem s of BUDGET_S left)"
    else
        # its --max-minutes ends the run after the epoch that passes it: leave 40 s for loading and that epoch
        hm="$(awk -v h="$hd_min" -v r="$rem" 'BEGIN {m = (r - 40) / 60; if (m > h) m = h; printf "%.2f", m}')"
        say "HDNet: $hm min (hard limit $rem s) on $out/sam_vit_synth.pt"
        local t0=$SECONDS
        set +e
        # shellcheck disable=SC2086
        (cd / && PYTHONUNBUFFERED=1 TQDM_MININTERVAL=30 timeout -k 10 "$rem" "$venv/bin/uois-sam-train-hdnet" \
            --sam-type vit_synth --sam-checkpoint "$out/sam_vit_synth.pt" --data "$hd_data" --val-split 0.1 \
            --epochs "${HDNET_EPOCHS:-100}" --num-prompts 30 --num-bg 10 --images-per-step "${HDNET_IPS:-8}" \
            --cache-dir "$tmp/hdnet_cache" --max-minutes "$hm" --device "$device" --threads "${THREADS:-0}" \
            --out "$out/hdnet_vit_synth.pt" ${HDNET_EXTRA:-})
        hd_rc=$?
        set -e
        t_hd=$((SECONDS - t0))
        say "HDNet: exit $hd_rc after $t_hd s"
    fi
    rm -f "$out"/*.tmp
    SAM_RC=$sam_rc HD_RC=$hd_rc T_SAM=$t_sam T_HD=$t_hd T_ALL=$(elapsed) SAM_MINUTES=$minutes BATCH=$BATCH \
        PROMPTS=$PROMPTS ROUNDS=$ROUNDS LR=$LR WARMUP=$WARMUP INIT=$INIT HDNET_MINUTES=$hd_min BUDGET_S=$BUDGET_S \
        "$venv/bin/python" - "$out" <<'EOF'
import json, os, sys
from pathlib import Path

import torch

out = Path(sys.argv[1])
e = os.environ
doc = {"mode": e.get("MODE"), "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
       "torch": torch.__version__, "seconds": {"install": int(e["T_INSTALL"]), "sam": int(e["T_SAM"]),
       "hdnet": int(e["T_HD"]), "total": int(e["T_ALL"])},
       "exit": {k: int(v) if v.isdigit() else v for k, v in (("sam", e["SAM_RC"]), ("hdnet", e["HD_RC"]))},
       "settings": {k: e.get(k) for k in ("BATCH", "PROMPTS", "ROUNDS", "LR", "WARMUP", "SAM_MINUTES", "INIT",
                                          "HDNET_MINUTES", "BUDGET_S")}}
side = out / "sam_vit_synth.json"
if side.is_file():
    s = json.loads(side.read_text())
    doc["sam"] = {"heldout": s.get("heldout"), "best_step": s["training"].get("best_step"),
                  "steps_run": s["training"].get("steps_run"), "images_seen": s["training"].get("images_seen")}
    h = s.get("heldout") or {}
    if "init" in s["training"] and "trained" in h:  # with --init, 'untrained' is the init checkpoint
        doc["sam"]["beats_init"] = h["trained"]["val_loss"] < h["untrained"]["val_loss"]
hd = out / "hdnet_vit_synth.pt"
if hd.is_file():
    doc["hdnet"] = torch.load(hd, map_location="cpu", weights_only=True).get("meta")
doc["files"] = {p.name: p.stat().st_size for p in sorted(out.rglob("*")) if p.is_file()}
(out / "summary.json").write_text(json.dumps(doc, indent=1, default=str))
print(json.dumps(doc, indent=1, default=str))
EOF
}

: "${BATCH:=16}" "${PROMPTS:=16}" "${ROUNDS:=1}" "${LR:=1e-3}" "${WARMUP:=50}" "${MAX_STEPS:=100000}"
: "${VAL_EVERY:=100}" "${SAVE_EVERY:=100}" "${BUDGET_S:=560}"
# batches prepared ahead by 4 threads (the host has 16 cores; one thread makes a batch of 16 in ~0.85 s,
# likely longer than a GPU step); the weights do not depend on these
: "${PREFETCH:=4}" "${LOADER_THREADS:=4}"

case "$MODE" in
prepare)
    py="${PYTHON:-$(default_python)}"
    if ! compgen -G "$WHEELS/*.whl" >/dev/null; then
        bash "$REPO/scripts/gpu_bench.sh" prepare "$WHEELS"
    fi
    src_train="${SRC_TRAIN:-/work/train/syn_train}"
    src_val="${SRC_VAL:-/work/train/syn_val}"
    for d in "$src_train" "$src_val"; do
        [[ -f "$d/annotations.json" ]] || die "no UOAIS-Sim set at $d (uois-sam-synth --out DIR --num 1000 --seed 0 \
writes the training set, --num 160 --seed 10000000 the validation one; then SRC_TRAIN=... SRC_VAL=...)"
    done
    opts=(--max-side "${MAX_SIDE:-512}" --quality "${QUALITY:-85}" --quiet)
    (cd "$REPO" && OMP_NUM_THREADS=1 "$py" -m uois_sam_ros.training.compact --src "$src_train" --out "$DATA" "${opts[@]}")
    (cd "$REPO" && OMP_NUM_THREADS=1 "$py" -m uois_sam_ros.training.compact --src "$src_val" --out "$VAL" \
        --limit "${VAL_LIMIT:-40}" "${opts[@]}")
    say "payload of run(carry=[.whl, .gpu_data]): $(payload)"
    payload_ok "${LIMIT_MIB:-60}" || die "over ${LIMIT_MIB:-60} MiB: lower QUALITY or MAX_SIDE (the tool takes 64 MiB)"
    ;;
dry-run)
    py="${PYTHON:-$(default_python)}"
    tmp="$(mktemp -d /tmp/gpu_train_sam_dry.XXXXXX)"
    trap 'rm -rf "$tmp"' EXIT
    out="$tmp/out"
    mkdir -p "$out"
    exec > >(tee -a "$out/run.log") 2>&1
    say "dry-run in $tmp; payload of the GPU call: $(payload)"
    payload_ok 64 || say "WARNING: the payload is over the device tool's 64 MiB"
    emulate_host "$py" "$tmp/host"
    install_into "$tmp/venv" "$tmp/host" "$(base_of "$py")"
    for mod in rclpy open3d; do
        if (cd / && "$tmp/venv/bin/python" -c "import $mod" 2>/dev/null); then die "$mod imports in the dry-run venv"; fi
    done
    export T_INSTALL=$(elapsed) MODE
    say "install done in $T_INSTALL s (no rclpy, no open3d)"
    verify_data "$tmp/venv/bin/python"
    # HDNet loads its whole --data: give it a 5-image compact copy (made by the venv's package)
    (cd / && "$tmp/venv/bin/python" -m uois_sam_ros.training.compact --src "$DATA" --out "$tmp/hd" --limit 5 --quiet)
    # tiny settings: 4 of the 1000 training images, 2 validation images, 2 steps, 1 HDNet epoch, 1 thread
    BATCH=2 PROMPTS=4 MAX_STEPS=2 VAL_EVERY=1 SAVE_EVERY=1 WARMUP=1 MINUTES="${MINUTES:-5}" VAL_MAX=2 \
        DATA_FRACTION=0.004 HDNET_MINUTES=1 HDNET_EPOCHS=1 HDNET_IPS=2 THREADS=1 BUDGET_S=100000 OMP_NUM_THREADS=1 \
        train_all "$tmp/venv" "$out" cpu "$tmp/hd" "$tmp"
    ls -l "$out"
    [[ -f "$out/sam_vit_synth.pt" && -f "$out/hdnet_vit_synth.pt" ]] || die "a checkpoint is missing"
    (( $(find "$out" -type f | wc -l) <= 8 )) || die "more than the 8 files the device tool returns"
    say "dry-run passed in $(elapsed) s"
    ;;
run)
    py="${PYTHON:-python3}"
    out="$(realpath -m "${OUT:-$REPO/out/gpu_train_sam}")"
    mkdir -p "$out"
    exec > >(tee -a "$out/run.log") 2>&1
    device="${DEVICE:-cuda}"
    if [[ "$device" == cuda* ]]; then
        "$py" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' || die "$py: torch sees no CUDA device"
        command -v nvidia-smi >/dev/null && nvidia-smi -L
    fi
    [[ -f "$DATA/annotations.json" && -f "$VAL/annotations.json" ]] || die "no $DATA or $VAL: carry .gpu_data"
    tmp="$(mktemp -d /tmp/gpu_train_sam.XXXXXX)"
    trap 'rm -rf "$tmp"' EXIT
    install_into "$tmp/venv" "$(host_site_of "$py")" "$(base_of "$py")"
    export T_INSTALL=$(elapsed) MODE
    say "install done in $T_INSTALL s"
    verify_data "$tmp/venv/bin/python"
    train_all "$tmp/venv" "$out" "$device" "$DATA" "$tmp"
    say "done in $(elapsed) s; results in $out"
    ;;
*)
    sed -n '2,19p' "$0"
    exit 2
    ;;
esac
