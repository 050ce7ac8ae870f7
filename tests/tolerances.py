"""The one tolerance table of the test-suite (importable from every test via pytest's pythonpath)."""

from __future__ import annotations

import torch

# (backend, device, dtype) -> (atol, rtol) against the fp64 reference, for fp32/fp64 runs.
# Low-precision runs use the flash-attention rule instead (see `assert_close_to_oracle`).
TOLERANCES: dict[tuple[str, str, torch.dtype], tuple[float, float]] = {
    ("blocked", "cpu", torch.float64): (1e-10, 1e-10),
    ("blocked", "cpu", torch.float32): (2e-5, 1e-5),
    ("flex", "cpu", torch.float32): (2e-5, 1e-5),
    ("reference", "cpu", torch.float32): (2e-5, 1e-5),
    ("blocked", "cuda", torch.float32): (1e-4, 1e-4),  # TF32-free SDPA kernels on CUDA
    ("flex", "cuda", torch.float32): (1e-4, 1e-4),
}
# Low precision: error of the fast path vs fp64 truth must be <= FACTOR x the error of the reference run in
# the same low precision (+ a small absolute floor for outputs that are exactly representable).
LOWP_FORWARD_FACTOR = 2.0
LOWP_BACKWARD_FACTOR = 3.0
LOWP_FLOOR = {torch.bfloat16: 1e-2, torch.float16: 1e-3}


def tolerance(backend: str, device: str, dtype: torch.dtype) -> tuple[float, float]:
    return TOLERANCES[(backend, device, dtype)]


def assert_close_to_oracle(
    fast: torch.Tensor,
    truth: torch.Tensor,
    lowp_ref: torch.Tensor | None,
    backend: str,
    factor: float = LOWP_FORWARD_FACTOR,
    what: str = "output",
) -> None:
    """fp32/fp64: table tolerance vs truth. bf16/fp16: flash-attention rule against ``lowp_ref``."""
    dtype, device = fast.dtype, fast.device.type
    fast64, truth64 = fast.double(), truth.double()
    assert torch.isfinite(fast64).all(), f"{what}: non-finite values"
    if dtype in (torch.float32, torch.float64):
        atol, rtol = tolerance(backend, device, dtype)
        torch.testing.assert_close(fast64, truth64, atol=atol, rtol=rtol, msg=lambda m: f"{what}: {m}")
        return
    assert lowp_ref is not None
    fast_err = (fast64 - truth64).abs().max().item()
    ref_err = (lowp_ref.double() - truth64).abs().max().item()
    bound = factor * ref_err + LOWP_FLOOR[dtype]
    assert fast_err <= bound, f"{what}: {backend} {dtype} error {fast_err:.3g} > {factor} x {ref_err:.3g} + floor"
