"""BERT → GMAT conversion: MiniLM (DESIGN.md §6) against HF BertModel, layouts, errors, CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import (
    AutoModel,
    AutoModelForTokenClassification,
    AutoTokenizer,
    BertForPreTraining,
    BertModel,
)

from gmat import GmatForMaskedLM, GmatModel, convert_bert_to_gmat
from gmat.cli import main as gmat_main


@pytest.fixture(scope="module")
def minilm_bert(minilm_path: Path) -> BertModel:
    return BertModel.from_pretrained(minilm_path).eval()


@pytest.mark.parametrize(
    "pattern",
    [{"attention_pattern": "dense"}, {"attention_pattern": "chunked", "chunk_size": 64}],
    ids=["dense", "chunked-C>=L"],
)
def test_minilm_m0_matches_bert(pattern: dict, minilm_path, minilm_bert, minilm_batch, tol, tmp_path) -> None:
    assert minilm_batch["input_ids"].shape[1] <= 64  # one chunk covers L
    assert (minilm_batch["attention_mask"] == 0).any()  # the batch is really padded
    convert_bert_to_gmat(minilm_path, tmp_path, num_memory_tokens=0, max_length=1024, **pattern)
    gmat = AutoModel.from_pretrained(tmp_path).eval()
    assert isinstance(gmat, GmatModel)
    with torch.no_grad():
        want, got = minilm_bert(**minilm_batch), gmat(**minilm_batch)
    real = minilm_batch["attention_mask"].bool()
    torch.testing.assert_close(
        got.last_hidden_state[real], want.last_hidden_state[real], **tol("bert_oracle")
    )
    torch.testing.assert_close(got.pooler_output, want.pooler_output, **tol("bert_oracle"))


def test_converted_checkpoint_contents(minilm_path, tmp_path) -> None:
    config = convert_bert_to_gmat(
        minilm_path,
        tmp_path,
        num_memory_tokens=4,
        attention_pattern="window",
        attention_window=8,
        max_length=1300,
    )
    assert (config.num_memory_tokens, config.attention_window, config.max_position_embeddings) == (4, 8, 1300)
    source = load_file(str(minilm_path / "model.safetensors"))
    stored = load_file(str(tmp_path / "model.safetensors"))
    old_pos = source["embeddings.position_embeddings.weight"]  # (512, d)
    new_pos = stored["embeddings.position_embeddings.weight"]  # (1300, d)
    assert new_pos.shape == (1300, old_pos.shape[1])
    assert torch.equal(new_pos[:512], old_pos) and torch.equal(new_pos[512:1024], old_pos)
    assert torch.equal(new_pos[1024:], old_pos[:276])
    # Memory slot i = word[CLS] + token_type[0] + position[i]: a [CLS] at position i, before the LayerNorm.
    tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    assert tokenizer.model_max_length == 1300
    expected = (
        source["embeddings.word_embeddings.weight"][tokenizer.cls_token_id]
        + source["embeddings.token_type_embeddings.weight"][0]
        + old_pos[:4]
    )
    torch.testing.assert_close(stored["embeddings.memory_embeddings"], expected, atol=0, rtol=0)
    for key, value in source.items():
        if key.startswith("encoder."):
            assert torch.equal(stored[key], value), key


@pytest.mark.parametrize("length", [pytest.param(1000, marks=pytest.mark.slow), 300])
def test_minilm_backends_agree_on_long_padded_batch(length: int, minilm_path, tol, tmp_path) -> None:
    """M=16, chunked C=64, a padded batch of L tokens: reference and blocked give the same logits.

    L=1000 is the issue's acceptance case (about 20 s on a loaded 2-core CPU, the dense oracle dominates), so
    it runs with ``-m slow``; L=300 keeps the same structure (several chunks, a ragged last chunk, padding
    across chunk boundaries) in the default tier.
    """
    convert_bert_to_gmat(
        minilm_path,
        tmp_path,
        num_memory_tokens=16,
        attention_pattern="chunked",
        chunk_size=64,
        max_length=1024,
    )
    blocked = AutoModelForTokenClassification.from_pretrained(
        tmp_path, num_labels=5, attn_backend="blocked"
    ).eval()
    reference = AutoModelForTokenClassification.from_pretrained(
        tmp_path, num_labels=5, attn_backend="reference"
    ).eval()
    reference.load_state_dict(blocked.state_dict())  # the same (fresh) classifier head
    g = torch.Generator().manual_seed(0)
    input_ids = torch.randint(1000, 30000, (2, length), generator=g)
    attention_mask = torch.ones(2, length, dtype=torch.long)
    attention_mask[1, int(length * 0.613) :] = 0
    inputs = {"input_ids": input_ids.masked_fill(attention_mask == 0, 0), "attention_mask": attention_mask}
    with torch.no_grad():
        want, got = reference(**inputs), blocked(**inputs)
    real = attention_mask.bool()
    torch.testing.assert_close(got.logits[real], want.logits[real], **tol("backend_logits"))
    torch.testing.assert_close(
        got.last_hidden_state[real], want.last_hidden_state[real], **tol("backend_logits")
    )
    torch.testing.assert_close(got.memory_state, want.memory_state, **tol("backend_logits"))


def test_mlm_head_missing_is_fresh_not_an_error(minilm_path, tmp_path) -> None:
    convert_bert_to_gmat(
        minilm_path, tmp_path, num_memory_tokens=2, attention_pattern="chunked", max_length=512
    )
    model = GmatForMaskedLM.from_pretrained(tmp_path)
    stored = load_file(str(tmp_path / "model.safetensors"))
    assert torch.equal(
        model.gmat.embeddings.word_embeddings.weight, stored["embeddings.word_embeddings.weight"]
    )
    assert model.cls.predictions.decoder.weight is model.gmat.embeddings.word_embeddings.weight


def test_pretraining_layout_and_bin_weights(bert_config, tmp_path) -> None:
    """BertForPreTraining saved as pytorch_model.bin: MLM head kept, NSP head and pooler dropped."""
    bert = BertForPreTraining(bert_config()).eval()
    source = tmp_path / "bert"
    bert.save_pretrained(source)
    state = load_file(str(source / "model.safetensors"))
    (source / "model.safetensors").unlink()
    torch.save(state, source / "pytorch_model.bin")
    convert_bert_to_gmat(
        source, tmp_path / "gmat", num_memory_tokens=1, attention_pattern="dense", max_length=64
    )
    gmat = GmatForMaskedLM.from_pretrained(tmp_path / "gmat")
    torch.testing.assert_close(
        gmat.cls.predictions.transform.dense.weight,
        bert.cls.predictions.transform.dense.weight,
        atol=0,
        rtol=0,
    )
    torch.testing.assert_close(gmat.cls.predictions.bias, bert.cls.predictions.bias, atol=0, rtol=0)


def _write_bert_like(tmp_path: Path, bert_config, mutate) -> Path:
    source = tmp_path / "src"
    BertModel(bert_config()).save_pretrained(source)
    mutate(source)
    return source


def _set_model_type(source: Path) -> None:
    config = json.loads((source / "config.json").read_text())
    config["model_type"] = "gpt2"
    (source / "config.json").write_text(json.dumps(config))


def _drop_query_weights(source: Path) -> None:
    state = load_file(str(source / "model.safetensors"))
    save_file(
        {k: v for k, v in state.items() if "attention.self.query" not in k}, str(source / "model.safetensors")
    )


def _rename_all_keys(source: Path) -> None:
    state = load_file(str(source / "model.safetensors"))
    save_file(
        {f"transformer.h.{i}": v for i, v in enumerate(state.values())}, str(source / "model.safetensors")
    )


NOT_BERT = [
    (_set_model_type, "model_type='gpt2'"),
    (_drop_query_weights, "query"),
    (_rename_all_keys, "not a BERT-like checkpoint"),
    (lambda s: (s / "model.safetensors").unlink(), "holds no weights"),
    (lambda s: (s / "config.json").unlink(), "no config.json"),
]


@pytest.mark.parametrize(("mutate", "message"), NOT_BERT)
def test_not_bert_checkpoint_raises(mutate, message: str, bert_config, tmp_path) -> None:
    source = _write_bert_like(tmp_path, bert_config, mutate)
    with pytest.raises(ValueError, match=message):
        convert_bert_to_gmat(source, tmp_path / "out", num_memory_tokens=0, attention_pattern="dense")


def test_bad_gmat_settings_raise(bert_config, tmp_path) -> None:
    source = _write_bert_like(tmp_path, bert_config, lambda s: None)
    with pytest.raises(ValueError, match="attention_pattern"):
        convert_bert_to_gmat(source, tmp_path / "out", num_memory_tokens=0, attention_pattern="strided")
    with pytest.raises(ValueError, match="chunk_size"):
        convert_bert_to_gmat(
            source, tmp_path / "out", num_memory_tokens=0, attention_pattern="window", chunk_size=8
        )


def test_cli_convert(minilm_path, tmp_path) -> None:
    source = tmp_path / "minilm"
    shutil.copytree(minilm_path, source)
    rc = gmat_main(
        [
            "convert",
            "--from",
            str(source),
            "--to",
            str(tmp_path / "out"),
            "--num-memory",
            "8",
            "--pattern",
            "chunked",
            "--chunk-size",
            "32",
            "--max-length",
            "2048",
        ]
    )
    assert rc == 0
    model = AutoModel.from_pretrained(tmp_path / "out")
    assert (model.config.num_memory_tokens, model.config.chunk_size) == (8, 32)
    assert model.config.max_position_embeddings == 2048
    assert (
        gmat_main(
            [
                "convert",
                "--from",
                str(tmp_path / "nowhere"),
                "--to",
                str(tmp_path / "o2"),
                "--num-memory",
                "0",
                "--pattern",
                "dense",
                "--max-length",
                "64",
            ]
        )
        == 2
    )


def test_packaged_checkpoint_names(minilm_path, bert_config, gmat_config, tmp_path, monkeypatch) -> None:
    from gmat.modeling.convert import PACKAGED_CHECKPOINTS, is_bert_checkpoint, resolve_bert_checkpoint

    assert resolve_bert_checkpoint("minilm") == minilm_path
    assert resolve_bert_checkpoint(tmp_path) == tmp_path  # a directory is itself
    bert = _write_bert_like(tmp_path, bert_config, lambda s: None)
    GmatModel(gmat_config()).save_pretrained(tmp_path / "gmat")
    assert is_bert_checkpoint("minilm") and is_bert_checkpoint(bert)
    assert not is_bert_checkpoint(tmp_path / "gmat") and not is_bert_checkpoint(tmp_path / "nowhere")
    # `gmat convert --from minilm` is the packaged checkpoint, the same as its path
    out = tmp_path / "by-name"
    argv = ["convert", "--from", "minilm", "--to", str(out), "--num-memory", "0", "--pattern", "dense"]
    assert gmat_main([*argv, "--max-length", "512"]) == 0
    by_path = convert_bert_to_gmat(minilm_path, tmp_path / "by-path", num_memory_tokens=0, attention_pattern="dense")
    assert load_file(str(out / "model.safetensors")).keys() == load_file(
        str(tmp_path / "by-path" / "model.safetensors")
    ).keys()
    assert json.loads((out / "config.json").read_text())["hidden_size"] == by_path.hidden_size
    monkeypatch.setitem(PACKAGED_CHECKPOINTS, "ghost", ("no_such_module_gmat", "a ghost model"))
    with pytest.raises(ValueError, match="'ghost' is a ghost model, which is not installed"):
        convert_bert_to_gmat("ghost", tmp_path / "o", num_memory_tokens=0, attention_pattern="dense")
