"""An export lands whole or not at all: its files are written and checked in a staging folder first.

Only when every file of every variant has been reloaded and checked are they moved into the output
folder, each with an atomic rename, and the variant's files of an earlier export that this one did not
write again (an int8 file after a re-export without ``--quantize``) are removed. ``handoff.json`` is
written after that, so it lists exactly the files present. A killed or failed export leaves the
output folder as it was (and a ``.staging-*`` folder at most, which the next export into it removes).
"""

from __future__ import annotations

import os
import re
import shutil
import time
import uuid
from pathlib import Path

from lightning_prune.export.artifact import SUFFIXES
from lightning_prune.export.errors import ExportError

STAGING_PREFIX = ".staging-"
_STAGED = re.compile(r"-(?P<pid>\d+)-[0-9a-f]{8}$")  # .staging-<variant>-<pid>-<random>


def check_out(out: Path) -> Path:
    """The output folder, created if missing; one line naming ``--out`` when it cannot be used."""
    if out.exists() and not out.is_dir():
        raise ExportError(f"--out: {out} is a file; name a folder to export into")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ExportError(f"--out: cannot create {out} ({err.strerror or type(err).__name__})") from err
    probe = out / f".write-check-{os.getpid()}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise ExportError(f"--out: cannot write to {out} ({err.strerror or type(err).__name__})") from err
    return out


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


def remove_abandoned(out: Path, legacy_age_s: float = 3600.0) -> list[Path]:
    """Remove the staging folders whose export process is gone (a kill leaves them); returns them.

    Folders named before the process id was part of the name are removed once ``legacy_age_s`` old.
    """
    removed = []
    for folder in out.glob(f"{STAGING_PREFIX}*"):
        found = _STAGED.search(folder.name)
        if found:
            gone = found["pid"] != str(os.getpid()) and not _alive(int(found["pid"]))
        else:
            gone = time.time() - folder.stat().st_mtime > legacy_age_s
        if gone and folder.is_dir():
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


def variant_files(folder: Path, variant: str) -> list[Path]:
    """The files of ``variant`` in ``folder`` (``<variant>.pt``, ``.onnx``, ``.int8.pt``, ``.json``, ...)."""
    return sorted(p for p in folder.iterdir() if p.is_file() and any(p.name == variant + s for s in SUFFIXES))


def publish(stage: Path, out: Path, variant: str) -> dict[str, Path]:
    """Move the staged files of ``variant`` into ``out`` (sidecar last) and remove its stale files there.

    Returns each staged path's new path.
    """
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
    shutil.rmtree(stage, ignore_errors=True)
    return moved


def discard(stage: Path) -> None:
    shutil.rmtree(stage, ignore_errors=True)


def remove_if_empty(folder: Path | None) -> None:
    """A failed export removes the output folder it created, so no empty ``--out`` looks like an export."""
    if folder is not None and folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()


def published_files(files: dict[str, Path], moved: dict[str, Path]) -> dict[str, Path]:
    """An ``ExportResult.files`` map with the staged paths replaced by where the files now are."""
    return {fmt: moved.get(str(path), path) for fmt, path in files.items()}

