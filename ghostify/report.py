"""Before/after comparison of a model and its ghostified copy: parameters, MACs, size, latency.

``compare(original, converted)`` measures both models on the same deterministic input and
joins the numbers with the conversion plan into a ``ComparisonReport``: one row per conv layer
(converted or why not) and a summary. The report renders as rich tables (``print(report)``),
Markdown, and versioned JSON that reads back with ``ComparisonReport.from_dict``.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from rich.console import Console, ConsoleOptions, Group, RenderResult
from rich.table import Table
from rich.text import Text
from torch import nn
from torch.utils.data import Dataset

from .convert import get_plan
from .errors import GhostifyError
from .formatting import (
    MISSING,
    human_bytes,
    human_count,
    human_ms,
    percent_text,
    ratio_text,
    saving_percent,
    saving_ratio,
)
from .measure import (
    LatencyStats, MacCount, check_runs, count_macs, count_params, example_input, measure_latencies, model_device,
    state_dict_bytes,
)
from .evaluate import AccuracyStats, evaluate
from .selection import ConversionPlan, LayerPlan

REPORT_SCHEMA = "ghostify.report"
REPORT_SCHEMA_VERSION = 1
MACS_EXPLANATION = "MACs: multiply-accumulates counted by fvcore; one multiply-add = one MAC."
RENDER_WIDTH = 120


def check_schema(payload: Mapping[str, Any], schema: str, version: int) -> None:
    """``GhostifyError`` unless ``payload`` is a ``schema`` record of a version this ghostify reads."""
    if not isinstance(payload, Mapping) or payload.get("schema") != schema:
        found = payload.get("schema") if isinstance(payload, Mapping) else type(payload).__name__
        kind = schema.rpartition(".")[2]  # "ghostify.report" -> "report"
        raise GhostifyError(f"not a ghostify {kind} (schema={found!r}, expected {schema!r})")
    found_version = payload.get("schema_version", 0)
    if isinstance(found_version, bool) or not isinstance(found_version, int) or found_version > version:
        raise GhostifyError(
            f"{schema} schema version {found_version!r} is newer than this ghostify reads ({version}); upgrade ghostify"
        )


@dataclass
class LayerRow:
    """One conv of the plan with its cost before and after; None where it cannot be measured
    (a functional ``conv2d`` call has no module to count)."""

    name: str
    kind: str
    in_channels: int | None
    out_channels: int | None
    kernel_size: list[int] | None
    stride: list[int] | None
    ratio: int
    convert: bool
    eligible: bool
    reason: str | None
    fit_error: float | None
    intrinsic_channels: int | None = None
    call_sites: int = 1
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
class ComparisonReport:
    """Costs of a model before and after ghostify, per conv layer and in total.

    ``macs_check_ok`` says whether fvcore's totals agree with the per-layer numbers: every
    converted layer's MACs are the sum of its parts, skipped layers cost the same as before, and
    everything outside the conv layers costs the same in both models (so total before minus
    total after is exactly what the layers saved). ``macs_check_notes`` says what disagreed.
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
    macs_check_notes: list[str] = field(default_factory=list)
    unsupported_ops_before: dict[str, int] = field(default_factory=dict)
    unsupported_ops_after: dict[str, int] = field(default_factory=dict)
    latency_before: LatencyStats | None = None
    latency_after: LatencyStats | None = None
    accuracy: AccuracyStats | None = None
    original_name: str = "original"
    converted_name: str = "converted"
    weights_note: str | None = None
    ghostify_version: str = ""

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
        check_schema(payload, REPORT_SCHEMA, REPORT_SCHEMA_VERSION)
        known = {f.name for f in fields(cls)}
        data = {key: value for key, value in payload.items() if key in known}
        data["layers"] = [LayerRow(**row) for row in payload.get("layers", [])]
        data["input_size"] = tuple(payload["input_size"])
        for key in ("latency_before", "latency_after"):
            if data.get(key) is not None:
                data[key] = LatencyStats.from_dict(data[key])
        if data.get("accuracy") is not None:
            data["accuracy"] = AccuracyStats(**data["accuracy"])
        return cls(**data)

    @classmethod
    def from_json(cls, text: str) -> ComparisonReport:
        return cls.from_dict(json.loads(text))

    def save(self, directory: str | Path) -> tuple[Path, Path, Path]:
        """Write ``report.json``, ``report.md`` and ``report.html`` into ``directory`` (created if
        missing); returns their paths in that order."""
        from .report_html import render_html

        target = Path(directory)
        target.mkdir(parents=True, exist_ok=True)
        json_path, markdown_path, html_path = target / "report.json", target / "report.md", target / "report.html"
        json_path.write_text(self.to_json() + "\n", encoding="utf-8")
        markdown_path.write_text(self.to_markdown(), encoding="utf-8")
        html_path.write_text(render_html(self), encoding="utf-8")
        return json_path, markdown_path, html_path

    # ----- shared text pieces ----------------------------------------------------------------

    def _input_text(self) -> str:
        return " x ".join(str(d) for d in (self.batch_size, *self.input_size))

    def _setting(self, name: str) -> Any:
        return self.config.get("_data", self.config).get(name)

    def _summary_rows(self) -> list[tuple[str, str, str, str]]:
        def saving(ratio: float | None, percent: float | None, smaller: str, larger: str) -> str:
            text = ratio_text(ratio, smaller, larger)
            return text if percent is None or text in (MISSING, "same") else f"{text} ({percent_text(percent)})"

        savings = self.savings()
        rows = [
            ("Parameters", human_count(self.params_before), human_count(self.params_after),
             saving(savings["params_ratio"], savings["params_percent"], "smaller", "larger")),
            ("MACs", human_count(self.macs_before), human_count(self.macs_after),
             saving(savings["macs_ratio"], savings["macs_percent"], "fewer", "more")),
            ("Size on disk (state dict)", human_bytes(self.size_bytes_before), human_bytes(self.size_bytes_after),
             saving(savings["size_ratio"], savings["size_percent"], "smaller", "larger")),
        ]
        if self.latency_before is not None and self.latency_after is not None:
            before, after = self.latency_before, self.latency_after
            rows.append((
                "Latency, median [p10-p90]",
                f"{human_ms(before.median_ms)} [{human_ms(before.p10_ms)}-{human_ms(before.p90_ms)}]",
                f"{human_ms(after.median_ms)} [{human_ms(after.p10_ms)}-{human_ms(after.p90_ms)}]",
                saving(savings["latency_speedup"], savings["latency_percent"], "faster", "slower"),
            ))
        if self.accuracy is not None:
            acc = self.accuracy
            rows.append((
                f"Top-1 on {acc.dataset} ({acc.samples} images)", f"{acc.top1_before:.1%}", f"{acc.top1_after:.1%}",
                f"{(acc.top1_after - acc.top1_before) * 100:+.1f} pts; agrees with original on {acc.agreement:.1%}",
            ))
        rows.append((
            "Conv layers", f"{self.convs_total} convs", f"{self.convs_converted} ghost",
            f"{self.convs_eligible} eligible, {self.convs_skipped} skipped",
        ))
        return rows

    def _notes(self) -> list[str]:
        notes = [MACS_EXPLANATION]
        settings = f"ratio {self._setting('ratio')}, dw_size {self._setting('dw_size')}, variant {self._setting('variant')}"
        notes.append(f"Input {self._input_text()}; {settings}; layers found by {self.trace}.")
        if self.latency_before is not None:
            timing = self.latency_before
            notes.append(
                f"Latency: {timing.repeats} timed runs per model on {timing.device}, batch {timing.batch_size}, "
                "runs of the two models interleaved."
            )
        if self.weights_note:
            notes.append(f"Weights: {self.weights_note}.")
        if self.trace_note:
            notes.append(f"Note: {self.trace_note}.")
        for label, ops in (("before", self.unsupported_ops_before), ("after", self.unsupported_ops_after)):
            if ops:
                listed = ", ".join(f"{op} x{count}" for op, count in sorted(ops.items()))
                notes.append(f"Ops fvcore did not count ({label}): {listed}.")
        if self.macs_check_ok:
            notes.append(
                f"MAC cross-check ok: per-layer MACs + {human_count(self.macs_outside_layers_before)} outside the "
                f"conv layers = fvcore total, before and after."
            )
        else:
            notes.append("MAC cross-check FAILED: " + "; ".join(self.macs_check_notes))
        return notes

    # ----- Markdown --------------------------------------------------------------------------

    def to_markdown(self) -> str:
        """The report as Markdown: summary table, notes, and one row per conv layer."""
        lines = [f"# ghostify report: {self.original_name} → {self.converted_name}", ""]
        lines += ["| Metric | Before | After | Saving |", "|---|---:|---:|---|"]
        lines += [f"| {' | '.join(_md_cell(c) for c in row)} |" for row in self._summary_rows()]
        lines.append("")
        lines += [f"- {_md_cell(note)}" for note in self._notes()]
        lines += ["", "## Conv layers", ""]
        headers = ["Layer", "Kind", "In → out", "Kernel / stride", "Ratio", "Converted",
                   "Params before", "Params after", "MACs before", "MACs after", "Fit error", "Reason"]
        lines.append("| " + " | ".join(headers) + " |")
        lines.append("|" + "|".join(["---"] * 6 + ["---:"] * 5 + ["---"]) + "|")
        for row in self.layers:
            cells = [
                f"`{row.name}`", row.kind, _channels_text(row), _kernel_text(row),
                str(row.ratio) if row.convert else MISSING, "yes" if row.convert else "no",
                human_count(row.params_before), human_count(row.params_after),
                human_count(row.macs_before), human_count(row.macs_after),
                _fit_text(row.fit_error), row.reason or "",
            ]
            lines.append("| " + " | ".join(_md_cell(c) for c in cells) + " |")
        return "\n".join(lines) + "\n"

    # ----- rich ------------------------------------------------------------------------------

    def summary_table(self) -> Table:
        """Rich table: parameters, MACs, size, latency (if measured), conv counts, with savings."""
        table = Table(title=f"ghostify: {self.original_name} → {self.converted_name}", title_justify="left")
        table.add_column("Metric")
        table.add_column("Before", justify="right")
        table.add_column("After", justify="right")
        table.add_column("Saving")
        for row in self._summary_rows():
            table.add_row(*row)
        return table

    def layer_table(self, max_rows: int | None = None) -> Table:
        """Rich table with one row per conv layer; past ``max_rows`` a last row says how many were left out."""
        table = Table(title="Conv layers", title_justify="left")
        with_fit = any(row.fit_error is not None for row in self.layers)
        table.add_column("Layer", no_wrap=True)
        table.add_column("In → out", justify="right", no_wrap=True)
        table.add_column("k / s", no_wrap=True)
        table.add_column("Ratio", justify="right")
        table.add_column("Params", justify="right", no_wrap=True)
        table.add_column("MACs", justify="right", no_wrap=True)
        if with_fit:
            table.add_column("Fit err", justify="right")
        table.add_column("Status")
        shown = self.layers if max_rows is None else self.layers[:max(max_rows, 0)]
        for row in shown:
            status = Text("ghost", style="green") if row.convert else Text(row.reason or "not selected", style="dim")
            cells: list[Any] = [
                row.name, _channels_text(row), _kernel_text(row), str(row.ratio) if row.convert else MISSING,
                _before_after(row.params_before, row.params_after), _before_after(row.macs_before, row.macs_after),
            ]
            if with_fit:
                cells.append(_fit_text(row.fit_error))
            table.add_row(*cells, status)
        hidden = len(self.layers) - len(shown)
        if hidden > 0:
            table.add_row(f"... {hidden} more layer(s)", *[""] * (len(table.columns) - 1), style="dim")
        return table

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        yield self.summary_table()
        yield Text("\n".join(self._notes()))

    def __str__(self) -> str:
        return render_text(self, Text(""), self.layer_table())


