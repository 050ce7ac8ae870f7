"""What the experiment scripts share: train (or reuse) one run; run many on a process pool; collect the rows.

Used by ``mlm_experiment.py``, ``compression_experiment.py`` and ``rc_report.py`` (run as scripts, so this
folder is on the path).
"""

from __future__ import annotations

import argparse
import functools
import json
import multiprocessing as mp
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def train_or_reuse(config_path: Path, run_dir: Path, seed: int = 0) -> tuple[Any, dict]:
    """``gmat train CONFIG --set run_dir=RUN_DIR`` on one thread, unless RUN_DIR holds a finished run.

    ``seed`` > 0 adds ``train.seed=S task.seed=S`` (another initialisation, data order and masking). An
    unfinished run resumes from its last checkpoint. Returns ``(config, results.json)``.
    """
    import torch

    from gmat.training.config import load_config
    from gmat.training.loop import train

    torch.set_num_threads(1)
    seeds = [f"train.seed={seed}", f"task.seed={seed}"] if seed else []
    config = load_config(config_path, [f"run_dir={run_dir}", "train.progress=false", *seeds])
    results_path = run_dir / "results.json"
    if results_path.is_file() and json.loads(results_path.read_text()).get("finished"):
        return config, json.loads(results_path.read_text())
    return config, train(config, resume=True)


def mean_two_se(diffs: list[float]) -> dict:
    """``{"mean", "two_se"}`` of paired differences: their mean and two standard errors of it."""
    two_se = 2 * statistics.stdev(diffs) / len(diffs) ** 0.5 if len(diffs) > 1 else float("nan")
    return {"mean": statistics.fmean(diffs) if diffs else float("nan"), "two_se": two_se}


def parser(description: str, runs: tuple[str, ...], choices: tuple[str, ...], workers: int, out: Path):
    """The scripts' common command line: ``--runs``, ``--workers``, ``--out``, ``--aggregate-only``."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--runs", nargs="+", default=list(runs), choices=choices)
    p.add_argument("--workers", type=int, default=workers)
    p.add_argument("--out", default=str(out))
    p.add_argument("--aggregate-only", action="store_true", help="only collect finished runs")
    return p


def _safe(run_one: Callable[[str], dict], name: str) -> dict:
    try:
        return run_one(name)
    except Exception as err:  # one broken run must not stop the others; it is reported instead
        return {"setting": name, "error": repr(err)}


def run_all(run_one: Callable[[str], dict], names: list[str], workers: int, headline: Callable[[dict], str]) -> None:
    """Run ``run_one(name)`` for every name on ``workers`` spawned processes; print one line per finished run."""
    t0 = time.perf_counter()
    with mp.get_context("spawn").Pool(workers) as pool:
        for row in pool.imap_unordered(functools.partial(_safe, run_one), names):
            done = row.get("error") or headline(row)
            print(f"[{time.perf_counter() - t0:6.0f}s] {row['setting']}: {done}", flush=True)


def collect(run_one: Callable[[str], dict], names: list[str]) -> list[dict]:
    """The rows of the finished runs among ``names`` (in that order); failures are printed and left out."""
    rows = [_safe(run_one, n) for n in names]
    for row in rows:
        if "error" in row:
            print(f"{row['setting']}: {row['error']}")
    return [r for r in rows if "error" not in r]


def write_results(
    out: str | Path, stem: str, rows: list[dict], markdown: Callable[[list[dict]], str], plot: Callable
) -> None:
    """Write ``OUT/STEM.json`` (the rows), ``OUT/STEM-table.md`` and the plot (``plot(rows, out)``); print the table."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(rows, indent=1) + "\n")
    (out / f"{stem}-table.md").write_text(markdown(rows))
    if rows:
        plot(rows, out)
    print(markdown(rows))
