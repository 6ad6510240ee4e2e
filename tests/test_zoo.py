"""A sample of the model zoo, one family each: every model converts, runs, and keeps its output shapes.

The whole zoo runs with ``python benchmarks/zoo.py --source timm|torchvision`` (minutes to hours);
this sample keeps one model of each kind of trouble met there in CI.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import ghostify

pytestmark = pytest.mark.usefixtures("single_thread")

ZOO = [
    "timm:resnet18",
    "timm:mobilenetv3_small_100",  # depthwise convs, squeeze-excite
    "timm:efficientnet_b0",
    "timm:convnext_atto",  # a 4x4 patchify stem, 7x7 depthwise
    "timm:regnetx_002",  # grouped convs
    "timm:mobilevit_xxs",  # convs inside modules FX keeps as leaves
    "timm:nf_regnet_b0",  # weight-standardised convs (ScaledStdConv2d)
    "timm:ghostnet_100",  # already a GhostNet
    "torchvision:squeezenet1_1",  # a 1x1 conv classifier: kept
    "torchvision:lraspp_mobilenet_v3_large",  # segmentation, dict output, dilated convs
]


def _shapes(output):
    if isinstance(output, torch.Tensor):
        return tuple(output.shape)
    if isinstance(output, dict):
        return {key: _shapes(value) for key, value in output.items()}
    return [_shapes(value) for value in output]


@pytest.mark.parametrize("spec", ZOO)
def test_zoo_model_converts_and_runs(spec):
    torch.manual_seed(0)
    model = ghostify.resolve_model(spec).model.eval()
    converted = ghostify.convert(model)
    plan = ghostify.get_plan(converted)
    dense = [name for name, m in model.named_modules() if isinstance(m, nn.Conv2d) and m.groups == 1]
    assert plan.converted, f"{spec}: nothing converted"
    assert not [layer.name for layer in plan.layers if layer.reason == "never called in forward()"]
    assert all(layer.reason for layer in plan.skipped)  # every kept conv says why
    # every dense conv is converted but for the stem and output convs
    kept = {layer.name for layer in plan.skipped if layer.name in dense}
    assert all(plan.layer(name).reason.startswith(("stem conv", "produces the model's output", "out_channels")) for name in kept), \
        {name: plan.layer(name).reason for name in kept}
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert _shapes(converted(x)) == _shapes(model(x))
