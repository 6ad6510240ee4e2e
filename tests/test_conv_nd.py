"""Ghost modules beyond Conv2d: Conv1d (audio, sequences) and Conv3d (video), and transposed convs kept.

The same rules, options, data-free weight transfer, MAC counting, save/load and CLI as for Conv2d.
New classes are reached as ``ghostify.GhostConv1d`` inside the tests (not imported at the top), so
that each test fails on its own on a ghostify without them.
"""

from __future__ import annotations

import json
import math
import textwrap

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from typer.testing import CliRunner

import ghostify
from ghostify.cli import app
from ghostify.errors import ConfigError, GhostifyError
from ghostify.measure import count_macs, example_input, layer_macs

pytestmark = pytest.mark.usefixtures("single_thread")

TRANSPOSED_REASON = "transposed conv: not eligible (a ghost module is a forward conv)"
CONVS = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
EXACT_FIT = 1e-3


# ----- the modules: shapes, parameters and MACs by hand ---------------------------------------------

def test_ghost_conv1d_shape_parameters_and_macs_by_hand():
    torch.manual_seed(0)
    conv = nn.Conv1d(4, 10, 5, stride=2, padding=2)
    ghost = ghostify.GhostConv1d(4, 10, 5, stride=2, padding=2, ratio=3, dw_size=3)
    x = torch.randn(1, 4, 32)
    assert ghost(x).shape == conv(x).shape == (1, 10, 16)
    # m = ceil(10 / 3) = 4 intrinsic maps, 2 ghosts each from a depthwise kernel of 3
    assert ghost.intrinsic_channels == 4
    assert tuple(ghost.cheap.weight.shape) == (8, 1, 3) and ghost.cheap.groups == 4
    assert sum(p.numel() for p in ghost.primary.parameters()) == 4 * 4 * 5 + 4
    assert sum(p.numel() for p in ghost.cheap.parameters()) == 8 * 3 + 8
    assert sum(p.numel() for p in ghost.parameters()) == 84 + 32
    # 16 output positions: primary 16 * 4 * (4 * 5), cheap 16 * 8 * 3
    assert count_macs(ghost, x).total == 16 * 4 * 20 + 16 * 8 * 3 == 1664
    assert count_macs(conv, x).total == 16 * 10 * 20
    assert (ghost.kernel_size, ghost.stride, ghost.padding, ghost.groups) == ((5,), (2,), (2,), 1)


def test_ghost_conv3d_shape_parameters_and_macs_by_hand():
    torch.manual_seed(0)
    conv = nn.Conv3d(3, 8, 3, padding=1, bias=False)
    ghost = ghostify.GhostConv3d.like(conv, ratio=2, dw_size=3)
    x = torch.randn(1, 3, 4, 8, 8)
    assert ghost(x).shape == conv(x).shape == (1, 8, 4, 8, 8)
    assert tuple(ghost.cheap.weight.shape) == (4, 1, 3, 3, 3)  # a 3x3x3 depthwise kernel per ghost
    assert ghost.primary.bias is None and ghost.cheap.bias is None
    assert sum(p.numel() for p in ghost.parameters()) == 4 * 3 * 27 + 4 * 27 == 432
    # 256 output positions: primary 256 * 4 * (3 * 27), cheap 256 * 4 * 27
    assert count_macs(ghost, x).total == 256 * 4 * 81 + 256 * 4 * 27 == 110592
    assert count_macs(conv, x).total == 256 * 8 * 81


def test_ghost_modules_of_every_dims_share_one_implementation_and_keep_the_2d_api():
    for dims, name in ((1, "GhostConv1d"), (2, "GhostConv2d"), (3, "GhostConv3d")):
        cls = getattr(ghostify, name)
        ghost = cls(4, 8, 3, padding=1)
        assert isinstance(ghost.primary, CONVS[dims]) and isinstance(ghost.cheap, CONVS[dims])
        # the state dict keys saved models depend on
        assert sorted(ghost.state_dict()) == ["cheap.bias", "cheap.weight", "out_index", "primary.bias", "primary.weight"]
        assert ghost.out_index.tolist() == list(range(8))
    assert not isinstance(ghostify.GhostConv1d(4, 8, 3), ghostify.GhostConv2d)  # 2-D-only code never sees them
    assert issubclass(ghostify.GhostConv2dBNReLU, ghostify.GhostConv2d)


