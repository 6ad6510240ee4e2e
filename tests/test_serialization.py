"""Save / load round trips: safetensors weights plus a JSON recipe, no pickled code."""

from __future__ import annotations

import json

import pytest
import torch
import torchvision
from torch import nn

import ghostify
from ghostify.errors import CheckpointError, GhostifyError
from ghostify.serialization import RECIPE_FILE, WEIGHTS_FILE


class SharedConvNet(nn.Module):
    """A conv called twice and registered under two names: must come back as one module."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.shared = nn.Conv2d(16, 16, 3, padding=1)
        self.alias = self.shared
        self.head = nn.Conv2d(16, 10, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem(x))
        x = torch.relu(self.shared(x))
        x = torch.relu(self.alias(x))
        return self.head(x).mean((2, 3))


def _perturb(model: nn.Module) -> None:
    """Make weights differ from any fresh init so a load that silently re-inits would be caught."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)


def test_round_trip_with_spec(tmp_path) -> None:
    torch.manual_seed(0)
    base = torchvision.models.resnet18(num_classes=10)
    # init="random": this is about saving and loading (the data-free start is tested elsewhere and
    # costs ~10 s on a ResNet-18); _perturb moves every weight anyway
    converted = ghostify.convert(base, ratio=3, init="random").eval()
    _perturb(converted)
    ghostify.save(converted, tmp_path / "out", base_model="torchvision:resnet18")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [RECIPE_FILE, WEIGHTS_FILE]
    recipe = json.loads((tmp_path / "out" / RECIPE_FILE).read_text())
    assert recipe["base_model"] == "torchvision:resnet18" and recipe["plan"]["config"]["_data"]["ratio"] == 3
    # the recipe records the classifier size through the weights, so pass the same base model
    loaded = ghostify.load(tmp_path / "out", base_model=torchvision.models.resnet18(num_classes=10)).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(converted(x), loaded(x))
    assert ghostify.get_plan(loaded).to_dict() == ghostify.get_plan(converted).to_dict()


def test_round_trip_by_recorded_spec(tmp_path) -> None:
    converted = ghostify.convert(torchvision.models.resnet18(), ratio=2, init="random").eval()
    _perturb(converted)
    ghostify.save(converted, tmp_path / "m", base_model="torchvision:resnet18")
    loaded = ghostify.load(tmp_path / "m").eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(converted(x), loaded(x))


def test_shared_and_aliased_conv_round_trip(tmp_path) -> None:
    torch.manual_seed(1)
    converted = ghostify.convert(SharedConvNet(), ratio=2).eval()
    assert converted.shared is converted.alias
    _perturb(converted)
    ghostify.save(converted, tmp_path / "m")
    loaded = ghostify.load(tmp_path / "m", base_model=SharedConvNet()).eval()
    assert loaded.shared is loaded.alias and isinstance(loaded.shared, ghostify.GhostConv2d)
    x = torch.randn(1, 3, 12, 12)
    with torch.no_grad():
        assert torch.equal(converted(x), loaded(x))


def test_load_without_spec_asks_for_base_model(tmp_path) -> None:
    ghostify.save(ghostify.convert(SharedConvNet()), tmp_path / "m")
    with pytest.raises(GhostifyError, match="base_model="):
        ghostify.load(tmp_path / "m")


def test_load_rejects_wrong_base_model(tmp_path) -> None:
    ghostify.save(ghostify.convert(SharedConvNet()), tmp_path / "m")
    with pytest.raises(CheckpointError, match="does not match"):
        ghostify.load(tmp_path / "m", base_model=torchvision.models.resnet18())


def test_load_rejects_non_ghostify_directory(tmp_path) -> None:
    with pytest.raises(CheckpointError, match="ghostify.json"):
        ghostify.load(tmp_path)


def test_save_refuses_to_overwrite_without_force(tmp_path) -> None:
    converted = ghostify.convert(SharedConvNet())
    target = tmp_path / "m"
    target.mkdir()
    (target / "keep.txt").write_text("user data")
    with pytest.raises(GhostifyError, match="force=True"):
        ghostify.save(converted, target)
    assert (target / "keep.txt").read_text() == "user data"
    ghostify.save(converted, target, force=True)
    assert not (target / "keep.txt").exists() and (target / WEIGHTS_FILE).is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["m"]  # no temporary directories left behind


def test_save_requires_converted_model(tmp_path) -> None:
    with pytest.raises(GhostifyError, match="no ghostify plan"):
        ghostify.save(SharedConvNet(), tmp_path / "m")
