"""Task 1a: sensitivity sweep, magnitude pruning through fine-tuning, sparse export and profiles.

Thin adapters: the algorithms are in ``lightning_prune.pruning``. Pruning happens at fit start,
before the first training epoch, so no checkpoint ever holds pruned weights with unpruned metrics.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import nn

from lightning_prune.callbacks.profile import profile_entry, record
from lightning_prune.callbacks.run import final_checkpoint, from_rank_zero, on_rank_zero, run_dir
from lightning_prune.errors import ConfigError
from lightning_prune.pruning.layers import prunable_modules
from lightning_prune.pruning.sensitivity import (
    DEFAULT_SPARSITIES,
    plot_curves,
    read_curves_csv,
    save_curves_csv,
    sensitivity_scan,
)
from lightning_prune.pruning.sparse import export_sparse
from lightning_prune.pruning.unstructured import (
    apply_magnitude_pruning,
    check_layer_names,
    check_sparsity,
    choose_sparsities,
    is_masked,
    layer_sizes,
    overall_sparsity,
    predicted_drop,
)

TASK = "unstructured"
CSV_FILE = "sensitivity.csv"
SPLITS = ("val", "test")
PLOT_FILE = "sensitivity.png"


def _prefixed(option: str, err: ConfigError) -> ConfigError:
    return ConfigError(f"{option}.{err}")


def log_figure(trainer: L.Trainer, tag: str, fig: Any) -> None:
    """``add_figure`` on every logger that has it (TensorBoard); others are skipped."""
    for logger in trainer.loggers:
        experiment = getattr(logger, "experiment", None)
        if hasattr(experiment, "add_figure"):
            experiment.add_figure(tag, fig, global_step=trainer.global_step, close=False)


class SensitivityScan(L.Callback):
    """At fit start: top-1 on the validation data with each layer pruned alone to each sparsity.

    Writes ``sensitivity.csv`` and ``sensitivity.png`` into the run's log folder and logs the plot
    to TensorBoard. Level 0 (the unpruned accuracy) is always included. ``curves_csv`` reuses an
    earlier sweep's CSV instead of sweeping. The curves are kept in the checkpoint, so a resumed fit
    does not sweep the pruned model again.

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
        sparsities: list[float] = list(DEFAULT_SPARSITIES),  # noqa: B006 - jsonargparse shows the default
        layers: list[str] | None = None,
        max_batches: int | None = None,
        progress: bool = True,
        curves_csv: str | None = None,
        max_images: int = 2048,
        split: str = "val",
    ) -> None:
        # Checked in ``setup``: jsonargparse would turn an error raised here into a generic one.
        self.requested = list(sparsities)
        self.sparsities = sorted({float(s) for s in sparsities} | {0.0})
        self.layers, self.max_batches, self.progress = layers, max_batches, progress
        self.curves_csv, self.max_images, self.split = curves_csv, max_images, split
        self.curves: dict[str, list[float]] | None = None
        self.artifacts: dict[str, str] = {}

    def check(self, model: nn.Module) -> None:
        """Option errors, each naming the option and what it allows."""
        for s in self.requested:
            check_sparsity(s, "SensitivityScan.sparsities")
        if self.max_batches is not None and self.max_batches < 1:
            raise ConfigError(f"SensitivityScan.max_batches must be >= 1 or null, got {self.max_batches}")
        if self.split not in SPLITS:
            raise ConfigError(f"SensitivityScan.split: unknown split {self.split!r}; choose one of {', '.join(SPLITS)}")
        if self.max_images < 1:
            raise ConfigError(f"SensitivityScan.max_images must be >= 1, got {self.max_images}")
        if self.curves_csv is not None and not Path(self.curves_csv).is_file():
            raise ConfigError(f"SensitivityScan.curves_csv: no such file {self.curves_csv}")
        if self.layers is not None:
            try:
                check_layer_names(self.layers, model, "layers")
            except ConfigError as err:
                raise _prefixed("SensitivityScan", err) from err

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.check(pl_module.model)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.run(trainer, pl_module)

    def run(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, list[float]]:
        """The curves, swept once per fit (later calls and resumed fits reuse them)."""
        if self.curves is not None:
            return self.curves
        if any(is_masked(m) for m in prunable_modules(pl_module.model).values()):
            raise ConfigError("SensitivityScan: the model is already pruned; sweep the dense model")
        if self.curves_csv is not None:
            self.sparsities, curves = read_curves_csv(self.curves_csv)
            try:
                check_layer_names(list(curves), pl_module.model, "curves_csv")
            except ConfigError as err:
                raise _prefixed("SensitivityScan", err) from err
            rank_zero_info(f"Sensitivity curves read from {self.curves_csv}")
            self.curves = curves
        else:
            rank_zero_info(f"Sensitivity sweep: {len(self.layers or prunable_modules(pl_module.model))} layers x "
                           f"{len(self.sparsities) - 1} sparsities on the {self.split} split")
            # Each rank sweeps its share of the validation batches; the counts are summed over the ranks.
            reduce = (lambda t: trainer.strategy.reduce(t, reduce_op="sum")) if trainer.world_size > 1 else None
            self.curves = sensitivity_scan(
                pl_module.model, self.dataloader(trainer), self.sparsities, self.layers,
                progress=self.progress and trainer.is_global_zero, max_batches=self.max_batches,
                max_images=self.max_images, shard=(trainer.global_rank, trainer.world_size), reduce=reduce,
            )
        if trainer.is_global_zero:
            out = run_dir(trainer)
            csv_path = save_curves_csv(self.curves, self.sparsities, out / CSV_FILE)
            where = "validation" if self.split == "val" else "test"
            fig = plot_curves(self.curves, self.sparsities, f"Sensitivity on {trainer.datamodule.dataset} ({where})")
            fig.savefig(out / PLOT_FILE, bbox_inches="tight")
            log_figure(trainer, "sensitivity", fig)
            import matplotlib.pyplot as plt

            plt.close(fig)
            self.artifacts = {"sensitivity_csv": str(csv_path), "sensitivity_plot": str(out / PLOT_FILE)}
        return self.curves

    def dataloader(self, trainer: L.Trainer) -> Any:
        dm = trainer.datamodule
        if self.split == "val" and getattr(dm, "val_size", 1) == 0:
            rank_zero_warn("SensitivityScan.split=val but data.val_size is 0: the validation set is the test set")
        return dm.val_dataloader() if self.split == "val" else dm.test_dataloader()

    def describe(self) -> dict[str, Any]:
        """What results.json says about the sweep."""
        return {"split": self.split, "sparsities": self.sparsities, "layers": self.layers,
                "max_batches": self.max_batches, "curves_csv": self.curves_csv}

    def state_dict(self) -> dict[str, Any]:
        return {"sparsities": self.sparsities, "curves": self.curves, "artifacts": self.artifacts}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.curves = state_dict.get("curves")
        self.sparsities = state_dict.get("sparsities", self.sparsities)
        self.artifacts = state_dict.get("artifacts", {})


