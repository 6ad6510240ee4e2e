"""The deploy form of a converted model: BatchNorm folded in, no channel gather at run time.

A trained ``GhostConv2d`` computes ``cat([primary(x), cheap(primary(x))])`` and then gathers the
channels back into the order of the conv it replaced (``out_index``), so that the BatchNorm and
the layers after it see the channels they were trained on. For inference both extra passes can
go (``deploy``):

- **BatchNorm folding.** A BatchNorm right after a ghost module is folded into it: its scale into
  the primary conv (and, divided out again, into the cheap conv, which then still reads exactly
  what it was trained on), its shift into the cheap conv's bias for the ghost maps and, for the
  intrinsic maps, added to them once the cheap conv has read them (``intrinsic_shift``). The shift
  cannot go into the primary's bias: the cheap conv pads its input with zeros, and a shifted input
  would need padding with the shift instead.
- **Channel order folding.** The ghost module's output is left in its natural order (intrinsic
  maps, then ghosts) and the permutation is moved into what reads it: through per-channel ops
  (BatchNorm, activations, dropout, depthwise convs, whose per-channel parameters are permuted;
  pools) into the input channels of the next dense convs, or after a global pool the input
  features of a Linear head. At an add or a product (a residual shortcut, a squeeze-excite gate)
  the other operand joins the order: the conv that makes it permutes its output channels, a ghost
  module gathers straight into the order instead of the original one. Where the original order
  is needed (a concatenation, the model output), the module keeps its gather, unless the op sits
  in a submodule that can gather once for the whole region (``ChannelOrderAdapter``: an option-A
  shortcut's channel pad). Ghost modules added into one residual stream need no gather either when
  they share one channel assignment (``GhostConfig.shared_residual_order``, the default;
  ``channel_order``). ``fold_plan`` finds these regions.
- **Channels-last weights** (``to_channels_last``): the whole network then runs NHWC, where
  depthwise convs and the concatenations are much cheaper on CPU than in NCHW. Run eagerly on
  CPU, a ghost module sends its channels_last input straight to oneDNN, where PyTorch would pick
  its native conv for small inputs and reorder them first (ResNet-56, batch 1: 10 % faster on one
  thread, 1 % on two).
- **Prepacked weights** (``prepacked``): in eager float32 inference on the CPU (no gradient), the
  primary and cheap convs run on weights packed once into oneDNN's layout instead of reordered on
  every call, and so do the large convs a channels_last deploy form keeps (``PrepackedConv2d``);
  ResNet-50 at batch 1: 36.8 -> 30.5 ms. A ghost module keeps its two packed calls for the input
  shape it last ran on (``prepacked.FastPath``), so a serving loop skips the per-call checks and
  look-ups (about 10 us of Python per module; ``ghostify.freeze`` removes the rest of the per-module
  Python by running the deploy form as one flat graph). A module that must gather selects the channels
  of a channels_last output as columns of its (pixels, channels) matrix (``gather_channels``), or for
  large maps writes each map straight to its channel (``scatter_channels``): ``index_select`` on the
  channel dim would return NCHW.

All of them are exact: deploy and train forms agree within floating-point rounding. ``deploy`` records
what it did (``DeployRecord``) so that ``ghostify.save`` / ``load`` rebuild the same structure.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from . import prepacked
from .errors import ConfigError
from .fold_plan import is_norm_act, norm_scale_shift, plan_folds
from .ghost_module import GhostConv2d, intrinsic_channels, mirror_conv_geometry
from .graph_pass import copy_model
from .records import RecordKind
from .selection import PLAN_ATTRIBUTE, get_plan

DEPLOY_ATTRIBUTE = "ghostify_deploy"
_FAST_PATH = "_ghostify_fast_path"  # a DeployedGhostConv2d's prepacked.FastPath, beside its state_dict
DEPLOY_RECORD_VERSION = 3  # 2: channels_last (records of version 1 were made without it); 3: adapters
DEPLOY_RECORD = RecordKind("deploy record", "version", DEPLOY_RECORD_VERSION, oldest=1)
# A gathered output of this many values (2 MB of float32) or more is written by ``scatter_channels``,
# below it by ``gather_channels`` after a concatenation: 1.3-2.9x faster on CIFAR-sized maps at batch 1
# and 16 (``benchmarks/gather.py``, 2 threads). Above it the concatenation is a second large buffer, which
# costs up to 5x where the allocator returns it to the system between calls; the scatter needs one.
SCATTER_FROM = 1 << 19

class DeployedGhostConv2d(nn.Module):
    """Inference form of a ``GhostConv2d`` (see the module docstring); same inputs, same outputs.

    ``gather``: whether the output is gathered back into the original channel order (``out_index``)
    or left as ``cat([intrinsic, ghosts])`` for consumers whose weights were permuted to match.
    ``shifted``: ``intrinsic_shift`` is not all zero (a folded BatchNorm's shift of the intrinsic maps).
    """

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int | tuple[int, int], *,
        stride: int | tuple[int, int] = 1, padding: int | tuple[int, int] | str = 0,
        dilation: int | tuple[int, int] = 1, padding_mode: str = "zeros", ratio: int = 2, dw_size: int = 3,
        gather: bool = True, shifted: bool = False,
        device: torch.device | str | None = None, dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        m = intrinsic_channels(out_channels, ratio)
        self.in_channels, self.out_channels, self.ratio, self.dw_size = in_channels, out_channels, ratio, dw_size
        self.primary = nn.Conv2d(in_channels, m, kernel_size, stride=stride, padding=padding, dilation=dilation,
                                 bias=True, padding_mode=padding_mode, **factory)
        self.cheap = nn.Conv2d(m, m * (ratio - 1), dw_size, padding=dw_size // 2, groups=m, bias=True, **factory)
        mirror_conv_geometry(self, self.primary)
        self.register_buffer("intrinsic_shift", torch.zeros(m, **factory))
        self.shifted = shifted
        self.register_buffer("out_index", torch.arange(out_channels, device=device) if gather else None)

    @property
    def gather(self) -> bool:
        """Whether the output is gathered into the original channel order (else it keeps its natural order)."""
        return self.out_index is not None

    @property
    def intrinsic_channels(self) -> int:
        return self.primary.out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_scripting():  # TorchScript skips this block (and what only it calls)
            if prepacked.eager_call(x):
                fast = self.__dict__.get(_FAST_PATH)
                if fast is not None and fast.serves(x):
                    primary, cheap = fast.calls
                    intrinsic = primary(x)
                    return self._assemble_inference(intrinsic, cheap(intrinsic))
                intrinsic = self._primary_eager(x)
                ghosts = prepacked.conv2d(self.cheap, intrinsic)
                if not (intrinsic.requires_grad or ghosts.requires_grad):
                    if prepacked.applies(self.primary, x) and prepacked.applies(self.cheap, intrinsic):
                        self.__dict__[_FAST_PATH] = prepacked.FastPath(x.shape, (
                            prepacked.PackedCall(self.primary, x.shape), prepacked.PackedCall(self.cheap, intrinsic.shape)))
                    return self._assemble_inference(intrinsic, ghosts)
                return self._assemble(intrinsic, ghosts)
        intrinsic = self.primary(x)
        return self._assemble(intrinsic, self.cheap(intrinsic))

    def _assemble_inference(self, intrinsic: torch.Tensor, ghosts: torch.Tensor) -> torch.Tensor:
        """``_assemble`` with no gradient to keep: the shift is added to the intrinsic maps in place (the
        cheap conv has read them), and a channels_last output is gathered as rows (``gather_channels``)
        or, when large, written map by map straight to its channels (``scatter_channels``)."""
        if self.shifted:
            intrinsic.add_(self.intrinsic_shift.view(-1, 1, 1))
        if self.out_index is None:
            if ghosts.shape[1] != self.out_channels - intrinsic.shape[1]:
                ghosts = ghosts[:, :self.out_channels - intrinsic.shape[1]]
            return torch.cat([intrinsic, ghosts], dim=1)
        if not _is_channels_last(intrinsic):
            return self._assemble(intrinsic, ghosts, shift=False)
        if scatter_pays(intrinsic.numel() // intrinsic.shape[1] * self.out_channels):
            positions = self.output_positions(intrinsic.shape[1] + ghosts.shape[1])
            if positions is not None:
                return scatter_channels(intrinsic, ghosts, positions)
        return gather_channels(torch.cat([intrinsic, ghosts], dim=1), self.out_index)

    def _assemble(self, intrinsic: torch.Tensor, ghosts: torch.Tensor, shift: bool = True) -> torch.Tensor:
        """The intrinsic (plus their shift, if ``shift``) and ghost maps concatenated, gathered if asked."""
        m = intrinsic.shape[1]
        if not self.gather and ghosts.shape[1] != self.out_channels - m:
            ghosts = ghosts[:, :self.out_channels - m]
        if shift and self.shifted:
            intrinsic = intrinsic + self.intrinsic_shift.view(-1, 1, 1)
        out = torch.cat([intrinsic, ghosts], dim=1)
        return out if self.out_index is None else out.index_select(1, self.out_index)

    def output_positions(self, maps: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Where each intrinsic and each ghost map goes in the gathered output (``out_index`` inverted);
        None unless ``out_index`` uses each of the ``maps`` maps exactly once."""
        index = self.out_index
        key = (index.data_ptr(), None if index.is_inference() else index._version)
        cached = self.__dict__.get("_positions")
        if cached is None or cached[0] != key:
            positions = None
            if maps == self.out_channels and torch.equal(index.sort().values, torch.arange(maps, device=index.device)):
                inverse = torch.argsort(index)
                m = self.intrinsic_channels
                positions = (inverse[:m].contiguous(), inverse[m:].contiguous())
            cached = self.__dict__["_positions"] = (key, positions)
        return cached[1]

    def _primary_eager(self, x: torch.Tensor) -> torch.Tensor:
        """``self.primary(x)``, straight to oneDNN for a channels_last float32 input on CPU: on weights
        packed once (``prepacked``) when no gradient is needed, else reordered on each call as usual.

        On small inputs (batch 1 under ~20k values, or 1x1 convs on one thread) PyTorch picks its
        native conv, which first copies a channels_last input to NCHW and returns NCHW: on CIFAR-sized
        maps the copies cost as much as the conv, and the layers after it switch the layout back.
        """
        conv = self.primary
        if prepacked.applies(conv, x):
            return prepacked.packed_conv2d(conv, x)
        if (x.device.type == "cpu" and x.dtype == torch.float32 and _is_channels_last(x) and conv.padding_mode == "zeros"
                and isinstance(conv.padding, tuple) and torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled):
            return torch.mkldnn_convolution(x, conv.weight, conv.bias, conv.padding, conv.stride, conv.dilation, 1)
        return conv(x)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"ratio={self.ratio}, dw_size={self.dw_size}, gather={self.gather}")

    @classmethod
    def empty_like(cls, ghost: GhostConv2d, *, gather: bool, shifted: bool = False) -> DeployedGhostConv2d:
        """A deploy module with ``ghost``'s geometry, device and dtype (weights to be filled in)."""
        weight = ghost.primary.weight
        return cls(
            ghost.in_channels, ghost.out_channels, ghost.primary.kernel_size, stride=ghost.primary.stride,
            padding=ghost.primary.padding, dilation=ghost.primary.dilation, padding_mode=ghost.primary.padding_mode,
            ratio=ghost.ratio, dw_size=ghost.dw_size, gather=gather, shifted=shifted,
            device=weight.device, dtype=weight.dtype,
        )


