"""The graph pass: find every conv a model runs (torch.fx), then swap in ghost modules.

Analysis traces the model with torch.fx so that it sees what ``forward`` really does: which
convs (``Conv1d``, ``Conv2d``, ``Conv3d``; transposed convs are listed and kept) are called and
how often, which one runs first (the stem), and functional ``conv1d``/``conv2d``/``conv3d``
calls that no module walk would find. timm's not-traceable modules and functions are kept as
leaves. When FX cannot trace a model (data-dependent control flow, say), analysis falls back to
walking ``named_modules()`` and says so in the plan.

The swap itself replaces modules by name on the model (or its copy), so the converted model
keeps its own class, attributes and methods; a conv registered under several names, or called
at several sites, becomes one shared ghost module.
"""

from __future__ import annotations

import ast
import copy
import functools
import inspect
import operator
import textwrap
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.nn.utils import parametrize

from .conv_equivalent import base_conv_type, computes_plain_conv, equivalent_conv
from .ghost_module import CONV_TYPES, GHOST_MODULE_TYPES, LINEAR_GHOSTS, TRANSPOSED_CONV_TYPES
from .reparameterize import already_fused, fusing_method
from .selection import ConversionPlan, ConvSite, conv_kind
from .variants import VARIANTS

# Every conv class the analysis lists: the forward convs a ghost module can replace, and the transposed ones it cannot
_CONV_MODULES: tuple[type[nn.Module], ...] = (*CONV_TYPES.values(), *TRANSPOSED_CONV_TYPES)
# functional conv -> (its name, transposed)
_FUNCTIONAL_CONVS: dict[Callable, tuple[str, bool]] = {}
for _name in ("conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d"):
    for _function in (getattr(F, _name), getattr(torch, _name)):
        _FUNCTIONAL_CONVS[_function] = (_name, _name.startswith("conv_transpose"))
del _name, _function
# Ops that mix channels: a conv behind one of them does not produce the model's output directly.
_MIXING_FUNCTIONS = {
    F.linear, F.bilinear, *_FUNCTIONAL_CONVS, torch.matmul, torch.mm,
    torch.bmm, torch.einsum, torch.addmm, torch.baddbmm, operator.matmul, F.scaled_dot_product_attention,
}
_MIXING_METHODS = {"matmul", "mm", "bmm", "__matmul__"}

def _timm_notrace() -> tuple[set[type], set[Callable]]:
    try:
        from timm.layers import get_notrace_functions, get_notrace_modules
    except ImportError:  # timm is optional for user models
        return set(), set()
    return set(get_notrace_modules()), set(get_notrace_functions())


class GhostifyTracer(fx.Tracer):
    """FX tracer that keeps convs, ghost modules and timm's not-traceable modules as leaves.

    Every conv (``Conv1d``/``2d``/``3d`` and the transposed ones) is a leaf, subclasses included (FX
    would otherwise trace into a subclass defined outside ``torch.nn`` and see only a functional
    ``conv2d`` on its weight). ``leaves``: more module types to keep whole.
    """

    def __init__(self, leaves: tuple[type[nn.Module], ...] = ()) -> None:
        leaf_modules, functions = _timm_notrace()
        super().__init__(autowrap_functions=tuple(functions))
        self._leaf_types = tuple(leaf_modules) + GHOST_MODULE_TYPES + _CONV_MODULES + tuple(leaves)

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return isinstance(m, self._leaf_types) or super().is_leaf_module(m, module_qualified_name)


def trace(model: nn.Module, leaves: tuple[type[nn.Module], ...] = ()) -> fx.Graph:
    """The FX graph of ``model``, ``leaves`` kept whole too (raises whatever FX raises when it is not traceable).

    Tracing runs ``forward`` on proxies, and a forward that caches what it computes (timm's LeViT
    stores its attention bias in a dict) would keep a proxy: every module's attributes are put
    back as they were afterwards, so analysis never changes the model it looks at.
    """
    with _attributes_restored(model):
        return GhostifyTracer(leaves).trace(model)


