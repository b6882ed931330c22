"""``lightning-prune``: LightningCLI's fit / validate / test, plus ``report`` and ``export``.

Besides ``model``, ``data`` and ``trainer`` the parser has one group per callback (``run``, ``checkpoint``,
``profile``, ``sweep``, ``prune``), so every option can be set on the command line and is described by ``--help``.
"""

from __future__ import annotations

import errno
import importlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch import Callback
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.plugins.io import CheckpointIO

from lightning_prune.callbacks.recorder import Recorder
from lightning_prune.callbacks.run import LastCheckpoint, RunInfo, version_taken
from lightning_prune.callbacks.sensitivity import SensitivityScan
from lightning_prune.checkpoint_io import read_checkpoint
from lightning_prune.config_files import checkpoint_task, config_key, config_task, expand_configs
from lightning_prune.data import ImageDataModule
from lightning_prune.errors import ConfigError
from lightning_prune.models import scaled_channels
from lightning_prune.models.pretrained import check_starting_point
from lightning_prune.module import ImageClassifier
from lightning_prune.parser import OneLineParser
from lightning_prune.references import is_reference, resolve
from lightning_prune.run_logger import RunLogger
from lightning_prune.runs import Run, check_experiment_name, release
from lightning_prune.saving import WholeCheckpointIO

LOGGERS = {"TensorBoardLogger", "CSVLogger", "RunLogger"}  # loggers that would pick a version folder of their own
RUN_LOGGER = f"{RunLogger.__module__}.{RunLogger.__name__}"
RANK_VARIABLES = ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID")  # set, and not 0: not the launch's first process
WRITE_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}  # a full or closed disk
DEFAULT_LOGGER_NAMES = {None, "", "lightning_logs"}


@dataclass
class RunSpec:
    """Which run this is: ``logs/<experiment>/version_N``, its checkpoints in ``checkpoints/`` inside it.

    Args:
        experiment: Name of the experiment; every version of it lives under this name, and later tasks
            refer to its newest finished run as ``run:<experiment>``.
        version: Version number to use (null: the next free one, so no earlier run is overwritten).
        logs: Root folder of every run's folder (logs, checkpoints, results, exports).
    """

    experiment: str | None = None
    version: int | None = None
    logs: str = "logs"


@dataclass
class Session:
    """One CLI call's logger and run: a folder this process created for a run refused before it started goes."""

    logger: RunLogger | None = None
    info: RunInfo | None = None

    def release_if_refused(self) -> None:
        started = self.info is not None and self.info.started
        if self.logger is not None and self.logger.created and not started:
            release(self.logger.log_dir)


