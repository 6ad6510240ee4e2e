"""Data-free weight transfer: channel assignment, exactness of the cheap-kernel fit, channel order."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import ghostify
from ghostify.ghost_module import GhostConv2d
from ghostify.weight_transfer import (
    ChannelAssignment,
    assign_channels,
    fit_cheap_kernels,
    group_channels,
    transfer_weights,
)

pytestmark = pytest.mark.usefixtures("single_thread")


# The fit regularises its normal equations by 1e-9 * mean(diag) and the reported error includes that
# term, so an exact fit reports about sqrt(1e-9) ~ 3e-5 rather than 0.
EXACT_FIT = 1e-3  # fit_error comes from float32 correlations: resolution ~3e-4


def _check_partition(assignment: ChannelAssignment, n: int, ratio: int) -> None:
    assert len(assignment.sources) == math.ceil(n / ratio)
    assert len(assignment.ghosts) == len(assignment.sources)
    everything = list(assignment.sources) + [g for gs in assignment.ghosts for g in gs]
    assert sorted(everything) == list(range(n))  # every channel exactly once
    assert all(len(gs) <= ratio - 1 for gs in assignment.ghosts)


# ---------------------------------------------------------------------------------------------
# assign_channels


@pytest.mark.parametrize(
    "n, ratio", [(n, r) for n in (2, 3, 7, 8, 13, 16, 33) for r in (2, 3, 4) if n >= r]
)
def test_assignment_partitions_channels(n, ratio):
    torch.manual_seed(n * 10 + ratio)
    assignment = assign_channels(torch.randn(n, 5, 3, 3), ratio)
    _check_partition(assignment, n, ratio)
    # only the last source can come short of ghosts (the greedy pass runs out of filters)
    assert all(len(gs) == ratio - 1 for gs in assignment.ghosts[:-1])


def test_group_channels_takes_the_best_groups_first():
    gain = torch.full((7, 7), 0.1, dtype=torch.float64)
    gain[1, [4, 6]] = torch.tensor([0.8, 0.9], dtype=torch.float64)  # total 1.7: the best group
    gain[2, [0, 5]] = torch.tensor([0.7, 0.6], dtype=torch.float64)  # total 1.3
    gain[4, [1, 3]] = torch.tensor([0.9, 0.8], dtype=torch.float64)  # an exact tie: the lower channel (1) wins
    assignment = group_channels(gain, 3)
    _check_partition(assignment, 7, 3)
    assert assignment.sources[:2] == [1, 2]
    assert assignment.ghosts[:2] == [[6, 4], [0, 5]]  # each group's ghosts by decreasing gain
    assert assignment.sources[2] == 3 and assignment.ghosts[2] == []  # the last channel stands alone


def test_group_channels_ties_go_to_the_lower_channel():
    assignment = group_channels(torch.zeros(4, 4), 2)
    _check_partition(assignment, 4, 2)
    assert assignment.sources[0] == 0
    assert group_channels(torch.zeros(4, 4), 2) == assignment  # deterministic
    assert group_channels(torch.zeros(1, 1), 2) == ChannelAssignment([0], [[]])


@pytest.mark.parametrize("n, ratio", [(2, 2), (7, 3), (16, 4), (13, 5), (33, 2)])
def test_group_channels_partitions_any_gain(n, ratio):
    torch.manual_seed(n)
    for gain in (torch.rand(n, n), torch.rand(n, n) * (torch.rand(n, n) > 0.8), -torch.rand(n, n)):
        assignment = group_channels(gain, ratio)
        _check_partition(assignment, n, ratio)
        assert all(len(gs) == ratio - 1 for gs in assignment.ghosts[:-1])


def _greedy_reference(gain: torch.Tensor, ratio: int, own: torch.Tensor) -> tuple[list[int], list[list[int]]]:
    """The grouping rule done the slow, obvious way: every round, score every free row anew."""
    n = gain.shape[0]
    free = list(range(n))
    sources, ghosts = [], []
    while free:
        k = min(ratio - 1, len(free) - 1)
        scored = []
        for row in free:
            others = sorted((j for j in free if j != row), key=lambda j: -float(gain[row, j]))[:k]
            scored.append((-(sum(float(gain[row, j]) for j in others) + float(own[row])), row, others))
        _, row, picked = min(scored)
        sources.append(row)
        ghosts.append(picked)
        free = [j for j in free if j != row and j not in picked]
    return sources, ghosts


@pytest.mark.parametrize("n, ratio", [(5, 2), (40, 2), (41, 3), (60, 4), (50, 2)])
def test_group_channels_makes_the_greedy_choices_of_rescoring_every_row_each_round(n, ratio):
    # 50 channels, ratio 2: more than the 32 channels each row keeps ranked, so rows run out of them
    torch.manual_seed(n + ratio)
    for gain in (torch.rand(n, n, dtype=torch.float64), torch.rand(n, n, dtype=torch.float64) ** 8):
        own = torch.rand(n, dtype=torch.float64)
        assignment = group_channels(gain, ratio, source_value=own)
        assert (assignment.sources, assignment.ghosts) == _greedy_reference(gain, ratio, own)


def test_group_channels_searches_a_row_again_once_its_ranked_channels_are_taken():
    n = 40
    gain = torch.zeros(n, n, dtype=torch.float64)
    for a in range(1, 33, 2):  # channels 1-32 pair up strongly: taken first
        gain[a, a + 1] = gain[a + 1, a] = 10.0 + a
    gain[0, 1:33] = 5.0  # channel 0 ranks only those first...
    gain[0, 33:] = torch.arange(1.0, 8.0, dtype=torch.float64)  # ...and must then find its best among the rest
    own = torch.zeros(n, dtype=torch.float64)
    own[0] = 3.0
    assignment = group_channels(gain, 2, source_value=own)
    assert (assignment.sources, assignment.ghosts) == _greedy_reference(gain, 2, own)
    assert assignment.ghosts[assignment.sources.index(0)] == [39]


@pytest.mark.parametrize("n, ratio", [(8, 2), (13, 3), (7, 4), (5, 5), (9, 2)])
def test_from_out_index_inverts_out_index(n, ratio):
    torch.manual_seed(n * ratio)
    assignment = group_channels(torch.rand(n, n), ratio)
    index = assignment.out_index(n, ratio)
    assert ChannelAssignment.from_out_index(index, ratio) == assignment


def _old_strongest_first_cosine(weight: torch.Tensor, ratio: int) -> ChannelAssignment:
    """The previous data-free grouping, kept here as a baseline: filters by decreasing norm, each
    untaken one a source claiming its ``ratio - 1`` most |cosine|-similar untaken filters."""
    n = weight.shape[0]
    flat = weight.detach().reshape(n, -1).double()
    norms = flat.norm(dim=1)
    unit = flat / norms.clamp_min(1e-12)[:, None]
    similarity = (unit @ unit.T).abs()
    taken = torch.zeros(n, dtype=torch.bool)
    sources, ghosts = [], []
    for src in torch.argsort(-norms, stable=True).tolist():
        if taken[src]:
            continue
        taken[src] = True
        free = torch.nonzero(~taken).flatten()
        picked = free[torch.argsort(-similarity[src, free], stable=True)[: ratio - 1]].tolist()
        taken[picked] = True
        sources.append(src)
        ghosts.append(picked)
    return ChannelAssignment(sources, ghosts)


def _ghostable_conv(ratio: int, sources: int, seed: int, bias: bool):
    """A cin->sources*ratio 5x5 conv whose filters are exactly ``sources`` 3x3 filters (zero-padded to
    5x5) plus, for each, ``ratio - 1`` ghosts = a random 3x3 kernel composed with it. Ghosts are
    *stronger* than their sources and the channel order is shuffled. Returns the conv and
    {source channel: set of its ghost channels}."""
    torch.manual_seed(seed)
    cin = 4
    sources3 = torch.randn(sources, cin, 3, 3)
    kernels = torch.randn(sources, ratio - 1, 3, 3)  # unit-scale taps: a ghost has ~3x its source's norm
    ghosts5 = [_compose_stride1(sources3[i], kernels[i, k]) for i in range(sources) for k in range(ratio - 1)]
    weight = torch.cat([F.pad(sources3, (1, 1, 1, 1)), torch.stack(ghosts5)])
    perm = torch.randperm(len(weight))
    conv = nn.Conv2d(cin, len(weight), 5, padding=2, bias=bias)
    with torch.no_grad():
        conv.weight.copy_(weight[perm])
    position = {int(orig): new for new, orig in enumerate(perm)}
    groups = {
        position[i]: {position[sources + i * (ratio - 1) + k] for k in range(ratio - 1)} for i in range(sources)
    }
    return conv, groups


@pytest.mark.parametrize("ratio, sources, seed, bias", [(2, 6, 0, False), (2, 6, 1, True), (3, 4, 2, True), (4, 3, 3, False)])
def test_exactly_ghostable_conv_is_reproduced(ratio, sources, seed, bias):
    """Filters that *are* cheap kernels composed with source filters are grouped so that the fit is
    exact and the converted conv reproduces the original, whatever the channel order and norms."""
    conv, groups = _ghostable_conv(ratio, sources, seed, bias)
    n = conv.out_channels
    norms = conv.weight.detach().flatten(1).norm(dim=1)
    assert all(norms[g] > norms[s] for s, gs in groups.items() for g in gs)  # ghosts are the strong filters

    ghost = GhostConv2d.like(conv, ratio, 3)
    error = transfer_weights(conv, ghost)
    assert 0.0 <= error < EXACT_FIT
    assignment = ChannelAssignment.from_out_index(ghost.out_index, ratio)
    _check_partition(assignment, n, ratio)
    assert {s: set(gs) for s, gs in zip(assignment.sources, assignment.ghosts)} == groups

    torch.manual_seed(seed + 100)
    x = torch.randn(2, 4, 14, 14)
    with torch.no_grad():
        expected, got = conv(x), ghost(x)
    sources_idx = sorted(groups)
    torch.testing.assert_close(got[:, sources_idx], expected[:, sources_idx], atol=1e-5, rtol=1e-5)
    # every channel is exact away from the border (where the cheap conv zero-pads the intrinsic map)
    torch.testing.assert_close(got[..., 2:-2, 2:-2], expected[..., 2:-2, 2:-2], atol=1e-4, rtol=1e-4)

    # the previous grouping (strongest filter first, |cosine| pairing) cannot reproduce this conv
    old = _old_strongest_first_cosine(conv.weight, ratio)
    _check_partition(old, n, ratio)
    _, old_error = fit_cheap_kernels(conv.weight, old, ratio, 3, (1, 1), (1, 1))
    assert old_error > 0.3


def _scaled_pairs(n_pairs: int, shape=(4, 3, 3), seed=0):
    """Filters W_i and 2 W_i, shuffled; returns weight and {strong channel: weak channel}."""
    torch.manual_seed(seed)
    base = torch.randn(n_pairs, *shape)
    weight = torch.cat([base, 2 * base])
    perm = torch.randperm(2 * n_pairs)
    weight = weight[perm]
    position = {int(orig): new for new, orig in enumerate(perm)}
    partner = {position[n_pairs + i]: position[i] for i in range(n_pairs)}
    return weight, partner


@pytest.mark.parametrize("stride, dilation", [((1, 1), (1, 1)), ((2, 2), (1, 1)), ((1, 1), (2, 2)), ((2, 1), (1, 2))])
@pytest.mark.parametrize("dw_size", [1, 3, 5])
def test_scaled_pairs_are_found_and_fit_exactly(stride, dilation, dw_size):
    weight, partner = _scaled_pairs(6)
    assignment = assign_channels(weight, 2, dw_size, stride, dilation)
    _check_partition(assignment, 12, 2)
    # W and 2W reproduce each other exactly: either may be the intrinsic one, but they pair up
    pairs = {frozenset(p) for p in partner.items()}
    assert {frozenset([src, *ghosts]) for src, ghosts in zip(assignment.sources, assignment.ghosts)} == pairs

    kernels, error = fit_cheap_kernels(weight, assignment, 2, dw_size, stride, dilation)
    assert kernels.shape == (6, 1, dw_size, dw_size)
    assert error < EXACT_FIT
    for kernel, src in zip(kernels, assignment.sources):
        expected = torch.zeros(dw_size, dw_size)
        expected[dw_size // 2, dw_size // 2] = 0.5 if src in partner else 2.0  # ghost = scale * source
        torch.testing.assert_close(kernel[0], expected, atol=1e-5, rtol=1e-5)


def test_scaled_pair_transfer_is_exact_everywhere():
    """Ghost = 0.5 * source needs no spatial kernel, so the whole output (border included) matches."""
    weight, _ = _scaled_pairs(4, shape=(3, 3, 3), seed=3)
    conv = nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(weight)
    ghost = GhostConv2d.like(conv, 2)
    assert transfer_weights(conv, ghost) < EXACT_FIT
    x = torch.randn(2, 3, 13, 13)
    with torch.no_grad():
        torch.testing.assert_close(ghost(x), conv(x), atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------------------------
# Exactness: ghost filters that *are* a depthwise kernel composed with a source filter


def _compose_stride1(source3: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Full 2-D convolution of a (C, 3, 3) filter with a 3x3 kernel: the (C, 5, 5) filter of
    ``cheap(kernel) after primary(source)`` at stride 1, dilation 1."""
    out = source3.new_zeros(source3.shape[0], 5, 5)
    for u in range(3):
        for v in range(3):
            out[:, u:u + 3, v:v + 3] += kernel[u, v] * source3
    return out


