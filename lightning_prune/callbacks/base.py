"""What every pruning callback shares, so that each one holds only its decision (as Lightning's ``ModelPruning``).

Options are checked in ``setup``, the model is claimed at fit start, and the :class:`PruningRecord` handed over at
fit end tells the recorder what to profile and write: pruning callbacks write no file.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

import lightning as L
from torch import nn

from lightning_prune.errors import ConfigError

C = TypeVar("C", bound=L.Callback)


@dataclass
class PruningRecord:
    """What the recorder profiles and records of a pruning fit, as its pruning callback says at fit end."""

    variant: str  # the fitted model's: ``pruned-masked`` or ``channel-pruned``
    masked: bool = False  # it carries prune masks: masks and COO weights exported, sparse variants profiled
    extra: dict[str, Any] = field(default_factory=dict)  # top-level results.json fields (sweep, schedule, notes)
    annotate: Callable[[dict, dict | None], None] | None = None  # adds fields to its entry (given the dense one)
    files: dict[str, str] = field(default_factory=dict)  # text files for the run's folder, by name
    curves: tuple[dict[str, list[float]], list[float], str] | None = None  # the sweep's (curves, levels, title)
    record: bool = True  # profile the models and write results.json; False: only ``files`` and ``curves``


@contextmanager
def refused_as(prefix: str) -> Iterator[None]:
    """A ``ValueError`` inside becomes one :class:`ConfigError` line, ``prefix`` + its message (exit 2)."""
    try:
        yield
    except ValueError as err:
        raise ConfigError(f"{prefix}{err}") from err


def callback_of(trainer: L.Trainer, kind: type[C]) -> C | None:
    """The trainer's callback of type ``kind`` (the one place callbacks look each other up)."""
    return next((c for c in trainer.callbacks if isinstance(c, kind)), None)


class PruningCallback(L.Callback):
    """Base of the task callbacks: option check, claim, state and record; subclasses decide what to prune."""

    state_keys: ClassVar[tuple[str, ...]] = ()  # attributes saved in checkpoints (the callback's progress)
    profile_dense: bool = False  # the recorder profiles the unpruned model at fit setup

    task: str  # the results.json task the fit is recorded under

    def check(self, trainer: L.Trainer, model: nn.Module) -> None:
        """Raise ``ValueError`` (starting with the option's name) for options that no type can check."""

    def describe(self) -> dict[str, Any]:
        """What this callback prunes to: kept in every checkpoint, and a resumed fit must agree."""

    def handover(self, trainer: L.Trainer, pl_module: L.LightningModule) -> PruningRecord | None:
        """What to profile and record at fit end; None: nothing."""

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        with refused_as(f"{type(self).__name__}."):
            self.check(trainer, pl_module.model)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        pl_module.claim_pruning(self.describe())

    def state_dict(self) -> dict[str, Any]:
        return {key: getattr(self, key) for key in self.state_keys}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        for key in self.state_keys:
            if key in state_dict:
                setattr(self, key, state_dict[key])


def log_each(trainer: L.Trainer, method: str, tag: str, value: Any, **kwargs: Any) -> None:
    """``method`` (``add_text``, ``add_figure``) on every logger whose experiment has it (TensorBoard)."""
    for logger in trainer.loggers:
        experiment = getattr(logger, "experiment", None)
        if hasattr(experiment, method):
            getattr(experiment, method)(tag, value, global_step=trainer.global_step, **kwargs)


def log_metrics(trainer: L.Trainer, metrics: dict[str, float]) -> None:
    """Scalars on every logger, at the current step (callbacks outside a training step cannot ``self.log``)."""
    for logger in trainer.loggers:
        logger.log_metrics(metrics, step=trainer.global_step)
