"""Runs of one experiment that differ only in seed, merged into one: mean, std and n of every figure."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from lightning_prune.report.collect import RunResults
from lightning_prune.report.stats import Stat, is_number


def merge_values(values: list[Any], seeds: Sequence[int | None] | None = None) -> Any:
    """Numbers become a :class:`Stat` (with the seed of each value); dicts merge key by key; else the first's."""
    seeds = list(seeds) if seeds is not None else [None] * len(values)
    present = [(v, s) for v, s in zip(values, seeds) if v is not None]
    if not present:
        return None
    if all(is_number(v) for v, _ in present):
        if len(present) == 1 and present[0][1] is None:
            return present[0][0]
        return Stat([float(v) for v, _ in present], [s for _, s in present])
    if all(isinstance(v, dict) for v, _ in present):
        keys = list(dict.fromkeys(k for v, _ in present for k in v))
        return {k: merge_values([v.get(k) for v, _ in present], [s for _, s in present]) for k in keys}
    return present[0][0]


def merge_schedules(schedules: list[dict]) -> dict:
    """Task 1b schedules over seeds: stage k of every seed merged (epoch, accuracy, diagnostics as Stats); whether
    it fired by accuracy or by fallback can differ between seeds, so ``reason`` counts them."""
    stage_lists = [s.get("stages") or [] for s in schedules]
    seeds = [s.get("seed") for s in schedules]
    stages = []
    for k in range(max(len(s) for s in stage_lists)):
        found = [(s[k], seed) for s, seed in zip(stage_lists, seeds) if len(s) > k and isinstance(s[k], dict)]
        events = [e for e, _ in found]
        stage = merge_values(events, [seed for _, seed in found])
        for key in ("stage", "trigger_top1", "fallback_epoch"):  # settings, the same in every seed: no statistics
            if key in events[0]:
                stage[key] = events[0][key]
        reasons = Counter(str(e.get("reason")) for e in events)
        stage["reason"] = ", ".join(f"{r} x{c}" if len(events) > 1 else r for r, c in sorted(reasons.items()))
        stages.append(stage)
    return {**schedules[-1], "stages": stages}


def merge_runs(runs: list[RunResults]) -> RunResults:
    """One run standing for several seeds: its models' figures are Stats over the seeds (by variant)."""
    if len(runs) == 1:
        return runs[0]
    latest = max(runs, key=lambda r: r.created)
    variants = list(dict.fromkeys(m.get("variant") for r in runs for m in r.data["models"]))
    models = []
    for variant in variants:
        found = [(m, r.seed) for r in runs for m in r.data["models"] if m.get("variant") == variant]
        entries, seeds = [m for m, _ in found], [seed for _, seed in found]
        merged = merge_values(entries, seeds)
        layers = [e.get("layers") or [] for e in entries]
        same = len({tuple(row.get("name") for row in rows) for rows in layers}) == 1
        # per layer: its figures over the seeds (mean, 95 % CI) when every seed has the same layers
        merged["layers"] = [merge_values(list(rows), seeds) for rows in zip(*layers)] if same else layers[-1]
        models.append(merged)
    data = {**latest.data, "models": models, "seeds": sorted(r.data.get("seed") for r in runs
                                                             if r.data.get("seed") is not None),
            "histories": [r.data["history"] for r in runs if r.data.get("history")]}
    schedules = [{**r.data["schedule"], "seed": r.seed} for r in sorted(runs, key=lambda r: r.created or "")
                 if isinstance(r.data.get("schedule"), dict)]
    if schedules:
        data["schedule"] = merge_schedules(schedules)
    return replace(latest, data=data)  # each run's problems stay its own: the report names the file that has them
