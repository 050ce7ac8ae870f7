"""Document classification from the user's own files: one label per document, accuracy and macro-F1.

Data: ``task.train_file`` / ``task.eval_file`` / ``task.test_file``, each a ``.jsonl`` file (one JSON object per
line) or a ``.csv`` file with a header row; the text is in column ``task.text_field`` and the label in
``task.label_field``. Labels are strings or integers, compared as text (``3`` and ``"3"`` are the same label).
The label set comes from the training file, sorted (numerically when every label is an integer, else
alphabetically); label ``i`` of that order is class id ``i``, saved in the model's config as
``id2label`` / ``label2id``. An evaluation or test label absent from the training file is an error that names
the file and line.

Each document becomes ``[CLS] tokens [SEP]``. A document longer than L = ``task.seq_len`` tokens is
truncated to its first L - 2 tokens; how many were truncated is logged per file. Batches are padded to their
longest document (``attention_mask`` marks the padding).

``checkpoint_files`` saves the tokenizer next to every checkpoint, so ``RUN_DIR/best`` is a complete
classifier: ``transformers.pipeline("text-classification", model=RUN_DIR/best)``.
"""

from __future__ import annotations

import csv
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gmat.data.corpus import WordPieceTokenizer
from gmat.modeling import GmatForSequenceClassification, factory
from gmat.modeling.factory import ModelSettings
from gmat.tasks.base import CountingTask, evenly_spaced

__all__ = ["ClassificationSettings", "ClassificationTask", "LabelledDocuments", "read_documents"]

logger = logging.getLogger(__name__)

_SPLITS = ("train", "eval", "test")
_INTEGER = re.compile(r"-?\d+")


@dataclass(frozen=True)
class ClassificationSettings:
    """Settings of a classification run (the ``task:`` section of a run config).

    Attributes:
        name: ``"classification"``.
        train_file: training documents (``.jsonl`` or ``.csv``); required. Its labels define the label set.
        eval_file: validation documents, scored during training; required.
        test_file: test documents (``gmat eval RUN_DIR --split test``); optional.
        text_field: JSON key / CSV column of the document text.
        label_field: JSON key / CSV column of the label.
        seq_len: L, tokens per document including ``[CLS]`` and ``[SEP]``; longer documents are truncated.
        tokenizer: folder with ``tokenizer.json``; empty = the ``pretrained`` folder's tokenizer when it has
            one, else MiniLM's WordPiece tokenizer.
        pretrained: a checkpoint to start from: a BERT-family folder or ``"minilm"`` (converted with the run's
            M, pattern and L) or a GMAT folder; empty = from scratch.
        seed: seed of the training order.
        eval_size: number of evaluation documents (evenly spaced; 0 = all).
    """

    name: str = "classification"
    train_file: str = ""
    eval_file: str = ""
    test_file: str = ""
    text_field: str = "text"
    label_field: str = "label"
    seq_len: int = 512
    tokenizer: str = ""
    pretrained: str = ""
    seed: int = 0
    eval_size: int = 0

    def __post_init__(self) -> None:
        if self.name != "classification":
            raise ValueError(f"task.name must be 'classification', got {self.name!r}")
        if self.seq_len < 3:
            raise ValueError(f"task.seq_len must be >= 3 ([CLS], a token, [SEP]), got {self.seq_len}")
        if self.eval_size < 0:
            raise ValueError(f"task.eval_size must be >= 0, got {self.eval_size}")
        for key in ("train_file", "eval_file"):
            if not getattr(self, key):
                raise ValueError(f"task.{key} is not set: name a .jsonl or .csv file of documents")
        for key in ("train_file", "eval_file", "test_file"):
            path = getattr(self, key)
            if path and Path(path).suffix.lower() not in (".jsonl", ".csv"):
                raise ValueError(f"task.{key} must be a .jsonl or .csv file, got {path!r}")
        if not self.text_field or not self.label_field:
            raise ValueError(
                f"task.text_field and task.label_field must be non-empty, got {self.text_field!r}, {self.label_field!r}"
            )


@dataclass(frozen=True)
class LabelledDocuments:
    """The documents of one file: ``texts``, their labels (as text) and each one's line number."""

    texts: list[str]
    labels: list[str]
    lines: list[int]


