"""Task 0: profile the module's model after ``test`` and write results.json."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import nn

from lightning_prune import results as R
from lightning_prune.errors import ConfigError
from lightning_prune.profiling import ProfileSettings, evaluate, profile_model
from lightning_prune.profiling.profile import take_batches
from lightning_prune.pruning.layers import layer_table

TASKS = ("baseline", "unstructured", "grasp", "snip", "channel")


def run_dir(trainer: L.Trainer) -> Path:
    """Where this run's results and exports go: the logger's version folder."""
    return Path(trainer.log_dir or trainer.default_root_dir)


def dataset_name(trainer: L.Trainer) -> str:
    return getattr(trainer.datamodule, "dataset", "unknown")


def profile_entry(
    model: nn.Module,
    variant: str,
    trainer: L.Trainer,
    settings: ProfileSettings,
    device: torch.device,
    test_accuracy: tuple[float, float] | None = None,
    train_batches: int | None = None,
    macs_model: nn.Module | None = None,
    checkpoint: str | None = None,
) -> dict:
    """A results.json ``models`` entry: accuracy (test, train) plus the profile on test batches."""
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


def record(trainer: L.Trainer, task: str, entries: list[dict], artifacts: dict[str, str] | None = None) -> Path:
    """Merge entries into this run's results.json, write it whole, and print the table."""
    log_dir = run_dir(trainer)
    device = trainer.strategy.root_device
    results = R.load_results(log_dir / R.RESULTS_FILE) or R.new_results(task, dataset_name(trainer), device)
    for entry in entries:
        R.upsert_model(results, entry)
    results["artifacts"].update(artifacts or {})
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


class ProfileCallback(L.Callback):
    """After ``test``: profile the model (size, MACs, latency, memory, energy, train/test accuracy).

    Test accuracy is the test loop's own (``test/top1``, ``test/top5``); train accuracy uses the
    training images with eval transforms, ``train_batches`` batches of them (``None``: all, 0: skip).
    """

    def __init__(
        self,
        task: str = "baseline",
        variant: str = "dense",
        latency_batches: int = 10,
        warmup_batches: int = 2,
        energy_batches: int = 10,
        train_batches: int | None = None,
    ) -> None:
        if task not in TASKS:
            raise ConfigError(f"ProfileCallback.task: unknown task {task!r}; choose one of {', '.join(TASKS)}")
        if train_batches is not None and train_batches < 0:
            raise ConfigError(f"ProfileCallback.train_batches must be >= 0 or null, got {train_batches}")
        self.task, self.variant, self.train_batches = task, variant, train_batches
        self.settings = ProfileSettings(latency_batches, warmup_batches, energy_batches)

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        metrics = trainer.callback_metrics
        test_acc = (100 * float(metrics["test/top1"]), 100 * float(metrics["test/top5"]))
        entry = profile_entry(
            pl_module.model,
            self.variant,
            trainer,
            self.settings,
            pl_module.device,
            test_accuracy=test_acc,
            train_batches=self.train_batches,
            checkpoint=trainer.ckpt_path,
        )
        record(trainer, self.task, [entry])