def _is_channels_last(x: torch.Tensor) -> bool:
    return x.dim() == 4 and x.shape[1] > 1 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


def gather_channels(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``x.index_select(1, index)``, keeping a channels_last tensor channels_last (``index_select`` returns NCHW):
    there it selects columns of the (pixels, channels) matrix, 1.3-2.9x faster than two ``index_copy_`` into an
    empty output on CIFAR- and ResNet-50-sized maps, and 2-7x faster than selecting along the last dim of
    the NHWC view (2 threads, channels_last float32)."""
    if _is_channels_last(x):
        n, _, h, w = x.shape
        rows = x.permute(0, 2, 3, 1).reshape(-1, x.shape[1])
        return rows.index_select(1, index).view(n, h, w, -1).permute(0, 3, 1, 2)
    return x.index_select(1, index)


def scatter_pays(values: int) -> bool:
    """Whether a gathered output of ``values`` values is written by ``scatter_channels`` (else ``gather_channels``)."""
    return values >= SCATTER_FROM


def scatter_channels(intrinsic: torch.Tensor, ghosts: torch.Tensor, positions: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """``cat([intrinsic, ghosts], 1)`` gathered into the order whose inverse is ``positions`` (where each
    intrinsic and each ghost map goes), written in one pass, each map straight to its channel of a
    channels_last output: for maps of ``SCATTER_FROM`` values and more, where concatenating first costs more."""
    size = list(intrinsic.shape)
    size[1] = positions[0].numel() + positions[1].numel()
    out = torch.empty(size, dtype=intrinsic.dtype, device=intrinsic.device, memory_format=torch.channels_last)
    out.index_copy_(1, positions[0], intrinsic)
    return out.index_copy_(1, positions[1], ghosts)


class ChannelOrderAdapter(nn.Module):
    """A submodule of the user's model that needs the original channel order (an option-A shortcut's channel
    pad), inside a region that carries another (``fold_plan.Boundary``): its input is gathered back into the
    original order (``input_index``) and/or its output into the region's (``output_index``), one gather where
    the region would otherwise need one per ghost module. ``inner`` is the submodule, unchanged."""

    def __init__(self, inner: nn.Module, input_channels: int = 0, output_channels: int = 0) -> None:
        super().__init__()
        self.inner = inner
        self.gathers_input, self.gathers_output = input_channels > 0, output_channels > 0
        self.register_buffer("input_index", torch.arange(input_channels))
        self.register_buffer("output_index", torch.arange(output_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gathers_input:
            x = gather_channels(x, self.input_index)
        out = self.inner(x)
        if self.gathers_output:
            out = gather_channels(out, self.output_index)
        return out

    def extra_repr(self) -> str:
        return f"input_channels={self.input_index.numel()}, output_channels={self.output_index.numel()}"


@dataclass
class DeployedLayer:
    """What ``deploy`` did to one ghost module: the BatchNorm folded into it and whether it still gathers."""

    name: str
    folded_norm: str | None
    gather: bool
    shifted: bool = False  # the folded BN shifts its intrinsic maps
    reasons: list[str] = field(default_factory=list)  # why the BN was not folded / the gather kept

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "folded_norm": self.folded_norm, "gather": self.gather, "shifted": self.shifted,
                "reasons": list(self.reasons)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DeployedLayer:
        return cls(str(data["name"]), data.get("folded_norm"), bool(data["gather"]), bool(data.get("shifted", False)),
                   [str(r) for r in data.get("reasons", [])])


@dataclass
class DeployRecord:
    """Every ghost module ``deploy`` turned into a ``DeployedGhostConv2d``; saved in the recipe."""

    layers: list[DeployedLayer]
    channels_last: bool = False  # 4-D weights stored channels_last (``to_channels_last``)
    version: int = DEPLOY_RECORD_VERSION
    adapters: dict[str, tuple[int, int]] = field(default_factory=dict)  # ChannelOrderAdapter: name -> channels in, out

    @property
    def gathers(self) -> int:
        return sum(layer.gather for layer in self.layers)

    @property
    def folded_norms(self) -> int:
        return sum(layer.folded_norm is not None for layer in self.layers)

    def summary(self) -> str:
        n = len(self.layers)
        if n == 0:
            return "deploy form: nothing to fold (no ghost modules)"
        adapted = sum(bool(cin) + bool(cout) for cin, cout in self.adapters.values())
        return (f"deploy form: {self.folded_norms} of {n} BatchNorms folded, "
                f"{n - self.gathers} of {n} channel gathers folded into the next layers"
                + (f" ({adapted} gathered at the boundary of {', '.join(self.adapters)} instead)" if adapted else "")
                + (", channels_last" if self.channels_last else ""))

    def to_dict(self) -> dict[str, Any]:
        return {"version": self.version, "layers": [layer.to_dict() for layer in self.layers],
                "channels_last": self.channels_last,
                "adapters": [{"name": name, "input_channels": cin, "output_channels": cout}
                             for name, (cin, cout) in self.adapters.items()]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DeployRecord:
        DEPLOY_RECORD.version_of(data, error=ConfigError)
        adapters = {str(item["name"]): (int(item["input_channels"]), int(item["output_channels"]))
                    for item in data.get("adapters", [])}
        return cls([DeployedLayer.from_dict(item) for item in data["layers"]], bool(data.get("channels_last", False)),
                   adapters=adapters)


def get_deploy_record(model: nn.Module) -> DeployRecord | None:
    """What ``deploy`` did to ``model``, or None for a model that is not in deploy form."""
    return getattr(model, DEPLOY_ATTRIBUTE, None)


# ---------------------------------------------------------------------------------------------------
# Applying: fill the deploy modules and permute what reads them.


@torch.no_grad()
def _deployed_module(ghost: GhostConv2d, norm: nn.BatchNorm2d | None, gather: bool) -> DeployedGhostConv2d:
    """The deploy module equal to ``norm(ghost(x))`` (or ``ghost(x)``), its output in natural order unless ``gather``."""
    deployed = DeployedGhostConv2d.empty_like(ghost, gather=gather)
    m, ratio = ghost.intrinsic_channels, ghost.ratio
    weight = ghost.primary.weight
    scale = torch.ones(m * ratio, device=weight.device, dtype=torch.float64)
    shift = torch.zeros_like(scale)
    if norm is not None:  # per natural position: the BN parameters of the channel placed there
        a, b = norm_scale_shift(norm)
        scale[ghost.out_index] = a.double()
        shift[ghost.out_index] = b.double()
    a_intr, b_intr = scale[:m], shift[:m]
    a_ghost, b_ghost = scale[m:], shift[m:]
    primary_bias = ghost.primary.bias.double() if ghost.primary.bias is not None else torch.zeros_like(a_intr)
    cheap_bias = ghost.cheap.bias.double() if ghost.cheap.bias is not None else torch.zeros_like(a_ghost)
    deployed.primary.weight.copy_(ghost.primary.weight.double() * a_intr[:, None, None, None])
    deployed.primary.bias.copy_(primary_bias * a_intr)
    source_scale = a_intr.repeat_interleave(ratio - 1)
    deployed.cheap.weight.copy_(ghost.cheap.weight.double() * (a_ghost / source_scale)[:, None, None, None])
    deployed.cheap.bias.copy_(cheap_bias * a_ghost + b_ghost)
    deployed.intrinsic_shift.copy_(b_intr)
    deployed.shifted = bool(b_intr.any())
    if gather:
        deployed.out_index.copy_(ghost.out_index)
    return deployed


def _natural_order(ghost: GhostConv2d) -> torch.Tensor:
    """``order[p]``: the original channel a non-gathering deploy module puts at position ``p``."""
    return torch.argsort(ghost.out_index)


@torch.no_grad()
def _permute_per_channel(module: nn.Module, order: torch.Tensor) -> None:
    for name in ("weight", "bias", "running_mean", "running_var"):
        tensor = getattr(module, name, None)
        if isinstance(tensor, torch.Tensor) and tensor.dim() >= 1 and tensor.shape[0] == order.numel():
            tensor.copy_(tensor[order.to(tensor.device)])


@torch.no_grad()
def _permute_inputs(module: nn.Module, order: torch.Tensor) -> None:
    conv = module.primary if isinstance(module, (GhostConv2d, DeployedGhostConv2d)) else module
    conv.weight.copy_(conv.weight[:, order.to(conv.weight.device)])


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


def _norm_replacement(norm: nn.Module) -> nn.Module:
    """What stays of a folded BatchNorm: nothing, or timm BatchNormAct2d's dropout and activation."""
    if is_norm_act(norm):
        return nn.Sequential(norm.drop, norm.act)
    return nn.Identity()


