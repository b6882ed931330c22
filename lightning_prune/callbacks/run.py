"""The run's identity inside the trainer: where its files go and what it was built from."""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from lightning_prune.checkpoint_io import (
    LAST_CHECKPOINT,
    checkpoint_record,
    from_finished_run,
    mark_finished,
    unmark_finished,
)
from lightning_prune.errors import ConfigError
from lightning_prune.results import atomic_write_bytes
from lightning_prune.run_logger import RunLogger
from lightning_prune.runs import Run, make_folder

DISTRIBUTED_FILE = "distributed.json"  # the processes of a fit and their end-of-training checksums

T = TypeVar("T")


class RunInfo(L.Callback):
    """Knows the run on every rank from ``setup`` on, so callbacks never ask the trainer again.

    ``trainer.log_dir`` is a collective under DDP (it broadcasts): code that runs on rank 0 only reads
    the run folder from here instead. ``sources`` records the checkpoints the run was built from
    (``model.pretrained``, ``ckpt_path``) and the references that named them.

    Args:
        experiment: The run's experiment (``run.experiment``).
        sources: Option name to the checkpoint path it resolved to (and ``<option>_reference``).
        config_key: Hash of the run's configuration without seed and folders: equal keys differ only in seed.
    """

    def __init__(self, experiment: str, sources: dict[str, str] | None = None, config_key: str | None = None) -> None:
        self.experiment = experiment
        self.run: Run | None = None
        self.sources = dict(sources or {})
        self.config_key = config_key
        self.checksums: list[str] = []
        self.started = False  # the run got past its checks: a failure from here on keeps its folders

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """The folder rank 0's logger claimed, shared by Lightning; a version named by number is never reused."""
        self.run = Run.of_folder(trainer.log_dir)
        refusal = trainer.strategy.broadcast(self._refusal(trainer) if trainer.is_global_zero else None, src=0)
        if refusal:
            raise ConfigError(refusal)
        if trainer.is_global_zero:
            print(f"run: {self.run.name} ({self.run.log_dir})", file=sys.stderr)

    def _refusal(self, trainer: L.Trainer) -> str | None:
        """Rank 0's reason to refuse the run (every rank raises it): a taken version, a closed folder."""
        logger = next((lg for lg in trainer.loggers if isinstance(lg, RunLogger)), None)
        taken = version_taken(self.run, trainer.state.fn, self.sources.get("ckpt_path"))
        if logger is not None and logger.existed and taken:
            return taken
        try:
            if trainer.state.fn == "fit":
                make_folder(self.run.checkpoint_dir, "run.logs", probe=True)  # a closed folder fails before training
        except ConfigError as err:
            return str(err)
        return None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.started = True
        if trainer.is_global_zero:
            unmark_finished(self.run.checkpoint_dir)  # a resume into its own version trains again

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.started = True

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.started = self.started or not trainer.sanity_checking

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """The fit ended normally: its final ``last.ckpt`` is the run's model from now on."""
        if trainer.is_global_zero and (self.run.checkpoint_dir / LAST_CHECKPOINT).is_file():
            mark_finished(self.run.checkpoint_dir)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Every rank must end training with the same parameters, masks and widths: checked, not assumed."""
        self.checksums = gather(trainer, state_checksum(pl_module))
        if len(set(self.checksums)) > 1:
            raise RuntimeError(f"the ranks' models differ at the end of training (checksums {self.checksums})")
        if trainer.is_global_zero:
            record = json.dumps(self.distributed(trainer), indent=2) + "\n"
            atomic_write_bytes(self.run.log_dir / DISTRIBUTED_FILE, record.encode())

    def describe(self, trainer: L.Trainer) -> dict[str, Any]:
        """What results.json says about the run: its identity, sources, processes, configuration and seed."""
        fields = {"run": {"experiment": self.run.experiment, "version": self.run.version,
                          "checkpoint_dir": str(self.run.checkpoint_dir)},
                  "sources": dict(self.sources), "distributed": self.distributed(trainer)}
        if self.config_key:
            fields["config_key"] = self.config_key
        seed = os.environ.get("PL_GLOBAL_SEED", "")
        if seed.lstrip("-").isdigit():
            fields["seed"] = int(seed)
        return fields

    def distributed(self, trainer: L.Trainer) -> dict[str, Any]:
        """What results.json says about the processes that ran."""
        return {"world_size": trainer.world_size, "num_nodes": trainer.num_nodes,
                "strategy": type(trainer.strategy).__name__, "state_checksums": list(self.checksums)}


class LastCheckpoint(ModelCheckpoint):
    """``last.ckpt``: the newest weights, rewritten after every training epoch (after its validation).

    Lightning 2.6's ``save_last`` writes ``last.ckpt`` only when a top-k checkpoint is saved in the
    same step, so with a monitor it can hold an earlier epoch than the final one. This callback has
    no monitor, so it saves every epoch whatever the metrics say, and once more at the end of
    training if the last steps were not saved yet. ``run:`` references and exports read this file.

    Args:
        dirpath: None (the CLI): Lightning's folder of the run, ``<run>/checkpoints``, as for every
            ``ModelCheckpoint`` of the run; a folder for a Trainer built by hand.
    """

    def __init__(self, dirpath: str | Path | None = None) -> None:
        super().__init__(dirpath=dirpath, filename=Path(LAST_CHECKPOINT).stem, monitor=None, save_top_k=1,
                         save_last=False, enable_version_counter=False, save_on_train_epoch_end=True)

    @property
    def path(self) -> Path:
        return Path(self.dirpath or ".") / LAST_CHECKPOINT

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.global_step and self._last_global_step_saved != trainer.global_step:
            trainer.save_checkpoint(self.path)
            self._last_global_step_saved = trainer.global_step


def final_checkpoint(trainer: L.Trainer) -> str | None:
    """The ``last.ckpt`` a fit wrote (its final model at fit end), or None without a :class:`LastCheckpoint`."""
    callback = next((c for c in trainer.callbacks if isinstance(c, LastCheckpoint)), None)
    return str(callback.path) if callback is not None and callback.path.is_file() else None


def measured_checkpoint(trainer: L.Trainer) -> dict[str, Any] | None:
    """The file whose model a result measures: a fit's final ``last.ckpt``, or the checkpoint ``test`` loaded.

    Path, SHA-256, epoch and step, and whether it comes from a fit that finished (None: not a run's file).
    """
    fitting = trainer.state.fn == "fit"
    path = final_checkpoint(trainer) if fitting else trainer.ckpt_path
    if not path or not Path(path).is_file():
        return None
    return {**checkpoint_record(path), "finished": True if fitting else from_finished_run(path)}


def run_info(trainer: L.Trainer) -> RunInfo | None:
    return next((c for c in trainer.callbacks if isinstance(c, RunInfo)), None)


def run_dir(trainer: L.Trainer) -> Path:
    """The run's folder on every rank without a collective from ``setup`` on (by hand: ``default_root_dir``)."""
    info = run_info(trainer)
    return info.run.log_dir if info is not None and info.run is not None else Path(trainer.default_root_dir)


def resume_path(trainer: L.Trainer) -> str | None:
    """The checkpoint a fit resumes from, already in ``setup`` (Lightning sets ``trainer.ckpt_path`` only later)."""
    if trainer.ckpt_path:
        return str(trainer.ckpt_path)
    info = run_info(trainer)
    return info.sources.get("ckpt_path") if info is not None else None


def version_taken(run: Run, subcommand: str, ckpt_path: str | None) -> str | None:
    """The refusal for an existing version named by number; None for a fit that resumes that very run."""
    if subcommand == "fit" and Path(ckpt_path or "").parent.resolve() == run.checkpoint_dir.resolve():
        return None
    return (f"run.version={run.version}: {run.name} exists already and belongs to another run; leave run.version "
            "unset for the next free version (a resume of that run names its checkpoint in --ckpt_path)")


def state_checksum(module: torch.nn.Module) -> str:
    """SHA-256 of the parameters, pruning masks and shapes (BatchNorm running statistics are per rank)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        if name.endswith(("running_mean", "running_var", "num_batches_tracked")):
            continue
        digest.update(f"{name}{tuple(tensor.shape)}".encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def gather(trainer: L.Trainer, obj: T) -> list[T]:
    """``obj`` from every rank, in rank order (a collective: every rank must call it)."""
    if trainer.world_size == 1 or not torch.distributed.is_initialized():
        return [obj]
    out: list[Any] = [None] * trainer.world_size
    torch.distributed.all_gather_object(out, obj)
    return out


def on_rank_zero(trainer: L.Trainer, work: Callable[[], T]) -> T | None:
    """Run ``work`` on global rank 0 while the other ranks wait at one barrier, then go on together.

    ``work`` must not call a collective (``trainer.log_dir``, a broadcast, a barrier, synced
    logging): the other ranks are already waiting at the barrier, so it would hang.
    """
    result = work() if trainer.is_global_zero else None
    trainer.strategy.barrier("lightning_prune.rank_zero")
    return result


def from_rank_zero(trainer: L.Trainer, work: Callable[[], T]) -> T:
    """A decision computed on global rank 0 and broadcast: identical on every rank by construction."""
    result = work() if trainer.is_global_zero else None
    return trainer.strategy.broadcast(result, src=0)
