"""Atomic, pickle-free training checkpoints.

Layout of a checkpoint directory (``RUN_DIR/checkpoints/step_00000300/``)::

    model.safetensors   weights (safetensors: no code runs on load)
    config.json         the GmatConfig, so the directory also loads with ``from_pretrained``
    state.pt            optimizer, scheduler, RNG and data-position state; tensors and plain Python
                        containers only, read with ``torch.load(weights_only=True)``
    tokenizer.json ...  the task's extra files, if any (``files=``; MLM and compression save their tokenizer)
    manifest.json       SHA-256 and size of every file above, written last

Writing is atomic: everything goes to a hidden temporary directory next to the target, each file is
fsynced, the directory is renamed into place (``os.replace``), and only then does the ``LATEST`` pointer
move (itself written to a temporary file and renamed). A process killed at any moment therefore leaves the
previous checkpoint and pointer intact. Temporary names end in the writer's pid (``.tmp-NAME-PID``); those of
pids no longer running are removed by ``remove_stale_temp`` when a run starts and by the next save, never
those of a live process. Loading checks the manifest (``gmat.modeling.loading``), so a truncated or
corrupted file raises ``CheckpointError`` naming it.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from gmat.modeling.loading import MANIFEST_FILE, CheckpointError, save_tensors, verify_manifest, write_manifest

__all__ = [
    "CheckpointError",
    "atomic_write_bytes",
    "atomic_write_text",
    "latest_checkpoint",
    "load_model_weights",
    "load_training_state",
    "remove_stale_temp",
    "save_checkpoint",
    "save_weights",
]

logger = logging.getLogger(__name__)

MODEL_FILE = "model.safetensors"
STATE_FILE = "state.pt"
CONFIG_FILE = "config.json"
LATEST_FILE = "LATEST"
_TMP_PREFIX = ".tmp-"
_RESERVED = (MODEL_FILE, STATE_FILE, CONFIG_FILE, MANIFEST_FILE, LATEST_FILE)


# ---- atomic primitives ---------------------------------------------------------------------------------
def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # some filesystems do not allow opening directories
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def pid_running(pid: int) -> bool:
    """Whether process ``pid`` is alive (on this machine)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


