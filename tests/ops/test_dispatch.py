"""Backend selection, refusals with reasons, and bad inputs raising ValueError naming the argument."""

import pytest
import torch

from gmat.ops import AttentionPattern, get_backend, gmat_attention, list_backends, select_backend

P = AttentionPattern(2, "chunked", chunk_size=4)


def qkv(n=10, shape=None, **kw):
    shape = shape or (1, 2, n, 16)
    return [torch.randn(*shape, **kw) for _ in range(3)]


def test_registered_backends():
    assert {"reference", "blocked", "flex"} <= set(list_backends())


def test_auto_picks_blocked_on_cpu():
    q, _, _ = qkv()
    assert select_backend(q, P).name == "blocked"


def test_named_backend_that_cannot_run_raises_with_reasons():
    q, k, v = qkv(requires_grad=True)
    with pytest.raises(ValueError, match="flex: no backward pass on 'cpu'"):
        gmat_attention(q, k, v, P, backend="flex")
    with pytest.raises(ValueError, match="dropout"):
        with torch.no_grad():
            gmat_attention(q, k, v, P, backend="flex", dropout_p=0.1)
    with pytest.raises(ValueError, match="exceeds its limit"):
        big = torch.empty(1, 1, 20000, 8)
        gmat_attention(big, big, big, P, backend="reference")


def test_unknown_backend():
    q, k, v = qkv()
    with pytest.raises(ValueError, match="backend must be 'auto' or one of"):
        gmat_attention(q, k, v, P, backend="fast")
    with pytest.raises(ValueError, match="unknown"):
        get_backend("unknown")


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: (*qkv(shape=(2, 10, 16)), P, None), "rank 3"),
        (
            lambda: (torch.randn(1, 2, 10, 16), torch.randn(1, 2, 9, 16), torch.randn(1, 2, 10, 16), P, None),
            "same shape",
        ),
        (lambda: (*qkv(), P, torch.ones(1, 9, dtype=torch.bool)), r"shape \(B, L\) = \(1, 8\)"),
        (lambda: (*qkv(), P, torch.ones(1, 8)), "bool tensor"),
        (lambda: (*qkv(), P, torch.ones(2, 8, dtype=torch.bool)), "attention_mask must have shape"),
        (lambda: (*qkv(n=2), P, None), "num_memory=2"),
        (lambda: (*qkv(n=1), P, None), "num_memory=2"),
        (lambda: (*qkv(), "chunked", None), "pattern must be an AttentionPattern"),
        (lambda: (*qkv(dtype=torch.float16)[:2], torch.randn(1, 2, 10, 16), P, None), "share a dtype"),
        (lambda: (*[torch.ones(1, 2, 10, 16, dtype=torch.long)] * 3, P, None), "floating"),
    ],
)
def test_bad_inputs_raise_value_error(make, match):
    q, k, v, pattern, mask = make()
    with pytest.raises(ValueError, match=match):
        gmat_attention(q, k, v, pattern, mask)


@pytest.mark.parametrize(
    ("kw", "match"), [({"dropout_p": 1.0}, "dropout_p"), ({"dropout_p": -0.1}, "dropout_p"), ({"scale": 0.0}, "scale")]
)
def test_bad_scalars(kw, match):
    q, k, v = qkv()
    with pytest.raises(ValueError, match=match):
        gmat_attention(q, k, v, P, **kw)
