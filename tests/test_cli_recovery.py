"""``convert --calibrate/--distill`` and ``ghostify distill`` through typer's test runner.

A tiny CNN (3 convs with BatchNorm, 10 classes, 3x16x16 inputs) written to a file, its weights,
and a few random 16x16 PNGs: every run takes seconds. Covers the happy paths, the report they
write, resuming an interrupted distillation, and every bad input (one line, non-zero exit,
nothing written).
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from torch import nn
from typer.testing import CliRunner

import ghostify
import ghostify.progress
from ghostify.cli import app, checkpoint_file

pytestmark = pytest.mark.usefixtures("single_thread")
runner = CliRunner()

TINY = """\
from torch import nn


def make():
    def block(i, o):
        return [nn.Conv2d(i, o, 3, padding=1, bias=False), nn.BatchNorm2d(o), nn.ReLU()]
    return nn.Sequential(*block(3, 8), *block(8, 16), *block(16, 16), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))


def other():
    return nn.Sequential(nn.Conv2d(3, 12, 3, padding=1), nn.ReLU(), nn.Conv2d(12, 12, 3), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(12, 10))
"""


def _images(folder: Path, count: int, size: int = 16, seed: int = 0) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(folder / f"{i}.png")


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    """Model file, its weights, a labelled tree (10 classes x 2), a flat folder, held-out images, bad data."""
    root = tmp_path_factory.mktemp("recovery")
    (root / "tiny.py").write_text(TINY)
    namespace: dict = {}
    exec(TINY, namespace)  # noqa: S102 - the test's own model code
    torch.manual_seed(0)
    teacher = namespace["make"]()
    with torch.no_grad():  # non-trivial BatchNorm statistics, as in a trained model
        for module in teacher.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 2.0)
    torch.save(teacher.state_dict(), root / "tiny.pth")
    torch.save(namespace["other"]().state_dict(), root / "other.pth")
    for label in range(10):
        _images(root / "train" / f"class{label}", 2, seed=label)
        _images(root / "val" / f"class{label}", 1, seed=100 + label)
    _images(root / "flat", 6, seed=50)
    _images(root / "three" / "a", 1), _images(root / "three" / "b", 1), _images(root / "three" / "c", 1)
    _images(root / "small", 3, size=4)
    _images(root / "broken", 3)
    (root / "broken" / "9.png").write_text("not an image")  # sorted last: found while calibrating
    (root / "empty").mkdir()
    return {"root": root, "model": f"{root / 'tiny.py'}:make", "other": f"{root / 'tiny.py'}:other",
            "ckpt": root / "tiny.pth", "other_ckpt": root / "other.pth", "train": root / "train", "val": root / "val",
            "flat": root / "flat"}


@pytest.fixture(scope="module")
def saved(world, tmp_path_factory) -> Path:
    """A plain conversion (no recovery) of the tiny model with its checkpoint, as `convert -o` writes it."""
    out = tmp_path_factory.mktemp("saved") / "saved"
    result = invoke("convert", world["model"], "-c", str(world["ckpt"]), "--input-size", "16", "-o", str(out))
    assert result.exit_code == 0, result.output
    return out


def invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def base(world, *extra: str) -> list[str]:
    return ["convert", world["model"], "-c", str(world["ckpt"]), "--input-size", "16", "--skip-stem", *extra]


def report_of(directory: Path) -> dict:
    return json.loads((directory / "report.json").read_text())


def assert_stages(report: dict, names: list[str]) -> None:
    stages = report["recovery"]
    assert [stage["stage"] for stage in stages] == names
    for stage in stages:
        assert 0.0 <= stage["agreement"] <= 1.0 and 0.0 <= stage["top1"] <= 1.0 and stage["samples"] == 10
    assert stages[0]["agreement"] == 1.0


def assert_clean(parent: Path) -> None:
    """No staging directories and no distillation checkpoints left behind."""
    leftovers = [p.name for p in parent.iterdir() if ".tmp-" in p.name or "distill-checkpoint" in p.name]
    assert leftovers == []


def copy_of(saved: Path, tmp_path: Path) -> Path:
    target = tmp_path / "saved"
    shutil.copytree(saved, target)
    return target


# ----- happy paths ------------------------------------------------------------------------------

def test_convert_calibrate_writes_stages_and_recipe(world, tmp_path) -> None:
    out = tmp_path / "out"
    result = invoke(*base(world, "--calibrate", "--data", world["train"], "--val-data", world["val"],
                          "--mean", "0.5,0.5,0.5", "--std", "0.25,0.25,0.25", "-o", out))
    assert result.exit_code == 0, result.output
    assert "calibrated 2 layers on 20 images" in result.output
    assert "calibrated 3 (1 layer)  1/2" in result.output  # a plain line per layer group (not a terminal)
    assert "accuracy is not measured" not in result.output
    report = report_of(out)
    assert_stages(report, ["original", "converted (data-free)", "calibrated"])
    assert [layer["name"] for layer in report["calibration"]["layers"]] == ["3", "6"]  # the stem is kept
    assert report["training"] == []
    recipe = json.loads((out / "ghostify.json").read_text())
    assert not Path(recipe["base_checkpoint"]).is_absolute()  # relative to the output directory
    assert (out / recipe["base_checkpoint"]).resolve() == world["ckpt"].resolve()
    model = ghostify.load(out).eval()
    assert model(torch.randn(2, 3, 16, 16)).shape == (2, 10)
    assert_clean(tmp_path)


def test_calibrate_without_val_data_says_accuracy_is_not_measured(world, tmp_path) -> None:
    result = invoke(*base(world, "--calibrate", "--data", world["flat"], "--calibration-samples", "4"))
    assert result.exit_code == 0, result.output
    assert result.output.count("accuracy is not measured") == 1 and "--val-data" in result.output
    assert "calibrated 2 layers on 4 images" in result.output


@pytest.mark.parametrize("flags, stages", [
    (["--distill"], ["original", "converted (data-free)", "distilled"]),  # retraining starts from the data-free weights
    (["--calibrate", "--distill"], ["original", "converted (data-free)", "calibrated", "distilled"]),  # asked for
])
def test_a_retraining_distillation_calibrates_only_when_asked(world, tmp_path, flags, stages) -> None:
    out = tmp_path / "out"
    result = invoke(*base(world, *flags, "--recipe", "retrain", "--epochs", "1", "--batch-size", "8", "--data", world["flat"],
                          "--val-data", world["val"], "-o", out))
    assert result.exit_code == 0, result.output
    assert ("note: not calibrating: the retrain recipe (1 epochs)" in result.output) == ("--calibrate" not in flags)
    assert ("calibrated 2 layers" in result.output) == ("--calibrate" in flags)
    assert_stages(report_of(out), stages)
    assert_clean(tmp_path)


def test_convert_distill_several_data_roots(world, tmp_path) -> None:
    out = tmp_path / "out"
    result = invoke(*base(world, "--distill", "--epochs", "1", "--batch-size", "8", "--data", world["train"],
                          "--data", world["flat"], "--val-data", world["val"], "--full-precision", "-o", out))
    assert result.exit_code == 0, result.output
    assert "distilling: 26 images, 1 epochs x 3 steps, finetune (adamw at 0.001, BatchNorm statistics frozen, float32)" in result.output
    assert "epoch 1/1  loss" in result.output and "val agreement" in result.output
    report = report_of(out)
    assert_stages(report, ["original", "converted (data-free)", "calibrated", "distilled"])
    assert len(report["training"]) == 1 and report["training"][0]["epoch"] == 1
    assert report["calibration"]["images"] == 26
    assert report["accuracy"]["agreement"] == report["recovery"][-1]["agreement"]
    assert_clean(tmp_path)


def test_convert_distill_within_a_time_budget(world, tmp_path) -> None:
    out = tmp_path / "out"
    result = invoke(*base(world, "--distill", "--minutes", "0.2", "--batch-size", "8", "--data", world["flat"], "-o", out))
    assert result.exit_code == 0, result.output
    # the probe's estimate, then (when they were off) the first epochs'
    pace = r"about [\d.]+ s per epoch|epoch [12] took [\d.]+ s|epochs \d+-\d+ took [\d.]+ s on average"
    plans = re.findall(rf"budget 0\.2 min: (?:{pace}) here -> (\d+) epochs?", result.output)
    assert plans, result.output
    assert len(report_of(out)["training"]) == int(plans[-1]) >= 1
    assert_clean(tmp_path)


def test_distill_saved_dir_in_place_with_teacher_from_recipe(world, saved, tmp_path) -> None:
    target = copy_of(saved, tmp_path)
    before = load_file(target / "model.safetensors")
    result = invoke("distill", target, "--data", world["flat"], "--epochs", "1", "--val-data", world["val"])
    assert result.exit_code == 0, result.output
    assert f"teacher: {world['model']}, weights from" in result.output
    after = load_file(target / "model.safetensors")
    report = report_of(target)
    assert_stages(report, ["original", "saved", "distilled"])
    # replaced in place by the trained weights, unless the epoch agreed less on --val-data than the start (keep_best)
    kept_start = "kept its starting weights" in result.output
    assert kept_start == all(torch.equal(before[name], after[name]) for name in before)
    assert report["recovery"][-1]["agreement"] >= report["recovery"][-2]["agreement"]
    assert len(report["training"]) == 1
    assert sorted(p.name for p in target.iterdir()) == ["ghostify.json", "model.safetensors", "report.html", "report.json", "report.md"]
    assert (target / json.loads((target / "ghostify.json").read_text())["base_checkpoint"]).resolve() == world["ckpt"].resolve()
    assert_clean(tmp_path)


def test_distill_with_teacher_and_output(world, saved, tmp_path) -> None:
    source = copy_of(saved, tmp_path)
    original = (source / "model.safetensors").read_bytes()
    out = tmp_path / "refined"
    result = invoke("distill", source, "--teacher", world["model"], "-c", world["ckpt"], "--data", world["train"],
                    "--epochs", "1", "--batch-size", "10", "-o", out)
    assert result.exit_code == 0, result.output
    assert "accuracy is not measured" in result.output
    assert (source / "model.safetensors").read_bytes() == original  # -o leaves SAVED_DIR alone
    assert len(report_of(out)["training"]) == 1 and report_of(out)["recovery"] == []
    assert ghostify.load(out)(torch.randn(1, 3, 16, 16)).shape == (1, 10)
    assert_clean(tmp_path)


# ----- interruption and --resume ----------------------------------------------------------------

def _interrupt_once(monkeypatch, cls, when) -> None:
    """Make ``cls.__call__`` raise KeyboardInterrupt the first time ``when(*args)`` holds, as Ctrl-C would."""
    original, fired = cls.__call__, []

    def call(self, *args):
        if not fired and when(*args):
            fired.append(True)
            raise KeyboardInterrupt
        return original(self, *args)

    monkeypatch.setattr(cls, "__call__", call)


def test_interrupted_distillation_resumes_where_it_stopped(world, tmp_path, monkeypatch) -> None:
    args = base(world, "--distill", "--epochs", "2", "--batch-size", "8", "--data", world["train"], "--val-data", world["val"])
    reference = tmp_path / "reference"
    assert invoke(*args, "-o", reference).exit_code == 0

    out = tmp_path / "out"
    ckpt = checkpoint_file(out)
    assert ckpt == tmp_path / ".out.distill-checkpoint.pt"
    # Ctrl-C in the middle of the second epoch (after its first step)
    _interrupt_once(monkeypatch, ghostify.progress.DistillationProgress,
                    lambda event, info: event == "step" and info["epoch"] == 1 and info["step"] == 1)
    result = invoke(*args, "-o", out)
    assert result.exit_code == 130, result.output
    assert f"interrupted: progress saved to {ckpt}; rerun the same command with --resume" in result.output
    assert "Traceback" not in result.output
    assert ckpt.is_file() and not out.exists()

    again = invoke(*args, "-o", out)  # forgetting --resume must not lose the checkpoint
    assert again.exit_code == 1 and "--resume" in again.output and ckpt.is_file()

    resumed = invoke(*args, "-o", out, "--resume")
    assert resumed.exit_code == 0, resumed.output
    assert "resuming at epoch 2, step 1" in resumed.output
    assert "calibrated 2 layers" not in resumed.output  # the checkpoint holds the student: no second calibration
    assert not ckpt.exists()
    report = report_of(out)
    assert_stages(report, ["original", "converted (data-free)", "calibrated", "distilled"])
    assert [epoch["epoch"] for epoch in report["training"]] == [1, 2]
    expected, got = load_file(reference / "model.safetensors"), load_file(out / "model.safetensors")
    assert all(torch.equal(expected[name], got[name]) for name in expected)  # bit-exact on CPU
    assert report["recovery"] == report_of(reference)["recovery"]
    assert_clean(tmp_path)


def test_interrupted_calibration_writes_nothing(world, tmp_path, monkeypatch) -> None:
    _interrupt_once(monkeypatch, ghostify.progress.CalibrationProgress, lambda name, index, total: index == 1)
    out = tmp_path / "out"
    result = invoke(*base(world, "--distill", "--epochs", "1", "--data", world["train"], "-o", out))
    assert result.exit_code == 130, result.output
    assert "interrupted: nothing was written" in result.output and "Traceback" not in result.output
    assert not out.exists()
    assert_clean(tmp_path)


def test_interrupted_distill_command_resumes(world, saved, tmp_path, monkeypatch) -> None:
    target = copy_of(saved, tmp_path)
    args = ["distill", target, "--data", world["train"], "--epochs", "2", "--batch-size", "10"]
    _interrupt_once(monkeypatch, ghostify.progress.DistillationProgress, lambda event, info: event == "epoch")
    result = invoke(*args)
    assert result.exit_code == 130 and "rerun the same command with --resume" in result.output
    assert checkpoint_file(target).is_file()
    resumed = invoke(*args, "--resume")
    assert resumed.exit_code == 0, resumed.output
    assert "resuming at epoch 2, step 0" in resumed.output
    assert [epoch["epoch"] for epoch in report_of(target)["training"]] == [1, 2]
    assert_clean(tmp_path)


# ----- bad inputs: one line, exit 1, nothing written ------------------------------------------------

BAD_CONVERT = [
    (["--calibrate"], "--calibrate needs images: pass --data DIR"),
    (["--distill"], "--distill needs images: pass --data DIR"),
    (["--calibrate", "--data", "{root}/missing"], "no such data directory"),
    (["--calibrate", "--data", "{root}/empty"], "holds no images"),
    (["--calibrate", "--data", "{root}/broken"], "cannot read image"),
    (["--distill", "--data", "{root}/small"], "are 4x4 but the model takes 16x16"),
    (["--calibrate", "--data", "{root}/three"], "the data has 3 class folders"),
    (["--calibrate", "--data", "{root}/flat", "--val-data", "{root}/three"], "the data has 3 class folders"),
    (["--calibrate", "--data", "{root}/flat", "--mean", "a,b,c"], "--mean must be numbers"),
    (["--calibrate", "--data", "{root}/flat", "--std", "0.2,nan,0.2"], "--std must be numbers"),
    (["--calibrate", "--data", "{root}/flat", "--std", "0.2,0.2"], "--mean and --std need 3 values"),
    (["--calibrate", "--data", "{root}/flat", "--std", "0,1,1"], "--std values must be > 0"),
    (["--calibrate", "--data", "{root}/flat", "--epochs", "2"], "--epochs applies to --distill"),
    (["--calibrate", "--data", "{root}/flat", "--data-limit", "2"], "--calibration-samples"),
    (["--distill", "--data", "{root}/flat", "--lr", "0"], "--lr must be a number > 0"),
    (["--distill", "--data", "{root}/flat", "--minutes", "0"], "--minutes must be a number > 0"),
    (["--distill", "--data", "{root}/flat", "--minutes", "2", "--epochs", "3"], "pass --epochs or --minutes, not both"),
    (["--calibrate", "--data", "{root}/flat", "--minutes", "2"], "--minutes applies to --distill"),
    (["--distill", "--data", "{root}/flat", "--augment", "autoaugment"], "augment must be one of crop-flip, trivialaugment"),
    (["--calibrate", "--data", "{root}/flat", "--augment", "crop-flip"], "--augment applies to --distill"),
    (["--distill", "--data", "{root}/flat", "--recipe", "sgd"], "recipe must be one of auto, retrain, finetune"),
    (["--calibrate", "--data", "{root}/flat", "--recipe", "retrain"], "--recipe applies to --distill"),
    (["--distill", "--data", "{root}/flat", "--resume"], "--resume needs -o OUT"),
    (["--distill", "--data", "{root}/flat", "--resume", "-o", "{tmp}/out"], "--resume: no checkpoint at"),
    (["--val-data", "{root}/val"], "--val-data measures accuracy during --calibrate/--distill"),
    (["--data", "{root}/val", "--data", "{root}/train"], "pass one ImageFolder root"),
    (["--calibrate", "--data", "{root}/flat", "-o", "{root}/flat", "--force"], "which this command reads"),
]


@pytest.mark.parametrize(("extra", "message"), BAD_CONVERT, ids=[m for _, m in BAD_CONVERT])
def test_bad_convert_input(world, tmp_path, extra, message) -> None:
    extra = [a.format(root=world["root"], tmp=tmp_path) for a in extra]
    out = [] if "-o" in extra or "--resume" in extra else ["-o", str(tmp_path / "out")]
    result = invoke(*base(world, *extra, *out))
    assert_one_line_error(result, message)
    assert not (tmp_path / "out").exists()
    assert_clean(tmp_path)
    assert len(list((world["root"] / "flat").iterdir())) == 6


def assert_one_line_error(result, message: str) -> None:
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in " ".join(result.output.split()), result.output


def test_distill_bad_inputs(world, saved, tmp_path) -> None:
    target = copy_of(saved, tmp_path)
    snapshot = {p.name: p.read_bytes() for p in target.iterdir()}
    cases = [
        (["--epochs", "1"], "distill needs images: pass --data DIR"),
        (["--data", world["root"] / "missing"], "no such data directory"),
        (["--data", world["root"] / "three"], "the data has 3 class folders"),
        (["--data", world["flat"], "--teacher", world["other"], "-c", world["other_ckpt"]], "the base model does not match"),
        (["--data", world["flat"], "-c", world["other_ckpt"]], "does not fit the model"),
        (["--data", world["flat"], "--teacher", world["model"]], "would have random weights"),
        (["--data", world["flat"], "--resume"], "--resume: no checkpoint at"),
        (["--data", world["flat"], "-o", target], "which this command reads"),
    ]
    for extra, message in cases:
        assert_one_line_error(invoke("distill", target, *extra), message)
    assert {p.name: p.read_bytes() for p in target.iterdir()} == snapshot
    assert_one_line_error(invoke("distill", tmp_path / "nowhere", "--data", world["flat"]), "holds no ghostify.json")
    assert_clean(tmp_path)


def test_distill_teacher_from_recipe_needs_weights(world, tmp_path) -> None:
    random_weights = tmp_path / "random"
    assert invoke("convert", world["model"], "--input-size", "16", "-o", random_weights).exit_code == 0
    assert_one_line_error(invoke("distill", random_weights, "--data", world["flat"]), "would have random weights")

    moved = tmp_path / "moved"
    ckpt = tmp_path / "weights.pth"
    shutil.copy(world["ckpt"], ckpt)
    assert invoke("convert", world["model"], "-c", ckpt, "--input-size", "16", "-o", moved).exit_code == 0
    ckpt.unlink()
    assert_one_line_error(invoke("distill", moved, "--data", world["flat"]), "which no longer exist there")


def test_old_recipe_without_base_checkpoint_is_read(world, saved, tmp_path) -> None:
    target = copy_of(saved, tmp_path)
    recipe = json.loads((target / "ghostify.json").read_text())
    del recipe["base_checkpoint"], recipe["base_pretrained"]
    (target / "ghostify.json").write_text(json.dumps(recipe))
    assert ghostify.serialization.base_weights(target) == (None, False)
    assert ghostify.load(target)(torch.randn(1, 3, 16, 16)).shape == (1, 10)
    result = invoke("distill", target, "--data", world["flat"], "-c", world["ckpt"], "--epochs", "1")
    assert result.exit_code == 0, result.output
    assert json.loads((target / "ghostify.json").read_text())["base_checkpoint"] is not None


@pytest.mark.parametrize("terminal", [True, False])
def test_progress_displays(terminal, monkeypatch) -> None:
    import io

    from rich.console import Console

    monkeypatch.delenv("CI", raising=False)
    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=terminal, width=120)
    with ghostify.progress.calibration_progress(console) as progress:
        for index, name in enumerate(["layer1.0.conv1", "layer1.0.conv2", "layer2.0.conv1"]):
            progress(name, index, 3)
        progress("done", 3, 3)
    with ghostify.progress.distillation_progress(console) as progress:
        progress("start", {"epochs": 2, "steps_per_epoch": 3, "images": 12, "epoch": 1, "step": 1, "world_size": 1,
                           "recipe": "finetune (adamw at 0.001, BatchNorm statistics frozen)"})
        progress("step", {"epoch": 1, "step": 2, "loss": 0.5, "agreement": 0.75, "lr": 0.1, "grad_norm": 1.0})
        progress("epoch", {"epoch": 2, "loss": 2.41, "logit_loss": 1.0, "feature_loss": 1.41, "train_agreement": 0.912,
                           "lr": 0.0, "seconds": 12.3, "val_agreement": 0.901, "val_top1": None, "teacher_top1": None})
    text = buffer.getvalue()
    assert "distilling: 12 images, 2 epochs x 3 steps, finetune (adamw at 0.001, BatchNorm statistics frozen); resuming at epoch 2, step 1" in text
    assert "epoch 2/2  loss 2.41  agreement 91.2%  val agreement 90.1%  12.3 s" in text
    plain = ["calibrated layer1.0 (2 layers)  2/3", "calibrated layer2.0 (1 layer)  3/3"]
    assert all((line in text) != terminal for line in plain)  # a terminal shows the bar instead


def test_distill_paper_variant_skips_calibration(world, tmp_path) -> None:
    """The paper's BN+ReLU ghost modules are not linear: --distill says so and distils from the data-free start."""
    out = tmp_path / "paper"
    result = invoke(*base(world, "--variant", "paper-bn-relu", "--distill", "--epochs", "1", "--data", str(world["train"]),
                          "--val-data", str(world["val"]), "-o", str(out)))
    assert result.exit_code == 0, result.output
    assert "cannot be calibrated" in result.output
    assert_stages(report_of(out), ["original", "converted (data-free)", "distilled"])


def test_calibrate_paper_variant_is_refused(world, tmp_path) -> None:
    result = invoke(*base(world, "--variant", "paper-bn-relu", "--calibrate", "--data", str(world["train"])))
    assert result.exit_code == 1
    assert "cannot be calibrated" in result.output and "distill" in result.output