def render_text(*renderables: Any) -> str:
    """Plain text (no colour, ``RENDER_WIDTH`` columns) of rich renderables, for ``str()`` and files."""
    buffer = io.StringIO()
    console = Console(
        file=buffer, width=RENDER_WIDTH, no_color=True, color_system=None, force_terminal=False,
        highlight=False, emoji=False, soft_wrap=False,
    )
    console.print(Group(*renderables))
    return buffer.getvalue()


def _md_cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def _channels_text(row: LayerRow) -> str:
    if row.in_channels is None and row.out_channels is None:
        return MISSING
    def known(value: int | None) -> str:
        return "?" if value is None else str(value)

    return f"{known(row.in_channels)} → {known(row.out_channels)}"


def _kernel_text(row: LayerRow) -> str:
    kernel = "x".join(str(k) for k in row.kernel_size) if row.kernel_size else "?"
    stride = "x".join(str(s) for s in row.stride) if row.stride else "?"
    if row.stride and len(set(row.stride)) == 1:
        stride = str(row.stride[0])
    return f"{kernel} / {stride}"


def _fit_text(fit_error: float | None) -> str:
    return MISSING if fit_error is None else f"{fit_error:.3f}"


def _before_after(before: int | None, after: int | None) -> str:
    if before is None and after is None:
        return MISSING
    if before == after:
        return human_count(before)
    return f"{human_count(before)} → {human_count(after)}"


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
    return next((macs.by_module[n] for n in (layer.name, *layer.aliases) if n in macs.by_module), None)


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


