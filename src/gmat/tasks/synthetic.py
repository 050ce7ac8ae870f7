"""Synthetic tasks that need global reasoning, generated on the fly and deterministic by seed.

Every example is a pure function of ``(task settings, split, index)``: example ``i`` of a split is drawn
from its own random generator seeded with ``(seed, split, i)``. A data-parallel run therefore sees the
same global batches whatever the number of processes, and resuming needs only the example position.

Token ids: ``0`` is padding (never produced, reserved so that ``attention_mask`` semantics stay BERT-like);
the tasks use ids ``1 .. vocab_size - 1``.

Tasks (L = ``seq_len``):

* ``majority``: L symbols from an alphabet of V. The label is the most frequent symbol. Counts are built
  so that the majority is unique and only ``margin`` (relative to the mean count L/V) ahead of the
  runner-up; inside one chunk of C << L positions sampling noise (about ``sqrt(C/V)``) swamps the
  expected lead (``margin * C/V``), so a chunk alone rarely reveals the label.
* ``majority_tagging``: the same input; position i is labelled 1 when its symbol is the global majority
  symbol. Positives are about 1/V of the tokens; score with positive-class F1 (and balanced accuracy).
* ``lookup``: ``num_pairs`` key–value pairs sit at random positions of the first half of the sequence,
  ``num_queries`` query tokens (a key's query form) at random positions of the second half, filler noise
  everywhere else; the label at a query position is the value of its key, every other position is
  ignored (-100). With a chunk size that divides L/2 a query never shares a chunk with its pair.
  A pair is **one token** whose id encodes (key, value), so the task measures global retrieval and
  nothing else. (With the key and the value as two adjacent tokens, a memory model needs three layers,
  bind the value to its key locally, gather the bound pairs into memory, read memory at the query,
  because memory rows read the layer's input, not the output of the same layer's local attention; a
  dense model needs two. The two-token version did not learn at all in 300 steps with 2 layers.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from gmat.modeling import GmatForSequenceClassification, GmatForTokenClassification, factory
from gmat.tasks.base import CountingTask, prediction_is_finite

__all__ = [
    "IGNORE_INDEX",
    "TASK_NAMES",
    "SyntheticTask",
    "TaskSpec",
    "chunk_oracle_accuracy",
    "chunk_oracle_tagging_f1",
    "compute_metrics",
    "make_task",
]

IGNORE_INDEX = -100
PAD_ID = 0
TASK_NAMES = ("majority", "majority_tagging", "lookup")
_SPLIT_IDS = {"train": 0, "eval": 1, "test": 2}


@dataclass(frozen=True)
class TaskSpec:
    """Settings of a synthetic task (the ``task:`` section of a run config).

    Attributes:
        name: one of ``TASK_NAMES``.
        seq_len: L, tokens per example.
        num_symbols: V, alphabet size of ``majority`` / ``majority_tagging``.
        margin: majority lead over the runner-up, as a fraction of the mean count L/V.
        num_pairs: key–value pairs per example (``lookup``).
        num_queries: queries per example (``lookup``); beyond ``num_pairs`` pairs are asked again.
        num_keys: size of the key alphabet (``lookup``).
        num_values: size of the value alphabet (``lookup``); chance is ``1/num_values``.
        pair_copies: how many times each pair token occurs in the first half (``lookup``).
        positive_weight: weight of the positive class in the training loss (``majority_tagging``, whose
            positives are rare; about ``(1 - p) / p`` balances them).
        seed: base seed of the generator.
        eval_size: number of examples of the evaluation split.
    """

    name: str = "majority"
    seq_len: int = 512
    num_symbols: int = 8
    margin: float = 0.25
    num_pairs: int = 4
    num_queries: int = 4
    num_keys: int = 32
    num_values: int = 16
    pair_copies: int = 1
    positive_weight: float = 1.0
    seed: int = 0
    eval_size: int = 256

    def __post_init__(self) -> None:
        if self.name not in TASK_NAMES:
            raise ValueError(f"task.name must be one of {TASK_NAMES}, got {self.name!r}")
        if self.seq_len < 8:
            raise ValueError(f"task.seq_len must be >= 8, got {self.seq_len}")
        if self.num_symbols < 2:
            raise ValueError(f"task.num_symbols must be >= 2, got {self.num_symbols}")
        if not 0.0 < self.margin <= 1.0:
            raise ValueError(f"task.margin must be in (0, 1], got {self.margin}")
        if self.name == "lookup":
            if not (1 <= self.num_pairs <= self.num_keys and self.num_queries >= 1):
                raise ValueError(
                    "lookup needs 1 <= num_pairs <= num_keys and num_queries >= 1, got "
                    f"num_pairs={self.num_pairs}, num_keys={self.num_keys}, num_queries={self.num_queries}"
                )
            if self.pair_copies < 1:
                raise ValueError(f"task.pair_copies must be >= 1, got {self.pair_copies}")
            if self.num_pairs * self.pair_copies > self.seq_len // 2 or self.num_queries > self.seq_len // 2:
                raise ValueError(
                    f"lookup: {self.num_pairs}x{self.pair_copies} pairs / {self.num_queries} queries do not fit "
                    f"in halves of seq_len={self.seq_len}"
                )
            if self.num_values < 2:
                raise ValueError(f"task.num_values must be >= 2, got {self.num_values}")
        if not self.positive_weight > 0:
            raise ValueError(f"task.positive_weight must be > 0, got {self.positive_weight}")
        if self.eval_size < 1:
            raise ValueError(f"task.eval_size must be >= 1, got {self.eval_size}")


class SyntheticTask(CountingTask):
    """Generator, collator and metric of one synthetic task.

    Args:
        spec: the task settings.
    """

    def __init__(self, spec: TaskSpec) -> None:
        self.spec = spec
        if spec.name == "lookup":
            # ids: [1, F] filler, then pair tokens (key k, value v) -> pair0 + k·num_values + v, then queries.
            self._filler = 8
            self._pair0 = 1 + self._filler
            self._query0 = self._pair0 + spec.num_keys * spec.num_values
            self.vocab_size = self._query0 + spec.num_keys
        else:
            self.vocab_size = 1 + spec.num_symbols

    # ---- what the model needs to know --------------------------------------------------------------------
    @property
    def num_labels(self) -> int:
        """Number of classes of the head."""
        if self.spec.name == "majority":
            return self.spec.num_symbols
        if self.spec.name == "majority_tagging":
            return 2
        return self.spec.num_values

    @property
    def metric_name(self) -> str:
        """Name of the headline metric (higher is better)."""
        return {"majority": "accuracy", "majority_tagging": "f1", "lookup": "accuracy"}[self.spec.name]

    @property
    def chance(self) -> float:
        """Headline metric of an input-blind guesser (uniform for classes; all-positive F1 for tagging)."""
        s = self.spec
        if s.name == "majority":
            return 1.0 / s.num_symbols
        if s.name == "lookup":
            return 1.0 / s.num_values
        p = self._majority_top_count() / s.seq_len  # positive rate, fixed by construction
        return 2 * p / (1 + p)

    @property
    def seq_len(self) -> int:
        """L."""
        return self.spec.seq_len

    def build_model(self, settings: Any) -> torch.nn.Module:
        """A classification (``majority``) or tagging model from scratch, sized by ``settings``."""
        # majority has one label per example, the tagging and lookup tasks one per position
        head = GmatForSequenceClassification if self.spec.name == "majority" else GmatForTokenClassification
        return factory.build_model(
            head,
            settings,
            vocab_size=self.vocab_size,
            max_length=self.spec.seq_len,
            num_labels=self.num_labels,
            pad_token_id=PAD_ID,
        )

    # ---- generation ------------------------------------------------------------------------------------
    def _rng(self, split: str, index: int) -> np.random.Generator:
        if split not in _SPLIT_IDS:
            raise ValueError(f"split must be one of {sorted(_SPLIT_IDS)}, got {split!r}")
        if index < 0:
            raise ValueError(f"index must be >= 0, got {index}")
        return np.random.default_rng([self.spec.seed, _SPLIT_IDS[split], index])

    def _majority_top_count(self) -> int:
        """Count of the majority symbol: the smallest top such that every other count fits under top - gap."""
        s = self.spec
        gap = max(1, round(s.margin * s.seq_len / s.num_symbols))
        return math.ceil((s.seq_len + (s.num_symbols - 1) * gap) / s.num_symbols)

    def majority_counts(self, rng: np.random.Generator) -> np.ndarray:
        """Symbol counts with a unique majority exactly ``gap`` ahead of the runner-up(s).

        Returns:
            ``(V,)`` int64 counts summing to L; entry ``argmax`` is the majority.
        """
        s = self.spec
        v, n = s.num_symbols, s.seq_len
        gap = max(1, round(s.margin * n / v))
        top = self._majority_top_count()
        others = np.full(v - 1, top - gap, dtype=np.int64)
        excess = int(others.sum()) + top - n  # in [0, v-1]: remove it from random other symbols
        if excess > 0:
            others[rng.choice(v - 1, size=excess, replace=False)] -= 1
        counts = np.empty(v, dtype=np.int64)
        label = int(rng.integers(v))
        counts[label] = top
        counts[np.arange(v) != label] = others
        return counts

    def example(self, split: str, index: int) -> dict[str, np.ndarray | int]:
        """Generate example ``index`` of ``split`` as numpy arrays.

        Returns:
            ``{"input_ids": (L,) int64, "labels": int or (L,) int64}``.
        """
        s = self.spec
        rng = self._rng(split, index)
        if s.name in ("majority", "majority_tagging"):
            counts = self.majority_counts(rng)
            symbols = rng.permutation(np.repeat(np.arange(s.num_symbols), counts))  # (L,)
            label = int(counts.argmax())
            ids = symbols + 1
            if s.name == "majority":
                return {"input_ids": ids, "labels": label}
            return {"input_ids": ids, "labels": (symbols == label).astype(np.int64)}
        return self._lookup_example(rng)

    def _lookup_example(self, rng: np.random.Generator) -> dict[str, np.ndarray | int]:
        s = self.spec
        half = s.seq_len // 2
        ids = rng.integers(1, 1 + self._filler, size=s.seq_len)  # filler noise
        labels = np.full(s.seq_len, IGNORE_INDEX, dtype=np.int64)
        keys = rng.choice(s.num_keys, size=s.num_pairs, replace=False)
        values = rng.integers(s.num_values, size=s.num_pairs)
        slots = rng.choice(half, size=s.num_pairs * s.pair_copies, replace=False)  # distinct, first half
        ids[slots] = np.tile(self._pair0 + keys * s.num_values + values, s.pair_copies)
        # every pair is asked at least once when there are enough queries; the rest ask random pairs again
        asked = rng.permutation(np.resize(rng.permutation(s.num_pairs), s.num_queries))
        where = half + rng.choice(s.seq_len - half, size=s.num_queries, replace=False)
        ids[where] = self._query0 + keys[asked]
        labels[where] = values[asked]
        return {"input_ids": ids.astype(np.int64), "labels": labels}

    def batch(self, split: str, indices: list[int] | range) -> dict[str, torch.Tensor]:
        """Collate examples ``indices`` of ``split`` into tensors.

        Returns:
            ``input_ids (B, L)`` int64, ``attention_mask (B, L)`` int64 (all ones: fixed length), and
            ``labels`` ``(B,)`` or ``(B, L)`` int64.
        """
        examples = [self.example(split, i) for i in indices]
        input_ids = torch.from_numpy(np.stack([e["input_ids"] for e in examples]))
        labels = torch.as_tensor(np.stack([np.asarray(e["labels"]) for e in examples]), dtype=torch.int64)
        return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "labels": labels}

    def eval_indices(self, split: str = "eval") -> range:
        """The first ``eval_size`` examples of ``split`` (every example is generated from its index)."""
        return range(self.spec.eval_size)

    # ---- loss and metrics -------------------------------------------------------------------------------
    def forward_loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[Any, torch.Tensor]:
        """Run ``model`` without its own loss and return ``(outputs, self.loss(logits, labels))``."""
        out = model(**{k: v for k, v in batch.items() if k != "labels"})
        return out, self.loss(out.logits, batch["labels"])

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Training loss: cross-entropy over labelled positions, positives weighted for tagging.

        Args:
            logits: ``(B, num_labels)`` or ``(B, L, num_labels)``.
            labels: ``(B,)`` or ``(B, L)``, ``IGNORE_INDEX`` where unlabelled.
        """
        weight = None
        if self.spec.name == "majority_tagging" and self.spec.positive_weight != 1.0:
            weight = logits.new_tensor([1.0, self.spec.positive_weight], dtype=torch.float32)
        flat = logits.float().reshape(-1, logits.shape[-1])
        return torch.nn.functional.cross_entropy(flat, labels.reshape(-1), weight=weight, ignore_index=IGNORE_INDEX)

    # ---- metrics ---------------------------------------------------------------------------------------
    def metric_counts(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Additive statistics of a batch, summed across batches and processes before ``compute_metrics``.

        Returns:
            float64 ``(4,)``: ``[correct, total, 0, 0]`` for accuracy tasks, ``[tp, fp, fn, tn]`` for tagging.
            A position whose logits are not all finite counts as wrong (a false positive or negative).
        """
        # a row of non-finite logits predicts nothing: it is scored wrong (never as argmax's class 0)
        finite = prediction_is_finite(logits)
        pred = torch.where(finite, logits.argmax(dim=-1), -1)
        valid = labels != IGNORE_INDEX
        if self.spec.name == "majority_tagging":
            positive = torch.where(finite, pred == 1, labels != 1)  # non-finite: the wrong class, fp or fn
            p, t = positive & valid, (labels == 1) & valid
            stats = [(p & t).sum(), (p & ~t & valid).sum(), (~p & t).sum(), (~p & ~t & valid).sum()]
        else:
            stats = [((pred == labels) & valid).sum(), valid.sum(), pred.new_zeros(()), pred.new_zeros(())]
        return torch.stack(stats).to(torch.float64).cpu()

    def compute_metrics(self, counts: torch.Tensor) -> dict[str, float]:
        """Metrics from summed ``metric_counts``."""
        return compute_metrics(self.spec.name, counts)


def compute_metrics(task_name: str, counts: torch.Tensor) -> dict[str, float]:
    """Metrics of ``task_name`` from summed ``metric_counts`` (see ``SyntheticTask.metric_counts``).

    Returns:
        ``{"accuracy"}`` for classification tasks; ``{"f1", "balanced_accuracy", "accuracy"}`` for tagging.
    """
    c = [float(x) for x in counts]
    if task_name != "majority_tagging":
        return {"accuracy": c[0] / max(c[1], 1.0)}
    tp, fp, fn, tn = c
    f1 = 2 * tp / max(2 * tp + fp + fn, 1.0)
    tpr = tp / max(tp + fn, 1.0)
    tnr = tn / max(tn + fp, 1.0)
    return {"f1": f1, "balanced_accuracy": (tpr + tnr) / 2, "accuracy": (tp + tn) / max(sum(c), 1.0)}


def chunk_oracle_accuracy(task: SyntheticTask, chunk_size: int, num_examples: int = 200, split: str = "test") -> float:
    """How often the majority symbol of one chunk equals the global label (``majority`` tasks).

    This is the best a model could do from chunk 0 alone if it knew the exact chunk counts (ties broken
    at random); compare with ``task.chance`` and with 1.0 for a model that sees everything.
    """
    if task.spec.name not in ("majority", "majority_tagging"):
        raise ValueError(f"the chunk oracle is defined for majority tasks, got {task.spec.name!r}")
    rng = np.random.default_rng(12345)
    hits = 0
    for i in range(num_examples):
        ex = task.example(split, i)
        ids = np.asarray(ex["input_ids"])
        label = int(ex["labels"]) if task.spec.name == "majority" else int(ids[np.asarray(ex["labels"]) == 1][0] - 1)
        start = int(rng.integers(0, max(1, len(ids) // chunk_size))) * chunk_size
        counts = np.bincount(ids[start : start + chunk_size] - 1, minlength=task.spec.num_symbols)
        best = np.flatnonzero(counts == counts.max())
        hits += int(rng.choice(best) == label)
    return hits / num_examples


def chunk_oracle_tagging_f1(
    task: SyntheticTask, chunk_size: int, num_examples: int = 200, split: str = "test"
) -> float:
    """Positive-class F1 of the best-known chunk-local tagger on ``majority_tagging``.

    Each position is tagged positive when its symbol is among the most frequent symbols of its own chunk
    (exact counts). This is what a model that sees only its chunk can do; 1.0 when the chunk is the whole
    sequence.
    """
    if task.spec.name != "majority_tagging":
        raise ValueError(f"the tagging oracle is defined for majority_tagging, got {task.spec.name!r}")
    tp = fp = fn = 0
    for i in range(num_examples):
        ex = task.example(split, i)
        symbols, positive = np.asarray(ex["input_ids"]) - 1, np.asarray(ex["labels"]) == 1
        for start in range(0, len(symbols), chunk_size):
            chunk = symbols[start : start + chunk_size]
            counts = np.bincount(chunk, minlength=task.spec.num_symbols)
            pred, truth = (counts == counts.max())[chunk], positive[start : start + chunk_size]
            tp += int((pred & truth).sum())
            fp += int((pred & ~truth).sum())
            fn += int((~pred & truth).sum())
    return 2 * tp / max(2 * tp + fp + fn, 1)


def make_task(spec: TaskSpec) -> SyntheticTask:
    """Build the task described by ``spec``."""
    return SyntheticTask(spec)