def _composed_conv(bias: bool, seed: int = 0):
    """A 4->8 conv (5x5, padding 2): 4 source filters (3x3 padded to 5x5) and 4 composed ghosts."""
    torch.manual_seed(seed)
    sources3 = torch.randn(4, 4, 3, 3)
    delta = torch.zeros(3, 3)
    delta[1, 1] = 1.0
    kernels = [0.1 * (delta + 0.3 * torch.randn(3, 3)) for _ in range(4)]  # small: ghosts are weaker
    ghosts5 = torch.stack([_compose_stride1(s, k) for s, k in zip(sources3, kernels)])
    sources5 = F.pad(sources3, (1, 1, 1, 1))
    order = [5, 0, 3, 6, 1, 7, 2, 4]  # interleave sources (0-3) and ghosts (4-7) in the channel axis
    weight = torch.cat([sources5, ghosts5])[order]
    conv = nn.Conv2d(4, 8, 5, padding=2, bias=bias)
    with torch.no_grad():
        conv.weight.copy_(weight)
    src_channel = {i: order.index(i) for i in range(4)}
    ghost_channel = {i: order.index(4 + i) for i in range(4)}
    return conv, kernels, src_channel, ghost_channel


@pytest.mark.parametrize("bias", [False, True])
def test_composed_filters_are_reproduced_exactly(bias):
    conv, kernels, src_channel, ghost_channel = _composed_conv(bias)
    # precondition: the greedy pass pairs every source with its own composed ghost
    assignment = assign_channels(conv.weight, 2)
    assert sorted(assignment.sources) == sorted(src_channel.values())
    for i in range(4):
        slot = assignment.sources.index(src_channel[i])
        assert assignment.ghosts[slot] == [ghost_channel[i]]

    ghost = GhostConv2d.like(conv, 2, 3)
    error = transfer_weights(conv, ghost)
    assert 0.0 <= error < EXACT_FIT

    # the fitted cheap kernels are the very kernels the ghosts were built with
    for i in range(4):
        slot = assignment.sources.index(src_channel[i])
        torch.testing.assert_close(ghost.cheap.weight[slot, 0], kernels[i], atol=1e-5, rtol=1e-4)

    torch.manual_seed(1)
    x = torch.randn(2, 4, 16, 16)
    with torch.no_grad():
        expected, got = conv(x), ghost(x)
    assert got.shape == expected.shape
    # intrinsic channels: exact everywhere
    sources = sorted(src_channel.values())
    torch.testing.assert_close(got[:, sources], expected[:, sources], atol=1e-5, rtol=1e-5)
    # all channels: exact away from the border, where the cheap conv's zero padding differs
    torch.testing.assert_close(got[..., 2:-2, 2:-2], expected[..., 2:-2, 2:-2], atol=1e-5, rtol=1e-4)
    if not bias:
        # the border really is where they differ (so the interior check is not vacuous)
        assert not torch.allclose(got, expected, atol=1e-5)


