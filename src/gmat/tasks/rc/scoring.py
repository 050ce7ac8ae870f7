"""Scoring a QA model: logits of features, decoding, EM / F1, and ``evaluate_rc`` (behind ``gmat eval rc``).

Used by the ``RCTask`` of the training loop (its evaluation) and on any saved QA model (``evaluate_rc``,
``load_qa_model`` for ``gmat predict qa``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from gmat.modeling.loading import load_pretrained
from gmat.tasks.base import hardware_description
from gmat.tasks.rc.features import Feature, FeatureSet, collate, decode_predictions, featurize, score_predictions
from gmat.tasks.rc.squad import (
    MAX_QUERY_LENGTH,
    RC_SETTINGS_FILE,
    Article,
    LoadStats,
    RCExample,
    build_examples,
    load_squad,
    placement_fraction,
    tokenize_articles,
)

__all__ = ["evaluate_rc", "load_qa_model", "predict_logits", "subsample_questions"]

logger = logging.getLogger(__name__)


def subsample_questions(articles: list[Article], count: int, seed: int) -> list[Article]:
    """Keep ``count`` questions chosen by a hash of ``(seed, id)`` (all when ``count`` is 0 or larger).

    Paragraphs are kept (they form the documents); articles left without questions are dropped.
    """
    total = sum(len(a.questions) for a in articles)
    if count == 0 or count >= total:
        return articles
    ranked = sorted((placement_fraction(f"{seed}:{q.id}"), q.id) for a in articles for q in a.questions)
    keep = {qid for _, qid in ranked[:count]}
    out = [Article(a.title, a.paragraphs, [q for q in a.questions if q.id in keep]) for a in articles]
    return [a for a in out if a.questions]


@torch.no_grad()
def predict_logits(
    model: torch.nn.Module,
    features: Sequence[Feature],
    *,
    batch_size: int,
    device: torch.device,
    pad_id: int,
    autocast: contextlib.AbstractContextManager | None = None,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Start / end logits of every feature (batched by similar length), each ``(len(input_ids),)`` on CPU."""
    was_training = model.training
    model.eval()
    out: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * len(features)
    order = sorted(range(len(features)), key=lambda i: len(features[i].input_ids))
    for b in range(0, len(order), batch_size):
        idx = order[b : b + batch_size]
        batch = {k: v.to(device) for k, v in collate([features[i] for i in idx], pad_id, False).items()}
        with autocast or contextlib.nullcontext():
            res = model(**batch)
        for row, i in enumerate(idx):
            n = len(features[i].input_ids)
            out[i] = (res.start_logits[row, :n].float().cpu(), res.end_logits[row, :n].float().cpu())
    model.train(was_training)
    return out  # type: ignore[return-value]


def parse_length(length: int | str | None) -> int | None:
    if length is None or length == "article":
        return None
    if isinstance(length, str):
        if not length.isdigit():
            raise ValueError(f"length must be a number of tokens or 'article', got {length!r}")
        length = int(length)
    if length < 16:
        raise ValueError(f"length must be >= 16 tokens, got {length}")
    return length


def question_length_fn(tokenizer: Any) -> Callable[[str], int]:
    return lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])


@dataclass
class EvalSet:
    """An evaluation file read, subsampled and featurised once (for one tokenizer and reading settings)."""

    examples: list[RCExample]
    features: FeatureSet
    stats: LoadStats


def eval_set(
    path: str | Path,
    tokenizer: Any,
    *,
    length: int | None,
    max_questions: int,
    seed: int,
    mode: str,
    max_length: int,
    stride: int,
    max_query_length: int,
) -> EvalSet:
    articles, stats = load_squad(path)
    articles = subsample_questions(articles, max_questions, seed)
    tokenized = tokenize_articles(articles, tokenizer)
    examples = build_examples(articles, tokenized, question_length_fn(tokenizer), length)
    if not examples:
        raise ValueError(f"{path}: no scorable questions (skipped: {stats.skipped()})")
    fs = featurize(
        examples,
        tokenized,
        tokenizer,
        mode=mode,
        max_length=max_length,
        stride=stride,
        max_query_length=max_query_length,
    )
    n_truncated = sum(fs.truncated)
    if n_truncated:
        logger.warning(
            "%d of %d questions have their answer beyond the model's %d tokens (scored as predicted)",
            n_truncated,
            len(examples),
            max_length,
        )
    return EvalSet(examples, fs, stats)


