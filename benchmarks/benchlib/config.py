"""Benchmark configuration: sweeps, the run config (YAML), and one measured point (``Experiment``)."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from gmat.ops import AttentionPattern

__all__ = [
    "DTYPES",
    "MODES",
    "BenchConfig",
    "Experiment",
    "SweepSpec",
    "config_from_dict",
    "load_config",
    "quick_config",
    "to_tuple",
]

MODES = ("fwd", "fwd_bwd")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


# ================================================================================================
# Configuration
# ================================================================================================
@dataclass(frozen=True)
class SweepSpec:
    """One sweep: the grid ``seq_lens x num_memory x sizes`` for one pattern kind.

    Args:
        name: label used in tables and file names.
        kind: ``"chunked"`` (sizes are C) or ``"window"`` (sizes are the radius w).
        seq_lens: the L values.
        num_memory: the M values.
        sizes: the C or w values.
        engines: engines of this sweep; None = the config's engines.
    """

    name: str
    kind: str
    seq_lens: tuple[int, ...]
    num_memory: tuple[int, ...]
    sizes: tuple[int, ...]
    engines: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("chunked", "window"):
            raise ValueError(f"sweep {self.name!r}: kind must be 'chunked' or 'window', got {self.kind!r}")
        for field_name in ("seq_lens", "num_memory", "sizes"):
            values = getattr(self, field_name)
            if not values or any(not isinstance(v, int) or v < 0 for v in values):
                raise ValueError(
                    f"sweep {self.name!r}: {field_name} must be a non-empty list of ints >= 0, got {values!r}"
                )

    @property
    def axis(self) -> str:
        """The field that varies (``seq_len``, ``num_memory`` or ``size``); L when several or none do."""
        if len(self.seq_lens) == 1 and len(self.num_memory) > 1:
            return "num_memory"
        if len(self.seq_lens) == 1 and len(self.sizes) > 1:
            return "size"
        return "seq_len"


@dataclass(frozen=True)
class BenchConfig:
    """Everything one benchmark run needs (loaded from YAML by ``load_config``; unknown keys raise).

    Args:
        name: prefix of the output files (``<name>-attention.{json,md,png}``).
        device: ``"cpu"`` or ``"cuda"``.
        dtype: ``"float32"``, ``"bfloat16"`` or ``"float16"``.
        batch, heads, head_dim: B, H, D.
        engines: engine names (see ``default_engines``).
        modes: subset of ``("fwd", "fwd_bwd")``.
        sweeps: the sweeps, run in order.
        check_seq_len: L of the correctness check run before timing.
        warmup: untimed steps before timing (skipped once a smaller L of the engine took > ``slow_step_s``).
        min_repeats, max_repeats: bounds on timed steps.
        min_time_s: keep repeating (up to ``max_repeats``) until the timed steps add up to this.
        repeat_budget_s: stop repeating once the timed steps add up to this (a slow step is timed once).
        slow_step_s: above this a step counts as slow (no further warm-up for that engine).
        max_step_s: skip a point whose predicted step time is above this.
        memory_fraction: skip a point whose predicted peak is above this fraction of free memory.
        deadline_s: skip every point once the run has taken this long (None = no limit).
        bigbird_random_blocks: random blocks per query block of ``hf_bigbird``.
        seed: RNG seed of the inputs.
    """

    name: str = "bench"
    device: str = "cpu"
    dtype: str = "float32"
    batch: int = 1
    heads: int = 8
    head_dim: int = 64
    engines: tuple[str, ...] = (
        "dense_sdpa",
        "masked_sdpa",
        "naive_chunk_sdpa",
        "naive_chunk_mem_sdpa",
        "blocked",
        "blocked_proj",
        "flex",
        "hf_longformer",
        "hf_bigbird",
    )
    modes: tuple[str, ...] = MODES
    sweeps: tuple[SweepSpec, ...] = ()
    check_seq_len: int = 1024
    warmup: int = 1
    min_repeats: int = 3
    max_repeats: int = 20
    min_time_s: float = 1.0
    repeat_budget_s: float = 8.0
    slow_step_s: float = 3.0
    max_step_s: float = 60.0
    memory_fraction: float = 0.6
    deadline_s: float | None = None
    bigbird_random_blocks: int = 3
    seed: int = 0

    def __post_init__(self) -> None:
        if self.device not in ("cpu", "cuda"):
            raise ValueError(f"device must be 'cpu' or 'cuda', got {self.device!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {self.dtype!r}")
        bad_modes = [m for m in self.modes if m not in MODES]
        if bad_modes or not self.modes:
            raise ValueError(f"modes must be a non-empty subset of {MODES}, got {self.modes!r}")
        if self.min_repeats < 1 or self.max_repeats < self.min_repeats:
            raise ValueError(f"need 1 <= min_repeats <= max_repeats, got {self.min_repeats}, {self.max_repeats}")


def to_tuple(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def config_from_dict(raw: Mapping[str, Any]) -> BenchConfig:
    """Build a ``BenchConfig`` from plain data (YAML); unknown keys raise ``ValueError`` naming them."""
    known = {f.name for f in dataclasses.fields(BenchConfig)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ValueError(f"unknown benchmark config keys {unknown}; known keys: {sorted(known)}")
    values = {k: to_tuple(v) for k, v in raw.items() if k != "sweeps"}
    sweep_known = {f.name for f in dataclasses.fields(SweepSpec)}
    sweeps = []
    for item in raw.get("sweeps", ()):
        bad = sorted(set(item) - sweep_known)
        if bad:
            raise ValueError(f"unknown sweep keys {bad} in {item!r}; known keys: {sorted(sweep_known)}")
        sweeps.append(SweepSpec(**{k: to_tuple(v) for k, v in item.items()}))
    return BenchConfig(**values, sweeps=tuple(sweeps))


def load_config(path: str | os.PathLike[str]) -> BenchConfig:
    """Read a YAML benchmark config (see ``benchmarks/configs/``)."""
    import yaml

    with open(path, encoding="utf-8") as fh:
        raw = yaml.safe_load(fh) or {}
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: a benchmark config must be a mapping, got {type(raw).__name__}")
    return config_from_dict(raw)


def quick_config() -> BenchConfig:
    """Return the ``--quick`` sweep (< 90 s on a 2-core CPU), as ``benchmarks/configs/quick.yaml``."""
    return BenchConfig(
        name="quick",
        engines=("dense_sdpa", "naive_chunk_mem_sdpa", "blocked", "flex", "hf_longformer"),
        sweeps=(
            SweepSpec(name="chunked", kind="chunked", seq_lens=(1024, 2048, 4096), num_memory=(64,), sizes=(512,)),
            SweepSpec(name="window", kind="window", seq_lens=(1024, 2048, 4096), num_memory=(64,), sizes=(256,)),
        ),
        check_seq_len=1024,
        warmup=1,
        min_repeats=2,
        max_repeats=5,
        min_time_s=0.2,
        repeat_budget_s=0.5,
        slow_step_s=0.5,
        max_step_s=4.0,
        deadline_s=70.0,
    )


# ================================================================================================
# Experiments
# ================================================================================================
@dataclass(frozen=True)
class Experiment:
    """One measured point (attention-gym style): an engine at one shape and pattern.

    ``size`` is C for ``kind="chunked"``, w for ``"window"``; ``kind="dense"`` (size 0) and ``"budget"`` (size
    K) are the canonical forms of engines whose computation ignores the GMAT pattern.
    """

    engine: str
    seq_len: int
    num_memory: int
    kind: str
    size: int
    batch: int
    heads: int
    head_dim: int
    dtype: str
    device: str

    @property
    def total_len(self) -> int:
        """M + L, the rows of q/k/v."""
        return self.num_memory + self.seq_len

    @property
    def key_budget(self) -> int:
        """K: sequence keys per query (C for chunks, 2w for a window)."""
        return 2 * self.size if self.kind == "window" else self.size

    @property
    def pattern(self) -> AttentionPattern:
        """The GMAT pattern of this point."""
        if self.kind == "chunked":
            return AttentionPattern(self.num_memory, "chunked", chunk_size=self.size)
        if self.kind == "window":
            return AttentionPattern(self.num_memory, "window", window=self.size)
        if self.kind == "dense":
            return AttentionPattern(self.num_memory, "dense")
        raise ValueError(f"experiment kind {self.kind!r} has no GMAT pattern")

    @property
    def torch_dtype(self) -> torch.dtype:
        """The tensor dtype."""
        return DTYPES[self.dtype]