def read_documents(path: str | Path, *, key: str, text_field: str, label_field: str) -> LabelledDocuments:
    """Read a ``.jsonl`` or ``.csv`` file of labelled documents.

    Args:
        path: the file.
        key: the config key that named it (``task.train_file``), for error messages.
        text_field: JSON key / CSV column of the text.
        label_field: JSON key / CSV column of the label (a string or an integer).

    Raises:
        ValueError: naming ``key``, the file and the line of a missing file, malformed line, missing field,
            non-text document or a label that is neither a string nor an integer; or an empty file.
    """
    path = Path(path)
    where = f"{key}={str(path)!r}"
    if not path.is_file():
        raise ValueError(f"{where}: no such file")
    texts, labels, lines = [], [], []

    def add(line_no: int, row: dict[str, Any]) -> None:
        for field, setting in ((text_field, "text_field"), (label_field, "label_field")):
            if field not in row:
                raise ValueError(f"{where} line {line_no}: no field {field!r} (task.{setting})")
        text, label = row[text_field], row[label_field]
        if not isinstance(text, str):
            raise ValueError(f"{where} line {line_no}: {text_field!r} must be a string, got {type(text).__name__}")
        if isinstance(label, bool) or not isinstance(label, (str, int)) or label == "":
            raise ValueError(
                f"{where} line {line_no}: label {_short_repr(label)} must be a non-empty string or an integer"
            )
        texts.append(text)
        labels.append(str(label))
        lines.append(line_no)

    if path.suffix.lower() == ".csv":
        limit = csv.field_size_limit()
        csv.field_size_limit(max(limit, 2**31 - 1))  # csv refuses fields over 128 KiB: long documents are longer
        try:
            with open(path, newline="", encoding="utf-8") as f:
                reader = csv.DictReader(f, strict=True)
                for row in reader:
                    add(reader.line_num, row)
        except csv.Error as err:
            raise ValueError(f"{where}: not valid CSV after line {reader.line_num} ({err})") from err
        finally:
            csv.field_size_limit(limit)
    else:
        with open(path, encoding="utf-8") as f:
            for line_no, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as err:
                    raise ValueError(f"{where} line {line_no}: not JSON ({err})") from err
                if not isinstance(row, dict):
                    raise ValueError(f"{where} line {line_no}: expected a JSON object, got {type(row).__name__}")
                add(line_no, row)
    if not texts:
        raise ValueError(f"{where}: no documents")
    return LabelledDocuments(texts, labels, lines)


