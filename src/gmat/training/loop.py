"""The training loop: one explicit function, read top to bottom (nanoGPT / torchtune style).

``train(config)`` builds the task and model, then for each optimizer step: gathers this rank's
micro-batches (accumulating gradients, syncing DDP only on the last), clips the gradient norm, steps
AdamW and the warm-up + decay schedule, logs, evaluates every ``eval_every`` steps (keeping the best
weights), and writes an atomic resumable checkpoint every ``save_every`` steps.

Run directory (rank 0 writes it)::

    RUN_DIR/config.yaml       the resolved config
    RUN_DIR/metrics.jsonl     one JSON object per log or evaluation event
    RUN_DIR/results.json      final and best metrics, timings, hardware
    RUN_DIR/eval/             per-example files of the final evaluation, for tasks that have them (rc)
    RUN_DIR/checkpoints/      resumable step checkpoints + LATEST pointer (see checkpoint.py)
    RUN_DIR/best/             weights with the best evaluation metric (loads with from_pretrained); like every
                              checkpoint, it also holds the task's tokenizer when the task has one (MLM,
                              compression), so ``pipeline("fill-mask", model=RUN_DIR/best)`` needs nothing else

Resuming restores weights, optimizer, scheduler, the RNG states of torch / Python / NumPy and the data
position (the step: data are a function of the global example index), so a stopped and resumed run
logs the same losses as one that never stopped.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import random
import time
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch.nn.parallel import DistributedDataParallel
from torch.optim.lr_scheduler import LambdaLR

from gmat.tasks.base import Task, hardware_description
from gmat.tasks.registry import create_task
from gmat.training.checkpoint import (
    atomic_write_text,
    latest_checkpoint,
    load_model_weights,
    load_training_state,
    remove_stale_temp,
    save_checkpoint,
    save_weights,
)
from gmat.training.config import RunConfig, TrainSettings, config_to_dict
from gmat.training.distributed import (
    DistInfo,
    all_reduce_sum,
    barrier,
    cleanup_distributed,
    collective_timeout,
    init_distributed,
    micro_batch_indices,
)
from gmat.training.rundir import run_dir_lock

__all__ = ["evaluate_model", "lr_multiplier", "train"]

logger = logging.getLogger(__name__)


# ---- pieces ------------------------------------------------------------------------------------------------
def lr_multiplier(
    step: int, *, warmup_steps: int, total_steps: int, schedule: str, min_lr_ratio: float
) -> float:
    """Learning-rate factor at ``step``: linear warm-up, then cosine / linear decay to ``min_lr_ratio``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    if schedule == "cosine":
        return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
    return min_lr_ratio + (1.0 - min_lr_ratio) * (1.0 - progress)


