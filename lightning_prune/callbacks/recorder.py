"""The recorder: profiles every model variant of a run and writes its results.json, once, with its files.

Besides the run's identity (``RunInfo``) it is the only callback that writes: after ``test`` the tested
model, at the end of a pruning fit what the pruning callback hands over (:class:`PruningRecord`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import nn

from lightning_prune import artifacts as A
from lightning_prune import results as R
from lightning_prune.callbacks.base import PruningCallback, PruningRecord, callback_of, log_each, log_metrics
from lightning_prune.callbacks.run import final_checkpoint, measured_checkpoint, on_rank_zero, resume_path, run_dir
from lightning_prune.callbacks.run import run_info as identity
from lightning_prune.errors import ConfigError
from lightning_prune.names import DENSE, DENSIFIED, MASKED, SPARSE_COO, TASK_VARIANT, TASKS, Task
from lightning_prune.options import NonNegativeInt, PositiveInt, plain
from lightning_prune.profiling import ProfileSettings, evaluate, profile_model
from lightning_prune.profiling.profile import take_batches
from lightning_prune.pruning.layers import layer_table, prunable_modules
from lightning_prune.pruning.unstructured import is_masked

PROFILE_SCALARS = ("model_size_mb", "sparsity", "nonzero_params", "macs", "latency_ms", "peak_memory_mb",
                   "avg_memory_mb", "test_top1", "test_top5", "train_top1")


class Recorder(L.Callback):
    """Profiling settings of the run; the profile of every model it measures; its results.json, written once.

    After ``test`` the model is recorded under the task its checkpoint was pruned by (an unpruned model is
    ``baseline``), so a pruned checkpoint is never recorded as dense. Train accuracy uses eval transforms.

    Args:
        latency_batches: Test batches timed (one forward pass each) for the latency and memory figures.
        warmup_batches: Untimed forward passes before timing.
        energy_batches: Batches measured by the energy meter (pyJoules).
        train_batches: Training batches (eval transforms) for the train accuracy; null: all, 0: skip it.
        task: Task to record a tested model under; null: the one its checkpoint records. A value that
            contradicts the checkpoint is an error.
        variant: Variant name of the tested model; null: ``dense``, ``pruned-masked`` or ``channel-pruned`` by task.
    """

    def __init__(self, latency_batches: PositiveInt = 10, warmup_batches: NonNegativeInt = 2,
                 energy_batches: PositiveInt = 10, train_batches: NonNegativeInt | None = None,
                 task: Task | None = None, variant: str | None = None) -> None:
        self.settings = ProfileSettings(int(latency_batches), int(warmup_batches), int(energy_batches))
        self.train_batches, self.task, self.variant = plain(train_batches), task, variant
        self.dense_entry: dict | None = None  # the unpruned model's profile, taken before pruning (kept on resume)

    def profile(self, trainer: L.Trainer, model: nn.Module, variant: str, test_accuracy: tuple[float, float] | None
                = None, macs_model: nn.Module | None = None, checkpoint: str | None = None) -> dict:
        """A results.json ``models`` entry: accuracy (test, train) plus the profile on test batches."""
        dm, device = trainer.datamodule, trainer.strategy.root_device
        was_training = model.training
        if test_accuracy is None:
            test_accuracy = evaluate(model, dm.test_dataloader(), dm.num_classes, device)
        train: tuple[float | None, float | None] = (None, None)
        if self.train_batches != 0:
            train = evaluate(model, dm.train_eval_dataloader(), dm.num_classes, device, max_batches=self.train_batches)
        batches = take_batches(dm.test_dataloader(), self.settings.latency_batches, device)
        profile = profile_model(model, batches, self.settings, macs_model=macs_model)
        model.train(was_training)
        accuracy = dict(zip(("test_top1", "test_top5", "train_top1", "train_top5"), (*test_accuracy, *train)))
        return {"variant": variant, "checkpoint": checkpoint, "accuracy": accuracy, "profile": profile,
                "layers": layer_table(model)}

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Profile the unpruned model before the pruning callback touches it (not on resume: the state has it)."""
        pruning = callback_of(trainer, PruningCallback)
        if stage == "fit" and pruning is not None and pruning.profile_dense and self.dense_entry is None \
                and not resume_path(trainer):
            model = pl_module.model.to(trainer.strategy.root_device)
            self.dense_entry = on_rank_zero(trainer, lambda: self.profile(trainer, model, DENSE))

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """One point of the learning curve (epoch, validation top-1 and loss, learning rate) per validation."""
        metrics = trainer.callback_metrics
        if trainer.sanity_checking or trainer.state.fn != "fit" or "val/top1" not in metrics or not hasattr(
                pl_module, "history"):
            return
        point = {"epoch": trainer.current_epoch, "val_top1": 100 * float(metrics["val/top1"])}
        if "val/loss" in metrics:
            point["val_loss"] = float(metrics["val/loss"])
        if trainer.optimizers:
            point["lr"] = float(trainer.optimizers[0].param_groups[0]["lr"])
        pl_module.history.append(point)

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Decide the task before the test loop runs, so a contradiction costs no time."""
        masked = any(is_masked(m) for m in prunable_modules(pl_module.model).values())
        recorded = (getattr(pl_module, "pruning", None) or {}).get("task")
        if recorded not in TASKS and masked:
            raise ConfigError("ckpt_path: the checkpoint holds pruning masks but no record of the task that made "
                              f"them; name it with --profile.task (one of {', '.join(TASKS[1:])})")
        kind = recorded if recorded in TASKS else "baseline"
        if self.task is not None and self.task != kind and (kind != "baseline" or masked):
            raise ConfigError(f"profile.task={self.task!r} but the checkpoint was pruned by task {kind!r}; drop "
                              "profile.task (it is read from the checkpoint) or test another checkpoint")
        self._tested_task = self.task or kind

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        metrics, task = trainer.callback_metrics, self._tested_task
        accuracy = (100 * float(metrics["test/top1"]), 100 * float(metrics["test/top5"]))
        variant = self.variant or TASK_VARIANT[task]
        on_rank_zero(trainer, lambda: self.write(trainer, task, [
            self.profile(trainer, pl_module.model, variant, accuracy, checkpoint=trainer.ckpt_path)]))

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        pruning = callback_of(trainer, PruningCallback)
        handover = pruning.handover(trainer, pl_module) if pruning is not None else None
        if handover is not None:  # a baseline fit records nothing: its profile comes from `test`
            on_rank_zero(trainer, lambda: self._record_fit(trainer, pl_module, pruning.task, handover))

    def _record_fit(self, trainer: L.Trainer, pl_module: L.LightningModule, task: str, handover: PruningRecord) -> None:
        out, model, checkpoint = run_dir(trainer), pl_module.model, final_checkpoint(trainer)
        if not handover.record:
            return self._files(trainer, out, handover)
        entries = [self.dense_entry] if self.dense_entry is not None else []
        files: dict[str, str] = {}
        if handover.masked:
            entries += self._sparse_variants(trainer, model, out, checkpoint, files)
        else:
            entries.append(self.profile(trainer, model, handover.variant, checkpoint=checkpoint))
        if handover.annotate is not None:
            handover.annotate(next(e for e in entries if e["variant"] == handover.variant), self.dense_entry)
        files.update(self._files(trainer, out, handover))
        if checkpoint:
            files["checkpoint"] = checkpoint
        self._layer_figure(trainer, entries)
        self.write(trainer, task, entries, files, handover.extra)

    def _sparse_variants(self, trainer: L.Trainer, model: nn.Module, out: Path, checkpoint: str | None,
                         files: dict[str, str]) -> list[dict]:
        """Masks and COO weights written, reloaded and checked; the masked, COO and densified-once profiles."""
        export = A.export_sparse(model, out)
        if export.total_mismatches:
            rank_zero_warn(f"COO indices differ from the masks in {export.total_mismatches} places: "
                           f"{export.check_path}")
        files.update(masks=str(export.masks_path), sparse_coo=str(export.sparse_path), coo_check=str(export.check_path))
        coo = str(export.sparse_path)
        entries = [self.profile(trainer, model, MASKED, macs_model=export.permanent, checkpoint=checkpoint),
                   self.profile(trainer, export.sparse, SPARSE_COO, macs_model=export.permanent, checkpoint=coo),
                   self.profile(trainer, export.densified, DENSIFIED, checkpoint=coo)]
        entries[1]["coo_mismatches"] = export.total_mismatches
        return entries

    def _files(self, trainer: L.Trainer, out: Path, handover: PruningRecord) -> dict[str, str]:
        """The hand-over's text files and sweep curves (CSV, plot also in TensorBoard) in the run's folder."""
        files = {}
        for name, text in handover.files.items():
            R.atomic_write_bytes(out / name, text.encode())
            files[name.replace(".", "_")] = str(out / name)
        if handover.curves is not None:
            import matplotlib.pyplot as plt

            from lightning_prune.report.plots import sensitivity_curves

            curves, levels, title = handover.curves
            files["sensitivity_csv"] = str(A.save_curves_csv(curves, levels, out / A.SENSITIVITY_CSV))
            fig = sensitivity_curves(curves, levels, title)
            fig.savefig(out / A.SENSITIVITY_PLOT, bbox_inches="tight")
            log_each(trainer, "add_figure", "sensitivity", fig, close=False)
            plt.close(fig)
            files["sensitivity_plot"] = str(out / A.SENSITIVITY_PLOT)
        return files

    @staticmethod
    def _layer_figure(trainer: L.Trainer, entries: list[dict]) -> None:
        """Per-layer sparsity of the pruned model as a bar chart in TensorBoard (``prune/layer_sparsity``)."""
        pruned = next((e for e in entries if e["variant"] != DENSE), None)
        if pruned is None or not any(hasattr(getattr(lg, "experiment", None), "add_figure") for lg in trainer.loggers):
            return
        import matplotlib.pyplot as plt

        from lightning_prune.report.plots import layer_bars

        fig = layer_bars({pruned["variant"]: {r["name"]: r["sparsity"] for r in pruned["layers"]}})
        log_each(trainer, "add_figure", "prune/layer_sparsity", fig, close=False)
        plt.close(fig)

    def write(self, trainer: L.Trainer, task: str, entries: list[dict], artifacts: dict[str, str] | None = None,
              extra: dict[str, Any] | None = None) -> None:
        """results.json of the run, written whole; the table printed, and logged to TensorBoard with the scalars."""
        results = R.new_results(task, getattr(trainer.datamodule, "dataset", "unknown"), trainer.strategy.root_device)
        info, module = identity(trainer), trainer.lightning_module
        results.update(info.describe(trainer) if info is not None else {})
        # the module's record of its pruning, learning curve and lineage (the pruning steps before this run's own)
        found = {"pruning": dict(getattr(module, "pruning", None) or {}), "checkpoint": measured_checkpoint(trainer),
                 "history": list(getattr(module, "history", None) or []),
                 "lineage": list(getattr(module, "lineage", None) or [])}
        results.update({key: value for key, value in found.items() if value})
        results.update({"models": entries, "artifacts": dict(artifacts or {}), **(extra or {})})
        path = R.save_results(results, run_dir(trainer))
        table = R.markdown_table(results)
        rank_zero_info("\n" + table + f"\n\nresults: {path}")
        log_metrics(trainer, {f"profile/{e['variant']}/{key}": float(value) for e in entries
                              for key, value in {**e["profile"], **e["accuracy"]}.items()
                              if key in PROFILE_SCALARS and isinstance(value, (int, float))
                              and not isinstance(value, bool)})
        log_each(trainer, "add_text", "profile/table", table)

    def state_dict(self) -> dict[str, Any]:
        return {"dense_entry": self.dense_entry}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.dense_entry = state_dict.get("dense_entry", self.dense_entry)
