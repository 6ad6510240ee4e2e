"""``ghostify`` command line: a thin layer over the Python API.

User mistakes (``GhostifyError``) print one actionable line on stderr and exit 1, without a
traceback; typer itself rejects malformed options (``--ratio 1.5``) with exit 2.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import math
import re
import sys
from collections.abc import Callable, Sequence
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, NoReturn, Optional

import typer
from rich.console import Console
from rich import box
from rich.markup import escape
from rich.table import Table
from torch import nn

from .bench import bench, parse_batch_sizes
from .config import GhostConfig
from .convert import convert as convert_model
from .convert import plan_conversion
from .data import InputPipeline
from .deploy import deploy as deploy_model
from .distill import RECIPES, RETRAIN_FROM_EPOCHS, DistillConfig
from .errors import ConfigError, GhostifyError
from .evaluate import AccuracyStats, image_folder
from .formatting import MISSING, display_spec, human_count, parse_input_size, percent_text, saving_percent, shorten
from .latency_plan import Budget, plan_for_latency
from .measure import example_input, layer_macs
from .models import DEFAULT_SEED, ResolvedModel, input_size_for, resolve_model
from .outputs import atomic_directory, check_output_path
from .progress import step
from .recovery import Recovery, check_resume, checkpoint_file, is_main_process, recover, remove_checkpoint
from .report import ComparisonReport, compare
from .report_render import layer_status
from .selection import ConversionPlan
from .serialization import load, origin_mismatch, read_recipe, recorded_inputs, recorded_origin, write_model_files
from .sweep import parse_ratios, sweep as sweep_ratios, write_sweep_models
from .variants import VARIANTS
from .version import __version__

def _plain_placeholders() -> None:
    """Help shows ``MODEL`` and ``S`` instead of typer's ``{model}``, ``<int range>``, and nothing after a flag.

    typer 0.2x prints every parameter's Python type (``<bool>`` after ``--force``); ghostify's help
    names each value by its metavar, as most command-line tools do.
    """
    def display_type(self, ctx):  # noqa: ANN001 - typer's signature
        return None if getattr(self, "is_flag", False) or self.metavar is None else self.metavar

    typer.core.TyperOption.display_type_rich = display_type
    typer.core.TyperArgument.display_type_rich = lambda self, ctx: None
    typer.core.TyperArgument._usage_display_name = lambda self: self.display_name_raw if self.required else f"[{self.display_name_raw}]"
    typer.core.TyperOption._get_number_range_help_str = lambda self: ""


_plain_placeholders()

app = typer.Typer(
    name="ghostify",
    help="Turn the convs of a CNN into GhostNet ghost modules and report what it saves.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
# Rich wraps at 80 columns when output is not a terminal; logs and pipes read better wider.
_PIPE_WIDTH = 160
stdout = Console(width=None if sys.stdout.isatty() else _PIPE_WIDTH)
stderr = Console(stderr=True, width=None if sys.stderr.isatty() else _PIPE_WIDTH)

Variant = Enum("Variant", {name.replace("-", "_"): name for name in VARIANTS}, type=str)  # type: ignore[misc]


class Target(str, Enum):
    macs = "macs"
    latency = "latency"


class InitMode(str, Enum):
    transfer = "transfer"
    random = "random"


CALIBRATION_SAMPLES = 512
_TRAINING = DistillConfig()  # the defaults shown in --help


def _flag(*names: str, help: str) -> Any:
    """An on/off option; its help says what the default is (typer shows none for flags)."""
    return typer.Option(*names, help=help, show_default=False)


def _value(*names: str, metavar: str, help: str, min: int | None = None, **extra: Any) -> Any:
    """An option taking a value: ``help`` must give its default and an example (``ghostify --help`` is the manual)."""
    return typer.Option(*names, metavar=metavar, help=help, min=min, show_default=False, **extra)


ModelArg = Annotated[str, typer.Argument(metavar="MODEL", help="The model: a timm name (resnet50), torchvision:NAME (torchvision:resnet18), or your code as path/to/file.py:function.", show_default=False)]
RatioOpt = Annotated[int, _value("--ratio", "-s", metavar="S", min=2, help="Ghost ratio s: each intrinsic map makes s-1 ghosts, so a layer costs about s times less; e.g. --ratio 4 (default 2).")]
DwSizeOpt = Annotated[int, _value("--dw-size", "-d", metavar="D", min=1, help="Kernel size of the cheap depthwise conv, odd; e.g. --dw-size 5 (default 3).")]
IncludeOpt = Annotated[Optional[list[str]], _value("--include", metavar="PATTERN", help="Convert only the layers this pattern matches (repeatable): an exact name, a dotted suffix (conv1 also matches layer1.0.conv1), a glob or re:REGEX (whole name); e.g. --include 'layer4.*' (default: every eligible layer). The matches are printed.")]
ExcludeOpt = Annotated[Optional[list[str]], _value("--exclude", metavar="PATTERN", help="Leave the layers this pattern matches alone (repeatable; patterns as --include; re:conv1 matches only the layer named conv1); e.g. --exclude layer1.0.conv1 (default: none).")]
LayerRatioOpt = Annotated[Optional[list[str]], _value("--layer-ratio", metavar="PATTERN=S", help="Ratio for the layers a pattern matches (repeatable, first match wins; 1 keeps the layer); e.g. --layer-ratio 'layer4.*=4' (default: --ratio everywhere).")]
MinChannelsOpt = Annotated[int, _value("--min-channels", metavar="N", min=1, help="Leave convs with fewer output channels alone; e.g. --min-channels 64 (default 8).")]
SkipStemOpt = Annotated[bool, typer.Option("--skip-stem/--convert-stem", help="Keep the first conv (default, as in the paper: it costs few MACs and converting it loses the most accuracy), or convert it too.", show_default=False)]
SkipOutputOpt = Annotated[bool, typer.Option("--skip-output/--convert-output", help="Keep the convs that produce the model's output, such as a 1x1 classifier conv (default: converting one makes half the class scores cheap copies of the others), or convert them too.", show_default=False)]
ReparameterizeOpt = Annotated[bool, typer.Option("--reparameterize/--keep-training-form", help="Fuse re-parameterisable blocks (RepVGG, MobileOne, FastViT, LeViT, a conv + BatchNorm with a fuse() method) as timm.utils.reparameterize_model does, then convert their convs too: the converted model is the inference form (default); or keep those blocks and their convs as they are.", show_default=False)]
SharedOrderOpt = Annotated[bool, typer.Option("--shared-residual-order/--free-channel-order", help="Ghost layers added into one residual stream share one channel assignment, so the deploy form needs no channel gather at the add (default; faster), or let each choose its own (its layer fits a little better before calibration).", show_default=False)]
AcrossShortcutsOpt = Annotated[bool, typer.Option("--share-across-shortcuts", help="Also share one channel assignment across residual streams joined by a shortcut without a conv (CIFAR ResNets' channel pad): a faster deploy form (ResNet-56: one gather per such shortcut instead of one per block), a worse start for distillation (default: off, each keeps its own).", show_default=False)]
SkipPointwiseOpt = Annotated[bool, _flag("--skip-pointwise", help="Leave every 1x1 conv alone (default: off).")]
CheckpointOpt = Annotated[Optional[Path], _value("--checkpoint", "-c", metavar="FILE", help="Weights to load: a state dict, {'state_dict': ...} or {'model': ...}, a 'module.' prefix is stripped; e.g. -c resnet20.th (default: random weights, seeded and recorded).")]
TrustOpt = Annotated[bool, _flag("--trust-checkpoint", help="Allow checkpoints holding pickled Python objects; unpickling can run code, so only for files you trust (default: off, weights only).")]
PretrainedOpt = Annotated[bool, _flag("--pretrained", help="Use the source's pretrained weights; needs a network or a filled cache (default: off).")]
DataOpt = Annotated[Optional[Path], _value("--data", metavar="DIR", help="An ImageFolder root (DIR/<class>/<image>) to measure top-1 and agreement with the original on; e.g. --data imagenet/val (default: no accuracy measured).")]
DataDirsOpt = Annotated[Optional[list[Path]], _value("--data", metavar="DIR", help=(
    "Images to calibrate/distill on (repeatable): an ImageFolder tree DIR/<class>/<image> or a flat folder; "
    "without --calibrate/--distill, one ImageFolder root to measure top-1 and agreement on; e.g. --data train/ (default: none)."))]
ValDataOpt = Annotated[Optional[list[Path]], _value("--val-data", metavar="DIR", help=(
    "Held-out images (repeatable) to measure agreement with the original (and top-1, when in class folders) after "
    "each step and each epoch; distillation then ends with the weights that agreed best on them, the starting ones "
    "included; e.g. --val-data val/ (default: none)."))]
DataLimitOpt = Annotated[Optional[int], _value("--data-limit", metavar="N", min=1, help="Use at most N images of --data, spread over all classes; e.g. --data-limit 500 (default: all).")]
LatencyOpt = Annotated[bool, _flag("--latency", help="Also time both models: the median of interleaved runs (default: off).")]
DeviceOpt = Annotated[str, _value("--device", metavar="DEVICE", help="Where to time, calibrate and train: cpu, cuda or cuda:N; e.g. --device cuda (default cpu).")]
ForceOpt = Annotated[bool, _flag("--force", help="Replace an existing non-empty output directory (default: refuse).")]
InputSizeOpt = Annotated[Optional[str], _value("--input-size", metavar="SIZE", help="One input's size: S for a 3xSxS image or C,H,W (C,L for a model whose first conv is a Conv1d, C,T,H,W for a Conv3d); e.g. --input-size 32 or --input-size 3,224,224 (default: the model's own, else 3,224,224; C,224 for a Conv1d model, C,16,112,112 for a Conv3d one).")]
MeanOpt = Annotated[Optional[str], _value("--mean", metavar="M,M,M", help="Per-channel mean to normalise images with; e.g. --mean 0.4914,0.4822,0.4465 (default: the model's own, else ImageNet's).")]
StdOpt = Annotated[Optional[str], _value("--std", metavar="S,S,S", help="Per-channel std to normalise images with; e.g. --std 0.247,0.243,0.261 (default: the model's own, else ImageNet's).")]
MinutesOpt = Annotated[Optional[float], _value("--minutes", metavar="M", help="A time budget for distillation instead of --epochs: a short timed probe decides how many epochs fit on this machine; e.g. --minutes 5 (default: off, --epochs rules).")]
EpochsOpt = Annotated[Optional[int], _value("--epochs", metavar="N", min=1, help=f"Distillation epochs; e.g. --epochs 30 (default {_TRAINING.epochs}).")]
BatchSizeOpt = Annotated[Optional[int], _value("--batch-size", metavar="N", min=1, help=f"Distillation batch size; e.g. --batch-size 64 (default {_TRAINING.batch_size}).")]
LrOpt = Annotated[Optional[float], _value("--lr", metavar="LR", help="Peak learning rate of distillation; e.g. --lr 3e-4 (default: the recipe's, " + " or ".join(f"{value['lr']:g} to {name}" for name, value in RECIPES.items()) + ").")]
RecipeOpt = Annotated[Optional[str], _value("--recipe", metavar="KIND", help=f"How distillation trains the ghost model: retrain (SGD, BatchNorm statistics updated: best from about {RETRAIN_FROM_EPOCHS} epochs on), finetune (AdamW, statistics frozen: keeps the calibration, best for shorter runs) or auto (retrain from {RETRAIN_FROM_EPOCHS} epochs on); e.g. --recipe finetune (default {_TRAINING.recipe}).")]
PrecisionOpt = Annotated[Optional[bool], typer.Option("--mixed-precision/--full-precision", help="Train in mixed precision where the hardware computes it natively (CUDA; CPUs with AMX or AVX512-BF16 units: bfloat16, epochs about 1.3x faster), else in float32 (default); or always in float32.", show_default=False)]
AugmentOpt = Annotated[Optional[str], _value("--augment", metavar="KIND", help=f"Training images' augmentation: crop-flip (random crops and flips) or trivialaugment (that plus one random TrivialAugment op per image); e.g. --augment trivialaugment (default {_TRAINING.augment}).")]
SeedOpt = Annotated[Optional[int], _value("--seed", metavar="N", min=0, help="Seed of every random choice of calibration and distillation; e.g. --seed 1 (default 0).")]
CalibrationSamplesOpt = Annotated[Optional[int], _value("--calibration-samples", metavar="N", min=1, help=f"Images of --data that calibration fits on; e.g. --calibration-samples 1024 (default {CALIBRATION_SAMPLES}).")]
ResumeOpt = Annotated[bool, _flag("--resume", help="Continue an interrupted distillation from its checkpoint, kept beside the output directory (default: start over).")]
TargetOpt = Annotated[Target, _value("--target", metavar="GOAL", help="What the plan aims at: macs (convert every eligible layer) or latency (time each layer as a conv and as a ghost module on --device at --target-batch, convert only those that get faster); e.g. --target latency (default macs).")]
TargetBatchOpt = Annotated[int, _value("--target-batch", metavar="N", min=1, help="The batch size --target latency times layers at; e.g. --target-batch 16 (default 1).")]
BudgetOpt = Annotated[Optional[str], _value("--budget", metavar="KIND=F", help="With --target latency, also convert layers a ghost module slows down (least time lost per MAC saved first) until the model's MACs (macs=F) or the timed layers' time (latency=F) is at most F times the original's; e.g. --budget macs=0.6 (default: only the faster layers).")]
DeployOpt = Annotated[bool, _flag("--deploy", help="Put the ghost model in deploy form for inference: BatchNorms folded into the ghost modules, channel gathers folded into the next layers where they allow it; same outputs, faster (default: off).")]
LayersOpt = Annotated[bool, _flag("--layers", help="Print the per-layer table too (default: the summary only).")]


def _show_version(value: bool) -> None:
    if value:
        stdout.print(f"ghostify {__version__}", highlight=False)
        raise typer.Exit()


@app.callback()
def _global_options(
    version: Annotated[bool, typer.Option("--version", callback=_show_version, is_eager=True, help="Print ghostify's version and exit.")] = False,
) -> None:
    """Turn the convs of a CNN into GhostNet ghost modules and report what it saves."""


def _command(function: Callable[..., None]) -> Callable[..., None]:
    """Register a command whose user mistakes print one line (exit 1) and whose Ctrl-C prints one line (exit 130)."""

    @functools.wraps(function)
    def run(*args: Any, **kwargs: Any) -> None:
        try:
            function(*args, **kwargs)
        except GhostifyError as err:
            _fail(str(err))
        except KeyboardInterrupt:
            _interrupted(None)

    return app.command(name=function.__name__.removesuffix("_command"))(run)


def _fail(message: str) -> NoReturn:
    stderr.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)  # "[a, b]" is text, not markup
    raise typer.Exit(code=1)


def _parse_layer_ratios(rules: list[str] | None) -> list[tuple[str, int]]:
    parsed = []
    for rule in rules or []:
        pattern, sep, ratio = rule.rpartition("=")
        if not sep or not pattern or not (ratio.strip().isascii() and ratio.strip().isdigit()):
            raise ConfigError(f"--layer-ratio expects PATTERN=RATIO such as 'layer4.*=4', got {rule!r}.")
        parsed.append((pattern, int(ratio)))
    return parsed


# The options that choose and shape the converted layers, shared by convert, inspect and sweep: declared once
# here, in the order --help shows them, and handed to a command as one dict (see ``_takes_selection``).
_SELECTION_OPTIONS: dict[str, tuple[Any, Any]] = {
    "dw_size": (DwSizeOpt, 3),
    "include": (IncludeOpt, None),
    "exclude": (ExcludeOpt, None),
    "layer_ratio": (LayerRatioOpt, None),
    "min_channels": (MinChannelsOpt, 8),
    "skip_stem": (SkipStemOpt, True),
    "skip_output": (SkipOutputOpt, True),
    "reparameterize": (ReparameterizeOpt, True),
    "skip_pointwise": (SkipPointwiseOpt, False),
    "shared_residual_order": (SharedOrderOpt, True),
    "share_across_shortcuts": (AcrossShortcutsOpt, False),
}


def _takes_selection(*, omit: Sequence[str] = ()) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Put the selection options (all but ``omit``) where a command has its ``selection`` parameter; the
    command receives their values as ``selection``, a dict to build its ``GhostConfig`` with (``_config``)."""
    names = [name for name in _SELECTION_OPTIONS if name not in omit]

    def decorate(function: Callable[..., None]) -> Callable[..., None]:
        signature = inspect.signature(function, eval_str=True)
        parameters = []
        for parameter in signature.parameters.values():
            if parameter.name != "selection":
                parameters.append(parameter)
                continue
            for name in names:
                annotation, default = _SELECTION_OPTIONS[name]
                parameters.append(inspect.Parameter(name, parameter.kind, default=default, annotation=annotation))

        @functools.wraps(function)
        def run(*args: Any, **kwargs: Any) -> None:
            function(*args, selection={name: kwargs.pop(name) for name in names}, **kwargs)

        run.__signature__ = signature.replace(parameters=parameters)  # type: ignore[attr-defined]  # what typer reads
        return run

    return decorate


