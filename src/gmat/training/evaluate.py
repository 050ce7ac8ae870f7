"""Evaluate a trained run on its task (``gmat eval CONFIG_OR_RUN_DIR``)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from gmat.tasks.registry import create_task
from gmat.training.checkpoint import latest_checkpoint, load_model_weights
from gmat.training.config import load_config
from gmat.training.loop import evaluate_model

__all__ = ["evaluate_run"]

logger = logging.getLogger(__name__)


def _resolve(target: Path, overrides: list[str]) -> tuple[Any, Path]:
    if target.is_dir():
        config = load_config(target / "config.yaml", overrides)
        return config, target
    config = load_config(target, overrides)
    return config, Path(config.run_dir)


def evaluate_run(
    target: str | Path, *, checkpoint: str = "best", split: str = "eval", overrides: list[str] | None = None
) -> dict[str, Any]:
    """Load a trained model and evaluate it.

    Args:
        target: a run directory (with ``config.yaml``) or the YAML config of a run (uses its run_dir).
        checkpoint: ``"best"`` (``RUN_DIR/best``), ``"latest"`` (``RUN_DIR/checkpoints/LATEST``) or the path
            of a checkpoint directory.
        split: ``"eval"`` or ``"test"`` (a split never seen in training).
        overrides: ``key=value`` config overrides (e.g. ``task.eval_size=1000``).

    Returns:
        ``{"run_dir", "checkpoint", "split", "metrics"}``.

    Raises:
        FileNotFoundError: if there is no such checkpoint.
        gmat.training.checkpoint.CheckpointError: if its files are unreadable (the message names the file).
    """
    config, run_dir = _resolve(Path(target), overrides or [])
    if checkpoint == "best":
        weights = run_dir / "best"
    elif checkpoint == "latest":
        weights = latest_checkpoint(run_dir / "checkpoints")
    else:
        weights = Path(checkpoint)
    if weights is None or not weights.is_dir():
        raise FileNotFoundError(f"no {checkpoint!r} checkpoint for run {run_dir} (looked for {weights})")
    task = create_task(config.task)
    model = task.build_model(config.model)
    load_model_weights(weights, model)
    metrics = evaluate_model(model, task, config.train.eval_batch_size, split=split)
    return {"run_dir": str(run_dir), "checkpoint": str(weights), "split": split, "metrics": metrics}
