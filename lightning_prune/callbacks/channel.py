"""Task 2: LASSO channel pruning at fit start, fine-tuning of the narrow VGG, dense vs pruned profiles.

Thin adapter: the algorithm is in ``lightning_prune.pruning.channel``. The surgery replaces
``pl_module.model`` and updates ``hparams["channels"]`` before the first training step, so every
checkpoint holds the narrow network under the widths that rebuild it.
"""

from __future__ import annotations

import csv
import io
import json
import time
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info

from lightning_prune.callbacks.profile import profile_entry, record, run_dir
from lightning_prune.errors import ConfigError
from lightning_prune.models.vgg import VGG
from lightning_prune.profiling import ProfileSettings
from lightning_prune.pruning.channel import (
    apply_masks,
    check_linear_sparsity,
    prune_channels,
    prune_linear,
    resolve_ratios,
    zero_masks,
)
from lightning_prune.pruning.layers import count_parameters
from lightning_prune.results import atomic_write_bytes

TASK = "channel"
CSV_FILE = "channels.csv"
JSON_FILE = "channels.json"
CSV_COLUMNS = ("layer", "in_dense", "in_kept", "out_dense", "out_kept", "samples", "lambda", "selection",
               "error_pruned", "error_reconstructed", "seconds")


class ChannelPruning(L.Callback):
    """Prune conv input channels by LASSO + least squares (He et al. 2017) when ``fit`` starts.

    ``ratios``: the fraction of input channels each conv keeps, one number for convs 2-13 or
    ``{"features.N": ratio}`` for the listed ones (the producer conv loses the same filters; the
    first conv's RGB input and the last conv's outputs are never pruned). Calibration uses
    ``images_per_class`` training images per class (eval transforms), at most ``positions``
    random positions per image and ``samples`` rows per layer. ``linear_sparsity`` additionally
    zeroes that fraction of the hidden linear layers' weights (kept zero through fine-tuning).
    The dense model is profiled before the surgery and the narrow one at fit end, both into
    results.json (task ``channel``) with the channels kept per layer. A fit resumed from a
    checkpoint of the narrow network does not prune again.
    """

    def __init__(
        self,
        ratios: float | dict[str, float] = 0.5,
        images_per_class: int = 50,
        samples: int | None = 5000,
        positions: int = 10,
        linear_sparsity: float | None = None,
        seed: int = 0,
        progress: bool = True,
        profile_dense: bool = True,
        latency_batches: int = 10,
        warmup_batches: int = 2,
        energy_batches: int = 10,
        train_batches: int | None = None,
    ) -> None:
        # Checked in ``setup``: jsonargparse would turn an error raised here into a generic one.
        self.ratios, self.images_per_class, self.samples, self.positions = ratios, images_per_class, samples, positions
        self.linear_sparsity, self.seed, self.progress = linear_sparsity, seed, progress
        self.profile_dense, self.train_batches = profile_dense, train_batches
        self.settings = ProfileSettings(latency_batches, warmup_batches, energy_batches)
        self.channels: list[int] | None = None  # the narrow widths once pruned (saved in checkpoints)
        self.dense_channels: list[int] | None = None
        self.layers: list[dict] = []
        self.dense_entry: dict | None = None
        self.seconds: float | None = None
        self.masks: dict = {}

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        try:
            self.check(pl_module.model)
        except ConfigError as err:
            raise ConfigError(f"ChannelPruning.{err}") from err

    def check(self, model: Any) -> None:
        """Every option, each error naming it and what it allows."""
        if not isinstance(model, VGG):
            raise ConfigError(f"model: channel pruning needs the VGG of lightning_prune.models, got {type(model)}")
        resolve_ratios(self.ratios, model)
        for name in ("images_per_class", "positions"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if self.samples is not None and (isinstance(self.samples, bool) or self.samples < 1):
            raise ConfigError(f"samples must be a positive integer or null (all sampled positions), got {self.samples}")
        check_linear_sparsity(self.linear_sparsity)
        if self.train_batches is not None and self.train_batches < 0:
            raise ConfigError(f"train_batches must be >= 0 or null, got {self.train_batches}")

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        model = pl_module.model
        if self.channels is not None:  # state restored from a checkpoint of the narrow network
            if list(model.channels) != self.channels:
                raise ConfigError(
                    f"ckpt_path: the checkpoint's ChannelPruning widths {self.channels} differ from the model's "
                    f"{list(model.channels)}; resume with the checkpoint's own hyperparameters"
                )
            pl_module.hparams["pretrained"] = False
            self.masks = zero_masks(model) if self.linear_sparsity else {}
            rank_zero_info(f"ChannelPruning: narrow network {self.channels} restored; fine-tuning goes on")
            return
        dm = trainer.datamodule
        if not hasattr(dm, "calibration_batch"):
            raise ConfigError("ChannelPruning: needs lightning_prune.data.ImageDataModule (calibration_batch)")
        if self.profile_dense and trainer.is_global_zero:
            was_training = model.training
            self.dense_entry = profile_entry(model, "dense", trainer, self.settings, pl_module.device,
                                             train_batches=self.train_batches)
            _annotate(self.dense_entry, model.channels, model.channels)
            model.train(was_training)
        images, _ = dm.calibration_batch(self.images_per_class, seed=self.seed)
        rank_zero_info(f"Channel pruning: {len(images)} calibration images, up to {self.positions} positions each, "
                       f"{self.samples or 'all'} rows per layer")
        start = time.perf_counter()
        narrow, reports = prune_channels(model, images.to(pl_module.device), self.ratios, self.samples,
                                         self.positions, self.seed, progress=self.progress and trainer.is_global_zero)
        if self.linear_sparsity:
            self.masks = prune_linear(narrow, self.linear_sparsity)
        self.seconds = time.perf_counter() - start
        self.dense_channels, self.channels = list(model.channels), list(narrow.channels)
        self.layers = [r.row() for r in reports]
        dense_params, _ = count_parameters(model)
        pl_module.model = narrow.to(pl_module.device).train(model.training)
        # load_from_checkpoint, test/fit --ckpt_path rebuild from hparams: the narrow widths, and no
        # pretrained file (its dense shapes would not fit; the checkpoint holds the weights)
        pl_module.hparams["channels"] = list(narrow.channels)
        pl_module.hparams["pretrained"] = False
        trainer.strategy.setup_optimizers(trainer)
        total, nonzero = count_parameters(narrow)
        rank_zero_info(_summary(self.layers, self.seconds, dense_params, total, nonzero))
        for logger in trainer.loggers:
            logger.log_metrics({"prune/param_reduction": 1 - nonzero / dense_params}, step=trainer.global_step)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        if self.masks:
            apply_masks(pl_module.model, self.masks)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero or self.channels is None:
            return
        ckpt = getattr(trainer.checkpoint_callback, "last_model_path", None) or None
        entry = profile_entry(pl_module.model, "channel-pruned", trainer, self.settings, pl_module.device,
                              train_batches=self.train_batches, checkpoint=ckpt)
        dense = self.dense_channels or self.channels
        _annotate(entry, pl_module.model.channels, dense, self.layers)
        entry["channels"] = list(pl_module.model.channels)
        entry["dense_channels"] = list(dense)
        entry["pruning"] = {
            "ratios": self.ratios, "images_per_class": self.images_per_class, "samples": self.samples,
            "positions": self.positions, "linear_sparsity": self.linear_sparsity, "seconds": self.seconds,
        }
        entries = [entry] if self.dense_entry is None else [self.dense_entry, entry]
        if self.dense_entry is not None:
            entry["param_reduction"] = 1 - entry["profile"]["nonzero_params"] / self.dense_entry["profile"]["params"]
        out = run_dir(trainer)
        atomic_write_bytes(out / CSV_FILE, _csv(self.layers, dense, self.channels).encode())
        atomic_write_bytes(out / JSON_FILE, (json.dumps(
            {"dense_channels": dense, "channels": self.channels, "layers": self.layers}, indent=2) + "\n").encode())
        artifacts = {"channels_csv": str(out / CSV_FILE), "channels_json": str(out / JSON_FILE)}
        if ckpt:
            artifacts["checkpoint"] = ckpt
        record(trainer, TASK, entries, artifacts)

    def state_dict(self) -> dict[str, Any]:
        return {"channels": self.channels, "dense_channels": self.dense_channels, "layers": self.layers,
                "dense_entry": self.dense_entry, "seconds": self.seconds}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.channels = state_dict.get("channels")
        self.dense_channels = state_dict.get("dense_channels")
        self.layers = state_dict.get("layers", [])
        self.dense_entry = state_dict.get("dense_entry")
        self.seconds = state_dict.get("seconds")


def _conv_widths(channels: list[int]) -> dict[str, tuple[int, int]]:
    """(in, out) channels of each conv by module name, read off a shape-only (meta) VGG."""
    with torch.device("meta"):
        model = VGG(1, channels, 1)
    return {name: (conv.in_channels, conv.out_channels) for name, conv, _ in model.conv_layers()}


def _annotate(entry: dict, channels: list[int], dense: list[int], layers: list[dict] | None = None) -> None:
    """Add channel counts (kept and dense) and the selection figures to a profile's ``layers`` rows."""
    kept, full = _conv_widths(list(channels)), _conv_widths(list(dense))
    by_name = {r["name"]: r for r in layers or []}
    for row in entry["layers"]:
        if row["name"] in kept:
            (i, o), (di, do) = kept[row["name"]], full[row["name"]]
            row.update(in_channels=i, out_channels=o, dense_in_channels=di, dense_out_channels=do)
            if row["name"] in by_name:
                r = by_name[row["name"]]
                row.update(selection=r["selection"], error_pruned=r["error_pruned"],
                           error_reconstructed=r["error_reconstructed"])


def _csv(layers: list[dict], dense: list[int], channels: list[int]) -> str:
    kept, full = _conv_widths(list(channels)), _conv_widths(list(dense))
    by_name = {r["name"]: r for r in layers}
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(CSV_COLUMNS)
    for name, (di, do) in full.items():
        i, o = kept[name]
        r = by_name.get(name, {})
        writer.writerow([name, di, i, do, o, r.get("samples", 0), r.get("alpha"), r.get("selection", "none"),
                         r.get("error_pruned"), r.get("error_reconstructed"), r.get("seconds")])
    return buffer.getvalue()


def _summary(layers: list[dict], seconds: float, dense_params: int, total: int, nonzero: int) -> str:
    lines = [f"  {r['name']:<12} {r['channels']:>4} -> {r['kept']:<4} rel. error {r['error_pruned']:.3f} -> "
             f"{r['error_reconstructed']:.3f} after least squares ({r['selection']}, {r['seconds']:.1f} s)"
             for r in layers if r["selection"] != "none"]
    return ("Channel pruning, input channels per conv:\n" + "\n".join(lines)
            + f"\n  {seconds:.1f} s; parameters {dense_params:,} -> {total:,} ({nonzero:,} non-zero), "
            f"{100 * (1 - nonzero / dense_params):.1f} % fewer")
