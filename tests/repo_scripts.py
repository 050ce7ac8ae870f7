"""Import the repository's stand-alone scripts (benchmarks/, scripts/) as modules in tests."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]


def load_script(relative_path: str) -> ModuleType:
    """The module of ``ROOT/relative_path`` (e.g. ``"scripts/rc_report.py"``), executed once per call.

    The script's folder is put on ``sys.path`` while it loads, as ``python scripts/x.py`` does, so it can import
    its siblings (``experiment_runs``).
    """
    path = ROOT / relative_path
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(path.parent))
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(path.parent))
    return module