def export_and_profile_sparse(
    trainer: L.Trainer,
    model: nn.Module,
    device: torch.device,
    masked_checkpoint: str | None = None,
) -> tuple[list[dict], dict[str, str]]:
    """Export masks + COO weights into the run folder, check them, and profile three variants.

    ``pruned-masked`` (the fine-tuned model as trained: dense weights times masks),
    ``pruned-sparse-coo`` (COO weights; convs densify per call, linears use ``torch.sparse.mm``)
    and ``pruned-densified-once`` (the COO file made dense at load). MACs are the dense operators'
    for all three. Returns the results.json entries and artifact paths.
    """
    export = export_sparse(model, run_dir(trainer))
    if export.total_mismatches:
        rank_zero_warn(f"COO indices differ from the masks in {export.total_mismatches} places: {export.check_path}")
    common = dict(trainer=trainer, device=device)
    entries = [
        profile_entry(model, "pruned-masked", macs_model=export.permanent, checkpoint=masked_checkpoint, **common),
        profile_entry(export.sparse, "pruned-sparse-coo", macs_model=export.permanent,
                      checkpoint=str(export.sparse_path), **common),
        profile_entry(export.densified, "pruned-densified-once", checkpoint=str(export.sparse_path), **common),
    ]
    entries[1]["coo_mismatches"] = export.total_mismatches
    artifacts = {"masks": str(export.masks_path), "sparse_coo": str(export.sparse_path),
                 "coo_check": str(export.check_path)}
    return entries, artifacts


