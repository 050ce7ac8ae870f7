"""The GMAT attention op: M global memory slots plus chunked / window / dense local attention.

Shape letters used throughout: B batch, H heads, L sequence length, M memory slots, D head dim,
d model width, C chunk size, w window radius (one-sided, inclusive). Tensors entering the op are
``(B, H, M+L, D)`` with the memory rows first.
"""

from gmat.ops.dispatch import (
    Backend,
    get_backend,
    gmat_attention,
    in_traced_graph,
    list_backends,
    not_supported_reasons,
    register_backend,
    select_backend,
)
from gmat.ops.pattern import PATTERN_KINDS, AttentionPattern

__all__ = [
    "PATTERN_KINDS",
    "AttentionPattern",
    "Backend",
    "get_backend",
    "gmat_attention",
    "in_traced_graph",
    "list_backends",
    "not_supported_reasons",
    "register_backend",
    "select_backend",
]
