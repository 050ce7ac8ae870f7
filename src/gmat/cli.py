"""The ``gmat`` command: demo | train | eval | predict | convert | export. Thin: finds the subcommand's module.

Each subcommand is a module of ``gmat.commands`` exposing ``add_cli_arguments(parser)`` and
``cli_run(args) -> int``; a module is imported only when its subcommand runs, so ``gmat --help`` stays fast.
Task-specific evaluators (``gmat eval mlm ...``, ``gmat eval rc ...``) are nested commands with their own
arguments. Benchmarks are scripts outside the package (``benchmarks/``).

Errors: bad input (an invalid config or flag, a missing or corrupt file, unreadable data) is reported in one
line, ``gmat <command>: <message>``, with exit status 2 and no traceback; a diverged training run exits
with 1. ``--debug`` (or ``GMAT_DEBUG=1``) re-raises instead, with the full traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import re
import sys
import textwrap

# subcommand -> (module providing add_cli_arguments / cli_run, one-line help)
_SUBCOMMANDS = {
    "demo": ("gmat.commands.demo", "train chunked M=0 vs GMAT on the majority task and compare"),
    "train": ("gmat.commands.train", "train a model from a YAML config"),
    "eval": ("gmat.commands.evaluate", "evaluate a saved run (or: gmat eval mlm ... / gmat eval rc ...)"),
    "predict": ("gmat.commands.predict", "predict with a trained model (qa: the answer span in a document)"),
    "convert": ("gmat.commands.convert", "convert a BERT-family checkpoint into a GMAT checkpoint"),
    "export": ("gmat.commands.export", "export a saved GMAT model (onnx: dynamic batch and length, verified)"),
}

# (command, word) -> (module, add-arguments function, run function, help)
_NESTED = {
    ("eval", "mlm"): (
        "gmat.commands.evaluate",
        "add_mlm_arguments",
        "run_mlm",
        "masked-LM loss / perplexity / accuracy of any saved model on any corpus",
    ),
    ("eval", "rc"): (
        "gmat.commands.evaluate",
        "add_rc_arguments",
        "run_rc",
        "score a QA model on a SQuAD-format file (EM/F1 overall and by answer distance)",
    ),
}


# Exceptions of the library that describe the user's input (their message names the key, flag or file): one
# line and exit status 2, or the exception's own ``exit_code`` (a failed run, not bad input: TrainingDiverged and
# DistributedTimeoutError exit 1). Library classes are
# matched by name so that this module imports nothing heavy.
_USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError, PermissionError)
_USER_ERROR_NAMES = frozenset(
    {"CheckpointError", "CorpusError", "TrainingDiverged", "RunDirLockedError", "DistributedTimeoutError"}
)
_DEBUG_HELP = "show the full traceback of an error (also GMAT_DEBUG=1)"


def _is_user_error(err: BaseException) -> bool:
    return isinstance(err, _USER_ERRORS) or any(c.__name__ in _USER_ERROR_NAMES for c in type(err).__mro__)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The argument parser; only ``command``'s module is imported (startup stays fast).

    Args:
        command: the subcommand whose arguments to load; None loads all of them.
    """
    parser = argparse.ArgumentParser(prog="gmat", description=__doc__.splitlines()[0])
    parser.add_argument("--log-level", default="INFO", help="logging level (default: INFO)")
    parser.add_argument("--debug", action="store_true", help=_DEBUG_HELP)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (module_name, help_text) in _SUBCOMMANDS.items():
        loaded = command is None or command == name
        p = sub.add_parser(
            name,
            help=help_text,
            description=help_text,
            epilog=_nested_epilog(name) if loaded else None,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=_DEBUG_HELP)
        if loaded:
            module = importlib.import_module(module_name)
            module.add_cli_arguments(p)
            p.set_defaults(_run=module.cli_run)
    return parser


def _nested_epilog(command: str) -> str | None:
    """The nested commands of ``command`` with their usage lines, for ``gmat COMMAND --help`` (None if none)."""
    keys = [key for key in _NESTED if key[0] == command]
    if not keys:
        return None
    lines = ["nested commands (each has its own --help):"]
    for key in keys:
        usage = " ".join(build_nested_parser(key).format_usage().split()).removeprefix("usage: ")
        usage = re.sub(r"\[[^\]]*\]", lambda m: m.group(0).replace(" ", "\0"), usage)  # keep [--opt VALUE] whole
        wrapped = textwrap.wrap(usage, 100, initial_indent="    ", subsequent_indent="      ", break_on_hyphens=False)
        lines += [f"  {' '.join(key)}: {_NESTED[key][3]}", *(line.replace("\0", " ") for line in wrapped)]
    return "\n".join(lines)


def build_nested_parser(key: tuple[str, str]) -> argparse.ArgumentParser:
    """The parser of a nested command such as ``gmat eval rc``."""
    module_name, add_name, run_name, help_text = _NESTED[key]
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(prog=f"gmat {' '.join(key)}", description=help_text)
    parser.add_argument("--log-level", default="INFO", help="logging level (default: INFO)")
    parser.add_argument("--debug", action="store_true", help=_DEBUG_HELP)
    getattr(module, add_name)(parser)
    parser.set_defaults(_run=getattr(module, run_name))
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``gmat`` console script."""
    argv = sys.argv[1:] if argv is None else argv
    command = next((a for a in argv if a in _SUBCOMMANDS), None)
    position = argv.index(command) if command is not None else -1
    key = (command, argv[position + 1]) if command is not None and position + 1 < len(argv) else None
    if key in _NESTED:
        args = build_nested_parser(key).parse_args(argv[:position] + argv[position + 2 :])
    else:
        args = build_parser(command).parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    name = " ".join(key) if key in _NESTED else command
    try:
        return int(args._run(args) or 0)
    except Exception as err:
        debug = getattr(args, "debug", False) or os.environ.get("GMAT_DEBUG", "") not in ("", "0")
        if debug or not _is_user_error(err):
            raise
        message = " ".join(str(err).split()) or type(err).__name__
        logging.getLogger("gmat").error("gmat %s: %s", name, message)
        return int(getattr(err, "exit_code", 2))


if __name__ == "__main__":
    sys.exit(main())
