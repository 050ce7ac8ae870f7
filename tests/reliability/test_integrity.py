"""Every loader of ours checks the manifest, and refuses missing or unexpected weights unless asked."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from transformers import AutoModelForMaskedLM, AutoModelForQuestionAnswering

from gmat.cli import main
from gmat.modeling.loading import CheckpointError, load_pretrained
from gmat.tasks.mlm import evaluate_mlm
from gmat.tasks.predict_qa import predict_answer
from gmat.tasks.rc import evaluate_rc

from .conftest import drop_tensors, flip_bytes, tiny_gmat_config


def eval_mlm_argv(model, data, tmp_path, *extra):
    return [
        "eval", "mlm", "--model", str(model), "--data", str(data), "--length", "32", "--batch-size", "2",
        "--cache-dir", str(tmp_path / "cache"), "--output", "-", *extra,
    ]  # fmt: skip


def errors(caplog) -> str:
    return "\n".join(r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR)


def test_intact_best_folder_loads_and_is_reported_verified(mlm_best):
    model, report = load_pretrained(AutoModelForMaskedLM, mlm_best)
    assert report.verified and not report.missing and not report.unexpected and not report.random_head
    assert type(model).__name__ == "GmatForMaskedLM"


def test_eval_mlm_refuses_flipped_bytes_naming_the_file(mlm_best, corpus_file, tmp_path, caplog):
    assert main(eval_mlm_argv(mlm_best, corpus_file, tmp_path)) == 0  # the intact folder evaluates
    flip_bytes(mlm_best / "model.safetensors")
    caplog.clear()
    assert main(eval_mlm_argv(mlm_best, corpus_file, tmp_path)) == 2
    message = errors(caplog)
    assert "model.safetensors" in message and "SHA-256" in message
    assert len(message.splitlines()) == 1


def test_truncated_weights_are_refused(mlm_best, corpus_file, tmp_path):
    path = mlm_best / "model.safetensors"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="truncated"):
        evaluate_mlm(mlm_best, corpus_file, length=32, cache_dir=tmp_path / "cache")


def test_a_weights_file_added_beside_the_manifest_is_refused(mlm_best):
    # e.g. a pickled pytorch_model.bin dropped next to verified weights: it would be loaded unchecked
    torch.save({"x": torch.zeros(1)}, mlm_best / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="pytorch_model.bin: not listed"):
        load_pretrained(AutoModelForMaskedLM, mlm_best)


@pytest.mark.parametrize("manifest", ["rewritten", "absent"])
def test_missing_memory_table_and_layer_are_refused_naming_the_tensors(
    mlm_best, corpus_file, tmp_path, caplog, manifest
):
    dropped = drop_tensors(
        mlm_best,
        lambda k: "memory_embeddings" in k or ".layer.1." in k,
        rewrite_manifest=manifest == "rewritten",  # consistent files, or a folder like gmat convert's
    )
    assert "gmat.embeddings.memory_embeddings" in dropped
    assert main(eval_mlm_argv(mlm_best, corpus_file, tmp_path)) == 2
    message = errors(caplog)
    assert "gmat.embeddings.memory_embeddings" in message and "--allow-missing" in message
    assert "gmat.encoder.layer.1." in message
    # asked for: loaded, the random weights listed in the report
    assert main(eval_mlm_argv(mlm_best, corpus_file, tmp_path, "--allow-missing")) == 0
    _, report = load_pretrained(AutoModelForMaskedLM, mlm_best, allow_missing=True)
    assert set(report.missing) == set(dropped) and not report.random_head


def test_unexpected_weights_are_refused(tmp_path):
    from gmat import GmatForMaskedLM

    GmatForMaskedLM(tiny_gmat_config(64, num_hidden_layers=3)).save_pretrained(tmp_path / "three")
    config = json.loads((tmp_path / "three" / "config.json").read_text())
    config["num_hidden_layers"] = 2  # a config that no longer describes the weights
    (tmp_path / "three" / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"no place in GmatForMaskedLM: gmat\.encoder\.layer\.2\."):
        load_pretrained(AutoModelForMaskedLM, tmp_path / "three")
    _, report = load_pretrained(AutoModelForMaskedLM, tmp_path / "three", allow_missing=True)
    assert report.unexpected and all(".layer.2." in k for k in report.unexpected)


def test_eval_rc_and_predict_qa_refuse_corrupted_weights(qa_best, squad_file, tmp_path, caplog):
    out = tmp_path / "rc-out"
    argv = ["eval", "rc", "--model", str(qa_best), "--data", str(squad_file), "--out", str(out), "--device", "cpu"]
    assert main(argv) == 0
    document = tmp_path / "doc.txt"
    document.write_text("alpha beta the capital of river is paris .")
    predict = ["predict", "qa", "--model", str(qa_best), "--question", "what is the capital of river ?",
               "--document", str(document), "--device", "cpu"]  # fmt: skip
    assert main(predict) == 0
    flip_bytes(qa_best / "model.safetensors")
    caplog.clear()
    assert main(argv) == 2
    assert "model.safetensors" in errors(caplog)
    caplog.clear()
    assert main(predict) == 2
    assert "model.safetensors" in errors(caplog)
    with pytest.raises(CheckpointError, match="SHA-256"):
        evaluate_rc(qa_best, squad_file, device="cpu")
    with pytest.raises(CheckpointError, match="SHA-256"):
        predict_answer(qa_best, "what ?", "alpha beta", device="cpu")


def test_fine_tuning_from_a_corrupted_checkpoint_is_refused(mlm_best):
    # the model factory (task.pretrained / init) loads through the same loader: a new head is fine, damage is not
    from gmat import GmatForQuestionAnswering
    from gmat.modeling.factory import ModelSettings, build_model

    settings = ModelSettings(
        hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
        num_memory_tokens=2, attention_pattern="chunked", chunk_size=8,
    )  # fmt: skip
    model = build_model(GmatForQuestionAnswering, settings, vocab_size=None, max_length=32, init=str(mlm_best))
    assert type(model).__name__ == "GmatForQuestionAnswering"
    flip_bytes(mlm_best / "model.safetensors")
    with pytest.raises(CheckpointError, match="model.safetensors"):
        build_model(GmatForQuestionAnswering, settings, vocab_size=None, max_length=32, init=str(mlm_best))


def test_a_model_instance_still_evaluates_without_loading(qa_best, squad_file):
    model, _ = load_pretrained(AutoModelForQuestionAnswering, qa_best)
    result = evaluate_rc(qa_best, squad_file, device="cpu", model=model)
    assert result["count"] == 1 and "random_head" not in result


@pytest.mark.parametrize("layout", ["save_weights", "decoder name kept (older checkpoints, gmat convert)"])
def test_masked_lm_weights_load_into_another_head_with_their_embeddings(tmp_path, layout):
    # a masked LM ties its decoder to the word embeddings; whichever name the file keeps, a QA model
    # fine-tuned from it must get the trained embeddings, not random ones
    from safetensors.torch import save_model

    from gmat import GmatForMaskedLM
    from gmat.training.checkpoint import save_weights

    mlm = GmatForMaskedLM(tiny_gmat_config(64))
    if layout == "save_weights":
        save_weights(tmp_path / "m", mlm)
    else:
        mlm.config.save_pretrained(tmp_path / "m")
        save_model(mlm, str(tmp_path / "m" / "model.safetensors"))  # keeps cls.predictions.decoder.weight
    qa, report = load_pretrained(AutoModelForQuestionAnswering, tmp_path / "m", allow_random_head=True)
    torch.testing.assert_close(qa.gmat.embeddings.word_embeddings.weight, mlm.gmat.embeddings.word_embeddings.weight)
    assert set(report.missing) == set(report.random_head) == {"qa_outputs.weight", "qa_outputs.bias"}


def test_resume_from_a_corrupt_checkpoint_is_a_one_line_error(tmp_path, caplog):
    import yaml

    from training.conftest import tiny_config_dict

    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(tiny_config_dict(tmp_path / "run", steps=4, save_every=2)))
    assert main(["train", str(config), "--stop-after", "2"]) == 0
    weights = tmp_path / "run" / "checkpoints" / "step_00000002" / "model.safetensors"
    flip_bytes(weights)
    caplog.clear()
    assert main(["train", str(config), "--resume"]) == 2
    message = errors(caplog)
    assert str(weights) in message and len(message.splitlines()) == 1


def test_fill_mask_pipeline_through_the_verified_loader(mlm_best):
    from transformers import pipeline

    model, _ = load_pretrained(AutoModelForMaskedLM, mlm_best)
    fill = pipeline("fill-mask", model=model, tokenizer=str(mlm_best), device="cpu", top_k=2)
    assert len(fill("alpha beta [MASK] delta")) == 2
    flip_bytes(mlm_best / "model.safetensors")
    with pytest.raises(CheckpointError, match="SHA-256"):
        load_pretrained(AutoModelForMaskedLM, mlm_best)
