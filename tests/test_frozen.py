"""ghostify.freeze: a model run as one flat graph per input shape, with the same outputs."""

from __future__ import annotations

import copy
import operator
import pickle
import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

import ghostify
from ghostify import frozen, prepacked
from ghostify.cli import app
from ghostify.deploy import DeployedGhostConv2d, deploy, gather_channels
from ghostify.errors import ConfigError
from ghostify.frozen import FrozenModel, freeze

from test_deploy import OptionA, convert_all, deploy_module, trained_like_norms

pytestmark = pytest.mark.usefixtures("single_thread")
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def packed_nodes(graph: torch.fx.GraphModule) -> list[torch.fx.Node]:
    return [node for node in graph.graph.nodes if node.op == "call_function" and node.name.endswith("_packed")]


@pytest.mark.parametrize("share", [False, True], ids=["own-orders", "shared-orders"])
def test_a_frozen_deploy_form_calls_its_ghost_modules_straight_and_computes_the_same(share):
    """Option-A model: every ghost module (gathering or not) becomes a packed call in the graph, the Identity a
    folded BatchNorm left is gone, and the outputs are bit for bit the deploy form's."""
    torch.manual_seed(0)
    deployed = deploy(convert_all(trained_like_norms(OptionA()), exclude=["stem"], share_across_shortcuts=share))
    ghosts = [name for name, module in deployed.named_modules() if isinstance(module, DeployedGhostConv2d)]
    model = freeze(deployed)
    x = torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        out = model(x)
        assert torch.equal(out, deployed(x))
        (graph,) = model.graphs
        assert sorted(node.name for node in packed_nodes(graph)) == sorted(f"{g.replace('.', '_')}_packed" for g in ghosts)
        called = {node.target for node in graph.graph.nodes if node.op == "call_module"}
        assert not any(isinstance(graph.get_submodule(name), (nn.Identity, DeployedGhostConv2d)) for name in called)
        assert torch.equal(model(x), out) and len(model.graphs) == 1  # the same graph again


def test_frozen_graphs_follow_weights_changed_in_place_and_new_input_shapes(monkeypatch):
    torch.manual_seed(0)
    deployed = deploy(convert_all(trained_like_norms(OptionA()), exclude=["stem"]))
    model = freeze(deployed)
    monkeypatch.setattr(frozen, "GRAPHS_KEPT", 2)
    x = torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        before = model(x)
        deployed.blocks[0].conv1.primary.weight.mul_(1.5)
        deployed.blocks[3].conv2.cheap.weight.add_(0.1)
        deployed.blocks[1].conv2.cheap.bias.sub_(0.1)  # read as they are
        deployed.blocks[2].conv1.intrinsic_shift.add_(0.2)
        after = model(x)
        assert not torch.allclose(after, before) and torch.equal(after, deployed(x))
        deployed.load_state_dict(copy.deepcopy(deployed.state_dict()))  # loads in place: still followed
        assert torch.equal(model(x), deployed(x))
        for batch in (2, 3):
            xs = torch.randn(batch, 3, 8, 8)
            assert torch.equal(model(xs), deployed(xs))
        assert len(model.graphs) == 2  # the oldest shape gave way
        assert torch.equal(model(x), after)


@pytest.mark.parametrize("scatter_from", [None, 0], ids=["columns-selected", "scattered"])
def test_a_gathering_ghost_module_is_assembled_in_the_graph_unless_its_output_is_large(monkeypatch, scatter_from):
    """Small gathered outputs are a concatenation and a column selection in the graph; from ``SCATTER_FROM``
    values on, the module's own assembly writes each map to its channel. Both exact."""
    if scatter_from is not None:
        monkeypatch.setattr(deploy_module, "SCATTER_FROM", scatter_from)
    torch.manual_seed(0)
    deployed = deploy(convert_all(trained_like_norms(OptionA()), exclude=["stem"]))
    gathering = [name for name, module in deployed.named_modules() if isinstance(module, DeployedGhostConv2d) and module.gather]
    assert gathering
    model = freeze(deployed)
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(model(x), deployed(x))
    targets = [node.target for node in model.graphs[0].graph.nodes if node.op == "call_function"]
    assemblies = [target for target in targets if getattr(target, "__name__", "") == "_assemble_inference"]
    assert len(assemblies) == (len(gathering) if scatter_from == 0 else 0)
    assert targets.count(gather_channels) == (0 if scatter_from == 0 else len(gathering))


