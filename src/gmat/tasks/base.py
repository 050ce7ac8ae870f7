"""What a task gives the training loop (``Task``), and the shared evaluation of tasks scored by counts.

The loop (``gmat.training.loop.train``) knows nothing about any task beyond this protocol:

* ``build_model(settings)`` — the model, through ``gmat.modeling.factory.build_model`` (the task picks the head
  class and the task-side config fields: vocabulary, labels, L);
* ``batch("train", indices)`` — the training examples at global indices (a pure function of the index, so a
  data-parallel or resumed run sees the same global batches);
* ``forward_loss(model, batch)`` — ``(outputs, loss)``;
* ``evaluate(model, ...)`` — a metrics dictionary, identical on every rank; ``metric_name`` is its headline
  key, and the key that picks the best checkpoint unless the task names another in an optional ``best_metric``
  attribute (MLM: ``mlm_loss``) or the run sets ``train.best_metric``;
* ``checkpoint_files()`` — extra files (a tokenizer) saved next to every checkpoint's weights.

A prediction from a row of non-finite logits is never a class: ``prediction_is_finite`` marks those rows,
and a task's counts score them as wrong (argmax of an all-NaN row would otherwise say class 0).

Most tasks score a split by summing additive statistics over batches and ranks (``CountingTask``): they give
``iter_eval`` / ``metric_counts`` / ``compute_metrics`` and inherit ``evaluate`` and ``forward_loss``.
"""

from __future__ import annotations

import contextlib
import os
import platform
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

__all__ = [
    "IGNORE_INDEX",
    "CountingTask",
    "Reduce",
    "Task",
    "check_batch",
    "hardware_description",
    "prediction_is_finite",
]

IGNORE_INDEX = -100

Reduce = Callable[[torch.Tensor], torch.Tensor]  # sums a CPU tensor over the data-parallel ranks


@runtime_checkable
class Task(Protocol):
    """The interface between a task and the training loop (see the module docstring)."""

    metric_name: str  # the headline key of ``evaluate``'s result (and the default ``best_metric``)

    @property
    def seq_len(self) -> int:
        """L, tokens per training example (for throughput logging)."""

    def build_model(self, settings: Any) -> torch.nn.Module:
        """The model of a run with these ``ModelSettings``."""

    def batch(self, split: str, indices: Any) -> dict[str, torch.Tensor]:
        """The examples ``indices`` of ``split`` as model inputs (with ``labels``)."""

    def forward_loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[Any, torch.Tensor]:
        """Run ``model`` on ``batch``: ``(outputs, loss)``."""

    def evaluate(
        self,
        model: torch.nn.Module,
        *,
        batch_size: int,
        device: torch.device,
        rank: int = 0,
        world_size: int = 1,
        reduce: Reduce | None = None,
        autocast: contextlib.AbstractContextManager | None = None,
        split: str = "eval",
        out_dir: Path | None = None,
    ) -> dict[str, Any]:
        """Metrics of ``model`` on ``split``, the same on every rank (``reduce`` sums across ranks)."""

    def checkpoint_files(self) -> dict[str, bytes]:
        """Files saved next to every checkpoint's weights (``{}`` when none)."""


def prediction_is_finite(logits: torch.Tensor) -> torch.Tensor:
    """``(...,)`` bool: True where the row of class scores ``logits (..., K)`` is all finite.

    A row with a NaN or an infinity has no meaningful argmax (``argmax`` of an all-NaN row is 0), so counts
    score its prediction as wrong.
    """
    return torch.isfinite(logits).all(dim=-1)


# batch key -> the model config field that bounds its ids
_ID_LIMITS = {"input_ids": "vocab_size", "token_type_ids": "type_vocab_size", "position_ids": "max_position_embeddings"}


def check_batch(batch: dict[str, torch.Tensor], config: Any, where: str, *, require_labels: bool = False) -> None:
    """Refuse a batch the model cannot embed (ids outside its tables), before it reaches the model.

    Run on the CPU batch a task returns (one min / max per id tensor, no device sync), so a bad id is a
    one-line error naming the tensor, the id and the table size rather than an ``IndexError`` from inside the
    embedding (or a device-side assert on CUDA).

    Args:
        batch: the task's batch (CPU tensors).
        config: the model's config (``vocab_size``, ``type_vocab_size``, ``max_position_embeddings``); None
            skips the id checks.
        where: what the batch is, for the message (``"train batch of step 3"``).
        require_labels: also refuse a ``labels`` tensor with no labelled position (all ``IGNORE_INDEX``):
            a mean loss over zero tokens is NaN.

    Raises:
        ValueError: naming the tensor and the offending value.
    """
    for key, field in _ID_LIMITS.items():
        ids, size = batch.get(key), getattr(config, field, None)
        if ids is None or size is None or ids.numel() == 0 or ids.is_floating_point():
            continue
        low, high = int(ids.min()), int(ids.max())
        if low < 0 or high >= size:
            raise ValueError(
                f"{where}: {key} holds {low if low < 0 else high}, outside the model's [0, {size}) "
                f"({field}={size}); the task's ids and the model disagree (check task.tokenizer / task.pretrained)"
            )
    labels = batch.get("labels")
    if require_labels and labels is not None and labels.numel() and not (labels != IGNORE_INDEX).any():
        raise ValueError(
            f"{where}: no labelled position (every label is {IGNORE_INDEX}), so its loss is undefined (NaN)"
        )


