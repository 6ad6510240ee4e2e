"""The plain ``nn.Conv2d`` a Conv2d subclass computes, when it computes one.

Some Conv2d subclasses transform their weight on every call and then run an ordinary
convolution: timm's ``StdConv2d`` (BiT, ResNetV2) and ``ScaledStdConv2d`` (NF-Nets) standardise
it, user code may override ``_conv_forward`` to do the same. Such a layer *is* a plain conv with
the transformed weight, so a ghost module can stand in for that conv. ``equivalent_conv`` finds
it by watching the one ``F.conv2d`` call the layer's ``forward`` makes on a probe input, and
accepts it only when that call receives the probe itself (no padding or reshaping before), uses
the layer's own geometry, and gives exactly the layer's output. Anything else (dynamic "same"
padding, extra ops, several convolutions) keeps the layer as it is.
"""

from __future__ import annotations

from typing import Any
from unittest import mock

import torch
import torch.nn.functional as F
from torch import nn

_PROBE_SEED = 0


def computes_plain_conv(conv: nn.Conv2d) -> bool:
    """Whether ``conv`` runs ``nn.Conv2d``'s own computation (neither ``forward`` nor ``_conv_forward`` overridden)."""
    return all(getattr(type(conv), method) is getattr(nn.Conv2d, method) for method in ("forward", "_conv_forward"))


@torch.no_grad()
def equivalent_conv(conv: nn.Conv2d) -> nn.Conv2d | None:
    """``conv`` itself if it is a plain conv; for a subclass, a plain ``nn.Conv2d`` computing exactly what it
    computes (its transformed weight, same geometry and bias); None if it computes something else."""
    if computes_plain_conv(conv):
        return conv
    calls: list[tuple[Any, ...]] = []
    real_conv2d = F.conv2d

    def watch(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):  # noqa: A002 - F.conv2d's names
        calls.append((input, weight, bias, stride, padding, dilation, groups))
        return real_conv2d(input, weight, bias, stride, padding, dilation, groups)

    probe = _probe(conv)
    try:
        with mock.patch.object(F, "conv2d", watch), mock.patch.object(torch, "conv2d", watch):
            output = conv.forward(probe)  # not conv(probe): forward hooks are judged on their own
    except Exception:  # the layer does not run on a probe input: not a plain conv we can see
        return None
    if len(calls) != 1 or not isinstance(output, torch.Tensor):
        return None
    source, weight, bias, stride, padding, dilation, groups = calls[0]
    geometry = (_pair(stride), padding if isinstance(padding, str) else _pair(padding), _pair(dilation), groups)
    if source is not probe or geometry != (conv.stride, conv.padding, conv.dilation, conv.groups) or weight.shape != conv.weight.shape:
        return None
    if conv.padding_mode != "zeros" or (bias is None) != (conv.bias is None):
        return None
    plain = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride, padding=conv.padding,
                      dilation=conv.dilation, groups=conv.groups, bias=conv.bias is not None,
                      device=conv.weight.device, dtype=conv.weight.dtype)
    plain.weight.copy_(weight)
    if bias is not None:
        plain.bias.copy_(bias)
    if not torch.allclose(plain(probe), output, rtol=1e-4, atol=1e-5):
        return None
    return plain


def _pair(value: Any) -> tuple[int, int]:
    return tuple(value) if isinstance(value, (tuple, list)) else (value, value)


def _probe(conv: nn.Conv2d) -> torch.Tensor:
    """A small random input the layer accepts: a little larger than its kernel's footprint."""
    size = [d * (k - 1) + 1 + 2 * s for k, d, s in zip(conv.kernel_size, conv.dilation, conv.stride)]
    generator = torch.Generator().manual_seed(_PROBE_SEED)
    probe = torch.randn(1, conv.in_channels, *size, generator=generator)
    return probe.to(device=conv.weight.device, dtype=conv.weight.dtype)
