#!/usr/bin/env bash
# The GPU evidence pack: one command, < 9 minutes on one H100/H200, from the repository root:
#   GMAT_GIT_SHA=<sha> OUT=DIR bash benchmarks/gpu_pack.sh        (or: OUT=DIR make gpu-pack)
#   STEPS="env ops" OUT=DIR bash benchmarks/gpu_pack.sh            (a rerun of chosen steps)
#   OUT=DIR bash benchmarks/gpu_pack.sh --dry-run                  (CPU, tiny shapes, same code; or GMAT_PACK_DRY_RUN=1)
# Steps, in priority order, each in its own process with a deadline (no new row after it) and a hard timeout
# behind it; a crash or timeout in one step keeps every other step's results (benchmarks/gpu_pack.py):
#   1. env          GPU, driver, torch / triton / transformers versions, GMAT_GIT_SHA (the copy has no .git)
#   2. correctness  triton, blocked, flex vs the float64 reference in fp32 (fwd + grads), then triton in bf16
#   3. ops          the op sweep of benchmarks/configs/gpu.yaml (triton and blocked first, then the yardsticks)
#   4. model        GMAT-base MLM training step at L=16k and 4k vs BERT (SDPA), ModernBERT, Longformer
# $OUT receives four flat files, each rewritten after every finished row: gpu-pack.json, gpu-pack.md,
# gpu-pack.png, gpu-pack.log. Needs python3 with CUDA torch, triton, transformers, matplotlib and PyYAML;
# gmat is taken from ./src (nothing is installed). PYTHON overrides the interpreter.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-./bench-results/gpu-pack}"
PY="${PYTHON:-python3}"
DRY=()
if [ "${1:-}" = "--dry-run" ] || [ "${GMAT_PACK_DRY_RUN:-0}" = "1" ]; then
  DRY=(--dry-run)
  export TRITON_INTERPRET=1 CUDA_VISIBLE_DEVICES=""  # triton's CPU interpreter: set before triton is imported
fi
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
export GMAT_GIT_SHA="${GMAT_GIT_SHA:-$(git rev-parse HEAD 2>/dev/null || echo unknown)}"
LOG="$OUT/gpu-pack.log"
TOTAL_S="${GMAT_PACK_TOTAL_S:-510}"  # every step's hard timeout is cut to what is left of this
start=$(date +%s)

# The device returns files of at most 16 MiB: a log grown past 8 MiB keeps its first 2 and last 4 MiB.
trim_log() {
  if [ "$(stat -c %s "$LOG")" -gt 8388608 ]; then
    { head -c 2097152 "$LOG"; printf '\n[... log cut to stay under the 16 MiB file limit ...]\n'; tail -c 4194304 "$LOG"; } \
      >"$LOG.cut" && mv "$LOG.cut" "$LOG"
  fi
}

# step NAME DEADLINE_S HARD_TIMEOUT_S: the step starts no row after DEADLINE_S; TIMEOUT kills it after HARD.
step() {
  local name=$1 deadline=$2 hard=$3 left rc
  left=$(( TOTAL_S - ($(date +%s) - start) ))
  if [ "$left" -lt 10 ]; then
    echo "== $name: not started, ${left}s left of ${TOTAL_S}s" | tee -a "$LOG"
    timeout 20 "$PY" benchmarks/gpu_pack.py finish "$name" 125 --out "$OUT" 2>&1 | tee -a "$LOG"
    return
  fi
  [ "$hard" -gt "$left" ] && hard=$left
  echo "== $name (deadline ${deadline}s, hard timeout ${hard}s) at $(date -u +%T)" | tee -a "$LOG"
  timeout --signal=TERM --kill-after=5 "$hard" \
    "$PY" benchmarks/gpu_pack.py "$name" --out "$OUT" --deadline-s "$deadline" ${DRY[@]+"${DRY[@]}"} 2>&1 | tee -a "$LOG"
  rc=${PIPESTATUS[0]}
  echo "== $name exit code $rc after $(( $(date +%s) - start ))s" | tee -a "$LOG"
  trim_log
  if [ "$rc" -ne 0 ]; then  # killed or failed: record the exit code and re-render from the saved rows
    timeout 20 "$PY" benchmarks/gpu_pack.py finish "$name" "$rc" --out "$OUT" 2>&1 | tee -a "$LOG"
  fi
}

{ date -u; nvidia-smi 2>&1 || echo "nvidia-smi: not available"; } >>"$LOG"
# STEPS picks steps for a rerun (e.g. STEPS="env ops"); each keeps its deadline and hard timeout.
for name in ${STEPS:-env correctness ops model}; do
  case "$name" in
    env) step env 10 40 ;;
    correctness) step correctness 75 105 ;;
    ops) step ops 185 225 ;;
    model) step model 115 145 ;;
    *) echo "gpu_pack.sh: STEPS may name env, correctness, ops and model, got '$name'" | tee -a "$LOG"; exit 2 ;;
  esac
done
echo "== pack done in $(( $(date +%s) - start ))s: $OUT" | tee -a "$LOG"
ls -l "$OUT" | tee -a "$LOG"
