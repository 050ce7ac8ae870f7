"""Attention benchmark: GMAT backends side by side with dense SDPA, a naive chunk path and HF baselines.

Entry points: ``gmat bench attention --quick`` and ``python benchmarks/bench_attention.py --config X.yaml``.
One run, in one process:

1. expands the sweeps of a ``BenchConfig`` into ``Experiment`` points (engine x L x M x pattern);
2. checks each engine at a small L before timing it: GMAT engines against the reference oracle (forward and
   gradients, the flash-attention rule: error <= 2x (fwd) / 3x (grad) the error of the reference run in the
   same dtype, plus a small atol); the HF modules compute other patterns with their own projections, so for
   them the check is a sanity check only (right shape, finite values and gradients);
3. times the forward (under ``torch.no_grad``) and the forward+backward (gradients of the inputs and of any
   module parameters), after warm-up, as the median of repeats (``perf_counter`` around a synchronised step);
4. records the peak memory of each timed step above the memory held just before it (inputs and weights are
   not counted; the step's activations, saved tensors, outputs and gradients are):

   * CUDA: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``, minus ``memory_allocated``;
   * CPU: the kernel's resident-set high-water mark ``VmHWM`` after resetting it through
     ``/proc/self/clear_refs``, minus ``VmRSS`` before the step. glibc is told (``mallopt``) to serve every
     allocation of >= 64 KiB with ``mmap`` and to trim eagerly, so freed tensors go back to the OS and each
     step starts from a clean baseline;

5. skips a point whose predicted time or memory (scaled from the largest smaller L of the same engine) is over
   budget, or that runs out of memory, and records ``skipped (reason)``;
6. writes ``<name>-attention.json`` (results + environment: CPU/GPU, cores, torch, git SHA, load), a markdown
   table and a log-log PNG (time and memory vs L).

Engines (shape letters as in ``gmat.ops``; K = C for chunks, 2w for a window, the keys per query):

* ``dense_sdpa``: SDPA over all M+L rows, no mask (what sparsity saves);
* ``masked_sdpa``: SDPA with the materialised (M+L)^2 GMAT mask (built once per shape, not timed);
* ``naive_chunk_sdpa``: local chunks only, q/k/v viewed as (B, H*L/C, C, D), no memory, chunks only;
* ``naive_chunk_mem_sdpa``: the same GMAT pattern written the obvious way: chunk reshape with the M memory keys
  concatenated to every chunk's keys (one unmasked SDPA call), plus the memory rows over all keys (a second);
  chunked only, L a multiple of C, no padding;
* ``blocked`` / ``flex``: ``gmat_attention`` with that backend;
* ``blocked_proj``: Q/K/V projections (d -> d, d = H*D) + ``blocked``, the like-for-like rival of the HF
  modules;
* ``hf_longformer``: ``LongformerSelfAttention`` (its own projections), ``attention_window`` = K, the first M
  tokens global, input padded to a multiple of K as ``LongformerModel`` does;
* ``hf_bigbird``: ``BigBirdBlockSparseAttention`` (its own projections, train mode so the random blocks are
  drawn), block b = K/8 and 3 random blocks: 3 sliding + 2 global + 3 random blocks = K keys per query.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import ctypes.util
import dataclasses
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from gmat.ops import AttentionPattern, gmat_attention

__all__ = [
    "BenchConfig",
    "Case",
    "Engine",
    "Experiment",
    "SweepSpec",
    "add_cli_arguments",
    "attention_flops",
    "check_engine",
    "cli_run",
    "default_engines",
    "load_config",
    "main",
    "quick_config",
    "render",
    "run_benchmark",
]

logger = logging.getLogger(__name__)

MODES = ("fwd", "fwd_bwd")
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


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
                raise ValueError(f"sweep {self.name!r}: {field_name} must be a non-empty list of ints >= 0, "
                                 f"got {values!r}")

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
    engines: tuple[str, ...] = ("dense_sdpa", "masked_sdpa", "naive_chunk_sdpa", "naive_chunk_mem_sdpa", "blocked",
                                "blocked_proj", "flex", "hf_longformer", "hf_bigbird")
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
        if self.dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {self.dtype!r}")
        bad_modes = [m for m in self.modes if m not in MODES]
        if bad_modes or not self.modes:
            raise ValueError(f"modes must be a non-empty subset of {MODES}, got {self.modes!r}")
        if self.min_repeats < 1 or self.max_repeats < self.min_repeats:
            raise ValueError(f"need 1 <= min_repeats <= max_repeats, got {self.min_repeats}, "
                             f"{self.max_repeats}")


def _to_tuple(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def config_from_dict(raw: Mapping[str, Any]) -> BenchConfig:
    """Build a ``BenchConfig`` from plain data (YAML); unknown keys raise ``ValueError`` naming them."""
    known = {f.name for f in dataclasses.fields(BenchConfig)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ValueError(f"unknown benchmark config keys {unknown}; known keys: {sorted(known)}")
    values = {k: _to_tuple(v) for k, v in raw.items() if k != "sweeps"}
    sweep_known = {f.name for f in dataclasses.fields(SweepSpec)}
    sweeps = []
    for item in raw.get("sweeps", ()):
        bad = sorted(set(item) - sweep_known)
        if bad:
            raise ValueError(f"unknown sweep keys {bad} in {item!r}; known keys: {sorted(sweep_known)}")
        sweeps.append(SweepSpec(**{k: _to_tuple(v) for k, v in item.items()}))
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
        engines=("dense_sdpa", "naive_chunk_sdpa", "blocked", "flex", "hf_longformer"),
        sweeps=(
            SweepSpec(name="chunked", kind="chunked", seq_lens=(1024, 2048, 4096), num_memory=(64,),
                      sizes=(512,)),
            SweepSpec(name="window", kind="window", seq_lens=(1024, 2048, 4096), num_memory=(64,),
                      sizes=(256,)),
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
# Experiments and engines
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
        return _DTYPES[self.dtype]


@dataclass(frozen=True)
class Case:
    """Inputs and closures of one engine at one point.

    Attributes:
        leaves: input tensors (their gradients are part of the backward).
        forward: runs the engine on ``leaves``; returns its output.
        oracle: the same function computed by definition (``gmat.ops`` reference backend) on given leaves,
            for the correctness check; None for sanity-checked engines.
        params: module parameters (their gradients are cleared between steps).
        static_bytes: memory the engine holds across steps besides inputs and weights (e.g. a dense mask).
    """

    leaves: tuple[torch.Tensor, ...]
    forward: Callable[[], torch.Tensor]
    oracle: Callable[[tuple[torch.Tensor, ...]], torch.Tensor] | None = None
    params: tuple[torch.Tensor, ...] = ()
    static_bytes: int = 0


@dataclass(frozen=True)
class Engine:
    """A registered benchmark engine.

    Attributes:
        name: registry key.
        label: one-line description for tables.
        build: ``build(exp, requires_grad, cfg) -> Case``.
        check: ``"reference"`` (must match the oracle) or ``"sanity"`` (shape and finiteness only).
        exponent: time and memory grow like ``L**exponent`` (used to predict and skip over-budget points).
        supports: ``supports(exp, mode) -> reason or None``.
        canonical: maps a point to the one it computes identically (e.g. dense SDPA ignores the pattern),
            so each distinct computation is measured once per run and reused.
        flops_pattern: the pattern whose unmasked pairs the engine computes, for effective TFLOP/s
            (None = n/a).
    """

    name: str
    label: str
    build: Callable[[Experiment, bool, BenchConfig], Case]
    check: str = "reference"
    exponent: int = 1
    supports: Callable[[Experiment, str], str | None] = lambda exp, mode: None
    canonical: Callable[[Experiment], Experiment] = lambda exp: exp
    flops_pattern: Callable[[Experiment], AttentionPattern | None] = lambda exp: exp.pattern


def attention_flops(pattern: AttentionPattern, seq_len: int, batch: int, heads: int, head_dim: int,
                    mode: str) -> float:
    """Effective FLOPs of one step: ``4·B·H·D·pairs`` forward (QK^T and PV), x3.5 with backward.

    Only the (q, k) pairs the pattern allows count (``pattern.allowed_pairs``), as in flash-attention's
    benchmarks; the backward is counted as 2.5 forwards.
    """
    fwd = 4.0 * batch * heads * head_dim * pattern.allowed_pairs(seq_len)
    return fwd if mode == "fwd" else 3.5 * fwd


def _randn(shape: tuple[int, ...], exp: Experiment, requires_grad: bool, seed: int) -> torch.Tensor:
    gen = torch.Generator(device=exp.device).manual_seed(seed)
    x = torch.randn(shape, generator=gen, device=exp.device, dtype=torch.float32).to(exp.torch_dtype)
    return x.requires_grad_(requires_grad)


def _qkv(exp: Experiment, rows: int, requires_grad: bool, seed: int) -> tuple[torch.Tensor, ...]:
    shape = (exp.batch, exp.heads, rows, exp.head_dim)
    return tuple(_randn(shape, exp, requires_grad, seed + i) for i in range(3))


def _reference(pattern: AttentionPattern) -> Callable[[tuple[torch.Tensor, ...]], torch.Tensor]:
    return lambda leaves: gmat_attention(*leaves, pattern, backend="reference")


def _build_dense_sdpa(exp: Experiment, requires_grad: bool, cfg: BenchConfig) -> Case:
    q, k, v = _qkv(exp, exp.total_len, requires_grad, cfg.seed)  # (B, H, M+L, D)
    return Case(leaves=(q, k, v), forward=lambda: F.scaled_dot_product_attention(q, k, v),
                oracle=_reference(AttentionPattern(exp.num_memory, "dense")))


def _build_masked_sdpa(exp: Experiment, requires_grad: bool, cfg: BenchConfig) -> Case:
    q, k, v = _qkv(exp, exp.total_len, requires_grad, cfg.seed)
    pattern = exp.pattern
    # Built once per shape and reused, as a model would (and as flex caches its BlockMask): not timed, and
    # its (M+L)^2 bytes are reported as static memory rather than in the step's peak.
    mask = pattern.to_dense(exp.seq_len, device=q.device)  # (M+L, M+L) bool
    return Case(leaves=(q, k, v), forward=lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask),
                oracle=_reference(pattern), static_bytes=mask.numel() * mask.element_size())


def _build_naive_chunk(exp: Experiment, requires_grad: bool, cfg: BenchConfig) -> Case:
    q, k, v = _qkv(exp, exp.seq_len, requires_grad, cfg.seed)  # (B, H, L, D): no memory rows
    b, h, n, d = q.shape
    c = exp.size

    def forward() -> torch.Tensor:
        # Chunks become batch entries: (B, H·L/C, C, D), one unmasked SDPA call.
        chunks = [x.reshape(b, h * n // c, c, d) for x in (q, k, v)]
        return F.scaled_dot_product_attention(*chunks).reshape(b, h, n, d)

    oracle = _reference(AttentionPattern(0, "chunked", chunk_size=c))
    return Case(leaves=(q, k, v), forward=forward, oracle=oracle)


def _build_naive_chunk_memory(exp: Experiment, requires_grad: bool, cfg: BenchConfig) -> Case:
    q, k, v = _qkv(exp, exp.total_len, requires_grad, cfg.seed)  # (B, H, M+L, D), memory rows first
    b, h, total, d = q.shape
    m, c = exp.num_memory, exp.size
    nb = (total - m) // c

    def forward() -> torch.Tensor:
        # The same GMAT pattern written the obvious way: each chunk is a batch entry whose keys are the M memory
        # keys (copied per chunk) followed by its own C keys, one unmasked SDPA call; the M memory rows attend to
        # all M+L keys in a second call.
        qs = q[:, :, m:].reshape(b * h, nb, c, d)  # (B·H, L/C, C, D), a view

        def keys(x: torch.Tensor) -> torch.Tensor:  # (B·H, L/C, M+C, D)
            mem = x[:, :, :m].reshape(b * h, 1, m, d).expand(b * h, nb, m, d)
            return torch.cat([mem, x[:, :, m:].reshape(b * h, nb, c, d)], dim=2)

        local = F.scaled_dot_product_attention(qs, keys(k), keys(v)).reshape(b, h, total - m, d)
        if m == 0:
            return local
        memory = F.scaled_dot_product_attention(q[:, :, :m], k, v)  # (B, H, M, D)
        return torch.cat([memory, local], dim=2)

    oracle = _reference(AttentionPattern(m, "chunked", chunk_size=c))
    return Case(leaves=(q, k, v), forward=forward, oracle=oracle)


def _naive_supports(exp: Experiment, mode: str) -> str | None:
    if exp.kind != "chunked":
        return "n/a: the naive path has local chunks only"
    if exp.seq_len % exp.size:
        return f"n/a: L={exp.seq_len} is not a multiple of C={exp.size}"
    return None


def _build_gmat(backend: str) -> Callable[[Experiment, bool, BenchConfig], Case]:
    def build(exp: Experiment, requires_grad: bool, cfg: BenchConfig) -> Case:
        q, k, v = _qkv(exp, exp.total_len, requires_grad, cfg.seed)
        pattern = exp.pattern
        return Case(leaves=(q, k, v), forward=lambda: gmat_attention(q, k, v, pattern, backend=backend),
                    oracle=_reference(pattern))

    return build


def _flex_supports(exp: Experiment, mode: str) -> str | None:
    if exp.device != "cuda":
        return ("CUDA only here: flex has no backward on CPU, and its CPU forward needs an inductor compile "
                "per shape (~33 s each on this kind of machine)")
    d = exp.head_dim
    if d < 16 or d & (d - 1):
        return f"flex needs a power-of-two head dim >= 16, got D={d}"
    return None


def _linears(exp: Experiment, count: int) -> list[torch.nn.Linear]:
    d = exp.heads * exp.head_dim
    torch.manual_seed(0)
    return [torch.nn.Linear(d, d).to(device=exp.device, dtype=exp.torch_dtype) for _ in range(count)]


def _build_blocked_proj(exp: Experiment, requires_grad: bool, cfg: BenchConfig) -> Case:
    b, h, n, dh = exp.batch, exp.heads, exp.total_len, exp.head_dim
    x = _randn((b, n, h * dh), exp, requires_grad, cfg.seed)  # (B, M+L, d) hidden states
    projections = _linears(exp, 3)
    for p in (t for lin in projections for t in lin.parameters()):
        p.requires_grad_(requires_grad)
    pattern = exp.pattern

    def attend(hidden: torch.Tensor, weights: list[tuple[torch.Tensor, torch.Tensor]],
               backend: str) -> torch.Tensor:
        # (B, M+L, d) -> three (B, H, M+L, D)
        q, k, v = (F.linear(hidden, w, bias).view(b, n, h, dh).transpose(1, 2) for w, bias in weights)
        out = gmat_attention(q, k, v, pattern, backend=backend)  # (B, H, M+L, D)
        return out.transpose(1, 2).reshape(b, n, h * dh)  # (B, M+L, d)

    weights = [(lin.weight, lin.bias) for lin in projections]

    def oracle(leaves: tuple[torch.Tensor, ...]) -> torch.Tensor:
        dtype = leaves[0].dtype
        return attend(leaves[0], [(w.detach().to(dtype), bias.detach().to(dtype)) for w, bias in weights],
                      "reference")

    return Case(leaves=(x,), forward=lambda: attend(x, weights, "blocked"), oracle=oracle,
                params=tuple(t for lin in projections for t in lin.parameters()))


def _as_budget(exp: Experiment) -> Experiment:
    """HF engines depend on K only, so a chunk of C and a window of radius C/2 are the same computation."""
    return dataclasses.replace(exp, kind="budget", size=exp.key_budget)


def _as_dense(exp: Experiment) -> Experiment:
    return dataclasses.replace(exp, kind="dense", size=0)


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def _build_hf_longformer(exp: Experiment, requires_grad: bool, cfg: BenchConfig) -> Case:
    from transformers import LongformerConfig
    from transformers.models.longformer.modeling_longformer import LongformerSelfAttention

    window = exp.key_budget  # LongformerConfig.attention_window is the total (two-sided) window
    b, n, d = exp.batch, exp.total_len, exp.heads * exp.head_dim
    n_pad = _round_up(n, window)  # LongformerModel pads to a multiple of the window; so do we
    config = LongformerConfig(hidden_size=d, num_attention_heads=exp.heads, attention_window=[window],
                              attention_probs_dropout_prob=0.0)
    torch.manual_seed(0)
    module = LongformerSelfAttention(config, layer_id=0).to(device=exp.device, dtype=exp.torch_dtype)
    module.requires_grad_(requires_grad)
    x = _randn((b, n, d), exp, requires_grad, cfg.seed)  # (B, M+L, d)
    # Longformer's internal mask convention: -10000 padding, 0 local, +10000 global (first M tokens).
    mask = torch.zeros(b, n_pad, device=exp.device, dtype=exp.torch_dtype)
    mask[:, : exp.num_memory] = 10000.0
    mask[:, n:] = -10000.0
    is_index_masked, is_index_global = mask < 0, mask > 0
    is_global = exp.num_memory > 0

    def forward() -> torch.Tensor:
        hidden = F.pad(x, (0, 0, 0, n_pad - n))  # (B, n_pad, d)
        out = module(hidden, attention_mask=mask, is_index_masked=is_index_masked,
                     is_index_global_attn=is_index_global, is_global_attn=is_global)[0]
        return out[:, :n]  # (B, M+L, d)

    return Case(leaves=(x,), forward=forward, params=tuple(module.parameters()))


def _longformer_supports(exp: Experiment, mode: str) -> str | None:
    if exp.key_budget % 2:
        return f"Longformer needs an even attention_window, got K={exp.key_budget}"
    return None


def _bigbird_block(exp: Experiment) -> int:
    return max(exp.key_budget // 8, 1)


def _build_hf_bigbird(exp: Experiment, requires_grad: bool, cfg: BenchConfig) -> Case:
    from transformers import BigBirdConfig, BigBirdModel
    from transformers.models.big_bird.modeling_big_bird import BigBirdBlockSparseAttention

    block = _bigbird_block(exp)
    b, n, d = exp.batch, exp.total_len, exp.heads * exp.head_dim
    n_pad = _round_up(n, block)  # BigBirdModel pads to a multiple of the block; so do we
    config = BigBirdConfig(hidden_size=d, num_attention_heads=exp.heads, block_size=block,
                           num_random_blocks=cfg.bigbird_random_blocks, attention_type="block_sparse",
                           max_position_embeddings=max(n_pad, 4096))
    torch.manual_seed(0)
    module = BigBirdBlockSparseAttention(config).to(device=exp.device, dtype=exp.torch_dtype)
    module.train()  # in eval mode HF draws no random blocks; training is the case being compared
    module.requires_grad_(requires_grad)
    x = _randn((b, n, d), exp, requires_grad, cfg.seed)
    valid = torch.zeros(b, n_pad, device=exp.device, dtype=exp.torch_dtype)
    valid[:, :n] = 1
    masks = BigBirdModel.create_masks_for_block_sparse_attn(valid, block)
    blocked_mask, band_mask, from_mask, to_mask = masks

    def forward() -> torch.Tensor:
        hidden = F.pad(x, (0, 0, 0, n_pad - n))  # (B, n_pad, d)
        out = module(hidden, band_mask=band_mask, from_mask=from_mask, to_mask=to_mask,
                     from_blocked_mask=blocked_mask, to_blocked_mask=blocked_mask)[0]
        return out[:, :n]

    return Case(leaves=(x,), forward=forward, params=tuple(module.parameters()))


def _bigbird_supports_fn(random_blocks: int) -> Callable[[Experiment, str], str | None]:
    def supports(exp: Experiment, mode: str) -> str | None:
        block = _bigbird_block(exp)
        n_pad = _round_up(exp.total_len, block)
        limit = (5 + 2 * random_blocks) * block
        if n_pad <= limit:
            return f"BigBird block-sparse needs more than (5+2r)·b = {limit} tokens, got {n_pad}"
        return None

    return supports


def default_engines(bigbird_random_blocks: int = 3) -> dict[str, Engine]:
    """Return the registry of benchmark engines by name (a fresh dict: callers may add their own)."""
    engines = [
        Engine("dense_sdpa", "dense SDPA over M+L, no mask", _build_dense_sdpa, exponent=2,
               canonical=_as_dense, flops_pattern=lambda exp: AttentionPattern(exp.num_memory, "dense")),
        Engine("masked_sdpa", "SDPA + dense (M+L)² GMAT mask", _build_masked_sdpa, exponent=2),
        Engine("naive_chunk_sdpa", "naive chunk reshape + SDPA (no memory)", _build_naive_chunk,
               supports=_naive_supports,
               flops_pattern=lambda exp: AttentionPattern(0, "chunked", chunk_size=exp.size)),
        Engine("naive_chunk_mem_sdpa", "naive chunk reshape + SDPA with memory keys, + memory rows",
               _build_naive_chunk_memory, supports=_naive_supports),
        Engine("blocked", "gmat blocked", _build_gmat("blocked")),
        Engine("flex", "gmat flex", _build_gmat("flex"), supports=_flex_supports),
        Engine("blocked_proj", "QKV proj + gmat blocked", _build_blocked_proj),
        Engine("hf_longformer", "HF LongformerSelfAttention (incl. proj)", _build_hf_longformer,
               check="sanity", supports=_longformer_supports, canonical=_as_budget,
               flops_pattern=lambda exp: AttentionPattern(exp.num_memory, "window",
                                                          window=exp.key_budget // 2)),
        Engine("hf_bigbird", "HF BigBird block-sparse (incl. proj)", _build_hf_bigbird, check="sanity",
               supports=_bigbird_supports_fn(bigbird_random_blocks), canonical=_as_budget,
               flops_pattern=lambda exp: None),
    ]
    return {e.name: e for e in engines}


# ================================================================================================
# Correctness check
# ================================================================================================
def _tolerance(dtype: torch.dtype) -> float:
    """Absolute slack of the check, relative to the magnitude of the fp32 oracle's values."""
    return {torch.float32: 1e-4, torch.float16: 2e-3, torch.bfloat16: 1e-2}.get(dtype, 1e-4)


