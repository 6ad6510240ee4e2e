"""What a new user meets on the command line: safe defaults, honest output, help that explains itself."""

from __future__ import annotations

import json
import os
import re
import textwrap
from pathlib import Path

import pytest
import typer
from torch import nn
from typer.testing import CliRunner

import ghostify
from ghostify import cli
from ghostify.cli import app
from ghostify.measure import example_input

runner = CliRunner()
pytestmark = pytest.mark.usefixtures("single_thread")

MODELS = textwrap.dedent('''
    import torch
    from torch import nn


    class ConvClassifier(nn.Module):
        """A body of 3x3 convs and a 1x1 conv classifier (as in SqueezeNet or timm's resnetv2)."""

        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(3, 16, 3, padding=1)
            self.body = nn.Conv2d(16, 32, 3, padding=2, dilation=2)
            self.classifier = nn.Conv2d(32, 10, 1)

        def forward(self, x):
            x = torch.relu(self.body(torch.relu(self.stem(x))))
            return torch.flatten(nn.functional.adaptive_avg_pool2d(torch.relu(self.classifier(x)), 1), 1)


    class LinearHead(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(3, 16, 3, padding=1)
            self.body = nn.Conv2d(16, 32, 3, padding=1)
            self.fc = nn.Linear(32, 10)

        def forward(self, x):
            return self.fc(self.body(self.stem(x)).mean((2, 3)))


    class Depthwise(nn.Module):
        def __init__(self):
            super().__init__()
            self.dw = nn.Conv2d(3, 3, 3, groups=3)

        def forward(self, x):
            return self.dw(x)


    class Untraceable(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(3, 16, 3)
            self.body = nn.Conv2d(16, 16, 3)

        def forward(self, x):
            x = self.stem(x)
            x = torch.stack([image * 2 for image in x])  # iterating a tensor: torch.fx cannot trace this
            return self.body(x)


    def conv_classifier():
        return ConvClassifier()


    def linear_head():
        return LinearHead()


    def depthwise():
        return Depthwise()


    def untraceable():
        return Untraceable()
''')


@pytest.fixture
def models(tmp_path, monkeypatch) -> Path:
    """A model file in the working directory, which is ``tmp_path`` (as a user runs ghostify in a project)."""
    (tmp_path / "nets.py").write_text(MODELS)
    monkeypatch.chdir(tmp_path)
    return tmp_path / "nets.py"


def invoke(*args: str):
    return runner.invoke(app, list(args))


def _load(path: Path, function: str) -> nn.Module:
    return ghostify.resolve_model(f"{path}:{function}").model


# ----- defaults the user does not see --------------------------------------------------------------


def test_convs_producing_the_output_are_kept_by_default(models):
    model = _load(models, "conv_classifier")
    plan = ghostify.plan_conversion(model)
    assert plan.layer("classifier").reason == "produces the model's output (skip_output)"
    assert plan.layer("classifier").eligible and not plan.layer("classifier").convert
    assert [layer.name for layer in plan.converted] == ["body"]
    assert [layer.name for layer in ghostify.plan_conversion(model, skip_output=False).converted] == ["body", "classifier"]
    # a conv behind a Linear head is no output conv
    assert [layer.name for layer in ghostify.plan_conversion(_load(models, "linear_head")).converted] == ["body"]
    result = invoke("inspect", "nets.py:conv_classifier", "--input-size", "16")
    assert result.exit_code == 0, result.output
    assert re.search(r"^classifier .* kept \[2\] *$", result.output, re.M), result.output
    assert "[2] produces the model's output (skip_output)" in result.output
    result = invoke("inspect", "nets.py:conv_classifier", "--input-size", "16", "--convert-output")
    assert re.search(r"^classifier .* ghost s=2 *$", result.output, re.M), result.output


def test_torchvision_squeezenet_classifier_is_kept():
    import torchvision

    plan = ghostify.plan_conversion(torchvision.models.squeezenet1_1(num_classes=10))
    assert plan.layer("classifier.1").reason == "produces the model's output (skip_output)"
    assert len(plan.converted) == len(plan.layers) - 2  # the stem and the classifier


