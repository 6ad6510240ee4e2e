"""Data-free initialisation of a ghost module from the conv it replaces.

How channels are chosen and ordered:

1. Filters are visited in order of decreasing L2 norm. The strongest filter not yet taken
   becomes an *intrinsic* map (its filter is copied into the primary conv, so that output
   channel reproduces the original exactly) and claims the ``s - 1`` untaken filters most
   similar to it (largest ``|cosine|``) as its *ghosts*. This repeats until every filter is
   taken, which makes exactly ``m = ceil(n / s)`` intrinsic maps.
2. Each ghost's depthwise ``d x d`` kernel is the least-squares fit that makes "cheap kernel
   composed with the intrinsic filter" closest to the ghost's original filter (the composition
   accounts for the primary conv's stride and dilation). Bias is matched in the interior.
3. ``out_index`` puts every map back at its original channel position, so BatchNorm, residual
   adds and the next layers see the channels they were trained on.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .ghost_module import GhostConv2d

_PAIR_CHUNK = 256


@dataclass(frozen=True)
class ChannelAssignment:
    """Which original filters become intrinsic maps (``sources``) and which ghosts each one makes."""

    sources: list[int]
    ghosts: list[list[int]]

    def out_index(self, out_channels: int, ratio: int) -> torch.Tensor:
        """Position in ``cat([intrinsic, ghosts])`` of each original output channel."""
        index = torch.empty(out_channels, dtype=torch.long)
        m = len(self.sources)
        for i, (src, ghost_list) in enumerate(zip(self.sources, self.ghosts)):
            index[src] = i
            for k, ghost in enumerate(ghost_list):
                index[ghost] = m + i * (ratio - 1) + k
        return index


def assign_channels(weight: torch.Tensor, ratio: int) -> ChannelAssignment:
    """Greedy grouping of a conv's filters into intrinsic maps and their ghosts (module docstring, step 1)."""
    n = weight.shape[0]
    flat = weight.detach().reshape(n, -1).double().cpu()
    norms = flat.norm(dim=1)
    unit = flat / norms.clamp_min(1e-12)[:, None]
    similarity = (unit @ unit.T).abs().numpy()
    taken = np.zeros(n, dtype=bool)
    sources: list[int] = []
    ghosts: list[list[int]] = []
    for src in torch.argsort(-norms, stable=True).tolist():
        if taken[src]:
            continue
        taken[src] = True
        free = np.flatnonzero(~taken)
        picked = free[np.argsort(-similarity[src, free], kind="stable")[: ratio - 1]].tolist()
        taken[picked] = True
        sources.append(src)
        ghosts.append(picked)
    return ChannelAssignment(sources, ghosts)


def _dilate(filters: torch.Tensor, dilation: tuple[int, int]) -> torch.Tensor:
    """(N, C, kh, kw) filters spread out to the footprint they cover at ``dilation``."""
    n, c, kh, kw = filters.shape
    (dh, dw) = dilation
    out = filters.new_zeros(n, c, dh * (kh - 1) + 1, dw * (kw - 1) + 1)
    out[:, :, ::dh, ::dw] = filters
    return out


def _correlations(a: torch.Tensor, b: torch.Tensor, stride: tuple[int, int], dw_size: int) -> torch.Tensor:
    """``C[p, y, x] = sum a[p] * b[p]`` shifted by ``stride * (y - d + 1, x - d + 1)``, for pairs of filters.

    ``a``, ``b``: (P, C, H, W). Returns (P, 2d - 1, 2d - 1): every shift a cheap-kernel tap can make.
    """
    pairs, channels, h, w = a.shape
    ph, pw = stride[0] * (dw_size - 1), stride[1] * (dw_size - 1)
    padded = F.pad(b, (pw, pw, ph, ph)).reshape(1, pairs * channels, h + 2 * ph, w + 2 * pw)
    return F.conv2d(padded, a, stride=stride, groups=pairs)[0]


