"""Task 1a's sweep: each layer pruned alone to each sparsity, top-1 measured; the curves the 1a choice reads."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import lightning as L
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import nn

from lightning_prune.artifacts import read_curves_csv
from lightning_prune.callbacks.base import refused_as
from lightning_prune.errors import ConfigError
from lightning_prune.options import PositiveInt, Sparsity, plain
from lightning_prune.pruning.layers import prunable_modules
from lightning_prune.pruning.sensitivity import DEFAULT_SPARSITIES, sensitivity_scan
from lightning_prune.pruning.unstructured import check_layer_names, is_masked


class SensitivityScan(L.Callback):
    """At fit start: top-1 on the validation data with each layer pruned alone to each sparsity.

    Level 0 (the unpruned accuracy) is always included. ``curves_csv`` reuses an earlier sweep's
    CSV instead of sweeping. The curves are kept in the checkpoint, so a resumed fit does not sweep
    the pruned model again; the recorder writes them (``sensitivity.csv``, ``sensitivity.png``) and
    logs the plot to TensorBoard.

    Args:
        sparsities: Sparsity levels each layer is pruned to alone (0 is always added).
        layers: Layer names to sweep (e.g. ``features.0``, ``classifier.6``); null: every conv and linear.
        max_batches: Validation batches per measurement; null: all.
        progress: Show a progress bar with the layer and level being swept.
        curves_csv: Reuse an earlier sweep's ``sensitivity.csv`` instead of sweeping.
        max_images: Images (levels stacked along the batch) one pass holds; lower it if the sweep runs
            out of memory.
        split: Images the sweep measures: ``val`` (training images held out by ``data.val_size``) or
            ``test``. Weights trained on every training image (chenyaofo's) have no held-out training
            images, so their configs sweep ``test``; results.json and the report say which was used.
    """

    def __init__(
        self,
        sparsities: list[Sparsity] = list(DEFAULT_SPARSITIES),  # noqa: B006 - jsonargparse shows the default
        layers: list[str] | None = None,
        max_batches: PositiveInt | None = None,
        progress: bool = True,
        curves_csv: str | None = None,
        max_images: PositiveInt = 2048,
        split: Literal["val", "test"] = "val",
    ) -> None:
        self.sparsities = sorted({float(s) for s in sparsities} | {0.0})
        self.layers, self.max_batches, self.progress = layers, plain(max_batches), progress
        self.curves_csv, self.max_images, self.split = curves_csv, int(max_images), split
        self.curves: dict[str, list[float]] | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """The options no type can check: files and layer names."""
        with refused_as("SensitivityScan."):
            if self.curves_csv is not None and not Path(self.curves_csv).is_file():
                raise ValueError(f"curves_csv: no such file {self.curves_csv}")
            check_layer_names(self.layers or [], pl_module.model, "layers")

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.run(trainer, pl_module.model)

    def run(self, trainer: L.Trainer, model: nn.Module) -> dict[str, list[float]]:
        """The curves, swept once per fit (later calls and resumed fits reuse them)."""
        if self.curves is not None:
            return self.curves
        if any(is_masked(m) for m in prunable_modules(model).values()):
            raise ConfigError("SensitivityScan: the model is already pruned; sweep the dense model")
        if self.curves_csv is not None:
            self.sparsities, curves = read_curves_csv(self.curves_csv)
            with refused_as("SensitivityScan."):
                check_layer_names(list(curves), model, "curves_csv")
            rank_zero_info(f"Sensitivity curves read from {self.curves_csv}")
            self.curves = curves
            return curves
        rank_zero_info(f"Sensitivity sweep: {len(self.layers or prunable_modules(model))} layers x "
                       f"{len(self.sparsities) - 1} sparsities on the {self.split} split")
        # Each rank sweeps its share of the batches; the counts are summed over the ranks.
        reduce = (lambda t: trainer.strategy.reduce(t, reduce_op="sum")) if trainer.world_size > 1 else None
        self.curves = sensitivity_scan(
            model, self.dataloader(trainer), self.sparsities, self.layers, progress=self.progress and
            trainer.is_global_zero, max_batches=self.max_batches, max_images=self.max_images,
            shard=(trainer.global_rank, trainer.world_size), reduce=reduce,
        )
        return self.curves

    def dataloader(self, trainer: L.Trainer) -> Any:
        dm = trainer.datamodule
        if self.split == "val" and getattr(dm, "val_size", 1) == 0:
            rank_zero_warn("SensitivityScan.split=val but data.val_size is 0: the validation set is the test set")
        return dm.val_dataloader() if self.split == "val" else dm.test_dataloader()

    def title(self, dataset: str) -> str:
        return f"Sensitivity on {dataset} ({'validation' if self.split == 'val' else 'test'})"

    def describe(self) -> dict[str, Any]:
        """What results.json says about the sweep, with its curves (top-1 % per layer, one per level)."""
        return {"split": self.split, "sparsities": self.sparsities, "layers": self.layers,
                "max_batches": self.max_batches, "curves_csv": self.curves_csv, "curves": self.curves}

    def state_dict(self) -> dict[str, Any]:
        return {"sparsities": self.sparsities, "curves": self.curves}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.curves = state_dict.get("curves")
        self.sparsities = state_dict.get("sparsities", self.sparsities)
