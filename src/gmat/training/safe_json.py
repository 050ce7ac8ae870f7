"""JSON that stays JSON: non-finite floats become ``null`` and are flagged, never a bare ``NaN``/``Infinity``.

``json.dumps`` writes ``NaN`` by default, which no strict JSON reader accepts. Every JSON file a run writes
(``metrics.jsonl``, ``results.json``, ``best/best.json``, evaluation outputs) goes through ``dumps``: a
non-finite number is written as ``null`` and its dotted key is listed under ``"nonfinite"`` of the top-level
object; ``allow_nan=False`` makes any slip raise instead of writing invalid JSON.
"""

from __future__ import annotations

import json
import math
from typing import Any

__all__ = ["dumps", "finite_or_none"]


def finite_or_none(obj: Any, path: str = "", found: list[str] | None = None) -> Any:
    """A copy of ``obj`` with every non-finite float replaced by None; their dotted keys go to ``found``."""
    if isinstance(obj, float) and not math.isfinite(obj):
        if found is not None:
            found.append(path or "<value>")
        return None
    if isinstance(obj, dict):
        return {k: finite_or_none(v, f"{path}.{k}" if path else str(k), found) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_or_none(v, f"{path}[{i}]", found) for i, v in enumerate(obj)]
    return obj


def dumps(obj: Any, **kwargs: Any) -> str:
    """``json.dumps`` with non-finite floats written as ``null`` (listed under ``"nonfinite"`` of a dict).

    Raises:
        ValueError: if a non-finite value is still present (``allow_nan=False``).
    """
    found: list[str] = []
    clean = finite_or_none(obj, found=found)
    if found and isinstance(clean, dict):
        clean["nonfinite"] = found
    return json.dumps(clean, allow_nan=False, **kwargs)
