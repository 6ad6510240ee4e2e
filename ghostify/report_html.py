"""A ghostify report as one self-contained HTML page: tables, notes and matplotlib plots.

Everything is inline (CSS in ``<style>``, plots as base64 PNG drawn with the Agg backend); there
are no scripts and no external URLs, so the page renders offline. All text is HTML-escaped.
Plot ``<img>`` elements carry ``class="plot"`` and a ``data-plot`` name.

When calibration or distillation ran, an "Accuracy recovered" section shows top-1 and agreement
with the original per stage, a training-curve plot (loss, and agreement per epoch) and the
per-epoch and per-layer numbers.

This module imports neither ``ghostify.report`` nor ``ghostify.sweep`` (they import it, to save
their pages); it tells the two report types apart by their ``SCHEMA``. matplotlib is imported
when the first plot is drawn, so importing ghostify stays fast.

Stages: a conv's stage is the first dot-separated component of its name ("layer1" for
"layer1.0.conv1"); when that puts every conv in one stage (torchvision's "features.*"), the
first two components are used instead ("features.3" for "features.3.block.0.0").
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from . import report_render as render
from .formatting import MISSING, human_count, ratio_text
from .report_render import channels_text, fit_text, kernel_text

if TYPE_CHECKING:  # matplotlib itself is imported by _new_figure
    from matplotlib.axis import Axis
    from matplotlib.figure import Figure

COMPARISON_SCHEMA = "ghostify.report"  # ComparisonReport.SCHEMA
SWEEP_SCHEMA = "ghostify.sweep"  # SweepReport.SCHEMA
# the report types by duck type (see the module docstring)
Report = Any  # ghostify.report.ComparisonReport
Sweep = Any  # ghostify.sweep.SweepReport
LayerRow = Any  # ghostify.report.LayerRow

BEFORE_COLOR = "#e8590c"  # saturated orange: original model
AFTER_COLOR = "#1c7ed6"  # saturated blue: ghostified model
RATIO_COLORS = (AFTER_COLOR, "#2f9e44", "#9c36b5", "#f59f00", "#0ca678", "#e64980")
HELD_OUT_COLOR = RATIO_COLORS[1]  # green: held-out (validation) curves
PART_COLOR = RATIO_COLORS[2]  # purple: a part of the loss, held-out top-1
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
li.warning{color:#a61e4d;font-weight:600}p.legend{font-size:13px;color:#495057;margin:4px 0}
.plots{display:flex;flex-wrap:wrap;gap:16px;align-items:flex-start}
figure{margin:0}figcaption{font-size:12px;color:#495057;max-width:600px}
img.plot{max-width:100%;height:auto;border:1px solid #e9ecef}
details{border:1px solid #dee2e6;border-radius:4px;padding:4px 12px;margin:8px 0}
summary{cursor:pointer;font-weight:600}
"""


def render_html(report: Report | Sweep) -> str:
    """The whole page for a ``ComparisonReport`` or a ``SweepReport``, as a string (write it with
    ``encoding="utf-8"``)."""
    schema = getattr(type(report), "SCHEMA", None)
    if schema == COMPARISON_SCHEMA:
        title = f"ghostify report: {report.original_name} → {report.converted_name}"
        body = _comparison_section(report, level=1)
    elif schema == SWEEP_SCHEMA:
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


