"""``gmat eval``: a trained run on its task, or any saved model on a corpus (``mlm``) or a SQuAD file (``rc``).

* ``gmat eval CONFIG_OR_RUN_DIR [--checkpoint best|latest|DIR] [--split eval|test]`` — the run's own task;
* ``gmat eval mlm --model DIR --data CORPUS`` — masked-LM loss / perplexity / accuracy, split by chunk locality;
* ``gmat eval rc --model DIR --data SQUAD.json`` — EM / F1 overall and by the answer's distance.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable
from pathlib import Path

import torch

from gmat.commands.common import add_override_argument
from gmat.tasks.mlm import DEFAULT_CACHE_DIR, evaluate_mlm
from gmat.tasks.rc import evaluate_rc
from gmat.training import safe_json
from gmat.training.checkpoint import CheckpointError
from gmat.training.evaluate import evaluate_run

__all__ = [
    "add_cli_arguments",
    "add_loading_arguments",
    "add_mlm_arguments",
    "add_rc_arguments",
    "cli_run",
    "run_mlm",
    "run_rc",
]

logger = logging.getLogger(__name__)


def _int_at_least(low: int) -> Callable[[str], int]:
    """An argparse type: an int >= ``low`` (argparse names the flag in its one-line error, exit 2)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        return value

    parse.__name__ = f"int >= {low}"
    return parse


def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``gmat eval``."""
    parser.add_argument(
        "target",
        metavar="CONFIG_OR_RUN_DIR",
        help="a run directory or its YAML config (or the nested commands mlm / rc: see below)",
    )
    parser.add_argument("--checkpoint", default="best", help="'best' (default), 'latest', or a checkpoint directory")
    parser.add_argument(
        "--split",
        default="test",
        choices=("eval", "test"),
        help="data split (default: test, never used during training)",
    )
    add_override_argument(parser, "task.eval_size=1000")


def cli_run(args: argparse.Namespace) -> int:
    """Run ``gmat eval``: print ``{"run_dir", "checkpoint", "split", "metrics"}`` as JSON on stdout."""
    try:
        result = evaluate_run(args.target, checkpoint=args.checkpoint, split=args.split, overrides=args.overrides)
    except (OSError, ValueError, CheckpointError) as err:
        logger.error("%s", err)
        return 2
    print(safe_json.dumps(result, indent=2))
    return 0


def add_loading_arguments(parser: argparse.ArgumentParser, head: str) -> None:
    """``--allow-missing`` and ``--allow-random-head``: what a command may load that is not a complete model."""
    parser.add_argument(
        "--allow-missing",
        action="store_true",
        help="load the model although weights are missing (initialised at random) or unexpected (dropped); "
        "without it such a folder is refused, naming the tensors",
    )
    parser.add_argument(
        "--allow-random-head",
        action="store_true",
        help=f"score a model without a {head} head (e.g. a converted encoder) with a seeded random head, "
        'recorded as "random_head": true in the output; without it such a folder is refused',
    )


def add_mlm_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``gmat eval mlm``."""
    parser.add_argument("--model", required=True, help="saved model folder (GMAT or any masked-LM checkpoint)")
    parser.add_argument(
        "--data",
        required=True,
        help='corpus: .jsonl of {"text": ...} documents, .txt, a folder, or hf:NAME[:CONFIG][@SPLIT]',
    )
    parser.add_argument("--length", type=_int_at_least(2), default=None, help="L (default: the model's maximum length)")
    parser.add_argument("--batch-size", type=_int_at_least(1), default=8, help="examples per forward pass (default 8)")
    parser.add_argument(
        "--split-chunk-size",
        type=_int_at_least(1),
        default=None,
        help="C of the outside-chunk split (default: the model's chunk size, else 128)",
    )
    parser.add_argument(
        "--max-examples", type=_int_at_least(0), default=0, help="evenly spaced examples to use (0 = all)"
    )
    parser.add_argument("--seed", type=int, default=1234, help="masking seed (same seed = same masked tokens)")
    parser.add_argument(
        "--memory-swap",
        action="store_true",
        help="control: score each example with the memory rows of the previous one in its batch (GMAT, M > 0)",
    )
    parser.add_argument("--cache-dir", default=DEFAULT_CACHE_DIR, help="token cache folder")
    parser.add_argument("--tokenizer", default=None, help="tokenizer folder (default: model folder, else MiniLM)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument(
        "--threads", type=_int_at_least(0), default=0, help="CPU threads of torch (0 = torch's default)"
    )
    parser.add_argument(
        "--output",
        default=None,
        help="write the JSON here (default MODEL/eval-mlm-<data>-L<L>.json; '-' = do not write)",
    )
    add_loading_arguments(parser, "masked-LM")