def test_a_conversion_that_converts_nothing_says_why(models):
    plan = ghostify.plan_conversion(_load(models, "depthwise"))
    assert "nothing was converted (1 conv): grouped/depthwise conv (groups=3) is already cheap (1 layer)" in plan.why_nothing_converted()
    assert ghostify.plan_conversion(_load(models, "conv_classifier")).why_nothing_converted() is None
    result = invoke("convert", "nets.py:depthwise", "--input-size", "8")
    assert result.exit_code == 0, result.output
    assert "warning: nothing was converted (1 conv): grouped/depthwise conv" in result.stderr
    assert "ghostify inspect" in result.stderr


@pytest.mark.parametrize("text", ["3,32", "32,32", "3x32"])
def test_two_number_input_sizes_are_refused_as_ambiguous(models, text):
    result = invoke("convert", "nets.py:conv_classifier", "--input-size", text)
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "ambiguous" in result.stderr and "--input-size 32" in result.stderr and "3,32,32" in result.stderr


@pytest.mark.parametrize("text", ["16", "3,16,16", "3x16x16"])
def test_accepted_input_sizes(models, text):
    result = invoke("convert", "nets.py:conv_classifier", "--input-size", text)
    assert result.exit_code == 0, result.output
    assert "Input 1 x 3 x 16 x 16" in result.output


# ----- output that tells the truth ---------------------------------------------------------------


def test_trace_note_is_whole_in_the_plan_and_cut_at_a_word_on_screen(models):
    plan = ghostify.plan_conversion(_load(models, "untraceable"))
    assert plan.trace == "module"
    # FX's message is long (it explains what can be traced); the plan keeps all of it
    assert len(plan.trace_note) > 400 and plan.trace_note.count("Proxy object cannot be iterated") == 1
    result = invoke("convert", "nets.py:untraceable", "--input-size", "8")
    assert result.exit_code == 0, result.output
    line = next(line for line in result.output.splitlines() if line.startswith("analysis: module walk"))
    words = set(plan.trace_note.split())
    shown = line.removeprefix("analysis: module walk, because ").removesuffix(" ...").split()
    assert shown and all(word in words for word in shown), line  # no word cut in half


def test_report_names_the_model_as_typed_never_an_absolute_path(models):
    out = models.parent / "out"
    result = invoke("convert", "nets.py:conv_classifier", "--input-size", "16", "-o", str(out))
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert report["original_name"] == "nets.py:conv_classifier"
    html = (out / "report.html").read_text()
    assert "nets.py:conv_classifier" in html
    assert str(models.parent) not in html and str(Path.home()) + os.sep not in html
    assert "model: nets.py:conv_classifier" in result.output


def test_each_step_prints_one_line_with_its_time_when_piped(models):
    result = invoke("convert", "nets.py:conv_classifier", "--input-size", "16")
    assert result.exit_code == 0, result.output
    for step in ("building nets.py:conv_classifier", "converting", "measuring"):
        assert len(re.findall(rf"^{re.escape(step)}: \d+\.\d s$", result.output, re.M)) == 1, result.output


@pytest.mark.parametrize("command", [
    ["convert", "nets.py:conv_classifier"],
    ["inspect", "nets.py:conv_classifier"],
    ["sweep", "nets.py:conv_classifier", "--ratios", "2,3"],
    ["compare", "nets.py:conv_classifier", "."],
])
def test_ctrl_c_prints_one_line_and_exits_130(models, monkeypatch, command):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "resolve_model", interrupted)
    monkeypatch.setattr(cli, "recorded_origin", interrupted)
    result = invoke(*command)
    assert result.exit_code == 130, result.output
    assert result.stderr.strip() == "interrupted: nothing was written"
    assert "Traceback" not in result.output and "Aborted" not in result.output


# ----- help and consistency ----------------------------------------------------------------------


def test_version():
    result = invoke("--version")
    assert result.exit_code == 0 and result.output.strip() == f"ghostify {ghostify.__version__}"


