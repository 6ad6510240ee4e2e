"""A ghostify report as one self-contained HTML page: tables, notes and matplotlib plots.

Everything is inline (CSS in ``<style>``, plots as base64 PNG drawn with the Agg backend); there
are no scripts and no external URLs, so the page renders offline. All text is HTML-escaped.
Plot ``<img>`` elements carry ``class="plot"`` and a ``data-plot`` name.

Stages: a conv's stage is the first dot-separated component of its name ("layer1" for
"layer1.0.conv1"); when that puts every conv in one stage (torchvision's "features.*"), the
first two components are used instead ("features.3" for "features.3.block.0.0").
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

from .formatting import MISSING, human_count, ratio_text
from .report import ComparisonReport, LayerRow, _channels_text, _fit_text, _kernel_text
from .sweep import SweepReport

BEFORE_COLOR = "#e8590c"  # saturated orange: original model
AFTER_COLOR = "#1c7ed6"  # saturated blue: ghostified model
RATIO_COLORS = (AFTER_COLOR, "#2f9e44", "#9c36b5", "#f59f00", "#0ca678", "#e64980")
DPI = 100

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;margin:24px auto;max-width:1200px;
     padding:0 16px;color:#212529;background:#fff;line-height:1.4}
h1{font-size:1.5em;margin:0 0 12px}h2{font-size:1.2em;margin:24px 0 8px}h3{font-size:1.05em}
table{border-collapse:collapse;margin:8px 0;font-size:14px}
th,td{border:1px solid #dee2e6;padding:4px 8px;vertical-align:top}th{background:#f1f3f5;text-align:left}
td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
table.layers{font-size:12px}table.layers td:first-child{font-family:ui-monospace,monospace}
tr.skipped td{color:#868e96}
ul.notes{font-size:13px;color:#495057;padding-left:20px}li.bad{color:#c92a2a;font-weight:600}
.plots{display:flex;flex-wrap:wrap;gap:16px;align-items:flex-start}
figure{margin:0}figcaption{font-size:12px;color:#495057;max-width:600px}
img.plot{max-width:100%;height:auto;border:1px solid #e9ecef}
details{border:1px solid #dee2e6;border-radius:4px;padding:4px 12px;margin:8px 0}
summary{cursor:pointer;font-weight:600}
"""


def render_html(report: ComparisonReport | SweepReport) -> str:
    """The whole page for a comparison or a sweep, as a string (write it with ``encoding="utf-8"``)."""
    if isinstance(report, ComparisonReport):
        title = f"ghostify report: {report.original_name} → {report.converted_name}"
        body = _comparison_section(report, level=1)
    elif isinstance(report, SweepReport):
        title = f"ghostify sweep: {report.model}"
        body = _sweep_section(report)
    else:
        raise TypeError(f"render_html takes a ComparisonReport or SweepReport, not {type(report).__name__}")
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{_esc(title)}</title>'
            f"<style>{CSS}</style></head>\n<body>\n{body}\n</body></html>\n")


def stage_names(names: Sequence[str]) -> list[str]:
    """Each layer name's stage (see the module docstring for the rule)."""
    first = [name.split(".")[0] for name in names]
    if len(set(first)) == 1 and any("." in name for name in names):
        return [".".join(name.split(".")[:2]) for name in names]
    return first


def stage_macs(layers: Sequence[LayerRow]) -> dict[str, tuple[int, int]]:
    """MACs (before, after) summed per stage, in order of first appearance; unmeasured layers left out."""
    totals: dict[str, tuple[int, int]] = {}
    for row, stage in zip(layers, stage_names([row.name for row in layers])):
        if row.macs_before is not None and row.macs_after is not None:
            before, after = totals.get(stage, (0, 0))
            totals[stage] = (before + row.macs_before, after + row.macs_after)
    return totals


# ----- sections ----------------------------------------------------------------------------------


