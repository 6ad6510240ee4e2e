"""Where a deploy form's channel permutations go: the regions of tensors that can carry a ghost module's order.

A ghost module's output is cheapest left in its natural order (intrinsic maps, then ghosts). That order
can spread over a *region* of tensors: per-channel ops (BatchNorm, activations, depthwise convs, pools,
spatial slicing) pass it on with their parameters permuted; the dense convs (and, after a global pool, the
Linear layers) that read the region absorb it into their input channels; at an add or a product every
operand joins the region, back to the convs that make them (which permute their output channels; a ghost
module among them gathers straight into the order unless it shares the assignment), and whatever else
reads those operands joins too (the first conv of the next block reading a residual stream).

Where the region meets an op that needs the original order (a channel pad, a concatenation) the region
would fail and every ghost module in it would gather its output. If that op sits inside a submodule with
one tensor in and one out (an option-A shortcut: subsample, then pad the channels), the submodule is
adapted instead (``ChannelOrderAdapter`` in ``deploy``): one gather at its input back to the original
order, or at its output into the region's, where the region would need one per ghost module. An adapter
is used only where it saves gathers: where the ghost modules of the region share one channel assignment
(``GhostConfig.share_across_shortcuts``; CIFAR ResNet-56: 4 gathers at its two shortcuts instead of 27).

``plan_folds`` plans every ghost module of a model; ``deploy`` applies the plan.
"""

from __future__ import annotations

import heapq
import operator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import fx, nn
from torchvision.ops import StochasticDepth, stochastic_depth

from .ghost_module import GhostConv2d
from .graph_pass import trace  # trace keeps convs and ghost modules whole

# Ops that act on each channel alone and keep the channel axis where it is: a channel permutation
# passes through them unchanged (the parameter-free ones) or with their parameters permuted.
# (Stochastic depth scales whole samples: torchvision's EfficientNet and ConvNeXt blocks end with it.)
_ELEMENTWISE_MODULES = (
    nn.ReLU, nn.ReLU6, nn.SiLU, nn.GELU, nn.Hardswish, nn.Hardsigmoid, nn.Sigmoid, nn.Tanh, nn.LeakyReLU,
    nn.ELU, nn.Mish, nn.Identity, nn.Dropout, nn.Dropout2d, nn.Hardtanh, nn.Softplus, StochasticDepth,
)
_ELEMENTWISE_FUNCTIONS = {
    F.relu, torch.relu, F.relu6, F.silu, F.gelu, F.hardswish, F.hardsigmoid, F.leaky_relu, torch.sigmoid,
    F.sigmoid, torch.tanh, F.tanh, F.dropout, F.mish, F.elu, F.hardtanh, torch.relu_, F.relu_, stochastic_depth,
}
_ELEMENTWISE_METHODS = {"relu", "relu_", "sigmoid", "sigmoid_", "tanh", "tanh_", "contiguous", "clone"}

@dataclass
class Fold:
    """The plan for one ghost module: the BatchNorm folded into it and, when its order spreads (its region), what
    the region permutes. ``reasons``: why a BN is not folded or the output still gathered."""

    ghost: str
    norm: str | None
    passthrough: list[str]  # modules whose per-channel parameters are permuted
    consumers: list[str]  # modules whose input channels (Linear: input features) are permuted
    reasons: list[str]
    producers: list[str] = field(default_factory=list)  # convs whose output channels are permuted
    gathered_into: list[str] = field(default_factory=list)  # ghost modules that gather into this order
    order_owner: str | None = None  # the ghost whose order this module gathers into (set by that one's fold)
    adapted_inputs: list[str] = field(default_factory=list)  # submodules whose input is gathered back (``Boundary``)
    adapted_outputs: list[str] = field(default_factory=list)  # submodules whose output is gathered into the order

    @property
    def spreads(self) -> bool:
        """Whether the ghost's natural order spreads beyond it (else it gathers, or nothing reads it)."""
        return bool(self.consumers or self.gathered_into or self.producers or self.adapted_inputs or self.adapted_outputs)

def _call_counts(graph: fx.Graph) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            counts[node.target] = counts.get(node.target, 0) + 1
    return counts


