"""measure: parameter, byte and MAC counts checked against hand-computed numbers; latency by structure only."""

from __future__ import annotations

import logging
import math
import warnings

import pytest
import torch
from torch import nn

import ghostify
from ghostify.errors import GhostifyError
from ghostify.formatting import human_bytes, human_count, percent_text, ratio_text, saving_percent, saving_ratio
from ghostify.measure import (
    LatencyStats,
    count_macs,
    count_params,
    example_input,
    measure_latencies,
    measure_latency,
    state_dict_bytes,
)

HEIGHT = WIDTH = 8
PIXELS = HEIGHT * WIDTH
BN_ELEMENTS = 16 * PIXELS  # fvcore counts eval-mode affine BatchNorm as 2 per element


def tiny_model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1, bias=False),
    )


def conv_macs(c_in: int, c_out: int, k: int, pixels: int = PIXELS) -> int:
    return pixels * c_out * c_in * k * k


def ghost_macs(c_in: int, c_out: int, k: int, s: int, d: int, pixels: int = PIXELS) -> tuple[int, int]:
    """(primary, cheap) MACs of a ghost module: H*W*m*Cin*k*k and H*W*m*(s-1)*d*d, m = ceil(Cout/s)."""
    m = math.ceil(c_out / s)
    return pixels * m * c_in * k * k, pixels * m * (s - 1) * d * d


def ghost_params(c_in: int, c_out: int, k: int, s: int, d: int) -> int:
    m = math.ceil(c_out / s)
    return m * c_in * k * k + m * (s - 1) * d * d


# ----- parameters and bytes ---------------------------------------------------------------------


def test_count_params_tiny_model_by_hand():
    assert count_params(tiny_model()) == 3 * 16 * 9 + 2 * 16 + 16 * 32 * 9


def test_count_params_converted_by_hand():
    converted = ghostify.convert(tiny_model(), ratio=2, min_channels=1, skip_output=False, init="random")
    # the stem (layer 0) is kept by default; only layer 3 becomes a ghost module
    assert type(converted[0]) is nn.Conv2d and isinstance(converted[3], ghostify.GhostConv2d)
    expected = 3 * 16 * 9 + 2 * 16 + ghost_params(16, 32, 3, 2, 3)
    assert expected == 432 + 32 + 2448
    assert count_params(converted) == expected
    everything = ghostify.convert(tiny_model(), ratio=2, min_channels=1, skip_output=False, init="random", skip_stem=False)
    assert count_params(everything) == ghost_params(3, 16, 3, 2, 3) + 2 * 16 + ghost_params(16, 32, 3, 2, 3) == 288 + 32 + 2448


def test_count_params_counts_a_shared_module_once():
    conv = nn.Conv2d(4, 4, 3)
    assert count_params(nn.Sequential(conv, conv)) == count_params(conv) == 4 * 4 * 9 + 4


def test_state_dict_bytes_by_hand():
    floats = (3 * 16 * 9 + 16 * 32 * 9) + 4 * 16  # conv weights + BN weight, bias, running mean, var
    assert state_dict_bytes(tiny_model()) == floats * 4 + 8  # + int64 num_batches_tracked


def test_state_dict_bytes_converted_includes_out_index():
    converted = ghostify.convert(tiny_model(), ratio=2, min_channels=1, skip_output=False, init="random")
    floats = 3 * 16 * 9 + ghost_params(16, 32, 3, 2, 3) + 4 * 16  # the stem is kept as it is
    out_index = 32 * 8  # int64 buffer mapping the m*s maps onto the output channels
    assert state_dict_bytes(converted) == floats * 4 + 8 + out_index
    everything = ghostify.convert(tiny_model(), ratio=2, min_channels=1, skip_output=False, init="random", skip_stem=False)
    floats = ghost_params(3, 16, 3, 2, 3) + ghost_params(16, 32, 3, 2, 3) + 4 * 16
    assert state_dict_bytes(everything) == floats * 4 + 8 + (16 + 32) * 8


