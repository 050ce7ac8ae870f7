"""Verified loading of saved models: checksums first, then every weight accounted for.

``from_pretrained`` alone loads a folder whose weights were flipped on disk, and fills any weight the file
lacks with random numbers (transformers only prints a "MISSING" report). Every loader of this package goes
through ``load_pretrained`` instead, which

1. checks the folder's ``manifest.json`` (SHA-256 and size of each file, written last by every checkpoint
   and ``best/`` folder of ``gmat train``, and by ``gmat convert``) when there is one: a listed file that is
   missing, truncated or changed, and a weights file or ``config.json`` present but not listed, raise
   ``CheckpointError`` naming the file. A folder without a manifest (any Hugging Face checkpoint, a
   conversion made before convert wrote one) is loaded without this check;
2. refuses a checkpoint that does not hold every weight of the model, or holds weights the model has no
   place for, naming the tensors. Weights of the task head (outside the encoder, and the encoder's pooler)
   are told apart from the encoder's: a missing head is refused with what to train, unless
   ``allow_random_head`` (then it is initialised from ``head_seed``, so two runs score the same head); any
   other missing or unexpected weight is refused unless ``allow_missing``. An unexpected pooler is
   dropped silently, as BERT's own heads do.

The manifest helpers (``write_manifest``, ``verify_manifest``) live here so that the training checkpoints
(``gmat.training.checkpoint``) and this loader check files by the same rule.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file, save_model

__all__ = [
    "CheckpointError",
    "LoadReport",
    "MANIFEST_FILE",
    "load_pretrained",
    "save_tensors",
    "verify_manifest",
    "write_manifest",
]

logger = logging.getLogger(__name__)

MANIFEST_FILE = "manifest.json"
# files that decide what the model computes: present next to a manifest, they must be listed in it
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".index.json")
_CONFIG_FILE = "config.json"
_SHOWN = 8  # tensor names quoted in an error message
# encoder weight (under the base model) -> the name a masked LM's file may hold it under: the decoder is tied to
# the word embeddings, and ``safetensors.save_model`` keeps the alphabetically first name of a tied group
_TIED_ALIASES = {"embeddings.word_embeddings.weight": "cls.predictions.decoder.weight"}


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, truncated or corrupted, or its weights do not fit the model.

    The message names the file (or the tensors).
    """


# ---- the manifest ---------------------------------------------------------------------------------------
def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_manifest(directory: str | Path) -> None:
    """Write ``directory/manifest.json``: SHA-256 and size of every file in ``directory`` (fsynced)."""
    directory = Path(directory)
    files = sorted(p.name for p in directory.iterdir() if p.is_file() and p.name != MANIFEST_FILE)
    manifest = {
        name: {"sha256": _sha256(directory / name), "bytes": (directory / name).stat().st_size} for name in files
    }
    with open(directory / MANIFEST_FILE, "w") as f:
        json.dump(manifest, f, indent=1)
        f.flush()
        os.fsync(f.fileno())


