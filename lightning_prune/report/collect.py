"""Finding every run's results.json, keeping the latest run of each experiment with its other seeds, and merging
runs that differ only in seed into one: mean, std and n of every figure."""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import jsonschema

from lightning_prune.names import TASK_ORDER
from lightning_prune.report.stats import Stat, is_number
from lightning_prune.results import RESULTS_FILE, schema

log = logging.getLogger(__name__)


@dataclass
class RunResults:
    """One results.json and where it came from (``logs/<experiment>/version_N``)."""

    path: Path
    data: dict
    problems: list[str] = field(default_factory=list)

    @property
    def experiment(self) -> str:
        return self.path.parent.parent.name

    @property
    def dataset(self) -> str:
        return self.data.get("dataset", "unknown")

    @property
    def task(self) -> str:
        return self.data.get("task", "unknown")

    @property
    def created(self) -> str:
        return self.data.get("created", "")

    @property
    def seed(self) -> int | None:
        seed = self.data.get("seed")
        return seed if isinstance(seed, int) and not isinstance(seed, bool) else None

    @property
    def finished(self) -> bool:
        """False when the model it measured comes from a fit that did not finish (killed or failed)."""
        checkpoint = self.data.get("checkpoint")
        return not (isinstance(checkpoint, dict) and checkpoint.get("finished") is False)


def load_runs(logs: str | Path, unreadable: list[tuple[Path, str]] | None = None) -> list[RunResults]:
    """Every parseable results.json under ``logs``; schema problems are kept, not fatal. Unreadable files go to
    ``unreadable`` as (path, reason), so the report lists them instead of dropping them silently."""
    runs, unreadable = [], [] if unreadable is None else unreadable
    validator = jsonschema.Draft202012Validator(schema())
    for path in sorted(Path(logs).rglob(RESULTS_FILE)):
        try:
            data = json.loads(path.read_text())
            reason = None if isinstance(data, dict) else "not a JSON object"
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            reason = f"not readable JSON ({' '.join(str(err).split())})"
        if reason:
            log.warning("skipping %s: %s", path, reason)
            unreadable.append((path, reason))
            continue
        problems = [f"{'/'.join(map(str, e.path)) or '(top)'}: {e.message}" for e in validator.iter_errors(data)]
        models = data.get("models")  # not a list: the problem is listed; the tables see no models
        data["models"] = [m for m in models if isinstance(m, dict)] if isinstance(models, list) else []
        runs.append(RunResults(path, data, problems))
    return runs


def seed_groups(runs: list[RunResults]) -> list[list[RunResults]]:
    """Per (experiment, task), the newest run and the runs of its ``config_key`` with other seeds (newest last);
    unfinished runs, seedless runs beside seeded ones and invalid runs beside valid ones are left out."""
    by_key: dict[tuple[str, str], list[RunResults]] = {}
    for run in runs:
        if run.finished:
            by_key.setdefault((run.experiment, run.task), []).append(run)
    groups = []
    for members in by_key.values():
        members = [r for r in members if not r.problems] or members
        members.sort(key=lambda r: (r.created, run_version(r.path)))
        newest = members[-1]
        key = newest.data.get("config_key")
        same = [r for r in members if key is not None and r.data.get("config_key") == key] or [newest]
        seeded = [r for r in same if r.seed is not None]
        by_seed = {r.seed: r for r in seeded or same[-1:]}  # later runs replace earlier ones of the same seed
        groups.append(sorted(by_seed.values(), key=lambda r: (r.created, run_version(r.path))))
    groups.sort(key=lambda g: (g[-1].dataset, TASK_ORDER.get(g[-1].task, 99), g[-1].experiment))
    return groups


def without_seed(runs: list[RunResults], groups: list[list[RunResults]]) -> list[RunResults]:
    """Runs that record no seed while another run of their experiment does: not counted as a seed."""
    shown = {id(r) for group in groups for r in group}
    seeded = {(r.experiment, r.task) for r in runs if r.seed is not None}
    return [r for r in runs
            if r.finished and r.seed is None and id(r) not in shown and (r.experiment, r.task) in seeded]


def run_version(path: Path) -> int:
    """N of the nearest ``version_N`` folder above ``path`` (-1 when there is none)."""
    for part in reversed(path.parent.parts):
        if part.startswith("version_") and part[8:].isdigit():
            return int(part[8:])
    return -1


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
