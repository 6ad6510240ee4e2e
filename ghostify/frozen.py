"""A model run as one flat FX graph per input shape, for eager CPU inference (``freeze``).

In eager PyTorch every module call costs Python time: ``nn.Module.__call__``, the containers, the checks
a deploy form's ghost module makes before it takes its packed path (``prepacked.FastPath``). Where the
convs are small that is a large share: CIFAR ResNet-56's deploy form at batch 1 spends about 10 us of
Python on each ghost module beside its 45 us of oneDNN calls, and every ghost module adds a call where
the original had one conv. ``freeze`` traces the model once with ``torch.fx`` and, for each input shape
it is called with, builds a ``GraphModule`` of it in which

- each ghost module of a deploy form that takes the packed path is its two oneDNN calls, on weights
  packed for that shape, and its assembly, called straight from the graph (``_PackedGhost``);
- so is each large conv the deploy form runs on packed weights (``prepacked.PrepackedConv2d``);
- what a folded BatchNorm left (``nn.Identity``) is gone, and the containers are inlined by tracing;
- a sum onto a packed call's output that nothing else reads is made in place (``_add_in_place``).

It computes exactly what the model computes (the same ops on the same packed weights). The graphs call
the model's own modules and parameters: a weight changed in place is packed again on the next call
(its version is checked, as ``PackedCall.current`` does). Changing the model's *structure* (replacing a
submodule) needs a new ``freeze``. Anything the graphs are not for runs the model as it is: training
mode, a gradient to keep, several inputs or keyword arguments, tracing, scripting, ``torch.compile``
and ``torch.export`` (which then see the plain model), or the packed path switched off.
"""

from __future__ import annotations

import operator
import threading
import warnings
from collections import OrderedDict
from typing import Any

import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from . import prepacked
from .deploy import ChannelOrderAdapter, DeployedGhostConv2d
from .errors import ConfigError
from .graph_pass import trace

GRAPHS_KEPT = prepacked.SHAPES_KEPT  # input shapes whose graphs one frozen model keeps
_LEAVES = (DeployedGhostConv2d, ChannelOrderAdapter)


class _PackedGhost:
    """A deploy-form ghost module's packed path for one input shape, called by a frozen graph: its two oneDNN
    calls straight away while the weights are those it packed (``stamp``), packed again when they are not.
    It holds the parameters themselves (``nn.Module`` attribute look-ups cost a microsecond each)."""

    __slots__ = ("module", "input_shape", "intrinsic_shape", "calls", "stamp")

    def __init__(self, module: DeployedGhostConv2d, input_shape: torch.Size, intrinsic_shape: torch.Size) -> None:
        self.module, self.input_shape, self.intrinsic_shape = module, input_shape, intrinsic_shape
        self._pack()

    def _pack(self) -> None:
        self.calls = _call(self.module.primary, self.input_shape), _call(self.module.cheap, self.intrinsic_shape)
        self.stamp = self._weight_states()

    def _weight_states(self) -> tuple:
        (_, primary, _, _), (_, cheap, _, _) = self.calls
        return prepacked.weight_state(primary), prepacked.weight_state(cheap)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self._weight_states() != self.stamp:
            self._pack()
        (primary, _, bias, arguments), (cheap, _, cheap_bias, cheap_arguments) = self.calls
        intrinsic = prepacked.pointwise_conv(x, primary, bias, *arguments)
        return self.module._assemble_inference(intrinsic, prepacked.pointwise_conv(intrinsic, cheap, cheap_bias, *cheap_arguments))


class _PackedConv:
    """A ``PrepackedConv2d`` 's packed path for one input shape, called by a frozen graph (a large conv: the
    ``PackedCall`` look-ups are nothing beside it)."""

    __slots__ = ("call",)

    def __init__(self, conv: nn.Conv2d, input_shape: torch.Size) -> None:
        self.call = prepacked.PackedCall(conv, input_shape)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if not self.call.current():
            self.call = prepacked.PackedCall(self.call.conv, x.shape)
        return self.call(x)