def _max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.detach().float() - b.detach().float()).abs().max())


def _has_backward(engine: Engine, exp: Experiment) -> bool:
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
    record: dict[str, Any] = {"engine": engine.name, "seq_len": exp.seq_len, "num_memory": exp.num_memory,
                              "kind": exp.kind, "size": exp.size, "check": engine.check,
                              "with_grad": with_grad}
    with torch.set_grad_enabled(with_grad):
        out = case.forward()
    grad_out = torch.randn_like(out, dtype=torch.float32).to(out.dtype)
    grads = torch.autograd.grad(out, case.leaves, grad_out) if with_grad else ()
    finite = bool(torch.isfinite(out).all()) and all(bool(torch.isfinite(g).all()) for g in grads)
    record["finite"] = finite
    if case.oracle is None:
        expected = (exp.batch, exp.total_len, exp.heads * exp.head_dim)
        record["passed"] = finite and tuple(out.shape) == expected
        record["note"] = (f"sanity only (different pattern and projections): output shape {tuple(out.shape)} "
                          f"(expected {expected}), finite={finite}")
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
        f", grad err {record['grad_err']:.2e} (tol {record['grad_tol']:.2e})" if with_grad else "")
    return record


# ================================================================================================
# Timing and memory
# ================================================================================================
class _MemoryMeter:
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

    @staticmethod
    def _status_kib(field: str) -> int:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
        raise RuntimeError(f"{field} not in /proc/self/status")

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
        return self._status_kib("VmRSS") * 1024

    def peak(self, baseline: int) -> int | None:
        """Peak bytes above ``baseline`` since ``start``; None when not measurable."""
        if self.device == "cuda":
            torch.cuda.synchronize()
            return torch.cuda.max_memory_allocated() - baseline
        if not self.available:
            return None
        return max(self._status_kib("VmHWM") * 1024 - baseline, 0)

    def free_bytes(self) -> int | None:
        """Memory still free for the next point."""
        if self.device == "cuda":
            return torch.cuda.mem_get_info()[0]
        return _meminfo_bytes("MemAvailable")


