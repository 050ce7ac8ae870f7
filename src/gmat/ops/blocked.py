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

On CPU, chunks with memory (M > 0) and no dropout take a second, exact route with fewer copies
(``_ChunkedMemoryFlashCPU``): the sequence queries attend their chunk and the memory keys in two calls of
PyTorch's CPU flash kernel, over views of q/k/v (no per-block copy of the memory keys), and the two partial
results are merged through their log-sum-exp, as flash-attention merges key blocks::

    lse = logaddexp(lse_chunk, lse_mem)
    out = out_chunk · exp(lse_chunk - lse) + out_mem · exp(lse_mem - lse)

The backward calls the kernel's backward on each key set with the merged output and log-sum-exp: then
exp(s - lse) is each key's probability in the full softmax and rowsum(dO·O) is the full one, so the per-set
gradients are the exact gradients of the merged attention and just add up.
"""

from __future__ import annotations

import functools
import math

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


def _merges_on_cpu(q: torch.Tensor, pattern: AttentionPattern, dropout_p: float) -> bool:
    """Whether the log-sum-exp route (``_ChunkedMemoryFlashCPU``) applies: CPU, chunks, M > 0, no dropout.

    Not under ``torch.export`` (hence ONNX export): ONNX Runtime rejects this route's exported graph (a
    Reshape of the kernel's log-sum-exp receives another shape), so exported graphs take the batched-SDPA
    route, which computes the same attention.
    """
    return (q.device.type == "cpu" and pattern.kind == "chunked" and pattern.num_memory > 0
            and dropout_p == 0.0 and not torch.compiler.is_exporting())


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
    bsz = q.shape[0]
    m = pattern.num_memory

    # Key validity over [mem ; seq]; None when nothing is padded.
    key_valid = None
    if attention_mask is not None:
        key_valid = torch.cat([attention_mask.new_ones(bsz, m), attention_mask], dim=1)  # (B, M+L)
        # Zero padded keys/values: masked scores never see them, and 0·NaN in P@V cannot leak garbage.
        k = k.masked_fill(~key_valid[:, None, :, None], 0.0)
        v = v.masked_fill(~key_valid[:, None, :, None], 0.0)

    if _merges_on_cpu(q, pattern, dropout_p):
        return _ChunkedMemoryFlashCPU.apply(q, k, v, m, pattern.chunk_size, key_valid, scale)
    return _blocked_sdpa(q, k, v, pattern, attention_mask, key_valid, dropout_p, scale)


def _blocked_sdpa(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    pattern: AttentionPattern,
    attention_mask: torch.Tensor | None,
    key_valid: torch.Tensor | None,
    dropout_p: float,
    scale: float | None,
) -> torch.Tensor:
    """Every pattern, any device: blocks as batch entries of one SDPA call (see the module docstring).

    ``k`` and ``v`` are already zeroed at padded keys; ``key_valid`` is ``(B, M+L)`` or None.
    """
    bsz, heads, n, dim = q.shape
    m = pattern.num_memory
    seq_len = n - m
    device = q.device

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


def _chunk_key_mask(key_valid: torch.Tensor | None, bsz: int, heads: int, n_blocks: int, chunk: int,
                    seq_len: int, dtype: torch.dtype) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Additive mask of the chunk keys, ``(B·H, nB, 1, C)``, and the fully masked chunks, ``(B, 1, nB, 1)``.

    Both are None when every key is real and L is a multiple of C.
    """
    pad = n_blocks * chunk - seq_len
    if key_valid is None and _known_zero(pad):
        return None, None
    valid = key_valid if key_valid is not None else torch.ones(bsz, seq_len, dtype=torch.bool)
    valid = F.pad(valid, (0, pad), value=False).view(bsz, 1, n_blocks, 1, chunk)  # (B, 1, nB, 1, C)
    mask = torch.zeros(valid.shape, dtype=dtype, device=valid.device).masked_fill_(~valid, -math.inf)
    mask = mask.expand(bsz, heads, n_blocks, 1, chunk).reshape(bsz * heads, n_blocks, 1, chunk)
    return mask, ~valid.any(dim=-1)  # dead: (B, 1, nB, 1)


