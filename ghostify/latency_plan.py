"""Latency-aware planning: convert only the layers a ghost module makes faster on the target device.

Fewer MACs is not less time (depthwise convs and the channel gather are memory-bound), so
``plan_for_latency`` times each layer the usual plan would convert, as the conv and as its ghost
module, on the device and batch size the model will run at, with the input that layer sees in
the model, and keeps every layer whose ghost module is not faster. The timings stay on the plan
(``LayerPlan.latency_ms``), and a kept layer's reason says them.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from .config import GhostConfig
from .conv_equivalent import equivalent_conv
from .convert import plan_conversion
from .graph_pass import VARIANTS
from .measure import example_input, observe_modules, resolve_device, time_interleaved
from .selection import ConversionPlan

# (conv, ghost module, input, device) -> (conv ms, ghost ms); tests pass a fake one
LayerTimer = Callable[[nn.Module, nn.Module, torch.Tensor, torch.device], "tuple[float, float]"]


def plan_for_latency(
    model: nn.Module,
    config: GhostConfig | None = None,
    *,
    input_size: Sequence[int],
    batch_size: int = 1,
    device: str | torch.device = "cpu",
    repeats: int = 15,
    timer: LayerTimer | None = None,
    **options: Any,
) -> ConversionPlan:
    """``plan_conversion(model, config, **options)``, keeping the layers whose ghost module is not faster.

    Each candidate layer is timed (median of interleaved runs) as the conv and as a ghost module of
    the same shape on a random input of the shape it gets in ``model`` at ``batch_size``.
    Apply the result with ``ghostify.convert(model, plan=plan)``.
    """
    plan = plan_conversion(model, config, **options)
    target = resolve_device(device)
    shapes = _input_shapes(model, [layer.name for layer in plan.converted], example_input(tuple(input_size), batch_size))
    build = VARIANTS[plan.config.variant]
    time_pair = timer or (lambda conv, ghost, x, where: _time_pair(conv, ghost, x, where, repeats))
    generator = torch.Generator().manual_seed(0)
    for layer in plan.converted:
        conv = equivalent_conv(model.get_submodule(layer.name))
        ghost, _ = build(conv, layer.ratio, plan.config.dw_size, False)  # random weights: timing only
        x = torch.randn(shapes[layer.name], generator=generator)
        conv_ms, ghost_ms = time_pair(conv, ghost, x, target)
        layer.latency_ms = [conv_ms, ghost_ms]
        if ghost_ms >= conv_ms:
            layer.convert, layer.ratio, layer.intrinsic_channels = False, 1, None
            layer.reason = (f"slower as a ghost module: {ghost_ms:.3g} ms vs {conv_ms:.3g} ms as a conv "
                            f"(batch {batch_size}, {target})")
    return plan


def _input_shapes(model: nn.Module, names: Sequence[str], inputs: torch.Tensor) -> dict[str, torch.Size]:
    """The input shape each named module gets (at its first call) in one forward pass of ``model``."""
    shapes: dict[str, torch.Size] = {}
    observe_modules(model, names, inputs, lambda name, args, output: shapes.setdefault(name, args[0].shape))
    return shapes


def _time_pair(conv: nn.Module, ghost: nn.Module, x: torch.Tensor, device: torch.device, repeats: int) -> tuple[float, float]:
    times, _, _ = time_interleaved([conv, ghost], x, warmup=3, repeats=repeats, device=device)  # flags restored
    return statistics.median(times[0]), statistics.median(times[1])
