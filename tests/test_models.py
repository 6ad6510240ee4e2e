"""resolve_model: each source builds its model; every mistake in a spec gets a message that fixes it."""

from __future__ import annotations

import urllib.error
from pathlib import Path

import pytest
import torch
from torch import nn

from ghostify.errors import CheckpointError, ModelSpecError
from ghostify.models import ResolvedModel, list_model_names, resolve_model

USER_MODEL_FILE = """
import torch
from torch import nn


def make():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4),
    )


def make_other():
    return nn.Sequential(nn.Conv2d(3, 4, 1))


def not_a_model():
    return [1, 2, 3]


def broken():
    raise ValueError("dataset path not set")


def needs_args(depth, width=1):
    return nn.Identity()


LEARNING_RATE = 0.1
"""


@pytest.fixture
def user_file(tmp_path: Path) -> Path:
    path = tmp_path / "my_model.py"
    path.write_text(USER_MODEL_FILE)
    return path


def random_copy_of(model: nn.Module) -> dict[str, torch.Tensor]:
    """A state dict shaped like ``model``'s with different values, so a load is visible."""
    torch.manual_seed(123)
    return {name: torch.randn_like(t) if t.is_floating_point() else t + 7 for name, t in model.state_dict().items()}


# --- file source ------------------------------------------------------------------------------


def test_file_spec_builds_the_model(user_file):
    resolved = resolve_model(f"{user_file}:make")
    assert isinstance(resolved, ResolvedModel)
    assert isinstance(resolved.model, nn.Sequential)
    assert resolved.source == "file"
    assert resolved.spec == f"{user_file.resolve()}:make"
    assert resolved.pretrained is False and resolved.checkpoint is None
    assert resolved.seed == 0 and resolved.weights_note == "random weights (seed 0, no --checkpoint given)"
    assert resolved.model(torch.zeros(1, 3, 8, 8)).shape == (1, 4)


def test_file_spec_with_relative_path_is_made_absolute(user_file, monkeypatch):
    monkeypatch.chdir(user_file.parent)
    resolved = resolve_model("my_model.py:make")
    assert resolved.spec == f"{user_file.resolve()}:make"


def test_file_spec_imports_siblings_of_the_file(tmp_path):
    (tmp_path / "blocks_for_ghostify_test.py").write_text("from torch import nn\nBlock = nn.Identity\n")
    (tmp_path / "net.py").write_text("import blocks_for_ghostify_test\ndef make():\n    return blocks_for_ghostify_test.Block()\n")
    assert isinstance(resolve_model(f"{tmp_path / 'net.py'}:make").model, nn.Identity)


@pytest.mark.parametrize("layout", ["raw", "state_dict", "model"])
@pytest.mark.parametrize("data_parallel", [False, True], ids=["plain", "module-prefix"])
def test_file_spec_with_checkpoint_loads_its_weights(user_file, tmp_path, layout, data_parallel):
    template = resolve_model(f"{user_file}:make").model
    saved = random_copy_of(template)
    state = {f"module.{k}" if data_parallel else k: v for k, v in saved.items()}
    checkpoint = tmp_path / "weights.pth"
    torch.save(state if layout == "raw" else {layout: state, "epoch": 1}, checkpoint)

    resolved = resolve_model(f"{user_file}:make", checkpoint=checkpoint)

    assert resolved.checkpoint == str(checkpoint)
    assert resolved.weights_note == f"weights from {checkpoint}"
    loaded = resolved.model.state_dict()
    assert list(loaded) == list(saved)
    for name, tensor in saved.items():
        assert torch.equal(loaded[name], tensor), name


def test_missing_file():
    with pytest.raises(ModelSpecError, match=r"no such file: .*nowhere\.py; check the path"):
        resolve_model("nowhere/nowhere.py:make")


