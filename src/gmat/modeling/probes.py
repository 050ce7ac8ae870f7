"""Probes that run beside a GMAT model: masked-LM logits at chosen rows, and the memory-swap control."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

from gmat.modeling.modeling_gmat import GmatLayer

__all__ = ["masked_lm_logits", "swapped_memory"]


def masked_lm_logits(
    model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, select: torch.Tensor
) -> torch.Tensor:
    """Logits at the selected positions only (``(N, V)``), without the ``(B, L, V)`` tensor when possible.

    ``GmatForMaskedLM`` (or any model with ``.gmat`` + ``.cls``) runs its encoder and applies the LM head to
    the N selected rows; any other masked-LM model (e.g. ``BertForMaskedLM``) runs whole and is indexed.

    Args:
        model: a masked-LM model.
        input_ids: ``(B, L)``.
        attention_mask: ``(B, L)``.
        select: ``(B, L)`` bool, the positions to score.
    """
    if hasattr(model, "gmat") and hasattr(model, "cls"):
        hidden = model.gmat(input_ids, attention_mask=attention_mask, return_dict=True).last_hidden_state
        return model.cls(hidden[select])  # (N, V)
    return model(input_ids=input_ids, attention_mask=attention_mask).logits[select]


@contextlib.contextmanager
def swapped_memory(model: torch.nn.Module) -> Iterator[None]:
    """Inside the block, every GMAT layer hands on the memory rows of the previous example in the batch.

    A control for "does the model use what its memory holds about this example?": at every layer the
    sequence rows of example i read memory rows computed from other examples (a cyclic shift by one along
    the batch); nothing else changes. If the loss does not rise, the memory acts as example-independent extra
    rows, whatever it does for the loss.

    Args:
        model: a GMAT model with ``num_memory_tokens`` > 0 (its ``GmatLayer`` outputs are ``(B, M+L, d)``).

    Raises:
        ValueError: if the model has no memory rows or no GMAT layers.
    """
    m = getattr(getattr(model, "config", None), "num_memory_tokens", 0)
    layers = [mod for mod in model.modules() if isinstance(mod, GmatLayer)]
    if not m or not layers:
        raise ValueError(f"swapped_memory needs a GMAT model with memory rows, got {type(model).__name__} with M={m}")

    def roll(_module: torch.nn.Module, _inputs: Any, out: torch.Tensor) -> torch.Tensor:
        return torch.cat([out[:, :m].roll(1, dims=0), out[:, m:]], dim=1)  # (B, M+L, d)

    handles = [layer.register_forward_hook(roll) for layer in layers]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
