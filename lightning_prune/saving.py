"""Checkpoints written whole or not at all, and a failed write (a full disk) as one line naming the file.

Lightning writes a checkpoint straight to its final name, so a write that fails part-way (no space left,
a folder that turned read-only) leaves a truncated ``.ckpt`` that looks like any other. Here it goes to a
temporary file beside it and is renamed into place only once complete; on failure the temporary file is
removed and the error is a :class:`~lightning_prune.errors.ConfigError` (one line, exit 2).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from lightning_prune.errors import ConfigError
from lightning_prune.results import _umask


def write_failure(path: str | Path, err: OSError) -> ConfigError:
    """The one line for a file that could not be written: which file, why, and what to do."""
    reason = err.strerror or type(err).__name__
    return ConfigError(f"checkpoint: could not write {path} ({reason}); nothing of it was kept, so free space or "
                       "point run.logs at a writable folder and resume from the run's last.ckpt")


class WholeCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` whose files appear only complete (temporary file, fsync, rename)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        path = Path(path)
        tmp: str | None = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
            with os.fdopen(fd, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o666 & ~_umask())  # as any other file the run writes
            os.replace(tmp, path)
        except OSError as err:
            raise write_failure(path, err) from err
        finally:
            if tmp is not None and Path(tmp).exists():
                Path(tmp).unlink(missing_ok=True)