def test_what_the_graphs_are_not_for_runs_the_model_as_it_is():
    torch.manual_seed(0)
    deployed = deploy(convert_all(trained_like_norms(OptionA()), exclude=["stem"]))
    model = freeze(deployed)
    x = torch.randn(1, 3, 8, 8)
    out = model(x)  # a gradient to keep: the model itself, and backward works
    assert out.requires_grad and not model.graphs
    out.sum().backward()
    assert deployed.blocks[0].conv1.primary.weight.grad is not None
    with torch.no_grad():
        with prepacked.disabled():
            assert torch.allclose(model(x), out, atol=1e-5) and not model.graphs
        double = model.double()
        assert double(x.double()).dtype == torch.float64
        expected = deployed(x.double())
        assert torch.allclose(double(x.double()), expected)  # the graph of a float64 input has no packed call
        assert all(not packed_nodes(graph) for graph in model.graphs)
        with pytest.warns(UserWarning, match=r"no graph for inputs of shape \(1, 5, 8, 8\)"), pytest.raises(RuntimeError):
            model(torch.randn(1, 5, 8, 8, dtype=torch.float64))  # the model's own error about the channels
    model.float().train()
    assert model.model.training and not model.graphs  # moving the model dropped the graphs
    with torch.no_grad():
        model(x)
    assert not model.graphs  # training mode: BatchNorms and dropout as the model has them
    model.eval()
    exported = torch.export.export(model, (x,)).module()  # export traces the model itself
    with torch.no_grad():
        assert torch.allclose(exported(x), deployed(x), atol=1e-5)


def test_copies_and_pickles_start_without_graphs_and_save_writes_the_model(tmp_path):
    torch.manual_seed(0)
    base = trained_like_norms(OptionA())
    deployed = deploy(convert_all(base, exclude=["stem"]))
    model = freeze(deployed)
    x = torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        model(x)
        twin, thawed = copy.deepcopy(model), pickle.loads(pickle.dumps(model))
        assert not twin.graphs and not thawed.graphs
        assert torch.equal(twin(x), model(x)) and torch.equal(thawed(x), model(x))
        ghostify.save(model, tmp_path / "saved")
        loaded = ghostify.load(tmp_path / "saved", base_model=base).eval()
        assert not isinstance(loaded, FrozenModel) and torch.equal(freeze(loaded)(x), model(x))
    assert freeze(model) is model


def test_a_model_fx_cannot_trace_is_refused_with_what_to_do():
    class Branchy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.conv(x) if x.sum() > 0 else x

    with pytest.raises(ConfigError, match=r"cannot freeze Branchy: torch.fx cannot trace it .*Run the model as it is"):
        freeze(Branchy())


def test_a_partly_converted_cifar_resnet_freezes_exactly():
    """ResNet-20 with only its last stage converted: the kept 3x3 convs of 32 channels (9,216 weights) stay
    module calls, the ghost modules are packed calls; exact."""
    sys.path.insert(0, str(EXAMPLES))
    try:
        import cifar_resnet
    finally:
        sys.path.remove(str(EXAMPLES))
    torch.manual_seed(0)
    original = trained_like_norms(cifar_resnet.resnet20())
    deployed = deploy(ghostify.convert(original, include=["layer3.*"]).eval())
    model = freeze(deployed)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), deployed(x))
    assert len(packed_nodes(model.graphs[0])) == 6


def test_bench_times_both_models_frozen_from_the_api_and_the_cli(tmp_path, monkeypatch):
    torch.manual_seed(0)
    original = trained_like_norms(OptionA())
    deployed = deploy(convert_all(original, exclude=["stem"]))
    report = ghostify.bench(original, deployed, (3, 8, 8), batch_sizes=[1], frozen=True, repeats=3, warmup=1)
    assert [row.mode for row in report.rows] == ["eager", "frozen"]
    assert all(row.converted.median_ms > 0 and row.speedup > 0 for row in report.rows)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "nets.py").write_text(
        "import torch\nfrom torch import nn\n\n\ndef make():\n    torch.manual_seed(0)\n"
        "    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),"
        " nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.Conv2d(32, 4, 1))\n"
    )
    result = CliRunner().invoke(app, ["bench", "nets.py:make", "--input-size", "12", "--repeats", "3",
                                      "--batch-sizes", "1", "--deploy", "--freeze"])
    assert result.exit_code == 0, result.output
    assert "frozen" in result.output and "eager" in result.output


class InPlaceResidual(nn.Module):
    """timm's bottleneck ends ``x += shortcut``, which tracing turns into ``x + shortcut``; ``reused`` also reads
    the ghost module's output after the sum, so that sum must stay out of place."""

    def __init__(self, reused: bool) -> None:
        super().__init__()
        self.reused = reused
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.conv, self.bn = nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = self.stem(x)
        y = self.bn(self.conv(shortcut))
        if self.reused:
            return (y + shortcut) * y
        y += shortcut
        return torch.relu(y)


@pytest.mark.parametrize("reused", [False, True], ids=["in-place", "read-again"])
def test_a_residual_sum_onto_a_packed_output_read_nowhere_else_is_made_in_place(reused):
    torch.manual_seed(0)
    deployed = deploy(convert_all(trained_like_norms(InPlaceResidual(reused)), include=["conv"]))
    model = freeze(deployed)
    x = torch.randn(1, 3, 6, 6)
    with torch.no_grad():
        assert torch.equal(model(x), deployed(x))
    in_place = {node.target for node in model.graphs[0].graph.nodes if node.op == "call_method"
                and not (len(node.args) == 2 and node.args[1].target is operator.getitem)}  # not a folded shift
    assert in_place == (set() if reused else {"add_", "relu_"})
