"""``gmat predict qa --model DIR --question Q --document FILE``: the answer span, its score and place, as JSON."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from gmat.commands.evaluate import add_loading_arguments
from gmat.modeling.loading import CheckpointError
from gmat.tasks.predict_qa import predict_answer

__all__ = ["add_cli_arguments", "cli_run"]

logger = logging.getLogger(__name__)


def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``gmat predict qa``."""
    parser.add_argument("kind", choices=("qa",), help="what to predict (qa: an answer span in a document)")
    parser.add_argument("--model", required=True, help="saved QA model directory (with its tokenizer)")
    parser.add_argument("--question", required=True, help="the question")
    parser.add_argument("--document", required=True, help="UTF-8 text file holding the document")
    parser.add_argument("--max-answer-length", type=int, default=None, help="in tokens (default 30)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    add_loading_arguments(parser, "question-answering")


def cli_run(args: argparse.Namespace) -> int:
    """Run ``gmat predict qa``: print the answer, its score and character span as JSON; 2 on bad input."""
    try:
        document = Path(args.document).read_text(encoding="utf-8")
        result = predict_answer(
            args.model,
            args.question,
            document,
            max_answer_length=args.max_answer_length,
            device=args.device,
            allow_missing=getattr(args, "allow_missing", False),  # False: strict, for hand-built Namespaces
            allow_random_head=getattr(args, "allow_random_head", False),
        )
    except (OSError, ValueError, CheckpointError) as err:
        logger.error("gmat predict qa: %s", err)
        return 2
    print(json.dumps(result, ensure_ascii=False))
    return 0