@pytest.mark.parametrize("dims", [1, 3])
def test_paper_variant_of_other_dims_has_batchnorm_of_those_dims(dims):
    cls = getattr(ghostify, f"GhostConv{dims}dBNReLU")
    ghost = cls(4, 8, 3, padding=1)
    norms = {1: nn.BatchNorm1d, 3: nn.BatchNorm3d}[dims]
    assert isinstance(ghost.primary_bn, norms) and isinstance(ghost.cheap_bn, norms) and ghost.primary.bias is None
    x = torch.randn(2, 4, *(6,) * dims)
    assert ghost(x).shape == (2, 8, *(6,) * dims)


def test_like_refuses_a_conv_of_other_dims():
    with pytest.raises(ConfigError, match="GhostConv1d"):
        ghostify.GhostConv2d.like(nn.Conv1d(4, 8, 3), 2)
    with pytest.raises(ConfigError, match="ConvTranspose2d"):
        ghostify.GhostConv2d.like(nn.ConvTranspose2d(4, 8, 3), 2)


# ----- data-free weight transfer in 1-D and 3-D ---------------------------------------------------

def _compose(source: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """The filter ``cheap kernel o source`` (true convolution, full size): what a ghost of ``source`` computes."""
    dims = kernel.dim()
    conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[dims]
    flipped = kernel.flip(list(range(dims)))[None, None]
    return conv(source[:, None], flipped, padding=kernel.shape[0] - 1)[:, 0]


def _ghostable_conv(dims: int, ratio: int, sources: int, seed: int):
    """A conv (kernel 5) whose filters are ``sources`` random kernel-3 filters (zero-padded to 5) and, for
    each, ``ratio - 1`` ghosts = a random kernel-3 cheap kernel composed with it; channels shuffled.
    Returns the conv and {source channel: set of its ghost channels}."""
    torch.manual_seed(seed)
    cin = 3
    small = torch.randn(sources, cin, *(3,) * dims)
    kernels = torch.randn(sources, ratio - 1, *(3,) * dims)
    ghosts = [_compose(small[i], kernels[i, k]) for i in range(sources) for k in range(ratio - 1)]
    weight = torch.cat([F.pad(small, (1, 1) * dims), torch.stack(ghosts)])
    perm = torch.randperm(len(weight))
    conv = CONVS[dims](cin, len(weight), 5, padding=2, bias=True)
    with torch.no_grad():
        conv.weight.copy_(weight[perm])
    position = {int(original): new for new, original in enumerate(perm)}
    groups = {position[i]: {position[sources + i * (ratio - 1) + k] for k in range(ratio - 1)} for i in range(sources)}
    return conv, groups


@pytest.mark.parametrize("dims, ratio, sources, seed", [(1, 2, 6, 0), (1, 3, 4, 1), (3, 2, 4, 2), (3, 3, 3, 3)])
def test_an_exactly_ghostable_conv_is_reproduced_in_1d_and_3d(dims, ratio, sources, seed):
    from ghostify.weight_transfer import ChannelAssignment, transfer_weights

    conv, groups = _ghostable_conv(dims, ratio, sources, seed)
    ghost = getattr(ghostify, f"GhostConv{dims}d").like(conv, ratio, 3)
    error = transfer_weights(conv, ghost)
    assert 0.0 <= error < EXACT_FIT
    assignment = ChannelAssignment.from_out_index(ghost.out_index, ratio)
    assert {s: set(g) for s, g in zip(assignment.sources, assignment.ghosts)} == groups
    x = torch.randn(2, 3, *(9,) * dims)
    with torch.no_grad():
        expected, got = conv(x), ghost(x)
    torch.testing.assert_close(got[:, sorted(groups)], expected[:, sorted(groups)], atol=1e-4, rtol=1e-4)  # sources: exact
    interior = (slice(None), slice(None), *(slice(2, -2),) * dims)  # ghosts: exact away from the zero-padded border
    torch.testing.assert_close(got[interior], expected[interior], atol=1e-3, rtol=1e-3)


@pytest.mark.parametrize("dims", [1, 3])
def test_transfer_handles_stride_and_dilation_in_other_dims(dims):
    """Scaled copies are exact ghosts whatever the stride and dilation; random filters fit with error in (0, 1]."""
    torch.manual_seed(dims)
    conv = CONVS[dims](4, 8, 3, stride=2, dilation=2, padding=2)
    with torch.no_grad():
        conv.weight[4:] = 1.5 * conv.weight[:4]
    converted = ghostify.convert(nn.Sequential(CONVS[dims](2, 4, 1), conv), ratio=2, skip_output=False)
    assert ghostify.get_plan(converted).layer("1").fit_error < EXACT_FIT
    random_conv = ghostify.convert(nn.Sequential(CONVS[dims](2, 4, 1), CONVS[dims](4, 8, 3, stride=2, dilation=2)), skip_output=False)
    assert 0.0 < ghostify.get_plan(random_conv).layer("1").fit_error <= 1.0


# ----- a user's 1-D CNN: convert, run, count, save and load ------------------------------------------

class AudioNet(nn.Module):
    """A small 1-D CNN: Conv1d-BN-ReLU blocks, pooling, a Linear head."""

    def __init__(self) -> None:
        super().__init__()
        blocks = []
        for cin, cout, stride in ((1, 16, 4), (16, 32, 2), (32, 32, 1), (32, 64, 2)):
            blocks += [nn.Conv1d(cin, cout, 9 if cin == 1 else 3, stride=stride, padding=4 if cin == 1 else 1, bias=False),
                       nn.BatchNorm1d(cout), nn.ReLU()]
        self.features = nn.Sequential(*blocks)
        self.head = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(dim=2))


