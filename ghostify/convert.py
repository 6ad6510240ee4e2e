"""The conversion verbs: ``plan_conversion`` (inspect), ``convert`` (new model), ``convert_`` (in place).

Plan, validate, then swap: every pattern and setting is checked before the model is touched,
so an error never leaves a model half converted.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from .channel_order import share_residual_orders
from .config import GhostConfig
from .errors import ConfigError
from .graph_pass import apply_plan, copy_model, find_conv_sites
from .reparameterize import reparameterisable_blocks, reparameterize
from .selection import PLAN_ATTRIBUTE, ConversionPlan, get_plan, plan_layers



def plan_conversion(model: nn.Module, config: GhostConfig | None = None, **options: Any) -> ConversionPlan:
    """Every conv of ``model``, whether it would be converted, at what ratio, and why not.

    ``options`` are ``GhostConfig`` fields (``ratio=2, exclude=["conv1"], ...``) applied on top of
    ``config``. Nothing is changed.
    """
    config = GhostConfig.from_options(config, **options)
    fused: list[str] = []
    failure = None
    if config.reparameterize and reparameterisable_blocks(model):
        copied = copy_model(model)  # planned on a fused copy: the user's model stays as it is
        try:
            fused, model = reparameterize(copied), copied
        except Exception as err:  # noqa: BLE001 - the model's own fusing code: convert without it
            failure = (f"fusing the re-parameterisable blocks failed ({type(err).__name__}: {err}); their convs are kept "
                       "as they are")
    sites, trace, note = find_conv_sites(model, fused=bool(fused))
    plan = plan_layers(sites, config, trace, "; ".join(filter(None, [note, failure])) or None)
    plan.reparameterized = fused
    return plan


def base_form(model: nn.Module, plan: ConversionPlan | None) -> nn.Module:
    """``model`` in the form ``plan`` was made on: a copy with its re-parameterisable blocks fused when the
    plan fused them (``GhostConfig.reparameterize``), else ``model`` itself.

    For whatever is paired with a converted model layer by layer: the teacher of calibration and
    distillation, the original of a comparison, the base model a saved conversion is loaded onto.
    """
    if plan is None or not plan.reparameterized or not reparameterisable_blocks(model):
        return model
    fused = copy_model(model)
    reparameterize(fused)
    return fused


def convert_(model: nn.Module, config: GhostConfig | None = None, **options: Any) -> nn.Module:
    """Convert ``model`` in place and return it; see ``convert``."""
    plan = plan_conversion(model, config, **options)
    recorded = _recorded_plan(model, plan)
    if plan.reparameterized:
        reparameterize(model)
    _apply(model, plan)
    setattr(model, PLAN_ATTRIBUTE, recorded)
    return model


def _recorded_plan(model: nn.Module, plan: ConversionPlan) -> ConversionPlan:
    """The plan to record on the result: ``plan``, combined with the one of an earlier conversion of ``model``."""
    earlier = get_plan(model)
    return plan if earlier is None else earlier.followed_by(plan)


def convert(model: nn.Module, config: GhostConfig | None = None, *, plan: ConversionPlan | None = None,
            **options: Any) -> nn.Module:
    """A copy of ``model`` whose eligible conv layers (``Conv1d``, ``Conv2d``, ``Conv3d``) are ghost modules; ``model`` is untouched.

    Example: ``ghostify.convert(model, ratio=2, dw_size=3, exclude=["conv1"])``. The plan that
    was applied (with each layer's weight-fit error) is on the result as ``.ghostify_plan``.
    ``plan``: apply this plan (from ``plan_conversion`` or ``plan_for_latency`` on ``model``) as it is.
    """
    if plan is None:
        plan = plan_conversion(model, config, **options)  # validate before copying anything
    elif config is not None or options:
        raise ConfigError("pass either a plan or conversion options, not both: the plan already holds its config.")
    else:
        mismatch = plan.base_model_mismatch(base_form(model, plan))
        if mismatch:
            raise ConfigError(f"the plan was made for another model: {mismatch}.")
    recorded = _recorded_plan(model, plan)
    converted = copy_model(model)
    if plan.reparameterized:
        reparameterize(converted)
    _apply(converted, plan)
    setattr(converted, PLAN_ATTRIBUTE, recorded)
    return converted


def _apply(model: nn.Module, plan: ConversionPlan) -> None:
    """``apply_plan`` with the data-free start; then one channel assignment per residual stream (``ghostify.channel_order``)."""
    transfer = plan.config.init == "transfer"
    originals = apply_plan(model, plan, transfer=transfer)
    if transfer and plan.config.shared_residual_order:
        refitted = share_residual_orders(model, originals, plan.config.share_across_shortcuts)
        for layer in plan.converted:
            layer.fit_error = refitted.get(layer.name, layer.fit_error)
