"""Task 1b: staged GraSP (or SNIP, |GraSP|) pruning while training from random initialisation.

Every conv/linear carries a mask from fit setup on, so a stage (at an epoch's start) only overwrites mask
buffers: parameters, optimizer and checkpoints stay in order. Scores: ``lightning_prune.pruning.saliency``.
"""

from __future__ import annotations

import os
import time
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import nn

from lightning_prune.callbacks.base import PruningCallback, PruningRecord, log_each, log_metrics, refused_as
from lightning_prune.callbacks.run import from_rank_zero
from lightning_prune.checkpoint_io import read_checkpoint
from lightning_prune.names import MASKED, STAGED_TASK, Schedule, StagedMethod
from lightning_prune.options import Percent, PositiveFloat, PositiveInt, Sparsity, plain
from lightning_prune.pruning.layers import prunable_modules
from lightning_prune.pruning.saliency import prune_by_saliency, split_batch, stage_diagnostics
from lightning_prune.pruning.schedule import StageSchedule
from lightning_prune.pruning.shuffle import check_copyable, layer_sparsities, plan_from_checkpoint, random_masks
from lightning_prune.pruning.unstructured import apply_masks, current_masks, ensure_masks, mask_sparsity

VAL_METRIC = "val/top1"


class StagedPruning(PruningCallback):
    """Prune to ``fractions[i] * target_sparsity`` when validation top-1 first reaches ``accuracy_triggers[i]`` %.

    One global threshold over all conv and linear weights, scored on a class-balanced calibration batch;
    earlier masks stay. At fit end stages that never fired are reported, and the masked, COO and
    densified-once models are recorded (task ``grasp`` or ``snip``).

    Args:
        method: ``grasp`` (remove the highest -theta*Hg), ``snip`` (remove the lowest |g*theta|),
            ``grasp_abs`` (remove the lowest |theta*Hg|, recorded under task ``grasp``) or ``random`` (the
            control: the per-layer sparsities of ``layerwise_from`` at each stage, random masks within each layer).
        layerwise_from: For ``random``: the run whose per-layer sparsities to copy (``run:<experiment>`` or a
            checkpoint); it must have the same schedule. Its task is this run's.
        schedule: ``staged`` (the stages below, as accuracy rises) or ``oneshot`` (one stage to the whole
            target at initialisation, before any training: GraSP's and SNIP's own protocol).
        target_sparsity: Share of conv and linear weights zeroed after the last stage.
        accuracy_triggers: Validation top-1 (%) at which each stage fires, ascending.
        fractions: Fraction of ``target_sparsity`` reached by each stage, strictly increasing, the last 1.0.
        fallback_epochs: Per stage, the 0-based epoch at which it fires even below its trigger (null: never).
        calibration_per_class: Training images per class in the scoring batch.
        calibration_chunks: Chunks the scoring batch is split into (memory).
        calibration_seed: Seed of the calibration images (stage i uses seed + i).
        temperature: GraSP's softmax temperature T.
        record: At fit end, write masks and COO weights, profile the model and its sparse variants and write
            results.json; false: record nothing.
    """

    def __init__(self, method: StagedMethod = "grasp", layerwise_from: str | None = None,
                 schedule: Schedule = "staged", target_sparsity: Sparsity = 0.9,
                 accuracy_triggers: list[Percent] = [20.0, 40.0, 60.0],  # noqa: B006 - jsonargparse shows it
                 fractions: list[float] = [0.5, 0.75, 1.0],  # noqa: B006
                 fallback_epochs: list[int | None] | None = None, calibration_per_class: PositiveInt = 10,
                 calibration_chunks: PositiveInt = 2, calibration_seed: int = 0, temperature: PositiveFloat = 200.0,
                 record: bool = True) -> None:
        self.method, self.target_sparsity = method, plain(target_sparsity)
        self.layerwise_from, self.mode = layerwise_from, schedule
        stages = ([0.0], [1.0], [0]) if schedule == "oneshot" else (accuracy_triggers, fractions, fallback_epochs)
        self.schedule = StageSchedule(self.target_sparsity, *(plain(x) for x in stages))
        self.plan: list[dict[str, float]] | None = None  # random: the per-layer sparsities of each stage
        self.copied_task = self.copied_method = None
        self.per_class, self.chunks = int(calibration_per_class), int(calibration_chunks)
        self.seed, self.temperature, self.record = calibration_seed, float(temperature), record

    @property
    def task(self) -> str:
        return (self.copied_task or "grasp") if self.method == "random" else STAGED_TASK[self.method]

    def check(self, trainer: L.Trainer, model: nn.Module) -> None:
        self.schedule.check()
        if (self.method == "random") != (self.layerwise_from is not None):
            raise ValueError("layerwise_from: name the run whose per-layer sparsities method=random copies (and only "
                             "for method=random)")
        if self.method == "random" and self.plan is None:
            checkpoint = read_checkpoint(self.layerwise_from, "prune.layerwise_from")
            with refused_as("layerwise_from: "):
                check_copyable(checkpoint, {n: tuple(m.weight.shape) for n, m in prunable_modules(model).items()})
                self.plan = plan_from_checkpoint(checkpoint, self.schedule.stages)
            copied = checkpoint.get("pruning") or {}
            self.copied_task, self.copied_method = copied.get("task"), copied.get("method")
        if not hasattr(trainer.datamodule, "calibration_batch"):
            raise ValueError("datamodule: needs calibration_batch (lightning_prune.data.ImageDataModule)")

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if stage == "fit":  # before the checkpoint is restored and the optimizer built: same parameters either way
            ensure_masks(pl_module.model)

    def describe(self) -> dict[str, Any]:
        return {"task": self.task, "method": self.method, "schedule": self.mode, "layerwise_from": self.layerwise_from,
                "copies": self.copied_method, "target_sparsity": self.target_sparsity,
                "accuracy_triggers": self.schedule.triggers, "fractions": self.schedule.fractions}

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking and VAL_METRIC in trainer.callback_metrics:  # synced over the ranks
            self.schedule.observe(100 * float(trainer.callback_metrics[VAL_METRIC]))

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        reason = from_rank_zero(trainer, lambda: self.schedule.due(trainer.current_epoch))
        if reason is not None:
            self.prune_stage(trainer, pl_module.model, reason)
        masks = current_masks(pl_module.model)
        log_metrics(trainer, {"prune/sparsity": mask_sparsity(masks), "prune/stage": float(len(self.schedule.events))})

    def prune_stage(self, trainer: L.Trainer, model: nn.Module, reason: str) -> None:
        """Score the current (masked) network on rank 0, mask it further to the next stage's sparsity everywhere."""
        s, stage, start = self.schedule, len(self.schedule.events), time.perf_counter()

        def score() -> tuple[dict, dict]:
            if self.method == "random":  # seeded by the run's seed: each seed draws its own masks
                generator = torch.Generator().manual_seed(int(os.environ.get("PL_GLOBAL_SEED", 0)) + self.seed + stage)
                before = current_masks(model)
                masks = random_masks(before, self.plan[stage], generator)
                weights = {n: m.weight.detach() for n, m in prunable_modules(model).items()}
                return masks, stage_diagnostics(weights, before, masks, None)
            batch = trainer.datamodule.calibration_batch(self.per_class, seed=self.seed + stage)
            return prune_by_saliency(model, split_batch(batch, self.chunks), self.method, s.sparsity(stage),
                                     self.temperature)

        new, diagnostics = from_rank_zero(trainer, score)
        apply_masks(model, new)
        reason = "oneshot" if self.mode == "oneshot" else reason
        event = s.record(stage, trainer.current_epoch, trainer.global_step, reason, mask_sparsity(new),
                         time.perf_counter() - start, diagnostics, layer_sparsities(new))
        text = s.describe(event, self.method)
        rank_zero_info(text)
        log_each(trainer, "add_text", "prune/stages", text)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        notes = self.schedule.notes(mask_sparsity(current_masks(pl_module.model)))
        if notes:
            rank_zero_warn("StagedPruning: " + "; ".join(notes))

    def handover(self, trainer: L.Trainer, pl_module: L.LightningModule) -> PruningRecord | None:
        if not self.record:
            return None
        achieved = mask_sparsity(current_masks(pl_module.model))
        schedule = {"method": self.method, "schedule": self.mode, "layerwise_from": self.layerwise_from,
                    **self.schedule.summary(achieved),
                    "temperature": self.temperature if self.method != "snip" else None,
                    "calibration_images": self.per_class * trainer.datamodule.num_classes}
        return PruningRecord(MASKED, masked=True, extra={"schedule": schedule, "notes": self.schedule.notes(achieved)})

    def state_dict(self) -> dict[str, Any]:
        return self.schedule.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        with refused_as("StagedPruning: "):
            self.schedule.load_state_dict(state_dict)
