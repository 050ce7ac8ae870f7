import json
import sys

import numpy as np
import pytest

from gmat.data import (
    CorpusError,
    PackedExamples,
    TokenCache,
    WordPieceTokenizer,
    build_token_cache,
    read_documents,
)

DOCS = [
    "The cat sat on the mat.",
    "A second document, somewhat longer than the first one.",
    "Third: short.",
    "The fourth document talks about cats and mats again.",
]


@pytest.fixture(scope="module")
def tokenizer():
    return WordPieceTokenizer()


def write_jsonl(path, texts, field="text"):
    path.write_text("".join(json.dumps({field: t, "id": i}) + "\n" for i, t in enumerate(texts)))
    return path


def test_read_jsonl_txt_and_folder(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", DOCS[:2])
    (tmp_path / "b.txt").write_text(DOCS[2] + "\n\n  \n" + DOCS[3] + "\nsame doc\n")
    assert list(read_documents(tmp_path / "a.jsonl")) == DOCS[:2]
    assert list(read_documents(tmp_path / "b.txt")) == [DOCS[2], DOCS[3] + "\nsame doc"]
    assert list(read_documents(tmp_path)) == [*DOCS[:2], DOCS[2], DOCS[3] + "\nsame doc"]
    write_jsonl(tmp_path / "c.jsonl", ["x y"], field="body")
    assert list(read_documents(tmp_path / "c.jsonl", text_field="body")) == ["x y"]


@pytest.mark.parametrize(
    "content,message",
    [
        ("", "empty file"),
        ("\n\n", "empty file"),
        ('{"text": "ok"}\n{"text": "   "}\n', ":2: document has no text"),
        ('{"text": "ok"}\nnot json\n', ":2: not a JSON object"),
        ('{"body": "ok"}\n', "with a 'text' field"),
        ('{"text": 3}\n', "document has no text"),
    ],
)
def test_bad_jsonl_gives_clear_errors(tmp_path, content, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    with pytest.raises(CorpusError, match=message):
        list(read_documents(path))


def test_bad_paths(tmp_path):
    with pytest.raises(CorpusError, match="does not exist"):
        list(read_documents(tmp_path / "missing.jsonl"))
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(CorpusError, match="must end in .jsonl or .txt"):
        list(read_documents(tmp_path / "x.csv"))
    (tmp_path / "empty.txt").write_text("  \n")
    with pytest.raises(CorpusError, match="empty file"):
        list(read_documents(tmp_path / "empty.txt"))
    (tmp_path / "sub").mkdir()
    with pytest.raises(CorpusError, match="no .jsonl or .txt"):
        list(read_documents(tmp_path / "sub"))


def test_hf_source_without_datasets_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # as if not installed
    with pytest.raises(CorpusError, match="pip install datasets"):
        list(read_documents("hf:wikitext:wikitext-2-raw-v1@validation"))
    with pytest.raises(CorpusError, match="hf:NAME"):
        list(read_documents("hf:"))


def test_token_cache_round_trip_is_a_memmap(tmp_path, tokenizer):
    src = write_jsonl(tmp_path / "docs.jsonl", DOCS)
    cache = build_token_cache(src, tmp_path / "cache", tokenizer=tokenizer, batch_docs=3, progress=False)
    assert isinstance(cache.tokens, np.memmap) and cache.tokens.dtype == np.uint16
    expected = tokenizer.encode_batch(DOCS)
    assert cache.num_documents == len(DOCS)
    assert cache.num_tokens == sum(len(e) + 1 for e in expected)
    for k, ids in enumerate(expected):
        assert cache.document(k).tolist() == ids
        assert cache.tokens[cache.doc_offsets[k + 1] - 1] == tokenizer.special.sep  # boundary marker
    assert tokenizer.decode(cache.document(0)).startswith("the cat sat")
    # reopening the folder gives the same data without the tokenizer
    again = TokenCache(cache.folder)
    assert np.array_equal(np.asarray(again.tokens), np.asarray(cache.tokens))
    assert np.array_equal(again.doc_offsets, cache.doc_offsets)


def test_token_cache_is_reused_and_rebuilt_when_the_source_changes(tmp_path, tokenizer, monkeypatch):
    src = write_jsonl(tmp_path / "docs.jsonl", DOCS)
    first = build_token_cache(src, tmp_path / "cache", tokenizer=tokenizer, progress=False)

    def boom(texts):
        raise AssertionError("a cache hit must not tokenise again")

    monkeypatch.setattr(tokenizer, "encode_batch", boom)
    assert build_token_cache(src, tmp_path / "cache", tokenizer=tokenizer, progress=False).folder == first.folder
    monkeypatch.undo()
    write_jsonl(src, DOCS[:2])
    second = build_token_cache(src, tmp_path / "cache", tokenizer=tokenizer, progress=False)
    assert second.folder != first.folder and second.num_documents == 2
    assert not [p for p in (tmp_path / "cache").iterdir() if p.name.startswith(".")]  # no temp leftovers


def test_failed_build_leaves_no_cache(tmp_path, tokenizer):
    src = tmp_path / "docs.jsonl"
    src.write_text('{"text": "fine"}\n{"text": ""}\n')
    with pytest.raises(CorpusError, match="no text"):
        build_token_cache(src, tmp_path / "cache", tokenizer=tokenizer, progress=False)
    assert list((tmp_path / "cache").iterdir()) == []


def test_packing_marks_document_boundaries(tmp_path, tokenizer):
    src = write_jsonl(tmp_path / "docs.jsonl", DOCS)
    cache = build_token_cache(src, tmp_path / "cache", tokenizer=tokenizer, progress=False)
    length = 9
    packed = PackedExamples(cache, length)
    stream = np.asarray(cache.tokens, dtype=np.int64)
    assert len(packed) == len(stream) // (length - 1)
    for i in range(len(packed)):
        ex = packed[i]
        assert ex.shape == (length,) and ex.dtype == np.int64 and ex[0] == tokenizer.special.cls
        assert ex[1:].tolist() == stream[i * 8 : (i + 1) * 8].tolist()
    # every document end inside the packed range is a [SEP] at the right place of the right example
    for end in cache.doc_offsets[1:] - 1:
        i, r = divmod(int(end), length - 1)
        if i < len(packed):
            assert packed[i][1 + r] == tokenizer.special.sep
    assert packed.batch([0, 2]).shape == (2, length)
    with pytest.raises(IndexError):
        packed[len(packed)]


def test_corpus_shorter_than_one_example(tmp_path, tokenizer):
    src = write_jsonl(tmp_path / "docs.jsonl", ["tiny"])
    cache = build_token_cache(src, tmp_path / "cache", tokenizer=tokenizer, progress=False)
    with pytest.raises(CorpusError, match="fewer than one example"):
        PackedExamples(cache, 512)