def norm_scale_shift(norm: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """``a, b`` such that ``norm(y) == a * y + b`` per channel in eval mode."""
    scale = torch.rsqrt(norm.running_var + norm.eps)
    if norm.weight is not None:
        scale = scale * norm.weight
    shift = -norm.running_mean * scale
    if norm.bias is not None:
        shift = shift + norm.bias
    return scale.detach(), shift.detach()


def _foldable_norm(module: nn.Module) -> bool:
    """A BatchNorm2d (timm's BatchNormAct2d included) whose eval-mode transform is per-channel affine."""
    if not isinstance(module, nn.BatchNorm2d) or module.running_var is None or module.running_mean is None:
        return False
    if type(module) is nn.BatchNorm2d:
        return True
    return is_norm_act(module)


def is_norm_act(module: nn.Module) -> bool:
    """timm's BatchNormAct2d: BN, then dropout and an activation that are both elementwise."""
    act, drop = getattr(module, "act", None), getattr(module, "drop", None)
    return (type(module).__name__ == "BatchNormAct2d" and isinstance(act, _ELEMENTWISE_MODULES)
            and isinstance(drop, _ELEMENTWISE_MODULES))


def _per_channel_module(module: nn.Module) -> bool:
    """Modules a channel permutation passes through when their per-channel parameters are permuted."""
    if _foldable_norm(module):
        return True
    if isinstance(module, _ELEMENTWISE_MODULES):
        return True
    if isinstance(module, nn.PReLU):
        return True
    return (type(module) is nn.Conv2d and module.groups == module.in_channels == module.out_channels)


def _dense_consumer(module: nn.Module) -> bool:
    """Modules that read all input channels through a weight whose input axis can be permuted."""
    if type(module) is nn.Conv2d and module.groups == 1:
        return True
    return type(module) is GhostConv2d and module.primary.groups == 1


def _describe(node: fx.Node, modules: dict[str, nn.Module]) -> str:
    """What a graph node does, for a reason: ``a residual add (add_2)``, ``AdaptiveAvgPool2d global_pool``."""
    if node.op == "call_module":
        return f"{type(modules[node.target]).__name__} {node.target}"
    if node.target in (operator.add, operator.iadd, torch.add):
        return f"a residual add ({node.name})"
    if node.target in (operator.mul, operator.imul, torch.mul):
        return f"a product ({node.name}, e.g. squeeze-excite)"
    name = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", str(node.target))
    return f"{name} ({node.name})"


_BINARY_FUNCTIONS = {operator.add, operator.iadd, torch.add, operator.mul, operator.imul, torch.mul}
_BINARY_METHODS = {"add", "add_", "mul", "mul_"}


def _is_elementwise(node: fx.Node) -> bool:
    return (node.op == "call_function" and node.target in _ELEMENTWISE_FUNCTIONS
            or node.op == "call_method" and node.target in _ELEMENTWISE_METHODS)


def _is_binary(node: fx.Node) -> bool:
    return (len(node.all_input_nodes) == 2 and (node.op == "call_function" and node.target in _BINARY_FUNCTIONS
                                              or node.op == "call_method" and node.target in _BINARY_METHODS))


def _pooled_layout(node: fx.Node, module: nn.Module | None, layout: str) -> str | None:
    """The layout after a global pool or flatten (``pooled``: N,C,1,1; ``flat``: N,C), None if ``node`` is neither."""
    if module is not None:
        if isinstance(module, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)) and module.output_size in (1, (1, 1)):
            return "pooled"
        if type(module).__name__ == "SelectAdaptivePool2d" and getattr(module, "pool_type", "") in ("avg", "max", "avgmax"):
            return "flat" if isinstance(module.flatten, nn.Flatten) else "pooled"
        if isinstance(module, nn.Flatten) and module.start_dim == 1 and layout == "pooled":
            return "flat"
        return None
    dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
    if node.op == "call_function" and node.target in (F.adaptive_avg_pool2d, F.adaptive_max_pool2d):
        size = dims if len(node.args) > 1 else node.kwargs.get("output_size")
        return "pooled" if layout == "map" and size in (1, (1, 1), [1, 1]) and len(node.kwargs) <= 1 else None
    if node.op == "call_method" and node.target == "mean" and isinstance(dims, (tuple, list)) and tuple(dims) in ((2, 3), (-2, -1)):
        return "pooled" if node.kwargs.get("keepdim", False) else "flat"
    flatten = (node.op == "call_function" and node.target is torch.flatten) or (node.op == "call_method" and node.target == "flatten")
    if flatten and layout == "pooled" and (tuple(node.args[1:]) == (1,) and not node.kwargs
                                           or len(node.args) == 1 and node.kwargs == {"start_dim": 1}):
        return "flat"
    return None


