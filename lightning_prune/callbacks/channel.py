"""Task 2: LASSO channel pruning at fit start, fine-tuning of the narrow VGG, dense vs pruned profiles.

Thin adapter: the algorithm is in ``lightning_prune.pruning.channel``. The surgery replaces
``pl_module.model`` and updates ``hparams["channels"]`` in ``setup``, before the strategy wraps the
model and builds the optimizer, so every checkpoint holds the narrow network under the widths that
rebuild it and DDP all-reduces the narrow network's parameters.
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

from lightning_prune.callbacks.profile import profile_entry, record
from lightning_prune.callbacks.run import final_checkpoint, from_rank_zero, on_rank_zero, resume_path, run_dir
from lightning_prune.checkpoint_io import read_checkpoint
from lightning_prune.errors import ConfigError
from lightning_prune.models import vgg16_bn
from lightning_prune.models.vgg import VGG
from lightning_prune.pruning.channel import (
    Ratios,
    apply_masks,
    check_linear_sparsity,
    check_target_sparsity,
    prunable_convs,
    prune_channels,
    prune_linear,
    ratios_for_target,
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
    """Prune conv input channels by LASSO + least squares (He et al. 2017) before training starts.

    The surgery happens in ``setup``, before the strategy wraps the model (DDP) and builds the
    optimizer, so the narrow network is the one trained and all-reduced. The producer conv loses the
    same filters; the first conv's RGB input and the last conv's outputs are never pruned.
    Calibration uses a class-balanced batch of training images (eval transforms). The dense model is
    profiled before the surgery and the narrow one at fit end, both into results.json (task
    ``channel``) with the channels kept per layer, using the ``profile`` settings. A fit resumed from
    a checkpoint of the narrow network rebuilds that network and does not prune again.

    Args:
        ratios: Fraction of input channels each conv keeps: one number for convs 2-13, or
            ``{"features.N": ratio}`` for the listed convs only.
        target_sparsity: Fraction of the dense model's parameters to remove (the budget grid's
            target), counting the ``linear_sparsity`` zeros: scales ``ratios`` by the largest common
            factor that reaches it, keeping their per-layer profile; null: use ``ratios`` as given.
        images_per_class: Training images per class in the calibration batch.
        samples: Rows (image positions) sampled per layer for the regression; null: all.
        positions: Random positions sampled per image.
        linear_sparsity: Fraction of the hidden linear layers' weights zeroed too (kept zero while
            fine-tuning); null: none.
        seed: Seed of the calibration images and sampled positions.
        progress: Show a progress bar over the layers.
        profile_dense: Profile the dense model before the surgery (the ``dense`` row of the results).
    """

    def __init__(
        self,
        ratios: float | dict[str, float] = 0.5,
        target_sparsity: float | None = None,
        images_per_class: int = 50,
        samples: int | None = 5000,
        positions: int = 10,
        linear_sparsity: float | None = None,
        seed: int = 0,
        progress: bool = True,
        profile_dense: bool = True,
    ) -> None:
        # Checked in ``setup``: jsonargparse would turn an error raised here into a generic one.
        self.ratios, self.images_per_class, self.samples, self.positions = ratios, images_per_class, samples, positions
        self.linear_sparsity, self.seed, self.progress = linear_sparsity, seed, progress
        self.target_sparsity = target_sparsity
        self.ratios_used: dict[str, float] | None = None  # the ratios pruned with (scaled for target_sparsity)
        self.profile_dense = profile_dense
        self.channels: list[int] | None = None  # the narrow widths once pruned (saved in checkpoints)
        self.dense_channels: list[int] | None = None
        self.layers: list[dict] = []
        self.dense_entry: dict | None = None
        self.seconds: float | None = None
        self.masks: dict = {}

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
        check_target_sparsity(self.target_sparsity)
        self.resolved_ratios(model)  # an unreachable target fails before any work

    def resolved_ratios(self, model: VGG) -> Ratios:
        """The ratios to prune ``model`` with: as configured, or scaled to meet ``target_sparsity``."""
        if self.target_sparsity is None:
            return self.ratios
        scaled = ratios_for_target(resolve_ratios(self.ratios, model), model.channels, model.num_classes,
                                   model.classifier_width, self.linear_sparsity, self.target_sparsity)
        return {name: scaled[i] for name, i in prunable_convs(model).items() if i in scaled}

    def describe(self) -> dict[str, Any]:
        """What this callback prunes to (kept in the checkpoint; a resumed fit must agree)."""
        return {"task": TASK, "method": "lasso", "ratios": self.ratios, "linear_sparsity": self.linear_sparsity,
                "target_sparsity": self.target_sparsity}

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit" or self.channels is not None:
            return
        try:
            self.check(pl_module.model)
        except ConfigError as err:
            raise ConfigError(f"ChannelPruning.{err}") from err
        if resume_path(trainer):
            self._rebuild_resumed(trainer, pl_module)
        else:
            self._prune(trainer, pl_module)

    def _rebuild_resumed(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """A resumed fit: the narrow network of the checkpoint, built before its weights are restored."""
        checkpoint = read_checkpoint(resume_path(trainer))
        recorded = checkpoint.get("pruning") or {}
        if recorded.get("task") not in (None, TASK):
            raise ConfigError(f"ckpt_path: the checkpoint was pruned by task {recorded['task']!r}, not {TASK!r}")
        pl_module.pruning = checkpoint.get("pruning")
        pl_module.claim_pruning(self.describe())
        channels = (checkpoint.get("hyper_parameters") or {}).get("channels")
        if channels and list(channels) != list(pl_module.model.channels):
            pl_module.model = vgg16_bn(pl_module.hparams.num_classes, channels,
                                       classifier_width=pl_module.hparams.classifier_width)
            pl_module.hparams["channels"] = list(channels)
            pl_module.hparams["pretrained"] = False
        rank_zero_info(f"ChannelPruning: narrow network {list(pl_module.model.channels)} restored; fine-tuning goes on")

    def _prune(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Rank 0 profiles the dense model and prunes it; every rank gets its narrow weights by broadcast."""
        if not hasattr(trainer.datamodule, "calibration_batch"):
            raise ConfigError("ChannelPruning: needs lightning_prune.data.ImageDataModule (calibration_batch)")
        pl_module.claim_pruning(self.describe())
        model = pl_module.model
        dense_params, _ = count_parameters(model)
        result = from_rank_zero(trainer, lambda: self._select(trainer, model))
        self.dense_channels, self.channels = list(model.channels), list(result["channels"])
        self.layers, self.seconds, self.dense_entry = result["layers"], result["seconds"], result["dense_entry"]
        self.ratios_used = result["ratios"]
        narrow = vgg16_bn(pl_module.hparams.num_classes, self.channels,
                          classifier_width=pl_module.hparams.classifier_width)
        narrow.load_state_dict(result["state_dict"])
        self.masks = zero_masks(narrow) if self.linear_sparsity else {}
        pl_module.model = narrow.to(trainer.strategy.root_device).train(model.training)
        # load_from_checkpoint, test/fit --ckpt_path rebuild from hparams: the narrow widths, and no
        # pretrained file (its dense shapes would not fit; the checkpoint holds the weights)
        pl_module.hparams["channels"] = list(narrow.channels)
        pl_module.hparams["pretrained"] = False
        total, nonzero = count_parameters(narrow)
        self.param_reduction = 1 - nonzero / dense_params
        rank_zero_info(_summary(self.layers, self.seconds, dense_params, total, nonzero))

    def _select(self, trainer: L.Trainer, model: VGG) -> dict[str, Any]:
        """Profile the dense model, select channels, reconstruct: the work of rank 0 alone."""
        device = trainer.strategy.root_device
        model = model.to(device)
        dense_entry = None
        if self.profile_dense:
            was_training = model.training
            dense_entry = profile_entry(model, "dense", trainer, device)
            _annotate(dense_entry, model.channels, model.channels)
            model.train(was_training)
        images, _ = trainer.datamodule.calibration_batch(self.images_per_class, seed=self.seed)
        rank_zero_info(f"Channel pruning: {len(images)} calibration images, up to {self.positions} positions each, "
                       f"{self.samples or 'all'} rows per layer")
        start = time.perf_counter()
        ratios = self.resolved_ratios(model)
        narrow, reports = prune_channels(model, images.to(device), ratios, self.samples, self.positions,
                                         self.seed, progress=self.progress)
        if self.linear_sparsity:
            prune_linear(narrow, self.linear_sparsity)
        return {"channels": list(narrow.channels), "layers": [r.row() for r in reports], "ratios": ratios,
                "seconds": time.perf_counter() - start, "dense_entry": dense_entry,
                "state_dict": {k: v.cpu() for k, v in narrow.state_dict().items()}}

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.linear_sparsity and not self.masks:  # resumed: the zeros of the checkpoint are the masks
            self.masks = zero_masks(pl_module.model)
        reduction = getattr(self, "param_reduction", None)
        if reduction is not None:
            for logger in trainer.loggers:
                logger.log_metrics({"prune/param_reduction": reduction}, step=trainer.global_step)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        if self.masks:
            apply_masks(pl_module.model, self.masks)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.channels is not None:
            on_rank_zero(trainer, lambda: self._export(trainer, pl_module))

    def _export(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        ckpt = final_checkpoint(trainer)
        entry = profile_entry(pl_module.model, "channel-pruned", trainer, pl_module.device, checkpoint=ckpt)
        dense = self.dense_channels or self.channels
        _annotate(entry, pl_module.model.channels, dense, self.layers)
        entry["channels"] = list(pl_module.model.channels)
        entry["dense_channels"] = list(dense)
        entry["pruning"] = {
            "ratios": self.ratios, "target_sparsity": self.target_sparsity, "ratios_used": self.ratios_used,
            "images_per_class": self.images_per_class, "samples": self.samples, "positions": self.positions,
            "linear_sparsity": self.linear_sparsity, "seconds": self.seconds,
        }
        entries = [entry] if self.dense_entry is None else [self.dense_entry, entry]
        if self.dense_entry is not None:
            entry["param_reduction"] = 1 - entry["profile"]["nonzero_params"] / self.dense_entry["profile"]["params"]
        out = run_dir(trainer)
        atomic_write_bytes(out / CSV_FILE, _csv(self.layers, dense, self.channels).encode())
        atomic_write_bytes(out / JSON_FILE, (json.dumps(
            {"dense_channels": dense, "channels": self.channels, "target_sparsity": self.target_sparsity,
             "ratios": self.ratios_used, "layers": self.layers}, indent=2) + "\n").encode())
        artifacts = {"channels_csv": str(out / CSV_FILE), "channels_json": str(out / JSON_FILE)}
        if ckpt:
            artifacts["checkpoint"] = ckpt
        record(trainer, TASK, entries, artifacts)

    def state_dict(self) -> dict[str, Any]:
        return {"channels": self.channels, "dense_channels": self.dense_channels, "layers": self.layers,
                "dense_entry": self.dense_entry, "seconds": self.seconds, "ratios_used": self.ratios_used}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.channels = state_dict.get("channels")
        self.dense_channels = state_dict.get("dense_channels")
        self.layers = state_dict.get("layers", [])
        self.dense_entry = state_dict.get("dense_entry")
        self.seconds = state_dict.get("seconds")
        self.ratios_used = state_dict.get("ratios_used")


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
