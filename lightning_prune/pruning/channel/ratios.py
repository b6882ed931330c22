"""Which convs lose input channels, and how many each keeps."""

from __future__ import annotations

from collections.abc import Mapping

from lightning_prune.models.vgg import VGG

Ratios = float | Mapping[str, float]


def check_keep(keep: int, channels: int, option: str = "keep") -> None:
    """``keep`` must remove at least one channel and keep at least one."""
    if isinstance(keep, bool) or int(keep) != keep or not 1 <= keep < channels:
        raise ValueError(f"{option} must be an integer in [1, {channels - 1}] (channels: {channels}), got {keep}")


def check_ratio(ratio: float, option: str = "ratios") -> None:
    """A keep ratio lies in the open interval (0, 1): 0 keeps nothing, 1 prunes nothing."""
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 < ratio < 1:
        raise ValueError(f"{option} must be a fraction of channels to keep in (0, 1), got {ratio!r}")


def prunable_convs(model: VGG) -> dict[str, int]:
    """Conv names whose input channels may be pruned, with their conv ordinal (all but the first)."""
    return {name: i for i, (name, _, _) in enumerate(model.conv_layers()) if i > 0}


def resolve_ratios(ratios: Ratios, model: VGG, option: str = "ratios") -> dict[int, float]:
    """Per conv ordinal, the fraction of its input channels to keep; one number applies to all."""
    names = prunable_convs(model)
    if isinstance(ratios, Mapping):
        unknown = [n for n in ratios if n not in names]
        if unknown:
            raise ValueError(
                f"{option}: unknown layer {unknown[0]!r}; choose among {', '.join(names)} "
                "(the conv whose input channels are pruned; the first conv's RGB input is not)"
            )
        for name, r in ratios.items():
            check_ratio(r, f"{option}.{name}")
        return {names[n]: float(r) for n, r in ratios.items()}
    check_ratio(ratios, option)
    return {i: float(ratios) for i in names.values()}


def keep_count(ratio: float, channels: int) -> int:
    """Channels left by a keep ratio: rounded, at least one."""
    return min(channels, max(1, round(ratio * channels)))