def to_channels_last(model: nn.Module) -> nn.Module:
    """Store ``model``'s 4-D parameters and buffers channels_last (NHWC), in place; returns it.

    A conv with channels_last weights gives a channels_last output even for an NCHW input, so from
    the first conv on the whole network runs NHWC (oneDNN's native layout on CPU; tensor-core
    friendly on GPU). Unlike ``model.to(memory_format=...)`` it leaves 5-D tensors (Conv3d) alone.
    """
    for module in model.modules():
        for tensors in (module._parameters, module._buffers):
            for tensor in tensors.values():
                if tensor is not None and tensor.dim() == 4:
                    tensor.data = tensor.data.contiguous(memory_format=torch.channels_last)
    return model


def deploy(model: nn.Module, *, fold_norms: bool = True, fold_order: bool = True, channels_last: bool = True) -> nn.Module:
    """A copy of converted ``model`` in deploy form (see the module docstring); ``model`` is untouched.

    The result is for inference: its BatchNorms are folded, so training it further changes the math.
    ``fold_norms`` / ``fold_order``: fold the BatchNorms / the channel gathers (both by default).
    ``channels_last``: store the 4-D weights NHWC (``to_channels_last``; default). ResNet-50, 2-core
    CPU: the deploy form runs 1.2x (batch 1) to 1.35x (batch 16) faster with it, the original 1.05-1.3x.
    """
    if get_deploy_record(model) is not None or any(isinstance(m, DeployedGhostConv2d) for m in model.modules()):
        raise ConfigError("the model is already in deploy form.")
    if get_plan(model) is None and not any(type(m) is GhostConv2d for m in model.modules()):
        raise ConfigError("the model has no ghost modules to deploy; convert it first (ghostify.convert).")
    deployed = copy_model(model).eval()
    folds = plan_folds(deployed, fold_norms, fold_order)
    modules = dict(deployed.named_modules())
    layers = []
    orders: dict[str, torch.Tensor] = {}  # ghost -> the channel order its region carries
    adapter_orders: dict[str, list[torch.Tensor | None]] = {}  # submodule -> [input index, output index]
    for fold in folds:
        if fold.spreads:
            orders[fold.ghost] = order = _natural_order(modules[fold.ghost])
            for name in fold.adapted_inputs:
                adapter_orders.setdefault(name, [None, None])[0] = torch.argsort(order)
            for name in fold.adapted_outputs:
                adapter_orders.setdefault(name, [None, None])[1] = order
            for name in fold.passthrough:
                _permute_per_channel(modules[name], order)
            for name in fold.consumers:
                _permute_inputs(modules[name], order)
            for name in fold.producers:
                _permute_per_channel(modules[name], order)  # a conv's weight and bias, by output channel
            for name in fold.gathered_into:
                orders[name] = order
    for fold in folds:
        ghost = modules[fold.ghost]
        gather = fold.ghost not in orders
        if fold.order_owner is not None:  # its natural order is the region's, or it gathers into that order
            into_region = ghost.out_index[orders[fold.ghost].to(ghost.out_index.device)]
            gather = not torch.equal(into_region, torch.arange(len(into_region), device=into_region.device))
        norm = modules[fold.norm] if fold.norm is not None else None
        replacement = _deployed_module(ghost, norm, gather)
        if fold.order_owner is not None and gather:  # gather straight into the order of the region it feeds
            replacement.out_index.copy_(into_region)
            fold.reasons.append(f"gathers into the channel order of {fold.order_owner}, whose region it joins "
                                "(convert with shared_residual_order to give them one)")
        if norm is not None:
            _set_module(deployed, fold.norm, _norm_replacement(norm))
        _set_module(deployed, fold.ghost, replacement)
        layers.append(DeployedLayer(fold.ghost, fold.norm, gather, replacement.shifted, fold.reasons))
    adapters = {name: tuple(0 if index is None else index.numel() for index in indices)
                for name, indices in adapter_orders.items()}
    _add_adapters(deployed, adapters)
    with torch.no_grad():
        for name, indices in adapter_orders.items():
            adapter = deployed.get_submodule(name)
            for index, buffer in zip(indices, (adapter.input_index, adapter.output_index)):
                if index is not None:
                    buffer.copy_(index)
    plan = get_plan(model)
    if plan is not None:
        setattr(deployed, PLAN_ATTRIBUTE, plan)
    channels_last = channels_last and bool(layers)
    if channels_last:
        _for_cpu_inference(deployed)
    setattr(deployed, DEPLOY_ATTRIBUTE, DeployRecord(layers, channels_last, adapters=adapters))
    return deployed


