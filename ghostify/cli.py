"""``ghostify`` command line: a thin layer over the Python API.

User mistakes (``GhostifyError``) print one actionable line on stderr and exit 1, without a
traceback; typer itself rejects malformed options (``--ratio 1.5``) with exit 2.
"""

from __future__ import annotations

import contextlib
import math
import re
import sys
from collections.abc import Callable, Sequence
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, NoReturn, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from torch import nn

from .config import GhostConfig
from .convert import convert as convert_model
from .convert import plan_conversion
from .data import InputPipeline
from .distill import DistillConfig
from .errors import ConfigError, GhostifyError
from .evaluate import AccuracyStats, image_folder
from .graph_pass import VARIANTS
from .models import ResolvedModel, default_input_size, resolve_model
from .outputs import atomic_directory, check_output_path
from .recovery import Recovery, check_resume, checkpoint_file, is_main_process, recover, remove_checkpoint
from .report import ComparisonReport, compare
from .selection import ConversionPlan
from .serialization import base_weights, load, read_recipe, recorded_inputs, write_model_files
from .sweep import parse_ratios, sweep as sweep_ratios

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


class InitMode(str, Enum):
    transfer = "transfer"
    random = "random"


ModelArg = Annotated[str, typer.Argument(help="timm name (resnet50), torchvision:NAME, or path/to/file.py:function.", show_default=False)]
RatioOpt = Annotated[int, typer.Option("--ratio", "-s", min=2, help="Ghost ratio s: each intrinsic map makes s-1 ghosts (~s times cheaper).")]
DwSizeOpt = Annotated[int, typer.Option("--dw-size", "-d", min=1, help="Kernel size d of the cheap depthwise conv (odd).")]
IncludeOpt = Annotated[Optional[list[str]], typer.Option("--include", help="Convert only layers matching this pattern (repeatable): name, suffix, glob, or re:REGEX.")]
ExcludeOpt = Annotated[Optional[list[str]], typer.Option("--exclude", help="Leave layers matching this pattern alone (repeatable).")]
LayerRatioOpt = Annotated[Optional[list[str]], typer.Option("--layer-ratio", help="PATTERN=RATIO override (repeatable, first match wins; RATIO 1 keeps the layer).")]
MinChannelsOpt = Annotated[int, typer.Option("--min-channels", min=1, help="Leave convs with fewer output channels alone.")]
SkipStemOpt = Annotated[bool, typer.Option("--skip-stem/--convert-stem", help="Keep the first conv as it is (default, as in the paper: it costs few MACs and converting it loses the most accuracy), or convert it too.")]
SkipPointwiseOpt = Annotated[bool, typer.Option("--skip-pointwise", help="Leave 1x1 convs alone.")]
CheckpointOpt = Annotated[Optional[Path], typer.Option("--checkpoint", "-c", help="Weights to load: a state dict, {'state_dict': ...} or {'model': ...}; a 'module.' prefix is stripped.")]
TrustOpt = Annotated[bool, typer.Option("--trust-checkpoint", help="Allow checkpoints holding pickled Python objects. Unpickling can run code: only for files you trust.")]
PretrainedOpt = Annotated[bool, typer.Option("--pretrained", help="Download the source's pretrained weights (needs a network).")]
DataOpt = Annotated[Optional[Path], typer.Option("--data", help="ImageFolder root (DIR/<class>/<image>) to measure top-1 and agreement with the original.")]
DataDirsOpt = Annotated[Optional[list[Path]], typer.Option("--data", help=(
    "Images to calibrate/distill on (repeatable): an ImageFolder tree DIR/<class>/<image> or a flat folder. "
    "convert without --calibrate/--distill: one ImageFolder root to measure top-1 and agreement on."))]
ValDataOpt = Annotated[Optional[list[Path]], typer.Option("--val-data", help=(
    "Held-out images (repeatable) to measure agreement with the original (and top-1, when in class folders) after "
    "each step and each epoch."))]
