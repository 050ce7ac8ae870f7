"""Faults at the attention op: NaN/Inf in padded rows reach nothing; in real rows, only what the pattern allows.

Every case runs the ``reference`` oracle and the ``blocked`` backend (both of its CPU routes) on awkward shapes
(L = 1 and odd L longer than a window block, M in {0, 1, 7}), forward and backward, in float64.
"""

from __future__ import annotations

import math

import pytest
import torch

import gmat.ops.blocked as blocked
from gmat.ops import AttentionPattern, gmat_attention

# (B, H, L, M, D)
SHAPES = [(1, 1, 1, 0, 4), (2, 2, 45, 0, 8), (2, 1, 45, 1, 8), (1, 2, 71, 7, 4)]
PATTERNS = [("chunked", 8), ("chunked", 100), ("window", 3), ("window", 20), ("dense", None)]
BACKENDS = ["reference", "blocked", "blocked_sdpa_route"]


def _pattern(num_memory: int, kind: str, size: int | None) -> AttentionPattern:
    kwargs = {"chunked": {"chunk_size": size}, "window": {"window": size}, "dense": {}}[kind]
    return AttentionPattern(num_memory, kind, **kwargs)


def _run(backend: str, monkeypatch, q, k, v, pattern, mask, grad_out):  # noqa: ANN001, ANN202
    if backend == "blocked_sdpa_route":  # the batched-SDPA route (CUDA's, and dropout's) forced on CPU
        monkeypatch.setattr(blocked, "_merges_on_cpu", lambda *args: False)
        backend = "blocked"
    leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    out = gmat_attention(*leaves, pattern, mask, backend=backend)
    grads = torch.autograd.grad(out, leaves, grad_out)
    monkeypatch.undo()
    return out.detach(), grads


def _inputs(shape, seed: int = 0):  # noqa: ANN001, ANN202
    bsz, heads, seq_len, num_memory, dim = shape
    gen = torch.Generator().manual_seed(seed)
    n = num_memory + seq_len
    q, k, v, grad_out = (torch.randn(bsz, heads, n, dim, generator=gen, dtype=torch.float64) for _ in range(4))
    return q, k, v, grad_out


CASES = [
    pytest.param(shape, _pattern(shape[3], kind, size), id=f"{shape}-{kind}{size}")
    for shape in SHAPES
    for kind, size in PATTERNS
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("shape", "pattern"), CASES)
@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_padded_rows_reach_nothing(backend, shape, pattern, bad, monkeypatch):
    """NaN/Inf in padded query, key and value rows: outputs and every gradient stay those of clean inputs.

    The padded rows also receive a non-zero output gradient: it must not flow anywhere either.
    """
    bsz, _, seq_len, m, _ = shape
    q, k, v, grad_out = _inputs(shape)
    mask = torch.rand(bsz, seq_len, generator=torch.Generator().manual_seed(1)) > 0.4
    mask[0, 0] = True  # at least one real token
    if seq_len > 1:
        mask[-1, -1] = False  # at least one padded token
    padded = ~torch.cat([torch.ones(bsz, m, dtype=torch.bool), mask], dim=1)[:, None, :, None]
    clean = _run(
        backend,
        monkeypatch,
        q.masked_fill(padded, 0),
        k.masked_fill(padded, 0),
        v.masked_fill(padded, 0),
        pattern,
        mask,
        grad_out.masked_fill(padded, 0),
    )
    dirty = _run(
        backend,
        monkeypatch,
        q.masked_fill(padded, bad),
        k.masked_fill(padded, bad),
        v.masked_fill(padded, bad),
        pattern,
        mask,
        grad_out,
    )
    for name, want, got in zip(("out", "dq", "dk", "dv"), (clean[0], *clean[1]), (dirty[0], *dirty[1])):
        assert torch.isfinite(got).all(), f"{name}: non-finite values"
        torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-10, msg=lambda s, n=name: f"{n}: {s}")
    assert not dirty[0].masked_select(padded).any(), "padded query rows must output zeros"
    for name, grad in zip(("dq", "dk", "dv"), dirty[1]):
        assert not grad.masked_select(padded).any(), f"{name}: padded rows must get no gradient"
    if backend != "reference":  # and the clean run is the oracle's
        oracle = _run("reference", monkeypatch, q, k, v, pattern, mask, grad_out)
        for want, got in zip((oracle[0], *oracle[1]), (dirty[0], *dirty[1])):
            torch.testing.assert_close(got, want, atol=1e-10, rtol=1e-10)


def _allowed(pattern: AttentionPattern, seq_len: int, mask: torch.Tensor) -> torch.Tensor:
    """``(B, M+L, M+L)`` bool: query row t may see key s (the rule), padded rows and keys excluded."""
    valid = pattern.key_valid(mask)  # (B, M+L)
    return pattern.to_dense(seq_len, mask)[:, 0] & valid[:, :, None]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("shape", "pattern"), CASES)
@pytest.mark.parametrize("where", ["query", "key", "value"])
def test_nan_spreads_only_as_far_as_the_pattern_allows(backend, shape, pattern, where, monkeypatch):
    """One NaN at a real position: the NaN output rows are exactly the rows the pattern lets see it.

    Gradients: a NaN may reach dQ of those rows and dK/dV of the keys those rows see, nothing else; outside
    that reach every gradient is finite and equal to the reference's.
    """
    bsz, heads, seq_len, m, _ = shape
    q, k, v, grad_out = _inputs(shape, seed=2)
    mask = torch.ones(bsz, seq_len, dtype=torch.bool)
    if bsz > 1:
        mask[-1, seq_len // 3 :] = False  # the last example padded from a third on
    elif seq_len > 2:
        mask[0, -1] = False  # one padded token after the NaN
    position = m + seq_len // 2  # a real sequence row of example 0 (its middle)
    x = {"query": q, "key": k, "value": v}[where]
    x[0, heads - 1, position, 0] = math.nan

    out, grads = _run(backend, monkeypatch, q, k, v, pattern, mask, grad_out)
    allowed = _allowed(pattern, seq_len, mask)[0]  # (M+L, M+L) of example 0
    poisoned = torch.zeros(bsz, heads, m + seq_len, dtype=torch.bool)  # rows that see the NaN
    if where == "query":
        poisoned[0, heads - 1, position] = True
    else:
        poisoned[0, heads - 1] = allowed[:, position]
    nan_rows = out.isnan().any(dim=-1)  # (B, H, M+L)
    assert torch.equal(nan_rows, poisoned), (
        f"NaN rows {nan_rows.nonzero().tolist()} != rows allowed to see it {poisoned.nonzero().tolist()}"
    )
    assert torch.isfinite(out[~poisoned]).all()

    oracle_out, oracle_grads = _run("reference", monkeypatch, q, k, v, pattern, mask, grad_out)
    torch.testing.assert_close(out[~poisoned], oracle_out[~poisoned], atol=1e-10, rtol=1e-10)
    seen = torch.zeros_like(poisoned)  # keys seen by a poisoned row
    seen[0, heads - 1] = allowed[poisoned[0, heads - 1]].any(dim=0)
    for name, got, want, reach in zip(("dq", "dk", "dv"), grads, oracle_grads, (poisoned, seen, seen)):
        assert torch.isfinite(got[~reach]).all(), f"{name}: NaN outside the rows the pattern lets it reach"
        torch.testing.assert_close(got[~reach], want[~reach], atol=1e-10, rtol=1e-10, msg=lambda s, n=name: f"{n}: {s}")