def _config(ratio: int, selection: dict[str, Any], *, variant: str = "linear", init: str | None = None) -> GhostConfig:
    """The ``GhostConfig`` of a command's ratio and selection options (and convert's variant and init)."""
    return GhostConfig(
        ratio=ratio, dw_size=selection["dw_size"], include=tuple(selection["include"] or ()),
        exclude=tuple(selection["exclude"] or ()), layer_ratios=tuple(_parse_layer_ratios(selection.get("layer_ratio"))),
        min_channels=selection["min_channels"], skip_stem=selection["skip_stem"], skip_pointwise=selection["skip_pointwise"],
        skip_output=selection["skip_output"], variant=variant, init=init, reparameterize=selection["reparameterize"],
        shared_residual_order=selection["shared_residual_order"],
        share_across_shortcuts=selection["share_across_shortcuts"],
    )


def plan_table(plan: ConversionPlan, macs: dict[str, tuple[int, int]] | None = None) -> Table:
    """Every conv with its decision, for ``inspect`` and ``convert --dry-run``; with ``macs`` (``measure.layer_macs``)
    also each layer's MACs now and the share the plan saves."""
    macs = macs or {}
    title = f"Conversion plan ({len(plan.converted)} of {len(plan.layers)} convs converted"
    if macs:
        before, after = sum(b for b, _ in macs.values()), sum(a for _, a in macs.values())
        title += f"; conv MACs {human_count(before)} -> {human_count(after)}, {percent_text(saving_percent(before, after))}"
    footnotes: dict[str, int] = {}
    statuses = [layer_status(layer, footnotes) for layer in plan.layers]
    table = Table(title=title + ")", title_justify="left", caption="\n".join(f"[{n}] {reason}" for reason, n in footnotes.items()) or None,
                  caption_justify="left", box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, collapse_padding=True)
    table.add_column("layer", overflow="ellipsis", min_width=12)  # only the name may shrink: one line per layer
    for column in ("in->out", "kernel", "stride", "dilation", "calls", "MACs", "saving", "decision"):
        table.add_column(column, justify="right" if column in ("calls", "MACs", "saving") else "left", no_wrap=True)
    for layer, status in zip(plan.layers, statuses):
        kernel = "x".join(map(str, layer.kernel_size)) if layer.kernel_size else "?"
        stride = "x".join(map(str, layer.stride)) if layer.stride else "-"
        dilation = "x".join(map(str, layer.dilation)) if layer.dilation else "-"
        before, after = macs.get(layer.name, (None, None))
        saving = percent_text(saving_percent(before, after)) if layer.convert else MISSING
        table.add_row(layer.name, f"{layer.in_channels}->{layer.out_channels}", kernel, stride, dilation,
                      str(layer.call_sites), human_count(before), saving, status)
    return table


