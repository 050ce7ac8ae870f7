"""configs/mlm/ against scripts/mlm_experiment.py: the comparison is only fair if the grid's configs agree.

Every run of one start (scratch / minilm) and length is paired with that group's chunked M=0 run on the same
masked tokens, so the group must share the training budget, the data, the evaluation split and (from scratch)
the model size; only M and the attention pattern may differ.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import pytest

from gmat.training.config import load_config
from repo_scripts import load_script

REPO = Path(__file__).resolve().parents[2]
CONFIGS = sorted((REPO / "configs" / "mlm").glob("*.yaml"))


@pytest.fixture(scope="module")
def experiment():
    return load_script("scripts/mlm_experiment.py")


@pytest.fixture(scope="module")
def configs():
    """``{name: RunConfig}`` of every configs/mlm file."""
    return {path.stem: load_config(path) for path in CONFIGS}


def _start(config) -> str:
    return "minilm" if config.task.pretrained else "scratch"


def test_every_config_is_a_run_and_every_run_has_a_config(experiment, configs):
    runs = set(experiment.RUNS)
    assert len(runs) == len(experiment.RUNS), "a run is listed twice"
    assert {run.partition("-seed")[0] for run in runs} == set(configs)


def test_each_group_shares_budget_data_split_and_model_size(experiment, configs):
    groups = defaultdict(list)
    for name, config in configs.items():
        assert config.run_dir == f"runs/mlm/{name}", name
        groups[(_start(config), config.task.seq_len)].append((name, config))
    assert set(groups) == set(experiment.BASELINE)
    for key, members in groups.items():
        base = dict(members)[experiment.BASELINE[key]]
        assert base.model.num_memory_tokens == 0 and base.model.attention_pattern == "chunked", key
        assert base.task.split_chunk_size == base.model.chunk_size, key  # the split is the baseline's chunk
        for name, config in members:
            assert config.train == base.train, name
            assert config.task == base.task, name
            if key[0] == "scratch":
                for field in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size"):
                    assert getattr(config.model, field) == getattr(base.model, field), (name, field)


def test_the_grid_of_the_issue_is_complete(configs):
    """L in {1024, 4096} x C in {128, 256} x M in {0, 16, 64} from scratch, and window + M at both lengths."""
    chunked, window = set(), set()
    for config in configs.values():
        if _start(config) != "scratch":
            continue
        m = config.model
        if m.attention_pattern == "chunked":
            chunked.add((config.task.seq_len, m.chunk_size, m.num_memory_tokens))
        elif m.attention_pattern == "window":
            window.add((config.task.seq_len, m.num_memory_tokens > 0))
    assert chunked >= {(n, c, m) for n in (1024, 4096) for c in (128, 256) for m in (0, 16, 64)}
    assert window >= {(1024, True), (4096, True)}
