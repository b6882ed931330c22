"""Surgery: a narrower VGG without some input channels of one conv (and the producer's matching filters)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from lightning_prune.models.vgg import VGG


def remove_input_channels(
    model: VGG, conv: int, kept: torch.Tensor | Sequence[int], weight: torch.Tensor | None = None
) -> VGG:
    """A new VGG without the dropped input channels of conv ``conv`` (its ordinal, 1..12).

    The previous conv loses the matching filters (weight rows, bias) and its BatchNorm the
    matching weight, bias, running mean and var; this conv gets ``weight`` (n, keep, kh, kw) or,
    if None, its own weights on the kept channels. Module names stay the same.
    """
    convs = model.conv_layers()
    if not 1 <= conv < len(convs):
        raise ValueError(f"conv must be in [1, {len(convs) - 1}] (the first conv's RGB input stays), got {conv}")
    kept = torch.as_tensor(kept, dtype=torch.long).sort().values
    prev_name, _, prev_bn = convs[conv - 1]
    name, layer, _ = convs[conv]
    if len(kept) == 0 or kept.unique().numel() != len(kept) or int(kept[-1]) >= layer.in_channels:
        raise ValueError(f"kept must be distinct input channels of {name} (< {layer.in_channels}), got {kept.tolist()}")
    if weight is not None and tuple(weight.shape) != (layer.out_channels, len(kept), *layer.kernel_size):
        raise ValueError(f"weight for {name} must have shape {(layer.out_channels, len(kept), *layer.kernel_size)}, "
                         f"got {tuple(weight.shape)}")
    bn_name = next(n for n, m in model.named_modules() if m is prev_bn)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    for key in (f"{prev_name}.weight", f"{prev_name}.bias", *(f"{bn_name}.{s}" for s in
                                                              ("weight", "bias", "running_mean", "running_var"))):
        if key in state:
            state[key] = state[key][kept].clone()
    ref = state[f"{name}.weight"]
    state[f"{name}.weight"] = (ref[:, kept] if weight is None else weight.detach()).to(ref).clone()
    channels = list(model.channels)
    channels[conv - 1] = len(kept)
    with torch.device("meta"):
        narrow = VGG(model.num_classes, channels, model.classifier_width)
    narrow.load_state_dict(state, assign=True)
    return narrow.train(model.training)