def _print_trace(plan: ConversionPlan) -> None:
    if plan.trace == "fx":
        stdout.print("analysis: torch.fx graph (call sites, stem and output convs from the traced forward)")
        if plan.trace_note:
            stdout.print(f"note: {escape(shorten(plan.trace_note))}", soft_wrap=True)
    else:  # the whole note is in report.json
        stdout.print(f"analysis: module walk, because {escape(shorten(str(plan.trace_note)))}", soft_wrap=True)
    if plan.reparameterized:
        count = len(plan.reparameterized)
        stdout.print(f"re-parameterised {count} block{'s' if count != 1 else ''} first ({escape(shorten(', '.join(plan.reparameterized), 80))}): "
                     "the converted model is the inference form; --keep-training-form leaves them as they are", soft_wrap=True)


def _print_selection(plan: ConversionPlan) -> None:
    """What each name pattern matched (suffix matches say so), and a warning when nothing is converted."""
    for match in plan.pattern_matches():
        stdout.print(escape(match.describe()), highlight=False, soft_wrap=True)
    reason = plan.why_nothing_converted()
    if reason:
        stderr.print(f"[bold yellow]warning:[/] {escape(reason)}", highlight=False, soft_wrap=True)


def _data_args(data: Path | None, limit: int | None, size: tuple[int, int, int], model,
               mean: Sequence[float] | None = None, std: Sequence[float] | None = None) -> dict:
    """``compare``/``sweep`` keyword arguments for evaluating on ``--data``, normalised as the model expects
    (or with ``--mean``/``--std``)."""
    if data is None:
        return {}
    pipeline = InputPipeline.for_model(model, size, mean, std)
    return {"data": image_folder(data, size, mean=pipeline.mean, std=pipeline.std, limit=limit), "data_name": str(data)}


