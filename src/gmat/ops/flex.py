"""The ``flex`` backend: FlexAttention with a BlockMask built from ``AttentionPattern.mask_fn``.

The pattern-only BlockMask is cached per (pattern, M+L, device); a batch with padding gets its own
BlockMask (padding is per example). ``flex_attention`` is compiled lazily on first use, never at import.

It is compiled with ``dynamic=False``: once per input shape. Past ``torch._dynamo``'s recompile limit (8 by
default) dynamo would silently run flex eagerly, which materialises the (M+L)² scores. So the first compile
raises that process-wide limit to ``RECOMPILE_LIMIT``, and a shape beyond it is refused with a ``ValueError``
that says so, never run eagerly.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch

from gmat.ops.pattern import AttentionPattern

__all__ = ["RECOMPILE_LIMIT", "flex_attention_gmat", "flex_block_mask"]

RECOMPILE_LIMIT = 256  # dynamo's own cap on one function's recompiles (accumulated_recompile_limit)
"""Distinct input shapes flex may compile in one process (dynamo's recompile limit is raised to this)."""
_compiled_shapes: set[tuple] = set()


@functools.cache
def _compiled_flex() -> Callable[..., torch.Tensor]:
    import torch._dynamo
    from torch.nn.attention.flex_attention import flex_attention

    config = torch._dynamo.config
    for name, old_name in (
        ("recompile_limit", "cache_size_limit"),  # renamed in torch 2.6; set one name only
        ("accumulated_recompile_limit", "accumulated_cache_size_limit"),
    ):
        name = name if hasattr(config, name) else old_name
        setattr(config, name, max(getattr(config, name), RECOMPILE_LIMIT))
    return torch.compile(flex_attention, dynamic=False)


def _admit_shape(key: tuple) -> None:
    """Record one compiled shape; refuse one past ``RECOMPILE_LIMIT`` (dynamo would fall back to eager)."""
    if key in _compiled_shapes:
        return
    if len(_compiled_shapes) >= RECOMPILE_LIMIT:
        raise ValueError(
            f"flex: {len(_compiled_shapes)} input shapes already compiled in this process (RECOMPILE_LIMIT="
            f"{RECOMPILE_LIMIT}); another would pass torch._dynamo's recompile limit and run FlexAttention "
            "eagerly with (M+L)^2 memory. Use backend='blocked' or 'triton', or raise gmat.ops.flex.RECOMPILE_LIMIT"
        )
    _compiled_shapes.add(key)


def _mask_mod(pattern: AttentionPattern, key_valid: torch.Tensor | None) -> Callable[..., torch.Tensor]:
    allowed = pattern.mask_fn()

    def mask_mod(b: torch.Tensor, h: torch.Tensor, q_idx: torch.Tensor, kv_idx: torch.Tensor) -> torch.Tensor:
        ok = allowed(q_idx, kv_idx)
        if key_valid is not None:
            ok = ok & key_valid[b, kv_idx]
        return ok

    return mask_mod


@functools.lru_cache(maxsize=32)
def _cached_block_mask(pattern: AttentionPattern, n: int, device: torch.device):  # noqa: ANN202
    from torch.nn.attention.flex_attention import create_block_mask

    return create_block_mask(
        _mask_mod(pattern, None), B=None, H=None, Q_LEN=n, KV_LEN=n, device=device, _compile=device.type == "cuda"
    )  # compiled: no dense (M+L)² mask at long L


def flex_block_mask(
    pattern: AttentionPattern, n: int, device: torch.device, attention_mask: torch.Tensor | None = None
):  # noqa: ANN201
    """The BlockMask for ``[mem ; seq]`` of length ``n = M+L``, cached when there is no padding."""
    from torch.nn.attention.flex_attention import create_block_mask

    if attention_mask is None:
        return _cached_block_mask(pattern, n, torch.device(device))
    mask_mod = _mask_mod(pattern, pattern.key_valid(attention_mask))
    return create_block_mask(
        mask_mod,
        B=attention_mask.shape[0],
        H=None,
        Q_LEN=n,
        KV_LEN=n,
        device=device,
        _compile=torch.device(device).type == "cuda",
    )


def flex_attention_gmat(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    pattern: AttentionPattern,
    attention_mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    scale: float | None = None,
) -> torch.Tensor:
    """GMAT attention through FlexAttention (dropout unsupported; the dispatcher refuses it).

    Args:
        q, k, v: ``(B, H, M+L, D)``, memory rows first.
        pattern: the attention pattern.
        attention_mask: optional ``(B, L)`` bool, True = real token.
        dropout_p: must be 0.
        scale: softmax scale, default ``1/sqrt(D)``.

    Returns:
        ``(B, H, M+L, D)``; fully masked rows are zero (FlexAttention's convention).

    Raises:
        ValueError: for a new input shape once ``RECOMPILE_LIMIT`` shapes were compiled in this process.
    """
    padded = None if attention_mask is None else attention_mask.shape[0]
    # what dynamo specialises on (at least): shapes, strides, dtype, device, autograd state, padding, scale
    _admit_shape(
        (
            *(tuple(x.shape) + x.stride() for x in (q, k, v)),
            q.dtype,
            q.device,
            q.requires_grad,
            torch.is_grad_enabled(),
            padded,
            scale,
        )
    )
    block_mask = flex_block_mask(pattern, q.shape[-2], q.device, attention_mask)
    return _compiled_flex()(q, k, v, block_mask=block_mask, scale=scale)