def fit_cheap_kernels(
    weight: torch.Tensor,
    assignment: ChannelAssignment,
    ratio: int,
    dw_size: int,
    stride: tuple[int, int],
    dilation: tuple[int, int],
) -> tuple[torch.Tensor, float]:
    """Least-squares depthwise kernels for every ghost (module docstring, step 2).

    A ghost computed as ``h * (W_src * x)`` equals ``(h composed with W_src) * x``, a filter that is
    a sum of copies of ``W_src`` shifted by ``stride * (u, v)`` and weighted by ``h[u, v]``. Fitting
    it to ``W_ghost`` is linear least squares in ``h``; its normal equations only need the
    correlations of the filters at those shifts, so no design matrix is built.

    Returns the cheap conv's weight, shape ``(m * (ratio - 1), 1, d, d)``, and the fit's relative
    error ``||fitted - original|| / ||original||`` over all ghost filters (0 = exact; it comes from float32
    correlations, so anything below ~1e-3 means exact).
    """
    # float32 correlations (the fast conv path), float64 normal equations
    filters = _dilate(weight.detach().float().cpu(), dilation)
    d, slots, m = dw_size, ratio - 1, len(assignment.sources)
    taps = torch.arange(d)
    tap_u, tap_v = taps.repeat_interleave(d), taps.repeat(d)  # tap q = (u, v), row-major
    # Gram[q, q'] = C_src,src(tap_q - tap_q'); moment[q] = C_src,ghost(tap_q - center)
    gram_y, gram_x = tap_u[:, None] - tap_u[None, :] + d - 1, tap_v[:, None] - tap_v[None, :] + d - 1
    moment_y, moment_x = tap_u - d // 2 + d - 1, tap_v - d // 2 + d - 1

    sources = torch.tensor(assignment.sources)
    self_corr = torch.cat([
        _correlations(filters[chunk], filters[chunk], stride, d) for chunk in sources.split(_PAIR_CHUNK)
    ])
    gram = self_corr[:, gram_y, gram_x].double()  # (m, d*d, d*d)
    ridge = (1e-9 * gram.diagonal(dim1=1, dim2=2).mean(dim=1) + 1e-30)[:, None, None] * torch.eye(d * d)

    pair_src = torch.tensor([i for i, g in enumerate(assignment.ghosts) for _ in g], dtype=torch.long)
    pair_ghost = torch.tensor([j for g in assignment.ghosts for j in g], dtype=torch.long)
    pair_slot = torch.tensor([k for g in assignment.ghosts for k in range(len(g))], dtype=torch.long)
    kernels = torch.zeros(m, slots, d * d, dtype=torch.float64)
    if len(pair_ghost) == 0:
        return kernels.reshape(m * slots, 1, d, d).float(), 0.0
    cross = torch.cat([
        _correlations(filters[sources[s_idx]], filters[g_idx], stride, d)
        for s_idx, g_idx in zip(pair_src.split(_PAIR_CHUNK), pair_ghost.split(_PAIR_CHUNK))
    ])
    moments = cross[:, moment_y, moment_x].double()  # (pairs, d*d)
    pair_gram = gram[pair_src]
    solution = torch.linalg.solve(pair_gram + ridge[pair_src], moments)  # (pairs, d*d); ridge for dead filters
    energy = filters[pair_ghost].double().pow(2).sum()
    # ||A h - t||^2 = t.t - 2 h.A't + h.A'A h
    residual = energy - 2 * (solution * moments).sum() + (solution * (pair_gram @ solution[..., None])[..., 0]).sum()
    kernels[pair_src, pair_slot] = solution
    rel_error = float((residual.clamp_min(0) / energy) ** 0.5) if energy > 0 else 0.0
    return kernels.reshape(m * slots, 1, d, d).float(), rel_error


@torch.no_grad()
def transfer_weights(conv: nn.Conv2d, ghost: GhostConv2d) -> float:
    """Initialise ``ghost`` from ``conv`` (module docstring) and return the relative fit error of the ghost filters."""
    ratio = ghost.ratio
    assignment = assign_channels(conv.weight, ratio)
    kernels, rel_error = fit_cheap_kernels(
        conv.weight, assignment, ratio, ghost.dw_size, conv.stride, conv.dilation
    )
    device, dtype = ghost.primary.weight.device, ghost.primary.weight.dtype
    ghost.primary.weight.copy_(conv.weight[assignment.sources])
    ghost.cheap.weight.copy_(kernels.to(device=device, dtype=dtype))
    ghost.out_index.copy_(assignment.out_index(conv.out_channels, ratio).to(device))
    if conv.bias is not None and ghost.primary.bias is not None:
        bias = conv.bias.detach().double().cpu()
        source_bias = bias[assignment.sources]
        ghost.primary.bias.copy_(source_bias)
        cheap_bias = torch.zeros(len(assignment.sources), ratio - 1, dtype=torch.float64)
        kernel_sums = kernels.reshape(len(assignment.sources), ratio - 1, -1).sum(dim=2)
        for i, ghost_list in enumerate(assignment.ghosts):
            for k, ghost_channel in enumerate(ghost_list):
                cheap_bias[i, k] = bias[ghost_channel] - kernel_sums[i, k] * source_bias[i]
        ghost.cheap.bias.copy_(cheap_bias.reshape(-1).to(device=device, dtype=dtype))
    return rel_error