def _parse_floats(name: str, text: str | None) -> tuple[float, ...] | None:
    """``--mean`` / ``--std`` as numbers; None when not given."""
    if text is None:
        return None
    parts = [p for p in re.split(r"[,\s]+", text.strip()) if p]
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        values = ()
    if not values or not all(math.isfinite(v) for v in values):
        raise ConfigError(f"{name} must be numbers separated by commas, one per input channel, such as 0.485,0.456,0.406; got {text!r}.")
    return values


def _load_any(spec: str, checkpoint: Path | None, trust: bool, *, pretrained: bool = False, seed: int = DEFAULT_SEED,
              base_model: nn.Module | None = None, label: str = "model") -> tuple[nn.Module, str, ResolvedModel | None]:
    """A model from a spec (random weights drawn with ``seed``), or from a directory written by ``convert -o``
    (built on ``base_model`` when given); with its display name and, for a spec, how it was built."""
    path = Path(spec)
    if path.is_dir():
        if checkpoint is not None or pretrained:
            option = "--checkpoint" if checkpoint is not None else "--pretrained"
            raise ConfigError(f"{spec} is a saved ghostify directory: it carries its weights, so {option} does not apply to it.")
        with step(stdout, f"loading {spec}"):
            model = load(path, base_model=base_model, trust_checkpoint=trust)
        stdout.print(f"{label}: [bold]{escape(spec)}[/] (saved ghostify model)", highlight=False, soft_wrap=True)
        return model, spec, None
    resolved = _resolve(spec, checkpoint, trust, pretrained, label=label, seed=seed)
    return resolved.model, display_spec(resolved.spec), resolved


def _write_output(output: Path, force: bool, write: Callable[[Path], object]) -> None:
    """Let ``write`` fill a staging directory that then replaces ``output`` at once; say what was written."""
    with atomic_directory(output, force=force) as staging:
        write(staging)
        written = ", ".join(sorted(path.name for path in staging.iterdir()))
    stdout.print(f"wrote {escape(str(output))}/ ({escape(written)})", highlight=False, soft_wrap=True)


def _make_plan(model: nn.Module, config: GhostConfig, target: Target, input_size: tuple[int, int, int],
               batch_size: int, device: str, deploy: bool = False, budget: str | None = None) -> ConversionPlan:
    """The plan for ``target``: every eligible layer (macs), or those a ghost module makes faster (latency)."""
    if target is Target.macs:
        if budget is not None:
            raise ConfigError("--budget needs --target latency: it chooses layers by their measured times.")
        return plan_conversion(model, config)
    parsed = Budget.parse(budget) if budget is not None else None  # a typo fails before the timing
    with step(stdout, f"timing each layer as conv and as ghost module (batch {batch_size}, {device})"):
        return plan_for_latency(model, config, input_size=input_size, batch_size=batch_size, device=device,
                                deploy=deploy, budget=parsed)


def _show_plan(model: nn.Module, plan: ConversionPlan, input_size: tuple[int, int, int]) -> None:
    """The plan table of ``inspect`` / ``--dry-run``, with per-layer MACs from one forward pass at ``input_size``."""
    _print_trace(plan)
    _print_selection(plan)
    try:
        macs = layer_macs(model, plan, example_input(input_size))
    except Exception as err:  # the model's own forward failing: the plan is still worth showing
        stderr.print(f"[bold yellow]warning:[/] no per-layer MACs: the model failed on a 1x{'x'.join(map(str, input_size))} "
                     f"input ({type(err).__name__}: {escape(shorten(str(err), 200))}); pass --input-size.", highlight=False, soft_wrap=True)
        macs = None
    stdout.print(plan_table(plan, macs))


def _resolve(model: str, checkpoint: Path | None, trust: bool, pretrained: bool, label: str = "model",
             seed: int = DEFAULT_SEED) -> ResolvedModel:
    """Build ``model`` (random weights drawn with ``seed`` when there are no others) and say what was built."""
    with step(stdout, f"building {model}"):
        resolved = resolve_model(model, checkpoint=checkpoint, pretrained=pretrained, trust_checkpoint=trust, seed=seed)
    stdout.print(f"{label}: [bold]{escape(display_spec(resolved.spec))}[/], {escape(resolved.weights_note)}", highlight=False, soft_wrap=True)
    return resolved


# ----- calibration and distillation ---------------------------------------------------------------