def _perturb(model: nn.Module) -> None:
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)


def test_a_1d_cnn_converts_runs_counts_and_round_trips(tmp_path):
    torch.manual_seed(0)
    model = AudioNet().eval()
    converted = ghostify.convert(model).eval()
    plan = ghostify.get_plan(converted)
    assert [layer.name for layer in plan.converted] == ["features.3", "features.6", "features.9"]
    assert plan.layer("features.0").reason == "stem conv (skip_stem)"
    assert all(isinstance(converted.get_submodule(layer.name), ghostify.GhostConv1d) for layer in plan.converted)
    assert all(layer.fit_error is not None and 0 <= layer.fit_error <= 1 for layer in plan.converted)
    x = torch.randn(2, 1, 256)
    with torch.no_grad():
        assert converted(x).shape == model(x).shape == (2, 10)

    report = ghostify.compare(model, converted, input_size=(1, 256))
    assert report.macs_check_ok, report.macs_check_notes  # fvcore counts conv1d: per-layer MACs add up
    assert report.macs_after < report.macs_before and report.params_after < report.params_before
    assert report.input_size == (1, 256)
    # inspect's MACs without converting agree with fvcore's per layer
    planned = layer_macs(model, ghostify.plan_conversion(model), example_input((1, 256)))
    assert {row.name: (row.macs_before, row.macs_after) for row in report.layers} == planned

    _perturb(converted)
    ghostify.save(converted, tmp_path / "m")
    loaded = ghostify.load(tmp_path / "m", base_model=AudioNet()).eval()
    assert isinstance(loaded.features[3], ghostify.GhostConv1d)
    with torch.no_grad():
        assert torch.equal(converted(x), loaded(x))
    assert ghostify.get_plan(loaded).to_dict() == plan.to_dict()


def test_paper_variant_converts_and_round_trips_a_1d_cnn(tmp_path):
    converted = ghostify.convert(AudioNet(), variant="paper-bn-relu").eval()
    assert isinstance(converted.features[3], ghostify.GhostConv1dBNReLU)
    _perturb(converted)
    ghostify.save(converted, tmp_path / "m")
    loaded = ghostify.load(tmp_path / "m", base_model=AudioNet()).eval()
    x = torch.randn(1, 1, 128)
    with torch.no_grad():
        assert torch.equal(converted(x), loaded(x))