def _comparison_section(report: Report, level: int) -> str:
    h, h2 = f"h{level}", f"h{level + 1}"
    parts = [f"<{h}>{_esc(f'ghostify report: {report.original_name} → {report.converted_name}')}</{h}>"]
    parts.append(_table(["Metric", "Before", "After", "Saving"], render.summary_rows(report), "summary", numeric=(1, 2)))
    parts.append(_notes_list(render.notes(report)))
    if render.has_recovery(report):
        parts.append(_recovery_section(report, level + 1))
    if report.bench:
        parts.append(f"<{h2}>{_esc(render.bench_title(report))}</{h2}>")
        parts.append(_table(render.BENCH_HEADERS, render.bench_text_rows(report.bench), "bench", numeric=(0, 2, 3, 4)))
        parts.append(f"<p>{_esc(render.BENCH_CAPTION)}</p>")
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
        if acc.top1_before is not None and acc.top1_after is not None:
            points = [("original", report.macs_before, acc.top1_before * 100, BEFORE_COLOR),
                      ("converted", report.macs_after, acc.top1_after * 100, AFTER_COLOR)]
            figures.append(_figure("accuracy-macs", _tradeoff_plot(points, "top-1 accuracy (%)", "Top-1 vs MACs"),
                                   f"{acc.dataset}, {acc.samples} images; agreement {acc.agreement:.1%}."))
        else:  # unlabelled images, or not the model's classes: agreement is the only accuracy there is
            points = [("original", report.macs_before, 100.0, BEFORE_COLOR),
                      ("converted", report.macs_after, acc.agreement * 100, AFTER_COLOR)]
            images = "images, not of the model's classes" if acc.classes_mismatch else "unlabelled images"
            figures.append(_figure("agreement-macs", _tradeoff_plot(
                points, "agreement with original (%)", "Agreement vs MACs"),
                f"{acc.dataset}, {acc.samples} {images}: top-1 n/a."))
    parts.append(f'<div class="plots">{"".join(figures)}</div>' if figures else "<p>No conv layer MACs to plot.</p>")
    parts.append(f"<{h2}>Conv layers</{h2}>")
    parts.append(f'<p class="legend">{_esc(render.FIT_ERROR_EXPLANATION)}</p>')
    timed = any(row.latency_ms for row in report.layers)
    headers = ["Layer", "Kind", "In → out", "Kernel / stride", "Ratio", "Params before", "Params after",
               "MACs before", "MACs after", render.FIT_ERROR_HEADER, *([render.LATENCY_HEADER] if timed else []),
               "Skipped because"]
    rows = [[row.name, row.kind, channels_text(row), kernel_text(row), str(row.ratio) if row.convert else MISSING,
             human_count(row.params_before), human_count(row.params_after), human_count(row.macs_before),
             human_count(row.macs_after), fit_text(row.fit_error), *([render.latency_text(row)] if timed else []),
             "" if row.convert else row.reason or "not selected"]
            for row in report.layers]
    classes = ["" if row.convert else "skipped" for row in report.layers]
    numeric = (2, 4, 5, 6, 7, 8, 9, 10) if timed else (2, 4, 5, 6, 7, 8, 9)
    parts.append(_table(headers, rows, "layers", numeric=numeric, row_classes=classes))
    return "\n".join(parts)


def _recovery_section(report: Report, level: int) -> str:
    """Accuracy per recovery stage, the calibration / distillation summaries, the training curve,
    and the per-epoch and per-layer numbers (folded)."""
    h = f"h{level}"
    parts = [f"<{h}>{_esc(render.recovery_title(report))}</{h}>"]
    if report.recovery:
        headers = render.recovery_headers(report)
        parts.append(_table(headers, render.recovery_rows(report), "recovery", numeric=(1, 2, 3)))
    summaries = render.recovery_notes(report)
    if summaries:
        parts.append(_notes_list(summaries))
    records = [record for record in report.training if isinstance(record, Mapping)]
    if records:
        caption = (f"{render.plural(len(records), 'epoch')} of distillation. Agreement: share of images where the student's "
                   "top-1 class equals the original model's.")
        parts.append(f'<div class="plots">{_figure("training-curve", _training_plot(records), caption)}</div>')
        table = _table(render.TRAINING_HEADERS, render.training_rows(report), "training",
                       numeric=range(len(render.TRAINING_HEADERS)))
        parts.append(f"<details><summary>Distillation per epoch</summary>\n{table}</details>")
    calibration = render.calibration_rows(report)
    if calibration:
        table = _table(render.CALIBRATION_HEADERS, calibration, "layers", numeric=(2, 3))
        parts.append("<details><summary>Calibration per layer (relative output error vs the original: "
                     f"data-free start → calibrated)</summary>\n{table}</details>")
    return "\n".join(parts)


def _sweep_section(sweep: Sweep) -> str:
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
                                                                   y_human=True),
                               " ".join(sweep.notes()) or "No accuracy measured."))
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