def _training_options(epochs: int | None, batch_size: int | None, lr: float | None, seed: int | None,
                      augment: str | None, minutes: float | None = None, recipe: str | None = None,
                      mixed_precision: bool | None = None) -> dict[str, Any]:
    """The ``DistillConfig`` fields given on the command line (the rest keep their defaults)."""
    if lr is not None and not (math.isfinite(lr) and lr > 0):
        raise ConfigError(f"--lr must be a number > 0, got {lr}.")
    if minutes is not None and not (math.isfinite(minutes) and minutes > 0):
        raise ConfigError(f"--minutes must be a number > 0, got {minutes}.")
    if minutes is not None and epochs is not None:
        raise ConfigError("pass --epochs or --minutes, not both: --minutes chooses the number of epochs.")
    given = {"epochs": epochs, "batch_size": batch_size, "lr": lr, "seed": seed, "augment": augment, "minutes": minutes,
             "recipe": recipe, "amp": mixed_precision}
    options = {name: value for name, value in given.items() if value is not None}
    DistillConfig(**options)  # out-of-range values fail now, before any slow work
    return options


def _fill_report(report: ComparisonReport, done: Recovery) -> None:
    report.recovery, report.calibration, report.training = done.stages, done.calibration, done.training
    if done.stages and done.stages[0].top1 is not None and done.stages[-1].top1 is not None:
        first, last = done.stages[0], done.stages[-1]
        report.accuracy = AccuracyStats(last.dataset, last.samples, first.top1, last.top1, last.agreement)


def _interrupted(checkpoint: Path | None) -> NoReturn:
    """Ctrl-C: one line saying what was kept, exit 130 (the shell's code for SIGINT)."""
    if checkpoint is not None and checkpoint.is_file():
        stderr.print(f"interrupted: progress saved to {escape(str(checkpoint))}; rerun the same command with --resume", highlight=False, soft_wrap=True)
    else:
        if checkpoint is not None:
            remove_checkpoint(checkpoint)
        stderr.print("interrupted: nothing was written", highlight=False, soft_wrap=True)
    raise typer.Exit(code=130)


@_command
@_takes_selection()
def convert(
    model: ModelArg,
    ratio: RatioOpt = 2,
    *,
    selection: dict[str, Any],
    variant: Annotated[Variant, _value("--variant", metavar="KIND", help="Ghost module kind: linear (a drop-in for the conv) or paper-bn-relu (BN+ReLU inside, as in the paper: train it); e.g. --variant paper-bn-relu (default linear).")] = Variant("linear"),
    init: Annotated[Optional[InitMode], _value("--init", metavar="HOW", help="How ghost modules start: transfer (from the original weights) or random; e.g. --init random (default transfer; random for paper-bn-relu, which cannot start from the original weights).")] = None,
    checkpoint: CheckpointOpt = None,
    trust_checkpoint: TrustOpt = False,
    pretrained: PretrainedOpt = False,
    input_size: InputSizeOpt = None,
    mean: MeanOpt = None,
    std: StdOpt = None,
    output: Annotated[Optional[Path], _value("--output", "-o", metavar="DIR", help="Write model.safetensors, ghostify.json and the report (JSON, Markdown, HTML) here; e.g. -o out/r50 (default: write nothing).")] = None,
    force: ForceOpt = False,
    dry_run: Annotated[bool, _flag("--dry-run", help="Show the plan only, with per-layer MACs; convert nothing (default: off).")] = False,
    calibrate: Annotated[bool, _flag("--calibrate", help="Fit each ghost module to the original layer's outputs on --data, without training: a minute or two for a CIFAR ResNet on a 2-core CPU, about 6 for an ImageNet ResNet-18 on 128 images (default: off).")] = False,
    distill: Annotated[bool, _flag("--distill", help="Train the ghost model to reproduce the original on --data, by knowledge distillation; calibrates first when the recipe fine-tunes (short runs) or with --calibrate (default: off).")] = False,
    data: DataDirsOpt = None,
    val_data: ValDataOpt = None,
    data_limit: DataLimitOpt = None,
    calibration_samples: CalibrationSamplesOpt = None,
    epochs: EpochsOpt = None,
    minutes: MinutesOpt = None,
    batch_size: BatchSizeOpt = None,
    lr: LrOpt = None,
    recipe: RecipeOpt = None,
    augment: AugmentOpt = None,
    mixed_precision: PrecisionOpt = None,
    seed: SeedOpt = None,
    resume: ResumeOpt = False,
    latency: LatencyOpt = False,
    device: DeviceOpt = "cpu",
    target: TargetOpt = Target.macs,
    target_batch: TargetBatchOpt = 1,
    budget: BudgetOpt = None,
    layers: LayersOpt = False,
    deploy: DeployOpt = False,
) -> None:
    """Convert MODEL's eligible convs to ghost modules and print a before/after report.

    With --calibrate or --distill the ghost model then recovers the original's accuracy from the images in --data (labels optional); --val-data measures it after each step.
    """
    recovering = calibrate or distill
    ckpt = None
    try:
        ckpt = checkpoint_file(output) if distill and output is not None and not dry_run else None
        if not is_main_process():
            stdout.quiet = True
        config = _config(ratio, selection, variant=variant.value, init=init.value if init is not None else None)
        size = explicit_size = parse_input_size(input_size)  # a typo fails before the model is built
        norm_mean, norm_std = _parse_floats("--mean", mean), _parse_floats("--std", std)
        options = _training_options(epochs, batch_size, lr, seed, augment, minutes, recipe, mixed_precision)
        _check_convert_options(recovering, distill, data, val_data, data_limit, calibration_samples, options, resume, output)
        check_resume(ckpt, resume)
        if output is not None and not dry_run:  # before the slow work, not after it
            check_output_path(output, force=force, inputs=[model.rpartition(":")[0], checkpoint, *(data or []), *(val_data or [])])
        resolved = _resolve(model, checkpoint, trust_checkpoint, pretrained)
        size = input_size_for(resolved.model, size)
        plan = _make_plan(resolved.model, config, target, size, target_batch, device, deploy, budget)
        if dry_run:
            _show_plan(resolved.model, plan, size)
            return
        with step(stdout, "converting"):
            converted = convert_model(resolved.model, plan=plan)
        _print_trace(converted.ghostify_plan)
        _print_selection(converted.ghostify_plan)
        done = None
        if recovering:
            pipeline = InputPipeline.for_model(resolved.model, explicit_size, norm_mean, norm_std)
            done = recover(converted, resolved.model, data=list(data or []), val_data=val_data, pipeline=pipeline,
                            device=device, calibrate=True if calibrate else None, distill=distill, samples=calibration_samples or CALIBRATION_SAMPLES,
                            options=options, checkpoint=ckpt, resume=resume, start_stage="converted (data-free)",
                            console=stdout)
            if not is_main_process():
                return
        if deploy:
            converted = _deployed(converted)
        eval_data = (data or [None])[0] if not recovering else None
        name = display_spec(resolved.spec)
        with step(stdout, "measuring"):
            report = compare(resolved.model, converted, input_size=size, latency=latency, device=device,
                             original_name=name, converted_name=f"{name} (ghost s={ratio})",
                             **_data_args(eval_data, data_limit, size, resolved.model, norm_mean, norm_std))
        report.weights_note = resolved.weights_note
        if done is not None:
            _fill_report(report, done)
        stdout.print(report)
        if layers:
            stdout.print(report.layer_table())
        if output is not None:
            def write_model_and_report(staging: Path) -> None:
                write_model_files(converted, staging, base_model=resolved.spec, base_checkpoint=checkpoint, base_pretrained=pretrained,
                                  base_seed=resolved.seed, inputs={"input_size": explicit_size, "mean": norm_mean, "std": norm_std})
                report.save(staging)

            _write_output(output, force, write_model_and_report)
            remove_checkpoint(ckpt)
    except GhostifyError as err:
        _fail(str(err))
    except KeyboardInterrupt:
        _interrupted(ckpt)