@contextmanager
def _attributes_restored(model: nn.Module) -> Iterator[None]:
    """Restore every module's plain attributes (and the contents of its dict/list/set attributes) on exit."""
    saved = []
    for module in model.modules():
        attributes = dict(vars(module))
        contents = {name: copy.copy(value) for name, value in attributes.items()
                    if isinstance(value, (dict, list, set)) and not name.startswith("_")}
        saved.append((module, attributes, contents))
    try:
        yield
    finally:
        for module, attributes, contents in saved:
            for name in set(vars(module)) - set(attributes):
                delattr(module, name)
            vars(module).update(attributes)
            for name, value in contents.items():  # the same container objects, their old contents
                container = attributes[name]
                container.clear()
                if isinstance(container, list):
                    container.extend(value)
                else:
                    container.update(value)


def _alias_map(model: nn.Module) -> dict[int, list[str]]:
    names: dict[int, list[str]] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        if name:
            names.setdefault(id(module), []).append(name)
    return names


def _inside_ghost(name: str, ghost_prefixes: list[str]) -> bool:
    return any(name.startswith(prefix + ".") for prefix in ghost_prefixes)


def _unsupported(conv: nn.Module) -> str | None:
    """Why a ghost module cannot stand in for ``conv`` without changing or dropping what it does; None if it can."""
    cls = type(conv).__name__
    if isinstance(conv, nn.modules.lazy.LazyModuleMixin) and conv.has_uninitialized_params():
        return f"{cls} is not initialised yet; run one forward pass before converting"
    base = base_conv_type(conv)
    if not computes_plain_conv(conv) and equivalent_conv(conv) is None:  # weight standardisation is fine
        method = "forward" if type(conv).forward is not base.forward else "_conv_forward"
        return f"{cls} overrides {base.__name__}.{method}; a ghost module would change what it computes"
    if parametrize.is_parametrized(conv):
        return "its weight is parametrized (weight_norm, spectral_norm, ...); a ghost module would drop that"
    if conv._forward_hooks or conv._forward_pre_hooks:
        return "it has forward hooks (or an old-style weight_norm); a ghost module would not run them"
    return None


def _module_site(name: str, conv: nn.Module, call_sites: int, aliases: list[str]) -> ConvSite:
    transposed = isinstance(conv, TRANSPOSED_CONV_TYPES)
    return ConvSite(
        name=name, kind="module", in_channels=conv.in_channels, out_channels=conv.out_channels,
        kernel_size=conv.kernel_size, stride=conv.stride, dilation=conv.dilation,
        groups=conv.groups, bias=conv.bias is not None, call_sites=call_sites,
        aliases=[a for a in aliases if a != name],
        unsupported=None if transposed else _unsupported(conv), transposed=transposed,
    )


def _functional_site(node: fx.Node, params: dict[str, nn.Parameter]) -> ConvSite:
    op, transposed = _FUNCTIONAL_CONVS[node.target]
    names = ("input", "weight", "bias", "stride", "padding", "output_padding", "groups", "dilation") if transposed else \
        ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
    args = dict(zip(names, node.args))
    args.update(node.kwargs)
    weight_node = args.get("weight")
    weight = params.get(weight_node.target) if isinstance(weight_node, fx.Node) and weight_node.op == "get_attr" else None
    groups = args.get("groups", 1) if isinstance(args.get("groups", 1), int) else 1
    name = f"{weight_node.target} (functional)" if weight is not None else f"{node.name} (functional)"
    shape = tuple(weight.shape) if weight is not None else None
    # a conv weight is (out, in / groups, *kernel); a transposed conv's is (in, out / groups, *kernel)
    in_channels, out_channels = ((shape[0], shape[1] * groups) if transposed else (shape[1] * groups, shape[0])) if shape else (None, None)
    return ConvSite(
        name=name, kind="functional", in_channels=in_channels, out_channels=out_channels,
        kernel_size=shape[2:] if shape else None, groups=groups, bias=args.get("bias") is not None,
        transposed=transposed, op=op,
    )


