# One place that knows how to set up and run things. `make demo` and `make test` work on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: setup demo test test-slow test-gpu bench gpu-pack gpu-research lint clean

# torch is installed first and pinned: on CPU machines torch==2.13.0 is a local CPU wheel, while an
# unpinned torch would pull a multi-GB CUDA build.
$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $@

setup: $(BIN)/.installed

demo: setup  ## the main job: chunked M=0 vs GMAT on the majority task
	$(BIN)/gmat demo

test: setup  ## the fast CPU test-suite
	$(BIN)/python -m pytest

test-slow: setup  ## experiments and long checks
	$(BIN)/python -m pytest -m slow

# The GPU targets install nothing: a GPU machine runs its own python3 (CUDA torch, triton, transformers) with
# gmat taken from src/, so they do not depend on `setup` (which would install the CPU torch wheel).
test-gpu:  ## the CUDA tests, with the machine's python3 and no install: PYTHONPATH=src python3 -m pytest -m gpu tests/ops
	PYTHONPATH=src $(PYTHON) -m pytest -m gpu tests/ops

gpu-pack:  ## the GPU evidence pack (< 9 min on one H100/H200): OUT=DIR make gpu-pack
	PYTHON=$(PYTHON) bash benchmarks/gpu_pack.sh

gpu-research:  ## on a GPU machine: the RC then MLM research runs, reports into $(OUT) (docs/gpu-research.md)
	OUT="$(OUT)" bash scripts/gpu_research.sh

bench: setup  ## quick attention benchmark (< 90 s on 2 CPU cores)
	$(BIN)/python benchmarks/bench_attention.py --quick

lint: setup  ## style and architecture: ruff lint + format, and the layer contracts (import-linter)
	$(BIN)/ruff check src tests benchmarks scripts
	$(BIN)/ruff format --check src tests benchmarks scripts
	$(BIN)/lint-imports

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
