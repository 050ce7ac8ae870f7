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
internally; padded keys are masked out and padded query rows are dropped. A chunk or window that covers the
whole sequence (``AttentionPattern.for_length``) is computed as the dense pattern, so its cost is bounded by
the sequence's, never by C or w.

On CPU without dropout (any M), chunks and windows take a second, exact route that copies nothing of size
L (``_ChunkedFlashCPU``, ``_WindowFlashCPU``): the sequence queries attend their chunk (or band) and the
memory keys in two calls of PyTorch's CPU flash kernel, over views of q/k/v (no per-block copy of the
memory keys), and the two partial results are merged through their log-sum-exp, as flash-attention merges
key blocks::

    lse = logaddexp(lse_chunk, lse_mem)
    out = out_chunk · exp(lse_chunk - lse) + out_mem · exp(lse_mem - lse)

The backward calls the kernel's backward on each key set with the merged output and log-sum-exp: then
exp(s - lse) is each key's probability in the full softmax and rowsum(dO·O) is the full one, so the per-set
gradients are the exact gradients of the merged attention and just add up. Both passes walk the sequence a
group of rows at a time and write into the one output (or gradient) buffer, so the only buffers of size L
are the output, its log-sum-exp and the three gradients: less than dense SDPA holds.

Non-finite inputs: SDPA masks by adding -inf, and NaN - inf is NaN, so under a band mask a NaN key would
reach every query of its block. The window routes therefore zero non-finite rows before the kernel and set
to NaN exactly the rows the band lets see one (``_band_poison``), as the reference does; chunks and the dense
pattern need nothing, since every key of a chunk is allowed to every query of it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from gmat.ops.pattern import AttentionPattern

__all__ = ["blocked_attention", "window_block_size"]

_MIN_WINDOW_BLOCK = 32  # a tiny window still gets blocks of >= 32 queries so the SDPA batches stay efficient


def window_block_size(window: int) -> int:
    """Query block size used for ``window`` patterns: ``max(w, 32)``."""
    return max(window, _MIN_WINDOW_BLOCK)


def _sdpa(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, dropout_p: float, scale: float | None
) -> torch.Tensor:
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
    """Whether a flash-kernel route (``_ChunkedFlashCPU``, ``_WindowFlashCPU``) applies: CPU, no dropout.

    Not under ``torch.export`` (hence ONNX export): ONNX Runtime rejects this route's exported graph (a
    Reshape of the kernel's log-sum-exp receives another shape). Not under ``torch.compile`` either: the route
    walks the rows in a Python loop over the length, which a dynamic-shape graph cannot trace. Both take the
    batched-SDPA route, which computes the same attention.
    """
    return (
        q.device.type == "cpu"
        and pattern.kind in ("chunked", "window")
        and dropout_p == 0.0
        and not torch.compiler.is_compiling()
    )  # is_compiling() is also True under torch.export


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
    m = pattern.num_memory
    seq_len = q.shape[2] - m
    if isinstance(seq_len, int):  # a chunk or window wider than the sequence is the dense pattern
        pattern = pattern.for_length(seq_len)

    key_valid = pattern.key_valid(attention_mask)  # (B, M+L) or None when nothing is padded
    if key_valid is not None:
        # Zero padded keys/values: masked scores never see them, and 0·NaN in P@V cannot leak garbage.
        padded = ~key_valid[:, None, :, None]
        k, v = k.masked_fill(padded, 0.0), v.masked_fill(padded, 0.0)

    if _merges_on_cpu(q, pattern, dropout_p):
        if pattern.kind == "window":
            return _WindowFlashCPU.apply(q, k, v, m, pattern.window, key_valid, scale)
        return _ChunkedFlashCPU.apply(q, k, v, m, pattern.chunk_size, key_valid, scale)
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

    banded = pattern.kind == "window"
    poison = None
    if banded:
        # SDPA masks by adding -inf, and NaN - inf is NaN: a non-finite key would reach every query of its
        # block, not just its band. Zero non-finite rows in the block copies and mark, instead, the rows the
        # band lets see one (the reference's NaN rows); they are set to NaN below and pass no gradient.
        poison = _band_poison(q_seq, k, v, m, halo)  # (B, H, L, 1)
        for x in (keys, values):  # fresh copies (cat): in place, and the mask autograd keeps is per row
            x.masked_fill_(~torch.isfinite(x).all(dim=-1, keepdim=True), 0.0)
        queries = queries.masked_fill(~torch.isfinite(queries).all(dim=-1, keepdim=True), 0.0)

    # ---- mask per block: (B·nB, 1, b or 1, M+K) ----------------------------------------------------------
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
    if poison is not None:
        out_seq = out_seq.masked_fill(poison, math.nan)
    if m == 0:
        return out_seq

    mem_mask = None if key_valid is None else key_valid[:, None, None, :]  # (B, 1, 1, M+L)
    out_mem = _sdpa(q_mem, k, v, mem_mask, dropout_p, scale)  # (B, H, M, D)
    return torch.cat([out_mem, out_seq], dim=2)


