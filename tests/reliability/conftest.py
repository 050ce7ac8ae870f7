"""Fixtures of the fault-injection tests: a one-second synthetic run as a YAML config, tiny saved models,
a corpus and a SQuAD file."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from training.conftest import tiny_config_dict

os.environ.setdefault("HF_HUB_OFFLINE", "1")

WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa river mountain forest city paris".split()
QA_VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", "?", *WORDS, "what", "is", "the", "capital", "of"]


@pytest.fixture(autouse=True)
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def tiny_gmat_config(vocab_size: int, **overrides):
    from gmat import GmatConfig

    fields = dict(
        vocab_size=vocab_size,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=32,
        num_memory_tokens=2,
        attention_pattern="chunked",
        chunk_size=8,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    fields.update(overrides)
    return GmatConfig(**fields)


@pytest.fixture
def corpus_file(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    path = tmp_path / "corpus.jsonl"
    lines = [json.dumps({"text": " ".join(rng.choice(WORDS, size=50))}) for _ in range(4)]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def mlm_best(tmp_path: Path) -> Path:
    """A masked-LM folder as ``gmat train`` writes ``best/``: weights, config, tokenizer, manifest."""
    from gmat import GmatForMaskedLM
    from gmat.data import WordPieceTokenizer
    from gmat.training.checkpoint import save_weights

    tok = WordPieceTokenizer()
    torch.manual_seed(0)
    model = GmatForMaskedLM(tiny_gmat_config(tok.vocab_size))
    return save_weights(tmp_path / "run" / "best", model, tok.transformers_files(32))


@pytest.fixture
def qa_best(tmp_path: Path) -> Path:
    """A question-answering folder as ``gmat train`` writes ``best/`` (with a BERT tokenizer)."""
    import tempfile

    from transformers import BertTokenizer

    from gmat import GmatForQuestionAnswering
    from gmat.training.checkpoint import save_weights

    tok = BertTokenizer(vocab={w: i for i, w in enumerate(QA_VOCAB)}, model_max_length=32)
    with tempfile.TemporaryDirectory() as tmp:
        tok.save_pretrained(tmp)
        files = {p.name: p.read_bytes() for p in Path(tmp).iterdir() if p.is_file()}
    torch.manual_seed(0)
    model = GmatForQuestionAnswering(tiny_gmat_config(len(QA_VOCAB)))
    return save_weights(tmp_path / "qa" / "best", model, files)


@pytest.fixture
def squad_file(tmp_path: Path) -> Path:
    context = "alpha beta the capital of river is paris . gamma delta"
    qas = [
        {
            "id": "q0",
            "question": "what is the capital of river ?",
            "answers": [{"text": "paris", "answer_start": context.index("paris")}],
        }
    ]
    data = {"version": "1.1", "data": [{"title": "t", "paragraphs": [{"context": context, "qas": qas}]}]}
    path = tmp_path / "squad.json"
    path.write_text(json.dumps(data))
    return path


def flip_bytes(path: Path, count: int = 64) -> None:
    """Flip the low bit of ``count`` bytes in the second half of ``path`` (tensor data, not the header)."""
    data = bytearray(path.read_bytes())
    start = len(data) // 2
    for i in range(count):
        data[start + 7 * i] ^= 0x01  # small damage: finite numbers, a silently different model
    path.write_bytes(bytes(data))


def drop_tensors(folder: Path, drop, *, rewrite_manifest: bool) -> list[str]:
    """Rewrite ``folder/model.safetensors`` without the tensors whose name ``drop(name)`` selects."""
    from safetensors.torch import load_file, save_file

    from gmat.modeling.loading import write_manifest

    path = folder / "model.safetensors"
    tensors = load_file(str(path))
    dropped = sorted(k for k in tensors if drop(k))
    save_file({k: v for k, v in tensors.items() if k not in dropped}, str(path), metadata={"format": "pt"})
    if rewrite_manifest:
        write_manifest(folder)
    else:
        (folder / "manifest.json").unlink(missing_ok=True)
    return dropped


def write_config(tmp_path, name="run", **train):
    """Write the tiny synthetic run's config (``train`` overrides its train section); returns (path, run_dir)."""
    run_dir = tmp_path / name
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(tiny_config_dict(run_dir, **train)))
    return path, run_dir


def _no_constant(name):
    raise ValueError(f"bare {name} in a JSON file")


def strict_json(text):
    """``json.loads`` that refuses the non-standard NaN / Infinity / -Infinity."""
    return json.loads(text, parse_constant=_no_constant)


def strict_jsonl(path):
    return [strict_json(line) for line in path.read_text().splitlines() if line.strip()]
