"""A Lightning checkpoint of ``ImageClassifier`` read back as a plain VGG, without Lightning.

The architecture is read off the weights' shapes: dense, masked and channel-pruned checkpoints rebuild alike.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lightning_prune.checkpoint_io import read_checkpoint
from lightning_prune.errors import ExportError
from lightning_prune.models import VGG, scaled_channels
from lightning_prune.models.vgg import VGG16_CHANNELS, architecture_of
from lightning_prune.pruning.layers import prunable_modules
from lightning_prune.pruning.unstructured import is_masked, restore_masks

MODEL_PREFIX = "model."


@dataclass
class CheckpointModel:
    """A checkpoint's model (in eval mode, masks re-created as trained) and what the checkpoint says about it."""

    model: VGG
    path: Path
    data_hparams: dict[str, Any] = field(default_factory=dict)  # the datamodule's (dataset, data_dir, ...)
    callbacks: dict[str, Any] = field(default_factory=dict)  # the callbacks' states, by state key
    pruning: dict[str, Any] = field(default_factory=dict)  # checkpoint["pruning"]: task, method, target
    lineage: list[dict[str, Any]] = field(default_factory=list)  # the pruning steps before this run's own

    @property
    def masked_layers(self) -> list[str]:
        return [name for name, m in prunable_modules(self.model).items() if is_masked(m)]

    @property
    def channel_pruned(self) -> bool:
        """Narrower than the network the run started from (ChannelPruning's saved dense widths, else
        widths that are not VGG16's scaled by one factor)."""
        for name, state in self.callbacks.items():
            if name.startswith("ChannelPruning") and isinstance(state, dict) and state.get("dense_channels"):
                return list(state["dense_channels"]) != list(self.model.channels)
        channels = list(self.model.channels)
        return all(scaled_channels(c / full) != channels for c, full in zip(channels, VGG16_CHANNELS))

    @property
    def structure(self) -> str:
        """How the weights are stored: ``dense``, ``masked``, ``narrow`` (channel-pruned) or ``narrow+masked``."""
        parts = (["narrow"] if self.channel_pruned else []) + (["masked"] if self.masked_layers else [])
        return "+".join(parts) or "dense"

    @property
    def task(self) -> str | None:
        """The task the checkpoint's pruning record names; ``baseline`` for an unpruned model; None if unknown."""
        return self.pruning.get("task") or ("baseline" if self.structure == "dense" else None)

    @property
    def method(self) -> str | None:
        """What pruned it (``magnitude``, ``grasp``, ``snip``, ``grasp_abs``, ``lasso``); ``none`` when unpruned."""
        return self.pruning.get("method") or ("none" if self.structure == "dense" else None)


def load_checkpoint_model(path: str | Path, option: str = "--run") -> CheckpointModel:
    """Rebuild the VGG of a checkpoint of ``ImageClassifier`` (or a bare state dict) with its masks.

    A file that holds no VGG16-BN of this package is one error line naming ``option``."""
    ckpt = read_checkpoint(path, option)
    raw = ckpt.get("state_dict", ckpt)
    if not isinstance(raw, dict) or not raw:
        raise ExportError(f"{option}: {path} holds no state_dict")
    prefixed = any(k.startswith(MODEL_PREFIX) for k in raw)
    state = {k.removeprefix(MODEL_PREFIX): v for k, v in raw.items() if not prefixed or k.startswith(MODEL_PREFIX)}
    try:
        arch = architecture_of(state)  # read off the weights' shapes
    except ValueError as err:
        raise ExportError(f"{option}: {err}") from err
    model = VGG(arch["num_classes"], arch["channels"], arch["classifier_width"])
    restore_masks(model, state)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0]
        raise ExportError(f"{option}: {path} does not fit a VGG16-BN of widths {arch['channels']} ({first})") from err
    return CheckpointModel(
        model=model.eval(),
        path=Path(path),
        data_hparams=dict(ckpt.get("datamodule_hyper_parameters") or {}),
        callbacks={str(k): v for k, v in (ckpt.get("callbacks") or {}).items()},
        pruning=dict(ckpt.get("pruning") or {}),
        lineage=[dict(step) for step in ckpt.get("lineage") or [] if isinstance(step, dict)],
    )