def find_conv_sites(model: nn.Module, fused: bool = False) -> tuple[list[ConvSite], str, str | None]:
    """Every conv of ``model`` in execution order, with the analysis path used and any note.

    ``fused``: ``model``'s re-parameterisable blocks were just fused (``ghostify.reparameterize``); a
    block whose ``fuse()`` works in place and returns itself still has the method, but nothing
    left to fuse, so its convs are not kept for it."""
    sites, trace_kind, note = _conv_sites(model)
    _mark_shared_weights(model, sites)
    if not fused:
        _mark_reparameterisable(model, sites)
    return sites, trace_kind, note


def _mark_reparameterisable(model: nn.Module, sites: list[ConvSite]) -> None:
    """Keep the convs of re-parameterisable blocks (RepVGG, MobileOne, FastViT) not fused yet: fusing reads their
    weights. In a fused timm block (one with a ``reparam_conv``) every conv converts, its ``reparam_conv`` and any
    other (an SE's): its ``reparameterize()`` then returns at once."""
    for site in sites:
        if site.kind != "module" or site.unsupported or site.transposed:
            continue
        parts = site.name.split(".")
        for depth in range(len(parts) - 1, -1, -1):
            block_name = ".".join(parts[:depth])
            block = model.get_submodule(block_name)
            method = fusing_method(block)
            if already_fused(block):
                break
            if method is not None:
                where = f"{block_name} ({type(block).__name__})" if block_name else type(block).__name__
                site.unsupported = (f"inside {where}, whose {method}() fuses its convs' weights; convert with "
                                    "reparameterize=True (--reparameterize) to fuse such blocks first")
                break


def _mark_shared_weights(model: nn.Module, sites: list[ConvSite]) -> None:
    """Note on each conv module whose weight Parameter another conv module also holds (tied weights)."""
    def stored_weight(conv: nn.Module) -> nn.Module:  # a parametrized weight is computed anew at each read
        return conv.parametrizations.weight if parametrize.is_parametrized(conv, "weight") else conv.weight

    weights = {site.name: id(stored_weight(model.get_submodule(site.name))) for site in sites if site.kind == "module"}
    holders: dict[int, list[str]] = {}
    for name, weight in weights.items():
        holders.setdefault(weight, []).append(name)
    for site in sites:
        if site.name in weights:
            site.shares_weight_with = ", ".join(n for n in holders[weights[site.name]] if n != site.name) or None


def _conv_sites(model: nn.Module) -> tuple[list[ConvSite], str, str | None]:
    aliases = _alias_map(model)
    modules = dict(model.named_modules())
    ghost_prefixes = [n for n, m in modules.items() if isinstance(m, GHOST_MODULE_TYPES)]
    convs = {n: m for n, m in modules.items() if isinstance(m, _CONV_MODULES) and not _inside_ghost(n, ghost_prefixes)}
    try:
        graph = trace(model)
    except Exception as err:  # FX raises many types for untraceable code; any means "fall back"
        reason = " ".join(str(err).split()) or "no message"  # whole, on one line; displays shorten it at a word
        note = f"torch.fx could not trace the model ({type(err).__name__}: {reason}); " \
               "layers were found by walking named_modules(), so call counts, the stem and the output convs are estimates"
        sites = [_module_site(n, c, 1, aliases[id(c)]) for n, c in convs.items()]
        if sites:
            sites[0].is_stem = True
        _mark_reads_in_untraced_code(model, sites, dict.fromkeys(convs, ""))
        return sites, "module", note

    params = dict(model.named_parameters(remove_duplicate=False))
    calls: dict[str, int] = {}
    order: list[tuple[str, Any]] = []
    untraced: dict[str, str] = {}  # conv -> the leaf module FX did not trace into that runs it
    for node in graph.nodes:
        if node.op == "call_module":
            # a conv, or a leaf FX did not trace into (timm's not-traceable modules): its convs run when it does
            inside = [node.target] if node.target in convs else [n for n in convs if n.startswith(f"{node.target}.")]
            for name in inside:
                if name != node.target:
                    untraced[name] = node.target
                if name not in calls:
                    order.append(("module", name))
                calls[name] = calls.get(name, 0) + 1
        elif node.op == "call_function" and node.target in _FUNCTIONAL_CONVS:
            order.append(("functional", node))
    sites = []
    for kind, item in order:
        if kind == "module":
            sites.append(_module_site(item, convs[item], calls[item], aliases[id(convs[item])]))
        else:
            sites.append(_functional_site(item, params))
    if sites:
        sites[0].is_stem = True
    outputs = _output_convs(graph, modules, convs)
    reads = [node.target for node in graph.nodes if node.op == "get_attr"]  # self.conv.weight used outside the conv
    for site in sites:
        site.is_output = site.name in outputs
        read = next((t for t in reads for n in (site.name, *site.aliases) if site.kind == "module" and t.startswith(n + ".")), None)
        if read is not None and site.unsupported is None:
            site.unsupported = f"forward also reads {read} directly; a ghost module has no such tensor"
    _mark_reads_in_untraced_code(model, sites, untraced)
    called = {id(convs[name]) for name in calls}
    for name, conv in convs.items():  # registered but never run: reported, never converted
        if id(conv) not in called:
            called.add(id(conv))
            sites.append(_module_site(name, conv, 0, aliases[id(conv)]))
    return sites, "fx", None