def _add_adapters(model: nn.Module, adapters: dict[str, tuple[int, int]]) -> None:
    """Wrap each named submodule in a ``ChannelOrderAdapter`` (the deepest first, so that the names still resolve)."""
    device = next(model.parameters()).device if adapters else None
    for name in sorted(adapters, key=lambda name: -name.count(".")):
        _set_module(model, name, ChannelOrderAdapter(model.get_submodule(name), *adapters[name]).to(device))


def _for_cpu_inference(model: nn.Module) -> None:
    """Weights channels_last, and the convs kept as they were on prepacked weights where they are large
    (``prepacked.PrepackedConv2d``; the ghost modules' convs pack in any case)."""
    to_channels_last(model)
    prepacked.prepack_convs_(model, skip=(DeployedGhostConv2d,))


def apply_deploy_record(model: nn.Module, record: DeployRecord) -> None:
    """Give converted ``model`` the structure ``record`` describes (weights are loaded afterwards)."""
    for layer in record.layers:
        ghost = model.get_submodule(layer.name)
        if type(ghost) is not GhostConv2d:
            raise ConfigError(f"the deploy record names {layer.name}, which is not a ghost module in this model.")
        if layer.folded_norm is not None:
            _set_module(model, layer.folded_norm, _norm_replacement(model.get_submodule(layer.folded_norm)))
        _set_module(model, layer.name, DeployedGhostConv2d.empty_like(ghost, gather=layer.gather, shifted=layer.shifted))
    _add_adapters(model, record.adapters)
    if record.channels_last:  # loading copies the weights into these tensors, keeping their layout
        _for_cpu_inference(model)
    setattr(model, DEPLOY_ATTRIBUTE, record)
