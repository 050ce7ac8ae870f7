"""Export a GMAT checkpoint to ONNX with a dynamic batch and sequence length (``gmat export onnx``).

The graph is captured by PyTorch's dynamo exporter (``torch.onnx.export(..., dynamo=True)``) through the
``blocked`` attention backend, whose block count is computed from the symbolic length, so one file serves
every batch size B and length L up to ``max_position_embeddings``. Inputs are ``input_ids`` and
``attention_mask`` (plus ``token_type_ids`` when the model has more than one token type), all int64
``(B, L)``; the outputs depend on the model class named in the checkpoint's ``config.json``:

* ``GmatModel``: ``last_hidden_state`` ``(B, L, d)``, ``memory_state`` ``(B, M, d)`` and, with a pooler,
  ``pooler_output`` ``(B, d)``;
* ``GmatForMaskedLM`` / ``GmatForTokenClassification``: ``logits`` ``(B, L, V or num_labels)``;
* ``GmatForSequenceClassification``: ``logits`` ``(B, num_labels)``;
* ``GmatForQuestionAnswering``: ``start_logits``, ``end_logits`` ``(B, L)``.

After writing the file, ``export_onnx`` runs it in ONNX Runtime at the trace shape and at a different batch
and length and compares every output with the eager model (``verify=True``), so a graph that only holds at
the trace shape is an error, not a file.

Needs ``onnx``, ``onnxscript`` (the exporter) and ``onnxruntime`` (the check), imported only when called.

``export_bert`` (``gmat export bert``) writes a GMAT model without memory and with the dense pattern (that is,
a BERT) as a plain transformers BERT checkpoint of the matching class (``BertModel``, ``BertForMaskedLM``,
``BertForQuestionAnswering``, ``BertForSequenceClassification``, ``BertForTokenClassification``): the weights
keep their names, ``gmat.`` becomes ``bert.``. The result loads anywhere BERT does, and ``gmat convert`` makes it
a GMAT model of another pattern, memory or length again, head included (the way to start long-document models
from a GMAT model fine-tuned on short inputs). The written checkpoint is run against the GMAT model before the
call returns.
"""

from __future__ import annotations

import importlib
import json
import logging
import shutil
from pathlib import Path

import torch
from torch import nn

from gmat.modeling.configuration_gmat import GmatConfig
from gmat.modeling.convert import BERT_FIELDS, TOKENIZER_FILES
from gmat.modeling.loading import CheckpointError, load_pretrained
from gmat.modeling.modeling_gmat import (
    GmatForMaskedLM,
    GmatForQuestionAnswering,
    GmatForSequenceClassification,
    GmatForTokenClassification,
    GmatModel,
    GmatPreTrainedModel,
)
from gmat.ops.blocked import window_block_size

__all__ = ["export_bert", "export_onnx", "load_for_export", "onnx_output_names"]

logger = logging.getLogger(__name__)

_CLASSES: dict[str, type[GmatPreTrainedModel]] = {
    cls.__name__: cls
    for cls in (
        GmatModel,
        GmatForMaskedLM,
        GmatForSequenceClassification,
        GmatForTokenClassification,
        GmatForQuestionAnswering,
    )
}
# (atol, rtol) of ONNX Runtime against eager accepted by verify=True: the same maths through another graph
# (fp32), summed in another order.
VERIFY_TOL = (1e-4, 1e-4)


