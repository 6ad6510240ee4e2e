"""Re-parameterisable blocks are fused before converting (GhostConfig.reparameterize), and every
verb that pairs a converted model with its original (load, compare, bench, calibrate, distill)
puts the original in the same form."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

import ghostify
from ghostify.config import GhostConfig
from ghostify.ghost_module import is_ghost_module


class ConvNorm(nn.Sequential):
    """A conv + BatchNorm that fuses itself for inference (as LeViT's / EfficientViT's ConvNorm)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.add_module("conv", nn.Conv2d(cin, cout, 3, padding=1, bias=False))
        self.add_module("bn", nn.BatchNorm2d(cout))

    @torch.no_grad()
    def fuse(self) -> nn.Conv2d:
        scale = self.bn.weight / (self.bn.running_var + self.bn.eps).sqrt()
        fused = nn.Conv2d(self.conv.in_channels, self.conv.out_channels, 3, padding=1)
        fused.weight.copy_(self.conv.weight * scale[:, None, None, None])
        fused.bias.copy_(self.bn.bias - self.bn.running_mean * scale)
        return fused


class TwoBranch(nn.Module):
    """A RepVGG-like block: 3x3 + 1x1 branches while training, one 3x3 conv after reparameterize()."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.kxk = nn.Conv2d(channels, channels, 3, padding=1)
        self.one = nn.Conv2d(channels, channels, 1)
        self.reparam_conv: nn.Conv2d | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.reparam_conv is not None:
            return torch.relu(self.reparam_conv(x))
        return torch.relu(self.kxk(x) + self.one(x))

    @torch.no_grad()
    def reparameterize(self) -> None:
        if self.reparam_conv is not None:
            return
        conv = nn.Conv2d(self.kxk.in_channels, self.kxk.out_channels, 3, padding=1)
        conv.weight.copy_(self.kxk.weight + nn.functional.pad(self.one.weight, (1, 1, 1, 1)))
        conv.bias.copy_(self.kxk.bias + self.one.bias)
        self.reparam_conv = conv
        del self.kxk, self.one


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.block1 = ConvNorm(16, 32)
        self.block2 = TwoBranch(32)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.block2(torch.relu(self.block1(self.stem(x)))))


@pytest.fixture()
def net() -> Net:
    torch.manual_seed(0)
    model = Net()
    with torch.no_grad():  # trained-like BatchNorm statistics, so that fusing is not the identity
        model.block1.bn.running_mean.uniform_(-0.5, 0.5)
        model.block1.bn.running_var.uniform_(0.5, 2.0)
        model.block1.bn.weight.uniform_(0.5, 1.5)
    return model.eval()


def test_blocks_are_fused_in_a_copy_and_their_convs_converted(net):
    x = torch.randn(2, 3, 16, 16)
    plan = ghostify.plan_conversion(net)
    assert plan.reparameterized == ["block1", "block2"]
    assert [layer.name for layer in plan.converted] == ["block1", "block2.reparam_conv"]
    converted = ghostify.convert(net)
    assert is_ghost_module(converted.block1) and is_ghost_module(converted.block2.reparam_conv)
    assert isinstance(net.block1, ConvNorm) and net.block2.reparam_conv is None  # the user's model is untouched
    fused = ghostify.base_form(net, plan)
    assert fused is not net and isinstance(fused.block1, nn.Conv2d)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), net(x), rtol=1e-5, atol=1e-5)  # fusing is exact
        assert converted(x).shape == net(x).shape
    assert isinstance(ghostify.base_form(fused, plan).block1, nn.Conv2d)  # fusing again changes nothing


def test_reparameterize_off_keeps_those_convs_with_a_reason_that_says_what_to_do(net):
    plan = ghostify.plan_conversion(net, reparameterize=False)
    assert not plan.reparameterized
    assert [layer.name for layer in plan.converted] == []
    assert plan.layer("block1.conv").reason == (
        "inside block1 (ConvNorm), whose fuse() fuses its convs' weights; convert with reparameterize=True "
        "(--reparameterize) to fuse such blocks first")
    assert plan.layer("block2.kxk").reason.startswith("inside block2 (TwoBranch), whose reparameterize() fuses")


def test_in_place_conversion_fuses_the_model_itself(net):
    converted = ghostify.convert_(net)
    assert converted is net and is_ghost_module(net.block1)


def test_save_and_load_onto_the_unfused_original(net, tmp_path):
    x = torch.randn(2, 3, 16, 16)
    converted = ghostify.convert(net)
    ghostify.save(converted, tmp_path / "saved")
    recipe = json.loads((tmp_path / "saved" / "ghostify.json").read_text())
    assert recipe["plan"]["reparameterized"] == ["block1", "block2"]
    loaded = ghostify.load(tmp_path / "saved", base_model=net)  # the training form: load fuses a copy of it
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), converted(x))
    assert isinstance(net.block1, ConvNorm)


def test_records_written_before_the_option_existed_load_without_fusing():
    data = GhostConfig().to_dict()
    data["_version"], data["_data"] = 1, {k: v for k, v in data["_data"].items() if k != "reparameterize"}
    assert GhostConfig.from_dict(data).reparameterize is False
    assert GhostConfig.from_dict(GhostConfig().to_dict()).reparameterize is True


def test_compare_bench_calibrate_and_distill_take_the_unfused_original(net):
    converted = ghostify.convert(net)
    report = ghostify.compare(net, converted, input_size=(3, 16, 16))
    assert report.reparameterized_blocks == 2
    assert "Re-parameterisable blocks fused first, in both models: 2" in report.to_markdown()
    assert ghostify.ComparisonReport.from_json(report.to_json()).reparameterized_blocks == 2
    assert report.params_before == sum(p.numel() for p in ghostify.base_form(net, ghostify.get_plan(converted)).parameters())
    bench = ghostify.bench(net, converted, (3, 16, 16), batch_sizes=[1], warmup=1, repeats=2)
    assert bench.rows and bench.rows[0].speedup > 0
    images = torch.randn(64, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    data = TensorDataset(images, torch.full((64,), -1))
    result = ghostify.calibrate(converted, net, data, samples=64)
    assert {layer.name for layer in result.layers} == {"block1", "block2.reparam_conv"}
    assert all(layer.error_after < layer.error_before for layer in result.layers)
    history = ghostify.distill(converted, net, data, config=ghostify.DistillConfig(epochs=1, batch_size=32)).history
    assert len(history) == 1


class FuseInPlace(nn.Module):
    """A conv + BatchNorm whose fuse() folds the norm in place and returns itself (timm's EfficientViM ConvLayer2d)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        self.norm: nn.Module | None = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        return self.norm(x) if self.norm is not None else x

    @torch.no_grad()
    def fuse(self) -> nn.Module:
        if self.norm is not None:
            self.conv = torch.nn.utils.fusion.fuse_conv_bn_eval(self.conv, self.norm)
            self.norm = None
        return self


def test_blocks_that_fuse_in_place_convert_once_fused():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), FuseInPlace(8, 16), nn.ReLU(), FuseInPlace(16, 16)).eval()
    plan = ghostify.plan_conversion(model)
    assert plan.reparameterized == ["1", "3"]
    assert [layer.name for layer in plan.converted] == ["1.conv"]  # "3.conv" makes the model's output
    converted = ghostify.convert(model, skip_output=False)
    assert is_ghost_module(converted[1].conv) and is_ghost_module(converted[3].conv)
    assert converted[1].norm is None and model[1].norm is not None


