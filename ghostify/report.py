"""Before/after comparison of a model and its ghostified copy: parameters, MACs, size, latency.

``compare(original, converted)`` measures both models on the same deterministic input and
joins the numbers with the conversion plan into a ``ComparisonReport``: one row per conv layer
(converted or why not) and a summary, plus, when calibration or distillation ran, the accuracy
each stage recovered. The report renders as rich tables (``print(report)``), Markdown
(``ghostify.report_render``), HTML (``ghostify.report_html``), and versioned JSON that reads
back with ``ComparisonReport.from_dict``.

This module holds the data types and the measurement; the renderers import nothing from it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from rich.console import Console, ConsoleOptions, RenderResult
from rich.table import Table
from rich.text import Text
from torch import nn
from torch.utils.data import Dataset

from . import report_render as render
from .convert import base_form
from .deploy import get_deploy_record
from .errors import GhostifyError
from .evaluate import AccuracyStats, evaluate
from .formatting import saving_percent, saving_ratio
from .measure import (
    LatencyStats, MacCount, check_runs, count_macs, count_params, example_input, measure_latencies, model_device,
    state_dict_bytes,
)
from .outputs import prepare_report_directory
from .records import RecordKind, known_fields
from .report_html import render_html
from .report_render import MACS_EXPLANATION, RENDER_WIDTH, render_text  # noqa: F401  (still importable from here)
from .selection import ConversionPlan, LayerPlan, get_plan
from .serialization import SAVED_MODEL_FILES
from .version import __version__

REPORT_SCHEMA = "ghostify.report"
REPORT_SCHEMA_VERSION = 3  # 2: recovery, calibration, training; 3: accuracy class counts, weight-op MACs (1 and 2 still read)


REPORT_RECORD = RecordKind("ghostify report", "schema_version", REPORT_SCHEMA_VERSION, "schema", REPORT_SCHEMA)


@dataclass(kw_only=True)
class LayerRow(LayerPlan):
    """One conv of the plan (its facts and decision) with its cost before and after; None where it cannot
    be measured (a functional ``conv2d`` call has no module to count)."""

    params_before: int | None = None
    params_after: int | None = None
    macs_before: int | None = None
    macs_after: int | None = None

    @property
    def macs_saved(self) -> int | None:
        if self.macs_before is None or self.macs_after is None:
            return None
        return self.macs_before - self.macs_after


@dataclass
class AccuracyStage:
    """Accuracy of one stage of recovery (original, data-free, calibrated, distilled) on held-out images.

    ``top1`` is None for unlabelled data; ``agreement`` is the share of images where this model's
    top-1 class equals the original model's (1.0 for the original itself).
    """

    stage: str
    top1: float | None
    agreement: float
    samples: int
    dataset: str


@dataclass
class ComparisonReport:
    """Costs of a model before and after ghostify, per conv layer and in total.

    ``macs_check_ok`` says whether fvcore's totals agree with the per-layer numbers: every
    converted layer's MACs are the sum of its parts, skipped layers cost the same as before, and
    everything outside the conv layers costs the same in both models (so total before minus
    total after is exactly what the layers saved). ``macs_check_notes`` says what disagreed.
    A conv layer's MACs are its convolution's; ``macs_weight_ops_*`` are the MACs conv modules
    spend on their own weights (timm's weight-standardised convs), counted outside the layers.
    """

    layers: list[LayerRow]
    params_before: int
    params_after: int
    macs_before: int
    macs_after: int
    size_bytes_before: int
    size_bytes_after: int
    convs_total: int
    convs_eligible: int
    convs_converted: int
    convs_skipped: int
    macs_outside_layers_before: int
    macs_outside_layers_after: int
    macs_check_ok: bool
    config: dict[str, Any]
    trace: str
    input_size: tuple[int, ...]
    batch_size: int = 1
    trace_note: str | None = None
    reparameterized_blocks: int = 0  # re-parameterisable blocks fused (in both models) before converting
    macs_check_notes: list[str] = field(default_factory=list)
    # of the MACs outside the layers: ops the conv modules run on their own weights (weight_op_macs)
    macs_weight_ops_before: int = 0
    macs_weight_ops_after: int = 0
    unsupported_ops_before: dict[str, int] = field(default_factory=dict)
    unsupported_ops_after: dict[str, int] = field(default_factory=dict)
    latency_before: LatencyStats | None = None
    latency_after: LatencyStats | None = None
    accuracy: AccuracyStats | None = None
    original_name: str = "original"
    converted_name: str = "converted"
    weights_note: str | None = None
    ghostify_version: str = ""
    # accuracy recovered by calibration / distillation, and how it got there
    recovery: list[AccuracyStage] = field(default_factory=list)
    calibration: dict[str, Any] | None = None  # CalibrationResult.to_dict()
    training: list[dict[str, Any]] = field(default_factory=list)  # DistillResult.to_dict()["history"]
    bench: dict[str, Any] | None = None  # BenchReport.to_dict(): `ghostify bench DIR --report` adds it

    SCHEMA: ClassVar[str] = REPORT_SCHEMA

    def __post_init__(self) -> None:
        # the shapes JSON gives back, so that from_dict(to_dict()) equals the report: stages as
        # AccuracyStage, tuples (a calibration's ``head``) as lists
        self.recovery = [stage if isinstance(stage, AccuracyStage) else AccuracyStage(**known_fields(AccuracyStage, stage))
                         for stage in self.recovery]
        self.calibration = _json_shaped(self.calibration)
        self.training = _json_shaped(self.training)
        self.bench = _json_shaped(self.bench)

    # ----- derived numbers -------------------------------------------------------------------

    @property
    def params_ratio(self) -> float | None:
        """Parameters before / after (1.83 = 1.83x smaller)."""
        return saving_ratio(self.params_before, self.params_after)

    @property
    def macs_ratio(self) -> float | None:
        return saving_ratio(self.macs_before, self.macs_after)

    @property
    def size_ratio(self) -> float | None:
        return saving_ratio(self.size_bytes_before, self.size_bytes_after)

    @property
    def latency_speedup(self) -> float | None:
        """Median latency before / after (1.2 = 1.2x faster); None without latency."""
        if self.latency_before is None or self.latency_after is None:
            return None
        return saving_ratio(self.latency_before.median_ms, self.latency_after.median_ms)

    def savings(self) -> dict[str, float | None]:
        """Ratios (before / after) and percentages saved, as written to JSON under ``savings``."""
        latency_before = self.latency_before.median_ms if self.latency_before else None
        latency_after = self.latency_after.median_ms if self.latency_after else None
        return {
            "params_ratio": self.params_ratio,
            "params_percent": saving_percent(self.params_before, self.params_after),
            "macs_ratio": self.macs_ratio,
            "macs_percent": saving_percent(self.macs_before, self.macs_after),
            "size_ratio": self.size_ratio,
            "size_percent": saving_percent(self.size_bytes_before, self.size_bytes_after),
            "latency_speedup": self.latency_speedup,
            "latency_percent": saving_percent(latency_before, latency_after),
        }

    # ----- JSON ------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict with ``schema``/``schema_version`` first and derived ``savings`` last."""
        body = asdict(self)
        body["input_size"] = list(self.input_size)
        return {"schema": REPORT_SCHEMA, "schema_version": REPORT_SCHEMA_VERSION, **body, "savings": self.savings()}

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, payload: Mapping[str, Any]) -> ComparisonReport:
        """Read back ``to_dict()`` output; ``GhostifyError`` if it is not a report this version reads."""
        REPORT_RECORD.version_of(payload)
        data = known_fields(cls, payload)
        data["layers"] = [LayerRow.from_dict(row) for row in payload.get("layers", [])]
        data["input_size"] = tuple(payload["input_size"])
        for key in ("latency_before", "latency_after"):
            if data.get(key) is not None:
                data[key] = LatencyStats.from_dict(data[key])
        if data.get("accuracy") is not None:
            data["accuracy"] = AccuracyStats(**known_fields(AccuracyStats, data["accuracy"]))
        data["recovery"] = [AccuracyStage(**known_fields(AccuracyStage, stage)) for stage in payload.get("recovery") or []]
        data["training"] = list(payload.get("training") or [])
        return cls(**data)

    @classmethod
    def from_json(cls, text: str) -> ComparisonReport:
        return cls.from_dict(json.loads(text))

    def save(self, directory: str | Path, *, force: bool = False) -> tuple[Path, Path, Path]:
        """Write ``report.json``, ``report.md`` and ``report.html`` into ``directory`` (created if
        missing); returns their paths in that order.

        As ``ghostify.save``, it refuses a non-empty directory unless ``force=True`` (which overwrites
        the report's files and keeps the rest), except a saved model's directory: the report joins it.
        """
        prepare_report_directory(directory, force=force, may_join=SAVED_MODEL_FILES)
        target = Path(directory)
        json_path, markdown_path, html_path = target / "report.json", target / "report.md", target / "report.html"
        json_path.write_text(self.to_json() + "\n", encoding="utf-8")
        markdown_path.write_text(self.to_markdown(), encoding="utf-8")
        html_path.write_text(render_html(self), encoding="utf-8")
        return json_path, markdown_path, html_path

    # ----- rendering (ghostify.report_render) ----------------------------------------------

    def _summary_rows(self) -> list[tuple[str, str, str, str]]:
        return render.summary_rows(self)

    def _notes(self) -> list[str]:
        return render.notes(self)

    def to_markdown(self) -> str:
        """The report as Markdown: summary table, notes, accuracy recovery, and one row per conv layer."""
        return render.to_markdown(self)

    def summary_table(self) -> Table:
        """Rich table: parameters, MACs, size, latency (if measured), conv counts, with savings."""
        return render.summary_table(self)

    def recovery_table(self) -> Table:
        """Rich table: top-1 and agreement with the original for each recovery stage."""
        return render.recovery_table(self)

    def layer_table(self, max_rows: int | None = None) -> Table:
        """Rich table with one row per conv layer; past ``max_rows`` a last row says how many were left out."""
        return render.layer_table(self, max_rows)

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        yield from render.renderables(self)

    def __str__(self) -> str:
        return render_text(self, Text(""), self.layer_table())


