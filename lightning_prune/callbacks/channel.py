"""Task 2: LASSO channel pruning before training, fine-tuning of the narrow VGG, dense vs pruned profiles.

The surgery replaces ``pl_module.model`` in ``setup``, before the strategy wraps it (DDP) and builds the
optimizer, so every checkpoint holds the narrow network under the widths that rebuild it. The algorithm
is in ``lightning_prune.pruning.channel``.
"""

from __future__ import annotations

import time
from typing import Any

import lightning as L
from jsonargparse.typing import OpenUnitInterval
from lightning.pytorch.utilities import rank_zero_info
from torch import nn

from lightning_prune.artifacts import annotate_channels, channel_files
from lightning_prune.callbacks.base import PruningCallback, PruningRecord
from lightning_prune.callbacks.run import from_rank_zero, resume_path
from lightning_prune.checkpoint_io import read_checkpoint
from lightning_prune.models import vgg16_bn
from lightning_prune.models.vgg import VGG
from lightning_prune.names import NARROW, Selection
from lightning_prune.options import KeepRatio, PositiveInt, Sparsity, plain
from lightning_prune.pruning.channel import prune_channels, resolve_ratios, summary, target_ratios
from lightning_prune.pruning.channel.reconstruction import hold_zeros, prune_linear, zero_masks
from lightning_prune.pruning.layers import count_parameters

ParameterShare = OpenUnitInterval  # a share of the dense model's parameters removed, in (0, 1): 0 would remove none


