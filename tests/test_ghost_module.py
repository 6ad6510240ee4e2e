"""GhostConv2d / GhostConv2dBNReLU: geometry matches nn.Conv2d, parameter counts, validation, weight transfer."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from torch import nn

from ghostify.errors import ConfigError
from ghostify.ghost_module import GhostConv2d, GhostConv2dBNReLU, intrinsic_channels
from ghostify.weight_transfer import ChannelAssignment, assign_channels, transfer_weights

pytestmark = pytest.mark.usefixtures("single_thread")


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


# (in, out, kernel, conv kwargs, ratio, dw_size)
SHAPE_CONFIGS = [
    (3, 8, 3, dict(stride=1, padding=1), 2, 3),
    (3, 8, 3, dict(stride=2, padding=1), 2, 3),
    (3, 8, 3, dict(stride=1, padding=0), 2, 3),
    (3, 8, 3, dict(stride=2, padding=0), 2, 3),
    (4, 16, 3, dict(padding="same"), 2, 3),
    (4, 16, 3, dict(padding="same", dilation=2), 2, 5),
    (4, 16, 5, dict(padding="same", bias=False), 4, 1),
    (4, 8, 3, dict(stride=2, padding=0, dilation=2), 2, 3),
    (4, 8, 3, dict(stride=1, padding=2, dilation=2, bias=False), 2, 3),
    (4, 8, 3, dict(stride=2, padding=1, dilation=2), 3, 3),
    (5, 7, 3, dict(padding=1), 2, 3),
    (5, 7, 3, dict(padding=1), 3, 3),
    (5, 7, 3, dict(padding=1, bias=False), 4, 5),
    (5, 13, 3, dict(padding=1), 2, 3),
    (5, 13, 1, dict(stride=2), 3, 3),
    (5, 13, 3, dict(padding=0, bias=False), 4, 3),
    (4, 8, (1, 3), dict(padding=(0, 1)), 2, 3),
    (4, 8, (1, 3), dict(stride=2, padding=(0, 1)), 2, 3),
    (4, 9, (3, 1), dict(stride=(2, 1), padding=(1, 0)), 3, 3),
    (4, 8, (1, 3), dict(padding="same"), 2, 3),
    (4, 8, 3, dict(padding=1, padding_mode="reflect"), 2, 3),
    (4, 8, 3, dict(stride=2, padding=2, padding_mode="reflect"), 2, 3),
    (4, 8, (1, 3), dict(padding="same", padding_mode="reflect"), 2, 3),
    (4, 8, 3, dict(padding=1, padding_mode="circular"), 2, 3),
]


@pytest.mark.parametrize("cin, cout, kernel, kwargs, ratio, dw_size", SHAPE_CONFIGS)
def test_output_shape_and_param_count(cin, cout, kernel, kwargs, ratio, dw_size):
    torch.manual_seed(0)
    conv = nn.Conv2d(cin, cout, kernel, **kwargs)
    ghost = GhostConv2d(cin, cout, kernel, ratio=ratio, dw_size=dw_size, **kwargs)
    x = torch.randn(2, cin, 11, 9)
    assert ghost(x).shape == conv(x).shape

    bias = kwargs.get("bias", True)
    kh, kw = _pair(kernel)
    m = math.ceil(cout / ratio)
    assert ghost.intrinsic_channels == m == intrinsic_channels(cout, ratio)
    primary = m * cin * kh * kw + (m if bias else 0)
    cheap = m * (ratio - 1) * dw_size * dw_size + (m * (ratio - 1) if bias else 0)
    assert sum(p.numel() for p in ghost.primary.parameters()) == primary
    assert sum(p.numel() for p in ghost.cheap.parameters()) == cheap
    assert sum(p.numel() for p in ghost.parameters()) == primary + cheap
    # the channel gather is a buffer, not a parameter
    assert ghost.out_index.tolist() == list(range(cout))
    assert "out_index" in dict(ghost.named_buffers())


@pytest.mark.parametrize("cin, cout, kernel, kwargs, ratio, dw_size", SHAPE_CONFIGS)
def test_like_copies_geometry(cin, cout, kernel, kwargs, ratio, dw_size):
    conv = nn.Conv2d(cin, cout, kernel, **kwargs)
    ghost = GhostConv2d.like(conv, ratio, dw_size)
    p = ghost.primary
    assert (p.in_channels, p.kernel_size, p.stride, p.padding, p.dilation, p.padding_mode) == (
        conv.in_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation, conv.padding_mode
    )
    assert (p.bias is None) == (conv.bias is None) == (ghost.cheap.bias is None)
    assert ghost.cheap.groups == p.out_channels
    assert ghost.cheap.stride == (1, 1)
    assert ghost.cheap.padding == (dw_size // 2, dw_size // 2)
    assert ghost.out_channels == cout and ghost.ratio == ratio and ghost.dw_size == dw_size


def test_like_keeps_dtype():
    conv = nn.Conv2d(3, 8, 3, padding=1).double()
    ghost = GhostConv2d.like(conv, 2)
    assert all(p.dtype == torch.float64 for p in ghost.parameters())
    assert ghost(torch.randn(1, 3, 6, 6, dtype=torch.float64)).dtype == torch.float64


@given(
    cin=st.integers(1, 12),
    cout=st.integers(2, 24),
    kernel=st.integers(1, 5),
    stride=st.integers(1, 3),
    padding=st.integers(0, 2),
    dilation=st.integers(1, 2),
    bias=st.booleans(),
    ratio=st.integers(2, 4),
    dw_size=st.sampled_from([1, 3, 5]),
    size=st.integers(5, 12),
    seed=st.integers(0, 2**16),
)
@settings(max_examples=40, deadline=None, derandomize=True, database=None)
def test_transfer_property(cin, cout, kernel, stride, padding, dilation, bias, ratio, dw_size, size, seed):
    assume(cout >= ratio)
    out_size = (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1
    assume(out_size >= 1)
    torch.manual_seed(seed)
    conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, dilation=dilation, bias=bias)
    ghost = GhostConv2d.like(conv, ratio, dw_size)
    error = transfer_weights(conv, ghost)
    assert 0.0 <= error <= 1.0 + 1e-9

    x = torch.randn(2, cin, size, size)
    with torch.no_grad():
        expected, got = conv(x), ghost(x)
    assert got.shape == expected.shape
    assignment = assign_channels(conv.weight, ratio, dw_size, conv.stride, conv.dilation)
    assert ChannelAssignment.from_out_index(ghost.out_index, ratio) == assignment
    sources = assignment.sources
    assert len(sources) == math.ceil(cout / ratio)
    torch.testing.assert_close(ghost.primary.weight, conv.weight[sources])
    torch.testing.assert_close(got[:, sources], expected[:, sources], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("ratio", [1, 0, -2])
def test_ratio_below_two_rejected(ratio):
    with pytest.raises(ConfigError, match="ratio"):
        GhostConv2d(4, 8, 3, ratio=ratio)


@pytest.mark.parametrize("ratio", [2.0, "2", True])
def test_ratio_must_be_int(ratio):
    with pytest.raises(ConfigError, match="ratio"):
        GhostConv2d(4, 8, 3, ratio=ratio)


@pytest.mark.parametrize("dw_size", [0, 2, 4, -3])
def test_even_or_nonpositive_dw_size_rejected(dw_size):
    with pytest.raises(ConfigError, match="dw_size"):
        GhostConv2d(4, 8, 3, dw_size=dw_size)


@pytest.mark.parametrize("cout, ratio", [(1, 2), (2, 3), (3, 4)])
def test_out_channels_below_ratio_rejected(cout, ratio):
    with pytest.raises(ConfigError, match="out_channels"):
        GhostConv2d(4, cout, 3, ratio=ratio)


def test_config_error_is_value_error():
    with pytest.raises(ValueError):
        GhostConv2d(4, 8, 3, ratio=1)


@pytest.mark.parametrize("relu", [True, False])
@pytest.mark.parametrize("cout, ratio, stride", [(16, 2, 1), (13, 3, 2), (7, 4, 1)])
def test_bn_relu_variant(relu, cout, ratio, stride):
    torch.manual_seed(0)
    conv = nn.Conv2d(5, cout, 3, stride=stride, padding=1)
    if relu:
        block = GhostConv2dBNReLU.like(conv, ratio, 3)  # like() works for the subclass too
    else:
        block = GhostConv2dBNReLU(5, cout, 3, stride=stride, padding=1, ratio=ratio, relu=False)
    assert isinstance(block, GhostConv2dBNReLU)
    assert block.primary.bias is None and block.cheap.bias is None  # BN follows: biases dropped
    assert block.primary_bn.num_features == math.ceil(cout / ratio)
    assert block.cheap_bn.num_features == math.ceil(cout / ratio) * (ratio - 1)
    x = torch.randn(3, 5, 10, 10)
    expected = conv(x).shape

    block.train()
    y = block(x)
    assert y.shape == expected
    y.square().mean().backward()
    assert block.primary.weight.grad is not None and block.cheap.weight.grad is not None
    assert int(block.primary_bn.num_batches_tracked) == 1

    block.eval()
    with torch.no_grad():
        y_eval = block(x)
    assert y_eval.shape == expected
    if relu:
        assert (y >= 0).all() and (y_eval >= 0).all()
    else:
        assert (y < 0).any()
    # eval mode is deterministic and does not touch running stats
    with torch.no_grad():
        torch.testing.assert_close(block(x), y_eval)
    assert int(block.primary_bn.num_batches_tracked) == 1
