"""VGG16-BN built with pretrained CIFAR weights (chenyaofo/pytorch-cifar-models) or a local state dict."""

from __future__ import annotations

import urllib.error
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lightning_prune.errors import ConfigError
from lightning_prune.models.vgg import VGG, architecture_of

RELEASE = "https://github.com/chenyaofo/pytorch-cifar-models/releases/download/vgg"
PRETRAINED_URLS: dict[int, str] = {
    10: f"{RELEASE}/cifar10_vgg16_bn-6ee7ea24.pt",
    100: f"{RELEASE}/cifar100_vgg16_bn-7d8c4031.pt",
}
WEIGHTS_DIR = Path("checkpoints/pretrained")  # downloaded release files (runs keep theirs in logs/)


def download_state_dict(num_classes: int) -> dict[str, torch.Tensor]:
    """Fetch the release file into ``checkpoints/pretrained`` once (torch.hub); its name's hash is checked."""
    if num_classes not in PRETRAINED_URLS:
        raise ConfigError(
            f"pretrained=True: weights exist only for 10 or 100 classes, not {num_classes}; "
            "pass pretrained=<path to a state dict> instead"
        )
    url = PRETRAINED_URLS[num_classes]
    try:
        return torch.hub.load_state_dict_from_url(url, model_dir=str(WEIGHTS_DIR), map_location="cpu",
                                                  check_hash=True, progress=False)
    except (urllib.error.URLError, OSError, TimeoutError) as err:
        raise ConfigError(
            f"pretrained=True: could not download {url} ({err}); "
            "download it elsewhere and pass its local path as pretrained=<file.pt>"
        ) from err


def read_pretrained(path: str | Path) -> tuple[dict[str, torch.Tensor], list[dict[str, Any]]]:
    """The weights of a state dict or Lightning checkpoint, and the pruning steps that made them, in order.

    Each step is a checkpoint's pruning record with ``source``, the file it was read from.
    """
    from lightning_prune.checkpoint_io import read_checkpoint

    obj = read_checkpoint(path, "model.pretrained", weights_only=True)
    steps = [dict(s) for s in obj.get("lineage") or [] if isinstance(s, dict)]
    if isinstance(obj.get("pruning"), dict):
        steps.append({**obj["pruning"], "source": str(path)})
    if "state_dict" in obj:
        obj = {k.removeprefix("model."): v for k, v in obj["state_dict"].items() if k.startswith("model.")}
    if not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ConfigError(f"model.pretrained: {path} holds no state dict (name -> tensor)")
    return obj, steps


def architecture(state: dict[str, torch.Tensor], source: str | Path) -> dict[str, Any]:
    """:func:`architecture_of`, failing with a ConfigError that names ``model.pretrained`` and ``source``."""
    try:
        return architecture_of(state)
    except ValueError as err:
        raise ConfigError(f"model.pretrained: {source}: {err}") from err


def vgg16_bn(num_classes: int = 10, channels: Sequence[int] | None = None,
             pretrained: bool | str | Path = False, classifier_width: int = 512) -> VGG:
    """VGG16-BN; ``pretrained=True`` downloads chenyaofo's weights, a path loads a local state dict
    (whose widths win over ``channels``: a channel-pruned checkpoint rebuilds its narrow network)."""
    if pretrained is True or not pretrained:
        model = VGG(num_classes=num_classes, channels=channels, classifier_width=classifier_width)
        if pretrained is True:
            load_weights(model, download_state_dict(num_classes), "pretrained=True")
        return model
    return vgg_from_state(num_classes, read_pretrained(pretrained)[0], str(pretrained))


def vgg_from_state(num_classes: int, state: dict, source: str) -> VGG:
    """A VGG of the widths the state dict's shapes give, with its weights (``source`` names it in errors)."""
    arch = architecture(state, source)
    model = VGG(num_classes=num_classes, channels=arch["channels"], classifier_width=arch["classifier_width"])
    load_weights(model, state, f"pretrained={source}")
    return model


def load_weights(model: nn.Module, state_dict: dict[str, torch.Tensor], source: str) -> None:
    """``strict=True`` load that names the option and the first mismatch instead of a wall of text."""
    own = model.state_dict()
    for key, value in state_dict.items():
        if key in own and own[key].shape != value.shape:
            raise ConfigError(
                f"{source}: {key} has shape {tuple(value.shape)} but the model expects {tuple(own[key].shape)} "
                "(another class count or channel widths?)"
            )
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    if missing or unexpected:
        raise ConfigError(f"{source}: keys do not match the model: missing {missing[:3]}, unexpected {unexpected[:3]}")
    model.load_state_dict(state_dict, strict=True)


# The pruned models a config of each task may start from with model.pretrained: a compound config (1a) prunes
# a channel-pruned model further, in its narrow widths. Any other pruned model continues only by --ckpt_path.
CONTINUES: dict[str, frozenset[str]] = {"unstructured": frozenset({"channel"})}


def check_starting_point(path: str, task: str | None, channels: list[int], classifier_width: int) -> None:
    """Refuse a pretrained file of another task or widths than the config builds (a compound config keeps
    its source's narrow widths), so that a pruned checkpoint never turns into a run labelled baseline."""
    state, steps = read_pretrained(path)
    # the task that last pruned the weights: baseline for an unpruned, unmasked file; None if unknown
    masked = any(key.endswith("weight_mask") for key in state)
    source = steps[-1].get("task") if steps else (None if masked else "baseline")
    arch = architecture(state, path)
    theirs = f"conv widths {arch['channels']}, classifier width {arch['classifier_width']}"
    ours = f"conv widths {list(channels)}, classifier width {classifier_width}"
    if task is not None and source not in (None, "baseline") and source not in CONTINUES.get(task, ()):
        continued = sorted(t for t, sources in CONTINUES.items() if source in sources)
        hint = (f"start it from a config of task {continued[0]!r} (configs/*/compound.yaml)" if continued
                else "resume it with --ckpt_path under a config of its own task")
        raise ConfigError(f"model.pretrained: {path} holds a model pruned by task {source!r} ({theirs}) but the "
                          f"config builds task {task!r} ({ours}); {hint}")
    if source in CONTINUES.get(task or "", ()):
        return  # the continuation takes the source's own (narrow) widths
    if (arch["channels"], arch["classifier_width"]) != (list(channels), classifier_width):
        raise ConfigError(f"model.pretrained: {path} has {theirs} but the config builds {ours}; set "
                          "model.channels / model.width_multiplier / model.classifier_width to the file's")
