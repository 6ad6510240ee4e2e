"""``ghostify sweep -o DIR --save-models`` and ``ghostify.sweep(on_converted=...)``: the converted models of a sweep."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn
from typer.testing import CliRunner

import ghostify
from ghostify.cli import app
from ghostify.serialization import recorded_inputs

runner = CliRunner()

TINY_MODEL_FILE = """
import torch
from torch import nn


def tiny():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 4))
"""


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def tiny_model_spec(directory: Path) -> str:
    path = directory / "tiny.py"
    path.write_text(TINY_MODEL_FILE)
    return f"{path}:tiny"


def test_cli_sweep_save_models_writes_a_loadable_model_per_ratio(tmp_path: Path) -> None:
    out = tmp_path / "sweep"
    result = runner.invoke(app, ["sweep", tiny_model_spec(tmp_path), "--ratios", "4,2", "--input-size", "3,8,8",
                                 "-o", str(out), "--save-models"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["ratio-2", "ratio-4", "sweep.html", "sweep.json", "sweep.md"]
    sweep_report = json.loads((out / "sweep.json").read_text())
    assert sweep_report["ratios"] == [2, 4]
    for ratio, report in zip(sweep_report["ratios"], sweep_report["reports"]):
        loaded = ghostify.load(out / f"ratio-{ratio}")
        plan = ghostify.get_plan(loaded)
        assert plan is not None and plan.config.ratio == ratio
        assert [layer.name for layer in plan.converted] == ["2"]  # the stem (layer 0) is kept by default
        assert parameter_count(loaded) == report["params_after"]
        assert recorded_inputs(out / f"ratio-{ratio}")["input_size"] == (3, 8, 8)
        assert loaded(torch.randn(1, 3, 8, 8)).shape == (1, 4)


def test_cli_sweep_save_models_needs_an_output_directory(tmp_path: Path) -> None:
    result = runner.invoke(app, ["sweep", tiny_model_spec(tmp_path), "--ratios", "2", "--save-models"])
    assert result.exit_code == 1
    assert "--save-models" in result.output and "-o DIR" in result.output and "Traceback" not in result.output


def test_sweep_on_converted_receives_each_converted_model() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1)).eval()
    models: dict[int, nn.Module] = {}
    report = ghostify.sweep(model, "3,2", (3, 8, 8), init="random", min_channels=1, on_converted=models.__setitem__)
    assert sorted(models) == report.ratios == [2, 3]
    for ratio, measured in zip(report.ratios, report.reports):
        assert ghostify.get_plan(models[ratio]).config.ratio == ratio
        assert parameter_count(models[ratio]) == measured.params_after
