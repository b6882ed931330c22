"""Run references: ``run:<experiment>[/version_N][:last|:best]`` to the checkpoint file they name.

What each form picks is in docs/runs.md; ``:best`` is looked up in the run's own ``checkpoints/`` folder, so
a copied or moved folder resolves to its own files. No Lightning imports.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from lightning_prune.checkpoint_io import LAST_CHECKPOINT, finished_record, read_checkpoint
from lightning_prune.errors import ConfigError
from lightning_prune.runs import CHECKPOINTS, versions

RUN_PREFIX = "run:"
_REFERENCE = re.compile(r"^(?P<name>[^/:]+)(?:/version_(?P<version>\d+))?(?::(?P<which>last|best))?$")


@dataclass(frozen=True)
class Resolved:
    """The file a reference named, whether its run finished, and what the user should be told."""

    path: Path
    finished: bool | None = None
    notes: list[str] = field(default_factory=list)


def is_reference(value: object) -> bool:
    return isinstance(value, str) and value.startswith(RUN_PREFIX)


def resolve(ref: str, logs: str | Path = "logs") -> Resolved:
    """The checkpoint a run reference names; a plain path is returned as it is."""
    if not is_reference(ref):
        return Resolved(Path(ref))
    match = _REFERENCE.match(ref[len(RUN_PREFIX):])
    if not match:
        raise ConfigError(
            f"{ref}: a run reference is run:<experiment>[/version_N][:last|:best], e.g. run:digits_baseline"
        )
    name, version, which = match["name"], match["version"], match["which"] or "last"
    folder = Path(logs) / name
    saved = [v for v in versions(folder) if (folder / f"version_{v}" / CHECKPOINTS / LAST_CHECKPOINT).is_file()]
    finished = [v for v in saved if finished_record(folder / f"version_{v}" / CHECKPOINTS) is not None]
    notes: list[str] = []
    if version is None:
        if not finished:
            known = sorted(p.name for p in Path(logs).iterdir() if p.is_dir()) if Path(logs).is_dir() else []
            unfinished = ", ".join(f"version_{v}" for v in saved)
            raise ConfigError(
                f"{ref}: no finished run of experiment {name!r} under {logs}/ "
                + (f"({name} {unfinished} did not finish; name one as run:{name}/version_N to use it anyway)"
                   if saved else f"(experiments there: {', '.join(known) or 'none'}); run that task first")
            )
        chosen = finished[-1]
        skipped = [v for v in saved if v > chosen]
        if skipped:
            notes.append(f"{', '.join(f'{name}/version_{v}' for v in skipped)} did not finish; "
                         f"using {name}/version_{chosen}")
    else:
        chosen = int(version)
        if chosen not in saved:
            raise ConfigError(f"{ref}: {name} has no version_{chosen} with a {LAST_CHECKPOINT} "
                              f"(versions with one: {', '.join(map(str, saved)) or 'none'})")
        if chosen not in finished:
            notes.append(f"{name}/version_{chosen} did not finish (killed or failed): using its newest checkpoint")
    run_dir = folder / f"version_{chosen}" / CHECKPOINTS
    path = run_dir / LAST_CHECKPOINT if which == "last" else best_checkpoint(run_dir, ref)
    return Resolved(path, chosen in finished, notes)


def best_checkpoint(run_dir: Path, ref: str) -> Path:
    """The best checkpoint that the run's monitored ``ModelCheckpoint`` recorded, in the run's own folder."""
    state = read_checkpoint(run_dir / LAST_CHECKPOINT, ref)
    monitored = [value for key, value in (state.get("callbacks") or {}).items()
                 if key.startswith("ModelCheckpoint{") and isinstance(value, dict) and value.get("monitor")]
    if not monitored:
        raise ConfigError(f"{ref}: the run monitored no metric (checkpoint.monitor was null), so it has no best "
                          "checkpoint; use :last")
    best = monitored[0].get("best_model_path")
    if not best:
        raise ConfigError(f"{ref}: the run's ModelCheckpoint saved no best checkpoint yet; use :last")
    path = run_dir / Path(best).name
    if not path.is_file():
        raise ConfigError(f"{ref}: the best checkpoint {Path(best).name} is not in {run_dir}")
    return path
