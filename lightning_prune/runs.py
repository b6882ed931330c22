"""Run identity: an experiment name plus a version, and the one folder that belongs to that run alone.

The layout and why a version is claimed atomically are in docs/runs.md. No Lightning imports.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from lightning_prune.errors import ConfigError

GRID_SUFFIX = re.compile(r"_t\d+(?:\.\d+)?$")  # the accuracy-budget grid's experiments: <experiment>_t<percent>
CHECKPOINTS = "checkpoints"  # a run's checkpoint folder, inside its log folder (Lightning's layout)
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class Run:
    """One run's identity and folders."""

    experiment: str
    version: int
    logs_root: Path = Path("logs")

    @property
    def name(self) -> str:
        return f"{self.experiment}/version_{self.version}"

    @property
    def log_dir(self) -> Path:
        return Path(self.logs_root) / self.experiment / f"version_{self.version}"

    @property
    def checkpoint_dir(self) -> Path:
        return self.log_dir / CHECKPOINTS

    @classmethod
    def of_folder(cls, log_dir: str | Path) -> Run:
        """The run whose folder is ``<logs>/<experiment>/version_N``."""
        folder = Path(log_dir)
        version = folder.name.removeprefix("version_")
        if not version.isdigit():
            raise ValueError(f"{folder} is not a run folder (<logs>/<experiment>/version_N)")
        return cls(folder.parent.name, int(version), folder.parent.parent)


def grid_experiment(experiment: str, target: float) -> str:
    """The experiment of one accuracy-budget grid point (``_t90``, ``_t99.5``): its own runs, never another's."""
    return f"{experiment}_t{round(100 * target, 6):g}"


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


def claim_next(folder: Path) -> int:
    """Create the next free ``version_N`` in ``folder`` and return N; ``os.mkdir`` makes the claim atomic."""
    make_folder(folder, "run.logs")
    version = max(versions(folder), default=-1) + 1
    while True:
        try:
            os.mkdir(folder / f"version_{version}")
            return version
        except FileExistsError:
            version += 1


def make_folder(path: Path, option: str, error: type[ConfigError] = ConfigError, probe: bool = False) -> Path:
    """``mkdir -p`` whose failure is one line naming the option that chose the folder.

    ``probe``: also write a file into it once, so a full or closed disk fails before the work starts.
    """
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise error(f"{option}: cannot create {path} ({err.strerror or type(err).__name__})") from err
    if not os.access(path, os.W_OK | os.X_OK):
        raise error(f"{option}: {path} is not writable")
    if probe:
        test = path / f".write-check-{os.getpid()}"
        try:
            test.write_bytes(b"")
            test.unlink()
        except OSError as err:
            raise error(f"{option}: cannot write to {path} ({err.strerror or type(err).__name__})") from err
    return path


def release(log_dir: Path) -> None:
    """Remove a refused run's folder: it trained nothing, so nothing of it may look like a run."""
    shutil.rmtree(log_dir, ignore_errors=True)
