"""Latency-aware planning: convert only the layers a ghost module makes faster on the target device.

Fewer MACs is not less time (depthwise convs and the channel gather are memory-bound), so
``plan_for_latency`` times each layer the usual plan would convert, as the conv and as its ghost
module, on the device and batch size the model will run at, with the input that layer sees in
the model, and keeps every layer whose ghost module is not faster. The timings stay on the plan
(``LayerPlan.latency_ms``), and a kept layer's reason says them.

A ``Budget`` trades the two: ``macs=0.6`` converts, after the faster layers, the slower ones that
cost the least time per MAC saved until the model's MACs are at most 60 % of the original's;
``latency=1.1`` converts slower layers in the same order while the timed layers together take at
most 110 % of their time as convs (below 1, only a plan at least that fast is accepted).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from . import prepacked
from .config import GhostConfig
from .conv_equivalent import equivalent_conv
from .convert import base_form, plan_conversion
from .deploy import DeployedGhostConv2d, to_channels_last
from .errors import ConfigError
from .ghost_module import GhostConv2d
from .graph_pass import copy_model
from .measure import count_macs, example_input, layer_macs, observe_modules, resolve_device, time_interleaved
from .selection import SLOWER_AS_GHOST, ConversionPlan, LayerPlan
from .variants import VARIANTS

# (conv, ghost module, input, device) -> (conv ms, ghost ms); tests pass a fake one
LayerTimer = Callable[[nn.Module, nn.Module, torch.Tensor, torch.device], "tuple[float, float]"]


BUDGET_KINDS = ("macs", "latency")


@dataclass(frozen=True)
class Budget:
    """What a latency-aware plan must reach: the model's MACs (``macs``) or the timed layers' time
    (``latency``) as a fraction of the original's."""

    kind: str
    fraction: float

    def __post_init__(self) -> None:
        if self.kind not in BUDGET_KINDS:
            raise ConfigError(f"budget kind must be macs or latency, got {self.kind!r}; e.g. --budget macs=0.6.")
        if not 0 < self.fraction or (self.kind == "macs" and self.fraction > 1):
            raise ConfigError(f"a {self.kind} budget is a fraction of the original's, such as 0.6, got {self.fraction!r}.")

    @classmethod
    def parse(cls, text: str) -> Budget:
        """``'macs=0.6'`` or ``'latency=0.9'`` (a trailing ``%`` divides by 100)."""
        kind, sep, value = text.partition("=")
        try:
            number = float(value.rstrip("%")) / (100 if value.endswith("%") else 1)
        except ValueError:
            number = None
        if not sep or number is None:
            raise ConfigError(f"--budget expects KIND=FRACTION such as macs=0.6 or latency=0.9, got {text!r}.")
        return cls(kind.strip(), number)

    def __str__(self) -> str:
        return f"{self.kind}={self.fraction:g}"


