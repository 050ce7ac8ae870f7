#!/usr/bin/env bash
# The research runs of one GPU window (docs/gpu-research.md): reading comprehension first, then MLM, each part a
# separate call of scripts/gpu_research.py under its own hard timeout (its deadline + 45 s), failing soft.
#   here, once:   python scripts/gpu_research_inputs.py       # gpu-inputs/ (git-ignored): MiniLM, SQuAD, token caches
#   device run, carry=["gpu-inputs"], timeout_s=600:   OUT=$OUT bash scripts/gpu_research.sh
# Knobs (environment): PARTS (rc,mlm), RC_SECONDS (330), MLM_SECONDS (150), INPUTS (gpu-inputs),
# WORK (/tmp/gmat-research: the run folders, outside $OUT), PLAN (h200), DEVICE (cuda), PYTHON (python3),
# MLM_INIT (minilm: the inputs' MiniLM converted; scratch), RC_TUNE_STEPS (the short-SQuAD stage; 0: none).
# $OUT receives only research.json, summary.md, rc.json, rc-table.md, rc-f1-by-distance.png, mlm.json (rewritten
# after every finished run) and log.txt (this console output).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:?set OUT to the report folder}"
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
PY="${PYTHON:-python3}"
status=0
IFS=, read -r -a parts <<< "${PARTS:-rc,mlm}"
for part in "${parts[@]}"; do
  case "$part" in
    rc) seconds="${RC_SECONDS:-330}" ;;
    mlm) seconds="${MLM_SECONDS:-150}" ;;
    *) echo "gpu_research.sh: PARTS may name rc and mlm, got '$part'" | tee -a "$OUT/log.txt"; exit 2 ;;
  esac
  timeout --signal=TERM --kill-after=10 "$((seconds + 45))" "$PY" scripts/gpu_research.py --parts "$part" \
    --seconds "$seconds" --inputs "${INPUTS:-gpu-inputs}" --work "${WORK:-/tmp/gmat-research}" --out "$OUT" \
    --plan "${PLAN:-h200}" --device "${DEVICE:-cuda}" ${MLM_INIT:+--mlm-init "$MLM_INIT"} \
    ${RC_TUNE_STEPS:+--rc-tune-steps "$RC_TUNE_STEPS"} 2>&1 | tee -a "$OUT/log.txt"
  rc="${PIPESTATUS[0]}"
  echo "gpu_research.sh: part $part exit status $rc" | tee -a "$OUT/log.txt"
  [ "$rc" = 0 ] || status="$rc"
done
exit "$status"