def load_for_export(model_dir: str | Path, attn_backend: str | None = "blocked") -> GmatPreTrainedModel:
    """Load a GMAT checkpoint as the class its ``config.json`` names (``architectures[0]``), in eval mode.

    Args:
        model_dir: a directory written by ``save_pretrained`` (or ``gmat convert`` / ``gmat train``).
        attn_backend: the attention backend of the loaded model (``"blocked"``: the one whose shapes stay
            symbolic); None keeps the checkpoint's.

    Raises:
        ValueError: when ``model_dir`` is not a directory or not a GMAT checkpoint.
    """
    path = Path(model_dir)
    if not path.is_dir():
        raise ValueError(f"--model {model_dir}: no such directory")
    config_path = path / "config.json"
    if not config_path.is_file():
        raise ValueError(f"--model {model_dir}: not a GMAT checkpoint (no config.json)")
    raw = json.loads(config_path.read_text())
    if raw.get("model_type") != GmatConfig.model_type:
        raise ValueError(
            f"--model {model_dir}: config.json has model_type={raw.get('model_type')!r}, not 'gmat'; "
            f"convert it first with gmat convert"
        )
    name = (raw.get("architectures") or ["GmatModel"])[0]
    if name not in _CLASSES:
        raise ValueError(f"--model {model_dir}: architectures[0]={name!r} is not one of {sorted(_CLASSES)}")
    overrides = {} if attn_backend is None else {"attn_backend": attn_backend}
    try:  # verified: weights that the named class has no place for (another head) are refused, not dropped
        model, _ = load_pretrained(_CLASSES[name], path, **overrides)
    except CheckpointError as err:
        reason = str(err).removeprefix(f"{path}: ").split(" (pass --")[0].split("; or pass --")[0]  # not export's flags
        raise ValueError(
            f"--model {model_dir}: does not load as {name}, the class its config.json names: {reason}"
        ) from err
    return model.eval()


def onnx_output_names(model: GmatPreTrainedModel) -> list[str]:
    """The outputs ``export_onnx`` writes for ``model`` (module doc), in graph order."""
    if isinstance(model, GmatModel):
        return ["last_hidden_state", "memory_state"] + (["pooler_output"] if model.pooler is not None else [])
    if isinstance(model, GmatForQuestionAnswering):
        return ["start_logits", "end_logits"]
    if isinstance(model, (GmatForMaskedLM, GmatForSequenceClassification, GmatForTokenClassification)):
        return ["logits"]
    raise ValueError(f"cannot export {type(model).__name__}: expected one of {sorted(_CLASSES)}")


class _Outputs(nn.Module):
    """The model with plain tensor outputs (``names``, in order) instead of a ``ModelOutput``."""

    def __init__(self, model: GmatPreTrainedModel, names: list[str]) -> None:
        super().__init__()
        self.model, self.names = model, names

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, ...]:
        out = self.model(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids, return_dict=True
        )
        return tuple(getattr(out, name) for name in self.names)