def _meminfo_bytes(field: str) -> int | None:
    with contextlib.suppress(OSError, StopIteration, ValueError), open("/proc/meminfo") as f:
        return int(next(line for line in f if line.startswith(field + ":")).split()[1]) * 1024
    return None


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _time_case(case: Case, mode: str, cfg: BenchConfig, meter: _MemoryMeter, warmup: int) -> dict[str, Any]:
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
        if (len(times) >= cfg.max_repeats or total >= cfg.repeat_budget_s
                or (len(times) >= cfg.min_repeats and total >= cfg.min_time_s)):
            break
    return {"time_ms": 1e3 * statistics.median(times), "time_ms_min": 1e3 * min(times), "repeats": len(times),
            "warmup": warmup, "peak_mb": max(peaks) / 2**20 if peaks else None,
            "static_mb": case.static_bytes / 2**20}


def _is_oom(err: BaseException) -> bool:
    oom_type = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)
    return isinstance(err, (oom_type, MemoryError)) or "out of memory" in str(err).lower()


# ================================================================================================
# The run
# ================================================================================================
def _git_sha() -> str | None:
    root = Path(__file__).resolve().parents[3]
    try:
        sha = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return sha + ("-dirty" if dirty else "")


def _loadavg() -> list[float] | None:
    """1, 5 and 15-minute load averages (other work on the machine skews CPU timings)."""
    return [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None


def _cpu_model() -> str:
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
        for line in fh:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def environment(device: str) -> dict[str, Any]:
    """Hardware and software of this run (JSON-ready)."""
    env: dict[str, Any] = {
        "utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "git_sha": _git_sha() or os.environ.get("GMAT_GIT_SHA"),
        "loadavg_start": _loadavg(),
    }
    with contextlib.suppress(ImportError):
        import transformers

        env["transformers"] = transformers.__version__
    total = _meminfo_bytes("MemTotal")
    if total is not None:
        env["ram_gib"] = round(total / 2**30, 1)
    if device == "cuda" and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        env.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1),
                   gpu_capability=f"{props.major}.{props.minor}", cuda=torch.version.cuda)
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            env["gpu_driver"] = subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True,
                text=True, timeout=20, check=True).stdout.strip()
    return env


