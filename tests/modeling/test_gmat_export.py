"""Graph capture: torch.compile without graph breaks, ONNX export with dynamic batch and length."""

from __future__ import annotations

import argparse
import json
import logging

import pytest
import torch
import torch._dynamo as dynamo
from transformers import (
    AutoModel,
    BertForMaskedLM,
    BertForQuestionAnswering,
    BertForSequenceClassification,
    BertForTokenClassification,
    BertModel,
)

import gmat.commands.export as export_command
import gmat.modeling.export as export_module
from gmat import (
    GmatForMaskedLM,
    GmatForQuestionAnswering,
    GmatForSequenceClassification,
    GmatForTokenClassification,
    GmatModel,
)
from gmat.modeling import convert_to_gmat
from gmat.modeling.export import onnx_output_names

PATTERNS = [
    {"attention_pattern": "chunked", "chunk_size": 4},
    {"attention_pattern": "window", "attention_window": 3},
    {"attention_pattern": "dense"},
]
# (B, L): the export shape, then other batches and lengths. The export shape must span >= 2 blocks of the
# blocked backend (window blocks are max(w, 32) queries) and B >= 2: a size-1 dimension is specialised at
# trace time. The runs after it include a single-block length (13) and a ragged one (29).
EXPORT_LENGTHS = [(2, 40), (3, 29), (1, 13)]


def _inputs(batch: int, length: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(1, 100, (batch, length), generator=g)
    attention_mask = torch.ones(batch, length, dtype=torch.long)
    attention_mask[-1, length * 2 // 3 :] = 0
    return {"input_ids": input_ids, "attention_mask": attention_mask}


# Default tier: two captures (each one costs seconds of Dynamo tracing on a shared CPU). ``fullgraph=True``
# raises on any graph break, so a pass proves the attention op is captured whole.
FAST_CASES = [
    pytest.param({"attention_pattern": "chunked", "chunk_size": 4}, 3, True, id="chunked-M3-train"),
    pytest.param({"attention_pattern": "window", "attention_window": 3}, 0, False, id="window-M0-eval"),
]
SLOW_CASES = [
    pytest.param(
        pattern,
        num_memory,
        training,
        marks=pytest.mark.slow,
        id=f"{pattern['attention_pattern']}-M{num_memory}-{'train' if training else 'eval'}",
    )
    for pattern in PATTERNS
    for num_memory in (0, 3)
    for training in (False, True)
]


@pytest.mark.parametrize(("pattern", "num_memory", "training"), FAST_CASES)
def test_fullgraph_compile_matches_eager(pattern: dict, num_memory: int, training: bool, gmat_config, tol) -> None:
    """``torch.compile(fullgraph=True)`` through the cheap ``eager`` compiler backend; same outputs.

    Training mode runs the autograd-capable path of the ``auto`` backend (dropout 0 so outputs compare).
    """
    config = gmat_config(
        num_memory_tokens=num_memory, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, **pattern
    )
    model = GmatModel(config).train(training)
    dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend="eager")
    inputs = _inputs(2, 13)
    want, got = model(**inputs), compiled(**inputs)
    torch.testing.assert_close(got.last_hidden_state, want.last_hidden_state, **tol("graph_rewrite"))
    torch.testing.assert_close(got.memory_state, want.memory_state, **tol("graph_rewrite"))


@pytest.mark.parametrize(("pattern", "num_memory", "training"), SLOW_CASES)
def test_dynamo_captures_one_graph(pattern: dict, num_memory: int, training: bool, gmat_config) -> None:
    """Every pattern and M, eval and training (attention dropout on): one graph, no breaks."""
    model = GmatModel(gmat_config(num_memory_tokens=num_memory, **pattern)).train(training)
    dynamo.reset()
    explanation = dynamo.explain(model)(**_inputs(2, 13))
    assert explanation.graph_break_count == 0, [b.reason for b in explanation.break_reasons]
    assert explanation.graph_count == 1


@pytest.mark.slow
def test_inductor_compile_matches_eager(gmat_config, tol) -> None:
    """The real CPU compiler (C++ codegen: about 100 s on a loaded 2-core machine)."""
    model = GmatModel(gmat_config(num_memory_tokens=3, attn_backend="blocked")).eval()
    dynamo.reset()
    compiled = torch.compile(model, fullgraph=True)
    inputs = _inputs(2, 13)
    with torch.no_grad():
        want, got = model(**inputs), compiled(**inputs)
    torch.testing.assert_close(got.last_hidden_state, want.last_hidden_state, **tol("graph_rewrite"))


@pytest.mark.slow
def test_compile_recipe_dynamic_lengths(gmat_config, tol, tmp_path) -> None:
    """The documented recipe: a saved checkpoint, ``torch.compile(model, dynamic=True)`` with the default
    (inductor) compiler, then other batches and ragged lengths without recompiling; B=1 and a length that is a
    multiple of the chunk size (C=4) may compile once more, and still match (C++ code generation on CPU:
    slow)."""
    GmatModel(gmat_config(num_memory_tokens=3)).save_pretrained(tmp_path / "ckpt")
    model = GmatModel.from_pretrained(tmp_path / "ckpt").eval()
    dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, dynamic=True)
    shapes = [(2, 13), (3, 29), (4, 22), (1, 40)]
    for step, shape in enumerate(shapes):
        inputs = _inputs(*shape)
        with torch.no_grad(), dynamo.config.patch(error_on_recompile=0 < step < len(shapes) - 1):
            want, got = model(**inputs), compiled(**inputs)
        torch.testing.assert_close(got.last_hidden_state, want.last_hidden_state, **tol("graph_rewrite"))
        torch.testing.assert_close(got.memory_state, want.memory_state, **tol("graph_rewrite"))


