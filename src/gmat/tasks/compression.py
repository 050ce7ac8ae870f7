"""Data and metrics of the two compression tasks (docs/design.md §2); the model is ``gmat.modeling.compression``.

* **Reconstruction** (task (a)): an example is one packed length-L window of the corpus; the model
  compresses it into M memory vectors and predicts every token from them. Labels are the input ids
  (``[CLS]`` excluded: it is always the same token). Score: token accuracy and perplexity against L/M.
* **Compressed context** (task (b)): an example is a window of ``context_len + seq_len`` tokens of the
  stream, split into segment A (``[CLS]`` + the first ``context_len - 1`` stream tokens) and segment B (the
  next ``seq_len`` tokens). B is masked as in MLM (80/10/10). Three ways to give the context:

  ``"compressed"`` — ``context_ids`` = A for a ``GmatForCompression`` (decoder_input="tokens"), which reads
  A only through its M memory vectors; ``"none"`` — B alone (the same model type, learned initial memory);
  ``"full"`` — one sequence A + B for a dense ``GmatForMaskedLM``, with labels on B only.

Both are ``Task``s scored by counts (``gmat.tasks.base.CountingTask``), with examples and masks a pure function
of ``(seed, split, index)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from gmat.data.corpus import PackedExamples, WordPieceTokenizer
from gmat.modeling import GmatForMaskedLM, factory
from gmat.modeling.compression import GmatCompressionConfig, GmatForCompression, compression_from_masked_lm
from gmat.modeling.factory import ModelSettings
from gmat.tasks.base import CountingTask, evenly_spaced
from gmat.tasks.mlm import IGNORE_INDEX, CorpusSettings, mask_tokens, masked_token_counts, pack_split

__all__ = [
    "COMPRESSION_TASKS",
    "CONTEXT_MODES",
    "CompressionTask",
    "CompressionTaskSpec",
    "memory_swap_losses",
    "per_example_losses",
    "token_metrics",
]

COMPRESSION_TASKS = ("reconstruction", "compressed_context")
CONTEXT_MODES = ("compressed", "none", "full")
_SPLIT_IDS = {"train": 0, "eval": 1, "test": 2}


@dataclass(frozen=True)
class CompressionTaskSpec(CorpusSettings):
    """Settings of a compression run (the ``task:`` section of a run config): ``CorpusSettings`` plus the below.

    Attributes:
        name: ``"reconstruction"`` or ``"compressed_context"``.
        seq_len: L of reconstruction, or the length of segment B.
        context_len: length of segment A (``compressed_context`` only).
        context_mode: ``"compressed"``, ``"none"`` or ``"full"`` (``compressed_context`` only).
        mlm_probability: masking rate of segment B.
        seed: seed of example order and masking.
        eval_size: number of evaluation examples (evenly spaced; 0 = all).
        train_label_fraction: reconstruction only: each training example labels a random fraction of its
            positions (seeded by example), to save LM-head time; evaluation always scores every position.
        pretrained: start from a trained MLM model instead of from scratch: a GMAT ``GmatForMaskedLM``
            folder, a BERT checkpoint or ``"minilm"`` (converted with the run's M and pattern); see
            ``build_compression_model``. Empty = from scratch.
    """

    name: str = "reconstruction"
    seq_len: int = 512
    context_len: int = 2048
    context_mode: str = "compressed"
    mlm_probability: float = 0.15
    seed: int = 0
    eval_size: int = 128
    train_label_fraction: float = 1.0
    pretrained: str = ""

    def __post_init__(self) -> None:
        if self.name not in COMPRESSION_TASKS:
            raise ValueError(f"task.name must be one of {COMPRESSION_TASKS}, got {self.name!r}")
        if self.context_mode not in CONTEXT_MODES:
            raise ValueError(f"task.context_mode must be one of {CONTEXT_MODES}, got {self.context_mode!r}")
        if self.seq_len < 2 or (self.name == "compressed_context" and self.context_len < 2):
            raise ValueError(f"task.seq_len and task.context_len must be >= 2, got {self.seq_len}, {self.context_len}")
        if not 0.0 < self.mlm_probability < 1.0 or self.eval_size < 0:
            raise ValueError(
                f"task.mlm_probability must be in (0, 1) and task.eval_size >= 0, got "
                f"{self.mlm_probability}, {self.eval_size}"
            )
        if not 0.0 < self.train_label_fraction <= 1.0:
            raise ValueError(f"task.train_label_fraction must be in (0, 1], got {self.train_label_fraction}")


def token_metrics(counts: torch.Tensor) -> dict[str, float]:
    """``{"accuracy", "loss", "perplexity", "tokens"}`` from summed ``[loss_sum, correct, tokens, ...]``."""
    loss_sum, correct, n = float(counts[0]), float(counts[1]), float(counts[2])
    loss = loss_sum / max(n, 1.0)
    return {"accuracy": correct / max(n, 1.0), "loss": loss, "perplexity": math.exp(loss), "tokens": int(n)}


class CompressionTask(CountingTask):
    """Examples, collation and metrics of a compression task.

    Args:
        spec: the task settings.
        progress: show tokenisation progress bars.
    """

    metric_name = "accuracy"

    def __init__(self, spec: CompressionTaskSpec, *, progress: bool = True) -> None:
        self.spec = spec
        self.progress = progress
        self.tokenizer = WordPieceTokenizer(spec.tokenizer or None)
        self.special = self.tokenizer.special
        self.vocab_size = self.tokenizer.vocab_size
        self.num_labels = self.vocab_size
        self._packed: dict[str, PackedExamples] = {}

    @property
    def window(self) -> int:
        """Tokens per example: L, or L_A + L_B."""
        s = self.spec
        return s.seq_len if s.name == "reconstruction" else s.context_len + s.seq_len

    @property
    def seq_len(self) -> int:
        """Tokens per example (for throughput): L, or L_A + L_B."""
        return self.window

    def checkpoint_files(self) -> dict[str, bytes]:
        """The tokenizer's files, saved next to every checkpoint's weights (the folder is then self-contained)."""
        return self.tokenizer.transformers_files(model_max_length=self.window)

    def build_model(self, settings: ModelSettings) -> torch.nn.Module:
        """The model this task needs, from scratch or from ``task.pretrained``.

        ``reconstruction`` → ``GmatForCompression`` (content-free decoder); ``compressed_context`` with
        ``context_mode`` ``"compressed"`` / ``"none"`` → ``GmatForCompression`` (the decoder reads segment B);
        ``"full"`` → a ``GmatForMaskedLM`` over A + B (``attention_pattern: dense`` for the paper's baseline),
        which uses ``model.num_hidden_layers`` instead of the three stack sizes.

        With ``task.pretrained`` the masked-LM model it names (converted with the settings' M and pattern)
        gives the sizes and the weights (``compression_from_masked_lm``); the settings' sizes are then unused.
        """
        spec = self.spec
        full = spec.name == "compressed_context" and spec.context_mode == "full"
        layers = dict(
            num_encoder_layers=settings.num_encoder_layers,
            num_bottleneck_layers=settings.num_bottleneck_layers,
            num_decoder_layers=settings.num_decoder_layers,
            decoder_input="content_free" if spec.name == "reconstruction" else "tokens",
            mask_token_id=self.special.mask,
        )
        task_fields = dict(
            vocab_size=self.vocab_size,
            max_length=self.window,
            pad_token_id=self.special.pad,
            sparse_prediction=True,  # the vocabulary head scores only the labelled positions
        )
        if spec.pretrained or full:
            mlm = factory.build_model(GmatForMaskedLM, settings, init=spec.pretrained, **task_fields)
            return mlm if full else compression_from_masked_lm(mlm, **layers)
        config = factory.gmat_config(settings, config_class=GmatCompressionConfig, **layers, **task_fields)
        return GmatForCompression(config)

    def examples(self, split: str) -> PackedExamples:
        """Return the packed windows of ``split``, tokenising the corpus on first use."""
        if split not in self._packed:
            self._packed[split] = pack_split(self.spec, split, self.tokenizer, self.window, self.progress)
        return self._packed[split]

    def eval_indices(self, split: str = "eval") -> np.ndarray:
        """``eval_size`` evenly spaced example indices of an evaluation split (all when 0 or fewer)."""
        return evenly_spaced(len(self.examples(split)), self.spec.eval_size)

    def _example_id(self, split: str, index: int) -> int:
        n = len(self.examples(split))
        if split != "train":
            return int(index) % n
        epoch, pos = divmod(int(index), n)
        return int(np.random.default_rng([self.spec.seed, 99, epoch]).permutation(n)[pos])

    def batch(self, split: str, indices: list[int] | range | np.ndarray) -> dict[str, torch.Tensor]:
        """Collate examples ``indices`` of ``split``.

        Returns:
            reconstruction: ``input_ids``, ``attention_mask``, ``labels`` ``(B, L)``.
            compressed_context: ``input_ids`` / ``attention_mask`` / ``labels`` of B ``(B, L_B)`` plus
            ``context_ids`` / ``context_attention_mask`` ``(B, L_A)`` ("compressed"); B only ("none"); or
            A + B as one ``(B, L_A + L_B)`` sequence with labels on B ("full").
        """
        s = self.spec
        packed = self.examples(split)
        windows = np.stack([packed[self._example_id(split, int(i))] for i in indices])  # (B, window)
        if s.name == "reconstruction":
            ids = torch.from_numpy(windows)
            labels = ids.clone()
            labels[:, 0] = IGNORE_INDEX  # [CLS]
            if split == "train" and s.train_label_fraction < 1.0:
                for row, i in zip(labels, indices):
                    rng = np.random.default_rng([s.seed, _SPLIT_IDS[split], int(i)])
                    row[torch.from_numpy(rng.random(row.shape[0]) >= s.train_label_fraction)] = IGNORE_INDEX
            return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
        context, segment = windows[:, : s.context_len], windows[:, s.context_len :]
        inputs, labels = [], []
        for row, i in zip(segment, indices):
            rng = np.random.default_rng([s.seed, _SPLIT_IDS[split], int(i)])
            x, y = mask_tokens(
                row, rng, special=self.special, vocab_size=self.vocab_size, probability=s.mlm_probability
            )
            inputs.append(x)
            labels.append(y)
        x_b, y_b = torch.from_numpy(np.stack(inputs)), torch.from_numpy(np.stack(labels))
        ctx = torch.from_numpy(context)
        if s.context_mode == "full":
            ids = torch.cat([ctx, x_b], dim=1)
            lab = torch.cat([torch.full_like(ctx, IGNORE_INDEX), y_b], dim=1)
            return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": lab}
        out = {"input_ids": x_b, "attention_mask": torch.ones_like(x_b), "labels": y_b}
        if s.context_mode == "compressed":
            out["context_ids"] = ctx
            out["context_attention_mask"] = torch.ones_like(ctx)
        return out

    def metric_counts(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Return ``[loss_sum, correct, tokens, 0]`` (float64) over labels != -100 (``masked_token_counts``)."""
        return masked_token_counts(logits, labels)

    def compute_metrics(self, counts: torch.Tensor) -> dict[str, float]:
        """``{"accuracy", "loss", "perplexity", "tokens"}`` from summed ``metric_counts``."""
        return token_metrics(counts)


def memory_swap_losses(
    model: torch.nn.Module, task: CompressionTask, split: str = "eval", batch_size: int = 8
) -> dict[str, float]:
    """Reconstruction control: the loss with each example's own memory and with another example's.

    Does the decoder read the memory at all? Scores the evaluation examples of ``split`` twice, decoding each
    from its own memory and from the memory of the next example in its batch (a cyclic shift). Equal losses
    mean the decoder ignores the memory: its predictions then come from positions and token frequencies alone.

    Args:
        model: a ``GmatForCompression`` with ``decoder_input="content_free"``.
        task: the reconstruction task; ``batch_size`` >= 2, so that every batch has another example.

    Returns:
        ``{"own_loss", "swapped_loss", "swap_gap", "tokens"}``: mean loss per scored token (nats), the gap
        swapped - own, and the number of scored tokens (a last batch of one example is skipped).

    Raises:
        ValueError: for another task or decoder, or ``batch_size`` < 2.
    """
    if task.spec.name != "reconstruction" or getattr(model.config, "decoder_input", None) != "content_free":
        raise ValueError(
            "memory_swap_losses is a reconstruction control: task.name='reconstruction' and a "
            f"content-free decoder, got {task.spec.name!r} and "
            f"{getattr(model.config, 'decoder_input', None)!r}"
        )
    if batch_size < 2:
        raise ValueError(f"batch_size must be >= 2 (the memory comes from another example), got {batch_size}")
    totals = {"own": 0.0, "swapped": 0.0}
    tokens = 0
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for batch in task.iter_eval(batch_size, split=split):
            if batch["input_ids"].shape[0] < 2:
                continue
            labels, mask = batch["labels"], batch.get("attention_mask")
            scored = labels != IGNORE_INDEX  # (B, L)
            memory = model.encode(batch["input_ids"], mask)  # (B, M, d)
            for name, mem in (("own", memory), ("swapped", memory.roll(1, dims=0))):
                hidden = model.decode(mem, None, mask, length=labels.shape[1])  # (B, L, d)
                logits = model.cls(hidden[scored]).float()  # (N, V)
                totals[name] += float(torch.nn.functional.cross_entropy(logits, labels[scored], reduction="sum"))
            tokens += int(scored.sum())
    model.train(was_training)
    n = max(tokens, 1)
    own, swapped = totals["own"] / n, totals["swapped"] / n
    return {"own_loss": own, "swapped_loss": swapped, "swap_gap": swapped - own, "tokens": tokens}


def per_example_losses(
    model: torch.nn.Module, task: CompressionTask, split: str = "eval", batch_size: int = 8
) -> dict[int, list[float]]:
    """Each evaluation example's summed loss and scored-token count, for paired comparisons between models.

    Every context mode scores the same masked tokens of segment B (the masks are seeded by example), so two
    models' results on one split can be compared example by example.

    Args:
        model: any model of a compression task (``GmatForCompression`` or the ``"full"`` ``GmatForMaskedLM``).
        task: its task.
        split: ``"eval"`` or ``"test"``.
        batch_size: examples per forward pass (>= 1).

    Returns:
        ``{example index: [loss_sum (nats), scored tokens]}`` over ``task.eval_indices(split)``.

    Raises:
        ValueError: if ``batch_size`` < 1.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    indices = task.eval_indices(split)
    out: dict[int, list[float]] = {}
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for start in range(0, len(indices), batch_size):
            chunk = indices[start : start + batch_size]
            batch = task.batch(split, chunk)
            labels = batch["labels"]
            scored = labels != IGNORE_INDEX  # (B, L)
            logits = model(**batch).logits.float()  # (N, V) labelled rows in row-major order, or (B, L, V)
            logits = logits if logits.dim() == 2 else logits[scored]
            loss = torch.nn.functional.cross_entropy(logits, labels[scored], reduction="none").double()  # (N,)
            rows = scored.nonzero()[:, 0]  # (N,) the example of each scored token
            sums = torch.zeros(len(chunk), dtype=torch.float64).index_add_(0, rows, loss)
            for i, total, n in zip(chunk, sums.tolist(), scored.sum(1).tolist()):
                out[int(i)] = [total, float(n)]
    model.train(was_training)
    return out
