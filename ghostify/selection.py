"""Layer selection: which convs become ghost modules, at what ratio, and why the others don't.

Name patterns (``include``, ``exclude``, ``layer_ratios``) match a layer's qualified name
(``layer1.0.conv2``) in one of three ways:

* ``re:<regex>``: the regex must match the whole name;
* a glob with ``*``, ``?`` or ``[``: ``layer4.*``, ``*.downsample.0``;
* a plain name: the exact name, or a suffix after a dot (``conv1`` matches ``layer1.0.conv1``).

Every pattern must match at least one conv layer, else ``PatternMatchError``: a typo would
otherwise silently convert the wrong layers.
"""

from __future__ import annotations

import fnmatch
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar

from torch import nn

from .config import GhostConfig
from .errors import ConfigError, PatternMatchError
from .ghost_module import CONV_TYPES, intrinsic_channels
from .records import known_fields
from .variants import VARIANT_DIMS

TRANSPOSED_REASON = "transposed conv: not eligible (a ghost module is a forward conv)"


def conv_kind(dims: int | None, transposed: bool = False) -> str:
    """``"Conv2d"``, ``"ConvTranspose1d"``, ...: the conv class of a layer with ``dims`` spatial dimensions."""
    return f"Conv{'Transpose' if transposed else ''}{dims or 2}d"


SLOWER_AS_GHOST = "slower as a ghost module"  # the start of the reason --target latency gives a kept layer


def reason_kind(reason: str | None) -> str | None:
    """A kept layer's reason without its own numbers, for counting reasons (timed layers each have theirs)."""
    return SLOWER_AS_GHOST if (reason or "").startswith(SLOWER_AS_GHOST) else reason


_Layer = TypeVar("_Layer", bound="ConvSite")


def _as_list(value: Sequence[int] | None) -> list[int] | None:
    return [int(v) for v in value] if value else None


@dataclass(kw_only=True)
class ConvSite:
    """A conv found in the model, with its facts: a ``Conv1d``/``Conv2d``/``Conv3d`` (or transposed)
    module, or a functional ``conv1d``/``conv2d``/``conv3d`` (or ``conv_transpose*``) call.

    The one type for a layer: ``LayerPlan`` adds the decision for it, ``ghostify.report.LayerRow`` its
    costs before and after. Sizes are lists, as JSON gives them back.
    """

    name: str
    kind: str  # "module" or "functional"
    in_channels: int | None
    out_channels: int | None
    kernel_size: list[int] | None
    stride: list[int] | None = None
    dilation: list[int] | None = None
    groups: int = 1
    bias: bool = False
    call_sites: int = 1
    is_stem: bool = False
    is_output: bool = False  # its output reaches the model's output through channel-wise ops only
    aliases: list[str] = field(default_factory=list)
    unsupported: str | None = None  # why a ghost module cannot stand in for this module (see graph_pass)
    shares_weight_with: str | None = None  # another conv module holding the same weight Parameter
    transposed: bool = False  # a ConvTranspose module or conv_transpose call: never converted
    op: str | None = None  # a functional call's function name ("conv2d", "conv_transpose1d", ...)

    def __post_init__(self) -> None:
        self.kernel_size, self.stride, self.dilation = (
            _as_list(self.kernel_size), _as_list(self.stride), _as_list(self.dilation))
        self.aliases = list(self.aliases)

    @property
    def dims(self) -> int | None:
        """Spatial dimensions (1, 2 or 3), from the kernel; None when unknown (a functional call on a computed weight)."""
        return len(self.kernel_size) if self.kernel_size else None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls: type[_Layer], payload: Mapping[str, Any]) -> _Layer:
        """Read back ``to_dict()``; fields this version does not know are ignored (see docs/formats.md)."""
        return cls(**known_fields(cls, payload))


@dataclass(kw_only=True)
class LayerPlan(ConvSite):
    """A conv's facts and the decision for it: convert at ``ratio``, or keep it and say why (``reason``)."""

    eligible: bool  # passes the structural rules (conv type, groups, channels); convert also needs selection
    convert: bool
    ratio: int
    reason: str | None = None
    intrinsic_channels: int | None = None
    fit_error: float | None = None  # relative error of the data-free weight fit, set by convert()
    latency_ms: list[float] | None = None  # [conv, ghost module] median ms, set by plan_for_latency


