"""A sample of the model zoo, one of each kind: every model converts, runs, and keeps its output shapes.

The CI set below covers the architectures that each once needed something of ghostify (residual,
depthwise, grouped, weight-standardised and "same"-padded convs, convs inside FX leaves, attention
hybrids, re-parameterised blocks, detection and segmentation heads, video and 1-D models), each at
the smallest input it accepts, with random weights and a random start for the ghost modules (the
data-free weight fit is tested in test_weight_transfer.py and test_conv_nd.py), so that the whole
set runs in about a minute on one thread.

The whole zoo (timm under 100 M parameters and every torchvision family) is the ``slow`` test at
the end, deselected by default (``python -m pytest -m slow tests/test_zoo.py``; hours), or, one
process per model with a report, ``python benchmarks/zoo_coverage.py --all``.
"""

from __future__ import annotations

import functools
import importlib.util
import math

import pytest
import torch
from torch import nn

import ghostify
from ghostify.ghost_module import CONV_TYPES, is_ghost_module

from conftest import REPO

pytestmark = pytest.mark.usefixtures("single_thread")


class AudioCNN(nn.Module):
    """A user's 1-D CNN (keyword spotting style): Conv1d-BN-ReLU blocks, global pooling, a Linear head."""

    def __init__(self) -> None:
        super().__init__()
        layers, channels = [], 1
        for width, kernel, stride in ((32, 80, 16), (32, 3, 1), (64, 3, 2), (64, 3, 1), (128, 3, 2)):
            layers += [nn.Conv1d(channels, width, kernel, stride=stride, padding=kernel // 2, bias=False),
                       nn.BatchNorm1d(width), nn.ReLU(inplace=True)]
            channels = width
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(channels, 12)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(dim=2))


# (spec, input size without the batch: the smallest the model accepts)
ZOO = [
    ("timm:resnet18", (3, 16, 16)),  # ResNet
    ("timm:efficientnet_b0", (3, 16, 16)),  # depthwise convs, squeeze-excite
    ("timm:tf_efficientnet_lite0", (3, 16, 16)),  # "same" padding (Conv2dSame: kept)
    ("timm:mobilenetv3_small_050", (3, 16, 16)),  # MobileNetV3
    ("timm:mobilenetv4_conv_small_035", (3, 16, 16)),
    ("timm:regnetx_002", (3, 16, 16)),  # RegNet: grouped convs
    ("timm:convnext_atto", (3, 32, 32)),  # a 4x4 patchify stem, 7x7 depthwise
    ("timm:densenet121", (3, 32, 32)),  # DenseNet: concatenations
    ("timm:inception_v3", (3, 96, 96)),  # Inception: 1x7 / 7x1 kernels
    ("timm:cs3darknet_focus_s", (3, 16, 16)),  # CSPNet
    ("timm:nf_regnet_b0", (3, 16, 16)),  # weight-standardised convs (ScaledStdConv2d)
    ("timm:eca_nfnet_l0", (3, 16, 16)),  # NFNet, with ECA's Conv1d(1, 1, k) (kept: one channel)
    ("timm:resnetv2_50x1_bit", (3, 16, 16)),  # BiT: StdConv2d, a 1x1 conv head (kept)
    ("timm:vit_tiny_r_s16_p8_224", (3, 224, 224)),  # a hybrid ViT: ResNet stem + transformer
    ("timm:maxvit_pico_rw_256", (3, 256, 256)),  # MaxViT: MBConv + window/grid attention
    ("timm:davit_tiny", (3, 16, 16)),  # DaViT reads its convs' kernel_size
    ("timm:levit_128s", (3, 224, 224)),  # LeViT: re-parameterised first
    ("timm:mobilevit_xxs", (3, 16, 16)),  # convs inside modules FX keeps as leaves
    ("timm:efficientvit_b0", (3, 16, 16)),
    ("timm:pvt_v2_b0", (3, 32, 32)),
    ("timm:poolformer_s12", (3, 16, 16)),
    ("timm:ghostnet_100", (3, 16, 16)),  # already a GhostNet
    ("timm:dla34", (3, 32, 32)),  # DLA: trees and a 1x1 conv head
    ("timm:hrnet_w18_small", (3, 32, 32)),  # HRNet: parallel branches
    ("timm:res2net50_14w_8s", (3, 16, 16)),  # Res2Net: split channels
    ("timm:resnest14d", (3, 16, 16)),  # split attention, grouped
    ("timm:skresnet18", (3, 16, 16)),  # selective kernels
    ("timm:xception41", (3, 16, 16)),  # separable convs
    ("timm:dpn48b", (3, 16, 16)),  # dual path
    ("timm:repvgg_a0", (3, 16, 16)),  # re-parameterisable blocks: ghostify fuses them first
    ("timm:mobileone_s0", (3, 16, 16)),  # re-parameterisable blocks
    ("timm:fastvit_t8", (3, 16, 16)),  # re-parameterisable blocks
    ("timm:efficientvit_m0", (3, 64, 64)),  # EfficientViT (MSRA): every conv in a ConvNorm with a fuse()
    ("torchvision:squeezenet1_1", (3, 32, 32)),  # a 1x1 conv classifier: kept
    ("torchvision:shufflenet_v2_x0_5", (3, 16, 16)),  # channel shuffle
    ("torchvision:lraspp_mobilenet_v3_large", (3, 16, 16)),  # segmentation, dict output, dilated convs
    ("torchvision:fasterrcnn_mobilenet_v3_large_320_fpn", (3, 16, 16)),  # detection: a list of dicts
    ("torchvision:r3d_18", (3, 4, 32, 32)),  # video: Conv3d
    ("audio_cnn", (1, 400)),  # a user's 1-D CNN: Conv1d
]
REPARAMETERISE = {"timm:levit_128s", "timm:repvgg_a0", "timm:mobileone_s0", "timm:fastvit_t8", "timm:efficientvit_m0"}
# why a dense conv may be kept: the stem, the output convs, too few channels; and, in these models only, more
KEPT = ("stem conv", "produces the model's output", "out_channels")
ALSO_KEPT = {
    "timm:tf_efficientnet_lite0": ("Conv2dSame overrides",),
    "timm:vit_tiny_r_s16_p8_224": ("StdConv2dSame overrides",),
}


