"""The LightningModule that wraps VGG16-BN: loss, top-1/top-5 metrics and the SGD recipe."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torchmetrics.classification import MulticlassAccuracy

from lightning_prune.errors import ConfigError
from lightning_prune.models import scaled_channels, vgg16_bn, vgg_from_state
from lightning_prune.models.pretrained import read_pretrained
from lightning_prune.models.vgg import VGG16_CHANNELS
from lightning_prune.options import PositiveFloat
from lightning_prune.pruning.unstructured import restore_masks

STAGES = ("train", "val", "test")


class ImageClassifier(L.LightningModule):
    """VGG16-BN classifier trained with chenyaofo's recipe (SGD, nesterov, cosine schedule).

    ``channels`` is saved with the hyperparameters and updated by channel surgery, so
    ``load_from_checkpoint`` rebuilds a network of the same widths. ``pretrained`` is not saved:
    a checkpoint already holds the weights.

    Args:
        num_classes: Output classes (linked from ``data.num_classes``).
        channels: The 13 conv widths; null: VGG16's widths times ``width_multiplier``.
        width_multiplier: Scales VGG16's conv widths (0.25: a quarter-width model for quick runs).
        classifier_width: Width of the two hidden linear layers.
        pretrained: ``true``: chenyaofo's CIFAR weights (downloaded); a path: a state dict or Lightning
            checkpoint; ``run:<experiment>``: the newest finished run of that experiment.
        lr: Peak learning rate of SGD.
        momentum: SGD momentum.
        weight_decay: L2 penalty of SGD.
        nesterov: Use Nesterov momentum.
        cosine_schedule: Anneal the learning rate to 0 over the run (per step).
    """

    def __init__(
        self,
        num_classes: int = 10,
        channels: list[int] | None = None,
        width_multiplier: PositiveFloat = 1.0,
        classifier_width: int = 512,
        pretrained: bool | str = False,
        lr: PositiveFloat = 0.1,
        momentum: float = 0.9,
        weight_decay: float = 5e-4,
        nesterov: bool = True,
        cosine_schedule: bool = True,
    ) -> None:
        super().__init__()
        if channels is None:
            channels = scaled_channels(width_multiplier)
        if len(channels) != len(VGG16_CHANNELS) or any(isinstance(c, bool) or int(c) < 1 for c in channels):
            raise ConfigError(f"model.channels: {len(VGG16_CHANNELS)} conv widths >= 1 (null: VGG16's times "
                              f"width_multiplier), got {len(channels)}: {list(channels)}")
        width_multiplier, lr = float(width_multiplier), float(lr)  # checkpoints load builtin types only
        self.save_hyperparameters(ignore=["pretrained"])
        # The pruning steps the pretrained weights went through (channel pruning before this 1a, say).
        self.lineage: list[dict[str, Any]] = []
        if isinstance(pretrained, str):  # a file: its own widths, narrow or not, and its lineage
            state, self.lineage = read_pretrained(pretrained)
            self.model = vgg_from_state(num_classes, state, pretrained)
        else:
            self.model = vgg16_bn(num_classes, channels, pretrained, classifier_width)
        self.hparams["channels"] = list(self.model.channels)
        self.hparams["classifier_width"] = self.model.classifier_width
        # What pruned this model (task, method, target): saved in checkpoints, so a resumed fit or a
        # test of the checkpoint knows what it holds, whatever the config says.
        self.pruning: dict[str, Any] | None = None
        # The fit's learning curve, one entry per validation (the Recorder appends it): saved in checkpoints,
        # so results.json of a tested checkpoint shows how its model was trained.
        self.history: list[dict[str, float]] = []
        self.metrics = torch.nn.ModuleDict({
            f"{stage}_{k}": MulticlassAccuracy(num_classes, top_k=min(k, num_classes), average="micro")
            for stage in STAGES for k in (1, 5)})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def _step(self, batch: tuple[torch.Tensor, torch.Tensor], stage: str) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        loss = F.cross_entropy(logits, y)
        on_step = stage == "train"
        # Epoch means over all ranks under DDP (the loops run on every rank, so syncing is safe here).
        self.log(f"{stage}/loss", loss, on_step=on_step, on_epoch=True, prog_bar=True, batch_size=len(y),
                 sync_dist=True)
        for k in (1, 5):
            metric = self.metrics[f"{stage}_{k}"]
            metric(logits, y)
            self.log(f"{stage}/top{k}", metric, on_step=False, on_epoch=True, prog_bar=k == 1, batch_size=len(y))
        return loss

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch, batch_idx: int) -> None:
        self._step(batch, "test")

    def configure_optimizers(self) -> Any:
        hp = self.hparams
        optimizer = torch.optim.SGD([p for p in self.parameters() if p.requires_grad], lr=hp.lr, momentum=hp.momentum,
                                    weight_decay=hp.weight_decay, nesterov=hp.nesterov)
        if not hp.cosine_schedule:
            return optimizer
        steps = max(1, int(self.trainer.estimated_stepping_batches))
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def replace_model(self, model: torch.nn.Module) -> None:
        """Channel surgery's narrower network; ``hparams["channels"]`` follows, so checkpoints rebuild it."""
        self.model = model
        self.hparams["channels"] = list(model.channels)

    def claim_pruning(self, description: dict[str, Any]) -> None:
        """Record what prunes this model; a resumed checkpoint pruned otherwise is an error naming both values."""
        old = self.pruning or {}
        differ = [key for key, value in description.items() if key in old and old[key] != value]
        if differ:
            was = ", ".join(f"{key}={old[key]!r}" for key in differ)
            now = ", ".join(f"{key}={description[key]!r}" for key in differ)
            raise ConfigError(
                f"ckpt_path: the checkpoint was pruned with {was} but the config says {now}; "
                "resume with the checkpoint's settings, or start a new run from model.pretrained"
            )
        self.pruning = {**old, **description}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["pruning"] = self.pruning
        checkpoint["history"] = self.history
        checkpoint["lineage"] = self.lineage

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Re-create pruning masks the checkpoint holds, and name the option when shapes do not fit."""
        self.pruning = checkpoint.get("pruning")
        self.history = list(checkpoint.get("history") or [])
        self.lineage = list(checkpoint.get("lineage") or [])
        restore_masks(self.model, checkpoint.get("state_dict", {}), prefix="model.")
        own = self.state_dict()
        for key, value in checkpoint.get("state_dict", {}).items():
            if key in own and own[key].shape != value.shape:
                raise ConfigError(
                    f"ckpt_path: {key} has shape {tuple(value.shape)} but the model has {tuple(own[key].shape)}; "
                    "the checkpoint is of another class count or width (check data.dataset / model.channels)"
                )