class FusionHead(nn.Module):
    """A segmentation-style head whose fusion conv is called ``fuse``, and a block whose fuse() needs inputs."""

    def __init__(self) -> None:
        super().__init__()
        self.fuse = nn.Conv2d(16, 16, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fuse(x)


class Combine(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(16, 16, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fuse(self.conv(x), x)

    def fuse(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a + b


def test_attributes_called_fuse_that_are_not_fusing_methods_are_left_alone():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), FusionHead(), Combine(), nn.Conv2d(16, 4, 1)).eval()
    plan = ghostify.plan_conversion(model)
    assert plan.reparameterized == []
    assert {layer.name for layer in plan.converted} == {"1.fuse", "2.conv"}
    x = torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        assert ghostify.convert(model)(x).shape == model(x).shape


class BrokenFuse(ConvNorm):
    def fuse(self) -> nn.Conv2d:
        raise RuntimeError("cannot fuse in this state")


def test_a_block_whose_fusing_fails_keeps_its_convs_and_says_why():
    model = nn.Sequential(nn.Conv2d(3, 16, 3), BrokenFuse(16, 32), nn.ReLU(), nn.Conv2d(32, 32, 3), nn.Conv2d(32, 4, 1)).eval()
    plan = ghostify.plan_conversion(model)
    assert plan.reparameterized == [] and [layer.name for layer in plan.converted] == ["3"]
    assert "fusing the re-parameterisable blocks failed (RuntimeError: cannot fuse in this state)" in plan.trace_note
    assert plan.layer("1.conv").reason.startswith("inside 1 (BrokenFuse), whose fuse() fuses its convs' weights")
    x = torch.randn(1, 3, 12, 12)
    with torch.no_grad():
        assert ghostify.convert(model)(x).shape == model(x).shape