def test_composed_filters_stride2_exact():
    """At stride 2 a cheap-kernel tap shifts the source filter by 2 input pixels."""
    torch.manual_seed(2)
    cin, pairs = 16, 4
    conv = nn.Conv2d(cin, 2 * pairs, 5, stride=2, padding=2, bias=False)
    weight = torch.zeros(2 * pairs, cin, 5, 5)
    kernels = []
    for i in range(pairs):
        w = torch.randn(cin)
        weight[i, :, 2, 2] = w  # 1x1 source in the centre of the 5x5 footprint
        k = 0.1 * (torch.eye(3)[1].outer(torch.eye(3)[1]) + 0.3 * torch.randn(3, 3))
        kernels.append(k)
        for u in range(3):
            for v in range(3):
                weight[pairs + i, :, 2 * u, 2 * v] = k[u, v] * w
    with torch.no_grad():
        conv.weight.copy_(weight)
    assignment = assign_channels(conv.weight, 2, 3, conv.stride, conv.dilation)
    assert sorted(assignment.sources) == list(range(pairs))
    assert all(g == [pairs + s] for s, g in zip(assignment.sources, assignment.ghosts))

    ghost = GhostConv2d.like(conv, 2, 3)
    assert transfer_weights(conv, ghost) < EXACT_FIT
    for slot, src in enumerate(assignment.sources):
        torch.testing.assert_close(ghost.cheap.weight[slot, 0], kernels[src], atol=1e-5, rtol=1e-4)
    x = torch.randn(2, cin, 17, 17)
    with torch.no_grad():
        torch.testing.assert_close(ghost(x)[..., 1:-1, 1:-1], conv(x)[..., 1:-1, 1:-1], atol=1e-5, rtol=1e-4)