def _shared_with_parameters(node: fx.Node, module: nn.Module | None, calls: dict[str, int]) -> bool:
    """A module called more than once whose parameters a permutation would change for every call.
    (A parameter-free elementwise module, such as torchvision's one ReLU per block, is no obstacle.)"""
    return module is not None and calls.get(node.target, 0) != 1 and not isinstance(module, _ELEMENTWISE_MODULES)


def _norm_to_fold(node: fx.Node, modules: dict[str, nn.Module], calls: dict[str, int]) -> tuple[str | None, str | None]:
    """The BatchNorm right after ghost module ``node`` that can be folded into it, or why not (None, None: no BN)."""
    users = list(node.users)
    if len(users) != 1 or users[0].op != "call_module" or len(users[0].all_input_nodes) != 1:
        return None, None
    name, norm = users[0].target, modules[users[0].target]
    if not _foldable_norm(norm):
        if isinstance(norm, nn.modules.batchnorm._NormBase):
            return None, f"{name} ({type(norm).__name__}) is not a BatchNorm it can fold"
        return None, None
    if calls[name] != 1:
        return None, f"{name} runs more than once"
    if bool((norm_scale_shift(norm)[0].abs() < 1e-12).any()):
        return None, f"{name} has zero scales (BN weight 0), which cannot be folded"
    return name, None



def _is_channel_slice(node: fx.Node) -> bool:
    """``x[:, :, a:b:s, ...]``: spatial slicing, which keeps every channel where it is."""
    if node.op != "call_function" or node.target is not operator.getitem or len(node.args) != 2:
        return False
    index = node.args[1]
    full = slice(None, None, None)
    return (isinstance(index, tuple) and 2 <= len(index) <= 4 and index[0] == full and index[1] == full
            and all(isinstance(item, slice) for item in index))


def _has_channel_parameters(module: nn.Module | None) -> bool:
    """A module passing the order on whose per-channel parameters must be permuted (not an activation or pool)."""
    return module is not None and not isinstance(module, (_ELEMENTWISE_MODULES, nn.MaxPool2d, nn.AvgPool2d))


def _passes_order_on(node: fx.Node, module: nn.Module | None, state: str) -> bool:
    """Single-input ops that keep each channel where it is, so a tensor in the region stays in it."""
    if module is not None:
        if isinstance(module, _ELEMENTWISE_MODULES):
            return True
        return state != "flat" and (_per_channel_module(module) or (state == "map" and isinstance(module, (nn.MaxPool2d, nn.AvgPool2d))))
    return _is_elementwise(node) or (state == "map" and _is_channel_slice(node))


@dataclass(frozen=True)
class Boundary:
    """A submodule (called once, no ghost module inside) that reads one tensor and makes one: a region can
    gather into and out of it (``ChannelOrderAdapter``) instead of failing at an op inside that needs the
    original order."""

    name: str
    input: fx.Node
    output: fx.Node
    members: frozenset[fx.Node]


def _boundary_around(node: fx.Node, graph: fx.Graph, modules: dict[str, nn.Module]) -> Boundary | None:
    """The innermost submodule call around ``node`` that can be a ``Boundary``, if any."""
    stack = node.meta.get("nn_module_stack") or {}
    for path, _ in reversed(list(stack.values())):
        if not path or path not in modules:
            continue
        members = frozenset(n for n in graph.nodes
                            if any(entry[0] == path for entry in (n.meta.get("nn_module_stack") or {}).values()))
        inputs = {a for n in members for a in n.all_input_nodes if a not in members}
        outputs = [n for n in members if any(user not in members for user in n.users)]
        ghosts = any(type(module) is GhostConv2d for module in modules[path].modules())  # (a leaf module's too)
        if len(inputs) == 1 and len(outputs) == 1 and not ghosts:
            return Boundary(path, next(iter(inputs)), outputs[0], members)
    return None


@dataclass
class _Graph:
    graph: fx.Graph
    modules: dict[str, nn.Module]
    calls: dict[str, int]
    order: dict[fx.Node, int]
    folded_norms: set[str]  # BatchNorms folded into ghost modules: not permuted, the fold reads them


