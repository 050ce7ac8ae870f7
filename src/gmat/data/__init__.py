"""Corpora for masked language modelling: readers, the memory-mapped token cache, packing (docs/design.md §4)."""

from gmat.data.corpus import (
    CorpusError,
    PackedExamples,
    SpecialTokens,
    TokenCache,
    WordPieceTokenizer,
    build_token_cache,
    default_tokenizer_path,
    read_documents,
)

__all__ = [
    "CorpusError",
    "PackedExamples",
    "SpecialTokens",
    "TokenCache",
    "WordPieceTokenizer",
    "build_token_cache",
    "default_tokenizer_path",
    "read_documents",
]
