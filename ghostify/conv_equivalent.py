"""The plain ``nn.Conv1d`` / ``Conv2d`` / ``Conv3d`` a conv subclass computes, when it computes one.

Some Conv2d subclasses transform their weight on every call and then run an ordinary
convolution: timm's ``StdConv2d`` (BiT, ResNetV2) and ``ScaledStdConv2d`` (NF-Nets) standardise
it, user code may override ``_conv_forward`` to do the same. Such a layer *is* a plain conv with
the transformed weight, so a ghost module can stand in for that conv. ``equivalent_conv`` finds
it by watching the one ``F.conv2d`` call (``conv1d`` / ``conv3d`` for the other dims) the
layer's ``forward`` makes on a probe input, and accepts it only when that call receives the
probe itself (no padding or reshaping before), uses the layer's own geometry, and gives exactly
the layer's output. Anything else (dynamic "same" padding, extra ops, several convolutions)
keeps the layer as it is.
"""

from __future__ import annotations

from typing import Any
from unittest import mock

import torch
import torch.nn.functional as F
from torch import nn

from .ghost_module import CONV_TYPES

_PROBE_SEED = 0
_FUNCTION_NAMES = {1: "conv1d", 2: "conv2d", 3: "conv3d"}


def base_conv_type(conv: nn.Module) -> type[nn.Module] | None:
    """``nn.Conv1d``, ``nn.Conv2d`` or ``nn.Conv3d``: the forward conv class ``conv`` is (a subclass of); else None."""
    return next((conv_type for conv_type in CONV_TYPES.values() if isinstance(conv, conv_type)), None)


def computes_plain_conv(conv: nn.Module) -> bool:
    """Whether ``conv`` runs its conv class's own computation (neither ``forward`` nor ``_conv_forward`` overridden)."""
    base = base_conv_type(conv)
    return base is not None and all(getattr(type(conv), method) is getattr(base, method) for method in ("forward", "_conv_forward"))


@torch.no_grad()
def equivalent_conv(conv: nn.Module) -> nn.Module | None:
    """``conv`` itself if it is a plain conv; for a subclass, a plain conv of its class (``nn.Conv1d``/``2d``/``3d``)
    computing exactly what it computes (its transformed weight, same geometry and bias); None if it computes
    something else."""
    base = base_conv_type(conv)
    if base is None:
        return None
    if computes_plain_conv(conv):
        return conv
    dims = len(conv.kernel_size)
    function = _FUNCTION_NAMES[dims]
    calls: list[tuple[Any, ...]] = []
    real_conv = getattr(F, function)

    def watch(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):  # noqa: A002 - F.conv2d's names
        calls.append((input, weight, bias, stride, padding, dilation, groups))
        return real_conv(input, weight, bias, stride, padding, dilation, groups)

    probe = _probe(conv)
    try:
        with mock.patch.object(F, function, watch), mock.patch.object(torch, function, watch):
            output = conv.forward(probe)  # not conv(probe): forward hooks are judged on their own
    except Exception:  # the layer does not run on a probe input: not a plain conv we can see
        return None
    if len(calls) != 1 or not isinstance(output, torch.Tensor):
        return None
    source, weight, bias, stride, padding, dilation, groups = calls[0]
    geometry = (_tuple(stride, dims), padding if isinstance(padding, str) else _tuple(padding, dims), _tuple(dilation, dims), groups)
    if source is not probe or geometry != (conv.stride, conv.padding, conv.dilation, conv.groups) or weight.shape != conv.weight.shape:
        return None
    if conv.padding_mode != "zeros" or (bias is None) != (conv.bias is None):
        return None
    plain = base(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride, padding=conv.padding,
                 dilation=conv.dilation, groups=conv.groups, bias=conv.bias is not None,
                 device=conv.weight.device, dtype=conv.weight.dtype)
    plain.weight.copy_(weight)
    if bias is not None:
        plain.bias.copy_(bias)
    if not torch.allclose(plain(probe), output, rtol=1e-4, atol=1e-5):
        return None
    return plain


def _tuple(value: Any, dims: int) -> tuple[int, ...]:
    return tuple(value) if isinstance(value, (tuple, list)) else (value,) * dims


def _probe(conv: nn.Module) -> torch.Tensor:
    """A small random input the layer accepts: a little larger than its kernel's footprint."""
    size = [d * (k - 1) + 1 + 2 * s for k, d, s in zip(conv.kernel_size, conv.dilation, conv.stride)]
    generator = torch.Generator().manual_seed(_PROBE_SEED)
    probe = torch.randn(1, conv.in_channels, *size, generator=generator)
    return probe.to(device=conv.weight.device, dtype=conv.weight.dtype)
