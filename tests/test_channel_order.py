"""ghostify.channel_order: ghost modules added into one residual stream share one channel assignment."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import ghostify
from ghostify.channel_order import joint_assignment
from ghostify.config import GhostConfig
from ghostify.deploy import deploy
from ghostify.fold_plan import residual_groups
from ghostify.errors import ConfigError
from ghostify.weight_transfer import ChannelAssignment, channel_gains, transfer_weights

from test_deploy import trained_like_norms

pytestmark = pytest.mark.usefixtures("single_thread")


class Stage(nn.Module):
    """Two residual blocks of one stage, as in a ResNet: a strided block with a conv shortcut, then an identity one.

    conv_b, down and conv_d are all added into one stream (block 0's sum, then block 1's)."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.conv_a, self.bn_a = nn.Conv2d(8, width, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(width)
        self.conv_b, self.bn_b = nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width)
        self.down, self.bn_down = nn.Conv2d(8, width, 1, stride=2, bias=False), nn.BatchNorm2d(width)
        self.conv_c, self.bn_c = nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width)
        self.conv_d, self.bn_d = nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width)
        self.fc = nn.Linear(width, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem(x))
        y = self.bn_b(self.conv_b(torch.relu(self.bn_a(self.conv_a(x)))))
        y = torch.relu(y + self.bn_down(self.down(x)))
        z = self.bn_d(self.conv_d(torch.relu(self.bn_c(self.conv_c(y)))))
        z = torch.relu(z + y)
        return self.fc(z.mean((2, 3)))


STREAM = ["conv_b", "down", "conv_d"]


def stage(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return trained_like_norms(Stage())


def convert(model: nn.Module, **options) -> nn.Module:
    return ghostify.convert(model, exclude=["stem"], **options).eval()


def orders(model: nn.Module) -> dict[str, list[int]]:
    return {name: model.get_submodule(name).out_index.tolist() for name in STREAM}


def test_the_ghosts_of_one_residual_stream_are_found_as_one_group():
    assert residual_groups(convert(stage())) == {"conv_b": ["down", "conv_d"]}
    assert residual_groups(stage()) == {}  # nothing converted, nothing to group


def test_shared_assignment_removes_every_gather_of_the_deploy_form_and_keeps_its_outputs():
    model = stage()
    shared, free = convert(model), convert(model, shared_residual_order=False)
    assert len({tuple(order) for order in orders(shared).values()}) == 1
    assert len({tuple(order) for order in orders(free).values()}) > 1  # each layer's own grouping differs here
    x = torch.randn(2, 3, 12, 12)
    for converted, gathers in ((shared, 0), (free, 2)):
        deployed = deploy(converted)
        assert deployed.ghostify_deploy.gathers == gathers
        with torch.no_grad():
            expected = converted(x)
            assert (deployed(x) - expected).abs().max().item() <= 1e-5 * expected.abs().max().item()
    reasons = {layer.name: layer.reasons for layer in deploy(free).ghostify_deploy.layers}
    assert any("shared_residual_order" in reason for reason in reasons["conv_d"] + reasons["down"])


def test_the_shared_assignment_is_the_joint_grouping_and_each_layer_is_fitted_to_it():
    model = stage()
    converted = convert(model)
    gains = [channel_gains(model.get_submodule(name).weight, 2, 3, model.get_submodule(name).stride) for name in STREAM]
    expected = joint_assignment([gain for gain, _ in gains], 2, [energy for _, energy in gains])
    assert orders(converted)["conv_b"] == expected.out_index(16, 2).tolist()
    plan = {layer.name: layer for layer in converted.ghostify_plan.converted}
    for name in STREAM:  # the recorded fit error is the one of the shared assignment
        ghost = ghostify.GhostConv2d.like(model.get_submodule(name), 2)
        assert plan[name].fit_error == pytest.approx(transfer_weights(model.get_submodule(name), ghost, expected))
        assert torch.equal(ghost.primary.weight, converted.get_submodule(name).primary.weight)


def test_joint_assignment_of_one_layer_is_its_own_grouping():
    torch.manual_seed(0)
    weight = torch.randn(12, 4, 3, 3)
    gain, energy = channel_gains(weight, 3)
    own = ghostify.weight_transfer.assign_channels(weight, 3)
    assert joint_assignment([gain], 3, [energy]) == own
    assert isinstance(own, ChannelAssignment)


def test_calibration_regroups_a_stream_jointly_and_the_deploy_form_still_needs_no_gather():
    model = stage()
    student = convert(model)
    images = torch.randn(32, 3, 12, 12)
    before = orders(student)
    ghostify.calibrate(student, model, images, block_steps=0, samples=32, batch_size=16)
    after = orders(student)
    assert len({tuple(order) for order in after.values()}) == 1
    assert after != before  # regrouped from the data, jointly
    assert deploy(student).ghostify_deploy.gathers == 0

    free = convert(model, shared_residual_order=False)
    ghostify.calibrate(free, model, images, block_steps=0, samples=32, batch_size=16)
    assert len({tuple(order) for order in orders(free).values()}) > 1  # each layer regrouped alone


def test_records_written_before_the_option_existed_load_with_free_orders():
    data = GhostConfig().to_dict()
    data["_version"], data["_data"] = 2, {k: v for k, v in data["_data"].items() if k != "shared_residual_order"}
    assert GhostConfig.from_dict(data).shared_residual_order is False
    assert GhostConfig.from_dict(GhostConfig().to_dict()).shared_residual_order is True
    with pytest.raises(ConfigError, match="shared_residual_order"):
        GhostConfig(shared_residual_order="yes")
