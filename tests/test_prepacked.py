"""Convs on oneDNN's prepacked weights (``ghostify.prepacked``): same results, a cache that follows the weights."""

from __future__ import annotations

import copy
import io
import pickle
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from torch import nn

from ghostify import prepacked

pytestmark = [
    pytest.mark.usefixtures("single_thread"),
    pytest.mark.skipif(not prepacked.available(), reason="this PyTorch build has no oneDNN"),
]


def channels_last(*shape: int) -> torch.Tensor:
    return torch.randn(*shape).contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("in_channels, out_channels, kernel, stride, padding, dilation, groups, bias", [
    (8, 16, 3, 1, 1, 1, 1, True),
    (8, 16, 1, 1, 0, 1, 1, False),
    (8, 12, 3, 2, 1, 1, 1, True),
    (8, 8, 3, 1, 2, 2, 1, False),
    (8, 8, 3, 1, 1, 1, 8, True),     # depthwise, as a ghost module's cheap conv
    (8, 16, 5, 1, 2, 1, 8, True),    # depthwise with a channel multiplier
    (6, 9, (3, 1), (2, 1), (1, 0), 1, 3, True),
])
def test_a_packed_conv_equals_the_conv(in_channels, out_channels, kernel, stride, padding, dilation, groups, bias):
    torch.manual_seed(0)
    conv = nn.Conv2d(in_channels, out_channels, kernel, stride, padding, dilation, groups, bias).eval()
    for batch, size in ((1, 9), (3, 14)):
        x = channels_last(batch, in_channels, size, size)
        with torch.no_grad():
            assert prepacked.applies(conv, x)
            got = prepacked.conv2d(conv, x)
            assert torch.allclose(got, conv(x), atol=1e-5, rtol=1e-4)
            assert got.is_contiguous(memory_format=torch.channels_last)


def test_the_packed_weights_follow_the_conv_weights_and_input_shapes():
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 8, 3, padding=1)
    x = channels_last(1, 4, 6, 6)
    with torch.no_grad():
        first = prepacked.conv2d(conv, x)
        cache = conv.__dict__["_ghostify_prepacked"]
        assert len(cache) == 1 and torch.equal(prepacked.conv2d(conv, x), first) and len(cache) == 1
        conv.load_state_dict({"weight": torch.randn(8, 4, 3, 3), "bias": torch.randn(8)})  # copied in place
        assert torch.allclose(prepacked.conv2d(conv, x), conv(x), atol=1e-5) and len(cache) == 1
        conv.weight.mul_(2)
        assert torch.allclose(prepacked.conv2d(conv, x), conv(x), atol=1e-5)
        for batch in range(1, prepacked.SHAPES_KEPT + 3):  # other shapes: one packing each, the oldest dropped
            y = channels_last(batch, 4, 6, 6)
            assert torch.allclose(prepacked.conv2d(conv, y), conv(y), atol=1e-5)
        assert len(cache) == prepacked.SHAPES_KEPT


def test_what_is_not_plain_float32_channels_last_inference_runs_the_conv_itself():
    conv = nn.Conv2d(4, 8, 3)
    x = channels_last(1, 4, 6, 6)
    assert not prepacked.applies(conv, x)  # gradients wanted
    out = prepacked.conv2d(conv, x)
    out.sum().backward()
    assert conv.weight.grad is not None and "_ghostify_prepacked" not in conv.__dict__
    with torch.no_grad():
        assert not prepacked.applies(conv, x.contiguous())  # NCHW: PyTorch chooses
        assert not prepacked.applies(conv, x.double())
        assert not prepacked.applies(nn.Conv2d(4, 8, 3, padding="same"), x)
        assert not prepacked.applies(nn.Conv2d(4, 8, 3, padding=1, padding_mode="reflect"), x)
        assert prepacked.applies(conv, x)
        with prepacked.disabled():
            assert not prepacked.applies(conv, x) and not prepacked.available()
        assert prepacked.applies(conv, x)
    with torch.inference_mode():
        assert prepacked.applies(conv, x)
        made_here = nn.Conv2d(4, 8, 3)  # inference tensors, which keep no version counter
        assert torch.allclose(prepacked.conv2d(made_here, x), made_here(x), atol=1e-5)


def test_copies_and_pickles_of_a_model_start_without_the_packed_weights():
    """oneDNN's packed tensors cannot be copied or saved; the model around them must be."""
    conv = nn.Sequential(nn.Conv2d(4, 8, 3)).eval()
    x = channels_last(1, 4, 6, 6)
    with torch.no_grad():
        expected = prepacked.conv2d(conv[0], x)
    assert set(conv.state_dict()) == {"0.weight", "0.bias"}
    buffer = io.BytesIO()
    torch.save(conv, buffer)
    for twin in (copy.deepcopy(conv), pickle.loads(pickle.dumps(conv)), torch.load(io.BytesIO(buffer.getvalue()), weights_only=False)):
        assert len(twin[0].__dict__["_ghostify_prepacked"]) == 0
        with torch.no_grad():
            assert torch.equal(prepacked.conv2d(twin[0], x), expected)


def test_a_prepacked_conv2d_packs_large_weights_only_and_scripts(monkeypatch):
    torch.manual_seed(0)
    model = prepacked.with_prepacked_convs(nn.Sequential(nn.Conv2d(4, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 1)).eval())
    assert [type(m) for m in model] == [prepacked.PrepackedConv2d, nn.ReLU, prepacked.PrepackedConv2d]
    assert set(model.state_dict()) == {"0.weight", "0.bias", "2.weight", "2.bias"}
    x = channels_last(2, 4, 9, 9)
    with torch.no_grad():
        expected = model(x)
        assert "_ghostify_prepacked" not in model[0].__dict__  # 288 weights: below PACK_FROM_WEIGHTS
        monkeypatch.setattr(prepacked, "PACK_FROM_WEIGHTS", 64)
        assert torch.allclose(model(x), expected, atol=1e-5)
        assert "_ghostify_prepacked" in model[0].__dict__ and "_ghostify_prepacked" in model[2].__dict__
        scripted = torch.jit.script(model)
        assert torch.allclose(scripted(x), expected, atol=1e-5)


def test_threads_sharing_a_model_share_its_packed_weights_safely():
    """A model served from a thread pool: concurrent first calls of several shapes all get right answers."""
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 8, 3, padding=1).eval()
    inputs = [channels_last(batch, 4, 6, 6) for batch in range(1, 2 * prepacked.SHAPES_KEPT + 1)] * 4
    with torch.no_grad():
        expected = [conv(x) for x in inputs]

    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return prepacked.conv2d(conv, x)

    with ThreadPoolExecutor(max_workers=4) as pool:
        got = list(pool.map(run, inputs))
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(got, expected))
    assert len(conv.__dict__["_ghostify_prepacked"]) <= prepacked.SHAPES_KEPT