def _comparison_section(report: ComparisonReport, level: int) -> str:
    h, h2 = f"h{level}", f"h{level + 1}"
    parts = [f"<{h}>{_esc(f'ghostify report: {report.original_name} → {report.converted_name}')}</{h}>"]
    parts.append(_table(["Metric", "Before", "After", "Saving"], report._summary_rows(), "summary", numeric=(1, 2)))
    notes = report._notes()
    parts.append('<ul class="notes">' + "".join(
        f'<li class="bad">{_esc(n)}</li>' if n.startswith("MAC cross-check FAILED") else f"<li>{_esc(n)}</li>"
        for n in notes) + "</ul>")
    measured = [row for row in report.layers if row.macs_before is not None and row.macs_after is not None]
    figures = []
    if measured:
        figures.append(_figure("layer-macs", _layer_plot(measured), _plot_caption(report, measured)))
        stages = stage_macs(measured)
        figures.append(_figure("stage-macs", _bars_plot(
            list(stages), [("before", BEFORE_COLOR, [b for b, _ in stages.values()]),
                           ("after", AFTER_COLOR, [a for _, a in stages.values()])],
            "MACs per stage", "stage"),
            "MACs summed per stage: a layer name's first component (two if one alone gives one group)."))
    if report.accuracy is not None:
        acc = report.accuracy
        points = [("original", report.macs_before, acc.top1_before * 100, BEFORE_COLOR),
                  ("converted", report.macs_after, acc.top1_after * 100, AFTER_COLOR)]
        figures.append(_figure("accuracy-macs", _tradeoff_plot(points, "top-1 accuracy (%)", "Top-1 vs MACs"),
                               f"{acc.dataset}, {acc.samples} images; agreement {acc.agreement:.1%}."))
    parts.append(f'<div class="plots">{"".join(figures)}</div>' if figures else "<p>No conv layer MACs to plot.</p>")
    parts.append(f"<{h2}>Conv layers</{h2}>")
    headers = ["Layer", "Kind", "In → out", "Kernel / stride", "Ratio", "Params before", "Params after",
               "MACs before", "MACs after", "Fit error", "Skipped because"]
    rows = [[row.name, row.kind, _channels_text(row), _kernel_text(row), str(row.ratio) if row.convert else MISSING,
             human_count(row.params_before), human_count(row.params_after), human_count(row.macs_before),
             human_count(row.macs_after), _fit_text(row.fit_error), "" if row.convert else row.reason or "not selected"]
            for row in report.layers]
    classes = ["" if row.convert else "skipped" for row in report.layers]
    parts.append(_table(headers, rows, "layers", numeric=(2, 4, 5, 6, 7, 8, 9), row_classes=classes))
    return "\n".join(parts)


def _sweep_section(sweep: SweepReport) -> str:
    parts = [f"<h1>{_esc(f'ghostify sweep: {sweep.model}')}</h1>"]
    rows = sweep.rows()
    cells = sweep.summary_cells()
    parts.append(_table(sweep.SUMMARY_HEADERS, cells, "summary", numeric=(1, 2, 4, 5, 6)))
    labels = [c[0] for c in cells]
    colors = [BEFORE_COLOR] + [RATIO_COLORS[i % len(RATIO_COLORS)] for i in range(len(rows) - 1)]
    figures = []
    if all(r["top1"] is not None for r in rows):
        points = [(lab, r["macs"], r["top1"] * 100, col) for lab, r, col in zip(labels, rows, colors)]
        figures.append(_figure("sweep-accuracy-macs", _tradeoff_plot(points, "top-1 accuracy (%)", "Top-1 vs MACs by ratio"), ""))
    else:
        points = [(lab, r["macs"], r["params"], col) for lab, r, col in zip(labels, rows, colors)]
        figures.append(_figure("sweep-params-macs", _tradeoff_plot(points, "parameters", "Parameters vs MACs by ratio",
                                                                   y_human=True), "No accuracy measured."))
    if sweep.reports:
        measured = [row for row in sweep.reports[0].layers if row.macs_before is not None]
        base = stage_macs(measured)
        names = list(base)
        series = [("original", BEFORE_COLOR, [base[s][0] for s in names])]
        for label, color, report in zip(labels[1:], colors[1:], sweep.reports):
            stages = stage_macs(report.layers)
            series.append((label, color, [stages.get(s, (0, 0))[1] for s in names]))
        if names:
            figures.append(_figure("sweep-stage-macs", _bars_plot(names, series, "MACs per stage by ratio", "stage"), ""))
    parts.append(f'<div class="plots">{"".join(figures)}</div>')
    for label, report in zip(labels[1:], sweep.reports):
        saving = ratio_text(report.macs_ratio, "fewer", "more")
        parts.append(f"<details><summary>{_esc(f'{label}: {saving} MACs')}</summary>\n"
                     f"{_comparison_section(report, level=2)}</details>")
    return "\n".join(parts)


