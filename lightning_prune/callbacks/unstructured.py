"""Task 1a: magnitude pruning to per-layer sparsities chosen from the sweep, masks kept through fine-tuning.

Pruning happens at fit start, before the first training epoch, so no checkpoint ever holds pruned
weights with unpruned metrics. The algorithms are in ``lightning_prune.pruning``.
"""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.utilities import rank_zero_info
from torch import nn

from lightning_prune.callbacks.base import PruningCallback, PruningRecord, callback_of, log_metrics, refused_as
from lightning_prune.callbacks.run import from_rank_zero
from lightning_prune.callbacks.sensitivity import SensitivityScan
from lightning_prune.errors import ConfigError
from lightning_prune.names import MASKED, Allocation
from lightning_prune.options import NonNegativeFloat, Sparsity, plain
from lightning_prune.pruning.allocation import (
    check_reachable,
    choose_global,
    choose_sparsities,
    choose_uniform,
    layer_floors,
    predicted_drop,
    sparsity_caps,
)
from lightning_prune.pruning.layers import prunable_modules
from lightning_prune.pruning.unstructured import (
    apply_magnitude_pruning,
    check_layer_names,
    is_masked,
    layer_sizes,
    overall_sparsity,
)


class MagnitudePruning(PruningCallback):
    """Prune by weight magnitude at fit start, keep the masks through fine-tuning, hand the model on at fit end.

    Exactly one of ``sparsities`` (``{layer: sparsity}``), ``target_sparsity`` (split over the layers
    as ``allocation`` says) or ``max_drop`` (per layer, the highest sparsity losing at most that many
    top-1 points). The curves come from the ``SensitivityScan`` callback (which can also read an
    earlier sweep's CSV). Recorded under task ``unstructured``: the dense model, then the masked, COO
    and densified-once variants.

    Args:
        sparsities: Per-layer sparsities, e.g. ``{"features.0": 0.3, "classifier.6": 0.5}``.
        target_sparsity: Share of conv and linear weights zeroed (0 <= t < 1), split over the layers by
            the sensitivity curves.
        max_drop: Per layer, the highest sparsity whose single-layer top-1 drop is at most this many points.
        allocation: How ``target_sparsity`` is split over the layers: ``sensitivity`` (by the sweep's curves,
            at the least predicted loss), or the controls ``global`` (one magnitude threshold over all
            weights, Lightning's ``ModelPruning`` default) and ``uniform`` (every layer at the target),
            which need no sweep.
        record: At fit end, write masks and torch.sparse COO weights, profile the model and its sparse variants
            and write results.json; false: only the sweep's curves are written.
        profile_dense: Profile the dense model before pruning (the ``dense`` row of the results).
    """

    task = "unstructured"
    state_keys = ("chosen", "predicted")

    def __init__(self, sparsities: dict[str, Sparsity] | None = None, target_sparsity: Sparsity | None = None,
                 max_drop: NonNegativeFloat | None = None, allocation: Allocation = "sensitivity", record: bool = True,
                 profile_dense: bool = True) -> None:
        self.sparsities, self.target_sparsity = plain(sparsities), plain(target_sparsity)
        self.max_drop, self.allocation = plain(max_drop), allocation
        self.record, self.profile_dense = record, profile_dense
        self.chosen: dict[str, float] | None = None
        self.predicted: float | None = None

    def check(self, trainer: L.Trainer, model: nn.Module) -> None:
        given = [k for k in ("sparsities", "target_sparsity", "max_drop") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("sparsities: set exactly one of sparsities ({layer: sparsity}), target_sparsity "
                             f"(0 <= t < 1) or max_drop (top-1 points >= 0); got {', '.join(given) or 'none'}")
        if self.sparsities is not None:
            return check_layer_names(list(self.sparsities), model, "sparsities")
        if self.allocation != "sensitivity":
            if self.target_sparsity is None:
                raise ValueError(f"allocation={self.allocation!r} splits a target_sparsity; set target_sparsity")
            if self.chosen is None:  # refused here, before any training, when a layer would fall under its floor
                self.split(model)
            return None
        scan = callback_of(trainer, SensitivityScan)
        if scan is None:
            raise ValueError(f"{given[0]} needs sensitivity curves: add a SensitivityScan callback (its curves_csv "
                             "option reuses an earlier sweep)")
        if self.target_sparsity is not None and self.chosen is None and scan.curves_csv is None:
            sizes = layer_sizes(model)  # before the sweep: the levels it will measure must reach the target
            check_reachable(self.target_sparsity, max(scan.sparsities), sizes, scan.layers or list(sizes),
                            sparsity_caps(layer_floors(model), sizes))

    def describe(self) -> dict[str, Any]:
        return {"task": self.task, "method": "magnitude", "allocation": self.allocation, "sparsities": self.sparsities,
                "target_sparsity": self.target_sparsity, "max_drop": self.max_drop}

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_fit_start(trainer, pl_module)
        model = pl_module.model
        if any(is_masked(m) for m in prunable_modules(model).values()):
            if self.chosen is None:
                raise ConfigError("MagnitudePruning: the model is already pruned (masked); start from a dense model")
            return rank_zero_info("MagnitudePruning: masks restored from the checkpoint, fine-tuning goes on")
        if self.chosen is None:
            self.choose(trainer, model)
        achieved = apply_magnitude_pruning(model, self.chosen, whole_layers=self.allocation == "global")
        # Pruning renames weight -> weight_orig (parameter order changes): rebuild the optimizer so a
        # resumed fit, whose masks exist before the optimizer is built, restores its state in the same order.
        trainer.strategy.setup_optimizers(trainer)
        sizes = layer_sizes(model)
        overall = overall_sparsity(achieved, sizes)
        rank_zero_info("Magnitude pruning, per layer (weights, sparsity):\n" + "\n".join(
            f"  {n:<14} {sizes[n]:>10,}  {achieved.get(n, 0.0):.3f}" for n in sizes)
            + f"\n  overall sparsity {overall:.4f} of {sum(sizes.values()):,} prunable weights")
        log_metrics(trainer, {"prune/overall_sparsity": overall})

    def split(self, model: nn.Module) -> dict[str, float]:
        """The controls' per-layer sparsities: one threshold over all weights, or every layer at the target."""
        return (choose_global if self.allocation == "global" else choose_uniform)(model, self.target_sparsity)

    def choose(self, trainer: L.Trainer, model: nn.Module) -> None:
        """The per-layer sparsities: rank 0 decides from the curves every rank swept its share of."""
        curves = levels = None
        if self.allocation == "sensitivity" and self.sparsities is None:
            scan = callback_of(trainer, SensitivityScan)
            curves, levels = scan.run(trainer, model), scan.sparsities
        control = self.allocation != "sensitivity" and self.sparsities is None

        def decide() -> dict[str, float]:
            if control:
                return self.split(model)
            return choose_sparsities(model, self.sparsities, self.target_sparsity, self.max_drop, curves, levels)

        with refused_as("MagnitudePruning."):
            self.chosen = from_rank_zero(trainer, decide)
        if curves is not None:
            self.predicted = predicted_drop(curves, levels, self.chosen)
            rank_zero_info(f"Sum of the single-layer top-1 drops read off the curves: {self.predicted:.1f} points "
                           "(what the choice minimises; fine-tuning recovers much of it)")

    def handover(self, trainer: L.Trainer, pl_module: L.LightningModule) -> PruningRecord | None:
        """The masked model (profiled and recorded unless ``record`` is off) and the sweep's curves."""
        scan = callback_of(trainer, SensitivityScan)
        floors = {"layer_floors": layer_floors(pl_module.model)}  # the fewest weights each layer was allowed
        if scan is None or scan.curves is None or self.allocation != "sensitivity":
            return PruningRecord(MASKED, masked=True, extra=floors) if self.record else None
        title = scan.title(getattr(trainer.datamodule, "dataset", ""))
        return PruningRecord(MASKED, masked=True, extra={"sweep": scan.describe(), **floors}, record=self.record,
                             curves=(scan.curves, scan.sparsities, title))
