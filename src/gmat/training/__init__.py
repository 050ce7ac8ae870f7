"""Training: typed run configs, one explicit loop, atomic checkpoints, data-parallel helpers.

Submodules: ``config`` (run settings), ``loop`` (``train``), ``checkpoint``, ``distributed``, and the CLI
front ends ``run`` (``gmat train``), ``evaluate`` (``gmat eval``), ``demo`` (``gmat demo``). Nothing heavy
is imported here, so ``gmat --help`` stays fast.
"""

__all__: list[str] = []