def run_mlm(args: argparse.Namespace) -> int:
    """Run ``gmat eval mlm``: print the metrics JSON and write it to ``--output``; 2 on bad input."""
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        result = evaluate_mlm(
            args.model,
            args.data,
            length=args.length,
            batch_size=args.batch_size,
            split_chunk_size=args.split_chunk_size,
            max_examples=args.max_examples,
            seed=args.seed,
            cache_dir=args.cache_dir,
            tokenizer=args.tokenizer,
            device=args.device,
            progress=True,
            memory_swap=args.memory_swap,
            allow_missing=getattr(args, "allow_missing", False),  # False: strict, for hand-built Namespaces
            allow_random_head=getattr(args, "allow_random_head", False),
        )
    except (OSError, ValueError, CheckpointError) as err:  # CorpusError is a ValueError
        logger.error("%s", err)
        return 2
    text = safe_json.dumps(result, indent=2)
    print(text)
    if args.output != "-":
        out = (
            Path(args.output)
            if args.output
            else (
                Path(args.model)
                / f"eval-mlm-{Path(str(args.data)).stem}-L{result['length']}{'-swap' if args.memory_swap else ''}.json"
            )
        )
        out.write_text(text + "\n")
        logger.info("wrote %s", out)
    return 0


def add_rc_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``gmat eval rc``."""
    parser.add_argument("--model", required=True, help="saved QA model directory (with its tokenizer)")
    parser.add_argument("--data", required=True, help="SQuAD-format .json or .json.gz file")
    parser.add_argument(
        "--length",
        default="article",
        help="document length L in tokens, or 'article' (default) for whole documents",
    )
    parser.add_argument(
        "--mode",
        choices=("long", "windows"),
        default=None,
        help="featurisation (default: from the model's rc_settings.json, else long)",
    )
    parser.add_argument(
        "--max-questions",
        type=_int_at_least(0),
        default=0,
        help="score a deterministic subsample of this many questions (default: all)",
    )
    parser.add_argument("--max-answer-length", type=_int_at_least(1), default=None, help="in tokens (default 30)")
    parser.add_argument(
        "--batch-size", type=_int_at_least(1), default=8, help="features per inference batch (default 8)"
    )
    parser.add_argument(
        "--out",
        default=None,
        help="directory for predictions.json, per_question.jsonl and metrics.json "
        "(default: MODEL/eval-rc-<data>-<length>)",
    )
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    add_loading_arguments(parser, "question-answering")


def run_rc(args: argparse.Namespace) -> int:
    """Run ``gmat eval rc``: write predictions and metrics, print EM / F1 as JSON; 2 on bad input."""
    out = args.out or str(Path(args.model) / f"eval-rc-{Path(args.data).name.split('.')[0]}-{args.length}")
    try:
        result = evaluate_rc(
            args.model,
            args.data,
            args.length,
            mode=args.mode,
            max_questions=args.max_questions,
            batch_size=args.batch_size,
            max_answer_length=args.max_answer_length,
            out_dir=out,
            device=args.device,
            allow_missing=getattr(args, "allow_missing", False),  # False: strict, for hand-built Namespaces
            allow_random_head=getattr(args, "allow_random_head", False),
        )
    except (OSError, ValueError, CheckpointError) as err:
        logger.error("gmat eval rc: %s", err)
        return 2
    print(
        safe_json.dumps(
            {
                k: result[k]
                for k in ("em", "f1", "count", "answers_truncated", "by_distance", "length", "mode")
                + ("random_head", "random_head_seed")
                if k in result
            }
            | {"out": out},
            indent=2,
        )
    )
    return 0
