"""Every model of a run comes from here: ``ModelSettings`` (a run config's ``model:`` section) -> a GMAT model.

One builder, three starts (``build_model``):

* from scratch: ``GmatConfig`` from the settings plus what the task knows (vocabulary, L, labels);
* from a BERT-family checkpoint (a folder, or ``"minilm"``): converted on the spot with the settings' M,
  pattern and L (``convert_bert_to_gmat``), the head class's new weights freshly initialised;
* from a GMAT checkpoint: loaded as it is; its M / pattern must be the settings' and its length must cover L.

The task decides the head class and the task-side fields (``num_labels``, ``pad_token_id``, ...), so no task
assembles a ``GmatConfig`` of its own.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safetensors import safe_open
from transformers import PreTrainedModel

from gmat.modeling.configuration_gmat import GmatConfig
from gmat.modeling.convert import convert_bert_to_gmat, is_bert_checkpoint
from gmat.modeling.loading import load_pretrained
from gmat.ops import AttentionPattern, list_backends

__all__ = ["ModelSettings", "build_model", "gmat_config"]


@dataclass(frozen=True)
class ModelSettings:
    """Model hyperparameters of a run (``GmatConfig`` fields; vocabulary, labels and L come from the task).

    When a run starts from a checkpoint only the pattern (M, kind, size) and ``attn_backend`` apply: the
    sizes are the checkpoint's.

    Attributes:
        hidden_size: d.
        num_hidden_layers: number of blocks.
        num_attention_heads: H.
        intermediate_size: feed-forward width.
        hidden_dropout_prob: dropout on embeddings and residual branches.
        attention_probs_dropout_prob: dropout on attention probabilities.
        num_memory_tokens: M (0 = plain sparse Transformer).
        attention_pattern: ``"chunked"``, ``"window"`` or ``"dense"``.
        chunk_size: C (chunked only; 128 when unset).
        attention_window: one-sided radius w (window only; 64 when unset).
        attn_backend: ``"auto"`` or a backend name of ``gmat.ops``.
        initializer_range: std of the normal weight initialisation.
        num_encoder_layers: compression models only: layers of the encoder that writes the memory.
        num_bottleneck_layers: compression models only.
        num_decoder_layers: compression models only.
    """

    hidden_size: int = 64
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    intermediate_size: int = 128
    hidden_dropout_prob: float = 0.0
    attention_probs_dropout_prob: float = 0.0
    num_memory_tokens: int = 8
    attention_pattern: str = "chunked"
    chunk_size: int | None = None
    attention_window: int | None = None
    attn_backend: str = "auto"
    initializer_range: float = 0.02
    num_encoder_layers: int = 2
    num_bottleneck_layers: int = 1
    num_decoder_layers: int = 2

    def __post_init__(self) -> None:
        self._check_sizes()
        pattern = self.pattern()  # the one kind <-> size rule (gmat.ops.AttentionPattern), keys named model.*
        object.__setattr__(self, "chunk_size", pattern.chunk_size)
        object.__setattr__(self, "attention_window", pattern.window)

    def _check_sizes(self) -> None:
        """The ``GmatConfig`` rules of these fields, checked here so that an error names the ``model.*`` key."""
        minimum = {
            "hidden_size": 1,
            "num_hidden_layers": 1,
            "num_attention_heads": 1,
            "intermediate_size": 1,
            "num_encoder_layers": 1,
            "num_bottleneck_layers": 0,
            "num_decoder_layers": 1,
        }
        for name, low in minimum.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"model.{name} must be an int >= {low}, got {value!r}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"model.hidden_size={self.hidden_size} must be divisible by "
                f"model.num_attention_heads={self.num_attention_heads}"
            )
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"model.{name} must be a probability in [0, 1), got {getattr(self, name)!r}")
        if not self.initializer_range > 0:
            raise ValueError(f"model.initializer_range must be > 0, got {self.initializer_range!r}")
        backends = ["auto", *list_backends()]
        if self.attn_backend not in backends:
            raise ValueError(f"model.attn_backend must be one of {backends}, got {self.attn_backend!r}")

    def pattern(self) -> AttentionPattern:
        """The attention pattern of these settings.

        Raises:
            ValueError: naming the ``model.*`` key of an invalid kind or size.
        """
        return AttentionPattern.from_fields(
            self.num_memory_tokens, self.attention_pattern, self.chunk_size, self.attention_window, prefix="model."
        )


def gmat_config(
    settings: ModelSettings, *, vocab_size: int, max_length: int, config_class: type = GmatConfig, **fields: Any
) -> GmatConfig:
    """The ``GmatConfig`` (or subclass) of a model built from scratch.

    Args:
        settings: the run's model settings.
        vocab_size: the task's vocabulary.
        max_length: L, the longest sequence (``max_position_embeddings``).
        config_class: ``GmatConfig`` or a subclass (e.g. the compression config).
        **fields: task-side fields (``num_labels``, ``pad_token_id``, ``sparse_prediction``, ...).
    """
    s = settings
    return config_class(
        vocab_size=vocab_size,
        hidden_size=s.hidden_size,
        num_hidden_layers=s.num_hidden_layers,
        num_attention_heads=s.num_attention_heads,
        intermediate_size=s.intermediate_size,
        hidden_dropout_prob=s.hidden_dropout_prob,
        attention_probs_dropout_prob=s.attention_probs_dropout_prob,
        max_position_embeddings=max_length,
        **s.pattern().config_fields(),
        attn_backend=s.attn_backend,
        initializer_range=s.initializer_range,
        **fields,
    )


def _check_label_count(init: str, init_key: str, num_labels: int | None) -> None:
    """Refuse a checkpoint whose classifier has another label count than the task's (named, in one line)."""
    weights = Path(init) / "model.safetensors"
    if num_labels is None or not weights.is_file():
        return  # nothing to compare, or a broken folder: the verified loader reports that
    with safe_open(str(weights), framework="pt") as f:
        if "classifier.weight" not in f.keys():
            return  # no classifier (an MLM or encoder checkpoint): the run trains a new one
        theirs = f.get_slice("classifier.weight").get_shape()[0]  # (labels, d)
    if theirs != num_labels:
        raise ValueError(
            f"{init_key}={init!r} holds a classifier of {theirs} labels, the task has {num_labels}: start "
            "from the encoder it was trained from (an MLM or converted checkpoint) to train a new classifier"
        )