class PruneCLI(LightningCLI):
    """The data module's class count feeds the model, so YAML never states it twice."""

    def __init__(self, *args: Any, session: Session, **kwargs: Any) -> None:
        self.session = session
        super().__init__(*args, **kwargs)

    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")
        parser.add_argument("--defaults", type=list[str] | None, default=None,
                            help="config files this one builds on, relative to it (applied before it)")
        parser.add_class_arguments(RunSpec, "run")
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.add_lightning_class_args(Recorder, "profile")
        parser.add_lightning_class_args(SensitivityScan, "sweep", subclass_mode=True, required=False)
        parser.add_lightning_class_args(Callback, "prune", subclass_mode=True, required=False)

    # ------------------------------------------------------------ run identity
    def _parse_ckpt_path(self) -> None:
        """Resolve ``--ckpt_path run:...`` and check the file before Lightning reads its hyperparameters."""
        self.sources: dict[str, str] = {}
        self.checkpoint_task: str | None = None
        subcommand = self.config.get("subcommand")
        cfg = self.config[subcommand] if subcommand else None
        ckpt_path = cfg.get("ckpt_path") if cfg is not None else None
        if ckpt_path not in (None, "last", "best", "hpc", "registry"):
            if is_reference(ckpt_path):
                ckpt_path = cfg.ckpt_path = self._resolve("ckpt_path", ckpt_path, cfg.run.logs)
            ckpt = read_checkpoint(ckpt_path, "ckpt_path")  # one line for a missing, truncated or foreign file
            self.sources["ckpt_path"] = str(ckpt_path)
            self.checkpoint_task = checkpoint_task(ckpt)
        super()._parse_ckpt_path()

    def before_instantiate_classes(self) -> None:
        """Every check that needs no data runs here, before the run's folders exist."""
        cfg = self.config[self.subcommand]
        self.config_key = config_key(cfg)
        spec = cfg.run
        if not spec.experiment:
            raise ConfigError("run.experiment: name the experiment (e.g. --run.experiment=digits_baseline)")
        check_experiment_name(spec.experiment)
        if cfg.trainer.get("default_root_dir") is not None:
            raise ConfigError("trainer.default_root_dir: every run's folder is logs/<experiment>/version_N under "
                              "--run.logs; use that instead")
        if cfg.checkpoint.get("save_last"):
            raise ConfigError("checkpoint.save_last: every fit writes last.ckpt itself (its newest weights, every "
                              "epoch, whatever the monitor says); leave save_last unset")
        if cfg.checkpoint.get("dirpath") is not None:
            raise ConfigError("checkpoint.dirpath: a run keeps its checkpoints in its own folder "
                              "(logs/<experiment>/version_N/checkpoints), where run: references find them; set "
                              "--run.logs to move every run instead")
        self._check_resume_task(cfg)
        if self.sources.get("ckpt_path"):
            cfg.model.pretrained = False  # the checkpoint holds the weights (and, narrow or masked, the shapes)
        elif is_reference(cfg.model.pretrained):
            cfg.model.pretrained = self._resolve("model.pretrained", cfg.model.pretrained, spec.logs)
        self._check_pretrained(cfg)
        prune_args = (cfg.get("prune") or {}).get("init_args") or {}
        if is_reference(prune_args.get("layerwise_from")):  # the 1b control copies another run's layers
            prune_args["layerwise_from"] = self._resolve("prune.layerwise_from", prune_args["layerwise_from"],
                                                         spec.logs)
        self._place_logger(cfg, spec)
        self._check_version(spec)

    def _check_version(self, spec: Any) -> None:
        """A version named by number that exists is refused here, before its logger writes into it.

        A process that is not the launch's first (an external launcher's other ranks or nodes, the
        processes Lightning starts) leaves the check to rank 0 in ``RunInfo.setup``.
        """
        if spec.version is None or any(os.environ.get(k, "0") != "0" for k in RANK_VARIABLES):
            return
        run = Run(spec.experiment, spec.version, Path(spec.logs))
        taken = version_taken(run, self.subcommand, self.sources.get("ckpt_path"))
        if run.log_dir.exists() and taken:
            raise ConfigError(taken)

    def _check_resume_task(self, cfg: Any) -> None:
        """A checkpoint of task X is never resumed, tested or re-labelled under a config of task Y."""
        ours, theirs = config_task(cfg), self.checkpoint_task
        if self.sources.get("ckpt_path") and None not in (ours, theirs) and ours != theirs:
            hint = (f" (a {ours} run starts from another run's model with model.pretrained, not --ckpt_path)"
                    if theirs == "baseline" else "")
            raise ConfigError(f"ckpt_path: the checkpoint was pruned by task {theirs!r} but the config is of task "
                              f"{ours!r}; use a config of task {theirs!r}{hint}")

    @staticmethod
    def _check_pretrained(cfg: Any) -> None:
        """A pretrained file must be of the task and widths the config builds (or one a compound config continues)."""
        model = cfg.model
        if not isinstance(model.pretrained, str) or not model.pretrained:
            return
        channels = list(model.channels) if model.channels is not None else scaled_channels(model.width_multiplier)
        check_starting_point(model.pretrained, config_task(cfg), channels, model.classifier_width)

    def _resolve(self, option: str, ref: str, logs: str) -> str:
        resolved = resolve(ref, logs)
        for note in resolved.notes:
            print(f"note: {option}: {note}", file=sys.stderr)
        self.sources[option] = str(resolved.path)
        self.sources[f"{option}_reference"] = ref
        print(f"{option}: {ref} -> {resolved.path}", file=sys.stderr)
        return str(resolved.path)

    @staticmethod
    def _place_logger(cfg: Any, spec: Any) -> None:
        """The run's one folder comes from its :class:`RunLogger` (a TensorBoardLogger), whatever the YAML said."""
        logger = cfg.trainer.logger
        if logger is False:
            raise ConfigError("trainer.logger=false: a run's folder and version come from its TensorBoard logger "
                              "(logs/<experiment>/version_N); keep it")
        entries = logger if isinstance(logger, list) else [] if logger in (None, True) else [logger]
        placed = [e for e in entries if hasattr(e, "get") and e.get("class_path", "").rsplit(".", 1)[-1] in LOGGERS]
        if len(placed) > 1 or any(e.get("class_path", "").endswith("CSVLogger") for e in placed):
            raise ConfigError("trainer.logger: one TensorBoardLogger names the run's folder; a CSVLogger or a second "
                              "TensorBoardLogger would pick a version folder of its own")
        if not placed:
            placed = [{"class_path": RUN_LOGGER, "init_args": {}}]
            entries = [*placed, *entries]
        entry = placed[0]
        init_args = entry["init_args"] = {} if entry.get("init_args") is None else entry["init_args"]
        name = init_args.get("name")
        if name not in DEFAULT_LOGGER_NAMES and name != spec.experiment:
            raise ConfigError(
                f"trainer.logger.init_args.name={name!r}: the run's name is set in one place, run.experiment "
                f"({spec.experiment!r}); use --run.experiment={name} instead"
            )
        entry["class_path"] = RUN_LOGGER
        init_args["save_dir"], init_args["name"], init_args["version"] = spec.logs, spec.experiment, spec.version
        cfg.trainer.logger = entries[0] if len(entries) == 1 else entries

    def instantiate_trainer(self, **kwargs: Any):
        """Empty optional groups (``sweep``, ``prune``) add no callback; the run's identity and last.ckpt are added."""
        parser = self._parser(self.subcommand)
        callbacks = [c for c in (self._get(self.config_init, key) for key in parser.callback_keys) if c is not None]
        self.session.info = RunInfo(self.config[self.subcommand].run.experiment, self.sources, self.config_key)
        callbacks = [self.session.info, *callbacks, LastCheckpoint()]  # the latter saves in fit only
        trainer_config = {**self._get(self.config_init, "trainer", default={}), **kwargs}
        plugins = trainer_config.get("plugins") or []
        plugins = list(plugins) if isinstance(plugins, (list, tuple)) else [plugins]
        if not any(isinstance(p, CheckpointIO) for p in plugins):  # checkpoints appear whole or not at all
            trainer_config["plugins"] = [*plugins, WholeCheckpointIO()]
        trainer = self._instantiate_trainer(trainer_config, callbacks)
        self.session.logger = next(lg for lg in trainer.loggers if isinstance(lg, RunLogger))
        return trainer


