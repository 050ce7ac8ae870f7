"""The GMAT encoder and its task heads, in Hugging Face form (docs/design.md §2). Reads top to bottom.

embeddings → attention → layer → encoder → pre-trained base → ``GmatModel`` → heads.

The hidden state of every layer is ``Z = [X_mem ; X_seq]`` of shape ``(B, M+L, d)``, memory rows first.
Each block is BERT's post-LN block applied to all M+L rows with shared weights; only the attention mask
differs (``gmat.ops.gmat_attention`` with the config's ``AttentionPattern``). Parameter names are BERT's
(``embeddings.word_embeddings``, ``encoder.layer.N.attention.self.query``, ...), plus
``embeddings.memory_embeddings`` (M, d) when M > 0, so a BERT checkpoint maps onto GMAT almost key for key.
With M = 0 and ``attention_pattern="dense"`` the model computes exactly what ``BertModel`` computes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.utils import ModelOutput

from gmat.modeling.configuration_gmat import GmatConfig
from gmat.ops import AttentionPattern, gmat_attention, in_traced_graph

__all__ = [
    "GmatForMaskedLM",
    "GmatForQuestionAnswering",
    "GmatForSequenceClassification",
    "GmatForTokenClassification",
    "GmatMaskedLMOutput",
    "GmatModel",
    "GmatModelOutput",
    "GmatPreTrainedModel",
    "GmatQuestionAnsweringOutput",
    "GmatSequenceClassifierOutput",
    "GmatTokenClassifierOutput",
]

logger = logging.getLogger(__name__)

HiddenStates = tuple[torch.Tensor, ...]


# ================================================================================================
# Outputs
# ================================================================================================
@dataclass
class GmatModelOutput(ModelOutput):
    """Output of ``GmatModel``.

    Attributes:
        last_hidden_state: ``(B, L, d)`` sequence rows after the last layer.
        memory_state: ``(B, M, d)`` memory rows after the last layer (``M = 0`` gives ``(B, 0, d)``).
        pooler_output: ``(B, d)`` tanh-pooled memory slot 0 (M > 0) or position 0 (M = 0), when the model
            has a pooler.
        hidden_states: with ``output_hidden_states``, the embeddings' and every layer's sequence rows,
            ``num_hidden_layers + 1`` tensors of ``(B, L, d)``.
        memory_hidden_states: likewise for the memory rows, tensors of ``(B, M, d)``.
    """

    last_hidden_state: torch.Tensor | None = None
    memory_state: torch.Tensor | None = None
    pooler_output: torch.Tensor | None = None
    hidden_states: HiddenStates | None = None
    memory_hidden_states: HiddenStates | None = None


@dataclass
class GmatMaskedLMOutput(ModelOutput):
    """Output of ``GmatForMaskedLM``: ``logits`` ``(B, L, V)``, ``loss`` with labels, plus the states.

    Attributes:
        loss: scalar masked-LM cross-entropy over labels != -100.
        logits: ``(B, L, vocab_size)``.
        last_hidden_state, memory_state, hidden_states, memory_hidden_states: as in ``GmatModelOutput``.
    """

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    last_hidden_state: torch.Tensor | None = None
    memory_state: torch.Tensor | None = None
    hidden_states: HiddenStates | None = None
    memory_hidden_states: HiddenStates | None = None


@dataclass
class GmatSequenceClassifierOutput(ModelOutput):
    """Output of ``GmatForSequenceClassification``: ``logits`` ``(B, num_labels)`` and optional ``loss``.

    Attributes:
        loss: scalar loss (cross-entropy, MSE or BCE by problem type).
        logits: ``(B, num_labels)``.
        last_hidden_state, memory_state, hidden_states, memory_hidden_states: as in ``GmatModelOutput``.
    """

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    last_hidden_state: torch.Tensor | None = None
    memory_state: torch.Tensor | None = None
    hidden_states: HiddenStates | None = None
    memory_hidden_states: HiddenStates | None = None


@dataclass
class GmatTokenClassifierOutput(ModelOutput):
    """Output of ``GmatForTokenClassification``: ``logits`` ``(B, L, num_labels)`` and optional ``loss``.

    Attributes:
        loss: scalar cross-entropy over labels != -100.
        logits: ``(B, L, num_labels)``.
        last_hidden_state, memory_state, hidden_states, memory_hidden_states: as in ``GmatModelOutput``.
    """

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    last_hidden_state: torch.Tensor | None = None
    memory_state: torch.Tensor | None = None
    hidden_states: HiddenStates | None = None
    memory_hidden_states: HiddenStates | None = None


@dataclass
class GmatQuestionAnsweringOutput(ModelOutput):
    """Output of ``GmatForQuestionAnswering``: span logits over sequence positions.

    Attributes:
        loss: mean of the start and end cross-entropies, when positions are given.
        start_logits: ``(B, L)``.
        end_logits: ``(B, L)``.
        last_hidden_state, memory_state, hidden_states, memory_hidden_states: as in ``GmatModelOutput``.
    """

    loss: torch.Tensor | None = None
    start_logits: torch.Tensor | None = None
    end_logits: torch.Tensor | None = None
    last_hidden_state: torch.Tensor | None = None
    memory_state: torch.Tensor | None = None
    hidden_states: HiddenStates | None = None
    memory_hidden_states: HiddenStates | None = None


# ================================================================================================
# Embeddings: tokens as in BERT, memory slots from a learned (M, d) table, one LayerNorm for both
# ================================================================================================
class GmatEmbeddings(nn.Module):
    """Word + position + token-type embeddings for the sequence, a learned table for the memory.

    Memory rows get no position or token-type embedding; they share the LayerNorm and dropout.
    """

    def __init__(self, config: GmatConfig) -> None:
        super().__init__()
        d = config.hidden_size
        self.word_embeddings = nn.Embedding(config.vocab_size, d, padding_idx=config.pad_token_id)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, d)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, d)
        # Absent when M = 0, so a memory-less GMAT has exactly BERT's state dict.
        self.memory_embeddings = (
            nn.Parameter(torch.empty(config.num_memory_tokens, d)) if config.num_memory_tokens > 0 else None
        )
        self.LayerNorm = nn.LayerNorm(d, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(
        self, input_ids: torch.Tensor, token_type_ids: torch.Tensor, position_ids: torch.Tensor
    ) -> torch.Tensor:
        """Embed ``[memory ; tokens]``.

        Args:
            input_ids: ``(B, L)`` token ids.
            token_type_ids: ``(B, L)`` segment ids.
            position_ids: ``(B, L)`` or ``(1, L)`` absolute positions.

        Returns:
            ``(B, M+L, d)``, memory rows first.
        """
        tokens = (
            self.word_embeddings(input_ids)
            + self.token_type_embeddings(token_type_ids)
            + self.position_embeddings(position_ids)
        )  # (B, L, d)
        rows = tokens
        if self.memory_embeddings is not None:
            memory = self.memory_embeddings[None].expand(tokens.shape[0], -1, -1)  # (B, M, d)
            rows = torch.cat([memory.to(tokens.dtype), tokens], dim=1)  # (B, M+L, d)
        return self.dropout(self.LayerNorm(rows))


# ================================================================================================
# Attention: BERT's projections around the GMAT op
# ================================================================================================
class GmatSelfAttention(nn.Module):
    """Q/K/V projections over all M+L rows, ``gmat_attention`` with the config's pattern and backend."""

    def __init__(self, config: GmatConfig) -> None:
        super().__init__()
        d = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.head_dim = d // config.num_attention_heads
        self.query = nn.Linear(d, d)
        self.key = nn.Linear(d, d)
        self.value = nn.Linear(d, d)
        self.pattern: AttentionPattern = config.build_pattern()
        self.backend = config.attn_backend
        self.dropout_p = config.attention_probs_dropout_prob

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        """Attend over ``[memory ; sequence]``.

        Args:
            hidden_states: ``(B, M+L, d)``.
            attention_mask: ``(B, L)`` bool, True = real token, or None.

        Returns:
            ``(B, M+L, d)``, heads merged (before the output projection).
        """
        bsz, n, d = hidden_states.shape

        def heads(x: torch.Tensor) -> torch.Tensor:
            return x.view(bsz, n, self.num_heads, self.head_dim).transpose(1, 2)  # (B, H, M+L, D)

        q, k, v = (
            heads(self.query(hidden_states)),
            heads(self.key(hidden_states)),
            heads(self.value(hidden_states)),
        )
        out = gmat_attention(
            q,
            k,
            v,
            self.pattern,
            attention_mask=attention_mask,
            backend=self.backend,
            dropout_p=self.dropout_p if self.training else 0.0,
        )  # (B, H, M+L, D)
        return out.transpose(1, 2).reshape(bsz, n, d)  # (B, M+L, d)