def test_state_dict_bytes_counts_shared_tensors_once():
    conv = nn.Conv2d(4, 4, 3)
    assert state_dict_bytes(nn.Sequential(conv, conv)) == state_dict_bytes(conv) == (4 * 4 * 9 + 4) * 4


# ----- example input ----------------------------------------------------------------------------


def test_example_input_is_deterministic_with_batch_dimension():
    first, second = example_input((3, 8, 8), batch_size=2), example_input((3, 8, 8), batch_size=2)
    assert first.shape == (2, 3, 8, 8)
    assert torch.equal(first, second)


@pytest.mark.parametrize("size, batch", [((3, 0, 8), 1), ((3, 8, 8), 0), ((), 1), ((3, 8.0, 8), 1)])
def test_example_input_rejects_bad_sizes(size, batch):
    with pytest.raises(GhostifyError, match="input size"):
        example_input(size, batch_size=batch)


# ----- MACs -------------------------------------------------------------------------------------


def test_count_macs_original_by_hand():
    macs = count_macs(tiny_model(), example_input((3, HEIGHT, WIDTH)))
    assert macs.by_module["0"] == conv_macs(3, 16, 3) == 27_648
    assert macs.by_module["3"] == conv_macs(16, 32, 3) == 294_912
    assert macs.by_module["1"] == 2 * BN_ELEMENTS
    assert macs.by_module["2"] == 0  # ReLU is free for fvcore
    assert macs.total == macs.by_module[""] == 27_648 + 294_912 + 2 * BN_ELEMENTS
    assert macs.unsupported_ops == {}
    assert macs.by_operator == {"conv": 27_648 + 294_912, "batch_norm": 2 * BN_ELEMENTS}


@pytest.mark.parametrize("ratio, dw_size", [(2, 3), (3, 3), (2, 1), (4, 5)])
def test_count_macs_ghost_modules_by_hand(ratio, dw_size):
    converted = ghostify.convert(tiny_model(), ratio=ratio, dw_size=dw_size, min_channels=1, skip_output=False, init="random", skip_stem=False)
    macs = count_macs(converted, example_input((3, HEIGHT, WIDTH)))
    for name, c_in, c_out in (("0", 3, 16), ("3", 16, 32)):
        primary, cheap = ghost_macs(c_in, c_out, 3, ratio, dw_size)
        assert macs.by_module[f"{name}.primary"] == primary
        assert macs.by_module[f"{name}.cheap"] == cheap  # the depthwise conv: one MAC per tap per map
        assert macs.by_module[name] == primary + cheap  # cat and index_select add nothing
    expected_convs = sum(sum(ghost_macs(i, o, 3, ratio, dw_size)) for i, o in ((3, 16), (16, 32)))
    assert macs.total == expected_convs + 2 * BN_ELEMENTS
    # fvcore ignores aten::cat (zero cost) but has no formula for index_select: reported, not fatal
    assert macs.unsupported_ops == {"aten::index_select": 2}

    # by default the stem is kept: a plain conv's MACs, one ghost module, one index_select
    default = ghostify.convert(tiny_model(), ratio=ratio, dw_size=dw_size, min_channels=1, skip_output=False, init="random")
    macs = count_macs(default, example_input((3, HEIGHT, WIDTH)))
    assert macs.by_module["0"] == conv_macs(3, 16, 3) and "0.primary" not in macs.by_module
    assert macs.by_module["3"] == sum(ghost_macs(16, 32, 3, ratio, dw_size))
    assert macs.total == conv_macs(3, 16, 3) + sum(ghost_macs(16, 32, 3, ratio, dw_size)) + 2 * BN_ELEMENTS
    assert macs.unsupported_ops == {"aten::index_select": 1}


