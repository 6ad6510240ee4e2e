"""The Ghost module: a cheap stand-in for a ``Conv1d``, ``Conv2d`` or ``Conv3d`` (GhostNet, Han et al., CVPR 2020).

A conv producing ``n`` channels is replaced by a *primary* conv producing ``m = ceil(n / s)``
intrinsic maps and a *cheap* depthwise conv (a ``d`` kernel in 1-D, ``d x d`` in 2-D, ``d x d x d``
in 3-D) deriving ``s - 1`` ghost maps from each of them. The ``m * s`` maps are gathered into
exactly ``n`` output channels by ``out_index``, so that the channels come out in the order the
original conv produced them (see ``weight_transfer``).

One implementation serves every number of spatial dimensions (``_GhostConvNd``); ``GhostConv1d``,
``GhostConv2d`` and ``GhostConv3d`` only name the conv and BatchNorm classes they are built from.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import nn

from .errors import ConfigError

# spatial dims -> the conv a ghost module of that many dims stands in for
CONV_TYPES: dict[int, type[nn.Module]] = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
TRANSPOSED_CONV_TYPES: tuple[type[nn.Module], ...] = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_BATCH_NORMS: dict[int, type[nn.Module]] = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}


def intrinsic_channels(out_channels: int, ratio: int) -> int:
    """Number of intrinsic maps the primary conv makes: ``ceil(out_channels / ratio)``."""
    return math.ceil(out_channels / ratio)


def mirror_conv_geometry(module: nn.Module, primary: nn.Module) -> None:
    """Give a ghost module the geometry of the conv it replaced (its primary conv's), for code that reads
    it from the module (timm's DaViT reads ``kernel_size``); ``groups`` is 1, as for every converted conv."""
    module.kernel_size, module.stride, module.padding = primary.kernel_size, primary.stride, primary.padding
    module.dilation, module.groups, module.padding_mode = primary.dilation, 1, primary.padding_mode


def check_ghost_params(ratio: int, dw_size: int) -> None:
    """Raise ``ConfigError`` unless ``ratio`` is an int >= 1 and ``dw_size`` an odd int >= 1."""
    if isinstance(ratio, bool) or not isinstance(ratio, int) or ratio < 1:
        raise ConfigError(f"ratio must be a whole number >= 2 (1 leaves a layer alone), got {ratio!r}.")
    if isinstance(dw_size, bool) or not isinstance(dw_size, int) or dw_size < 1 or dw_size % 2 == 0:
        raise ConfigError(f"dw_size must be an odd whole number such as 1, 3 or 5, got {dw_size!r}.")


def first_conv(model: nn.Module) -> nn.Module | None:
    """The first conv module of ``model`` (forward or transposed, any dims) in registration order; None if it has none."""
    return next((module for module in model.modules() if conv_dims(module) is not None), None)


def first_conv_dims(model: nn.Module) -> int | None:
    """Spatial dimensions of the inputs ``model`` takes, judged by its first conv: 1 (``Conv1d``: C,L),
    2 (``Conv2d``: C,H,W) or 3 (``Conv3d``: C,T,H,W); None for a model without a conv."""
    conv = first_conv(model)
    return conv_dims(conv) if conv is not None else None


def conv_dims(conv: nn.Module) -> int | None:
    """Spatial dimensions of a (forward or transposed) conv module: 1, 2 or 3; None for anything else."""
    for dims, conv_type in CONV_TYPES.items():
        if isinstance(conv, conv_type):
            return dims
    for dims, conv_type in enumerate(TRANSPOSED_CONV_TYPES, 1):
        if isinstance(conv, conv_type):
            return dims
    return None


class _GhostConvNd(nn.Module):
    """Linear drop-in replacement for a ``groups == 1`` conv of ``spatial_dims`` dimensions.

    No BatchNorm or activation inside, so the model's own Conv-BN-ReLU structure stays as it was.
    The primary conv keeps the original kernel size, stride, padding, dilation, padding mode and
    bias; the cheap conv is depthwise, stride 1, ``dw_size // 2`` zero padding.
    """

    spatial_dims: ClassVar[int]

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, ...],
        stride: int | tuple[int, ...] = 1,
        padding: int | tuple[int, ...] | str = 0,
        dilation: int | tuple[int, ...] = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        ratio: int = 2,
        dw_size: int = 3,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        check_ghost_params(ratio, dw_size)
        name = f"GhostConv{self.spatial_dims}d"
        if ratio < 2:
            raise ConfigError(f"{name} needs ratio >= 2; keep the original conv for ratio 1.")
        if out_channels < ratio:
            raise ConfigError(f"out_channels ({out_channels}) must be >= ratio ({ratio}).")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.ratio = ratio
        self.dw_size = dw_size
        m = intrinsic_channels(out_channels, ratio)
        factory = {"device": device, "dtype": dtype}
        conv_type = CONV_TYPES[self.spatial_dims]
        self.primary = conv_type(
            in_channels, m, kernel_size, stride=stride, padding=padding, dilation=dilation,
            bias=bias, padding_mode=padding_mode, **factory,
        )
        self.cheap = conv_type(
            m, m * (ratio - 1), dw_size, stride=1, padding=dw_size // 2, groups=m, bias=bias, **factory
        )
        mirror_conv_geometry(self, self.primary)
        # Which of the m*ratio concatenated maps becomes output channel j. Default: intrinsic
        # maps first, then ghosts, cut to out_channels (the official layout).
        self.register_buffer("out_index", torch.arange(out_channels, device=device))

    @property
    def intrinsic_channels(self) -> int:
        return self.primary.out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        intrinsic = self.primary(x)
        ghosts = self.cheap(intrinsic)
        return torch.cat([intrinsic, ghosts], dim=1).index_select(1, self.out_index)

    @classmethod
    def like(cls, conv: nn.Module, ratio: int, dw_size: int = 3, **kwargs):
        """An untrained ghost module with ``conv``'s geometry, device and dtype (``conv``: a conv of this module's dims)."""
        expected = CONV_TYPES[cls.spatial_dims]
        if not isinstance(conv, expected):
            dims = conv_dims(conv)
            hint = f"; use GhostConv{dims}d" if dims is not None and not isinstance(conv, TRANSPOSED_CONV_TYPES) else ""
            raise ConfigError(f"{cls.__name__} stands in for an nn.{expected.__name__}, got {type(conv).__name__}{hint}.")
        return cls(
            conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride,
            padding=conv.padding, dilation=conv.dilation, bias=conv.bias is not None,
            padding_mode=conv.padding_mode, ratio=ratio, dw_size=dw_size,
            device=conv.weight.device, dtype=conv.weight.dtype, **kwargs,
        )

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.primary.kernel_size}, "
            f"stride={self.primary.stride}, ratio={self.ratio}, dw_size={self.dw_size}"
        )