def _read_manifest(directory: Path) -> dict[str, Any]:
    manifest_path = directory / MANIFEST_FILE
    try:
        manifest = json.loads(manifest_path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{manifest_path}: missing; {directory} is not a complete checkpoint") from None
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{manifest_path}: unreadable or corrupted ({err})") from err
    if not isinstance(manifest, dict) or not all(
        isinstance(v, dict) and {"sha256", "bytes"} <= set(v) for v in manifest.values()
    ):
        raise CheckpointError(f"{manifest_path}: corrupted (not a mapping of file -> sha256 and bytes)")
    return manifest


def verify_manifest(directory: str | Path, names: tuple[str, ...] | None = None) -> None:
    """Check files of ``directory`` against its ``manifest.json``.

    Args:
        directory: a folder written by ``gmat train`` (a checkpoint or ``best/``).
        names: the files to check; None checks every file the manifest lists, and also refuses a weights
            file or ``config.json`` present in the folder but not listed (it would be loaded unchecked).

    Raises:
        CheckpointError: naming the manifest when it is missing or unreadable, or the first bad file.
    """
    directory = Path(directory)
    manifest = _read_manifest(directory)
    manifest_path = directory / MANIFEST_FILE
    if names is None:
        names = tuple(sorted(manifest))
        for path in sorted(directory.iterdir()):
            loaded = path.name == _CONFIG_FILE or path.name.endswith(_WEIGHT_SUFFIXES)
            if path.is_file() and loaded and path.name not in manifest:
                raise CheckpointError(
                    f"{path}: not listed in {manifest_path} (added after the checkpoint was written?)"
                )
    for name in names:
        path = directory / name
        if name not in manifest:
            raise CheckpointError(f"{path}: not listed in {manifest_path}")
        if not path.is_file():
            raise CheckpointError(f"{path}: missing")
        size = path.stat().st_size
        if size != manifest[name]["bytes"]:
            raise CheckpointError(f"{path}: truncated or corrupted ({size} bytes, expected {manifest[name]['bytes']})")
        if _sha256(path) != manifest[name]["sha256"]:
            raise CheckpointError(f"{path}: corrupted (SHA-256 does not match {manifest_path})")


# ---- the loader -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LoadReport:
    """What ``load_pretrained`` found.

    Attributes:
        path: the folder loaded.
        verified: a manifest was there and every file it lists matched.
        missing: weights the model has and the checkpoint lacked (initialised at random), head included.
        unexpected: weights of the checkpoint the model has no place for (dropped).
        random_head: the head weights among ``missing``.
        head_seed: the seed the random head was initialised from (None when the head was loaded).
    """

    path: str
    verified: bool
    missing: tuple[str, ...] = ()
    unexpected: tuple[str, ...] = ()
    random_head: tuple[str, ...] = ()
    head_seed: int | None = None


def _names(keys: list[str] | tuple[str, ...]) -> str:
    keys = sorted(keys)
    more = f" and {len(keys) - _SHOWN} more" if len(keys) > _SHOWN else ""
    return ", ".join(keys[:_SHOWN]) + more


def _split_head(model: torch.nn.Module, missing: list[str], unexpected: list[str]) -> tuple[list, list, list, list]:
    """Split the loading report into (encoder missing, head missing, encoder unexpected, head unexpected).

    Head weights: outside the base model (``gmat.``, ``bert.``, ...), or its pooler. An unexpected key may be
    named with or without the base model's prefix (a bare encoder's checkpoint has none).
    """
    prefix = getattr(model, "base_model_prefix", "")
    base = getattr(model, "base_model", model)
    encoder_parts = {name for name, _ in base.named_children() if name != "pooler"}

    def in_encoder(key: str) -> bool:
        if prefix and key.startswith(prefix + "."):
            key = key[len(prefix) + 1 :]
        return key.split(".", 1)[0] in encoder_parts

    enc_missing = [k for k in missing if in_encoder(k)]
    head_missing = [k for k in missing if not in_encoder(k)]
    enc_unexpected = [k for k in unexpected if in_encoder(k)]
    head_unexpected = [k for k in unexpected if not in_encoder(k)]
    return enc_missing, head_missing, enc_unexpected, head_unexpected


def _restore_tied_aliases(
    model: torch.nn.Module, path: Path, missing: list[str], unexpected: list[str]
) -> tuple[list[str], list[str]]:
    """Load encoder weights that the file holds under their tied alias (``_TIED_ALIASES``) into the model.

    A masked LM saved by ``safetensors.save_model`` (older ``gmat train`` checkpoints, ``gmat convert`` of a
    ``BertForMaskedLM``) holds its word embeddings as ``cls.predictions.decoder.weight`` only; loaded into
    another head, transformers reports the embeddings missing and the decoder unexpected.
    """
    prefix = getattr(model, "base_model_prefix", "")
    weights = path / "model.safetensors"
    for key, alias in _TIED_ALIASES.items():
        name = f"{prefix}.{key}" if prefix and getattr(model, "base_model", model) is not model else key
        if name in missing and alias in unexpected and weights.is_file():
            with safe_open(str(weights), framework="pt") as f:
                tensor = f.get_tensor(alias)
            with torch.no_grad():
                model.get_parameter(name).copy_(tensor)
            missing = [k for k in missing if k != name]
            unexpected = [k for k in unexpected if k != alias]
    return missing, unexpected


def _is_pooler(model: torch.nn.Module, key: str) -> bool:
    prefix = getattr(model, "base_model_prefix", "")
    return key.removeprefix(prefix + ".").startswith("pooler.")


def load_pretrained(
    cls: Any,
    path: str | os.PathLike[str],
    *,
    allow_missing: bool = False,
    allow_random_head: bool = False,
    head_seed: int | None = 0,
    what_to_train: str = "",
    **kwargs: Any,
) -> tuple[torch.nn.Module, LoadReport]:
    """``cls.from_pretrained(path, **kwargs)``, verified.

    Args:
        cls: a model class or an ``AutoModelFor...`` class.
        path: the saved model folder.
        allow_missing: load although encoder weights are missing or unexpected weights are present (they are
            initialised at random / dropped; the report lists them).
        allow_random_head: load although the head ``cls`` needs is missing (a checkpoint of an encoder only,
            or of another head): the head is initialised at random from ``head_seed``.
        head_seed: seed of a random head; None leaves torch's random state as the caller set it (training
            from a checkpoint, where the run's own seed decides the new head).
        what_to_train: the end of the refusal message of a missing head, saying how to get one.
        **kwargs: passed to ``from_pretrained`` (e.g. config fields).

    Returns:
        ``(model, report)``.

    Raises:
        CheckpointError: a file fails its manifest, the weights cannot be read, or weights are missing or
            unexpected and not allowed (the message names them and the flag that allows them).
        OSError: if ``path`` is not a saved model folder.
    """
    path = Path(path)
    if not (path / _CONFIG_FILE).is_file():
        raise FileNotFoundError(f"{path} is not a saved model folder (no {_CONFIG_FILE})")
    verified = (path / MANIFEST_FILE).is_file()
    if verified:
        verify_manifest(path)
    seeded = allow_random_head and head_seed is not None
    try:
        with torch.random.fork_rng(devices=[]) if seeded else contextlib.nullcontext():
            if seeded:
                torch.manual_seed(head_seed)
            model, info = cls.from_pretrained(path, output_loading_info=True, **kwargs)
    except (SafetensorError, RuntimeError) as err:
        if isinstance(err, CheckpointError):
            raise
        raise CheckpointError(f"{path}: weights cannot be loaded ({type(err).__name__}: {err})") from err
    missing = list(info.get("missing_keys", []))
    unexpected = [k for k in info.get("unexpected_keys", []) if not _is_pooler(model, k)]
    missing, unexpected = _restore_tied_aliases(model, path, missing, unexpected)
    enc_missing, head_missing, enc_unexpected, head_unexpected = _split_head(model, missing, unexpected)
    name = type(model).__name__
    if enc_missing and not allow_missing:
        raise CheckpointError(
            f"{path}: {len(enc_missing)} weight(s) of {name}'s encoder are missing from the checkpoint: "
            f"{_names(enc_missing)}; they would be random (pass --allow-missing to load anyway)"
        )
    if enc_unexpected and not allow_missing:
        raise CheckpointError(
            f"{path}: {len(enc_unexpected)} weight(s) of the checkpoint have no place in {name}: "
            f"{_names(enc_unexpected)} (a model of another shape? pass --allow-missing to drop them)"
        )
    if head_missing and not allow_random_head:
        hint = f"; {what_to_train}" if what_to_train else ""
        raise CheckpointError(
            f"{path}: has no weights for {name}'s head ({_names(head_missing)}){hint}; "
            f"or pass --allow-random-head to score a randomly initialised, seeded head"
        )
    if head_unexpected and not (allow_random_head or allow_missing):
        raise CheckpointError(
            f"{path}: holds weights of another head, unused by {name}: {_names(head_unexpected)} "
            f"(pass --allow-missing to drop them)"
        )
    if missing or unexpected:
        logger.warning(
            "%s: loaded into %s with %d weight(s) initialised at random (%s) and %d dropped (%s)",
            path,
            name,
            len(missing),
            _names(missing) or "none",
            len(unexpected),
            _names(unexpected) or "none",
        )
    report = LoadReport(
        path=str(path),
        verified=verified,
        missing=tuple(sorted(missing)),
        unexpected=tuple(sorted(unexpected)),
        random_head=tuple(sorted(head_missing)),
        head_seed=head_seed if head_missing and seeded else None,
    )
    return model, report


def save_tensors(model: torch.nn.Module, path: str | Path) -> None:
    """Write the weights, one name per tied group: the tied copy (e.g. the MLM decoder) is the one dropped.

    ``safetensors.save_model`` keeps the alphabetically first name of a tied group, which for a masked LM is
    the decoder (``cls.predictions.decoder.weight``), not the word embeddings: the folder then loads into
    another head (question answering, ...) without its word embeddings. Dropping the names of
    ``all_tied_weights_keys`` (transformers' ``{tied copy: source}``) keeps the embeddings, as
    ``save_pretrained`` does.
    """
    tied = getattr(model, "all_tied_weights_keys", None) or {}
    if not tied:
        save_model(model, str(path))
        return
    state = model.state_dict()
    params = dict(model.named_parameters(remove_duplicate=False))
    for target, source in tied.items():
        if target in state and source in params and params.get(target) is params[source]:
            del state[target]
    save_file({k: v.contiguous() for k, v in state.items()}, str(path), metadata={"format": "pt"})