def remove_stale_temp(directory: str | Path, *, recursive: bool = True) -> list[Path]:
    """Delete the temporary files and folders (``.tmp-NAME-PID``) that dead writers left under ``directory``.

    A writer killed mid-save (``kill -9``, a full disk) leaves its temporary file or folder behind. Those
    whose pid is no longer running, or is this process's (its saves run one at a time, so none is in
    progress when this is called), are removed; another live pid's (a save in progress) and names without a
    pid are kept. Pids are of this machine: a run directory shared between hosts needs one writer at a time
    (the run-directory lock).

    Returns:
        The paths removed.
    """
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = directory.rglob(f"{_TMP_PREFIX}*") if recursive else directory.glob(f"{_TMP_PREFIX}*")
    removed = []
    for path in sorted(found):
        pid = path.name.rsplit("-", 1)[-1]
        if not pid.isdigit() or (int(pid) != os.getpid() and pid_running(int(pid))):
            continue
        if not (path.exists() or path.is_symlink()):  # inside a folder removed before
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)
    if removed:
        logger.info("removed %d stale temporary file(s) of dead writers: %s", len(removed), [str(p) for p in removed])
    return removed


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically: temporary file in the same directory, fsync, rename."""
    path = Path(path)
    tmp = path.with_name(f"{_TMP_PREFIX}{path.name}-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def atomic_write_text(path: str | Path, text: str) -> None:
    """``atomic_write_bytes`` for UTF-8 text."""
    atomic_write_bytes(path, text.encode("utf-8"))


# ---- save ------------------------------------------------------------------------------------------------
def save_weights(directory: str | Path, model: torch.nn.Module, files: Mapping[str, bytes] | None = None) -> Path:
    """Write ``model.safetensors`` + ``config.json`` (+ ``files`` + manifest) atomically into ``directory``.

    ``directory`` is replaced as a whole; the result loads with ``load_model_weights`` and with
    ``model.from_pretrained``. ``files`` (``{file name: contents}``, e.g. the tokenizer's) are written next to
    the weights and listed in the manifest.
    """
    return _save_dir(Path(directory), model, state=None, files=files)


def save_checkpoint(
    root: str | Path,
    step: int,
    model: torch.nn.Module,
    state: dict[str, Any],
    keep: int = 2,
    files: Mapping[str, bytes] | None = None,
) -> Path:
    """Write the resumable checkpoint of ``step`` under ``root`` and point ``root/LATEST`` at it.

    Args:
        root: the checkpoints directory (created if needed).
        step: optimizer steps done; names the directory ``step_{step:08d}``.
        model: the (unwrapped) model whose weights to save.
        state: optimizer/scheduler/RNG/data state: tensors and plain Python containers only.
        keep: how many step checkpoints to keep (older ones are deleted after the pointer moves; 0 keeps all).
        files: extra ``{file name: contents}`` written next to the weights (as in ``save_weights``).

    Returns:
        The checkpoint directory.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = _save_dir(root / f"step_{step:08d}", model, state, files)
    atomic_write_text(root / LATEST_FILE, final.name + "\n")
    if keep > 0:
        for old in sorted(root.glob("step_*"))[:-keep]:
            if old != final:
                shutil.rmtree(old, ignore_errors=True)
    return final


def _save_dir(
    final: Path, model: torch.nn.Module, state: dict[str, Any] | None, files: Mapping[str, bytes] | None
) -> Path:
    files = dict(files or {})
    for name in files:
        if name in _RESERVED or Path(name).name != name or name.startswith("."):
            raise ValueError(f"files: {name!r} is not a plain file name free to use next to the weights")
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temp(final.parent, recursive=False)  # leftovers of a save that was killed
    tmp = final.with_name(f"{_TMP_PREFIX}{final.name}-{os.getpid()}")
    tmp.mkdir()
    save_tensors(model, tmp / MODEL_FILE)
    _fsync_file(tmp / MODEL_FILE)
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "to_json_string"):
        # The class that holds these weights, as save_pretrained writes it: a model built from a converted
        # encoder inherits the encoder's architectures, and loaders that go by it (gmat export) dropped the head.
        config.architectures = [type(model).__name__]
        with open(tmp / CONFIG_FILE, "w") as f:
            f.write(config.to_json_string())
            f.flush()
            os.fsync(f.fileno())
    if state is not None:
        with open(tmp / STATE_FILE, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
    for name, data in files.items():
        (tmp / name).write_bytes(data)
        _fsync_file(tmp / name)
    write_manifest(tmp)
    _fsync_dir(tmp)
    if final.exists():  # re-saving the same step (e.g. after a resume): move the old one aside first
        trash = final.with_name(f"{_TMP_PREFIX}old-{final.name}-{os.getpid()}")
        os.replace(final, trash)
        os.replace(tmp, final)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(tmp, final)
    _fsync_dir(final.parent)
    return final


# ---- load ------------------------------------------------------------------------------------------------
def latest_checkpoint(root: str | Path) -> Path | None:
    """Return the directory ``root/LATEST`` points at, or None if there is no checkpoint yet.

    Raises:
        CheckpointError: if the pointer names a directory that does not exist.
    """
    pointer = Path(root) / LATEST_FILE
    if not pointer.is_file():
        return None
    name = pointer.read_text().strip()
    path = Path(root) / name
    if not name or not path.is_dir():
        raise CheckpointError(f"{pointer}: points at {name!r}, which is not a checkpoint directory")
    return path


def load_model_weights(directory: str | Path, model: torch.nn.Module) -> None:
    """Load ``directory/model.safetensors`` into ``model`` (strict: every key must match).

    Raises:
        CheckpointError: naming the file when it is missing, truncated, corrupted or does not fit ``model``.
    """
    directory = Path(directory)
    verify_manifest(directory, (MODEL_FILE,))
    path = directory / MODEL_FILE
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{path}: cannot be read ({err})") from err
    # save_model drops one name of each group of tied tensors; let them be re-tied by the model.
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    tied = {name for name in missing if _is_tied(model, name, tensors)}
    missing = [name for name in missing if name not in tied]
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: does not fit the model (missing {missing[:5]}, unexpected {list(unexpected)[:5]})"
        )


def _is_tied(model: torch.nn.Module, name: str, tensors: dict[str, torch.Tensor]) -> bool:
    params = dict(model.named_parameters(remove_duplicate=False))
    if name not in params:
        return False
    return any(other in tensors and params[other] is params[name] for other in params if other != name)


def load_training_state(directory: str | Path) -> dict[str, Any]:
    """Read ``directory/state.pt`` with ``torch.load(weights_only=True)`` (no arbitrary unpickling).

    Raises:
        CheckpointError: naming the file when it is missing, truncated or corrupted.
    """
    directory = Path(directory)
    verify_manifest(directory, (STATE_FILE,))
    path = directory / STATE_FILE
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types (pickle, zip, runtime) for a bad file
        raise CheckpointError(f"{path}: cannot be read ({type(err).__name__}: {err})") from err
