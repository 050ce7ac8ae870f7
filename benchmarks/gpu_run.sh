#!/usr/bin/env bash
# The whole GPU sweep of the attention benchmark, in one go, on one H100/H200:
#   OUT=/path/to/results bash benchmarks/gpu_run.sh        (from the repository root; OUT defaults below)
# bf16, B=1 H=16 D=64, L = 4k..256k, M=64, chunked C=512 and window w=256, every engine incl. flex, then an
# M sweep at L=65536 (benchmarks/configs/gpu.yaml). Writes into $OUT: gpu-attention.{json,md,png},
# gpu-run.log and gpu-env.txt. Finishes in < 8 minutes: the sweep stops starting new points after deadline_s
# (gpu.yaml), a hard timeout backs that up, and the JSON (rewritten after every point) is then re-rendered.
# Engines that run out of GPU memory, or are predicted to, are recorded as "skipped (reason)".
# Needs python3 with CUDA torch, transformers, matplotlib and PyYAML; gmat is taken from ./src.
source "$(dirname "$0")/gpu_common.sh"

{
  date -u
  nvidia-smi || true
  "$PY" -c 'import torch, transformers; print("torch", torch.__version__, "cuda", torch.version.cuda,
"transformers", transformers.__version__, "gpu", torch.cuda.get_device_name(0))'
} >"$OUT/gpu-env.txt" 2>&1
cat "$OUT/gpu-env.txt"

start=$(date +%s)
timeout --signal=TERM --kill-after=15 450 \
  "$PY" benchmarks/bench_attention.py --config benchmarks/configs/gpu.yaml --out "$OUT" 2>&1 | tee "$OUT/gpu-run.log"
rc=${PIPESTATUS[0]}
echo "bench exit code $rc after $(( $(date +%s) - start )) s" | tee -a "$OUT/gpu-run.log"

if [ "$rc" -ne 0 ] && [ -f "$OUT/gpu-attention.json" ]; then
  # Stopped early (or a check failed): render what the JSON holds, every finished point.
  "$PY" benchmarks/bench_attention.py --from-json "$OUT/gpu-attention.json" --out "$OUT" 2>&1 | tee -a "$OUT/gpu-run.log"
fi
exit "$rc"
