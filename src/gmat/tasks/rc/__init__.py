r"""Reading comprehension over long documents: SQuAD v1.1 made long (data, features, decoding, train, eval).

The setting: the question sits at the start of a long
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

Modules: ``squad`` (1–2), ``features`` (3–5), ``scoring`` (logits, decoding and EM / F1 of a model;
``evaluate_rc`` behind ``gmat eval rc``), ``task`` (``RCTask``, the ``Task`` that ``gmat train`` drives).
"""

from gmat.tasks.base import hardware_description
from gmat.tasks.rc.features import (
    Feature,
    FeatureSet,
    SpanPrediction,
    answer_token_span,
    best_span,
    collate,
    decode_predictions,
    distance_bucket,
    encode_long,
    encode_windows,
    featurize,
    score_predictions,
)
from gmat.tasks.rc.scoring import evaluate_rc, load_qa_model, predict_logits, subsample_questions
from gmat.tasks.rc.squad import (
    DISTANCE_BUCKETS,
    MAX_QUERY_LENGTH,
    PARAGRAPH_SEPARATOR,
    RC_SETTINGS_FILE,
    Answer,
    Article,
    LoadStats,
    Question,
    RCExample,
    TokenizedText,
    article_document,
    build_examples,
    document_tokens,
    load_squad,
    placement_fraction,
    select_paragraph_span,
    tokenize_articles,
)
from gmat.tasks.rc.task import RCTask, RCTaskSettings

__all__ = [
    "DISTANCE_BUCKETS",
    "MAX_QUERY_LENGTH",
    "PARAGRAPH_SEPARATOR",
    "RC_SETTINGS_FILE",
    "Answer",
    "Article",
    "Feature",
    "FeatureSet",
    "LoadStats",
    "Question",
    "RCExample",
    "RCTask",
    "RCTaskSettings",
    "SpanPrediction",
    "TokenizedText",
    "answer_token_span",
    "article_document",
    "best_span",
    "build_examples",
    "collate",
    "decode_predictions",
    "distance_bucket",
    "document_tokens",
    "encode_long",
    "encode_windows",
    "evaluate_rc",
    "featurize",
    "hardware_description",
    "load_qa_model",
    "load_squad",
    "placement_fraction",
    "predict_logits",
    "score_predictions",
    "select_paragraph_span",
    "subsample_questions",
    "tokenize_articles",
]
