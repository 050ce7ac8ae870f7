"""The attention benchmark's modules (not part of the installed ``gmat`` package).

``config`` (sweeps, YAML), ``engines`` (what is timed), ``measure`` (correctness check, timing, peak memory,
environment), ``runner`` (one run over a config) and ``report`` (markdown and plot). The command line is
``benchmarks/bench_attention.py``; the GPU evidence pack is ``benchmarks/gpu_pack.sh``.
"""
