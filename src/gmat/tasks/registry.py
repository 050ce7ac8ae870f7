"""Task registry: a run config's ``task.name`` -> (its settings dataclass, its ``Task`` class).

Built-in tasks are listed by module path and imported when first named, so naming one task never imports
the others. A user's own task needs no change here: ``task.name: "package.module:TaskClass"`` imports that
class, whose ``Settings`` attribute is the frozen dataclass of its ``task:`` section (with a ``name`` field)
and whose constructor takes those settings; ``register_task`` does the same under a short name.
"""

from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass
from typing import Any

__all__ = ["TaskEntry", "create_task", "register_task", "registered_tasks", "task_entry"]


@dataclass(frozen=True)
class TaskEntry:
    """What the loop needs to turn a ``task:`` section into a task: ``settings`` (dataclass) and ``task``."""

    settings: type
    task: type


# name -> (module, settings class, task class); imported on first use
_BUILTIN = {
    "majority": ("gmat.tasks.synthetic", "TaskSpec", "SyntheticTask"),
    "majority_tagging": ("gmat.tasks.synthetic", "TaskSpec", "SyntheticTask"),
    "lookup": ("gmat.tasks.synthetic", "TaskSpec", "SyntheticTask"),
    "mlm": ("gmat.tasks.mlm", "MLMTaskSpec", "MLMTask"),
    "reconstruction": ("gmat.tasks.compression", "CompressionTaskSpec", "CompressionTask"),
    "compressed_context": ("gmat.tasks.compression", "CompressionTaskSpec", "CompressionTask"),
    "rc": ("gmat.tasks.rc", "RCTaskSettings", "RCTask"),
    "classification": ("gmat.tasks.classification", "ClassificationSettings", "ClassificationTask"),
}
_REGISTERED: dict[str, TaskEntry] = {}
_TASK_METHODS = ("build_model", "batch", "forward_loss", "evaluate", "checkpoint_files")


def register_task(name: str, task: type, settings: type | None = None) -> None:
    """Make ``task.name: NAME`` build ``task(settings)``.

    Args:
        name: the name used in run configs.
        task: the ``Task`` class (see ``gmat.tasks.base.Task``); its constructor takes the settings.
        settings: the frozen dataclass of the ``task:`` section (default: ``task.Settings``).

    Raises:
        ValueError: when ``task`` is not a class with the ``Task`` methods, or ``settings`` (given, or
            ``task.Settings``) is not a dataclass with a ``name`` field.
    """
    if not isinstance(task, type):
        raise ValueError(f"task.name={name!r}: {task!r} is not a class")
    missing = [m for m in _TASK_METHODS if not callable(getattr(task, m, None))]
    if missing:
        raise ValueError(
            f"task.name={name!r}: {task.__name__} has no {', '.join(missing)} (the Task protocol of "
            "gmat.tasks.base; subclass gmat.tasks.base.CountingTask to inherit evaluate and forward_loss)"
        )
    if settings is None and not hasattr(task, "Settings"):
        raise ValueError(
            f"task.name={name!r}: {task.__name__} has no Settings attribute (set it to the frozen dataclass of "
            "its task: section, which needs a 'name' field)"
        )
    settings = settings if settings is not None else task.Settings
    if not (dataclasses.is_dataclass(settings) and "name" in {f.name for f in dataclasses.fields(settings)}):
        raise ValueError(
            f"task.name={name!r}: the settings of {task.__name__} must be a dataclass with a 'name' field, "
            f"got {settings!r}"
        )
    _REGISTERED[name] = TaskEntry(settings, task)


def registered_tasks() -> list[str]:
    """Names usable as ``task.name`` (besides ``"package.module:TaskClass"``)."""
    return sorted({*_BUILTIN, *_REGISTERED})


def task_entry(name: Any) -> TaskEntry:
    """The entry of ``task.name``.

    Raises:
        ValueError: naming ``task.name`` and the known names when it resolves to nothing.
    """
    if isinstance(name, str) and name in _REGISTERED:
        return _REGISTERED[name]
    if isinstance(name, str) and name in _BUILTIN:
        module, settings, task = _BUILTIN[name]
        mod = importlib.import_module(module)
        return TaskEntry(getattr(mod, settings), getattr(mod, task))
    if isinstance(name, str) and ":" in name:
        module, _, cls_name = name.partition(":")
        try:
            task = getattr(importlib.import_module(module), cls_name)
        except ModuleNotFoundError as err:
            raise ValueError(
                f"task.name={name!r}: cannot import {module} ({err}); install the package that holds it, or "
                "put its folder on PYTHONPATH"
            ) from err
        except (ImportError, AttributeError) as err:
            raise ValueError(f"task.name={name!r}: cannot import {cls_name} from {module} ({err})") from err
        register_task(name, task)
        return _REGISTERED[name]
    raise ValueError(f"task.name must be one of {registered_tasks()} or 'package.module:TaskClass', got {name!r}")


def create_task(settings: Any) -> Any:
    """The task object of a validated ``task:`` section."""
    return task_entry(settings.name).task(settings)