def score(
    model: torch.nn.Module,
    data: EvalSet,
    *,
    pad_id: int,
    batch_size: int,
    device: torch.device,
    max_answer_length: int,
    distance_chunk_size: int,
    autocast: contextlib.AbstractContextManager | None = None,
) -> tuple[dict[str, Any], dict[str, str], list[dict[str, Any]]]:
    """Decode every question: ``(metrics, predictions id -> text, per-question rows)``."""
    logits = predict_logits(
        model, data.features.features, batch_size=batch_size, device=device, pad_id=pad_id, autocast=autocast
    )
    decoded = decode_predictions(data.examples, data.features.features, logits, max_answer_length)
    predictions = {qid: pred.text for qid, pred in decoded.items()}
    scores = score_predictions(data.examples, predictions, data.features.answer_token, distance_chunk_size)
    per_question = scores.pop("per_question")
    scores["answers_truncated"] = sum(data.features.truncated)
    scores["features"] = len(data.features.features)
    return scores, predictions, per_question


def write_eval(out_dir: str | Path, metrics: dict, predictions: dict, per_question: list) -> None:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "predictions.json").write_text(json.dumps(predictions, indent=1, ensure_ascii=False) + "\n")
    with (out / "per_question.jsonl").open("w") as fh:
        for row in per_question:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")


def load_qa_model(
    model_dir: str | Path | None,
    device: str = "auto",
    *,
    model: torch.nn.Module | None = None,
    tokenizer: Any = None,
    allow_missing: bool = False,
    allow_random_head: bool = False,
    seed: int = 0,
) -> tuple[torch.nn.Module, Any, dict[str, Any], torch.device, Any]:
    """A saved QA model, its tokenizer and reading settings, verified (``gmat.modeling.loading``), on ``device``.

    Args:
        model_dir: the saved folder (weights, tokenizer, maybe ``rc_settings.json``); None when ``model`` and
            ``tokenizer`` are given.
        device: ``"auto"``, ``"cpu"`` or ``"cuda"``.
        model: an already loaded model (then nothing is loaded or verified).
        tokenizer: an already loaded tokenizer.
        allow_missing: accept missing or unexpected encoder weights.
        allow_random_head: accept a folder without a QA head, initialised at random from ``seed``.
        seed: seed of that head.

    Returns:
        ``(model, tokenizer, reading settings, device, load report or None)``.

    Raises:
        ValueError: for ``device="cuda"`` without CUDA, or no folder and no model.
        CheckpointError: if the folder fails its manifest or lacks weights that are not allowed to be missing.
    """
    from transformers import AutoModelForQuestionAnswering, AutoTokenizer

    if model_dir is None and (model is None or tokenizer is None):
        raise ValueError("model_dir is None: pass a saved model folder, or both model= and tokenizer=")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but CUDA is not available")
    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else device.replace("auto", "cpu"))
    settings_path = None if model_dir is None else Path(model_dir) / RC_SETTINGS_FILE
    settings = json.loads(settings_path.read_text()) if settings_path and settings_path.is_file() else {}
    tokenizer = tokenizer if tokenizer is not None else AutoTokenizer.from_pretrained(model_dir)
    report = None
    if model is None:
        model, report = load_pretrained(
            AutoModelForQuestionAnswering,
            model_dir,
            allow_missing=allow_missing,
            allow_random_head=allow_random_head,
            head_seed=seed,
            what_to_train="fine-tune it on reading comprehension first (gmat train, task.name: rc)",
        )
        model = model.to(dev)
    return model, tokenizer, settings, dev, report