class CountingTask:
    """Base of tasks scored by additive counts: ``evaluate`` sums ``metric_counts`` over batches and ranks.

    Subclasses give ``batch(split, indices)``, ``eval_indices(split)``, ``metric_counts(logits, labels)`` (a
    float64 CPU vector) and ``compute_metrics(counts)``; they may override ``forward_loss``.
    """

    def checkpoint_files(self) -> dict[str, bytes]:
        """No extra files by default."""
        return {}

    def forward_loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[Any, torch.Tensor]:
        """The model's own loss on ``batch``."""
        out = model(**batch)
        return out, out.loss

    def eval_indices(self, split: str = "eval") -> Any:
        """The example indices of an evaluation split (an array or a range)."""
        raise NotImplementedError

    def iter_eval(
        self, batch_size: int, rank: int = 0, world_size: int = 1, split: str = "eval"
    ) -> Iterator[dict[str, torch.Tensor]]:
        """Yield this rank's share (``rank::world_size``) of ``eval_indices(split)``, in batches."""
        mine = self.eval_indices(split)[rank::world_size]
        for start in range(0, len(mine), batch_size):
            yield self.batch(split, mine[start : start + batch_size])

    def metric_counts(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Additive statistics of one batch."""
        raise NotImplementedError

    def compute_metrics(self, counts: torch.Tensor) -> dict[str, float]:
        """Metrics from the summed statistics."""
        raise NotImplementedError

    @torch.no_grad()
    def evaluate(
        self,
        model: torch.nn.Module,
        *,
        batch_size: int,
        device: torch.device,
        rank: int = 0,
        world_size: int = 1,
        reduce: Reduce | None = None,
        autocast: contextlib.AbstractContextManager | None = None,
        split: str = "eval",
        out_dir: Path | None = None,
    ) -> dict[str, Any]:
        """The task's metrics plus ``"loss"`` (mean per-batch loss), sharded over ranks and summed.

        ``out_dir`` is unused: counted metrics have no per-example files.
        """
        reduce = reduce or (lambda t: t)
        was_training = model.training
        model.eval()
        counts: torch.Tensor | None = None
        loss_stats = torch.zeros(2, dtype=torch.float64)  # [sum of batch losses, batches]
        config = getattr(model, "config", None)
        for batch in self.iter_eval(batch_size, rank, world_size, split=split):
            check_batch(batch, config, f"{split} batch")
            labelled = "labels" not in batch or bool((batch["labels"] != IGNORE_INDEX).any())
            batch = {k: v.to(device) for k, v in batch.items()}
            with autocast or contextlib.nullcontext():
                out, loss = self.forward_loss(model, batch)
            batch_counts = self.metric_counts(out.logits.float(), batch["labels"])
            counts = batch_counts if counts is None else counts + batch_counts
            if labelled:  # a batch without labelled positions has no loss (its mean would be NaN)
                loss_stats += torch.tensor([float(loss), 1.0], dtype=torch.float64)
        # a rank without a batch (more ranks than batches) learns the length of the counts from the others
        mine = counts if counts is not None else torch.zeros(0, dtype=torch.float64)
        size, ranks = reduce(torch.tensor([mine.numel(), float(mine.numel() > 0)], dtype=torch.float64)).tolist()
        counts = reduce(mine if mine.numel() else torch.zeros(int(size // max(ranks, 1.0)), dtype=torch.float64))
        loss_stats = reduce(loss_stats)
        model.train(was_training)
        metrics = self.compute_metrics(counts)
        metrics["loss"] = float(loss_stats[0] / max(loss_stats[1], 1.0))
        return metrics


def hardware_description(device: torch.device) -> str:
    """Describe in one line where a number was measured (CPU model / GPU name, threads)."""
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA), torch {torch.__version__}"
    cpu = platform.processor() or platform.machine()
    return (
        f"CPU {cpu}, {os.cpu_count()} logical cores visible, {torch.get_num_threads()} torch threads, "
        f"torch {torch.__version__}"
    )


def evenly_spaced(n: int, count: int) -> np.ndarray:
    """``count`` evenly spaced indices of ``range(n)`` (all of them when ``count`` is 0 or at least ``n``)."""
    if count == 0 or count >= n:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, count).round().astype(np.int64))