def _build(spec: str) -> nn.Module:
    if spec == "audio_cnn":
        torch.manual_seed(0)
        return AudioCNN().eval()
    return ghostify.resolve_model(spec).model.eval()


@pytest.mark.parametrize("spec, size", ZOO, ids=[spec for spec, _ in ZOO])
def test_zoo_model_converts_and_runs(spec, size):
    model = _build(spec)
    converted = ghostify.convert(model, init="random")
    plan = ghostify.get_plan(converted)
    assert plan.converted, f"{spec}: nothing converted"
    assert bool(plan.reparameterized) == (spec in REPARAMETERISE)
    fused = ghostify.base_form(model, plan)  # the layers as the plan names them
    assert sum(is_ghost_module(m) for m in converted.modules()) > 0
    assert not [layer.name for layer in plan.layers if layer.reason == "never called in forward()"]
    assert all(layer.reason for layer in plan.skipped)  # every kept conv says why
    # every dense conv (1-D, 2-D or 3-D) is converted but for the stem, the output convs and the small ones
    dense = {name for name, m in fused.named_modules() if isinstance(m, tuple(CONV_TYPES.values())) and m.groups == 1}
    kept = {layer.name: layer.reason for layer in plan.skipped if layer.name in dense}
    allowed = KEPT + ALSO_KEPT.get(spec, ())
    assert all(reason.startswith(allowed) for reason in kept.values()), kept
    x = torch.randn(2, *size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        structure = _zoo_coverage()._structure  # output shapes; detections by their fields
        assert structure(converted(x)) == structure(model(x))
        if fused is not model:  # fusing keeps what the model computes (random weights can reach 1e12: relative to the largest)
            reference = model(x)
            assert (fused(x) - reference).abs().max() <= 1e-4 * reference.abs().max()


# ----- the whole zoo: slow, deselected by default ----------------------------------------------------

@functools.cache
def _zoo_coverage():
    """benchmarks/zoo_coverage.py as a module (it measures one model in ``check_one``)."""
    spec = importlib.util.spec_from_file_location("zoo_coverage", REPO / "benchmarks" / "zoo_coverage.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@functools.cache
def _whole_zoo() -> list[tuple[str, str]]:
    import timm
    import torchvision

    families = _zoo_coverage().torchvision_families()
    return ([(f"timm:{name}", "timm") for name in timm.list_models()]
            + [(f"torchvision:{name}", families.get(name, "classification")) for name in torchvision.models.list_models()])


@pytest.mark.slow
@pytest.mark.parametrize("spec, family", _whole_zoo(), ids=[spec for spec, _ in _whole_zoo()])
def test_whole_zoo_model_converts_and_runs(spec, family):
    """Every timm model under 100 M parameters and every torchvision model with a dense conv converts and
    runs with outputs of the same structure and shapes (on the smallest input from a short list it accepts)."""
    row = _zoo_coverage().check_one(spec, family, size=64, max_params=100)
    if "skipped" in row:
        pytest.skip(row["skipped"])
    if row.get("same_outputs") is None:
        pytest.skip(row.get("note", "not run"))
    assert row["same_outputs"], row


def _tensors(output: object) -> list[torch.Tensor]:
    if isinstance(output, torch.Tensor):
        return [output]
    if isinstance(output, dict):
        return [t for key in sorted(output) for t in _tensors(output[key])]
    if isinstance(output, (list, tuple)):
        return [t for item in output for t in _tensors(item)]
    return []


@pytest.mark.parametrize("spec, size", [(spec, size) for spec, size in ZOO if len(size) == 3 and "rcnn" not in spec],
                         ids=[spec for spec, size in ZOO if len(size) == 3 and "rcnn" not in spec])
def test_zoo_model_deploys_exactly(spec, size):
    """The deploy form (BatchNorms folded, channel orders moved into the next layers, gathers at boundaries where
    they pay) computes what the converted model does, on models with BatchNorms as after training, and frozen
    (``ghostify.freeze``) exactly what the deploy form does. (Detection
    models are left out: a change in the last bit can swap two boxes of equal score.)"""
    from test_deploy import trained_like_norms

    model = trained_like_norms(_build(spec))
    x = torch.randn(2, *size, generator=torch.Generator().manual_seed(0))
    for across in (False, True):
        converted = ghostify.convert(model, share_across_shortcuts=across).eval()  # the data-free fit: real orders
        deployed = ghostify.deploy(converted)
        with torch.no_grad():
            expected, got = _tensors(converted(x)), _tensors(deployed(x))
        assert len(got) == len(expected)
        for a, b in zip(got, expected):
            assert (a - b).abs().max() <= 1e-4 * b.abs().max().clamp_min(1e-6), (spec, across)
        frozen = ghostify.freeze(deployed)  # one flat graph: the same ops, so the same bits
        with torch.no_grad():
            again = _tensors(frozen(x))
        assert len(frozen.graphs) == 1 and all(torch.equal(a, b) for a, b in zip(again, got)), (spec, across)


# models whose ghost modules sit where a forward pass never calls their parent (a ModuleList a block
# iterates, a Sequential a traced graph runs step by step), beside a few plain kinds
RECOVERY = ["timm:mobilenetv3_small_050", "timm:convnext_atto", "timm:mobilevit_xxs", "timm:hrnet_w18_small",
            "timm:res2net50_14w_8s", "timm:efficientvit_m0", "torchvision:lraspp_mobilenet_v3_large"]


@pytest.mark.parametrize("spec", RECOVERY)
def test_zoo_model_calibrates_and_distills(spec):
    """Calibration and distillation run on each kind of model, and match features only at modules both the
    original and the converted model call (a block never called would record nothing, or stop calibration)."""
    from torch.utils.data import TensorDataset

    from ghostify.calibrate import called_modules, calibration_layers, reconstruction_blocks
    from ghostify.distill import feature_points

    size = dict(ZOO)[spec]
    teacher = _build(spec)
    student = ghostify.convert(teacher)
    teacher = ghostify.base_form(teacher, ghostify.get_plan(student))
    x = torch.randn(8, *size, generator=torch.Generator().manual_seed(0))
    called = set(called_modules(student, teacher, inputs=x[:1]))
    blocks = reconstruction_blocks(student, [name for name, _ in calibration_layers(student)], called)
    assert set(blocks) <= called and set(feature_points(student, teacher, x[:1])) <= called
    result = ghostify.calibrate(student, teacher, x, batch_size=4, block_steps=2, block_batch_size=4)
    assert sum(layer.error_after for layer in result.layers) < sum(layer.error_before for layer in result.layers)
    history = ghostify.distill(student, teacher, TensorDataset(x, torch.full((8,), -1)), epochs=1, batch_size=4).history
    assert history[0].feature_loss > 0 and math.isfinite(history[0].loss)
