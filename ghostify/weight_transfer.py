"""Data-free initialisation of a ghost module from the conv it replaces.

How channels are chosen and ordered:

1. Every filter is tried as the source of its most similar filters (top ``|cosine|`` candidates):
   the *gain* of a pair is the energy of the ghost filter that "cheap kernel composed with the
   source filter" can reproduce (R^2 of the least-squares fit of step 2 times the filter's
   energy). ``group_channels`` then picks sources greedily by the energy kept: their own (copied
   exactly) plus their ghosts' gains; each source is copied exactly into the primary conv
   (that output channel reproduces the original) and its ``s - 1`` best free filters become its
   ghosts. Calibration (``ghostify.calibrate``) uses the same grouping on correlations of real
   layer outputs.
2. Each ghost's depthwise kernel (``d``, ``d x d`` or ``d x d x d``, as the conv has 1, 2 or 3
   spatial dimensions) is the least-squares fit that makes "cheap kernel composed with the
   intrinsic filter" closest to the ghost's original filter (the composition accounts for the
   primary conv's stride and dilation). Bias is matched in the interior.
3. ``out_index`` puts every map back at its original channel position, so BatchNorm, residual
   adds and the next layers see the channels they were trained on.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from .ghost_module import _GhostConvNd

_CHUNK_FLOATS = 1 << 23  # floats of shifted copies and partner filters held at once (32 MB)
# correlate filters overlap by overlap when that multiplies this many times fewer position pairs than all of them
_OVERLAP_ADVANTAGE = 8
_EXACT = 1e-4  # unexplained share below which a ghost counts as exactly reproduced


@dataclass(frozen=True)
class ChannelAssignment:
    """Which original filters become intrinsic maps (``sources``) and which ghosts each one makes."""

    sources: list[int]
    ghosts: list[list[int]]

    @classmethod
    def from_out_index(cls, out_index: torch.Tensor, ratio: int) -> ChannelAssignment:
        """The assignment a ghost module's ``out_index`` encodes (inverse of ``out_index()``)."""
        positions = out_index.tolist()
        m = -(-len(positions) // ratio)
        sources = [0] * m
        slots: list[dict[int, int]] = [{} for _ in range(m)]
        for channel, position in enumerate(positions):
            if position < m:
                sources[position] = channel
            else:
                group, slot = divmod(position - m, ratio - 1)
                slots[group][slot] = channel
        return cls(sources, [[group[k] for k in sorted(group)] for group in slots])

    def out_index(self, out_channels: int, ratio: int) -> torch.Tensor:
        """Position in ``cat([intrinsic, ghosts])`` of each original output channel."""
        index = torch.empty(out_channels, dtype=torch.long)
        m = len(self.sources)
        for i, (src, ghost_list) in enumerate(zip(self.sources, self.ghosts)):
            index[src] = i
            for k, ghost in enumerate(ghost_list):
                index[ghost] = m + i * (ratio - 1) + k
        return index


def group_channels(gain: torch.Tensor, ratio: int, source_value: torch.Tensor | None = None) -> ChannelAssignment:
    """Sources and their ghosts from ``gain[i, j]``: how much of channel ``j`` is reproduced as a ghost of ``i``.

    ``gain`` is an (n, n) tensor, dense or sparse (``torch.sparse_coo_tensor``: the entries not
    stored are 0, and when a row's stored channels are all taken its ghosts are the lowest free
    channels); a sparse gain with a few candidates per row keeps wide layers cheap.

    Greedy: take the source whose own ``source_value`` (what keeping it exact is worth; default 0)
    plus the gain of its ``ratio - 1`` best free channels is largest, give it those channels,
    repeat until every channel is taken (exactly ``ceil(n / ratio)`` sources).
    Ties go to the lower channel index, so the result is deterministic.

    Lazy greedy: a row's score can only fall as channels are taken, so rows wait in a max-heap
    under their last score and are re-scored only when they reach the top holding a taken
    channel (the same choices as re-scoring every row each round). A re-score reads the row's
    best channels, sorted once; only a row whose sorted ones are all taken is searched again.
    """
    n = gain.shape[0]
    own = [0.0] * n if source_value is None else source_value.detach().double().cpu().tolist()
    if gain.is_sparse:
        ranked_indices, ranked_values = _ranked_sparse_rows(gain)
    else:
        gain = gain.detach().double().cpu().clone()
        gain.fill_diagonal_(float("-inf"))  # a channel is never its own ghost
        ranked = gain.topk(min(n, max(4 * (ratio - 1), 32)), dim=1)  # each row's best channels, best first
        ranked_values, ranked_indices = ranked.values.tolist(), ranked.indices.tolist()
    taken = torch.zeros(n, dtype=torch.bool)
    is_free = [True] * n
    sources: list[int] = []
    ghosts: list[list[int]] = []
    remaining = n
    k = -1  # the group size - 1 the heap was scored for
    heap: list[tuple[float, int]] = []
    best: dict[int, list[int]] = {}  # row -> its best k free channels when last scored

    def score(rows: list[int], size: int) -> None:
        for row in rows:
            picked = [j for j in ranked_indices[row] if is_free[j]][:size]
            if len(picked) == size:
                total = math.fsum(gain_value for j, gain_value in zip(ranked_indices[row], ranked_values[row]) if j in picked)
            elif gain.is_sparse:  # the rest of the row is 0: its lowest free channels
                total = math.fsum(v for j, v in zip(ranked_indices[row], ranked_values[row]) if j in picked)
                picked += [j for j in range(n) if is_free[j] and j != row and j not in picked][:size - len(picked)]
            else:  # every ranked channel of this row is taken: search the whole row
                values, indices = gain[row].masked_fill(taken, float("-inf")).topk(size)
                picked, total = indices.tolist(), math.fsum(values.tolist())
            best[row] = picked
            heapq.heappush(heap, (-(total + own[row]), row))

    while remaining:
        k_now = min(ratio - 1, remaining - 1)
        if k_now == 0:
            source, picked = is_free.index(True), []
        else:
            if k_now != k:  # the first round, or the last group is short: score every free row anew
                k, heap = k_now, []
                score([row for row in range(n) if is_free[row]], k)
            while True:
                _, source = heapq.heappop(heap)
                if not is_free[source]:
                    continue
                if all(is_free[j] for j in best[source]):
                    break
                score([source], k)  # it held a taken channel: back in line under its current score
            picked = best[source]
        sources.append(source)
        ghosts.append(picked)
        for channel in (source, *picked):
            is_free[channel] = False
            taken[channel] = True
        remaining -= 1 + len(picked)
    return ChannelAssignment(sources, ghosts)


def _ranked_sparse_rows(gain: torch.Tensor) -> tuple[list[list[int]], list[list[float]]]:
    """Per row of a sparse (n, n) gain: its stored channels (the diagonal left out), best first, and their gains."""
    gain = gain.detach().coalesce().cpu()
    rows, cols = gain.indices()
    values = gain.values().double()
    keep = rows != cols
    rows, cols, values = rows[keep], cols[keep], values[keep]
    order = torch.argsort(cols, stable=True)  # ties go to the lower channel
    order = order[torch.argsort(-values[order], stable=True)]
    order = order[torch.argsort(rows[order], stable=True)]
    ends = torch.bincount(rows, minlength=gain.shape[0]).cumsum(0).tolist()
    cols, values = cols[order].tolist(), values[order].tolist()
    starts = [0, *ends[:-1]]
    return [cols[a:b] for a, b in zip(starts, ends)], [values[a:b] for a, b in zip(starts, ends)]


def _most_similar(unit: torch.Tensor, k: int, rows_per_chunk: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """For each row of ``unit`` (unit-norm filters), the ``k`` others with the largest ``|cosine|``: (indices, |cosine|).

    In float32 and by chunks of rows: a 3840-filter layer never holds its whole 3840 x 3840 similarity."""
    unit32 = unit.float()
    indices, values = [], []
    for first in range(0, len(unit32), rows_per_chunk):
        similarity = (unit32[first:first + rows_per_chunk] @ unit32.T).abs_()
        rows = torch.arange(first, first + len(similarity))
        similarity[torch.arange(len(similarity)), rows] = -1.0  # never itself
        nearest = similarity.topk(k, dim=1)
        indices.append(nearest.indices)
        values.append(nearest.values)
    return torch.cat(indices), torch.cat(values).double().clamp_(max=1.0)


def assign_channels(
    weight: torch.Tensor,
    ratio: int,
    dw_size: int = 3,
    stride: Sequence[int] | None = None,
    dilation: Sequence[int] | None = None,
    candidates: int = 16,
) -> ChannelAssignment:
    """Data-free grouping of a conv's filters (module docstring, step 1); arguments as ``channel_gains``."""
    gain, energy = channel_gains(weight, ratio, dw_size, stride, dilation, candidates)
    return group_channels(gain, ratio, source_value=energy)


def channel_gains(
    weight: torch.Tensor,
    ratio: int,
    dw_size: int = 3,
    stride: Sequence[int] | None = None,
    dilation: Sequence[int] | None = None,
    candidates: int = 16,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``assign_channels``' objective: the (sparse) gain of each (source, ghost) pair and each filter's
    energy (what keeping it exact is worth), both relative to the mean filter energy, so that the
    gains of several convs can be added up for one grouping they share (``ghostify.channel_order``).

    ``weight``: (out, in, *kernel) with 1, 2 or 3 spatial dimensions; ``stride`` / ``dilation``
    default to 1 along each. Only the ``candidates`` most similar filters (``|cosine|``) of each
    filter are fitted, which keeps the cost at ``O(n * candidates)`` filter fits.
    """
    n = weight.shape[0]
    stride, dilation = _per_dim(stride, weight), _per_dim(dilation, weight)
    flat = weight.detach().reshape(n, -1).double().cpu()
    energy = flat.pow(2).sum(dim=1)
    energy = energy / energy.mean().clamp_min(1e-30)
    unit = flat / flat.norm(dim=1).clamp_min(1e-12)[:, None]
    k = min(max(candidates, ratio - 1), n - 1)
    if k == 0:
        return torch.zeros(n, n, dtype=torch.float64).to_sparse(), energy
    nearest, similarity = _most_similar(unit, k)
    src, dst, similarity = torch.arange(n).repeat_interleave(k), nearest.reshape(-1), similarity.reshape(-1)
    if all(size == 1 for size in weight.shape[2:]):  # a 1x1 filter overlaps none of its shifted copies: R^2 = cos^2
        dead = flat.norm(dim=1)[dst] == 0  # (a dead filter is any filter's exact ghost, as in the fit)
        explained = torch.where(dead, torch.ones_like(similarity), similarity ** 2)
    else:
        _, residual, pair_energy = _fit_pairs(weight.detach().float().cpu(), src, dst, stride, dw_size, dilation)
        explained = torch.where(pair_energy > 0, 1 - residual / pair_energy.clamp_min(1e-30), torch.ones_like(pair_energy))
    # a little cosine keeps the order sensible among filters no kernel can reproduce
    gain = (explained.clamp(0, 1) + 1e-3 * similarity) * energy[dst]
    # exact ghosts first: a group that loses nothing beats any trade of energy between groups
    gain = gain + (explained > 1 - _EXACT) * energy.sum()
    # the objective is the output energy reproduced: exact sources plus the explained part of ghosts
    return torch.sparse_coo_tensor(torch.stack([src, dst]), gain, (n, n), check_invariants=True).coalesce(), energy


def _per_dim(value: Sequence[int] | int | None, weight: torch.Tensor) -> tuple[int, ...]:
    """``value`` (stride or dilation) as one whole number per spatial dimension of ``weight``; None is 1 everywhere."""
    dims = weight.dim() - 2
    if value is None:
        return (1,) * dims
    if isinstance(value, int):
        return (value,) * dims
    value = tuple(int(v) for v in value)
    if len(value) != dims:
        raise ValueError(f"expected {dims} values (one per spatial dimension of the filters), got {value}")
    return value


def _axis_shifts(stride: Sequence[int], dilation: Sequence[int] | None, reach: int) -> list[list[int | None]]:
    """Per spatial axis, for each tap offset ``t`` in ``-reach..reach``: the shift ``stride * t`` between two
    copies of a filter applied at ``dilation``, in undilated filter positions, or None where they do not overlap.

    Dilated filters are never built (a 3x3 filter at dilation 36 covers 73x73 pixels): two copies of a
    filter at dilation D overlap only when the shift is a multiple of D, and then they correlate as the
    undilated filters do at shift / D.
    """
    dilation = tuple(dilation) if dilation is not None else (1,) * len(stride)
    return [[(s * t) // D if (s * t) % D == 0 else None for t in range(-reach, reach + 1)] for s, D in zip(stride, dilation)]


def _correlate(filters: torch.Tensor, src: torch.Tensor, dst: torch.Tensor, shifts: list[list[int | None]]) -> torch.Tensor:
    """``out[p, i, j, ...] = sum_x filters[src[p]][x] * filters[dst[p]][x + (shifts[0][i], shifts[1][j], ...)]``.

    ``filters``: (N, C, *kernel) with 1, 2 or 3 spatial axes; ``shifts``: per axis, the shifts to
    correlate at (None: 0 there). Small kernels multiply every two kernel positions at once
    (``_correlate_position_pairs``); large ones with few overlapping shifts, such as a ViT's 16x16
    patch embedding at stride 16, multiply only the overlaps (``_correlate_overlaps``), which is
    thousands of times less work there.
    """
    pairs, kernel = len(src), filters.shape[2:]
    out = filters.new_zeros(pairs, *(len(axis) for axis in shifts))
    wanted = [(index, value) for index, value in
              zip(itertools.product(*(range(len(axis)) for axis in shifts)), itertools.product(*shifts))
              if None not in value]
    if pairs == 0 or not wanted:
        return out
    overlap = sum(math.prod(max(k - abs(v), 0) for k, v in zip(kernel, value)) for _, value in wanted)
    by_overlaps = overlap * _OVERLAP_ADVANTAGE < math.prod(kernel) ** 2
    result = (_correlate_overlaps if by_overlaps else _correlate_position_pairs)(filters, src, dst, [v for _, v in wanted])
    index = tuple(torch.tensor(axis) for axis in zip(*(i for i, _ in wanted)))
    out[(slice(None), *index)] = result
    return out


def _correlate_overlaps(filters: torch.Tensor, src: torch.Tensor, dst: torch.Tensor,
                        wanted: list[tuple[int, ...]]) -> torch.Tensor:
    """``_correlate`` for each wanted shift (pairs, shifts): the products of the two filters where they overlap."""
    pairs, channels, kernel = len(src), filters.shape[1], filters.shape[2:]
    result = filters.new_zeros(pairs, len(wanted))
    crops = []
    for o, value in enumerate(wanted):
        if all(abs(v) < k for v, k in zip(value, kernel)):
            crops.append((o, tuple(slice(max(0, -v), k - max(0, v)) for v, k in zip(value, kernel)),
                          tuple(slice(max(0, v), k - max(0, -v)) for v, k in zip(value, kernel))))
    chunk = max(1, _CHUNK_FLOATS // (2 * channels * math.prod(kernel)))
    for first in range(0, pairs, chunk):
        a, b = filters[src[first:first + chunk]], filters[dst[first:first + chunk]]
        for o, from_a, from_b in crops:
            result[first:first + chunk, o] = (a[(..., *from_a)] * b[(..., *from_b)]).flatten(1).sum(1)
    return result


def _correlate_position_pairs(filters: torch.Tensor, src: torch.Tensor, dst: torch.Tensor,
                              wanted: list[tuple[int, ...]]) -> torch.Tensor:
    """``_correlate`` for each wanted shift (pairs, shifts). Each pair's channel-summed products of every two
    kernel positions, ``M[x, y] = sum_c src[c, x] * dst[c, y]``, come from one matrix product per source (its
    partners side by side); a correlation at shift ``v`` is the sum of ``M[x, y]`` over ``y - x = v``. Matrix
    products only, so 3-D filters cost about what 2-D ones do per kernel position pair.
    """
    pairs, channels, kernel = len(src), filters.shape[1], filters.shape[2:]
    # the (x, y) position pairs (flat index x * K + y, positions row-major) with y - x = the o-th wanted shift
    positions = torch.tensor(list(itertools.product(*(range(k) for k in kernel))), dtype=torch.long).reshape(-1, len(kernel))
    size, extent = len(positions), torch.tensor(kernel)
    pair_index, shift_index = [], []
    for o, value in enumerate(wanted):
        moved = positions + torch.tensor(value)
        inside = ((moved >= 0) & (moved < extent)).all(dim=1)
        flat_moved = (moved[inside] * torch.tensor([math.prod(kernel[a + 1:]) for a in range(len(kernel))])).sum(dim=1)
        pair_index.append(torch.nonzero(inside).flatten() * size + flat_moved)
        shift_index.append(torch.full((int(inside.sum()),), o, dtype=torch.long))
    pair_index, shift_index = torch.cat(pair_index), torch.cat(shift_index)
    matrices = filters.reshape(len(filters), channels, size)
    padded = torch.cat([matrices, matrices.new_zeros(1, channels, size)])  # + a zero filter for missing partners
    # pairs grouped by source: group_dst[s, r] is the r-th partner of source s (the zero filter where none)
    unique_src, slot = torch.unique(src, return_inverse=True)
    counts = torch.bincount(slot, minlength=len(unique_src))
    order = torch.argsort(slot, stable=True)
    rank = torch.empty_like(slot)
    rank[order] = torch.arange(pairs) - (torch.cumsum(counts, 0) - counts)[slot[order]]
    partners_per_source = int(counts.max())
    group_dst = torch.full((len(unique_src), partners_per_source), len(filters), dtype=torch.long)
    group_dst[slot, rank] = dst
    chunk = max(1, _CHUNK_FLOATS // (partners_per_source * channels * size + partners_per_source * size * size))
    result = filters.new_empty(pairs, len(wanted))
    for first in range(0, len(unique_src), chunk):
        sources = unique_src[first:first + chunk]
        partners = padded[group_dst[first:first + chunk]]  # (n, partners, C, K)
        partners = partners.permute(0, 2, 1, 3).reshape(len(sources), channels, partners_per_source * size)
        products = torch.bmm(matrices[sources].transpose(1, 2), partners)  # (n, K, partners * K): M[x, (r, y)]
        products = products.reshape(len(sources), size, partners_per_source, size).transpose(1, 2)
        products = products.reshape(-1, size * size)[:, pair_index]
        correlations = products.new_zeros(len(products), len(wanted)).index_add_(1, shift_index, products)
        correlations = correlations.reshape(len(sources), partners_per_source, len(wanted))
        inside = (slot >= first) & (slot < first + len(sources))
        result[inside] = correlations[slot[inside] - first, rank[inside]]
    return result


def _correlations(a: torch.Tensor, b: torch.Tensor, stride: Sequence[int], dw_size: int,
                  dilation: Sequence[int] | None = None) -> torch.Tensor:
    """``C[p, u] = sum a[p] * b[p]`` shifted by ``stride * (u - d + 1)`` (per axis), for pairs of filters.

    ``a``, ``b``: (P, C, *kernel) with 1, 2 or 3 spatial axes, applied at ``dilation``. Returns
    (P, 2d - 1, ...) with one axis per spatial axis: every shift a cheap-kernel tap can make
    (see ``_axis_shifts`` for dilated filters).
    """
    pairs = len(a)
    return _correlate(torch.cat([a, b]), torch.arange(pairs), torch.arange(pairs) + pairs,
                      _axis_shifts(tuple(stride), dilation, dw_size - 1))


def _fit_pairs(
    filters: torch.Tensor, src: torch.Tensor, dst: torch.Tensor, stride: Sequence[int], dw_size: int,
    dilation: Sequence[int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Least-squares cheap kernels making ``h * filters[src]`` closest to ``filters[dst]``, pair by pair.

    A ghost computed as ``h * (W_src * x)`` equals ``(h composed with W_src) * x``, a filter that is
    a sum of copies of ``W_src`` shifted by ``stride * u`` and weighted by ``h[u]`` (``u`` a tap of
    the cheap kernel). Fitting it to ``W_dst`` is linear least squares in ``h``; its normal
    equations only need the correlations of the filters at those shifts, so no design matrix is built.

    ``filters``: (N, C, *kernel) with 1, 2 or 3 spatial axes, applied at ``dilation``. Returns the
    kernels (P, d**dims, taps in row-major order), each pair's squared residual and the energy
    ``||W_dst||^2`` (float64).
    """
    d, dims = dw_size, filters.dim() - 2
    stride = tuple(stride)
    # the coordinates of tap q along each axis, row-major: (dims, d**dims)
    taps = torch.tensor(list(itertools.product(range(d), repeat=dims)), dtype=torch.long).T.reshape(dims, -1)
    # Gram[q, q'] = C_src,src(tap_q - tap_q'), at offsets -(d-1)..d-1; moment[q] = C_src,dst(tap_q - center),
    # at offsets -(d//2)..d//2 (the only shifts a ghost's own fit needs)
    gram_index = tuple(axis[:, None] - axis[None, :] + d - 1 for axis in taps)
    unique_src, src_slot = torch.unique(src, return_inverse=True)
    self_corr = _correlate(filters, unique_src, unique_src, _axis_shifts(stride, dilation, d - 1))
    gram = self_corr[(slice(None), *gram_index)].double()[src_slot]  # (P, d**dims, d**dims)
    # float32 correlations (the fast matrix products), float64 normal equations
    cross = _correlate(filters, src, dst, _axis_shifts(stride, dilation, d // 2))
    moments = cross[(slice(None), *taps)].double()  # (P, d**dims)
    taps_count = d ** dims
    ridge = (1e-9 * gram.diagonal(dim1=1, dim2=2).mean(dim=1) + 1e-30)[:, None, None] * torch.eye(taps_count)
    solution = torch.linalg.solve(gram + ridge, moments)  # ridge for dead filters
    energy = filters.double().pow(2).flatten(1).sum(1)[dst]
    # ||A h - t||^2 = t.t - 2 h.A't + h.A'A h
    residual = energy - 2 * (solution * moments).sum(1) + (solution * (gram @ solution[..., None])[..., 0]).sum(1)
    return solution, residual.clamp_min(0), energy


def fit_cheap_kernels(
    weight: torch.Tensor,
    assignment: ChannelAssignment,
    ratio: int,
    dw_size: int,
    stride: Sequence[int] | None = None,
    dilation: Sequence[int] | None = None,
) -> tuple[torch.Tensor, float]:
    """Least-squares depthwise kernels for every ghost (module docstring, step 2; see ``_fit_pairs``).

    Returns the cheap conv's weight, shape ``(m * (ratio - 1), 1, d, ...)`` with one ``d`` per
    spatial dimension of ``weight``, and the fit's relative error ``||fitted - original|| / ||original||``
    over all ghost filters (0 = exact; it comes from float32 correlations, so anything below ~1e-3
    means exact).
    """
    filters = weight.detach().float().cpu()
    stride, dilation = _per_dim(stride, weight), _per_dim(dilation, weight)
    d, slots, m = dw_size, ratio - 1, len(assignment.sources)
    kernel_shape = (m * slots, 1, *(d,) * (weight.dim() - 2))
    kernels = torch.zeros(m, slots, d ** (weight.dim() - 2), dtype=torch.float64)
    pair_src = torch.tensor([i for i, g in enumerate(assignment.ghosts) for _ in g], dtype=torch.long)
    pair_ghost = torch.tensor([j for g in assignment.ghosts for j in g], dtype=torch.long)
    pair_slot = torch.tensor([k for g in assignment.ghosts for k in range(len(g))], dtype=torch.long)
    if len(pair_ghost) == 0:
        return kernels.reshape(kernel_shape).float(), 0.0
    sources = torch.tensor(assignment.sources)
    solution, residual, energy = _fit_pairs(filters, sources[pair_src], pair_ghost, stride, d, dilation)
    kernels[pair_src, pair_slot] = solution
    total = energy.sum()
    rel_error = float((residual.sum() / total) ** 0.5) if total > 0 else 0.0
    return kernels.reshape(kernel_shape).float(), rel_error


@torch.no_grad()
def transfer_weights(conv: nn.Module, ghost: _GhostConvNd, assignment: ChannelAssignment | None = None) -> float:
    """Initialise ``ghost`` from ``conv`` (module docstring) and return the relative fit error of the ghost filters.

    ``conv``: an ``nn.Conv1d``, ``Conv2d`` or ``Conv3d`` (``groups == 1``) with the ghost module's dims.
    ``assignment``: use this grouping of the filters instead of choosing one (step 1).
    """
    ratio = ghost.ratio
    if assignment is None:
        assignment = assign_channels(conv.weight, ratio, ghost.dw_size, conv.stride, conv.dilation)
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
