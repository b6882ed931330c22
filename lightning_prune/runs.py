"""Run identity: an experiment name plus a version, and the folders that belong to that run alone.

A run ``<experiment>/version_N`` owns ``logs/<experiment>/version_N/`` (TensorBoard events,
results.json, masks, exports) and ``checkpoints/<experiment>/version_N/``. Later tasks name the run
they build on (``run:<experiment>``) instead of a fixed file name, so a rerun is picked up.
No Lightning imports: the CLI and the callbacks share this.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from lightning_prune.errors import ConfigError

RUN_PREFIX = "run:"
VERSION_ENV = "LIGHTNING_PRUNE_RUN_VERSION"
LAST_CHECKPOINT = "last.ckpt"
GRID_SUFFIX = re.compile(r"_t\d+$")  # the accuracy-budget grid's experiments: <experiment>_t<percent>
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_REFERENCE = re.compile(r"^(?P<name>[^/:]+)(?:/version_(?P<version>\d+))?(?::(?P<which>last|best))?$")


@dataclass(frozen=True)
class Run:
    """One run's identity and folders."""

    experiment: str
    version: int
    logs_root: Path = Path("logs")
    checkpoints_root: Path = Path("checkpoints")

    @property
    def name(self) -> str:
        return f"{self.experiment}/version_{self.version}"

    @property
    def log_dir(self) -> Path:
        return self.logs_root / self.experiment / f"version_{self.version}"

    @property
    def checkpoint_dir(self) -> Path:
        return self.checkpoints_root / self.experiment / f"version_{self.version}"

    def as_dict(self) -> dict[str, str | int]:
        return {"experiment": self.experiment, "version": self.version, "log_dir": str(self.log_dir),
                "checkpoint_dir": str(self.checkpoint_dir)}


def grid_experiment(experiment: str, target: float) -> str:
    """The experiment of one accuracy-budget grid point: its own runs, never the base experiment's."""
    return f"{experiment}_t{round(100 * target)}"


def check_experiment_name(name: str | None) -> str:
    if not name or not _NAME.match(name):
        raise ConfigError(
            f"run.experiment: {name!r} is not a valid experiment name; use letters, digits, '_', '-' or '.' "
            "(e.g. digits_baseline)"
        )
    return name


def versions(folder: Path) -> list[int]:
    """The N of every ``version_N`` folder in ``folder``."""
    if not folder.is_dir():
        return []
    found = (p.name.removeprefix("version_") for p in folder.iterdir() if p.is_dir() and p.name.startswith("version_"))
    return sorted(int(v) for v in found if v.isdigit())


def new_run(experiment: str, logs_root: Path, checkpoints_root: Path, version: int | None = None,
            reserve: bool = True) -> Run:
    """The next free version of ``experiment`` (free under both roots), or the one given.

    ``reserve`` creates the log folder at once (``mkdir`` is atomic, so two runs started together
    get different versions). Processes of one distributed job must agree on the version: the
    first one exports it in ``LIGHTNING_PRUNE_RUN_VERSION``, which the processes Lightning launches
    inherit; processes started by an external launcher (torchrun, SLURM) do not reserve, and since
    no folder is created before every rank has passed Lightning's setup barrier they all see the same
    next free version.
    """
    check_experiment_name(experiment)
    if version is None and os.environ.get(VERSION_ENV, "").isdigit():
        version = int(os.environ[VERSION_ENV])
    if version is not None:
        if isinstance(version, bool) or version < 0:
            raise ConfigError(f"run.version must be an integer >= 0 or null (next free), got {version}")
        return Run(experiment, version, logs_root, checkpoints_root)
    while True:
        taken = versions(logs_root / experiment) + versions(checkpoints_root / experiment)
        run = Run(experiment, max(taken, default=-1) + 1, logs_root, checkpoints_root)
        if not reserve:
            return run
        try:
            run.log_dir.mkdir(parents=True)
            return run
        except FileExistsError:
            continue


def is_reference(value: object) -> bool:
    return isinstance(value, str) and value.startswith(RUN_PREFIX)


def resolve_reference(ref: str, checkpoints_dir: str | Path = "checkpoints") -> Path:
    """The checkpoint a run reference names; a plain path is returned as it is.

    ``run:<experiment>``: ``last.ckpt`` of the experiment's newest version that has one.
    ``run:<experiment>/version_N``: that version. A ``:best`` suffix picks the best checkpoint the
    run's ``ModelCheckpoint`` recorded (by its monitored metric) instead of the last one.
    """
    if not is_reference(ref):
        return Path(ref)
    match = _REFERENCE.match(ref[len(RUN_PREFIX):])
    if not match:
        raise ConfigError(
            f"{ref}: a run reference is run:<experiment>[/version_N][:last|:best], e.g. run:digits_baseline"
        )
    name, version, which = match["name"], match["version"], match["which"] or "last"
    folder = Path(checkpoints_dir) / name
    done = [v for v in versions(folder) if (folder / f"version_{v}" / LAST_CHECKPOINT).is_file()]
    if not done:
        known = sorted(p.name for p in Path(checkpoints_dir).iterdir() if p.is_dir()) if Path(
            checkpoints_dir).is_dir() else []
        raise ConfigError(
            f"{ref}: no finished run of experiment {name!r} under {checkpoints_dir}/ "
            f"(experiments there: {', '.join(known) or 'none'}); run that task first"
        )
    if version is None:
        version = done[-1]
    elif int(version) not in done:
        raise ConfigError(f"{ref}: {name} has no version_{version} with a {LAST_CHECKPOINT} "
                          f"(finished versions: {', '.join(map(str, done))})")
    last = folder / f"version_{int(version)}" / LAST_CHECKPOINT
    return last if which == "last" else best_checkpoint(last, ref)


def best_checkpoint(last: Path, ref: str) -> Path:
    """The best model path that the ModelCheckpoint state in ``last`` recorded."""
    state = read_checkpoint(last, ref)
    for key, value in (state.get("callbacks") or {}).items():
        if key.startswith("ModelCheckpoint") and value.get("best_model_path"):
            best = Path(value["best_model_path"])
            if best.is_file():
                return best
    raise ConfigError(f"{ref}: the run recorded no best checkpoint (no monitored metric); use :last")


def read_checkpoint(path: str | Path, option: str = "ckpt_path", weights_only: bool = False) -> dict:
    """``torch.load`` of a checkpoint or state dict, with any failure turned into one line naming the file.

    ``weights_only`` refuses pickled code (use it for files from elsewhere, such as pretrained weights).
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{option}: no such file {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=weights_only)
    except Exception as err:  # noqa: BLE001 - pickle, zip and torch raise many types for a bad file
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"{option}: {path} is not a readable checkpoint ({type(err).__name__}: {first})") from err
    if not isinstance(obj, dict):
        raise ConfigError(f"{option}: {path} holds a {type(obj).__name__}, not a checkpoint or state dict")
    return obj
