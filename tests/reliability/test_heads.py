"""Evaluation never scores a head it did not load, unless asked; then the head is seeded and recorded."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from transformers import AutoModelForMaskedLM

from gmat.cli import main
from gmat.modeling.loading import CheckpointError, load_pretrained


def errors(caplog) -> str:
    return "\n".join(r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR)


@pytest.fixture
def encoder_only(tmp_path, mlm_best):
    """A folder like ``gmat convert`` writes from a BERT encoder: GmatModel weights, no head, no manifest."""
    from gmat import GmatConfig, GmatModel

    out = tmp_path / "converted"
    GmatModel(GmatConfig.from_pretrained(mlm_best)).save_pretrained(out)
    for p in mlm_best.iterdir():  # the tokenizer
        if p.name.startswith("tokenizer") or p.name == "special_tokens_map.json":
            (out / p.name).write_bytes(p.read_bytes())
    return out


def test_eval_mlm_refuses_a_checkpoint_without_the_mlm_head(encoder_only, corpus_file, tmp_path, caplog, capsys):
    argv = ["eval", "mlm", "--model", str(encoder_only), "--data", str(corpus_file), "--length", "32",
            "--batch-size", "2", "--cache-dir", str(tmp_path / "cache"), "--output", "-"]  # fmt: skip
    assert main(argv) == 2
    message = errors(caplog)
    assert "cls.predictions." in message and "head" in message
    assert "task.name: mlm" in message and "--allow-random-head" in message
    capsys.readouterr()
    # asked for: a seeded head, recorded, so two identical runs give identical numbers
    results = []
    for _ in range(2):
        torch.manual_seed(len(results))  # whatever the caller's random state
        assert main([*argv, "--allow-random-head", "--seed", "7"]) == 0
        results.append(json.loads(capsys.readouterr().out))
    assert results[0]["random_head"] is True and results[0]["random_head_seed"] == 7
    assert results[0]["metrics"] == results[1]["metrics"]


def test_eval_rc_and_predict_qa_refuse_a_checkpoint_without_the_qa_head(mlm_best, squad_file, tmp_path, caplog, capsys):
    # an MLM checkpoint has an encoder and another head: no span head to score with
    argv = ["eval", "rc", "--model", str(mlm_best), "--data", str(squad_file), "--out", str(tmp_path / "o"),
            "--device", "cpu"]  # fmt: skip
    assert main(argv) == 2
    assert "qa_outputs.weight" in errors(caplog) and "task.name: rc" in errors(caplog)
    document = tmp_path / "doc.txt"
    document.write_text("alpha beta the capital of river is paris .")
    predict = ["predict", "qa", "--model", str(mlm_best), "--question", "what is the capital of river ?",
               "--document", str(document), "--device", "cpu"]  # fmt: skip
    caplog.clear()
    assert main(predict) == 2
    assert "qa_outputs.weight" in errors(caplog)
    capsys.readouterr()
    outs = []
    for _ in range(2):
        assert main([*argv, "--allow-random-head"]) == 0
        outs.append(json.loads(capsys.readouterr().out))
    assert outs[0]["random_head"] is True and outs[0]["f1"] == outs[1]["f1"]
    assert json.loads((tmp_path / "o" / "metrics.json").read_text())["random_head"] is True
    assert main([*predict, "--allow-random-head"]) == 0
    assert json.loads(capsys.readouterr().out)["random_head"] is True


def test_random_head_is_a_function_of_the_seed_only(encoder_only):
    heads = []
    for seed, noise in ((3, 0), (3, 1), (4, 0)):
        torch.manual_seed(noise)
        model, report = load_pretrained(AutoModelForMaskedLM, encoder_only, allow_random_head=True, head_seed=seed)
        assert report.head_seed == seed and any(k.startswith("cls.predictions.") for k in report.random_head)
        heads.append(model.cls.predictions.transform.dense.weight.detach().clone())
    torch.testing.assert_close(heads[0], heads[1], rtol=0, atol=0)
    assert not torch.equal(heads[0], heads[2])
    # the caller's random state is left as it was
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    load_pretrained(AutoModelForMaskedLM, encoder_only, allow_random_head=True, head_seed=1)
    torch.testing.assert_close(torch.rand(3), expected, rtol=0, atol=0)


def test_allow_missing_alone_does_not_allow_a_random_head(encoder_only):
    with pytest.raises(CheckpointError, match="--allow-random-head"):
        load_pretrained(AutoModelForMaskedLM, encoder_only, allow_missing=True)


def test_a_converted_masked_lm_keeps_its_head_and_is_not_refused(tmp_path):
    from transformers import BertConfig, BertForMaskedLM

    from gmat.modeling.convert import convert_bert_to_gmat

    bert = BertForMaskedLM(
        BertConfig(
            vocab_size=64,
            hidden_size=16,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=32,
            max_position_embeddings=32,
        )  # fmt: skip
    )
    bert.save_pretrained(tmp_path / "bert")
    convert_bert_to_gmat(tmp_path / "bert", tmp_path / "gmat", num_memory_tokens=2, attention_pattern="chunked",
                         chunk_size=8)  # fmt: skip
    model, report = load_pretrained(AutoModelForMaskedLM, tmp_path / "gmat")
    assert report.verified and not report.missing and not report.random_head  # convert writes a manifest
    torch.testing.assert_close(model.cls.predictions.bias, bert.cls.predictions.bias)
