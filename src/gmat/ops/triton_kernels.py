"""The ``triton`` backend: fused GMAT attention (memory + chunked / window / dense) in Triton.

This module imports ``triton`` at the top, so nothing in ``gmat`` imports it eagerly: the registry entry
in ``dispatch.py`` loads it on first use. Kernels are decorated when the module is imported, so
``TRITON_INTERPRET=1`` (Triton's CPU interpreter, used by the tests) must be set before that import;
``INTERPRET`` records which mode this process got.

Tensors are ``(B, H, M+L, D)`` with the memory rows first (docs/design.md §1). Row ``t < M`` is memory slot
``t``; row ``M + i`` is sequence position ``i``. Nothing is copied or padded: every kernel reads Q, K, V
in place through their strides and masks the tails. Padded keys and values are never loaded (masked loads
give zeros), so NaN or Inf stored at padded positions cannot leak into any output or gradient.

Forward
    * ``_fwd_seq_kernel``: one program per block of ``BLOCK_M`` sequence queries. It runs one online
      softmax (fp32, base 2) over the M memory keys and then over the keys of its chunk, or of its band
      ``[i0 - w, i1 + w]``, masking by the pattern and by key padding. It stores O and the row LSE.
    * ``_fwd_mem_kernel``: the M memory queries see all M+L keys. Those keys are cut into S splits and
      each program computes a partial (O, LSE) for a tile of memory queries over one split
      (flash-decoding), so the long memory rows run in parallel; the host merges the splits by LSE with a
      few small torch ops.

Backward (FlashAttention-2 scheme; ``delta = rowsum(dO * O)`` first)
    * ``_dq_seq_kernel``: dQ of a sequence query block over the keys it saw in the forward pass.
    * ``_dq_mem_kernel``: dQ of memory queries, split over keys, partial sums reduced in fp32.
    * ``_dkdv_seq_kernel``: dK, dV of a block of sequence keys from the queries that see it: all M memory
      queries plus its chunk or band.
    * ``_dkdv_mem_kernel``: dK, dV of memory keys, seen by all M+L queries: split over queries, partial
      sums reduced in fp32 (deterministic, no atomics).

Masked rows: a query row with no allowed key (M = 0 and every key of its chunk or band padded) stores
zeros and ``LSE = +inf``, so the backward pass sees ``p = exp2(s - LSE) = 0`` and produces zero
gradients, never NaN.

Block layout for the chunked pattern, M = 2, C = 4, BLOCK_M = 4 (``m`` memory key tiles, ``c`` chunk
tiles, ``.`` never read)::

                   m | c c c c . . . .
    queries 0..3   * | * * * * . . . .
    queries 4..7   * | . . . . * * * *
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from torch.autograd.function import once_differentiable

from gmat.ops.pattern import AttentionPattern

__all__ = [
    "INTERPRET",
    "SUPPORTED_HEAD_DIMS",
    "TritonConfig",
    "default_config",
    "first_cuda_config",
    "interpreter_usable",
    "triton_attention",
]

SUPPORTED_HEAD_DIMS = (16, 32, 64, 128)
_KIND_CODE = {"chunked": 0, "window": 1, "dense": 2}
_NO_PATTERN = tl.constexpr(-1)  # MASK_KIND for loops where every (query, key) pair of the range is allowed
_LOG2E = 1.4426950408889634


def _interpreting() -> bool:
    knobs = getattr(triton, "knobs", None)  # triton >= 3.4
    if knobs is not None:
        return bool(knobs.runtime.interpret)
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


INTERPRET = _interpreting()
"""True when the kernels are decorated under ``TRITON_INTERPRET=1`` (they then run on CPU tensors)."""

# triton.language's own helpers (tl.zeros, tl.sum, ...) are decorated when triton is first imported. If that
# happened before TRITON_INTERPRET=1 was set (transformers imports triton), interpreted kernels cannot call
# them; ``interpreter_usable`` detects this.
_LANG_INTERPRETED = not isinstance(tl.zeros, triton.runtime.JITFunction)

# The interpreter multiplies bf16 operands of ``tl.dot`` as raw uint16 bits (triton 3.9), so under it
# every dot runs on fp32 copies. Products of bf16/fp16 values are exact in fp32, so this changes nothing
# but the summation order.
_UPCAST_DOT = tl.constexpr(INTERPRET)


# ==== shared device helpers ==========================================================================
@triton.jit
def _dot(a, b):
    """Multiply ``a @ b`` with fp32 accumulation (operands upcast under the interpreter: ``_UPCAST_DOT``)."""
    if _UPCAST_DOT:
        out = tl.dot(a.to(tl.float32), b.to(tl.float32))
    else:
        out = tl.dot(a, b)
    return out


@triton.jit
def _local_span(i0, i1, L, KIND: tl.constexpr, SIZE):
    """Return the sequence positions ``[lo, hi)`` that positions ``i0 .. i1-1`` can see.

    The patterns are symmetric, so the same span gives the queries that see a block of keys.
    """
    if KIND == 0:
        lo = (i0 // SIZE) * SIZE
        hi = tl.minimum(((i1 - 1) // SIZE + 1) * SIZE, L)
    elif KIND == 1:
        lo = tl.maximum(i0 - SIZE, 0)
        hi = tl.minimum(i1 + SIZE, L)
    else:
        lo = i0 * 0
        hi = i0 * 0 + L
    return lo, hi


@triton.jit
def _pattern_ok(ok, q_pos, k_pos, MASK_KIND: tl.constexpr, SIZE):
    """``ok & N(q_pos) ∋ k_pos`` over broadcast sequence positions (identity for ``_NO_PATTERN``/dense)."""
    if MASK_KIND == 0:
        ok = ok & ((q_pos // SIZE) == (k_pos // SIZE))
    elif MASK_KIND == 1:
        ok = ok & (tl.abs(q_pos - k_pos) <= SIZE)
    return ok


@triton.jit
def _fwd_tiles(
    acc,
    l_i,
    m_i,
    q,
    q_pos,
    K,
    V,
    sk_n,
    sv_n,
    KEY_OK,
    lo,
    hi,
    M,
    qk_scale,
    SIZE,
    MASK_KIND: tl.constexpr,
    HAS_PAD: tl.constexpr,
    D: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """Online-softmax accumulation of ``q`` (BLOCK_M, D) over key rows ``[lo, hi)`` of ``[mem ; seq]``."""
    offs_d = tl.arange(0, D)
    for start in range(lo, hi, BLOCK_N):
        rows = start + tl.arange(0, BLOCK_N)  # key rows
        load = rows < hi  # keys read from memory: padded keys are never read (they may hold NaN or Inf)
        if HAS_PAD:
            real = tl.load(KEY_OK + (rows - M), mask=load & (rows >= M), other=1)
            load = load & (real != 0)
        # (D, BN)
        k_t = tl.load(K + rows[None, :] * sk_n + offs_d[:, None], mask=load[None, :], other=0.0)
        s = _dot(q, k_t) * qk_scale  # (BM, BN), log2 units
        ok = _pattern_ok(load[None, :], q_pos[:, None], (rows - M)[None, :], MASK_KIND, SIZE)
        s = tl.where(ok, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))  # m_i starts finite, so m_new is finite
        p = tl.math.exp2(s - m_new[:, None])
        alpha = tl.math.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(V + rows[:, None] * sv_n + offs_d[None, :], mask=load[:, None], other=0.0)  # (BN, D)
        acc = acc * alpha[:, None] + _dot(p.to(v.dtype), v)
        m_i = m_new
    return acc, l_i, m_i


@triton.jit
def _dq_tiles(
    dq,
    q,
    do,
    lse,
    delta,
    q_pos,
    K,
    V,
    sk_n,
    sv_n,
    KEY_OK,
    lo,
    hi,
    M,
    qk_scale,
    SIZE,
    MASK_KIND: tl.constexpr,
    HAS_PAD: tl.constexpr,
    D: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """Accumulate ``dS @ K`` for a query tile over key rows ``[lo, hi)`` (scale applied by the caller)."""
    offs_d = tl.arange(0, D)
    for start in range(lo, hi, BLOCK_N):
        rows = start + tl.arange(0, BLOCK_N)
        load = rows < hi  # padded keys are never read (they may hold NaN or Inf)
        if HAS_PAD:
            real = tl.load(KEY_OK + (rows - M), mask=load & (rows >= M), other=1)
            load = load & (real != 0)
        # K and V tiles transposed: (D, BN)
        k_t = tl.load(K + rows[None, :] * sk_n + offs_d[:, None], mask=load[None, :], other=0.0)
        v_t = tl.load(V + rows[None, :] * sv_n + offs_d[:, None], mask=load[None, :], other=0.0)
        s = _dot(q, k_t) * qk_scale
        ok = _pattern_ok(load[None, :], q_pos[:, None], (rows - M)[None, :], MASK_KIND, SIZE)
        p = tl.where(ok, tl.math.exp2(s - lse[:, None]), 0.0)  # where, not multiply: exp2 may overflow
        dp = _dot(do, v_t)  # (BM, BN)
        ds = p * (dp - delta[:, None])
        dq += _dot(ds.to(k_t.dtype), tl.trans(k_t))
    return dq


@triton.jit
def _dkdv_tiles(
    dk,
    dv,
    k,
    v,
    k_pos,
    key_ok,
    Q,
    DO,
    LSE,
    DELTA,
    sq_n,
    sdo_n,
    lo,
    hi,
    M,
    qk_scale,
    SIZE,
    MASK_KIND: tl.constexpr,
    D: tl.constexpr,
    BLOCK_M: tl.constexpr,
):
    """Accumulate dK, dV of a key tile ``k, v`` (BLOCK_N, D) over query rows ``[lo, hi)``."""
    offs_d = tl.arange(0, D)
    for start in range(lo, hi, BLOCK_M):
        rows = start + tl.arange(0, BLOCK_M)  # query rows
        in_range = rows < hi
        # Q transposed (D, BM) and dO (BM, D)
        q_t = tl.load(Q + rows[None, :] * sq_n + offs_d[:, None], mask=in_range[None, :], other=0.0)
        do = tl.load(DO + rows[:, None] * sdo_n + offs_d[None, :], mask=in_range[:, None], other=0.0)
        lse = tl.load(LSE + rows, mask=in_range, other=float("inf"))
        delta = tl.load(DELTA + rows, mask=in_range, other=0.0)
        s_t = _dot(k, q_t) * qk_scale  # (BN, BM)
        ok = key_ok[:, None] & in_range[None, :]
        ok = _pattern_ok(ok, k_pos[:, None], (rows - M)[None, :], MASK_KIND, SIZE)
        p_t = tl.where(ok, tl.math.exp2(s_t - lse[None, :]), 0.0)
        dv += _dot(p_t.to(do.dtype), do)
        dp_t = _dot(v, tl.trans(do))  # (BN, BM)
        ds_t = p_t * (dp_t - delta[None, :])
        dk += _dot(ds_t.to(q_t.dtype), tl.trans(q_t))
    return dk, dv


# ==== forward kernels ================================================================================
@triton.jit
def _fwd_seq_kernel(
    Q,
    K,
    V,
    Out,
    LSE,
    KEY_OK,
    sq_b,
    sq_h,
    sq_n,
    sk_b,
    sk_h,
    sk_n,
    sv_b,
    sv_h,
    sv_n,
    so_b,
    so_h,
    so_n,
    skey_b,
    H,
    M,
    L,
    qk_scale,
    SIZE,
    KIND: tl.constexpr,
    HAS_PAD: tl.constexpr,
    D: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """Compute O and LSE of sequence queries ``[pid*BLOCK_M, +BLOCK_M)``; grid ``(cdiv(L, BLOCK_M), B*H)``."""
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    Q += b * sq_b + h * sq_h
    K += b * sk_b + h * sk_h
    V += b * sv_b + h * sv_h
    Out += b * so_b + h * so_h
    KEY_OK += b * skey_b
    LSE += bh.to(tl.int64) * (M + L)

    i0 = pid_m * BLOCK_M
    pos = i0 + tl.arange(0, BLOCK_M)  # sequence positions of the queries
    live = pos < L
    offs_d = tl.arange(0, D)
    q = tl.load(Q + (M + pos)[:, None] * sq_n + offs_d[None, :], mask=live[:, None], other=0.0)  # (BM, D)

    # Finite start for the running max: a tile whose keys are all masked then gives exp2(-inf) = 0.
    m_i = tl.full([BLOCK_M], -1.0e30, tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, D], tl.float32)
    acc, l_i, m_i = _fwd_tiles(
        acc, l_i, m_i, q, pos, K, V, sk_n, sv_n, KEY_OK, 0, M, M, qk_scale, SIZE, _NO_PATTERN, False, D, BLOCK_N
    )  # memory keys: always allowed
    lo, hi = _local_span(i0, tl.minimum(i0 + BLOCK_M, L), L, KIND, SIZE)
    acc, l_i, m_i = _fwd_tiles(
        acc, l_i, m_i, q, pos, K, V, sk_n, sv_n, KEY_OK, M + lo, M + hi, M, qk_scale, SIZE, KIND, HAS_PAD, D, BLOCK_N
    )

    has_key = l_i > 0.0
    l_safe = tl.where(has_key, l_i, 1.0)
    out = acc / l_safe[:, None]  # rows without keys: acc = 0 -> zeros
    lse = tl.where(has_key, m_i + tl.math.log2(l_safe), float("inf"))
    tl.store(Out + (M + pos)[:, None] * so_n + offs_d[None, :], out.to(Out.dtype.element_ty), mask=live[:, None])
    tl.store(LSE + M + pos, lse, mask=live)


@triton.jit
def _fwd_mem_kernel(
    Q,
    K,
    V,
    O_PART,
    LSE_PART,
    KEY_OK,
    sq_b,
    sq_h,
    sq_n,
    sk_b,
    sk_h,
    sk_n,
    sv_b,
    sv_h,
    sv_n,
    skey_b,
    H,
    M,
    L,
    SPLIT,
    qk_scale,
    HAS_PAD: tl.constexpr,
    D: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """Compute partial (O, LSE) of memory queries over key split ``pid0``; grid ``(S, M tiles, B*H)``.

    ``O_PART`` is ``(S, B*H, M, D)`` fp32 (normalised within the split), ``LSE_PART`` ``(S, B*H, M)``,
    ``-inf`` where a split saw no allowed key.
    """
    split = tl.program_id(0)
    pid_m = tl.program_id(1)
    bh = tl.program_id(2)
    n_bh = tl.num_programs(2)
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    Q += b * sq_b + h * sq_h
    K += b * sk_b + h * sk_h
    V += b * sv_b + h * sv_h
    KEY_OK += b * skey_b

    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # memory query rows
    live = rows < M
    offs_d = tl.arange(0, D)
    q = tl.load(Q + rows[:, None] * sq_n + offs_d[None, :], mask=live[:, None], other=0.0)
    m_i = tl.full([BLOCK_M], -1.0e30, tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, D], tl.float32)
    lo = split * SPLIT
    hi = tl.minimum(lo + SPLIT, M + L)
    acc, l_i, m_i = _fwd_tiles(
        acc, l_i, m_i, q, rows, K, V, sk_n, sv_n, KEY_OK, lo, hi, M, qk_scale, 1, _NO_PATTERN, HAS_PAD, D, BLOCK_N
    )
    has_key = l_i > 0.0
    l_safe = tl.where(has_key, l_i, 1.0)
    part = (split * n_bh + bh).to(tl.int64) * M
    tl.store(O_PART + (part + rows)[:, None] * D + offs_d[None, :], acc / l_safe[:, None], mask=live[:, None])
    tl.store(LSE_PART + part + rows, tl.where(has_key, m_i + tl.math.log2(l_safe), float("-inf")), mask=live)


# ==== backward kernels ===============================================================================
@triton.jit
def _bwd_delta_kernel(
    Out, DO, DELTA, so_b, so_h, so_n, sdo_b, sdo_h, sdo_n, H, N, D: tl.constexpr, BLOCK: tl.constexpr
):
    """Compute ``delta = rowsum(dO * O)`` in fp32, ``(B*H, M+L)``; grid ``(cdiv(M+L, BLOCK), B*H)``."""
    pid = tl.program_id(0)
    bh = tl.program_id(1)
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    rows = pid * BLOCK + tl.arange(0, BLOCK)
    live = rows < N
    offs_d = tl.arange(0, D)
    o = tl.load(Out + b * so_b + h * so_h + rows[:, None] * so_n + offs_d[None, :], mask=live[:, None], other=0.0)
    do = tl.load(DO + b * sdo_b + h * sdo_h + rows[:, None] * sdo_n + offs_d[None, :], mask=live[:, None], other=0.0)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
    tl.store(DELTA + bh.to(tl.int64) * N + rows, delta, mask=live)


@triton.jit
def _dq_seq_kernel(
    Q,
    K,
    V,
    DO,
    DQ,
    LSE,
    DELTA,
    KEY_OK,
    sq_b,
    sq_h,
    sq_n,
    sk_b,
    sk_h,
    sk_n,
    sv_b,
    sv_h,
    sv_n,
    sdo_b,
    sdo_h,
    sdo_n,
    sdq_b,
    sdq_h,
    sdq_n,
    skey_b,
    H,
    M,
    L,
    sm_scale,
    qk_scale,
    SIZE,
    KIND: tl.constexpr,
    HAS_PAD: tl.constexpr,
    D: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """Compute dQ of sequence queries ``[pid*BLOCK_M, +BLOCK_M)``; grid ``(cdiv(L, BLOCK_M), B*H)``."""
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    Q += b * sq_b + h * sq_h
    K += b * sk_b + h * sk_h
    V += b * sv_b + h * sv_h
    DO += b * sdo_b + h * sdo_h
    DQ += b * sdq_b + h * sdq_h
    KEY_OK += b * skey_b
    LSE += bh.to(tl.int64) * (M + L)
    DELTA += bh.to(tl.int64) * (M + L)

    i0 = pid_m * BLOCK_M
    pos = i0 + tl.arange(0, BLOCK_M)
    live = pos < L
    rows = M + pos
    offs_d = tl.arange(0, D)
    q = tl.load(Q + rows[:, None] * sq_n + offs_d[None, :], mask=live[:, None], other=0.0)
    do = tl.load(DO + rows[:, None] * sdo_n + offs_d[None, :], mask=live[:, None], other=0.0)
    lse = tl.load(LSE + rows, mask=live, other=float("inf"))
    delta = tl.load(DELTA + rows, mask=live, other=0.0)
    dq = tl.zeros([BLOCK_M, D], tl.float32)
    dq = _dq_tiles(
        dq, q, do, lse, delta, pos, K, V, sk_n, sv_n, KEY_OK, 0, M, M, qk_scale, SIZE, _NO_PATTERN, False, D, BLOCK_N
    )
    lo, hi = _local_span(i0, tl.minimum(i0 + BLOCK_M, L), L, KIND, SIZE)
    dq = _dq_tiles(
        dq,
        q,
        do,
        lse,
        delta,
        pos,
        K,
        V,
        sk_n,
        sv_n,
        KEY_OK,
        M + lo,
        M + hi,
        M,
        qk_scale,
        SIZE,
        KIND,
        HAS_PAD,
        D,
        BLOCK_N,
    )
    tl.store(DQ + rows[:, None] * sdq_n + offs_d[None, :], (dq * sm_scale).to(DQ.dtype.element_ty), mask=live[:, None])


@triton.jit
def _dq_mem_kernel(
    Q,
    K,
    V,
    DO,
    DQ_PART,
    LSE,
    DELTA,
    KEY_OK,
    sq_b,
    sq_h,
    sq_n,
    sk_b,
    sk_h,
    sk_n,
    sv_b,
    sv_h,
    sv_n,
    sdo_b,
    sdo_h,
    sdo_n,
    skey_b,
    H,
    M,
    L,
    SPLIT,
    sm_scale,
    qk_scale,
    HAS_PAD: tl.constexpr,
    D: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """Partial dQ of memory queries over key split ``pid0`` into ``DQ_PART (S, B*H, M, D)`` fp32."""
    split = tl.program_id(0)
    pid_m = tl.program_id(1)
    bh = tl.program_id(2)
    n_bh = tl.num_programs(2)
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    Q += b * sq_b + h * sq_h
    K += b * sk_b + h * sk_h
    V += b * sv_b + h * sv_h
    DO += b * sdo_b + h * sdo_h
    KEY_OK += b * skey_b
    LSE += bh.to(tl.int64) * (M + L)
    DELTA += bh.to(tl.int64) * (M + L)

    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    live = rows < M
    offs_d = tl.arange(0, D)
    q = tl.load(Q + rows[:, None] * sq_n + offs_d[None, :], mask=live[:, None], other=0.0)
    do = tl.load(DO + rows[:, None] * sdo_n + offs_d[None, :], mask=live[:, None], other=0.0)
    lse = tl.load(LSE + rows, mask=live, other=float("inf"))
    delta = tl.load(DELTA + rows, mask=live, other=0.0)
    dq = tl.zeros([BLOCK_M, D], tl.float32)
    lo = split * SPLIT
    hi = tl.minimum(lo + SPLIT, M + L)
    dq = _dq_tiles(
        dq, q, do, lse, delta, rows, K, V, sk_n, sv_n, KEY_OK, lo, hi, M, qk_scale, 1, _NO_PATTERN, HAS_PAD, D, BLOCK_N
    )
    part = (split * n_bh + bh).to(tl.int64) * M
    tl.store(DQ_PART + (part + rows)[:, None] * D + offs_d[None, :], dq * sm_scale, mask=live[:, None])


@triton.jit
def _dkdv_seq_kernel(
    Q,
    K,
    V,
    DO,
    DK,
    DV,
    LSE,
    DELTA,
    KEY_OK,
    sq_b,
    sq_h,
    sq_n,
    sk_b,
    sk_h,
    sk_n,
    sv_b,
    sv_h,
    sv_n,
    sdo_b,
    sdo_h,
    sdo_n,
    sdk_b,
    sdk_h,
    sdk_n,
    sdv_b,
    sdv_h,
    sdv_n,
    skey_b,
    H,
    M,
    L,
    sm_scale,
    qk_scale,
    SIZE,
    KIND: tl.constexpr,
    HAS_PAD: tl.constexpr,
    D: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """dK, dV of sequence keys ``[pid*BLOCK_N, +BLOCK_N)``; grid ``(cdiv(L, BLOCK_N), B*H)``."""
    pid_n = tl.program_id(0)
    bh = tl.program_id(1)
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    Q += b * sq_b + h * sq_h
    K += b * sk_b + h * sk_h
    V += b * sv_b + h * sv_h
    DO += b * sdo_b + h * sdo_h
    DK += b * sdk_b + h * sdk_h
    DV += b * sdv_b + h * sdv_h
    KEY_OK += b * skey_b
    LSE += bh.to(tl.int64) * (M + L)
    DELTA += bh.to(tl.int64) * (M + L)

    j0 = pid_n * BLOCK_N
    pos = j0 + tl.arange(0, BLOCK_N)  # sequence positions of the keys
    live = pos < L
    rows = M + pos
    offs_d = tl.arange(0, D)
    key_ok = live
    if HAS_PAD:
        key_ok = key_ok & (tl.load(KEY_OK + pos, mask=live, other=0) != 0)
    # padded keys are never read (they may hold NaN or Inf): zeros, and their dK, dV stay zero
    k = tl.load(K + rows[:, None] * sk_n + offs_d[None, :], mask=key_ok[:, None], other=0.0)  # (BN, D)
    v = tl.load(V + rows[:, None] * sv_n + offs_d[None, :], mask=key_ok[:, None], other=0.0)
    dk = tl.zeros([BLOCK_N, D], tl.float32)
    dv = tl.zeros([BLOCK_N, D], tl.float32)
    # every memory query sees every (real) key
    dk, dv = _dkdv_tiles(
        dk, dv, k, v, pos, key_ok, Q, DO, LSE, DELTA, sq_n, sdo_n, 0, M, M, qk_scale, SIZE, _NO_PATTERN, D, BLOCK_M
    )
    lo, hi = _local_span(j0, tl.minimum(j0 + BLOCK_N, L), L, KIND, SIZE)
    dk, dv = _dkdv_tiles(
        dk, dv, k, v, pos, key_ok, Q, DO, LSE, DELTA, sq_n, sdo_n, M + lo, M + hi, M, qk_scale, SIZE, KIND, D, BLOCK_M
    )
    tl.store(DK + rows[:, None] * sdk_n + offs_d[None, :], (dk * sm_scale).to(DK.dtype.element_ty), mask=live[:, None])
    tl.store(DV + rows[:, None] * sdv_n + offs_d[None, :], dv.to(DV.dtype.element_ty), mask=live[:, None])


@triton.jit
def _dkdv_mem_kernel(
    Q,
    K,
    V,
    DO,
    DK_PART,
    DV_PART,
    LSE,
    DELTA,
    sq_b,
    sq_h,
    sq_n,
    sk_b,
    sk_h,
    sk_n,
    sv_b,
    sv_h,
    sv_n,
    sdo_b,
    sdo_h,
    sdo_n,
    H,
    M,
    L,
    SPLIT,
    sm_scale,
    qk_scale,
    D: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """Partial dK, dV of memory keys over query split ``pid0`` into ``(S, B*H, M, D)`` fp32 buffers."""
    split = tl.program_id(0)
    pid_n = tl.program_id(1)
    bh = tl.program_id(2)
    n_bh = tl.num_programs(2)
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    Q += b * sq_b + h * sq_h
    K += b * sk_b + h * sk_h
    V += b * sv_b + h * sv_h
    DO += b * sdo_b + h * sdo_h
    LSE += bh.to(tl.int64) * (M + L)
    DELTA += bh.to(tl.int64) * (M + L)

    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # memory key rows (never padding)
    live = rows < M
    offs_d = tl.arange(0, D)
    k = tl.load(K + rows[:, None] * sk_n + offs_d[None, :], mask=live[:, None], other=0.0)
    v = tl.load(V + rows[:, None] * sv_n + offs_d[None, :], mask=live[:, None], other=0.0)
    dk = tl.zeros([BLOCK_N, D], tl.float32)
    dv = tl.zeros([BLOCK_N, D], tl.float32)
    lo = split * SPLIT
    hi = tl.minimum(lo + SPLIT, M + L)
    dk, dv = _dkdv_tiles(
        dk, dv, k, v, rows, live, Q, DO, LSE, DELTA, sq_n, sdo_n, lo, hi, M, qk_scale, 1, _NO_PATTERN, D, BLOCK_M
    )
    part = (split * n_bh + bh).to(tl.int64) * M
    tl.store(DK_PART + (part + rows)[:, None] * D + offs_d[None, :], dk * sm_scale, mask=live[:, None])
    tl.store(DV_PART + (part + rows)[:, None] * D + offs_d[None, :], dv, mask=live[:, None])


# ==== launch configuration ===========================================================================
@dataclass(frozen=True)
class TritonConfig:
    """Tile sizes and launch parameters (one set per head dim; not autotuned at run time).

    Attributes:
        block_m: sequence queries per program in the forward kernel.
        block_n: keys per inner step in the forward kernels.
        num_warps: warps per program of the forward kernels.
        num_stages: software-pipelining depth of the forward kernels' inner loops.
        dq_block_m: sequence queries per program in the dQ kernel.
        bwd_block_n: keys per inner step in the dQ kernels.
        kv_block_m: queries per inner step in the dK/dV kernels.
        kv_block_n: sequence keys per program in the dK/dV kernels.
        bwd_num_warps: warps per program of the backward kernels.
        bwd_num_stages: software-pipelining depth of the backward kernels' inner loops.
        split_programs: how many programs the memory-row kernels aim for when they split the M+L keys
            (forward, dQ) or queries (dK/dV of memory keys); a few per streaming multiprocessor.
    """

    block_m: int
    block_n: int
    num_warps: int
    num_stages: int
    dq_block_m: int
    bwd_block_n: int
    kv_block_m: int
    kv_block_n: int
    bwd_num_warps: int
    bwd_num_stages: int
    split_programs: int


def default_config(head_dim: int, device: torch.device) -> TritonConfig:
    """Launch parameters for ``head_dim`` on ``device`` (small tiles on the CPU interpreter).

    D = 64 was tuned on an H200 (bf16, B=1, H=16, M=64, L=65,536, chunked C=512 and window w=256; forward
    and backward kernels timed apart by ``benchmarks/triton_tune.py``, docs/benchmarks.md "Launch
    configuration"): 64-row forward tiles in 4 warps, and the backward with 32-key dQ steps, 32-query dK/dV
    steps, 4 warps and 5 stages, took chunked 0.66 + 1.89 ms and window 0.82 + 2.41 ms against 0.70 + 2.30
    and 1.12 + 2.63 for the first tiles. The other head dims keep those first tiles, chosen offline for sm_90
    by reading ``cuobjdump -res-usage`` (no stack spills) and checked for correctness on the same H200, but
    not timed against alternatives.
    """
    if device.type != "cuda":
        return TritonConfig(
            block_m=16,
            block_n=16,
            num_warps=1,
            num_stages=1,
            dq_block_m=16,
            bwd_block_n=16,
            kv_block_m=16,
            kv_block_n=16,
            bwd_num_warps=1,
            bwd_num_stages=1,
            split_programs=4,
        )
    split = 4 * torch.cuda.get_device_properties(device).multi_processor_count
    if head_dim == 64:
        return TritonConfig(
            block_m=64,
            block_n=64,
            num_warps=4,
            num_stages=3,
            dq_block_m=128,
            bwd_block_n=32,
            kv_block_m=32,
            kv_block_n=128,
            bwd_num_warps=4,
            bwd_num_stages=5,
            split_programs=split,
        )
    return first_cuda_config(head_dim, split)


def first_cuda_config(head_dim: int, split_programs: int) -> TritonConfig:
    """The CUDA tiles before any tuning on hardware (the yardstick ``triton_v0`` of the benchmarks)."""
    small = head_dim <= 64
    return TritonConfig(
        block_m=128,
        block_n=64,
        num_warps=8,
        num_stages=3 if small else 2,
        dq_block_m=128 if small else 64,
        bwd_block_n=64,
        kv_block_m=64 if small else 32,
        kv_block_n=128,
        bwd_num_warps=8,
        bwd_num_stages=3 if small else 2,
        split_programs=split_programs,
    )


def interpreter_usable() -> bool:
    """Whether CPU tensors can run: the kernels *and* ``triton.language`` were decorated for the interpreter.

    Set ``TRITON_INTERPRET=1`` before anything imports ``triton`` (``transformers`` does, so before
    ``import gmat``), e.g. at the top of ``tests/conftest.py``.
    """
    return INTERPRET and _LANG_INTERPRETED


def _memory_block(m: int) -> int:
    """Tile for memory query/key rows: a power of two in [16, 64] (``tl.dot`` needs >= 16)."""
    return min(64, max(16, triton.next_power_of_2(m)))


def _split(n_rows: int, tile: int, other_programs: int, target: int) -> tuple[int, int]:
    """Cut ``n_rows`` into S splits of a whole number of tiles so that S * other_programs ≈ target.

    Returns:
        ``(S, rows per split)``.
    """
    n_tiles = triton.cdiv(n_rows, tile)
    splits = max(1, min(n_tiles, triton.cdiv(target, max(other_programs, 1))))
    per_split = triton.cdiv(n_tiles, splits) * tile
    return triton.cdiv(n_rows, per_split), per_split


def _strides(x: torch.Tensor) -> tuple[int, int, int]:
    return x.stride(0), x.stride(1), x.stride(2)


def _last_dim_contiguous(x: torch.Tensor) -> torch.Tensor:
    """``x`` itself when the kernels can read it in place: unit stride over D and int32 row offsets."""
    if x.stride(-1) == 1 and x.shape[2] * x.stride(2) < 2**31:
        return x
    return x.contiguous()


# ==== host side ======================================================================================
def _forward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_ok: torch.Tensor | None,
    kind: int,
    size: int,
    m: int,
    sm_scale: float,
    cfg: TritonConfig,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch the forward kernels. Returns O ``(B, H, M+L, D)`` and LSE ``(B, H, M+L)`` (log2 units)."""
    bsz, heads, n, dim = q.shape
    seq_len = n - m
    out = torch.empty((bsz, heads, n, dim), dtype=q.dtype, device=q.device)
    lse = torch.empty((bsz, heads, n), dtype=torch.float32, device=q.device)
    qk_scale = sm_scale * _LOG2E
    has_pad = key_ok is not None
    key_arg = key_ok if has_pad else q  # unused pointer when there is no padding
    skey_b = key_ok.stride(0) if has_pad else 0
    launch = {"num_warps": cfg.num_warps, "num_stages": cfg.num_stages}

    grid = (triton.cdiv(seq_len, cfg.block_m), bsz * heads)
    _fwd_seq_kernel[grid](
        q,
        k,
        v,
        out,
        lse,
        key_arg,
        *_strides(q),
        *_strides(k),
        *_strides(v),
        *_strides(out),
        skey_b,
        heads,
        m,
        seq_len,
        qk_scale,
        size,
        KIND=kind,
        HAS_PAD=has_pad,
        D=dim,
        BLOCK_M=cfg.block_m,
        BLOCK_N=cfg.block_n,
        **launch,
    )
    if m == 0:
        return out, lse

    mb = _memory_block(m)
    n_mtiles = triton.cdiv(m, mb)
    splits, per_split = _split(n, cfg.block_n, n_mtiles * bsz * heads, cfg.split_programs)
    o_part = torch.empty((splits, bsz, heads, m, dim), dtype=torch.float32, device=q.device)
    lse_part = torch.empty((splits, bsz, heads, m), dtype=torch.float32, device=q.device)
    _fwd_mem_kernel[(splits, n_mtiles, bsz * heads)](
        q,
        k,
        v,
        o_part,
        lse_part,
        key_arg,
        *_strides(q),
        *_strides(k),
        *_strides(v),
        skey_b,
        heads,
        m,
        seq_len,
        per_split,
        qk_scale,
        HAS_PAD=has_pad,
        D=dim,
        BLOCK_M=mb,
        BLOCK_N=cfg.block_n,
        **launch,
    )
    # Merge the splits by LSE. Split 0 holds the memory keys, so every memory row has a finite LSE.
    top = lse_part.amax(dim=0)  # (B, H, M)
    weight = torch.exp2(lse_part - top)  # (S, B, H, M); -inf (empty split) -> 0
    total = weight.sum(dim=0)
    out[:, :, :m] = ((weight[..., None] * o_part).sum(dim=0) / total[..., None]).to(q.dtype)
    lse[:, :, :m] = top + torch.log2(total)
    return out, lse


def _backward(
    do: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    key_ok: torch.Tensor | None,
    kind: int,
    size: int,
    m: int,
    sm_scale: float,
    cfg: TritonConfig,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Launch the backward kernels. Returns dQ, dK, dV shaped like q."""
    bsz, heads, n, dim = q.shape
    seq_len = n - m
    qk_scale = sm_scale * _LOG2E
    has_pad = key_ok is not None
    key_arg = key_ok if has_pad else q
    skey_b = key_ok.stride(0) if has_pad else 0
    launch = {"num_warps": cfg.bwd_num_warps, "num_stages": cfg.bwd_num_stages}
    dq = torch.empty_like(q, memory_format=torch.contiguous_format)
    dk = torch.empty_like(k, memory_format=torch.contiguous_format)
    dv = torch.empty_like(v, memory_format=torch.contiguous_format)

    delta = torch.empty((bsz, heads, n), dtype=torch.float32, device=q.device)
    block = 64 if q.is_cuda else 16
    _bwd_delta_kernel[(triton.cdiv(n, block), bsz * heads)](
        out, do, delta, *_strides(out), *_strides(do), heads, n, D=dim, BLOCK=block, num_warps=cfg.bwd_num_warps
    )

    _dq_seq_kernel[(triton.cdiv(seq_len, cfg.dq_block_m), bsz * heads)](
        q,
        k,
        v,
        do,
        dq,
        lse,
        delta,
        key_arg,
        *_strides(q),
        *_strides(k),
        *_strides(v),
        *_strides(do),
        *_strides(dq),
        skey_b,
        heads,
        m,
        seq_len,
        sm_scale,
        qk_scale,
        size,
        KIND=kind,
        HAS_PAD=has_pad,
        D=dim,
        BLOCK_M=cfg.dq_block_m,
        BLOCK_N=cfg.bwd_block_n,
        **launch,
    )
    _dkdv_seq_kernel[(triton.cdiv(seq_len, cfg.kv_block_n), bsz * heads)](
        q,
        k,
        v,
        do,
        dk,
        dv,
        lse,
        delta,
        key_arg,
        *_strides(q),
        *_strides(k),
        *_strides(v),
        *_strides(do),
        *_strides(dk),
        *_strides(dv),
        skey_b,
        heads,
        m,
        seq_len,
        sm_scale,
        qk_scale,
        size,
        KIND=kind,
        HAS_PAD=has_pad,
        D=dim,
        BLOCK_M=cfg.kv_block_m,
        BLOCK_N=cfg.kv_block_n,
        **launch,
    )
    if m == 0:
        return dq, dk, dv

    mb = _memory_block(m)
    n_mtiles = triton.cdiv(m, mb)
    splits, per_split = _split(n, cfg.bwd_block_n, n_mtiles * bsz * heads, cfg.split_programs)
    dq_part = torch.empty((splits, bsz, heads, m, dim), dtype=torch.float32, device=q.device)
    _dq_mem_kernel[(splits, n_mtiles, bsz * heads)](
        q,
        k,
        v,
        do,
        dq_part,
        lse,
        delta,
        key_arg,
        *_strides(q),
        *_strides(k),
        *_strides(v),
        *_strides(do),
        skey_b,
        heads,
        m,
        seq_len,
        per_split,
        sm_scale,
        qk_scale,
        HAS_PAD=has_pad,
        D=dim,
        BLOCK_M=mb,
        BLOCK_N=cfg.bwd_block_n,
        **launch,
    )
    dq[:, :, :m] = dq_part.sum(dim=0).to(dq.dtype)

    splits, per_split = _split(n, cfg.kv_block_m, n_mtiles * bsz * heads, cfg.split_programs)
    dk_part = torch.empty((splits, bsz, heads, m, dim), dtype=torch.float32, device=q.device)
    dv_part = torch.empty_like(dk_part)
    _dkdv_mem_kernel[(splits, n_mtiles, bsz * heads)](
        q,
        k,
        v,
        do,
        dk_part,
        dv_part,
        lse,
        delta,
        *_strides(q),
        *_strides(k),
        *_strides(v),
        *_strides(do),
        heads,
        m,
        seq_len,
        per_split,
        sm_scale,
        qk_scale,
        D=dim,
        BLOCK_M=cfg.kv_block_m,
        BLOCK_N=mb,
        **launch,
    )
    dk[:, :, :m] = dk_part.sum(dim=0).to(dk.dtype)
    dv[:, :, :m] = dv_part.sum(dim=0).to(dv.dtype)
    return dq, dk, dv


class _TritonGmatAttention(torch.autograd.Function):
    """Autograd wrapper: saves Q, K, V, Out and the row LSE; recomputes probabilities in the backward pass."""

    @staticmethod
    def forward(
        ctx,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,  # noqa: ANN001
        key_ok: torch.Tensor | None,
        kind: int,
        size: int,
        m: int,
        sm_scale: float,
        cfg: TritonConfig,
    ) -> torch.Tensor:
        out, lse = _forward(q, k, v, key_ok, kind, size, m, sm_scale, cfg)
        ctx.save_for_backward(q, k, v, out, lse, key_ok)
        ctx.meta = (kind, size, m, sm_scale, cfg)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, do: torch.Tensor):  # noqa: ANN001, ANN205
        q, k, v, out, lse, key_ok = ctx.saved_tensors
        kind, size, m, sm_scale, cfg = ctx.meta
        do = _last_dim_contiguous(do)
        dq, dk, dv = _backward(do, q, k, v, out, lse, key_ok, kind, size, m, sm_scale, cfg)
        return dq, dk, dv, None, None, None, None, None, None


def triton_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    pattern: AttentionPattern,
    attention_mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    scale: float | None = None,
    config: TritonConfig | None = None,
) -> torch.Tensor:
    """GMAT attention through the fused Triton kernels (inputs assumed validated by ``gmat_attention``).

    Args:
        q: ``(B, H, M+L, D)``, memory rows first, D in ``SUPPORTED_HEAD_DIMS``; bf16 or fp16 on CUDA
            (fp32 also runs, with TF32 matmuls on GPU; the interpreter computes it exactly).
        k: like q.
        v: like q.
        pattern: the attention pattern (chunked, window or dense).
        attention_mask: optional ``(B, L)`` bool, True = real token.
        dropout_p: must be 0 (no attention dropout in these kernels).
        scale: softmax scale, default ``1/sqrt(D)``.
        config: launch parameters; default ``default_config(D, q.device)``.

    Returns:
        ``(B, H, M+L, D)`` in q's dtype, contiguous; rows with no allowed key are zero.

    Raises:
        ValueError: for dropout, an unsupported head dim, or CPU tensors without ``TRITON_INTERPRET=1``.
    """
    if dropout_p > 0.0:
        raise ValueError(f"triton: attention dropout not supported (dropout_p={dropout_p})")
    dim = q.shape[-1]
    if dim not in SUPPORTED_HEAD_DIMS:
        raise ValueError(f"triton: head dim D={dim} not in {SUPPORTED_HEAD_DIMS}")
    if q.device.type != "cuda" and not INTERPRET:
        raise ValueError("triton: CPU tensors need the Triton interpreter (TRITON_INTERPRET=1 before import)")
    if INTERPRET and not _LANG_INTERPRETED:
        raise RuntimeError(
            "triton: TRITON_INTERPRET=1 was set after `triton` was first imported, so "
            "triton.language is compiled for GPU; set it before anything imports triton"
        )
    kind = _KIND_CODE[pattern.kind]
    size = {"chunked": pattern.chunk_size, "window": pattern.window, "dense": 1}[pattern.kind]
    sm_scale = 1.0 / math.sqrt(dim) if scale is None else float(scale)
    key_ok = None
    if attention_mask is not None:
        key_ok = attention_mask.to(torch.int8).contiguous()  # (B, L), 1 = real key
    cfg = config if config is not None else default_config(dim, q.device)
    q, k, v = (_last_dim_contiguous(t) for t in (q, k, v))
    return _TritonGmatAttention.apply(q, k, v, key_ok, kind, size, pattern.num_memory, sm_scale, cfg)
