"""SQuAD loading and long documents: steps 1 and 2 of the reading-comprehension pipeline (see ``gmat.tasks.rc``)."""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

PARAGRAPH_SEPARATOR = "\n\n"
RC_SETTINGS_FILE = "rc_settings.json"  # written next to a trained model: how it reads documents
MAX_QUERY_LENGTH = 64  # questions are cut to this many tokens (as in BERT's SQuAD recipe)
DISTANCE_BUCKETS = ((0, 0), (1, 1), (2, 3), (4, 7), (8, 15), (16, 31), (32, 10**9))  # in chunks, inclusive


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


_LONGER_THAN_MAXIMUM = "sequence-length-is-longer-than-the-specified-maximum"  # transformers' warn-once key


class _NotLongerThanMaximum(logging.Filter):
    """Drops transformers' "Token indices sequence length is longer than the specified maximum ..." warning."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "sequence length is longer than the specified maximum" not in record.getMessage()


@contextlib.contextmanager
def _long_paragraphs_expected(tokenizer: Any) -> Iterator[None]:
    """Silence that one warning while paragraphs are tokenised.

    Paragraphs are tokenised whole on purpose and every feature is cut to the model's length afterwards, so the
    warning (which says the model would fail) is wrong here; other warnings pass, and it stays on elsewhere
    (the tokenizer's warn-once flag is restored, so a later too-long input still warns).
    """
    source = logging.getLogger("transformers.tokenization_utils_base")
    only_this = _NotLongerThanMaximum()
    flags = getattr(tokenizer, "deprecation_warnings", {})
    warned = flags.get(_LONGER_THAN_MAXIMUM, False)
    source.addFilter(only_this)
    try:
        yield
    finally:
        source.removeFilter(only_this)
        if not warned:
            flags.pop(_LONGER_THAN_MAXIMUM, None)


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
        with _long_paragraphs_expected(tokenizer):
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
                first, last = select_paragraph_span(para_lengths, q.paragraph, budget, placement_fraction(q.id))
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
