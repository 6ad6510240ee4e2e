"""Property tests: convert -> save -> load round trips over the Conv2d configuration space, and
GhostConfig's JSON round trip and validation.

The pure GhostConv2d shape / weight-transfer property is in test_ghost_module.py; here the conv
sits in a real model (Conv-BN-ReLU), goes through ``ghostify.convert`` (FX analysis, plan, swap,
data-free transfer) and through ``ghostify.save`` / ``ghostify.load`` into a freshly built model.
"""

from __future__ import annotations

import json
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import ghostify
from ghostify.config import CONFIG_VERSION, INIT_MODES, MAX_DW_SIZE
from ghostify.errors import ConfigError
from ghostify.variants import TRANSFERS_WEIGHTS, VARIANTS

pytestmark = pytest.mark.usefixtures("single_thread")

PADDING_MODES = ("zeros", "reflect", "replicate", "circular")


@dataclass(frozen=True)
class ConvSpec:
    """One point of the Conv2d configuration space plus an input size that PyTorch accepts for it."""

    in_channels: int
    out_channels: int
    kernel_size: tuple[int, int]
    stride: tuple[int, int]
    padding: str | tuple[int, int]
    dilation: tuple[int, int]
    bias: bool
    padding_mode: str
    height: int
    width: int

    def model(self) -> nn.Sequential:
        """A fresh ``Conv-BN-ReLU`` model (new random weights on every call)."""
        conv = nn.Conv2d(
            self.in_channels, self.out_channels, self.kernel_size, stride=self.stride, padding=self.padding,
            dilation=self.dilation, bias=self.bias, padding_mode=self.padding_mode,
        )
        return nn.Sequential(conv, nn.BatchNorm2d(self.out_channels), nn.ReLU())


def _input_extent(draw, kernel: int, dilation: int, padding: str | int, mode: str) -> int:
    """A height or width the conv accepts: output >= 1 and what the padding mode needs (reflect: pad < size)."""
    if padding == "same":
        total = dilation * (kernel - 1)
        low = 1
        widest_pad = total - total // 2  # PyTorch puts the odd extra pixel on the right / bottom
    else:
        low = max(1, dilation * (kernel - 1) + 1 - 2 * padding)
        widest_pad = padding
    if mode == "reflect":
        low = max(low, widest_pad + 1)
    elif mode == "circular":
        low = max(low, widest_pad)
    return draw(st.integers(low, low + 7))


@st.composite
def conv_specs(draw) -> ConvSpec:
    kernel = (draw(st.integers(1, 5)), draw(st.integers(1, 5)))
    dilation = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    padding_kind = draw(st.sampled_from(["int", "pair", "same", "valid"]))
    if padding_kind == "same":  # PyTorch allows 'same' only with stride 1
        stride, padding, pads = (1, 1), "same", ("same", "same")
    else:
        stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
        if padding_kind == "valid":
            padding, pads = "valid", (0, 0)
        elif padding_kind == "int":
            p = draw(st.integers(0, 3))
            padding, pads = (p, p), (p, p)
        else:
            pads = (draw(st.integers(0, 3)), draw(st.integers(0, 3)))
            padding = pads
    mode = draw(st.sampled_from(PADDING_MODES))
    height = _input_extent(draw, kernel[0], dilation[0], pads[0], mode)
    width = _input_extent(draw, kernel[1], dilation[1], pads[1], mode)
    return ConvSpec(
        in_channels=draw(st.integers(1, 7)),
        out_channels=draw(st.integers(1, 23)),  # odd sizes and sizes below the ratio included
        kernel_size=kernel, stride=stride, padding=padding, dilation=dilation,
        bias=draw(st.booleans()), padding_mode=mode, height=height, width=width,
    )


