"""SQuAD v1.1 EM / F1 on hand-made cases (our own implementation, gmat.tasks.squad_metrics)."""

from __future__ import annotations

import pytest

from gmat.tasks.squad_metrics import (
    exact_match,
    f1_score,
    max_over_references,
    normalize_answer,
    squad_scores,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The Eiffel Tower", "eiffel tower"),
        ("  a   cat, AN owl; the end.  ", "cat owl end"),
        ("Denver Broncos!", "denver broncos"),
        ("theory", "theory"),  # articles only as whole words
        ("an-apple", "anapple"),  # punctuation is removed, not replaced by a space
        ("1,000", "1000"),
        ("", ""),
        ("The", ""),
    ],
)
def test_normalize_answer(text: str, expected: str) -> None:
    assert normalize_answer(text) == expected


def test_exact_match_ignores_case_articles_punctuation_whitespace() -> None:
    assert exact_match("the  Denver Broncos.", "Denver Broncos") == 1.0
    assert exact_match("Denver", "Denver Broncos") == 0.0


def test_f1_partial_overlap() -> None:
    # pred tokens: [denver, broncos, team], ref: [denver, broncos] -> P = 2/3, R = 1, F1 = 0.8
    assert f1_score("Denver Broncos team", "the Denver Broncos") == pytest.approx(0.8)
    assert f1_score("Carolina Panthers", "Denver Broncos") == 0.0


def test_f1_counts_repeated_tokens_with_multiplicity() -> None:
    # pred [new, new, york], ref [new, york]: common = 2 -> P = 2/3, R = 1
    assert f1_score("new new york", "New York") == pytest.approx(0.8)


def test_empty_prediction_scores_zero_and_both_empty_scores_one() -> None:
    assert exact_match("", "Denver") == 0.0
    assert f1_score("", "Denver") == 0.0
    assert f1_score("Denver", "") == 0.0
    assert f1_score("the", "a") == 1.0  # both normalise to ""
    assert exact_match("the", "a") == 1.0


def test_max_over_references() -> None:
    refs = ["Denver Broncos", "The Broncos", "Broncos"]
    assert max_over_references(exact_match, "broncos", refs) == 1.0
    assert max_over_references(f1_score, "Denver", refs) == pytest.approx(2 / 3)  # vs "Denver Broncos"
    with pytest.raises(ValueError, match="empty list of reference"):
        max_over_references(f1_score, "x", [])


def test_squad_scores_percentages_and_missing_predictions() -> None:
    refs = {"q1": ["Denver Broncos"], "q2": ["1858"], "q3": ["Paris", "in Paris"]}
    preds = {"q1": "the Denver Broncos", "q2": "in 1858"}  # q3 missing -> scored as ""
    scores = squad_scores(preds, refs)
    assert scores["count"] == 3 and scores["missing"] == 1
    assert scores["em"] == pytest.approx(100 / 3)
    assert scores["f1"] == pytest.approx(100 * (1 + 2 / 3) / 3)


def test_squad_scores_rejects_unknown_ids() -> None:
    with pytest.raises(ValueError, match="no reference"):
        squad_scores({"zz": "x"}, {"q1": ["y"]})