def plan_for_latency(
    model: nn.Module,
    config: GhostConfig | None = None,
    *,
    input_size: Sequence[int],
    batch_size: int = 1,
    device: str | torch.device = "cpu",
    repeats: int = 15,
    timer: LayerTimer | None = None,
    deploy: bool = False,
    budget: Budget | str | None = None,
    **options: Any,
) -> ConversionPlan:
    """``plan_conversion(model, config, **options)``, keeping the layers whose ghost module is not faster.

    Each candidate layer is timed (median of interleaved runs) as the conv and as a ghost module of
    the same shape on a random input of the shape it gets in ``model`` at ``batch_size``.
    Apply the result with ``ghostify.convert(model, plan=plan)``. ``deploy``: time the ghost module
    in the form ``ghostify.deploy`` gives it (no channel gather; it and the conv channels_last), for a
    model that will be deployed.
    ``budget``: also convert slower layers until it is met (see the module docstring).
    """
    budget = Budget.parse(budget) if isinstance(budget, str) else budget
    plan = plan_conversion(model, config, **options)
    model = base_form(model, plan)  # the layers as the plan names them (re-parameterisable blocks fused)
    target = resolve_device(device)
    shapes = _input_shapes(model, [layer.name for layer in plan.converted], example_input(tuple(input_size), batch_size))
    build = VARIANTS[plan.config.variant]
    time_pair = timer or (lambda conv, ghost, x, where: _time_pair(conv, ghost, x, where, repeats))
    generator = torch.Generator().manual_seed(0)
    for layer in plan.converted:
        conv = equivalent_conv(model.get_submodule(layer.name))
        ghost, _ = build(conv, layer.ratio, plan.config.dw_size, False)  # random weights: timing only
        x = torch.randn(shapes[layer.name], generator=generator)
        if deploy and type(ghost) is GhostConv2d:  # both as the deployed model runs them: channels_last, prepacked
            ghost = to_channels_last(DeployedGhostConv2d.empty_like(ghost, gather=False))
            conv = prepacked.prepack_convs_(to_channels_last(copy_model(conv)))
            x = x.contiguous(memory_format=torch.channels_last)
        layer.latency_ms = list(time_pair(conv, ghost, x, target))
    candidates = list(plan.converted)
    chosen = _within_budget(model, plan, candidates, budget, input_size) if budget else set()
    for layer in candidates:
        conv_ms, ghost_ms = layer.latency_ms
        if ghost_ms >= conv_ms and layer.name not in chosen:
            layer.convert, layer.ratio, layer.intrinsic_channels = False, 1, None
            layer.reason = (f"{SLOWER_AS_GHOST}: {ghost_ms:.3g} ms vs {conv_ms:.3g} ms as a conv "
                            f"(batch {batch_size}, {target})")
    return plan


def _within_budget(model: nn.Module, plan: ConversionPlan, candidates: list[LayerPlan], budget: Budget,
                   input_size: Sequence[int]) -> set[str]:
    """The slower layers to convert as well to meet ``budget``: least time lost per MAC saved first."""
    one = example_input(tuple(input_size), 1)
    macs = layer_macs(model, plan, one)
    saved = {layer.name: macs[layer.name][0] - macs[layer.name][1] for layer in candidates if layer.name in macs}
    slower = sorted((layer for layer in candidates if layer.latency_ms[1] >= layer.latency_ms[0] and saved.get(layer.name, 0) > 0),
                    key=lambda layer: (layer.latency_ms[1] - layer.latency_ms[0]) / saved[layer.name])
    faster = [layer for layer in candidates if layer.latency_ms[1] < layer.latency_ms[0]]
    chosen: set[str] = set()
    if budget.kind == "macs":
        total = count_macs(model, one).total
        remaining = total - sum(saved.get(layer.name, 0) for layer in faster)
        for layer in slower:
            if remaining <= budget.fraction * total:
                break
            chosen.add(layer.name)
            remaining -= saved[layer.name]
        if remaining > budget.fraction * total:
            raise ConfigError(f"--budget {budget} cannot be met: converting every eligible layer leaves "
                              f"{remaining / total:.0%} of the MACs; raise the budget or the ratio.")
        return chosen
    conv_time = sum(layer.latency_ms[0] for layer in candidates)
    time = sum(min(layer.latency_ms) for layer in candidates)
    if time > budget.fraction * conv_time:
        raise ConfigError(f"--budget {budget} cannot be met: the fastest plan takes {time / conv_time:.0%} of the "
                          "timed layers' time as convs; raise the budget.")
    for layer in slower:
        extra = layer.latency_ms[1] - layer.latency_ms[0]
        if time + extra <= budget.fraction * conv_time:
            chosen.add(layer.name)
            time += extra
    return chosen


def _input_shapes(model: nn.Module, names: Sequence[str], inputs: torch.Tensor) -> dict[str, torch.Size]:
    """The input shape each named module gets (at its first call) in one forward pass of ``model``."""
    shapes: dict[str, torch.Size] = {}
    observe_modules(model, names, inputs, lambda name, args, output: shapes.setdefault(name, args[0].shape))
    return shapes


def _time_pair(conv: nn.Module, ghost: nn.Module, x: torch.Tensor, device: torch.device, repeats: int) -> tuple[float, float]:
    times, _, _ = time_interleaved([conv, ghost], x, warmup=3, repeats=repeats, device=device)  # flags restored
    return statistics.median(times[0]), statistics.median(times[1])
