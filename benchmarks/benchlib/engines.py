"""Benchmark engines: what is timed, and how each is built and checked.

Shape letters as in ``gmat.ops`` (K = C for chunks, 2w for a window, the keys per query):

* ``dense_sdpa``: SDPA over all M+L rows, no mask (what sparsity saves);
* ``masked_sdpa``: SDPA with the materialised (M+L)^2 GMAT mask (built once per shape, not timed);
* ``naive_chunk_sdpa``: local chunks only, q/k/v viewed as (B, H*L/C, C, D), **no memory**: a cheaper pattern
  than the row's M (labelled so in every table);
* ``naive_chunk_mem_sdpa``: the same GMAT pattern written the obvious way: chunk reshape with the M memory keys
  concatenated to every chunk's keys (one unmasked SDPA call), plus the memory rows over all keys (a second);
  chunked only, L a multiple of C, no padding;
* ``blocked`` / ``flex`` / ``triton``: ``gmat_attention`` with that backend (``triton`` on CPU runs the same
  kernels under Triton's interpreter, when ``TRITON_INTERPRET=1`` was set before triton was imported);
* ``triton_v0``: the same kernels with their first, untuned CUDA launch config (``first_cuda_config``);
* ``blocked_proj``: Q/K/V projections (d -> d, d = H*D) + ``blocked``, the like-for-like rival of the HF
  modules;
* ``hf_longformer``: ``LongformerSelfAttention`` (its own projections), ``attention_window`` = K, the first M
  tokens global, input padded to a multiple of K as ``LongformerModel`` does;
* ``hf_bigbird``: ``BigBirdBlockSparseAttention`` (its own projections, train mode so the random blocks are
  drawn), block b = K/8 and 3 random blocks: 3 sliding + 2 global + 3 random blocks = K keys per query.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from benchlib.config import BenchConfig, Experiment
from gmat.ops import AttentionPattern, gmat_attention

__all__ = ["Case", "Engine", "attention_flops", "default_engines"]


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
        note: shown under every table the engine appears in, when it computes something other than the
            row's GMAT pattern (e.g. no memory).
    """

    name: str
    label: str
    build: Callable[[Experiment, bool, BenchConfig], Case]
    check: str = "reference"
    exponent: int = 1
    supports: Callable[[Experiment, str], str | None] = lambda exp, mode: None
    canonical: Callable[[Experiment], Experiment] = lambda exp: exp
    flops_pattern: Callable[[Experiment], AttentionPattern | None] = lambda exp: exp.pattern
    note: str | None = None


def attention_flops(pattern: AttentionPattern, seq_len: int, batch: int, heads: int, head_dim: int, mode: str) -> float:
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
    return Case(
        leaves=(q, k, v),
        forward=lambda: F.scaled_dot_product_attention(q, k, v),
        oracle=_reference(AttentionPattern(exp.num_memory, "dense")),
    )


def _build_masked_sdpa(exp: Experiment, requires_grad: bool, cfg: BenchConfig) -> Case:
    q, k, v = _qkv(exp, exp.total_len, requires_grad, cfg.seed)
    pattern = exp.pattern
    # Built once per shape and reused, as a model would (and as flex caches its BlockMask): not timed, and
    # its (M+L)^2 bytes are reported as static memory rather than in the step's peak.
    mask = pattern.to_dense(exp.seq_len, device=q.device)  # (M+L, M+L) bool
    return Case(
        leaves=(q, k, v),
        forward=lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask),
        oracle=_reference(pattern),
        static_bytes=mask.numel() * mask.element_size(),
    )


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
        return Case(
            leaves=(q, k, v),
            forward=lambda: gmat_attention(q, k, v, pattern, backend=backend),
            oracle=_reference(pattern),
        )

    return build


def _triton_case(exp: Experiment, requires_grad: bool, cfg: BenchConfig, config: Any = None) -> Case:
    """``triton_attention`` itself with ``config`` (None: its default), on CUDA or under Triton's interpreter."""
    from gmat.ops.triton_kernels import triton_attention

    q, k, v = _qkv(exp, exp.total_len, requires_grad, cfg.seed)
    pattern = exp.pattern
    return Case(
        leaves=(q, k, v),
        forward=lambda: triton_attention(q, k, v, pattern, config=config),
        oracle=_reference(pattern),
    )


def _build_triton(exp: Experiment, requires_grad: bool, cfg: BenchConfig) -> Case:
    if exp.device == "cuda":
        return _build_gmat("triton")(exp, requires_grad, cfg)
    # CPU: the same kernels under Triton's interpreter (the dispatcher declares the backend CUDA-only).
    return _triton_case(exp, requires_grad, cfg)


def _build_triton_v0(exp: Experiment, requires_grad: bool, cfg: BenchConfig) -> Case:
    """``triton`` with the launch config it had before tuning on hardware: the tuning's yardstick."""
    if exp.device != "cuda":
        return _triton_case(exp, requires_grad, cfg)  # the interpreter's tiles: there is no other config
    from gmat.ops.triton_kernels import default_config, first_cuda_config

    split = default_config(exp.head_dim, torch.device("cuda")).split_programs
    return _triton_case(exp, requires_grad, cfg, first_cuda_config(exp.head_dim, split))