def test_count_macs_shared_conv_counts_every_call_under_its_first_name():
    class Shared(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Conv2d(8, 8, 3, padding=1, bias=False)
            self.b = self.a

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.b(self.a(x))

    macs = count_macs(Shared(), example_input((8, HEIGHT, WIDTH)))
    assert macs.by_module["a"] == 2 * conv_macs(8, 8, 3)
    assert "b" not in macs.by_module


def test_count_macs_restores_training_flag_and_counts_in_eval_mode():
    model = tiny_model().train()
    macs = count_macs(model, example_input((3, HEIGHT, WIDTH)))
    assert model.training and all(m.training for m in model.modules())
    assert macs.by_module["1"] == 2 * BN_ELEMENTS  # eval-mode BatchNorm formula
    model.eval()
    count_macs(model, example_input((3, HEIGHT, WIDTH)))
    assert not model.training


def test_count_macs_is_quiet(caplog):
    converted = ghostify.convert(tiny_model(), ratio=2, min_channels=1, skip_output=False, init="random")
    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.WARNING):
        warnings.simplefilter("always")
        macs = count_macs(converted, example_input((3, HEIGHT, WIDTH)))
    assert macs.unsupported_ops  # there was something to warn about
    assert not caught
    assert not [r for r in caplog.records if "unsupported" in r.getMessage().lower()]


def test_count_macs_untraceable_model_is_a_ghostify_error():
    class ReturnsObject(nn.Module):
        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, object]:
            return x, object()  # torch.jit.trace accepts tensors, tuples, lists, dicts and strings only

    with pytest.raises(GhostifyError, match="fvcore could not trace"):
        count_macs(ReturnsObject(), example_input((3, 4, 4)))


# ----- latency ----------------------------------------------------------------------------------


def test_measure_latency_structure_and_model_untouched():
    model = tiny_model().train()
    stats = measure_latency(model, example_input((3, HEIGHT, WIDTH), batch_size=2), warmup=1, repeats=5)
    assert isinstance(stats, LatencyStats)
    assert stats.median_ms > 0
    assert stats.p10_ms <= stats.median_ms <= stats.p90_ms
    assert (stats.repeats, stats.device, stats.batch_size) == (5, "cpu", 2)
    assert model.training
    assert next(model.parameters()).device.type == "cpu"
    assert LatencyStats.from_dict(stats.to_dict()) == stats


def test_measure_latencies_times_each_model():
    original = tiny_model()
    converted = ghostify.convert(original, ratio=2, min_channels=1, skip_output=False, init="random")
    stats = measure_latencies([original, converted], example_input((3, HEIGHT, WIDTH)), warmup=0, repeats=3)
    assert len(stats) == 2
    assert all(s.median_ms > 0 and s.repeats == 3 for s in stats)


def test_measure_latency_cuda_without_cuda_says_use_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(GhostifyError, match="--device cpu"):
        measure_latency(tiny_model(), example_input((3, 4, 4)), device="cuda")


@pytest.mark.parametrize("options", [{"repeats": 0}, {"warmup": -1}, {"repeats": 2.5}, {"device": "no-such-device"}])
def test_measure_latency_rejects_bad_settings(options):
    with pytest.raises(GhostifyError):
        measure_latency(tiny_model(), example_input((3, 4, 4)), **options)


# ----- formatting -------------------------------------------------------------------------------


def test_human_numbers():
    assert human_count(25_557_032) == "25.56 M"
    assert human_count(4.11e9) == "4.11 G"
    assert human_count(512) == "512"
    assert human_count(None) == "-"
    assert human_bytes(102_228_316) == "97.49 MiB"
    assert human_bytes(100) == "100 B"


def test_savings_text():
    assert saving_ratio(183, 100) == pytest.approx(1.83)
    assert ratio_text(1.83) == "1.83x smaller"
    assert ratio_text(0.5, "faster", "slower") == "2.00x slower"
    assert ratio_text(1.0) == "same"
    assert saving_ratio(1, 0) is None and ratio_text(None) == "-"
    assert percent_text(saving_percent(200, 110)) == "-45.0%"
