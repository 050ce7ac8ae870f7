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

Divergence policy: a step whose loss or gradient norm is not finite (NaN / inf, on any rank: the decision is
all-reduced) is skipped: no parameter update, its batch and its place in the schedule are used up, the skip is
logged (a warning, and ``skipped_steps`` in ``metrics.jsonl``). After ``train.max_nonfinite_steps``
consecutive skipped steps the run stops with ``TrainingDiverged``. Non-finite weights or a non-finite metric
are never saved as ``best/``, and no JSON file holds a bare ``NaN`` (``gmat.training.safe_json``).

The best checkpoint is the one with the best ``train.best_metric`` (default: the task's ``best_metric``, else
its ``metric_name``) in direction ``train.best_mode``. ``train.steps: 0`` evaluates the initial model only
(no training, no checkpoint) and writes ``results.json``.

A resumed run compares its config with ``RUN_DIR/config.yaml``: a changed key outside
``RESUME_SAFE_KEYS`` is refused (``ValueError`` naming each key and both values) unless
``allow_config_change``; then each change is logged, takes effect, and the old file is kept as
``config.prev-<n>.yaml``.

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
import re
import time
import warnings
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch.nn.parallel import DistributedDataParallel
from torch.optim.lr_scheduler import LambdaLR

from gmat.tasks.base import Task, check_batch, hardware_description
from gmat.tasks.registry import create_task
from gmat.training import safe_json
from gmat.training.checkpoint import (
    atomic_write_text,
    latest_checkpoint,
    load_model_weights,
    load_training_state,
    remove_stale_temp,
    save_checkpoint,
    save_weights,
)
from gmat.training.config import (
    RESUME_SAFE_KEYS,
    RunConfig,
    TrainSettings,
    config_changes,
    config_to_dict,
    stored_config_dict,
)
from gmat.training.distributed import (
    DistInfo,
    all_reduce_sum,
    barrier,
    cleanup_distributed,
    collective_timeout,
    init_distributed,
    micro_batch_indices,
)
from gmat.training.rundir import run_dir_held

__all__ = ["TrainingDiverged", "evaluate_model", "lr_multiplier", "train"]

logger = logging.getLogger(__name__)


class TrainingDiverged(RuntimeError):
    """The run stopped: ``train.max_nonfinite_steps`` consecutive steps had a non-finite loss or gradient norm.

    ``gmat train`` reports it in one line and exits with status 1 (``exit_code``): a failed run, where 2
    means invalid input.
    """

    exit_code = 1


