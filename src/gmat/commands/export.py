"""``gmat export onnx|bert --model DIR --out PATH``: a GMAT checkpoint as an ONNX graph or a plain BERT.

``onnx``: a graph with dynamic batch and length, checked against the eager model in ONNX Runtime before the
command succeeds. ``bert``: a model with M=0 and the dense pattern as a transformers BERT checkpoint folder,
checked against the GMAT model. ``--no-verify`` skips the check. See ``gmat.modeling.export``.
"""

from __future__ import annotations

import argparse
import logging

from gmat.modeling.export import export_bert, export_onnx

__all__ = ["add_cli_arguments", "cli_run"]

logger = logging.getLogger(__name__)


def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``gmat export``."""
    parser.add_argument("format", choices=["onnx", "bert"], help="export format: onnx, or bert (M=0, dense only)")
    parser.add_argument("--model", required=True, help="GMAT checkpoint directory (gmat convert / gmat train)")
    parser.add_argument(
        "--out", required=True, help="onnx: the .onnx file (weights beside it in FILE.data); bert: the folder"
    )
    parser.add_argument(
        "--backend",
        default="blocked",
        help="onnx: attention backend the graph is traced through (default: blocked, whose shapes stay dynamic)",
    )
    parser.add_argument(
        "--no-verify",
        dest="verify",
        action="store_false",
        help="skip running the export (in ONNX Runtime, or as transformers' BERT) against the GMAT model",
    )


def cli_run(args: argparse.Namespace) -> int:
    """Run ``gmat export``; 2 with a one-line reason on bad input, 1 when the exported graph disagrees."""
    try:
        if args.format == "bert":
            export_bert(args.model, args.out, verify=args.verify)
        else:
            export_onnx(args.model, args.out, attn_backend=args.backend, verify=args.verify)
    except ValueError as err:
        logger.error("gmat export: %s", err)
        return 2
    except RuntimeError as err:
        logger.error("gmat export: %s", err)
        return 1
    logger.info("gmat export: wrote %s", args.out)
    return 0
