"""The ``triton`` backend against the reference oracle, forward and gradients.

Without CUDA the kernels run on CPU under Triton's interpreter, which needs ``TRITON_INTERPRET=1`` set
before anything imports ``triton`` (``transformers`` does, so before ``import gmat``). This module sets it
when CUDA is absent, which is early enough when it runs alone; in a full run the same line must sit at
the top of ``tests/conftest.py``, otherwise the interpreter cases skip with that reason. On a CUDA machine
the env var is left alone, so the same checks run compiled under ``-m gpu``; run the interpreter cases
there with ``TRITON_INTERPRET=1 pytest -m slow tests/ops/test_triton.py``.

Tiers: a two-case interpreter smoke test runs by default; the interpreter matrix is ``slow`` (the
interpreter executes every tile op in numpy); the CUDA matrix is ``gpu``.
"""

import dataclasses
import os
import re
from types import SimpleNamespace
from unittest import mock

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

triton = pytest.importorskip("triton")

from gmat.ops import AttentionPattern, get_backend, gmat_attention, not_supported_reasons  # noqa: E402
from gmat.ops import triton_kernels as tk  # noqa: E402
from gmat.ops.dispatch import _TRITON_HEAD_DIMS  # noqa: E402
from gmat.ops.reference import reference_attention  # noqa: E402
from tolerances import LOWP_BACKWARD_FACTOR, LOWP_FORWARD_FACTOR, TOLERANCES, assert_close_to_oracle  # noqa: E402

# fp32 runs only under the interpreter here (numpy matmuls, no TF32); this default applies until
# tests/tolerances.py gets a ("triton", device, torch.float32) entry.
FP32_DEFAULT = (2e-5, 1e-4)

# Triton's CPU interpreter runs these kernels from triton 3.9 on (verified); under triton 3.6 it fails on
# ``range(lo, hi, BLOCK_N)`` with tensor bounds. 3.7 and 3.8 are untested, so they skip as well (pyproject.toml).
INTERPRETER_MIN_TRITON = (3, 9)


def interpreter_skip_reason(version: str, usable: bool) -> str | None:
    """Why the interpreter cases cannot run with triton ``version`` (None when they can)."""
    parsed = tuple(int(x) for x in re.findall(r"\d+", version)[:2])
    if parsed < INTERPRETER_MIN_TRITON:
        need = ".".join(map(str, INTERPRETER_MIN_TRITON))
        return (
            f"triton {version}: its interpreter fails on range(lo, hi, BLOCK_N) over tensor bounds; "
            f"the interpreter cases need triton >= {need}"
        )
    if not usable:
        return "needs TRITON_INTERPRET=1 set before triton is first imported (top of tests/conftest.py)"
    return None


_INTERPRETER_SKIP = interpreter_skip_reason(triton.__version__, tk.interpreter_usable())
INTERPRETER = pytest.mark.skipif(_INTERPRETER_SKIP is not None, reason=_INTERPRETER_SKIP or "")
CUDA = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        not torch.cuda.is_available() or tk.INTERPRET, reason="needs CUDA with compiled (not interpreted) kernels"
    ),
]

# Blocks small enough that the tiny shapes cross several query/key tiles and splits.
CFG_16 = tk.default_config(32, torch.device("cpu"))
# Query blocks wider than the key tiles and than a chunk (C=16): a block spans two chunks.
CFG_32_16 = dataclasses.replace(CFG_16, block_m=32, dq_block_m=32, kv_block_n=32, split_programs=3)


def _cuda_config(head_dim: int) -> tk.TritonConfig:
    """``default_config`` for an H200 (132 SMs), built without a GPU: its tiles run under the interpreter."""
    with mock.patch.object(
        torch.cuda, "get_device_properties", return_value=SimpleNamespace(multi_processor_count=132)
    ):
        return tk.default_config(head_dim, torch.device("cuda"))


def _chunk(m: int, c: int) -> AttentionPattern:
    return AttentionPattern(num_memory=m, kind="chunked", chunk_size=c)


def _window(m: int, w: int) -> AttentionPattern:
    return AttentionPattern(num_memory=m, kind="window", window=w)


def _dense(m: int) -> AttentionPattern:
    return AttentionPattern(num_memory=m, kind="dense")