def _band_poison(q_seq: torch.Tensor, k: torch.Tensor, v: torch.Tensor, m: int, window: int) -> torch.Tensor:
    """Sequence rows that see a non-finite input under the window pattern, ``(B, H, L, 1)`` bool.

    Row i sees a non-finite value when its own query has one, or a key or value it attends does: one of
    the M memory rows, or a sequence row j with ``|i - j| <= w``. ``k`` and ``v`` are zero at padded keys.
    """
    seq_len = q_seq.shape[2]
    bad = ~(torch.isfinite(k).all(dim=-1) & torch.isfinite(v).all(dim=-1))  # (B, H, M+L)
    bad_mem, bad_seq = bad.split([m, seq_len], dim=-1)
    before = F.pad(bad_seq.to(torch.int32).cumsum(dim=-1), (1, 0))  # (B, H, L+1): bad keys before j
    i = torch.arange(seq_len, device=q_seq.device)
    near = before[..., (i + window + 1).clamp(max=seq_len)] > before[..., (i - window).clamp(min=0)]  # (B, H, L)
    bad_query = ~torch.isfinite(q_seq).all(dim=-1)
    return (near | bad_query | bad_mem.any(dim=-1, keepdim=True)).unsqueeze(-1)


_GROUP_ELEMENTS = 1 << 18  # rows per kernel call on the CPU route: B·H·rows·D <= 256K elements (1 MiB fp32)


