"""ghostify.deploy / ``--deploy``: BatchNorm and channel gathers folded away, outputs unchanged."""

from __future__ import annotations

import copy
import importlib
from pathlib import Path

import numpy as np
from PIL import Image
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from typer.testing import CliRunner

import ghostify
from ghostify import prepacked
from ghostify.cli import app
from ghostify.deploy import ChannelOrderAdapter, DeployedGhostConv2d, DeployRecord, deploy, to_channels_last
from ghostify.errors import ConfigError
from ghostify.ghost_module import GhostConv1d, GhostConv3d
from ghostify.prepacked import PrepackedConv2d

deploy_module = importlib.import_module("ghostify.deploy")  # ghostify.deploy is also the function

pytestmark = pytest.mark.usefixtures("single_thread")
runner = CliRunner()


def trained_like_norms(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BatchNorm non-trivial statistics and affine parameters, as after training."""
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            n = module.num_features
            module.running_mean.copy_(torch.rand(n, generator=generator) * 2 - 1)
            module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
            if module.affine:
                module.weight.data.copy_(torch.rand(n, generator=generator) + 0.5)
                module.bias.data.copy_(torch.rand(n, generator=generator) * 2 - 1)
    return model.eval()


class Chain(nn.Module):
    """ghost conv -> BN -> ReLU -> depthwise conv -> BN -> ReLU -> dense conv: every gather can be folded."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, padding: int, dilation: int, bias: bool) -> None:
        super().__init__()
        self.stem = nn.Conv2d(cin, cin, 1)
        self.conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, dilation=dilation, bias=bias)
        self.bn = nn.BatchNorm2d(cout)
        self.dw = nn.Conv2d(cout, cout, 3, padding=1, groups=cout)
        self.bn_dw = nn.BatchNorm2d(cout)
        self.head = nn.Conv2d(cout, 5, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.conv(self.stem(x))))
        return self.head(nn.functional.relu6(self.bn_dw(self.dw(x))))


class Residual(nn.Module):
    """ghost conv -> BN, added to its input with the channels rolled: the gather must stay."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, channels, 3, padding=1)
        self.conv = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(channels)
        self.head = nn.Conv2d(channels, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        return self.head(torch.relu(self.bn(self.conv(x)) + x.roll(1, dims=1)))


class SqueezeExcite(nn.Module):
    """ghost 1x1 -> BN -> ReLU, times a gate made from its mean by two 1x1 convs, then a 1x1 projection."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.conv_pw = nn.Conv2d(8, 16, 1, bias=False)
        self.bn = nn.BatchNorm2d(16)
        self.conv_reduce = nn.Conv2d(16, 8, 1)
        self.conv_expand = nn.Conv2d(8, 16, 1)
        self.conv_pwl = nn.Conv2d(16, 8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.conv_pw(self.stem(x))))
        gate = torch.sigmoid(self.conv_expand(torch.relu(self.conv_reduce(x.mean((2, 3), keepdim=True)))))
        return self.conv_pwl(x * gate)


