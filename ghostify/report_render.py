"""Text renderings of a ``ComparisonReport``: rich tables for the terminal, and Markdown.

The pieces shared by every output form live here too (summary rows, notes, the accuracy-recovery
rows and summaries, per-layer cell text), so the terminal, Markdown and HTML
(``ghostify.report_html``) say the same thing in the same words.

Imports stay one-way: ``ghostify.report`` (the data types and ``compare``) imports this module,
never the reverse, so functions here take the report by duck type: ``report`` is a
``ghostify.report.ComparisonReport``, ``row`` one of its ``LayerRow``, ``stage`` an
``AccuracyStage``.
"""

from __future__ import annotations

import io
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from rich import box
from rich.console import Console, Group, RenderableType
from rich.table import Table
from rich.text import Text

from .bench import BENCH_CAPTION, BENCH_HEADERS, bench_text_rows
from .formatting import MISSING, human_bytes, human_count, human_ms, percent_text, ratio_text
from .selection import reason_kind

MACS_EXPLANATION = "MACs: multiply-accumulates counted by fvcore; one multiply-add = one MAC."
FIT_ERROR_HEADER = "Fit err"
LATENCY_HEADER = "ms conv → ghost"
FIT_ERROR_EXPLANATION = (f"{FIT_ERROR_HEADER}: relative error of a ghost module's starting weights vs the original "
                         "conv's (data-free fit; 0 = exact).")
MACS_CHECK_FAILED = "MAC cross-check FAILED"
ACCURACY_NOT_MEASURED = "Accuracy not measured"
TOP1_NOT_MEASURED = "Top-1 not measured"
NOTHING_CONVERTED = "Nothing was converted"
NOTE_STYLES = {"bad": "bold red", "warning": "yellow"}  # terminal styles by ``note_kind``
RENDER_WIDTH = 120
NOT_AVAILABLE = "n/a"  # a measured quantity the data cannot give (top-1 on unlabelled images)
ORIGINAL_STAGE = "original"
TRAINING_HEADERS = ("Epoch", "Loss", "Logit loss", "Feature loss", "Train agreement", "Val agreement",
                    "Val top-1", "LR", "Seconds")
CALIBRATION_HEADERS = ("Layer / block", "Kind", "Error before", "Error after")

Report = Any  # ghostify.report.ComparisonReport (not imported: see the module docstring)


def render_text(*renderables: Any) -> str:
    """Plain text (no colour, ``RENDER_WIDTH`` columns) of rich renderables, for ``str()`` and files."""
    buffer = io.StringIO()
    console = Console(
        file=buffer, width=RENDER_WIDTH, no_color=True, color_system=None, force_terminal=False,
        highlight=False, emoji=False, soft_wrap=False,
    )
    console.print(Group(*renderables))
    return buffer.getvalue()


# ----- small cell texts ------------------------------------------------------------------------


def percent(value: float | None) -> str:
    """``0.91 -> '91.0%'``; ``n/a`` for None."""
    return NOT_AVAILABLE if value is None else f"{value:.1%}"


def number(value: float | None, digits: int = 4) -> str:
    """A loss or error with ``digits`` significant digits; ``n/a`` for None."""
    return NOT_AVAILABLE if value is None else f"{value:.{digits}g}"


def md_cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def channels_text(row: Any, arrow: str = " → ") -> str:
    """``'64 → 256'``: in and out channels (``arrow="→"`` for narrow tables)."""
    if row.in_channels is None and row.out_channels is None:
        return MISSING

    def known(value: int | None) -> str:
        return "?" if value is None else str(value)

    return f"{known(row.in_channels)}{arrow}{known(row.out_channels)}"


def kernel_text(row: Any, slash: str = " / ") -> str:
    """``'3x3 / 2'``: kernel size and stride (``slash="/"`` for narrow tables)."""
    kernel = "x".join(str(k) for k in row.kernel_size) if row.kernel_size else "?"
    stride = "x".join(str(s) for s in row.stride) if row.stride else "?"
    if row.stride and len(set(row.stride)) == 1:
        stride = str(row.stride[0])
    return f"{kernel}{slash}{stride}"


def latency_text(row: Any) -> str:
    """A layer's ``--target latency`` timings, ``conv → ghost`` ms, or a dash where it was not timed."""
    if not row.latency_ms:
        return MISSING
    conv_ms, ghost_ms = row.latency_ms
    return f"{conv_ms:.3g} → {ghost_ms:.3g}"


