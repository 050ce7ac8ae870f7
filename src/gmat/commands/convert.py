"""``gmat convert --from DIR --to DIR --num-memory M --pattern KIND --max-length L``: BERT family -> GMAT."""

from __future__ import annotations

import argparse
import logging

from gmat.modeling.convert import convert_bert_to_gmat
from gmat.ops import PATTERN_KINDS

__all__ = ["add_cli_arguments", "cli_run"]

logger = logging.getLogger(__name__)


def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``gmat convert``."""
    parser.add_argument(
        "--from",
        dest="source",
        required=True,
        help="checkpoint directory (BERT, RoBERTa, XLM-RoBERTa, CamemBERT, ELECTRA, DistilBERT; the family is "
        "read from config.json) or 'minilm' (the packaged MiniLM)",
    )
    parser.add_argument("--to", dest="target", required=True, help="output GMAT checkpoint directory")
    parser.add_argument("--num-memory", type=int, required=True, help="number of memory slots M")
    parser.add_argument("--pattern", choices=PATTERN_KINDS, required=True, help="sparse attention pattern")
    parser.add_argument("--chunk-size", type=int, default=None, help="chunk size C (chunked only; default 128)")
    parser.add_argument("--window", type=int, default=None, help="one-sided window radius w (window only; default 64)")
    parser.add_argument(
        "--max-length",
        type=int,
        required=True,
        help="new max_position_embeddings; positions are extended by copying",
    )
    parser.add_argument("--backend", default="auto", help="attn_backend stored in the config (default: auto)")


def cli_run(args: argparse.Namespace) -> int:
    """Run ``gmat convert``; returns the exit status (2 with a logged reason on bad input)."""
    try:
        convert_bert_to_gmat(
            args.source,
            args.target,
            num_memory_tokens=args.num_memory,
            attention_pattern=args.pattern,
            chunk_size=args.chunk_size,
            attention_window=args.window,
            max_length=args.max_length,
            attn_backend=args.backend,
        )
    except ValueError as err:
        logger.error("gmat convert: %s", err)
        return 2
    return 0