def _deployed(converted: nn.Module) -> nn.Module:
    """``converted`` in deploy form; says what was folded."""
    with step(stdout, "deploying"):
        deployed = deploy_model(converted)
    stdout.print(deployed.ghostify_deploy.summary())
    return deployed


def _check_convert_options(recovering: bool, distill: bool, data: list[Path] | None, val_data: list[Path] | None,
                           data_limit: int | None, calibration_samples: int | None, options: dict[str, Any],
                           resume: bool, output: Path | None) -> None:
    """Options that only make sense together, checked before any work."""
    if recovering:
        if not data:
            raise ConfigError(f"--{'distill' if distill else 'calibrate'} needs images: pass --data DIR (a folder of images or an ImageFolder root; labels are optional).")
        if data_limit is not None:
            raise ConfigError("--data-limit limits evaluation images; with --calibrate/--distill use --calibration-samples N, and --val-data DIR for evaluation.")
    else:
        if data and len(data) > 1:
            raise ConfigError("without --calibrate/--distill, --data is the evaluation set: pass one ImageFolder root.")
        if val_data:
            raise ConfigError("--val-data measures accuracy during --calibrate/--distill; to measure the converted model alone, pass --data DIR.")
        if calibration_samples is not None:
            raise ConfigError("--calibration-samples applies to --calibrate/--distill.")
    if not distill:
        given = [f"--{name.replace('_', '-')}" for name in options] + (["--resume"] if resume else [])
        if given:
            raise ConfigError(f"{', '.join(given)} appl{'ies' if len(given) == 1 else 'y'} to --distill.")
    elif resume and output is None:
        raise ConfigError("--resume needs -o OUT: the distillation checkpoint is kept beside the output directory.")


@_command
def distill_command(
    saved: Annotated[Path, typer.Argument(metavar="SAVED_DIR", help="A directory written by `ghostify convert -o` (or by this command).", show_default=False)],
    data: DataDirsOpt = None,
    val_data: ValDataOpt = None,
    epochs: EpochsOpt = None,
    minutes: MinutesOpt = None,
    batch_size: BatchSizeOpt = None,
    lr: LrOpt = None,
    recipe: RecipeOpt = None,
    augment: AugmentOpt = None,
    mixed_precision: PrecisionOpt = None,
    seed: SeedOpt = None,
    teacher: Annotated[Optional[str], _value("--teacher", metavar="MODEL", help="The original model, a spec as in convert; e.g. --teacher resnet50 (default: the base model recorded in SAVED_DIR).")] = None,
    checkpoint: Annotated[Optional[Path], _value("--checkpoint", "-c", metavar="FILE", help="The teacher's weights; e.g. -c resnet20.th (default: the base checkpoint recorded in SAVED_DIR).")] = None,
    trust_checkpoint: TrustOpt = False,
    pretrained: Annotated[bool, _flag("--pretrained", help="The teacher has its source's pretrained weights; needs a network or the cache (default: off).")] = False,
    input_size: InputSizeOpt = None,
    mean: MeanOpt = None,
    std: StdOpt = None,
    output: Annotated[Optional[Path], _value("--output", "-o", metavar="DIR", help="Write the distilled model and its report here; e.g. -o out/r20-kd2 (default: replace SAVED_DIR).")] = None,
    force: ForceOpt = False,
    resume: ResumeOpt = False,
    latency: LatencyOpt = False,
    device: DeviceOpt = "cpu",
) -> None:
    """Distill the original model into a saved ghost model (continue or refine `convert --distill`).

    The teacher is rebuilt from SAVED_DIR's recipe (base model and checkpoint) unless --teacher / -c say otherwise. The result replaces SAVED_DIR, all files at once, unless -o is given.
    """
    target = output if output is not None else saved
    ckpt = None
    try:
        ckpt = checkpoint_file(target)
        if not is_main_process():
            stdout.quiet = True
        size = parse_input_size(input_size)
        norm_mean, norm_std = _parse_floats("--mean", mean), _parse_floats("--std", std)
        options = _training_options(epochs, batch_size, lr, seed, augment, minutes, recipe, mixed_precision)
        if not data:
            raise ConfigError("distill needs images: pass --data DIR (a folder of images or an ImageFolder root; labels are optional).")
        recipe = read_recipe(saved)
        recorded = recorded_inputs(saved, recipe)  # the --input-size/--mean/--std given to convert
        size, norm_mean, norm_std = size or recorded["input_size"], norm_mean or recorded["mean"], norm_std or recorded["std"]
        explicit = {"input_size": size, "mean": norm_mean, "std": norm_std}
        check_resume(ckpt, resume)
        teacher_spec, teacher_checkpoint, teacher_pretrained = _teacher_source(saved, recipe, teacher, checkpoint, pretrained)
        inputs = [teacher_spec.rpartition(":")[0], teacher_checkpoint, *data, *(val_data or [])]
        if output is not None:
            check_output_path(output, force=force, inputs=[saved, *inputs])
        else:  # refining in place: SAVED_DIR is replaced, but never the data or weights inside it
            check_output_path(saved, force=True, inputs=inputs)
        resolved = _resolve(teacher_spec, teacher_checkpoint, trust_checkpoint, teacher_pretrained, label="teacher")
        with step(stdout, f"loading {saved}"):
            student = load(saved, base_model=resolved.model)  # the teacher's architecture must fit the student's
        stdout.print(f"student: [bold]{escape(str(saved))}[/] (saved ghostify model)", highlight=False, soft_wrap=True)
        pipeline = InputPipeline.for_model(resolved.model, size, norm_mean, norm_std)
        done = recover(student, resolved.model, data=list(data), val_data=val_data, pipeline=pipeline, device=device,
                        calibrate=False, distill=True, samples=0, options=options, checkpoint=ckpt, resume=resume,
                        start_stage="saved", console=stdout)
        if not is_main_process():
            return
        size = input_size_for(resolved.model, size)
        with step(stdout, "measuring"):
            report = compare(resolved.model, student, input_size=size, latency=latency, device=device,
                             original_name=display_spec(resolved.spec), converted_name=f"{saved.name} (distilled)")
        report.weights_note = resolved.weights_note
        _fill_report(report, done)
        report.calibration = _previous_calibration(saved)
        stdout.print(report)  # with the accuracy of each stage, teacher vs student

        def write_model_and_report(staging: Path) -> None:
            write_model_files(student, staging, base_model=resolved.spec, base_checkpoint=teacher_checkpoint,
                              base_pretrained=teacher_pretrained, base_seed=resolved.seed, inputs=explicit)
            report.save(staging)

        _write_output(target, force if output is not None else True, write_model_and_report)
        remove_checkpoint(ckpt)
    except GhostifyError as err:
        _fail(str(err))
    except KeyboardInterrupt:
        _interrupted(ckpt)


