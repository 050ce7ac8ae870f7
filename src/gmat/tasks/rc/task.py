"""Reading comprehension as a ``Task`` of the training loop, and ``evaluate_rc`` (behind ``gmat eval rc``).

A run config (``gmat train configs/rc/*.yaml``) names ``task: {name: rc, ...}`` (``RCTaskSettings``); the model
starts from ``task.pretrained`` (a BERT-family or GMAT checkpoint, or ``"minilm"``), converted with the run's
M and pattern, with a fresh span head. Training features come from ``task.train_file``; evaluation decodes
spans over ``task.eval_file`` and reports EM / F1 overall and by answer distance (``metric_name = "f1"``).
A checkpoint holds the tokenizer and ``rc_settings.json`` (how the model reads documents), so
``gmat eval rc --model RUN_DIR/best`` and ``gmat predict qa`` need nothing else.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gmat.modeling import GmatForQuestionAnswering, factory
from gmat.modeling.convert import resolve_bert_checkpoint
from gmat.modeling.factory import ModelSettings
from gmat.modeling.loading import load_pretrained
from gmat.tasks.base import hardware_description
from gmat.tasks.rc.features import (
    Feature,
    FeatureSet,
    collate,
    decode_predictions,
    featurize,
    score_predictions,
)
from gmat.tasks.rc.squad import (
    MAX_QUERY_LENGTH,
    RC_SETTINGS_FILE,
    Article,
    LoadStats,
    RCExample,
    TokenizedText,
    build_examples,
    load_squad,
    placement_fraction,
    tokenize_articles,
)

__all__ = ["RCTask", "RCTaskSettings", "evaluate_rc", "predict_logits", "subsample_questions"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RCTaskSettings:
    """The ``task:`` section of an rc run config.

    Attributes:
        name: ``"rc"``.
        pretrained: the checkpoint to start from (required: it brings the tokenizer): a BERT-family folder,
            ``"minilm"`` (the packaged MiniLM-L6-H384), or a GMAT checkpoint.
        train_file: SQuAD-format training file (``.json`` or ``.json.gz``); required.
        eval_file: SQuAD-format evaluation file; required.
        test_file: SQuAD-format file of the ``test`` split (``gmat eval RUN_DIR --split test``); optional.
        length: target document length L in tokens, or ``"article"`` for whole articles.
        max_length: the model's length (0: ``length`` for ``long``, ``window_length`` for ``windows``); needed
            with ``length: article`` and ``long``.
        train_questions: number of training questions (a deterministic subsample; 0 = all).
        eval_questions: number of evaluation questions (a deterministic subsample; 0 = all).
        featurization: ``"long"`` (one GMAT example per question) or ``"windows"`` (512-token baseline).
        window_length: tokens per window (``windows`` only).
        stride: overlap of consecutive windows in document tokens (``windows`` only).
        max_query_length: questions are cut to this many tokens.
        max_answer_length: longest decoded answer in tokens.
        distance_chunk_size: C of the distance report (answer distance from the question, in chunks).
        seed: seed of the question subsamples and of the order of training features.
    """

    name: str = "rc"
    pretrained: str = ""
    train_file: str = ""
    eval_file: str = ""
    test_file: str = ""
    length: int | str = 1024
    max_length: int = 0
    train_questions: int = 0
    eval_questions: int = 0
    featurization: str = "long"
    window_length: int = 512
    stride: int = 128
    max_query_length: int = MAX_QUERY_LENGTH
    max_answer_length: int = 30
    distance_chunk_size: int = 128
    seed: int = 0

    def __post_init__(self) -> None:
        if self.name != "rc":
            raise ValueError(f"task.name must be 'rc' for a reading-comprehension run, got {self.name!r}")
        if isinstance(self.length, str) and self.length != "article":
            raise ValueError(f"task.length must be an int or 'article', got {self.length!r}")
        if isinstance(self.length, int) and self.length < 16:
            raise ValueError(f"task.length must be >= 16 tokens, got {self.length}")
        if self.featurization not in ("long", "windows"):
            raise ValueError(f"task.featurization must be 'long' or 'windows', got {self.featurization!r}")
        for name in ("train_questions", "eval_questions", "stride", "max_length"):
            if getattr(self, name) < 0:
                raise ValueError(f"task.{name} must be >= 0, got {getattr(self, name)}")
        for name in ("window_length", "max_query_length", "max_answer_length", "distance_chunk_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"task.{name} must be >= 1, got {getattr(self, name)}")
        if self.length == "article" and self.featurization == "long" and not self.max_length:
            raise ValueError("task.length='article' with featurization 'long' needs task.max_length (tokens)")

    @property
    def model_length(self) -> int:
        """The model's length: ``max_length``, else ``length`` (long) or ``window_length`` (windows)."""
        if self.max_length:
            return self.max_length
        return self.window_length if self.featurization == "windows" else int(self.length)

    @property
    def feature_length(self) -> int:
        """Tokens per feature: the model's length, or at most ``window_length`` for ``windows``."""
        if self.featurization == "windows":
            return min(self.window_length, self.model_length)
        return self.model_length

    def reading_settings(self) -> dict[str, Any]:
        """How a trained model reads documents (``rc_settings.json`` beside its weights)."""
        return {
            "featurization": self.featurization,
            "window_length": self.feature_length,
            "stride": self.stride,
            "max_query_length": self.max_query_length,
            "max_answer_length": self.max_answer_length,
            "distance_chunk_size": self.distance_chunk_size,
        }


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


