"""The ``blocked`` backend: exact GMAT attention from a few batched SDPA calls, no (M+L)² tensor.

* Memory query rows (M of them) attend to all M+L keys: one SDPA call, O(M·(M+L)).
* Sequence query rows are cut into blocks of ``b`` queries. Each block gets its own key set: the M memory
  keys followed by the ``b + 2·halo`` sequence keys around the block (``halo = 0`` and ``b = C`` for
  chunks; ``halo = w`` and ``b >= w`` for a window). Blocks become batch entries of a single SDPA call,
  so there is no Python loop over blocks and no data-dependent shape.

Chunk example (M=1, C=2, L=4), the two blocks and their keys::

    block 0: queries s0 s1   keys [m | s0 s1]
    block 1: queries s2 s3   keys [m | s2 s3]

Memory cost: O(L·(C+M)) for chunks, O(L·(3w+M)) for a window. L is padded to a multiple of ``b``
internally; padded keys are masked out and padded query rows are dropped.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from gmat.ops.pattern import AttentionPattern

__all__ = ["blocked_attention", "window_block_size"]

_MIN_WINDOW_BLOCK = 32  # a tiny window still gets blocks of >= 32 queries so the SDPA batches stay efficient


def window_block_size(window: int) -> int:
    """Query block size used for ``window`` patterns: ``max(w, 32)``."""
    return max(window, _MIN_WINDOW_BLOCK)


def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
          dropout_p: float, scale: float | None) -> torch.Tensor:
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, scale=scale)


def _known_zero(n: int | torch.SymInt) -> bool:
    """True when ``n`` is a plain int equal to 0.

    A symbolic size (torch.export, dynamic compile) is never "known": branching on it would bake the
    trace-time shape into the exported graph.
    """
    return isinstance(n, int) and n == 0


def _pad_rows(x: torch.Tensor, before: int, after: int) -> torch.Tensor:
    """Zero-pad dim -2 of ``(B, H, n, D)``; a no-op (no copy) when nothing is added."""
    if _known_zero(before) and _known_zero(after):
        return x
    return F.pad(x, (0, 0, before, after))


def _with_nonempty_rows(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Let rows with no allowed key see everything (their output is zeroed later).

    This keeps SDPA away from all -inf rows, whose NaNs would otherwise leak into every key's gradient.
    Returns the patched mask and ``row_any`` (True where the row had a key), both broadcastable.
    """
    row_any = mask.any(dim=-1, keepdim=True)
    return mask | ~row_any, row_any


