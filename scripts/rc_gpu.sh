#!/usr/bin/env bash
# The RC comparison at L=4096 on one GPU (H100/H200), every model of configs/rc/ on the same questions:
#   python scripts/device_pack.py                        # here, once: MiniLM + SQuAD into device-pack/ (58 MB)
#   device run, carry=["device-pack"]:  OUT=$OUT bash scripts/rc_gpu.sh
# Knobs (environment): LENGTH (4096), TRAIN_Q (2000), EVAL_Q (1000), RUN_TIMEOUT_S (100 per model), DEVICE (cuda).
# Writes $OUT/rc/<config>-l$LENGTH/ (results.json, eval/per_question.jsonl, metrics) and, from what finished,
# $OUT/rc.json, rc-table.md, rc-f1-by-distance.png (scripts/rc_report.py). Not yet run on a GPU.
source "$(dirname "$0")/../benchmarks/gpu_common.sh"
LENGTH="${LENGTH:-4096}" TRAIN_Q="${TRAIN_Q:-2000}" EVAL_Q="${EVAL_Q:-1000}" DEVICE="${DEVICE:-cuda}"
PACK=device-pack
[ -f "$PACK/minilm/model.safetensors" ] || { echo "no $PACK/: run scripts/device_pack.py and carry it"; exit 2; }
runs=()
for cfg in chunked-m0 bert512-windows gmat-chunked-m16 gmat-chunked-m64 gmat-window-m16; do
  run="$OUT/rc/$cfg-l$LENGTH"
  max_length=$LENGTH; [ "$cfg" = bert512-windows ] && max_length=512  # the baseline reads 512-token windows
  timeout --signal=TERM --kill-after=10 "${RUN_TIMEOUT_S:-100}" "$PY" -m gmat.cli train "configs/rc/$cfg-l1024.yaml" \
    --set run_dir="$run" task.length="$LENGTH" model.max_length="$max_length" model.init="$PACK/minilm" \
    task.train_file="$PACK/squad/train-v1.1.rebuilt.json.gz" task.eval_file="$PACK/squad/dev-v1.1.json" \
    task.train_questions="$TRAIN_Q" task.eval_questions="$EVAL_Q" train.device="$DEVICE" train.num_threads=0 \
    train.eval_batch_size=32 2>&1 | tee "$OUT/rc-$cfg.log" | grep -v "step .*loss" || true
  [ -f "$run/results.json" ] && runs+=("$run")
done
[ -f "$OUT/rc/chunked-m0-l$LENGTH/results.json" ] && [ "${#runs[@]}" -gt 1 ] &&
  "$PY" scripts/rc_report.py --runs "${runs[@]}" --baseline "$OUT/rc/chunked-m0-l$LENGTH" --out "$OUT"
