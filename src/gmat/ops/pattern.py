"""The GMAT attention pattern: the single place that knows which query may attend to which key.

The hidden state is ``Z = [X_mem ; X_seq]`` of shape ``(B, M+L, d)``, memory rows first. Index
``t < M`` is memory slot ``t``; index ``t >= M`` is sequence position ``t - M``.

Example, ``AttentionPattern(num_memory=2, kind="chunked", chunk_size=3)`` with L = 6
(``m`` memory, ``s`` sequence; ``1`` = allowed)::

            m m | s s s s s s
        m   1 1 | 1 1 1 1 1 1
        m   1 1 | 1 1 1 1 1 1
        s   1 1 | 1 1 1 . . .
        s   1 1 | 1 1 1 . . .
        s   1 1 | 1 1 1 . . .
        s   1 1 | . . . 1 1 1
        s   1 1 | . . . 1 1 1
        s   1 1 | . . . 1 1 1

Padding (``attention_mask`` False at sequence position j) removes key column ``M + j`` for every query.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

__all__ = ["AttentionPattern", "PATTERN_KINDS", "and_masks", "or_masks"]

PATTERN_KINDS = ("chunked", "window", "dense")
DEFAULT_CHUNK_SIZE = 128  # C of a chunked pattern whose size is not given (``AttentionPattern.from_fields``)
DEFAULT_WINDOW = 64  # w of a window pattern whose size is not given: a band of 2w+1 ≈ one 128-chunk

MaskFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def or_masks(*fns: MaskFn) -> MaskFn:
    """Combine predicates ``(q_idx, kv_idx) -> bool tensor`` with logical or."""

    def combined(q_idx: torch.Tensor, kv_idx: torch.Tensor) -> torch.Tensor:
        out = fns[0](q_idx, kv_idx)
        for fn in fns[1:]:
            out = out | fn(q_idx, kv_idx)
        return out

    return combined


def and_masks(*fns: MaskFn) -> MaskFn:
    """Combine predicates ``(q_idx, kv_idx) -> bool tensor`` with logical and."""

    def combined(q_idx: torch.Tensor, kv_idx: torch.Tensor) -> torch.Tensor:
        out = fns[0](q_idx, kv_idx)
        for fn in fns[1:]:
            out = out & fn(q_idx, kv_idx)
        return out

    return combined


def _check_int(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")


_OWN_NAMES = {"num_memory": "num_memory", "kind": "kind", "chunk_size": "chunk_size", "window": "window"}
_CONFIG_NAMES = {
    "num_memory": "num_memory_tokens",
    "kind": "attention_pattern",
    "chunk_size": "chunk_size",
    "window": "attention_window",
}


def _validate(num_memory: object, kind: object, chunk_size: object, window: object, names: dict[str, str]) -> None:
    """The kind <-> size rule, written once: each kind takes exactly its own size (errors use ``names``)."""
    _check_int(names["num_memory"], num_memory, 0)
    if kind not in PATTERN_KINDS:
        raise ValueError(f"{names['kind']} must be one of {PATTERN_KINDS}, got {kind!r}")
    for size, size_kind, minimum in (("chunk_size", "chunked", 1), ("window", "window", 0)):
        value = chunk_size if size == "chunk_size" else window
        if kind == size_kind:
            if value is None:
                raise ValueError(f"{names[size]} is required for {names['kind']}={kind!r}, got None")
            _check_int(names[size], value, minimum)
        elif value is not None:
            raise ValueError(
                f"{names[size]} is only valid for {names['kind']}={size_kind!r}, got {value!r} "
                f"with {names['kind']}={kind!r}"
            )


@dataclass(frozen=True)
class AttentionPattern:
    """Memory slots plus a sparse pattern over the sequence (docs/design.md §1).

    Args:
        num_memory: M, the number of global memory slots (rows ``0..M-1`` of the hidden state).
        kind: ``"chunked"`` (disjoint chunks of ``chunk_size``), ``"window"`` (band of one-sided radius
            ``window``, inclusive) or ``"dense"`` (every sequence key).
        chunk_size: C, required for ``"chunked"``, must be unset otherwise.
        window: w, required for ``"window"``, must be unset otherwise.

    Raises:
        ValueError: on an unknown kind, a missing or superfluous size, or a negative/zero size.
    """

    num_memory: int
    kind: str
    chunk_size: int | None = None
    window: int | None = None

    def __post_init__(self) -> None:
        _validate(self.num_memory, self.kind, self.chunk_size, self.window, _OWN_NAMES)

    @classmethod
    def from_fields(
        cls,
        num_memory_tokens: int,
        attention_pattern: str,
        chunk_size: int | None = None,
        attention_window: int | None = None,
        *,
        prefix: str = "",
    ) -> AttentionPattern:
        """The pattern of a model config or run config, which spell its fields as ``GmatConfig`` does.

        The size of the kind in use defaults to ``DEFAULT_CHUNK_SIZE`` / ``DEFAULT_WINDOW`` when None. This is
        the one rule every config goes through, so its errors name the caller's keys: with
        ``prefix="model."`` a bad size reads ``model.chunk_size must be ...``.

        Raises:
            ValueError: as ``AttentionPattern``, naming ``prefix`` + the config's field name.
        """
        if attention_pattern == "chunked" and chunk_size is None:
            chunk_size = DEFAULT_CHUNK_SIZE
        if attention_pattern == "window" and attention_window is None:
            attention_window = DEFAULT_WINDOW
        names = {key: prefix + name for key, name in _CONFIG_NAMES.items()}
        _validate(num_memory_tokens, attention_pattern, chunk_size, attention_window, names)
        return cls(num_memory_tokens, attention_pattern, chunk_size, attention_window)

    def config_fields(self) -> dict[str, int | str | None]:
        """The four ``GmatConfig`` fields of this pattern (the inverse of ``from_fields``)."""
        return {
            "num_memory_tokens": self.num_memory,
            "attention_pattern": self.kind,
            "chunk_size": self.chunk_size,
            "attention_window": self.window,
        }

    # ---- what a backend needs for one call ------------------------------------------------------------
    def key_valid(self, attention_mask: torch.Tensor | None) -> torch.Tensor | None:
        """Validity of every key of ``[mem ; seq]``: memory slots are always real.

        Args:
            attention_mask: ``(B, L)`` over sequence positions (bool or 0/1 ints; True/1 = real token), or None.

        Returns:
            ``(B, M+L)`` bool, ``cat(ones(B, M), attention_mask)``; None when ``attention_mask`` is None.
        """
        if attention_mask is None:
            return None
        mask = attention_mask.to(torch.bool)
        return torch.cat([mask.new_ones(mask.shape[0], self.num_memory), mask], dim=1)

    def for_length(self, seq_len: int) -> AttentionPattern:
        """The cheapest pattern that allows the same pairs as this one at sequence length ``seq_len``.

        A chunk of ``C >= L`` or a window of ``w >= L - 1`` covers the whole sequence, so it is ``"dense"``
        there; any other pattern is returned unchanged. Backends use it so that a chunk or window larger than
        the sequence costs what the sequence costs.
        """
        covers = (self.kind == "chunked" and self.chunk_size >= seq_len) or (
            self.kind == "window" and self.window >= seq_len - 1
        )
        return AttentionPattern(self.num_memory, "dense") if covers else self

    # ---- predicates over sequence indices (memory excluded) ---------------------------------------
    def local_fn(self) -> MaskFn:
        """Predicate ``N(i) ∋ j`` over *sequence* indices i, j (tensors, broadcastable)."""
        if self.kind == "chunked":
            c = self.chunk_size
            return lambda i, j: (i // c) == (j // c)
        if self.kind == "window":
            w = self.window
            return lambda i, j: (i - j).abs() <= w
        return lambda i, j: torch.ones_like(i == j)

    def mask_fn(self) -> MaskFn:
        """Predicate over joint indices ``t ∈ [0, M+L)`` of ``[mem ; seq]`` (padding not included).

        A query may see a key if either is a memory slot, or both are sequence positions with
        ``j ∈ N(i)``.
        """
        m = self.num_memory
        local = self.local_fn()

        def is_memory_query(q: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
            return q < m

        def is_memory_key(q: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
            return kv < m

        def local_pair(q: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
            return (q >= m) & (kv >= m) & local(q - m, kv - m)

        return or_masks(is_memory_query, is_memory_key, local_pair)

    def to_dense(
        self, seq_len: int, attention_mask: torch.Tensor | None = None, device: torch.device | str | None = None
    ) -> torch.Tensor:
        """Materialise the boolean mask over ``[mem ; seq]``.

        Args:
            seq_len: L.
            attention_mask: optional ``(B, L)`` bool, True = real token.
            device: where to build it (defaults to the mask's device, else CPU).

        Returns:
            ``(M+L, M+L)`` bool without padding, or ``(B, 1, M+L, M+L)`` with it. True = may attend.
        """
        if device is None:
            device = attention_mask.device if attention_mask is not None else "cpu"
        n = self.num_memory + seq_len
        idx = torch.arange(n, device=device)
        allowed = self.mask_fn()(idx[:, None], idx[None, :])  # (M+L, M+L)
        if attention_mask is None:
            return allowed
        key_valid = self.key_valid(attention_mask.to(device))  # (B, M+L)
        return allowed[None, None] & key_valid[:, None, None, :]  # (B, 1, M+L, M+L)

    def to_ascii(self, seq_len: int) -> str:
        """Render the mask for a small L as rows of ``1``/``.`` (for docs and golden tests)."""
        dense = self.to_dense(seq_len)
        return "\n".join("".join("1" if x else "." for x in row.tolist()) for row in dense)

    def allowed_pairs(self, seq_len: int) -> int:
        """Number of (query, key) pairs the pattern allows without padding (for FLOP counting)."""
        m, n = self.num_memory, seq_len
        if self.kind == "dense":
            local = n * n
        elif self.kind == "chunked":
            full, rest = divmod(n, self.chunk_size)
            local = full * self.chunk_size**2 + rest * rest
        else:
            w = self.window
            i = torch.arange(n, dtype=torch.int64)
            local = int((torch.clamp(i + w, max=n - 1) - torch.clamp(i - w, min=0) + 1).sum())
        return m * (m + n) + n * m + local
