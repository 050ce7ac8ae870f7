"""The oracle itself: checked against an independent per-query loop, plain SDPA and gradcheck."""

import math

import pytest
import torch
import torch.nn.functional as F

from gmat.ops import AttentionPattern
from gmat.ops.reference import reference_attention


def loop_attention(q, k, v, num_memory, kind, size, attention_mask):
    """Per-query loop written from DESIGN.md §1 without using AttentionPattern."""
    bsz, heads, n, dim = q.shape
    seq_len = n - num_memory
    out = torch.zeros_like(q)
    for b in range(bsz):
        valid = [True] * num_memory + [
            bool(attention_mask[b, j]) if attention_mask is not None else True for j in range(seq_len)
        ]
        for t in range(n):
            if not valid[t]:  # a padded query row outputs zeros
                continue
            keys = []
            for s in range(n):
                if not valid[s]:
                    continue
                if t < num_memory or s < num_memory:
                    keys.append(s)
                    continue
                i, j = t - num_memory, s - num_memory
                if (
                    kind == "dense"
                    or (kind == "chunked" and i // size == j // size)
                    or (kind == "window" and abs(i - j) <= size)
                ):
                    keys.append(s)
            if not keys:
                continue
            for h in range(heads):
                scores = torch.stack([q[b, h, t] @ k[b, h, s] for s in keys]) / math.sqrt(dim)
                probs = torch.softmax(scores, dim=0)
                out[b, h, t] = sum(p * v[b, h, s] for p, s in zip(probs, keys))
    return out


CASES = [
    (2, "chunked", 3, 7),
    (0, "chunked", 4, 9),
    (1, "window", 2, 6),
    (0, "window", 0, 5),
    (3, "dense", None, 4),
]


@pytest.mark.parametrize(("num_memory", "kind", "size", "seq_len"), CASES)
@pytest.mark.parametrize("padded", [False, True])
def test_reference_matches_per_query_loop(num_memory, kind, size, seq_len, padded):
    kwargs = {"chunked": {"chunk_size": size}, "window": {"window": size}, "dense": {}}[kind]
    pattern = AttentionPattern(num_memory, kind, **kwargs)
    q, k, v = (torch.randn(2, 2, num_memory + seq_len, 8, dtype=torch.float64) for _ in range(3))
    mask = None
    if padded:
        mask = torch.rand(2, seq_len) > 0.4
        mask[1] = False  # a fully padded example
    expected = loop_attention(q, k, v, num_memory, kind, size, mask)
    got = reference_attention(q, k, v, pattern, mask)
    torch.testing.assert_close(got, expected, atol=1e-12, rtol=1e-12)


def test_one_chunk_without_memory_is_plain_sdpa():
    q, k, v = (torch.randn(2, 3, 10, 16) for _ in range(3))
    for pattern in (
        AttentionPattern(0, "chunked", chunk_size=10),
        AttentionPattern(0, "window", window=9),
        AttentionPattern(0, "dense"),
    ):
        torch.testing.assert_close(
            reference_attention(q, k, v, pattern), F.scaled_dot_product_attention(q, k, v), atol=1e-5, rtol=1e-5
        )


def test_row_without_keys_is_zero_not_nan():
    pattern = AttentionPattern(0, "chunked", chunk_size=2)
    q, k, v = (torch.randn(1, 1, 4, 8, requires_grad=True) for _ in range(3))
    mask = torch.tensor([[False, False, True, True]])
    out = reference_attention(q, k, v, pattern, mask)
    assert torch.equal(out[0, 0, :2], torch.zeros(2, 8))
    out.sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in (q, k, v))


@pytest.mark.parametrize(
    "pattern",
    [
        AttentionPattern(2, "chunked", chunk_size=3),
        AttentionPattern(1, "window", window=1),
        AttentionPattern(0, "window", window=2),
    ],
)
def test_reference_gradcheck(pattern):
    seq_len = 5
    q, k, v = (
        torch.randn(1, 2, pattern.num_memory + seq_len, 4, dtype=torch.float64, requires_grad=True) for _ in range(3)
    )
    mask = torch.tensor([[True, True, False, True, True]])
    assert torch.autograd.gradcheck(lambda a, b, c: reference_attention(a, b, c, pattern, mask), (q, k, v))