def test_functional_conv1d_calls_and_variants_without_1d_support_are_kept_with_the_reason():
    from ghostify.variants import TRANSFERS_WEIGHTS, VARIANT_DIMS, VARIANTS, register_variant

    class Mixed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Conv2d(3, 8, 3)
            self.conv2d = nn.Conv2d(8, 16, 3)
            self.conv1d = nn.Conv1d(16, 16, 3)
            self.weight = nn.Parameter(torch.randn(16, 16, 3))

        def forward(self, x):
            x = self.conv2d(self.stem(x)).flatten(2)
            return F.conv1d(self.conv1d(x), self.weight).mean(2)

    plan = ghostify.plan_conversion(Mixed())
    assert plan.layer("conv1d").convert and plan.layer("conv2d").convert
    assert plan.layer("weight (functional)").reason == "functional conv1d call: no Conv1d module to replace"

    @register_variant("test-2d-only")
    def build(conv, ratio, dw_size, transfer):
        return ghostify.GhostConv2d.like(conv, ratio, dw_size), None

    try:
        plan = ghostify.plan_conversion(Mixed(), variant="test-2d-only")
        assert plan.layer("conv2d").convert
        assert not plan.layer("conv1d").convert and not plan.layer("conv1d").eligible
        assert plan.layer("conv1d").reason == "variant 'test-2d-only' builds ghost modules for Conv2d only, not Conv1d"
        converted = ghostify.convert(Mixed(), variant="test-2d-only")
        assert type(converted.conv1d) is nn.Conv1d and converted(torch.randn(1, 3, 12, 12)).shape == (1, 16)
    finally:
        for registry in (VARIANTS, TRANSFERS_WEIGHTS, VARIANT_DIMS):
            registry.pop("test-2d-only", None)


def test_weight_standardised_conv1d_converts_and_one_computing_more_is_kept():
    class StdConv1d(nn.Conv1d):  # timm's StdConv2d, in 1-D: a plain conv of the standardised weight
        def forward(self, x):
            weight = F.batch_norm(self.weight.reshape(1, self.out_channels, -1), None, None, training=True,
                                  momentum=0.0, eps=1e-6).reshape_as(self.weight)
            return F.conv1d(x, weight, self.bias, self.stride, self.padding, self.dilation, self.groups)

    class Shifted(nn.Conv1d):
        def forward(self, x):
            return super().forward(x) + 1

    model = nn.Sequential(nn.Conv1d(2, 8, 3), StdConv1d(8, 16, 3), Shifted(16, 16, 3))
    plan = ghostify.plan_conversion(model)
    assert plan.layer("1").convert
    assert plan.layer("2").reason == "Shifted overrides Conv1d.forward; a ghost module would change what it computes"
    converted = ghostify.convert(model)
    assert isinstance(converted[1], ghostify.GhostConv1d)
    assert converted(torch.randn(1, 2, 20)).shape == model(torch.randn(1, 2, 20)).shape


# ----- video models (Conv3d) ------------------------------------------------------------------------

def test_torchvision_r3d_18_converts_and_runs_at_a_tiny_input():
    torch.manual_seed(0)
    model = torchvision.models.video.r3d_18(weights=None).eval()
    converted = ghostify.convert(model, init="random").eval()  # the 3-D weight fit is tested above
    plan = ghostify.get_plan(converted)
    ghosts = [m for m in converted.modules() if isinstance(m, ghostify.GhostConv3d)]
    assert len(ghosts) == len(plan.converted) == 19  # every Conv3d but the stem
    assert plan.layer("stem.0").reason == "stem conv (skip_stem)"
    x = torch.randn(1, 3, 4, 32, 32)
    with torch.no_grad():
        assert converted(x).shape == model(x).shape == (1, 400)
    report = ghostify.compare(model, converted, input_size=(3, 4, 32, 32))
    assert report.macs_check_ok, report.macs_check_notes
    assert report.macs_after < 0.6 * report.macs_before


# ----- transposed convs: listed, kept, with the reason ----------------------------------------------

class Decoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.body = nn.Conv2d(16, 16, 3, padding=1)
        self.up2d = nn.ConvTranspose2d(16, 16, 2, stride=2)
        self.up1d = nn.ConvTranspose1d(16, 16, 2, stride=2)
        self.up3d = nn.ConvTranspose3d(1, 8, 2, stride=2)
        self.weight = nn.Parameter(torch.randn(16, 16, 2, 2))

    def forward(self, x):
        x = self.up2d(torch.relu(self.body(self.stem(x))))
        x = F.conv_transpose2d(x, self.weight, stride=2)
        y = self.up1d(x.flatten(2)).mean(1, keepdim=True)
        return self.up3d(y[:, :, None, None, :]).mean((2, 3, 4))


