"""The conversion verbs: ``plan_conversion`` (inspect), ``convert`` (new model), ``convert_`` (in place).

Plan, validate, then swap: every pattern and setting is checked before the model is touched,
so an error never leaves a model half converted.
"""

from __future__ import annotations

import copy
from typing import Any

from torch import nn

from .config import GhostConfig
from .graph_pass import apply_plan, find_conv_sites
from .selection import ConversionPlan, plan_layers

PLAN_ATTRIBUTE = "ghostify_plan"


def plan_conversion(model: nn.Module, config: GhostConfig | None = None, **options: Any) -> ConversionPlan:
    """Every conv of ``model``, whether it would be converted, at what ratio, and why not.

    ``options`` are ``GhostConfig`` fields (``ratio=2, exclude=["conv1"], ...``) applied on top of
    ``config``. Nothing is changed.
    """
    config = GhostConfig.from_options(config, **options)
    sites, trace, note = find_conv_sites(model)
    return plan_layers(sites, config, trace, note)


def convert_(model: nn.Module, config: GhostConfig | None = None, **options: Any) -> nn.Module:
    """Convert ``model`` in place and return it; see ``convert``."""
    plan = plan_conversion(model, config, **options)
    apply_plan(model, plan, transfer=plan.config.init == "transfer")
    setattr(model, PLAN_ATTRIBUTE, plan)
    return model


def convert(model: nn.Module, config: GhostConfig | None = None, **options: Any) -> nn.Module:
    """A copy of ``model`` whose eligible ``Conv2d`` layers are ghost modules; ``model`` is untouched.

    Example: ``ghostify.convert(model, ratio=2, dw_size=3, exclude=["conv1"])``. The plan that
    was applied (with each layer's weight-fit error) is on the result as ``.ghostify_plan``.
    """
    plan = plan_conversion(model, config, **options)  # validate before copying anything
    converted = copy.deepcopy(model)
    apply_plan(converted, plan, transfer=plan.config.init == "transfer")
    setattr(converted, PLAN_ATTRIBUTE, plan)
    return converted


def get_plan(model: nn.Module) -> ConversionPlan | None:
    """The plan ``convert`` applied to ``model``, or None if it was not made by ghostify."""
    return getattr(model, PLAN_ATTRIBUTE, None)
