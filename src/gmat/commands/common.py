"""Arguments shared by several subcommands."""

from __future__ import annotations

import argparse

__all__ = ["add_override_argument"]


def add_override_argument(parser: argparse.ArgumentParser, example: str) -> None:
    """Add ``--set KEY=VALUE ...`` (into ``args.overrides``; see ``gmat.training.config.apply_overrides``)."""
    parser.add_argument(
        "--set",
        dest="overrides",
        nargs="+",
        action="extend",
        default=[],
        metavar="KEY=VALUE",
        help=f"override config keys, e.g. --set {example}",
    )