DataLimitOpt = Annotated[Optional[int], typer.Option("--data-limit", min=1, help="Use at most this many images of --data (spread over all classes).")]
LatencyOpt = Annotated[bool, typer.Option("--latency", help="Also time both models (median of repeated runs, interleaved).")]
DeviceOpt = Annotated[str, typer.Option(help="Device: cpu, cuda or cuda:N; for --latency, and for calibration and training.")]
ForceOpt = Annotated[bool, typer.Option("--force", help="Replace an existing non-empty output directory.")]
InputSizeOpt = Annotated[Optional[str], typer.Option("--input-size", help="C,H,W of one input (default: the model's own, else 3,224,224).")]
MeanOpt = Annotated[Optional[str], typer.Option("--mean", help="Per-channel mean to normalise images with, e.g. 0.4914,0.4822,0.4465 (default: the model's own, else ImageNet's).")]
StdOpt = Annotated[Optional[str], typer.Option("--std", help="Per-channel std to normalise images with, e.g. 0.247,0.243,0.261 (default: the model's own, else ImageNet's).")]
_TRAINING = DistillConfig()  # the defaults shown in --help
EpochsOpt = Annotated[Optional[int], typer.Option("--epochs", min=1, help=f"Distillation epochs (default {_TRAINING.epochs}).", show_default=False)]
BatchSizeOpt = Annotated[Optional[int], typer.Option("--batch-size", min=1, help=f"Distillation batch size (default {_TRAINING.batch_size}).", show_default=False)]
LrOpt = Annotated[Optional[float], typer.Option("--lr", help=f"Peak learning rate of distillation (default {_TRAINING.lr}).", show_default=False)]
SeedOpt = Annotated[Optional[int], typer.Option("--seed", min=0, help="Seed of every random choice of calibration and distillation (default 0).", show_default=False)]
CalibrationSamplesOpt = Annotated[Optional[int], typer.Option("--calibration-samples", min=1, help="Images of --data that calibration fits on (default 512).", show_default=False)]
ResumeOpt = Annotated[bool, typer.Option("--resume", help="Continue an interrupted distillation from its checkpoint (kept beside the output directory).")]

CALIBRATION_SAMPLES = 512


def _fail(message: str) -> NoReturn:
    stderr.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)  # "[a, b]" is text, not markup
    raise typer.Exit(code=1)


def _parse_input_size(text: str | None) -> tuple[int, int, int] | None:
    """``--input-size`` as (C, H, W); None when not given (the model's own size is used then)."""
    if text is None:
        return None
    parts = [p for p in re.split(r"[,x\s]+", text.strip()) if p]
    if not all(p.isascii() and p.isdigit() and int(p) > 0 for p in parts) or len(parts) not in (1, 2, 3):
        raise ConfigError(f"--input-size must look like 3,224,224 (C,H,W), 224,224 or 224, every number >= 1; got {text!r}.")
    values = [int(p) for p in parts]
    if len(values) == 1:
        values = [3, values[0], values[0]]
    elif len(values) == 2:
        values = [3, *values]
    return values[0], values[1], values[2]


def _parse_layer_ratios(rules: list[str] | None) -> list[tuple[str, int]]:
    parsed = []
    for rule in rules or []:
        pattern, sep, ratio = rule.rpartition("=")
        if not sep or not pattern or not (ratio.strip().isascii() and ratio.strip().isdigit()):
            raise ConfigError(f"--layer-ratio expects PATTERN=RATIO such as 'layer4.*=4', got {rule!r}.")
        parsed.append((pattern, int(ratio)))
    return parsed


def _config(ratio: int, dw_size: int, include, exclude, layer_ratio, min_channels, skip_stem, skip_pointwise, variant="linear", init="transfer") -> GhostConfig:
    return GhostConfig(
        ratio=ratio, dw_size=dw_size, include=tuple(include or ()), exclude=tuple(exclude or ()),
        layer_ratios=tuple(_parse_layer_ratios(layer_ratio)), min_channels=min_channels,
        skip_stem=skip_stem, skip_pointwise=skip_pointwise, variant=variant, init=init,
    )