def fit_text(fit_error: float | None) -> str:
    return MISSING if fit_error is None else f"{fit_error:.3f}"


def before_after(before: int | None, after: int | None, count: Callable[[float | None], str] = human_count,
                 arrow: str = " → ") -> str:
    """``'2.36 M → 1.18 M'`` (numbers written by ``count``); one number when nothing changed."""
    if before is None and after is None:
        return MISSING
    if before == after:
        return count(before)
    return f"{count(before)}{arrow}{count(after)}"


def short_count(value: float | None) -> str:
    """A count in three significant digits without a space, for narrow tables: ``'2.36M'``, ``'147K'``."""
    if value is None:
        return MISSING
    text = human_count(float(f"{value:.3g}"))  # rounded first, so 999999 is '1.00 M', not '1000.00 K'
    number, _, prefix = text.partition(" ")
    return f"{float(number):#.3g}".rstrip(".") + prefix if prefix else text


def input_text(report: Report) -> str:
    """``'1 x 3 x 224 x 224'``: batch size and input size."""
    return " x ".join(str(d) for d in (report.batch_size, *report.input_size))


def setting(report: Report, name: str) -> Any:
    """One ``GhostConfig`` field from the report's config record."""
    return report.config.get("_data", report.config).get(name)


# ----- summary and notes -----------------------------------------------------------------------


def summary_rows(report: Report) -> list[tuple[str, str, str, str]]:
    """(metric, before, after, saving) rows: parameters, MACs, size, latency, accuracy, conv counts."""

    def saving(ratio: float | None, percent_saved: float | None, smaller: str, larger: str) -> str:
        text = ratio_text(ratio, smaller, larger)
        return text if percent_saved is None or text in (MISSING, "same") else f"{text} ({percent_text(percent_saved)})"

    savings = report.savings()
    rows = [
        ("Parameters", human_count(report.params_before), human_count(report.params_after),
         saving(savings["params_ratio"], savings["params_percent"], "smaller", "larger")),
        ("MACs", human_count(report.macs_before), human_count(report.macs_after),
         saving(savings["macs_ratio"], savings["macs_percent"], "fewer", "more")),
        ("Size on disk (state dict)", human_bytes(report.size_bytes_before), human_bytes(report.size_bytes_after),
         saving(savings["size_ratio"], savings["size_percent"], "smaller", "larger")),
    ]
    if report.latency_before is not None and report.latency_after is not None:
        before, after = report.latency_before, report.latency_after
        rows.append((
            "Latency, median [p10-p90]",
            f"{human_ms(before.median_ms)} [{human_ms(before.p10_ms)}-{human_ms(before.p90_ms)}]",
            f"{human_ms(after.median_ms)} [{human_ms(after.p10_ms)}-{human_ms(after.p90_ms)}]",
            saving(savings["latency_speedup"], savings["latency_percent"], "faster", "slower"),
        ))
    if report.accuracy is not None:
        acc = report.accuracy
        agrees = f"agrees with original on {acc.agreement:.1%}"
        change = points_text(acc.top1_after, acc.top1_before)
        rows.append((
            f"Top-1 on {acc.dataset} ({acc.samples} images)", percent(acc.top1_before), percent(acc.top1_after),
            agrees if change is None else f"{change}; {agrees}",
        ))
    rows.append((
        "Conv layers", f"{report.convs_total} convs", f"{report.convs_converted} ghost",
        f"{report.convs_eligible} eligible, {report.convs_skipped} skipped",
    ))
    return rows