def _triton_supports(exp: Experiment, mode: str) -> str | None:
    import importlib.util

    if importlib.util.find_spec("triton") is None:
        return "triton is not installed"
    if exp.kind not in ("chunked", "window", "dense"):
        return f"n/a: kind {exp.kind!r}"
    if exp.device != "cuda":
        from gmat.ops.triton_kernels import interpreter_usable

        if not interpreter_usable():
            return "CUDA only (on CPU: Triton's interpreter, TRITON_INTERPRET=1 set before triton is imported)"
    return None


def _flex_supports(exp: Experiment, mode: str) -> str | None:
    if exp.device != "cuda":
        return (
            "CUDA only here: flex has no backward on CPU, and its CPU forward needs an inductor compile "
            "per shape (~33 s each on this kind of machine)"
        )
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

    def attend(hidden: torch.Tensor, weights: list[tuple[torch.Tensor, torch.Tensor]], backend: str) -> torch.Tensor:
        # (B, M+L, d) -> three (B, H, M+L, D)
        q, k, v = (F.linear(hidden, w, bias).view(b, n, h, dh).transpose(1, 2) for w, bias in weights)
        out = gmat_attention(q, k, v, pattern, backend=backend)  # (B, H, M+L, D)
        return out.transpose(1, 2).reshape(b, n, h * dh)  # (B, M+L, d)

    weights = [(lin.weight, lin.bias) for lin in projections]

    def oracle(leaves: tuple[torch.Tensor, ...]) -> torch.Tensor:
        dtype = leaves[0].dtype
        return attend(leaves[0], [(w.detach().to(dtype), bias.detach().to(dtype)) for w, bias in weights], "reference")

    return Case(
        leaves=(x,),
        forward=lambda: attend(x, weights, "blocked"),
        oracle=oracle,
        params=tuple(t for lin in projections for t in lin.parameters()),
    )


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
    config = LongformerConfig(
        hidden_size=d, num_attention_heads=exp.heads, attention_window=[window], attention_probs_dropout_prob=0.0
    )
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
        out = module(
            hidden,
            attention_mask=mask,
            is_index_masked=is_index_masked,
            is_index_global_attn=is_index_global,
            is_global_attn=is_global,
        )[0]
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
    config = BigBirdConfig(
        hidden_size=d,
        num_attention_heads=exp.heads,
        block_size=block,
        num_random_blocks=cfg.bigbird_random_blocks,
        attention_type="block_sparse",
        max_position_embeddings=max(n_pad, 4096),
    )
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
        out = module(
            hidden,
            band_mask=band_mask,
            from_mask=from_mask,
            to_mask=to_mask,
            from_blocked_mask=blocked_mask,
            to_blocked_mask=blocked_mask,
        )[0]
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
        Engine(
            "dense_sdpa",
            "dense SDPA over M+L, no mask",
            _build_dense_sdpa,
            exponent=2,
            canonical=_as_dense,
            flops_pattern=lambda exp: AttentionPattern(exp.num_memory, "dense"),
        ),
        Engine("masked_sdpa", "SDPA + dense (M+L)² GMAT mask", _build_masked_sdpa, exponent=2),
        Engine(
            "naive_chunk_sdpa",
            "naive chunk reshape + SDPA, NO memory (M=0: a cheaper pattern)",
            _build_naive_chunk,
            supports=_naive_supports,
            flops_pattern=lambda exp: AttentionPattern(0, "chunked", chunk_size=exp.size),
            note="computes chunks WITHOUT memory (M=0 whatever the row's M): fewer keys per query and no "
            "memory rows, so it is not the same work as the GMAT engines; `naive_chunk_mem_sdpa` is the "
            "naive path for the same pattern",
        ),
        Engine(
            "naive_chunk_mem_sdpa",
            "naive chunk reshape + SDPA with memory keys, + memory rows",
            _build_naive_chunk_memory,
            supports=_naive_supports,
        ),
        Engine("triton", "gmat triton", _build_triton, supports=_triton_supports),
        Engine(
            "triton_v0",
            "gmat triton with its first, untuned CUDA launch config (the tuning's yardstick)",
            _build_triton_v0,
            supports=_triton_supports,
        ),
        Engine("blocked", "gmat blocked", _build_gmat("blocked")),
        Engine("flex", "gmat flex", _build_gmat("flex"), supports=_flex_supports),
        Engine("blocked_proj", "QKV proj + gmat blocked", _build_blocked_proj),
        Engine(
            "hf_longformer",
            "HF LongformerSelfAttention (incl. proj)",
            _build_hf_longformer,
            check="sanity",
            supports=_longformer_supports,
            canonical=_as_budget,
            flops_pattern=lambda exp: AttentionPattern(exp.num_memory, "window", window=exp.key_budget // 2),
        ),
        Engine(
            "hf_bigbird",
            "HF BigBird block-sparse (incl. proj)",
            _build_hf_bigbird,
            check="sanity",
            supports=_bigbird_supports_fn(bigbird_random_blocks),
            canonical=_as_budget,
            flops_pattern=lambda exp: None,
        ),
    ]
    return {e.name: e for e in engines}
