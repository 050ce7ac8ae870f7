"""``gmat train CONFIG.yaml [--set key=value ...] [--resume]``: train from a YAML run config.

Every task trains through the same loop (``gmat.training.loop.train``). The same command runs data-parallel
under ``torchrun --nproc_per_node N`` (DDP; NCCL on GPU, gloo on CPU).
"""

from __future__ import annotations

import argparse
import logging
import os

from gmat.commands.common import add_override_argument
from gmat.commands.plots import plot_curves
from gmat.training.checkpoint import CheckpointError
from gmat.training.config import load_config
from gmat.training.distributed import DistributedTimeoutError
from gmat.training.loop import train
from gmat.training.rundir import RunDirLockedError

__all__ = ["add_cli_arguments", "cli_run"]

logger = logging.getLogger(__name__)


def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``gmat train``."""
    parser.add_argument("config", help="YAML run config, e.g. configs/synthetic/majority-chunked-m8.yaml")
    add_override_argument(parser, "train.lr=3e-4 model.num_memory_tokens=32")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue exactly from RUN_DIR/checkpoints/LATEST (weights, optimizer, schedule, "
        "RNG and data position)",
    )
    parser.add_argument(
        "--stop-after",
        type=int,
        default=None,
        metavar="STEPS",
        help="stop with a checkpoint after this many steps of this invocation (resume later)",
    )


def cli_run(args: argparse.Namespace) -> int:
    """Run ``gmat train``; returns the exit status (2 for an invalid config, a bad checkpoint or a busy run_dir)."""
    try:
        config = load_config(args.config, args.overrides)
    except (OSError, ValueError) as err:
        logger.error("invalid config: %s", err)
        return 2
    try:
        results = train(config, resume=args.resume, stop_after=args.stop_after)
    except (CheckpointError, RunDirLockedError) as err:
        logger.error("%s", err)
        return 2
    except DistributedTimeoutError as err:
        logger.error("%s", err)
        return 1
    if results["finished"] and os.environ.get("RANK", "0") == "0":  # one process draws (torchrun sets RANK)
        plot_curves(config.run_dir, results["metric"])
    if results["eval"]:
        logger.info(
            "%s: step %d, eval %s = %.4f (best %.4f at step %d); results in %s/results.json",
            config.name or config.task.name,
            results["steps_done"],
            results["metric"],
            results["eval"][results["metric"]],
            results["best"]["value"],
            results["best"]["step"],
            config.run_dir,
        )
    return 0