def notes(report: Report) -> list[str]:
    """The notes under the summary: what MACs are, the input and settings, how things were measured."""
    lines = [MACS_EXPLANATION]
    settings = (f"ratio {setting(report, 'ratio')}, dw_size {setting(report, 'dw_size')}, "
                f"variant {setting(report, 'variant')}")
    lines.append(f"Input {input_text(report)}; {settings}; layers found by {report.trace}.")
    if report.reparameterized_blocks:
        count = report.reparameterized_blocks
        lines.append(f"Re-parameterisable blocks fused first, in both models: {count} (both are measured in "
                     f"inference form; convert with --keep-training-form to leave {'them' if count > 1 else 'it'} as {'they are' if count > 1 else 'it is'}).")
    if report.latency_before is not None:
        timing = report.latency_before
        lines.append(
            f"Latency: {timing.repeats} timed runs per model on {timing.device}, batch {timing.batch_size}, "
            "runs of the two models interleaved."
        )
    if report.weights_note:
        lines.append(f"Weights: {report.weights_note}.")
    if report.trace_note:
        lines.append(f"Note: {report.trace_note}.")
    for label, ops in (("before", report.unsupported_ops_before), ("after", report.unsupported_ops_after)):
        if ops:
            listed = ", ".join(f"{op} x{count}" for op, count in sorted(ops.items()))
            lines.append(f"Ops fvcore did not count ({label}): {listed}.")
    if report.macs_check_ok:
        outside = before_after(report.macs_outside_layers_before, report.macs_outside_layers_after)
        lines.append(f"MAC cross-check ok: per-layer MACs + {outside} outside the conv layers = fvcore total, before and after.")
    else:
        lines.append(f"{MACS_CHECK_FAILED}: " + "; ".join(report.macs_check_notes))
    if report.macs_weight_ops_before or report.macs_weight_ops_after:
        weights = before_after(report.macs_weight_ops_before, report.macs_weight_ops_after)
        lines.append(f"Outside the conv layers: {weights} MACs of weight standardisation inside conv modules "
                     "(timm's StdConv2d and the like).")
    return lines + [line for line in (nothing_converted(report), top1_note(report), accuracy_warning(report)) if line]


def nothing_converted(report: Report) -> str | None:
    """When no conv became a ghost module: say so, with the commonest reason they were kept. None otherwise."""
    if report.convs_converted or not report.layers:
        return None
    reasons = Counter(reason_kind(row.reason) for row in report.layers)
    reason, count = reasons.most_common(1)[0]
    return (f"{NOTHING_CONVERTED}: all {plural(len(report.layers), 'conv')} were kept, so the two models compute "
            f"the same; commonest reason: {reason} ({plural(count, 'layer')}). `ghostify inspect MODEL` lists each reason.")


def mean_fit_error(report: Report) -> tuple[float | None, int]:
    """Mean fit error of the converted layers that have one, and how many have one."""
    errors = [row.fit_error for row in report.layers if row.convert and row.fit_error is not None]
    return _mean(errors), len(errors)


def accuracy_warning(report: Report) -> str | None:
    """When layers were converted but no accuracy measured: the outputs differ, and how to measure and
    recover the accuracy. None otherwise."""
    if report.convs_converted == 0 or report.accuracy is not None or has_recovery(report):
        return None
    fit, count = mean_fit_error(report)
    fit_part = "" if fit is None else f" (mean fit error {fit:.3f} over {plural(count, 'converted layer')})"
    return (f"{ACCURACY_NOT_MEASURED}: the converted model's outputs differ from the original's{fit_part}. "
            "Measure accuracy with --data DIR; recover it with --calibrate or --distill.")


def top1_note(report: Report) -> str | None:
    """Why top-1 is n/a when the data's class folders cannot be the model's classes; None otherwise."""
    accuracy = report.accuracy
    if accuracy is None or not accuracy.classes_mismatch:
        return None
    return (f"{TOP1_NOT_MEASURED}: {accuracy.dataset} has {plural(accuracy.data_classes, 'class folder')} but the "
            f"model predicts {accuracy.model_classes} classes, so the labels are not the model's; agreement with "
            "the original needs no labels.")


def note_kind(note: str) -> str | None:
    """``'bad'`` for a failed MAC cross-check, ``'warning'`` for accuracy that was not measured, else None."""
    if note.startswith(MACS_CHECK_FAILED):
        return "bad"
    if note.startswith((ACCURACY_NOT_MEASURED, TOP1_NOT_MEASURED, NOTHING_CONVERTED)):
        return "warning"
    return None


# ----- accuracy recovery -----------------------------------------------------------------------


def points_text(value: float | None, baseline: float | None) -> str | None:
    """``value - baseline`` in percentage points (``'-6.5 pts'``); None when either is unknown."""
    if value is None or baseline is None:
        return None
    return f"{(value - baseline) * 100:+.1f} pts"


def recovery_baseline(report: Report) -> float | None:
    """The original model's top-1: its ``original`` stage, else the comparison's accuracy, else None."""
    for stage in report.recovery:
        if stage.stage == ORIGINAL_STAGE:
            return stage.top1
    return report.accuracy.top1_before if report.accuracy is not None else None