def _new_figure(width: float, height: float) -> Figure:
    """A constrained-layout figure on an Agg canvas (no GUI backend, no global pyplot state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _human_ticks(axis: Axis) -> None:
    """Tick labels as ``human_count`` (``1.5 M``)."""
    from matplotlib.ticker import FuncFormatter

    axis.set_major_formatter(FuncFormatter(lambda value, _: human_count(value, 1)))


def _bars_plot(labels: Sequence[str], series: Sequence[tuple[str, str, Sequence[int]]], title: str, ylabel: str) -> Figure:
    count = len(labels)
    group = 0.8 / len(series)
    height = max(2.6, 0.16 * len(series) * count + 1.4)
    fig = _new_figure(9 if count > 6 else 5.6, height)
    ax = fig.add_subplot()
    for index, (name, color, values) in enumerate(series):
        ax.barh([i - 0.4 + group * (index + 0.5) for i in range(count)], values, height=group, color=color, label=name)
    ax.set_yticks(range(count), [_mpl(label) for label in labels], fontsize=8 if count > 12 else 9)
    ax.set_ylim(count - 0.5, -0.5)  # first layer on top
    _human_ticks(ax.xaxis)
    ax.set_xlabel("MACs (multiply-accumulates)")
    ax.set_ylabel(ylabel)
    ax.set_title(title, loc="left")
    ax.grid(axis="x", color="#dee2e6", linewidth=0.6)
    ax.set_axisbelow(True)
    fig.legend(loc="outside upper right", ncols=len(series), fontsize=8, frameon=False)
    return fig


def _tradeoff_plot(points: Sequence[tuple[str, float, float, str]], ylabel: str, title: str, y_human: bool = False) -> Figure:
    fig = _new_figure(5.6, 3.8)
    ax = fig.add_subplot()
    ax.plot([p[1] for p in points], [p[2] for p in points], color="#adb5bd", linewidth=1, zorder=1)
    for label, x, y, color in points:
        ax.scatter([x], [y], s=90, color=color, zorder=2, label=_mpl(label))
        ax.annotate(_mpl(label), (x, y), textcoords="offset points", xytext=(6, 6), fontsize=9)
    _human_ticks(ax.xaxis)
    if y_human:
        _human_ticks(ax.yaxis)
    ax.set_xlabel("MACs (multiply-accumulates)")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.margins(0.2)
    ax.grid(color="#dee2e6", linewidth=0.6)
    return fig


def _training_plot(records: Sequence[Mapping[str, Any]]) -> Figure:
    """Two panels per epoch: the distillation loss (and its logit / feature parts), and agreement
    with the original on the training batches and held-out images (plus held-out top-1 and the
    original's top-1 when the data is labelled)."""
    from matplotlib.ticker import MaxNLocator, PercentFormatter

    fig = _new_figure(9, 3.4)
    loss_ax, agree_ax = fig.subplots(1, 2)

    def curve(ax: Any, key: str, label: str, color: str, scale: float = 1.0, style: str = "-") -> None:
        points = [(r.get("epoch", i + 1), r[key] * scale) for i, r in enumerate(records) if r.get(key) is not None]
        if points:
            ax.plot([p[0] for p in points], [p[1] for p in points], style, color=color, marker="o", markersize=4,
                    linewidth=1.6, label=label)

    curve(loss_ax, "loss", "loss", AFTER_COLOR)
    curve(loss_ax, "logit_loss", "logit part", HELD_OUT_COLOR, style="--")
    curve(loss_ax, "feature_loss", "feature part", PART_COLOR, style="--")
    curve(agree_ax, "train_agreement", "train agreement", AFTER_COLOR, 100)
    curve(agree_ax, "val_agreement", "held-out agreement", HELD_OUT_COLOR, 100)
    curve(agree_ax, "val_top1", "held-out top-1", PART_COLOR, 100, "--")
    teacher = next((r["teacher_top1"] for r in reversed(records) if r.get("teacher_top1") is not None), None)
    if teacher is not None:
        agree_ax.axhline(teacher * 100, color=BEFORE_COLOR, linestyle=":", linewidth=1.4, label="original top-1")
    agree_ax.yaxis.set_major_formatter(PercentFormatter(decimals=0))
    labelled = any(r.get("val_top1") is not None for r in records) or teacher is not None
    agree_title = "Agreement and top-1 per epoch" if labelled else "Agreement with the original per epoch"
    for ax, title, ylabel in ((loss_ax, "Distillation loss per epoch", "loss"),
                              (agree_ax, agree_title, "percent of images")):
        ax.set_title(title, loc="left")
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(color="#dee2e6", linewidth=0.6)
        ax.set_axisbelow(True)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8, frameon=False)
    return fig


def _figure(name: str, fig: Figure, caption: str) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, metadata={"Software": None})
    width, height = (round(v) for v in fig.get_size_inches() * DPI)
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    img = (f'<img class="plot" data-plot="{_esc(name)}" width="{width}" height="{height}" '
           f'alt="{_esc(name)} plot" src="data:image/png;base64,{data}">')
    return f"<figure>{img}" + (f"<figcaption>{_esc(caption)}</figcaption>" if caption else "") + "</figure>"


def _plot_caption(report: Report, measured: Sequence[LayerRow]) -> str:
    missing = len(report.layers) - len(measured)
    text = f"{len(measured)} conv layer(s), fvcore MACs for input {render.input_text(report)}."
    return text + (f" {missing} functional conv(s) without a module are not plotted." if missing else "")


# ----- small helpers -----------------------------------------------------------------------------


def _notes_list(notes: Sequence[str]) -> str:
    """The notes as a list; a failed check and unmeasured accuracy stand out (``render.note_kind``)."""
    items = []
    for note in notes:
        kind = render.note_kind(note)
        items.append(f'<li class="{kind}">{_esc(note)}</li>' if kind else f"<li>{_esc(note)}</li>")
    return f'<ul class="notes">{"".join(items)}</ul>'



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
