import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def tiny_config_dict(run_dir, **train):
    """A run small enough to train in about a second on one CPU core."""
    return {
        "run_dir": str(run_dir),
        "task": {"name": "majority", "seq_len": 32, "num_symbols": 4, "margin": 1.0, "eval_size": 32},
        "model": {
            "hidden_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "intermediate_size": 64,
            "initializer_range": 0.1,
            "num_memory_tokens": 2,
            "attention_pattern": "chunked",
            "chunk_size": 8,
        },
        "train": {
            "steps": 6,
            "batch_size": 8,
            "lr": 3e-3,
            "warmup_steps": 2,
            "eval_every": 3,
            "eval_batch_size": 16,
            "save_every": 3,
            "log_every": 1,
            "progress": False,
            "num_threads": 1,
            **train,
        },
    }


@pytest.fixture
def tiny_config(tmp_path):
    from gmat.training.config import parse_config

    return lambda **train: parse_config(tiny_config_dict(tmp_path / "run", **train))
