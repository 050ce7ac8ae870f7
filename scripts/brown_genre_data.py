"""Derive a long-document classification set from the Brown corpus documents of the shared MLM corpus.

    python scripts/brown_genre_data.py [--corpus ../shared/data/corpus] [--out runs/data/brown-genre]

The shared corpus (JSON Lines of ``{"id", "source", "title", "text", "genre"?}``) holds the 500 Brown corpus
samples (about 2,000 words each, 2,300-2,800 WordPiece tokens) with their Brown genre. This keeps them, in the
corpus's own train / valid / test split, and writes ``train.jsonl``, ``valid.jsonl`` and ``test.jsonl`` of
``{"id", "title", "genre", "label", "text"}``:

* ``genre``: the Brown genre (15 classes: news, editorial, reviews, religion, hobbies, lore, belles_lettres,
  government, learned, fiction, mystery, science_fiction, adventure, romance, humor);
* ``label``: the Brown corpus's own two-way division of those genres, ``informative`` (the first nine: prose
  of fact and opinion) or ``imaginative`` (the last six: fiction).

The labels are real (assigned by the corpus's compilers), the task is not a standard benchmark: no published
number compares to it. Train with ``configs/classification/brown-minilm-L2048-C128-m16.yaml`` (``label``) or
``--set task.label_field=genre`` for the 15-way task.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

IMAGINATIVE = ("fiction", "mystery", "science_fiction", "adventure", "romance", "humor")
INFORMATIVE = (
    "news",
    "editorial",
    "reviews",
    "religion",
    "hobbies",
    "lore",
    "belles_lettres",
    "government",
    "learned",
)
SPLITS = ("train", "valid", "test")


def brown_rows(path: Path) -> list[dict]:
    """The Brown documents of one corpus file, with their two-way ``label``.

    Raises:
        ValueError: naming the file and line of a Brown document whose genre is unknown.
    """
    rows = []
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            doc = json.loads(line)
            if doc.get("source") != "brown":
                continue
            genre = doc.get("genre")
            if genre not in IMAGINATIVE + INFORMATIVE:
                raise ValueError(f"{path} line {line_no}: Brown document {doc.get('id')!r} has genre {genre!r}")
            label = "imaginative" if genre in IMAGINATIVE else "informative"
            rows.append(
                {"id": doc["id"], "title": doc.get("title", ""), "genre": genre, "label": label, "text": doc["text"]}
            )
    return rows


def main(argv: list[str] | None = None) -> int:
    """Write the three files; returns the exit status (2 when a corpus file is missing)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", default="../shared/data/corpus", help="folder of train/valid/test.jsonl")
    parser.add_argument("--out", default="runs/data/brown-genre", help="output folder")
    args = parser.parse_args(argv)
    corpus, out = Path(args.corpus), Path(args.out)
    missing = [str(corpus / f"{s}.jsonl") for s in SPLITS if not (corpus / f"{s}.jsonl").is_file()]
    if missing:
        print(f"error: --corpus {args.corpus}: missing {', '.join(missing)}", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    for split in SPLITS:
        rows = brown_rows(corpus / f"{split}.jsonl")
        (out / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        labels = Counter(r["label"] for r in rows)
        print(
            f"{out / f'{split}.jsonl'}: {len(rows)} documents, {dict(sorted(labels.items()))}, "
            f"{len(Counter(r['genre'] for r in rows))} genres"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