def build_model(
    head: type[PreTrainedModel],
    settings: ModelSettings,
    *,
    vocab_size: int | None,
    max_length: int,
    init: str = "",
    init_key: str = "task.pretrained",
    **fields: Any,
) -> PreTrainedModel:
    """Build a ``head`` model (``GmatForMaskedLM``, ``GmatForQuestionAnswering``, ...) for a run.

    Args:
        head: the GMAT model class.
        settings: the run's model settings.
        vocab_size: the task's vocabulary; a checkpoint with another one is refused (None: take the checkpoint's).
        max_length: L.
        init: ``""`` (from scratch), a BERT-family checkpoint folder or ``"minilm"`` (converted with the
            settings' pattern and ``max_length``), or a GMAT checkpoint folder.
        init_key: the config key ``init`` came from, for error messages.
        **fields: task-side config fields, set on the config whatever the start (e.g. ``num_labels``).

    Raises:
        ValueError: when a GMAT checkpoint's pattern or length disagrees with the run, or a checkpoint's
            vocabulary is not the task's (the message names ``init_key``).
    """
    if not init:
        if vocab_size is None:
            raise ValueError(f"{init_key} is empty: a model from scratch needs the task's vocabulary")
        return head(gmat_config(settings, vocab_size=vocab_size, max_length=max_length, **fields))
    pattern = settings.pattern()
    if is_bert_checkpoint(init):
        with tempfile.TemporaryDirectory(prefix="gmat-convert-") as tmp:
            convert_bert_to_gmat(
                init, tmp, **pattern.config_fields(), max_length=max_length, attn_backend=settings.attn_backend
            )
            model, _ = load_pretrained(head, tmp, allow_random_head=True, head_seed=None, **fields)
    else:  # verified: a new head is expected (the run trains it), missing encoder weights are not
        _check_label_count(init, init_key, fields.get("num_labels"))
        model, _ = load_pretrained(head, init, allow_random_head=True, head_seed=None, **fields)
        theirs = model.config.build_pattern()
        if theirs != pattern or model.config.max_position_embeddings < max_length:
            raise ValueError(
                f"{init_key}={init!r} has pattern {theirs} and max length {model.config.max_position_embeddings}; "
                f"the run asks for {pattern} and L={max_length} (convert it again with gmat convert)"
            )
    if vocab_size is not None and model.config.vocab_size != vocab_size:
        raise ValueError(
            f"{init_key}={init!r} has a vocabulary of {model.config.vocab_size}, the task's tokenizer "
            f"{vocab_size}: tokenise with the checkpoint's tokenizer"
        )
    return model