def _points(cfg: BenchConfig) -> list[tuple[SweepSpec, Experiment]]:
    """All points, sweep by sweep; within a sweep L ascending so smaller points predict larger ones."""
    points = []
    for sweep in cfg.sweeps:
        for seq_len in sorted(sweep.seq_lens):
            for m in sweep.num_memory:
                for size in sweep.sizes:
                    for name in sweep.engines or cfg.engines:
                        points.append((sweep, Experiment(
                            engine=name, seq_len=seq_len, num_memory=m, kind=sweep.kind, size=size,
                            batch=cfg.batch, heads=cfg.heads, head_dim=cfg.head_dim, dtype=cfg.dtype,
                            device=cfg.device)))
    return points


class _Runner:
    """Holds the state of one run: measured points, checks, budget bookkeeping."""

    def __init__(self, cfg: BenchConfig, engines: Mapping[str, Engine], json_path: Path | None,
                 payload: dict[str, Any]) -> None:
        self.cfg = cfg
        self.engines = engines
        self.json_path = json_path
        self.payload = payload
        self.meter = _MemoryMeter(cfg.device)
        self.measured: dict[tuple[Experiment, str], dict[str, Any]] = {}  # canonical point -> result
        self.checks: dict[Experiment, dict[str, Any]] = {}  # canonical check point -> record
        self.start = time.perf_counter()

    def save(self) -> None:
        if self.json_path is not None:
            self.json_path.write_text(json.dumps(self.payload, indent=1) + "\n", encoding="utf-8")

    # ---- checks -----------------------------------------------------------------------------------
    def check(self, engine: Engine, exp: Experiment, sweep: SweepSpec) -> dict[str, Any]:
        """Check ``engine`` at the small L of this point's pattern, once per distinct computation."""
        candidates = [self.cfg.check_seq_len] + sorted(sweep.seq_lens)
        small = None
        for seq_len in candidates:
            cand = dataclasses.replace(exp, seq_len=seq_len)
            if engine.supports(cand, "fwd") is None:
                small = cand
                break
        if small is None:
            return {"engine": engine.name, "passed": False, "note": "no supported L to check at"}
        key = engine.canonical(small)
        if key not in self.checks:
            with_grad = "fwd_bwd" in self.cfg.modes and _has_backward(engine, small)
            try:
                record = check_engine(engine, small, self.cfg, with_grad)
            except Exception as err:  # noqa: BLE001 - a failing engine is a result, not a crash
                logger.exception("check of %s failed to run", engine.name)
                record = {"engine": engine.name, "seq_len": small.seq_len, "num_memory": small.num_memory,
                          "kind": small.kind, "size": small.size, "check": engine.check, "passed": False,
                          "note": f"raised {type(err).__name__}: {err}"}
            record["label"] = engine.label
            log = logger.info if record["passed"] else logger.error
            log("check %-17s L=%d M=%d %s %d: %s — %s", engine.name, small.seq_len, small.num_memory,
                small.kind, small.size, "PASS" if record["passed"] else "FAIL", record.get("note", ""))
            self.checks[key] = record
            self.payload["checks"].append(record)
            self.save()
        return self.checks[key]

    # ---- budget -----------------------------------------------------------------------------------
    def _budget_reason(self, engine: Engine, exp: Experiment, mode: str) -> str | None:
        """Why a point is predicted to be over budget, from the largest smaller L of the same engine/mode."""
        smaller = [(key, res) for key, res in self.measured.items()
                   if key[0].engine == exp.engine and key[1] == mode and key[0].seq_len <= exp.seq_len]
        for key, res in smaller:
            if res["status"] == "skipped" and res.get("over_budget"):
                return f"already over budget at L={key[0].seq_len} (<= this L)"
        done = [(key, res) for key, res in smaller if res["status"] == "ok"]
        if not done:
            return None
        key, res = max(done, key=lambda kr: (kr[0][0].seq_len, kr[1]["time_ms"]))
        ratio = (exp.total_len / key[0].total_len) ** engine.exponent
        predicted_s = res["time_ms"] / 1e3 * ratio
        if predicted_s > self.cfg.max_step_s:
            return (f"predicted {predicted_s:.1f} s per step (from L={key[0].seq_len}) > "
                    f"max_step_s={self.cfg.max_step_s:g}")
        free = self.meter.free_bytes()
        if res.get("peak_mb") is not None and free is not None:
            predicted_b = res["peak_mb"] * 2**20 * ratio
            if predicted_b > self.cfg.memory_fraction * free:
                return (f"predicted peak {predicted_b / 2**30:.1f} GiB (from L={key[0].seq_len}) > "
                        f"{self.cfg.memory_fraction:g} x free {free / 2**30:.1f} GiB")
        return None

    def _warmup_for(self, exp: Experiment) -> int:
        slow = any(res["status"] == "ok" and res["time_ms"] / 1e3 > self.cfg.slow_step_s
                   for key, res in self.measured.items() if key[0].engine == exp.engine)
        return 0 if slow else self.cfg.warmup

    # ---- one point --------------------------------------------------------------------------------
    def measure(self, sweep: SweepSpec, exp: Experiment, mode: str) -> dict[str, Any]:
        engine = self.engines[exp.engine]
        base = {"sweep": sweep.name, "engine": exp.engine, "label": engine.label, "seq_len": exp.seq_len,
                "num_memory": exp.num_memory, "kind": exp.kind, "size": exp.size, "mode": mode}
        reason = engine.supports(exp, mode)
        if reason is not None:
            return {**base, "status": "skipped", "reason": reason}
        key = (engine.canonical(exp), mode)
        if key in self.measured:
            return {**base, **self.measured[key], "reused": True}
        if self.cfg.deadline_s is not None and time.perf_counter() - self.start > self.cfg.deadline_s:
            # Not stored in ``measured``: a deadline says nothing about the point itself.
            return {**base, "status": "skipped",
                    "reason": f"run deadline of {self.cfg.deadline_s:g} s reached"}
        check = self.check(engine, exp, sweep)
        if not check["passed"]:
            result = {"status": "check_failed",
                      "reason": f"correctness check failed: {check.get('note', '')}"}
        else:
            result = self._run(engine, exp, mode)
        self.measured[key] = result
        return {**base, **result}

    def _run(self, engine: Engine, exp: Experiment, mode: str) -> dict[str, Any]:
        reason = self._budget_reason(engine, exp, mode)
        if reason is not None:
            return {"status": "skipped", "reason": reason, "over_budget": True}
        case = None
        try:
            case = engine.build(exp, mode == "fwd_bwd", self.cfg)
            result = {"status": "ok", **_time_case(case, mode, self.cfg, self.meter, self._warmup_for(exp))}
        except Exception as err:  # noqa: BLE001 - OOM and engine failures are recorded, the sweep goes on
            if not _is_oom(err):
                logger.exception("%s failed at L=%d", engine.name, exp.seq_len)
                return {"status": "error", "reason": f"{type(err).__name__}: {str(err)[:300]}"}
            result = {"status": "skipped", "reason": f"out of memory: {str(err).splitlines()[0][:200]}",
                      "over_budget": True}
        finally:
            del case
            if self.cfg.device == "cuda":
                torch.cuda.empty_cache()
        pattern = engine.flops_pattern(exp)
        if result["status"] == "ok" and pattern is not None:
            flops = attention_flops(pattern, exp.seq_len, exp.batch, exp.heads, exp.head_dim, mode)
            result["eff_tflops"] = flops / (result["time_ms"] / 1e3) / 1e12
        return result


