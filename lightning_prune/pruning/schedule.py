"""Task 1b's schedule: when the next pruning stage is due, and to what sparsity it prunes. No Lightning.

Stage ``i`` prunes to ``fractions[i] * target`` when validation top-1 first reaches ``triggers[i]`` %,
or at epoch ``fallbacks[i]`` at the latest; at most one stage fires per epoch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass
class StageSchedule:
    """Triggers, fractions and fallback epochs of the stages, and what happened so far."""

    target: float  # overall sparsity after the last stage
    triggers: Sequence[float]  # validation top-1 (%) at which each stage fires, ascending
    fractions: Sequence[float]  # of ``target``, each stage's, strictly increasing, in (0, 1]
    fallbacks: Sequence[int | None] | None = None  # per stage, the epoch it fires at below its trigger
    events: list[dict[str, Any]] = field(default_factory=list)
    last_top1: float | None = None
    best_top1: float | None = None

    def __post_init__(self) -> None:
        self.triggers, self.fractions = list(self.triggers), list(self.fractions)
        self.fallbacks = None if self.fallbacks is None else list(self.fallbacks)

    def check(self) -> None:
        """ValueError naming the list that is wrong and what it must be (what the option types cannot say)."""
        triggers, fractions, fallbacks = self.triggers, self.fractions, self.fallbacks
        if not triggers or len(triggers) != len(fractions):
            raise ValueError(f"accuracy_triggers and fractions must be non-empty lists of the same length, got "
                             f"{len(triggers)} and {len(fractions)}")
        if triggers != sorted(triggers):
            raise ValueError(f"accuracy_triggers: validation top-1 percentages in [0, 100], ascending; got {triggers}")
        if not all(0 < f <= 1 for f in fractions) or any(b <= a for a, b in zip(fractions, fractions[1:])):
            raise ValueError(f"fractions: fractions of target_sparsity in (0, 1], strictly increasing; got {fractions}")
        if fallbacks is not None and len(fallbacks) != len(triggers):
            raise ValueError(f"fallback_epochs: one epoch (or null) per stage, {len(triggers)} in all; got {fallbacks}")
        if fallbacks is not None and not all(e is None or e >= 0 for e in fallbacks):
            raise ValueError(f"fallback_epochs: integers >= 0 or null; got {fallbacks}")

    @property
    def stages(self) -> int:
        return len(self.triggers)

    def sparsity(self, stage: int) -> float:
        """Overall sparsity after stage ``stage`` (0-based)."""
        return self.fractions[stage] * self.target

    def fallback(self, stage: int) -> int | None:
        return None if self.fallbacks is None else self.fallbacks[stage]

    def observe(self, top1: float) -> None:
        """The validation top-1 (%) of the epoch that just ended."""
        self.last_top1 = top1
        self.best_top1 = max(self.best_top1 or 0.0, top1)

    def due(self, epoch: int) -> str | None:
        """Why the next stage fires at the start of ``epoch`` (``accuracy`` or ``fallback``), or None."""
        stage = len(self.events)
        if stage >= self.stages or (self.events and self.events[-1]["epoch"] >= epoch):
            return None
        if self.last_top1 is not None and self.last_top1 >= self.triggers[stage]:
            return "accuracy"
        fallback = self.fallback(stage)
        return "fallback" if fallback is not None and epoch >= fallback else None

    def record(self, stage: int, epoch: int, global_step: int, reason: str, sparsity: float, seconds: float,
               diagnostics: dict[str, float | None], layers: dict[str, float]) -> dict[str, Any]:
        """Log a stage that fired (what results.json's ``schedule.stages`` lists) and return it."""
        event = {"stage": stage + 1, "epoch": epoch, "global_step": global_step, "reason": reason,
                 "val_top1": self.last_top1, "trigger_top1": self.triggers[stage],
                 "fallback_epoch": self.fallback(stage), "sparsity": sparsity, "seconds": seconds,
                 "diagnostics": diagnostics, "layers": layers}
        self.events.append(event)
        return event

    def describe(self, event: dict[str, Any], method: str) -> str:
        """One line for the log about a stage that fired."""
        seen = "n/a" if event["val_top1"] is None else f"{event['val_top1']:.1f} %"
        return (f"{method} stage {event['stage']}/{self.stages} at epoch {event['epoch']} ({event['reason']}: val "
                f"top-1 {seen}, trigger {event['trigger_top1']:g} %): sparsity {event['sparsity']:.4f} in "
                f"{event['seconds']:.1f} s")

    def summary(self, achieved: float) -> dict[str, Any]:
        """What results.json's ``schedule`` says besides the method's own settings."""
        return {"target_sparsity": self.target, "achieved_sparsity": achieved, "accuracy_triggers": self.triggers,
                "fractions": self.fractions, "fallback_epochs": self.fallbacks, "stages": self.events,
                "best_val_top1": self.best_top1}

    def notes(self, achieved: float) -> list[str]:
        """Stages that never fired, and the sparsity reached instead of the target (empty when all fired)."""
        notes = self.never_triggered()
        return notes + [f"final sparsity {achieved:.4f} instead of the target {self.target:g}"] if notes else []

    def never_triggered(self) -> list[str]:
        """One sentence per stage that did not fire."""
        best = "never measured" if self.best_top1 is None else f"{self.best_top1:.1f} %"
        lines = []
        for stage in range(len(self.events), self.stages):
            fallback = self.fallback(stage)
            lines.append(
                f"stage {stage + 1} (to sparsity {self.sparsity(stage):.4f} at val top-1 >= {self.triggers[stage]:g} %)"
                f" never triggered: best val top-1 {best}, "
                + ("no fallback epoch" if fallback is None else f"fallback epoch {fallback} not reached")
            )
        return lines

    def state_dict(self) -> dict[str, Any]:
        return {"events": self.events, "last_val_top1": self.last_top1, "best_val_top1": self.best_top1}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.events = list(state.get("events", []))
        self.last_top1, self.best_top1 = state.get("last_val_top1"), state.get("best_val_top1")
        if len(self.events) > self.stages:
            raise ValueError(f"the checkpoint has {len(self.events)} stages done but accuracy_triggers lists "
                             f"{self.stages}; resume with the schedule it was trained with")
