"""``GmatConfig``: BERT's hyperparameters plus the GMAT memory and attention pattern (docs/design.md §2).

The field names are BERT's (so a ``BertConfig`` dictionary converts by adding the GMAT fields) plus:

* ``num_memory_tokens`` — M, the number of global memory slots (0 = no memory);
* ``attention_pattern`` — ``"chunked"``, ``"window"`` or ``"dense"``, the sparse pattern over the sequence;
* ``chunk_size`` — C, used only by ``"chunked"`` (defaults to 128 there, must be unset otherwise);
* ``attention_window`` — w, the one-sided inclusive radius, used only by ``"window"`` (defaults to 64
  there, must be unset otherwise);
* ``attn_backend`` — the name handed to ``gmat.ops.gmat_attention`` (``"auto"`` or a registered backend);
* ``sparse_prediction`` — ``GmatForMaskedLM`` given ``labels`` runs its vocabulary head on the labelled
  positions only and returns their logits ``(N, V)`` (ModernBERT's option of the same name): the head is
  most of an MLM step's cost on a small model.

Every field is checked when the config is built; a bad value raises ``ValueError`` naming the field and the
value.
"""

from __future__ import annotations

import warnings
from typing import Any, ClassVar

from transformers import PretrainedConfig

from gmat.ops import AttentionPattern, list_backends

__all__ = ["GmatConfig"]


_WARNED: set[tuple[str, int, int]] = set()  # (field, value, max_position_embeddings) already warned about


def _warn_once_wider_than_input(name: str, value: int, max_len: int) -> None:
    """Warn (once per process and value) that ``name`` covers every input the model accepts."""
    if (name, value, max_len) in _WARNED:
        return
    _WARNED.add((name, value, max_len))
    warnings.warn(
        f"GmatConfig.{name}={value} covers max_position_embeddings={max_len}: every input fits in one "
        f"{'chunk' if name == 'chunk_size' else 'window'}, so attention is dense over the sequence",
        UserWarning,
        stacklevel=5,  # the line that builds the config (through transformers' dataclass init)
    )


def _require_int(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"GmatConfig.{name} must be an int >= {minimum}, got {value!r}")


def _require_prob(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise ValueError(f"GmatConfig.{name} must be a probability in [0, 1), got {value!r}")


class GmatConfig(PretrainedConfig):
    """Configuration of a GMAT encoder (BERT post-LN blocks over ``[memory ; sequence]``).

    Args (beyond ``PretrainedConfig``'s, e.g. ``num_labels``):
        vocab_size: size of the token vocabulary.
        hidden_size: d, the model width.
        num_hidden_layers: number of blocks.
        num_attention_heads: H; must divide ``hidden_size`` (D = d / H).
        intermediate_size: width of the feed-forward layer.
        hidden_act: activation of the feed-forward layer (a ``transformers.activations.ACT2FN`` key).
        hidden_dropout_prob: dropout on embeddings and residual branches.
        attention_probs_dropout_prob: dropout on attention probabilities (passed to the op in training).
        max_position_embeddings: the largest sequence length L the model accepts.
        type_vocab_size: number of token types (segments).
        initializer_range: std of the normal initialisation.
        layer_norm_eps: LayerNorm epsilon.
        pad_token_id: id of the padding token.
        classifier_dropout: dropout before classification heads (None = ``hidden_dropout_prob``).
        num_memory_tokens: M, the number of global memory slots.
        attention_pattern: ``"chunked"``, ``"window"`` or ``"dense"``.
        chunk_size: C for ``"chunked"`` (default 128); must be None for other patterns.
        attention_window: one-sided radius w for ``"window"`` (default 64); must be None otherwise.
        attn_backend: ``"auto"`` or a backend name from ``gmat.ops.list_backends()``.
        sparse_prediction: with ``labels``, ``GmatForMaskedLM`` scores only positions whose label is not
            -100 and returns logits ``(N, vocab_size)``, N = labelled positions in row-major order.

    Raises:
        ValueError: on a field of the wrong type or range, an unknown pattern or backend, a size given for a
            pattern that does not use it, or ``hidden_size`` not divisible by ``num_attention_heads``.
    """

    model_type: ClassVar[str] = "gmat"
    # The Trainer's prediction loop keeps only logits; hidden states stay out of its gathered predictions.
    keys_to_ignore_at_inference: ClassVar[list[str]] = [
        "last_hidden_state",
        "memory_state",
        "hidden_states",
        "memory_hidden_states",
        "pooler_output",
    ]

    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-12
    pad_token_id: int | None = 0
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    classifier_dropout: float | None = None
    tie_word_embeddings: bool = True
    num_memory_tokens: int = 0
    attention_pattern: str = "chunked"
    chunk_size: int | None = None
    attention_window: int | None = None
    attn_backend: str = "auto"
    sparse_prediction: bool = False

    def __post_init__(self, **kwargs: Any) -> None:
        """Fill pattern-dependent defaults, validate the fields, then run ``PretrainedConfig``'s init."""
        pattern = AttentionPattern.from_fields(  # the pattern rule and its size defaults live in gmat.ops
            self.num_memory_tokens,
            self.attention_pattern,
            self.chunk_size,
            self.attention_window,
            prefix="GmatConfig.",
        )
        self.chunk_size, self.attention_window = pattern.chunk_size, pattern.window
        self._check_fields()
        super().__post_init__(**kwargs)

    def _check_fields(self) -> None:
        for name in (
            "vocab_size",
            "hidden_size",
            "num_hidden_layers",
            "num_attention_heads",
            "intermediate_size",
            "max_position_embeddings",
            "type_vocab_size",
        ):
            _require_int(name, getattr(self, name), 1)
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"GmatConfig.hidden_size={self.hidden_size} must be divisible by "
                f"num_attention_heads={self.num_attention_heads}"
            )
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
            _require_prob(name, getattr(self, name))
        if self.classifier_dropout is not None:
            _require_prob("classifier_dropout", self.classifier_dropout)
        if self.attention_pattern == "chunked" and self.chunk_size > self.max_position_embeddings:
            _warn_once_wider_than_input("chunk_size", self.chunk_size, self.max_position_embeddings)
        if self.attention_pattern == "window" and self.attention_window >= self.max_position_embeddings:
            _warn_once_wider_than_input("attention_window", self.attention_window, self.max_position_embeddings)
        if not isinstance(self.sparse_prediction, bool):
            raise ValueError(f"GmatConfig.sparse_prediction must be a bool, got {self.sparse_prediction!r}")
        backends = ["auto", *list_backends()]
        if self.attn_backend not in backends:
            raise ValueError(f"GmatConfig.attn_backend must be one of {backends}, got {self.attn_backend!r}")

    def build_pattern(self) -> AttentionPattern:
        """Build the ``AttentionPattern`` these fields describe (M, kind, and the size that kind uses)."""
        return AttentionPattern.from_fields(
            self.num_memory_tokens, self.attention_pattern, self.chunk_size, self.attention_window
        )
