"""convert / convert_ on real and hand-made models: analysis, selection, swapping, config round trip."""

from __future__ import annotations

import copy
import json
import re

import pytest
import timm
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import ghostify
from ghostify import GhostConfig, GhostConv2d
from ghostify.config import CONFIG_VERSION
from ghostify.errors import ConfigError, PatternMatchError

BUILDERS = {
    "tv-resnet18": torchvision.models.resnet18,
    "tv-resnet50": torchvision.models.resnet50,
    "timm-resnet18": lambda: timm.create_model("resnet18"),
    "timm-resnet50": lambda: timm.create_model("resnet50"),
}
CONV_COUNTS = {"resnet18": 20, "resnet50": 53}

pytestmark = pytest.mark.usefixtures("single_thread")


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def conv_names(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if type(m) is nn.Conv2d]


class Zoo:
    """Builds each (model, ratio) once per module: the original, its output before conversion, the copy."""

    def __init__(self) -> None:
        self._cache: dict = {}
        torch.manual_seed(0)
        self.x = torch.randn(1, 3, 64, 64)

    def get(self, name: str, ratio: int = 2, init: str = "transfer"):
        key = (name, ratio, init)
        if key not in self._cache:
            torch.manual_seed(0)
            model = BUILDERS[name]().eval()
            with torch.no_grad():
                before = model(self.x)
            converted = ghostify.convert(model, ratio=ratio, init=init)
            self._cache[key] = (model, before, converted)
        return self._cache[key]


@pytest.fixture(scope="module")
def zoo() -> Zoo:
    return Zoo()


# ---------------------------------------------------------------------------------------------
# ResNets from torchvision and timm


def _check_converted(zoo: Zoo, name: str) -> tuple[nn.Module, nn.Module]:
    model, before, converted = zoo.get(name)
    plan = ghostify.get_plan(converted)
    n_convs = CONV_COUNTS[name.split("-")[1]]
    assert plan.trace == "fx" and plan.trace_note is None
    assert len(plan.layers) == n_convs
    assert all(l.call_sites == 1 and l.kind == "module" for l in plan.layers)
    # every conv but the stem (kept by default, as in the paper)
    assert [l.name for l in plan.layers][0] == "conv1"
    assert [(l.name, l.reason, l.ratio) for l in plan.skipped] == [("conv1", "stem conv (skip_stem)", 1)]
    assert plan.layer("conv1").eligible and plan.layer("conv1").fit_error is None
    assert len(plan.converted) == n_convs - 1
    assert all(l.ratio == 2 for l in plan.converted)
    assert all(l.fit_error is not None and 0.0 < l.fit_error < 1.0 for l in plan.converted)
    assert {l.name for l in plan.layers} == set(conv_names(model))
    ghosts = [n for n, m in converted.named_modules() if isinstance(m, GhostConv2d)]
    assert sorted(ghosts) == sorted(set(conv_names(model)) - {"conv1"})
    assert type(converted.conv1) is nn.Conv2d and torch.equal(converted.conv1.weight, model.conv1.weight)
    assert type(converted) is type(model)

    converted.eval()
    with torch.no_grad():
        out = converted(zoo.x)
    assert out.shape == before.shape == (1, 1000)
    assert torch.isfinite(out).all()

    # the original is untouched: still plain convs, same output
    assert len(conv_names(model)) == n_convs
    assert not any(isinstance(m, GhostConv2d) for m in model.modules())
    assert ghostify.get_plan(model) is None
    with torch.no_grad():
        assert torch.equal(model(zoo.x), before)
    return model, converted


@pytest.mark.parametrize("name", ["tv-resnet18", "timm-resnet18"])
def test_resnet18_converts(zoo, name):
    model, converted = _check_converted(zoo, name)
    assert n_params(converted) < 0.6 * n_params(model)

    trainable = copy.deepcopy(converted).train()
    torch.manual_seed(1)
    x = torch.randn(2, 3, 64, 64)
    out = trainable(x)
    assert out.shape == (2, 1000)
    out.logsumexp(dim=1).mean().backward()
    for module in trainable.modules():
        if isinstance(module, GhostConv2d):
            for p in (module.primary.weight, module.cheap.weight):
                assert p.grad is not None and torch.isfinite(p.grad).all()
    # (timm zero-initialises each block's last BN, so inner blocks may get zero gradients; the
    # shortcut's downsample conv always gets some)
    shortcut = trainable.layer2[0].downsample[0]
    assert isinstance(shortcut, GhostConv2d)
    assert shortcut.primary.weight.grad.abs().sum() > 0
    assert shortcut.cheap.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("name", ["tv-resnet50", "timm-resnet50"])
def test_resnet50_converts(zoo, name):
    _check_converted(zoo, name)


