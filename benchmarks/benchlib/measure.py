"""Measurement: the correctness check before timing, timed steps, peak memory, and the run's environment.

Peak memory of a step is measured above the memory held just before it (inputs and weights are not counted;
the step's activations, saved tensors, outputs and gradients are):

* CUDA: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``, minus ``memory_allocated``;
* CPU: the kernel's resident-set high-water mark ``VmHWM`` after resetting it through ``/proc/self/clear_refs``,
  minus ``VmRSS`` before the step. glibc is told (``mallopt``) to serve every allocation of >= 64 KiB with
  ``mmap`` and to trim eagerly, so freed tensors go back to the OS and each step starts from a clean baseline.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from benchlib.config import BenchConfig, Experiment
from benchlib.engines import Case, Engine

__all__ = [
    "MemoryMeter",
    "check_engine",
    "cpu_model",
    "environment",
    "has_backward",
    "is_oom",
    "loadavg",
    "status_kib",
    "time_case",
]


# ================================================================================================
# Correctness check
# ================================================================================================
def _tolerance(dtype: torch.dtype) -> float:
    """Absolute slack of the check, relative to the magnitude of the fp32 oracle's values."""
    return {torch.float32: 1e-4, torch.float16: 2e-3, torch.bfloat16: 1e-2}.get(dtype, 1e-4)


def _max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.detach().float() - b.detach().float()).abs().max())


def has_backward(engine: Engine, exp: Experiment) -> bool:
    return engine.supports(exp, "fwd_bwd") is None


def check_engine(engine: Engine, exp: Experiment, cfg: BenchConfig, with_grad: bool) -> dict[str, Any]:
    """Check one engine at one (small) point before timing it.

    Reference engines: output (and input gradients when ``with_grad``) against the fp32 oracle; pass when the
    error is <= 2x (fwd) / 3x (grad) the error of the oracle run in the engine's dtype, plus
    ``_tolerance(dtype)`` times the oracle's magnitude. Sanity engines: right shape, finite values.

    Returns:
        A JSON-ready record with ``passed`` and the errors and tolerances.
    """
    case = engine.build(exp, with_grad, cfg)
    record: dict[str, Any] = {
        "engine": engine.name,
        "seq_len": exp.seq_len,
        "num_memory": exp.num_memory,
        "kind": exp.kind,
        "size": exp.size,
        "check": engine.check,
        "with_grad": with_grad,
    }
    with torch.set_grad_enabled(with_grad):
        out = case.forward()
    grad_out = torch.randn_like(out, dtype=torch.float32).to(out.dtype)
    grads = torch.autograd.grad(out, case.leaves, grad_out) if with_grad else ()
    finite = bool(torch.isfinite(out).all()) and all(bool(torch.isfinite(g).all()) for g in grads)
    record["finite"] = finite
    if case.oracle is None:
        expected = (exp.batch, exp.total_len, exp.heads * exp.head_dim)
        record["passed"] = finite and tuple(out.shape) == expected
        record["note"] = (
            f"sanity only (different pattern and projections): output shape {tuple(out.shape)} "
            f"(expected {expected}), finite={finite}"
        )
        return record

    atol = _tolerance(exp.torch_dtype)
    leaves32 = tuple(t.detach().float().requires_grad_(with_grad) for t in case.leaves)
    leaves_lp = tuple(t.detach().clone().requires_grad_(with_grad) for t in case.leaves)
    with torch.set_grad_enabled(with_grad):
        ref32 = case.oracle(leaves32)
        ref_lp = case.oracle(leaves_lp)
    scale = max(float(ref32.detach().abs().max()), 1e-6)
    fwd_err, fwd_base = _max_err(out, ref32), _max_err(ref_lp, ref32)
    fwd_tol = 2 * fwd_base + atol * scale
    record.update(fwd_err=fwd_err, fwd_tol=fwd_tol, passed=finite and fwd_err <= fwd_tol)
    if with_grad:
        g32 = torch.autograd.grad(ref32, leaves32, grad_out.float())
        g_lp = torch.autograd.grad(ref_lp, leaves_lp, grad_out)
        grad_err = max(_max_err(g, r) for g, r in zip(grads, g32))
        grad_base = max(_max_err(g, r) for g, r in zip(g_lp, g32))
        grad_scale = max(max(float(r.abs().max()) for r in g32), 1e-6)
        grad_tol = 3 * grad_base + atol * grad_scale
        record.update(grad_err=grad_err, grad_tol=grad_tol, passed=record["passed"] and grad_err <= grad_tol)
    record["note"] = f"vs reference oracle: fwd err {fwd_err:.2e} (tol {fwd_tol:.2e})" + (
        f", grad err {record['grad_err']:.2e} (tol {record['grad_tol']:.2e})" if with_grad else ""
    )
    return record