# (B, H, L, D, pattern, padding, dtype, config); padding: None | "half" (example 0 loses its second half) |
# "full" (example 1 is all padding: with M = 0 its rows have no key at all).
SMOKE_CASES = [
    (1, 1, 37, 32, _chunk(3, 16), "half", torch.float32, CFG_16),
    (2, 1, 40, 32, _window(0, 8), "full", torch.float32, CFG_16),
]
INTERPRETER_CASES = [
    (1, 2, 64, 32, _chunk(0, 16), None, torch.float32, CFG_16),
    (2, 1, 100, 32, _chunk(3, 32), "full", torch.float32, CFG_16),
    (1, 1, 100, 32, _chunk(3, 16), "half", torch.float32, CFG_32_16),
    (2, 1, 37, 64, _window(3, 8), "half", torch.float32, CFG_16),
    (1, 2, 64, 32, _window(0, 8), None, torch.float32, CFG_32_16),
    (1, 1, 37, 32, _window(3, 0), "half", torch.float32, CFG_16),
    (2, 1, 37, 32, _dense(3), "full", torch.float32, CFG_16),
    (1, 1, 100, 32, _chunk(20, 32), "half", torch.float32, CFG_16),
    (1, 1, 20, 32, _chunk(70, 8), "half", torch.float32, CFG_16),  # two memory tiles, M > L
    (1, 1, 1, 32, _window(2, 3), None, torch.float32, CFG_16),  # L = 1
    (1, 2, 64, 64, _chunk(3, 32), "half", torch.bfloat16, CFG_16),
    (2, 1, 100, 32, _window(3, 8), "full", torch.bfloat16, CFG_16),
    (1, 1, 37, 64, _window(0, 8), "half", torch.float16, CFG_16),
    (2, 1, 64, 32, _chunk(0, 16), "full", torch.float16, CFG_32_16),
]
# The CUDA tiles themselves (64..128 rows, 32-key dQ steps) on shapes that cross them unevenly.
CUDA_TILE_CASES = [
    (1, 2, 300, 64, _chunk(7, 100), "half", torch.float32, _cuda_config(64)),
    (2, 1, 333, 64, _window(70, 50), "half", torch.float32, _cuda_config(64)),
    (1, 1, 259, 32, _chunk(64, 128), None, torch.float32, _cuda_config(32)),
]
# CUDA: the default launch config, awkward L, all head dims, both patterns, padding.
GPU_CASES = [
    (b, h, seq, d, pat, pad, dt, None)
    for (b, h, seq, pad) in [(2, 3, 1000, "half"), (1, 2, 777, "full"), (1, 4, 2048, None)]
    for d in (32, 64, 128)
    for pat in (_chunk(64, 128), _chunk(0, 100), _window(7, 64), _window(0, 33))
    for dt in (torch.bfloat16, torch.float16)
]


def _case_id(case: tuple) -> str:
    b, h, seq, d, pat, pad, dt, cfg = case
    size = pat.chunk_size if pat.kind == "chunked" else pat.window
    launch = "cfg" if cfg else "default"
    return f"B{b}H{h}L{seq}M{pat.num_memory}D{d}-{pat.kind}{size}-{pad}-{str(dt)[6:]}-{launch}"


def _params(cases: list, marks: list) -> list:
    return [pytest.param(c, marks=marks, id=_case_id(c)) for c in cases]


