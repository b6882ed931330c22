"""The project's vocabulary, defined once: tasks, the methods that prune under each, and their variants.

Callbacks, results.json, export, the report, the budget grid and the schema all use these names.
"""

from __future__ import annotations

from typing import Literal, get_args

Task = Literal["baseline", "unstructured", "grasp", "snip", "channel"]
TASKS: tuple[str, ...] = get_args(Task)

StagedMethod = Literal["grasp", "snip", "grasp_abs"]
STAGED_METHODS: tuple[str, ...] = get_args(StagedMethod)
STAGED_TASK: dict[str, str] = {"grasp": "grasp", "snip": "snip", "grasp_abs": "grasp"}  # results.json's task

# The pruning callback of each task (StagedPruning's task depends on its method).
CALLBACK_TASK: dict[str, str] = {"MagnitudePruning": "unstructured", "ChannelPruning": "channel"}


def callback_task(class_path: str | None, method: str | None = None) -> str | None:
    """The task a pruning callback (by class path or name) records; ``baseline`` without one; None if unknown."""
    if not class_path:
        return "baseline"
    name = class_path.rsplit(".", 1)[-1]
    if name == "StagedPruning":
        return STAGED_TASK.get(method or "grasp")
    return CALLBACK_TASK.get(name)
