# Sourced by scripts/rc_gpu.sh: repository root, $OUT, $PY, offline and src/ on the path.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[1]}")/.."
OUT="${OUT:-./bench-results/gpu}"
PY="${PYTHON:-python3}"
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
export GMAT_GIT_SHA="${GMAT_GIT_SHA:-$(git rev-parse HEAD 2>/dev/null || echo unknown)}"
