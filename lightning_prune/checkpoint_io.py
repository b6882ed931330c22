"""Checkpoint files: reading them with one-line errors, and naming exactly which file a result measured.

``finished.json`` (epoch, step and SHA-256 of the final ``last.ckpt``) marks a fit that ended normally;
results.json and the hand-off record the same fields for the file they measured. No Lightning imports.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from lightning_prune.errors import ConfigError
from lightning_prune.results import atomic_write_bytes
from lightning_prune.runs import CHECKPOINTS

LAST_CHECKPOINT = "last.ckpt"
FINISHED_FILE = "finished.json"


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


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def checkpoint_record(path: str | Path) -> dict[str, Any]:
    """Path, SHA-256, epoch and global step of a checkpoint file: what a result names as the model it measured."""
    path = Path(path)
    record: dict[str, Any] = {"path": str(path), "sha256": file_sha256(path), "epoch": None, "global_step": None}
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    except Exception:  # noqa: BLE001 - a bare state dict or another format: the hash still names it
        return record
    if isinstance(ckpt, dict):
        record["epoch"], record["global_step"] = ckpt.get("epoch"), ckpt.get("global_step")
    return record


def mark_finished(checkpoint_dir: str | Path) -> dict[str, Any]:
    """Write ``finished.json`` for the run's final ``last.ckpt`` (called once, when the fit ended normally)."""
    folder = Path(checkpoint_dir)
    record = {**checkpoint_record(folder / LAST_CHECKPOINT),
              "finished": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    atomic_write_bytes(folder / FINISHED_FILE, (json.dumps(record, indent=2) + "\n").encode())
    return record


def unmark_finished(checkpoint_dir: str | Path) -> None:
    """A run that trains again (a resume into its own version) is not finished until it ends again."""
    (Path(checkpoint_dir) / FINISHED_FILE).unlink(missing_ok=True)


def finished_record(checkpoint_dir: str | Path) -> dict[str, Any] | None:
    """The ``finished.json`` of a run's checkpoint folder, or None when the run did not finish."""
    path = Path(checkpoint_dir) / FINISHED_FILE
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return record if isinstance(record, dict) else None


def from_finished_run(path: str | Path) -> bool | None:
    """Whether a checkpoint comes from a fit that ended normally; None for a file outside a run's folder."""
    folder = Path(path).parent
    if finished_record(folder) is not None:
        return True
    in_run = folder.name == CHECKPOINTS and folder.parent.name.startswith("version_")
    return False if (folder / LAST_CHECKPOINT).is_file() and in_run else None