def _mark_reads_in_untraced_code(model: nn.Module, sites: list[ConvSite], scopes: dict[str, str]) -> None:
    """Keep each conv whose attributes code FX did not trace reads (``self.proj.weight.device`` in a leaf module).

    ``scopes`` maps a conv's name to the module whose code FX did not see ("" for the whole model). The
    source of that module and of every module between it and the conv is read (``forward`` and the
    methods it calls); an attribute of the conv that a ghost module does not have is a read that would
    fail or change meaning after conversion.
    """
    for site in sites:
        if site.kind != "module" or site.unsupported is not None or site.name not in scopes:
            continue
        scope = scopes[site.name]
        parts = site.name.split(".")
        first = len(scope.split(".")) if scope else 0
        for depth in range(first, len(parts)):
            owner = model.get_submodule(".".join(parts[:depth]))
            attribute = next((a for a in _attributes_read(type(owner), tuple(parts[depth:])) if not _ghost_answers(a)), None)
            if attribute is not None:
                site.unsupported = (f"{type(owner).__name__}.forward reads {site.name}.{attribute} (code torch.fx does not "
                                    "trace); a ghost module has no such attribute")
                break


@functools.cache
def _ghost_answers(attribute: str) -> bool:
    """Whether a ghost module has ``attribute`` as a conv does (its geometry, nn.Module's own members)."""
    with torch.random.fork_rng(devices=[]):  # building the sample module draws weights: leave the caller's RNG alone
        return hasattr(LINEAR_GHOSTS[2].like(nn.Conv2d(4, 4, 3), 2, 3), attribute)


@functools.cache
def _attributes_read(cls: type, path: tuple[str, ...]) -> tuple[str, ...]:
    """Attributes of ``self.<path>`` that ``cls.forward`` (and the methods of ``cls`` it calls) read, not counting
    calls of ``self.<path>`` itself; () when the source cannot be read (a C extension, a class made at run time)."""
    methods: dict[str, ast.FunctionDef] = {}
    for klass in reversed([k for k in cls.__mro__ if not k.__module__.startswith("torch.")]):
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError, SyntaxError):
            continue
        body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
        methods.update({f.name: f for f in body if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))})
    found: list[str] = []
    pending, visited = ["forward"], set()
    while pending:
        name = pending.pop()
        if name in visited or name not in methods:
            continue
        visited.add(name)
        for node in ast.walk(methods[name]):
            chain = _self_chain(node)
            if chain is None:
                continue
            if len(chain) > len(path) and chain[:len(path)] == path and chain[len(path)] not in found:
                found.append(chain[len(path)])
            if len(chain) == 1 and chain[0] in methods:
                pending.append(chain[0])  # self.helper(...): its reads count too
    return tuple(found)


