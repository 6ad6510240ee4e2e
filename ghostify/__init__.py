"""ghostify: turn the convs of any PyTorch CNN into GhostNet ghost modules, and measure what it saves."""

from .bench import BenchReport, bench
from .calibrate import CalibrationResult, calibrate
from .config import GhostConfig
from .convert import base_form, convert, convert_, plan_conversion
from .data import InputPipeline
from .deploy import DeployedGhostConv2d, DeployRecord, deploy
from .distill import DistillConfig, DistillResult, distill, distill_plan
from .errors import GhostifyError
from .frozen import FrozenModel, freeze
from .ghost_module import (
    GhostConv1d, GhostConv1dBNReLU, GhostConv2d, GhostConv2dBNReLU, GhostConv3d, GhostConv3dBNReLU,
)
from .latency_plan import plan_for_latency
from .models import ResolvedModel, resolve_model
from .reparameterize import reparameterize
from .report import ComparisonReport, compare
from .selection import ConversionPlan, LayerPlan, get_plan
from .serialization import load, save
from .sweep import SweepReport, sweep
from .variants import register_variant

from .version import __version__

__all__ = [
    "BenchReport",
    "base_form",
    "bench",
    "deploy",
    "DeployedGhostConv2d",
    "DeployRecord",
    "CalibrationResult",
    "DistillConfig",
    "DistillResult",
    "InputPipeline",
    "calibrate",
    "distill",
    "distill_plan",
    "freeze",
    "FrozenModel",
    "ComparisonReport",
    "ConversionPlan",
    "GhostConfig",
    "GhostConv1d",
    "GhostConv1dBNReLU",
    "GhostConv2d",
    "GhostConv2dBNReLU",
    "GhostConv3d",
    "GhostConv3dBNReLU",
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
    "plan_for_latency",
    "register_variant",
    "reparameterize",
    "resolve_model",
    "save",
    "sweep",
]