def _inputs(case: tuple, device: str) -> tuple:
    b, h, seq, d, pat, pad, dt, _ = case
    gen = torch.Generator().manual_seed(seq * 131 + d)
    n = pat.num_memory + seq
    q, k, v, do = (torch.randn(b, h, n, d, generator=gen).to(device) for _ in range(4))
    mask = None
    if pad is not None:
        mask = torch.ones(b, seq, dtype=torch.bool)
        mask[0, seq // 2 :] = False
        if pad == "full" and b > 1:
            mask[1] = False
        mask = mask.to(device)
    return q, k, v, do, mask


def _run(fn, q, k, v, do, dtype, pattern, mask):  # noqa: ANN001, ANN202
    xs = [t.to(dtype).requires_grad_() for t in (q, k, v)]
    out = fn(*xs, pattern, mask)
    grads = torch.autograd.grad(out, xs, do.to(dtype))
    return [out] + list(grads)


def _as_op(fn):  # noqa: ANN001, ANN202
    """``fn`` under ``gmat_attention``'s rule for padded query rows: zero in, zero out, no gradient."""

    def run(q, k, v, pattern, mask):  # noqa: ANN001, ANN202
        if mask is None:
            return fn(q, k, v, pattern, mask)
        padded = ~pattern.key_valid(mask)[:, None, :, None]
        return fn(q.masked_fill(padded, 0.0), k, v, pattern, mask).masked_fill(padded, 0.0)

    return run


def _check(case: tuple, device: str) -> None:
    """Forward and dQ, dK, dV against the fp64 reference (flash-attention rule in bf16/fp16)."""
    _, _, _, _, pat, _, dt, cfg = case
    q, k, v, do, mask = _inputs(case, device)
    got = _run(_as_op(lambda *a: tk.triton_attention(*a, config=cfg)), q, k, v, do, dt, pat, mask)
    truth = _run(reference_attention, q, k, v, do, torch.float64, pat, mask)
    names = ("out", "dq", "dk", "dv")
    if dt == torch.float32:
        atol, rtol = TOLERANCES.get(("triton", device, dt), FP32_DEFAULT)
        for name, g, r in zip(names, got, truth):
            assert torch.isfinite(g).all(), f"{name}: non-finite values"
            torch.testing.assert_close(g.double(), r, atol=atol, rtol=rtol, msg=lambda m, n=name: f"{n}: {m}")
        return
    low = _run(reference_attention, q, k, v, do, dt, pat, mask)
    for i, (name, g, r, lo) in enumerate(zip(names, got, truth, low)):
        factor = LOWP_BACKWARD_FACTOR if i else LOWP_FORWARD_FACTOR
        assert_close_to_oracle(g, r, lo, "triton", factor=factor, what=name)


@pytest.mark.parametrize("case", _params(SMOKE_CASES, [INTERPRETER]))
def test_triton_matches_reference_smoke(case: tuple) -> None:
    _check(case, "cpu")


@pytest.mark.slow
@pytest.mark.parametrize("case", _params(INTERPRETER_CASES, [INTERPRETER]))
def test_triton_matches_reference_interpreter(case: tuple) -> None:
    _check(case, "cpu")


@pytest.mark.parametrize("case", _params(CUDA_TILE_CASES, [INTERPRETER]))
def test_cuda_tiles_match_reference_interpreter(case: tuple) -> None:
    _check(case, "cpu")


@pytest.mark.parametrize("case", _params(GPU_CASES, CUDA))
def test_triton_matches_reference_cuda(case: tuple) -> None:
    _check(case, "cuda")


@pytest.mark.slow
@INTERPRETER
def test_triton_strided_inputs_and_scale() -> None:
    # (B, M+L, H, D) storage viewed as (B, H, M+L, D): kernels read through strides, no copy.
    pat = _window(3, 8)
    gen = torch.Generator().manual_seed(0)
    base = [torch.randn(2, 3 + 40, 2, 32, generator=gen) for _ in range(3)]
    q, k, v = (t.transpose(1, 2).requires_grad_() for t in base)
    do = torch.randn(2, 2, 43, 32, generator=gen)
    out = tk.triton_attention(q, k, v, pat, scale=0.3, config=CFG_16)
    ref = reference_attention(q, k, v, pat, scale=0.3)
    atol, rtol = FP32_DEFAULT
    torch.testing.assert_close(out, ref, atol=atol, rtol=rtol)
    for g, r in zip(torch.autograd.grad(out, (q, k, v), do), torch.autograd.grad(ref, (q, k, v), do)):
        torch.testing.assert_close(g, r, atol=atol, rtol=rtol)


@INTERPRETER
@pytest.mark.parametrize("pattern", [_chunk(3, 16), _window(0, 8)], ids=["chunked-M3", "window-M0"])
def test_nan_in_padded_keys_and_values_does_not_leak(pattern: AttentionPattern) -> None:
    # Padded K/V rows hold NaN: the kernels must never load them (0 * NaN = NaN), as the reference never uses them.
    b, h, seq, d = 2, 1, 37, 32
    gen = torch.Generator().manual_seed(7)
    n = pattern.num_memory + seq
    q, k, v, do = (torch.randn(b, h, n, d, generator=gen) for _ in range(4))
    mask = torch.ones(b, seq, dtype=torch.bool)
    mask[0, 20:] = False
    mask[1, :5] = False
    key_real = torch.cat([torch.ones(b, pattern.num_memory, dtype=torch.bool), mask], dim=1)[:, None, :, None]
    k, v = (x.masked_fill(~key_real, float("nan")) for x in (k, v))
    got = _run(_as_op(lambda *a: tk.triton_attention(*a, config=CFG_16)), q, k, v, do, torch.float32, pattern, mask)
    truth = _run(reference_attention, q, k, v, do, torch.float64, pattern, mask)
    atol, rtol = FP32_DEFAULT
    for name, g, r in zip(("out", "dq", "dk", "dv"), got, truth):
        assert torch.isfinite(g).all(), f"{name}: NaN leaked from the padded keys"
        torch.testing.assert_close(g.double(), r, atol=atol, rtol=rtol, msg=lambda m, n=name: f"{n}: {m}")


def test_interpreter_skip_names_the_triton_version() -> None:
    old = interpreter_skip_reason("3.6.0", usable=True)
    assert old is not None and "3.6.0" in old and ">= 3.9" in old
    assert interpreter_skip_reason("3.9.0", usable=True) is None
    assert interpreter_skip_reason("3.10.1+git", usable=True) is None
    assert "TRITON_INTERPRET=1" in interpreter_skip_reason("3.9.0", usable=False)


def test_registry_declares_and_refuses() -> None:
    backend = get_backend("triton")
    assert _TRITON_HEAD_DIMS == tk.SUPPORTED_HEAD_DIMS
    q = torch.zeros(1, 1, 10, 40)
    reasons = not_supported_reasons(backend, q, _chunk(2, 4))
    assert any("device 'cpu'" in r for r in reasons)
    assert any("dtype torch.float32" in r for r in reasons)
    assert any("D=40" in r for r in reasons)
    with pytest.raises(ValueError, match="triton"):
        gmat_attention(q, q, q, _chunk(2, 4), backend="triton")


def test_refuses_dropout() -> None:
    q = torch.zeros(1, 1, 10, 32)
    with pytest.raises(ValueError, match="dropout"):
        tk.triton_attention(q, q, q, _chunk(2, 4), dropout_p=0.1)


def test_split_covers_rows() -> None:
    for n_rows, tile, other, target in [(103, 16, 2, 4), (65600, 64, 16, 528), (5, 16, 1, 100)]:
        splits, per = tk._split(n_rows, tile, other, target)
        assert per % tile == 0 and (splits - 1) * per < n_rows <= splits * per