def recovery_data(report: Report) -> str | None:
    """``'cifar10/test, 500 images'`` when every stage was measured on the same images, else None
    (then each row names its own data)."""
    data = {(stage.dataset, stage.samples) for stage in report.recovery}
    if len(data) != 1:
        return None
    dataset, samples = data.pop()
    return f"{dataset}, {samples} images"


def recovery_headers(report: Report) -> list[str]:
    headers = ["Stage", "Top-1", "Agreement with original", "Change vs original"]
    return headers if recovery_data(report) is not None else [*headers, "Data"]


def recovery_rows(report: Report) -> list[list[str]]:
    """One row per stage in ``recovery_headers`` order; the change is top-1 in points vs the original."""
    baseline = recovery_baseline(report)
    shared = recovery_data(report) is not None
    rows = []
    for stage in report.recovery:
        if stage.stage == ORIGINAL_STAGE:
            change = MISSING
        else:
            change = points_text(stage.top1, baseline) or NOT_AVAILABLE
        cells = [stage.stage, percent(stage.top1), percent(stage.agreement), change]
        if not shared:
            cells.append(f"{stage.dataset} ({stage.samples} images)")
        rows.append(cells)
    return rows


def recovery_title(report: Report) -> str:
    data = recovery_data(report)
    return "Accuracy recovered" + (f" on {data}" if data else "")


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _errors(items: Any) -> tuple[float | None, float | None, int]:
    """Mean ``error_before`` / ``error_after`` over calibration records, and how many there are."""
    records = [item for item in items or [] if isinstance(item, Mapping)]
    before = [item["error_before"] for item in records if item.get("error_before") is not None]
    after = [item["error_after"] for item in records if item.get("error_after") is not None]
    return _mean(before), _mean(after), len(records)


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}" + ("" if count == 1 else "s")


def calibration_summary(report: Report) -> str | None:
    """One line: images, seconds, mean relative output error before → after (of the layers, blocks, head)."""
    calibration = report.calibration
    if not calibration:
        return None
    text = f"Calibration: {calibration.get('images', '?')} images"
    if calibration.get("seconds") is not None:
        text += f", {calibration['seconds']:.1f} s"
    errors = []
    for key, noun in (("layers", "layer"), ("blocks", "block")):
        before, after, count = _errors(calibration.get(key))
        if count:
            errors.append(f"{number(before, 3)} → {number(after, 3)} ({plural(count, noun)})")
    head = calibration.get("head")
    if head:
        _, before, after = (list(head) + [None, None, None])[:3]
        errors.append(f"{number(before, 3)} → {number(after, 3)} (head)")
    if errors:
        text += "; mean output error " + ", ".join(errors)
    if calibration.get("bn_reestimated"):
        text += f"; {calibration['bn_reestimated']} BatchNorm re-estimated"
    skipped = calibration.get("skipped")
    if isinstance(skipped, list) and skipped:
        text += f"; {plural(len(skipped), 'Conv3d ghost module')} not calibrated (1-D and 2-D only), kept their data-free start"
    return text + "."


def training_summary(report: Report) -> str | None:
    """One line: epochs, seconds, final loss (logit + feature parts), final agreement with the original."""
    records = [record for record in report.training if isinstance(record, Mapping)]
    if not records:
        return None
    last = records[-1]
    seconds = sum(record.get("seconds") or 0.0 for record in records)
    text = f"Distillation: {plural(len(records), 'epoch')}, {seconds:.1f} s; final loss {number(last.get('loss'))}"
    parts = [f"{name} {number(last.get(key))}" for key, name in (("logit_loss", "logit"), ("feature_loss", "feature"))
             if last.get(key) is not None]
    if parts:
        text += f" ({' + '.join(parts)})"
    agreement = [f"{percent(last.get(key))} {name}"
                 for key, name in (("train_agreement", "train"), ("val_agreement", "held-out"))
                 if last.get(key) is not None]
    if agreement:
        text += f"; agreement {', '.join(agreement)}"
    return text + "."


def recovery_notes(report: Report) -> list[str]:
    """The calibration and distillation summary lines (each present only when that step ran)."""
    return [line for line in (calibration_summary(report), training_summary(report)) if line]


def has_recovery(report: Report) -> bool:
    return bool(report.recovery or report.calibration or report.training)


