"""The project's vocabulary, defined once: tasks, the methods that prune under each, variants, what a target counts.

Callbacks, results.json, the export, the report, the budget grid and the schema all use these names.
"""

from __future__ import annotations

from typing import Literal, get_args

Task = Literal["baseline", "unstructured", "grasp", "snip", "channel"]
TASKS: tuple[str, ...] = get_args(Task)
TASK_ORDER = {task: i for i, task in enumerate(TASKS)}

# 1a: how MagnitudePruning splits a target over the layers (``sensitivity``; the controls ``global``, ``uniform``).
Allocation = Literal["sensitivity", "global", "uniform"]
ALLOCATIONS: tuple[str, ...] = get_args(Allocation)

# 1b: StagedPruning's criteria, and the task results.json files each under (|GraSP| is a GraSP variant).
# ``random`` is the layer-wise shuffle control: another run's per-layer sparsities, random masks (its task is
# that run's). ``Schedule``: in stages as accuracy rises, or once at initialisation (GraSP's protocol).
StagedMethod = Literal["grasp", "snip", "grasp_abs", "random"]
STAGED_METHODS: tuple[str, ...] = get_args(StagedMethod)
STAGED_TASK: dict[str, str] = {"grasp": "grasp", "snip": "snip", "grasp_abs": "grasp"}
Schedule = Literal["staged", "oneshot"]
REMOVES: dict[str, str] = {"grasp": "highest", "snip": "lowest", "grasp_abs": "lowest"}  # which scores go

# What pruned a model (results.json and checkpoint["pruning"]: "method"), by task.
METHODS: dict[str, tuple[str, ...]] = {
    "baseline": ("none",),
    "unstructured": ("magnitude",),
    "grasp": ("grasp", "grasp_abs", "random"),
    "snip": ("snip", "random"),
    "channel": ("lasso", "l1", "random"),
}

# 2: how ChannelPruning picks each conv's kept channels (``lasso``; the controls ``l1``, ``random``).
Selection = Literal["lasso", "l1", "random"]
SELECTIONS: tuple[str, ...] = get_args(Selection)

# The model variants a run profiles (results.json "variant").
DENSE, MASKED, SPARSE_COO, DENSIFIED, NARROW = (
    "dense", "pruned-masked", "pruned-sparse-coo", "pruned-densified-once", "channel-pruned")
TASK_VARIANT: dict[str, str] = {"baseline": DENSE, "unstructured": MASKED, "grasp": MASKED, "snip": MASKED,
                                "channel": NARROW}

# What each task's ``target_sparsity`` counts (the report's header states it).
TARGET_MEANING: dict[str, str] = {
    **dict.fromkeys(("unstructured", "grasp", "snip"), "share of conv and linear weights zeroed"),
    "channel": "share of the dense model's parameters removed (channels cut out, hidden linear weights zeroed)"}

# The pruning callback of each task (StagedPruning's task follows its method).
CALLBACK_TASK: dict[str, str] = {"MagnitudePruning": "unstructured", "ChannelPruning": "channel"}

# int8 export: ONNX Runtime's activation-range calibration methods (``export --calibration``).
Calibration = Literal["minmax", "percentile", "entropy"]
CALIBRATIONS: tuple[str, ...] = get_args(Calibration)


def callback_task(class_path: str | None, method: str | None = None) -> str | None:
    """The task a pruning callback (by class path or name) records; ``baseline`` without one; None if unknown."""
    if not class_path:
        return "baseline"
    name = class_path.rsplit(".", 1)[-1]
    if name == "StagedPruning":
        return STAGED_TASK.get(method or "grasp")
    return CALLBACK_TASK.get(name)

# The experiment file of each method in a config set (configs/<set>/<name>.yaml), in the order they depend on
# each other: the budget grid and the demo run them.
PRUNING_CONFIGS: tuple[str, ...] = ("unstructured", "grasp", "snip", "grasp_abs", "channel")