def _parse_length(length: int | str | None) -> int | None:
    if length is None or length == "article":
        return None
    if isinstance(length, str):
        if not length.isdigit():
            raise ValueError(f"length must be a number of tokens or 'article', got {length!r}")
        length = int(length)
    if length < 16:
        raise ValueError(f"length must be >= 16 tokens, got {length}")
    return length


def _question_length_fn(tokenizer: Any) -> Callable[[str], int]:
    return lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])


@dataclass
class _EvalSet:
    """An evaluation file read, subsampled and featurised once (for one tokenizer and reading settings)."""

    examples: list[RCExample]
    features: FeatureSet
    stats: LoadStats


def _eval_set(
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
) -> _EvalSet:
    articles, stats = load_squad(path)
    articles = subsample_questions(articles, max_questions, seed)
    tokenized = tokenize_articles(articles, tokenizer)
    examples = build_examples(articles, tokenized, _question_length_fn(tokenizer), length)
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
    return _EvalSet(examples, fs, stats)


def _score(
    model: torch.nn.Module,
    data: _EvalSet,
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


def _write_eval(out_dir: str | Path, metrics: dict, predictions: dict, per_question: list) -> None:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "predictions.json").write_text(json.dumps(predictions, indent=1, ensure_ascii=False) + "\n")
    with (out / "per_question.jsonl").open("w") as fh:
        for row in per_question:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")


