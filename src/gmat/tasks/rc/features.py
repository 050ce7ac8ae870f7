"""Features, decoding and scoring: steps 3 to 5 of the reading-comprehension pipeline (see ``gmat.tasks.rc``)."""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from gmat.tasks.rc.squad import DISTANCE_BUCKETS, MAX_QUERY_LENGTH, Answer, RCExample, TokenizedText, document_tokens
from gmat.tasks.squad_metrics import exact_match, f1_score, max_over_references


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
        raise ValueError(f"max_length={max_length} leaves no room for the document after a {len(q_ids)}-token question")
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
        raise ValueError(f"max_length={max_length} leaves no room for the document after a {len(q_ids)}-token question")
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
    q_enc = tokenizer([e.question for e in examples], add_special_tokens=False)["input_ids"] if examples else []
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
    """EM / F1 (percent, 0-100, also per question) overall and by the answer's distance from the question in chunks.

    Args:
        examples: the scored examples (all reference answers count).
        predictions: question id -> predicted text (a missing id scores as ``""``).
        answer_token: long-layout token index of each example's answer start.
        distance_chunk_size: C used to turn token distance into chunks.

    Returns:
        ``{"em", "f1", "count", "by_distance": {bucket: {"em", "f1", "count"}}, "per_question": [...]}``; each
        per-question row is ``{"id", "prediction", "em", "f1", "scale": 100, "distance_chunks"}`` (``scale``
        marks the 0-100 scores: files written before it have no ``scale`` and scores in [0, 1]).
    """
    rows = []
    buckets: dict[str, list[tuple[float, float]]] = {}
    for ex, tok in zip(examples, answer_token):
        pred = predictions.get(ex.id, "")
        refs = [a.text for a in ex.answers]
        em = 100.0 * max_over_references(exact_match, pred, refs)
        f1 = 100.0 * max_over_references(f1_score, pred, refs)
        chunk = None if tok is None else tok // distance_chunk_size
        rows.append({"id": ex.id, "prediction": pred, "em": em, "f1": f1, "scale": 100, "distance_chunks": chunk})
        if chunk is not None:
            buckets.setdefault(distance_bucket(chunk), []).append((em, f1))
    n = len(rows)
    order = {distance_bucket(lo): k for k, (lo, _) in enumerate(DISTANCE_BUCKETS)}
    by_distance = {
        b: {
            "em": sum(v[0] for v in vals) / len(vals),
            "f1": sum(v[1] for v in vals) / len(vals),
            "count": len(vals),
        }
        for b, vals in sorted(buckets.items(), key=lambda kv: order[kv[0]])
    }
    return {
        "em": sum(r["em"] for r in rows) / n if n else 0.0,
        "f1": sum(r["f1"] for r in rows) / n if n else 0.0,
        "count": n,
        "by_distance": by_distance,
        "per_question": rows,
    }