def _row_groups(seq_len: int, chunk: int, rows_per_group: int) -> list[tuple[int, int, int]]:
    """Cut L sequence rows into ``(start, n_chunks, chunk_len)`` groups of whole chunks.

    Full chunks are grouped ``max(1, rows_per_group // C)`` at a time; a last partial chunk of ``L mod C``
    rows is its own group with ``chunk_len = L mod C`` (a shorter chunk, so nothing is padded).
    """
    full, rest = divmod(seq_len, chunk)
    per = max(1, rows_per_group // chunk)
    groups = [(i * chunk, min(per, full - i), chunk) for i in range(0, full, per)]
    if rest:
        groups.append((full * chunk, 1, rest))
    return groups


def _group_key_mask(
    seq_valid: torch.Tensor | None, start: int, n_chunks: int, chunk: int, heads: int, dtype: torch.dtype
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Additive mask of a group's chunk keys, ``(B·H, nc, 1, c)``, and its fully padded chunks, ``(B, 1, nc, 1)``.

    Both are None without padding.
    """
    if seq_valid is None:
        return None, None
    bsz = seq_valid.shape[0]
    valid = seq_valid[:, start : start + n_chunks * chunk].reshape(bsz, 1, n_chunks, 1, chunk)  # (B, 1, nc, 1, c)
    mask = torch.zeros(valid.shape, dtype=dtype, device=valid.device).masked_fill_(~valid, -math.inf)
    mask = mask.expand(bsz, heads, n_chunks, 1, chunk).reshape(bsz * heads, n_chunks, 1, chunk)
    return mask, ~valid.any(dim=-1)


def _memory_rows_backward(
    grad_out: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse_rows: torch.Tensor,
    key_valid: torch.Tensor | None,
    m: int,
    rows_per_group: int,
    scale: float | None,
    dq: torch.Tensor,
    dk: torch.Tensor,
    dv: torch.Tensor,
) -> None:
    """Backward of the M memory queries over all M+L keys, a group of keys at a time.

    Writes ``dq[:, :, :m]`` and the first values of ``dk`` and ``dv``; shared by the chunk and the window routes.
    Tensors are ``(B, H, M+L, D)``.
    """
    flash_bwd = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward
    g_rows, q_rows, out_rows = grad_out[:, :, :m], q[:, :, :m], out[:, :, :m]
    for start in range(0, k.shape[2], rows_per_group):
        keys = slice(start, min(k.shape[2], start + rows_per_group))
        dq_rows, dk[:, :, keys], dv[:, :, keys] = flash_bwd(
            g_rows,
            q_rows,
            k[:, :, keys],
            v[:, :, keys],
            out_rows,
            lse_rows,
            0.0,
            False,
            attn_mask=_rows_mask(key_valid, keys.start, keys.stop, q.dtype),
            scale=scale,
        )
        if start == 0:
            dq[:, :, :m] = dq_rows
        else:
            dq[:, :, :m] += dq_rows


class _ChunkedFlashCPU(torch.autograd.Function):
    """Chunked GMAT attention on CPU without dropout: PyTorch's CPU flash kernel over views, merged.

    * sequence queries over their chunk's keys: ``(B·H, nc, c, D)`` views, one batch entry per chunk;
    * sequence queries over the M memory keys (M > 0), merged with the chunk part through the log-sum-exp;
    * memory queries over all M+L keys.

    The sequence is walked in groups of whole chunks (``_row_groups``) and the memory rows' keys in groups of
    the same size, each result written into the one output (or gradient) buffer: besides the output, the
    log-sum-exp and the three gradients, nothing of size L is allocated, and nothing is padded.

    Args of ``apply``: q, k, v ``(B, H, M+L, D)`` (k, v zeroed at padded keys), ``num_memory``,
    ``chunk_size``, ``key_valid`` ``(B, M+L)`` bool or None, ``scale`` or None. Returns ``(B, H, M+L, D)``.
    """

    @staticmethod
    def forward(ctx, q, k, v, num_memory, chunk, key_valid, scale):
        flash = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
        m = num_memory
        bsz, heads, n, dim = q.shape
        seq_len = n - m
        rows_per_group = max(1, _GROUP_ELEMENTS // (bsz * heads * dim))
        seq_valid = None if key_valid is None else key_valid[:, m:]
        rows_mask = _rows_mask(key_valid, 0, n, q.dtype)

        out = torch.empty_like(q)  # (B, H, M+L, D)
        acc = torch.float64 if q.dtype == torch.float64 else torch.float32  # the kernel's log-sum-exp dtype
        lse = q.new_empty(bsz, heads, seq_len, dtype=acc)  # (B, H, L), the sequence rows' log-sum-exp
        lse_rows = None
        if m > 0:
            out_rows, lse_rows = flash(q[:, :, :m], k, v, attn_mask=rows_mask, scale=scale)  # (B,H,M,D), (B,H,M)
            out[:, :, :m] = out_rows
        for start, n_chunks, c in _row_groups(seq_len, chunk, rows_per_group):
            rows = slice(m + start, m + start + n_chunks * c)
            mask, dead = _group_key_mask(seq_valid, start, n_chunks, c, heads, q.dtype)
            blocks = [x[:, :, rows].reshape(bsz * heads, n_chunks, c, dim) for x in (q, k, v)]
            o_chunk, lse_chunk = flash(*blocks, attn_mask=mask, scale=scale)  # (B·H, nc, c, D), (B·H, nc, c)
            out_g, lse_g = out[:, :, rows], lse[:, :, rows.start - m : rows.stop - m]  # (B,H,r,D), (B,H,r)
            out_g.copy_(o_chunk.reshape(bsz, heads, n_chunks * c, dim))
            lse_chunk = lse_chunk.reshape(bsz, heads, n_chunks, c)
            if m == 0:  # no memory keys: the chunk is the whole softmax (a fully padded one outputs 0, lse 0)
                lse_g.copy_(lse_chunk.reshape(bsz, heads, n_chunks * c))
                continue
            if dead is not None:  # the kernel reports lse = 0 for a row with no key; it has no mass
                lse_chunk = lse_chunk.masked_fill(dead, -math.inf)
            lse_chunk = lse_chunk.reshape(bsz, heads, n_chunks * c)
            o_mem, lse_mem = flash(q[:, :, rows], k[:, :, :m], v[:, :, :m], scale=scale)  # (B,H,r,D), (B,H,r)
            lse_g.copy_(torch.logaddexp(lse_chunk, lse_mem))  # finite: memory keys are always real
            out_g.mul_((lse_chunk - lse_g).exp_().unsqueeze(-1))
            out_g.addcmul_(o_mem, (lse_mem - lse_g).exp_().unsqueeze(-1))

        ctx.save_for_backward(q, k, v, out, lse, lse_rows, key_valid)
        ctx.shape = (m, chunk, scale)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        flash_bwd = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward
        q, k, v, out, lse, lse_rows, key_valid = ctx.saved_tensors
        m, chunk, scale = ctx.shape
        bsz, heads, n, dim = q.shape
        seq_len = n - m
        rows_per_group = max(1, _GROUP_ELEMENTS // (bsz * heads * dim))
        seq_valid = None if key_valid is None else key_valid[:, m:]

        dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)  # (B, H, M+L, D) each
        if m > 0:  # memory queries over all keys, a group of keys at a time; the first write of dk and dv
            _memory_rows_backward(grad_out, q, k, v, out, lse_rows, key_valid, m, rows_per_group, scale, dq, dk, dv)
        for start, n_chunks, c in _row_groups(seq_len, chunk, rows_per_group):
            rows = slice(m + start, m + start + n_chunks * c)
            mask, _ = _group_key_mask(seq_valid, start, n_chunks, c, heads, q.dtype)
            lse_g = lse[:, :, rows.start - m : rows.stop - m]  # (B, H, r)
            blocks = [x[:, :, rows].reshape(bsz * heads, n_chunks, c, dim) for x in (grad_out, q, k, v, out)]
            grads = flash_bwd(*blocks, lse_g.reshape(bsz * heads, n_chunks, c), 0.0, False, attn_mask=mask, scale=scale)
            for total, part in zip((dq, dk, dv), grads):  # (B·H, nc, c, D) -> rows of (B, H, M+L, D)
                part = part.reshape(bsz, heads, n_chunks * c, dim)
                if total is dq or m == 0:
                    total[:, :, rows] = part
                else:
                    total[:, :, rows] += part
            if m > 0:  # the same queries over the memory keys
                dq_mem, dk_mem, dv_mem = flash_bwd(
                    grad_out[:, :, rows],
                    q[:, :, rows],
                    k[:, :, :m],
                    v[:, :, :m],
                    out[:, :, rows],
                    lse_g,
                    0.0,
                    False,
                    scale=scale,
                )
                dq[:, :, rows] += dq_mem
                dk[:, :, :m] += dk_mem
                dv[:, :, :m] += dv_mem
        return dq, dk, dv, None, None, None, None


def _rows_mask(key_valid: torch.Tensor | None, start: int, stop: int, dtype: torch.dtype) -> torch.Tensor | None:
    """Additive mask ``(B, 1, 1, stop-start)`` of the keys ``start:stop`` for the memory queries, or None."""
    if key_valid is None:
        return None
    valid = key_valid[:, None, None, start:stop]
    return torch.zeros(valid.shape, dtype=dtype, device=valid.device).masked_fill_(~valid, -math.inf)


def _band_group(
    seq_valid: torch.Tensor | None,
    start: int,
    stop: int,
    window: int,
    seq_len: int,
    dtype: torch.dtype,
    device: torch.device,
    cache: dict,
) -> tuple[slice, torch.Tensor, torch.Tensor]:
    """Keys and additive mask of the sequence rows ``start:stop`` under a window of radius ``window``.

    Returns the key slice ``lo:hi`` (sequence indices), the mask ``(B or 1, 1, g, K)`` (0 or -inf) and the
    rows with no allowed key ``(B or 1, 1, g)``. The band part depends only on the group's shape and its
    offset from ``lo``, so it is built once per call (``cache``) for all the interior groups.
    """
    lo, hi = max(0, start - window), min(seq_len, stop + window)
    key = (start - lo, stop - start, hi - lo)
    if key not in cache:
        offset, rows, keys = key
        i = torch.arange(rows, device=device)[:, None] + offset
        band = ((i - torch.arange(keys, device=device)[None, :]).abs() <= window)[None, None]  # (1, 1, g, K)
        cache[key] = band, torch.zeros(band.shape, dtype=dtype, device=device).masked_fill_(~band, -math.inf)
    band, mask = cache[key]
    if seq_valid is None:
        return slice(lo, hi), mask, ~band.any(dim=-1)
    allowed = band & seq_valid[:, None, None, lo:hi]  # (B, 1, g, K)
    return slice(lo, hi), mask.masked_fill(~allowed, -math.inf), ~allowed.any(dim=-1)


def _finite_rows(x: torch.Tensor, needed: bool) -> torch.Tensor:
    """``x`` with every row that holds a NaN or Inf set to zero (a copy); ``x`` itself when not ``needed``."""
    if not needed:
        return x
    return x.masked_fill(~torch.isfinite(x).all(dim=-1, keepdim=True), 0.0)


def _any_poisoned(poison: torch.Tensor) -> bool:
    """Whether a row sees a non-finite input; assumed True while compiling (no data-dependent branch)."""
    return torch.compiler.is_compiling() or bool(poison.any())


class _WindowFlashCPU(torch.autograd.Function):
    """Window GMAT attention on CPU without dropout: the flash kernel over groups of rows and their band.

    Sequence rows ``a:b`` attend to the keys ``a-w : b+w`` (views) under a band mask, and to the M memory
    keys in a second call, merged through the log-sum-exp as in ``_ChunkedFlashCPU``; the memory rows attend
    to all keys. Only the output, its log-sum-exp and the three gradients have size L.

    Non-finite inputs: the kernel adds the mask (-inf) to the scores, and NaN - inf is NaN, so a NaN key
    would reach every row of its group. Each group's rows are therefore read with non-finite rows zeroed,
    and the rows the band lets see a non-finite value (``_band_poison``) are set to NaN and pass no gradient.

    Args of ``apply``: q, k, v ``(B, H, M+L, D)`` (k, v zeroed at padded keys), ``num_memory``, ``window``,
    ``key_valid`` ``(B, M+L)`` bool or None, ``scale`` or None. Returns ``(B, H, M+L, D)``.
    """

    @staticmethod
    def forward(ctx, q, k, v, num_memory, window, key_valid, scale):
        flash = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
        m = num_memory
        bsz, heads, n, dim = q.shape
        seq_len = n - m
        rows_per_group = max(1, _GROUP_ELEMENTS // (bsz * heads * dim))
        band_rows = min(rows_per_group, window_block_size(window))  # g rows see g + 2w keys: keep g ~ w
        seq_valid = None if key_valid is None else key_valid[:, m:]
        poison = _band_poison(q[:, :, m:], k, v, m, window)  # (B, H, L, 1)

        out = torch.empty_like(q)  # (B, H, M+L, D)
        acc = torch.float64 if q.dtype == torch.float64 else torch.float32  # the kernel's log-sum-exp dtype
        lse = q.new_empty(bsz, heads, seq_len, dtype=acc)  # (B, H, L)
        lse_rows = None
        if m > 0:
            out_rows, lse_rows = flash(
                q[:, :, :m], k, v, attn_mask=_rows_mask(key_valid, 0, n, q.dtype), scale=scale
            )  # (B, H, M, D), (B, H, M)
            out[:, :, :m] = out_rows
        bad = _any_poisoned(poison)
        k_mem, v_mem = _finite_rows(k[:, :, :m], bad), _finite_rows(v[:, :, :m], bad)
        cache: dict = {}
        for start in range(0, seq_len, band_rows):
            stop = min(seq_len, start + band_rows)
            keys, mask, dead = _band_group(seq_valid, start, stop, window, seq_len, q.dtype, q.device, cache)
            q_g = _finite_rows(q[:, :, m + start : m + stop], bad)  # (B, H, g, D)
            k_g, v_g = (_finite_rows(x[:, :, m + keys.start : m + keys.stop], bad) for x in (k, v))  # (B, H, K, D)
            out_g, lse_g = out[:, :, m + start : m + stop], lse[:, :, start:stop]
            o_band, lse_band = flash(q_g, k_g, v_g, attn_mask=mask, scale=scale)  # (B,H,g,D), (B,H,g)
            out_g.copy_(o_band)
            if m == 0:  # the band is the whole softmax (a row with no key outputs 0, lse 0)
                lse_g.copy_(lse_band)
                continue
            lse_band = lse_band.masked_fill(dead, -math.inf)  # the kernel reports lse = 0 for a row with no key
            o_mem, lse_mem = flash(q_g, k_mem, v_mem, scale=scale)
            lse_g.copy_(torch.logaddexp(lse_band, lse_mem))
            out_g.mul_((lse_band - lse_g).exp_().unsqueeze(-1))
            out_g.addcmul_(o_mem, (lse_mem - lse_g).exp_().unsqueeze(-1))
        if bad:
            out[:, :, m:].masked_fill_(poison, math.nan)

        ctx.save_for_backward(q, k, v, out, lse, lse_rows, key_valid, poison)
        ctx.shape = (m, window, scale)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        flash_bwd = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward
        q, k, v, out, lse, lse_rows, key_valid, poison = ctx.saved_tensors
        m, window, scale = ctx.shape
        bsz, heads, n, dim = q.shape
        seq_len = n - m
        rows_per_group = max(1, _GROUP_ELEMENTS // (bsz * heads * dim))
        band_rows = min(rows_per_group, window_block_size(window))
        seq_valid = None if key_valid is None else key_valid[:, m:]

        dq = torch.empty_like(q)  # (B, H, M+L, D)
        dk, dv = (torch.empty_like(k), torch.empty_like(v)) if m > 0 else (torch.zeros_like(k), torch.zeros_like(v))
        if m > 0:  # memory queries over all keys, a group of keys at a time; the first write of dk and dv
            _memory_rows_backward(grad_out, q, k, v, out, lse_rows, key_valid, m, rows_per_group, scale, dq, dk, dv)
        bad = _any_poisoned(poison)
        k_mem, v_mem = _finite_rows(k[:, :, :m], bad), _finite_rows(v[:, :, :m], bad)
        cache: dict = {}
        for start in range(0, seq_len, band_rows):
            stop = min(seq_len, start + band_rows)
            rows = slice(m + start, m + stop)
            keys, mask, _ = _band_group(seq_valid, start, stop, window, seq_len, q.dtype, q.device, cache)
            keys = slice(m + keys.start, m + keys.stop)
            g_g, o_g = grad_out[:, :, rows], out[:, :, rows]
            if bad:  # poisoned rows output NaN and pass no gradient
                hit = poison[:, :, start:stop]  # (B, H, g, 1)
                g_g, o_g = g_g.masked_fill(hit, 0.0), o_g.masked_fill(hit, 0.0)
            q_g, k_g, v_g = (_finite_rows(x[:, :, sl], bad) for x, sl in ((q, rows), (k, keys), (v, keys)))
            lse_g = lse[:, :, start:stop]
            dq_g, dk_g, dv_g = flash_bwd(g_g, q_g, k_g, v_g, o_g, lse_g, 0.0, False, attn_mask=mask, scale=scale)
            dq[:, :, rows] = dq_g
            dk[:, :, keys] += dk_g
            dv[:, :, keys] += dv_g
            if m > 0:  # the same queries over the memory keys
                dq_mem, dk_mem, dv_mem = flash_bwd(g_g, q_g, k_mem, v_mem, o_g, lse_g, 0.0, False, scale=scale)
                dq[:, :, rows] += dq_mem
                dk[:, :, :m] += dk_mem
                dv[:, :, :m] += dv_mem
        return dq, dk, dv, None, None, None, None
