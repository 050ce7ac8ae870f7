"""Metamorphic checks of the blocked backend: batching, padding, NaN isolation, determinism, dropout."""

import pytest
import torch

from gmat.ops import AttentionPattern, gmat_attention

PATTERNS = [
    AttentionPattern(3, "chunked", chunk_size=8),
    AttentionPattern(0, "chunked", chunk_size=8),
    AttentionPattern(2, "window", window=5),
    AttentionPattern(1, "dense"),
]


@pytest.mark.parametrize("pattern", PATTERNS)
def test_batch_invariance(pattern):
    m, seq_len = pattern.num_memory, 37
    lengths = [37, 20, 5]
    q, k, v = (torch.randn(3, 2, m + seq_len, 16) for _ in range(3))
    mask = torch.arange(seq_len)[None, :] < torch.tensor(lengths)[:, None]
    batched = gmat_attention(q, k, v, pattern, mask, backend="blocked")
    for b, n in enumerate(lengths):
        single = gmat_attention(
            q[b : b + 1, :, : m + n], k[b : b + 1, :, : m + n], v[b : b + 1, :, : m + n], pattern, backend="blocked"
        )
        torch.testing.assert_close(batched[b : b + 1, :, : m + n], single, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("pattern", PATTERNS)
def test_appending_padding_changes_nothing_real(pattern):
    m, seq_len, extra = pattern.num_memory, 29, 19
    q, k, v = (torch.randn(2, 2, m + seq_len + extra, 16) for _ in range(3))
    short = gmat_attention(
        q[:, :, : m + seq_len], k[:, :, : m + seq_len], v[:, :, : m + seq_len], pattern, backend="blocked"
    )
    mask = torch.arange(seq_len + extra)[None, :].expand(2, -1) < seq_len
    long = gmat_attention(q, k, v, pattern, mask, backend="blocked")
    torch.testing.assert_close(long[:, :, : m + seq_len], short, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("pattern", PATTERNS)
def test_nan_in_padding_does_not_leak(pattern):
    m, seq_len = pattern.num_memory, 40
    q, k, v = (torch.randn(2, 2, m + seq_len, 16) for _ in range(3))
    mask = torch.ones(2, seq_len, dtype=torch.bool)
    mask[0, 25:] = False
    mask[1, :7] = False
    clean = gmat_attention(q, k, v, pattern, mask, backend="blocked")
    pad_rows = torch.cat([torch.zeros(2, m, dtype=torch.bool), ~mask], dim=1)[:, None, :, None]
    q, k, v = (t.masked_fill(pad_rows, float("nan")) for t in (q, k, v))
    dirty = gmat_attention(q, k, v, pattern, mask, backend="blocked")
    real_rows = ~pad_rows.expand_as(dirty)
    assert torch.isfinite(dirty[real_rows]).all()
    torch.testing.assert_close(dirty[real_rows], clean[real_rows])


def test_deterministic():
    pattern = AttentionPattern(4, "window", window=6)
    q, k, v = (torch.randn(2, 2, 4 + 50, 16, requires_grad=True) for _ in range(3))
    mask = torch.rand(2, 50) > 0.2
    outs = []
    for _ in range(2):
        out = gmat_attention(q, k, v, pattern, mask, backend="blocked")
        outs.append((out, *torch.autograd.grad(out.square().sum(), (q, k, v))))
    for a, b in zip(*outs):
        assert torch.equal(a, b)


def test_dropout_is_on_probabilities_and_unbiased():
    pattern = AttentionPattern(2, "chunked", chunk_size=4)
    q, k, v = (torch.randn(1, 1, 2 + 8, 8) for _ in range(3))
    plain = gmat_attention(q, k, v, pattern, backend="blocked")
    torch.manual_seed(1)
    first = gmat_attention(q, k, v, pattern, backend="blocked", dropout_p=0.3)
    torch.manual_seed(1)
    again = gmat_attention(q, k, v, pattern, backend="blocked", dropout_p=0.3)
    assert torch.equal(first, again)
    assert not torch.allclose(first, plain)
    samples = 4000  # independent dropout draws as batch entries of one call
    many = [t.expand(samples, -1, -1, -1) for t in (q, k, v)]
    mean = gmat_attention(*many, pattern, backend="blocked", dropout_p=0.3).mean(0, keepdim=True)
    torch.testing.assert_close(mean, plain, atol=0.06, rtol=0)


@pytest.mark.parametrize(
    "pattern", [AttentionPattern(4, "chunked", chunk_size=16), AttentionPattern(4, "window", window=8)]
)
def test_blocked_traces_without_graph_breaks(pattern):
    q, k, v = (torch.randn(2, 2, 4 + 100, 16) for _ in range(3))
    mask = torch.rand(2, 100) > 0.2
    explanation = torch._dynamo.explain(lambda a, b, c, m: gmat_attention(a, b, c, pattern, m, backend="blocked"))(
        q, k, v, mask
    )
    assert explanation.graph_break_count == 0, explanation.break_reasons


@pytest.mark.parametrize(
    "pattern", [AttentionPattern(2, "chunked", chunk_size=4), AttentionPattern(2, "window", window=3)]
)
def test_dropout_gradients_match_finite_differences(pattern):
    """With the dropout draw fixed by a seed, attention is a smooth function: gradcheck it in float64."""
    q, k, v = (torch.randn(1, 2, 2 + 11, 4, dtype=torch.float64, requires_grad=True) for _ in range(3))
    mask = torch.tensor([[True] * 9 + [False] * 2])

    def fixed_draw(a, b, c):
        with torch.random.fork_rng():
            torch.manual_seed(7)
            return gmat_attention(a, b, c, pattern, mask, backend="blocked", dropout_p=0.4)

    assert torch.autograd.gradcheck(fixed_draw, (q, k, v))
