"""Sequence compression through the global memory (docs/design.md §2, "Compression"). Reads top to bottom.

encoder → bottleneck → decoder, all built from ``GmatLayer`` (BERT post-LN blocks)::

    input_ids (B, L) ─ embeddings ─► [mem ; seq] (B, M+L, d) ─ n_enc GmatLayers (pattern of the config) ─┐
                                                                                                          │
    memory (B, M, d) ◄─ n_mid memory-only layers (dense over the M rows; the sequence stream is dropped) ◄┘
        │
        └─► [memory ; dec] (B, M+L', d) ─ n_dec GmatLayers ─► dec rows (B, L', d) ─ LM head ─► (B, L', V)

``encode(input_ids, attention_mask) -> memory (B, M, d)`` is the only path from the input to the decoder.
The decoder's own sequence stream depends on ``config.decoder_input``:

* ``"content_free"`` (reconstruction, task (a)): every decoder position is the ``[MASK]`` embedding plus its
  position embedding, so the decoder knows *where* to predict and can learn *what* only from the memory.
* ``"tokens"`` (compressed context, task (b)): the decoder reads a (masked) segment B; the memory of a
  preceding segment A, when given, is its only extra context. Without a context the memory rows are the
  learned initial memory (the "no context" baseline with the same architecture).

The LM head is BERT's, tied to the word embeddings. ``compression_from_masked_lm`` builds the model from a
trained ``GmatForMaskedLM`` (e.g. a converted BERT): its embeddings, memory, layers and LM head.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from transformers.utils import ModelOutput

from gmat.modeling.configuration_gmat import GmatConfig
from gmat.modeling.modeling_gmat import (
    GmatEmbeddings,
    GmatForMaskedLM,
    GmatLayer,
    GmatOnlyMLMHead,
    GmatPreTrainedModel,
)

__all__ = [
    "DECODER_INPUTS",
    "GmatCompressionConfig",
    "GmatCompressionOutput",
    "GmatForCompression",
    "compression_from_masked_lm",
]

DECODER_INPUTS = ("content_free", "tokens")


class GmatCompressionConfig(GmatConfig):
    """``GmatConfig`` plus the three stacks of the compression model.

    ``num_hidden_layers`` is set to ``n_enc + n_mid + n_dec`` (informational); the pattern fields
    (``attention_pattern``, ``chunk_size``, ``attention_window``) apply to the encoder and decoder.

    Args (beyond ``GmatConfig``'s):
        num_encoder_layers: n_enc, GMAT layers over ``[mem ; seq]`` (>= 1).
        num_bottleneck_layers: n_mid, memory-only layers (>= 0).
        num_decoder_layers: n_dec, GMAT layers over ``[memory ; decoder stream]`` (>= 1).
        decoder_input: ``"content_free"`` (reconstruction) or ``"tokens"`` (compressed-context MLM).
        mask_token_id: the ``[MASK]`` id (content-free decoder positions).

    Raises:
        ValueError: on M < 1 (nothing to compress into), a layer count out of range or an unknown
            ``decoder_input``; plus ``GmatConfig``'s checks.
    """

    model_type: ClassVar[str] = "gmat-compression"

    num_encoder_layers: int = 2
    num_bottleneck_layers: int = 1
    num_decoder_layers: int = 2
    decoder_input: str = "content_free"
    mask_token_id: int = 103

    def __post_init__(self, **kwargs: Any) -> None:
        for name, minimum in (
            ("num_encoder_layers", 1),
            ("num_bottleneck_layers", 0),
            ("num_decoder_layers", 1),
            ("mask_token_id", 0),
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(f"GmatCompressionConfig.{name} must be an int >= {minimum}, got {value!r}")
        if self.decoder_input not in DECODER_INPUTS:
            raise ValueError(
                f"GmatCompressionConfig.decoder_input must be one of {DECODER_INPUTS}, got {self.decoder_input!r}"
            )
        if isinstance(self.num_memory_tokens, int) and self.num_memory_tokens < 1:
            raise ValueError(
                f"GmatCompressionConfig.num_memory_tokens must be >= 1 (the memory is the "
                f"bottleneck), got {self.num_memory_tokens}"
            )
        self.num_hidden_layers = self.num_encoder_layers + self.num_bottleneck_layers + self.num_decoder_layers
        super().__post_init__(**kwargs)

    def bottleneck_config(self) -> GmatConfig:
        """Config of the memory-only layers: the same block, M = 0 and dense attention over the M rows."""
        return GmatConfig(
            vocab_size=self.vocab_size,
            hidden_size=self.hidden_size,
            num_hidden_layers=1,
            num_attention_heads=self.num_attention_heads,
            intermediate_size=self.intermediate_size,
            hidden_act=self.hidden_act,
            hidden_dropout_prob=self.hidden_dropout_prob,
            attention_probs_dropout_prob=self.attention_probs_dropout_prob,
            max_position_embeddings=max(self.num_memory_tokens, 1),
            layer_norm_eps=self.layer_norm_eps,
            num_memory_tokens=0,
            attention_pattern="dense",
            attn_backend=self.attn_backend,
        )


@dataclass
class GmatCompressionOutput(ModelOutput):
    """Output of ``GmatForCompression``.

    Attributes:
        loss: cross-entropy over labels != -100 (when labels are given).
        logits: ``(B, L', vocab_size)`` over the decoder positions.
        memory: ``(B, M, d)`` the memory the decoder read (encoder output, or the learned initial memory).
    """

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    memory: torch.Tensor | None = None


class GmatForCompression(GmatPreTrainedModel):
    """Encoder → memory bottleneck → decoder that reads only the memory (plus its own stream).

    Args:
        config: a ``GmatCompressionConfig``.
    """

    config_class = GmatCompressionConfig
    base_model_prefix = "compression"
    _tied_weights_keys: ClassVar[dict[str, str]] = {
        "cls.predictions.decoder.weight": "embeddings.word_embeddings.weight"
    }

    def __init__(self, config: GmatCompressionConfig) -> None:
        super().__init__(config)
        self.embeddings = GmatEmbeddings(config)  # word + position + type, and the learned (M, d) memory
        self.encoder = nn.ModuleList([GmatLayer(config) for _ in range(config.num_encoder_layers)])
        mid = config.bottleneck_config()
        self.bottleneck = nn.ModuleList([GmatLayer(mid) for _ in range(config.num_bottleneck_layers)])
        self.decoder = nn.ModuleList([GmatLayer(config) for _ in range(config.num_decoder_layers)])
        self.cls = GmatOnlyMLMHead(config)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        """Return the word embedding table ``(vocab_size, d)``."""
        return self.embeddings.word_embeddings

    def get_output_embeddings(self) -> nn.Linear:
        """Return the vocabulary projection (tied to the input embeddings)."""
        return self.cls.predictions.decoder

    def set_output_embeddings(self, new_embeddings: nn.Linear) -> None:
        """Replace the vocabulary projection."""
        self.cls.predictions.decoder = new_embeddings

    # ---- pieces ----------------------------------------------------------------------------------------
    def _embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """``(B, L)`` → ``(B, M+L, d)``: learned memory rows then tokens at positions 0..L-1."""
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)[None]  # (1, L)
        return self.embeddings(input_ids, torch.zeros_like(input_ids), positions)

    def _check_length(self, name: str, ids: torch.Tensor) -> None:
        if ids.dim() != 2 or not 1 <= ids.shape[1] <= self.config.max_position_embeddings:
            raise ValueError(
                f"{name} must be (B, L) with 1 <= L <= max_position_embeddings="
                f"{self.config.max_position_embeddings}, got {tuple(ids.shape)}"
            )

    def initial_memory(self, batch_size: int, device: torch.device | None = None) -> torch.Tensor:
        """Return the learned memory rows after the embedding LayerNorm, ``(B, M, d)`` ("no context")."""
        dummy = torch.full(
            (batch_size, 1),
            self.config.mask_token_id,
            dtype=torch.long,
            device=device or self.embeddings.word_embeddings.weight.device,
        )
        return self._embed(dummy)[:, : self.config.num_memory_tokens]

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Compress a sequence into M memory vectors.

        Args:
            input_ids: ``(B, L)`` token ids.
            attention_mask: ``(B, L)``, 1/True = real token.

        Returns:
            ``(B, M, d)`` memory after the encoder and the memory-only bottleneck.
        """
        self._check_length("input_ids", input_ids)
        m = self.config.num_memory_tokens
        mask = None if attention_mask is None else attention_mask.to(torch.bool)
        hidden = self._embed(input_ids)  # (B, M+L, d)
        for layer in self.encoder:
            hidden = layer(hidden, mask)
        memory = hidden[:, :m]  # (B, M, d): the sequence stream stops here
        for layer in self.bottleneck:
            memory = layer(memory, None)  # dense over the M rows, no padding
        return memory

    def decode(
        self,
        memory: torch.Tensor,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        length: int | None = None,
    ) -> torch.Tensor:
        """Run the decoder on a memory.

        Args:
            memory: ``(B, M, d)``.
            input_ids: ``(B, L')`` decoder tokens (``decoder_input="tokens"``); None = ``length`` content-free
                ``[MASK]`` positions.
            attention_mask: ``(B, L')`` padding mask of the decoder stream.
            length: L' when ``input_ids`` is None.

        Returns:
            ``(B, L', d)`` decoder sequence rows after the last decoder layer.
        """
        m = self.config.num_memory_tokens
        if memory.dim() != 3 or memory.shape[1] != m:
            raise ValueError(f"memory must be (B, M={m}, d), got {tuple(memory.shape)}")
        if input_ids is None:
            if length is None:
                raise ValueError("decode needs input_ids or a length")
            input_ids = torch.full(
                (memory.shape[0], length), self.config.mask_token_id, dtype=torch.long, device=memory.device
            )
        self._check_length("decoder input_ids", input_ids)
        stream = self._embed(input_ids)[:, m:]  # (B, L', d); the learned memory rows are replaced
        hidden = torch.cat([memory.to(stream.dtype), stream], dim=1)  # (B, M+L', d)
        mask = None if attention_mask is None else attention_mask.to(torch.bool)
        for layer in self.decoder:
            hidden = layer(hidden, mask)
        return hidden[:, m:]  # (B, L', d)

    def memory_for(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        context_ids: torch.Tensor | None,
        context_attention_mask: torch.Tensor | None,
    ) -> torch.Tensor:
        """Return the memory the decoder reads in a ``forward`` call (see ``forward``)."""
        if self.config.decoder_input == "content_free":
            return self.encode(input_ids, attention_mask)
        if context_ids is None:
            return self.initial_memory(input_ids.shape[0], input_ids.device)
        return self.encode(context_ids, context_attention_mask)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        context_ids: torch.Tensor | None = None,
        context_attention_mask: torch.Tensor | None = None,
        return_dict: bool | None = None,
    ) -> GmatCompressionOutput | tuple[torch.Tensor, ...]:
        """Reconstruct ``input_ids`` from their memory, or do MLM on them with a compressed context.

        Args:
            input_ids: ``(B, L)``: the sequence to compress and reconstruct (``content_free``), or the masked
                segment B (``tokens``).
            attention_mask: ``(B, L)`` padding mask of ``input_ids``.
            labels: ``(B, L)`` target ids, -100 = ignored.
            context_ids: ``(B, L_A)`` segment A (``tokens`` only; None = no context).
            context_attention_mask: ``(B, L_A)`` padding mask of ``context_ids``.
            return_dict: return a ``GmatCompressionOutput`` (default ``config.return_dict``) or a tuple.

        Returns:
            ``GmatCompressionOutput`` with ``logits`` ``(B, L, V)`` (``(N, V)`` at the N labelled positions
            with ``config.sparse_prediction`` and labels), ``memory`` ``(B, M, d)`` and ``loss``.

        Raises:
            ValueError: if ``context_ids`` is given to a reconstruction model, or on bad shapes.
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        if context_ids is not None and self.config.decoder_input == "content_free":
            raise ValueError(
                "context_ids are for decoder_input='tokens' (compressed-context MLM); a "
                "reconstruction model compresses input_ids itself"
            )
        memory = self.memory_for(input_ids, attention_mask, context_ids, context_attention_mask)
        if self.config.decoder_input == "content_free":
            hidden = self.decode(memory, None, attention_mask, length=input_ids.shape[1])
        else:
            hidden = self.decode(memory, input_ids, attention_mask)
        if labels is not None and self.config.sparse_prediction:
            scored = labels != -100  # (B, L)
            hidden, labels = hidden[scored], labels[scored]  # (N, d), (N,)
        logits = self.cls(hidden)  # (B, L, V), or (N, V) with sparse prediction
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1), ignore_index=-100)
        output = GmatCompressionOutput(loss=loss, logits=logits, memory=memory)
        return output if return_dict else output.to_tuple()


def compression_from_masked_lm(
    mlm: GmatForMaskedLM,
    *,
    num_encoder_layers: int,
    num_bottleneck_layers: int,
    num_decoder_layers: int,
    decoder_input: str,
    mask_token_id: int,
) -> GmatForCompression:
    """A compression model whose weights start from a trained ``GmatForMaskedLM`` (e.g. a converted BERT).

    Layer i of the MLM model initialises encoder layer i (i < n_enc), bottleneck layer j is layer n_enc + j,
    and decoder layer i is layer i again: the decoder's stream starts from embeddings, like the MLM model's
    first layer. The embeddings (with the learned memory rows), the M, pattern and sizes, and the LM head are
    the MLM model's.

    Args:
        mlm: the source model.
        num_encoder_layers, num_bottleneck_layers, num_decoder_layers: n_enc, n_mid, n_dec.
        decoder_input: ``"content_free"`` or ``"tokens"``.
        mask_token_id: the ``[MASK]`` id.

    Raises:
        ValueError: if the source has fewer than ``max(n_enc + n_mid, n_dec)`` layers or no memory (M = 0).
    """
    source = mlm.config
    have = source.num_hidden_layers
    if num_encoder_layers + num_bottleneck_layers > have or num_decoder_layers > have:
        raise ValueError(
            f"the source model has {have} layers; n_enc + n_mid = {num_encoder_layers + num_bottleneck_layers} "
            f"and n_dec = {num_decoder_layers} must each be <= {have}"
        )
    shared = {
        f.name: getattr(source, f.name)
        for f in dataclasses.fields(GmatConfig)
        if f.init and f.name not in ("num_hidden_layers", "architectures", "transformers_version")
    }
    config = GmatCompressionConfig(
        **shared,
        num_encoder_layers=num_encoder_layers,
        num_bottleneck_layers=num_bottleneck_layers,
        num_decoder_layers=num_decoder_layers,
        decoder_input=decoder_input,
        mask_token_id=mask_token_id,
    )
    model = GmatForCompression(config)
    layers = mlm.gmat.encoder.layer
    model.embeddings.load_state_dict(mlm.gmat.embeddings.state_dict())
    for i, layer in enumerate(model.encoder):
        layer.load_state_dict(layers[i].state_dict())
    for j, layer in enumerate(model.bottleneck):
        layer.load_state_dict(layers[num_encoder_layers + j].state_dict())
    for i, layer in enumerate(model.decoder):
        layer.load_state_dict(layers[i].state_dict())
    model.cls.load_state_dict(mlm.cls.state_dict())
    model.tie_weights()
    return model
