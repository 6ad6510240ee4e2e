"""Accuracy on the shared CIFAR-10 data, ratio sweeps, and the `compare` / `sweep` commands."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset
from typer.testing import CliRunner

import ghostify
from ghostify.cli import app
from ghostify.errors import ConfigError, GhostifyError
from ghostify.evaluate import evaluate, image_folder
from ghostify.sweep import SweepReport, parse_ratios, sweep

CIFAR_MODEL = f"{Path(__file__).resolve().parents[1] / 'examples' / 'cifar_resnet.py'}:resnet20"
runner = CliRunner()


def small_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 4)).eval()


def test_pretrained_resnet20_accuracy_on_shared_test_set(resnet20_checkpoint, cifar_test_dir) -> None:
    model = ghostify.resolve_model(CIFAR_MODEL, checkpoint=resnet20_checkpoint).model
    data = image_folder(cifar_test_dir, (3, 32, 32))
    stats = evaluate(model, model, data, name="cifar10/test")
    assert stats.samples == 500
    assert stats.top1_before == pytest.approx(0.91)  # the published 91.0 % of ../shared/README.md
    assert stats.top1_after == stats.top1_before and stats.agreement == 1.0


def test_data_limit_spreads_over_classes(cifar_test_dir) -> None:
    subset = image_folder(cifar_test_dir, (3, 16, 16), limit=20)
    labels = {int(subset[i][1]) for i in range(len(subset))}
    assert len(subset) == 20 and labels == set(range(10))
    assert subset[0][0].shape == (3, 16, 16)


class ReverseLogits(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flip(1)


def test_agreement_counts_matching_predictions() -> None:
    model = small_net()
    images = torch.randn(40, 3, 8, 8)
    with torch.no_grad():
        labels = model(images).argmax(1)
    labels[:10] = (labels[:10] + 1) % 4  # a quarter of the labels now disagree with the model
    same = evaluate(model, nn.Sequential(model, nn.Identity()), TensorDataset(images, labels))
    assert (same.top1_before, same.top1_after, same.agreement) == (0.75, 0.75, 1.0)
    # with 4 classes, reversing the logits moves every prediction p to 3 - p != p
    reversed_ = evaluate(model, nn.Sequential(model, ReverseLogits()), TensorDataset(images, labels))
    assert reversed_.agreement == 0.0 and reversed_.top1_before == 0.75


def test_missing_data_dir_is_a_user_error(tmp_path) -> None:
    with pytest.raises(GhostifyError, match="no such data directory"):
        image_folder(tmp_path / "nope", (3, 32, 32))


@pytest.mark.parametrize("text", ["", "1,2", "a,b", "0"])
def test_parse_ratios_rejects_bad_lists(text: str) -> None:
    with pytest.raises(ConfigError, match="ratios must be"):
        parse_ratios(text)


def test_sweep_rows_and_json_round_trip() -> None:
    model = small_net()
    result = sweep(model, "4,2", (3, 8, 8), init="random", min_channels=1, model_name="small")
    assert result.ratios == [2, 4]
    rows = result.rows()
    assert [row["ratio"] for row in rows] == [1, 2, 4]
    assert rows[0]["macs"] > rows[1]["macs"] > rows[2]["macs"]
    assert rows[0]["params"] == sum(p.numel() for p in model.parameters())
    again = SweepReport.from_json(result.to_json())
    assert again.rows() == rows
    assert "s=4" in str(result) and "| s=2 |" in result.to_markdown()


def test_cli_compare_saved_directory(resnet20_checkpoint, cifar_test_dir, tmp_path) -> None:
    out = tmp_path / "r20"
    converted = runner.invoke(app, ["convert", CIFAR_MODEL, "-c", str(resnet20_checkpoint), "--input-size", "32", "-o", str(out)])
    assert converted.exit_code == 0, converted.output
    result = runner.invoke(app, ["compare", CIFAR_MODEL, str(out), "-c", str(resnet20_checkpoint), "--input-size", "32",
                                 "--data", str(cifar_test_dir), "--data-limit", "50", "-o", str(tmp_path / "cmp")])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "cmp" / "report.json").read_text())
    assert report["accuracy"]["samples"] == 50
    assert report["params_after"] < report["params_before"]
    assert (tmp_path / "cmp" / "report.html").is_file()


def test_cli_compare_requires_a_converted_directory(tmp_path) -> None:
    result = runner.invoke(app, ["compare", CIFAR_MODEL, str(tmp_path / "missing")])
    assert result.exit_code == 1 and "CONVERTED must be a directory" in result.output
    empty = tmp_path / "empty"
    empty.mkdir()
    result = runner.invoke(app, ["compare", CIFAR_MODEL, str(empty)])
    assert result.exit_code == 1 and "ghostify.json" in result.output and "Traceback" not in result.output


def test_cli_sweep_writes_reports(tmp_path) -> None:
    result = runner.invoke(app, ["sweep", CIFAR_MODEL, "--ratios", "2,4", "--input-size", "32", "-o", str(tmp_path / "s")])
    assert result.exit_code == 0, result.output
    assert "s=2" in result.output and "s=4" in result.output
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == ["sweep.html", "sweep.json", "sweep.md"]
    bad = runner.invoke(app, ["sweep", CIFAR_MODEL, "--ratios", "2,x"])
    assert bad.exit_code == 1 and "ratios must be" in bad.output
