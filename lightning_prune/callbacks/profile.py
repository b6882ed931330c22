"""Task 0: profile the module's model after ``test`` and write results.json."""

from __future__ import annotations

import os
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import nn

from lightning_prune import results as R
from lightning_prune.callbacks.run import measured_checkpoint, on_rank_zero, run_dir, run_info
from lightning_prune.errors import ConfigError
from lightning_prune.profiling import ProfileSettings, evaluate, profile_model
from lightning_prune.profiling.profile import take_batches
from lightning_prune.pruning.layers import layer_table

TASKS = ("baseline", "unstructured", "grasp", "snip", "channel")


def dataset_name(trainer: L.Trainer) -> str:
    return getattr(trainer.datamodule, "dataset", "unknown")


def profile_settings(trainer: L.Trainer) -> tuple[ProfileSettings, int | None]:
    """The run's profiling settings: the ``ProfileCallback``'s (the ``profile`` group), else the defaults."""
    callback = next((c for c in trainer.callbacks if isinstance(c, ProfileCallback)), None)
    if callback is None:
        return ProfileSettings(), None
    return callback.settings, callback.train_batches


def profile_entry(
    model: nn.Module,
    variant: str,
    trainer: L.Trainer,
    device: torch.device,
    test_accuracy: tuple[float, float] | None = None,
    macs_model: nn.Module | None = None,
    checkpoint: str | None = None,
) -> dict:
    """A results.json ``models`` entry: accuracy (test, train) plus the profile on test batches."""
    settings, train_batches = profile_settings(trainer)
    dm = trainer.datamodule
    num_classes = dm.num_classes
    if test_accuracy is None:
        test_accuracy = evaluate(model, dm.test_dataloader(), num_classes, device)
    train_accuracy: tuple[float | None, float | None] = (None, None)
    if train_batches != 0:
        train_accuracy = evaluate(model, dm.train_eval_dataloader(), num_classes, device, max_batches=train_batches)
    batches = take_batches(dm.test_dataloader(), settings.latency_batches, device)
    profile = profile_model(model, batches, settings, macs_model=macs_model)
    return {
        "variant": variant,
        "checkpoint": checkpoint,
        "accuracy": {
            "test_top1": test_accuracy[0],
            "test_top5": test_accuracy[1],
            "train_top1": train_accuracy[0],
            "train_top5": train_accuracy[1],
        },
        "profile": profile,
        "layers": layer_table(model),
    }


def record(trainer: L.Trainer, task: str, entries: list[dict], artifacts: dict[str, str] | None = None,
           extra: dict | None = None) -> Path:
    """Merge entries (and ``extra`` top-level fields) into this run's results.json, write it whole, print the table."""
    log_dir = run_dir(trainer)
    device = trainer.strategy.root_device
    results = R.load_results(log_dir / R.RESULTS_FILE) or R.new_results(task, dataset_name(trainer), device)
    if results["task"] != task:
        raise ConfigError(f"{log_dir}: this run already recorded task {results['task']!r}, not {task!r}")
    info = run_info(trainer)
    if info is not None:
        results["run"] = {"experiment": info.run.experiment, "version": info.run.version,
                          "checkpoint_dir": str(info.run.checkpoint_dir)}
        results["sources"] = dict(info.sources)
        results["distributed"] = info.distributed(trainer)
        if info.config_key:
            results["config_key"] = info.config_key
    seed = os.environ.get("PL_GLOBAL_SEED", "")
    if seed.lstrip("-").isdigit():
        results["seed"] = int(seed)
    pruning = getattr(trainer.lightning_module, "pruning", None)
    if pruning:
        results["pruning"] = dict(pruning)
    checkpoint = measured_checkpoint(trainer)
    if checkpoint is not None:
        results["checkpoint"] = checkpoint
    for entry in entries:
        R.upsert_model(results, entry)
    results["artifacts"].update(artifacts or {})
    results.update(extra or {})
    path = R.save_results(results, log_dir)
    table = R.markdown_table(results)
    rank_zero_info("\n" + table + f"\n\nresults: {path}")
    log_profiles(trainer, entries, table)
    return path


PROFILE_SCALARS = (
    "model_size_mb", "sparsity", "nonzero_params", "macs", "latency_ms", "peak_memory_mb", "avg_memory_mb",
)


