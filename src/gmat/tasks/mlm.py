"""Masked language modelling on real text: dynamic masking, metrics split by chunk locality, evaluation.

* ``mask_tokens`` — BERT's dynamic masking: each non-special token is selected with probability 0.15; of
  the selected, 80 % become ``[MASK]``, 10 % a random non-special token, 10 % stay unchanged. The random
  draws come from a generator seeded by ``(seed, split, example index)``, so an example's mask is a pure
  function of its index (resumable, identical across data-parallel layouts) and changes every epoch
  (the index keeps growing: dynamic masking).
* ``outside_chunk_flags`` — for every masked position p, whether its original token also occurs, visible
  (not masked), somewhere in the example *outside* p's chunk ``[C·(p//C), C·(p//C + 1))``. Those are the
  positions where a chunked model without memory cannot see the answer and memory may help. Tokens are
  WordPiece ids (a "word" here is one WordPiece token).
* ``MLMTask`` — the ``Task`` of a training run (``gmat.tasks.base``): packed examples of the train / eval /
  test corpora, scored by counts over masked tokens.
* ``evaluate_mlm`` — behind ``gmat eval mlm --model DIR --data F`` (``gmat.commands.evaluate``): loss,
  perplexity and accuracy over masked tokens, overall and split by ``outside_chunk_flags``.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from gmat.data.corpus import PackedExamples, SpecialTokens, TokenCache, WordPieceTokenizer, build_token_cache
from gmat.modeling import GmatForMaskedLM, factory
from gmat.modeling.factory import ModelSettings
from gmat.modeling.loading import LoadReport, load_pretrained
from gmat.modeling.probes import masked_lm_logits, swapped_memory
from gmat.tasks.base import CountingTask, evenly_spaced, prediction_is_finite

__all__ = [
    "CorpusSettings",
    "GROUPS",
    "IGNORE_INDEX",
    "MLMMetrics",
    "MLMTask",
    "MLMTaskSpec",
    "evaluate_mlm",
    "mask_tokens",
    "masked_token_counts",
    "outside_chunk_flags",
]

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100
_SPLIT_IDS = {"train": 0, "eval": 1, "test": 2}
# metric groups: every masked token; those visible elsewhere outside their chunk; the rest
GROUPS = ("all", "outside_chunk", "chunk_only")
DEFAULT_CACHE_DIR = "runs/token-cache"


# ---- masking ---------------------------------------------------------------------------------------------
def mask_tokens(
    ids: np.ndarray,
    rng: np.random.Generator,
    *,
    special: SpecialTokens,
    vocab_size: int,
    probability: float = 0.15,
) -> tuple[np.ndarray, np.ndarray]:
    """BERT's 80/10/10 masking of one example.

    Args:
        ids: ``(L,)`` int token ids (not modified).
        rng: the example's random generator.
        special: special token ids; they are never selected, and never drawn as random replacements.
        vocab_size: V; random replacements are uniform over the non-special ids of ``[0, V)``.
        probability: selection probability of each non-special token.

    Returns:
        ``(input_ids, labels)``, both ``(L,)`` int64: the corrupted input, and the original id at selected
        positions with ``-100`` elsewhere. At least one token is selected when the example has any
        non-special token.
    """
    ids = np.asarray(ids, dtype=np.int64)
    specials = np.asarray(special.as_tuple(), dtype=np.int64)
    candidates = ~np.isin(ids, specials)
    selected = (rng.random(ids.shape[0]) < probability) & candidates
    if not selected.any() and candidates.any():
        selected[rng.choice(np.flatnonzero(candidates))] = True
    labels = np.where(selected, ids, IGNORE_INDEX)
    roll = rng.random(ids.shape[0])
    inputs = ids.copy()
    inputs[selected & (roll < 0.8)] = special.mask
    replace = selected & (roll >= 0.8) & (roll < 0.9)
    n_replace = int(replace.sum())
    if n_replace:
        # draw from [0, V - #specials) and skip over the special ids (sorted), so specials are never drawn
        draws = rng.integers(0, vocab_size - len(np.unique(specials)), size=n_replace)
        for s in np.unique(specials):
            draws = draws + (draws >= s)
        inputs[replace] = draws
    return inputs, labels


def outside_chunk_flags(input_ids: torch.Tensor, labels: torch.Tensor, chunk_size: int) -> torch.Tensor:
    """Whether each masked token's original id is visible in the example outside the position's own chunk.

    Args:
        input_ids: ``(B, L)`` the (corrupted) model input.
        labels: ``(B, L)`` original ids at masked positions, -100 elsewhere.
        chunk_size: C; position p belongs to chunk ``p // C``.

    Returns:
        ``(B, L)`` bool, True at masked positions whose original id appears in ``input_ids`` at some
        position q with ``q // C != p // C``; False elsewhere (including unmasked positions).
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    bsz, length = input_ids.shape
    n_chunks = -(-length // chunk_size)
    chunk = (torch.arange(length, device=input_ids.device) // chunk_size).expand(bsz, length)  # (B, L)
    row = torch.arange(bsz, device=input_ids.device)[:, None].expand(bsz, length)  # (B, L)
    vocab = int(max(int(input_ids.max()), int(labels.max()), 0)) + 1
    # Count visible occurrences of each (row, token) and of each (row, token, chunk) with sorted keys.
    key_total = row * vocab + input_ids  # (B, L)
    key_chunk = key_total * n_chunks + chunk  # (B, L)
    masked = labels != IGNORE_INDEX
    target = torch.where(masked, labels, torch.zeros_like(labels))
    query_total = row * vocab + target
    query_chunk = query_total * n_chunks + chunk

    def count(keys: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
        sorted_keys = keys.reshape(-1).sort().values
        return (
            torch.searchsorted(sorted_keys, queries.reshape(-1), right=True)
            - torch.searchsorted(sorted_keys, queries.reshape(-1), right=False)
        ).view_as(queries)

    outside = count(key_total, query_total) - count(key_chunk, query_chunk)  # (B, L)
    return masked & (outside > 0)


# ---- metrics ---------------------------------------------------------------------------------------------
class MLMMetrics:
    """Accumulates per-token loss sums, correct predictions and counts for each group of ``GROUPS``."""

    def __init__(self) -> None:
        self.counts = torch.zeros(len(GROUPS), 3, dtype=torch.float64)  # [loss_sum, correct, tokens]
        self.per_example: dict[int, torch.Tensor] = {}  # example index -> its own (groups, 3) counts

    def update(
        self,
        logits: torch.Tensor,
        targets: torch.Tensor,
        outside: torch.Tensor,
        examples: torch.Tensor | None = None,
    ) -> None:
        """Add masked tokens.

        Args:
            logits: ``(N, V)`` logits of N masked tokens.
            targets: ``(N,)`` original ids.
            outside: ``(N,)`` bool, the ``outside_chunk_flags`` of those tokens.
            examples: ``(N,)`` the example index of each token, to also keep per-example counts (for paired
                comparisons of two models on the same examples).
        """
        loss = F.cross_entropy(logits.float(), targets, reduction="none").double().cpu()  # (N,)
        correct = ((logits.argmax(-1) == targets) & prediction_is_finite(logits)).double().cpu()
        outside = outside.cpu()

        def tally(keep: torch.Tensor) -> torch.Tensor:  # (groups, 3) over the tokens where keep is True
            groups = (keep, keep & outside, keep & ~outside)
            return torch.stack([torch.stack([loss[g].sum(), correct[g].sum(), g.sum().double()]) for g in groups])

        self.counts += tally(torch.ones_like(outside))
        if examples is not None:
            examples = examples.cpu()
            for e in examples.unique().tolist():
                mine = self.per_example.setdefault(int(e), torch.zeros(len(GROUPS), 3, dtype=torch.float64))
                mine += tally(examples == e)

    def compute(self) -> dict[str, dict[str, float]]:
        """``{group: {"loss", "perplexity", "accuracy", "tokens"}}`` (loss = mean nats per masked token)."""
        out = {}
        for g, name in enumerate(GROUPS):
            loss_sum, correct, n = (float(x) for x in self.counts[g])
            loss = loss_sum / n if n else float("nan")
            out[name] = {
                "loss": loss,
                "perplexity": (math.inf if loss > 700 else math.exp(loss)) if n else float("nan"),
                "accuracy": correct / n if n else float("nan"),
                "tokens": int(n),
            }
        return out


def masked_token_counts(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``[loss_sum, correct, scored tokens, 0]`` (float64, on CPU) of a batch, over labels != -100.

    Args:
        logits: ``(B, L, V)``; or ``(N, V)``, the rows of the N labelled positions in row-major order
            (``config.sparse_prediction``), or of N positions whose ``labels`` are ``(N,)``.
        labels: ``(B, L)`` or ``(N,)`` target ids, -100 = not scored.
    """
    sel = labels != IGNORE_INDEX
    targets = labels[sel]
    logits = (logits if logits.dim() == 2 else logits[sel]).float()
    if logits.shape[0] != targets.shape[0]:
        raise ValueError(f"logits has {logits.shape[0]} rows for {targets.shape[0]} labelled positions")
    loss = F.cross_entropy(logits, targets, reduction="sum") if targets.numel() else logits.new_zeros(())
    correct = ((logits.argmax(-1) == targets) & prediction_is_finite(logits)).sum()  # a NaN row is wrong
    return torch.stack(
        [loss.double(), correct.double(), sel.sum().double(), torch.zeros((), dtype=torch.float64)]
    ).cpu()


# ---- the task ------------------------------------------------------------------------------------------
def pack_split(spec: Any, split: str, tokenizer: WordPieceTokenizer, window: int, progress: bool) -> PackedExamples:
    """Tokenise (once, through the token cache) the corpus of ``split`` and pack it into ``window``-token examples.

    Args:
        spec: a task spec with ``train_data``/``eval_data``/``test_data``, ``cache_dir`` and ``text_field``.
        split: ``"train"``, ``"eval"`` or ``"test"``.
        tokenizer: the WordPiece tokenizer.
        window: tokens per example.
        progress: show a progress bar while tokenising.

    Raises:
        ValueError: on an unknown split.
    """
    if split not in _SPLIT_IDS:
        raise ValueError(f"split must be one of {sorted(_SPLIT_IDS)}, got {split!r}")
    source = {"train": spec.train_data, "eval": spec.eval_data, "test": spec.test_data}[split]
    if not source:
        raise ValueError(f"task.{split}_data is not set: name the {split} corpus, e.g. --set task.{split}_data=FILE")
    cache = build_token_cache(
        source, spec.cache_dir, tokenizer=tokenizer, text_field=spec.text_field, progress=progress
    )
    return PackedExamples(cache, window)


@dataclass(frozen=True)
class CorpusSettings:
    """Where the text of a corpus task comes from; the shared head of ``MLMTaskSpec`` and ``CompressionTaskSpec``.

    Attributes:
        name: the task name.
        train_data: training corpus source (``.jsonl``/``.txt`` file, folder, ``hf:NAME[:CONFIG][@SPLIT]``);
            required (no default: the data are the user's).
        eval_data: validation corpus source; required.
        test_data: test corpus source (evaluated once, at the end); required when the test split is used.
        text_field: JSON key / dataset column of the text.
        tokenizer: folder with ``tokenizer.json``; empty = MiniLM's WordPiece tokenizer.
        cache_dir: folder of token caches.
    """

    name: str = ""
    train_data: str = ""
    eval_data: str = ""
    test_data: str = ""
    text_field: str = "text"
    tokenizer: str = ""
    cache_dir: str = DEFAULT_CACHE_DIR


@dataclass(frozen=True)
class MLMTaskSpec(CorpusSettings):
    """Settings of an MLM run (the ``task:`` section of a run config): ``CorpusSettings`` plus the below.

    Attributes:
        name: ``"mlm"``.
        seq_len: L.
        mlm_probability: selection probability of a token (0.15).
        split_chunk_size: C of the outside-chunk split (use the chunk size of the chunked runs).
        seed: seed of example order and masking.
        eval_size: number of evaluation examples (evenly spaced over the eval corpus; 0 = all).
        pretrained: a checkpoint to start from: a GMAT ``GmatForMaskedLM``/``GmatModel`` folder, a BERT
            folder or ``"minilm"`` (converted at start with the run's M, pattern and L); empty = from scratch.
    """

    name: str = "mlm"
    seq_len: int = 1024
    mlm_probability: float = 0.15
    split_chunk_size: int = 128
    seed: int = 0
    eval_size: int = 256
    pretrained: str = ""

    def __post_init__(self) -> None:
        if self.name != "mlm":
            raise ValueError(f"task.name must be 'mlm', got {self.name!r}")
        if self.seq_len < 2:
            raise ValueError(f"task.seq_len must be >= 2, got {self.seq_len}")
        if not 0.0 < self.mlm_probability < 1.0:
            raise ValueError(f"task.mlm_probability must be in (0, 1), got {self.mlm_probability}")
        if self.split_chunk_size < 1 or self.eval_size < 0:
            raise ValueError(
                f"task.split_chunk_size must be >= 1 and task.eval_size >= 0, got "
                f"{self.split_chunk_size}, {self.eval_size}"
            )


class MLMTask(CountingTask):
    """Packed, dynamically masked examples of the train / eval / test corpora.

    Corpora are tokenised lazily (the test corpus only when the test split is first used).

    Args:
        spec: the task settings.
        progress: show tokenisation progress bars.
    """

    metric_name = "accuracy"
    best_metric = "mlm_loss"  # the best checkpoint is the one with the lowest masked-token loss

    def __init__(self, spec: MLMTaskSpec, *, progress: bool = True) -> None:
        self.spec = spec
        self.progress = progress
        self.tokenizer = WordPieceTokenizer(spec.tokenizer or None)
        self.vocab_size = self.tokenizer.vocab_size
        self.num_labels = self.vocab_size
        self.special = self.tokenizer.special
        self._packed: dict[str, PackedExamples] = {}

    @property
    def seq_len(self) -> int:
        """L."""
        return self.spec.seq_len

    def build_model(self, settings: ModelSettings) -> torch.nn.Module:
        """A ``GmatForMaskedLM`` from scratch or from ``task.pretrained``, scoring only masked rows in training.

        ``sparse_prediction`` makes training run the vocabulary head on the ~15% masked rows only: the same
        loss, a far cheaper head.
        """
        return factory.build_model(
            GmatForMaskedLM,
            settings,
            vocab_size=self.vocab_size,
            max_length=self.spec.seq_len,
            init=self.spec.pretrained,
            pad_token_id=self.special.pad,
            sparse_prediction=True,
        )

    def checkpoint_files(self) -> dict[str, bytes]:
        """The tokenizer's files, saved next to every checkpoint's weights (the folder is then self-contained)."""
        return self.tokenizer.transformers_files(model_max_length=self.spec.seq_len)

    def examples(self, split: str) -> PackedExamples:
        """Return the packed examples of ``split`` (train, eval or test), tokenising on first use."""
        if split not in self._packed:
            self._packed[split] = pack_split(self.spec, split, self.tokenizer, self.spec.seq_len, self.progress)
        return self._packed[split]

    def eval_indices(self, split: str = "eval") -> np.ndarray:
        """Return ``eval_size`` evenly spaced example indices of an evaluation split (all when 0)."""
        return evenly_spaced(len(self.examples(split)), self.spec.eval_size)

    def _rng(self, split: str, index: int) -> np.random.Generator:
        return np.random.default_rng([self.spec.seed, _SPLIT_IDS[split], int(index)])

    def _example_id(self, split: str, index: int) -> int:
        """Training index → example: a fresh seeded permutation per epoch; eval/test indices are examples."""
        n = len(self.examples(split))
        if split != "train":
            return int(index) % n
        epoch, pos = divmod(int(index), n)
        perm = np.random.default_rng([self.spec.seed, 99, epoch]).permutation(n)
        return int(perm[pos])

    def batch(self, split: str, indices: list[int] | range | np.ndarray) -> dict[str, torch.Tensor]:
        """Masked examples ``indices`` of ``split``.

        Returns:
            ``input_ids``, ``attention_mask`` (all ones: examples are packed) and ``labels``, each ``(B, L)``.
        """
        packed = self.examples(split)
        inputs, labels = [], []
        for i in indices:
            ids = packed[self._example_id(split, int(i))]
            x, y = mask_tokens(
                ids,
                self._rng(split, int(i)),
                special=self.special,
                vocab_size=self.vocab_size,
                probability=self.spec.mlm_probability,
            )
            inputs.append(x)
            labels.append(y)
        input_ids = torch.from_numpy(np.stack(inputs))
        return {
            "input_ids": input_ids,
            "attention_mask": torch.ones_like(input_ids),
            "labels": torch.from_numpy(np.stack(labels)),
        }

    def metric_counts(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """``[loss_sum, correct, masked tokens, 0]`` float64 of a batch (see ``masked_token_counts``)."""
        return masked_token_counts(logits, labels)

    def compute_metrics(self, counts: torch.Tensor) -> dict[str, float]:
        """``{"accuracy", "mlm_loss", "perplexity"}`` from summed ``metric_counts``."""
        loss_sum, correct, n = float(counts[0]), float(counts[1]), max(float(counts[2]), 1.0)
        loss = loss_sum / n
        return {"accuracy": correct / n, "mlm_loss": loss, "perplexity": math.inf if loss > 700 else math.exp(loss)}


# ---- evaluation of any saved model ---------------------------------------------------------------------
def _load_model(
    model: str | os.PathLike[str] | torch.nn.Module,
    *,
    allow_missing: bool = False,
    allow_random_head: bool = False,
    seed: int = 0,
) -> tuple[torch.nn.Module, Path | None, LoadReport | None]:
    if isinstance(model, torch.nn.Module):
        return model, None, None
    from transformers import AutoModelForMaskedLM

    net, report = load_pretrained(
        AutoModelForMaskedLM,
        model,
        allow_missing=allow_missing,
        allow_random_head=allow_random_head,
        head_seed=seed,
        what_to_train="train a masked LM from it first (gmat train, task.name: mlm)",
    )
    return net, Path(model), report


@torch.no_grad()
def evaluate_mlm(
    model: str | os.PathLike[str] | torch.nn.Module,
    data: str | os.PathLike[str] | TokenCache,
    *,
    length: int | None = None,
    batch_size: int = 8,
    split_chunk_size: int | None = None,
    max_examples: int = 0,
    seed: int = 1234,
    mlm_probability: float = 0.15,
    cache_dir: str | os.PathLike[str] = DEFAULT_CACHE_DIR,
    tokenizer: str | None = None,
    device: str = "cpu",
    progress: bool = False,
    per_example: bool = False,
    memory_swap: bool = False,
    allow_missing: bool = False,
    allow_random_head: bool = False,
) -> dict[str, Any]:
    """Masked-LM loss, perplexity and accuracy of a saved model on a corpus, overall and by chunk locality.

    The masks are a function of ``seed`` and the example index only, so every model evaluated with the same
    data, length and seed is scored on exactly the same masked tokens.

    Args:
        model: a saved masked-LM folder (GMAT or any ``AutoModelForMaskedLM``), or a model.
        data: a corpus source (``.jsonl`` of ``{"text": ...}``, ``.txt``, folder, ``hf:...``) or a cache.
        length: L; default the model's ``max_position_embeddings``.
        batch_size: examples per forward pass.
        split_chunk_size: C of the outside-chunk split; default the model's chunk size, else 128.
        max_examples: evaluate this many evenly spaced examples (0 = all).
        seed: masking seed.
        mlm_probability: selection probability of a token.
        cache_dir: folder of token caches.
        tokenizer: tokenizer folder; default the model folder when it has ``tokenizer.json``, else MiniLM's.
        device: ``"cpu"`` or ``"cuda"``.
        progress: show progress bars.
        per_example: also return ``"per_example"``: ``{example index: {group: [loss_sum, correct, tokens]}}``.
        memory_swap: score every example with the memory rows of the previous example in its batch
            (``swapped_memory``); needs a GMAT model with memory and ``batch_size`` >= 2. A last batch of
            one example is skipped (``"skipped_examples"``), so compare runs example by example.
        allow_missing: evaluate a folder although encoder weights are missing or unexpected ones present.
        allow_random_head: evaluate a folder without a masked-LM head (e.g. a converted encoder) with a head
            initialised at random from ``seed``; the result then holds ``"random_head": true`` and the seed.

    Returns:
        ``{"model", "data", "length", "split_chunk_size", "num_examples", "metrics": {group: {...}}}`` with
        groups ``"all"``, ``"outside_chunk"``, ``"chunk_only"`` (and ``"per_example"`` when asked).

    Raises:
        FileNotFoundError: if ``model`` is not a saved model folder.
        CheckpointError: if the folder fails its manifest or lacks weights (the head included) not allowed.
        CorpusError: on unusable data (missing, empty, shorter than one example).
        ValueError: for ``length`` < 2, ``batch_size`` < 1, ``memory_swap`` with ``batch_size`` < 2 or a model
            without memory rows.
    """
    if length is not None and length < 2:
        raise ValueError(f"length (--length) must be >= 2, got {length}")
    if batch_size < 1:
        raise ValueError(f"batch_size (--batch-size) must be >= 1, got {batch_size}")
    if memory_swap and batch_size < 2:
        raise ValueError(f"memory_swap needs batch_size >= 2 (the memory comes from another example), got {batch_size}")
    model_path = None if isinstance(model, torch.nn.Module) else Path(model)
    if model_path is not None and not (model_path / "config.json").is_file():
        raise FileNotFoundError(f"{model_path} is not a saved model folder (no config.json)")
    # the data first: a bad corpus fails fast, before any weights are read
    if isinstance(data, TokenCache):
        cache = data
    else:
        tok_path = tokenizer or (model_path if model_path and (model_path / "tokenizer.json").is_file() else None)
        tok = WordPieceTokenizer(tok_path)
        cache = build_token_cache(data, cache_dir, tokenizer=tok, progress=progress)
    net, _, report = _load_model(model, allow_missing=allow_missing, allow_random_head=allow_random_head, seed=seed)
    net.to(device).eval()
    config = net.config
    length = int(length if length is not None else config.max_position_embeddings)
    if length > config.max_position_embeddings:
        raise ValueError(
            f"--length {length} exceeds the model's max_position_embeddings {config.max_position_embeddings}"
        )
    chunk = split_chunk_size or getattr(config, "chunk_size", None) or 128
    if cache.vocab_size > config.vocab_size:
        raise ValueError(
            f"the tokenizer's vocabulary ({cache.vocab_size}) is larger than the model's ({config.vocab_size})"
        )
    packed = PackedExamples(cache, length)
    indices = evenly_spaced(len(packed), max_examples)
    metrics = MLMMetrics()
    batches = range(0, len(indices), batch_size)
    if progress:
        from tqdm.auto import tqdm

        batches = tqdm(batches, desc="eval mlm", unit="batch")
    skipped = 0
    # the hooks of swapped_memory live for the whole loop (they are removed on exit, also on errors)
    with swapped_memory(net) if memory_swap else contextlib.nullcontext():
        for start in batches:
            inputs, labels = [], []
            batch_indices = indices[start : start + batch_size]
            if memory_swap and len(batch_indices) < 2:  # no other example to take the memory from
                skipped += len(batch_indices)
                continue
            for i in batch_indices:
                x, y = mask_tokens(
                    packed[int(i)],
                    np.random.default_rng([seed, int(i)]),
                    special=cache.special,
                    vocab_size=cache.vocab_size,
                    probability=mlm_probability,
                )
                inputs.append(x)
                labels.append(y)
            input_ids = torch.from_numpy(np.stack(inputs)).to(device)
            label_t = torch.from_numpy(np.stack(labels)).to(device)
            select = label_t != IGNORE_INDEX
            outside = outside_chunk_flags(input_ids, label_t, chunk)
            logits = masked_lm_logits(net, input_ids, torch.ones_like(input_ids), select)
            rows = torch.from_numpy(np.asarray(batch_indices, dtype=np.int64))[:, None].expand_as(select)  # (B, L)
            metrics.update(logits, label_t[select], outside[select], rows[select] if per_example else None)
    result = {
        "model": str(model_path) if model_path else type(net).__name__,
        "data": str(cache.meta["source"].get("source")),
        "length": length,
        "split_chunk_size": chunk,
        "num_examples": len(indices) - skipped,
        "seed": seed,
        "metrics": metrics.compute(),
    }
    if report is not None and report.random_head:
        result.update(random_head=True, random_head_seed=report.head_seed)
    if memory_swap:
        result.update(memory="swapped", skipped_examples=skipped)
    if per_example:
        result["per_example"] = {
            i: {g: c[k].tolist() for k, g in enumerate(GROUPS)} for i, c in sorted(metrics.per_example.items())
        }
    return result