def training_rows(report: Report) -> list[list[str]]:
    """One row per epoch in ``TRAINING_HEADERS`` order."""
    rows = []
    for record in report.training:
        if not isinstance(record, Mapping):
            continue
        lr, seconds = record.get("lr"), record.get("seconds")
        rows.append([
            str(record.get("epoch", "?")), number(record.get("loss")), number(record.get("logit_loss")),
            number(record.get("feature_loss")), percent(record.get("train_agreement")),
            percent(record.get("val_agreement")), percent(record.get("val_top1")),
            number(lr, 3), NOT_AVAILABLE if seconds is None else f"{seconds:.1f}",
        ])
    return rows


def calibration_rows(report: Report) -> list[list[str]]:
    """One row per calibrated layer, block and head, in ``CALIBRATION_HEADERS`` order."""
    calibration = report.calibration or {}
    rows = []
    for key, kind in (("layers", "layer"), ("blocks", "block")):
        for item in calibration.get(key) or []:
            if isinstance(item, Mapping):
                rows.append([str(item.get("name", "?")), kind, number(item.get("error_before"), 3),
                             number(item.get("error_after"), 3)])
    head = calibration.get("head")
    if head:
        name, before, after = (list(head) + [None, None, None])[:3]
        rows.append([str(name), "head", number(before, 3), number(after, 3)])
    return rows


# ----- Markdown --------------------------------------------------------------------------------


def _md_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], numeric: Sequence[int] = ()) -> list[str]:
    lines = ["| " + " | ".join(md_cell(h) for h in headers) + " |",
             "|" + "|".join("---:" if i in numeric else "---" for i in range(len(headers))) + "|"]
    lines += ["| " + " | ".join(md_cell(c) for c in row) + " |" for row in rows]
    return lines


def recovery_markdown(report: Report) -> list[str]:
    """The accuracy-recovery sections (empty when nothing was recovered)."""
    lines: list[str] = []
    if report.recovery:
        lines += ["", f"## {md_cell(recovery_title(report))}", ""]
        lines += _md_table(recovery_headers(report), recovery_rows(report), numeric=(1, 2, 3))
    summaries = recovery_notes(report)
    if summaries:
        lines.append("")
        lines += [f"- {md_cell(line)}" for line in summaries]
    if report.training:
        lines += ["", "## Distillation per epoch", ""]
        lines += _md_table(TRAINING_HEADERS, training_rows(report), numeric=range(len(TRAINING_HEADERS)))
    calibration = calibration_rows(report)
    if calibration:
        lines += ["", "## Calibration per layer", "", "Relative output error vs the original model "
                  "(before: data-free start; after: calibrated).", ""]
        lines += _md_table(CALIBRATION_HEADERS, calibration, numeric=(2, 3))
    return lines


def bench_title(report: Report) -> str:
    """The heading of the timings ``ghostify bench DIR --report`` added."""
    bench = report.bench or {}
    size = "x".join(map(str, bench.get("input_size", ())))
    return f"Latency on {bench.get('device', '?')}, input {size} (ghostify bench)"