def evaluate_rc(
    model_dir: str | Path,
    data_path: str | Path,
    length: int | str | None = None,
    *,
    mode: str | None = None,
    max_questions: int = 0,
    seed: int = 0,
    batch_size: int = 8,
    max_answer_length: int | None = None,
    stride: int | None = None,
    distance_chunk_size: int | None = None,
    out_dir: str | Path | None = None,
    device: str = "auto",
    model: torch.nn.Module | None = None,
    tokenizer: Any = None,
    allow_missing: bool = False,
    allow_random_head: bool = False,
) -> dict[str, Any]:
    """Score a QA model on a SQuAD-format file; optionally write predictions and metrics.

    Paragraphs of one article are joined into one document (a context that is already long is one document).

    Args:
        model_dir: a saved QA model with its tokenizer (a GMAT or BERT ``...ForQuestionAnswering``).
        data_path: SQuAD-format ``.json`` / ``.json.gz``.
        length: target document length L in tokens, or None / ``"article"`` for whole documents.
        mode: ``"long"`` or ``"windows"``; None reads ``rc_settings.json`` beside the model (else ``"long"``).
        max_questions: score a deterministic subsample of this many questions (0 = all).
        seed: seed of that subsample.
        batch_size: features per inference batch.
        max_answer_length: in tokens (None: the model's ``rc_settings.json``, else 30).
        stride: window overlap (None: ``rc_settings.json``, else 128).
        distance_chunk_size: C of the distance report (None: ``rc_settings.json``, else 128).
        out_dir: when given, writes ``predictions.json`` (id -> text), ``per_question.jsonl``,
            ``metrics.json``.
        device: ``"auto"``, ``"cpu"`` or ``"cuda"``.
        model: an already loaded model to use instead of loading ``model_dir``.
        tokenizer: an already loaded tokenizer to use instead of loading ``model_dir``.
        allow_missing: load ``model_dir`` although encoder weights are missing or unexpected ones present.
        allow_random_head: load ``model_dir`` without a QA head (e.g. a converted encoder), initialised at
            random from ``seed``; the result then holds ``"random_head": true`` and the seed.

    Returns:
        ``{"em", "f1", "count", "by_distance", "answers_truncated", "load_stats", "mode", "length",
        "eval_seconds", "hardware", ...}`` (em / f1 in percent).

    Raises:
        ValueError: on a malformed data file or bad settings (the message names them).
        CheckpointError: if ``model_dir`` fails its manifest or lacks weights (the head included) not allowed.
    """
    model_dir = Path(model_dir)
    model, tokenizer, settings, dev, report = load_qa_model(
        model_dir,
        device,
        model=model,
        tokenizer=tokenizer,
        allow_missing=allow_missing,
        allow_random_head=allow_random_head,
        seed=seed,
    )
    mode = mode or settings.get("featurization", "long")
    max_answer_length = max_answer_length or settings.get("max_answer_length", 30)
    stride = settings.get("stride", 128) if stride is None else stride
    distance_chunk_size = distance_chunk_size or settings.get("distance_chunk_size", 128)
    target_length = parse_length(length)
    max_length = int(model.config.max_position_embeddings)
    if mode == "windows":
        max_length = min(max_length, int(settings.get("window_length", max_length)))

    t0 = time.perf_counter()
    data = eval_set(
        data_path,
        tokenizer,
        length=target_length,
        max_questions=max_questions,
        seed=seed,
        mode=mode,
        max_length=max_length,
        stride=stride,
        max_query_length=settings.get("max_query_length", MAX_QUERY_LENGTH),
    )
    scores, predictions, per_question = score(
        model,
        data,
        pad_id=tokenizer.pad_token_id or 0,
        batch_size=batch_size,
        device=dev,
        max_answer_length=max_answer_length,
        distance_chunk_size=distance_chunk_size,
    )
    result = {
        **scores,
        "mode": mode,
        "length": "article" if target_length is None else target_length,
        "model_max_length": max_length,
        "max_answer_length": max_answer_length,
        "distance_chunk_size": distance_chunk_size,
        "data": str(data_path),
        "model": str(model_dir),
        "load_stats": dataclasses.asdict(data.stats),
        "eval_seconds": round(time.perf_counter() - t0, 2),
        "hardware": hardware_description(dev),
    }
    if report is not None and report.random_head:
        result.update(random_head=True, random_head_seed=report.head_seed)
    if out_dir is not None:
        write_eval(out_dir, result, predictions, per_question)
    logger.info(
        "rc eval %s on %s (L=%s, %s): EM %.2f F1 %.2f over %d questions",
        model_dir,
        data_path,
        result["length"],
        mode,
        result["em"],
        result["f1"],
        result["count"],
    )
    return result
