"""``ghostify`` command line: a thin layer over the Python API.

User mistakes (``GhostifyError``) print one actionable line on stderr and exit 1, without a
traceback; typer itself rejects malformed options (``--ratio 1.5``) with exit 2.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import Annotated, NoReturn, Optional

import typer
from rich.console import Console
from rich.table import Table
from torch import nn

from .config import GhostConfig
from .convert import convert as convert_model
from .convert import plan_conversion
from .errors import ConfigError, GhostifyError
from .evaluate import image_folder, normalization_for
from .graph_pass import VARIANTS
from .models import ResolvedModel, default_input_size, resolve_model
from .outputs import atomic_directory, check_output_path
from .report import compare
from .selection import ConversionPlan
from .serialization import load
from .sweep import parse_ratios, sweep as sweep_ratios
from .serialization import write_model_files

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
SkipStemOpt = Annotated[bool, typer.Option("--skip-stem", help="Leave the first conv alone.")]
SkipPointwiseOpt = Annotated[bool, typer.Option("--skip-pointwise", help="Leave 1x1 convs alone.")]
CheckpointOpt = Annotated[Optional[Path], typer.Option("--checkpoint", "-c", help="Weights to load: a state dict, {'state_dict': ...} or {'model': ...}; a 'module.' prefix is stripped.")]
TrustOpt = Annotated[bool, typer.Option("--trust-checkpoint", help="Allow checkpoints holding pickled Python objects. Unpickling can run code: only for files you trust.")]
PretrainedOpt = Annotated[bool, typer.Option("--pretrained", help="Download the source's pretrained weights (needs a network).")]
DataOpt = Annotated[Optional[Path], typer.Option("--data", help="ImageFolder root (DIR/<class>/<image>) to measure top-1 and agreement with the original.")]
DataLimitOpt = Annotated[Optional[int], typer.Option("--data-limit", min=1, help="Use at most this many images of --data (spread over all classes).")]
LatencyOpt = Annotated[bool, typer.Option("--latency", help="Also time both models (median of repeated runs, interleaved).")]
DeviceOpt = Annotated[str, typer.Option(help="Device for --latency: cpu or cuda.")]
ForceOpt = Annotated[bool, typer.Option("--force", help="Replace an existing non-empty output directory.")]
InputSizeOpt = Annotated[Optional[str], typer.Option("--input-size", help="C,H,W of one input (default: the model's own, else 3,224,224).")]


def _fail(message: str) -> NoReturn:
    stderr.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
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
        stdout.print(f"analysis: module walk, because {plan.trace_note}", soft_wrap=True)


def _data_args(data: Path | None, limit: int | None, size: tuple[int, int, int], model) -> dict:
    """``compare``/``sweep`` keyword arguments for evaluating on ``--data``, normalised as the model expects."""
    if data is None:
        return {}
    mean, std = normalization_for(model)
    return {"data": image_folder(data, size, mean=mean, std=std, limit=limit), "data_name": str(data)}


def _load_any(spec: str, checkpoint: Path | None, trust: bool) -> tuple[nn.Module, str]:
    """A model from a spec, or from a directory written by ``convert -o``; with its display name."""
    path = Path(spec)
    if path.is_dir():
        if checkpoint is not None:
            raise ConfigError(f"{spec} is a saved ghostify directory: it carries its weights, so --checkpoint does not apply to it.")
        with stdout.status(f"loading {spec} ..."):
            model = load(path, trust_checkpoint=trust)
        stdout.print(f"model: [bold]{spec}[/] (saved ghostify model)", highlight=False, soft_wrap=True)
        return model, spec
    resolved = _resolve(spec, checkpoint, trust, False)
    return resolved.model, resolved.spec


def _write_output(output: Path, force: bool, write: Callable[[Path], object]) -> None:
    """Let ``write`` fill a staging directory that then replaces ``output`` at once; say what was written."""
    with atomic_directory(output, force=force) as staging:
        write(staging)
        written = ", ".join(sorted(path.name for path in staging.iterdir()))
    stdout.print(f"wrote {output}/ ({written})", highlight=False, soft_wrap=True)


def _show_plan(model: nn.Module, config: GhostConfig) -> None:
    plan = plan_conversion(model, config)
    _print_trace(plan)
    stdout.print(plan_table(plan))


def _resolve(model: str, checkpoint: Path | None, trust: bool, pretrained: bool) -> ResolvedModel:
    with stdout.status(f"building {model} ..."):
        resolved = resolve_model(model, checkpoint=checkpoint, pretrained=pretrained, trust_checkpoint=trust)
    stdout.print(f"model: [bold]{resolved.spec}[/], {resolved.weights_note}", highlight=False, soft_wrap=True)
    return resolved


@app.command()
def convert(
    model: ModelArg,
    ratio: RatioOpt = 2,
    dw_size: DwSizeOpt = 3,
    include: IncludeOpt = None,
    exclude: ExcludeOpt = None,
    layer_ratio: LayerRatioOpt = None,
    min_channels: MinChannelsOpt = 8,
    skip_stem: SkipStemOpt = False,
    skip_pointwise: SkipPointwiseOpt = False,
    variant: Annotated[Variant, typer.Option(help="Ghost module kind: 'linear' is a drop-in for a conv; 'paper-bn-relu' has BN+ReLU inside (train it).")] = Variant("linear"),
    init: Annotated[InitMode, typer.Option(help="'transfer' starts from the original weights; 'random' from scratch.")] = InitMode.transfer,
    checkpoint: CheckpointOpt = None,
    trust_checkpoint: TrustOpt = False,
    pretrained: PretrainedOpt = False,
    input_size: InputSizeOpt = None,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Write model.safetensors, ghostify.json and the report (JSON, Markdown, HTML) here.")] = None,
    force: ForceOpt = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show the plan only; convert nothing.")] = False,
    data: DataOpt = None,
    data_limit: DataLimitOpt = None,
    latency: LatencyOpt = False,
    device: DeviceOpt = "cpu",
    layers: Annotated[bool, typer.Option("--layers", help="Print the per-layer table too.")] = False,
) -> None:
    """Convert MODEL's eligible convs to ghost modules and print a before/after report."""
    try:
        config = _config(ratio, dw_size, include, exclude, layer_ratio, min_channels, skip_stem, skip_pointwise, variant.value, init.value)
        size = _parse_input_size(input_size)  # a typo fails before the model is built
        if output is not None and not dry_run:  # before the slow work, not after it
            check_output_path(output, force=force, inputs=[model.rpartition(":")[0], checkpoint])
        resolved = _resolve(model, checkpoint, trust_checkpoint, pretrained)
        size = size or default_input_size(resolved.model)
        if dry_run:
            _show_plan(resolved.model, config)
            return
        with stdout.status("converting ..."):
            converted = convert_model(resolved.model, config)
        _print_trace(converted.ghostify_plan)
        with stdout.status("measuring ..."):
            report = compare(resolved.model, converted, input_size=size, latency=latency, device=device,
                             original_name=resolved.spec, converted_name=f"{resolved.spec} (ghost s={ratio})",
                             **_data_args(data, data_limit, size, resolved.model))
        report.weights_note = resolved.weights_note
        stdout.print(report)
        if layers:
            stdout.print(report.layer_table())
        if output is not None:
            def write_model_and_report(staging: Path) -> None:
                write_model_files(converted, staging, base_model=resolved.spec)
                report.save(staging)

            _write_output(output, force, write_model_and_report)
    except GhostifyError as err:
        _fail(str(err))


@app.command()
def inspect(
    model: ModelArg,
    ratio: RatioOpt = 2,
    dw_size: DwSizeOpt = 3,
    include: IncludeOpt = None,
    exclude: ExcludeOpt = None,
    layer_ratio: LayerRatioOpt = None,
    min_channels: MinChannelsOpt = 8,
    skip_stem: SkipStemOpt = False,
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
    skip_stem: SkipStemOpt = False,
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
