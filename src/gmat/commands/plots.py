"""Plots the commands write next to their results (matplotlib is imported only when a plot is drawn)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["plot_curves", "plot_demo"]


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_curves(run_dir: str | Path, metric: str) -> Path | None:
    """Plot training loss and evaluation ``metric`` from ``RUN_DIR/metrics.jsonl`` into ``curves.png``."""
    run_dir = Path(run_dir)
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return None
    plt = _pyplot()
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    train_rows = [r for r in rows if r.get("split") == "train"]
    eval_rows = [r for r in rows if r.get("split") == "eval" and metric in r]
    fig, (ax_loss, ax_metric) = plt.subplots(1, 2, figsize=(10, 3.8))
    ax_loss.plot([r["step"] for r in train_rows], [r["loss"] for r in train_rows], label="train")
    loss_rows = [r for r in eval_rows if "loss" in r]
    ax_loss.plot([r["step"] for r in loss_rows], [r["loss"] for r in loss_rows], "o-", label="eval")
    ax_loss.set(xlabel="step", ylabel="loss", title="loss")
    ax_loss.legend()
    ax_metric.plot([r["step"] for r in eval_rows], [r[metric] for r in eval_rows], "o-")
    ax_metric.set(xlabel="step", ylabel=metric, title=f"eval {metric}")
    fig.tight_layout()
    out = run_dir / "curves.png"
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def plot_demo(results: dict[str, Any], path: Path) -> None:
    """Bar chart of the demo's accuracies against chance."""
    plt = _pyplot()
    names = [r["name"] for r in results["runs"]]
    accs = [r["accuracy"] for r in results["runs"]]
    fig, ax = plt.subplots(figsize=(4.8, 3.4))
    bars = ax.bar(names, accs, color=["#999999", "#2a7ab9"][: len(names)])
    ax.axhline(results["chance"], color="k", ls="--", lw=1, label="chance")
    ax.bar_label(bars, fmt="%.2f")
    ax.set(
        ylim=(0, 1.05),
        ylabel="accuracy",
        title=f"majority, L={results['seq_len']}, C={results['chunk_size']}",
    )
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