def _short_repr(value: Any) -> str:
    """A short ``repr`` of a value for error messages."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def sorted_labels(labels: list[str]) -> list[str]:
    """The distinct labels, numerically sorted when all are integers, else alphabetically."""
    distinct = set(labels)
    if all(_INTEGER.fullmatch(x) for x in distinct):
        return sorted(distinct, key=int)
    return sorted(distinct)


class ClassificationTask(CountingTask):
    """Labelled documents of the train / eval / test files, scored by a confusion matrix.

    Args:
        spec: the task settings.
    """

    Settings = ClassificationSettings
    metric_name = "accuracy"

    def __init__(self, spec: ClassificationSettings) -> None:
        self.spec = spec
        tokenizer = spec.tokenizer
        if not tokenizer and spec.pretrained and (Path(spec.pretrained) / "tokenizer.json").is_file():
            tokenizer = spec.pretrained
        self.tokenizer = WordPieceTokenizer(tokenizer or None)
        self.special = self.tokenizer.special
        self._docs = {"train": self._read("train")}
        self.labels = sorted_labels(self._docs["train"].labels)
        self.label2id = {label: i for i, label in enumerate(self.labels)}
        self.id2label = dict(enumerate(self.labels))
        self._docs["eval"] = self._read("eval")  # read now: an unknown label fails before training starts
        self._ids: dict[str, tuple[list[np.ndarray], np.ndarray]] = {}

    @property
    def seq_len(self) -> int:
        """L."""
        return self.spec.seq_len

    @property
    def num_labels(self) -> int:
        """K, the number of classes (distinct training labels)."""
        return len(self.labels)

    def _read(self, split: str) -> LabelledDocuments:
        key = f"{split}_file"
        path = getattr(self.spec, key)
        if not path:
            raise ValueError(f"task.{key} is not set: name a .jsonl or .csv file of {split} documents")
        docs = read_documents(
            path, key=f"task.{key}", text_field=self.spec.text_field, label_field=self.spec.label_field
        )
        if split != "train":
            for label, line in zip(docs.labels, docs.lines, strict=True):
                if label not in self.label2id:
                    raise ValueError(
                        f"task.{key}={path!r} line {line}: label {label!r} does not occur in task.train_file "
                        f"(its labels: {', '.join(self.labels)})"
                    )
        return docs

    def encoded(self, split: str) -> tuple[list[np.ndarray], np.ndarray]:
        """Token ids ``[CLS] ... [SEP]`` (each at most L long) and class ids of ``split``'s documents."""
        if split not in _SPLITS:
            raise ValueError(f"split must be one of {_SPLITS}, got {split!r}")
        if split not in self._ids:
            if split not in self._docs:
                self._docs[split] = self._read(split)
            docs = self._docs[split]
            keep = self.spec.seq_len - 2
            ids, truncated = [], 0
            for tokens in self.tokenizer.encode_batch(docs.texts):
                truncated += len(tokens) > keep
                ids.append(np.asarray([self.special.cls, *tokens[:keep], self.special.sep], dtype=np.int64))
            if truncated:
                logger.info(
                    "task.%s_file: %d of %d documents are longer than L=%d tokens and were truncated to their "
                    "first %d tokens",
                    split,
                    truncated,
                    len(ids),
                    self.spec.seq_len,
                    keep,
                )
            labels = np.asarray([self.label2id[x] for x in docs.labels], dtype=np.int64)
            self._ids[split] = (ids, labels)
        return self._ids[split]

    def build_model(self, settings: ModelSettings) -> torch.nn.Module:
        """A ``GmatForSequenceClassification`` with this task's labels, from scratch or ``task.pretrained``."""
        return factory.build_model(
            GmatForSequenceClassification,
            settings,
            vocab_size=self.tokenizer.vocab_size,
            max_length=self.spec.seq_len,
            init=self.spec.pretrained,
            num_labels=self.num_labels,
            id2label=self.id2label,
            label2id=self.label2id,
            pad_token_id=self.special.pad,
        )

    def checkpoint_files(self) -> dict[str, bytes]:
        """The tokenizer's files: with them a checkpoint folder is a complete ``text-classification`` model."""
        return self.tokenizer.transformers_files(model_max_length=self.spec.seq_len)

    def _document(self, split: str, index: int) -> int:
        """Training index -> document: a fresh seeded permutation per epoch; eval/test indices are documents."""
        n = len(self.encoded(split)[0])
        if split != "train":
            return int(index) % n
        epoch, pos = divmod(int(index), n)
        return int(np.random.default_rng([self.spec.seed, epoch]).permutation(n)[pos])

    def batch(self, split: str, indices: Any) -> dict[str, torch.Tensor]:
        """Documents ``indices`` of ``split``, padded to the longest.

        Returns:
            ``input_ids`` and ``attention_mask`` ``(B, T)`` with T <= L, ``labels`` ``(B,)``.
        """
        ids, labels = self.encoded(split)
        docs = [self._document(split, int(i)) for i in indices]
        width = max(len(ids[d]) for d in docs)
        input_ids = torch.full((len(docs), width), self.special.pad, dtype=torch.int64)  # (B, T)
        attention_mask = torch.zeros((len(docs), width), dtype=torch.int64)
        for row, d in enumerate(docs):
            input_ids[row, : len(ids[d])] = torch.from_numpy(ids[d])
            attention_mask[row, : len(ids[d])] = 1
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": torch.from_numpy(labels[docs])}

    def eval_indices(self, split: str = "eval") -> np.ndarray:
        """``eval_size`` evenly spaced documents of ``split`` (all when 0)."""
        return evenly_spaced(len(self.encoded(split)[0]), self.spec.eval_size)

    def metric_counts(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The flattened ``(K, K)`` confusion matrix (row = gold class, column = prediction), float64 on CPU."""
        k = self.num_labels
        cells = labels.reshape(-1) * k + logits.argmax(-1).reshape(-1)
        return torch.bincount(cells.cpu(), minlength=k * k).to(torch.float64)

    def compute_metrics(self, counts: torch.Tensor) -> dict[str, float]:
        """``accuracy``, ``macro_f1`` and ``examples`` from the summed confusion matrix.

        Macro-F1 averages the F1 of every class that occurs among the gold labels or the predictions of the
        split (scikit-learn's default), so classes absent from a small evaluation file do not count as 0.
        """
        k = self.num_labels
        confusion = counts.reshape(k, k)
        tp = confusion.diagonal()
        gold, predicted = confusion.sum(1), confusion.sum(0)
        present = (gold + predicted) > 0
        f1 = 2 * tp / (gold + predicted).clamp(min=1.0)
        total = float(confusion.sum())
        return {
            "accuracy": float(tp.sum()) / max(total, 1.0),
            "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
            "examples": total,
        }