def log_profiles(trainer: L.Trainer, entries: list[dict], table: str) -> None:
    """The profile in TensorBoard too: ``profile/<variant>/<figure>`` scalars and the table as text."""
    for logger in trainer.loggers:
        scalars = {}
        for entry in entries:
            figures = {**entry["profile"], **entry["accuracy"]}
            for key in (*PROFILE_SCALARS, "test_top1", "test_top5", "train_top1"):
                if isinstance(figures.get(key), (int, float)) and not isinstance(figures.get(key), bool):
                    scalars[f"profile/{entry['variant']}/{key}"] = float(figures[key])
        logger.log_metrics(scalars, step=trainer.global_step)
        experiment = getattr(logger, "experiment", None)
        if hasattr(experiment, "add_text"):
            experiment.add_text("profile/table", table, global_step=trainer.global_step)


VARIANTS = {"baseline": "dense", "unstructured": "pruned-masked", "grasp": "pruned-masked",
            "snip": "pruned-masked", "channel": "channel-pruned"}


def tested_kind(pruning: dict | None, masked: bool) -> str:
    """The task a tested model belongs to, from the pruning record its checkpoint carries."""
    if pruning and pruning.get("task") in TASKS:
        return pruning["task"]
    if masked:
        raise ConfigError(
            "ckpt_path: the checkpoint holds pruning masks but no record of the task that made them; "
            f"name it with --profile.task (one of {', '.join(TASKS[1:])})"
        )
    return "baseline"


class ProfileCallback(L.Callback):
    """Profiling settings of the run, and the profile of the tested model after ``test``.

    Every profile of the run (this callback's, and those the pruning callbacks take of their dense
    and pruned models) uses these settings. After ``test`` the model is profiled (size, MACs,
    latency, memory, energy, train/test accuracy) into results.json under the task its checkpoint
    was pruned by (a dense model is ``baseline``), so a pruned checkpoint is never recorded as dense.
    Test accuracy is the test loop's own; train accuracy uses the training images with eval
    transforms.

    Args:
        latency_batches: Test batches timed (one forward pass each) for the latency and memory figures.
        warmup_batches: Untimed forward passes before timing.
        energy_batches: Batches measured by the energy meter (pyJoules).
        train_batches: Training batches (eval transforms) for the train accuracy; null: all, 0: skip it.
        task: Task to record a tested model under; null: the one its checkpoint records (a model with
            no pruning record is ``baseline``). A value that contradicts the checkpoint is an error.
        variant: Variant name of the tested model; null: ``dense``, ``pruned-masked`` or
            ``channel-pruned`` by task.
    """

    def __init__(
        self,
        latency_batches: int = 10,
        warmup_batches: int = 2,
        energy_batches: int = 10,
        train_batches: int | None = None,
        task: str | None = None,
        variant: str | None = None,
    ) -> None:
        self.task, self.variant, self.train_batches = task, variant, train_batches
        self.latency_batches, self.warmup_batches, self.energy_batches = latency_batches, warmup_batches, energy_batches

    @property
    def settings(self) -> ProfileSettings:
        return ProfileSettings(self.latency_batches, self.warmup_batches, self.energy_batches)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Check every option before any long work starts."""
        if self.task is not None and self.task not in TASKS:
            raise ConfigError(f"profile.task: unknown task {self.task!r}; choose one of {', '.join(TASKS)}")
        if self.train_batches is not None and self.train_batches < 0:
            raise ConfigError(f"profile.train_batches must be >= 0 or null, got {self.train_batches}")
        try:
            self.settings  # noqa: B018 - validates the numbers
        except ValueError as err:
            raise ConfigError(f"profile.{err}") from err

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Decide the task before the test loop runs, so a contradiction costs no time."""
        from lightning_prune.pruning.layers import prunable_modules
        from lightning_prune.pruning.unstructured import is_masked

        masked = any(is_masked(m) for m in prunable_modules(pl_module.model).values())
        kind = tested_kind(getattr(pl_module, "pruning", None), masked)
        if self.task is not None and self.task != kind and (kind != "baseline" or masked):
            raise ConfigError(
                f"profile.task={self.task!r} but the checkpoint was pruned by task {kind!r}; "
                "drop profile.task (it is read from the checkpoint) or test another checkpoint"
            )
        self._kind = self.task or kind

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        on_rank_zero(trainer, lambda: self._profile(trainer, pl_module))

    def _profile(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        metrics = trainer.callback_metrics
        test_acc = (100 * float(metrics["test/top1"]), 100 * float(metrics["test/top5"]))
        kind = getattr(self, "_kind", self.task or "baseline")
        entry = profile_entry(pl_module.model, self.variant or VARIANTS[kind], trainer, pl_module.device,
                              test_accuracy=test_acc, checkpoint=trainer.ckpt_path)
        record(trainer, kind, [entry])