@dataclass
class ConversionPlan:
    """Every conv of a model with its decision, plus how the model was analysed (``trace``)."""

    layers: list[LayerPlan]
    config: GhostConfig
    trace: str  # "fx" (torch.fx graph) or "module" (named_modules walk, when FX cannot trace)
    trace_note: str | None = None
    reparameterized: list[str] = field(default_factory=list)  # blocks fused before planning (ghostify.reparameterize)

    @property
    def converted(self) -> list[LayerPlan]:
        return [layer for layer in self.layers if layer.convert]

    @property
    def eligible(self) -> list[LayerPlan]:
        return [layer for layer in self.layers if layer.eligible]

    @property
    def skipped(self) -> list[LayerPlan]:
        return [layer for layer in self.layers if not layer.convert]

    def pattern_matches(self) -> list[PatternMatch]:
        """What each include / exclude / layer_ratios pattern of the config selected (see ``PatternMatch``)."""
        return match_patterns(self.config, [layer.name for layer in self.layers])

    def why_nothing_converted(self, most: int = 3) -> str | None:
        """None when some layer is converted; else one sentence with the commonest reasons layers were kept."""
        if self.converted:
            return None
        if not self.layers:
            return "nothing was converted: the model has no conv layer (Conv1d, Conv2d or Conv3d) and no conv call."
        counts = Counter(reason_kind(layer.reason) for layer in self.layers)
        reasons = "; ".join(f"{reason} ({n} layer{'s' if n != 1 else ''})" for reason, n in counts.most_common(most))
        more = f"; and {len(counts) - most} other reasons" if len(counts) > most else ""
        convs = f"{len(self.layers)} conv{'s' if len(self.layers) != 1 else ''}"
        return f"nothing was converted ({convs}): {reasons}{more}. `ghostify inspect MODEL` lists every conv with its reason."

    def layer(self, name: str) -> LayerPlan:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(name)

    def followed_by(self, later: ConversionPlan) -> ConversionPlan:
        """One plan for two conversions in a row (``later`` made on the model this plan converted).

        The layers this plan converted stay converted; the others take ``later``'s decision, so the
        saved recipe rebuilds both from the base model. ``ConfigError`` when the two used different
        ``dw_size`` or ``variant``, which one plan cannot record.
        """
        for name in ("dw_size", "variant"):
            first, second = getattr(self.config, name), getattr(later.config, name)
            if first != second:
                raise ConfigError(
                    f"this model was already converted with {name}={first!r}; converting it again with {name}={second!r} "
                    "cannot be recorded in one plan. Convert the original model once, with layer_ratios for per-layer ratios."
                )
        decided = {layer.name: layer for layer in later.layers}
        layers = [layer if layer.convert else decided.pop(layer.name, layer) for layer in self.layers]
        seen = {layer.name for layer in layers}
        layers += [layer for name, layer in decided.items() if name not in seen]
        return ConversionPlan(layers=layers, config=later.config, trace=later.trace, trace_note=later.trace_note,
                              reparameterized=[*self.reparameterized, *later.reparameterized])

    def base_model_mismatch(self, model: nn.Module) -> str | None:
        """Why ``model`` is not the unconverted model this plan was made for (None if it is).

        Every converted layer must be a conv of the recorded class (``Conv1d``/``Conv2d``/``Conv3d``, from
        the recorded kernel) and shape at the recorded name.
        """
        for layer in self.converted:
            try:
                conv = model.get_submodule(layer.name)
            except AttributeError:
                conv = None
            dims = len(layer.kernel_size) if layer.kernel_size else 2
            found = (getattr(conv, "in_channels", None), getattr(conv, "out_channels", None))
            if not isinstance(conv, CONV_TYPES.get(dims, nn.Conv2d)) or found != (layer.in_channels, layer.out_channels):
                what = "nothing" if conv is None else f"a {type(conv).__name__} {found[0]}->{found[1]}"
                return f"layer {layer.name} should be a {conv_kind(dims)} {layer.in_channels}->{layer.out_channels}, found {what}"
        return None

    def to_dict(self) -> dict[str, Any]:
        return {
            "config": self.config.to_dict(),
            "trace": self.trace,
            "trace_note": self.trace_note,
            "reparameterized": list(self.reparameterized),
            "layers": [layer.to_dict() for layer in self.layers],
        }

    @classmethod
    def from_dict(cls, payload: dict[str, Any]) -> ConversionPlan:
        return cls(
            layers=[LayerPlan.from_dict(layer) for layer in payload["layers"]],
            config=GhostConfig.from_dict(payload["config"]),
            trace=payload["trace"],
            trace_note=payload.get("trace_note"),
            reparameterized=[str(name) for name in payload.get("reparameterized") or []],
        )


