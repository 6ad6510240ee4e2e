"""Data-free weight transfer: channel assignment, exactness of the cheap-kernel fit, channel order."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ghostify.ghost_module import GhostConv2d
from ghostify.weight_transfer import ChannelAssignment, assign_channels, fit_cheap_kernels, transfer_weights

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


def test_assignment_sources_are_strongest_first():
    torch.manual_seed(1)
    weight = torch.randn(12, 4, 3, 3) * torch.linspace(0.5, 3.0, 12)[:, None, None, None]
    assignment = assign_channels(weight, 3)
    norms = weight.flatten(1).norm(dim=1)
    assert assignment.sources[0] == int(norms.argmax())
    for src, ghosts in zip(assignment.sources, assignment.ghosts):
        assert all(norms[g] <= norms[src] for g in ghosts)


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
    assignment = assign_channels(weight, 2)
    _check_partition(assignment, 12, 2)
    assert sorted(assignment.sources) == sorted(partner)  # the 2W filters are the intrinsic ones
    for src, ghosts in zip(assignment.sources, assignment.ghosts):
        assert ghosts == [partner[src]]

    kernels, error = fit_cheap_kernels(weight, assignment, 2, dw_size, stride, dilation)
    assert kernels.shape == (6, 1, dw_size, dw_size)
    assert error < EXACT_FIT
    expected = torch.zeros(dw_size, dw_size)
    expected[dw_size // 2, dw_size // 2] = 0.5  # ghost = 0.5 * source
    for kernel in kernels:
        torch.testing.assert_close(kernel[0], expected, atol=1e-6, rtol=0)


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
    assignment = assign_channels(conv.weight, 2)
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
    assignment = assign_channels(conv.weight, ratio)
    assert ghost.out_index.tolist() == assignment.out_index(n, ratio).tolist()
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
