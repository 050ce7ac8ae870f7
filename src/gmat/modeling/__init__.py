"""GMAT models in Hugging Face form, BERT-family → GMAT conversion, and the factory every run builds its model with.

Importing this package registers ``model_type="gmat"`` with ``AutoConfig`` and the ``AutoModel*`` classes
(``AutoModel``, ``AutoModelForMaskedLM``, ``AutoModelForSequenceClassification``,
``AutoModelForTokenClassification``, ``AutoModelForQuestionAnswering``), so GMAT checkpoints load through
them after ``import gmat``. That registration is the only thing done at import.
"""

from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForMaskedLM,
    AutoModelForQuestionAnswering,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
)

from gmat.modeling.configuration_gmat import GmatConfig
from gmat.modeling.convert import convert_bert_to_gmat, convert_to_gmat
from gmat.modeling.modeling_gmat import (
    GmatForMaskedLM,
    GmatForQuestionAnswering,
    GmatForSequenceClassification,
    GmatForTokenClassification,
    GmatModel,
    GmatModelOutput,
    GmatPreTrainedModel,
)

__all__ = [
    "GmatConfig",
    "GmatForMaskedLM",
    "GmatForQuestionAnswering",
    "GmatForSequenceClassification",
    "GmatForTokenClassification",
    "GmatModel",
    "GmatModelOutput",
    "GmatPreTrainedModel",
    "convert_bert_to_gmat",
    "convert_to_gmat",
]

AutoConfig.register(GmatConfig.model_type, GmatConfig, exist_ok=True)
AutoModel.register(GmatConfig, GmatModel, exist_ok=True)
AutoModelForMaskedLM.register(GmatConfig, GmatForMaskedLM, exist_ok=True)
AutoModelForSequenceClassification.register(GmatConfig, GmatForSequenceClassification, exist_ok=True)
AutoModelForTokenClassification.register(GmatConfig, GmatForTokenClassification, exist_ok=True)
AutoModelForQuestionAnswering.register(GmatConfig, GmatForQuestionAnswering, exist_ok=True)