def _as_chunks(x: torch.Tensor, n_blocks: int) -> torch.Tensor:
    """``(B, H, nB·C, D)`` -> ``(B·H, nB, C, D)``, a view when the strides allow it."""
    bsz, heads, length, dim = x.shape
    return x.reshape(bsz * heads, n_blocks, length // n_blocks, dim)


class _ChunkedMemoryFlashCPU(torch.autograd.Function):
    """Chunked GMAT attention with M > 0 on CPU, no dropout: three flash-kernel calls over views, merged.

    * sequence queries over their chunk's keys: ``(B·H, nB, C, D)`` views, one batch entry per chunk;
    * sequence queries over the M memory keys: ``(B, H, L, D)`` against ``(B, H, M, D)``;
    * memory queries over all M+L keys.

    Args of ``apply``: q, k, v ``(B, H, M+L, D)`` (k, v zeroed at padded keys), ``num_memory``,
    ``chunk_size``, ``key_valid`` ``(B, M+L)`` bool or None, ``scale`` or None. Returns ``(B, H, M+L, D)``.
    """

    @staticmethod
    def forward(ctx, q, k, v, num_memory, chunk, key_valid, scale):
        flash = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
        m = num_memory
        bsz, heads, n, dim = q.shape
        seq_len = n - m
        n_blocks = (seq_len + chunk - 1) // chunk
        padded_len = n_blocks * chunk
        seq_mask = None if key_valid is None else key_valid[:, m:]
        chunk_mask, dead = _chunk_key_mask(seq_mask, bsz, heads, n_blocks, chunk, seq_len, q.dtype)
        rows_mask = None
        if key_valid is not None:  # (B, 1, 1, M+L): memory queries skip padded keys
            rows_mask = torch.zeros(bsz, 1, 1, n, dtype=q.dtype).masked_fill_(~key_valid[:, None, None], -math.inf)

        q_seq, k_seq, v_seq = (_pad_rows(x[:, :, m:], 0, padded_len - seq_len) for x in (q, k, v))  # (B,H,Lp,D)

        blocks = functools.partial(_as_chunks, n_blocks=n_blocks)
        out_chunk, lse_chunk = flash(blocks(q_seq), blocks(k_seq), blocks(v_seq), attn_mask=chunk_mask, scale=scale)
        out_mem, lse_mem = flash(q_seq, k[:, :, :m], v[:, :, :m], scale=scale)  # (B,H,Lp,D), (B,H,Lp)
        out_rows, lse_rows = flash(q[:, :, :m], k, v, attn_mask=rows_mask, scale=scale)  # (B,H,M,D), (B,H,M)

        lse_chunk = lse_chunk.contiguous().view(bsz, heads, n_blocks, chunk)  # the kernel returns it (B, C, H) strided
        if dead is not None:  # the kernel reports lse = 0 for a row with no key; it has no mass
            lse_chunk = lse_chunk.masked_fill(dead, -math.inf)
        lse_chunk = lse_chunk.view(bsz, heads, padded_len)
        lse = torch.logaddexp(lse_chunk, lse_mem)  # (B, H, Lp), float32; finite: memory keys are always real

        out = q.new_empty(bsz, heads, m + padded_len, dim)
        out[:, :, :m] = out_rows
        out_seq = out[:, :, m:]  # in place, no temporaries (dynamo refuses out= into a strided view)
        out_seq.copy_(out_chunk.reshape(bsz, heads, padded_len, dim)).mul_((lse_chunk - lse).exp_().unsqueeze(-1))
        out_seq.addcmul_(out_mem, (lse_mem - lse).exp_().unsqueeze(-1))

        ctx.save_for_backward(q, k, v, out, lse, lse_rows, chunk_mask, rows_mask)
        ctx.shape = (m, chunk, n_blocks, scale)
        return out.narrow(2, 0, n)

    @staticmethod
    def backward(ctx, grad_out):
        flash_bwd = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward
        q, k, v, out, lse, lse_rows, chunk_mask, rows_mask = ctx.saved_tensors
        m, chunk, n_blocks, scale = ctx.shape
        bsz, heads, n, dim = q.shape
        seq_len, padded_len = n - m, n_blocks * chunk

        q_seq, k_seq, v_seq, g_seq = (_pad_rows(x[:, :, m:], 0, padded_len - seq_len) for x in (q, k, v, grad_out))
        out_seq = out[:, :, m:]

        blocks = functools.partial(_as_chunks, n_blocks=n_blocks)

        def unblocks(x: torch.Tensor) -> torch.Tensor:  # (B·H, nB, C, D) -> (B, H, L, D)
            return x.reshape(bsz, heads, padded_len, dim)[:, :, :seq_len]

        dq_chunk, dk_chunk, dv_chunk = flash_bwd(
            blocks(g_seq), blocks(q_seq), blocks(k_seq), blocks(v_seq), blocks(out_seq),
            lse.view(bsz * heads, n_blocks, chunk), 0.0, False, attn_mask=chunk_mask, scale=scale)
        dq_mem, dk_mem, dv_mem = flash_bwd(
            g_seq, q_seq, k[:, :, :m], v[:, :, :m], out_seq, lse, 0.0, False, scale=scale)
        dq_rows, dk, dv = flash_bwd(
            grad_out[:, :, :m], q[:, :, :m], k, v, out[:, :, :m], lse_rows, 0.0, False,
            attn_mask=rows_mask, scale=scale)

        dq = torch.empty_like(q)
        dq[:, :, :m] = dq_rows
        dq[:, :, m:].copy_(unblocks(dq_chunk)).add_(dq_mem[:, :, :seq_len])
        dk[:, :, m:] += unblocks(dk_chunk)
        dk[:, :, :m] += dk_mem
        dv[:, :, m:] += unblocks(dv_chunk)
        dv[:, :, :m] += dv_mem
        return dq, dk, dv, None, None, None, None