def blocked_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    pattern: AttentionPattern,
    attention_mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    scale: float | None = None,
) -> torch.Tensor:
    """GMAT attention through blocked SDPA (inputs assumed validated by ``gmat_attention``).

    Args:
        q, k, v: ``(B, H, M+L, D)``, memory rows first.
        pattern: the attention pattern.
        attention_mask: optional ``(B, L)`` bool, True = real token.
        dropout_p: dropout on the attention probabilities.
        scale: softmax scale, default ``1/sqrt(D)``.

    Returns:
        ``(B, H, M+L, D)``; rows with no allowed key are zero.
    """
    bsz, heads, n, dim = q.shape
    m = pattern.num_memory
    seq_len = n - m
    device = q.device

    # Key validity over [mem ; seq]; None when nothing is padded.
    key_valid = None
    if attention_mask is not None:
        key_valid = torch.cat([attention_mask.new_ones(bsz, m), attention_mask], dim=1)  # (B, M+L)
        # Zero padded keys/values: masked scores never see them, and 0·NaN in P@V cannot leak garbage.
        k = k.masked_fill(~key_valid[:, None, :, None], 0.0)
        v = v.masked_fill(~key_valid[:, None, :, None], 0.0)

    if pattern.kind == "dense":
        mask = None if key_valid is None else key_valid[:, None, None, :]  # (B, 1, 1, M+L)
        if mask is None or m > 0:
            return _sdpa(q, k, v, mask, dropout_p, scale)
        mask, row_any = _with_nonempty_rows(mask)
        return _sdpa(q, k, v, mask, dropout_p, scale) * row_any

    q_mem, q_seq = q.split([m, seq_len], dim=2)  # (B, H, M, D), (B, H, L, D)
    k_mem, k_seq = k.split([m, seq_len], dim=2)
    v_mem, v_seq = v.split([m, seq_len], dim=2)

    if pattern.kind == "chunked":
        block, halo = pattern.chunk_size, 0
    else:
        block, halo = window_block_size(pattern.window), pattern.window
    n_blocks = (seq_len + block - 1) // block  # ceil without negative floor-division (ONNX truncates it)
    padded_len = n_blocks * block
    n_keys = block + 2 * halo  # sequence keys per block

    # ---- per-block keys: [mem keys ; keys of the block and its halo] ---------------------------------
    def block_keys(x_mem: torch.Tensor, x_seq: torch.Tensor) -> torch.Tensor:
        x_seq = _pad_rows(x_seq, halo, padded_len - seq_len + halo)  # (B, H, halo+Lp+halo, D)
        if halo == 0:
            x_blk = x_seq.view(bsz, heads, n_blocks, n_keys, dim)
        else:
            x_blk = x_seq.unfold(2, n_keys, block).transpose(-1, -2)  # (B, H, nB, K, D), a view
        # Blocks go to the batch dim and heads stay in dim 1, so the mask can broadcast over heads.
        x_mem = x_mem[:, None].expand(bsz, n_blocks, heads, m, dim)  # (B, nB, H, M, D)
        x = torch.cat([x_mem, x_blk.transpose(1, 2)], dim=3)  # (B, nB, H, M+K, D), one copy
        return x.reshape(bsz * n_blocks, heads, m + n_keys, dim)

    keys = block_keys(k_mem, k_seq)
    values = block_keys(v_mem, v_seq)
    queries = _pad_rows(q_seq, 0, padded_len - seq_len).view(bsz, heads, n_blocks, block, dim)
    queries = queries.transpose(1, 2).reshape(bsz * n_blocks, heads, block, dim)  # (B·nB, H, b, D)

    # ---- mask per block: (B·nB, 1, b or 1, M+K) ----------------------------------------------------------
    banded = pattern.kind == "window"
    needs_mask = banded or not _known_zero(padded_len - seq_len) or attention_mask is not None
    mask = row_any = None
    if needs_mask:
        valid = attention_mask if attention_mask is not None else q.new_ones(bsz, seq_len, dtype=torch.bool)
        valid = F.pad(valid, (halo, padded_len - seq_len + halo), value=False)  # (B, halo+Lp+halo)
        if not banded:
            local = valid.view(bsz, n_blocks, 1, n_keys)  # (B, nB, 1, K): same for every query of a chunk
        else:
            # query i' of a block sees key j' of its key set iff 0 <= j' - i' <= 2w.
            offset = torch.arange(n_keys, device=device)[None, :] - torch.arange(block, device=device)[:, None]
            band = (offset >= 0) & (offset <= 2 * halo)  # (b, K)
            local = band & valid.unfold(1, n_keys, block)[:, :, None, :]  # (B, nB, b, K)
        mem = local.new_ones(*local.shape[:-1], m)
        mask = torch.cat([mem, local], dim=-1)  # (B, nB, b or 1, M+K)
        if m == 0:
            mask, row_any = _with_nonempty_rows(mask)
        mask = mask.reshape(bsz * n_blocks, 1, mask.shape[2], m + n_keys)

    out = _sdpa(queries, keys, values, mask, dropout_p, scale)  # (B·nB, H, b, D)
    out = out.view(bsz, n_blocks, heads, block, dim)
    if row_any is not None:
        out = out * row_any.view(bsz, n_blocks, 1, row_any.shape[2], 1)
    out_seq = out.transpose(1, 2).reshape(bsz, heads, padded_len, dim)[:, :, :seq_len]  # (B, H, L, D)
    if m == 0:
        return out_seq

    mem_mask = None if key_valid is None else key_valid[:, None, None, :]  # (B, 1, 1, M+L)
    out_mem = _sdpa(q_mem, k, v, mem_mask, dropout_p, scale)  # (B, H, M, D)
    return torch.cat([out_mem, out_seq], dim=2)
