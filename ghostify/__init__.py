"""ghostify: turn the convs of any PyTorch CNN into GhostNet ghost modules, and measure what it saves."""

from .config import GhostConfig
from .convert import convert, convert_, get_plan, plan_conversion
from .errors import GhostifyError
from .ghost_module import GhostConv2d, GhostConv2dBNReLU
from .graph_pass import register_variant
from .models import ResolvedModel, resolve_model
from .report import ComparisonReport, compare
from .selection import ConversionPlan, LayerPlan
from .serialization import load, save
from .sweep import SweepReport, sweep

__version__ = "0.1.0"

__all__ = [
    "ComparisonReport",
    "ConversionPlan",
    "GhostConfig",
    "GhostConv2d",
    "GhostConv2dBNReLU",
    "GhostifyError",
    "LayerPlan",
    "ResolvedModel",
    "SweepReport",
    "compare",
    "convert",
    "convert_",
    "get_plan",
    "load",
    "plan_conversion",
    "register_variant",
    "resolve_model",
    "save",
    "sweep",
]
