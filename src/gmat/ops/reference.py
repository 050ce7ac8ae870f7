"""The oracle: dense eager attention over the materialised (M+L)² mask, softmax in fp32.

Quadratic in memory and time; meant for correctness checks and small L only.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from gmat.ops.pattern import AttentionPattern

__all__ = ["reference_attention"]


def reference_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    pattern: AttentionPattern,
    attention_mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    scale: float | None = None,
) -> torch.Tensor:
    """GMAT attention by definition (inputs assumed validated by ``gmat_attention``).

    Args:
        q, k, v: ``(B, H, M+L, D)``, memory rows first.
        pattern: the attention pattern.
        attention_mask: optional ``(B, L)`` bool, True = real token.
        dropout_p: dropout on the attention probabilities.
        scale: softmax scale, default ``1/sqrt(D)``.

    Returns:
        ``(B, H, M+L, D)`` in q's dtype; rows with no allowed key and padded query rows are zero.

    Padded positions take no part: their keys and values are never read, their query rows output zeros and
    pass no gradient, so a NaN or Inf there reaches nothing. A non-finite value at a real position reaches
    exactly the rows the pattern lets see it: they output NaN and pass no gradient (a matmul would spread
    it further, as 0 · NaN = NaN, into rows and gradients the pattern keeps apart).
    """
    seq_len = q.shape[-2] - pattern.num_memory
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    allowed = pattern.to_dense(seq_len, attention_mask, device=q.device)  # (M+L, M+L) or (B, 1, M+L, M+L)
    key_valid = pattern.key_valid(attention_mask)  # (B, M+L) or None
    if key_valid is not None:
        padded = ~key_valid[:, None, :, None]  # (B, 1, M+L, 1): padded rows of q, k and v
        q, k, v = (x.masked_fill(padded, 0.0) for x in (q, k, v))
    bad_q = ~torch.isfinite(q).all(dim=-1, keepdim=True)  # (B, H, M+L, 1)
    bad_kv = ~(torch.isfinite(k).all(dim=-1, keepdim=True) & torch.isfinite(v).all(dim=-1, keepdim=True))
    poisoned = bad_q | (allowed & bad_kv.transpose(-1, -2)).any(dim=-1, keepdim=True)  # rows that see one
    q, k, v = q.masked_fill(bad_q, 0.0), k.masked_fill(bad_kv, 0.0), v.masked_fill(bad_kv, 0.0)
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32  # softmax in >= fp32
    scores = torch.matmul(q.to(acc), k.to(acc).transpose(-1, -2)) * scale  # (B, H, M+L, M+L)
    scores = scores.masked_fill(~allowed, float("-inf"))
    row_any = allowed.any(dim=-1, keepdim=True)  # a row without keys outputs zeros, not NaN
    scores = scores.masked_fill(~row_any, 0.0)
    probs = torch.softmax(scores, dim=-1) * row_any
    if dropout_p > 0.0:
        probs = F.dropout(probs, p=dropout_p, training=True)
    out = torch.matmul(probs, v.to(acc)).to(q.dtype).masked_fill(poisoned, math.nan)  # (B, H, M+L, D)
    return out if key_valid is None else out.masked_fill(padded, 0.0)
