"""Finding every run's results.json and keeping the latest run of each experiment."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import jsonschema

from lightning_prune.results import RESULTS_FILE, schema

log = logging.getLogger(__name__)


@dataclass
class Run:
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


def load_runs(logs: str | Path, unreadable: list[tuple[Path, str]] | None = None) -> list[Run]:
    """Every parseable results.json under ``logs``; schema problems are kept, not fatal.

    Files that cannot be read at all are left out of the runs and appended to ``unreadable`` as
    (path, reason), so the report can list them instead of dropping them silently.
    """
    runs = []
    validator = jsonschema.Draft202012Validator(schema())
    for path in sorted(Path(logs).rglob(RESULTS_FILE)):
        try:
            data = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            reason = " ".join(str(err).split())
            log.warning("skipping %s: %s", path, reason)
            if unreadable is not None:
                unreadable.append((path, f"not readable JSON ({reason})"))
            continue
        if not isinstance(data, dict):
            log.warning("skipping %s: not a JSON object", path)
            if unreadable is not None:
                unreadable.append((path, "not a JSON object"))
            continue
        problems = [f"{'/'.join(map(str, e.path)) or '(top)'}: {e.message}" for e in validator.iter_errors(data)]
        data.setdefault("models", [])
        runs.append(Run(path, data, problems))
    return runs


def seed_groups(runs: list[Run]) -> list[list[Run]]:
    """Per (experiment, task), the newest run and every other run of the same configuration but another seed.

    Runs whose results carry the same ``config_key`` differ only in seed (and run folder); of two
    runs with the same seed the newer counts. Each group ends with its newest run.
    """
    by_key: dict[tuple[str, str], list[Run]] = {}
    for run in runs:
        by_key.setdefault((run.experiment, run.task), []).append(run)
    groups = []
    for members in by_key.values():
        members.sort(key=lambda r: (r.created, run_version(r.path)))
        newest = members[-1]
        key = newest.data.get("config_key")
        same = [r for r in members if key is not None and r.data.get("config_key") == key] or [newest]
        by_seed = {r.data.get("seed"): r for r in same}  # later runs replace earlier ones of the same seed
        groups.append(sorted(by_seed.values(), key=lambda r: (r.created, run_version(r.path))))
    groups.sort(key=lambda g: (g[-1].dataset, TASK_ORDER.get(g[-1].task, 99), g[-1].experiment))
    return groups


def run_version(path: Path) -> int:
    """N of the nearest ``version_N`` folder above ``path`` (-1 when there is none)."""
    for part in reversed(path.parent.parts):
        if part.startswith("version_") and part[8:].isdigit():
            return int(part[8:])
    return -1


TASK_ORDER = {"baseline": 0, "unstructured": 1, "grasp": 2, "snip": 3, "channel": 4}
