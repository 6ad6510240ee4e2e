"""Calibration: fit every ghost module to the original model's layer outputs, without training.

A few hundred unlabelled images and one to two minutes for a CIFAR ResNet on a 2-core CPU. Layer by
layer, in the order the model runs them, each ghost module is fitted on the inputs the
*converted* model feeds it (so earlier approximations are compensated, not compounded) to the
outputs the *original* conv produces on the same images (FSKD, Li et al. 2020; the "student
input, teacher output" mix of Cross Distillation, Bai et al. 2020):

1. Grouping from data: output channels that the original conv produces almost as shifted, scaled
   copies of each other share an intrinsic map (``weight_transfer.group_channels`` on the squared
   correlations of the original outputs).
2. Primary conv: ridge least squares from input patches to the original intrinsic channels.
3. Cheap conv: each ghost's ``d x d`` kernel (and bias) by least squares from the shifted
   intrinsic map to the original ghost channel.
4. Block-wise reconstruction (BRECQ, Li et al. 2021): as soon as every ghost module of a block
   (the nearest module holding them that the forward pass calls, e.g. a residual block) is
   fitted, a few hundred Adam steps on the block's ghost parameters, each on a small minibatch
   drawn from all the calibration images, make the block's output, on the student's inputs,
   match the original block's. Local and label-free: no gradient crosses a block boundary.
5. The final ``Linear`` refitted by least squares to the original logits (when the calibration
   set is large enough for it).

Measured on CIFAR-10 ResNet-20, s=2, 512 train/ images, agreement with the original on val/:
data-free 10 %, steps 1-3 63 %, + BatchNorm re-estimation 26 % (so it is off by default),
steps 1-4 82 % (300 Adam steps on whole batches of 64, lr 3e-3; 1e-3: 72 %; also tuning BatchNorm
affines: 82 %), 84 % with 600 steps on minibatches of 16 (the default: also faster, 92 s against 110 s).

Calibration fits the ghost modules of ``Conv2d`` and ``Conv1d`` layers (a 1-D map is fitted as a 2-D
one of height 1). Those of ``Conv3d`` layers keep their data-free start (``CalibrationResult.skipped``
names them); a model with no other ghost module is refused with a message saying so (distill it instead).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import islice
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .channel_order import joint_assignment, order_groups
from .convert import base_form
from .errors import GhostifyError
from .ghost_module import CONV_TYPES, is_ghost_module, is_paper_variant
from .selection import get_plan
from .weight_transfer import ChannelAssignment, group_channels

ProgressCallback = Callable[[str, int, int], None]


class _StopForward(Exception):
    """Raised by a hook once the activation it waits for is captured: the rest of the forward is skipped."""


@dataclass
class LayerCalibration:
    """How well one ghost module matches the original conv's outputs on the calibration images."""

    name: str
    error_before: float  # relative error ||ghost(x) - conv(x)|| / ||conv(x)|| with the data-free start
    error_after: float


@dataclass
class BlockReconstruction:
    """Relative output error of one block before/after block-wise reconstruction."""

    name: str
    error_before: float
    error_after: float


@dataclass
class CalibrationResult:
    """What ``calibrate`` did: per-layer relative output errors, images used, seconds taken."""

    layers: list[LayerCalibration] = field(default_factory=list)
    blocks: list[BlockReconstruction] = field(default_factory=list)
    images: int = 0
    head: tuple[str, float, float] | None = None
    seconds: float = 0.0
    bn_reestimated: int = 0
    skipped: list[str] = field(default_factory=list)  # ghost modules left as they were: those of Conv3d layers

    @property
    def mean_error_after(self) -> float:
        return sum(layer.error_after for layer in self.layers) / max(1, len(self.layers))

    def to_dict(self) -> dict[str, Any]:
        return {
            "images": self.images,
            "seconds": round(self.seconds, 2),
            "bn_reestimated": self.bn_reestimated,
            "layers": [vars(layer) for layer in self.layers],
            "blocks": [vars(block) for block in self.blocks],
            "head": list(self.head) if self.head else None,
            **({"skipped": list(self.skipped)} if self.skipped else {}),
        }


