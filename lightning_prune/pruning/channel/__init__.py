"""Channel pruning (He et al., ICCV 2017): LASSO selection and least-squares reconstruction, conv by conv.

One idea per module: ``budget`` (how many channels each conv keeps, and the parameters that removes),
``selection`` (the sampled regression rows, and which channels stay), ``reconstruction`` (the kept
channels' new weights, and the hidden linears' zeros) and ``surgery`` (the narrower VGG, conv by conv).
"""

from lightning_prune.pruning.channel.budget import (
    keep_count,
    prunable_convs,
    ratios_for_target,
    resolve_ratios,
    target_ratios,
    vgg_parameter_count,
)
from lightning_prune.pruning.channel.reconstruction import (
    hold_zeros,
    prune_linear,
    reconstruct_weight,
    relative_error,
    zero_masks,
)
from lightning_prune.pruning.channel.selection import (
    ChannelChoice,
    channel_gram,
    sample_positions,
    sample_rows,
    select_channels,
)
from lightning_prune.pruning.channel.surgery import (
    LayerReport,
    prune_channels,
    remove_input_channels,
    summary,
)

__all__ = [
    "ChannelChoice", "LayerReport", "channel_gram", "hold_zeros", "keep_count", "prunable_convs", "prune_channels",
    "prune_linear", "ratios_for_target", "reconstruct_weight", "relative_error", "remove_input_channels",
    "resolve_ratios", "sample_positions", "sample_rows", "select_channels", "summary", "target_ratios",
    "vgg_parameter_count", "zero_masks",
]
