"""Benchmarks of the GMAT attention op against dense and third-party sparse attention (``gmat bench``)."""