CALIBRATED_DIMS = (1, 2)  # ghost modules of Conv1d and Conv2d layers; a Conv3d's input patches have no unfold


def calibration_layers(student: nn.Module) -> list[tuple[str, nn.Module]]:
    """The linear 1-D and 2-D ghost modules of ``student`` (the paper's BN+ReLU variant cannot be fitted in
    closed form; 3-D ghost modules are not calibrated: see ``uncalibrated_layers``)."""
    return [(name, module) for name, module in student.named_modules()
            if is_ghost_module(module) and not is_paper_variant(module) and module.spatial_dims in CALIBRATED_DIMS]


def uncalibrated_layers(student: nn.Module) -> list[str]:
    """Names of the linear ghost modules calibration leaves alone: those of ``Conv3d`` layers."""
    return [name for name, module in student.named_modules()
            if is_ghost_module(module) and not is_paper_variant(module) and module.spatial_dims not in CALIBRATED_DIMS]


def check_teacher_fits(student: nn.Module, teacher: nn.Module, names: Sequence[str]) -> None:
    """Every ghost module's name must be a conv of its dims (``Conv1d``/``2d``/``3d``) and shape in the teacher."""
    modules = dict(teacher.named_modules())
    for name in names:
        ghost = student.get_submodule(name)
        conv = modules.get(name)
        expected = CONV_TYPES[ghost.spatial_dims]
        if not isinstance(conv, expected):
            found = "nothing" if conv is None else type(conv).__name__
            raise GhostifyError(
                f"the teacher does not fit the student: the student's ghost layer {name!r} should be a {expected.__name__} "
                f"in the teacher, found {found}. Pass the model the student was converted from."
            )
        if (conv.in_channels, conv.out_channels) != (ghost.in_channels, ghost.out_channels) or conv.kernel_size != ghost.primary.kernel_size:
            raise GhostifyError(
                f"the teacher does not fit the student at {name!r}: teacher conv {conv.in_channels}->{conv.out_channels} "
                f"{conv.kernel_size}, student {ghost.in_channels}->{ghost.out_channels} {ghost.primary.kernel_size}. "
                "Pass the model the student was converted from."
            )


def _capture_call(model: nn.Module, module: nn.Module, inputs: torch.Tensor, want: str) -> Any:
    """(args, kwargs) of ``module``'s first call (``want="input"``) or its output, during ``model(inputs)``."""
    captured: list[Any] = []

    def pre_hook(_module: nn.Module, args: tuple, kwargs: dict) -> None:
        captured.append((args, kwargs))
        raise _StopForward

    def hook(_module: nn.Module, _args: tuple, output: Any) -> None:
        captured.append(output)
        raise _StopForward

    handle = (module.register_forward_pre_hook(pre_hook, with_kwargs=True) if want == "input"
              else module.register_forward_hook(hook))
    try:
        model(inputs)
    except _StopForward:
        pass
    finally:
        handle.remove()
    if not captured:
        raise GhostifyError(f"{module.__class__.__name__} was never called during the forward pass; it cannot be calibrated.")
    return captured[0]


def _run_until(model: nn.Module, module: nn.Module, inputs: torch.Tensor, want: str) -> torch.Tensor:
    """``module``'s first input tensor (``want="input"``) or its output during ``model(inputs)``."""
    captured = _capture_call(model, module, inputs, want)
    return (captured[0][0] if want == "input" else captured).detach()


_CAPTURE_BYTES = 1 << 30  # captured layer inputs/outputs kept in memory, per layer


class _LayerCaptures:
    """One layer's (student input, teacher output) per calibration batch, for the passes of its fit.

    Capturing runs both models up to the layer; the captures are kept (up to ``budget`` bytes,
    beyond that recomputed) so that the later passes do not run those prefixes again.
    """

    def __init__(self, ghost: nn.Module, conv: nn.Module, student: nn.Module, teacher: nn.Module,
                 images: list[torch.Tensor], budget: int | None = None) -> None:
        self.ghost, self.conv, self.student, self.teacher, self.images = ghost, conv, student, teacher, images
        self.device = ghost.primary.weight.device
        self.budget = _CAPTURE_BYTES if budget is None else budget
        self.kept: list[tuple[torch.Tensor, torch.Tensor]] = []

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for index, batch in enumerate(self.images):
            if index < len(self.kept):
                yield self.kept[index]
                continue
            batch = batch.to(self.device)
            pair = (_run_until(self.student, self.ghost, batch, "input"), _run_until(self.teacher, self.conv, batch, "output"))
            if index == len(self.kept) and (index + 1) * sum(t.numel() * t.element_size() for t in pair) <= self.budget:
                self.kept.append(pair)
            yield pair