def _call(conv: nn.Conv2d, input_shape: torch.Size) -> tuple:
    """(packed weights, weight, bias, the rest of the arguments) of ``conv`` on inputs of ``input_shape``."""
    call = prepacked.PackedCall(conv, input_shape)
    return call.packed, conv.weight, conv.bias, call.arguments


def _probe(meta: Any, device: torch.device) -> torch.Tensor:
    """An uninitialised tensor with the shape, strides and dtype ``ShapeProp`` recorded."""
    return torch.empty_strided(tuple(meta.shape), tuple(meta.stride), dtype=meta.dtype, device=device)


def _packed_call(module: nn.Module, node: fx.Node) -> _PackedGhost | _PackedConv | None:
    """The packed path ``module`` takes at ``node`` (as its eager forward would), or None where it takes none."""
    source = node.args[0] if len(node.args) == 1 and not node.kwargs else None
    if not (isinstance(source, fx.Node) and "tensor_meta" in source.meta and "tensor_meta" in node.meta):
        return None
    meta = source.meta["tensor_meta"]
    if not isinstance(meta.shape, torch.Size) or len(meta.shape) != 4:
        return None
    if isinstance(module, DeployedGhostConv2d):
        x = _probe(meta, module.primary.weight.device)
        out_shape = node.meta["tensor_meta"].shape
        intrinsic = torch.empty(out_shape[0], module.intrinsic_channels, *out_shape[2:], device=x.device, dtype=x.dtype,
                                memory_format=torch.channels_last)
        if prepacked.applies(module.primary, x) and prepacked.applies(module.cheap, intrinsic):
            return _PackedGhost(module, x.shape, intrinsic.shape)
    elif type(module) is prepacked.PrepackedConv2d and module.weight.numel() >= prepacked.PACK_FROM_WEIGHTS:
        x = _probe(meta, module.weight.device)
        if prepacked.applies(module, x):
            return _PackedConv(module, x.shape)
    return None


def flat_graph(model: nn.Module, x: torch.Tensor) -> fx.GraphModule:
    """``model`` as one FX graph for inputs like ``x`` (see the module docstring); runs ``model`` on ``x`` once."""
    graph = trace(model, leaves=_LEAVES)
    flat = fx.GraphModule(model, graph)
    fresh: set[fx.Node] = set()  # the packed calls: each returns a new tensor
    with torch.no_grad():
        ShapeProp(flat).propagate(x)
    for node in list(graph.nodes):
        if node.op != "call_module":
            continue
        module = flat.get_submodule(node.target)
        if type(module) is nn.Identity and len(node.args) == 1 and not node.kwargs:
            node.replace_all_uses_with(node.args[0])
            graph.erase_node(node)
            continue
        call = _packed_call(module, node)
        if call is not None:
            with graph.inserting_before(node):
                packed = graph.create_node("call_function", call.__call__, node.args, name=f"{node.name}_packed")
                packed.meta = node.meta
            node.replace_all_uses_with(packed)
            graph.erase_node(node)
            fresh.add(packed)
    _add_in_place(graph, fresh)
    graph.lint()
    flat.delete_all_unused_submodules()
    flat.recompile()
    return flat


def _add_in_place(graph: fx.Graph, fresh: set[fx.Node]) -> None:
    """``a + b`` as ``a.add_(b)`` where ``a`` is a packed call's new output that nothing else reads, of the
    sum's shape and dtype. Tracing turns a residual ``x += shortcut`` into ``x + shortcut``, which on large maps
    costs a new output tensor each time (ResNet-50, batch 16: 3 ms per add, about 50 ms a forward)."""
    for node in list(graph.nodes):
        if not (node.op == "call_function" and node.target in (operator.add, operator.iadd, torch.add)
                and len(node.args) == 2 and not node.kwargs):
            continue
        first = node.args[0]
        if not (first in fresh and len(first.users) == 1 and "tensor_meta" in node.meta and "tensor_meta" in first.meta):
            continue
        before, after = first.meta["tensor_meta"], node.meta["tensor_meta"]
        if before.shape == after.shape and before.dtype == after.dtype and before.stride == after.stride:
            with graph.inserting_before(node):
                in_place = graph.call_method("add_", node.args)
                in_place.meta = node.meta
            node.replace_all_uses_with(in_place)
            graph.erase_node(node)


