"""Every backend against the reference oracle: forward and gradients over awkward shapes."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

import gmat.ops.blocked as blocked
from gmat.ops import AttentionPattern, get_backend, gmat_attention, not_supported_reasons
from gmat.ops.reference import reference_attention
from tolerances import LOWP_BACKWARD_FACTOR, assert_close_to_oracle

# (B, H, L, M, D): L = 1, prime, not a multiple of C or 128, M in {0, 1, 7}, D in {16, 40, 64}
SHAPES = [(1, 1, 1, 0, 16), (2, 2, 17, 1, 16), (2, 3, 97, 7, 40), (1, 2, 131, 0, 64), (3, 1, 128, 7, 64)]
PATTERN_SPECS = [
    ("chunked", 8),
    ("chunked", 32),
    ("chunked", 200),
    ("window", 0),
    ("window", 3),
    ("window", 40),
    ("dense", None),
]
PADDINGS = ["none", "random", "one_fully_padded"]
LOWP_SHAPES = [(2, 3, 97, 7, 40), (1, 2, 131, 0, 64)]
LOWP_SPECS = [("chunked", 32), ("window", 20), ("dense", None)]
BACKENDS = [
    ("blocked", "cpu", ()),
    ("flex", "cpu", (pytest.mark.slow,)),
    ("blocked", "cuda", (pytest.mark.gpu,)),
    ("flex", "cuda", (pytest.mark.gpu,)),
]


def make_pattern(num_memory: int, kind: str, size: int | None) -> AttentionPattern:
    kwargs = {"chunked": {"chunk_size": size}, "window": {"window": size}, "dense": {}}[kind]
    return AttentionPattern(num_memory, kind, **kwargs)


def make_mask(padding: str, bsz: int, seq_len: int, device: str) -> torch.Tensor | None:
    if padding == "none":
        return None
    mask = torch.rand(bsz, seq_len) > 0.3
    if padding == "one_fully_padded":
        mask[0] = False
    return mask.to(device)


def cases(shapes, specs, dtypes, grad: bool):
    """Parameters kept only where the backend declares support (filtered, never skipped in the body)."""
    params = []
    for backend, device, marks in BACKENDS:
        for dtype in dtypes:
            for shape in shapes:
                bsz, heads, seq_len, num_memory, dim = shape
                for kind, size in specs:
                    pattern = make_pattern(num_memory, kind, size)
                    fake_q = SimpleNamespace(
                        device=torch.device(device), dtype=dtype, shape=(bsz, heads, num_memory + seq_len, dim)
                    )
                    if not_supported_reasons(get_backend(backend), fake_q, pattern, requires_grad=grad):
                        continue
                    params.append(
                        pytest.param(
                            backend,
                            device,
                            dtype,
                            shape,
                            pattern,
                            marks=marks,
                            id=f"{backend}-{device}-{str(dtype)[6:]}-{shape}-{kind}{size}",
                        )
                    )
    return params


def run(backend, q, k, v, pattern, mask, grad_out=None):
    out = gmat_attention(q, k, v, pattern, mask, backend=backend)
    if grad_out is None:
        return out, None
    return out, torch.autograd.grad(out, (q, k, v), grad_out)


def inputs(shape, device, dtype, requires_grad):
    bsz, heads, seq_len, num_memory, dim = shape
    return [
        torch.randn(bsz, heads, num_memory + seq_len, dim, device=device, dtype=torch.float64)
        .to(dtype)
        .requires_grad_(requires_grad)
        for _ in range(3)
    ]


@pytest.mark.parametrize(
    ("backend", "device", "dtype", "shape", "pattern"), cases(SHAPES, PATTERN_SPECS, [torch.float32], grad=True)
)
@pytest.mark.parametrize("padding", PADDINGS)
def test_forward_and_gradients_fp32(backend, device, dtype, shape, pattern, padding):
    q, k, v = inputs(shape, device, dtype, requires_grad=True)
    mask = make_mask(padding, shape[0], shape[2], device)
    grad_out = torch.randn_like(q)
    out, grads = run(backend, q, k, v, pattern, mask, grad_out)
    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    ref, ref_grads = run("reference", q64, k64, v64, pattern, mask, grad_out.double())
    assert_close_to_oracle(out, ref, None, backend)
    for name, g, g_ref in zip("qkv", grads, ref_grads):
        assert_close_to_oracle(g, g_ref, None, backend, what=f"d{name}")


@pytest.mark.parametrize(
    ("backend", "device", "dtype", "shape", "pattern"), cases(SHAPES, PATTERN_SPECS, [torch.float32], grad=False)
)
@pytest.mark.parametrize("padding", ["random"])
def test_forward_only_fp32(backend, device, dtype, shape, pattern, padding):
    q, k, v = inputs(shape, device, dtype, requires_grad=False)
    mask = make_mask(padding, shape[0], shape[2], device)
    with torch.no_grad():
        out = gmat_attention(q, k, v, pattern, mask, backend=backend)
        ref = reference_attention(q.double(), k.double(), v.double(), pattern, mask)
    assert_close_to_oracle(out, ref, None, backend)


@pytest.mark.parametrize(
    ("backend", "device", "dtype", "shape", "pattern"),
    cases(LOWP_SHAPES, LOWP_SPECS, [torch.bfloat16, torch.float16], grad=True),
)
def test_low_precision_flash_attention_rule(backend, device, dtype, shape, pattern):
    q, k, v = inputs(shape, device, dtype, requires_grad=True)
    mask = make_mask("random", shape[0], shape[2], device)
    grad_out = torch.randn_like(q)
    out, grads = run(backend, q, k, v, pattern, mask, grad_out)
    lowp_ref, lowp_grads = run("reference", q, k, v, pattern, mask, grad_out)
    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    truth, truth_grads = run("reference", q64, k64, v64, pattern, mask, grad_out.double())
    assert_close_to_oracle(out, truth, lowp_ref, backend)
    for name, g, g_low, g_true in zip("qkv", grads, lowp_grads, truth_grads):
        assert_close_to_oracle(g, g_true, g_low, backend, factor=LOWP_BACKWARD_FACTOR, what=f"d{name}")


@pytest.mark.parametrize("pattern", [make_pattern(2, "chunked", 4), make_pattern(0, "window", 2)])
def test_blocked_gradcheck_float64(pattern):
    q, k, v = (torch.randn(1, 1, pattern.num_memory + 7, 3, dtype=torch.float64, requires_grad=True) for _ in range(3))
    mask = torch.tensor([[True] * 6 + [False]])
    assert torch.autograd.gradcheck(
        lambda a, b, c: gmat_attention(a, b, c, pattern, mask, backend="blocked"), (q, k, v)
    )


# On CPU, `blocked` sends chunks with memory and no dropout through the log-sum-exp merge of three flash-kernel
# calls; the tests above therefore exercise that route. Everything else, and CUDA, takes the route below.
SDPA_ROUTE_CASES = [
    (shape, make_pattern(shape[3], "chunked", size)) for shape in SHAPES if shape[3] > 0 for size in (8, 200)
]


@pytest.mark.parametrize(("shape", "pattern"), SDPA_ROUTE_CASES, ids=str)
@pytest.mark.parametrize("padding", PADDINGS)
def test_blocked_sdpa_route_matches_reference(monkeypatch, shape, pattern, padding):
    """The batched-SDPA route (CUDA's) stays exact for chunks with memory when forced on CPU."""
    monkeypatch.setattr(blocked, "_merges_on_cpu", lambda *args: False)
    test_forward_and_gradients_fp32("blocked", "cpu", torch.float32, shape, pattern, padding)


def test_cpu_chunks_and_windows_take_the_flash_routes(monkeypatch):
    calls = []
    for route in (blocked._ChunkedFlashCPU, blocked._WindowFlashCPU):
        monkeypatch.setattr(route, "apply", lambda *a, f=route.apply, r=route: calls.append(r.__name__) or f(*a))
    q, k, v = inputs((1, 2, 40, 3, 16), "cpu", torch.float32, requires_grad=False)
    gmat_attention(q, k, v, make_pattern(3, "chunked", 16), backend="blocked")
    gmat_attention(q, k, v, make_pattern(3, "chunked", 16), backend="blocked", dropout_p=0.1)
    gmat_attention(q, k, v, make_pattern(3, "window", 4), backend="blocked")
    gmat_attention(q, k, v, make_pattern(3, "window", 4), backend="blocked", dropout_p=0.1)
    gmat_attention(q, k, v, make_pattern(0, "window", 4), backend="blocked")
    gmat_attention(q, k, v, make_pattern(3, "dense", None), backend="blocked")
    assert calls == ["_ChunkedFlashCPU", "_WindowFlashCPU", "_WindowFlashCPU"]


GROUP_CASES = [
    (shape, make_pattern(shape[3], kind, size))
    for shape in SHAPES
    for kind, size in (("chunked", 8), ("chunked", 32), ("window", 0), ("window", 3), ("window", 40))
]


@pytest.mark.parametrize(("shape", "pattern"), GROUP_CASES, ids=str)
@pytest.mark.parametrize("padding", PADDINGS)
def test_cpu_flash_route_in_small_groups_matches_reference(monkeypatch, shape, pattern, padding):
    """The CPU flash routes walk rows and keys a group at a time at long L; force tiny groups here."""
    monkeypatch.setattr(blocked, "_GROUP_ELEMENTS", 1)  # one chunk or row (and one memory-row key) per call
    test_forward_and_gradients_fp32("blocked", "cpu", torch.float32, shape, pattern, padding)


class _LargestTensor(torch.utils._python_dispatch.TorchDispatchMode):
    """Records the largest tensor any aten op returns while active."""

    def __init__(self) -> None:
        super().__init__()
        self.numel = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.numel = max(self.numel, t.numel())
        return out


@pytest.mark.parametrize("sdpa_route", [False, True])
@pytest.mark.parametrize(
    "pattern",
    [
        make_pattern(3, "chunked", 10**5),
        make_pattern(3, "chunked", 10**6),
        make_pattern(0, "chunked", 10**6),
        make_pattern(3, "window", 10**5),
        make_pattern(0, "window", 10**5),
    ],
    ids=str,
)
def test_chunk_or_window_wider_than_the_sequence_costs_what_the_sequence_costs(monkeypatch, pattern, sdpa_route):
    """L = 10 with C or w up to 1e6: no tensor larger than the sequence needs, and the reference's result."""
    if sdpa_route:
        monkeypatch.setattr(blocked, "_merges_on_cpu", lambda *args: False)
    shape = (2, 2, 10, pattern.num_memory, 8)
    q, k, v = inputs(shape, "cpu", torch.float32, requires_grad=True)
    mask = make_mask("random", 2, 10, "cpu")
    grad_out = torch.randn_like(q)
    with _LargestTensor() as largest:
        got = run("blocked", q, k, v, pattern, mask, grad_out)
    n = pattern.num_memory + 10
    assert largest.numel <= 2 * 2 * max(n, 64) * max(n, 64) * 8, largest.numel  # O((M+L)^2), not O(C) or O(w)
    want = run("reference", q, k, v, pattern, mask, grad_out)
    for name, a, b in zip(("out", "dq", "dk", "dv"), (got[0], *got[1]), (want[0], *want[1])):
        assert_close_to_oracle(a, b, None, "blocked", what=name)
