"""Task data, collators and metrics (no model code)."""

from gmat.tasks.synthetic import TASK_NAMES, SyntheticTask, TaskSpec, make_task

__all__ = ["TASK_NAMES", "SyntheticTask", "TaskSpec", "make_task"]