def _commands() -> dict:
    group = typer.main.get_command(app)
    return dict(group.commands)


@pytest.mark.parametrize("name", sorted(_commands()))
def test_help_has_no_placeholders_and_every_option_says_its_default_and_an_example(name):
    result = runner.invoke(app, [name, "--help"], terminal_width=200)
    assert result.exit_code == 0
    for placeholder in ("<bool>", "<str>", "<int", "<path>", "<float>", "<list", "{model}", "{saved", "{original}"):
        assert placeholder not in result.output, (placeholder, result.output)
    for param in _commands()[name].params:
        if param.param_type_name != "option" or param.name == "help":
            continue
        assert "default" in (param.help or ""), f"{name} {param.opts[0]}: help gives no default"
        if not param.is_flag:
            assert "e.g." in param.help, f"{name} {param.opts[0]}: help gives no example"
            assert param.metavar and param.metavar.isupper() or "," in param.metavar, param.metavar


def test_suffix_matches_are_shown_and_exact_matching_is_explained(models):
    result = invoke("inspect", "resnet18", "--exclude", "conv1", "--input-size", "32")
    assert result.exit_code == 0, result.output
    assert "exclude 'conv1' matches 9 layers by name suffix: conv1, layer1.0.conv1," in result.output
    assert "write 're:conv1'" in result.output
    result = invoke("inspect", "resnet18", "--exclude", "re:conv1", "--input-size", "32")
    assert "exclude 're:conv1' matches 1 layer as a regex: conv1" in result.output
    plan = ghostify.plan_conversion(ghostify.resolve_model("resnet18").model, exclude=["layer1.0.conv1", "conv2"])
    kinds = {match.pattern: (match.kind, len(match.layers)) for match in plan.pattern_matches()}
    assert kinds == {"layer1.0.conv1": ("exact", 1), "conv2": ("suffix", 8)}


def test_inspect_shows_macs_dilation_and_the_saving(models):
    from ghostify.measure import layer_macs

    model = _load(models, "conv_classifier")
    plan = ghostify.plan_conversion(model, skip_output=False)
    macs = layer_macs(model, plan, example_input((3, 16, 16)))
    # by hand: 16x16 outputs; body 32 <- 16 3x3 convs; ghost: 16 intrinsic maps + 16 ghosts by 3x3 depthwise
    assert macs["stem"] == (256 * 16 * 3 * 9,) * 2  # kept: same cost
    assert macs["body"] == (256 * 32 * 16 * 9, 256 * (16 * 16 * 9 + 16 * 9))
    assert macs["classifier"] == (256 * 10 * 32, 256 * (5 * 32 + 5 * 9))
    # and they are what fvcore counts on the converted model
    converted = ghostify.convert(model, plan.config)
    report = ghostify.compare(model, converted, input_size=(3, 16, 16))
    assert {row.name: (row.macs_before, row.macs_after) for row in report.layers} == macs
    result = invoke("inspect", "nets.py:conv_classifier", "--input-size", "16")
    assert result.exit_code == 0, result.output
    body = next(line for line in result.output.splitlines() if line.startswith("body "))
    assert "2x2" in body and "1.18 M" in body and "-46.9%" in body, body  # dilation, MACs, saving
    assert "dilation" in result.output and "saving" in result.output


def test_sweep_says_why_top1_is_not_measured(models):
    from PIL import Image

    for label in ("cat", "dog", "fox"):  # 3 class folders; the model predicts 10 classes
        (models.parent / "pets" / label).mkdir(parents=True)
        for index in range(2):
            Image.new("RGB", (16, 16), (40 * index, 90, 200)).save(models.parent / "pets" / label / f"{index}.png")
    result = invoke("sweep", "nets.py:linear_head", "--ratios", "2", "--input-size", "16", "--data", "pets")
    assert result.exit_code == 0, result.output
    assert "Top-1 not measured: pets has 3 class folders but the model predicts 10 classes" in " ".join(result.output.split())
