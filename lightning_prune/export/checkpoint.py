"""A Lightning checkpoint of ``ImageClassifier`` read back as a plain VGG, without Lightning.

The architecture is read off the weights' shapes (not the training hyperparameters), so a dense,
a masked (``weight_orig`` + ``weight_mask``) and a channel-pruned checkpoint all rebuild the same
way, and so does a bare ``VGG.state_dict()``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from lightning_prune.checkpoint_io import read_checkpoint
from lightning_prune.export.errors import ExportError
from lightning_prune.models import VGG, scaled_channels
from lightning_prune.models.vgg import VGG16_CHANNELS, architecture_of
from lightning_prune.pruning.layers import prunable_modules
from lightning_prune.pruning.unstructured import is_masked, restore_masks

MODEL_PREFIX = "model."


@dataclass
class CheckpointModel:
    """A checkpoint's model (masks re-created, as trained) and what the checkpoint says about it.

    Args:
        model: The VGG in eval mode; masked layers still carry ``torch.nn.utils.prune`` masks.
        path: The checkpoint file.
        hparams: The LightningModule's saved hyperparameters (empty for a bare state dict).
        data_hparams: The datamodule's saved hyperparameters (dataset, data_dir, ...), if any.
        callbacks: The callbacks' saved states, by state key (``ChannelPruning``, ``ModelCheckpoint{...}``).
        pruning: What pruned the model (``checkpoint["pruning"]``: task, method, target), if anything did.
    """

    model: VGG
    path: Path
    hparams: dict[str, Any] = field(default_factory=dict)
    data_hparams: dict[str, Any] = field(default_factory=dict)
    callbacks: dict[str, Any] = field(default_factory=dict)
    pruning: dict[str, Any] = field(default_factory=dict)
    lineage: list[dict[str, Any]] = field(default_factory=list)

    @property
    def masked_layers(self) -> list[str]:
        return [name for name, m in prunable_modules(self.model).items() if is_masked(m)]

    @property
    def channel_pruned(self) -> bool:
        """Narrower than the network the run started from.

        The ``ChannelPruning`` callback's saved state names the dense widths; without it, widths
        that are not VGG16's scaled by one factor (what ``width_multiplier`` builds) count as pruned.
        """
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


def architecture_from_state(state: dict[str, torch.Tensor], option: str = "--run") -> dict[str, Any]:
    """``num_classes``, ``channels`` and ``classifier_width`` read off a VGG state dict's shapes."""
    try:
        return architecture_of(state)
    except ValueError as err:
        raise ExportError(f"{option}: {err}") from err


def load_checkpoint_model(path: str | Path, option: str = "--run") -> CheckpointModel:
    """Rebuild the checkpoint's VGG with its masks (as ``ImageClassifier.on_load_checkpoint`` does).

    Args:
        path: A Lightning checkpoint of ``ImageClassifier``, or a bare VGG state dict.
        option: The option that named the file, for error messages.

    Raises:
        ConfigError: The file is missing or unreadable (one line naming ``option`` and the file).
        ExportError: The file holds no VGG16-BN of this package, or its weights do not fit it.
    """
    ckpt = read_checkpoint(path, option)
    raw = ckpt.get("state_dict", ckpt)
    if not isinstance(raw, dict) or not raw:
        raise ExportError(f"{option}: {path} holds no state_dict")
    prefixed = any(k.startswith(MODEL_PREFIX) for k in raw)
    state = {k.removeprefix(MODEL_PREFIX): v for k, v in raw.items() if not prefixed or k.startswith(MODEL_PREFIX)}
    arch = architecture_from_state(state, option)
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
        hparams=dict(ckpt.get("hyper_parameters") or {}),
        data_hparams=dict(ckpt.get("datamodule_hyper_parameters") or {}),
        callbacks={str(k): v for k, v in (ckpt.get("callbacks") or {}).items()},
        pruning=dict(ckpt.get("pruning") or {}),
        lineage=[dict(step) for step in ckpt.get("lineage") or [] if isinstance(step, dict)],
    )
