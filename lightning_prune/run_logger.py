"""The run's TensorBoard logger: Lightning's, with the version claimed atomically on global rank 0.

Lightning picks ``<save_dir>/<name>/version_N`` on rank 0 and broadcasts it; two launches that start
together could read the same free version, so rank 0 creates it with ``os.mkdir`` (only one can) and
takes the next number if it loses. The other ranks create nothing.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities.rank_zero import rank_zero_only

from lightning_prune.runs import claim_next, make_folder


class RunLogger(TensorBoardLogger):
    """``TensorBoardLogger`` (logs/<experiment>/version_N) whose version no other launch can take.

    Args:
        save_dir: Root of every run's folder (``run.logs``).
        name: The experiment (``run.experiment``).
        version: A version by number (``run.version``), or None for the next free one.

    After the first access on rank 0, ``created`` says whether this process made the folder (a refused
    run's folder is removed again) and ``existed`` whether a version asked for by number was there already.
    """

    def __init__(self, save_dir: str | Path = "logs", name: str = "lightning_logs", version: int | None = None,
                 **kwargs: Any) -> None:
        super().__init__(save_dir, name=name, version=None, **kwargs)
        self.asked, self.created, self.existed = version, False, False

    def _get_next_version(self) -> int:
        root = Path(self.root_dir)
        if rank_zero_only.rank != 0:  # never used for a folder: Lightning broadcasts rank 0's
            return self.asked if self.asked is not None else super()._get_next_version()
        if self.asked is None:
            version = claim_next(root)
        else:
            make_folder(root, "run.logs")
            version = self.asked
            try:
                os.mkdir(root / f"version_{version}")
            except FileExistsError:
                self.existed = True
                return version
        self.created = True
        return version