# ----- plots -------------------------------------------------------------------------------------


def _layer_plot(layers: Sequence[LayerRow]) -> Figure:
    """Horizontal grouped bars, one pair per layer; the figure grows with the layer count."""
    return _bars_plot([row.name for row in layers],
                      [("before", BEFORE_COLOR, [row.macs_before for row in layers]),
                       ("after", AFTER_COLOR, [row.macs_after for row in layers])],
                      "MACs per conv layer", "conv layer")


def _bars_plot(labels: Sequence[str], series: Sequence[tuple[str, str, Sequence[int]]], title: str, ylabel: str) -> Figure:
    count = len(labels)
    group = 0.8 / len(series)
    height = max(2.6, 0.16 * len(series) * count + 1.4)
    fig = Figure(figsize=(9 if count > 6 else 5.6, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for index, (name, color, values) in enumerate(series):
        ax.barh([i - 0.4 + group * (index + 0.5) for i in range(count)], values, height=group, color=color, label=name)
    ax.set_yticks(range(count), [_mpl(label) for label in labels], fontsize=8 if count > 12 else 9)
    ax.set_ylim(count - 0.5, -0.5)  # first layer on top
    ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: human_count(value, 1)))
    ax.set_xlabel("MACs (multiply-accumulates)")
    ax.set_ylabel(ylabel)
    ax.set_title(title, loc="left")
    ax.grid(axis="x", color="#dee2e6", linewidth=0.6)
    ax.set_axisbelow(True)
    fig.legend(loc="outside upper right", ncols=len(series), fontsize=8, frameon=False)
    return fig


def _tradeoff_plot(points: Sequence[tuple[str, float, float, str]], ylabel: str, title: str, y_human: bool = False) -> Figure:
    fig = Figure(figsize=(5.6, 3.8), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.plot([p[1] for p in points], [p[2] for p in points], color="#adb5bd", linewidth=1, zorder=1)
    for label, x, y, color in points:
        ax.scatter([x], [y], s=90, color=color, zorder=2, label=_mpl(label))
        ax.annotate(_mpl(label), (x, y), textcoords="offset points", xytext=(6, 6), fontsize=9)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: human_count(value, 1)))
    if y_human:
        ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: human_count(value, 1)))
    ax.set_xlabel("MACs (multiply-accumulates)")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.margins(0.2)
    ax.grid(color="#dee2e6", linewidth=0.6)
    return fig


def _figure(name: str, fig: Figure, caption: str) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, metadata={"Software": None})
    width, height = (round(v) for v in fig.get_size_inches() * DPI)
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    img = (f'<img class="plot" data-plot="{_esc(name)}" width="{width}" height="{height}" '
           f'alt="{_esc(name)} plot" src="data:image/png;base64,{data}">')
    return f"<figure>{img}" + (f"<figcaption>{_esc(caption)}</figcaption>" if caption else "") + "</figure>"


def _plot_caption(report: ComparisonReport, measured: Sequence[LayerRow]) -> str:
    missing = len(report.layers) - len(measured)
    text = f"{len(measured)} conv layer(s), fvcore MACs for input {report._input_text()}."
    return text + (f" {missing} functional conv(s) without a module are not plotted." if missing else "")


# ----- small helpers -----------------------------------------------------------------------------


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]], css_class: str, numeric: Sequence[int] = (),
           row_classes: Sequence[str] | None = None) -> str:
    head = "".join(f"<th>{_esc(h)}</th>" for h in headers)
    lines = []
    for index, row in enumerate(rows):
        cells = "".join(f'<td class="num">{_esc(c)}</td>' if i in numeric else f"<td>{_esc(c)}</td>" for i, c in enumerate(row))
        cls = row_classes[index] if row_classes else ""
        lines.append(f'<tr class="{cls}">{cells}</tr>' if cls else f"<tr>{cells}</tr>")
    return f'<table class="{css_class}"><thead><tr>{head}</tr></thead><tbody>{"".join(lines)}</tbody></table>'


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _mpl(text: str) -> str:
    """Text for matplotlib with ``$`` escaped, so a name is never parsed as mathtext."""
    return text.replace("$", r"\$")
