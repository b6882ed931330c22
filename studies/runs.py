"""Which runs of an experiment exist for a seed, read from the folders the CLI wrote.

The studies name runs by experiment and seed (``{EXP@seed}`` in a command): a plan knows which seed
a step trains, not which version the CLI will give it. The folders, the finished marker and the
``run:`` syntax are the package's; this module only filters them by seed.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from lightning_prune.checkpoint_io import finished_record
from lightning_prune.runs import Run, versions

LOGS = Path("logs")


def seed_of(log_dir: Path) -> int | None:
    """The seed a run used, from the config.yaml LightningCLI saved in its folder."""
    try:
        return int((yaml.safe_load((log_dir / "config.yaml").read_text()) or {}).get("seed_everything"))
    except (OSError, TypeError, ValueError, yaml.YAMLError):
        return None


def _runs(experiment: str, seed: int) -> list[Run]:
    runs = [Run(experiment, v, LOGS) for v in versions(LOGS / experiment)]
    return [r for r in runs if seed_of(r.log_dir) == seed]


def finished_run(experiment: str, seed: int) -> Run | None:
    """The newest run of ``experiment`` fitted with ``seed`` whose fit finished."""
    done = [r for r in _runs(experiment, seed) if finished_record(r.checkpoint_dir) is not None]
    return done[-1] if done else None


def tested(experiment: str, seed: int) -> bool:
    """A ``test`` run of ``experiment`` with ``seed`` wrote its results.json (a fit's run is not a test run)."""
    return any((r.log_dir / "results.json").is_file() and finished_record(r.checkpoint_dir) is None
               for r in _runs(experiment, seed))


def exported(experiment: str, seed: int) -> bool:
    """The finished run of ``experiment`` with ``seed`` has been handed on (its export/handoff.json exists)."""
    run = finished_run(experiment, seed)
    return run is not None and (run.log_dir / "export" / "handoff.json").is_file()


def name_seed_runs(argv: list[str]) -> list[str]:
    """``{EXP@seed}`` in an argument -> ``run:EXP/version_N``, that seed's newest finished run."""
    out = []
    for arg in argv:
        if "{" in arg and "@" in arg:
            head, rest = arg.split("{", 1)
            ref, tail = rest.split("}", 1)
            experiment, seed = ref.rsplit("@", 1)
            run = finished_run(experiment, int(seed))
            if run is None:
                raise RuntimeError(f"{experiment} has no finished run of seed {seed}")
            arg = f"{head}run:{run.name}{tail}"
        out.append(arg)
    return out
