"""What a new user meets (issue 9): reproducible random weights, `force=True` in Python messages,
one overwrite rule for reports, and saved models whose model file moved."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from typer.testing import CliRunner

import ghostify
from ghostify.cli import app
from ghostify.errors import GhostifyError
from ghostify.outputs import check_output_path
from ghostify.serialization import RECIPE_FILE, WEIGHTS_FILE

pytestmark = pytest.mark.usefixtures("single_thread")

runner = CliRunner()
TINY_TIMM = "timm:test_resnet"  # 0.5 M parameters, random weights: nothing is downloaded
TINY_TIMM_STEM = "conv1.0.weight"  # kept by default, so model.safetensors holds the original's tensor
MODEL_FILE = """\
from torch import nn


def make():
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4))


def make_copy():
    return make()
"""


def invoke(*args: str):
    result = runner.invoke(app, [str(arg) for arg in args])
    assert "Traceback" not in result.output, result.output
    return result


@pytest.fixture
def image_folder(tmp_path) -> Path:
    """A two-class ImageFolder of eight 32x32 images."""
    rng = np.random.default_rng(0)
    root = tmp_path / "images"
    for label in ("cat", "dog"):
        (root / label).mkdir(parents=True)
        for index in range(4):
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(root / label / f"{index}.png")
    return root


@pytest.fixture
def model_file(tmp_path) -> Path:
    path = tmp_path / "project" / "net.py"
    path.parent.mkdir()
    path.write_text(MODEL_FILE)
    return path


def converted_tiny_timm(tmp_path: Path) -> Path:
    """``ghostify convert test_resnet -o DIR`` (random ghost weights: only the kept stem matters here)."""
    out = tmp_path / "converted"
    result = invoke("convert", TINY_TIMM, "--input-size", "32", "--init", "random", "-o", out)
    assert result.exit_code == 0, result.output
    return out


def edit_recipe(directory: Path, **changes) -> None:
    recipe = json.loads((directory / RECIPE_FILE).read_text())
    for key, value in changes.items():
        if value is None:
            recipe.pop(key, None)
        else:
            recipe[key] = value
    (directory / RECIPE_FILE).write_text(json.dumps(recipe))


# ----- 1. random weights are reproducible, and compare says when ORIGINAL is another model ----------


def test_random_weights_are_the_same_on_every_build_and_leave_the_callers_rng_alone() -> None:
    torch.manual_seed(1234)
    before = torch.random.get_rng_state()
    first, second = ghostify.resolve_model(TINY_TIMM), ghostify.resolve_model(TINY_TIMM)
    assert torch.equal(torch.random.get_rng_state(), before)  # the caller's random stream is untouched
    assert first.seed == 0 and "seed 0" in first.weights_note
    for name, tensor in first.model.state_dict().items():
        assert torch.equal(tensor, second.model.state_dict()[name]), name
    other = ghostify.resolve_model(TINY_TIMM, seed=1)
    assert other.seed == 1 and not torch.equal(other.model.state_dict()[TINY_TIMM_STEM], first.model.state_dict()[TINY_TIMM_STEM])


def test_compare_rebuilds_the_random_original_that_was_converted(tmp_path, image_folder) -> None:
    out = converted_tiny_timm(tmp_path)
    rebuilt = ghostify.resolve_model(TINY_TIMM).model  # as compare builds ORIGINAL
    assert torch.equal(load_file(out / WEIGHTS_FILE)[TINY_TIMM_STEM], rebuilt.state_dict()[TINY_TIMM_STEM])
    recipe = json.loads((out / RECIPE_FILE).read_text())
    assert recipe.get("base_seed") == 0 and recipe["base_checkpoint"] is None and recipe["base_pretrained"] is False

    result = invoke("compare", TINY_TIMM, out, "--input-size", "32", "--data", image_folder)
    assert result.exit_code == 0, result.output
    assert "warning" not in result.output and "random weights (seed 0" in result.output
    assert "agrees with original" in result.output


def test_compare_uses_the_seed_the_directory_records(tmp_path) -> None:
    resolved = ghostify.resolve_model(TINY_TIMM, seed=3)
    converted = ghostify.convert(resolved.model, init="random")
    ghostify.save(converted, tmp_path / "seed3", base_model=resolved.spec, base_seed=resolved.seed)
    result = invoke("compare", TINY_TIMM, tmp_path / "seed3", "--input-size", "32")
    assert result.exit_code == 0, result.output
    assert "warning" not in result.output and "random weights (seed 3" in result.output


def test_compare_warns_when_original_has_other_weights(tmp_path) -> None:
    out = converted_tiny_timm(tmp_path)
    trained = ghostify.resolve_model(TINY_TIMM).model
    with torch.no_grad():
        for parameter in trained.parameters():
            parameter.add_(0.1)
    torch.save(trained.state_dict(), tmp_path / "trained.pth")
    result = invoke("compare", TINY_TIMM, out, "--input-size", "32", "-c", tmp_path / "trained.pth", "-o", tmp_path / "report")
    assert result.exit_code == 0, result.output
    assert "warning:" in result.output and "is not the model" in result.output
    assert "with random weights (seed 0), not with the weights in" in result.output
    assert "agreement below compare unrelated models" in result.output
    assert f"ghostify compare {TINY_TIMM} {out}" in result.output  # the command that compares the right models
    saved_note = json.loads((tmp_path / "report" / "report.json").read_text())["weights_note"]
    assert "NOT the model" in saved_note


def test_compare_warns_when_the_seed_was_not_recorded(tmp_path) -> None:
    out = converted_tiny_timm(tmp_path)
    edit_recipe(out, base_seed=None)  # as written before seeds were recorded: unseeded random weights
    result = invoke("compare", TINY_TIMM, out, "--input-size", "32")
    assert result.exit_code == 0, result.output
    assert "warning:" in result.output and "weights it does not record" in result.output
    assert "cannot be rebuilt" in result.output


def test_compare_warns_when_original_is_another_model_spec(tmp_path, model_file) -> None:
    out = tmp_path / "converted"
    assert invoke("convert", f"{model_file}:make", "--input-size", "16", "-o", out).exit_code == 0
    same = invoke("compare", f"{model_file}:make", out, "--input-size", "16")
    assert same.exit_code == 0 and "warning" not in same.output, same.output
    other = invoke("compare", f"{model_file}:make_copy", out, "--input-size", "16")
    assert other.exit_code == 0, other.output
    assert "warning:" in other.output and f"{model_file}:make, not from {model_file}:make_copy" in other.output


# ----- 2. Python callers are told force=True; reports follow the rule save() follows ---------------


def test_python_save_names_force_true_and_the_cli_names_force_flag(tmp_path) -> None:
    target = tmp_path / "m"
    target.mkdir()
    (target / "notes.txt").write_text("mine")
    converted = ghostify.convert(ghostify.resolve_model(TINY_TIMM).model, init="random")
    with pytest.raises(GhostifyError, match="pass force=True to replace it") as raised:
        ghostify.save(converted, target)
    assert "--force" not in str(raised.value) and "-o " not in str(raised.value)
    with pytest.raises(GhostifyError, match="pass --force to replace it"):  # the wording the CLI uses
        check_output_path(target)
    assert (target / "notes.txt").read_text() == "mine"


@pytest.fixture
def tiny_reports():
    model = ghostify.resolve_model(TINY_TIMM).model
    converted = ghostify.convert(model, init="random")
    report = ghostify.compare(model, converted, input_size=(3, 32, 32))
    return report, ghostify.sweep(model, "2", (3, 32, 32), init="random")


def test_report_save_refuses_a_non_empty_directory_unless_forced(tmp_path, tiny_reports) -> None:
    for report, written in zip(tiny_reports, ("report.json", "sweep.json")):
        target = tmp_path / written.partition(".")[0]
        target.mkdir()
        (target / "notes.txt").write_text("mine")
        with pytest.raises(GhostifyError, match="not empty; pass force=True"):
            report.save(target)
        assert sorted(p.name for p in target.iterdir()) == ["notes.txt"]
        report.save(target, force=True)  # writes the report's files, keeps the rest
        assert (target / "notes.txt").read_text() == "mine" and (target / written).is_file()
        with pytest.raises(GhostifyError, match="force=True"):  # a second save does not overwrite silently either
            report.save(target)


def test_report_joins_a_saved_model_as_convert_does(tmp_path, tiny_reports) -> None:
    report, _ = tiny_reports
    converted = ghostify.convert(ghostify.resolve_model(TINY_TIMM).model, init="random")
    ghostify.save(converted, tmp_path / "m", base_model=TINY_TIMM)
    report.save(tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == [
        RECIPE_FILE, WEIGHTS_FILE, "report.html", "report.json", "report.md"]


# ----- 3. a saved model whose model file moved ----------------------------------------------------


def save_from_model_file(model_file: Path) -> tuple[Path, torch.nn.Module]:
    resolved = ghostify.resolve_model(f"{model_file}:make")
    converted = ghostify.convert(resolved.model, ratio=2, min_channels=1).eval()
    out = model_file.parent / "out"
    ghostify.save(converted, out, base_model=resolved.spec)
    return out, converted


def test_load_follows_a_model_file_that_moved_with_the_directory(tmp_path, model_file) -> None:
    out, converted = save_from_model_file(model_file)
    moved = tmp_path / "elsewhere"
    shutil.move(model_file.parent, moved)
    loaded = ghostify.load(moved / "out").eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(loaded(x), converted(x))
    assert json.loads((moved / "out" / RECIPE_FILE).read_text())["base_model_file"] == "../net.py"
    shutil.move(moved, model_file.parent)  # back in place: a recipe with only the absolute path still loads
    edit_recipe(out, base_model_file=None)
    assert isinstance(ghostify.load(out), torch.nn.Sequential)


def test_load_names_base_model_when_only_the_model_file_moved(tmp_path, model_file) -> None:
    out, converted = save_from_model_file(model_file)
    new_file = tmp_path / "models" / "renamed_net.py"
    new_file.parent.mkdir()
    shutil.move(model_file, new_file)
    with pytest.raises(GhostifyError) as raised:
        ghostify.load(out)
    message = str(raised.value)
    assert str(model_file) in message and "no longer there" in message and "Move the file back" in message
    assert "base_model=" in message and "--teacher" in message  # the Python and command-line ways to name it
    loaded = ghostify.load(out, base_model=f"{new_file}:make").eval()
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(loaded(x), converted(x))
    result = invoke("compare", f"{new_file}:make", out, "--input-size", "16")  # ORIGINAL is the base model
    assert result.exit_code == 0, result.output
    assert "no longer there to check against" in result.output and "cannot be rebuilt" in result.output