# ---------------------------------------------------------------------------------------------
# out_index and channel order


@pytest.mark.parametrize("n, ratio", [(8, 2), (13, 3), (7, 4), (16, 4), (5, 2)])
def test_out_index_maps_channels_to_distinct_slots(n, ratio):
    torch.manual_seed(n)
    assignment = assign_channels(torch.randn(n, 3, 3, 3), ratio)
    index = assignment.out_index(n, ratio)
    m = math.ceil(n / ratio)
    assert index.shape == (n,) and index.dtype == torch.long
    assert len(set(index.tolist())) == n
    assert all(0 <= i < m * ratio for i in index.tolist())
    for slot, (src, ghosts) in enumerate(zip(assignment.sources, assignment.ghosts)):
        assert index[src] == slot  # intrinsic maps come first ...
        for k, g in enumerate(ghosts):
            assert index[g] == m + slot * (ratio - 1) + k  # ... then each source's ghosts in order


@pytest.mark.parametrize("n, ratio, stride", [(8, 2, 1), (13, 3, 2), (7, 4, 1), (16, 2, 2)])
def test_converted_conv_keeps_channel_order(n, ratio, stride):
    torch.manual_seed(n + ratio)
    conv = nn.Conv2d(6, n, 3, stride=stride, padding=1)
    ghost = GhostConv2d.like(conv, ratio)
    transfer_weights(conv, ghost)
    assignment = assign_channels(conv.weight, ratio, ghost.dw_size, conv.stride, conv.dilation)
    assert ghost.out_index.tolist() == assignment.out_index(n, ratio).tolist()
    assert ChannelAssignment.from_out_index(ghost.out_index, ratio) == assignment
    assert ghost.out_index.tolist() != list(range(n))  # random filters: the order is not the default
    x = torch.randn(2, 6, 12, 12)
    with torch.no_grad():
        got, expected = ghost(x), conv(x)
    for channel in assignment.sources:  # each intrinsic channel lands at its original position
        torch.testing.assert_close(got[:, channel], expected[:, channel], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ghost.primary.weight, conv.weight[assignment.sources])
    torch.testing.assert_close(ghost.primary.bias, conv.bias[assignment.sources])


