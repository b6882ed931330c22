"""Checkpoints written whole or not at all, and a failed write (a full disk) as one line naming the file.

Lightning writes straight to the final name, so a failed write would leave a truncated ``.ckpt``; here it
goes through :func:`~lightning_prune.results.atomic_torch_save` and a failure is one ``ConfigError``.
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