class Downsample(nn.Module):
    """A residual block whose shortcut is a strided conv + BN, then a pooled Linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.conv_a = nn.Conv2d(8, 16, 3, stride=2, padding=1, bias=False)
        self.bn_a = nn.BatchNorm2d(16)
        self.conv_b = nn.Conv2d(16, 16, 3, padding=1, bias=False)
        self.bn_b = nn.BatchNorm2d(16)
        self.down = nn.Conv2d(8, 16, 1, stride=2, bias=False)
        self.bn_down = nn.BatchNorm2d(16)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem(x))
        y = self.bn_b(self.conv_b(torch.relu(self.bn_a(self.conv_a(x)))))
        y = torch.relu(y + self.bn_down(self.down(x)))
        return self.fc(torch.flatten(self.pool(y), 1))


def convert_all(model: nn.Module, **options) -> nn.Module:
    return ghostify.convert(model, skip_stem=False, skip_output=False, min_channels=1, **options).eval()


def assert_same_outputs(deployed: nn.Module, converted: nn.Module, x: torch.Tensor) -> None:
    """The deploy form computes what the converted model does, within float32 rounding."""
    with torch.no_grad():
        expected = converted(x)
        assert (deployed(x) - expected).abs().max().item() <= 1e-5 * expected.abs().max().item()


@settings(max_examples=40, deadline=None, derandomize=True, database=None)
@given(
    cin=st.integers(1, 6), cout=st.integers(2, 12), kernel=st.sampled_from([1, 3]), stride=st.integers(1, 2),
    padding=st.integers(0, 2), dilation=st.integers(1, 2), bias=st.booleans(), ratio=st.integers(2, 4),
    dw_size=st.sampled_from([1, 3, 5]), size=st.integers(5, 11), seed=st.integers(0, 3),
)
def test_deploy_form_equals_train_form_over_the_conv_space(cin, cout, kernel, stride, padding, dilation, bias, ratio,
                                                          dw_size, size, seed):
    torch.manual_seed(seed)
    model = trained_like_norms(Chain(cin, cout, kernel, stride, padding, dilation, bias), seed)
    converted = convert_all(model, ratio=min(ratio, cout), dw_size=dw_size, include=["conv"], init="random")
    ghost = converted.conv
    ghost.out_index.copy_(torch.randperm(cout))  # any channel assignment, as the weight fit leaves it
    x = torch.randn(2, cin, size, size)
    deployed = deploy(converted)
    with torch.no_grad():
        expected, got = converted(x), deployed(x)
        packed = deployed(x.contiguous(memory_format=torch.channels_last))  # the ghost module on prepacked weights
    scale = expected.abs().max().item() + 1e-6
    assert (got - expected).abs().max().item() <= 1e-4 * scale
    assert (packed - expected).abs().max().item() <= 1e-4 * scale
    layer = deployed.ghostify_deploy.layers[0]
    assert isinstance(deployed.conv, DeployedGhostConv2d) and layer.folded_norm == "bn"
    assert isinstance(deployed.bn, nn.Identity)
    gaps = -(-cout // ghost.ratio) * ghost.ratio != cout and ghost.ratio > 2
    if not gaps:  # the channel order went into the depthwise conv, its BN and the head
        assert not layer.gather and deployed.conv.out_index is None


def test_the_intrinsic_maps_shift_is_added_in_inference_under_autograd_and_compile():
    torch.manual_seed(0)
    model = trained_like_norms(Chain(3, 8, 3, 1, 1, 1, False))
    converted = convert_all(model, include=["conv"])
    deployed = deploy(converted)
    assert deployed.conv.shifted and deployed.ghostify_deploy.layers[0].shifted
    x = torch.randn(2, 3, 9, 9)
    with torch.no_grad():
        expected = converted(x)
    assert torch.allclose(deployed(x.requires_grad_()), expected, atol=1e-5, rtol=1e-4)  # the autograd path
    for parameter in deployed.conv.primary.parameters():  # the primary frozen, the cheap conv trained: the
        parameter.requires_grad_(False)  # shift must not go into the maps in place, which the cheap conv saved
    out = deployed(x.detach())
    out.sum().backward()
    assert torch.allclose(out, expected, atol=1e-5, rtol=1e-4) and deployed.conv.cheap.weight.grad is not None
    compiled = torch.compile(deployed, backend="eager")
    with torch.no_grad():
        assert torch.allclose(compiled(x), expected, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("channels, scatter_from, scattered", [(8, None, False), (8, 0, True), (7, 0, False)])
def test_a_residual_add_keeps_the_gather_and_says_why(monkeypatch, channels, scatter_from, scattered):
    """Under channels_last inference the gather keeps the output channels_last: as a column selection
    (small maps) or written map by map (from ``SCATTER_FROM`` values, where the maps are a permutation of
    the output channels; 7 channels at s=2 make 8 maps: one is dropped)."""
    torch.manual_seed(0)
    model = trained_like_norms(Residual(channels))
    converted = convert_all(model, include=["conv"])
    deployed = deploy(converted)
    layer = deployed.ghostify_deploy.layers[0]
    assert layer.gather and layer.folded_norm == "bn" and layer.shifted
    assert "add" in layer.reasons[0]
    if scatter_from is not None:
        monkeypatch.setattr(deploy_module, "SCATTER_FROM", scatter_from)
    scatter, calls = deploy_module.scatter_channels, []
    monkeypatch.setattr(deploy_module, "scatter_channels", lambda *args: calls.append(1) or scatter(*args))
    x = torch.randn(3, 3, 8, 8)
    with torch.no_grad():
        expected = converted(x)
        assert torch.allclose(deployed(x), expected, atol=1e-5, rtol=1e-4)
        assert bool(calls) == scattered
        assert deployed.conv(deployed.stem(x)).is_contiguous(memory_format=torch.channels_last)
        deployed.conv.out_index.copy_(deployed.conv.out_index.flip(0))  # a new order (as load_state_dict would)
        flipped = deployed.conv(deployed.stem(x))
        deployed.conv.out_index.copy_(deployed.conv.out_index.flip(0))
        assert torch.allclose(flipped, deployed.conv(deployed.stem(x)).flip(1), atol=1e-6)
    assert torch.allclose(deployed(x), expected, atol=1e-5, rtol=1e-4)  # with autograd: cat and gather


@pytest.mark.parametrize("make, owner, joined, consumers", [
    # the product's gate is made by conv_expand: it gathers straight into conv_pw's order
    (SqueezeExcite, "conv_pw", "conv_expand", ["conv_reduce", "conv_pwl"]),
    # the add's other operand is the shortcut conv: it joins conv_b's order, which the pooled Linear absorbs
    (Downsample, "conv_b", "down", ["fc"]),
])
def test_a_product_or_add_takes_the_order_by_permuting_the_other_operands_conv(make, owner, joined, consumers):
    torch.manual_seed(0)
    model = trained_like_norms(make())
    converted = convert_all(model, exclude=["stem"])
    for module in converted.modules():  # any channel assignment, as the weight fit leaves it
        if isinstance(module, ghostify.GhostConv2d):
            module.out_index.copy_(torch.randperm(module.out_channels))
    x = torch.randn(2, 3, 8, 8)
    deployed = deploy(converted)
    layers = {layer.name: layer for layer in deployed.ghostify_deploy.layers}
    assert not layers[owner].gather and layers[joined].gather
    assert layers[joined].reasons[-1].startswith(f"gathers into the channel order of {owner}, whose region it joins")
    with torch.no_grad():
        expected = converted(x)
        assert (deployed(x) - expected).abs().max().item() <= 1e-5 * expected.abs().max().item()
        for name in consumers:  # their weights now read the owner's order
            assert not torch.equal(input_weight(deployed, name), input_weight(converted, name))


class SharedReLU(nn.Module):
    """One ReLU module called after every BN, as torchvision's ResNet blocks do."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.conv_a, self.bn_a = nn.Conv2d(8, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16)
        self.conv_b, self.bn_b = nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16)
        self.relu = nn.ReLU(inplace=True)
        self.head = nn.Conv2d(16, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.stem(x))
        x = self.relu(self.bn_a(self.conv_a(x)))
        return self.head(self.relu(self.bn_b(self.conv_b(x))))