def plan_table(plan: ConversionPlan) -> Table:
    """Every conv with its decision, for ``inspect`` and ``convert --dry-run``."""
    table = Table(title=f"Conversion plan ({len(plan.converted)} of {len(plan.layers)} convs converted)", title_justify="left")
    for column in ("layer", "in->out", "kernel", "stride", "calls", "ratio", "decision"):
        table.add_column(column, justify="right" if column in ("calls", "ratio") else "left")
    for layer in plan.layers:
        kernel = "x".join(map(str, layer.kernel_size)) if layer.kernel_size else "?"
        stride = "x".join(map(str, layer.stride)) if layer.stride else "-"
        decision = "[green]convert[/]" if layer.convert else f"[yellow]keep[/]: {layer.reason}"
        table.add_row(layer.name, f"{layer.in_channels}->{layer.out_channels}", kernel, stride,
                      str(layer.call_sites), str(layer.ratio), decision)
    return table


def _print_trace(plan: ConversionPlan) -> None:
    if plan.trace == "fx":
        stdout.print("analysis: torch.fx graph (call sites and stem from the traced forward)")
    else:
        stdout.print(f"analysis: module walk, because {escape(str(plan.trace_note))}", soft_wrap=True)


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


def _load_any(spec: str, checkpoint: Path | None, trust: bool) -> tuple[nn.Module, str]:
    """A model from a spec, or from a directory written by ``convert -o``; with its display name."""
    path = Path(spec)
    if path.is_dir():
        if checkpoint is not None:
            raise ConfigError(f"{spec} is a saved ghostify directory: it carries its weights, so --checkpoint does not apply to it.")
        with stdout.status(f"loading {spec} ..."):
            model = load(path, trust_checkpoint=trust)
        stdout.print(f"model: [bold]{escape(spec)}[/] (saved ghostify model)", highlight=False, soft_wrap=True)
        return model, spec
    resolved = _resolve(spec, checkpoint, trust, False)
    return resolved.model, resolved.spec


def _write_output(output: Path, force: bool, write: Callable[[Path], object]) -> None:
    """Let ``write`` fill a staging directory that then replaces ``output`` at once; say what was written."""
    with atomic_directory(output, force=force) as staging:
        write(staging)
        written = ", ".join(sorted(path.name for path in staging.iterdir()))
    stdout.print(f"wrote {escape(str(output))}/ ({escape(written)})", highlight=False, soft_wrap=True)


def _show_plan(model: nn.Module, config: GhostConfig) -> None:
    plan = plan_conversion(model, config)
    _print_trace(plan)
    stdout.print(plan_table(plan))


def _resolve(model: str, checkpoint: Path | None, trust: bool, pretrained: bool, label: str = "model") -> ResolvedModel:
    with stdout.status(f"building {model} ..."):
        resolved = resolve_model(model, checkpoint=checkpoint, pretrained=pretrained, trust_checkpoint=trust)
    stdout.print(f"{label}: [bold]{escape(resolved.spec)}[/], {escape(resolved.weights_note)}", highlight=False, soft_wrap=True)
    return resolved


# ----- calibration and distillation ---------------------------------------------------------------

def _training_options(epochs: int | None, batch_size: int | None, lr: float | None, seed: int | None) -> dict[str, Any]:
    """The ``DistillConfig`` fields given on the command line (the rest keep their defaults)."""
    if lr is not None and not (math.isfinite(lr) and lr > 0):
        raise ConfigError(f"--lr must be a number > 0, got {lr}.")
    given = {"epochs": epochs, "batch_size": batch_size, "lr": lr, "seed": seed}
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


