"""Task 1b: staged GraSP (or SNIP) pruning while training from random initialisation.

Pruning happens in ``on_train_epoch_start``: validation and checkpointing of an epoch always see
the network that epoch trained, so no checkpoint holds pruned weights labelled with the accuracy
of the unpruned ones. Every conv/linear layer carries a ``torch.nn.utils.prune`` mask from fit
setup on (all ones until its first stage), so stages only overwrite mask buffers: the parameter
list and the optimizer (momentum, LR schedule) stay as they are, and checkpoints resume in order.
"""

from __future__ import annotations

import time
from typing import Any

import lightning as L
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from lightning_prune import results as R
from lightning_prune.callbacks.profile import record
from lightning_prune.callbacks.run import final_checkpoint, from_rank_zero, on_rank_zero, run_dir
from lightning_prune.callbacks.unstructured import export_and_profile_sparse
from lightning_prune.errors import ConfigError
from lightning_prune.pruning.layers import prunable_modules
from lightning_prune.pruning.saliency import (
    apply_masks,
    current_masks,
    ensure_masks,
    grasp_scores,
    mask_sparsity,
    masks_from_scores,
    snip_scores,
    split_batch,
    stage_diagnostics,
)
from lightning_prune.pruning.unstructured import check_sparsity

METHODS = ("grasp", "snip", "grasp_abs")
REMOVE = {"grasp": "highest", "snip": "lowest", "grasp_abs": "lowest"}
TASKS = {"grasp": "grasp", "snip": "snip", "grasp_abs": "grasp"}  # results.json's task of each method
VAL_METRIC = "val/top1"


def _number(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float))


def check_schedule(
    triggers: list[float], fractions: list[float], fallbacks: list[int | None] | None
) -> None:
    """Triggers ascending percentages, fractions increasing in (0, 1], fallbacks one per stage."""
    if not triggers or len(triggers) != len(fractions):
        raise ConfigError(
            f"StagedPruning.accuracy_triggers and fractions must be non-empty lists of the same length, "
            f"got {len(triggers)} and {len(fractions)}"
        )
    if not all(_number(t) and 0 <= t <= 100 for t in triggers) or list(triggers) != sorted(triggers):
        raise ConfigError(
            f"StagedPruning.accuracy_triggers: validation top-1 percentages in [0, 100], ascending; got {triggers}"
        )
    if not all(_number(f) and 0 < f <= 1 for f in fractions) or any(
        b <= a for a, b in zip(fractions, fractions[1:])
    ):
        raise ConfigError(
            f"StagedPruning.fractions: fractions of target_sparsity in (0, 1], strictly increasing; got {fractions}"
        )
    if fallbacks is not None:
        if len(fallbacks) != len(triggers):
            raise ConfigError(
                f"StagedPruning.fallback_epochs: one epoch (or null) per stage, {len(triggers)} in all; got {fallbacks}"
            )
        if not all(e is None or (isinstance(e, int) and not isinstance(e, bool) and e >= 0) for e in fallbacks):
            raise ConfigError(f"StagedPruning.fallback_epochs: integers >= 0 or null; got {fallbacks}")