def test_missing_function_lists_what_the_file_defines(user_file):
    with pytest.raises(ModelSpecError, match=r"has no function 'build'; it defines: make, make_other, not_a_model"):
        resolve_model(f"{user_file}:build")


def test_file_without_function_part(user_file):
    with pytest.raises(ModelSpecError, match=r"names a file but no function; write .*my_model\.py:FUNCTION"):
        resolve_model(str(user_file))


def test_function_not_returning_a_module(user_file):
    with pytest.raises(ModelSpecError, match=r"not_a_model\(\) returned 'list', not a torch\.nn\.Module"):
        resolve_model(f"{user_file}:not_a_model")


def test_attribute_that_is_not_a_function(user_file):
    with pytest.raises(ModelSpecError, match="LEARNING_RATE is a float, not a function"):
        resolve_model(f"{user_file}:LEARNING_RATE")


def test_function_raising(user_file):
    with pytest.raises(ModelSpecError, match=r"broken\(\) raised ValueError: dataset path not set"):
        resolve_model(f"{user_file}:broken")


def test_function_needing_arguments(user_file):
    with pytest.raises(ModelSpecError, match="called with no arguments but requires depth;"):
        resolve_model(f"{user_file}:needs_args")


def test_file_that_fails_to_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import torch\ndef make(:\n")
    with pytest.raises(ModelSpecError, match=r"could not import .*bad\.py: SyntaxError"):
        resolve_model(f"{bad}:make")


def test_file_model_rejects_pretrained_and_num_classes(user_file):
    with pytest.raises(ModelSpecError, match="pretrained weights exist only for timm and torchvision"):
        resolve_model(f"{user_file}:make", pretrained=True)
    with pytest.raises(ModelSpecError, match="num_classes applies to timm and torchvision"):
        resolve_model(f"{user_file}:make", num_classes=10)


# --- checkpoint errors through resolve_model ------------------------------------------------


def test_missing_checkpoint_file(user_file, tmp_path):
    with pytest.raises(CheckpointError, match=r"no such file: .*absent\.pth; check the path"):
        resolve_model(f"{user_file}:make", checkpoint=tmp_path / "absent.pth")


def test_checkpoint_for_another_model(user_file, tmp_path):
    other = resolve_model(f"{user_file}:make_other").model
    torch.save(other.state_dict(), tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match="is this checkpoint for this model") as caught:
        resolve_model(f"{user_file}:make", checkpoint=tmp_path / "other.pth")
    message = str(caught.value)
    assert "missing from the checkpoint" in message
    assert "shape mismatches (2): 0.weight checkpoint [4, 3, 1, 1] vs model [8, 3, 3, 3]; 0.bias" in message


def test_untrusted_pickle_checkpoint_then_trusted(user_file, tmp_path):
    model = resolve_model(f"{user_file}:make").model
    torch.save(model, tmp_path / "whole.pth")  # a pickled nn.Module, not a state dict
    with pytest.raises(CheckpointError, match="--trust-checkpoint"):
        resolve_model(f"{user_file}:make", checkpoint=tmp_path / "whole.pth")
    resolved = resolve_model(f"{user_file}:make", checkpoint=tmp_path / "whole.pth", trust_checkpoint=True)
    assert torch.equal(resolved.model[0].weight, model[0].weight)


def test_pretrained_and_checkpoint_together_is_refused(tmp_path):
    with pytest.raises(ModelSpecError, match="either pretrained weights or a checkpoint"):
        resolve_model("resnet18", pretrained=True, checkpoint=tmp_path / "x.pth")


# --- timm and torchvision -------------------------------------------------------------------


@pytest.mark.parametrize("spec", ["test_resnet", "timm:test_resnet", "  timm:test_resnet "])
def test_timm_spec(spec):
    resolved = resolve_model(spec, num_classes=7)
    assert resolved.source == "timm"
    assert resolved.spec == "timm:test_resnet"
    assert resolved.model.num_classes == 7


def test_torchvision_spec():
    resolved = resolve_model("torchvision:squeezenet1_1", num_classes=5)
    assert resolved.source == "torchvision"
    assert resolved.spec == "torchvision:squeezenet1_1"
    assert resolved.model(torch.zeros(1, 3, 64, 64)).shape == (1, 5)


@pytest.mark.parametrize("typo", ["resnt50", "resnet5", "timm:resnt50"])
def test_unknown_timm_name_suggests_close_matches(typo):
    with pytest.raises(ModelSpecError, match=r"unknown timm model .*Did you mean: .*\bresnet50\b.*timm:NAME, torchvision:NAME"):
        resolve_model(typo)


def test_bare_torchvision_only_name_points_to_torchvision():
    with pytest.raises(ModelSpecError, match=r"Did you mean: torchvision:vit_b_16"):
        resolve_model("vit_b_16")


def test_unknown_torchvision_name_suggests_close_matches():
    with pytest.raises(ModelSpecError, match=r"unknown torchvision model 'resnt50'.*Did you mean: resnet50"):
        resolve_model("torchvision:resnt50")


def test_no_suggestions_for_nonsense():
    with pytest.raises(ModelSpecError) as caught:
        resolve_model("torchvision:qqqqqqqqqq")
    assert "Did you mean" not in str(caught.value)


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("keras:resnet50", "unknown model source 'keras'.*known sources: timm, torchvision, file"),
        ("", "empty model spec"),
        ("timm:", "names no model"),
    ],
)
def test_malformed_specs(spec, match):
    with pytest.raises(ModelSpecError, match=match):
        resolve_model(spec)


