"""Backend registry and the public op ``gmat_attention``.

Each backend is a plain function with one signature plus a ``Backend`` record that declares what it
supports. ``not_supported_reasons`` turns those declarations into human-readable refusals; ``auto`` picks
the first backend in priority order that has none. A backend named explicitly that cannot run raises
with its reasons: there is no silent fallback.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from gmat.ops.blocked import blocked_attention
from gmat.ops.flex import flex_attention_gmat
from gmat.ops.pattern import AttentionPattern
from gmat.ops.reference import reference_attention

__all__ = [
    "Backend",
    "register_backend",
    "get_backend",
    "list_backends",
    "select_backend",
    "not_supported_reasons",
    "gmat_attention",
    "in_traced_graph",
]

AttentionFn = Callable[..., torch.Tensor]

_FLOAT_DTYPES = frozenset({torch.float32, torch.float16, torch.bfloat16, torch.float64})


@dataclass(frozen=True)
class Backend:
    """What a backend is and what it can do.

    Attributes:
        name: registry key.
        fn: ``fn(q, k, v, pattern, attention_mask, dropout_p, scale) -> Tensor``.
        devices: device types it runs on (``"cpu"``, ``"cuda"``).
        dtypes: tensor dtypes it accepts.
        backward_devices: device types on which it supports autograd.
        supports_dropout: whether ``dropout_p > 0`` is allowed.
        max_tokens: largest M+L it accepts (None = no limit), e.g. for the quadratic oracle.
        priority: lower is tried first by ``auto``; None = never picked by ``auto``.
        extra_check: optional ``(q, pattern) -> list[str]`` for backend-specific refusals.
        auto_check: optional ``(q, pattern) -> list[str]``: why ``auto`` passes this backend over although it
            can run (e.g. a measured speed crossover); a backend named explicitly ignores it.
    """

    name: str
    fn: AttentionFn
    devices: frozenset[str]
    dtypes: frozenset[torch.dtype]
    backward_devices: frozenset[str]
    supports_dropout: bool
    max_tokens: int | None = None
    priority: int | None = None
    extra_check: Callable[[torch.Tensor, AttentionPattern], list[str]] | None = field(default=None)
    auto_check: Callable[[torch.Tensor, AttentionPattern], list[str]] | None = field(default=None)


_REGISTRY: dict[str, Backend] = {}


def register_backend(backend: Backend) -> Backend:
    """Add a backend to the registry (its name must be new)."""
    if backend.name in _REGISTRY or backend.name == "auto":
        raise ValueError(f"backend name {backend.name!r} is already taken")
    _REGISTRY[backend.name] = backend
    return backend


def get_backend(name: str) -> Backend:
    """Look a backend up by name; raises ``ValueError`` listing the known names."""
    if name not in _REGISTRY:
        raise ValueError(f"backend must be 'auto' or one of {sorted(_REGISTRY)}, got {name!r}")
    return _REGISTRY[name]


def list_backends() -> list[str]:
    """Names of the registered backends."""
    return sorted(_REGISTRY)


def not_supported_reasons(
    backend: Backend,
    q: torch.Tensor,
    pattern: AttentionPattern,
    dropout_p: float = 0.0,
    requires_grad: bool | None = None,
) -> list[str]:
    """Why ``backend`` cannot run on these inputs (empty list = it can)."""
    reasons = []
    if q.device.type not in backend.devices:
        reasons.append(f"{backend.name}: device {q.device.type!r} not in {sorted(backend.devices)}")
    if q.dtype not in backend.dtypes:
        reasons.append(f"{backend.name}: dtype {q.dtype} not supported")
    if requires_grad is None:
        requires_grad = torch.is_grad_enabled() and q.requires_grad
    if requires_grad and q.device.type not in backend.backward_devices:
        reasons.append(f"{backend.name}: no backward pass on {q.device.type!r}")
    if dropout_p > 0.0 and not backend.supports_dropout:
        reasons.append(f"{backend.name}: attention dropout not supported (dropout_p={dropout_p})")
    if backend.max_tokens is not None and q.shape[-2] > backend.max_tokens:
        reasons.append(f"{backend.name}: M+L={q.shape[-2]} exceeds its limit {backend.max_tokens}")
    if backend.extra_check is not None:
        reasons.extend(backend.extra_check(q, pattern))
    return reasons


def select_backend(
    q: torch.Tensor, pattern: AttentionPattern, dropout_p: float = 0.0, requires_grad: bool | None = None
) -> Backend:
    """The highest-priority backend that accepts the inputs; raises listing every refusal."""
    candidates = sorted((b for b in _REGISTRY.values() if b.priority is not None), key=lambda b: b.priority)
    all_reasons = []
    for backend in candidates:
        reasons = not_supported_reasons(backend, q, pattern, dropout_p, requires_grad)
        if not reasons and backend.auto_check is not None:
            reasons = backend.auto_check(q, pattern)
        if not reasons:
            return backend
        all_reasons.extend(reasons)
    raise ValueError("no attention backend accepts these inputs:\n  " + "\n  ".join(all_reasons))


def in_traced_graph() -> bool:
    """Whether the code runs inside ``torch.compile`` / ``torch.export``, a JIT trace or an ONNX export."""
    return torch.compiler.is_compiling() or torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()


def _validate(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    pattern: AttentionPattern,
    attention_mask: torch.Tensor | None,
    dropout_p: float,
    scale: float | None,
) -> None:
    if not isinstance(pattern, AttentionPattern):
        raise ValueError(f"pattern must be an AttentionPattern, got {type(pattern).__name__}")
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(f"{name} must have shape (B, H, M+L, D), got rank {t.dim()} shape {tuple(t.shape)}")
        if t.dtype not in _FLOAT_DTYPES:
            raise ValueError(f"{name} must be a floating tensor, got dtype {t.dtype}")
    if k.shape != q.shape or v.shape != q.shape:
        raise ValueError(
            f"q, k, v must have the same shape (B, H, M+L, D), got q {tuple(q.shape)}, "
            f"k {tuple(k.shape)}, v {tuple(v.shape)}"
        )
    if k.dtype != q.dtype or v.dtype != q.dtype:
        raise ValueError(f"q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if k.device != q.device or v.device != q.device:
        raise ValueError(f"q, k, v must be on one device, got {q.device}, {k.device}, {v.device}")
    n, m = q.shape[-2], pattern.num_memory
    if n <= m:
        raise ValueError(f"q has {n} rows but pattern.num_memory={m}: need M+L rows with L >= 1")
    if attention_mask is not None:
        if not isinstance(attention_mask, torch.Tensor) or attention_mask.dtype != torch.bool:
            got = attention_mask.dtype if isinstance(attention_mask, torch.Tensor) else type(attention_mask)
            raise ValueError(f"attention_mask must be a bool tensor (True = real token), got {got}")
        expected = (q.shape[0], n - m)
        if tuple(attention_mask.shape) != expected:
            raise ValueError(f"attention_mask must have shape (B, L) = {expected}, got {tuple(attention_mask.shape)}")
        if attention_mask.device != q.device:
            raise ValueError(f"attention_mask must be on {q.device}, got {attention_mask.device}")
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"dropout_p must be in [0, 1), got {dropout_p!r}")
    if scale is not None and not scale > 0:
        raise ValueError(f"scale must be positive or None, got {scale!r}")


def gmat_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    pattern: AttentionPattern,
    attention_mask: torch.Tensor | None = None,
    backend: str = "auto",
    dropout_p: float = 0.0,
    scale: float | None = None,
) -> torch.Tensor:
    """Multi-head attention over ``[memory ; sequence]`` with the GMAT mask (docs/design.md §1).

    Memory rows attend to every (non-padded) key; sequence row i attends to every memory key and to
    sequence keys ``j ∈ N(i)`` of the pattern. One joint softmax over all allowed keys, in fp32. A row with
    no allowed key (possible only with M = 0 and padding) returns zeros. Padded positions take no part: their
    query rows return zeros and pass no gradient, their keys and values are never read, so a NaN or Inf there
    reaches nothing. A non-finite value at a real position reaches only the rows the pattern lets see it
    (``reference`` and ``blocked``, checked in ``tests/reliability``). Example (M=1, chunked C=2, L=4)::

            m | s s s s
        m   1 | 1 1 1 1
        s   1 | 1 1 . .
        s   1 | 1 1 . .
        s   1 | . . 1 1
        s   1 | . . 1 1

    Args:
        q, k, v: ``(B, H, M+L, D)``, memory rows first, same dtype and device.
        pattern: the ``AttentionPattern`` (M and the sparse kind).
        attention_mask: optional ``(B, L)`` bool over sequence positions, True = real token.
        backend: ``"auto"`` or a registered name (``list_backends()``).
        dropout_p: dropout on attention probabilities (apply only in training).
        scale: softmax scale; default ``1/sqrt(D)``.

    Returns:
        ``(B, H, M+L, D)`` in q's dtype.

    Raises:
        ValueError: on malformed inputs, an unknown backend, or a backend that refuses the inputs.
    """
    _validate(q, k, v, pattern, attention_mask, dropout_p, scale)
    requires_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))
    if backend == "auto":
        chosen = select_backend(q, pattern, dropout_p, requires_grad)
    else:
        chosen = get_backend(backend)
        reasons = not_supported_reasons(chosen, q, pattern, dropout_p, requires_grad)
        if reasons:
            raise ValueError(f"backend {backend!r} cannot run these inputs:\n  " + "\n  ".join(reasons))
    padded = None
    if attention_mask is not None:
        padded = ~pattern.key_valid(attention_mask)[:, None, :, None]  # (B, 1, M+L, 1)
        q = q.masked_fill(padded, 0.0)  # a padded query row (NaN or not) never enters a softmax
    out = chosen.fn(q, k, v, pattern, attention_mask, dropout_p, scale)  # (B, H, M+L, D)
    return out if padded is None else out.masked_fill(padded, 0.0)  # zeros, and no gradient from these rows


def _flex_check(q: torch.Tensor, pattern: AttentionPattern) -> list[str]:
    d = q.shape[-1]
    if d < 16 or d & (d - 1):
        return [f"flex: head dim D={d} must be a power of two >= 16"]
    return []


register_backend(
    Backend(
        name="reference",
        fn=reference_attention,
        devices=frozenset({"cpu", "cuda"}),
        dtypes=_FLOAT_DTYPES,
        backward_devices=frozenset({"cpu", "cuda"}),
        supports_dropout=True,
        max_tokens=16384,
        priority=None,
    )
)
register_backend(
    Backend(
        name="blocked",
        fn=blocked_attention,
        devices=frozenset({"cpu", "cuda"}),
        dtypes=_FLOAT_DTYPES,
        backward_devices=frozenset({"cpu", "cuda"}),
        supports_dropout=True,
        priority=20,
    )
)
register_backend(
    Backend(
        name="flex",
        fn=flex_attention_gmat,
        devices=frozenset({"cpu", "cuda"}),
        dtypes=frozenset({torch.float32, torch.float16, torch.bfloat16}),
        backward_devices=frozenset({"cuda"}),
        supports_dropout=False,
        priority=None,
        extra_check=_flex_check,
    )
)


# ---- triton: fused kernels (optional extra). The module imports triton, so it is loaded on first call. ----
_TRITON_HEAD_DIMS = (16, 32, 64, 128)  # kept equal to triton_kernels.SUPPORTED_HEAD_DIMS (a test checks)


def _triton_fn(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    pattern: AttentionPattern,
    attention_mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    scale: float | None = None,
) -> torch.Tensor:
    from gmat.ops.triton_kernels import triton_attention

    return triton_attention(q, k, v, pattern, attention_mask, dropout_p, scale)


def _triton_check(q: torch.Tensor, pattern: AttentionPattern) -> list[str]:
    import importlib.util

    reasons = []
    if importlib.util.find_spec("triton") is None:
        reasons.append("triton: not installed (pip install 'gmat[triton]')")
    d = q.shape[-1]
    if d not in _TRITON_HEAD_DIMS:
        reasons.append(f"triton: head dim D={d} not in {_TRITON_HEAD_DIMS}")
    if q.device.type == "cuda" and torch.cuda.get_device_capability(q.device) < (8, 0):
        major, minor = torch.cuda.get_device_capability(q.device)
        reasons.append(f"triton: needs compute capability >= 8.0, got {major}.{minor}")
    return reasons


# Measured on an H200 (bf16, B=1, H=16, D=64, M=64; docs/benchmarks.md "GPU"): for the window pattern `triton`
# beat `blocked` forward+backward at every L from 4,096 to 262,144 (2.45 vs 4.45 ms at 4k, 4.17 vs 21.4 at 64k);
# for chunks `blocked` was faster up to L = 16,384 (1.64 vs 2.10 ms; a `triton` forward there is host-bound, ~0.3
# ms of host time per call) and `triton` from 65,536 on (3.56 vs 4.19 ms, 11.7 vs 15.7 at 256k). The crossover is
# counted in query rows over all heads, B*H*L, since the host cost is per call and the GPU work grows with every
# row. The dense pattern stays with `blocked`: one SDPA call (cuDNN / flash), not timed against `triton`.
# With many memory slots `triton`'s memory-row kernels fall behind: at L = 65,536 chunked, M = 0 / 64 were faster
# with `triton` (2.60 vs 2.63, 3.56 vs 4.19 ms), M = 256 / 1024 with `blocked` (5.13 vs 4.70, 11.7 vs 8.03 ms).
TRITON_CHUNKED_MIN_ROWS = 65536 * 16
TRITON_CHUNKED_MAX_MEMORY = 128


def _triton_auto(q: torch.Tensor, pattern: AttentionPattern) -> list[str]:
    if in_traced_graph():
        return ["triton: auto keeps blocked under torch.compile / tracing / export (triton is untested there)"]
    if pattern.kind == "dense":
        return ["triton: auto prefers blocked for the dense pattern (one SDPA call)"]
    if pattern.kind == "window":
        return []
    if pattern.num_memory > TRITON_CHUNKED_MAX_MEMORY:
        return [
            f"triton: auto prefers blocked for chunks with M > {TRITON_CHUNKED_MAX_MEMORY} (got {pattern.num_memory})"
        ]
    rows = q.shape[0] * q.shape[1] * (q.shape[2] - pattern.num_memory)
    if rows < TRITON_CHUNKED_MIN_ROWS:
        return [f"triton: auto prefers blocked for chunks below B*H*L = {TRITON_CHUNKED_MIN_ROWS:,} (got {rows:,})"]
    return []


register_backend(
    Backend(
        name="triton",
        fn=_triton_fn,
        devices=frozenset({"cuda"}),
        dtypes=frozenset({torch.float16, torch.bfloat16}),
        backward_devices=frozenset({"cuda"}),
        supports_dropout=False,
        priority=10,
        extra_check=_triton_check,
        auto_check=_triton_auto,
    )
)
