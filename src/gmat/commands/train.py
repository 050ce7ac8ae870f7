"""``gmat train CONFIG.yaml [--set key=value ...] [--resume]``: train from a YAML run config.

Every task trains through the same loop (``gmat.training.loop.train``). The same command runs data-parallel
under ``torchrun --nproc_per_node N`` (DDP; NCCL on GPU, gloo on CPU).

Exit status: 0 on success, 2 on invalid input (config, flags, files; one line, see ``gmat.cli``), 1 when the
run diverged (``TrainingDiverged``: too many consecutive non-finite steps).
"""

from __future__ import annotations

import argparse
import logging
import math
import os
from pathlib import Path

from gmat.commands.common import add_override_argument
from gmat.commands.plots import plot_curves
from gmat.training.config import load_config
from gmat.training.loop import train

__all__ = ["add_cli_arguments", "cli_run"]

logger = logging.getLogger(__name__)


def _positive_int(text: str) -> int:
    """An argparse type: an int >= 1 (argparse names the flag in its one-line error, exit 2)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``gmat train``."""
    parser.add_argument("config", help="YAML run config, e.g. configs/synthetic/majority-chunked-m8.yaml")
    add_override_argument(parser, "train.lr=3e-4 model.num_memory_tokens=32")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue exactly from RUN_DIR/checkpoints/LATEST (weights, optimizer, schedule, RNG and data position)",
    )
    parser.add_argument(
        "--stop-after",
        type=_positive_int,
        default=None,
        metavar="STEPS",
        help="stop with a checkpoint after this many steps of this invocation (resume later)",
    )
    parser.add_argument(
        "--allow-config-change",
        action="store_true",
        help="with --resume: accept a config that differs from RUN_DIR/config.yaml in keys that break an exact "
        "resume (each change is logged; the old file is kept as config.prev-<n>.yaml)",
    )


def cli_run(args: argparse.Namespace) -> int:
    """Run ``gmat train``; returns the exit status (2 for an invalid config, a bad checkpoint or a busy run_dir)."""
    try:
        config = load_config(args.config, args.overrides)
    except (OSError, ValueError) as err:
        logger.error("invalid config: %s", err)
        return 2
    run_dir = Path(config.run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        logger.error("invalid config: run_dir=%r is a file, not a directory", config.run_dir)
        return 2
    if args.allow_config_change and not args.resume:
        logger.error("--allow-config-change applies to --resume only")
        return 2
    # the library's errors (a corrupt checkpoint, a locked run_dir, a stuck rank, divergence) reach gmat.cli.main,
    # which reports them in one line (and with a traceback under --debug)
    results = train(
        config, resume=args.resume, stop_after=args.stop_after, allow_config_change=args.allow_config_change
    )
    trained = results["steps_done"] > 0
    if results["finished"] and trained and os.environ.get("RANK", "0") == "0":  # one process draws (torchrun sets RANK)
        plot_curves(config.run_dir, results["metric"])
    if results["eval"]:
        best = results["best"]
        logger.info(
            "%s: step %d, eval %s = %s (%s); results in %s/results.json",
            config.name or config.task.name,
            results["steps_done"],
            results["metric"],
            _number(results["eval"].get(results["metric"])),
            f"best {best['metric']} {_number(best['value'])} at step {best['step']}" if best else "no best checkpoint",
            config.run_dir,
        )
    return 0


def _number(value: object) -> str:
    return f"{value:.4f}" if isinstance(value, float) and math.isfinite(value) else str(value)
