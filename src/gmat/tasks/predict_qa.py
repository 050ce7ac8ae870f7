"""The answer span (``gmat predict qa``) to a question in one document, with its score.

The document is read whole, as one input ``[CLS] question [SEP] document [SEP]`` of up to the model's maximum
length (``max_position_embeddings``); a longer document is refused with the token counts rather than cut
silently. A model trained with the windowed featurisation (``rc_settings.json`` says ``windows``) reads the
document in overlapping windows instead, so any length works for it. The score is the probability
``p_start * p_end`` of the span, each a softmax over the document tokens of its input.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from transformers import Pipeline

from gmat.tasks.rc import (
    MAX_QUERY_LENGTH,
    Answer,
    RCExample,
    TokenizedText,
    decode_predictions,
    encode_long,
    encode_windows,
    load_qa_model,
    predict_logits,
)

__all__ = [
    "QA_PIPELINE_TASK",
    "GmatQuestionAnsweringPipeline",
    "predict_answer",
    "register_question_answering_pipeline",
]

# transformers 5 removed its extractive "question-answering" pipeline (transformers.pipelines.REMOVED_TASKS) and
# refuses that name before looking at its registry, so ours is registered under its own name
QA_PIPELINE_TASK = "gmat-question-answering"

logger = logging.getLogger(__name__)


def predict_answer(
    model_dir: str | Path | None,
    question: str,
    document: str,
    *,
    max_answer_length: int | None = None,
    device: str = "auto",
    model: torch.nn.Module | None = None,
    tokenizer: Any = None,
    allow_missing: bool = False,
    allow_random_head: bool = False,
    seed: int = 0,
) -> dict[str, Any]:
    """Find the answer span to ``question`` in ``document``.

    Args:
        model_dir: a saved QA model with its tokenizer (GMAT, or any ``AutoModelForQuestionAnswering``); may be
            None when ``model`` and ``tokenizer`` are given (the defaults then replace ``rc_settings.json``).
        question: the question.
        document: the document text (any length up to the model's maximum, in tokens).
        max_answer_length: longest answer in tokens (default: the model's ``rc_settings.json``, else 30).
        device: ``"auto"``, ``"cpu"`` or ``"cuda"``.
        model: an already loaded model to use instead of loading ``model_dir``.
        tokenizer: an already loaded tokenizer to use instead of loading ``model_dir``.
        allow_missing: load ``model_dir`` although encoder weights are missing or unexpected ones present.
        allow_random_head: load ``model_dir`` without a QA head, initialised at random from ``seed`` (the
            result then holds ``"random_head": true`` and the seed).
        seed: seed of that random head.

    Returns:
        ``{"answer": str, "score": float, "start": int, "end": int, "tokens": int, "mode": str}`` with
        character offsets ``document[start:end] == answer``.

    Raises:
        ValueError: on an empty question or document, or a document longer than the model reads at once.
        CheckpointError: if ``model_dir`` fails its manifest or lacks weights (the head included) not allowed.
    """
    if not question.strip():
        raise ValueError("the question is empty")
    if not document.strip():
        raise ValueError("the document is empty")
    model, tokenizer, settings, dev, report = load_qa_model(
        model_dir,
        device,
        model=model,
        tokenizer=tokenizer,
        allow_missing=allow_missing,
        allow_random_head=allow_random_head,
        seed=seed,
    )
    mode = settings.get("featurization", "long")
    max_answer_length = max_answer_length or settings.get("max_answer_length", 30)
    max_length = int(model.config.max_position_embeddings)

    enc = tokenizer(document, add_special_tokens=False, return_offsets_mapping=True)
    doc = TokenizedText(tuple(enc["input_ids"]), tuple(map(tuple, enc["offset_mapping"])))
    q_ids = tokenizer(question, add_special_tokens=False)["input_ids"][
        : settings.get("max_query_length", MAX_QUERY_LENGTH)
    ]
    total = len(q_ids) + len(doc.ids) + 3
    cls_id, sep_id = tokenizer.cls_token_id, tokenizer.sep_token_id
    if mode == "windows":
        window = min(max_length, int(settings.get("window_length", max_length)))
        features = encode_windows(
            0,
            q_ids,
            doc,
            max_length=window,
            stride=int(settings.get("stride", 128)),
            cls_id=cls_id,
            sep_id=sep_id,
            gold=None,
        )
    else:
        if total > max_length:
            raise ValueError(
                f"question + document are {total} tokens; this model reads at most {max_length} "
                f"(its max_position_embeddings). Shorten the document or convert the model with a "
                f"larger --max-length"
            )
        features = [encode_long(0, q_ids, doc, max_length=max_length, cls_id=cls_id, sep_id=sep_id, gold=None)]
    example = RCExample("query", question, document, (Answer("", 0),), 0, (0, 0), 0, (0,))
    logits = predict_logits(model, features, batch_size=8, device=dev, pad_id=tokenizer.pad_token_id or 0)
    pred = decode_predictions([example], features, logits, max_answer_length)["query"]
    result = {
        "answer": pred.text,
        "score": pred.score,
        "start": pred.start,
        "end": pred.end,
        "tokens": total,
        "mode": mode,
    }
    if report is not None and report.random_head:
        result.update(random_head=True, random_head_seed=report.head_seed)
    return result


class GmatQuestionAnsweringPipeline(Pipeline):
    """Extractive QA as a ``transformers.Pipeline``, shaped like transformers 4's removed ``"question-answering"``.

    ``pipe(question=..., context=...) -> {"score", "start", "end", "answer"}`` with ``context[start:end] ==
    answer``, computed by ``predict_answer``: a GMAT model reads the whole context at once (up to its maximum
    length), a model trained on windows reads windows. Build it with ``register_question_answering_pipeline``.
    """

    _load_processor = False
    _load_image_processor = False
    _load_feature_extractor = False
    _load_tokenizer = True

    def __call__(self, question: str | None = None, context: str | None = None, **kwargs: Any) -> Any:
        """Answer ``question`` from ``context`` (keyword ``max_answer_length``: longest answer in tokens)."""
        if question is None or context is None:
            raise ValueError("the question-answering pipeline needs question= and context=")
        return super().__call__({"question": question, "context": context}, **kwargs)

    def _sanitize_parameters(self, max_answer_length: int | None = None, **kwargs: Any):
        return {}, ({} if max_answer_length is None else {"max_answer_length": max_answer_length}), {}

    def preprocess(self, inputs: dict[str, str]) -> dict[str, str]:
        """Nothing to do: ``predict_answer`` tokenises and builds the features in ``_forward``."""
        return inputs

    def _forward(self, inputs: dict[str, str], max_answer_length: int | None = None) -> dict[str, Any]:
        folder = self.model.name_or_path  # where rc_settings.json may be; "" for a model built in memory
        return predict_answer(
            folder if folder and Path(folder).is_dir() else None,
            inputs["question"],
            inputs["context"],
            max_answer_length=max_answer_length,
            device=self.device.type,
            model=self.model,
            tokenizer=self.tokenizer,
        )

    def postprocess(self, outputs: dict[str, Any]) -> dict[str, Any]:
        """The fields of transformers' question-answering pipeline."""
        return {key: outputs[key] for key in ("score", "start", "end", "answer")}


def register_question_answering_pipeline() -> str:
    """Register the QA pipeline with transformers as ``"gmat-question-answering"`` and return that name.

    Then ``transformers.pipeline("gmat-question-answering", model=..., tokenizer=...)`` builds it, for GMAT or
    any ``AutoModelForQuestionAnswering``. Nothing is registered on import; call this once.
    """
    from transformers import AutoModelForQuestionAnswering
    from transformers.pipelines import PIPELINE_REGISTRY

    import gmat.modeling  # noqa: F401  (registers model_type "gmat" with the Auto classes)

    if QA_PIPELINE_TASK not in PIPELINE_REGISTRY.get_supported_tasks():
        PIPELINE_REGISTRY.register_pipeline(
            QA_PIPELINE_TASK,
            pipeline_class=GmatQuestionAnsweringPipeline,
            pt_model=AutoModelForQuestionAnswering,
            type="text",
        )
    return QA_PIPELINE_TASK