def test_transposed_convs_are_listed_and_kept_with_the_reason():
    model = Decoder().eval()
    plan = ghostify.plan_conversion(model)
    for name in ("up2d", "up1d", "up3d", "weight (functional)"):
        layer = plan.layer(name)
        assert not layer.convert and not layer.eligible and layer.reason == TRANSPOSED_REASON, (name, layer.reason)
    assert plan.layer("up1d").kernel_size == [2] and plan.layer("up3d").kernel_size == [2, 2, 2]
    assert plan.layer("weight (functional)").in_channels == 16 and plan.layer("weight (functional)").out_channels == 16
    assert [layer.name for layer in plan.converted] == ["body"]
    # kept even when selected by name, and counted as they are
    converted = ghostify.convert(model, include=["up2d", "body"])
    assert type(converted.up2d) is nn.ConvTranspose2d
    report = ghostify.compare(model, converted, input_size=(3, 8, 8))
    assert report.macs_check_ok, report.macs_check_notes
    rows = {row.name: row for row in report.layers}
    assert rows["up2d"].macs_before == rows["up2d"].macs_after == 8 * 8 * 16 * 16 * 4  # at every input position
    planned = layer_macs(model, plan, example_input((3, 8, 8)))
    assert all(planned[name] == (row.macs_before, row.macs_after) for name, row in rows.items() if row.kind == "module")


# ----- what stays 2-D on purpose says so -------------------------------------------------------------

def test_a_1d_cnn_is_calibrated():
    """Conv1d ghost modules are fitted as 2-D ones of height 1: every layer's error falls, and so does the
    output's distance to the original's."""
    torch.manual_seed(0)
    model = AudioNet().eval()
    _perturb(model)  # BatchNorm statistics and affines away from the identity, as after training
    converted = ghostify.convert(model)
    calibration, held_out = torch.randn(64, 1, 256), torch.randn(32, 1, 256)

    def distance() -> float:
        with torch.no_grad():
            return float((converted(held_out) - model(held_out)).norm() / model(held_out).norm())

    before = distance()
    result = ghostify.calibrate(converted, model, calibration, block_steps=50)
    assert [layer.name for layer in result.layers] == ["features.3", "features.6", "features.9"] and not result.skipped
    assert all(layer.error_after < layer.error_before for layer in result.layers), result.layers
    assert distance() < 0.8 * before


def test_calibration_solves_an_exactly_ghostable_conv1d():
    """Given the right grouping, the closed-form fit finds the primary and cheap kernels of a conv that is a
    ghost module (exact but for the border positions, where the ghost filters see zero-padded intrinsic maps)."""
    conv, _ = _ghostable_conv(1, 2, 6, 0)
    model = nn.Sequential(nn.Conv1d(3, 3, 1), conv).eval()
    converted = ghostify.convert(model, ratio=2, skip_output=False)  # the data-free start finds the grouping
    with torch.no_grad():
        for p in converted[1].parameters():
            p.add_(torch.randn_like(p))  # ... and the weights are lost
    result = ghostify.calibrate(converted, model, torch.randn(32, 3, 64), regroup=False, block_steps=0, head=False)
    (layer,) = result.layers
    assert layer.error_before > 0.5 and layer.error_after < 0.05, layer


def test_calibration_refuses_a_model_with_only_3d_ghost_modules():
    model = nn.Sequential(nn.Conv3d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv3d(8, 8, 3, padding=1), nn.ReLU(),
                          nn.AdaptiveAvgPool3d(1), nn.Flatten(), nn.Linear(8, 4)).eval()
    converted = ghostify.convert(model)
    with pytest.raises(GhostifyError, match="calibration fits 1-D and 2-D ghost modules.*GhostConv3d"):
        ghostify.calibrate(converted, model, torch.randn(4, 1, 6, 6, 6))


def test_image_data_is_refused_for_a_1d_model_and_distillation_takes_a_dataset_of_its_inputs():
    from torch.utils.data import TensorDataset

    from ghostify.data import DataError, InputPipeline

    model = AudioNet().eval()
    with pytest.raises(DataError, match="first conv is a Conv1d"):
        InputPipeline.for_model(model)
    converted = ghostify.convert(model)
    data = TensorDataset(torch.randn(16, 1, 64), torch.full((16,), -1))
    result = ghostify.distill(converted, model, data, epochs=1, batch_size=8, amp=False)
    assert len(result.history) == 1 and math.isfinite(result.history[0].loss)


# ----- the command line ---------------------------------------------------------------------------

