"""The ``gmat`` command: demo | train | eval | bench | convert. Thin: parses arguments, calls the library.

Each subcommand lives with the code it drives and exposes ``add_cli_arguments(parser)`` and
``cli_run(args) -> int``; the modules are imported only when their subcommand runs.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

# subcommand -> (module providing add_cli_arguments / cli_run, one-line help)
_SUBCOMMANDS = {
    "demo": ("gmat.training.demo", "train chunked M=0 vs GMAT on the majority task and compare"),
    "train": ("gmat.training.run", "train a model from a YAML config"),
    "eval": ("gmat.training.evaluate", "evaluate a saved model or run directory"),
    "bench": ("gmat.bench.attention", "benchmark attention engines side by side"),
    "convert": ("gmat.modeling.convert", "convert a BERT checkpoint into a GMAT checkpoint"),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The argument parser; only ``command``'s module is imported (startup stays fast).

    Args:
        command: the subcommand whose arguments to load; None loads all of them.
    """
    parser = argparse.ArgumentParser(prog="gmat", description=__doc__.splitlines()[0])
    parser.add_argument("--log-level", default="INFO", help="logging level (default: INFO)")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (module_name, help_text) in _SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if command is None or command == name:
            module = importlib.import_module(module_name)
            module.add_cli_arguments(p)
            p.set_defaults(_run=module.cli_run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``gmat`` console script."""
    argv = sys.argv[1:] if argv is None else argv
    command = next((a for a in argv if a in _SUBCOMMANDS), None)
    args = build_parser(command).parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    return int(args._run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