def check_macs(
    rows: Sequence[LayerRow], before: MacCount, after: MacCount, converted: nn.Module
) -> tuple[bool, list[str], int, int]:
    """Cross-check the per-layer rows against fvcore's counts of the two models.

    Returns ``(ok, problems, outside_before, outside_after)``, ``outside_*`` being fvcore's total
    minus its MACs of the module conv layers. Holds when: each row states fvcore's number for its
    layer; each converted layer costs exactly the sum of its parts (primary + cheap conv, ...);
    each kept layer costs what it did; everything outside the layers costs the same before and
    after (so total before - total after is what the layers saved); and the layers' MACs before
    do not exceed fvcore's total for the ``conv`` operator.
    """
    problems: list[str] = []
    measured: list[tuple[LayerRow, int, int]] = []
    for row in rows:
        if row.kind != "module":
            continue  # a functional conv has no module of its own: its MACs are in "outside"
        layer_before, layer_after = before.by_module.get(row.name), after.by_module.get(row.name)
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
    if outside_before != outside_after:
        problems.append(
            f"MACs outside the conv layers changed ({outside_before} → {outside_after}): total before - after "
            f"= {before.total - after.total}, but the layers saved {layers_before - layers_after}"
        )
    conv_op_before = before.by_operator.get("conv")
    if conv_op_before is not None and layers_before > conv_op_before:
        problems.append(f"conv layers sum to {layers_before} MACs, more than fvcore's conv total {conv_op_before}")
    return not problems, problems, outside_before, outside_after


def _layer_row(layer: LayerPlan, original: nn.Module, converted: nn.Module, before: MacCount, after: MacCount) -> LayerRow:
    return LayerRow(
        name=layer.name, kind=layer.kind, in_channels=layer.in_channels, out_channels=layer.out_channels,
        kernel_size=list(layer.kernel_size) if layer.kernel_size else None,
        stride=list(layer.stride) if layer.stride else None,
        ratio=layer.ratio, convert=layer.convert, eligible=layer.eligible, reason=layer.reason,
        fit_error=layer.fit_error, intrinsic_channels=layer.intrinsic_channels, call_sites=layer.call_sites,
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
    from . import __version__  # here, not at import time: ghostify/__init__ may import this module

    plan = _require_plan(converted)
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
        config=plan.config.to_dict(), trace=plan.trace, trace_note=plan.trace_note,
        input_size=input_dims, batch_size=batch_size,
        unsupported_ops_before=dict(before.unsupported_ops), unsupported_ops_after=dict(after.unsupported_ops),
        latency_before=latency_before, latency_after=latency_after, accuracy=accuracy,
        original_name=original_name, converted_name=converted_name, ghostify_version=__version__,
    )