def _expected_params(model: nn.Module, ratio: int, dw_size: int = 3, kept: tuple[str, ...] = ("conv1",)) -> int:
    """Parameters after converting every conv but ``kept``: a ghost module has a primary conv with
    ceil(n/s) filters and a depthwise conv with (s-1) d x d kernels per intrinsic map."""
    total = n_params(model)
    for name, conv in model.named_modules():
        if type(conv) is not nn.Conv2d or name in kept:
            continue
        m = -(-conv.out_channels // ratio)
        kh, kw = conv.kernel_size
        ghost = m * conv.in_channels * kh * kw + m * (ratio - 1) * dw_size * dw_size
        if conv.bias is not None:
            ghost += m + m * (ratio - 1)
        total += ghost - sum(p.numel() for p in conv.parameters())
    return total


def test_resnet50_param_counts(zoo):
    model, _, half = zoo.get("timm-resnet50", 2)
    assert n_params(model) == 25_557_032
    # the stem (3->64, 7x7: 9,408 parameters) is kept; the README's 13.95 M is unchanged at 2 decimals
    assert n_params(half) == _expected_params(model, 2) == 13_953_512
    _, _, quarter = zoo.get("timm-resnet50", 4, init="random")  # counts do not depend on the init
    assert n_params(quarter) == _expected_params(model, 4)
    assert 8_000_000 <= n_params(quarter) <= 8_250_000
    assert all(l.ratio == 4 for l in ghostify.get_plan(quarter).converted)


def test_reconverting_a_converted_model_finds_no_convs(zoo):
    _, _, converted = zoo.get("tv-resnet18")
    plan = ghostify.plan_conversion(converted)
    assert plan.trace == "fx"
    # the convs inside ghost modules are not offered again: only the kept stem is left, and kept
    assert [l.name for l in plan.layers] == ["conv1"]
    assert plan.converted == [] and plan.layer("conv1").reason == "stem conv (skip_stem)"
    assert [l.name for l in ghostify.plan_conversion(converted, skip_stem=False).converted] == ["conv1"]


# ---------------------------------------------------------------------------------------------
# A hand-made model with every awkward kind of conv


class DoubledConv(nn.Conv2d):
    """A Conv2d subclass whose forward is not Conv2d's."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) * 2


class PlainSubclass(nn.Conv2d):
    """A Conv2d subclass that keeps Conv2d's forward: an ordinary conv."""


class Awkward(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.shared = nn.Conv2d(16, 16, 3, padding=1)  # called at two sites
        self.a = nn.Conv2d(16, 16, 3, padding=1)  # registered under two names
        self.b = self.a
        self.weight = nn.Parameter(torch.randn(16, 16, 3, 3) * 0.1)  # functional conv
        self.dw = nn.Conv2d(16, 16, 3, padding=1, groups=16)  # depthwise
        self.unused = nn.Conv2d(16, 16, 3)  # never called
        self.custom = DoubledConv(16, 16, 3, padding=1)  # overrides forward
        self.plain = PlainSubclass(16, 16, 3, padding=1)
        self.head = nn.Conv2d(16, 10, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = self.shared(x).relu()
        x = self.shared(x).relu()
        x = self.a(x)
        x = self.b(x)
        x = F.conv2d(x, self.weight, padding=1)
        x = self.dw(x)
        x = self.custom(x)
        x = self.plain(x)
        return self.head(x)


def test_awkward_model_plan():
    torch.manual_seed(0)
    model = Awkward()
    plan = ghostify.plan_conversion(model)
    assert plan.trace == "fx"
    by_name = {l.name: l for l in plan.layers}
    # execution order, then the convs that never ran; a Conv2d subclass is one module site, not a
    # functional conv2d on its weight plus a "never called" module
    assert [l.name for l in plan.layers] == [
        "stem", "shared", "a", "weight (functional)", "dw", "custom", "plain", "head", "unused"
    ]
    assert [l.name for l in plan.converted] == ["shared", "a", "plain"]
    assert by_name["stem"].reason == "stem conv (skip_stem)" and by_name["stem"].eligible
    assert by_name["head"].reason == "produces the model's output (skip_output)" and by_name["head"].eligible
    everything = ghostify.plan_conversion(model, skip_stem=False, skip_output=False)
    assert [l.name for l in everything.converted] == ["stem", "shared", "a", "plain", "head"]
    assert [l.name for l in plan.layers if l.kind == "functional"] == ["weight (functional)"]

    assert by_name["shared"].call_sites == 2
    assert by_name["a"].call_sites == 2 and by_name["a"].aliases == ["b"]
    assert by_name["stem"].call_sites == 1 and by_name["plain"].call_sites == 1

    functional = by_name["weight (functional)"]
    assert functional.kind == "functional" and not functional.convert and not functional.eligible
    assert "functional" in functional.reason
    assert functional.out_channels == 16 and functional.kernel_size == [3, 3]
    assert "groups=16" in by_name["dw"].reason and "depthwise" in by_name["dw"].reason
    assert by_name["unused"].call_sites == 0 and "never called" in by_name["unused"].reason
    assert "DoubledConv overrides Conv2d.forward" in by_name["custom"].reason
    assert by_name["custom"].call_sites == 1  # it is called, once
    for name in ("dw", "unused", "custom"):
        assert by_name[name].ratio == 1 and by_name[name].intrinsic_channels is None


def test_awkward_model_convert():
    torch.manual_seed(0)
    model = Awkward().eval()
    x = torch.randn(2, 3, 12, 12)
    with torch.no_grad():
        before = model(x)
    converted = ghostify.convert(model, ratio=2, skip_output=False)
    with torch.no_grad():
        after = converted(x)
    assert after.shape == before.shape == (2, 10, 12, 12)
    assert torch.isfinite(after).all()

    assert isinstance(converted.a, GhostConv2d) and converted.a is converted.b
    assert isinstance(converted.shared, GhostConv2d)
    ghost_objects = {id(m) for m in converted.modules() if isinstance(m, GhostConv2d)}
    assert len(ghost_objects) == 4  # shared, a (= b), plain, head: a shared conv converts once
    named = [n for n, m in converted.named_modules(remove_duplicate=False) if isinstance(m, GhostConv2d)]
    assert sorted(named) == ["a", "b", "head", "plain", "shared"]
    assert type(converted.stem) is nn.Conv2d  # the stem is kept by default
    assert type(converted.dw) is nn.Conv2d and type(converted.unused) is nn.Conv2d
    assert type(converted.custom) is DoubledConv
    assert converted.weight.shape == (16, 16, 3, 3)
    assert model.a is model.b and type(model.a) is nn.Conv2d  # original untouched
    with torch.no_grad():
        assert torch.equal(model(x), before)


class DataDependent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 16, 3, padding=1)
        self.conv3 = nn.Conv2d(16, 16, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        if x.sum() > 0:
            return self.conv2(x)
        return self.conv3(x)


def test_untraceable_model_falls_back_to_module_walk():
    torch.manual_seed(0)
    model = DataDependent().eval()
    x = torch.randn(1, 3, 8, 8)
    converted = ghostify.convert(model, ratio=2, skip_stem=True)
    plan = ghostify.get_plan(converted)
    assert plan.trace == "module"
    assert "torch.fx" in plan.trace_note
    assert [l.name for l in plan.layers] == ["conv1", "conv2", "conv3"]
    assert [l.name for l in plan.converted] == ["conv2", "conv3"]
    assert "stem" in plan.layer("conv1").reason
    assert isinstance(converted.conv2, GhostConv2d) and isinstance(converted.conv3, GhostConv2d)
    with torch.no_grad():
        assert converted(x).shape == model(x).shape == (1, 16, 8, 8)
    # the plan survives a JSON round trip
    again = ghostify.ConversionPlan.from_dict(json.loads(json.dumps(plan.to_dict())))
    assert again.trace == "module" and again.trace_note == plan.trace_note
    assert [l.to_dict() for l in again.layers] == [l.to_dict() for l in plan.layers]


# ---------------------------------------------------------------------------------------------
# Selection on torchvision's resnet18


@pytest.fixture(scope="module")
def resnet18() -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.resnet18().eval()


ALL18 = [
    "conv1", "layer1.0.conv1", "layer1.0.conv2", "layer1.1.conv1", "layer1.1.conv2",
    "layer2.0.conv1", "layer2.0.conv2", "layer2.0.downsample.0", "layer2.1.conv1", "layer2.1.conv2",
    "layer3.0.conv1", "layer3.0.conv2", "layer3.0.downsample.0", "layer3.1.conv1", "layer3.1.conv2",
    "layer4.0.conv1", "layer4.0.conv2", "layer4.0.downsample.0", "layer4.1.conv1", "layer4.1.conv2",
]
SELECTIONS = {
    "layer2.0.conv1": ["layer2.0.conv1"],  # exact name
    "conv1": ["conv1"] + [n for n in ALL18 if n.endswith(".conv1")],  # suffix after a dot
    "0.conv2": [f"layer{i}.0.conv2" for i in range(1, 5)],  # dotted suffix
    "layer4.*": [n for n in ALL18 if n.startswith("layer4.")],  # glob
    "*.downsample.0": [n for n in ALL18 if "downsample" in n],  # glob
    "re:layer[12]\\..*": [n for n in ALL18 if n.startswith(("layer1.", "layer2."))],  # regex, whole name
}


def _converted_names(plan) -> list[str]:
    return [l.name for l in plan.converted]


def test_resnet18_layer_names(resnet18):
    assert [l.name for l in ghostify.plan_conversion(resnet18).layers] == ALL18


@pytest.mark.parametrize("pattern", list(SELECTIONS))
def test_include_patterns(resnet18, pattern):
    plan = ghostify.plan_conversion(resnet18, include=[pattern], skip_stem=False)
    assert _converted_names(plan) == SELECTIONS[pattern]
    for layer in plan.skipped:
        assert layer.reason == "not matched by any include pattern"
        assert layer.eligible  # structurally fine, just not selected
    # by default the stem is kept even when a pattern selects it; the rest is the same
    default = ghostify.plan_conversion(resnet18, include=[pattern])
    assert _converted_names(default) == [n for n in SELECTIONS[pattern] if n != "conv1"]
    expected = "stem conv (skip_stem)" if "conv1" in SELECTIONS[pattern] else "not matched by any include pattern"
    assert default.layer("conv1").reason == expected


@pytest.mark.parametrize("pattern", list(SELECTIONS))
def test_exclude_patterns(resnet18, pattern):
    plan = ghostify.plan_conversion(resnet18, exclude=pattern, skip_stem=False)
    assert _converted_names(plan) == [n for n in ALL18 if n not in SELECTIONS[pattern]]
    assert [l.name for l in plan.skipped] == SELECTIONS[pattern]
    assert all(l.reason == f"excluded by pattern {pattern!r}" for l in plan.skipped)
    # by default the stem is kept too; an exclude pattern that names it is the reason given
    default = ghostify.plan_conversion(resnet18, exclude=pattern)
    assert _converted_names(default) == [n for n in ALL18[1:] if n not in SELECTIONS[pattern]]
    expected = f"excluded by pattern {pattern!r}" if "conv1" in SELECTIONS[pattern] else "stem conv (skip_stem)"
    assert default.layer("conv1").reason == expected


def test_suffix_does_not_match_partial_names(resnet18):
    # "onv1" is neither a name nor a dotted suffix of one
    with pytest.raises(PatternMatchError, match="'onv1'"):
        ghostify.plan_conversion(resnet18, include=["onv1"])
    # regexes must match the whole name
    with pytest.raises(PatternMatchError):
        ghostify.plan_conversion(resnet18, include=["re:layer1"])


def test_exclude_wins_over_include(resnet18):
    plan = ghostify.plan_conversion(resnet18, include=["layer4.*"], exclude=["downsample.0"])
    assert _converted_names(plan) == ["layer4.0.conv1", "layer4.0.conv2", "layer4.1.conv1", "layer4.1.conv2"]
    assert plan.layer("layer4.0.downsample.0").reason == "excluded by pattern 'downsample.0'"


def test_layer_ratios_first_match_wins(resnet18):
    config = GhostConfig(ratio=2, layer_ratios=[("layer4.0.*", 4), ("layer4.*", 3), ("re:layer1\\..*", 1)])
    plan = ghostify.plan_conversion(resnet18, config)
    ratios = {l.name: l.ratio for l in plan.layers}
    assert ratios["layer4.0.conv1"] == 4 and ratios["layer4.0.downsample.0"] == 4
    assert ratios["layer4.1.conv1"] == 3 and ratios["layer4.1.conv2"] == 3
    assert ratios["layer3.1.conv2"] == 2
    assert ratios["conv1"] == 1 and plan.layer("conv1").reason == "stem conv (skip_stem)"  # kept by default
    assert ghostify.plan_conversion(resnet18, config, skip_stem=False).layer("conv1").ratio == 2
    for name in ALL18[1:5]:  # layer1: ratio 1 keeps the conv
        layer = plan.layer(name)
        assert not layer.convert and layer.ratio == 1
        assert "ratio 1" in layer.reason and "re:layer1" in layer.reason
    assert plan.layer("layer4.0.conv1").intrinsic_channels == 512 // 4
    assert plan.layer("layer4.1.conv1").intrinsic_channels == -(-512 // 3)

    # reversing the rules reverses which one wins for layer4.0
    flipped = ghostify.plan_conversion(resnet18, layer_ratios={"layer4.*": 3, "layer4.0.*": 4})
    assert flipped.layer("layer4.0.conv1").ratio == 3

    converted = ghostify.convert(resnet18, config, include=["layer1.*", "layer4.*"])
    assert converted.layer4[0].conv1.ratio == 4 and converted.layer4[1].conv2.ratio == 3
    assert type(converted.layer1[0].conv1) is nn.Conv2d
    assert type(converted.layer3[0].conv1) is nn.Conv2d
    with torch.no_grad():
        assert converted(torch.randn(1, 3, 32, 32)).shape == (1, 1000)


def test_global_ratio_one_converts_nothing(resnet18):
    plan = ghostify.plan_conversion(resnet18, ratio=1)
    assert plan.converted == []
    assert all(l.reason == "ratio 1: nothing to convert" for l in plan.layers)


def test_skip_stem_and_pointwise(resnet18):
    assert GhostConfig().skip_stem is True  # the paper keeps the first conv
    for plan in (ghostify.plan_conversion(resnet18), ghostify.plan_conversion(resnet18, skip_stem=True)):
        assert [l.name for l in plan.skipped] == ["conv1"]
        assert plan.layer("conv1").reason == "stem conv (skip_stem)" and plan.layer("conv1").eligible
        assert len(plan.converted) == 20 - 1

    everything = ghostify.plan_conversion(resnet18, skip_stem=False)
    assert _converted_names(everything) == ALL18 and everything.skipped == []

    plan = ghostify.plan_conversion(resnet18, skip_stem=False, skip_pointwise=True)
    assert [l.name for l in plan.skipped] == [n for n in ALL18 if "downsample" in n]
    assert all(l.reason == "1x1 conv (skip_pointwise)" for l in plan.skipped)

    both = ghostify.plan_conversion(resnet18, skip_pointwise=True)
    assert [l.name for l in both.skipped] == ["conv1"] + [n for n in ALL18 if "downsample" in n]
    assert len(both.converted) == 20 - 1 - 3


def test_min_channels(resnet18):
    plan = ghostify.plan_conversion(resnet18, min_channels=128)
    assert [l.name for l in plan.skipped] == ALL18[:5]  # the 64-channel convs
    for layer in plan.skipped:
        assert layer.reason == "out_channels 64 < min_channels 128" and not layer.eligible
    assert len(ghostify.plan_conversion(resnet18, min_channels=512).converted) == 5
    assert ghostify.plan_conversion(resnet18, min_channels=1024).converted == []


@pytest.mark.parametrize("option, value, pattern", [
    ("include", ["layer9.*"], "layer9.*"),
    ("include", ["conv1", "nope"], "nope"),
    ("exclude", "re:head\\..*", "re:head\\..*"),
    ("layer_ratios", {"fc": 3}, "fc"),  # the Linear head is no conv
])
def test_pattern_matching_nothing_is_an_error(resnet18, option, value, pattern):
    with pytest.raises(PatternMatchError, match=re.escape(repr(pattern))) as info:
        ghostify.plan_conversion(resnet18, **{option: value})
    assert option in str(info.value)
    with pytest.raises(PatternMatchError):
        ghostify.convert(resnet18, **{option: value})


def test_invalid_regex_and_unknown_option(resnet18):
    with pytest.raises(ConfigError, match="regular expression"):
        ghostify.convert(resnet18, include=["re:layer[1"])
    with pytest.raises(ConfigError, match="ratioo"):
        ghostify.convert(resnet18, ratioo=2)
    with pytest.raises(ConfigError, match="ratio"):
        ghostify.convert(resnet18, ratio=0)
    with pytest.raises(ConfigError, match="dw_size"):
        ghostify.convert(resnet18, dw_size=2)
    with pytest.raises(ConfigError, match="layer_ratios"):
        ghostify.convert(resnet18, layer_ratios={"conv1": 0})
    with pytest.raises(ConfigError, match="variant"):
        ghostify.convert(resnet18, variant="nope")
    assert not any(isinstance(m, GhostConv2d) for m in resnet18.modules())


# ---------------------------------------------------------------------------------------------
# convert_ vs convert, variants, config


class Small(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.bn = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 32, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.bn(self.conv1(x)).relu())


def test_convert_in_place_vs_copy():
    torch.manual_seed(0)
    model = Small().eval()
    copied = ghostify.convert(model, skip_stem=False, skip_output=False)
    assert copied is not model
    assert type(model.conv1) is nn.Conv2d and type(model.conv2) is nn.Conv2d
    assert isinstance(copied.conv1, GhostConv2d) and copied.bn is not model.bn
    default = ghostify.convert(model, skip_output=False)  # the stem conv1 is kept
    assert type(default.conv1) is nn.Conv2d and default.conv1 is not model.conv1
    assert isinstance(default.conv2, GhostConv2d)

    same = ghostify.convert_(model, skip_stem=False, skip_output=False)
    assert same is model
    assert isinstance(model.conv1, GhostConv2d) and isinstance(model.conv2, GhostConv2d)
    assert ghostify.get_plan(model) is not None
    assert [l.name for l in ghostify.get_plan(model).converted] == ["conv1", "conv2"]
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():  # same deterministic transfer in both paths
        torch.testing.assert_close(model(x), copied(x))


def test_errors_leave_model_untouched():
    model = Small()
    with pytest.raises(PatternMatchError):
        ghostify.convert_(model, exclude=["conv1", "conv3"])
    assert type(model.conv1) is nn.Conv2d and ghostify.get_plan(model) is None


def test_random_init_and_paper_variant():
    torch.manual_seed(0)
    model = Small().eval()
    random = ghostify.convert(model, init="random", skip_output=False)
    assert all(l.fit_error is None for l in ghostify.get_plan(random).converted)
    assert type(random.conv1) is nn.Conv2d  # the stem is kept
    assert random.conv2.out_index.tolist() == list(range(32))

    paper = ghostify.convert(model, variant="paper-bn-relu", dw_size=5, ratio=4, skip_output=False)
    assert type(paper.conv1) is nn.Conv2d
    assert isinstance(paper.conv2, ghostify.GhostConv2dBNReLU)
    assert paper.conv2.dw_size == 5 and paper.conv2.ratio == 4
    with torch.no_grad():
        assert paper(torch.randn(1, 3, 8, 8)).shape == (1, 32, 4, 4)


def test_config_round_trip():
    config = GhostConfig(
        ratio=3, dw_size=5, include=["layer1.*", "conv1"], exclude="re:.*downsample.*",
        layer_ratios={"layer4.*": 4, "layer1.0.conv1": 1}, min_channels=16, skip_stem=True,
        skip_pointwise=True, variant="paper-bn-relu", init="random",
    )
    assert config.include == ("layer1.*", "conv1") and config.exclude == ("re:.*downsample.*",)
    assert config.layer_ratios == (("layer4.*", 4), ("layer1.0.conv1", 1))
    payload = config.to_dict()
    assert payload["_type"] == "GhostConfig" and payload["_version"] == CONFIG_VERSION
    assert GhostConfig.from_dict(payload) == config
    assert GhostConfig.from_dict(json.loads(json.dumps(payload))) == config
    assert GhostConfig.from_dict(GhostConfig().to_dict()) == GhostConfig()


def test_config_from_dict_rejects_newer_version_and_wrong_type():
    payload = GhostConfig(ratio=3).to_dict()
    payload["_version"] = CONFIG_VERSION + 1
    with pytest.raises(ConfigError, match="newer"):
        GhostConfig.from_dict(payload)
    with pytest.raises(ConfigError, match="GhostConfig"):
        GhostConfig.from_dict({"_type": "Other", "_version": 1, "_data": {}})
    bad = GhostConfig().to_dict()
    bad["_data"]["colour"] = "red"
    with pytest.raises(ConfigError, match="colour"):
        GhostConfig.from_dict(bad)


def test_config_options_override_config(resnet18):
    base = GhostConfig(ratio=4, exclude=["conv1"])
    plan = ghostify.plan_conversion(resnet18, base, ratio=3)
    assert plan.config.ratio == 3 and plan.config.exclude == ("conv1",)
    assert all(l.ratio == 3 for l in plan.converted)
    assert base.ratio == 4  # frozen, not mutated


class CachingModel(nn.Module):
    """Caches a tensor computed in forward, keyed by the input's device, as timm's LeViT caches its attention bias."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.body = nn.Conv2d(8, 8, 3, padding=1)
        self.head = nn.Linear(8, 4)
        self.scale = nn.Parameter(torch.ones(8))
        self.cache: dict[str, torch.Tensor] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        key = str(x.device)
        if key not in self.cache:
            self.cache[key] = self.scale * 2  # computed with autograd on: not a graph leaf
        x = self.body(self.stem(x)) * self.cache[key].view(1, -1, 1, 1)
        return self.head(x.mean((2, 3)))


def test_planning_leaves_the_model_as_it_was():
    model = CachingModel().eval()
    state = {name: value for name, value in vars(model).items() if not name.startswith("_")}
    plan = ghostify.plan_conversion(model)
    assert plan.trace == "fx" and [layer.name for layer in plan.converted] == ["body"]
    assert model.cache == {}  # the trace put a proxy in it; it was taken out again
    assert {name: value for name, value in vars(model).items() if not name.startswith("_")} == state
    converted = ghostify.convert(model)
    x = torch.randn(2, 3, 8, 8)
    assert converted(x).shape == (2, 4) and set(model.cache) == set()


def test_a_model_that_ran_forward_with_autograd_converts():
    model = CachingModel()
    model(torch.randn(2, 3, 8, 8))  # fills the cache with a tensor that has autograd history
    assert not model.cache["cpu"].is_leaf
    converted = ghostify.convert(model)
    assert isinstance(converted.body, GhostConv2d) and type(model.body) is nn.Conv2d
    assert converted.cache["cpu"].is_leaf and torch.equal(converted.cache["cpu"], model.cache["cpu"].detach())
    assert converted(torch.randn(2, 3, 8, 8)).shape == (2, 4)


def test_levit_converts_after_planning_and_after_a_forward_pass():
    x = torch.randn(2, 3, 224, 224)
    model = timm.create_model("levit_128s").eval()
    ghostify.plan_conversion(model)
    with torch.no_grad():
        assert ghostify.convert(model)(x).shape == (2, 1000)
    model(x)  # eval mode, autograd on: the attention-bias cache holds non-leaf tensors
    with torch.no_grad():
        assert ghostify.convert(model)(x).shape == (2, 1000)


def test_converting_twice_records_both_conversions(tmp_path):
    model = torchvision.models.resnet18().eval()
    first = ghostify.convert(model, include=["layer1.*"])
    second = ghostify.convert(first, include=["layer2.*"], ratio=3)
    plan = ghostify.get_plan(second)
    converted = {layer.name: layer.ratio for layer in plan.converted}
    assert converted == {**{n: 2 for n in ("layer1.0.conv1", "layer1.0.conv2", "layer1.1.conv1", "layer1.1.conv2")},
                         **{n: 3 for n in ("layer2.0.conv1", "layer2.0.conv2", "layer2.0.downsample.0", "layer2.1.conv1", "layer2.1.conv2")}}
    assert len(plan.layers) == 20 and ghostify.get_plan(first).converted == plan.converted[:4]
    ghostify.save(second, tmp_path / "m", base_model="torchvision:resnet18")
    loaded = ghostify.load(tmp_path / "m").eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), second(x), rtol=0, atol=0)
    with pytest.raises(ConfigError, match="already converted with dw_size=3"):
        ghostify.convert(first, include=["layer2.*"], dw_size=5)


class TiedConvs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.a = nn.Conv2d(16, 16, 3, padding=1)
        self.b = nn.Conv2d(16, 16, 3, padding=1)
        self.b.weight = self.a.weight  # tied: two modules, one weight
        self.c = nn.Conv2d(16, 16, 3, padding=1)
        self.head = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.c(self.b(self.a(self.stem(x)))).mean((2, 3)))


def test_convs_sharing_a_weight_are_kept_tied():
    model = TiedConvs().eval()
    plan = ghostify.plan_conversion(model)
    assert plan.layer("a").reason == "shares its weight with b; two ghost modules would untie it"
    assert plan.layer("b").reason == "shares its weight with a; two ghost modules would untie it"
    assert [layer.name for layer in plan.converted] == ["c"]
    converted = ghostify.convert(model)
    assert converted.a.weight is converted.b.weight and isinstance(converted.c, GhostConv2d)


def test_paper_variant_starts_random_and_refuses_a_transfer():
    assert GhostConfig(variant="paper-bn-relu").init == "random" and GhostConfig().init == "transfer"
    with pytest.raises(ConfigError, match="cannot start from the original weights.*init='random'"):
        GhostConfig(variant="paper-bn-relu", init="transfer")
    plan = ghostify.get_plan(ghostify.convert(Small().eval(), variant="paper-bn-relu", skip_output=False))
    assert plan.config.init == "random" and all(layer.fit_error is None for layer in plan.converted)


class StandardisedConv(nn.Conv2d):
    """Weight standardisation by overriding ``_conv_forward``, not ``forward`` (as some repos do)."""

    def _conv_forward(self, x, weight, bias):
        weight = (weight - weight.mean((1, 2, 3), keepdim=True)) / (weight.std((1, 2, 3), keepdim=True) + 1e-5)
        return super()._conv_forward(x, weight, bias)


class ShiftedConv(nn.Conv2d):
    """Adds a constant after the convolution: no plain conv computes that."""

    def _conv_forward(self, x, weight, bias):
        return super()._conv_forward(x, weight, bias) + 1.0


class ReadsConvs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.shared = nn.Conv2d(16, 16, 3, padding=1)  # its weight is also used functionally
        self.sized = nn.Conv2d(16, 16, 3, padding=1)  # forward reads its kernel_size
        self.standardised = StandardisedConv(16, 16, 3, padding=1)
        self.shifted = ShiftedConv(16, 16, 3, padding=1)
        self.normed = nn.utils.parametrizations.weight_norm(nn.Conv2d(16, 16, 3, padding=1))
        self.hooked = nn.Conv2d(16, 16, 3, padding=1)
        self.hooked.register_forward_hook(lambda module, args, output: output * 2)
        self.plain = nn.Conv2d(16, 16, 3, padding=1)
        self.head = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = self.shared(x) + F.conv2d(x, self.shared.weight, padding=1)
        x = self.sized(x)[..., self.sized.kernel_size[0] // 2:]
        x = self.plain(self.hooked(self.normed(self.shifted(self.standardised(x)))))
        return self.head(x.mean((2, 3)))


def test_convs_whose_computation_or_tensors_are_used_elsewhere_are_kept_with_a_reason():
    torch.manual_seed(0)
    model = ReadsConvs().eval()
    plan = ghostify.plan_conversion(model)
    reasons = {layer.name: layer.reason for layer in plan.layers}
    assert reasons["shared"] == "forward also reads shared.weight directly; a ghost module has no such tensor"
    assert reasons["shifted"] == "ShiftedConv overrides Conv2d._conv_forward; a ghost module would change what it computes"
    assert reasons["standardised"] is None  # a plain conv of its standardised weight: converted from that
    assert reasons["normed"].startswith("its weight is parametrized")
    assert reasons["hooked"].startswith("it has forward hooks")
    assert [layer.name for layer in plan.converted] == ["sized", "standardised", "plain"]
    converted = ghostify.convert(model)  # "sized" reads its kernel_size: the ghost module answers it
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        assert converted(x).shape == model(x).shape == (2, 4)
    assert converted.sized.kernel_size == (3, 3) and converted.sized.stride == (1, 1) and converted.sized.groups == 1


def test_an_uninitialised_lazy_conv_is_kept_with_a_reason():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.LazyConv2d(16, 3), nn.ReLU(), nn.Conv2d(16, 16, 3), nn.Flatten(), nn.LazyLinear(4))
    plan = ghostify.plan_conversion(model)
    assert plan.layer("1").reason == "LazyConv2d is not initialised yet; run one forward pass before converting"
    model(torch.randn(1, 3, 12, 12))  # initialised: an ordinary Conv2d now
    assert ghostify.plan_conversion(model).layer("1").convert


def test_convs_inside_modules_fx_keeps_as_leaves_are_converted():
    model = timm.create_model("mobilevit_xxs").eval()  # its MobileVitBlocks are timm's not-traceable leaves
    plan = ghostify.plan_conversion(model)
    assert not [layer.name for layer in plan.layers if layer.reason == "never called in forward()"]
    inside = [f"stages.{stage}.1.{conv}" for stage in (2, 3, 4) for conv in ("conv_kxk.conv", "conv_1x1", "conv_proj.conv", "conv_fusion.conv")]
    assert all(plan.layer(name).convert for name in inside)  # every conv of the three MobileViT blocks
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert ghostify.convert(model)(x).shape == model(x).shape


class _Encoding(nn.Module):
    """Like timm's PositionalEncodingFourier: reads its conv's weight for the device and dtype, in a helper."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Conv2d(8, 16, 1)
        self.mix = nn.Conv2d(16, 16, 3, padding=1)

    def _grid(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ones(x.shape[0], 8, *x.shape[2:], device=self.proj.weight.device, dtype=self.proj.weight.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mix(self.proj(self._grid(x)) + x)


class _ReadsInsideLeaf(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.encoding = _Encoding()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoding(self.stem(x))


class _ReadsAndBranches(DataDependent):
    """Not traceable (branches on data), and reads conv2's bias: the module walk must see the read too."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) + self.conv2.bias.view(1, -1, 1, 1)


def test_convs_whose_attributes_untraced_code_reads_are_kept_with_a_reason(monkeypatch):
    from ghostify.graph_pass import GhostifyTracer

    leaf = GhostifyTracer.is_leaf_module
    monkeypatch.setattr(GhostifyTracer, "is_leaf_module", lambda self, m, name: isinstance(m, _Encoding) or leaf(self, m, name))
    torch.manual_seed(0)
    model = _ReadsInsideLeaf().eval()
    plan = ghostify.plan_conversion(model)
    assert plan.trace == "fx"
    assert plan.layer("encoding.proj").reason == (
        "_Encoding.forward reads encoding.proj.weight (code torch.fx does not trace); a ghost module has no such attribute")
    assert plan.layer("encoding.mix").convert  # only called: converts
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        assert ghostify.convert(model)(x).shape == model(x).shape

    walked = _ReadsAndBranches().eval()
    plan = ghostify.plan_conversion(walked, skip_stem=True)
    assert plan.trace == "module"
    assert "reads conv2.bias" in plan.layer("conv2").reason and plan.layer("conv3").convert
    with torch.no_grad():
        assert ghostify.convert(walked, skip_stem=True)(x).shape == walked(x).shape


def test_edgenext_converts_and_keeps_the_conv_its_positional_encoding_reads():
    model = timm.create_model("edgenext_xx_small").eval()
    plan = ghostify.plan_conversion(model)
    assert "reads stages.1.blocks.1.pos_embd.token_projection.weight" in plan.layer("stages.1.blocks.1.pos_embd.token_projection").reason
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert ghostify.convert(model)(x).shape == model(x).shape == (1, 1000)


@pytest.mark.parametrize("make", [
    lambda: timm.layers.StdConv2d(8, 16, 3),
    lambda: timm.layers.ScaledStdConv2d(8, 16, 3, stride=2),
    lambda: StandardisedConv(8, 16, 3, padding=1, dilation=2),
])
def test_weight_standardised_convs_are_the_plain_conv_of_their_standardised_weight(make):
    from ghostify.conv_equivalent import equivalent_conv

    torch.manual_seed(0)
    conv = make().eval()
    with torch.no_grad():
        conv.weight.mul_(3).add_(0.5)  # far from standardised already
        plain = equivalent_conv(conv)
        x = torch.randn(2, 8, 11, 11)
        assert type(plain) is nn.Conv2d and not torch.allclose(plain.weight, conv.weight)
        torch.testing.assert_close(plain(x), conv(x), rtol=1e-5, atol=1e-5)
    # converted from that weight: the primary conv copies source filters of the standardised weight
    model = nn.Sequential(nn.Conv2d(3, 8, 1), conv, nn.Flatten(), nn.LazyLinear(2))
    converted = ghostify.convert(model)
    assert isinstance(converted[1], GhostConv2d)
    for source in converted[1].primary.weight:
        assert any(torch.equal(source, row) for row in plain.weight)
        assert not any(torch.equal(source, row) for row in conv.weight)


def test_weight_standardised_conv_with_dynamic_same_padding_is_kept():
    conv = timm.layers.StdConv2dSame(8, 16, 3, stride=2)  # pads the input itself, by its size
    plan = ghostify.plan_conversion(nn.Sequential(nn.Conv2d(3, 8, 1), conv, nn.Flatten(), nn.LazyLinear(2)))
    assert plan.layer("1").reason == "StdConv2dSame overrides Conv2d.forward; a ghost module would change what it computes"


def test_reparameterisable_blocks_keep_their_convs_with_reparameterize_off():
    from timm.utils.model import reparameterize_model

    x = torch.randn(1, 3, 64, 64)
    model = timm.create_model("repvgg_a0").eval()
    plan = ghostify.plan_conversion(model, reparameterize=False)
    assert not plan.converted and not plan.reparameterized
    assert plan.layer("stages.0.0.conv_kxk.conv").reason.startswith(
        "inside stages.0.0 (RepVggBlock), whose reparameterize() fuses its convs' weights; convert with reparameterize=True")
    with torch.no_grad():
        reparameterize_model(ghostify.convert(model, reparameterize=False))(x)  # fusing the converted model still works
        fused = reparameterize_model(model)
        converted = ghostify.convert(fused)  # each block is one reparam_conv now: those convert
        assert len(ghostify.get_plan(converted).converted) == 21
        assert not ghostify.get_plan(converted).reparameterized  # nothing left to fuse
        assert reparameterize_model(converted)(x).shape == model(x).shape