@app.command()
def convert(
    model: ModelArg,
    ratio: RatioOpt = 2,
    dw_size: DwSizeOpt = 3,
    include: IncludeOpt = None,
    exclude: ExcludeOpt = None,
    layer_ratio: LayerRatioOpt = None,
    min_channels: MinChannelsOpt = 8,
    skip_stem: SkipStemOpt = True,
    skip_pointwise: SkipPointwiseOpt = False,
    variant: Annotated[Variant, typer.Option(help="Ghost module kind: 'linear' is a drop-in for a conv; 'paper-bn-relu' has BN+ReLU inside (train it).")] = Variant("linear"),
    init: Annotated[InitMode, typer.Option(help="'transfer' starts from the original weights; 'random' from scratch.")] = InitMode.transfer,
    checkpoint: CheckpointOpt = None,
    trust_checkpoint: TrustOpt = False,
    pretrained: PretrainedOpt = False,
    input_size: InputSizeOpt = None,
    mean: MeanOpt = None,
    std: StdOpt = None,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Write model.safetensors, ghostify.json and the report (JSON, Markdown, HTML) here.")] = None,
    force: ForceOpt = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show the plan only; convert nothing.")] = False,
    calibrate: Annotated[bool, typer.Option("--calibrate", help="Fit each ghost module to the original layer's outputs on --data (closed form, no training; minutes).")] = False,
    distill: Annotated[bool, typer.Option("--distill", help="Calibrate, then train the ghost model to reproduce the original on --data (knowledge distillation).")] = False,
    data: DataDirsOpt = None,
    val_data: ValDataOpt = None,
    data_limit: DataLimitOpt = None,
    calibration_samples: CalibrationSamplesOpt = None,
    epochs: EpochsOpt = None,
    batch_size: BatchSizeOpt = None,
    lr: LrOpt = None,
    seed: SeedOpt = None,
    resume: ResumeOpt = False,
    latency: LatencyOpt = False,
    device: DeviceOpt = "cpu",
    layers: Annotated[bool, typer.Option("--layers", help="Print the per-layer table too.")] = False,
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
        config = _config(ratio, dw_size, include, exclude, layer_ratio, min_channels, skip_stem, skip_pointwise, variant.value, init.value)
        size = explicit_size = _parse_input_size(input_size)  # a typo fails before the model is built
        norm_mean, norm_std = _parse_floats("--mean", mean), _parse_floats("--std", std)
        options = _training_options(epochs, batch_size, lr, seed)
        _check_convert_options(recovering, distill, data, val_data, data_limit, calibration_samples, options, resume, output)
        check_resume(ckpt, resume)
        if output is not None and not dry_run:  # before the slow work, not after it
            check_output_path(output, force=force, inputs=[model.rpartition(":")[0], checkpoint, *(data or []), *(val_data or [])])
        resolved = _resolve(model, checkpoint, trust_checkpoint, pretrained)
        size = size or default_input_size(resolved.model)
        if dry_run:
            _show_plan(resolved.model, config)
            return
        with stdout.status("converting ..."):
            converted = convert_model(resolved.model, config)
        _print_trace(converted.ghostify_plan)
        done = None
        if recovering:
            pipeline = InputPipeline.for_model(resolved.model, explicit_size, norm_mean, norm_std)
            done = recover(converted, resolved.model, data=list(data or []), val_data=val_data, pipeline=pipeline,
                            device=device, calibrate=True, distill=distill, samples=calibration_samples or CALIBRATION_SAMPLES,
                            options=options, checkpoint=ckpt, resume=resume, start_stage="converted (data-free)",
                            console=stdout)
            if not is_main_process():
                return
        eval_data = (data or [None])[0] if not recovering else None
        with stdout.status("measuring ..."):
            report = compare(resolved.model, converted, input_size=size, latency=latency, device=device,
                             original_name=resolved.spec, converted_name=f"{resolved.spec} (ghost s={ratio})",
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
                                  inputs={"input_size": explicit_size, "mean": norm_mean, "std": norm_std})
                report.save(staging)

            _write_output(output, force, write_model_and_report)
            remove_checkpoint(ckpt)
    except GhostifyError as err:
        _fail(str(err))
    except KeyboardInterrupt:
        _interrupted(ckpt)


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


@app.command(name="distill")
def distill_command(
    saved: Annotated[Path, typer.Argument(metavar="SAVED_DIR", help="A directory written by `ghostify convert -o` (or by this command).", show_default=False)],
    data: DataDirsOpt = None,
    val_data: ValDataOpt = None,
    epochs: EpochsOpt = None,
    batch_size: BatchSizeOpt = None,
    lr: LrOpt = None,
    seed: SeedOpt = None,
    teacher: Annotated[Optional[str], typer.Option("--teacher", help="The original model (a spec, see convert) (default: the base model recorded in SAVED_DIR).", show_default=False)] = None,
    checkpoint: Annotated[Optional[Path], typer.Option("--checkpoint", "-c", help="The teacher's weights (default: the base checkpoint recorded in SAVED_DIR).", show_default=False)] = None,
    trust_checkpoint: TrustOpt = False,
    pretrained: Annotated[bool, typer.Option("--pretrained", help="The teacher has its source's pretrained weights (needs a network or the cache).")] = False,
    input_size: InputSizeOpt = None,
    mean: MeanOpt = None,
    std: StdOpt = None,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Write the distilled model and its report here (default: replace SAVED_DIR).", show_default=False)] = None,
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
        size = _parse_input_size(input_size)
        norm_mean, norm_std = _parse_floats("--mean", mean), _parse_floats("--std", std)
        options = _training_options(epochs, batch_size, lr, seed)
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
        with stdout.status(f"loading {saved} ..."):
            student = load(saved, base_model=resolved.model)  # the teacher's architecture must fit the student's
        stdout.print(f"student: [bold]{escape(str(saved))}[/] (saved ghostify model)", highlight=False, soft_wrap=True)
        pipeline = InputPipeline.for_model(resolved.model, size, norm_mean, norm_std)
        done = recover(student, resolved.model, data=list(data), val_data=val_data, pipeline=pipeline, device=device,
                        calibrate=False, distill=True, samples=0, options=options, checkpoint=ckpt, resume=resume,
                        start_stage="saved", console=stdout)
        if not is_main_process():
            return
        size = size or default_input_size(resolved.model)
        with stdout.status("measuring ..."):
            report = compare(resolved.model, student, input_size=size, latency=latency, device=device,
                             original_name=resolved.spec, converted_name=f"{saved.name} (distilled)")
        report.weights_note = resolved.weights_note
        _fill_report(report, done)
        report.calibration = _previous_calibration(saved)
        stdout.print(report)  # with the accuracy of each stage, teacher vs student

        def write_model_and_report(staging: Path) -> None:
            write_model_files(student, staging, base_model=resolved.spec, base_checkpoint=teacher_checkpoint,
                              base_pretrained=teacher_pretrained, inputs=explicit)
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
        spec = recipe.get("base_model")
        if not spec:
            raise ConfigError(f"{saved} does not record the model it was converted from; pass --teacher SPEC -c CKPT.")
        if checkpoint is None and not pretrained:
            checkpoint, pretrained = base_weights(saved, recipe)
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


@app.command()
def inspect(
    model: ModelArg,
    ratio: RatioOpt = 2,
    dw_size: DwSizeOpt = 3,
    include: IncludeOpt = None,
    exclude: ExcludeOpt = None,
    layer_ratio: LayerRatioOpt = None,
    min_channels: MinChannelsOpt = 8,
    skip_stem: SkipStemOpt = True,
    skip_pointwise: SkipPointwiseOpt = False,
    checkpoint: CheckpointOpt = None,
    trust_checkpoint: TrustOpt = False,
) -> None:
    """Show every conv of MODEL, whether it would be converted, at what ratio, and why not."""
    try:
        config = _config(ratio, dw_size, include, exclude, layer_ratio, min_channels, skip_stem, skip_pointwise)
        resolved = _resolve(model, checkpoint, trust_checkpoint, False)
        _show_plan(resolved.model, config)
    except GhostifyError as err:
        _fail(str(err))


@app.command(name="compare")
def compare_command(
    original: Annotated[str, typer.Argument(help="The original model: a spec (see convert) or a directory from `convert -o`.", show_default=False)],
    converted: Annotated[str, typer.Argument(help="The converted model: a directory written by `ghostify convert -o`.", show_default=False)],
    checkpoint: Annotated[Optional[Path], typer.Option("--checkpoint", "-c", help="Weights for ORIGINAL when it is a spec.")] = None,
    trust_checkpoint: TrustOpt = False,
    input_size: InputSizeOpt = None,
    data: DataOpt = None,
    data_limit: DataLimitOpt = None,
    latency: LatencyOpt = False,
    device: DeviceOpt = "cpu",
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Write report.json, report.md and report.html here.")] = None,
    force: ForceOpt = False,
    layers: Annotated[bool, typer.Option("--layers", help="Print the per-layer table too.")] = False,
) -> None:
    """Compare ORIGINAL with CONVERTED: params, MACs, size, latency, accuracy and per-layer costs."""
    try:
        size = _parse_input_size(input_size)
        if output is not None:  # before the slow work, not after it
            check_output_path(output, force=force, inputs=[original, original.rpartition(":")[0], converted, checkpoint])
        original_model, original_name = _load_any(original, checkpoint, trust_checkpoint)
        converted_path = Path(converted)
        if not converted_path.is_dir():
            raise ConfigError(f"CONVERTED must be a directory written by `ghostify convert -o`; {converted} is not a directory.")
        converted_model, converted_name = _load_any(converted, None, trust_checkpoint)
        size = size or default_input_size(original_model)
        with stdout.status("measuring ..."):
            report = compare(original_model, converted_model, input_size=size, latency=latency, device=device,
                             original_name=original_name, converted_name=converted_name,
                             **_data_args(data, data_limit, size, original_model))
        stdout.print(report)
        if layers:
            stdout.print(report.layer_table())
        if output is not None:
            _write_output(output, force, report.save)
    except GhostifyError as err:
        _fail(str(err))


@app.command()
def sweep(
    model: ModelArg,
    ratios: Annotated[str, typer.Option("--ratios", help="Comma-separated ratios to compare, e.g. 2,3,4.")] = "2,3,4",
    dw_size: DwSizeOpt = 3,
    include: IncludeOpt = None,
    exclude: ExcludeOpt = None,
    min_channels: MinChannelsOpt = 8,
    skip_stem: SkipStemOpt = True,
    skip_pointwise: SkipPointwiseOpt = False,
    checkpoint: CheckpointOpt = None,
    trust_checkpoint: TrustOpt = False,
    input_size: InputSizeOpt = None,
    data: DataOpt = None,
    data_limit: DataLimitOpt = None,
    latency: LatencyOpt = False,
    device: DeviceOpt = "cpu",
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Write sweep.json, sweep.md and sweep.html here.")] = None,
    force: ForceOpt = False,
) -> None:
    """Convert MODEL at several ratios and compare them in one report (accuracy vs MACs with --data)."""
    try:
        ratio_list = parse_ratios(ratios)
        config = _config(ratio_list[0], dw_size, include, exclude, None, min_channels, skip_stem, skip_pointwise)
        size = _parse_input_size(input_size)
        if output is not None:  # before the slow work, not after it
            check_output_path(output, force=force, inputs=[model.rpartition(":")[0], checkpoint])
        resolved = _resolve(model, checkpoint, trust_checkpoint, False)
        size = size or default_input_size(resolved.model)
        with stdout.status(f"converting and measuring at ratios {ratio_list} ..."):
            report = sweep_ratios(resolved.model, ratio_list, size, config=config, latency=latency, device=device,
                                  model_name=resolved.spec, **_data_args(data, data_limit, size, resolved.model))
        stdout.print(report)
        if output is not None:
            _write_output(output, force, report.save)
    except GhostifyError as err:
        _fail(str(err))


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
