"""--target latency / ghostify.plan_for_latency: only the layers a ghost module makes faster are converted."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

import ghostify
from ghostify.cli import app
from ghostify.errors import ConfigError

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