def to_markdown(report: Report) -> str:
    """The report as Markdown: summary table, notes, accuracy recovery, and one row per conv layer."""
    lines = [f"# ghostify report: {report.original_name} → {report.converted_name}", ""]
    lines += ["| Metric | Before | After | Saving |", "|---|---:|---:|---|"]
    lines += [f"| {' | '.join(md_cell(c) for c in row)} |" for row in summary_rows(report)]
    lines.append("")
    lines += [f"- {md_cell(note)}" for note in notes(report)]
    lines += recovery_markdown(report)
    if report.bench:
        lines += ["", f"## {bench_title(report)}", "", BENCH_CAPTION, "",
                  "| " + " | ".join(BENCH_HEADERS) + " |", "|---:|---|---:|---:|---:|"]
        lines += [f"| {' | '.join(md_cell(c) for c in row)} |" for row in bench_text_rows(report.bench)]
    lines += ["", "## Conv layers", "", FIT_ERROR_EXPLANATION, ""]
    timed = any(row.latency_ms for row in report.layers)
    headers = ["Layer", "Kind", "In → out", "Kernel / stride", "Ratio", "Converted",
               "Params before", "Params after", "MACs before", "MACs after", FIT_ERROR_HEADER,
               *([LATENCY_HEADER] if timed else []), "Reason"]
    lines.append("| " + " | ".join(headers) + " |")
    lines.append("|" + "|".join(["---"] * 6 + ["---:"] * (6 if timed else 5) + ["---"]) + "|")
    for row in report.layers:
        cells = [
            f"`{row.name}`", row.kind, channels_text(row), kernel_text(row),
            str(row.ratio) if row.convert else MISSING, "yes" if row.convert else "no",
            human_count(row.params_before), human_count(row.params_after),
            human_count(row.macs_before), human_count(row.macs_after),
            fit_text(row.fit_error), *([latency_text(row)] if timed else []), row.reason or "",
        ]
        lines.append("| " + " | ".join(md_cell(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


# ----- rich ------------------------------------------------------------------------------------


def summary_table(report: Report) -> Table:
    """Rich table: parameters, MACs, size, latency (if measured), conv counts, with savings."""
    table = Table(title=f"ghostify: {report.original_name} → {report.converted_name}", title_justify="left")
    table.add_column("Metric")
    table.add_column("Before", justify="right")
    table.add_column("After", justify="right")
    table.add_column("Saving")
    for row in summary_rows(report):
        table.add_row(*row)
    return table


def recovery_table(report: Report) -> Table:
    """Rich table: top-1 and agreement with the original per recovery stage. Stage names never wrap."""
    table = Table(title=recovery_title(report), title_justify="left")
    for header in recovery_headers(report):
        if header == "Stage":
            table.add_column(header, no_wrap=True)
        elif header == "Data":
            table.add_column(header)
        else:
            table.add_column(header, justify="right", no_wrap=True)
    for cells in recovery_rows(report):
        table.add_row(*cells)
    return table


def layer_status(row: Any, footnotes: dict[str, int]) -> Text:
    """``'ghost s=2'`` for a converted layer; ``'kept [n]'`` for a kept one, ``n`` numbering its reason in
    ``footnotes`` (reason -> number, extended here), so that a row stays one line."""
    if row.convert:
        return Text(f"ghost s={row.ratio}", style="green")
    mark = footnotes.setdefault(row.reason or "not selected", len(footnotes) + 1)
    return Text(f"kept [{mark}]", style="dim")


def layer_table(report: Report, max_rows: int | None = None) -> Table:
    """Rich table with one line per conv layer: short cells, why a layer was kept as a numbered note under
    the table, with what the fit error means. Past ``max_rows`` a last row says how many were left out."""
    shown = report.layers if max_rows is None else report.layers[:max(max_rows, 0)]
    with_fit = any(row.fit_error is not None for row in report.layers)
    footnotes: dict[str, int] = {}
    statuses = [layer_status(row, footnotes) for row in shown]
    caption = [f"[{mark}] {reason}" for reason, mark in footnotes.items()]
    if with_fit:
        caption.append(FIT_ERROR_EXPLANATION)
    table = Table(title="Conv layers", title_justify="left", caption="\n".join(caption) or None,
                  caption_justify="left", box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, collapse_padding=True)
    # the layer name alone may shrink (cut with "…") so that every row keeps to one line
    table.add_column("Layer", overflow="ellipsis", min_width=12)
    table.add_column("In→out", justify="right", no_wrap=True)
    table.add_column("k/s", no_wrap=True)
    table.add_column("Params", justify="right", no_wrap=True)
    table.add_column("MACs", justify="right", no_wrap=True)
    if with_fit:
        table.add_column(FIT_ERROR_HEADER, justify="right", no_wrap=True)
    table.add_column("Status", no_wrap=True)
    for row, status in zip(shown, statuses):
        cells: list[Any] = [
            row.name, channels_text(row, "→"), kernel_text(row, "/"),
            before_after(row.params_before, row.params_after, short_count, "→"),
            before_after(row.macs_before, row.macs_after, short_count, "→"),
        ]
        if with_fit:
            cells.append(fit_text(row.fit_error))
        table.add_row(*cells, status)
    hidden = len(report.layers) - len(shown)
    if hidden > 0:
        table.add_row(f"... {hidden} more layer(s)", *[""] * (len(table.columns) - 1), style="dim")
    return table


def notes_text(lines: Sequence[str]) -> Text:
    """Notes for the terminal, one per line; a failed check in red, unmeasured accuracy in yellow."""
    return Text("\n").join(Text(line, style=NOTE_STYLES.get(note_kind(line) or "", "")) for line in lines)


def renderables(report: Report) -> list[RenderableType]:
    """What ``print(report)`` shows: the summary and its notes, then the accuracy recovered and how (if any)."""
    items: list[RenderableType] = [summary_table(report), notes_text(notes(report))]
    if report.recovery:
        items.append(recovery_table(report))
    summaries = recovery_notes(report)
    if summaries:
        items.append(Text("\n".join(summaries)))
    return items
