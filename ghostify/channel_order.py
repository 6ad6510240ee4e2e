"""One channel assignment for the ghost modules whose outputs meet in one residual stream.

A ghost module's maps come out as ``cat([intrinsic, ghosts])``; which original channels are the
intrinsic ones, and which ghost comes from which, is its channel assignment (``out_index``). The
deploy form leaves that natural order in place and permutes the layers that read it instead
(``ghostify.deploy``), but several ghost modules added into one residual stream (the last conv of
every block of a ResNet stage, and its downsample) must agree on one order: when their assignments
differ, all but one gather their channels at run time, a full extra copy of the stream at each add
(ResNet-50: 16 gathers, 14 % of its NCHW deploy form's time at batch 16 on a 2-core CPU).

With ``GhostConfig.shared_residual_order`` (the default) the modules of such a group share one
assignment, chosen for the group as a whole: ``group_channels`` on the sum of their gains (the
data-free filter fits at conversion; the squared correlations of the original layers' outputs in
calibration). Each layer's own grouping would reproduce a little more of it than the shared one.
The groups are the regions of ``fold_plan.residual_groups``, so that the deploy form finds them again.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from .fold_plan import residual_groups
from .ghost_module import GhostConv2d
from .weight_transfer import ChannelAssignment, channel_gains, group_channels, transfer_weights


def order_groups(model: nn.Module, across_shortcuts: bool = False) -> dict[str, list[str]]:
    """``{owner: [owner, members...]}``: each residual group of ``model`` (``fold_plan.residual_groups``),
    less the members that cannot take the owner's channel assignment (other channels, ratio or cheap kernel)."""
    groups = {}
    for owner, members in residual_groups(model, across_shortcuts).items():
        lead = model.get_submodule(owner)
        groups[owner] = [owner] + [name for name in members if shares_order(lead, model.get_submodule(name))]
    return groups


def shares_order(owner: GhostConv2d, member: GhostConv2d) -> bool:
    """Whether ``member`` can take ``owner``'s channel assignment (same channels, ratio and cheap kernel)."""
    return (owner.out_channels, owner.ratio, owner.dw_size) == (member.out_channels, member.ratio, member.dw_size)


def joint_assignment(gains: Sequence[torch.Tensor], ratio: int, source_values: Sequence[torch.Tensor] | None = None,
                     ) -> ChannelAssignment:
    """One grouping for several layers: ``group_channels`` on the sum of their gains (dense or sparse),
    so that the channels kept exact and the ghost pairs are the best for the group as a whole."""
    total = gains[0]
    for gain in gains[1:]:
        total = total + gain
    values = None if source_values is None else torch.stack(list(source_values)).sum(0)
    return group_channels(total, ratio, source_value=values)


@torch.no_grad()
def share_residual_orders(converted: nn.Module, originals: Mapping[str, nn.Module], across_shortcuts: bool = False,
                          ) -> dict[str, float]:
    """Re-initialise the ghost modules of every residual group of ``converted`` from their original convs
    under one assignment chosen for the group (``joint_assignment`` of their data-free gains), in place;
    returns each changed module's new fit error.

    ``originals``: the plain conv each ghost module replaced, by name (what ``graph_pass.apply_plan`` returns).
    """
    refitted: dict[str, float] = {}
    for owner, group in order_groups(converted, across_shortcuts).items():
        names = [name for name in group if name in originals]
        if len(names) < 2:
            continue
        lead = converted.get_submodule(owner)
        ratio, dw_size = lead.ratio, lead.dw_size
        gains = [channel_gains(originals[name].weight, ratio, dw_size, originals[name].stride, originals[name].dilation)
                 for name in names]
        assignment = joint_assignment([gain for gain, _ in gains], ratio, [energy for _, energy in gains])
        for name in names:
            refitted[name] = transfer_weights(originals[name], converted.get_submodule(name), assignment=assignment)
    return refitted
