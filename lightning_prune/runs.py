"""Run identity: an experiment name plus a version, and the folders that belong to that run alone.

A run ``<experiment>/version_N`` owns ``logs/<experiment>/version_N/`` (TensorBoard events,
results.json, masks, exports) and ``checkpoints/<experiment>/version_N/``. Later tasks name the run
they build on (``run:<experiment>``, :mod:`lightning_prune.references`) instead of a fixed file name.

A version belongs to one launch. The first process of a launch claims it by renaming a folder that
already holds the claim (``.launch.json``) into place, which is atomic, so two launches never share a
version. The other processes of the same launch join it: those Lightning starts inherit it through
``LIGHTNING_PRUNE_RUN`` in their environment, and those an external launcher starts (torchrun,
SLURM, one command per node) find the claim of their launch (same master address, port and job id)
and take their own rank's slot in it. No Lightning imports.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from lightning_prune.errors import ConfigError

RUN_ENV = "LIGHTNING_PRUNE_RUN"  # "<experiment>:<version>:<launch>", inherited by the processes Lightning starts
LAUNCH_FILE = ".launch.json"
JOIN_WINDOW_S = 1800.0  # processes of one launch start within this time of each other (the DDP init timeout)
GRID_SUFFIX = re.compile(r"_t\d+(?:\.\d+)?$")  # the accuracy-budget grid's experiments: <experiment>_t<percent>
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_EXTERNAL = ("RANK", "NODE_RANK", "SLURM_PROCID", "WORLD_SIZE")
_JOB_IDS = ("TORCHELASTIC_RUN_ID", "SLURM_JOB_ID", "SLURM_STEP_ID", "LSB_JOBID", "PBS_JOBID")


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


@dataclass(frozen=True)
class Launch:
    """Which launch this process belongs to, and its slot in it.

    Args:
        id: Shared by every process of the launch, and by no other launch.
        slot: This process's place in the launch (one per rank or node); None: it inherited its run.
        version: The version a parent process reserved (inherited), else None.
    """

    id: str
    slot: str | None = None
    version: int | None = None


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


def current_launch(experiment: str, env: Mapping[str, str] = os.environ) -> Launch:
    """This process's launch: inherited from a parent, shared by an external launcher's ranks, or new."""
    inherited = env.get(RUN_ENV, "").split(":")
    if len(inherited) == 3 and inherited[0] == experiment and inherited[1].isdigit():
        return Launch(inherited[2], None, int(inherited[1]))
    if any(env.get(k) not in (None, "") for k in _EXTERNAL):
        parts = [env.get(k, "") for k in ("MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", *_JOB_IDS)]
        launch = hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]
        for key, prefix in (("RANK", "rank"), ("SLURM_PROCID", "rank"), ("NODE_RANK", "node")):
            if env.get(key, "").isdigit():
                return Launch(launch, f"{prefix}{env[key]}")
        return Launch(launch, "rank0")
    return Launch(uuid.uuid4().hex, "rank0")


def _claim(folder: Path) -> dict:
    try:
        claim = json.loads((folder / LAUNCH_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return claim if isinstance(claim, dict) else {}


def _take_slot(folder: Path, slot: str) -> bool:
    try:
        os.close(os.open(folder / f".slot-{slot}", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        return True
    except FileExistsError:
        return False


def _join(folder: Path, launch: Launch) -> int | None:
    """A version of ``folder`` that this launch claimed recently and whose slot for this process is free."""
    for version in versions(folder):
        run_dir = folder / f"version_{version}"
        claim = _claim(run_dir)
        fresh = time.time() - float(claim.get("created", 0)) < JOIN_WINDOW_S
        if claim.get("launch") == launch.id and fresh and _take_slot(run_dir, launch.slot or "rank0"):
            return version
    return None


def _mkdirs(path: Path, option: str) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"{option}: cannot create {path} ({err.strerror or type(err).__name__})") from err
    if not os.access(path, os.W_OK | os.X_OK):
        raise ConfigError(f"{option}: {path} is not writable")


def reserve(experiment: str, logs_root: Path, checkpoints_root: Path, launch: Launch,
            version: int | None = None) -> tuple[Run, bool]:
    """The run this process belongs to, and whether this process created its log folder.

    The version is the next one free under both roots, or ``version``; either way a version that
    another launch created is never reused (``version`` naming one is an error).
    """
    check_experiment_name(experiment)
    if version is not None and (isinstance(version, bool) or version < 0):
        raise ConfigError(f"run.version must be an integer >= 0 or null (next free), got {version}")
    if launch.version is not None:
        return Run(experiment, launch.version, logs_root, checkpoints_root), False
    folder = logs_root / experiment
    _mkdirs(folder, "run.logs")
    while True:
        joined = _join(folder, launch)
        if joined is not None:
            if version is not None and joined != version:
                raise ConfigError(f"run.version={version}: the other processes of this launch use version_{joined}")
            return Run(experiment, joined, logs_root, checkpoints_root), False
        taken = versions(folder) + versions(checkpoints_root / experiment)
        target = max(taken, default=-1) + 1 if version is None else version
        if version is not None and version in taken:
            raise ConfigError(
                f"run.version={version}: {experiment}/version_{version} exists already and belongs to another run; "
                "leave run.version unset for the next free version (a resume of that run names its checkpoint "
                "in --ckpt_path)"
            )
        staging = folder / f".reserving-{uuid.uuid4().hex}"
        staging.mkdir()
        claim = {"launch": launch.id, "created": time.time(), "pid": os.getpid()}
        (staging / LAUNCH_FILE).write_text(json.dumps(claim) + "\n")
        _take_slot(staging, launch.slot or "rank0")
        try:
            os.rename(staging, folder / f"version_{target}")  # atomic; fails when another run holds that version
            return Run(experiment, target, logs_root, checkpoints_root), True
        except OSError:
            shutil.rmtree(staging, ignore_errors=True)


def check_checkpoint_folder(run: Run) -> None:
    """Create the run's checkpoint folder and write into it once, so a bad ``run.checkpoints`` fails before training."""
    _mkdirs(run.checkpoint_dir, "run.checkpoints")
    probe = run.checkpoint_dir / f".write-check-{os.getpid()}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise ConfigError(f"run.checkpoints: cannot write to {run.checkpoint_dir} ({err.strerror})") from err


def release(run: Run) -> None:
    """Remove a refused run's folders: it trained nothing, so nothing of it may look like a run."""
    for folder in (run.log_dir, run.checkpoint_dir):
        shutil.rmtree(folder, ignore_errors=True)
