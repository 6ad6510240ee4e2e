"""Compare several ghost ratios of one model in one report (``ghostify sweep MODEL --ratios 2,3,4``)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from rich.console import Console, ConsoleOptions, RenderResult
from rich.table import Table
from rich.text import Text
from torch import nn
from torch.utils.data import Dataset

from .config import GhostConfig
from .convert import convert
from .formatting import MISSING, human_count, parse_whole_numbers, ratio_text
from .outputs import prepare_report_directory
from .records import RecordKind
from .report import ComparisonReport, compare
from .report_html import render_html
from .report_render import NOT_AVAILABLE, render_text, top1_note
from .serialization import write_model_files

SWEEP_SCHEMA = "ghostify.sweep"
SWEEP_SCHEMA_VERSION = 1
SWEEP_RECORD = RecordKind("ghostify sweep", "schema_version", SWEEP_SCHEMA_VERSION, "schema", SWEEP_SCHEMA)


@dataclass
class SweepReport:
    """One ``ComparisonReport`` per ratio, all of the same base model on the same input."""

    model: str
    reports: list[ComparisonReport]

    SCHEMA: ClassVar[str] = SWEEP_SCHEMA

    @property
    def ratios(self) -> list[int]:
        return [int(report.config["_data"]["ratio"]) for report in self.reports]

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SWEEP_SCHEMA,
            "schema_version": SWEEP_SCHEMA_VERSION,
            "model": self.model,
            "ratios": self.ratios,
            "reports": [report.to_dict() for report in self.reports],
        }

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, payload: Mapping[str, Any]) -> SweepReport:
        SWEEP_RECORD.version_of(payload)
        return cls(model=payload["model"], reports=[ComparisonReport.from_dict(r) for r in payload["reports"]])

    @classmethod
    def from_json(cls, text: str) -> SweepReport:
        return cls.from_dict(json.loads(text))

    def rows(self) -> list[dict[str, Any]]:
        """One summary row per ratio, the base model first (ratio 1)."""
        first = self.reports[0]
        rows = [{
            "ratio": 1, "params": first.params_before, "macs": first.macs_before,
            "top1": first.accuracy.top1_before if first.accuracy else None, "agreement": None,
            "latency_ms": first.latency_before.median_ms if first.latency_before else None,
        }]
        for ratio, report in zip(self.ratios, self.reports):
            rows.append({
                "ratio": ratio, "params": report.params_after, "macs": report.macs_after,
                "top1": report.accuracy.top1_after if report.accuracy else None,
                "agreement": report.accuracy.agreement if report.accuracy else None,
                "latency_ms": report.latency_after.median_ms if report.latency_after else None,
            })
        return rows

    SUMMARY_HEADERS = ("Ratio", "Params", "MACs", "MACs saving", "Top-1", "Agreement", "Latency (median)")

    def summary_cells(self) -> list[list[str]]:
        """``rows()`` as text, one list per row in ``SUMMARY_HEADERS`` order (terminal, Markdown, HTML)."""
        rows = self.rows()
        base_macs = rows[0]["macs"]
        # with accuracy measured, a missing top-1 means unlabelled images: "n/a", not "-"
        measured = any(report.accuracy is not None for report in self.reports)

        def percent(value: float | None) -> str:
            if value is None:
                return NOT_AVAILABLE if measured else MISSING
            return f"{value:.1%}"

        return [[
            "original" if row["ratio"] == 1 else f"s={row['ratio']}",
            human_count(row["params"]), human_count(row["macs"]),
            MISSING if row["ratio"] == 1 or not row["macs"] else ratio_text(base_macs / row["macs"], "fewer", "more"),
            percent(row["top1"]), MISSING if row["ratio"] == 1 else percent(row["agreement"]),
            MISSING if row["latency_ms"] is None else f"{row['latency_ms']:.2f} ms",
        ] for row in rows]

    def summary_table(self) -> Table:
        table = Table(title=f"ghostify sweep: {self.model}", title_justify="left")
        for column in self.SUMMARY_HEADERS:
            table.add_column(column, justify="left" if column == "Ratio" else "right")
        for cells in self.summary_cells():
            table.add_row(*cells)
        return table

    def to_markdown(self) -> str:
        lines = [f"# ghostify sweep: {self.model}", "", "| " + " | ".join(self.SUMMARY_HEADERS) + " |",
                 "|---|" + "---:|" * (len(self.SUMMARY_HEADERS) - 1)]
        lines += ["| " + " | ".join(cells) + " |" for cells in self.summary_cells()]
        lines += [f"\n{note}" for note in self.notes()]
        for report in self.reports:
            lines += ["", report.to_markdown().replace("\n# ", "\n## ", 1)]
        return "\n".join(lines) + "\n"

    def notes(self) -> list[str]:
        """Notes every ratio shares, such as why top-1 is n/a (the data's classes are not the model's)."""
        return list(dict.fromkeys(note for report in self.reports for note in [top1_note(report)] if note))

    def _renderables(self) -> list[Any]:
        return [self.summary_table(), *(Text(note, style="yellow") for note in self.notes())]

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        yield from self._renderables()

    def __str__(self) -> str:
        return render_text(*self._renderables())

    def save(self, directory: str | Path, *, force: bool = False) -> list[Path]:
        """Write ``sweep.json``, ``sweep.md`` and ``sweep.html`` into ``directory`` (created if missing).

        As ``ghostify.save``, it refuses a non-empty directory unless ``force=True`` (which overwrites
        the sweep's files and keeps the rest).
        """
        prepare_report_directory(directory, force=force)
        target = Path(directory)
        paths = [target / "sweep.json", target / "sweep.md", target / "sweep.html"]
        paths[0].write_text(self.to_json() + "\n", encoding="utf-8")
        paths[1].write_text(self.to_markdown(), encoding="utf-8")
        paths[2].write_text(render_html(self), encoding="utf-8")
        return paths


def parse_ratios(text: str | Iterable[int]) -> list[int]:
    """``"2,3,4"`` or ``[2, 3, 4]`` as a sorted list of distinct ratios >= 2."""
    return parse_whole_numbers(text, "ratios", 2, "2,3,4")


def sweep(
    model: nn.Module,
    ratios: Sequence[int] | str = (2, 3, 4),
    input_size: Sequence[int] = (3, 224, 224),
    *,
    config: GhostConfig | None = None,
    data: Dataset | None = None,
    data_name: str = "data",
    latency: bool = False,
    device: str = "cpu",
    model_name: str = "model",
    on_converted: Callable[[int, nn.Module], None] | None = None,
    **options: Any,
) -> SweepReport:
    """Convert ``model`` at each ratio and compare each result with it (``options``: GhostConfig fields).

    The report holds measurements only; ``on_converted(ratio, converted_model)`` is called after each
    conversion, to keep or save the converted models (e.g. ``models = {}; sweep(..., on_converted=models.__setitem__)``).
    """
    reports = []
    for ratio in parse_ratios(ratios):
        converted = convert(model, config, **{**options, "ratio": ratio})
        if on_converted is not None:
            on_converted(ratio, converted)
        reports.append(compare(
            model, converted, tuple(input_size), data=data, data_name=data_name, latency=latency, device=device,
            original_name=model_name, converted_name=f"{model_name} (ghost s={ratio})",
        ))
    return SweepReport(model=model_name, reports=reports)


def model_directory(directory: str | Path, ratio: int) -> Path:
    """Where ``ghostify sweep -o DIR --save-models`` saves the model converted at ``ratio``: ``DIR/ratio-S``."""
    return Path(directory) / f"ratio-{ratio}"


def write_sweep_models(models: Mapping[int, nn.Module], directory: str | Path, **recipe: Any) -> list[Path]:
    """Write each converted model into ``model_directory(directory, ratio)`` as ``convert -o`` does
    (``model.safetensors`` + ``ghostify.json``, loadable with ``ghostify.load``).

    ``recipe``: ``write_model_files``'s keyword arguments (``base_model``, ``base_checkpoint``, ...).
    """
    written = []
    for ratio, converted in sorted(models.items()):
        target = model_directory(directory, ratio)
        target.mkdir(parents=True, exist_ok=True)
        write_model_files(converted, target, **recipe)
        written.append(target)
    return written