def run_benchmark(cfg: BenchConfig, out_dir: str | os.PathLike[str] | None = None,
                  engines: Mapping[str, Engine] | None = None, command: str | None = None) -> dict[str, Any]:
    """Run every sweep of ``cfg``; write JSON (after every point), markdown and PNG into ``out_dir``.

    Args:
        cfg: the benchmark configuration.
        out_dir: output folder (created); None = write nothing.
        engines: the engine registry; default ``default_engines(cfg.bigbird_random_blocks)``.
        command: the command line, recorded in the outputs.

    Returns:
        The payload written as JSON: ``environment``, ``config``, ``checks`` and ``results``.

    Raises:
        ValueError: on an unknown engine name, or ``cuda`` without a GPU.
    """
    engines = dict(engines) if engines is not None else default_engines(cfg.bigbird_random_blocks)
    wanted = set(cfg.engines).union(*(s.engines or () for s in cfg.sweeps))
    unknown = sorted(wanted - set(engines))
    if unknown:
        raise ValueError(f"unknown engines {unknown}; known: {sorted(engines)}")
    if cfg.device == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("device='cuda' but torch.cuda.is_available() is False")
        import torch._dynamo as dynamo

        # flex recompiles once per shape (dynamic=False); keep the sweep from falling back to eager.
        for name in ("recompile_limit", "cache_size_limit", "accumulated_recompile_limit",
                     "accumulated_cache_size_limit"):
            if hasattr(dynamo.config, name):
                setattr(dynamo.config, name, max(getattr(dynamo.config, name), 256))
    payload: dict[str, Any] = {"environment": environment(cfg.device), "command": command,
                               "config": dataclasses.asdict(cfg), "checks": [], "results": []}
    json_path = None
    if out_dir is not None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        json_path = Path(out_dir) / f"{cfg.name}-attention.json"
    runner = _Runner(cfg, engines, json_path, payload)
    for sweep, exp in _points(cfg):
        for mode in cfg.modes:
            record = runner.measure(sweep, exp, mode)
            payload["results"].append(record)
            if record["status"] == "ok":
                logger.info("%-8s %-17s L=%-6d M=%-4d %s %-4d %-7s %9.2f ms  peak %s MB%s", sweep.name,
                            exp.engine, exp.seq_len, exp.num_memory, exp.kind, exp.size, mode,
                            record["time_ms"],
                            "n/a" if record["peak_mb"] is None else f"{record['peak_mb']:.0f}",
                            " (reused)" if record.get("reused") else "")
            elif not record.get("reused"):
                logger.info("%-8s %-17s L=%-6d %-7s %s: %s", sweep.name, exp.engine, exp.seq_len, mode,
                            record["status"], record["reason"])
            runner.save()
    _add_speedups(payload["results"])
    payload["environment"]["loadavg_end"] = _loadavg()
    payload["environment"]["wall_s"] = round(time.perf_counter() - runner.start, 1)
    runner.save()
    if out_dir is not None:
        render(payload, out_dir)
    return payload