class StagedPruning(L.Callback):
    """Prune to ``fractions[i] * target_sparsity`` when validation top-1 first reaches ``accuracy_triggers[i]`` %.

    ``method``: ``grasp`` (remove the highest ``-theta * Hg``) or ``snip`` (remove the lowest
    ``|g * theta|``); one global threshold over all conv and linear weights, classifier included.
    Scores come from a class-balanced calibration batch of the training images
    (``calibration_per_class`` per class, split into ``calibration_chunks``). Earlier masks stay:
    each stage removes more, counted over all weights. At most one stage fires per epoch, so each
    trigger is judged on the accuracy after the previous stage. ``fallback_epochs[i]``: fire stage
    ``i`` at the start of that epoch (0-based) even if its accuracy was not reached (null: never).
    At fit end stages that never fired are reported, and the masked, COO and densified-once models
    are exported and profiled into results.json (task ``grasp`` or ``snip``).

    Args:
        method: ``grasp`` (remove the highest -theta*Hg), ``snip`` (remove the lowest |g*theta|) or
            ``grasp_abs`` (remove the lowest |theta*Hg|, recorded under task ``grasp``).
        target_sparsity: Overall fraction of conv and linear weights pruned after the last stage.
        accuracy_triggers: Validation top-1 (%) at which each stage fires, ascending.
        fractions: Fraction of ``target_sparsity`` reached by each stage, strictly increasing, the last 1.0.
        fallback_epochs: Per stage, the 0-based epoch at which it fires even below its trigger (null: never).
        calibration_per_class: Training images per class in the scoring batch.
        calibration_chunks: Chunks the scoring batch is split into (memory).
        calibration_seed: Seed of the calibration images (stage i uses seed + i).
        temperature: GraSP's softmax temperature T.
        export: Export masks and COO weights at fit end and profile the sparse variants.
    """

    def __init__(
        self,
        method: str = "grasp",
        target_sparsity: float = 0.9,
        accuracy_triggers: list[float] = [20.0, 40.0, 60.0],  # noqa: B006 - jsonargparse shows the default
        fractions: list[float] = [0.5, 0.75, 1.0],  # noqa: B006
        fallback_epochs: list[int | None] | None = None,
        calibration_per_class: int = 10,
        calibration_chunks: int = 2,
        calibration_seed: int = 0,
        temperature: float = 200.0,
        export: bool = True,
    ) -> None:
        # Checked in ``setup``: jsonargparse would turn an error raised here into a generic one.
        self.method, self.target_sparsity = method, target_sparsity
        self.triggers, self.fractions = list(accuracy_triggers), list(fractions)
        self.fallbacks = None if fallback_epochs is None else list(fallback_epochs)
        self.per_class, self.chunks, self.seed = calibration_per_class, calibration_chunks, calibration_seed
        self.temperature, self.export = temperature, export
        self.events: list[dict[str, Any]] = []
        self.last_val_top1: float | None = None
        self.best_val_top1: float | None = None

    # ----------------------------------------------------------------- options
    def check(self) -> None:
        """Option errors, each naming the option and what it allows."""
        if self.method not in METHODS:
            raise ConfigError(
                f"StagedPruning.method: unknown method {self.method!r}; choose one of {', '.join(METHODS)}"
            )
        check_sparsity(self.target_sparsity, "StagedPruning.target_sparsity")
        check_schedule(self.triggers, self.fractions, self.fallbacks)
        for option, value in (("calibration_per_class", self.per_class), ("calibration_chunks", self.chunks)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"StagedPruning.{option} must be an integer >= 1, got {value!r}")
        if not _number(self.temperature) or self.temperature <= 0:
            raise ConfigError(f"StagedPruning.temperature must be a number > 0, got {self.temperature!r}")

    def stage_sparsity(self, stage: int) -> float:
        """Overall sparsity after stage ``stage`` (0-based): a fraction of the target, over all weights."""
        return self.fractions[stage] * self.target_sparsity

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.check()
        if stage == "fit":
            if not hasattr(trainer.datamodule, "calibration_batch"):
                raise ConfigError("StagedPruning needs a data module with calibration_batch (ImageDataModule)")
            # Before the checkpoint is restored and the optimizer built: same parameters fresh or resumed.
            ensure_masks(pl_module.model)

    def describe(self) -> dict[str, Any]:
        """What this callback prunes to (kept in the checkpoint; a resumed fit must agree)."""
        return {"task": TASKS[self.method], "method": self.method, "target_sparsity": self.target_sparsity,
                "accuracy_triggers": self.triggers, "fractions": self.fractions}

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        pl_module.claim_pruning(self.describe())

    # ----------------------------------------------------------------- schedule
    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Remember the epoch's top-1 (in the callback state, so a resumed fit judges the next trigger by it)."""
        if trainer.sanity_checking or VAL_METRIC not in trainer.callback_metrics:
            return
        self.last_val_top1 = 100 * float(trainer.callback_metrics[VAL_METRIC])
        self.best_val_top1 = max(self.best_val_top1 or 0.0, self.last_val_top1)

    def due(self, epoch: int) -> str | None:
        """Why the next stage fires at the start of ``epoch`` (``accuracy``/``fallback``), or None."""
        stage = len(self.events)
        if stage >= len(self.triggers) or (self.events and self.events[-1]["epoch"] >= epoch):
            return None
        if self.last_val_top1 is not None and self.last_val_top1 >= self.triggers[stage]:
            return "accuracy"
        fallback = None if self.fallbacks is None else self.fallbacks[stage]
        if fallback is not None and epoch >= fallback:
            return "fallback"
        return None

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # The same decision on every rank: val/top1 is synced, and rank 0's reading is broadcast anyway.
        reason = from_rank_zero(trainer, lambda: self.due(trainer.current_epoch))
        if reason is not None:
            self.prune_stage(trainer, pl_module, reason)
        masks = current_masks(pl_module.model)
        for logger in trainer.loggers:
            logger.log_metrics(
                {"prune/sparsity": mask_sparsity(masks), "prune/stage": float(len(self.events))},
                step=trainer.global_step,
            )

    def prune_stage(self, trainer: L.Trainer, pl_module: L.LightningModule, reason: str) -> dict[str, Any]:
        """Score the current (masked) network and prune it further to the next stage's sparsity."""
        stage = len(self.events)
        model = pl_module.model
        start = time.perf_counter()
        new, diagnostics = from_rank_zero(trainer, lambda: self.next_masks(trainer, model, stage))  # on rank 0
        apply_masks(model, new)
        achieved = mask_sparsity(new)
        event = {
            "stage": stage + 1,
            "epoch": trainer.current_epoch,
            "global_step": trainer.global_step,
            "reason": reason,
            "val_top1": self.last_val_top1,
            "trigger_top1": self.triggers[stage],
            "fallback_epoch": None if self.fallbacks is None else self.fallbacks[stage],
            "sparsity": achieved,
            "seconds": time.perf_counter() - start,
            "diagnostics": diagnostics,
        }
        self.events.append(event)
        seen = "n/a" if self.last_val_top1 is None else f"{self.last_val_top1:.1f} %"
        text = (
            f"{self.method} stage {stage + 1}/{len(self.triggers)} at epoch {trainer.current_epoch} ({reason}: "
            f"val top-1 {seen}, trigger {self.triggers[stage]:g} %): sparsity {achieved:.4f} of "
            f"{sum(m.numel() for m in new.values()):,} conv/linear weights in {event['seconds']:.1f} s"
        )
        rank_zero_info(text)
        for logger in trainer.loggers:
            experiment = getattr(logger, "experiment", None)
            if hasattr(experiment, "add_text"):
                experiment.add_text("prune/stages", text, global_step=trainer.global_step)
        return event

    def next_masks(self, trainer: L.Trainer, model: Any, stage: int) -> tuple[dict[str, Any], dict[str, float]]:
        """Score the masked network on the stage's calibration batch, mask it further, and measure the stage."""
        masks = current_masks(model)
        batch = trainer.datamodule.calibration_batch(self.per_class, seed=self.seed + stage)
        batches = split_batch(batch, self.chunks)
        if self.method == "snip":
            scores = snip_scores(model, batches, masks)
        else:
            scores = grasp_scores(model, batches, self.temperature, masks)
            if self.method == "grasp_abs":
                scores = {name: s.abs() for name, s in scores.items()}
        new = masks_from_scores(scores, self.stage_sparsity(stage), REMOVE[self.method], masks)
        weights = {name: m.weight_orig for name, m in prunable_modules(model).items()}
        diagnostics = stage_diagnostics(weights, masks, new, scores)
        return {name: mask.cpu() for name, mask in new.items()}, diagnostics  # broadcast from the CPU

    def never_triggered(self) -> list[str]:
        """One sentence per stage that did not fire."""
        best = "never measured" if self.best_val_top1 is None else f"{self.best_val_top1:.1f} %"
        lines = []
        for stage in range(len(self.events), len(self.triggers)):
            fallback = None if self.fallbacks is None else self.fallbacks[stage]
            lines.append(
                f"stage {stage + 1} (to sparsity {self.stage_sparsity(stage):.4f} at val top-1 >= "
                f"{self.triggers[stage]:g} %) never triggered: best val top-1 {best}, "
                + ("no fallback epoch" if fallback is None else f"fallback epoch {fallback} not reached")
            )
        return lines

    # ----------------------------------------------------------------- fit end
    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        notes = self.never_triggered()
        achieved = mask_sparsity(current_masks(pl_module.model))
        if notes:
            notes.append(f"final sparsity {achieved:.4f} instead of the target {self.target_sparsity:g}")
            rank_zero_warn("StagedPruning: " + "; ".join(notes))
        if self.export:
            on_rank_zero(trainer, lambda: self._export(trainer, pl_module, notes, achieved))

    def _export(self, trainer: L.Trainer, pl_module: L.LightningModule, notes: list[str], achieved: float) -> None:
        ckpt = final_checkpoint(trainer)
        entries, artifacts = export_and_profile_sparse(trainer, pl_module.model, pl_module.device, ckpt)
        if ckpt:
            artifacts["checkpoint"] = ckpt
        path = record(trainer, TASKS[self.method], entries, artifacts)
        results = R.load_results(path)
        results["schedule"] = {
            "method": self.method,
            "target_sparsity": self.target_sparsity,
            "achieved_sparsity": achieved,
            "accuracy_triggers": self.triggers,
            "fractions": self.fractions,
            "fallback_epochs": self.fallbacks,
            "temperature": self.temperature if self.method != "snip" else None,
            "calibration_images": self.per_class * trainer.datamodule.num_classes,
            "stages": self.events,
            "best_val_top1": self.best_val_top1,
        }
        results["notes"] = notes
        R.save_results(results, run_dir(trainer))

    def state_dict(self) -> dict[str, Any]:
        return {"events": self.events, "last_val_top1": self.last_val_top1, "best_val_top1": self.best_val_top1}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.events = list(state_dict.get("events", []))
        self.last_val_top1 = state_dict.get("last_val_top1")
        self.best_val_top1 = state_dict.get("best_val_top1")
        if len(self.events) > len(self.triggers):
            raise ConfigError(
                f"StagedPruning: the checkpoint has {len(self.events)} stages done but accuracy_triggers lists "
                f"{len(self.triggers)}; resume with the schedule it was trained with"
            )

