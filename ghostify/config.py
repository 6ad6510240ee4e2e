"""``GhostConfig``: every setting of a conversion, validated up front and saved as versioned JSON."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError
from .ghost_module import check_ghost_params
from .records import RecordKind
from .variants import TRANSFERS_WEIGHTS, VARIANTS

CONFIG_VERSION = 3  # 2: reparameterize, 3: shared_residual_order (older records were made without them)
CONFIG_RECORD = RecordKind("GhostConfig record", "_version", CONFIG_VERSION, "_type", "GhostConfig")
INIT_MODES = ("transfer", "random")
# The paper tries d = 1..7; the data-free fit needs O(channels * d**4) memory, so d = 63 on a
# 256-channel conv already takes > 24 GB. Larger kernels are refused up front.
MAX_DW_SIZE = 9


def _as_rules(value: Mapping[str, int] | Iterable[tuple[str, int]] | None) -> tuple[tuple[str, int], ...]:
    if value is None:
        return ()
    try:
        if isinstance(value, str):
            raise TypeError(value)
        items = value.items() if isinstance(value, Mapping) else value
        rules = tuple((pattern, ratio) for pattern, ratio in items)
    except (TypeError, ValueError):  # not iterable, or an item that is not a (pattern, ratio) pair
        raise ConfigError(
            f"layer_ratios must map patterns to ratios, such as {{'layer4.*': 4}} or [('layer4.*', 4)]; got {value!r}."
        ) from None
    if not all(isinstance(pattern, str) for pattern, _ in rules):
        raise ConfigError(f"layer_ratios patterns must be strings, got {value!r}.")
    return rules


def _as_patterns(value: str | Iterable[str] | None) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    try:
        patterns = tuple(value)
    except TypeError:
        patterns = (value,)
    if not all(isinstance(p, str) for p in patterns):
        raise ConfigError(f"include / exclude patterns must be strings (or a list of strings), got {value!r}.")
    return patterns


@dataclass(frozen=True)
class GhostConfig:
    """How to convert a model.

    ratio: the ghost ratio ``s`` (>= 2) applied to every eligible conv; 1 converts nothing.
    dw_size: kernel size ``d`` of the cheap depthwise conv (odd).
    include / exclude: layer-name patterns (see ``ghostify.selection``); include empty = all.
    layer_ratios: ``{pattern: ratio}`` overrides, first matching pattern wins; ratio 1 keeps a layer.
    min_channels: convs with fewer output channels are left alone (too small to gain anything).
    skip_stem: leave the first conv alone (default, as in the paper: a 3-channel stem costs few MACs
    but converting it loses the most accuracy). skip_pointwise: leave all 1x1 convs alone.
    skip_output: leave the convs that produce the model's output alone (default: a 1x1 classifier
    conv would otherwise make half of the class scores cheap copies of the others).
    variant: which ghost module replaces a conv (``ghostify.variants.VARIANTS``).
    init: "transfer" starts from the original weights, "random" from PyTorch's default init; None
    (default) is "transfer" for variants that can start from the original weights and "random"
    for the others (paper-bn-relu: BN and ReLU inside, so the original weights do not carry over).
    reparameterize: fuse re-parameterisable blocks (RepVGG, MobileOne, LeViT, a conv + BatchNorm with a
    ``fuse()``) in a copy of the model before converting, so that their convs convert too; the
    converted model is then the inference form (default). False keeps such convs as they are.
    shared_residual_order: the ghost modules added into one residual stream share one channel
    assignment, so that the deploy form needs no channel gather at the add (``ghostify.channel_order``;
    default). False lets each choose its own, which fits its layer a little better.
    share_across_shortcuts: with ``shared_residual_order``, also share one assignment in residual streams whose
    region reaches a submodule needing the original channel order (an option-A shortcut's channel pad, as in
    CIFAR ResNets); the deploy form then gathers once at that submodule instead of at every block (CIFAR
    ResNet-56: 4 gathers instead of 27; at batch 1 on a 2-core CPU 0.86-1.21x the original's speed in
    benchmarks/latency.py runs, against 0.80x). Off by default: on CIFAR ResNet-20 it cost 1.1-1.6 points of
    teacher agreement on ``val/`` after distillation (benchmarks/recovery.py --tune).
    """

    ratio: int = 2
    dw_size: int = 3
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    layer_ratios: tuple[tuple[str, int], ...] = ()
    min_channels: int = 8
    skip_stem: bool = True
    skip_pointwise: bool = False
    skip_output: bool = True
    variant: str = "linear"
    init: str | None = None
    reparameterize: bool = True
    shared_residual_order: bool = True
    share_across_shortcuts: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "include", _as_patterns(self.include))
        object.__setattr__(self, "exclude", _as_patterns(self.exclude))
        object.__setattr__(self, "layer_ratios", _as_rules(self.layer_ratios))
        check_ghost_params(self.ratio, self.dw_size)
        if self.dw_size > MAX_DW_SIZE:
            raise ConfigError(f"dw_size must be an odd whole number from 1 to {MAX_DW_SIZE} (the paper uses 3), got {self.dw_size!r}.")
        for pattern, ratio in self.layer_ratios:
            try:
                check_ghost_params(ratio, self.dw_size)
            except ConfigError as err:
                raise ConfigError(f"layer_ratios[{pattern!r}]: {err}") from None
        if isinstance(self.min_channels, bool) or not isinstance(self.min_channels, int) or self.min_channels < 1:
            raise ConfigError(f"min_channels must be a whole number >= 1, got {self.min_channels!r}.")
        for name in ("skip_stem", "skip_pointwise", "skip_output", "reparameterize", "shared_residual_order",
                     "share_across_shortcuts"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be True or False, got {getattr(self, name)!r}.")
        if not isinstance(self.variant, str) or self.variant not in VARIANTS:
            raise ConfigError(f"variant must be one of {', '.join(sorted(VARIANTS))}, got {self.variant!r}.")
        if self.init is None:
            object.__setattr__(self, "init", "transfer" if TRANSFERS_WEIGHTS[self.variant] else "random")
        if not isinstance(self.init, str) or self.init not in INIT_MODES:
            raise ConfigError(f"init must be one of {', '.join(INIT_MODES)}, got {self.init!r}.")
        if self.init == "transfer" and not TRANSFERS_WEIGHTS[self.variant]:
            raise ConfigError(
                f"variant {self.variant!r} cannot start from the original weights (its modules have BatchNorm and "
                "ReLU inside); use init='random' (its default, --init random), then train or distill the model."
            )

    @classmethod
    def from_options(cls, config: GhostConfig | None = None, **options: Any) -> GhostConfig:
        """``config`` (or the defaults) with ``options`` applied; unknown option names are an error."""
        names = {f.name for f in dataclasses.fields(cls) if not f.name.startswith("_")}
        unknown = sorted(set(options) - names)
        if unknown:
            raise ConfigError(f"unknown option(s) {', '.join(unknown)}; valid options: {', '.join(sorted(names))}.")
        return dataclasses.replace(config, **options) if config is not None else cls(**options)

    def to_dict(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if not f.name.startswith("_")}
        data["include"], data["exclude"] = list(self.include), list(self.exclude)
        data["layer_ratios"] = [list(rule) for rule in self.layer_ratios]
        return {"_type": "GhostConfig", "_version": CONFIG_VERSION, "_data": data}

    @classmethod
    def from_dict(cls, payload: Mapping[str, Any]) -> GhostConfig:
        version = CONFIG_RECORD.version_of(payload, error=ConfigError)
        data = payload.get("_data")
        if not isinstance(data, Mapping) or not all(isinstance(key, str) for key in data):
            raise ConfigError(f"GhostConfig record has no valid _data mapping (found {type(data).__name__}).")
        if version < 2:
            data = {"reparameterize": False, **data}
        if version < 3:
            data = {"shared_residual_order": False, **data}
        return cls.from_options(**data)