def test_a_parameter_free_module_called_several_times_passes_the_order_on():
    torch.manual_seed(0)
    model = trained_like_norms(SharedReLU())
    converted = convert_all(model, exclude=["stem", "head"])
    deployed = deploy(converted)
    assert deployed.ghostify_deploy.gathers == 0
    assert_same_outputs(deployed, converted, torch.randn(2, 3, 8, 8))


class PaddedShortcut(nn.Module):
    """Option-A shortcut of the CIFAR ResNets: subsample, then zero-pad the channels."""

    def __init__(self, pad: int) -> None:
        super().__init__()
        self.pad = pad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))


class Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout)
        self.conv2, self.bn2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout)
        self.shortcut = PaddedShortcut((cout - cin) // 2) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
        return torch.relu(y + self.shortcut(x))


class OptionA(nn.Module):
    """Two residual stages joined by an option-A shortcut, as CIFAR ResNet-20/56: a stem conv starts the
    first stream, and no conv makes the second one's shortcut."""

    def __init__(self) -> None:
        super().__init__()
        self.stem, self.bn = nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.blocks = nn.Sequential(Block(8, 8), Block(8, 8), Block(8, 16, 2), Block(16, 16))
        self.fc = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(torch.relu(self.bn(self.stem(x))))
        return self.fc(nn.functional.adaptive_avg_pool2d(x, 1).flatten(1))


def test_an_option_a_shortcut_is_gathered_once_instead_of_every_block(tmp_path):
    """The first stream reaches back to the stem conv (its output also feeds the first block's conv); the
    channel pad needs the original order, so with one channel assignment per stream the shortcut gathers its
    input back and its output into the second stream's order: 2 gathers where 4 ghost modules would gather.
    By default each ghost module keeps its own assignment there, and gathers."""
    torch.manual_seed(0)
    model = trained_like_norms(OptionA())
    by_default = deploy(convert_all(model, exclude=["stem"])).ghostify_deploy
    assert by_default.gathers == 4 and not by_default.adapters
    assert "instead would save no more" in next(layer for layer in by_default.layers if layer.gather).reasons[-1]
    converted = convert_all(model, exclude=["stem"], share_across_shortcuts=True)
    deployed = deploy(converted)
    record = deployed.ghostify_deploy
    assert record.gathers == 0 and record.adapters == {"blocks.2.shortcut": (8, 16)}
    assert "(2 gathered at the boundary of blocks.2.shortcut instead)" in record.summary()
    adapter = deployed.blocks[2].shortcut
    assert isinstance(adapter, ChannelOrderAdapter) and isinstance(adapter.inner, PaddedShortcut)
    assert not torch.equal(input_weight(deployed, "stem"), input_weight(converted, "stem"))  # its outputs permuted
    x = torch.randn(2, 3, 8, 8)
    assert_same_outputs(deployed, converted, x)
    with torch.no_grad():
        expected = converted(x)
        ghostify.save(deployed, tmp_path / "saved")
        loaded = ghostify.load(tmp_path / "saved", base_model=model).eval()
        assert loaded.ghostify_deploy == record and isinstance(loaded.blocks[2].shortcut, ChannelOrderAdapter)
        assert torch.equal(loaded(x), deployed(x))
        assert torch.allclose(torch.jit.script(deployed)(x), expected, atol=1e-5)
        assert torch.allclose(torch.export.export(deployed, (x,)).module()(x), expected, atol=1e-5)


class ShuffledShortcut(nn.Module):
    """A residual stream through a leaf module that needs the original order, whose input and output are both
    in the stream: it gathers on both sides (2 gathers for 3 ghost modules), whichever side the region reaches first."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.conv1, self.bn1 = nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.conv2, self.bn2 = nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.conv3, self.bn3 = nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.shuffle = nn.ChannelShuffle(2)
        self.head = nn.Conv2d(8, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        y = torch.relu(self.bn1(self.conv1(x)) + self.shuffle(x) + x)
        y = torch.relu(self.bn2(self.conv2(y)) + y)
        return self.head(torch.relu(self.bn3(self.conv3(y)) + y))


def test_a_leaf_module_inside_the_stream_gathers_its_input_and_its_output():
    torch.manual_seed(0)
    model = trained_like_norms(ShuffledShortcut())
    converted = convert_all(model, include=["conv1", "conv2", "conv3"], share_across_shortcuts=True)
    deployed = deploy(converted)
    assert deployed.ghostify_deploy.adapters == {"shuffle": (8, 8)} and deployed.ghostify_deploy.gathers == 0
    assert_same_outputs(deployed, converted, torch.randn(2, 3, 8, 8))


class StochasticDepthBlock(nn.Module):
    """torchvision's blocks: the residual branch ends in StochasticDepth; the head flattens with start_dim=1."""

    def __init__(self) -> None:
        super().__init__()
        from torchvision.ops import StochasticDepth

        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.conv1, self.bn1 = nn.Conv2d(8, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16)
        self.conv2, self.bn2 = nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16)
        self.drop = StochasticDepth(0.2, "row")
        self.pool, self.fc = nn.AdaptiveAvgPool2d(1), nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(self.stem(x))))
        x = x + self.drop(self.bn2(self.conv2(x)))
        return self.fc(self.pool(x).flatten(start_dim=1))


