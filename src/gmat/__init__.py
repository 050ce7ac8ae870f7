"""GMAT: global-memory-augmented sparse Transformers (Gupta & Berant, 2020)."""

from gmat.ops import AttentionPattern, gmat_attention, list_backends

__version__ = "0.1.0"

__all__ = ["AttentionPattern", "__version__", "gmat_attention", "list_backends"]