def _add_speedups(results: list[dict[str, Any]]) -> None:
    dense = {(r["seq_len"], r["num_memory"], r["mode"]): r["time_ms"]
             for r in results if r["engine"] == "dense_sdpa" and r["status"] == "ok"}
    for r in results:
        base = dense.get((r["seq_len"], r["num_memory"], r["mode"]))
        if r["status"] == "ok" and base is not None:
            r["speedup_vs_dense"] = base / r["time_ms"]


# ================================================================================================
# Reports
# ================================================================================================
def _fmt_ms(ms: float) -> str:
    return f"{ms:.2f}" if ms < 10 else f"{ms:.1f}" if ms < 1000 else f"{ms:,.0f}"


def _fmt_mb(mb: float) -> str:
    return f"{mb:.1f}" if mb < 10 else f"{mb:,.0f}"


def _cell(r: dict[str, Any] | None, metric: str) -> str:
    if r is None:
        return ""
    if r["status"] != "ok":
        return {"skipped": "skip", "check_failed": "FAILED check"}.get(r["status"], r["status"])
    if metric == "time":
        s = _fmt_ms(r["time_ms"])
        if r.get("speedup_vs_dense") is not None and r["engine"] != "dense_sdpa":
            s += f" ({r['speedup_vs_dense']:.1f}×)"
        return s
    if r.get("peak_mb") is None:
        return "n/a"
    static = f" +{_fmt_mb(r['static_mb'])} mask" if r.get("static_mb") else ""
    return f"{_fmt_mb(r['peak_mb'])}{static}"


