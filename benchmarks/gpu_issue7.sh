#!/usr/bin/env bash
# Issue #7's GPU checks in one go (< 8 min on one H100/H200), from the repository root:
#   OUT=/path/to/results bash benchmarks/gpu_issue7.sh
# 1. benchmarks/gpu_triton.py: the triton backend against the fp32 reference on CUDA (forward, gradients), then
#    timed side by side with blocked, flex, dense SDPA and HF Longformer at L = 65k / 262k / 16k (bf16, B=1,
#    H=16, D=64, M=64, C=512 / w=256) -> $OUT/gpu_triton.json, gpu_triton.log
# 2. benchmarks/bench_model.py: a GMAT-base MLM training step at L=16,384 (12 layers, d=768) against BERT (SDPA),
#    Longformer, BigBird and ModernBERT -> $OUT/model-step.{json,md}, model-step.log
# Each part has its own budget (it starts no new row after it) and a hard timeout behind it.
# The attention sweep of issue #2 is benchmarks/gpu_run.sh (another < 8 min).
source "$(dirname "$0")/gpu_common.sh"
{ date -u; nvidia-smi || true; } >"$OUT/gpu-env.txt" 2>&1

timeout --signal=TERM --kill-after=15 260 \
  "$PY" benchmarks/gpu_triton.py --budget-s 200 --out "$OUT/gpu_triton.json" 2>&1 | tee "$OUT/gpu_triton.log"
echo "gpu_triton exit code ${PIPESTATUS[0]}" | tee -a "$OUT/gpu_triton.log"

timeout --signal=TERM --kill-after=15 190 \
  "$PY" benchmarks/bench_model.py --device cuda --dtype bf16 --budget-s 140 --out "$OUT" 2>&1 | tee "$OUT/model-step.log"
echo "bench_model exit code ${PIPESTATUS[0]}" | tee -a "$OUT/model-step.log"