def _perturb(model: nn.Module, seed: int) -> None:
    """Move every float weight and buffer away from any init, so a load that silently re-inits is caught."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            if tensor.is_floating_point():
                noise = torch.randn(tensor.shape, generator=generator, dtype=tensor.dtype)
                tensor.add_(noise * 0.1)
        for module in model.modules():  # BN variances must stay positive
            if isinstance(module, nn.BatchNorm2d):
                module.running_var.abs_().add_(0.1)


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel lengths")
@given(
    spec=conv_specs(),
    ratio=st.integers(2, 5),
    dw_size=st.sampled_from([1, 3, 5]),
    variant=st.sampled_from(sorted(VARIANTS)),
    init=st.sampled_from(INIT_MODES),
    seed=st.integers(0, 2**16),
)
@settings(max_examples=150, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow])
def test_convert_save_load_round_trip(spec: ConvSpec, ratio: int, dw_size: int, variant: str, init: str, seed: int) -> None:
    torch.manual_seed(seed)
    original = spec.model().eval()
    if init == "transfer" and not TRANSFERS_WEIGHTS[variant]:  # refused, never silently random
        with pytest.raises(ConfigError, match="cannot start from the original weights"):
            ghostify.convert(original, variant=variant, init=init)
        return
    # the conv is the model's first (its stem) and may make its output (both kept by default): put it under test
    converted = ghostify.convert(original, ratio=ratio, dw_size=dw_size, min_channels=1, variant=variant, init=init,
                                 skip_stem=False, skip_output=False).eval()

    should_convert = spec.out_channels >= ratio
    assert isinstance(converted[0], ghostify.GhostConv2d) == should_convert
    if should_convert:
        assert converted[0].intrinsic_channels == math.ceil(spec.out_channels / ratio)
    x = torch.randn(2, spec.in_channels, spec.height, spec.width)
    with torch.no_grad():
        expected = original(x)
        got = converted(x)
    assert got.shape == expected.shape

    _perturb(converted, seed)
    with torch.no_grad():
        before_save = converted(x)
    with tempfile.TemporaryDirectory() as tmp:
        target = Path(tmp) / "model"
        ghostify.save(converted, target, force=True)
        ghostify.save(converted, target, force=True)  # replacing an existing save works too
        assert sorted(p.name for p in Path(tmp).iterdir()) == ["model"]  # no temporary directories left
        torch.manual_seed(seed + 1)  # the fresh base model gets different random weights
        loaded = ghostify.load(target, base_model=spec.model()).eval()
    assert isinstance(loaded[0], ghostify.GhostConv2d) == should_convert
    with torch.no_grad():
        after_load = loaded(x)
    assert torch.equal(before_save, after_load)
    assert ghostify.get_plan(loaded).to_dict() == ghostify.get_plan(converted).to_dict()


# --- GhostConfig ------------------------------------------------------------------------------

patterns = st.text(max_size=12)
valid_configs = st.builds(
    ghostify.GhostConfig,
    ratio=st.integers(1, 10**6),
    dw_size=st.sampled_from(range(1, MAX_DW_SIZE + 1, 2)),
    include=st.lists(patterns, max_size=3),
    exclude=st.lists(patterns, max_size=3),
    layer_ratios=st.lists(st.tuples(patterns, st.integers(1, 64)), max_size=3),
    min_channels=st.integers(1, 10**6),
    skip_stem=st.booleans(),
    skip_pointwise=st.booleans(),
    variant=st.sampled_from(sorted(VARIANTS)),
    init=st.sampled_from((None, "random")),  # None: the variant's default ("transfer" where it can)
)


@given(config=valid_configs)
@settings(max_examples=150, deadline=None, derandomize=True, database=None)
def test_config_dict_round_trip(config: ghostify.GhostConfig) -> None:
    assert ghostify.GhostConfig.from_dict(config.to_dict()) == config
    # it is stored as JSON in ghostify.json: the round trip survives serialisation too
    assert ghostify.GhostConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


junk = st.one_of(st.none(), st.booleans(), st.floats(allow_nan=True), st.text(max_size=5), st.lists(st.integers(), max_size=2),
                 st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))
bad_whole = st.one_of(st.integers(max_value=0), st.booleans(), st.floats(allow_nan=True), st.text(max_size=4), st.none())
invalid_fields = st.one_of(
    st.tuples(st.just("ratio"), bad_whole),
    st.tuples(st.just("dw_size"), st.one_of(bad_whole, st.integers(0, 10**4).map(lambda n: 2 * n),
                                             st.integers(MAX_DW_SIZE + 1, 10**9).map(lambda n: n | 1))),
    st.tuples(st.just("min_channels"), bad_whole),
    st.tuples(st.just("variant"), st.one_of(st.text(max_size=12).filter(lambda v: v not in VARIANTS), junk.filter(lambda v: not isinstance(v, str)))),
    st.tuples(st.just("init"), st.one_of(st.text(max_size=12).filter(lambda v: v not in INIT_MODES),
                                         junk.filter(lambda v: v is not None and not isinstance(v, str)))),
    st.tuples(st.just("skip_stem"), junk.filter(lambda v: not isinstance(v, bool))),
    st.tuples(st.just("skip_pointwise"), junk.filter(lambda v: not isinstance(v, bool))),
    st.tuples(st.just("include"), st.one_of(st.integers(), st.lists(st.integers(), min_size=1, max_size=2))),
    st.tuples(st.just("exclude"), st.one_of(st.floats(), st.lists(st.none(), min_size=1, max_size=2))),
    st.tuples(st.just("layer_ratios"), st.one_of(
        st.integers(), st.text(min_size=1, max_size=4),
        st.lists(st.tuples(patterns), min_size=1, max_size=2),  # not pairs
        st.lists(st.tuples(patterns, bad_whole), min_size=1, max_size=2),  # bad ratios
        st.dictionaries(patterns, bad_whole, min_size=1, max_size=2),
        st.lists(st.tuples(st.integers(), st.integers(1, 4)), min_size=1, max_size=2),  # non-string patterns
    )),
)


@given(field_value=invalid_fields)
@settings(max_examples=200, deadline=None, derandomize=True, database=None)
def test_invalid_config_raises_config_error(field_value) -> None:
    name, value = field_value
    with pytest.raises(ConfigError):
        ghostify.GhostConfig(**{name: value})
    # the same value arriving through a (hand-edited) ghostify.json recipe
    payload = ghostify.GhostConfig().to_dict()
    payload["_data"][name] = value
    with pytest.raises(ConfigError):
        ghostify.GhostConfig.from_dict(payload)


@given(payload=st.one_of(
    junk,
    st.fixed_dictionaries({"_type": st.just("GhostConfig")}, optional={"_version": junk, "_data": junk}),
    st.fixed_dictionaries({"_type": st.just("GhostConfig"), "_version": st.integers(CONFIG_VERSION + 1, 10**6), "_data": st.just({})}),
    st.fixed_dictionaries({"_type": st.just("GhostConfig"),
                           "_data": st.dictionaries(st.text(max_size=8).filter(lambda k: k not in ghostify.GhostConfig.__dataclass_fields__), st.integers(), min_size=1, max_size=2)}),
))
@settings(max_examples=100, deadline=None, derandomize=True, database=None)
def test_malformed_config_record_raises_config_error(payload) -> None:
    with pytest.raises(ConfigError):
        ghostify.GhostConfig.from_dict(payload)
