"""One training process per run directory: an OS-level lock on ``RUN_DIR/.lock``.

Two runs writing one directory corrupt each other (the second truncates the first's ``metrics.jsonl``,
their checkpoints interleave). ``run_dir_lock`` takes an exclusive ``fcntl.flock`` on ``RUN_DIR/.lock`` and
writes this process's pid into it; a second run fails at once naming the directory and the holder's pid.
The kernel releases a ``flock`` when its process ends, however it ends (``kill -9`` included), so a lock
file left by a dead run never blocks: its pid is only reported. On a filesystem without ``flock`` the pid
alone decides (a pid that is not running is a stale lock), with a warning. Only rank 0 of a data-parallel
job takes the lock (it is the one that writes); ``run_dir_held`` tells every rank at once whether it got it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import torch

from gmat.training.checkpoint import pid_running
from gmat.training.distributed import DistInfo, all_reduce_sum

__all__ = ["LOCK_FILE", "RunDirLockedError", "run_dir_held", "run_dir_lock"]

logger = logging.getLogger(__name__)

LOCK_FILE = ".lock"


class RunDirLockedError(RuntimeError):
    """Another live process trains in this run directory; the message names the directory and its pid."""


def _read_pid(fd: int) -> int | None:
    text = os.pread(fd, 64, 0).decode("ascii", "replace").strip()
    return int(text) if text.isdigit() else None


def _locked(run_dir: Path, holder: int | None) -> RunDirLockedError:
    who = f"pid {holder}" if holder is not None else "a process that did not record its pid"
    return RunDirLockedError(
        f"run_dir {run_dir} is in use by another training process ({who}); wait for it to finish or "
        f"choose another run_dir"
    )


@contextlib.contextmanager
def run_dir_lock(run_dir: str | Path) -> Iterator[Path]:
    """Hold the lock of ``run_dir`` (created if needed) for the ``with`` block.

    Raises:
        RunDirLockedError: if another live process holds it (at once, without waiting).
    """
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise NotADirectoryError(f"run_dir {run_dir} exists and is not a directory")
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise _locked(run_dir, _read_pid(fd)) from None
        except OSError as err:
            if err.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                raise
            holder = _read_pid(fd)
            logger.warning("%s: the filesystem has no flock (%s); locking by pid only", path, err)
            if holder is not None and holder != os.getpid() and pid_running(holder):
                raise _locked(run_dir, holder) from None
        previous = _read_pid(fd)
        if previous is not None and previous != os.getpid():
            logger.info("%s: taking over the lock of pid %d, which is no longer running", path, previous)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        os.fsync(fd)
        try:
            yield path
        finally:
            os.ftruncate(fd, 0)  # released: an empty file names no holder
    finally:
        os.close(fd)  # releases the flock


@contextlib.contextmanager
def run_dir_held(run_dir: str, info: DistInfo) -> Iterator[None]:
    """Rank 0 holds ``RUN_DIR/.lock`` for the block; every rank learns at once whether it got it.

    Without the exchange, the other ranks of a job whose rank 0 was refused the lock would wait in their first
    collective until ``train.ddp_timeout_s``.
    """
    with contextlib.ExitStack() as stack:
        refused: RunDirLockedError | None = None
        if info.is_main:
            try:
                stack.enter_context(run_dir_lock(run_dir))
            except RunDirLockedError as err:
                refused = err
        held = all_reduce_sum(torch.tensor([0.0 if refused else 1.0]), info)  # world of one: this rank's flag
        if refused is not None:
            raise refused
        if held.item() < info.world_size:
            raise RunDirLockedError(
                f"{run_dir}: rank 0 was refused the run directory's lock; rank {info.rank} stops too"
            )
        yield