NETS = textwrap.dedent('''
    from torch import nn


    def cnn1d():
        return nn.Sequential(
            nn.Conv1d(2, 16, 5, padding=2), nn.BatchNorm1d(16), nn.ReLU(),
            nn.Conv1d(16, 32, 3, padding=1), nn.BatchNorm1d(32), nn.ReLU(),
            nn.ConvTranspose1d(32, 32, 2, stride=2), nn.ReLU(),
            nn.Conv1d(32, 32, 3, padding=1), nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(32, 5),
        )


    def cnn2d():
        return nn.Sequential(nn.Conv2d(3, 16, 3), nn.ReLU(), nn.Conv2d(16, 16, 3), nn.Flatten(), nn.LazyLinear(4))
''')


@pytest.fixture
def nets(tmp_path, monkeypatch):
    (tmp_path / "nets.py").write_text(NETS)
    monkeypatch.chdir(tmp_path)
    return tmp_path / "nets.py"


def invoke(*args: str):
    return CliRunner().invoke(app, list(args))


def test_cli_inspect_shows_a_1d_model_at_a_c_l_input_size(nets):
    result = invoke("inspect", "nets.py:cnn1d", "--input-size", "2,64")
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output and "no per-layer MACs" not in result.output
    lines = {line.split()[0]: line for line in result.output.splitlines() if line.strip() and line.split()[0] in {"0", "3", "6", "8"}}
    assert "ghost s=2" in lines["3"] and "ghost s=2" in lines["8"] and "kept" in lines["6"] and "kept" in lines["0"]
    assert " 3 " in lines["3"] and "98.30 K" in lines["3"]  # a kernel of 3; 64 * 32 * 16 * 3 MACs
    assert TRANSPOSED_REASON in result.output
    # the model's own size when none is given: (C, 224) for a Conv1d model
    assert invoke("inspect", "nets.py:cnn1d").exit_code == 0


@pytest.mark.parametrize("size", ["32", "3,32,32", "2,8,32,32"])
def test_cli_refuses_an_input_size_a_1d_model_cannot_take(nets, size):
    result = invoke("inspect", "nets.py:cnn1d", "--input-size", size)
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "first conv is a Conv1d" in result.output and "C,L" in result.output and "--input-size 2,224" in result.output


def test_cli_still_refuses_two_numbers_for_an_image_model(nets):
    result = invoke("inspect", "nets.py:cnn2d", "--input-size", "3,16")
    assert result.exit_code == 1 and "ambiguous" in result.output and "3,16,16" in result.output
    assert invoke("inspect", "nets.py:cnn2d", "--input-size", "16").exit_code == 0


def test_cli_converts_and_saves_a_1d_model(nets, tmp_path):
    result = invoke("convert", "nets.py:cnn1d", "--input-size", "2,64", "-o", str(tmp_path / "out"))
    assert result.exit_code == 0, result.output
    assert "MAC cross-check ok" in result.output and "Input 1 x 2 x 64" in result.output
    recipe = json.loads((tmp_path / "out" / "ghostify.json").read_text())
    assert recipe["inputs"]["input_size"] == [2, 64]
    loaded = ghostify.load(tmp_path / "out").eval()
    assert sum(isinstance(m, ghostify.GhostConv1d) for m in loaded.modules()) == 2
    assert loaded(torch.randn(1, 2, 64)).shape == (1, 5)
    compared = invoke("compare", "nets.py:cnn1d", str(tmp_path / "out"))  # at the recorded C,L size
    assert compared.exit_code == 0 and "Input 1 x 2 x 64" in compared.output, compared.output


def test_input_sizes_are_checked_against_the_model():
    from ghostify.formatting import parse_input_size
    from ghostify.models import default_input_size, input_size_for

    assert parse_input_size("2,64") == (2, 64) and parse_input_size("3x8x32x32") == (3, 8, 32, 32)
    assert parse_input_size("32") == (3, 32, 32)
    with pytest.raises(ConfigError, match="must be S"):
        parse_input_size("1,2,3,4,5")
    video = torchvision.models.video.r3d_18()
    assert default_input_size(video) == (3, 16, 112, 112) and default_input_size(AudioNet()) == (1, 224)
    assert input_size_for(video, (3, 4, 32, 32)) == (3, 4, 32, 32) and input_size_for(AudioNet(), (1, 300)) == (1, 300)
    with pytest.raises(ConfigError, match="C,T,H,W"):
        input_size_for(video, (3, 32, 32))
    with pytest.raises(ConfigError, match="ambiguous"):
        input_size_for(torchvision.models.resnet18(), (3, 32))