def test_stochastic_depth_and_a_keyword_flatten_pass_the_order_on():
    torch.manual_seed(0)
    model = trained_like_norms(StochasticDepthBlock())
    converted = convert_all(model, include=["conv1", "conv2"])
    deployed = deploy(converted)
    assert deployed.ghostify_deploy.gathers == 0, [layer.reasons for layer in deployed.ghostify_deploy.layers]
    assert_same_outputs(deployed, converted, torch.randn(2, 3, 8, 8))


class PaddedBlock(nn.Module):
    """One ghost module whose add reads an option-A shortcut: an adapter would gather as often as the ghost."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.conv, self.bn = nn.Conv2d(4, 8, 3, 2, 1, bias=False), nn.BatchNorm2d(8)
        self.shortcut = PaddedShortcut(2)
        self.head = nn.Conv2d(8, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem(x))
        return self.head(torch.relu(self.bn(self.conv(x)) + self.shortcut(x)))


def test_a_boundary_gather_is_not_taken_where_it_saves_nothing():
    torch.manual_seed(0)
    model = trained_like_norms(PaddedBlock())
    converted = convert_all(model, include=["conv"])
    deployed = deploy(converted)
    layer, = deployed.ghostify_deploy.layers
    assert layer.gather and not deployed.ghostify_deploy.adapters
    assert layer.reasons[-1] == ("a residual add (add) needs the original channel order (pad is not made by a conv); "
                                 "1 gather(s) at the boundary of shortcut instead would save no more")
    assert_same_outputs(deployed, converted, torch.randn(2, 3, 8, 8))


def test_repeated_inference_keeps_its_packed_calls_and_follows_what_changes(monkeypatch):
    """A serving loop runs each ghost module on the packed calls it made on the first call; new weights, another
    input shape or a gradient to keep go the long way again, and copies start without them."""
    torch.manual_seed(0)
    converted = convert_all(trained_like_norms(Chain(4, 8, 3, 1, 1, 1, False)), include=["conv"])
    deployed = deploy(converted)
    x = torch.randn(1, 4, 10, 10).contiguous(memory_format=torch.channels_last)
    packed_conv2d, calls = prepacked.packed_conv2d, []
    monkeypatch.setattr(prepacked, "packed_conv2d", lambda conv, x: calls.append(x.shape) or packed_conv2d(conv, x))
    with torch.no_grad():
        first = deployed.conv(x)
        fast = deployed.conv.__dict__["_ghostify_fast_path"]
        assert fast.shape == x.shape and len(calls) == 2
        assert torch.equal(deployed.conv(x), first) and len(calls) == 2  # straight to the packed calls
        deployed.conv.primary.weight.mul_(2)
        twin = copy.deepcopy(deployed)  # starts without packed calls: the long way
        assert "_ghostify_fast_path" not in vars(twin.conv) or twin.conv.__dict__["_ghostify_fast_path"].shape is None
        assert torch.allclose(deployed.conv(x), twin.conv(x), atol=1e-6) and not torch.allclose(deployed.conv(x), first)
        batch = torch.cat([x, torch.randn(2, 4, 10, 10)]).contiguous(memory_format=torch.channels_last)
        assert torch.allclose(deployed.conv(batch)[:1], deployed.conv(x), atol=1e-6)
        assert deployed.conv.__dict__["_ghostify_fast_path"].shape == x.shape
    out = deployed.conv(x)
    assert out.requires_grad and torch.allclose(out, twin.conv(x), atol=1e-6)


def input_weight(model: nn.Module, name: str) -> torch.Tensor:
    module = model.get_submodule(name)
    return module.primary.weight if hasattr(module, "primary") else module.weight


def test_a_zero_scale_norm_is_not_folded_and_outputs_still_match():
    torch.manual_seed(0)
    model = trained_like_norms(Chain(3, 8, 3, 1, 1, 1, False))
    model.bn.weight.data[2] = 0.0  # e.g. timm's zero-initialised last BN of a residual block
    converted = convert_all(model, include=["conv"])
    deployed = deploy(converted)
    layer = deployed.ghostify_deploy.layers[0]
    assert layer.folded_norm is None and "zero scales" in layer.reasons[0]
    assert isinstance(deployed.bn, nn.BatchNorm2d) and not layer.gather  # the order still moved through the BN
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        assert torch.allclose(deployed(x), converted(x), atol=1e-5, rtol=1e-4)


def test_deploy_leaves_the_converted_model_alone_and_refuses_what_it_cannot_deploy():
    torch.manual_seed(0)
    model = trained_like_norms(Chain(3, 8, 3, 1, 1, 1, False))
    converted = convert_all(model, include=["conv"])
    before = {k: v.clone() for k, v in converted.state_dict().items()}
    deployed = deploy(converted)
    assert all(torch.equal(before[k], v) for k, v in converted.state_dict().items())
    with pytest.raises(ConfigError, match="already in deploy form"):
        deploy(deployed)
    with pytest.raises(ConfigError, match="convert it first"):
        deploy(model)
    nothing = deploy(ghostify.convert(model, min_channels=10_000))  # e.g. --target latency kept every layer
    assert nothing.ghostify_deploy.summary() == "deploy form: nothing to fold (no ghost modules)"
    x = torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(nothing(x), model(x))


@pytest.mark.parametrize("spec", [
    "resnet18", "mobilenetv3_small_050",  # residual adds, squeeze-excite products, BatchNormAct2d
    "torchvision:shufflenet_v2_x0_5", "torchvision:squeezenet1_1",  # channel shuffle, concatenations
    "torchvision:lraspp_mobilenet_v3_large",  # a dict output
])
def test_zoo_models_deploy_exactly(spec):
    model = trained_like_norms(ghostify.resolve_model(spec).model)
    converted = ghostify.convert(model).eval()
    x = torch.randn(2, 3, 64, 64)
    deployed = deploy(converted)
    record = deployed.ghostify_deploy
    assert record.gathers < len(record.layers)
    with torch.no_grad():
        expected, got = converted(x), deployed(x)
    if isinstance(expected, dict):
        expected, got = expected["out"], got["out"]
    assert (got - expected).abs().max().item() <= 1e-4 * expected.abs().max().item()


def test_deployed_model_saves_loads_and_exports(tmp_path):
    torch.manual_seed(0)
    model = trained_like_norms(Chain(3, 8, 3, 1, 1, 1, False))
    converted = convert_all(model, include=["conv"])
    x = torch.randn(2, 3, 8, 8)
    deployed = deploy(converted)
    assert all(t.is_leaf for t in (*deployed.parameters(), *deployed.buffers()))  # no autograd history kept
    copy.deepcopy(deployed)
    ghostify.save(deployed, tmp_path / "saved")
    loaded = ghostify.load(tmp_path / "saved", base_model=model).eval()
    assert isinstance(loaded.conv, DeployedGhostConv2d) and isinstance(loaded.bn, nn.Identity)
    assert loaded.conv.shifted and not loaded.conv.gather
    assert DeployRecord.from_dict(loaded.ghostify_deploy.to_dict()) == deployed.ghostify_deploy
    assert loaded.ghostify_deploy.channels_last and loaded.conv.primary.weight.is_contiguous(memory_format=torch.channels_last)
    assert [type(m) for m in (loaded.stem, loaded.dw, loaded.head, loaded.conv.primary)] == [PrepackedConv2d] * 3 + [nn.Conv2d]
    with torch.no_grad():
        expected = deployed(x)
        assert torch.equal(loaded(x), expected)
        exported = torch.export.export(deployed, (x,)).module()
        assert torch.allclose(exported(x), expected, atol=1e-6)


def test_the_deploy_form_runs_channels_last_unless_asked_not_to():
    torch.manual_seed(0)
    model = trained_like_norms(Chain(3, 8, 3, 1, 1, 1, False))
    converted = convert_all(model, include=["conv"])
    x = torch.randn(2, 3, 8, 8)  # an ordinary NCHW input
    nhwc, nchw = deploy(converted), deploy(converted, channels_last=False)
    assert nhwc.ghostify_deploy.channels_last and not nchw.ghostify_deploy.channels_last
    assert nhwc.ghostify_deploy.summary().endswith(", channels_last")
    assert all(w.is_contiguous(memory_format=torch.channels_last) for w in nhwc.parameters() if w.dim() == 4)
    assert all(w.is_contiguous() for w in nchw.parameters())
    kept = [name for name, m in nhwc.named_modules() if isinstance(m, PrepackedConv2d)]  # the convs not converted
    assert kept == ["stem", "dw", "head"] and not any(isinstance(m, PrepackedConv2d) for m in nchw.modules())
    seen = []
    nhwc.conv.register_forward_hook(lambda module, args, out: seen.append(out.is_contiguous(memory_format=torch.channels_last)))
    with torch.no_grad():
        expected = converted(x)
        for deployed in (nhwc, nchw):
            assert torch.allclose(deployed(x), expected, atol=1e-5, rtol=1e-4)
    assert seen == [True]  # the shifted maps' concatenation keeps the layout
    old = nhwc.ghostify_deploy.to_dict()
    old["version"] = 1
    del old["channels_last"]
    assert DeployRecord.from_dict(old).channels_last is False  # records written before it: NCHW


@pytest.mark.parametrize("stride, dilation", [(1, 1), (2, 1), (1, 2)])
def test_channels_last_inference_on_cpu_goes_straight_to_onednn_and_matches_the_train_form(monkeypatch, stride, dilation):
    """At batch 1 on small maps PyTorch would pick its native conv, which reorders channels_last inputs;
    with no gradient needed both convs of a ghost module run on prepacked weights."""
    torch.manual_seed(0)
    model = trained_like_norms(Chain(4, 8, 3, stride, 1, dilation, False))
    converted = convert_all(model, include=["conv"])
    nhwc, nchw = deploy(converted), deploy(converted, channels_last=False)
    direct, calls = torch.mkldnn_convolution, []
    monkeypatch.setattr(torch, "mkldnn_convolution", lambda *args: calls.append(args[0].shape) or direct(*args))
    packed_conv2d, packed_calls = prepacked.packed_conv2d, []
    monkeypatch.setattr(prepacked, "packed_conv2d", lambda conv, x: packed_calls.append(x.shape) or packed_conv2d(conv, x))
    x = torch.randn(1, 4, 10, 10).contiguous(memory_format=torch.channels_last)  # (the 1x1 stem keeps an NCHW input NCHW)
    with torch.no_grad():
        expected = converted(x)
    got = nhwc(x)  # gradients wanted: the weights are reordered on each call
    assert calls == [(1, 4, 10, 10)] and not packed_calls  # the primary conv of the one ghost module
    assert torch.allclose(got, expected, atol=1e-5, rtol=1e-4) and got.requires_grad
    with torch.no_grad():
        got = nhwc(x)
        assert len(calls) == 1 and packed_calls == [(1, 4, 10, 10), (1, 4, *got.shape[2:])]  # primary, then cheap
        assert got.is_contiguous(memory_format=torch.channels_last) or got.shape[-1] == 1
        assert torch.allclose(got, expected, atol=1e-5, rtol=1e-4)
        assert torch.allclose(nchw(x.contiguous()), expected, atol=1e-5, rtol=1e-4)  # NCHW: PyTorch's own choice
        traced = torch.jit.trace(nhwc, x, check_trace=False)  # traced (scripted, compiled, exported) forms keep F.conv2d
        assert torch.allclose(traced(x), expected, atol=1e-5, rtol=1e-4)
        graph = str(traced.inlined_graph)
        assert "mkldnn" not in graph and len(calls) == 1 and len(packed_calls) == 2


def test_channels_last_leaves_tensors_that_are_not_4d_alone():
    model = nn.Sequential(nn.Conv3d(2, 4, 3), nn.Conv1d(4, 4, 1), nn.Conv2d(4, 4, 3), nn.BatchNorm2d(4))
    to_channels_last(model)
    assert model[0].weight.is_contiguous() and model[1].weight.is_contiguous()
    assert model[2].weight.is_contiguous(memory_format=torch.channels_last) and not model[2].weight.is_contiguous()


def test_onnx_round_trip_of_converted_and_deployed_models():
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    timm = pytest.importorskip("timm")
    model = trained_like_norms(timm.create_model("resnet18"))
    converted = ghostify.convert(model).eval()
    x = torch.randn(1, 3, 64, 64)
    for candidate in (converted, deploy(converted)):
        program = torch.onnx.export(candidate, (x,), dynamo=True, verbose=False)
        session = ort.InferenceSession(program.model_proto.SerializeToString())
        got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
        with torch.no_grad():
            expected = candidate(x).numpy()
        assert np.abs(got - expected).max() <= 1e-4 * np.abs(expected).max()


def test_torchscript_of_converted_and_deployed_models(tmp_path):
    timm = pytest.importorskip("timm")
    model = trained_like_norms(timm.create_model("resnet18"))
    converted = ghostify.convert(model).eval()
    deployed = deploy(converted)
    assert any(layer.shifted for layer in deployed.ghostify_deploy.layers)  # the shifted copy path is scripted too
    x = torch.randn(2, 3, 64, 64)
    for candidate in (converted, deployed):
        with torch.no_grad():
            expected = candidate(x)
            scripted = torch.jit.script(candidate)
            scripted.save(str(tmp_path / "model.pt"))
            assert torch.allclose(torch.jit.load(str(tmp_path / "model.pt"))(x), expected, atol=1e-5)
            assert torch.allclose(torch.jit.trace(candidate, x)(x), expected, atol=1e-5)
    for ghost in (GhostConv1d.like(nn.Conv1d(4, 8, 3), 2, 3), GhostConv3d.like(nn.Conv3d(4, 8, 3), 2, 3)):
        probe = torch.randn(1, 4, *(5,) * len(ghost.kernel_size))
        with torch.no_grad():
            assert torch.equal(torch.jit.script(ghost)(probe), ghost(probe))


def test_cli_convert_deploy_writes_a_loadable_deploy_form_and_bench_times_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "nets.py").write_text(
        "import torch\nfrom torch import nn\n\n\ndef make():\n    torch.manual_seed(0)\n"
        "    m = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1),"
        " nn.BatchNorm2d(32), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 4))\n"
        "    for bn in (m[1], m[4]):\n        bn.bias.data.uniform_(-1, 1)\n        bn.running_mean.uniform_(-1, 1)\n"
        "    return m\n"
    )
    result = runner.invoke(app, ["convert", "nets.py:make", "--input-size", "12", "--deploy", "-o", "out"])
    assert result.exit_code == 0, result.output
    # layer 3 (BN 4 folded, its order moved into conv 6); conv 6's order goes through the pool into the Linear head
    assert "deploy form: 1 of 2 BatchNorms folded, 2 of 2 channel gathers folded into the next layers" in result.output
    assert "MAC cross-check ok" in result.output
    loaded = ghostify.load("out").eval()
    original = ghostify.resolve_model("nets.py:make").model.eval()
    reference = ghostify.convert(original).eval()
    x = torch.randn(2, 3, 12, 12)
    with torch.no_grad():
        assert torch.allclose(loaded(x), reference(x), atol=1e-5, rtol=1e-4)
    assert isinstance(loaded[3], DeployedGhostConv2d) and isinstance(loaded[4], nn.Identity)
    result = runner.invoke(app, ["bench", "out", "--repeats", "3", "--batch-sizes", "1"])
    assert result.exit_code == 0 and "Speedup" in result.output, result.output
    result = runner.invoke(app, ["bench", "out", "--repeats", "3", "--batch-sizes", "1", "--deploy"])
    assert result.exit_code == 1 and "already in deploy form" in result.output
    result = runner.invoke(app, ["bench", "nets.py:make", "--input-size", "12", "--repeats", "3", "--batch-sizes", "1", "--deploy"])
    assert result.exit_code == 0 and "(deploy form)" in result.output, result.output
    images = tmp_path / "images" / "a"
    images.mkdir(parents=True)
    for index in range(4):
        Image.new("RGB", (12, 12), (index * 40, 10, 10)).save(images / f"{index}.png")
    torch.save(original.state_dict(), tmp_path / "weights.pt")
    result = runner.invoke(app, ["distill", "out", "--data", "images", "--epochs", "1", "-c", "weights.pt"])
    assert result.exit_code == 1 and "deploy form" in result.output and "then deploy it" in result.output, result.output


def test_cli_share_across_shortcuts_gives_a_cifar_resnet_a_deploy_form_without_gathers(tmp_path):
    spec = str(Path(__file__).resolve().parents[1] / "examples" / "cifar_resnet.py") + ":resnet20"
    outputs = {}
    for flags in ([], ["--share-across-shortcuts"]):
        out = tmp_path / ("shared" if flags else "default")
        result = runner.invoke(app, ["convert", spec, "--input-size", "3,32,32", "--deploy", "-o", str(out), *flags])
        assert result.exit_code == 0, result.output
        outputs[bool(flags)] = result.output
        assert ghostify.get_plan(ghostify.load(out)).config.share_across_shortcuts == bool(flags)
    assert "9 of 18 channel gathers folded" in outputs[False]
    assert ("18 of 18 channel gathers folded into the next layers (4 gathered at the boundary of layer2.0.shortcut, "
            "layer3.0.shortcut instead)") in " ".join(outputs[True].split())