class _Region:
    """One walk over the tensors that can carry ``start``'s channel order (see the module docstring).

    Users are visited in graph order, so that both operands of an add or product that come from the region
    are in it when the add is reached; an operand that is not joins it (``_join``). ``run`` returns None
    when the whole region can carry the order, else why not and the node where it could not.
    """

    def __init__(self, context: _Graph, start: fx.Node, claimed: set[str], boundaries: dict[str, Boundary]) -> None:
        self.context, self.claimed, self.boundaries = context, claimed, boundaries
        self.found = Fold("", None, [], [], [])
        self.layout: dict[fx.Node, str] = {}
        self.heap: list[tuple[int, fx.Node]] = []
        self._add(start, "map")

    def _add(self, node: fx.Node, state: str) -> None:
        self.layout[node] = state
        for user in node.users:
            boundary = next((b for b in self.boundaries.values() if user in b.members), None)
            if boundary is None:
                heapq.heappush(self.heap, (self.context.order[user], user))
            elif boundary.name not in self.found.adapted_inputs:  # it reads the boundary's input, gathered back
                self.found.adapted_inputs.append(boundary.name)

    def _module(self, node: fx.Node) -> nn.Module | None:
        return self.context.modules.get(node.target) if node.op == "call_module" else None

    def run(self) -> tuple[str, fx.Node] | None:
        while self.heap:
            _, node = heapq.heappop(self.heap)
            if node not in self.layout:
                failure = self._visit(node)
                if failure is not None:
                    return failure
        return None

    def _visit(self, node: fx.Node) -> tuple[str, fx.Node] | None:
        """``node`` reads a tensor of the region: absorb the order, pass it on, or say why not."""
        state = next(self.layout[a] for a in node.all_input_nodes if a in self.layout)
        if node.op == "output":
            return "its output is a model output", node
        module, graph = self._module(node), self.context
        if _shared_with_parameters(node, module, graph.calls):
            return f"{node.target} runs more than once", node
        single = len(node.all_input_nodes) == 1
        if single and module is not None and state != "flat" and _dense_consumer(module):
            self.found.consumers.append(node.target)
            return None
        if single and type(module) is nn.Linear and state == "flat":
            self.found.consumers.append(node.target)
            return None
        pooled = _pooled_layout(node, module, state) if single else None
        if pooled is not None:
            state = pooled
        elif single and _passes_order_on(node, module, state):
            if _has_channel_parameters(module):
                self.found.passthrough.append(node.target)
        elif _is_binary(node) and state != "flat":
            for other in node.all_input_nodes:
                failure = self._join(other)
                if failure is not None:
                    return f"{_describe(node, graph.modules)} needs the original channel order ({failure[0]})", failure[1]
            state = "map" if "map" in [self.layout.get(a, "map") for a in node.all_input_nodes] else state
        else:
            return f"{_describe(node, graph.modules)} needs the original channel order", node
        self._add(node, state)
        return None

    def _join(self, node: fx.Node) -> tuple[str, fx.Node] | None:
        """Make ``node`` (an operand of an add or product) come in the region's order: back through per-channel
        ops and adds to the convs that make it, which permute their outputs (a ghost module: gather into the
        order), or to a ``Boundary``'s output. Whatever else reads the tensors on the way joins the region too."""
        if node in self.layout:
            return None
        for boundary in self.boundaries.values():
            if node is boundary.output:
                self.found.adapted_outputs.append(boundary.name)
                self._add(node, "map")
                return None
        module = self._module(node)
        if _shared_with_parameters(node, module, self.context.calls):
            return f"{node.target} runs more than once", node
        if module is not None and (type(module) is nn.Conv2d and module.groups == 1 or type(module) is GhostConv2d):
            if module.out_channels == 1:  # broadcast over channels: any order will do
                return None
            if node.target in self.claimed:
                return f"{node.target} already serves another channel order", node
            self.claimed.add(node.target)
            (self.found.gathered_into if type(module) is GhostConv2d else self.found.producers).append(node.target)
            self._add(node, "map")
            return None
        if len(node.all_input_nodes) == 1 and _passes_order_on(node, module, "map"):
            if _has_channel_parameters(module) and node.target not in self.context.folded_norms:
                self.found.passthrough.append(node.target)
            self._add(node, "map")
            return self._join(node.all_input_nodes[0])
        if _is_binary(node):
            self._add(node, "map")
            for operand in node.all_input_nodes:
                failure = self._join(operand)
                if failure is not None:
                    return failure
            return None
        return f"{node.name} is not made by a conv", node