def _teacher_source(saved: Path, recipe: dict[str, Any], spec: str | None, checkpoint: Path | None,
                    pretrained: bool) -> tuple[str, Path | None, bool]:
    """(spec, checkpoint, pretrained) of the teacher: the options, else what SAVED_DIR's recipe records."""
    given = spec is not None
    if spec is None:
        origin = recorded_origin(saved, recipe)  # a model file that moved along with SAVED_DIR is found there
        spec = origin.spec
        if not spec:
            raise ConfigError(f"{saved} does not record the model it was converted from; pass --teacher SPEC -c CKPT.")
        if checkpoint is None and not pretrained:
            checkpoint, pretrained = origin.checkpoint, origin.pretrained
            if checkpoint is not None and not checkpoint.is_file():
                raise ConfigError(f"{saved} was converted from the weights in {checkpoint}, which no longer exist there; "
                                  "pass -c CKPT with the original model's weights.")
    if checkpoint is None and not pretrained:
        why = "no -c given" if given else f"{saved} records no base checkpoint"
        raise ConfigError(
            f"the teacher {spec} would have random weights ({why}); pass -c CKPT with the original model's weights "
            "(or --pretrained), so that the ghost model learns from a trained model."
        )
    return spec, checkpoint, pretrained


def _previous_calibration(saved: Path) -> dict[str, Any] | None:
    """The calibration recorded in SAVED_DIR's report, if any: part of how the model got here."""
    with contextlib.suppress(OSError, ValueError, GhostifyError, TypeError, KeyError):
        return ComparisonReport.from_json((saved / "report.json").read_text()).calibration
    return None


@_command
@_takes_selection()
def inspect_command(
    model: ModelArg,
    ratio: RatioOpt = 2,
    *,
    selection: dict[str, Any],
    checkpoint: CheckpointOpt = None,
    trust_checkpoint: TrustOpt = False,
    input_size: InputSizeOpt = None,
    target: TargetOpt = Target.macs,
    target_batch: TargetBatchOpt = 1,
    budget: BudgetOpt = None,
    device: DeviceOpt = "cpu",
) -> None:
    """Show every conv of MODEL: shape, dilation, MACs, whether it would be converted, at what ratio and saving, and why not."""
    config = _config(ratio, selection)
    size = parse_input_size(input_size)
    resolved = _resolve(model, checkpoint, trust_checkpoint, False)
    size = input_size_for(resolved.model, size)
    _show_plan(resolved.model, _make_plan(resolved.model, config, target, size, target_batch, device, budget=budget), size)


@_command
def compare_command(
    original: Annotated[str, typer.Argument(metavar="ORIGINAL", help="The original model: a spec (see convert) or a directory from `convert -o`.", show_default=False)],
    converted: Annotated[str, typer.Argument(metavar="CONVERTED", help="The converted model: a directory written by `ghostify convert -o`.", show_default=False)],
    checkpoint: Annotated[Optional[Path], _value("--checkpoint", "-c", metavar="FILE", help="Weights for ORIGINAL when it is a spec; e.g. -c resnet20.th (default: random weights under the seed CONVERTED records).")] = None,
    trust_checkpoint: TrustOpt = False,
    pretrained: Annotated[bool, _flag("--pretrained", help="ORIGINAL has its source's pretrained weights; needs a network or the cache (default: off).")] = False,
    input_size: InputSizeOpt = None,
    data: DataOpt = None,
    data_limit: DataLimitOpt = None,
    latency: LatencyOpt = False,
    device: DeviceOpt = "cpu",
    output: Annotated[Optional[Path], _value("--output", "-o", metavar="DIR", help="Write report.json, report.md and report.html here; e.g. -o out/r50-report (default: write nothing).")] = None,
    force: ForceOpt = False,
    layers: LayersOpt = False,
) -> None:
    """Compare ORIGINAL with CONVERTED: params, MACs, size, latency, accuracy and per-layer costs.

    ORIGINAL with random weights is built under the seed CONVERTED records; a warning says when ORIGINAL is not the model CONVERTED was converted from (another model, checkpoint or seed), as accuracy and agreement then compare unrelated models.
    """
    size = parse_input_size(input_size)
    if output is not None:  # before the slow work, not after it
        check_output_path(output, force=force, inputs=[original, original.rpartition(":")[0], converted, checkpoint])
    converted_path = Path(converted)
    if not converted_path.is_dir():
        raise ConfigError(f"CONVERTED must be a directory written by `ghostify convert -o`; {converted} is not a directory.")
    origin = recorded_origin(converted_path)
    original_model, original_name, resolved = _load_any(
        original, checkpoint, trust_checkpoint, pretrained=pretrained, label="original",
        seed=origin.seed if origin.seed is not None else DEFAULT_SEED)
    mismatch = origin_mismatch(converted, resolved, origin) if resolved is not None else None
    if mismatch:
        remedy = (f"compare with the original, `ghostify compare {origin.command_arguments()} {converted}`" if origin.rebuildable
                  else "the original cannot be rebuilt from what it records")
        stderr.print(f"[bold yellow]warning:[/] {escape(original)} is not the model {escape(converted)} was converted from: "
                     f"{escape(mismatch)}. Accuracy and agreement below compare unrelated models (parameters, MACs and "
                     f"size still compare); {escape(remedy)}.", highlight=False, soft_wrap=True)
    # where the recorded model file has moved away, ORIGINAL stands in as the base model
    stand_in = resolved.model if resolved is not None and origin.model_file_missing else None
    converted_model, converted_name, _ = _load_any(converted, None, trust_checkpoint, label="converted", base_model=stand_in)
    recorded = recorded_inputs(converted_path)  # the --input-size/--mean/--std given to convert
    size = input_size_for(original_model, size or recorded["input_size"])
    with step(stdout, "measuring"):
        report = compare(original_model, converted_model, input_size=size, latency=latency, device=device,
                         original_name=original_name, converted_name=converted_name,
                         **_data_args(data, data_limit, size, original_model, recorded["mean"], recorded["std"]))
    if resolved is not None:
        report.weights_note = resolved.weights_note + (f"; NOT the model {converted} was converted from: {mismatch}" if mismatch else "")
    stdout.print(report)
    if layers:
        stdout.print(report.layer_table())
    if output is not None:
        _write_output(output, force, report.save)