@dataclass(frozen=True)
class PatternMatch:
    """The layers one ``include`` / ``exclude`` / ``layer_ratios`` pattern selects, and how it matched them."""

    option: str
    pattern: str
    kind: str  # "regex", "glob", "exact" or "suffix" (a plain name matching some layer only as a dotted suffix)
    layers: tuple[str, ...]

    def describe(self, shown: int = 8) -> str:
        """``exclude 'conv1' matches 17 layers by name suffix: conv1, layer1.0.conv1, ...; ...``"""
        names = ", ".join(self.layers[:shown]) + (", ..." if len(self.layers) > shown else "")
        how = {"regex": "as a regex", "glob": "as a glob", "exact": "by exact name", "suffix": "by name suffix"}[self.kind]
        text = f"{self.option} {self.pattern!r} matches {len(self.layers)} layer{'s' if len(self.layers) != 1 else ''} {how}: {names}"
        if self.kind == "suffix":
            exact = "only the layer named exactly " + repr(self.pattern) if self.pattern in self.layers else "one layer exactly"
            text += f" (a plain name also matches as a dotted suffix; to match {exact}, write 're:{re.escape(self.pattern)}')"
        return text


def pattern_kind(pattern: str) -> str:
    """How ``pattern`` is read: "regex" (``re:``), "glob" (``*``, ``?``, ``[``) or "name" (exact or dotted suffix)."""
    if pattern.startswith("re:"):
        return "regex"
    return "glob" if any(ch in pattern for ch in "*?[") else "name"


def pattern_matches(pattern: str, name: str) -> bool:
    """Whether ``pattern`` (regex, glob or plain name, see module docstring) selects layer ``name``."""
    kind = pattern_kind(pattern)
    if kind == "regex":
        return re.fullmatch(pattern[3:], name) is not None
    if kind == "glob":
        return fnmatch.fnmatchcase(name, pattern)
    return name == pattern or name.endswith("." + pattern)


def _rules(config: GhostConfig) -> list[tuple[str, list[str]]]:
    return [("include", list(config.include)), ("exclude", list(config.exclude)),
            ("layer_ratios", [p for p, _ in config.layer_ratios])]


def match_patterns(config: GhostConfig, names: Sequence[str]) -> list[PatternMatch]:
    """Every pattern of ``config`` with the layers among ``names`` it selects, in option order."""
    matches = []
    for option, patterns in _rules(config):
        for pattern in patterns:
            layers = tuple(name for name in names if pattern_matches(pattern, name))
            kind = pattern_kind(pattern)
            if kind == "name":
                kind = "exact" if layers == (pattern,) else "suffix"
            matches.append(PatternMatch(option, pattern, kind, layers))
    return matches


def _check_patterns(config: GhostConfig, names: Sequence[str]) -> None:
    for pattern in (*config.include, *config.exclude, *(p for p, _ in config.layer_ratios)):
        if pattern.startswith("re:"):
            try:
                re.compile(pattern[3:])
            except (re.error, OverflowError, RecursionError) as err:  # "a{99999999999}", deeply nested groups
                raise ConfigError(f"invalid regular expression in pattern {pattern!r}: {err}") from None
    sample = ", ".join(names[:12]) + (", ..." if len(names) > 12 else "")
    for match in match_patterns(config, names):
        if not match.layers:
            raise PatternMatchError(
                f"{match.option} pattern {match.pattern!r} matches no conv layer. Conv layers in this model: "
                f"{sample or '(none)'}. Use a full name, a suffix such as 'conv1', a glob such as "
                f"'layer4.*', or 're:<regex>'; `ghostify inspect MODEL` lists every layer."
            )


