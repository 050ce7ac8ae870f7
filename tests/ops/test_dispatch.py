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


def test_auto_check_passes_a_backend_over_but_naming_it_still_runs(monkeypatch):
    from gmat.ops import dispatch

    calls = []

    def fast(q, k, v, *args):
        calls.append(q.shape[2])
        return torch.zeros_like(q)

    backend = dispatch.Backend(
        name="fast_for_long",
        fn=fast,
        devices=frozenset({"cpu"}),
        dtypes=frozenset({torch.float32}),
        backward_devices=frozenset({"cpu"}),
        supports_dropout=False,
        priority=0,
        auto_check=lambda q, pattern: ["too short"] if q.shape[2] < 12 else [],
    )
    monkeypatch.setitem(dispatch._REGISTRY, backend.name, backend)
    q, k, v = qkv(n=10)
    assert select_backend(q, P).name == "blocked"
    gmat_attention(q, k, v, P, backend="fast_for_long")  # named: the auto rule does not apply
    long_q, long_k, long_v = qkv(n=12)
    assert select_backend(long_q, P).name == "fast_for_long"
    gmat_attention(long_q, long_k, long_v, P)
    assert calls == [10, 12]


def test_triton_auto_rule_follows_the_measured_crossover():
    from gmat.ops.dispatch import TRITON_CHUNKED_MIN_ROWS, _triton_auto

    triton = get_backend("triton")
    assert triton.priority is not None and triton.priority < get_backend("blocked").priority
    assert triton.auto_check is _triton_auto
    window, chunked = AttentionPattern(64, "window", window=256), AttentionPattern(64, "chunked", chunk_size=512)
    small = torch.empty(1, 12, 64 + 16384, 64, device="meta")  # the model step at 16k: blocked measured faster
    large = torch.empty(1, 16, 64 + 65536, 64, device="meta")  # the op at 64k: triton measured faster
    assert _triton_auto(small, window) == []
    assert "prefers blocked" in _triton_auto(small, chunked)[0]
    assert _triton_auto(large, chunked) == []
    assert "dense pattern" in _triton_auto(large, AttentionPattern(64, "dense"))[0]
    many = torch.empty(1, 16, 256 + 65536, 64, device="meta")  # M = 256 at 64k: blocked measured faster
    assert "M > 128" in _triton_auto(many, AttentionPattern(256, "chunked", chunk_size=512))[0]
    assert _triton_auto(many, AttentionPattern(256, "window", window=256)) == []
    assert 16 * 16384 < TRITON_CHUNKED_MIN_ROWS <= 16 * 65536


def test_triton_auto_rule_stays_out_of_compiled_and_exported_graphs(monkeypatch):
    from gmat.ops.dispatch import _triton_auto

    large = torch.empty(1, 16, 64 + 65536, 64, device="meta")
    window = AttentionPattern(64, "window", window=256)
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert "torch.compile" in _triton_auto(large, window)[0]


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
