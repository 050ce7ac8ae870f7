"""Hypothesis fuzz: blocked == reference (float64) over random shapes, patterns and padding."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gmat.ops import AttentionPattern, gmat_attention


@st.composite
def problems(draw):
    bsz = draw(st.integers(1, 3))
    heads = draw(st.integers(1, 3))
    seq_len = draw(st.integers(1, 70))
    num_memory = draw(st.integers(0, 9))
    dim = draw(st.sampled_from([1, 3, 8, 16]))
    kind = draw(st.sampled_from(["chunked", "window", "dense"]))
    if kind == "chunked":
        pattern = AttentionPattern(num_memory, kind, chunk_size=draw(st.integers(1, 80)))
    elif kind == "window":
        pattern = AttentionPattern(num_memory, kind, window=draw(st.integers(0, 80)))
    else:
        pattern = AttentionPattern(num_memory, kind)
    padded = draw(st.booleans())
    seed = draw(st.integers(0, 2**16))
    return bsz, heads, seq_len, dim, pattern, padded, seed


@settings(max_examples=40, deadline=None)
@given(problems())
def test_blocked_matches_reference(problem):
    bsz, heads, seq_len, dim, pattern, padded, seed = problem
    gen = torch.Generator().manual_seed(seed)
    n = pattern.num_memory + seq_len
    q, k, v = (
        torch.randn(bsz, heads, n, dim, generator=gen, dtype=torch.float64, requires_grad=True) for _ in range(3)
    )
    mask = torch.rand(bsz, seq_len, generator=gen) > 0.3 if padded else None
    grad_out = torch.randn(bsz, heads, n, dim, generator=gen, dtype=torch.float64)
    outs = []
    for backend in ("reference", "blocked"):
        out = gmat_attention(q, k, v, pattern, mask, backend=backend)
        outs.append((out, *torch.autograd.grad(out, (q, k, v), grad_out)))
    for got, expected in zip(outs[1], outs[0]):
        torch.testing.assert_close(got, expected, atol=1e-10, rtol=1e-10)