@pytest.mark.slow
@pytest.mark.parametrize("pattern", PATTERNS, ids=lambda p: p["attention_pattern"])
def test_onnx_export_dynamic_batch_and_length(pattern: dict, gmat_config, tol, tmp_path) -> None:
    """Dynamo ONNX export, then ONNX Runtime at the export shape and at other batches and lengths.

    HF Longformer's export bakes its padding arithmetic in at trace time and breaks when L changes; here the
    blocked backend's shapes stay symbolic. About 50 s per pattern on a loaded 2-core CPU, hence ``slow``.
    """
    pytest.importorskip("onnxscript")
    ort = pytest.importorskip("onnxruntime")
    model = GmatModel(gmat_config(num_memory_tokens=3, attn_backend="blocked", **pattern)).eval()
    batch, length = (
        torch.export.Dim("batch"),
        torch.export.Dim("length", max=model.config.max_position_embeddings),
    )
    path = tmp_path / "gmat.onnx"
    torch.onnx.export(
        model,
        (),
        kwargs=_inputs(*EXPORT_LENGTHS[0]),
        f=str(path),
        dynamo=True,
        input_names=["input_ids", "attention_mask"],
        output_names=["last_hidden_state", "memory_state", "pooler_output"],
        dynamic_shapes={"input_ids": {0: batch, 1: length}, "attention_mask": {0: batch, 1: length}},
    )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for shape in EXPORT_LENGTHS:
        inputs = _inputs(*shape, seed=1)
        with torch.no_grad():
            want = model(**inputs)
        got = session.run(None, {k: v.numpy() for k, v in inputs.items()})
        for name, value in zip(("last_hidden_state", "memory_state", "pooler_output"), got):
            torch.testing.assert_close(
                torch.from_numpy(value),
                getattr(want, name),
                **tol("graph_rewrite"),
                msg=lambda m, n=name, s=shape: f"{n} at (B, L)={s}: {m}",
            )


# ---- the export recipe: gmat.modeling.export.export_onnx and `gmat export onnx` --------------------------
def _export_cli(argv: list[str]) -> int:
    """``gmat export ...`` through the command's own parser (the module the ``gmat`` CLI dispatches to)."""
    parser = argparse.ArgumentParser(prog="gmat export")
    export_command.add_cli_arguments(parser)
    return export_command.cli_run(parser.parse_args(argv))


