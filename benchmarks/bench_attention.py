"""Attention benchmark, a thin wrapper of ``gmat.bench.attention.main`` (same as ``gmat bench attention``).

    python benchmarks/bench_attention.py --config benchmarks/configs/cpu.yaml --out docs/bench
"""

import sys

from gmat.bench.attention import main

if __name__ == "__main__":
    sys.exit(main())
