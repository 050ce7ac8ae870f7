"""Command-line front ends of ``gmat``: each module exposes ``add_cli_arguments(parser)`` and ``cli_run(args)``."""