@_command
@_takes_selection(omit=["layer_ratio"])
def sweep(
    model: ModelArg,
    ratios: Annotated[str, _value("--ratios", metavar="S,S,...", help="Ratios to compare, comma-separated; e.g. --ratios 2,4,8 (default 2,3,4).")] = "2,3,4",
    *,
    selection: dict[str, Any],
    checkpoint: CheckpointOpt = None,
    trust_checkpoint: TrustOpt = False,
    input_size: InputSizeOpt = None,
    data: DataOpt = None,
    data_limit: DataLimitOpt = None,
    latency: LatencyOpt = False,
    device: DeviceOpt = "cpu",
    output: Annotated[Optional[Path], _value("--output", "-o", metavar="DIR", help="Write sweep.json, sweep.md and sweep.html here; e.g. -o out/sweep (default: write nothing).")] = None,
    force: ForceOpt = False,
    save_models: Annotated[bool, _flag("--save-models", help="Also save each converted model in DIR/ratio-S/ (needs -o DIR), as `convert -o` does (default: off).")] = False,
) -> None:
    """Convert MODEL at several ratios and compare them in one report (accuracy vs MACs with --data)."""
    ratio_list = parse_ratios(ratios)
    config = _config(ratio_list[0], selection)
    size = explicit_size = parse_input_size(input_size)
    if save_models and output is None:
        raise ConfigError("--save-models saves the converted models in the output directory: pass -o DIR too.")
    if output is not None:  # before the slow work, not after it
        check_output_path(output, force=force, inputs=[model.rpartition(":")[0], checkpoint])
    resolved = _resolve(model, checkpoint, trust_checkpoint, False)
    size = input_size_for(resolved.model, size)
    models: dict[int, nn.Module] = {}
    with step(stdout, f"converting and measuring at ratios {', '.join(map(str, ratio_list))}"):
        report = sweep_ratios(resolved.model, ratio_list, size, config=config, latency=latency, device=device,
                              model_name=display_spec(resolved.spec), on_converted=models.__setitem__ if save_models else None,
                              **_data_args(data, data_limit, size, resolved.model))
    stdout.print(report)
    if output is not None:
        def write_report_and_models(staging: Path) -> None:
            report.save(staging)
            write_sweep_models(models, staging, base_model=resolved.spec, base_checkpoint=checkpoint,
                               base_seed=resolved.seed, inputs={"input_size": explicit_size})

        _write_output(output, force, write_report_and_models)


@_command
def bench_command(
    model: Annotated[str, typer.Argument(metavar="MODEL_OR_DIR", help="A directory written by `ghostify convert -o` (timed against the model it records), or a model spec (converted at --ratio first).", show_default=False)],
    ratio: RatioOpt = 2,
    checkpoint: CheckpointOpt = None,
    trust_checkpoint: TrustOpt = False,
    input_size: InputSizeOpt = None,
    batch_sizes: Annotated[str, _value("--batch-sizes", metavar="B,B,...", help="Batch sizes to time, comma-separated; e.g. --batch-sizes 1,8,64 (default 1,16).")] = "1,16",
    compiled: Annotated[bool, _flag("--compile", help="Also time both models under torch.compile (default: eager only).")] = False,
    frozen: Annotated[bool, _flag("--freeze", help="Also time both models frozen: one flat graph per input shape, ghost modules called straight on packed weights (ghostify.freeze; default: eager only).")] = False,
    repeats: Annotated[int, _value("--repeats", metavar="N", min=3, help="Timed runs per model and setting, interleaved; e.g. --repeats 50 (default 30).")] = 30,
    device: DeviceOpt = "cpu",
    deploy: DeployOpt = False,
    add_to_report: Annotated[bool, _flag("--report", help="Add the timings to the report in MODEL_OR_DIR (report.json, .md and .html, as `convert -o` wrote it); needs a directory (default: print only).")] = False,
) -> None:
    """Time the converted model against the original: medians of interleaved runs per batch size, eager, frozen and compiled."""
    sizes = parse_input_size(input_size)
    batches = parse_batch_sizes(batch_sizes)
    path = Path(model)
    saved_report = None
    if add_to_report:
        if not (path / "report.json").is_file():
            raise ConfigError(f"--report adds the timings to the report of a directory written by `ghostify convert -o`; "
                              f"{model} has no report.json. Pass such a directory, or leave --report out.")
        try:
            saved_report = ComparisonReport.from_json((path / "report.json").read_text(encoding="utf-8"))
        except ValueError as err:  # not JSON
            raise ConfigError(f"cannot read {path / 'report.json'} ({err}); write it again with `ghostify convert -o`.") from None
    if path.is_dir():
        origin = recorded_origin(path)
        if origin.spec is None or origin.model_file_missing:
            raise ConfigError(f"{model} does not record a base model ghostify can build; time it in Python with "
                              "ghostify.bench(original, ghostify.load(dir, base_model=original), input_size).")
        resolved = _resolve(origin.spec, origin.checkpoint, trust_checkpoint, origin.pretrained, label="original",
                            seed=origin.seed if origin.seed is not None else DEFAULT_SEED)
        with step(stdout, f"loading {model}"):
            converted = load(path, base_model=resolved.model, trust_checkpoint=trust_checkpoint)
        converted_name = model
        sizes = sizes or recorded_inputs(path)["input_size"]
    else:
        resolved = _resolve(model, checkpoint, trust_checkpoint, False)
        with step(stdout, "converting"):
            converted = convert_model(resolved.model, GhostConfig(ratio=ratio))
        converted_name = f"{display_spec(resolved.spec)} (ghost s={ratio})"
    sizes = input_size_for(resolved.model, sizes)
    if deploy:
        converted = _deployed(converted)
        converted_name += " (deploy form)"
    with step(stdout, "timing"):
        report = bench(resolved.model, converted, sizes, batch_sizes=batches, device=device, compiled=compiled,
                       frozen=frozen, repeats=repeats, original_name=display_spec(resolved.spec), converted_name=converted_name)
    stdout.print(report.table())
    if saved_report is not None:
        saved_report.bench = report.to_dict()
        written = saved_report.save(path, force=True)
        stdout.print(f"timings added to {', '.join(str(p) for p in written)}", highlight=False, soft_wrap=True)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