def _axis_label(axis: str) -> str:
    return {"seq_len": "L", "num_memory": "M", "size": "C or w"}[axis]


def markdown(payload: dict[str, Any]) -> str:
    """Render the report: environment, checks, one time and one memory table per sweep and mode."""
    env, cfg = payload["environment"], payload["config"]
    hw = env.get("gpu") or f"{env['cpu']} ({env['cpu_count']} cores, {env['torch_threads']} torch threads)"
    lines = [f"# Attention benchmark `{cfg['name']}`", "",
             f"- hardware: {hw}"
             + (f", driver {env.get('gpu_driver')}, CUDA {env.get('cuda')}" if env.get("gpu") else "")
             + (f", {env['ram_gib']} GiB RAM" if env.get("ram_gib") else ""),
             f"- software: torch {env['torch']}, transformers {env.get('transformers')}, "
             f"Python {env['python']}, "
             f"git {env.get('git_sha')}",
             f"- run: {env['utc']}, {env.get('wall_s')} s, load average at start {env.get('loadavg_start')}, "
             f"at end {env.get('loadavg_end')}",
             f"- shapes: B={cfg['batch']} H={cfg['heads']} D={cfg['head_dim']}, "
             f"{cfg['dtype']} on {cfg['device']}",
             f"- command: `{payload.get('command')}`", "",
             "Time: median of timed steps in ms, (×) = speed-up over dense SDPA at the same L, M and mode. "
             "Peak memory: MB allocated by one step above what was held before it (inputs and weights "
             "excluded; `+N mask` = the dense mask masked SDPA keeps between steps). "
             "HF modules and `blocked_proj` include their Q/K/V projections; the other engines start from "
             "q/k/v.", "", "## Correctness checks (before timing)", "",
             "| engine | L | M | pattern | check | result |", "|---|---|---|---|---|---|"]
    for c in payload["checks"]:
        lines.append(f"| {c['engine']} | {c.get('seq_len', '')} | {c.get('num_memory', '')} | "
                     f"{c.get('kind', '')} {c.get('size', '')} | {c.get('check', '')} | "
                     f"{'pass' if c['passed'] else 'FAIL'}: {c.get('note', '')} |")
    results = payload["results"]
    for sweep in cfg["sweeps"]:
        spec = SweepSpec(**{k: _to_tuple(v) for k, v in sweep.items()})
        rows = [r for r in results if r["sweep"] == spec.name]
        engines = list(dict.fromkeys(r["engine"] for r in rows))
        axis = spec.axis
        values = sorted({r[axis] for r in rows})
        for mode in cfg["modes"]:
            for metric, title in (("time", "time ms"), ("memory", "peak MB")):
                lines += ["", f"## {spec.name}: {spec.kind}, {mode}, {title}", "",
                          f"L={list(spec.seq_lens)}, M={list(spec.num_memory)}, "
                          f"{'C' if spec.kind == 'chunked' else 'w'}={list(spec.sizes)}", "",
                          f"| {_axis_label(axis)} | " + " | ".join(engines) + " |",
                          "|---" * (len(engines) + 1) + "|"]
                for value in values:
                    cells = []
                    for name in engines:
                        match = [r for r in rows
                                 if r["engine"] == name and r["mode"] == mode and r[axis] == value]
                        cells.append(_cell(match[0] if match else None, metric))
                    lines.append(f"| {value} | " + " | ".join(cells) + " |")
        notes = sorted({(r["engine"], r["status"], r["reason"]) for r in rows
                        if r["status"] != "ok" and r.get("reason")})
        if notes:
            lines += ["", f"Not measured in `{spec.name}`:", ""]
            lines += [f"- `{engine}` {status}: {reason}" for engine, status, reason in notes]
    return "\n".join(lines) + "\n"


