"""Checkpoints written whole or not at all, and a failed write (a full disk) as one line naming the file.

Lightning writes a checkpoint straight to its final name, so a write that fails part-way (no space left,
a folder that turned read-only) leaves a truncated ``.ckpt`` that looks like any other. Here it is written
as every file of a run is (:func:`~lightning_prune.results.atomic_torch_save`: a temporary file renamed
into place once complete), and a failure is one :class:`~lightning_prune.errors.ConfigError` line (exit 2).
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch.plugins.io import TorchCheckpointIO

from lightning_prune.errors import ConfigError
from lightning_prune.results import atomic_torch_save


class WholeCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` whose files appear only complete (temporary file, fsync, rename)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        try:
            atomic_torch_save(checkpoint, path)
        except OSError as err:
            raise ConfigError(f"checkpoint: could not write {path} ({err.strerror or type(err).__name__}); nothing "
                              "of it was kept, so free space or point run.logs at a writable folder and resume from "
                              "the run's last.ckpt") from err