def _conv_padding(conv: nn.Module) -> tuple[int, ...]:
    """The padding the conv applies, in ``F.pad`` order (last dim first: left, right[, top, bottom]), also for
    ``padding='same'``."""
    if isinstance(conv.padding, str):
        if conv.padding == "valid":
            return (0, 0) * len(conv.kernel_size)
        pads = []
        for k, d in zip(reversed(conv.kernel_size), reversed(conv.dilation)):
            total = d * (k - 1)
            pads += [total // 2, total - total // 2]
        return tuple(pads)
    return tuple(p for size in reversed(conv.padding) for p in (size, size))


def _plane(x: torch.Tensor) -> torch.Tensor:
    """A 1-D map ``(N, C, L)`` as a 2-D one of height 1, so that ``F.unfold`` reads it; 2-D maps as they are."""
    return x.unsqueeze(2) if x.ndim == 3 else x


def _patches(conv: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """(N, C*k..., L) input patches of a Conv1d or Conv2d ``conv``: ``conv(x)`` is ``weight.flatten(1) @ patches``."""
    mode = "constant" if conv.padding_mode == "zeros" else conv.padding_mode
    padded = _plane(F.pad(x, _conv_padding(conv), mode=mode))
    kernel, dilation, stride = ((1, *v) if x.ndim == 3 else v for v in (conv.kernel_size, conv.dilation, conv.stride))
    return F.unfold(padded, kernel, dilation=dilation, stride=stride)


def _sample_positions(total: int, keep: int, generator: torch.Generator) -> torch.Tensor | None:
    return None if total <= keep else torch.randperm(total, generator=generator)[:keep]


@dataclass
class _LayerStats:
    """Normal-equation sums for one layer (float64)."""

    xx: torch.Tensor | None = None  # (D, D) patch Gram
    xy: torch.Tensor | None = None  # (D, n) patch x original output
    yy: torch.Tensor | None = None  # (n, n) original output Gram
    y_sum: torch.Tensor | None = None
    rows: int = 0

    def add(self, patches: torch.Tensor, targets: torch.Tensor) -> None:
        p, y = patches.double(), targets.double()
        self.xx = p.T @ p if self.xx is None else self.xx + p.T @ p
        self.xy = p.T @ y if self.xy is None else self.xy + p.T @ y
        self.add_targets(y)

    def add_targets(self, targets: torch.Tensor) -> None:
        """Only what ``correlation`` needs."""
        y = targets.double()
        self.yy = y.T @ y if self.yy is None else self.yy + y.T @ y
        self.y_sum = y.sum(0) if self.y_sum is None else self.y_sum + y.sum(0)
        self.rows += len(y)

    def correlation(self) -> torch.Tensor:
        mean = self.y_sum / self.rows
        cov = self.yy / self.rows - torch.outer(mean, mean)
        std = cov.diagonal().clamp_min(1e-12).sqrt()
        return cov / torch.outer(std, std)


def _solve(gram: torch.Tensor, rhs: torch.Tensor, ridge: float) -> torch.Tensor:
    """``(gram + ridge * mean(diag) I)^-1 rhs`` for one or a batch of systems."""
    scale = gram.diagonal(dim1=-2, dim2=-1).mean(-1).clamp_min(1e-12)
    eye = torch.eye(gram.shape[-1], dtype=gram.dtype)
    return torch.linalg.solve(gram + (ridge * scale)[..., None, None] * eye, rhs)


def _rows(x: torch.Tensor, positions: torch.Tensor | None) -> torch.Tensor:
    """(N, F, L) -> (N * L', F) rows, keeping only ``positions`` of L."""
    if positions is not None:
        x = x[:, :, positions]
    return x.permute(0, 2, 1).reshape(-1, x.shape[1])


@torch.no_grad()
def _calibrate_layer(
    name: str, ghost: nn.Module, conv: nn.Module, student: nn.Module, teacher: nn.Module,
    images: list[torch.Tensor], *, positions_per_image: int, ridge: float, regroup: bool, seed: int,
    assignment: ChannelAssignment | None = None,
) -> LayerCalibration:
    device = ghost.primary.weight.device
    generator = torch.Generator().manual_seed(seed)
    has_bias = ghost.primary.bias is not None
    stats = _LayerStats()
    error_before = [0.0, 0.0]
    captures = _LayerCaptures(ghost, conv, student, teacher, images)
    # pass 1: patches of the student's input vs the teacher's output
    for x, target in captures:
        out = ghost(x)
        error_before[0] += float((out - target).pow(2).sum())
        error_before[1] += float(target.pow(2).sum())
        patches = _patches(ghost.primary, x)
        n, _, length = patches.shape
        keep = _sample_positions(length, positions_per_image, generator)
        rows = _rows(patches, keep)
        if has_bias:
            rows = torch.cat([rows, rows.new_ones(len(rows), 1)], dim=1)
        stats.add(rows.cpu(), _rows(target.flatten(2), keep).cpu())

    ratio, out_channels = ghost.ratio, ghost.out_channels
    if assignment is None and regroup:  # (given: the one its residual stream shares, channel_order)
        assignment = group_channels(stats.correlation().pow(2), ratio)
    elif assignment is None:  # keep the data-free grouping
        assignment = ChannelAssignment.from_out_index(ghost.out_index.cpu(), ratio)
    sources = torch.tensor(assignment.sources)
    weights = _solve(stats.xx, stats.xy[:, sources], ridge).T  # (m, D [+1])
    primary = ghost.primary
    dtype = primary.weight.dtype
    if has_bias:
        primary.bias.copy_(weights[:, -1].to(device, dtype))
        weights = weights[:, :-1]
    primary.weight.copy_(weights.reshape(primary.weight.shape).to(device, dtype))
    ghost.out_index.copy_(assignment.out_index(out_channels, ratio).to(device))

    # pass 2: cheap kernels from the refitted intrinsic maps to the teacher's ghost channels
    d = ghost.dw_size
    window = (d, d) if ghost.spatial_dims == 2 else (1, d)  # the cheap kernel over a height of 1 for a Conv1d
    pair_src = torch.tensor([i for i, group in enumerate(assignment.ghosts) for _ in group], dtype=torch.long)
    pair_ghost = torch.tensor([j for group in assignment.ghosts for j in group], dtype=torch.long)
    pair_slot = torch.tensor([k for group in assignment.ghosts for k in range(len(group))], dtype=torch.long)
    kernel_taps = window[0] * window[1]
    taps = kernel_taps + (1 if has_bias else 0)
    gram = torch.zeros(len(assignment.sources), taps, taps, dtype=torch.float64)
    moments = torch.zeros(len(pair_ghost), taps, dtype=torch.float64)
    for x, target in captures:
        intrinsic = _plane(primary(x))
        n, m, h, w = intrinsic.shape
        shifted = F.unfold(intrinsic, window, padding=tuple(k // 2 for k in window)).reshape(n, m, kernel_taps, h * w)
        keep = _sample_positions(h * w, positions_per_image, generator)
        if keep is not None:
            shifted, target_rows = shifted[..., keep], target.flatten(2)[..., keep]
        else:
            target_rows = target.flatten(2)
        shifted = shifted.double().cpu()
        if has_bias:
            shifted = torch.cat([shifted, shifted.new_ones(n, m, 1, shifted.shape[-1])], dim=2)
        target_rows = target_rows.double().cpu()
        gram += torch.einsum("nmql,nmrl->mqr", shifted, shifted)
        for chunk in torch.arange(len(pair_ghost)).split(512):
            moments[chunk] += torch.einsum("npql,npl->pq", shifted[:, pair_src[chunk]], target_rows[:, pair_ghost[chunk]])
    if len(pair_ghost):
        kernels = _solve(gram[pair_src], moments[..., None], ridge)[..., 0]  # (pairs, taps)
        cheap_w = torch.zeros(len(assignment.sources), ratio - 1, taps, dtype=torch.float64)
        cheap_w[pair_src, pair_slot] = kernels
        cheap_w = cheap_w.reshape(-1, taps)
        ghost.cheap.weight.copy_(cheap_w[:, :kernel_taps].reshape(ghost.cheap.weight.shape).to(device, dtype))
        if has_bias:
            ghost.cheap.bias.copy_(cheap_w[:, -1].to(device, dtype))

    error_after = [0.0, 0.0]
    for x, target in islice(captures, 2):
        out = ghost(x)
        error_after[0] += float((out - target).pow(2).sum())
        error_after[1] += float(target.pow(2).sum())
    rel = lambda e: (e[0] / max(e[1], 1e-30)) ** 0.5  # noqa: E731
    return LayerCalibration(name, rel(error_before), rel(error_after))


def reconstruction_blocks(student: nn.Module, names: Sequence[str], called: Iterable[str] | None = None) -> list[str]:
    """The modules whose outputs block-wise reconstruction matches: each ghost module's parent
    (a residual block, a Conv-BN-act unit), or the ghost module itself when its parent is the model.

    With ``called`` (the names of the modules a forward pass calls, ``called_modules``), the block is
    the nearest ancestor that is called: a ``ModuleList`` (Res2Net's split convs), or a ``Sequential``
    a traced graph runs step by step, is never called itself, so its output cannot be matched.
    """
    called = set(called) if called is not None else None  # a list of hundreds of names is searched per ancestor
    blocks: list[str] = []
    for name in names:
        parts = name.split(".")
        ancestors = (".".join(parts[:end]) for end in range(len(parts) - 1, 0, -1))
        block = next((a for a in ancestors if called is None or a in called), name)
        if block not in blocks:
            blocks.append(block)
    return blocks


@torch.no_grad()
def called_modules(*models: nn.Module, inputs: torch.Tensor) -> list[str]:
    """Names of the modules that every one of ``models`` calls in one forward pass of ``inputs``, in the
    order the first model first calls them.

    Run in eval mode and without gradients, so that nothing (BatchNorm statistics) changes.
    """
    calls: list[list[str]] = []
    for model in models:
        called: dict[str, None] = {}
        handles = [module.register_forward_pre_hook(lambda _m, _a, name=name: called.setdefault(name))
                   for name, module in model.named_modules()]
        flags = {module: module.training for module in model.modules()}
        model.eval()
        try:
            model(inputs.to(next(model.parameters()).device))
        finally:
            for handle in handles:
                handle.remove()
            for module, training in flags.items():
                module.training = training
        calls.append(list(called))
    common = set(calls[0]).intersection(*calls[1:])
    return [name for name in calls[0] if name in common]


def _detach(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach()
    if isinstance(value, (list, tuple)):
        return type(value)(_detach(v) for v in value)
    if isinstance(value, dict):
        return {k: _detach(v) for k, v in value.items()}
    return value


def _pool(cached: list[tuple[tuple, dict, torch.Tensor]]) -> tuple[tuple[torch.Tensor, ...], torch.Tensor] | None:
    """The cached calls of a block as one call over every image (tensor arguments and targets
    concatenated), when the block takes only per-image tensors of one shape; else None.

    The entries of ``cached`` become views of the pooled tensors: memory is not doubled.
    """
    first_args, _, first_target = cached[0]

    def same_shape(value: Any, like: torch.Tensor, rows: int) -> bool:
        return (isinstance(value, torch.Tensor) and value.ndim > 0 and len(value) == rows
                and value.shape[1:] == like.shape[1:] and value.dtype == like.dtype)

    for args, kwargs, target in cached:
        if kwargs or len(args) != len(first_args) or not same_shape(target, first_target, len(target)) \
                or not all(same_shape(a, like, len(target)) for a, like in zip(args, first_args)):
            return None
    total = sum(len(target) for _, _, target in cached)
    inputs = tuple(a.new_empty((total, *a.shape[1:])) for a in first_args)
    targets = first_target.new_empty((total, *first_target.shape[1:]))
    start = 0
    for index, (args, _, target) in enumerate(cached):
        end = start + len(target)
        for pooled, value in zip(inputs, args):
            pooled[start:end] = value
        targets[start:end] = target
        cached[index] = (tuple(pooled[start:end] for pooled in inputs), {}, targets[start:end])
        start = end
    return inputs, targets


def _reconstruct_block(
    block_name: str, student: nn.Module, teacher: nn.Module, images: list[torch.Tensor], *, steps: int, lr: float,
    batch_size: int, seed: int,
) -> tuple[float, float] | None:
    """Adam on the block's ghost parameters so the student block, fed the student's own inputs,
    reproduces the teacher block's outputs (BRECQ-style): each step on ``batch_size`` images drawn
    from all the calibration images. Returns relative error before/after."""
    s_block, t_block = student.get_submodule(block_name), teacher.get_submodule(block_name)
    fitted = {id(module) for _, module in calibration_layers(s_block)}
    params = [p for m in s_block.modules() if id(m) in fitted for p in m.parameters()]
    if not params or steps <= 0:
        return None
    with torch.no_grad():
        cached = []
        for batch in images:
            batch = batch.to(params[0].device)
            target = _capture_call(teacher, t_block, batch, "output")
            args, kwargs = _capture_call(student, s_block, batch, "input")
            if not isinstance(target, torch.Tensor):
                return None  # only tensor-valued blocks are reconstructed
            cached.append((_detach(args), _detach(kwargs), target.detach()))

    def error() -> float:
        with torch.no_grad():
            num = sum(float((s_block(*a, **k) - t).pow(2).sum()) for a, k, t in cached)
            den = sum(float(t.pow(2).sum()) for _, _, t in cached)
        return (num / max(den, 1e-30)) ** 0.5

    before = error()
    pooled = _pool(cached)
    saved = [p.detach().clone() for p in params]
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.Adam(params, lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    order = torch.Generator().manual_seed(seed)
    with torch.enable_grad():
        for _ in range(steps):
            if pooled is not None:  # a random minibatch from all the images
                picked = torch.randperm(len(pooled[1]), generator=order)[:batch_size].to(pooled[1].device)
                args, kwargs, target = tuple(a[picked] for a in pooled[0]), {}, pooled[1][picked]
            else:
                args, kwargs, target = cached[int(torch.randint(len(cached), (1,), generator=order))]
            loss = F.mse_loss(s_block(*args, **kwargs), target)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
    for p, flag in zip(params, flags):
        p.requires_grad_(flag)
    after = error()
    if after > before:  # never leave a block worse than the closed-form fit
        with torch.no_grad():
            for p, value in zip(params, saved):
                p.copy_(value)
        after = before
    return before, after


@torch.no_grad()
def refit_head(student: nn.Module, teacher: nn.Module, images: list[torch.Tensor], ridge: float = 1e-2) -> tuple[str, float, float] | None:
    """Least squares for the model's final ``Linear`` so the student's features give the teacher's outputs.

    Only done when it is the last module the model calls and there are at least twice as many
    images as the layer has inputs (else the fit would memorise the calibration images).
    Returns (name, relative error before, after), or None when skipped.
    """
    calls: list[str] = []
    names = {id(m): n for n, m in student.named_modules() if not list(m.children())}
    handles = [m.register_forward_pre_hook(lambda mod, _a: calls.append(names[id(mod)]))
               for m in student.modules() if id(m) in names]
    try:
        student(images[0][:1].to(next(student.parameters()).device))
    finally:
        for handle in handles:
            handle.remove()
    if not calls:
        return None
    name = calls[-1]
    head = student.get_submodule(name)
    t_head = dict(teacher.named_modules()).get(name)
    total = sum(len(b) for b in images)
    if not isinstance(head, nn.Linear) or not isinstance(t_head, nn.Linear) or total < 2 * head.in_features:
        return None

    def pairs():  # (student features, teacher logits) per batch
        for batch in images:
            batch = batch.to(head.weight.device)
            features = _capture_call(student, head, batch, "input")[0][0].reshape(-1, head.in_features)
            yield features, _capture_call(teacher, t_head, batch, "output").reshape(-1, head.out_features)

    def error() -> float:
        squared = energy = 0.0
        for features, target in pairs():
            squared += float((head(features) - target).pow(2).sum())
            energy += float(target.pow(2).sum())
        return (squared / max(energy, 1e-30)) ** 0.5

    before = error()
    xx = xy = None
    for features, target in pairs():
        rows = features.double().cpu()
        if head.bias is not None:
            rows = torch.cat([rows, rows.new_ones(len(rows), 1)], 1)
        xx = rows.T @ rows if xx is None else xx + rows.T @ rows
        xy = rows.T @ target.double().cpu() if xy is None else xy + rows.T @ target.double().cpu()
    solution = _solve(xx, xy, ridge).T
    if head.bias is not None:
        head.bias.copy_(solution[:, -1].to(head.bias))
        solution = solution[:, :-1]
    head.weight.copy_(solution.to(head.weight))
    return name, before, error()


@torch.no_grad()
def reestimate_batchnorm(model: nn.Module, images: Sequence[torch.Tensor]) -> int:
    """Recompute every BatchNorm's running mean/var on ``images`` (exact averages); returns how many."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not norms:
        return 0
    saved = [(m.momentum, m.training) for m in norms]
    flags = {m: m.training for m in model.modules()}
    model.eval()
    device = next(model.parameters()).device
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches
        m.train()
    try:
        for batch in images:
            model(batch.to(device))
    finally:
        for m, (momentum, _) in zip(norms, saved):
            m.momentum = momentum
        for m, training in flags.items():
            m.train(training)
    return len(norms)


def calibrate(
    student: nn.Module,
    teacher: nn.Module,
    data: Any,
    *,
    samples: int = 512,
    batch_size: int = 64,
    pipeline: Any = None,
    positions_per_image: int = 256,
    ridge: float = 1e-3,
    regroup: bool = True,
    bn_reestimate: bool = False,
    block_steps: int = 600,
    block_lr: float = 3e-3,
    block_batch_size: int = 16,
    head: bool = True,
    seed: int = 0,
    progress: ProgressCallback | None = None,
) -> CalibrationResult:
    """Fit ``student``'s ghost modules to ``teacher``'s conv outputs on ``data``, in place (module docstring).

    ``student`` is a model converted from ``teacher`` (same layer names). ``data``: a DataLoader,
    Dataset, image tensor, folder path or list of folder paths (labels are not needed); at most
    ``samples`` images are used. ``pipeline`` (``ghostify.data.InputPipeline``) is needed for paths.
    ``block_steps``: Adam steps of block-wise reconstruction per block (0 = closed form only), each
    on ``block_batch_size`` images drawn from all of them;
    ``head``: refit the final Linear; ``bn_reestimate``: recompute BatchNorm statistics afterwards
    (off: on CIFAR ResNet-20 it undid most of the gain, 63 % -> 26 % agreement on val/).
    Returns per-layer (and per-block) relative output errors before and after.
    """
    from .data import InputPipeline, batches

    start = time.perf_counter()
    layers = calibration_layers(student)
    skipped = uncalibrated_layers(student)
    if not layers:
        if skipped:
            kinds = sorted({f"GhostConv{student.get_submodule(name).spatial_dims}d" for name in skipped})
            raise GhostifyError(
                f"calibration fits 1-D and 2-D ghost modules (GhostConv1d, GhostConv2d); this model's {len(skipped)} ghost module(s) "
                f"are {' and '.join(kinds)} (converted Conv3d layers), which it cannot fit. They keep their "
                "data-free start: distill the model instead (ghostify.distill with a Dataset of its inputs)."
            )
        if any(is_paper_variant(m) for m in student.modules()):
            raise GhostifyError("the paper-bn-relu ghost modules are not linear, so they cannot be calibrated; distill the model instead.")
        raise GhostifyError("the student has no ghost modules to calibrate; convert the model first (ghostify.convert).")
    teacher = base_form(teacher, get_plan(student))  # re-parameterisable blocks fused, as in the student
    check_teacher_fits(student, teacher, [name for name, _ in layers])
    if pipeline is None and not isinstance(data, (torch.Tensor, torch.utils.data.Dataset, torch.utils.data.DataLoader)):
        pipeline = InputPipeline.for_model(teacher)
    images = batches(data, pipeline, batch_size=batch_size, limit=samples)
    flags = {m: m.training for m in (*student.modules(), *teacher.modules())}
    student.eval(), teacher.eval()
    result = CalibrationResult(images=sum(len(b) for b in images), skipped=skipped)
    try:
        called = called_modules(student, teacher, inputs=images[0][:1])
        order = {name: index for index, name in enumerate(called)}
        teacher_modules = dict(teacher.named_modules())
        layers = sorted(layers, key=lambda item: order.get(item[0], len(order)))
        blocks = reconstruction_blocks(student, [name for name, _ in layers], called) if block_steps > 0 else []
        # a block is reconstructed right after its last ghost layer is fitted, before later layers see its output
        last_layer = {}
        for block in blocks:
            inside = [name for name, _ in layers if name == block or name.startswith(block + ".")]
            last_layer.setdefault(inside[-1], []).append(block)
        group_of = _residual_group_of(student)
        # one grouping per residual group, from all its layers' original outputs (else each layer regroups alone)
        shared = _shared_assignments(student, teacher, images, group_of, positions_per_image, seed) if regroup else {}
        for index, (name, ghost) in enumerate(layers):
            if progress is not None:
                progress(name, index, len(layers))
            result.layers.append(_calibrate_layer(
                name, ghost, teacher_modules[name], student, teacher, images,
                positions_per_image=positions_per_image, ridge=ridge, regroup=regroup, seed=seed + index,
                assignment=shared.get(group_of.get(name)),
            ))
            for block in last_layer.get(name, []):
                errors = _reconstruct_block(block, student, teacher, images, steps=block_steps, lr=block_lr,
                                            batch_size=block_batch_size, seed=seed + index)
                if errors is not None:
                    result.blocks.append(BlockReconstruction(block, *errors))
        if head:
            result.head = refit_head(student, teacher, images)
        if bn_reestimate:
            result.bn_reestimated = reestimate_batchnorm(student, images)
    finally:
        for module, training in flags.items():
            module.training = training
    if progress is not None:
        progress("done", len(layers), len(layers))
    result.seconds = time.perf_counter() - start
    return result


def _residual_group_of(student: nn.Module) -> dict[str, str]:
    """``{ghost module: its residual group's owner}`` when the conversion shares channel orders, else empty."""
    plan = get_plan(student)
    if plan is None or not plan.config.shared_residual_order:
        return {}
    groups = order_groups(student, plan.config.share_across_shortcuts)
    return {name: owner for owner, names in groups.items() for name in names}


@torch.no_grad()
def _shared_assignments(student: nn.Module, teacher: nn.Module, images: list[torch.Tensor], group_of: dict[str, str],
                        positions_per_image: int, seed: int) -> dict[str, ChannelAssignment]:
    """``{owner: assignment}``: the joint grouping of each residual group, from the squared correlations of
    its layers' original outputs (one pass of the teacher over the images)."""
    if not group_of:
        return {}
    generator = torch.Generator().manual_seed(seed)
    stats = {name: _LayerStats() for name in group_of}

    def record(name: str) -> Callable[..., None]:
        def hook(_module: nn.Module, _args: tuple, output: torch.Tensor) -> None:
            flat = output.flatten(2)
            keep = _sample_positions(flat.shape[2], positions_per_image, generator)
            stats[name].add_targets(_rows(flat, keep).cpu())
        return hook

    handles = [teacher.get_submodule(name).register_forward_hook(record(name)) for name in group_of]
    try:
        for batch in images:
            teacher(batch.to(next(teacher.parameters()).device))
    finally:
        for handle in handles:
            handle.remove()
    shared = {}
    for owner in set(group_of.values()):
        names = [name for name, group in group_of.items() if group == owner]
        ratio = student.get_submodule(owner).ratio
        shared[owner] = joint_assignment([stats[name].correlation().pow(2) for name in names], ratio)
    return shared