class GmatSelfOutput(nn.Module):
    """Output projection, dropout, residual and LayerNorm (post-LN)."""

    def __init__(self, config: GmatConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden_states: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        """``(B, M+L, d)``, ``(B, M+L, d)`` → ``(B, M+L, d)``."""
        return self.LayerNorm(self.dropout(self.dense(hidden_states)) + residual)


class GmatAttention(nn.Module):
    """``attention.self`` then ``attention.output``, as BERT names them."""

    def __init__(self, config: GmatConfig) -> None:
        super().__init__()
        self.self = GmatSelfAttention(config)
        self.output = GmatSelfOutput(config)

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        """``(B, M+L, d)`` → ``(B, M+L, d)``."""
        return self.output(self.self(hidden_states, attention_mask), hidden_states)


# ================================================================================================
# Layer and encoder
# ================================================================================================
class GmatIntermediate(nn.Module):
    """First feed-forward projection and activation."""

    def __init__(self, config: GmatConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)
        self.intermediate_act_fn = ACT2FN[config.hidden_act]

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """``(B, M+L, d)`` → ``(B, M+L, intermediate_size)``."""
        return self.intermediate_act_fn(self.dense(hidden_states))


class GmatOutput(nn.Module):
    """Second feed-forward projection, dropout, residual and LayerNorm (post-LN)."""

    def __init__(self, config: GmatConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.intermediate_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden_states: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        """``(B, M+L, intermediate_size)``, ``(B, M+L, d)`` → ``(B, M+L, d)``."""
        return self.add_and_norm(self.dense(hidden_states), residual)

    def add_and_norm(self, projected: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        """``(B, M+L, d)`` after ``dense``, and the residual → ``(B, M+L, d)``."""
        return self.LayerNorm(self.dropout(projected) + residual)


# The FFN's activation is recomputed in the backward pass instead of saved while training (switch for tests).
_RECOMPUTE_FFN_ACTIVATION = True


class _ActivationThenLinear(torch.autograd.Function):
    """``linear(act(pre), weight, bias)`` that keeps ``pre`` only for the backward, not ``act(pre)`` too.

    Plain autograd saves both the activation's input (for its derivative) and its output (for the second
    projection's weight gradient): two ``(B, M+L, intermediate_size)`` tensors per layer, the largest saved
    activations of a block. Recomputing ``act(pre)`` in the backward costs one elementwise pass and saves one
    of them. The forward is the same computation as ``GmatOutput.dense(GmatIntermediate.intermediate_act_fn)``.
    """

    @staticmethod
    def forward(ctx, pre, act, weight, bias):  # noqa: ANN001, ANN205, D102
        ctx.act = act
        ctx.save_for_backward(pre, weight)
        ctx.has_bias = bias is not None
        return F.linear(act(pre), weight, bias)  # (B, M+L, d)

    @staticmethod
    def backward(ctx, grad_out):  # noqa: ANN001, ANN205, D102
        pre, weight = ctx.saved_tensors
        with torch.enable_grad():
            pre_ = pre.detach().requires_grad_()
            hidden = ctx.act(pre_)  # (B, M+L, I), recomputed
        dtype = grad_out.dtype  # the forward's compute dtype (bf16 under autocast)
        grad_hidden = grad_out @ weight.to(dtype)  # (B, M+L, I)
        (grad_pre,) = torch.autograd.grad(hidden, pre_, grad_hidden.to(hidden.dtype))
        flat_grad = grad_out.reshape(-1, grad_out.shape[-1])  # (N, d)
        grad_weight = (flat_grad.t() @ hidden.detach().reshape(-1, hidden.shape[-1]).to(dtype)).to(weight.dtype)
        grad_bias = flat_grad.sum(0).to(weight.dtype) if ctx.has_bias else None
        return grad_pre, None, grad_weight, grad_bias


class GmatLayer(GradientCheckpointingLayer):
    """BERT's post-LN block over all M+L rows: attention → add & norm → FFN → add & norm.

    Checkpointable: ``hidden_states`` is passed positionally, as ``GradientCheckpointingLayer`` requires.
    """

    def __init__(self, config: GmatConfig) -> None:
        super().__init__()
        self.attention = GmatAttention(config)
        self.intermediate = GmatIntermediate(config)
        self.output = GmatOutput(config)

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``(B, M+L, d)`` and a ``(B, L)`` bool mask → ``(B, M+L, d)``."""
        attended = self.attention(hidden_states, attention_mask)
        if _RECOMPUTE_FFN_ACTIVATION and self.training and torch.is_grad_enabled() and not in_traced_graph():
            pre = self.intermediate.dense(attended)  # (B, M+L, I)
            act, dense = self.intermediate.intermediate_act_fn, self.output.dense
            projected = _ActivationThenLinear.apply(pre, act, dense.weight, dense.bias)
            return self.output.add_and_norm(projected, attended)
        return self.output(self.intermediate(attended), attended)


class GmatEncoder(nn.Module):
    """The stack of ``GmatLayer``s."""

    def __init__(self, config: GmatConfig) -> None:
        super().__init__()
        self.layer = nn.ModuleList([GmatLayer(config) for _ in range(config.num_hidden_layers)])

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None,
        output_hidden_states: bool = False,
    ) -> tuple[torch.Tensor, HiddenStates | None]:
        """Run every layer.

        Args:
            hidden_states: ``(B, M+L, d)`` embeddings.
            attention_mask: ``(B, L)`` bool, True = real token, or None.
            output_hidden_states: also return the input and every layer's output.

        Returns:
            The last ``(B, M+L, d)`` and, on request, ``num_hidden_layers + 1`` tensors ``(B, M+L, d)``.
        """
        all_states = [hidden_states] if output_hidden_states else None
        for layer in self.layer:
            hidden_states = layer(hidden_states, attention_mask)
            if all_states is not None:
                all_states.append(hidden_states)
        return hidden_states, (tuple(all_states) if all_states is not None else None)


class GmatPooler(nn.Module):
    """Dense + tanh over one vector: memory slot 0 when M > 0, else sequence position 0 ([CLS])."""

    def __init__(self, config: GmatConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.activation = nn.Tanh()

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        """``(B, d)`` → ``(B, d)``."""
        return self.activation(self.dense(pooled))


# ================================================================================================
# Pre-trained base: config class, weight init, checkpointing support
# ================================================================================================
class GmatPreTrainedModel(PreTrainedModel):
    """Hugging Face plumbing shared by every GMAT model (config class, init, prefix)."""

    config_class = GmatConfig
    base_model_prefix = "gmat"
    supports_gradient_checkpointing = True
    _no_split_modules = ["GmatEmbeddings", "GmatLayer"]

    def _init_weights(self, module: nn.Module) -> None:
        """BERT's init (normal(0, initializer_range), LayerNorm 1/0), plus the memory table and LM bias."""
        super()._init_weights(module)
        if isinstance(module, GmatEmbeddings) and module.memory_embeddings is not None:
            init.normal_(module.memory_embeddings, mean=0.0, std=self.config.initializer_range)
        elif isinstance(module, GmatLMPredictionHead):
            init.zeros_(module.bias)


# ================================================================================================
# The encoder model
# ================================================================================================
def _check_inputs(
    config: GmatConfig,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    token_type_ids: torch.Tensor | None,
    position_ids: torch.Tensor | None,
) -> None:
    """Raise ``ValueError`` naming the offending input when shapes disagree or L is too long."""
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2:
        shape = tuple(input_ids.shape) if isinstance(input_ids, torch.Tensor) else type(input_ids).__name__
        raise ValueError(f"input_ids must be a (B, L) tensor, got {shape}")
    seq_len = input_ids.shape[1]
    if seq_len > config.max_position_embeddings:
        raise ValueError(
            f"input_ids has length L={seq_len}, longer than max_position_embeddings="
            f"{config.max_position_embeddings}; truncate the input or convert with a larger "
            f"--max-length"
        )
    if seq_len < 1:
        raise ValueError(f"input_ids must have length L >= 1, got shape {tuple(input_ids.shape)}")
    for name, t in (("attention_mask", attention_mask), ("token_type_ids", token_type_ids)):
        if t is not None and tuple(t.shape) != tuple(input_ids.shape):
            raise ValueError(
                f"{name} must have the shape of input_ids (B, L) = {tuple(input_ids.shape)}, got {tuple(t.shape)}"
            )
    if position_ids is not None and (
        position_ids.dim() != 2
        or position_ids.shape[1] != seq_len
        or position_ids.shape[0] not in (1, input_ids.shape[0])
    ):
        raise ValueError(
            f"position_ids must have shape (B, L) or (1, L) with (B, L) = "
            f"{tuple(input_ids.shape)}, got {tuple(position_ids.shape)}"
        )


class GmatModel(GmatPreTrainedModel):
    """The GMAT encoder: embeddings, blocks over ``[memory ; sequence]``, optional pooler.

    Args:
        config: the model configuration.
        add_pooling_layer: keep BERT's pooler (used by sequence classification).
    """

    def __init__(self, config: GmatConfig, *, add_pooling_layer: bool = True) -> None:
        super().__init__(config)
        self.embeddings = GmatEmbeddings(config)
        self.encoder = GmatEncoder(config)
        self.pooler = GmatPooler(config) if add_pooling_layer else None
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        """Return the word embedding table ``(vocab_size, d)``."""
        return self.embeddings.word_embeddings

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        """Replace the word embedding table."""
        self.embeddings.word_embeddings = value

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> GmatModelOutput | tuple[torch.Tensor, ...]:
        """Encode a batch.

        Args:
            input_ids: ``(B, L)`` token ids, ``L <= max_position_embeddings``.
            attention_mask: ``(B, L)``, 1/True = real token, 0/False = padding (int or bool).
            token_type_ids: ``(B, L)`` segment ids (default zeros).
            position_ids: ``(B, L)`` or ``(1, L)`` positions (default ``0..L-1``).
            output_hidden_states: also return every layer's sequence and memory rows.
            return_dict: return a ``GmatModelOutput`` (default ``config.return_dict``) or a tuple.

        Returns:
            ``GmatModelOutput`` with ``last_hidden_state`` ``(B, L, d)``, ``memory_state`` ``(B, M, d)`` and
            ``pooler_output`` ``(B, d)`` (when the model has a pooler).

        Raises:
            ValueError: when L exceeds ``max_position_embeddings`` or a mask / id tensor has the wrong shape.
        """
        _check_inputs(self.config, input_ids, attention_mask, token_type_ids, position_ids)
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        m = self.config.num_memory_tokens
        seq_len = input_ids.shape[1]

        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        if position_ids is None:
            position_ids = torch.arange(seq_len, device=input_ids.device)[None]  # (1, L)
        mask = None if attention_mask is None else attention_mask.to(torch.bool)  # (B, L), True = real
        if mask is not None and not (torch.compiler.is_compiling() or torch.jit.is_tracing()) and bool(mask.all()):
            mask = None  # nothing is padded: the same outputs without the per-layer masking copies

        hidden = self.embeddings(input_ids, token_type_ids, position_ids)  # (B, M+L, d)
        hidden, all_hidden = self.encoder(hidden, mask, output_hidden_states=bool(output_hidden_states))
        memory_state, last_hidden_state = hidden[:, :m], hidden[:, m:]  # (B, M, d), (B, L, d)

        pooler_output = None
        if self.pooler is not None:
            pooler_output = self.pooler(memory_state[:, 0] if m > 0 else last_hidden_state[:, 0])  # (B, d)
        hidden_states = memory_hidden_states = None
        if all_hidden is not None:
            hidden_states = tuple(h[:, m:] for h in all_hidden)  # each (B, L, d)
            memory_hidden_states = tuple(h[:, :m] for h in all_hidden)  # each (B, M, d)

        output = GmatModelOutput(
            last_hidden_state=last_hidden_state,
            memory_state=memory_state,
            pooler_output=pooler_output,
            hidden_states=hidden_states,
            memory_hidden_states=memory_hidden_states,
        )
        return output if return_dict else output.to_tuple()


def _states(outputs: GmatModelOutput) -> dict[str, torch.Tensor | HiddenStates | None]:
    """Collect the state fields every head output carries over from the encoder output."""
    return {
        "last_hidden_state": outputs.last_hidden_state,
        "memory_state": outputs.memory_state,
        "hidden_states": outputs.hidden_states,
        "memory_hidden_states": outputs.memory_hidden_states,
    }


# ================================================================================================
# Heads
# ================================================================================================
class GmatPredictionHeadTransform(nn.Module):
    """Dense + activation + LayerNorm before the vocabulary projection (BERT's ``transform``)."""

    def __init__(self, config: GmatConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.transform_act_fn = ACT2FN[config.hidden_act]
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """``(B, L, d)`` → ``(B, L, d)``."""
        return self.LayerNorm(self.transform_act_fn(self.dense(hidden_states)))


class GmatLMPredictionHead(nn.Module):
    """Transform, then a vocabulary projection whose weight is tied to the word embeddings, plus a bias."""

    def __init__(self, config: GmatConfig) -> None:
        super().__init__()
        self.transform = GmatPredictionHeadTransform(config)
        self.decoder = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """``(B, L, d)`` → ``(B, L, vocab_size)``."""
        return self.decoder(self.transform(hidden_states)) + self.bias


class GmatOnlyMLMHead(nn.Module):
    """Wrapper giving BERT's key names (``cls.predictions.*``)."""

    def __init__(self, config: GmatConfig) -> None:
        super().__init__()
        self.predictions = GmatLMPredictionHead(config)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """``(B, L, d)`` → ``(B, L, vocab_size)``."""
        return self.predictions(hidden_states)


class GmatForMaskedLM(GmatPreTrainedModel):
    """GMAT with BERT's masked-LM head; the decoder weight is tied to the word embeddings."""

    _tied_weights_keys = {"cls.predictions.decoder.weight": "gmat.embeddings.word_embeddings.weight"}

    def __init__(self, config: GmatConfig) -> None:
        super().__init__(config)
        self.gmat = GmatModel(config, add_pooling_layer=False)
        self.cls = GmatOnlyMLMHead(config)
        self.post_init()

    def get_output_embeddings(self) -> nn.Linear:
        """Return the vocabulary projection (tied to the input embeddings)."""
        return self.cls.predictions.decoder

    def set_output_embeddings(self, new_embeddings: nn.Linear) -> None:
        """Replace the vocabulary projection."""
        self.cls.predictions.decoder = new_embeddings

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> GmatMaskedLMOutput | tuple[torch.Tensor, ...]:
        """Masked-LM logits over the sequence positions.

        Args:
            input_ids: ``(B, L)`` token ids.
            attention_mask: ``(B, L)``, 1/True = real token (int or bool).
            token_type_ids: ``(B, L)`` segment ids (default zeros).
            position_ids: ``(B, L)`` or ``(1, L)`` positions (default ``0..L-1``).
            output_hidden_states: also return every layer's sequence and memory rows.
            labels: ``(B, L)`` target ids, -100 = ignored.
            return_dict: return a ``GmatMaskedLMOutput`` (default ``config.return_dict``) or a tuple.

        Returns:
            ``GmatMaskedLMOutput`` with ``logits`` ``(B, L, vocab_size)`` and ``loss`` when labels are given.
            With ``config.sparse_prediction`` and labels, ``logits`` is ``(N, vocab_size)``: only the N
            positions whose label is not -100, in row-major order (``labels[labels != -100]`` are their
            targets).
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        outputs = self.gmat(
            input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            output_hidden_states=output_hidden_states,
            return_dict=True,
        )
        hidden = outputs.last_hidden_state  # (B, L, d)
        if labels is not None and self.config.sparse_prediction:
            scored = labels != -100  # (B, L)
            hidden, labels = hidden[scored], labels[scored]  # (N, d), (N,)
        logits = self.cls(hidden)  # (B, L, V), or (N, V) with sparse prediction
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1), ignore_index=-100)
        output = GmatMaskedLMOutput(loss=loss, logits=logits, **_states(outputs))
        return output if return_dict else output.to_tuple()


def _classification_loss(config: GmatConfig, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """BERT's loss choice, without writing ``problem_type`` back into the config.

    ``num_labels == 1`` → MSE regression; integer labels → cross-entropy; float labels (B, num_labels) →
    multi-label BCE. ``config.problem_type`` overrides the guess when set.
    """
    num_labels = logits.shape[-1]
    problem = config.problem_type
    if problem is None:
        if num_labels == 1:
            problem = "regression"
        elif labels.dtype in (torch.long, torch.int):
            problem = "single_label_classification"
        else:
            problem = "multi_label_classification"
    if problem == "regression":
        if num_labels == 1:
            return F.mse_loss(logits.squeeze(-1).float(), labels.reshape(-1).float())
        return F.mse_loss(logits.float(), labels.float())
    if problem == "single_label_classification":
        return F.cross_entropy(logits.reshape(-1, num_labels).float(), labels.reshape(-1))
    return F.binary_cross_entropy_with_logits(logits.float(), labels.float())


class GmatForSequenceClassification(GmatPreTrainedModel):
    """GMAT with a classifier on the pooled vector (memory slot 0 when M > 0, else [CLS])."""

    def __init__(self, config: GmatConfig) -> None:
        super().__init__(config)
        self.num_labels = config.num_labels
        self.gmat = GmatModel(config, add_pooling_layer=True)
        p = config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob
        self.dropout = nn.Dropout(p)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> GmatSequenceClassifierOutput | tuple[torch.Tensor, ...]:
        """Classify (or regress) each sequence.

        Args:
            input_ids: ``(B, L)`` token ids.
            attention_mask: ``(B, L)``, 1/True = real token (int or bool).
            token_type_ids: ``(B, L)`` segment ids (default zeros).
            position_ids: ``(B, L)`` or ``(1, L)`` positions (default ``0..L-1``).
            output_hidden_states: also return every layer's sequence and memory rows.
            labels: ``(B,)`` long class ids, ``(B,)`` float for ``num_labels == 1`` regression, or
                ``(B, num_labels)`` float for multi-label.
            return_dict: return a ``GmatSequenceClassifierOutput`` (default ``config.return_dict``) or a
                tuple.

        Returns:
            ``GmatSequenceClassifierOutput`` with ``logits`` ``(B, num_labels)``, ``loss`` with labels.
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        outputs = self.gmat(
            input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            output_hidden_states=output_hidden_states,
            return_dict=True,
        )
        logits = self.classifier(self.dropout(outputs.pooler_output))  # (B, num_labels)
        loss = _classification_loss(self.config, logits, labels) if labels is not None else None
        output = GmatSequenceClassifierOutput(loss=loss, logits=logits, **_states(outputs))
        return output if return_dict else output.to_tuple()


class GmatForTokenClassification(GmatPreTrainedModel):
    """GMAT with a per-token classifier over the sequence rows (memory rows are not labelled)."""

    def __init__(self, config: GmatConfig) -> None:
        super().__init__(config)
        self.num_labels = config.num_labels
        self.gmat = GmatModel(config, add_pooling_layer=False)
        p = config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob
        self.dropout = nn.Dropout(p)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> GmatTokenClassifierOutput | tuple[torch.Tensor, ...]:
        """Label every sequence position.

        Args:
            input_ids: ``(B, L)`` token ids.
            attention_mask: ``(B, L)``, 1/True = real token (int or bool).
            token_type_ids: ``(B, L)`` segment ids (default zeros).
            position_ids: ``(B, L)`` or ``(1, L)`` positions (default ``0..L-1``).
            output_hidden_states: also return every layer's sequence and memory rows.
            labels: ``(B, L)`` class ids, -100 = ignored.
            return_dict: return a ``GmatTokenClassifierOutput`` (default ``config.return_dict``) or a tuple.

        Returns:
            ``GmatTokenClassifierOutput`` with ``logits`` ``(B, L, num_labels)``, ``loss`` with labels.
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        outputs = self.gmat(
            input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            output_hidden_states=output_hidden_states,
            return_dict=True,
        )
        logits = self.classifier(self.dropout(outputs.last_hidden_state))  # (B, L, num_labels)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.reshape(-1, self.num_labels).float(), labels.reshape(-1), ignore_index=-100)
        output = GmatTokenClassifierOutput(loss=loss, logits=logits, **_states(outputs))
        return output if return_dict else output.to_tuple()


class GmatForQuestionAnswering(GmatPreTrainedModel):
    """GMAT with extractive-QA span logits (start, end) over sequence positions only."""

    def __init__(self, config: GmatConfig) -> None:
        super().__init__(config)
        self.gmat = GmatModel(config, add_pooling_layer=False)
        self.qa_outputs = nn.Linear(config.hidden_size, 2)
        self.post_init()

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        start_positions: torch.Tensor | None = None,
        end_positions: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> GmatQuestionAnsweringOutput | tuple[torch.Tensor, ...]:
        """Score every sequence position as answer start and end.

        Args:
            input_ids: ``(B, L)`` token ids.
            attention_mask: ``(B, L)``, 1/True = real token (int or bool).
            token_type_ids: ``(B, L)`` segment ids (default zeros).
            position_ids: ``(B, L)`` or ``(1, L)`` positions (default ``0..L-1``).
            output_hidden_states: also return every layer's sequence and memory rows.
            start_positions: ``(B,)`` gold start index in ``[0, L)``; out-of-range ones are ignored (as BERT).
            end_positions: ``(B,)`` gold end index.
            return_dict: return a ``GmatQuestionAnsweringOutput`` (default ``config.return_dict``) or a tuple.

        Returns:
            ``GmatQuestionAnsweringOutput`` with ``start_logits`` and ``end_logits`` ``(B, L)``, and ``loss``
            (mean of the two cross-entropies over the non-padded positions) when both positions are given.
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        outputs = self.gmat(
            input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            output_hidden_states=output_hidden_states,
            return_dict=True,
        )
        logits = self.qa_outputs(outputs.last_hidden_state)  # (B, L, 2)
        start_logits, end_logits = (t.squeeze(-1).contiguous() for t in logits.split(1, dim=-1))  # (B, L) each
        loss = None
        if start_positions is not None and end_positions is not None:
            # Positions outside the sequence (e.g. truncated answers) are clamped to L and ignored.
            # Padded positions are never an answer: they leave the softmax, so the loss of an example does not
            # depend on how far its batch is padded (a data-parallel run equals a single-process one).
            seq_len = start_logits.shape[1]
            start = start_positions.reshape(-1).clamp(0, seq_len)
            end = end_positions.reshape(-1).clamp(0, seq_len)
            scored = [x.float() for x in (start_logits, end_logits)]  # (B, L) each
            if attention_mask is not None:
                scored = [x.masked_fill(~attention_mask.bool(), float("-inf")) for x in scored]
            loss = (
                F.cross_entropy(scored[0], start, ignore_index=seq_len)
                + F.cross_entropy(scored[1], end, ignore_index=seq_len)
            ) / 2
        output = GmatQuestionAnsweringOutput(
            loss=loss, start_logits=start_logits, end_logits=end_logits, **_states(outputs)
        )
        return output if return_dict else output.to_tuple()
