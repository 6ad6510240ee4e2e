"""The Ghost module: a cheap stand-in for a ``Conv2d`` (GhostNet, Han et al., CVPR 2020).

A conv producing ``n`` channels is replaced by a *primary* conv producing ``m = ceil(n / s)``
intrinsic maps and a *cheap* depthwise ``d x d`` conv deriving ``s - 1`` ghost maps from each of
them. The ``m * s`` maps are gathered into exactly ``n`` output channels by ``out_index``, so that
the channels come out in the order the original conv produced them (see ``weight_transfer``).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .errors import ConfigError


def intrinsic_channels(out_channels: int, ratio: int) -> int:
    """Number of intrinsic maps the primary conv makes: ``ceil(out_channels / ratio)``."""
    return math.ceil(out_channels / ratio)


def check_ghost_params(ratio: int, dw_size: int) -> None:
    """Raise ``ConfigError`` unless ``ratio`` is an int >= 1 and ``dw_size`` an odd int >= 1."""
    if isinstance(ratio, bool) or not isinstance(ratio, int) or ratio < 1:
        raise ConfigError(f"ratio must be a whole number >= 2 (1 leaves a layer alone), got {ratio!r}.")
    if isinstance(dw_size, bool) or not isinstance(dw_size, int) or dw_size < 1 or dw_size % 2 == 0:
        raise ConfigError(f"dw_size must be an odd whole number such as 1, 3 or 5, got {dw_size!r}.")


class GhostConv2d(nn.Module):
    """Linear drop-in replacement for ``nn.Conv2d`` (``groups == 1``).

    No BatchNorm or activation inside, so the model's own Conv-BN-ReLU structure stays as it was.
    The primary conv keeps the original kernel size, stride, padding, dilation, padding mode and
    bias; the cheap conv is depthwise, stride 1, ``dw_size // 2`` zero padding.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] | str = 0,
        dilation: int | tuple[int, int] = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        ratio: int = 2,
        dw_size: int = 3,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        check_ghost_params(ratio, dw_size)
        if ratio < 2:
            raise ConfigError("GhostConv2d needs ratio >= 2; keep the original conv for ratio 1.")
        if out_channels < ratio:
            raise ConfigError(f"out_channels ({out_channels}) must be >= ratio ({ratio}).")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.ratio = ratio
        self.dw_size = dw_size
        m = intrinsic_channels(out_channels, ratio)
        factory = {"device": device, "dtype": dtype}
        self.primary = nn.Conv2d(
            in_channels, m, kernel_size, stride=stride, padding=padding, dilation=dilation,
            bias=bias, padding_mode=padding_mode, **factory,
        )
        self.cheap = nn.Conv2d(
            m, m * (ratio - 1), dw_size, stride=1, padding=dw_size // 2, groups=m, bias=bias, **factory
        )
        # The replaced conv's geometry, for code that reads it from the module (timm's DaViT reads kernel_size)
        self.kernel_size, self.stride, self.padding = self.primary.kernel_size, self.primary.stride, self.primary.padding
        self.dilation, self.groups, self.padding_mode = self.primary.dilation, 1, self.primary.padding_mode
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
    def like(cls, conv: nn.Conv2d, ratio: int, dw_size: int = 3) -> "GhostConv2d":
        """An untrained ghost module with ``conv``'s geometry, device and dtype."""
        return cls(
            conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride,
            padding=conv.padding, dilation=conv.dilation, bias=conv.bias is not None,
            padding_mode=conv.padding_mode, ratio=ratio, dw_size=dw_size,
            device=conv.weight.device, dtype=conv.weight.dtype,
        )

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.primary.kernel_size}, "
            f"stride={self.primary.stride}, ratio={self.ratio}, dw_size={self.dw_size}"
        )


class GhostConv2dBNReLU(GhostConv2d):
    """The paper's block: BN (+ReLU) after the primary and after the cheap conv.

    Not linear, so it is no drop-in for a plain conv inside Conv-BN-ReLU: use it when the
    converted model is trained from scratch or distilled. Biases are dropped (BN follows).
    """

    def __init__(self, *args, relu: bool = True, **kwargs) -> None:
        kwargs["bias"] = False
        super().__init__(*args, **kwargs)
        factory = {"device": self.primary.weight.device, "dtype": self.primary.weight.dtype}
        act = nn.ReLU(inplace=True) if relu else nn.Identity()
        self.primary_bn = nn.BatchNorm2d(self.primary.out_channels, **factory)
        self.cheap_bn = nn.BatchNorm2d(self.cheap.out_channels, **factory)
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        intrinsic = self.act(self.primary_bn(self.primary(x)))
        ghosts = self.act(self.cheap_bn(self.cheap(intrinsic)))
        return torch.cat([intrinsic, ghosts], dim=1).index_select(1, self.out_index)
