"""The CLI through typer's test runner: happy paths and every user mistake exits non-zero, no traceback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import ghostify
from ghostify.cli import app

runner = CliRunner()
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
CIFAR_MODEL = f"{EXAMPLES / 'cifar_resnet.py'}:resnet20"


def invoke(*args: str):
    return runner.invoke(app, list(args))


def assert_user_error(result, exit_code: int, *fragments: str) -> None:
    assert result.exit_code == exit_code, result.output
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    for fragment in fragments:
        assert fragment in result.output, result.output


def test_convert_writes_model_and_report(tmp_path) -> None:
    out = tmp_path / "out"
    result = invoke("convert", "torchvision:resnet18", "--ratio", "2", "--input-size", "3,64,64", "-o", str(out))
    assert result.exit_code == 0, result.output
    assert "random weights" in result.output and "Parameters" in result.output and "MACs" in result.output
    assert "torch.fx" in result.output
    assert sorted(p.name for p in out.iterdir()) == ["ghostify.json", "model.safetensors", "report.html", "report.json", "report.md"]
    report = json.loads((out / "report.json").read_text())
    assert report["schema"] == "ghostify.report"
    assert report["params_after"] < report["params_before"] and report["macs_after"] < report["macs_before"]
    loaded = ghostify.load(out).eval()
    assert isinstance(loaded.layer1[0].conv1, ghostify.GhostConv2d)
    assert loaded(torch.randn(1, 3, 32, 32)).shape == (1, 1000)


def test_convert_user_model_with_shared_checkpoint(resnet20_checkpoint, tmp_path) -> None:
    result = invoke("convert", CIFAR_MODEL, "--checkpoint", str(resnet20_checkpoint), "--input-size", "3,32,32",
                    "--layers", "-o", str(tmp_path / "r20"))
    assert result.exit_code == 0, result.output
    assert f"weights from {resnet20_checkpoint}" in result.output
    assert "layer3.2.conv2" in result.output  # the --layers table
    loaded = ghostify.load(tmp_path / "r20")
    assert sum(isinstance(m, ghostify.GhostConv2d) for m in loaded.modules()) == 18  # every conv but the stem (kept by default)


def test_dry_run_and_inspect_show_the_plan() -> None:
    dry = invoke("convert", "torchvision:resnet18", "--dry-run", "--exclude", "conv1")
    assert dry.exit_code == 0, dry.output
    assert "excluded by pattern 'conv1'" in dry.output and "Conversion plan" in dry.output
    inspected = invoke("inspect", "torchvision:resnet18", "--skip-pointwise", "--layer-ratio", "layer4.*=4")
    assert inspected.exit_code == 0, inspected.output
    assert "1x1 conv (skip_pointwise)" in inspected.output and "layer4.0.conv1" in inspected.output


def test_unknown_model_suggests_close_names() -> None:
    assert_user_error(invoke("convert", "resnt50"), 1, "unknown timm model", "resnet50")
    assert_user_error(invoke("convert", "torchvision:resnet5"), 1, "resnet50")


@pytest.mark.parametrize("ratio", ["0", "1", "1.5", "-2", "two"])
def test_bad_ratio_is_rejected(ratio: str) -> None:
    result = invoke("convert", "torchvision:resnet18", "--ratio", ratio)
    assert_user_error(result, 2, "--ratio")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--dw-size", "2"], "dw_size must be an odd"),
        (["--checkpoint", "/nonexistent/weights.pth"], "no such file"),
        (["--exclude", "no_such_layer"], "matches no conv layer"),
        (["--include", "re:layer[", "--dry-run"], "invalid regular expression"),
        (["--layer-ratio", "layer4"], "PATTERN=RATIO"),
        (["--layer-ratio", "layer4.*=0"], "ratio must be"),
        (["--input-size", "3,abc"], "--input-size must be S (a 3xSxS image"),
        (["--input-size", "5,32,32"], "--input-size"),
    ],
)
def test_bad_options_give_actionable_errors(args: list[str], message: str) -> None:
    assert_user_error(invoke("convert", "torchvision:resnet18", *args), 1, message)


def test_missing_user_model_file_and_function(tmp_path) -> None:
    assert_user_error(invoke("convert", f"{tmp_path}/missing.py:make"), 1, "no such file")
    assert_user_error(invoke("convert", f"{EXAMPLES / 'cifar_resnet.py'}:resnet99"), 1, "has no function")


def test_mismatched_checkpoint_lists_keys(resnet20_checkpoint) -> None:
    result = invoke("convert", "torchvision:resnet18", "--checkpoint", str(resnet20_checkpoint))
    assert_user_error(result, 1, "missing", "unexpected")


def test_output_directory_is_not_overwritten_without_force(tmp_path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    args = ["convert", CIFAR_MODEL, "--input-size", "3,32,32", "-o", str(out)]
    assert_user_error(invoke(*args), 1, "--force")
    assert (out / "notes.txt").read_text() == "mine"
    assert invoke(*args, "--force").exit_code == 0
    assert not (out / "notes.txt").exists() and (out / "model.safetensors").is_file()


SELECTION = ["--dw-size", "5", "--include", "layer2.*", "--exclude", "layer2.0.conv1", "--min-channels", "16",
             "--convert-stem", "--convert-output", "--keep-training-form", "--skip-pointwise", "--free-channel-order"]
SELECTED = {"dw_size": 5, "include": ["layer2.*"], "exclude": ["layer2.0.conv1"], "min_channels": 16, "skip_stem": False,
            "skip_output": False, "reparameterize": False, "skip_pointwise": True, "shared_residual_order": False}


def test_every_selection_option_reaches_the_config_of_convert_sweep_and_inspect(tmp_path) -> None:
    """The selection options are declared once (cli._SELECTION_OPTIONS) and given to three commands."""
    size = ["--input-size", "3,32,32"]
    converted = invoke("convert", CIFAR_MODEL, *SELECTION, "--layer-ratio", "layer2.1.*=4", *size, "-o", str(tmp_path / "c"))
    assert converted.exit_code == 0, converted.output
    config = json.loads((tmp_path / "c" / "ghostify.json").read_text())["plan"]["config"]["_data"]
    assert {key: config[key] for key in SELECTED} == SELECTED and config["layer_ratios"] == [["layer2.1.*", 4]]
    swept = invoke("sweep", CIFAR_MODEL, "--ratios", "2,3", *SELECTION, *size, "-o", str(tmp_path / "s"))
    assert swept.exit_code == 0, swept.output
    for report, ratio in zip(json.loads((tmp_path / "s" / "sweep.json").read_text())["reports"], (2, 3), strict=True):
        config = report["config"]["_data"]
        assert {key: config[key] for key in SELECTED} == SELECTED and config["ratio"] == ratio
    assert_user_error(invoke("sweep", CIFAR_MODEL, "--layer-ratio", "layer2.*=4"), 2, "--layer-ratio")
    inspected = invoke("inspect", CIFAR_MODEL, *SELECTION, "--layer-ratio", "layer2.1.*=4", *size)
    assert inspected.exit_code == 0, inspected.output
    assert "excluded by pattern 'layer2.0.conv1'" in inspected.output and "not matched by any include" in inspected.output