def _self_chain(node: ast.AST) -> tuple[str, ...] | None:
    """``self.a.b.c`` as ("a", "b", "c"); None for anything else."""
    names = []
    while isinstance(node, ast.Attribute):
        names.append(node.attr)
        node = node.value
    return tuple(reversed(names)) if isinstance(node, ast.Name) and node.id == "self" and names else None


def _mixes_channels(module: nn.Module) -> bool:
    """Whether a leaf module combines channels (a weight matrix or kernel), unlike BN, activations, pooling."""
    return any(isinstance(p, nn.parameter.UninitializedParameter) or p.dim() >= 2 for p in module.parameters())


def _output_convs(graph: fx.Graph, modules: dict[str, nn.Module], convs: dict[str, nn.Module]) -> set[str]:
    """Names of the convs whose outputs reach the model's output through channel-wise ops only.

    Walks back from the graph's output through activations, BatchNorm, pooling, resizing, flattening
    and the like, and stops at anything that mixes channels (Linear, matmul, another conv): a 1x1
    classifier conv is found, a conv feeding a Linear head is not.
    """
    found: set[str] = set()
    seen: set[fx.Node] = set()
    stack = [node for node in graph.nodes if node.op == "output"]
    while stack:
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        if node.op == "call_module":
            if node.target in convs:
                found.add(node.target)
                continue
            if _mixes_channels(modules[node.target]):
                continue
        elif node.op == "call_function" and node.target in _MIXING_FUNCTIONS:
            continue
        elif node.op == "call_method" and node.target in _MIXING_METHODS:
            continue
        stack.extend(node.all_input_nodes)
    return found


def apply_plan(model: nn.Module, plan: ConversionPlan, *, transfer: bool) -> dict[str, nn.Module]:
    """Swap every layer ``plan`` converts for its ghost module, in place; records fit errors on the plan.

    Returns the plain conv each converted layer computed, by layer name.
    """
    build = VARIANTS[plan.config.variant]
    replaced: dict[str, nn.Module] = {}
    dw_size = plan.config.dw_size
    for layer in plan.converted:
        conv = model.get_submodule(layer.name)
        dims = len(layer.kernel_size) if layer.kernel_size else 2
        if not isinstance(conv, CONV_TYPES.get(dims, nn.Conv2d)):
            raise TypeError(f"{layer.name} is a {type(conv).__name__}, not the {conv_kind(dims)} the plan expects")
        plain = equivalent_conv(conv)  # a weight-standardised conv: the conv it computes
        if plain is None:
            raise TypeError(f"{layer.name} ({type(conv).__name__}) computes no plain convolution; the plan should keep it")
        ghost, fit_error = build(plain, layer.ratio, dw_size, transfer)
        if transfer:
            layer.fit_error = fit_error
        for name in (layer.name, *layer.aliases):
            model.set_submodule(name, ghost)
        replaced[layer.name] = plain
    return replaced


def _tensors_in(value: Any, depth: int = 2) -> Iterator[torch.Tensor]:
    """Tensors held by a module attribute: the value itself, or inside dicts, lists and tuples."""
    if isinstance(value, torch.Tensor):
        yield value
    elif depth > 0 and isinstance(value, dict):
        for item in value.values():
            yield from _tensors_in(item, depth - 1)
    elif depth > 0 and isinstance(value, (list, tuple)):
        for item in value:
            yield from _tensors_in(item, depth - 1)


def copy_model(model: nn.Module) -> nn.Module:
    """``copy.deepcopy(model)``, also for a model that ran a forward pass with autograd on.

    Some models cache tensors computed in forward (timm's LeViT keeps an attention-bias cache);
    such tensors carry autograd history, which ``deepcopy`` refuses ("Only Tensors created
    explicitly by the user support the deepcopy protocol"). The copy gets them detached.
    """
    memo: dict[int, Any] = {}
    for module in model.modules():
        for value in vars(module).values():
            for tensor in _tensors_in(value):
                if not tensor.is_leaf:
                    memo[id(tensor)] = tensor.detach().clone()
    return copy.deepcopy(model, memo)
