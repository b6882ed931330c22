"""Runs of one experiment that differ only in seed, merged into one: mean, std and n of every figure."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from lightning_prune.report.collect import RunResults


class Stat(float):
    """A mean that remembers its spread: formats as the mean; ``std`` and ``n`` come with it."""

    std: float
    n: int
    values: list[float]

    def __new__(cls, values: Sequence[float]) -> Stat:
        mean = sum(values) / len(values)
        self = super().__new__(cls, mean)
        self.n = len(values)
        self.values = list(values)
        self.std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
        return self


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def merge_values(values: list[Any]) -> Any:
    """Numbers become a :class:`Stat`; dicts merge key by key; anything else is the first run's."""
    present = [v for v in values if v is not None]
    if not present:
        return None
    if all(_is_number(v) for v in present):
        return present[0] if len(present) == 1 else Stat([float(v) for v in present])
    if all(isinstance(v, dict) for v in present):
        keys = list(dict.fromkeys(k for v in present for k in v))
        return {k: merge_values([v.get(k) for v in present]) for k in keys}
    return present[0]


STAGE_SETTINGS = ("stage", "trigger_top1", "fallback_epoch")


def merge_schedules(schedules: list[dict]) -> dict:
    """Task 1b schedules over seeds: stage k of every seed merged (epoch, accuracy, diagnostics as Stats).

    Whether a stage fired by accuracy or by fallback can differ between seeds, so ``reason`` counts them.
    """
    merged = dict(schedules[-1])
    stage_lists = [s.get("stages") or [] for s in schedules]
    stages = []
    for k in range(max(len(s) for s in stage_lists)):
        events = [s[k] for s in stage_lists if len(s) > k and isinstance(s[k], dict)]
        stage = merge_values(events)
        for key in STAGE_SETTINGS:  # the schedule's settings, the same in every seed: not statistics
            if key in events[0]:
                stage[key] = events[0][key]
        reasons = Counter(str(e.get("reason")) for e in events)
        stage["reason"] = ", ".join(f"{r} x{c}" if len(events) > 1 else r for r, c in sorted(reasons.items()))
        stages.append(stage)
    merged["stages"] = stages
    return merged


def merge_runs(runs: list[RunResults]) -> RunResults:
    """One run standing for several seeds: its models' figures are Stats over the seeds (by variant)."""
    if len(runs) == 1:
        return runs[0]
    latest = max(runs, key=lambda r: r.created)
    variants = list(dict.fromkeys(m.get("variant") for r in runs for m in r.data["models"]))
    models = []
    for variant in variants:
        entries = [m for r in runs for m in r.data["models"] if m.get("variant") == variant]
        merged = merge_values(entries)
        merged["layers"] = entries[-1].get("layers")  # per-layer tables show one seed's choice
        models.append(merged)
    data = {**latest.data, "models": models, "seeds": sorted(r.data.get("seed") for r in runs
                                                             if r.data.get("seed") is not None)}
    schedules = [r.data["schedule"] for r in sorted(runs, key=lambda r: r.created or "")
                 if isinstance(r.data.get("schedule"), dict)]
    if schedules:
        data["schedule"] = merge_schedules(schedules)
    problems = [p for r in runs for p in r.problems]
    return replace(latest, data=data, problems=problems)
