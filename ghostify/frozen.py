"""A model run as one flat FX graph per input shape, for eager CPU inference (``freeze``).

In eager PyTorch every module call costs Python time: ``nn.Module.__call__``, the containers, the checks
a deploy form's ghost module makes before it takes its packed path (``prepacked.FastPath``). Where the
convs are small that is a large share: CIFAR ResNet-56's deploy form at batch 1 spends about 10 us of
Python on each ghost module beside its 45 us of oneDNN calls, and every ghost module adds a call where
the original had one conv. ``freeze`` traces the model once with ``torch.fx`` and, for each input shape
it is called with, builds a ``GraphModule`` of it in which

- each ghost module of a deploy form that takes the packed path is written out as the ops it runs: its
  two oneDNN calls on weights packed for that shape, the folded shift added in place, the concatenation
  and, where it gathers, the column selection (``_Expansion``);
- so is each large conv the deploy form runs on packed weights (``prepacked.PrepackedConv2d``);
- what a folded BatchNorm left (``nn.Identity``) is gone, and the containers are inlined by tracing;
- a sum or a ReLU of a new tensor that nothing else reads is made in place (``_in_place``).

The graph's first op fetches what the others read (``_Constants``): packed weights, made again when the
weight they came from has been written to or replaced (its version is checked, as ``PackedCall.current``
does), and the model's own biases, shifts and channel indices. So it computes exactly what the model
computes. Changing the model's *structure* (replacing a submodule) needs a new ``freeze``. Anything the
graphs are not for runs the model as it is: training mode, a gradient to keep, several inputs or keyword
arguments, tracing, scripting, ``torch.compile`` and ``torch.export`` (which then see the plain model), or
the packed path switched off.
"""

from __future__ import annotations

import math
import operator
import threading
import warnings
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import torch
from torch import fx, nn
from torch.nn import functional as F
from torch.fx.passes.shape_prop import ShapeProp

from . import prepacked
from .deploy import ChannelOrderAdapter, DeployedGhostConv2d, gather_channels, scatter_pays
from .errors import ConfigError
from .graph_pass import trace

GRAPHS_KEPT = prepacked.SHAPES_KEPT  # input shapes whose graphs one frozen model keeps
_LEAVES = (DeployedGhostConv2d, ChannelOrderAdapter)


class _Constants:
    """What a frozen graph's ops read besides their inputs, in one list the graph fetches once per call
    (``values``): tensors of the model read as they are (biases, shifts, channel indices) and values made
    from one of them (packed weights), made again when it has been written to or replaced since."""

    __slots__ = ("_values", "_sources", "_states", "_makers")

    def __init__(self) -> None:
        self._values: list[Any] = []
        self._sources: list[torch.Tensor] = []
        self._states: list[tuple] = []
        self._makers: list[tuple[int, Callable[[], Any]]] = []

    def add(self, value: Any) -> int:
        """The slot of ``value`` in ``values``."""
        self._values.append(value)
        return len(self._values) - 1

    def add_made(self, source: torch.Tensor, make: Callable[[], Any]) -> int:
        """The slot of ``make()``, made again whenever ``source`` changes."""
        self._sources.append(source)
        self._states.append(prepacked.weight_state(source))
        self._makers.append((len(self._values), make))
        return self.add(make())

    def values(self) -> list[Any]:
        states = [prepacked.weight_state(source) for source in self._sources]
        if states != self._states:
            for (slot, make), before, now in zip(self._makers, self._states, states):
                if now != before:
                    self._values[slot] = make()
            self._states = states
        return self._values


