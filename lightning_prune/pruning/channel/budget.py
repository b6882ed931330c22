"""How many input channels each conv keeps, and the share of the dense VGG's parameters that removes.

Pure arithmetic on the widths, hence the same answer on every DDP rank."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from lightning_prune.models.vgg import VGG

Ratios = float | Mapping[str, float]


def prunable_convs(model: VGG) -> dict[str, int]:
    """Conv names whose input channels may be pruned, with their conv ordinal (all but the first)."""
    return {name: i for i, (name, _, _) in enumerate(model.conv_layers()) if i > 0}


def resolve_ratios(ratios: Ratios, model: VGG) -> dict[int, float]:
    """Per conv ordinal, the fraction of its input channels to keep; one number applies to all."""
    names = prunable_convs(model)
    if not isinstance(ratios, Mapping):
        ratios = dict.fromkeys(names, ratios)
    unknown = [n for n in ratios if n not in names]
    if unknown:
        raise ValueError(f"ratios: unknown layer {unknown[0]!r}; choose among {', '.join(names)} "
                         "(the conv whose input channels are pruned; the first conv's RGB input is not)")
    assert all(0 < r < 1 for r in ratios.values()), f"ratios must be fractions in (0, 1), got {ratios}"
    return {names[n]: float(r) for n, r in ratios.items()}


def keep_count(ratio: float, channels: int) -> int:
    """Channels left by a keep ratio: rounded, at least one."""
    return min(channels, max(1, round(ratio * channels)))


def vgg_parameter_count(channels: Sequence[int], num_classes: int, classifier_width: int) -> int:
    """Parameters of ``vgg16_bn(num_classes, channels, classifier_width=...)``, from shapes alone (cheap)."""
    total, in_ch = 0, 3
    for out_ch in channels:
        total += in_ch * out_ch * 9 + out_ch + 2 * out_ch
        in_ch = out_ch
    w = classifier_width
    return total + (in_ch * w + w) + (w * w + w) + (w * num_classes + num_classes)


def narrow_channels(ratios: Mapping[int, float], channels: Sequence[int]) -> list[int]:
    """The widths :func:`prune_channels` leaves: keeping ratio r of conv i's inputs narrows conv i-1."""
    narrow = list(channels)
    for i, r in ratios.items():
        narrow[i - 1] = keep_count(r, channels[i - 1])
    return narrow


def params_removed_share(
    ratios: Mapping[int, float], channels: Sequence[int], num_classes: int, classifier_width: int,
    linear_sparsity: float | None,
) -> float:
    """Fraction of the dense model's parameters gone after channel pruning and zeroing the hidden linears."""
    narrow = narrow_channels(ratios, channels)
    kept = vgg_parameter_count(narrow, num_classes, classifier_width)
    if linear_sparsity:  # what prune_linear zeroes: round(s * n) of each hidden linear
        kept -= sum(round(linear_sparsity * n) for n in (narrow[-1] * classifier_width, classifier_width**2))
    return 1 - kept / vgg_parameter_count(channels, num_classes, classifier_width)


def scale_ratios(ratios: Mapping[int, float], channels: Sequence[int], factor: float) -> dict[int, float]:
    """Every ratio times ``factor``, clipped to keep 1 to channels-1 channels (a conv with one input stays)."""
    scaled = {}
    for i, r in ratios.items():
        c = channels[i - 1]
        scaled[i] = r if c < 2 else min(max(r * factor, 1 / c), (c - 1) / c)
    return scaled


def ratios_for_target(
    ratios: Mapping[int, float],
    channels: Sequence[int],
    num_classes: int,
    classifier_width: int,
    linear_sparsity: float | None,
    target: float,
    steps: int = 100,
) -> dict[int, float]:
    """The keep ratios scaled by the largest common factor that removes >= ``target`` of the parameters.

    One factor keeps the per-layer profile; the share removed falls as the factor grows, so bisect.
    """
    assert 0 < target < 1, f"target_sparsity must be in (0, 1), got {target!r}"

    def removed(factor: float) -> float:
        return params_removed_share(scale_ratios(ratios, channels, factor), channels, num_classes, classifier_width,
                                    linear_sparsity)

    best = removed(0.0)
    if best < target:
        raise ValueError(f"target_sparsity={target} cannot be reached with these ratios: keeping one channel per "
                         f"pruned conv removes at most {best:.4f} of the parameters; lower target_sparsity, prune "
                         "more convs (ratios) or raise linear_sparsity")
    lo = 0.0
    hi = max((channels[i - 1] - 1) / channels[i - 1] / r for i, r in ratios.items()) if ratios else 1.0
    if removed(hi) >= target:  # even the widest clipped widths meet it
        return scale_ratios(ratios, channels, hi)
    for _ in range(steps):
        mid = (lo + hi) / 2
        if removed(mid) >= target:
            lo = mid
        else:
            hi = mid
    return scale_ratios(ratios, channels, lo)


def target_ratios(ratios: Mapping[int, float], model: VGG, target: float, linear_sparsity: float | None
                  ) -> dict[str, float]:
    """:func:`ratios_for_target` on ``model``'s widths, by conv name (what :func:`prune_channels` takes)."""
    scaled = ratios_for_target(ratios, model.channels, model.num_classes, model.classifier_width, linear_sparsity,
                               target)
    return {name: scaled[i] for name, i in prunable_convs(model).items() if i in scaled}
