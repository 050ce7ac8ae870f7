"""The ``gmat`` command's front ends, one module per subcommand: parse arguments, call the library, exit status.

Each module exposes ``add_cli_arguments(parser)`` and ``cli_run(args) -> int``; ``gmat.cli`` imports a module only
when its subcommand runs. This is the top layer of the package: nothing below imports from here.
"""