def _json_shaped(value: Any) -> Any:
    """A copy of ``value`` with tuples as lists and mappings as dicts, as ``json.loads`` returns it."""
    if isinstance(value, Mapping):
        return {key: _json_shaped(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_shaped(item) for item in value]
    return value


# ----- building a report ------------------------------------------------------------------------


def _module_params(model: nn.Module, layer: LayerPlan) -> int | None:
    if layer.kind != "module":
        return None
    for name in (layer.name, *layer.aliases):
        try:
            return count_params(model.get_submodule(name))
        except AttributeError:
            continue
    return None


def _module_macs(macs: MacCount, layer: LayerPlan) -> int | None:
    if layer.kind != "module":
        return None
    # fvcore names a module registered under several names by its first name, as the plan does
    return next((macs.of_layer(n) for n in (layer.name, *layer.aliases) if n in macs.by_module), None)


def _parts_macs(model: nn.Module, macs: MacCount, name: str) -> int | None:
    """Sum of the MACs of the direct children of the module at ``name`` (None if it has none)."""
    try:
        module = model.get_submodule(name)
    except AttributeError:
        return None
    children = [f"{name}.{child}" for child, _ in module.named_children()]
    if not children:
        return None
    return sum(macs.by_module.get(child, 0) for child in children)


def weight_op_macs(rows: Sequence[LayerRow], macs: MacCount) -> int:
    """MACs the rows' conv modules spend on their own weights (weight standardisation), which
    fvcore counts inside the module but the rows leave out (``MacCount.of_layer``)."""
    return sum(macs.weight_op_macs(row.name) for row in rows if row.kind == "module")


def folded_norm_macs(converted: nn.Module, before: MacCount) -> int:
    """fvcore's MACs of the original's BatchNorms that ``ghostify.deploy`` folded into ghost modules."""
    record = get_deploy_record(converted)
    if record is None:
        return 0
    return sum(before.of_layer(layer.folded_norm) or 0 for layer in record.layers if layer.folded_norm is not None)


def check_macs(
    rows: Sequence[LayerRow], before: MacCount, after: MacCount, converted: nn.Module
) -> tuple[bool, list[str], int, int]:
    """Cross-check the per-layer rows against fvcore's counts of the two models.

    Returns ``(ok, problems, outside_before, outside_after)``, ``outside_*`` being fvcore's total
    minus its MACs of the module conv layers. Holds when: each row states fvcore's number for its
    layer (for a conv, its convolution alone: ``MacCount.of_layer``); each converted layer costs
    exactly the sum of its parts (primary + cheap conv, ...); each kept layer costs what it did;
    everything outside the layers, less what conv modules spend on their own weights
    (``weight_op_macs``), costs the same before and after (so total before - total after is what
    the layers saved, plus any weight ops the ghost modules dropped); and, in each model, the
    layers' ``conv`` operator MACs do not exceed fvcore's total for that operator.
    """
    problems: list[str] = []
    measured: list[tuple[LayerRow, int, int]] = []
    for row in rows:
        if row.kind != "module":
            continue  # a functional conv has no module of its own: its MACs are in "outside"
        layer_before, layer_after = before.of_layer(row.name), after.of_layer(row.name)
        if layer_before is None or layer_after is None:
            problems.append(f"{row.name}: not found among fvcore's modules")
            continue
        if (row.macs_before, row.macs_after) != (layer_before, layer_after):
            problems.append(
                f"{row.name}: row says {row.macs_before} → {row.macs_after} MACs, fvcore {layer_before} → {layer_after}"
            )
        measured.append((row, layer_before, layer_after))
        if row.convert:
            parts = _parts_macs(converted, after, row.name)
            if parts is not None and parts != layer_after:
                problems.append(f"{row.name}: {layer_after} MACs but its parts sum to {parts}")
        elif layer_before != layer_after:
            problems.append(f"{row.name} was kept but its MACs changed ({layer_before} → {layer_after})")
    layers_before = sum(b for _, b, _ in measured)
    layers_after = sum(a for _, _, a in measured)
    outside_before, outside_after = before.total - layers_before, after.total - layers_after
    measured_rows = [row for row, _, _ in measured]
    weights_before, weights_after = weight_op_macs(measured_rows, before), weight_op_macs(measured_rows, after)
    weights_before += folded_norm_macs(converted, before)  # a deploy form computes its folded BatchNorms in the convs
    if outside_before - weights_before != outside_after - weights_after:
        weights = (f", less {weights_before} → {weights_after} spent by conv modules on their own weights"
                   if weights_before or weights_after else "")
        problems.append(
            f"MACs outside the conv layers changed ({outside_before - weights_before} → "
            f"{outside_after - weights_after}{weights}): total before - after = {before.total - after.total}, "
            f"but the layers saved {layers_before - layers_after}"
        )
    for label, macs in (("before", before), ("after", after)):
        conv_total = macs.by_operator.get("conv")
        layers_conv = sum(macs.operator_macs(row.name, "conv") for row in measured_rows)
        if conv_total is not None and layers_conv > conv_total:
            problems.append(
                f"conv layers {label} sum to {layers_conv} conv MACs, more than fvcore's conv total {conv_total}"
            )
    return not problems, problems, outside_before, outside_after


def _layer_row(layer: LayerPlan, original: nn.Module, converted: nn.Module, before: MacCount, after: MacCount) -> LayerRow:
    return LayerRow(
        **known_fields(LayerPlan, vars(layer)),
        params_before=_module_params(original, layer), params_after=_module_params(converted, layer),
        macs_before=_module_macs(before, layer), macs_after=_module_macs(after, layer),
    )


def _require_plan(converted: nn.Module) -> ConversionPlan:
    plan = get_plan(converted)
    if plan is None:
        raise GhostifyError("converted model carries no ghostify plan; make it with ghostify.convert or ghostify.load")
    return plan


def compare(
    original: nn.Module,
    converted: nn.Module,
    input_size: Iterable[int] = (3, 224, 224),
    *,
    batch_size: int = 1,
    latency: bool = False,
    device: str = "cpu",
    latency_warmup: int = 3,
    latency_repeats: int = 20,
    data: Dataset | None = None,
    data_name: str = "data",
    original_name: str = "original",
    converted_name: str = "converted",
) -> ComparisonReport:
    """Measure ``original`` and its ghostified ``converted`` copy on one input and report the difference.

    MACs are counted on each model's own device; ``latency=True`` also times both models on
    ``device`` (``latency_warmup`` untimed then ``latency_repeats`` timed runs each), interleaving
    their runs. With ``data`` (a labelled dataset, see ``ghostify.evaluate.image_folder``) it
    also measures top-1 accuracy of both and how often they agree. Neither model is changed.
    """
    plan = _require_plan(converted)
    original = base_form(original, plan)  # re-parameterisable blocks fused, as the converted model has them
    mismatch = plan.base_model_mismatch(original)
    if mismatch:
        raise GhostifyError(
            f"the converted model was not made from the original one: {mismatch}. "
            "Compare a converted model with the model it was converted from."
        )
    input_dims = tuple(input_size)
    inputs = example_input(input_dims, batch_size)
    check_runs(original, inputs.to(model_device(original)))
    before = count_macs(original, inputs.to(model_device(original)))
    after = count_macs(converted, inputs.to(model_device(converted)))
    rows = [_layer_row(layer, original, converted, before, after) for layer in plan.layers]
    ok, problems, outside_before, outside_after = check_macs(rows, before, after, converted)
    accuracy = evaluate(original, converted, data, name=data_name) if data is not None else None
    latency_before = latency_after = None
    if latency:
        latency_before, latency_after = measure_latencies(
            [original, converted], inputs, warmup=latency_warmup, repeats=latency_repeats, device=device
        )
    return ComparisonReport(
        layers=rows,
        params_before=count_params(original), params_after=count_params(converted),
        macs_before=before.total, macs_after=after.total,
        size_bytes_before=state_dict_bytes(original), size_bytes_after=state_dict_bytes(converted),
        convs_total=len(plan.layers), convs_eligible=len(plan.eligible),
        convs_converted=len(plan.converted), convs_skipped=len(plan.skipped),
        macs_outside_layers_before=outside_before, macs_outside_layers_after=outside_after,
        macs_check_ok=ok, macs_check_notes=problems,
        macs_weight_ops_before=weight_op_macs(rows, before), macs_weight_ops_after=weight_op_macs(rows, after),
        config=plan.config.to_dict(), trace=plan.trace, trace_note=plan.trace_note,
        reparameterized_blocks=len(plan.reparameterized), input_size=input_dims, batch_size=batch_size,
        unsupported_ops_before=dict(before.unsupported_ops), unsupported_ops_after=dict(after.unsupported_ops),
        latency_before=latency_before, latency_after=latency_after, accuracy=accuracy,
        original_name=original_name, converted_name=converted_name, ghostify_version=__version__,
    )