class RCTask:
    """Extractive QA over long documents (SQuAD made long), driven by the training loop.

    Training features are built on first use; a training index maps to a feature through a seeded permutation
    per epoch (like MLM), so the data stream is a function of the index. Evaluation decodes spans over the
    whole evaluation file on every rank (the result is the same everywhere).

    Args:
        spec: the task settings.

    Raises:
        ValueError: when ``task.pretrained`` is empty.
    """

    metric_name = "f1"

    def __init__(self, spec: RCTaskSettings) -> None:
        from transformers import AutoTokenizer

        if not spec.pretrained:
            raise ValueError(
                "task.pretrained is required for rc (a BERT-family or GMAT checkpoint, or 'minilm'): "
                "it brings the tokenizer"
            )
        self.spec = spec
        self.tokenizer = AutoTokenizer.from_pretrained(resolve_bert_checkpoint(spec.pretrained))
        self.pad_id = self.tokenizer.pad_token_id or 0
        self._train: list[Feature] | None = None
        self._order: tuple[int, np.ndarray] | None = None
        self._eval: dict[str, _EvalSet] = {}

    @property
    def seq_len(self) -> int:
        """Tokens per feature (for throughput)."""
        return self.spec.feature_length

    def build_model(self, settings: ModelSettings) -> torch.nn.Module:
        """A ``GmatForQuestionAnswering`` from ``task.pretrained`` (converted with the run's pattern), fresh head."""
        return factory.build_model(
            GmatForQuestionAnswering,
            settings,
            vocab_size=None,
            max_length=self.spec.model_length,
            init=self.spec.pretrained,
        )

    def checkpoint_files(self) -> dict[str, bytes]:
        """The tokenizer's files and ``rc_settings.json``: a checkpoint folder is a complete QA model."""
        with tempfile.TemporaryDirectory(prefix="gmat-tokenizer-") as tmp:
            self.tokenizer.save_pretrained(tmp)
            files = {p.name: p.read_bytes() for p in Path(tmp).iterdir() if p.is_file()}
        files[RC_SETTINGS_FILE] = (json.dumps(self.spec.reading_settings(), indent=2) + "\n").encode()
        return files

    # ---- training ------------------------------------------------------------------------------------------
    def train_features(self) -> list[Feature]:
        """Features of the training questions (long mode drops those whose answer lies beyond the model)."""
        if self._train is None:
            s = self.spec
            if not s.train_file:
                raise ValueError("task.train_file is not set: name a SQuAD-format file, e.g. --set task.train_file=F")
            articles, _ = load_squad(s.train_file)
            articles = subsample_questions(articles, s.train_questions, s.seed)
            tokenized: list[list[TokenizedText]] = tokenize_articles(articles, self.tokenizer)
            examples = build_examples(articles, tokenized, _question_length_fn(self.tokenizer), _parse_length(s.length))
            fs = featurize(
                examples,
                tokenized,
                self.tokenizer,
                mode=s.featurization,
                max_length=s.feature_length,
                stride=s.stride,
                max_query_length=s.max_query_length,
            )
            # A question whose answer lies beyond the model's length cannot be learnt in long mode; windows keep
            # every window (those without the answer are labelled [CLS], as transformers' run_qa does).
            features = [f for f in fs.features if f.has_answer or s.featurization == "windows"]
            if len(features) < len(fs.features):
                logger.warning(
                    "dropped %d training questions whose answer lies beyond %d tokens",
                    len(fs.features) - len(features),
                    s.feature_length,
                )
            if not features:
                raise ValueError(f"{s.train_file}: no trainable features")
            logger.info("rc: %d training questions -> %d features", len(examples), len(features))
            self._train = features
        return self._train

    def batch(self, split: str, indices: Any) -> dict[str, torch.Tensor]:
        """Training features at global indices (a fresh seeded permutation of the features per epoch)."""
        if split != "train":
            raise ValueError(f"rc batches come from the train split only, got {split!r}")
        features = self.train_features()
        chosen = []
        for i in indices:
            epoch, pos = divmod(int(i), len(features))
            chosen.append(features[int(self._permutation(epoch)[pos])])
        return collate(chosen, self.pad_id, True)

    def _permutation(self, epoch: int) -> np.ndarray:
        if self._order is None or self._order[0] != epoch:  # one permutation per epoch, kept while in use
            n = len(self.train_features())
            self._order = (epoch, np.random.default_rng([self.spec.seed, 99, epoch]).permutation(n))
        return self._order[1]

    def forward_loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[Any, torch.Tensor]:
        """The span loss of ``GmatForQuestionAnswering`` (start and end cross-entropy)."""
        out = model(**batch)
        return out, out.loss

    # ---- evaluation ----------------------------------------------------------------------------------------
    def _eval_data(self, split: str) -> _EvalSet:
        s = self.spec
        path = {"eval": s.eval_file, "test": s.test_file}.get(split)
        if path is None:
            raise ValueError(f"split must be 'eval' or 'test', got {split!r}")
        if not path:
            raise ValueError(f"task.{split}_file is not set: name a SQuAD-format file, e.g. --set task.{split}_file=F")
        if split not in self._eval:
            self._eval[split] = _eval_set(
                path,
                self.tokenizer,
                length=_parse_length(s.length),
                max_questions=s.eval_questions,
                seed=s.seed,
                mode=s.featurization,
                max_length=s.feature_length,
                stride=s.stride,
                max_query_length=s.max_query_length,
            )
        return self._eval[split]

    def evaluate(
        self,
        model: torch.nn.Module,
        *,
        batch_size: int,
        device: torch.device,
        rank: int = 0,
        world_size: int = 1,
        reduce: Any = None,
        autocast: contextlib.AbstractContextManager | None = None,
        split: str = "eval",
        out_dir: Path | None = None,
    ) -> dict[str, Any]:
        """EM / F1 (percent) overall and by answer distance; with ``out_dir``, predictions and rows too."""
        data = self._eval_data(split)
        metrics, predictions, per_question = _score(
            model,
            data,
            pad_id=self.pad_id,
            batch_size=batch_size,
            device=device,
            max_answer_length=self.spec.max_answer_length,
            distance_chunk_size=self.spec.distance_chunk_size,
            autocast=autocast,
        )
        if out_dir is not None and rank == 0:
            _write_eval(out_dir, metrics, predictions, per_question)
        return metrics


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
    from transformers import AutoModelForQuestionAnswering, AutoTokenizer

    model_dir = Path(model_dir)
    settings_path = model_dir / RC_SETTINGS_FILE
    settings = json.loads(settings_path.read_text()) if settings_path.is_file() else {}
    mode = mode or settings.get("featurization", "long")
    max_answer_length = max_answer_length or settings.get("max_answer_length", 30)
    stride = settings.get("stride", 128) if stride is None else stride
    distance_chunk_size = distance_chunk_size or settings.get("distance_chunk_size", 128)
    target_length = _parse_length(length)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    elif device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but CUDA is not available")
    dev = torch.device(device)
    if tokenizer is None:
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
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
    max_length = int(model.config.max_position_embeddings)
    if mode == "windows":
        max_length = min(max_length, int(settings.get("window_length", max_length)))

    t0 = time.perf_counter()
    data = _eval_set(
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
    scores, predictions, per_question = _score(
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
        _write_eval(out_dir, result, predictions, per_question)
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
