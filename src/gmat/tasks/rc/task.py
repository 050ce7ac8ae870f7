"""Reading comprehension as a ``Task`` of the training loop (scoring lives in ``gmat.tasks.rc.scoring``).

A run config (``gmat train configs/rc/*.yaml``) names ``task: {name: rc, ...}`` (``RCTaskSettings``); the model
starts from ``task.pretrained`` (a BERT-family or GMAT checkpoint, or ``"minilm"``), converted with the run's
M and pattern, with a fresh span head. Training features come from ``task.train_file``; evaluation decodes
spans over ``task.eval_file`` and reports EM / F1 overall and by answer distance (``metric_name = "f1"``).
A checkpoint holds the tokenizer and ``rc_settings.json`` (how the model reads documents), so
``gmat eval rc --model RUN_DIR/best`` and ``gmat predict qa`` need nothing else.
"""

from __future__ import annotations

import contextlib
import json
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gmat.modeling import GmatForQuestionAnswering, factory
from gmat.modeling.convert import resolve_bert_checkpoint
from gmat.modeling.factory import ModelSettings
from gmat.tasks.rc.features import Feature, collate, featurize
from gmat.tasks.rc.scoring import (
    EvalSet,
    eval_set,
    parse_length,
    question_length_fn,
    score,
    subsample_questions,
    write_eval,
)
from gmat.tasks.rc.squad import (
    MAX_QUERY_LENGTH,
    RC_SETTINGS_FILE,
    TokenizedText,
    build_examples,
    load_squad,
    tokenize_articles,
)

__all__ = ["RCTask", "RCTaskSettings"]

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
        self._eval: dict[str, EvalSet] = {}

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
            examples = build_examples(articles, tokenized, question_length_fn(self.tokenizer), parse_length(s.length))
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
    def _eval_data(self, split: str) -> EvalSet:
        s = self.spec
        path = {"eval": s.eval_file, "test": s.test_file}.get(split)
        if path is None:
            raise ValueError(f"split must be 'eval' or 'test', got {split!r}")
        if not path:
            raise ValueError(f"task.{split}_file is not set: name a SQuAD-format file, e.g. --set task.{split}_file=F")
        if split not in self._eval:
            self._eval[split] = eval_set(
                path,
                self.tokenizer,
                length=parse_length(s.length),
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
        metrics, predictions, per_question = score(
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
            write_eval(out_dir, metrics, predictions, per_question)
        return metrics
