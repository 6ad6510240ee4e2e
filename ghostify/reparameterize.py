"""Re-parameterisable blocks (RepVGG, MobileOne, FastViT, LeViT, EfficientViT-MSRA, ...): fuse them before converting.

Such blocks train in one form (several branches, or a conv followed by a BatchNorm) and offer a
method that fuses it into one conv for inference (``fuse()``, ``reparameterize()`` or
``switch_to_deploy()``, the methods ``timm.utils.reparameterize_model`` calls). Fusing reads the
weights of the convs inside, which a ghost module does not have, so those convs cannot be converted
as they are. With ``GhostConfig.reparameterize`` (the default) ghostify fuses a copy of the model
first, as timm does (the outputs in eval mode stay the same), and converts the fused convs:
the converted model is the inference form. ``ConversionPlan.reparameterized`` names the blocks
fused, so that loading a saved model, and the teacher of calibration and distillation, are put in
the same form (``base_form``).
"""

from __future__ import annotations

import inspect

from torch import nn

from .ghost_module import CONV_TYPES

REPARAMETERISE_METHODS = ("fuse", "reparameterize", "switch_to_deploy")  # what timm's reparameterize_model calls


def _takes_no_arguments(method: object) -> bool:
    try:
        return all(p.default is not p.empty or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
                   for p in inspect.signature(method).parameters.values())
    except (TypeError, ValueError):  # no signature to read
        return False


def fusing_method(module: nn.Module) -> str | None:
    """The name of the method that fuses ``module`` for inference, or None when it has none.

    Only a method callable without arguments counts: a submodule that happens to be called ``fuse``
    (a fusion conv of a segmentation head) or a ``fuse(x, y)`` that combines inputs is not one."""
    for name in REPARAMETERISE_METHODS:
        method = getattr(type(module), name, None)
        if inspect.isfunction(method) and _takes_no_arguments(getattr(module, name)):
            return name
    return None


def already_fused(module: nn.Module) -> bool:
    """A timm re-parameterisable block that has been fused holds its one conv as ``reparam_conv``."""
    return isinstance(getattr(module, "reparam_conv", None), nn.Module)


def reparameterisable_blocks(model: nn.Module) -> list[str]:
    """Names of the blocks of ``model`` that fusing may change: they have a fusing method, hold a conv, and are not
    known to be fused (a block whose ``fuse()`` works in place and returns itself cannot be told apart once fused;
    fusing it again changes nothing).

    A block inside another such block is not listed: fusing the outer one takes care of it."""
    blocks: list[str] = []
    for name, module in model.named_modules():
        if not name or any(name.startswith(outer + ".") for outer in blocks):
            continue
        if fusing_method(module) and not already_fused(module) and any(isinstance(m, tuple(CONV_TYPES.values())) for m in module.modules()):
            blocks.append(name)
    return blocks


def reparameterize(model: nn.Module) -> list[str]:
    """Fuse ``model``'s re-parameterisable blocks in place; the names of those fused.

    What ``timm.utils.reparameterize_model`` does (a ``fuse()`` returns the module that replaces the
    block; ``reparameterize()`` / ``switch_to_deploy()`` change it in place), but only through real
    fusing methods (``fusing_method``): timm's calls any attribute of that name."""
    blocks = reparameterisable_blocks(model)
    if blocks:
        _fuse_children(model)
    return blocks


def _fuse_children(module: nn.Module) -> None:
    for name, child in list(module.named_children()):
        method = fusing_method(child)
        if method == "fuse":
            fused = child.fuse()
            if isinstance(fused, nn.Module) and fused is not child:
                setattr(module, name, fused)
                child = fused
        elif method is not None:
            getattr(child, method)()
        _fuse_children(child)