class MagnitudePruning(L.Callback):
    """Prune by weight magnitude at fit start, keep the masks through fine-tuning, export at fit end.

    Exactly one of ``sparsities`` (``{layer: sparsity}``), ``target_sparsity`` (overall fraction of
    prunable weights, split over layers by the sensitivity curves at the least predicted loss) or
    ``max_drop`` (per layer, the highest sparsity losing at most that many top-1 points). The
    curves come from the ``SensitivityScan`` callback (which can also read an earlier sweep's CSV).
    Before pruning the dense model is profiled; at fit end the masked, COO and densified-once
    variants are, all into results.json (task ``unstructured``), with the ``profile`` settings.

    Args:
        sparsities: Per-layer sparsities, e.g. ``{"features.0": 0.3, "classifier.6": 0.5}``.
        target_sparsity: Overall fraction of conv and linear weights to prune (0 <= t < 1), split over
            the layers by the sensitivity curves.
        max_drop: Per layer, the highest sparsity whose single-layer top-1 drop is at most this many points.
        export: Write masks and torch.sparse COO weights at fit end and profile the sparse variants.
        profile_dense: Profile the dense model before pruning (the ``dense`` row of the results).
    """

    def __init__(
        self,
        sparsities: dict[str, float] | None = None,
        target_sparsity: float | None = None,
        max_drop: float | None = None,
        export: bool = True,
        profile_dense: bool = True,
    ) -> None:
        self.sparsities, self.target_sparsity, self.max_drop = sparsities, target_sparsity, max_drop
        self.export, self.profile_dense = export, profile_dense
        self.chosen: dict[str, float] | None = None
        self.dense_entry: dict | None = None
        self.predicted: float | None = None

    def _scan(self, trainer: L.Trainer) -> SensitivityScan | None:
        return next((c for c in trainer.callbacks if isinstance(c, SensitivityScan)), None)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Check every option before any long work starts (errors raised in ``__init__`` get blurred)."""
        scan = self._scan(trainer)
        if scan is not None:
            scan.check(pl_module.model)
        try:
            self._check(trainer, pl_module.model)
        except ConfigError as err:
            raise _prefixed("MagnitudePruning", err) from err

    def _check(self, trainer: L.Trainer, model: nn.Module) -> None:
        given = [k for k, v in (("sparsities", self.sparsities), ("target_sparsity", self.target_sparsity),
                                ("max_drop", self.max_drop)) if v is not None]
        if len(given) != 1:
            raise ConfigError(
                "sparsities: set exactly one of sparsities ({layer: sparsity}), target_sparsity (0 <= t < 1) "
                f"or max_drop (top-1 points >= 0); got {', '.join(given) or 'none'}"
            )
        if self.sparsities is not None:
            for name, s in self.sparsities.items():
                check_sparsity(s, f"sparsities.{name}")
            check_layer_names(list(self.sparsities), model, "sparsities")
            return
        option = given[0]
        if self.target_sparsity is not None:
            check_sparsity(self.target_sparsity, "target_sparsity")
        if self.max_drop is not None and (isinstance(self.max_drop, bool) or self.max_drop < 0):
            raise ConfigError(f"max_drop must be a number of top-1 points >= 0, got {self.max_drop}")
        scan = self._scan(trainer)
        if scan is None:
            raise ConfigError(
                f"{option} needs sensitivity curves: add a lightning_prune.callbacks.unstructured.SensitivityScan "
                "callback (its curves_csv option reuses an earlier sweep)"
            )
        if self.target_sparsity is not None and self.chosen is None and scan.curves_csv is None:
            sizes = layer_sizes(model)
            top = max(scan.sparsities)
            reachable = overall_sparsity({n: top for n in (scan.layers or sizes)}, sizes)
            if reachable < self.target_sparsity:
                raise ConfigError(
                    f"target_sparsity={self.target_sparsity} cannot be reached: SensitivityScan.sparsities stop "
                    f"at {top:g}, which gives at most {reachable:.4f} overall; lower target_sparsity or add higher "
                    "levels to SensitivityScan.sparsities"
                )

    def _curves(self, trainer: L.Trainer, pl_module: L.LightningModule):
        if self.sparsities is not None:
            return None, None
        scan = self._scan(trainer)
        return scan.run(trainer, pl_module), scan.sparsities

    def describe(self) -> dict[str, Any]:
        """What this callback prunes to (kept in the checkpoint; a resumed fit must agree)."""
        return {"task": TASK, "method": "magnitude", "sparsities": self.sparsities,
                "target_sparsity": self.target_sparsity, "max_drop": self.max_drop}

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        model = pl_module.model
        pl_module.claim_pruning(self.describe())
        if any(is_masked(m) for m in prunable_modules(model).values()):
            if self.chosen is None:
                raise ConfigError("MagnitudePruning: the model is already pruned (masked); start from a dense model")
            rank_zero_info("MagnitudePruning: masks restored from the checkpoint, fine-tuning goes on")
            return
        if self.profile_dense and self.dense_entry is None:
            was_training = model.training
            self.dense_entry = on_rank_zero(trainer, lambda: profile_entry(model, "dense", trainer, pl_module.device))
            model.train(was_training)
        if self.chosen is None:
            curves, levels = self._curves(trainer, pl_module)  # every rank sweeps its share
            try:
                self.chosen = from_rank_zero(trainer, lambda: choose_sparsities(
                    model, self.sparsities, self.target_sparsity, self.max_drop, curves, levels))
            except ConfigError as err:
                raise _prefixed("MagnitudePruning", err) from err
            if curves is not None:
                self.predicted = predicted_drop(curves, levels, self.chosen)
        achieved = apply_magnitude_pruning(model, self.chosen)
        # Pruning renames weight -> weight_orig (parameter order changes): rebuild the optimizer so a
        # resumed fit, whose masks exist before the optimizer is built, restores its state in the same order.
        trainer.strategy.setup_optimizers(trainer)
        sizes = layer_sizes(model)
        overall = overall_sparsity(achieved, sizes)
        lines = [f"  {n:<14} {sizes[n]:>10,}  {achieved.get(n, 0.0):.3f}" for n in sizes]
        drop = "" if self.predicted is None else (
            f"\n  sum of the single-layer top-1 drops read off the curves: {self.predicted:.1f} points "
            "(what the choice minimises; fine-tuning recovers much of it)"
        )
        rank_zero_info("Magnitude pruning, per layer (weights, sparsity):\n" + "\n".join(lines)
                       + f"\n  overall sparsity {overall:.4f} of {sum(sizes.values()):,} prunable weights{drop}")
        for logger in trainer.loggers:
            logger.log_metrics({"prune/overall_sparsity": overall}, step=trainer.global_step)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.export:
            on_rank_zero(trainer, lambda: self._export(trainer, pl_module))

    def _export(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        ckpt = final_checkpoint(trainer)
        entries, artifacts = export_and_profile_sparse(trainer, pl_module.model, pl_module.device, ckpt)
        if self.dense_entry is not None:
            entries.insert(0, self.dense_entry)
        scan = self._scan(trainer)
        extra = {}
        if scan is not None:
            artifacts.update(scan.artifacts)
            extra["sweep"] = scan.describe()
        if ckpt:
            artifacts["checkpoint"] = ckpt
        record(trainer, TASK, entries, artifacts, extra)

    def state_dict(self) -> dict[str, Any]:
        return {"chosen": self.chosen, "dense_entry": self.dense_entry, "predicted": self.predicted}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.chosen = state_dict.get("chosen")
        self.dense_entry = state_dict.get("dense_entry")
        self.predicted = state_dict.get("predicted")