def plot(payload: dict[str, Any], path: str | os.PathLike[str]) -> None:
    """Log-log time and peak memory vs L, one row per L sweep; solid = fwd+bwd, dashed = fwd."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cfg = payload["config"]
    sweeps = [s for s in cfg["sweeps"]
              if SweepSpec(**{k: _to_tuple(v) for k, v in s.items()}).axis == "seq_len"]
    if not sweeps:
        return
    fig, axes = plt.subplots(len(sweeps), 2, figsize=(12, 4.5 * len(sweeps) + 0.6), squeeze=False)
    colours: dict[str, Any] = {}
    cmap = plt.get_cmap("tab10")
    for row, sweep in zip(axes, sweeps):
        rows = [r for r in payload["results"] if r["sweep"] == sweep["name"] and r["status"] == "ok"]
        for name in dict.fromkeys(r["engine"] for r in rows):
            colour = colours.setdefault(name, cmap(len(colours) % 10))
            for mode, style in (("fwd_bwd", "-"), ("fwd", "--")):
                pts = sorted((r["seq_len"], r["time_ms"], r["peak_mb"]) for r in rows
                             if r["engine"] == name and r["mode"] == mode
                             and r["num_memory"] == sweep["num_memory"][0] and r["size"] == sweep["sizes"][0])
                if not pts:
                    continue
                label = name if mode == "fwd_bwd" or "fwd_bwd" not in payload["config"]["modes"] else None
                row[0].plot([p[0] for p in pts], [p[1] for p in pts], style, marker="o", color=colour,
                            label=label)
                mem = [p for p in pts if p[2]]
                if mem:
                    row[1].plot([p[0] for p in mem], [p[2] for p in mem], style, marker="o", color=colour,
                                label=label)
        size_name = "C" if sweep["kind"] == "chunked" else "w"
        title = (f"{sweep['name']}: {sweep['kind']} {size_name}={sweep['sizes'][0]}, "
                 f"M={sweep['num_memory'][0]}")
        for ax, ylabel in zip(row, ("time per step (ms)", "peak memory of a step (MB)")):
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel("L (sequence length)")
            ax.set_ylabel(ylabel)
            ax.set_title(title, fontsize=10)
            ax.grid(True, which="both", alpha=0.3)
        row[0].legend(fontsize=7)
    env = payload["environment"]
    hw = env.get("gpu") or f"{env['cpu']}, {env['cpu_count']} cores"
    fig.suptitle(f"GMAT attention benchmark — {hw}, {cfg['dtype']}, B={cfg['batch']} H={cfg['heads']} "
                 f"D={cfg['head_dim']} (solid: forward+backward, dashed: forward)", fontsize=11)
    height = fig.get_figheight()  # fixed margins in inches: tight_layout costs seconds on a busy CPU
    fig.subplots_adjust(left=0.07, right=0.98, bottom=0.6 / height, top=1 - 0.75 / height, wspace=0.22,
                        hspace=0.45)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def render(payload: dict[str, Any], out_dir: str | os.PathLike[str]) -> list[Path]:
    """Write the markdown table and the PNG of a payload (e.g. re-render a saved JSON); return the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _add_speedups(payload["results"])  # a JSON saved mid-run has none yet
    name = payload["config"]["name"]
    md_path, png_path = out / f"{name}-attention.md", out / f"{name}-attention.png"
    md_path.write_text(markdown(payload), encoding="utf-8")
    plot(payload, png_path)
    return [md_path, png_path]


# ================================================================================================
# Command line
# ================================================================================================
def _add_options(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--quick", action="store_true",
                        help="the built-in quick sweep (< 90 s on a 2-core CPU)")
    source.add_argument("--config", help="YAML sweep (see benchmarks/configs/)")
    source.add_argument("--from-json", help="only re-render the markdown and PNG of a saved JSON")
    parser.add_argument("--out", default="./bench-results", help="output folder (default: ./bench-results)")
    parser.add_argument("--device", choices=("cpu", "cuda"), help="override the config's device")
    parser.add_argument("--dtype", choices=sorted(_DTYPES), help="override the config's dtype")
    parser.add_argument("--engines", help="comma-separated engines to keep (default: the config's)")


def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``gmat bench``: the benchmark name, then the options of ``main``."""
    parser.add_argument("benchmark", choices=("attention",), help="what to benchmark")
    _add_options(parser)


def cli_run(args: argparse.Namespace) -> int:
    """Run the benchmark described by parsed arguments; 0 when every check passed and nothing errored."""
    if args.from_json:
        payload = json.loads(Path(args.from_json).read_text(encoding="utf-8"))
        for path in render(payload, args.out):
            logger.info("wrote %s", path)
        return 0
    if args.quick:
        cfg = quick_config()
    elif args.config:
        cfg = load_config(args.config)
    else:
        raise SystemExit("gmat bench attention: pass --quick or --config FILE.yaml (or --from-json)")
    overrides: dict[str, Any] = {}
    if args.device:
        overrides["device"] = args.device
    if args.dtype:
        overrides["dtype"] = args.dtype
    if args.engines:
        keep = tuple(e.strip() for e in args.engines.split(",") if e.strip())
        overrides["engines"] = keep
        overrides["sweeps"] = tuple(
            s if s.engines is None
            else dataclasses.replace(s, engines=tuple(e for e in s.engines if e in keep))
            for s in cfg.sweeps)
    cfg = dataclasses.replace(cfg, **overrides)
    payload = run_benchmark(cfg, args.out, command=" ".join([Path(sys.argv[0]).name] + sys.argv[1:]))
    out = Path(args.out)
    logger.info("wrote %s, %s, %s", *(out / f"{cfg.name}-attention.{ext}" for ext in ("json", "md", "png")))
    failed = [c["engine"] for c in payload["checks"] if not c["passed"]]
    errors = [r["engine"] for r in payload["results"] if r["status"] == "error"]
    if failed or errors:
        logger.error("failed checks: %s; errors: %s", failed, sorted(set(errors)))
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python benchmarks/bench_attention.py [--quick | --config X.yaml] [--out DIR] ...``."""
    parser = argparse.ArgumentParser(prog="bench_attention.py", description=__doc__.splitlines()[0])
    parser.add_argument("--log-level", default="INFO", help="logging level (default: INFO)")
    _add_options(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(message)s")
    return cli_run(args)


if __name__ == "__main__":
    sys.exit(main())