# ================================================================================================
# Timing and memory
# ================================================================================================
class MemoryMeter:
    """Peak memory of one step above the memory held before it (see the module docstring)."""

    def __init__(self, device: str) -> None:
        self.device = device
        self._libc = None
        if device == "cpu" and sys.platform.startswith("linux"):
            name = ctypes.util.find_library("c")
            if name:
                with contextlib.suppress(OSError):
                    self._libc = ctypes.CDLL(name)
            if self._libc is not None and hasattr(self._libc, "mallopt"):
                m_trim_threshold, m_mmap_threshold = -1, -3
                self._libc.mallopt(m_mmap_threshold, 64 * 1024)  # fixed: disables glibc's dynamic threshold
                self._libc.mallopt(m_trim_threshold, 128 * 1024)
        self.available = device == "cuda" or Path("/proc/self/clear_refs").exists()

    def start(self) -> int:
        """Reset the peak; return the baseline in bytes."""
        if self.device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            return torch.cuda.memory_allocated()
        if not self.available:
            return 0
        if self._libc is not None and hasattr(self._libc, "malloc_trim"):
            self._libc.malloc_trim(0)
        with open("/proc/self/clear_refs", "w", encoding="ascii") as fh:
            fh.write("5")  # reset VmHWM to the current RSS
        return status_kib("VmRSS") * 1024

    def peak(self, baseline: int) -> int | None:
        """Peak bytes above ``baseline`` since ``start``; None when not measurable."""
        if self.device == "cuda":
            torch.cuda.synchronize()
            return torch.cuda.max_memory_allocated() - baseline
        if not self.available:
            return None
        return max(status_kib("VmHWM") * 1024 - baseline, 0)

    def free_bytes(self) -> int | None:
        """Memory still free for the next point."""
        if self.device == "cuda":
            return torch.cuda.mem_get_info()[0]
        return _meminfo_bytes("MemAvailable")


def status_kib(field: str) -> int:
    """A ``/proc/self/status`` field in KiB (``VmRSS``, ``VmHWM``)."""
    with open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _meminfo_bytes(field: str) -> int | None:
    with contextlib.suppress(OSError, StopIteration, ValueError), open("/proc/meminfo") as f:
        return int(next(line for line in f if line.startswith(field + ":")).split()[1]) * 1024
    return None


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def time_case(case: Case, mode: str, cfg: BenchConfig, meter: MemoryMeter, warmup: int) -> dict[str, Any]:
    """Warm up, then time synchronised steps until the repeat rules of ``cfg`` say stop."""
    grad_out: list[torch.Tensor] = []

    def step() -> None:
        if mode == "fwd":
            with torch.no_grad():
                case.forward()
            return
        out = case.forward()
        if not grad_out:
            grad_out.append(torch.randn_like(out))
        out.backward(grad_out[0])
        for t in case.leaves + case.params:
            t.grad = None

    for _ in range(warmup):
        step()
    _sync(cfg.device)
    times: list[float] = []
    peaks: list[int] = []
    while True:
        baseline = meter.start()
        t0 = time.perf_counter()
        step()
        _sync(cfg.device)
        times.append(time.perf_counter() - t0)
        peak = meter.peak(baseline)
        if peak is not None:
            peaks.append(peak)
        total = sum(times)
        if (
            len(times) >= cfg.max_repeats
            or total >= cfg.repeat_budget_s
            or (len(times) >= cfg.min_repeats and total >= cfg.min_time_s)
        ):
            break
    return {
        "time_ms": 1e3 * statistics.median(times),
        "time_ms_min": 1e3 * min(times),
        "repeats": len(times),
        "warmup": warmup,
        "peak_mb": max(peaks) / 2**20 if peaks else None,
        "static_mb": case.static_bytes / 2**20,
    }


def is_oom(err: BaseException) -> bool:
    oom_type = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)
    return isinstance(err, (oom_type, MemoryError)) or "out of memory" in str(err).lower()


# ================================================================================================
# The run
# ================================================================================================
def _git_sha() -> str | None:
    root = Path(__file__).resolve().parents[2]
    try:
        sha = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return sha + ("-dirty" if dirty else "")


def loadavg() -> list[float] | None:
    """1, 5 and 15-minute load averages (other work on the machine skews CPU timings)."""
    return [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None


def cpu_model() -> str:
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
        for line in fh:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def environment(device: str) -> dict[str, Any]:
    """Hardware and software of this run (JSON-ready)."""
    env: dict[str, Any] = {
        "utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "git_sha": os.environ.get("GMAT_GIT_SHA") or _git_sha(),  # passed in where there is no .git
        "loadavg_start": loadavg(),
    }
    with contextlib.suppress(ImportError):
        import transformers

        env["transformers"] = transformers.__version__
    total = _meminfo_bytes("MemTotal")
    if total is not None:
        env["ram_gib"] = round(total / 2**30, 1)
    if device == "cuda" and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        env.update(
            gpu=props.name,
            gpu_memory_gib=round(props.total_memory / 2**30, 1),
            gpu_capability=f"{props.major}.{props.minor}",
            cuda=torch.version.cuda,
        )
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            env["gpu_driver"] = subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=20,
                check=True,
            ).stdout.strip()
    return env