def test_transfer_does_not_modify_conv():
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 8, 3, padding=1)
    before = {k: v.clone() for k, v in conv.state_dict().items()}
    transfer_weights(conv, GhostConv2d.like(conv, 2))
    for k, v in conv.state_dict().items():
        assert torch.equal(v, before[k])


# ---------------------------------------------------------------------------------------------
# fit error on random filters


@pytest.mark.parametrize("cin, cout, kernel, stride, dilation, ratio, dw_size", [
    (3, 16, 3, 1, 1, 2, 3),
    (8, 16, 3, 2, 1, 2, 3),
    (8, 13, 3, 1, 2, 3, 5),
    (4, 12, 1, 1, 1, 4, 3),
    (4, 12, 5, 2, 1, 3, 1),
])
def test_random_filters_fit_error_in_unit_interval(cin, cout, kernel, stride, dilation, ratio, dw_size):
    torch.manual_seed(cout * 7 + kernel)
    conv = nn.Conv2d(cin, cout, kernel, stride=stride, dilation=dilation, padding=kernel // 2)
    error = transfer_weights(conv, GhostConv2d.like(conv, ratio, dw_size))
    assert isinstance(error, float)
    assert 0.0 < error < 1.0


def test_fit_error_matches_direct_computation():
    """The normal-equation residual equals || composed filter - ghost filter || / || ghost filters ||."""
    torch.manual_seed(5)
    weight = torch.randn(8, 3, 3, 3).double()
    assignment = assign_channels(weight, 2)
    kernels, error = fit_cheap_kernels(weight, assignment, 2, 3, (1, 1), (1, 1))
    residual, energy = 0.0, 0.0
    for slot, (src, ghosts) in enumerate(zip(assignment.sources, assignment.ghosts)):
        for g in ghosts:
            composed = weight.new_zeros(3, 5, 5)
            k = kernels[slot, 0].double()
            for u in range(3):
                for v in range(3):
                    composed[:, u:u + 3, v:v + 3] += k[u, v] * weight[src]
            target = F.pad(weight[g], (1, 1, 1, 1))
            residual += float((composed - target).square().sum())
            energy += float(weight[g].square().sum())
    assert error == pytest.approx((residual / energy) ** 0.5, rel=1e-4)


@pytest.mark.parametrize("stride, dilation", [((1, 1), (2, 2)), ((1, 1), (3, 2)), ((2, 1), (2, 3)), ((2, 2), (4, 4)), ((1, 1), (36, 36))])
def test_dilated_correlations_match_the_spread_out_filters(stride, dilation):
    from ghostify.weight_transfer import _correlations

    torch.manual_seed(0)
    a, b = torch.randn(5, 4, 3, 3), torch.randn(5, 4, 3, 3)

    def spread(filters):  # the dilated footprint, built explicitly (what the fit used to do)
        out = filters.new_zeros(*filters.shape[:2], dilation[0] * 2 + 1, dilation[1] * 2 + 1)
        out[:, :, ::dilation[0], ::dilation[1]] = filters
        return out

    expected = _correlations(spread(a), spread(b), stride, 3)
    torch.testing.assert_close(_correlations(a, b, stride, 3, dilation), expected, rtol=1e-5, atol=1e-5)


def test_a_wide_conv_at_a_large_dilation_converts_without_building_dilated_filters():
    conv = nn.Conv2d(512, 256, 3, padding=36, dilation=36)  # DeepLab's ASPP: the old fit needed 8.9 GB here
    ghost = ghostify.convert(nn.Sequential(nn.Conv2d(3, 512, 1), conv, nn.Flatten(), nn.LazyLinear(2)), skip_stem=True)
    plan = ghostify.get_plan(ghost)
    assert plan.layer("1").convert and plan.layer("1").fit_error is not None


@pytest.mark.parametrize("n, ratio", [(6, 2), (41, 3), (50, 2)])
def test_group_channels_gives_the_same_groups_for_a_sparse_gain(n, ratio):
    torch.manual_seed(n * ratio)
    gain = torch.rand(n, n, dtype=torch.float64) + 0.1
    own = torch.rand(n, dtype=torch.float64)
    # every entry stored: the same greedy choices as the dense gain
    assert group_channels(gain.to_sparse(), ratio, source_value=own) == group_channels(gain, ratio, source_value=own)
    # a few stored candidates per row (as assign_channels passes them): the same as the dense gain with zeros elsewhere
    few = torch.where(torch.rand(n, n) < 0.2, gain, torch.zeros_like(gain))
    sparse = group_channels(few.to_sparse(), ratio, source_value=own)
    assert (sparse.sources, sparse.ghosts) == _greedy_reference(few, ratio, own)


def test_group_channels_fills_a_sparse_row_from_the_lowest_free_channels():
    n = 6
    indices = torch.tensor([[0, 1, 2, 3], [1, 0, 3, 2]])  # channel 4 and 5 have no candidates
    sparse = torch.sparse_coo_tensor(indices, torch.tensor([9.0, 9.0, 8.0, 8.0]), (n, n), check_invariants=True)
    own = torch.tensor([0.0, 0.0, 0.0, 0.0, 2.0, 1.0])
    assignment = group_channels(sparse, 2, source_value=own)
    assert assignment == ChannelAssignment([0, 2, 4], [[1], [3], [5]])


@pytest.mark.parametrize("kernel, shifts", [
    ((3, 3), [[-2, -1, 0, 1, 2]] * 2),
    ((4, 4), [[-8, -4, 0, 4, 8]] * 2),  # a stride-4 patch embedding: only shift 0 overlaps
    ((7, 5), [[-4, -2, 0, 2, 4], [-1, 0, 1]]),
    ((5,), [[-3, -1, 0, 2, 6]]),
    ((3, 4, 2), [[-1, 0, 1], [-3, 0, 2], [0, 1]]),
])
def test_overlap_correlation_equals_position_pair_correlation(kernel, shifts):
    from ghostify.weight_transfer import _correlate_overlaps, _correlate_position_pairs

    torch.manual_seed(len(kernel))
    filters = torch.randn(9, 3, *kernel, dtype=torch.float64)
    src = torch.tensor([0, 0, 1, 2, 2, 2, 5, 8, 3])
    dst = torch.tensor([1, 4, 0, 3, 7, 8, 5, 2, 3])
    wanted = [tuple(v) for v in itertools.product(*shifts)]
    by_overlaps = _correlate_overlaps(filters, src, dst, wanted)
    torch.testing.assert_close(by_overlaps, _correlate_position_pairs(filters, src, dst, wanted))
    for p, o in itertools.product(range(len(src)), range(len(wanted))):  # the definition, by hand for a few
        if p % 3 == 0 and o % 4 == 0:
            a, b, v = filters[src[p]], filters[dst[p]], wanted[o]
            expected = sum(float((a[(slice(None), *x)] * b[(slice(None), *(xi + vi for xi, vi in zip(x, v)))]).sum())
                           for x in itertools.product(*(range(k) for k in kernel))
                           if all(0 <= xi + vi < k for xi, vi, k in zip(x, v, kernel)))
            assert float(by_overlaps[p, o]) == pytest.approx(expected, abs=1e-9)


def test_a_patch_embedding_conv_fits_by_its_overlaps_alone(monkeypatch):
    """A ViT's patch embedding (kernel = stride = 16): its copies shifted by the cheap kernel's taps overlap
    only at shift 0, so the fit correlates those overlaps and never every pair of kernel positions (a
    3->768 conv at 32x32 took minutes that way); the fit is the same either way."""
    import ghostify.weight_transfer as weight_transfer

    torch.manual_seed(0)
    conv = nn.Conv2d(3, 48, 16, stride=16)
    fits = {}
    for advantage in (0, 10 ** 9):  # 0: by overlaps always; 1e9: by every position pair always
        monkeypatch.setattr(weight_transfer, "_OVERLAP_ADVANTAGE", advantage)
        ghost = GhostConv2d.like(conv, 2, 3)
        fits[advantage] = (transfer_weights(conv, ghost), ghost.primary.weight.clone(), ghost.cheap.weight.clone())
    torch.testing.assert_close(fits[0], fits[10 ** 9], rtol=1e-4, atol=1e-6)

    def refuse(*args, **kwargs):
        raise AssertionError("correlated every position pair of a 16x16 patch filter")

    monkeypatch.setattr(weight_transfer, "_OVERLAP_ADVANTAGE", 8)
    monkeypatch.setattr(weight_transfer, "_correlate_position_pairs", refuse)
    transfer_weights(conv, GhostConv2d.like(conv, 2, 3))
