"""Typed run settings: frozen dataclasses loaded from YAML and overridden with ``--set key=value``.

A run config has three sections, each a frozen dataclass::

    run_dir: runs/majority-m8        # where metrics, checkpoints and plots go
    task:   {name: majority, seq_len: 2048, ...}        # the named task's settings (gmat.tasks.registry)
    model:  {hidden_size: 64, num_memory_tokens: 8, ...} # gmat.modeling.factory.ModelSettings
    train:  {steps: 300, lr: 2.0e-3, ...}                # TrainSettings

Every key is checked against the dataclass fields and their annotated types: an unknown key or a value of
the wrong type raises ``ValueError`` naming the dotted key (``train.lrr``), so a typo never silently
falls back to a default.
"""

from __future__ import annotations

import copy
import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import yaml

from gmat.modeling.factory import ModelSettings
from gmat.tasks.registry import task_entry
from gmat.tasks.synthetic import TaskSpec

__all__ = [
    "ModelSettings",
    "RunConfig",
    "TrainSettings",
    "apply_overrides",
    "RESUME_SAFE_KEYS",
    "build_dataclass",
    "config_changes",
    "stored_config_dict",
    "read_yaml_mapping",
    "config_to_dict",
    "load_config",
    "parse_config",
]


@dataclass(frozen=True)
class TrainSettings:
    """Optimisation, evaluation and checkpointing settings.

    Attributes:
        steps: optimizer steps (0: evaluate the initial model only, no training and no checkpoint).
        batch_size: global batch size (examples per optimizer step, all processes together).
        grad_accum_steps: micro-batches per step and process; ``batch_size`` must divide evenly.
        lr: peak learning rate of AdamW.
        min_lr_ratio: final learning rate as a fraction of ``lr`` (cosine / linear decay).
        warmup_steps: linear warm-up steps from 0 to ``lr``.
        schedule: ``"cosine"``, ``"linear"`` or ``"constant"`` after warm-up.
        weight_decay: AdamW weight decay (not applied to biases and LayerNorm weights).
        beta1: AdamW beta1.
        beta2: AdamW beta2.
        grad_clip: max global gradient norm (0 disables clipping).
        eval_every: evaluate every this many steps (0 = only at the end).
        eval_batch_size: examples per evaluation batch and process.
        save_every: write a resumable checkpoint every this many steps (0 = only at the end).
        keep_checkpoints: how many step checkpoints to keep (the best weights are kept apart).
        log_every: append training metrics to ``metrics.jsonl`` every this many steps.
        seed: seed of model initialisation and dropout.
        device: ``"auto"`` (CUDA when available), ``"cpu"`` or ``"cuda"``.
        precision: ``"auto"`` (bf16 autocast on CUDA, fp32 on CPU), ``"fp32"`` or ``"bf16"``.
        gradient_checkpointing: recompute activations in the backward pass.
        num_threads: CPU threads of torch (0 = torch's default).
        progress: show a progress bar on rank 0.
        save_checkpoints: write checkpoints at all (the demo turns them off).
        max_nonfinite_steps: a step whose loss or gradient norm is NaN/inf is skipped (no update); the run
            stops with ``TrainingDiverged`` after this many consecutive skipped steps.
        best_metric: the key of the task's evaluation result that picks ``RUN_DIR/best`` (empty: the task's
            default, e.g. ``accuracy``; ``mlm_loss`` for MLM).
        best_mode: ``"max"`` or ``"min"`` (empty: ``"min"`` when the metric's name contains ``loss`` or
            ``perplexity``, else ``"max"``).
        ddp_timeout_s: data-parallel runs: how long joining the process group and each collective wait for the
            other ranks before the job stops with an error (a stopped or hung rank would hold the others forever).
    """

    steps: int = 200
    batch_size: int = 16
    grad_accum_steps: int = 1
    lr: float = 1e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 20
    schedule: str = "cosine"
    weight_decay: float = 0.01
    beta1: float = 0.9
    beta2: float = 0.98
    grad_clip: float = 1.0
    eval_every: int = 100
    eval_batch_size: int = 32
    save_every: int = 0
    keep_checkpoints: int = 2
    log_every: int = 10
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"
    gradient_checkpointing: bool = False
    num_threads: int = 0
    progress: bool = True
    save_checkpoints: bool = True
    max_nonfinite_steps: int = 3
    best_metric: str = ""
    best_mode: str = ""
    ddp_timeout_s: float = 600.0

    def __post_init__(self) -> None:
        if self.steps < 0:
            raise ValueError(f"train.steps must be >= 0 (0 = evaluate only), got {self.steps}")
        for name in ("batch_size", "grad_accum_steps", "eval_batch_size", "log_every", "max_nonfinite_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"train.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("warmup_steps", "eval_every", "save_every", "num_threads", "keep_checkpoints"):
            if getattr(self, name) < 0:
                raise ValueError(f"train.{name} must be >= 0, got {getattr(self, name)}")
        if self.schedule not in ("cosine", "linear", "constant"):
            raise ValueError(f"train.schedule must be 'cosine', 'linear' or 'constant', got {self.schedule!r}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"train.device must be 'auto', 'cpu' or 'cuda', got {self.device!r}")
        if self.precision not in ("auto", "fp32", "bf16"):
            raise ValueError(f"train.precision must be 'auto', 'fp32' or 'bf16', got {self.precision!r}")
        if not self.lr > 0 or not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(
                f"train.lr must be > 0 and train.min_lr_ratio in [0, 1], got {self.lr}, {self.min_lr_ratio}"
            )
        for name in ("grad_clip", "weight_decay"):
            if not getattr(self, name) >= 0:  # also rejects NaN
                raise ValueError(f"train.{name} must be >= 0, got {getattr(self, name)}")
        for name in ("beta1", "beta2"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"train.{name} must be in [0, 1), got {getattr(self, name)}")
        if self.best_mode not in ("", "max", "min"):
            raise ValueError(
                f"train.best_mode must be 'max' or 'min' (or empty: by the metric), got {self.best_mode!r}"
            )
        if not self.ddp_timeout_s > 0:
            raise ValueError(f"train.ddp_timeout_s must be > 0 seconds, got {self.ddp_timeout_s}")
        if self.batch_size % self.grad_accum_steps:
            raise ValueError(
                f"train.batch_size={self.batch_size} must be divisible by "
                f"train.grad_accum_steps={self.grad_accum_steps}"
            )


@dataclass(frozen=True)
class RunConfig:
    """One training run: where it writes, what it learns, which model, how it trains.

    ``task`` is the settings dataclass of the task that ``task.name`` names (``gmat.tasks.registry``); ``name``
    labels the run in reports (empty: the run directory's name).
    """

    name: str = ""
    run_dir: str = "runs/default"
    task: TaskSpec = field(default_factory=TaskSpec)
    model: ModelSettings = field(default_factory=ModelSettings)
    train: TrainSettings = field(default_factory=TrainSettings)


# ---- dict <-> dataclass with type checks ------------------------------------------------------------------
def _check_type(key: str, value: Any, annotation: Any) -> Any:
    """Return ``value`` converted to ``annotation`` (int -> float only), or raise naming ``key``."""
    origin = typing.get_origin(annotation)
    if origin in (Union, types.UnionType):
        args = typing.get_args(annotation)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _check_type(key, value, arg)
            except ValueError as err:
                errors.append(str(err))
        raise ValueError(errors[0] if errors else f"{key}: got {value!r}")
    if annotation is bool:
        if isinstance(value, bool):
            return value
    elif annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "3e-4" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif annotation is str:
        if isinstance(value, str):
            return value
    else:
        raise TypeError(f"{key}: unsupported annotation {annotation!r}")
    raise ValueError(f"config key {key!r} expects {annotation.__name__}, got {value!r} ({type(value).__name__})")


def build_dataclass(cls: type, data: Any, prefix: str = "") -> Any:
    """Validate a nested mapping against dataclass ``cls``: unknown keys and mistyped values raise ``ValueError``."""
    where = prefix.rstrip(".") or "config"
    if not isinstance(data, dict):
        raise ValueError(f"{where} must be a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - fields)
    if unknown:
        names = ", ".join(f"{prefix}{k}" for k in unknown)
        raise ValueError(f"unknown config key(s): {names} (valid keys of {where}: {', '.join(sorted(fields))})")
    kwargs = {}
    for name, value in data.items():
        hint = hints[name]
        if cls is RunConfig and name == "task" and isinstance(value, dict):
            hint = task_entry(value.get("name", TaskSpec.name)).settings
        if dataclasses.is_dataclass(hint):
            kwargs[name] = build_dataclass(hint, value, f"{prefix}{name}.")
        else:
            kwargs[name] = _check_type(f"{prefix}{name}", value, hint)
    return cls(**kwargs)


def parse_config(data: dict[str, Any]) -> RunConfig:
    """Validate a plain dictionary against ``RunConfig``.

    Raises:
        ValueError: naming the dotted key of an unknown key or a value of the wrong type or range.
    """
    return build_dataclass(RunConfig, data)


def config_to_dict(config: RunConfig) -> dict[str, Any]:
    """Convert the config to plain dictionaries (round-trips through ``parse_config``)."""
    return dataclasses.asdict(config)


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key.sub=value`` overrides (values parsed as YAML scalars) to a nested dictionary.

    Raises:
        ValueError: on a malformed override (no ``=``) or a path through a non-mapping.
    """
    data = copy.deepcopy(data)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set expects key=value, got {item!r}")
        value = yaml.safe_load(raw) if raw.strip() else ""
        parts = key.strip().split(".")
        node = data
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ValueError(f"--set {key}: {part!r} is not a section")
            node = child
        node[parts[-1]] = value
    return data


def read_yaml_mapping(path: Path) -> dict[str, Any]:
    """Read a YAML file whose top level is a mapping.

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        ValueError: on invalid YAML or a top level that is not a mapping (the message names the file).
    """
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ValueError(f"{path}: invalid YAML: {err}") from err
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a run config must be a mapping, got {type(data).__name__}")
    return data


def load_config(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    """Read a YAML run config, apply ``--set`` overrides, validate.

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        ValueError: on invalid YAML, unknown keys or wrongly typed values (the message names them).
    """
    path = Path(path)
    data = apply_overrides(read_yaml_mapping(path), overrides or [])
    try:
        return parse_config(data)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from err


# ---- resuming with a changed config -----------------------------------------------------------------------
# Keys a resumed run may change without breaking its exactness: labels, the length of the run (the schedule
# follows the new train.steps), how often it logs / evaluates / saves, and how it runs on this machine.
RESUME_SAFE_KEYS = frozenset(
    {
        "name",
        "run_dir",
        "train.steps",
        "train.eval_every",
        "train.eval_batch_size",
        "train.log_every",
        "train.save_every",
        "train.keep_checkpoints",
        "train.progress",
        "train.num_threads",
        "train.max_nonfinite_steps",
        "train.ddp_timeout_s",
    }
)


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(data, dict):
        return {prefix.rstrip("."): data}
    flat: dict[str, Any] = {}
    for key, value in data.items():
        flat.update(_flatten(value, f"{prefix}{key}."))
    return flat


_ABSENT = "<absent>"


def config_changes(old: dict[str, Any], new: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """``(dotted key, old value, new value)`` for every key whose value differs, sorted by key.

    A key present on one side only reports ``"<absent>"`` on the other.
    """
    a, b = _flatten(old), _flatten(new)
    return [
        (key, a.get(key, _ABSENT), b.get(key, _ABSENT))
        for key in sorted(set(a) | set(b))
        if a.get(key, _ABSENT) != b.get(key, _ABSENT)
    ]


def stored_config_dict(path: Path) -> dict[str, Any]:
    """The config stored in a run directory, with today's defaults filled in (raw, if it no longer parses)."""
    data = read_yaml_mapping(path)
    try:
        return config_to_dict(parse_config(data))
    except ValueError:
        return data
