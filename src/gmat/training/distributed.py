"""Data-parallel helpers: process group set-up from ``torchrun``'s environment, sharding, reductions.

Under ``torchrun --nproc_per_node N`` every process reads ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``;
``init_distributed`` joins the process group (NCCL on CUDA, gloo on CPU). A plain ``python``/``gmat`` run
is a world of one and never touches ``torch.distributed``.

Sharding: the synthetic data are a deterministic function of the global example index, so sharding is
arithmetic. The global batch of step s covers indices ``[s·G, (s+1)·G)``; rank r takes the contiguous
slice ``r·G/N .. (r+1)·G/N`` and cuts it into ``grad_accum_steps`` micro-batches. One process and N
processes thus see the same global batches, and resuming needs only the step.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

__all__ = [
    "DistInfo",
    "DistributedTimeoutError",
    "all_reduce_sum",
    "barrier",
    "cleanup_distributed",
    "collective_timeout",
    "init_distributed",
    "micro_batch_indices",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the job.

    Attributes:
        rank: global rank (0 writes logs and checkpoints).
        world_size: number of processes.
        local_rank: rank on this node (selects the CUDA device).
        device: the device this process trains on.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        """True on rank 0."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """True when more than one process trains."""
        return self.world_size > 1


class DistributedTimeoutError(RuntimeError):
    """A collective waited longer than ``train.ddp_timeout_s``: another rank is stuck, stopped or dead."""

    exit_code = 1  # ``gmat train`` reports it in one line: a failed run, not bad input


def init_distributed(device: str = "auto", timeout_s: float = 600.0) -> DistInfo:
    """Join the process group when launched by ``torchrun`` (``WORLD_SIZE`` > 1), pick the device.

    Args:
        device: ``"auto"`` (CUDA when available), ``"cpu"`` or ``"cuda"``.
        timeout_s: how long joining the group and each collective may wait for the other ranks
            (``train.ddp_timeout_s``); past it gloo raises (see ``collective_timeout``) and NCCL's watchdog
            ends the process, so a stopped or hung rank cannot hold the others forever.

    Raises:
        ValueError: if ``device="cuda"`` is requested without CUDA.
    """
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("train.device='cuda' but CUDA is not available")
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda:
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if use_cuda else "gloo"
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size, timeout=timedelta(seconds=timeout_s))
        if rank == 0:
            logger.info("joined process group: %d processes (%s)", world_size, backend)
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank, device=dev)


@contextlib.contextmanager
def collective_timeout(info: DistInfo, timeout_s: float) -> Iterator[None]:
    """Turn a collective's timeout inside the block into ``DistributedTimeoutError`` naming the setting."""
    try:
        yield
    except RuntimeError as err:
        text = str(err).lower()
        if not info.distributed or not ("timed out" in text or "timeout" in text):
            raise
        raise DistributedTimeoutError(
            f"rank {info.rank}: a data-parallel collective waited more than train.ddp_timeout_s={timeout_s:g} s "
            f"for the other ranks (one is stuck, stopped or dead); stopping. If steps or evaluations "
            f"legitimately take longer, raise train.ddp_timeout_s. ({str(err).splitlines()[0]})"
        ) from err


def cleanup_distributed(info: DistInfo) -> None:
    """Leave the process group (if this run joined one)."""
    if info.distributed and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    """Wait for every process (no-op in a world of one)."""
    if info.distributed:
        dist.barrier()


def all_reduce_sum(tensor: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum ``tensor`` over processes (returns a new tensor on the tensor's device)."""
    if not info.distributed:
        return tensor
    out = tensor.to(info.device, copy=True)
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out.to(tensor.device)


def micro_batch_indices(step: int, micro: int, batch_size: int, grad_accum_steps: int, info: DistInfo) -> range:
    """Global example indices of micro-batch ``micro`` of optimizer step ``step`` on this rank.

    Args:
        step: optimizer step (0-based).
        micro: micro-batch within the step, ``0 <= micro < grad_accum_steps``.
        batch_size: global batch size G.
        grad_accum_steps: micro-batches per step and rank.
        info: this process.

    Raises:
        ValueError: if G is not divisible by ``world_size * grad_accum_steps``.
    """
    per_rank, rest = divmod(batch_size, info.world_size * grad_accum_steps)
    if rest or per_rank == 0:
        raise ValueError(
            f"train.batch_size={batch_size} must be a positive multiple of world_size "
            f"({info.world_size}) x train.grad_accum_steps ({grad_accum_steps})"
        )
    start = step * batch_size + (info.rank * grad_accum_steps + micro) * per_rank
    return range(start, start + per_rank)