def _walk_region(context: _Graph, owner: GhostConv2d, start: fx.Node, claimed: set[str], weigh_adapters: bool,
                 ) -> tuple[Fold, set[str], str | None]:
    """The region of ``start`` (``owner``'s output, or its folded BN's), its claimed convs, or why it fails.
    Where it fails inside a submodule that can be a ``Boundary``, walk again with that boundary; with
    ``weigh_adapters``, a region whose adapters would gather as often as it saves fails too."""
    boundaries: dict[str, Boundary] = {}
    first_failure = None
    while True:
        taken = set(claimed)
        region = _Region(context, start, taken, boundaries)
        failure = region.run()
        if failure is None:
            break
        first_failure = first_failure or failure[0]
        boundary = _boundary_around(failure[1], context.graph, context.modules)
        if boundary is None or boundary.name in boundaries:
            return region.found, claimed, failure[0]
        boundaries[boundary.name] = boundary
    found = region.found
    adapters = len(found.adapted_inputs) + len(found.adapted_outputs)
    sharing = [name for name in found.gathered_into if torch.equal(context.modules[name].out_index, owner.out_index)]
    if weigh_adapters and adapters >= 1 + len(sharing):  # each adapter gathers once: worth it only where it saves more
        names = ", ".join(found.adapted_inputs + found.adapted_outputs)
        return found, claimed, (f"{first_failure}; {adapters} gather(s) at the boundary of {names} instead "
                                "would save no more")
    return found, taken, None


def plan_folds(model: nn.Module, fold_norms: bool = True, fold_order: bool = True, *, weigh_adapters: bool = True,
               ) -> list[Fold]:
    """The plan for every ghost module of ``model`` (``GhostConv2d``): the BN to fold into it and its region.
    ``weigh_adapters=False``: every region that adapters make possible, whether or not they would pay."""
    names = [name for name, module in model.named_modules() if type(module) is GhostConv2d]
    try:
        graph = trace(model)
    except Exception as err:  # noqa: BLE001 - any tracing failure: deploy each module on its own
        reason = f"the model could not be traced ({type(err).__name__}), so nothing after it is changed"
        return [Fold(name, None, [], [], [reason]) for name in names]
    modules = dict(model.named_modules())
    calls = _call_counts(graph)
    ghost_nodes = [node for node in graph.nodes if node.op == "call_module" and type(modules.get(node.target)) is GhostConv2d]
    folds: dict[str, Fold] = {}
    norm_nodes: dict[str, fx.Node] = {}
    for node in ghost_nodes:
        fold = folds[node.target] = Fold(node.target, None, [], [], [])
        if calls[node.target] != 1:
            fold.reasons.append("it runs more than once")
            continue
        if fold_norms:
            fold.norm, reason = _norm_to_fold(node, modules, calls)
            fold.reasons += [reason] if reason else []
            if fold.norm is not None:
                norm_nodes[node.target] = next(iter(node.users))
    context = _Graph(graph, modules, calls, {node: index for index, node in enumerate(graph.nodes)},
                     {fold.norm for fold in folds.values() if fold.norm is not None})
    claimed: set[str] = set()  # ghosts and convs whose output order a region has taken
    for node in ghost_nodes:
        fold = folds[node.target]
        if not fold_order or calls[node.target] != 1 or node.target in claimed:
            continue  # (claimed: another module's region decided this one's order)
        ghost = modules[node.target]
        if int(ghost.out_index.max()) != ghost.out_channels - 1:
            fold.reasons.append("its channels leave gaps in the ghost slots (out_channels not a multiple of the ratio)")
            continue
        found, claimed_after, reason = _walk_region(context, ghost, norm_nodes.get(node.target, node),
                                                    claimed | {node.target}, weigh_adapters)
        if reason is not None:
            fold.reasons.append(reason)
            continue
        claimed = claimed_after
        for name in ("passthrough", "consumers", "producers", "gathered_into", "adapted_inputs", "adapted_outputs"):
            setattr(fold, name, getattr(found, name))
        for name in found.gathered_into:
            folds[name].order_owner = node.target
    return list(folds.values())


def residual_groups(model: nn.Module, across_shortcuts: bool = False) -> dict[str, list[str]]:
    """``{owner: [members]}``: ghost modules (``GhostConv2d``) of a converted model whose outputs are added
    into the residual stream that ``owner``'s output starts (``deploy`` gathers the members into the
    owner's order unless they share its channel assignment; ``ghostify.channel_order``). ``across_shortcuts``:
    also the streams whose region needs a ``Boundary`` adapter (``GhostConfig.share_across_shortcuts``)."""
    if not any(type(module) is GhostConv2d for module in model.modules()):
        return {}
    folds = plan_folds(model, weigh_adapters=False)  # before they share an assignment, adapters would not pay
    return {fold.ghost: list(fold.gathered_into) for fold in folds
            if fold.gathered_into and (across_shortcuts or not (fold.adapted_inputs or fold.adapted_outputs))}
