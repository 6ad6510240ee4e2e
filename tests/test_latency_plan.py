"""--target latency / ghostify.plan_for_latency: only the layers a ghost module makes faster are converted."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

import ghostify
from ghostify.report_render import nothing_converted
from ghostify.cli import app
from ghostify.errors import ConfigError
from ghostify.report_html import render_html

pytestmark = pytest.mark.usefixtures("single_thread")


def tiny() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(),
                         nn.Conv2d(32, 32, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 4)).eval()


def test_layers_a_ghost_module_slows_down_are_kept_with_their_timings():
    seen = []

    def fake_timer(conv, ghost, x, device):  # the ghost module of layer "2" is slower, of layer "4" faster
        seen.append((conv.out_channels, tuple(x.shape), type(ghost).__name__, device.type))
        return (1.0, 1.5) if conv.stride == (2, 2) else (2.0, 1.0)

    model = tiny()
    plan = ghostify.plan_for_latency(model, input_size=(3, 16, 16), batch_size=4, timer=fake_timer)
    # each candidate timed once, on the input it gets in the model at batch 4
    assert seen == [(32, (4, 16, 16, 16), "GhostConv2d", "cpu"), (32, (4, 32, 8, 8), "GhostConv2d", "cpu")]
    assert plan.layer("2").reason == "slower as a ghost module: 1.5 ms vs 1 ms as a conv (batch 4, cpu)"
    assert not plan.layer("2").convert and plan.layer("2").latency_ms == [1.0, 1.5]
    assert [layer.name for layer in plan.converted] == ["4"] and plan.layer("4").latency_ms == [2.0, 1.0]
    converted = ghostify.convert(model, plan=plan)
    assert type(converted[2]) is nn.Conv2d and isinstance(converted[4], ghostify.GhostConv2d)
    assert ghostify.get_plan(converted) is plan
    with pytest.raises(ConfigError, match="either a plan or conversion options"):
        ghostify.convert(model, plan=plan, ratio=3)


def test_when_every_timed_layer_is_slower_nothing_is_converted_and_the_warning_counts_them_as_one_reason():
    plan = ghostify.plan_for_latency(tiny(), input_size=(3, 16, 16), timer=lambda conv, ghost, x, device: (1.0, 1.0 + x.shape[-1]))
    assert not plan.converted
    assert plan.why_nothing_converted().startswith(
        "nothing was converted (3 convs): slower as a ghost module (2 layers); stem conv (skip_stem) (1 layer).")
    model = tiny()
    report = ghostify.compare(model, ghostify.convert(model, plan=plan), (3, 16, 16))
    assert "commonest reason: slower as a ghost module (2 layers)" in nothing_converted(report)


def test_a_plan_for_deployment_times_the_deploy_form():
    seen = []

    def fake_timer(conv, ghost, x, device):
        nhwc = torch.channels_last
        layouts = (x.is_contiguous(memory_format=nhwc), conv.weight.is_contiguous(memory_format=nhwc),
                   ghost.primary.weight.is_contiguous(memory_format=nhwc))
        seen.append((type(ghost).__name__, getattr(ghost, "gather", None), layouts))
        return 2.0, 1.0

    model = tiny()
    plan = ghostify.plan_for_latency(model, input_size=(3, 16, 16), timer=fake_timer, deploy=True)
    # timed as the deployed model runs: channels_last input and weights, no gather
    assert seen == [("DeployedGhostConv2d", False, (True, True, True))] * 2 and len(plan.converted) == 2
    assert all(m.weight.is_contiguous() for m in model.modules() if isinstance(m, nn.Conv2d))  # the model is untouched


def test_the_report_shows_each_timed_layer_conv_and_ghost_time():
    timings = {16: (1.0, 1.5), 8: (2.0, 1.0)}  # by the conv's input width: layer "2" slower as a ghost, "4" faster
    model = tiny()
    plan = ghostify.plan_for_latency(model, input_size=(3, 16, 16), timer=lambda conv, ghost, x, device: timings[x.shape[-1]])
    report = ghostify.compare(model, ghostify.convert(model, plan=plan), input_size=(3, 16, 16))
    assert [row.latency_ms for row in report.layers] == [None, [1.0, 1.5], [2.0, 1.0]]
    markdown = report.to_markdown()
    assert "ms conv → ghost" in markdown and "| 1 → 1.5 |" in markdown and "| 2 → 1 |" in markdown
    html = render_html(report)
    assert "ms conv → ghost" in html and "2 → 1" in html
    again = type(report).from_dict(report.to_dict())
    assert [row.latency_ms for row in again.layers] == [None, [1.0, 1.5], [2.0, 1.0]]


def wide() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 1), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(32, 4)).eval()


# conv ms, ghost ms by layer (told apart by input channels and kernel): "2" faster; "4" a little slower per
# MAC saved; "6" (1x1, few MACs saved) much slower per MAC saved
WIDE_TIMES = {(16, 3): (2.0, 1.0), (32, 3): (2.0, 2.5), (32, 1): (1.0, 3.0)}


def wide_timer(conv, ghost, x, device):
    return WIDE_TIMES[(conv.in_channels, conv.kernel_size[0])]


# MACs at 8x8 (64 positions), by hand: stem 64*16*27 = 27,648 (kept); "2" 64*32*144 = 294,912 -> 64*16*144 + 64*16*9
# = 156,672 (saves 138,240); "4" 589,824 -> 304,128 (saves 285,696); "6" 65,536 -> 41,984 (saves 23,552); Linear 128.
# Total 978,048: "2" alone leaves 85.9 %, with "4" 56.7 %, with "6" too 54.2 %. Timed layers as convs: 5 ms;
# fastest plan 4 ms (80 %), with "4" 4.5 ms (90 %), with "6" too 6.5 ms (130 %).
@pytest.mark.parametrize("budget, converted", [
    (None, ["2"]),
    ("macs=0.9", ["2"]),
    ("macs=0.6", ["2", "4"]),
    ("macs=0.55", ["2", "4", "6"]),
    ("latency=0.85", ["2"]),
    ("latency=1.0", ["2", "4"]),
    ("latency=130%", ["2", "4", "6"]),
])
def test_a_budget_adds_the_slower_layers_that_cost_least_time_per_mac_saved(budget, converted):
    model = wide()
    plan = ghostify.plan_for_latency(model, input_size=(3, 8, 8), timer=wide_timer, budget=budget)
    assert [layer.name for layer in plan.converted] == converted
    assert all(layer.latency_ms == list(WIDE_TIMES[(layer.in_channels, layer.kernel_size[0])])
               for layer in plan.layers if layer.name != "0")
    report = ghostify.compare(model, ghostify.convert(model, plan=plan), input_size=(3, 8, 8))
    saved = {"2": 138_240, "4": 285_696, "6": 23_552}
    assert report.macs_before - report.macs_after == sum(saved[name] for name in converted)


@pytest.mark.parametrize("budget, message", [
    ("macs=0.5", "cannot be met: converting every eligible layer leaves 54% of the MACs"),
    ("latency=0.7", "cannot be met: the fastest plan takes 80% of the timed layers' time"),
    ("flops=0.5", "budget kind must be macs or latency"),
    ("macs", "expects KIND=FRACTION"),
    ("macs=1.5", "a fraction of the original's"),
])
def test_impossible_or_malformed_budgets_are_refused(budget, message):
    with pytest.raises(ConfigError, match=message):
        ghostify.plan_for_latency(wide(), input_size=(3, 8, 8), timer=wide_timer, budget=budget)


def test_cli_budget_needs_target_latency(tmp_path, monkeypatch):
    (tmp_path / "nets.py").write_text("from torch import nn\n\n\ndef make():\n    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3))\n")
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["inspect", "nets.py:make", "--input-size", "8", "--budget", "macs=0.6"])
    assert result.exit_code == 1 and "--budget needs --target latency" in result.output
    result = CliRunner().invoke(app, ["inspect", "nets.py:make", "--input-size", "8", "--target", "latency", "--budget", "x"])
    assert result.exit_code == 1 and "--budget expects KIND=FRACTION" in result.output


def test_a_plan_for_another_model_is_refused():
    plan = ghostify.plan_for_latency(tiny(), input_size=(3, 16, 16), timer=lambda *a: (2.0, 1.0))
    other = nn.Sequential(nn.Conv2d(3, 16, 3), nn.ReLU(), nn.Conv2d(16, 8, 3))
    with pytest.raises(ConfigError, match="the plan was made for another model"):
        ghostify.convert(other, plan=plan)


def test_cli_target_latency_times_layers_and_says_why_a_layer_is_kept(tmp_path, monkeypatch):
    (tmp_path / "nets.py").write_text(
        "from torch import nn\n\n\ndef make():\n    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), "
        "nn.Conv2d(16, 64, 3, padding=1), nn.ReLU(), nn.Conv2d(64, 64, 3, padding=1), nn.AdaptiveAvgPool2d(1), "
        "nn.Flatten(), nn.Linear(64, 4))\n")
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["inspect", "nets.py:make", "--input-size", "16", "--target", "latency", "--target-batch", "2"])
    assert result.exit_code == 0, result.output
    assert "timing each layer as conv and as ghost module (batch 2, cpu)" in result.output
    plan = ghostify.plan_for_latency(ghostify.resolve_model("nets.py:make").model, input_size=(3, 16, 16), batch_size=2)
    for layer in (plan.layer("2"), plan.layer("4")):
        conv_ms, ghost_ms = layer.latency_ms
        assert conv_ms > 0 and ghost_ms > 0 and layer.convert == (ghost_ms < conv_ms)
    result = CliRunner().invoke(app, ["convert", "nets.py:make", "--input-size", "16", "--target", "latency", "-o", "out"])
    assert result.exit_code == 0, result.output
    saved = ghostify.get_plan(ghostify.load(tmp_path / "out"))
    assert all(layer.latency_ms for layer in saved.layers if layer.name in ("2", "4"))
