"""GMAT: global-memory-augmented sparse Transformers (Gupta & Berant, 2020)."""

from gmat.modeling import (
    GmatConfig,
    GmatForMaskedLM,
    GmatForQuestionAnswering,
    GmatForSequenceClassification,
    GmatForTokenClassification,
    GmatModel,
    convert_bert_to_gmat,
)
from gmat.ops import AttentionPattern, gmat_attention, list_backends

__version__ = "0.1.0"

__all__ = [
    "AttentionPattern",
    "GmatConfig",
    "GmatForMaskedLM",
    "GmatForQuestionAnswering",
    "GmatForSequenceClassification",
    "GmatForTokenClassification",
    "GmatModel",
    "__version__",
    "convert_bert_to_gmat",
    "gmat_attention",
    "list_backends",
]