def _ineligible_reason(site: ConvSite, ratio: int, config: GhostConfig, variant_dims: Sequence[int] = (1, 2, 3)) -> str | None:
    """Why ``site`` cannot become a ghost module at ``ratio``, whatever the user selects."""
    if site.transposed:
        return TRANSPOSED_REASON
    if site.kind == "functional":
        return f"functional {site.op or 'conv2d'} call: no {conv_kind(site.dims)} module to replace"
    if site.unsupported:
        return site.unsupported
    if site.dims is not None and site.dims not in variant_dims:
        supported = ", ".join(conv_kind(d) for d in sorted(variant_dims)) or "no conv"
        return f"variant {config.variant!r} builds ghost modules for {supported} only, not {conv_kind(site.dims)}"
    if site.call_sites == 0:
        return "never called in forward()"
    if site.shares_weight_with:
        return f"shares its weight with {site.shares_weight_with}; two ghost modules would untie it"
    if site.groups != 1:
        return f"grouped/depthwise conv (groups={site.groups}) is already cheap"
    if site.out_channels is not None and site.out_channels < max(ratio, 2):
        return f"out_channels {site.out_channels} < ratio {max(ratio, 2)}"
    if site.out_channels is not None and site.out_channels < config.min_channels:
        return f"out_channels {site.out_channels} < min_channels {config.min_channels}"
    return None


def _unselected_reason(site: ConvSite, config: GhostConfig) -> tuple[int, str | None]:
    """The ratio the user's rules give ``site`` and, if they leave it alone, which rule did."""
    excluded_by = next((p for p in config.exclude if pattern_matches(p, site.name)), None)
    if excluded_by is not None:
        return 1, f"excluded by pattern {excluded_by!r}"
    if config.include and not any(pattern_matches(p, site.name) for p in config.include):
        return 1, "not matched by any include pattern"
    rule = next(((p, r) for p, r in config.layer_ratios if pattern_matches(p, site.name)), None)
    ratio = rule[1] if rule else config.ratio
    if ratio == 1:
        return 1, f"ratio 1 for this layer (rule {rule[0]!r})" if rule else "ratio 1: nothing to convert"
    if config.skip_stem and site.is_stem:
        return ratio, "stem conv (skip_stem)"
    if config.skip_output and site.is_output:
        return ratio, "produces the model's output (skip_output)"
    if config.skip_pointwise and site.kernel_size is not None and all(k == 1 for k in site.kernel_size):
        pointwise = "x".join("1" for _ in site.kernel_size) if len(site.kernel_size) > 1 else "kernel-1"
        return ratio, f"{pointwise} conv (skip_pointwise)"
    return ratio, None


def plan_layers(sites: Sequence[ConvSite], config: GhostConfig, trace: str, trace_note: str | None = None) -> ConversionPlan:
    """Decide every conv site; raises ``PatternMatchError`` before anything is changed."""
    _check_patterns(config, [site.name for site in sites])
    variant_dims = VARIANT_DIMS.get(config.variant, (2,))
    layers = []
    for site in sites:
        ratio, unselected = _unselected_reason(site, config)
        ineligible = _ineligible_reason(site, ratio, config, variant_dims)
        reason = ineligible or unselected
        convert = reason is None
        layers.append(
            LayerPlan(
                **known_fields(ConvSite, vars(site)),
                eligible=ineligible is None,
                convert=convert,
                ratio=ratio if convert else 1,
                reason=reason,
                intrinsic_channels=intrinsic_channels(site.out_channels, ratio) if convert else None,
            )
        )
    return ConversionPlan(layers=layers, config=config, trace=trace, trace_note=trace_note)


PLAN_ATTRIBUTE = "ghostify_plan"  # where convert records its plan on the model it returns


def get_plan(model: nn.Module) -> ConversionPlan | None:
    """The plan ``convert`` applied to ``model``, or None if it was not made by ghostify."""
    return getattr(model, PLAN_ATTRIBUTE, None)