# ---- pieces ------------------------------------------------------------------------------------------------
def lr_multiplier(step: int, *, warmup_steps: int, total_steps: int, schedule: str, min_lr_ratio: float) -> float:
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
    np.random.set_state(("MT19937", n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
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
            self._file.write(safe_json.dumps(record) + "\n")
            self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop records after ``step`` (written after the checkpoint a run resumes from)."""
    if not path.is_file():
        return
    kept = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
    atomic_write_text(path, "".join(line + "\n" for line in kept))


def default_best_mode(metric: str) -> str:
    """``"min"`` for a loss or a perplexity, ``"max"`` for anything else (accuracy, F1, EM)."""
    return "min" if "loss" in metric or "perplexity" in metric else "max"


def _best_choice(tc: TrainSettings, task: Task) -> tuple[str, str]:
    metric = tc.best_metric or getattr(task, "best_metric", None) or task.metric_name
    return metric, tc.best_mode or default_best_mode(metric)


def _metric_value(metrics: dict[str, Any], metric: str) -> float:
    """``metrics[metric]`` as a float (NaN when not a number); a key the task does not report raises."""
    if metric not in metrics:
        raise ValueError(
            f"train.best_metric={metric!r} is not among the task's evaluation metrics ({', '.join(sorted(metrics))})"
        )
    value = metrics[metric]
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan


def _improves(value: float, best: dict[str, Any] | None, metric: str, mode: str) -> bool:
    if not math.isfinite(value):  # a NaN / inf metric is never the best
        return False
    if best is None or best.get("value") is None or best.get("metric") != metric:  # none yet by this metric
        return True
    return value > best["value"] if mode == "max" else value < best["value"]


def _finite_model(model: torch.nn.Module, metrics: dict[str, Any]) -> bool:
    """Finite weights, and a finite evaluation loss (finite weights can still overflow to NaN logits)."""
    losses = [v for k, v in metrics.items() if "loss" in k and isinstance(v, float)]
    return all(math.isfinite(v) for v in losses) and all(bool(torch.isfinite(p).all()) for p in model.parameters())


def _check_resume_config(config: RunConfig, run_dir: Path, allow_change: bool, is_main: bool) -> None:
    """Refuse (or, when allowed, log and archive) a config that differs from the stored one of a resumed run."""
    stored = run_dir / "config.yaml"
    if not stored.is_file():
        logger.warning("--resume: %s is missing, the config cannot be compared with the run's", stored)
        return
    changes = config_changes(stored_config_dict(stored), config_to_dict(config))
    breaking = [c for c in changes if c[0] not in RESUME_SAFE_KEYS]
    listing = "; ".join(f"{key}: {old!r} -> {new!r}" for key, old, new in (breaking if not allow_change else changes))
    if breaking and not allow_change:
        raise ValueError(
            f"--resume with a changed config would not continue the same run: {listing} "
            f"(stored in {stored}); undo the change, or pass --allow-config-change to resume with it anyway"
        )
    if not changes:
        return
    for key, old, new in changes:
        logger.warning("--resume: %s changed from %r to %r", key, old, new)
    if breaking and is_main:
        n = 1
        while (run_dir / f"config.prev-{n}.yaml").exists():
            n += 1
        atomic_write_text(run_dir / f"config.prev-{n}.yaml", stored.read_text())
        logger.warning("--allow-config-change: the previous config is kept as %s", run_dir / f"config.prev-{n}.yaml")


def _apply_optimizer_settings(optimizer: torch.optim.Optimizer, scheduler: LambdaLR, tc: TrainSettings) -> None:
    """Make a resumed optimizer follow the config's lr / betas / weight decay instead of its saved ones."""
    scheduler.base_lrs = [tc.lr for _ in optimizer.param_groups]
    factor = scheduler.lr_lambdas[0](scheduler.last_epoch)
    for i, group in enumerate(optimizer.param_groups):
        group["initial_lr"] = tc.lr
        group["lr"] = tc.lr * factor
        group["betas"] = (tc.beta1, tc.beta2)
        group["weight_decay"] = tc.weight_decay if i == 0 else 0.0  # group 0 decays (see _build_optimizer)
    scheduler._last_lr = [g["lr"] for g in optimizer.param_groups]


# ---- the loop ----------------------------------------------------------------------------------------------
def train(
    config: RunConfig,
    *,
    resume: bool = False,
    stop_after: int | None = None,
    allow_config_change: bool = False,
) -> dict[str, Any]:
    """Train ``config`` (in this process, or as one rank of a ``torchrun`` job).

    Args:
        config: the run config.
        resume: continue from ``RUN_DIR/checkpoints/LATEST`` (starts fresh, with a warning, if none exists).
        stop_after: stop (with a checkpoint) after this many optimizer steps of this invocation, as a
            preempted job would; ``--resume`` continues it.
        allow_config_change: resume even when the config differs from the run's stored ``config.yaml`` in
            keys outside ``RESUME_SAFE_KEYS`` (each change is logged; the old file is kept beside the new).

    Returns:
        The results dictionary written to ``RUN_DIR/results.json``.

    Raises:
        TrainingDiverged: after ``train.max_nonfinite_steps`` consecutive non-finite steps.
        ValueError: on a resumed run whose config changed (unless allowed), a ``train.best_metric`` the task
            does not report, or a batch the model cannot embed.
        RunDirLockedError: if another process trains in ``run_dir`` (rank 0 holds ``RUN_DIR/.lock``).
        DistributedTimeoutError: if a collective waits longer than ``train.ddp_timeout_s``.
    """
    info = init_distributed(config.train.device, timeout_s=config.train.ddp_timeout_s)
    try:
        with collective_timeout(info, config.train.ddp_timeout_s):
            with run_dir_held(config.run_dir, info):
                if info.is_main:
                    remove_stale_temp(config.run_dir)  # left by a writer killed mid-save
                return _train(
                    config, info, resume=resume, stop_after=stop_after, allow_config_change=allow_config_change
                )
    finally:
        cleanup_distributed(info)


def _train(
    config: RunConfig, info: DistInfo, *, resume: bool, stop_after: int | None, allow_config_change: bool
) -> dict[str, Any]:
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
    start_step, best, log_acc = 0, None, [0.0, 0, 0]  # log window: [finite loss sum, finite steps, skipped]
    nonfinite = [0, 0]  # [consecutive skipped steps, skipped steps of the run]
    last_eval: dict[str, float] = {}
    checkpoint = latest_checkpoint(ckpt_root) if resume else None
    if resume and checkpoint is None:
        logger.warning("--resume: no checkpoint under %s, starting from step 0", ckpt_root)
    if checkpoint is not None:
        _check_resume_config(config, run_dir, allow_config_change, info.is_main)
        load_model_weights(checkpoint, model)
        state = load_training_state(checkpoint)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if allow_config_change:
            _apply_optimizer_settings(optimizer, scheduler, tc)
        _set_rng_state(state["rng"])
        start_step, best, log_acc = state["step"], state["best"], list(state["log_accumulator"])
        log_acc += [0] * (3 - len(log_acc))
        nonfinite = list(state.get("nonfinite", nonfinite))
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
                "nonfinite": nonfinite,
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

        progress = tqdm(total=tc.steps, initial=start_step, desc=run_dir.name, unit="step", dynamic_ncols=True)
    metric_name = task.metric_name
    best_metric, best_mode = _best_choice(tc, task)
    t_start = time.perf_counter()
    t_window, tokens_window = t_start, 0
    train_seconds = 0.0
    diverged: str | None = None
    if tc.steps == 0:  # evaluation only: the initial model (from scratch, converted or task.pretrained)
        eval_dir = run_dir / "eval" if info.is_main else None
        last_eval = evaluate_model(model, task, tc.eval_batch_size, info, autocast=autocast, out_dir=eval_dir)
        _metric_value(last_eval, best_metric)  # a best_metric the task does not report is an error here too
        log.write({"step": 0, "split": "eval", **last_eval})
    model.train()
    step = start_step
    while step < tc.steps:
        t_step = time.perf_counter()
        loss_sum = torch.zeros((), device=device)
        for micro in range(tc.grad_accum_steps):
            indices = micro_batch_indices(step, micro, tc.batch_size, tc.grad_accum_steps, info)
            cpu_batch = task.batch("train", indices)
            where = f"train batch of step {step + 1}"
            check_batch(cpu_batch, getattr(model, "config", None), where, require_labels=True)
            batch = {k: v.to(device, non_blocking=True) for k, v in cpu_batch.items()}
            last_micro = micro == tc.grad_accum_steps - 1
            sync = contextlib.nullcontext() if last_micro or not info.distributed else ddp_model.no_sync()
            with sync:
                with autocast:
                    loss = task.forward_loss(ddp_model, batch)[1] / tc.grad_accum_steps
                loss.backward()
            loss_sum += loss.detach()
        max_norm = tc.grad_clip if tc.grad_clip > 0 else float("inf")
        grad_norm_t = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
        # one all-reduce: the summed loss and whether any rank saw a non-finite loss or gradient norm, so that
        # every rank takes the same skip decision
        local_bad = ~(torch.isfinite(loss_sum) & torch.isfinite(grad_norm_t))
        reduced = all_reduce_sum(torch.stack([loss_sum.double(), local_bad.double()]).cpu(), info)
        step_loss = float(reduced[0]) / info.world_size
        grad_norm = float(grad_norm_t)
        finite = float(reduced[1]) == 0 and math.isfinite(step_loss)
        lr = scheduler.get_last_lr()[0]
        if finite:
            optimizer.step()
            nonfinite[0] = 0
        else:  # skip the update; the batch and the step's place in the schedule are used up
            nonfinite = [nonfinite[0] + 1, nonfinite[1] + 1]
            logger.warning(
                "step %d: non-finite loss %s / gradient norm %s, update skipped (%d in a row; the run stops at "
                "train.max_nonfinite_steps=%d)",
                step + 1,
                step_loss,
                grad_norm,
                nonfinite[0],
                tc.max_nonfinite_steps,
            )
        with warnings.catch_warnings():  # a skipped first step: torch warns that the scheduler steps first
            warnings.filterwarnings("ignore", message=re.escape("Detected call of `lr_scheduler.step()`"))
            scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        train_seconds += time.perf_counter() - t_step

        log_acc = [log_acc[0] + step_loss, log_acc[1] + 1, log_acc[2]] if finite else [*log_acc[:2], log_acc[2] + 1]
        tokens_window += tc.batch_size * L
        if nonfinite[0] >= tc.max_nonfinite_steps:
            diverged = (
                f"training diverged: {nonfinite[0]} consecutive steps (to step {step}) had a non-finite loss or "
                f"gradient norm (last loss {step_loss}, gradient norm {grad_norm}; train.max_nonfinite_steps="
                f"{tc.max_nonfinite_steps}); lower train.lr or raise train.warmup_steps / train.grad_clip"
            )
        if step % tc.log_every == 0 or step == tc.steps or diverged:
            now = time.perf_counter()
            tokens_per_s = tokens_window / max(now - t_window, 1e-9)
            log.write(
                {
                    "step": step,
                    "split": "train",
                    "loss": log_acc[0] / log_acc[1] if log_acc[1] else None,
                    "lr": lr,
                    "grad_norm": grad_norm,
                    "skipped_steps": log_acc[2],
                    "tokens_per_s": round(tokens_per_s, 1),
                    "elapsed_s": round(now - t_start, 3),
                }
            )
            log_acc = [0.0, 0, 0]
            t_window, tokens_window = now, 0
            if progress is not None:
                progress.set_postfix(
                    loss=f"{step_loss:.4f}",
                    **{metric_name: f"{last_eval[metric_name]:.3f}" if metric_name in last_eval else "-"},
                    tok_s=f"{tokens_per_s:,.0f}",
                    refresh=False,
                )
        if diverged:
            break

        if (tc.eval_every and step % tc.eval_every == 0) or step == tc.steps:
            final = step == tc.steps
            eval_dir = run_dir / "eval" if final and info.is_main else None  # per-example files, if the task has any
            last_eval = evaluate_model(model, task, tc.eval_batch_size, info, autocast=autocast, out_dir=eval_dir)
            log.write({"step": step, "split": "eval", **last_eval})
            value = _metric_value(last_eval, best_metric)
            if _improves(value, best, best_metric, best_mode):
                if _finite_model(model, last_eval):
                    best = {"step": step, "metric": best_metric, "mode": best_mode, "value": value}
                    if info.is_main and tc.save_checkpoints:
                        save_weights(run_dir / "best", model, files)
                        atomic_write_text(run_dir / "best" / "best.json", safe_json.dumps(best) + "\n")
                else:
                    logger.warning("step %d: non-finite weights or evaluation loss; not kept as the best", step)
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
        "best_metric": best_metric,
        "steps_done": step,
        "finished": step == tc.steps and not diverged,
        "diverged": diverged,
        "skipped_steps": nonfinite[1],
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
        atomic_write_text(run_dir / "results.json", safe_json.dumps(results, indent=2) + "\n")
    if diverged:
        raise TrainingDiverged(diverged)
    return results