def _trace_length(config: GmatConfig) -> int:
    """The trace length: two attention blocks plus a ragged tail, at most the model's max length.

    The trace must span >= 2 blocks of the blocked backend, or the block count is specialised to 1.
    """
    if config.attention_pattern == "chunked":
        block = config.chunk_size
    elif config.attention_pattern == "window":
        block = window_block_size(config.attention_window)
    else:
        block = 16
    return min(config.max_position_embeddings, 2 * block + block // 2 + 1)


def _example(config: GmatConfig, batch: int, length: int, seed: int) -> dict[str, torch.Tensor]:
    """Random ids ``(B, L)``, the last row right-padded from 2/3 of L; token types when the model has them."""
    g = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(0, config.vocab_size, (batch, length), generator=g)
    attention_mask = torch.ones(batch, length, dtype=torch.long)
    attention_mask[-1, max(1, length * 2 // 3) :] = 0
    inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
    if config.type_vocab_size > 1:
        inputs["token_type_ids"] = (torch.arange(length) >= length // 2).long().expand(batch, -1).contiguous()
    return inputs


def _require(module: str) -> None:
    try:
        importlib.import_module(module)
    except ImportError as err:
        raise ValueError(
            f"ONNX export needs the {module} package, which is not installed (pip install onnx onnxscript onnxruntime)"
        ) from err


def export_onnx(
    model: str | Path | GmatPreTrainedModel,
    out_path: str | Path,
    *,
    attn_backend: str | None = "blocked",
    verify: bool = True,
) -> Path:
    """Write ``model`` as an ONNX graph with dynamic batch and length, checked against eager by default.

    Args:
        model: a GMAT checkpoint directory, or a GMAT model (exported in eval mode with its own backend).
        out_path: the ``.onnx`` file to write (its folder is created).
        attn_backend: for a directory, the attention backend the graph is traced through (module doc); None
            keeps the checkpoint's.
        verify: run the file in ONNX Runtime at the trace shape and at another (B, L) and compare with the
            eager model (``VERIFY_TOL``, real tokens).

    Returns:
        ``out_path``.

    Raises:
        ValueError: when ``model`` is not a GMAT checkpoint, or onnxscript (onnxruntime with ``verify``) is
            missing.
        RuntimeError: when ONNX Runtime's outputs differ from eager by more than ``VERIFY_TOL``.
    """
    _require("onnxscript")
    if verify:
        _require("onnxruntime")
    if not isinstance(model, nn.Module):
        model = load_for_export(model, attn_backend)
    elif not isinstance(model, GmatPreTrainedModel):
        raise ValueError(f"export_onnx expects a GMAT model or checkpoint directory, got {type(model).__name__}")
    was_training = model.training
    model.eval()
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    config, names = model.config, onnx_output_names(model)
    length = _trace_length(config)
    example = _example(config, 2, length, seed=0)  # B=2: a size-1 dimension would be specialised
    batch_dim = torch.export.Dim("batch")
    length_dim = torch.export.Dim("length", max=config.max_position_embeddings)
    try:
        with torch.no_grad():
            torch.onnx.export(
                _Outputs(model, names).eval(),
                (),
                kwargs=example,
                f=str(out_path),
                dynamo=True,
                verbose=False,
                input_names=list(example),
                output_names=names,
                dynamic_shapes={name: {0: batch_dim, 1: length_dim} for name in example},
            )
        if verify:
            other = max(2, length - 7)  # another batch and a length with a different ragged tail
            _verify(model, out_path, names, [example, _example(config, 3, other, seed=1)])
    finally:
        model.train(was_training)
    logger.info("wrote %s (%s, inputs %s, outputs %s)", out_path, type(model).__name__, list(example), names)
    return out_path


def _verify(model: nn.Module, path: Path, names: list[str], batches: list[dict[str, torch.Tensor]]) -> None:
    """Run ``path`` in ONNX Runtime on each batch; raise unless every output matches eager (``VERIFY_TOL``).

    Outputs with a sequence axis are compared at real tokens only: padded rows are never read, and their
    values differ between two correct graphs (measured: 1.4e-4 at padded rows, 2.9e-6 at real ones, converted
    MiniLM at L=3002).
    """
    import onnxruntime as ort

    atol, rtol = VERIFY_TOL
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for inputs in batches:
        with torch.no_grad():
            want = model(**inputs, return_dict=True)
        got = session.run(names, {k: v.numpy() for k, v in inputs.items()})
        shape = tuple(inputs["input_ids"].shape)
        real = inputs["attention_mask"].bool()  # (B, L)
        for name, value in zip(names, got):
            ours, theirs = torch.from_numpy(value), getattr(want, name)
            if tuple(ours.shape[:2]) == shape:  # (B, L, ...): real tokens only
                ours, theirs = ours[real], theirs[real]
            excess = ((ours - theirs).abs() - atol - rtol * theirs.abs()).max().item()
            if not excess <= 0.0:
                error = (ours - theirs).abs().max().item()
                raise RuntimeError(
                    f"{path}: ONNX Runtime's {name} differs from PyTorch by up to {error:.3g} (allowed "
                    f"{atol} + {rtol}·|value|) at (B, L)={shape}"
                )


# GMAT class -> the transformers BERT class with the same head (and the same head weight names).
_BERT_CLASSES = {
    "GmatModel": "BertModel",
    "GmatForMaskedLM": "BertForMaskedLM",
    "GmatForQuestionAnswering": "BertForQuestionAnswering",
    "GmatForSequenceClassification": "BertForSequenceClassification",
    "GmatForTokenClassification": "BertForTokenClassification",
}


def export_bert(model_dir: str | Path, out_dir: str | Path, *, verify: bool = True) -> Path:
    """Write a GMAT checkpoint with M=0 and the dense pattern as a transformers BERT checkpoint (module doc).

    Args:
        model_dir: the GMAT checkpoint directory.
        out_dir: the folder to write (config, ``model.safetensors``, the tokenizer files; created).
        verify: load the written folder with transformers and compare its outputs with the GMAT model's on a
            right-padded batch (``VERIFY_TOL``, real tokens).

    Returns:
        ``out_dir``.

    Raises:
        ValueError: when ``model_dir`` is not a GMAT checkpoint, has memory slots or a sparse pattern (a BERT
            would compute something else), or ``out_dir`` is ``model_dir``.
        RuntimeError: when the BERT checkpoint's outputs differ from the GMAT model's.
    """
    import transformers

    model = load_for_export(model_dir, attn_backend=None)
    config = model.config
    if config.num_memory_tokens or config.attention_pattern != "dense":
        raise ValueError(
            f"--model {model_dir}: has M={config.num_memory_tokens} and pattern {config.attention_pattern!r}; "
            f"only M=0 with the dense pattern is a BERT"
        )
    out = Path(out_dir)
    if out.resolve() == Path(model_dir).resolve():
        raise ValueError(f"--out {out_dir} is the model's own folder")
    fields = {f: getattr(config, f) for f in BERT_FIELDS if hasattr(config, f)}
    name = _BERT_CLASSES[type(model).__name__]
    # BERT's span head has num_labels outputs, GMAT's always 2 (start, end).
    labels = {"num_labels": 2} if name == "BertForQuestionAnswering" else {"id2label": config.id2label}
    bert_config = transformers.BertConfig(**fields, **labels, max_position_embeddings=config.max_position_embeddings)
    bert = getattr(transformers, name)(bert_config).eval()
    state = {(f"bert.{k[5:]}" if k.startswith("gmat.") else k): v for k, v in model.state_dict().items()}
    if "cls.predictions.bias" in state:  # BertForMaskedLM names its decoder bias twice (tied)
        state["cls.predictions.decoder.bias"] = state["cls.predictions.bias"]
    bert.load_state_dict(state, strict=True)
    bert_config.architectures = [name]
    out.mkdir(parents=True, exist_ok=True)
    bert.save_pretrained(out)
    for file in TOKENIZER_FILES:
        if (Path(model_dir) / file).is_file():
            shutil.copyfile(Path(model_dir) / file, out / file)
    if verify:
        _verify_bert(model, getattr(transformers, name).from_pretrained(out).eval(), out)
    logger.info("wrote %s (%s from %s)", out, name, type(model).__name__)
    return out


def _verify_bert(model: GmatPreTrainedModel, bert: nn.Module, out: Path) -> None:
    """Raise unless ``bert`` computes what ``model`` computes on a right-padded batch (real tokens)."""
    inputs = _example(model.config, 2, min(model.config.max_position_embeddings, 37), seed=0)
    real = inputs["attention_mask"].bool()
    atol, rtol = VERIFY_TOL
    with torch.no_grad():
        want, got = model(**inputs, return_dict=True), bert(**inputs, return_dict=True)
    for key in ("last_hidden_state", "pooler_output", "logits", "start_logits", "end_logits"):
        ours, theirs = getattr(want, key, None), getattr(got, key, None)
        if ours is None or theirs is None:
            continue
        if tuple(ours.shape[:2]) == tuple(real.shape):
            ours, theirs = ours[real], theirs[real]
        if not torch.allclose(theirs, ours, atol=atol, rtol=rtol):
            error = (theirs - ours).abs().max().item()
            raise RuntimeError(f"{out}: the BERT checkpoint's {key} differs from the GMAT model's by up to {error:.3g}")