def _padded(batch: int, length: int, seed: int) -> dict[str, torch.Tensor]:
    inputs = _inputs(batch, length, seed)
    inputs["token_type_ids"] = (torch.arange(length) >= length // 3).long().expand(batch, -1).contiguous()
    return inputs


EXPORT_MODELS = [
    pytest.param(GmatForMaskedLM, {"attention_pattern": "chunked", "chunk_size": 4}, id="mlm-chunked"),
    pytest.param(  # one token type (RoBERTa-like): no token_type_ids input
        GmatModel,
        {"attention_pattern": "window", "attention_window": 3, "type_vocab_size": 1},
        marks=pytest.mark.slow,
        id="base-window-one-type",
    ),
    pytest.param(GmatForQuestionAnswering, {"attention_pattern": "dense"}, marks=pytest.mark.slow, id="qa-dense"),
    pytest.param(
        GmatForSequenceClassification,
        {"attention_pattern": "chunked", "chunk_size": 8},
        marks=pytest.mark.slow,
        id="seqcls-chunked",
    ),
]


@pytest.mark.parametrize(("model_class", "pattern"), EXPORT_MODELS)
def test_export_onnx_command_round_trips(model_class, pattern: dict, gmat_config, tol, tmp_path) -> None:
    """``gmat export onnx --model DIR --out FILE`` on a saved checkpoint (``export_onnx(model)`` for one case);
    then ONNX Runtime, run here on its own, matches the eager model at other batches and lengths (ragged, one
    block, the maximum 64)."""
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    model = model_class(gmat_config(num_memory_tokens=3, **pattern)).eval()
    model.save_pretrained(tmp_path / "ckpt")
    out = tmp_path / "onnx" / "gmat.onnx"
    if model_class is GmatForSequenceClassification:  # the Python entry on a model object, unverified
        assert export_module.export_onnx(model, out, verify=False) == out
    else:
        assert _export_cli(["onnx", "--model", str(tmp_path / "ckpt"), "--out", str(out)]) == 0
    names = onnx_output_names(model)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    input_names = ["input_ids", "attention_mask"] + (["token_type_ids"] if model.config.type_vocab_size > 1 else [])
    assert [i.name for i in session.get_inputs()] == input_names
    assert [o.name for o in session.get_outputs()] == names
    for shape in [(3, 29), (1, 13), (4, 64)]:
        inputs = {k: v for k, v in _padded(*shape, seed=2).items() if k in input_names}
        with torch.no_grad():
            want = model(**inputs)
        got = session.run(names, {k: v.numpy() for k, v in inputs.items()})
        for name, value in zip(names, got):
            torch.testing.assert_close(
                torch.from_numpy(value),
                getattr(want, name),
                **tol("graph_rewrite"),
                msg=lambda m, n=name, s=shape: f"{n} at (B, L)={s}: {m}",
            )
    # The export's own check fails loudly on a graph that does not compute the model.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.5)
    with pytest.raises(RuntimeError, match="differs from PyTorch"):
        export_module._verify(model, out, names, [inputs])


def test_export_onnx_bad_input_exit_2(bert_config, tmp_path, caplog) -> None:
    """A missing directory, a BERT checkpoint and a folder without config.json: one line naming --model."""
    BertModel(bert_config()).save_pretrained(tmp_path / "bert")
    (tmp_path / "empty").mkdir()
    cases = {
        tmp_path / "nowhere": "no such directory",
        tmp_path / "bert": "config.json has model_type='bert', not 'gmat'; convert it first with gmat convert",
        tmp_path / "empty": "not a GMAT checkpoint (no config.json)",
    }
    for model_dir, message in cases.items():
        caplog.clear()
        with caplog.at_level(logging.ERROR):
            assert _export_cli(["onnx", "--model", str(model_dir), "--out", str(tmp_path / "x.onnx")]) == 2
        assert [r.getMessage() for r in caplog.records] == [f"gmat export: --model {model_dir}: {message}"]
    assert not (tmp_path / "x.onnx").exists()
    with pytest.raises(SystemExit):  # only onnx is a format
        _export_cli(["tflite", "--model", str(tmp_path / "bert"), "--out", str(tmp_path / "x")])


# ---- gmat export bert: a GMAT model with M=0 and the dense pattern as transformers' BERT -----------------------
BERT_EXPORTS = [
    (GmatModel, BertModel),
    (GmatForMaskedLM, BertForMaskedLM),
    (GmatForQuestionAnswering, BertForQuestionAnswering),
    (GmatForSequenceClassification, BertForSequenceClassification),
    (GmatForTokenClassification, BertForTokenClassification),
]


@pytest.mark.parametrize(("model_class", "bert_class"), BERT_EXPORTS, ids=[c.__name__ for c, _ in BERT_EXPORTS])
def test_export_bert_matches_transformers(model_class, bert_class, gmat_config, tol, tmp_path) -> None:
    """``gmat export bert``: transformers' own class loads the folder and computes what the GMAT model computes."""
    model = model_class(gmat_config(num_memory_tokens=0, attention_pattern="dense", num_labels=3)).eval()
    with torch.no_grad():  # perturbed: a dropped bias, LayerNorm or head weight changes the outputs
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(tmp_path / "gmat")
    assert _export_cli(["bert", "--model", str(tmp_path / "gmat"), "--out", str(tmp_path / "bert")]) == 0
    bert = AutoModel.from_pretrained(tmp_path / "bert") if bert_class is BertModel else None
    bert = bert or bert_class.from_pretrained(tmp_path / "bert")
    assert type(bert) is bert_class
    inputs = _padded(3, 29, seed=4)
    real = inputs["attention_mask"].bool()
    with torch.no_grad():
        want, got = model(**inputs), bert.eval()(**inputs)
    names = [k for k in ("last_hidden_state", "pooler_output", "logits", "start_logits", "end_logits") if k in got]
    assert names
    for name in names:
        ours, theirs = getattr(want, name), getattr(got, name)
        if ours.shape[:2] == real.shape:
            ours, theirs = ours[real], theirs[real]
        torch.testing.assert_close(theirs, ours, **tol("bert_oracle"), msg=lambda m, n=name: f"{n}: {m}")
    with torch.no_grad():  # the export's own check fails loudly on weights that do not compute the model
        for p in bert.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    with pytest.raises(RuntimeError, match="differs from the GMAT model's"):
        export_module._verify_bert(model, bert, tmp_path / "bert")


def test_export_bert_then_convert_keeps_the_span_head(gmat_config, tmp_path) -> None:
    """A short-input QA model, exported and converted to M=4 chunked at 4x the length, keeps every weight."""
    model = GmatForQuestionAnswering(gmat_config(num_memory_tokens=0, attention_pattern="dense"))
    model.save_pretrained(tmp_path / "short")
    export_module.export_bert(tmp_path / "short", tmp_path / "bert")
    length = 4 * model.config.max_position_embeddings
    convert_to_gmat(
        tmp_path / "bert",
        tmp_path / "long",
        num_memory_tokens=4,
        attention_pattern="chunked",
        chunk_size=8,
        max_length=length,
    )
    long = GmatForQuestionAnswering.from_pretrained(tmp_path / "long")
    assert long.config.max_position_embeddings == length and long.config.num_memory_tokens == 4
    theirs = long.state_dict()
    for key, value in model.state_dict().items():
        if key == "gmat.embeddings.position_embeddings.weight":  # extended by copies of the table
            torch.testing.assert_close(theirs[key], value.repeat(4, 1), rtol=0, atol=0)
        else:
            torch.testing.assert_close(theirs[key], value, rtol=0, atol=0, msg=lambda m, k=key: f"{k}: {m}")


def test_export_bert_refuses_memory_and_sparse_patterns(gmat_config, tmp_path, caplog) -> None:
    """Memory or a sparse pattern: not a BERT; one line naming --model, exit 2, nothing written."""
    cases = {
        "m2": (dict(num_memory_tokens=2, attention_pattern="dense"), "has M=2 and pattern 'dense'"),
        "chunked": (
            dict(num_memory_tokens=0, attention_pattern="chunked", chunk_size=4),
            "has M=0 and pattern 'chunked'",
        ),
    }
    for name, (fields, message) in cases.items():
        GmatModel(gmat_config(**fields)).save_pretrained(tmp_path / name)
        caplog.clear()
        with caplog.at_level(logging.ERROR):
            assert _export_cli(["bert", "--model", str(tmp_path / name), "--out", str(tmp_path / "out")]) == 2
        want = f"gmat export: --model {tmp_path / name}: {message}; only M=0 with the dense pattern is a BERT"
        assert [r.getMessage() for r in caplog.records] == [want]
    assert not (tmp_path / "out").exists()


def test_export_refuses_weights_its_class_would_drop(gmat_config, tmp_path, caplog) -> None:
    """config.json naming GmatModel over a QA model's weights (as training wrote before the fix): exit 2, one line,
    instead of an export without the span head."""
    model = GmatForQuestionAnswering(gmat_config(num_memory_tokens=0, attention_pattern="dense"))
    model.save_pretrained(tmp_path / "qa")
    config = json.loads((tmp_path / "qa" / "config.json").read_text())
    (tmp_path / "qa" / "config.json").write_text(json.dumps({**config, "architectures": ["GmatModel"]}))
    for fmt, out in (("bert", tmp_path / "bert"), ("onnx", tmp_path / "x.onnx")):
        caplog.clear()
        with caplog.at_level(logging.ERROR):
            assert _export_cli([fmt, "--model", str(tmp_path / "qa"), "--out", str(out)]) == 2
        [line] = [r.getMessage() for r in caplog.records]
        assert line.startswith(f"gmat export: --model {tmp_path / 'qa'}: does not load as GmatModel")
        assert "--allow" not in line and "\n" not in line and line.count(str(tmp_path / "qa")) == 1
        assert not out.exists()
