"""Channel pruning (He et al., ICCV 2017): LASSO selection and least-squares reconstruction, conv by conv."""

from lightning_prune.pruning.channel.budget import (
    keep_count,
    prunable_convs,
    ratios_for_target,
    resolve_ratios,
    target_ratios,
    vgg_parameter_count,
)
from lightning_prune.pruning.channel.reconstruction import prune_linear, reconstruct_weight, relative_error
from lightning_prune.pruning.channel.selection import (
    channel_gram,
    sample_positions,
    sample_rows,
    select_channels,
)
from lightning_prune.pruning.channel.surgery import prune_channels, remove_input_channels, summary

__all__ = [
    "channel_gram", "keep_count", "prunable_convs", "prune_channels", "prune_linear", "ratios_for_target",
    "reconstruct_weight", "relative_error", "remove_input_channels", "resolve_ratios", "sample_positions",
    "sample_rows", "select_channels", "summary", "target_ratios", "vgg_parameter_count",
]