def run_cli(args: list[str] | None) -> None:
    session = Session()
    try:
        PruneCLI(ImageClassifier, ImageDataModule, args=args, save_config_kwargs={"overwrite": True},
                 parser_class=OneLineParser, session=session)
    except BaseException:
        session.release_if_refused()  # refused before training: nothing of it may look like a run
        raise


def _subcommand(name: str):
    """``report`` and ``export`` are plain argparse commands, imported only when called."""
    return importlib.import_module(f"lightning_prune.{name}.cli").main if name in ("report", "export") else None


def main(args: list[str] | None = None) -> int:
    """Entry point; ``args`` defaults to ``sys.argv[1:]`` (tests pass their own)."""
    argv = sys.argv[1:] if args is None else list(args)
    try:
        command = _subcommand(argv[0]) if argv else None
        if command is not None:
            return command(argv[1:])
        expanded = expand_configs(argv)
        if args is None:  # LightningCLI reads sys.argv; so do the processes Lightning's DDP launcher starts
            sys.argv = [sys.argv[0], *expanded]
        run_cli(None if args is None else expanded)
    except (ConfigError, MisconfigurationException) as err:
        message = f"trainer: {' '.join(str(err).split())}" if isinstance(err, MisconfigurationException) else str(err)
        print(f"error: {message}", file=sys.stderr)
        return 2
    except OSError as err:
        if err.errno not in WRITE_ERRORS:
            raise
        print(f"error: could not write {err.filename or 'a file'} ({err.strerror}); free space or make the folder "
              "writable, then run again", file=sys.stderr)
        return 2
    return 0
