"""An export lands whole or not at all: its files are written and checked in a staging folder first.

Files move into the output folder (atomic renames) only once every variant is checked, ``handoff.json``
last; a killed export leaves at most a ``.staging-*`` folder, which the next export removes.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import time
import uuid
from datetime import datetime, timezone
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import torch

from lightning_prune.export.artifact import SUFFIXES, write_json
from lightning_prune.report.handoff import HANDOFF_FILE, handoff_table
from lightning_prune.results import atomic_write_bytes

HANDOFF_TABLE = "handoff.md"
STAGING_PREFIX = ".staging-"
_STAGED = re.compile(r"-(?P<pid>\d+)-[0-9a-f]{8}$")  # .staging-<variant>-<pid>-<random>


def staging(out: Path, variant: str) -> Path:
    """A fresh staging folder, named by this process; the folders of killed exports into ``out`` go first."""
    remove_abandoned(out)
    folder = out / f"{STAGING_PREFIX}{variant}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    folder.mkdir()
    return folder


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_abandoned(out: Path, legacy_age_s: float = 3600.0) -> None:
    """Remove the staging folders whose export process is gone (a kill leaves them); those named before
    the process id was part of the name once ``legacy_age_s`` old."""
    for folder in out.glob(f"{STAGING_PREFIX}*"):
        found = _STAGED.search(folder.name)
        if found:
            gone = found["pid"] != str(os.getpid()) and not _alive(int(found["pid"]))
        else:
            gone = time.time() - folder.stat().st_mtime > legacy_age_s
        if gone and folder.is_dir():
            discard(folder)


def variant_files(folder: Path, variant: str) -> list[Path]:
    """The files of ``variant`` in ``folder`` (``<variant>.pt``, ``.onnx``, ``.int8.pt``, ``.json``, ...)."""
    return sorted(p for p in folder.iterdir() if p.is_file() and any(p.name == variant + s for s in SUFFIXES))


def publish(stage: Path, out: Path, variant: str) -> dict[str, Path]:
    """Move the staged files of ``variant`` into ``out`` (sidecar last), remove its stale files there;
    returns each staged path's new path."""
    staged = variant_files(stage, variant)
    names = {p.name for p in staged}
    for old in variant_files(out, variant):
        if old.name not in names:
            old.unlink()
    moved = {}
    for path in sorted(staged, key=lambda p: p.suffix == ".json"):  # the sidecar, which names the others, last
        target = out / path.name
        os.replace(path, target)
        moved[str(path)] = target
    discard(stage)
    return moved


def discard(stage: Path) -> None:
    """Remove a staging folder and what it holds."""
    shutil.rmtree(stage, ignore_errors=True)


def export_environment() -> dict[str, str]:
    versions = {}
    for name in ("torch", "onnx", "onnxruntime", "onnxscript"):
        try:
            versions[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return {"device": f"cpu ({torch.get_num_threads()} threads, {platform.machine()})",
            "quantized_engine": torch.backends.quantized.engine, **versions}


def write_handoff(out: Path, entries: list[dict[str, Any]], argv: list[str],
                  refused: list[dict[str, Any]] = ()) -> Path:
    """Write (or update: variants of the same name are replaced) ``handoff.json`` and ``handoff.md``;
    ``refused``: the variants the int8 gate turned down, with their figures and the reason."""
    path = out / HANDOFF_FILE
    try:
        old = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, json.JSONDecodeError):
        old = {}
    old = old if isinstance(old, dict) else {}
    names = {e["variant"] for e in [*entries, *refused]}

    def kept(key: str) -> list[dict[str, Any]]:
        items = old.get(key) if isinstance(old.get(key), list) else []
        return [e for e in items if isinstance(e, dict) and e.get("variant") not in names]

    doc = {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["lightning-prune", "export", *argv]),
        "environment": export_environment(),
        "variants": kept("variants") + entries,
        "refused": kept("refused") + list(refused),
    }
    write_json(path, doc)
    atomic_write_bytes(out / HANDOFF_TABLE, (handoff_table([doc]) + "\n").encode())
    return path