class _Expansion:
    """Writes a deploy form's packed convs into a graph as the ops they run (``expand``), reading packed
    weights and parameters from one ``_Constants`` call at the start of the graph."""

    def __init__(self, graph: fx.Graph) -> None:
        self.graph, self.constants = graph, _Constants()
        first = next(node for node in graph.nodes if node.op != "placeholder")
        with graph.inserting_before(first):
            self.values = graph.call_function(self.constants.values, (), name="frozen_constants")

    def constant(self, value: Any) -> fx.Node:
        return self.graph.call_function(operator.getitem, (self.values, self.constants.add(value)))

    def conv(self, conv: nn.Conv2d, input_shape: torch.Size, source: fx.Node, name: str) -> fx.Node:
        """``conv(source)`` as one call on its weights packed for ``input_shape``."""
        slot = self.constants.add_made(conv.weight, lambda: prepacked.packed_weight(conv, input_shape))
        packed = self.graph.call_function(operator.getitem, (self.values, slot))
        bias = None if conv.bias is None else self.constant(conv.bias)
        return self.graph.call_function(prepacked.pointwise_conv, (source, packed, bias, *prepacked.call_arguments(conv)),
                                        name=name)

    def ghost(self, module: DeployedGhostConv2d, input_shape: torch.Size, intrinsic_shape: torch.Size,
              source: fx.Node, name: str) -> fx.Node:
        """``module(source)``: its two packed convs, then its assembly (``_assemble_inference``) as ops; a
        large gathered output (``deploy.scatter_pays``) is left to the module's own assembly."""
        intrinsic = self.conv(module.primary, input_shape, source, f"{name}_primary")
        ghosts = self.conv(module.cheap, intrinsic_shape, intrinsic, f"{name}_cheap")
        out_values = math.prod(intrinsic_shape) // intrinsic_shape[1] * module.out_channels
        if module.out_index is not None and scatter_pays(out_values):
            return self.graph.call_function(module._assemble_inference, (intrinsic, ghosts), name=name)
        if module.shifted:
            intrinsic = self.graph.call_method("add_", (intrinsic, self.constant(module.intrinsic_shift.view(-1, 1, 1))))
        if module.out_index is not None:
            maps = self.graph.call_function(torch.cat, ([intrinsic, ghosts], 1))
            return self.graph.call_function(gather_channels, (maps, self.constant(module.out_index)), name=name)
        kept = module.out_channels - module.intrinsic_channels
        if module.cheap.out_channels != kept:
            ghosts = self.graph.call_function(operator.getitem, (ghosts, (slice(None), slice(None, kept))))
        return self.graph.call_function(torch.cat, ([intrinsic, ghosts], 1), name=name)

    def expand(self, module: nn.Module, node: fx.Node) -> fx.Node | None:
        """The ops ``module`` runs at ``node`` on packed weights (as its eager forward would), inserted before
        ``node``; None where it takes no packed path."""
        source = node.args[0] if len(node.args) == 1 and not node.kwargs else None
        if not (isinstance(source, fx.Node) and "tensor_meta" in source.meta and "tensor_meta" in node.meta):
            return None
        meta = source.meta["tensor_meta"]
        if not isinstance(meta.shape, torch.Size) or len(meta.shape) != 4:
            return None
        name = f"{node.name}_packed"
        with self.graph.inserting_before(node):
            if isinstance(module, DeployedGhostConv2d):
                x = _probe(meta, module.primary.weight.device)
                out_shape = node.meta["tensor_meta"].shape
                intrinsic = torch.empty(out_shape[0], module.intrinsic_channels, *out_shape[2:], device=x.device,
                                        dtype=x.dtype, memory_format=torch.channels_last)
                if prepacked.applies(module.primary, x) and prepacked.applies(module.cheap, intrinsic):
                    return self.ghost(module, x.shape, intrinsic.shape, source, name)
            elif type(module) is prepacked.PrepackedConv2d and module.weight.numel() >= prepacked.PACK_FROM_WEIGHTS:
                x = _probe(meta, module.weight.device)
                if prepacked.applies(module, x):
                    return self.conv(module, x.shape, source, name)
        return None

    def finish(self) -> None:
        if not self.values.users:
            self.graph.erase_node(self.values)


def _probe(meta: Any, device: torch.device) -> torch.Tensor:
    """An uninitialised tensor with the shape, strides and dtype ``ShapeProp`` recorded."""
    return torch.empty_strided(tuple(meta.shape), tuple(meta.stride), dtype=meta.dtype, device=device)


def flat_graph(model: nn.Module, x: torch.Tensor) -> fx.GraphModule:
    """``model`` as one FX graph for inputs like ``x`` (see the module docstring); runs ``model`` on ``x`` once."""
    graph = trace(model, leaves=_LEAVES)
    flat = fx.GraphModule(model, graph)
    with torch.no_grad():
        ShapeProp(flat).propagate(x)
    expansion = _Expansion(graph)
    fresh: set[fx.Node] = set()  # nodes that return a new tensor
    for node in list(graph.nodes):
        if node.op != "call_module":
            continue
        module = flat.get_submodule(node.target)
        if type(module) is nn.Identity and len(node.args) == 1 and not node.kwargs:
            node.replace_all_uses_with(node.args[0])
            graph.erase_node(node)
            continue
        out = expansion.expand(module, node)
        if out is not None:
            out.meta = node.meta
            node.replace_all_uses_with(out)
            graph.erase_node(node)
            fresh.add(out)
    expansion.finish()
    _in_place(graph, fresh)
    graph.lint()
    flat.delete_all_unused_submodules()
    flat.recompile()
    return flat


def _in_place(graph: fx.Graph, fresh: set[fx.Node]) -> None:
    """``a + b`` as ``a.add_(b)`` and ``relu(a)`` as ``a.relu_()`` where ``a`` is a new tensor (a packed call's
    output, or such a sum or activation made in place) that nothing else reads, of the result's shape, strides
    and dtype. Tracing turns a residual ``x += shortcut`` into ``x + shortcut``, which on large maps costs a
    new output tensor each time (ResNet-50, batch 16: 3 ms per add, about 50 ms a forward)."""
    for node in list(graph.nodes):
        if node.op != "call_function" or not node.args:
            continue
        if node.target in (operator.add, operator.iadd, torch.add) and len(node.args) == 2 and not node.kwargs:
            method = "add_"
        elif node.target in (torch.relu, F.relu) and len(node.args) == 1 and not node.kwargs.get("inplace", False) \
                and set(node.kwargs) <= {"inplace"}:
            method = "relu_"
        else:
            continue
        first = node.args[0]
        if not (first in fresh and len(first.users) == 1 and "tensor_meta" in node.meta and "tensor_meta" in first.meta):
            continue
        before, after = first.meta["tensor_meta"], node.meta["tensor_meta"]
        if before.shape == after.shape and before.dtype == after.dtype and before.stride == after.stride:
            with graph.inserting_before(node):
                in_place = graph.call_method(method, tuple(node.args))
                in_place.meta = node.meta
            node.replace_all_uses_with(in_place)
            graph.erase_node(node)
            fresh.add(in_place)


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