class ChannelPruning(PruningCallback):
    """Prune conv input channels by LASSO + least squares (He et al. 2017) before training starts.

    The producer conv loses the same filters; the first conv's RGB input and the last conv's outputs
    are never pruned. Calibration uses a class-balanced batch of training images (eval transforms).
    Recorded under task ``channel``: the dense model (profiled before the surgery) and the narrow
    one with the channels kept per layer. A fit resumed from a checkpoint of the narrow network
    rebuilds that network and does not prune again.

    Args:
        ratios: Fraction of input channels each conv keeps: one number for convs 2-13, or
            ``{"features.N": ratio}`` for the listed convs only.
        target_sparsity: Share of the dense model's parameters removed, in (0, 1) (the budget grid's target),
            counting the ``linear_sparsity`` zeros: scales ``ratios`` by the largest common factor that
            reaches it, keeping their per-layer profile; null: use ``ratios`` as given.
        images_per_class: Training images per class in the calibration batch.
        samples: Rows (image positions) sampled per layer for the regression; null: all.
        positions: Random positions sampled per image.
        linear_sparsity: Fraction of the hidden linear layers' weights zeroed too (kept zero while
            fine-tuning); null: none.
        seed: Seed of the calibration images and sampled positions.
        selection: How each conv's kept channels are chosen: ``lasso`` (He et al.), or the controls ``l1``
            (the producer's filters of largest L1 norm, Li et al. 2017) and ``random``, at the same ratios.
        reconstruct: Refit the kept channels' weights by least squares (He et al.); false: keep their weights.
        progress: Show a progress bar over the layers.
        profile_dense: Profile the dense model before the surgery (the ``dense`` row of the results).
    """

    task = "channel"
    state_keys = ("channels", "dense_channels", "layers", "seconds", "ratios_used")

    def __init__(self, ratios: KeepRatio | dict[str, KeepRatio] = 0.5, target_sparsity: ParameterShare | None = None,
                 images_per_class: PositiveInt = 50, samples: PositiveInt | None = 5000, positions: PositiveInt = 10,
                 linear_sparsity: Sparsity | None = None, seed: int = 0, selection: Selection = "lasso",
                 reconstruct: bool = True, progress: bool = True, profile_dense: bool = True) -> None:
        self.ratios, self.target_sparsity, self.linear_sparsity = plain(ratios), plain(target_sparsity), plain(
            linear_sparsity)
        self.images_per_class, self.samples, self.positions = plain(images_per_class), plain(samples), plain(positions)
        self.seed, self.progress, self.profile_dense = seed, progress, profile_dense
        self.selection, self.reconstruct = selection, reconstruct
        self.channels: list[int] | None = None  # the narrow widths once pruned (saved in checkpoints)
        self.dense_channels: list[int] | None = None
        self.layers: list[dict] = []
        self.seconds: float | None = None
        self.ratios_used: dict[str, float] | None = None  # the ratios pruned with (scaled for target_sparsity)
        self.plan: float | dict[str, float] | None = None  # the ratios to prune with, decided in check
        self.masks: dict = {}

    def check(self, trainer: L.Trainer, model: nn.Module) -> None:
        if not isinstance(model, VGG):
            raise ValueError(f"model: channel pruning needs the VGG of lightning_prune.models, got {type(model)}")
        if not hasattr(trainer.datamodule, "calibration_batch"):
            raise ValueError("datamodule: needs calibration_batch (lightning_prune.data.ImageDataModule)")
        keep = resolve_ratios(self.ratios, model)  # the layer names: what no type checks
        if self.channels is None and not resume_path(trainer):  # an unreachable target fails before any work
            self.plan = self.ratios if self.target_sparsity is None else target_ratios(
                keep, model, self.target_sparsity, self.linear_sparsity)

    def describe(self) -> dict[str, Any]:
        return {"task": self.task, "method": self.selection, "reconstruct": self.reconstruct, "ratios": self.ratios,
                "linear_sparsity": self.linear_sparsity, "target_sparsity": self.target_sparsity}

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit" or self.channels is not None:
            return
        super().setup(trainer, pl_module, stage)
        if resume_path(trainer):  # the narrow network of the checkpoint, built before its weights are restored
            hparams = read_checkpoint(resume_path(trainer)).get("hyper_parameters") or {}
            pl_module.replace_model(vgg16_bn(pl_module.hparams.num_classes, hparams.get("channels"),
                                             classifier_width=pl_module.hparams.classifier_width))
            return rank_zero_info(f"ChannelPruning: narrow network {hparams.get('channels')} restored")
        dense = pl_module.model.to(trainer.strategy.root_device)
        result = from_rank_zero(trainer, lambda: self.select(trainer, dense))  # rank 0 prunes; all get the weights
        self.dense_channels, self.channels = list(dense.channels), list(result["channels"])
        self.layers, self.seconds, self.ratios_used = result["layers"], result["seconds"], result["ratios"]
        narrow = vgg16_bn(pl_module.hparams.num_classes, self.channels, classifier_width=dense.classifier_width)
        narrow.load_state_dict(result["state_dict"])
        pl_module.replace_model(narrow.to(trainer.strategy.root_device).train(dense.training))
        self.masks = zero_masks(narrow) if self.linear_sparsity else {}
        rank_zero_info(summary(self.layers, self.seconds, count_parameters(dense)[0], *count_parameters(narrow)))

    def select(self, trainer: L.Trainer, model: VGG) -> dict[str, Any]:
        """Select channels and reconstruct on a calibration batch: the work of rank 0 alone."""
        images, _ = trainer.datamodule.calibration_batch(self.images_per_class, seed=self.seed)
        start = time.perf_counter()
        narrow, reports = prune_channels(model, images.to(trainer.strategy.root_device), self.plan, self.samples,
                                         self.positions, self.seed, self.progress, self.selection, self.reconstruct)
        if self.linear_sparsity:  # the hidden linears' smallest weights zeroed too
            prune_linear(narrow, self.linear_sparsity)
        return {"channels": list(narrow.channels), "layers": [r.row() for r in reports], "ratios": self.plan,
                "seconds": time.perf_counter() - start,
                "state_dict": {k: v.cpu() for k, v in narrow.state_dict().items()}}

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_fit_start(trainer, pl_module)
        if self.linear_sparsity and not self.masks:  # resumed: the zeros of the checkpoint are the masks
            self.masks = zero_masks(pl_module.model)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        if self.masks:
            hold_zeros(pl_module.model, self.masks)

    def handover(self, trainer: L.Trainer, pl_module: L.LightningModule) -> PruningRecord | None:
        if self.channels is None:
            return None
        dense, channels = self.dense_channels or self.channels, list(pl_module.model.channels)
        settings = {**self.describe(), "ratios_used": self.ratios_used, "images_per_class": self.images_per_class,
                    "samples": self.samples, "positions": self.positions, "seconds": self.seconds}

        def annotate(entry: dict, dense_entry: dict | None) -> None:
            annotate_channels(entry, channels, dense, self.layers)
            entry.update(channels=channels, dense_channels=list(dense), pruning=settings)
            if dense_entry is not None:
                annotate_channels(dense_entry, dense, dense)
                entry["param_reduction"] = 1 - entry["profile"]["nonzero_params"] / dense_entry["profile"]["params"]

        files = channel_files(self.layers, dense, channels, self.target_sparsity, self.ratios_used)
        return PruningRecord(NARROW, annotate=annotate, files=files)
