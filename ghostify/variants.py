"""The variant registry: which ghost module stands in for a conv (``GhostConfig.variant``).

A variant is a builder ``(conv, ratio, dw_size, transfer) -> (module, fit_error or None)``
registered under a name with ``register_variant``. ``linear`` (the default) is the ghost module
whose weights start from the original conv's; ``paper-bn-relu`` is the paper's module with
BatchNorm and ReLU inside, which starts random. The registry sits apart from the graph pass so
that the config and the layer selection can read it without importing the pass.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import nn

from .ghost_module import CONV_TYPES, LINEAR_GHOSTS, PAPER_GHOSTS, conv_dims
from .weight_transfer import transfer_weights

# variant name -> builder(conv, ratio, dw_size, transfer) -> (module, fit_error or None); conv is an
# nn.Conv1d, nn.Conv2d or nn.Conv3d with groups == 1, of a number of spatial dims the variant registered
VariantBuilder = Callable[[nn.Module, int, int, bool], "tuple[nn.Module, float | None]"]
VARIANTS: dict[str, VariantBuilder] = {}
TRANSFERS_WEIGHTS: dict[str, bool] = {}  # variant -> whether its modules can start from the original weights
VARIANT_DIMS: dict[str, tuple[int, ...]] = {}  # variant -> the spatial dims of the convs it builds ghost modules for


def register_variant(
    name: str, *, transfers_weights: bool = True, dims: Sequence[int] = (2,),
) -> Callable[[VariantBuilder], VariantBuilder]:
    """Register a ghost-module builder under ``name`` (selectable with ``GhostConfig.variant``).

    ``transfers_weights``: the builder can start a module from the original conv's weights
    (``init="transfer"``); if not, its modules start random and ``init`` defaults to ``"random"``.
    ``dims``: the convs the builder handles, by spatial dimensions (1: ``Conv1d``, 2: ``Conv2d``,
    3: ``Conv3d``); convs of other dims are kept, with the reason. Default: ``Conv2d`` only.
    """
    dims = tuple(sorted(set(dims)))
    if not dims or any(d not in CONV_TYPES for d in dims):
        raise ValueError(f"dims must be some of 1, 2, 3 (Conv1d, Conv2d, Conv3d), got {dims!r}")

    def decorate(builder: VariantBuilder) -> VariantBuilder:
        VARIANTS[name] = builder
        TRANSFERS_WEIGHTS[name] = transfers_weights
        VARIANT_DIMS[name] = dims
        return builder

    return decorate


@register_variant("linear", dims=(1, 2, 3))
def _build_linear(conv: nn.Module, ratio: int, dw_size: int, transfer: bool) -> tuple[nn.Module, float | None]:
    ghost = LINEAR_GHOSTS[conv_dims(conv)].like(conv, ratio, dw_size)
    return ghost, transfer_weights(conv, ghost) if transfer else None


@register_variant("paper-bn-relu", transfers_weights=False, dims=(1, 2, 3))
def _build_paper(conv: nn.Module, ratio: int, dw_size: int, transfer: bool) -> tuple[nn.Module, float | None]:
    # BN and ReLU inside make it non-linear: original weights do not carry over meaningfully.
    return PAPER_GHOSTS[conv_dims(conv)].like(conv, ratio, dw_size), None
