"""Channel pruning (He et al., ICCV 2017): LASSO selection and least-squares reconstruction, conv by conv.

One idea per module: ``ratios`` (how many channels each conv keeps), ``sampling`` (the regression
rows), ``selection`` (which channels), ``reconstruction`` (their new weights), ``surgery`` (the
narrower VGG), ``network`` (the loop over the convs), ``linear`` (zeroed hidden linears) and
``budget`` (the parameters a set of ratios removes).
"""

from lightning_prune.pruning.channel.budget import (
    check_target_sparsity,
    params_removed_share,
    ratios_for_target,
    ratios_to_prune,
    vgg_parameter_count,
)
from lightning_prune.pruning.channel.linear import (
    HIDDEN_LINEAR,
    check_linear_sparsity,
    hold_zeros,
    prune_linear,
    zero_masks,
)
from lightning_prune.pruning.channel.network import LayerReport, prune_channels, prune_vgg, summary
from lightning_prune.pruning.channel.ratios import Ratios, keep_count, prunable_convs, resolve_ratios
from lightning_prune.pruning.channel.reconstruction import reconstruct_weight, relative_error
from lightning_prune.pruning.channel.sampling import sample_positions, sample_rows
from lightning_prune.pruning.channel.selection import Selection, channel_gram, equivalent_design, select_channels
from lightning_prune.pruning.channel.surgery import remove_input_channels

__all__ = [
    "HIDDEN_LINEAR", "LayerReport", "Ratios", "Selection", "channel_gram", "check_linear_sparsity",
    "check_target_sparsity", "equivalent_design", "hold_zeros", "keep_count", "params_removed_share",
    "prunable_convs", "prune_channels", "prune_linear", "prune_vgg", "ratios_for_target", "ratios_to_prune",
    "reconstruct_weight", "relative_error", "remove_input_channels", "resolve_ratios", "sample_positions",
    "sample_rows", "select_channels", "summary", "vgg_parameter_count", "zero_masks",
]