class GhostConv1d(_GhostConvNd):
    """Linear drop-in replacement for ``nn.Conv1d`` (``groups == 1``); the cheap conv has a ``d`` kernel."""

    spatial_dims = 1


class GhostConv2d(_GhostConvNd):
    """Linear drop-in replacement for ``nn.Conv2d`` (``groups == 1``); the cheap conv has a ``d x d`` kernel.

    No BatchNorm or activation inside, so the model's own Conv-BN-ReLU structure stays as it was.
    The primary conv keeps the original kernel size, stride, padding, dilation, padding mode and
    bias; the cheap conv is depthwise, stride 1, ``dw_size // 2`` zero padding.
    """

    spatial_dims = 2


class GhostConv3d(_GhostConvNd):
    """Linear drop-in replacement for ``nn.Conv3d`` (``groups == 1``); the cheap conv has a ``d x d x d`` kernel."""

    spatial_dims = 3


class _GhostBNReLU:
    """The paper's block: BN (+ReLU) after the primary and after the cheap conv (mixed into a ghost module class).

    Not linear, so it is no drop-in for a plain conv inside Conv-BN-ReLU: use it when the
    converted model is trained from scratch or distilled. Biases are dropped (BN follows).
    """

    def __init__(self, *args, relu: bool = True, **kwargs) -> None:
        kwargs["bias"] = False
        super().__init__(*args, **kwargs)
        factory = {"device": self.primary.weight.device, "dtype": self.primary.weight.dtype}
        batch_norm = _BATCH_NORMS[self.spatial_dims]
        self.primary_bn = batch_norm(self.primary.out_channels, **factory)
        self.cheap_bn = batch_norm(self.cheap.out_channels, **factory)
        self.act = nn.ReLU(inplace=True) if relu else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        intrinsic = self.act(self.primary_bn(self.primary(x)))
        ghosts = self.act(self.cheap_bn(self.cheap(intrinsic)))
        return torch.cat([intrinsic, ghosts], dim=1).index_select(1, self.out_index)


class GhostConv1dBNReLU(_GhostBNReLU, GhostConv1d):
    """``GhostConv1d`` with the paper's BN (+ReLU) after the primary and after the cheap conv."""


class GhostConv2dBNReLU(_GhostBNReLU, GhostConv2d):
    """The paper's block: BN (+ReLU) after the primary and after the cheap conv.

    Not linear, so it is no drop-in for a plain conv inside Conv-BN-ReLU: use it when the
    converted model is trained from scratch or distilled. Biases are dropped (BN follows).
    """


class GhostConv3dBNReLU(_GhostBNReLU, GhostConv3d):
    """``GhostConv3d`` with the paper's BN (+ReLU) after the primary and after the cheap conv."""


GHOST_MODULE_TYPES: tuple[type[nn.Module], ...] = (_GhostConvNd,)  # every ghost module, any dims and variant
LINEAR_GHOSTS: dict[int, type[_GhostConvNd]] = {1: GhostConv1d, 2: GhostConv2d, 3: GhostConv3d}
PAPER_GHOSTS: dict[int, type[_GhostConvNd]] = {1: GhostConv1dBNReLU, 2: GhostConv2dBNReLU, 3: GhostConv3dBNReLU}


def is_ghost_module(module: nn.Module) -> bool:
    """Whether ``module`` is a ghost module (``GhostConv1d``/``2d``/``3d`` or a BN+ReLU variant)."""
    return isinstance(module, _GhostConvNd)


def is_paper_variant(module: nn.Module) -> bool:
    """Whether ``module`` is a ghost module of the paper's BN+ReLU variant (not linear)."""
    return isinstance(module, _GhostBNReLU)
