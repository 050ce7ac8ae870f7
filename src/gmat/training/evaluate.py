"""``gmat eval CONFIG_OR_RUN_DIR``: evaluate a saved model on its task and print the metrics as JSON."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

from gmat.cli import add_override_argument

__all__ = ["add_cli_arguments", "cli_run", "evaluate_run"]

logger = logging.getLogger(__name__)


def _resolve(target: Path, overrides: list[str]) -> tuple[Any, Path]:
    from gmat.training.config import load_config

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
    from gmat.training.checkpoint import latest_checkpoint, load_model_weights
    from gmat.training.loop import build_model, evaluate_model, make_any_task

    config, run_dir = _resolve(Path(target), overrides or [])
    if checkpoint == "best":
        weights = run_dir / "best"
    elif checkpoint == "latest":
        weights = latest_checkpoint(run_dir / "checkpoints")
    else:
        weights = Path(checkpoint)
    if weights is None or not weights.is_dir():
        raise FileNotFoundError(f"no {checkpoint!r} checkpoint for run {run_dir} (looked for {weights})")
    task = make_any_task(config.task)
    model = build_model(config, task)
    load_model_weights(weights, model)
    metrics = evaluate_model(model, task, config.train.eval_batch_size, split=split)
    return {"run_dir": str(run_dir), "checkpoint": str(weights), "split": split, "metrics": metrics}


def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``gmat eval``."""
    parser.add_argument("target", metavar="CONFIG_OR_RUN_DIR", help="a run directory or its YAML config")
    parser.add_argument(
        "--checkpoint", default="best", help="'best' (default), 'latest', or a checkpoint directory"
    )
    parser.add_argument(
        "--split",
        default="test",
        choices=("eval", "test"),
        help="data split (default: test, never used during training)",
    )
    add_override_argument(parser, "task.eval_size=1000")


def cli_run(args: argparse.Namespace) -> int:
    """Run ``gmat eval``: print ``{"run_dir", "checkpoint", "split", "metrics"}`` as JSON on stdout."""
    from gmat.training.checkpoint import CheckpointError

    try:
        result = evaluate_run(
            args.target, checkpoint=args.checkpoint, split=args.split, overrides=args.overrides
        )
    except (OSError, ValueError, CheckpointError) as err:
        logger.error("%s", err)
        return 2
    print(json.dumps(result, indent=2))
    return 0