def _build_optimizer(model: torch.nn.Module, tc: TrainSettings, device: torch.device) -> torch.optim.AdamW:
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)  # no decay on biases and LayerNorm weights
    groups = [{"params": decay, "weight_decay": tc.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=tc.lr, betas=(tc.beta1, tc.beta2), fused=device.type == "cuda")


def _autocast(tc: TrainSettings, device: torch.device) -> contextlib.AbstractContextManager:
    bf16 = tc.precision == "bf16" or (tc.precision == "auto" and device.type == "cuda")
    if bf16:
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": {
            "key": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state(
        ("MT19937", n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def evaluate_model(
    model: torch.nn.Module,
    task: Task,
    batch_size: int,
    info: DistInfo | None = None,
    split: str = "eval",
    autocast: contextlib.AbstractContextManager | None = None,
    out_dir: Path | None = None,
) -> dict[str, Any]:
    """The task's metrics of ``model`` on ``split``, identical on every rank (sharded and summed by the task)."""
    info = info or DistInfo()
    return task.evaluate(
        model,
        batch_size=batch_size,
        device=info.device,
        rank=info.rank,
        world_size=info.world_size,
        reduce=partial(all_reduce_sum, info=info),
        autocast=autocast,
        split=split,
        out_dir=out_dir,
    )


class _MetricsLog:
    """Appends JSON lines to ``metrics.jsonl`` on rank 0 (flushed per line, so a crash loses nothing)."""

    def __init__(self, path: Path, enabled: bool, fresh: bool) -> None:
        self.enabled = enabled
        self._file = None
        if enabled:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(path, "w" if fresh else "a")

    def write(self, record: dict[str, Any]) -> None:
        if self._file is not None:
            self._file.write(json.dumps(record) + "\n")
            self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop records after ``step`` (written after the checkpoint a run resumes from)."""
    if not path.is_file():
        return
    kept = [
        line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step
    ]
    atomic_write_text(path, "".join(line + "\n" for line in kept))


# ---- the loop ----------------------------------------------------------------------------------------------
def train(config: RunConfig, *, resume: bool = False, stop_after: int | None = None) -> dict[str, Any]:
    """Train ``config`` (in this process, or as one rank of a ``torchrun`` job).

    Args:
        config: the run config.
        resume: continue from ``RUN_DIR/checkpoints/LATEST`` (starts fresh, with a warning, if none exists).
        stop_after: stop (with a checkpoint) after this many optimizer steps of this invocation, as a
            preempted job would; ``--resume`` continues it.

    Returns:
        The results dictionary written to ``RUN_DIR/results.json``.

    Raises:
        RunDirLockedError: if another process trains in ``run_dir`` (rank 0 holds ``RUN_DIR/.lock``).
        DistributedTimeoutError: if a collective waits longer than ``train.ddp_timeout_s``.
    """
    info = init_distributed(config.train.device, timeout_s=config.train.ddp_timeout_s)
    try:
        with collective_timeout(info, config.train.ddp_timeout_s):
            with run_dir_lock(config.run_dir) if info.is_main else contextlib.nullcontext():
                if info.is_main:
                    remove_stale_temp(config.run_dir)  # left by a writer killed mid-save
                return _train(config, info, resume=resume, stop_after=stop_after)
    finally:
        cleanup_distributed(info)


def _train(config: RunConfig, info: DistInfo, *, resume: bool, stop_after: int | None) -> dict[str, Any]:
    tc = config.train
    if not info.is_main:  # rank-0-only logging: other ranks report warnings and errors only
        logging.getLogger("gmat").setLevel(logging.WARNING)
    run_dir = Path(config.run_dir)
    ckpt_root = run_dir / "checkpoints"
    if tc.num_threads:
        torch.set_num_threads(tc.num_threads)
    device = info.device
    task = create_task(config.task)
    L = task.seq_len  # noqa: N806 (shape letter)
    files = task.checkpoint_files()  # saved next to every checkpoint's weights (the tokenizer, if any)

    # ---- model, optimizer, schedule ----------------------------------------------------------------------
    _seed_everything(tc.seed)
    model = task.build_model(config.model).to(device)
    if tc.gradient_checkpointing:
        kwargs = {"use_reentrant": False}
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5; the old name is deprecated
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    optimizer = _build_optimizer(model, tc, device)
    scheduler = LambdaLR(
        optimizer,
        partial(
            lr_multiplier,
            warmup_steps=tc.warmup_steps,
            total_steps=tc.steps,
            schedule=tc.schedule,
            min_lr_ratio=tc.min_lr_ratio,
        ),
    )
    start_step, best, log_acc = 0, None, [0.0, 0]
    last_eval: dict[str, float] = {}
    checkpoint = latest_checkpoint(ckpt_root) if resume else None
    if resume and checkpoint is None:
        logger.warning("--resume: no checkpoint under %s, starting from step 0", ckpt_root)
    if checkpoint is not None:
        load_model_weights(checkpoint, model)
        state = load_training_state(checkpoint)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        _set_rng_state(state["rng"])
        start_step, best, log_acc = state["step"], state["best"], list(state["log_accumulator"])
        last_eval = dict(state["last_eval"])
        logger.info("resumed from %s at step %d", checkpoint, start_step)
    autocast = _autocast(tc, device)
    ddp_model = (
        DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
        if info.distributed
        else model
    )

    if info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(config_to_dict(config), sort_keys=False))
        if checkpoint is not None:
            _truncate_metrics(run_dir / "metrics.jsonl", start_step)
    log = _MetricsLog(run_dir / "metrics.jsonl", info.is_main, fresh=checkpoint is None)
    n_params = sum(p.numel() for p in model.parameters())
    logger.info(
        "task %s L=%d | model %.2fM params, M=%d, %s | %d steps x %d examples | %d process(es) on %s",
        config.task.name,
        L,
        n_params / 1e6,
        config.model.num_memory_tokens,
        config.model.attention_pattern,
        tc.steps,
        tc.batch_size,
        info.world_size,
        device,
    )

    def save(step: int) -> None:
        if tc.save_checkpoints and info.is_main:
            state = {
                "step": step,
                "best": best,
                "last_eval": last_eval,
                "log_accumulator": log_acc,
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "rng": _rng_state(),
                "examples_seen": step * tc.batch_size,
            }
            save_checkpoint(ckpt_root, step, model, state, keep=tc.keep_checkpoints, files=files)
        barrier(info)

    # ---- loop --------------------------------------------------------------------------------------------
    progress = None
    if info.is_main and tc.progress:
        from tqdm.auto import tqdm

        progress = tqdm(
            total=tc.steps, initial=start_step, desc=run_dir.name, unit="step", dynamic_ncols=True
        )
    metric_name = task.metric_name
    t_start = time.perf_counter()
    t_window, tokens_window = t_start, 0
    train_seconds = 0.0
    model.train()
    step = start_step
    while step < tc.steps:
        t_step = time.perf_counter()
        loss_sum = torch.zeros((), device=device)
        for micro in range(tc.grad_accum_steps):
            indices = micro_batch_indices(step, micro, tc.batch_size, tc.grad_accum_steps, info)
            batch = {k: v.to(device, non_blocking=True) for k, v in task.batch("train", indices).items()}
            last_micro = micro == tc.grad_accum_steps - 1
            sync = contextlib.nullcontext() if last_micro or not info.distributed else ddp_model.no_sync()
            with sync:
                with autocast:
                    loss = task.forward_loss(ddp_model, batch)[1] / tc.grad_accum_steps
                loss.backward()
            loss_sum += loss.detach()
        if tc.grad_clip > 0:
            grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip))
        else:
            grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), float("inf")))
        lr = scheduler.get_last_lr()[0]
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        train_seconds += time.perf_counter() - t_step

        step_loss = float(all_reduce_sum(loss_sum.double().cpu(), info)) / info.world_size
        log_acc = [log_acc[0] + step_loss, log_acc[1] + 1]
        tokens_window += tc.batch_size * L
        if step % tc.log_every == 0 or step == tc.steps:
            now = time.perf_counter()
            tokens_per_s = tokens_window / max(now - t_window, 1e-9)
            log.write(
                {
                    "step": step,
                    "split": "train",
                    "loss": log_acc[0] / log_acc[1],
                    "lr": lr,
                    "grad_norm": grad_norm,
                    "tokens_per_s": round(tokens_per_s, 1),
                    "elapsed_s": round(now - t_start, 3),
                }
            )
            log_acc = [0.0, 0]
            t_window, tokens_window = now, 0
            if progress is not None:
                progress.set_postfix(
                    loss=f"{step_loss:.4f}",
                    **{metric_name: f"{last_eval.get(metric_name, 0):.3f}"},
                    tok_s=f"{tokens_per_s:,.0f}",
                    refresh=False,
                )

        if (tc.eval_every and step % tc.eval_every == 0) or step == tc.steps:
            final = step == tc.steps
            eval_dir = run_dir / "eval" if final and info.is_main else None  # per-example files, if the task has any
            last_eval = evaluate_model(model, task, tc.eval_batch_size, info, autocast=autocast, out_dir=eval_dir)
            log.write({"step": step, "split": "eval", **last_eval})
            if best is None or last_eval[metric_name] > best["value"]:
                best = {"step": step, "metric": metric_name, "value": last_eval[metric_name]}
                if info.is_main and tc.save_checkpoints:
                    save_weights(run_dir / "best", model, files)
                    atomic_write_text(run_dir / "best" / "best.json", json.dumps(best) + "\n")
            logger.debug("step %d eval %s", step, last_eval)

        if progress is not None:
            progress.update(1)
        stopping = stop_after is not None and step - start_step >= stop_after and step < tc.steps
        if (tc.save_every and step % tc.save_every == 0) or step == tc.steps or stopping:
            save(step)
        if stopping:
            logger.info(
                "stopping after %d steps of this invocation (step %d); continue with --resume",
                stop_after,
                step,
            )
            break
    if progress is not None:
        progress.close()
    log.close()

    results = {
        "task": config.task.name,
        "metric": metric_name,
        "steps_done": step,
        "finished": step == tc.steps,
        "eval": last_eval,
        "best": best,
        "train_seconds": round(train_seconds, 3),
        "wall_seconds": round(time.perf_counter() - t_start, 3),
        "num_parameters": n_params,
        "world_size": info.world_size,
        "hardware": hardware_description(device),
        "config": config_to_dict(config),
    }
    if info.is_main:
        atomic_write_text(run_dir / "results.json", json.dumps(results, indent=2) + "\n")
    return results
