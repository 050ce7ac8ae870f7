"""SQuAD v1.1 exact match and F1, written from the published definition (our own code).

The official v1.1 evaluation normalises both strings the same way before comparing them:

1. lower-case;
2. remove every ASCII punctuation character (Python's ``string.punctuation``);
3. remove the articles ``a``, ``an``, ``the`` as whole words;
4. collapse runs of whitespace to single spaces (and strip the ends).

*Exact match* is 1 when the normalised prediction equals a normalised reference. *F1* is the harmonic
mean of token precision and recall over whitespace tokens of the normalised strings, counting shared tokens
with multiplicity (a bag-of-words overlap). Both take the **maximum over the reference answers** of a
question. Corpus scores are the mean over questions, reported as percentages (0–100) as the official
script does.

An empty normalised prediction scores F1 = 0 against a non-empty reference; when both normalise to the
empty string (e.g. the reference is just ``"the"``), F1 is 1 — the same convention as the official script,
where ``Counter`` overlap of two empty bags is 0 and precision/recall are undefined, except that we make the
"both empty" case explicit instead of relying on a division guard.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Callable, Iterable, Mapping

__all__ = ["exact_match", "f1_score", "max_over_references", "normalize_answer", "squad_scores"]

_PUNCTUATION = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text: str) -> str:
    """Lower-case, drop punctuation, drop the articles a/an/the, collapse whitespace.

    Args:
        text: an answer string.

    Returns:
        The normalised string (possibly empty).
    """
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def exact_match(prediction: str, reference: str) -> float:
    """1.0 when the normalised strings are equal, else 0.0."""
    return float(normalize_answer(prediction) == normalize_answer(reference))


def f1_score(prediction: str, reference: str) -> float:
    """Token-level F1 of the normalised strings (bag of whitespace tokens, counted with multiplicity).

    Returns:
        F1 in [0, 1]; 1.0 when both normalise to empty, 0.0 when exactly one does.
    """
    pred_tokens = normalize_answer(prediction).split()
    ref_tokens = normalize_answer(reference).split()
    if not pred_tokens or not ref_tokens:
        return float(pred_tokens == ref_tokens)
    common = sum((Counter(pred_tokens) & Counter(ref_tokens)).values())
    if common == 0:
        return 0.0
    precision = common / len(pred_tokens)
    recall = common / len(ref_tokens)
    return 2 * precision * recall / (precision + recall)


def max_over_references(metric: Callable[[str, str], float], prediction: str, references: Iterable[str]) -> float:
    """Return the best score of ``prediction`` against any reference.

    Raises:
        ValueError: when ``references`` is empty (a question without a reference cannot be scored).
    """
    scores = [metric(prediction, ref) for ref in references]
    if not scores:
        raise ValueError("cannot score a prediction against an empty list of reference answers")
    return max(scores)


def squad_scores(predictions: Mapping[str, str], references: Mapping[str, list[str]]) -> dict[str, float]:
    """Corpus EM and F1 (percentages) over the questions of ``references``.

    A question with no prediction counts as predicted ``""`` (scores 0), so a dropped question lowers the
    score instead of silently vanishing.

    Args:
        predictions: question id -> predicted answer text.
        references: question id -> reference answer texts (at least one each).

    Returns:
        ``{"em": float, "f1": float, "count": int, "missing": int}``; em/f1 in [0, 100].

    Raises:
        ValueError: when a question has no reference answers, or ``predictions`` has ids not in
            ``references``.
    """
    extra = sorted(set(predictions) - set(references))
    if extra:
        raise ValueError(f"{len(extra)} prediction id(s) have no reference, e.g. {extra[:3]}")
    em = f1 = 0.0
    missing = 0
    for qid, refs in references.items():
        if qid not in predictions:
            missing += 1
        pred = predictions.get(qid, "")
        em += max_over_references(exact_match, pred, refs)
        f1 += max_over_references(f1_score, pred, refs)
    n = len(references)
    return {
        "em": 100.0 * em / n if n else 0.0,
        "f1": 100.0 * f1 / n if n else 0.0,
        "count": n,
        "missing": missing,
    }