class _Graphs:
    """A frozen model's graphs by input key (the last ``GRAPHS_KEPT``; None: that input runs the model as it
    is); copies and pickles start empty, as ``prepacked.PackedWeights`` do."""

    def __init__(self) -> None:
        self.by_input: OrderedDict[tuple, fx.GraphModule | None] = OrderedDict()
        self.lock = threading.Lock()

    def __deepcopy__(self, memo: dict) -> _Graphs:
        return _Graphs()

    def __reduce__(self) -> tuple:
        return _Graphs, ()


def _input_key(x: torch.Tensor) -> tuple:
    return x.shape, x.stride(), x.dtype, x.device


class FrozenModel(nn.Module):
    """``model`` run through one flat graph per input shape where it can be (``freeze``); the same outputs.

    ``model`` is the wrapped module, unchanged (its ``state_dict`` is this module's under ``model.``).
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.train(model.training)
        self.__dict__["_graphs"] = _Graphs()

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if len(args) == 1 and not kwargs and not self.model.training:
            x = args[0]
            if prepacked.eager_call(x) and prepacked.available() and not (
                    torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in self.model.parameters()))):
                graph = self.graph_for(x)
                if graph is not None:
                    return graph.forward(x)  # its own __call__ only adds error reporting, a microsecond
        return self.model(*args, **kwargs)

    def graph_for(self, x: torch.Tensor) -> fx.GraphModule | None:
        """The graph inputs like ``x`` run on, built now if there is none yet; None if they run the model."""
        graphs = self._graphs
        key = _input_key(x)
        graph = graphs.by_input.get(key, False)
        if graph is not False:
            return graph
        with graphs.lock:
            if key not in graphs.by_input:
                while len(graphs.by_input) >= GRAPHS_KEPT:
                    graphs.by_input.popitem(last=False)
                try:
                    graphs.by_input[key] = flat_graph(self.model, x)
                except Exception as err:  # noqa: BLE001 - the model runs as it is (and says what is wrong with x)
                    warnings.warn(f"ghostify.freeze: no graph for inputs of shape {tuple(x.shape)} ({type(err).__name__}: "
                                  f"{str(err)[:200]}); they run the model as it is.", stacklevel=3)
                    graphs.by_input[key] = None
            return graphs.by_input[key]

    @property
    def graphs(self) -> list[fx.GraphModule]:
        """The graphs built so far (oldest first)."""
        return [graph for graph in self._graphs.by_input.values() if graph is not None]

    def _apply(self, fn: Any, recurse: bool = True) -> FrozenModel:  # .to(), .cuda(), .half(): rebuild for the new tensors
        self._graphs.by_input.clear()
        return super()._apply(fn, recurse)


def freeze(model: nn.Module) -> FrozenModel:
    """``model`` (a deploy form, or any model FX can trace) for fast eager inference: see the module docstring.

    The result computes what ``model`` computes and shares its modules and parameters. Freeze once the
    model's structure is final; weights changed in place later are followed. ``ghostify.save`` a deploy
    form, not its frozen wrapper, and freeze it again after loading.
    """
    if isinstance(model, FrozenModel):
        return model
    try:
        trace(model, leaves=_LEAVES)
    except Exception as err:  # noqa: BLE001 - whatever FX raised, said in one line
        first_line = (str(err).strip().splitlines() or [""])[0][:300]
        raise ConfigError(f"cannot freeze {type(model).__name__}: torch.fx cannot trace it ({type(err).__name__}: "
                          f"{first_line}). Run the model as it is (or under torch.compile).") from None
    return FrozenModel(model)
