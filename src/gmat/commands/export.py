"""``gmat export onnx --model DIR --out FILE``: a GMAT checkpoint as an ONNX graph (dynamic batch and length).

The file is checked against the eager model in ONNX Runtime before the command succeeds (``--no-verify``
skips that). See ``gmat.modeling.export`` for the inputs and outputs of the graph.
"""

from __future__ import annotations

import argparse
import logging

from gmat.modeling.export import export_onnx

__all__ = ["add_cli_arguments", "cli_run"]

logger = logging.getLogger(__name__)


def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``gmat export``."""
    parser.add_argument("format", choices=["onnx"], help="export format (onnx)")
    parser.add_argument("--model", required=True, help="GMAT checkpoint directory (gmat convert / gmat train)")
    parser.add_argument("--out", required=True, help="the .onnx file to write (weights go beside it in FILE.data)")
    parser.add_argument(
        "--backend",
        default="blocked",
        help="attention backend the graph is traced through (default: blocked, whose shapes stay dynamic)",
    )
    parser.add_argument(
        "--no-verify",
        dest="verify",
        action="store_false",
        help="skip running the file in ONNX Runtime against the PyTorch model",
    )


def cli_run(args: argparse.Namespace) -> int:
    """Run ``gmat export``; 2 with a one-line reason on bad input, 1 when the exported graph disagrees."""
    try:
        export_onnx(args.model, args.out, attn_backend=args.backend, verify=args.verify)
    except ValueError as err:
        logger.error("gmat export: %s", err)
        return 2
    except RuntimeError as err:
        logger.error("gmat export: %s", err)
        return 1
    logger.info("gmat export: wrote %s", args.out)
    return 0