def test_pretrained_download_failure_is_explained(monkeypatch):
    import timm
    import torchvision

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(timm, "create_model", offline)
    monkeypatch.setattr(torchvision.models, "get_model", offline)
    for spec in ("timm:resnet18", "torchvision:resnet18"):
        with pytest.raises(ModelSpecError, match=r"could not be downloaded \(no network\?\).*--checkpoint PATH"):
            resolve_model(spec, pretrained=True)


def test_pretrained_weights_note():
    note = ResolvedModel(model=nn.Identity(), spec="timm:x", source="timm", pretrained=True, checkpoint=None).weights_note
    assert note == "pretrained timm weights"


def test_list_model_names():
    assert "resnet50" in list_model_names()
    assert "resnet50" in list_model_names("torchvision")
    assert list_model_names("file") == []
    with pytest.raises(ModelSpecError, match="unknown model source 'keras'"):
        list_model_names("keras")


def test_pretrained_without_network_uses_only_the_cache(monkeypatch) -> None:
    """When the hub's name does not resolve, timm runs in hub offline mode (fails fast), then it is restored."""
    from huggingface_hub import constants

    from ghostify import models

    monkeypatch.setattr(models, "_host_resolves", lambda host: False)
    for variable in models._PROXY_VARIABLES:
        monkeypatch.delenv(variable, raising=False)
    before = constants.HF_HUB_OFFLINE
    with models._hub_offline_unless_reachable(pretrained=True):
        assert constants.HF_HUB_OFFLINE is True
    assert constants.HF_HUB_OFFLINE == before
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.invalid:3128")
    with models._hub_offline_unless_reachable(pretrained=True):
        assert constants.HF_HUB_OFFLINE == before  # behind a proxy, DNS says nothing


@pytest.mark.parametrize("name", ["lraspp_mobilenet_v3_large", "fasterrcnn_mobilenet_v3_large_320_fpn"])
def test_torchvision_detection_and_segmentation_build_offline_without_pretrained(name, monkeypatch):
    def no_network(*args, **kwargs):
        raise urllib.error.URLError("no network in this test")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_network)
    resolved = resolve_model(f"torchvision:{name}")
    assert resolved.checkpoint is None and not resolved.pretrained
    assert sum(p.numel() for p in resolved.model.parameters()) > 0
