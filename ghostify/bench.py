"""Latency of a converted model against its original, side by side (``ghostify bench``).

For each batch size (and with ``compiled=True`` also under ``torch.compile``) both models are
warmed up, then timed in interleaved runs (``measure.time_interleaved``), so that drift and noise
hit both alike. The speedup is the ratio of the medians; its p10-p90 comes from the ratios of the
paired runs (run ``r`` of the original against run ``r`` of the converted model).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from rich.table import Table
from torch import nn

from . import prepacked
from .convert import base_form
from .deploy import get_deploy_record, to_channels_last
from .errors import GhostifyError
from .formatting import parse_whole_numbers, timing_text
from .frozen import freeze
from .graph_pass import copy_model
from .measure import LatencyStats, example_input, latency_stats, percentile, resolve_device, time_interleaved
from .selection import get_plan

MODES = ("eager", "frozen", "compiled")


@dataclass
class BenchRow:
    """One batch size and mode: both models' timings and the speedup (original / converted time)."""

    batch_size: int
    mode: str
    original: LatencyStats
    converted: LatencyStats
    speedup: float  # ratio of the medians; > 1: the converted model is faster
    speedup_p10: float
    speedup_p90: float
    original_form: str = ""  # "prepacked" when the original ran faster on packed conv weights (else as given)


@dataclass
class BenchReport:
    """Timings of one original/converted pair over batch sizes and modes, on one device."""

    original_name: str
    converted_name: str
    device: str
    input_size: tuple[int, ...]
    rows: list[BenchRow]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def text_rows(self) -> list[tuple[str, str, str, str, str]]:
        """(batch, mode, original, converted, speedup) per row, as the tables show them."""
        return bench_text_rows(self.to_dict())

    def table(self) -> Table:
        table = Table(title=f"ghostify bench: {self.original_name} vs {self.converted_name} on {self.device}",
                      title_justify="left", caption=BENCH_CAPTION, caption_justify="left")
        for column in BENCH_HEADERS:
            table.add_column(column, justify="left" if column == "Mode" else "right")
        for row in self.text_rows():
            table.add_row(*row)
        return table


BENCH_HEADERS = ("Batch", "Mode", "Original", "Converted", "Speedup")
BENCH_CAPTION = ("Medians of interleaved runs (p10-p90); speedup = original / converted time. An original "
                 "marked (prepacked) ran faster on packed conv weights, as a CPU deploy form's ghost modules run.")


def bench_text_rows(bench: dict[str, Any]) -> list[tuple[str, str, str, str, str]]:
    """The rows of ``BenchReport.to_dict()`` (as a report stores it) as text: batch, mode, both timings, speedup."""
    def timing(stats: dict[str, Any]) -> str:
        return timing_text(stats["median_ms"], stats["p10_ms"], stats["p90_ms"])

    def original(row: dict[str, Any]) -> str:
        return timing(row["original"]) + (f" ({row['original_form']})" if row.get("original_form") else "")

    return [(str(row["batch_size"]), row["mode"], original(row), timing(row["converted"]),
             f"{row['speedup']:.2f}x ({row['speedup_p10']:.2f}-{row['speedup_p90']:.2f})") for row in bench["rows"]]


def bench(
    original: nn.Module,
    converted: nn.Module,
    input_size: Sequence[int],
    *,
    batch_sizes: Sequence[int] = (1, 16),
    device: str | torch.device = "cpu",
    compiled: bool = False,
    frozen: bool = False,
    compile_backend: str = "inductor",
    warmup: int = 5,
    repeats: int = 30,
    original_name: str = "original",
    converted_name: str = "converted",
    progress: Callable[[str], None] | None = None,
) -> BenchReport:
    """Time ``original`` and ``converted`` at each batch size, eager, (``frozen``) both run as flat graphs
    (``ghostify.freeze``, eager too) and (``compiled``) under ``torch.compile``.

    The models are moved to ``device`` in copies; the callers' models stay as they are. When
    ``converted`` was made with its re-parameterisable blocks fused (``GhostConfig.reparameterize``),
    ``original`` is timed in that form too, so that the speedup is the ghost modules' alone; likewise
    with channels_last weights when ``converted`` is a deploy form that has them (``ghostify.deploy``);
    on the CPU such a deploy form runs its ghost modules on prepacked weights (``prepacked``), so
    the original is then timed both as it is and with its convs prepacked, and the faster counts
    (``BenchRow.original_form``): packing speeds up large convs and slows some small ones.
    ``compile_backend`` is passed to ``torch.compile`` ("inductor" needs a C++ compiler on CPU).
    """
    batch_sizes = parse_batch_sizes(batch_sizes)
    target = resolve_device(device)
    original = base_form(original, get_plan(converted))  # re-parameterisable blocks fused, as in the converted model
    pair = [_on(model, target) for model in (original, converted)]
    record = get_deploy_record(converted)
    originals = {"": pair[0]}
    if record is not None and record.channels_last:  # the same memory layout for both
        to_channels_last(pair[0])
        if target.type == "cpu" and prepacked.available():
            originals["prepacked"] = prepacked.with_prepacked_convs(pair[0])
    modes = [mode for mode, wanted in zip(MODES, (True, frozen, compiled)) if wanted]
    rows = []
    for mode in modes:
        forms = originals if mode != "compiled" else {"": pair[0]}  # compiled code never takes the packed path
        runners = [*forms.values(), pair[1]]
        if mode == "frozen":
            runners = [freeze(model) for model in runners]
        elif mode == "compiled":
            runners = [_compiled(model, compile_backend) for model in runners]
        for batch_size in batch_sizes:
            if progress is not None:
                progress(f"timing batch {batch_size}, {mode}")
            inputs = example_input(tuple(input_size), batch_size=batch_size)
            try:
                times, _, _ = time_interleaved(runners, inputs, warmup=warmup, repeats=repeats, device=target)
            except GhostifyError:
                raise
            except Exception as err:  # torch.compile's toolchain, out of memory, ...
                first_line = (str(err).strip().splitlines() or [""])[0][:300]
                raise GhostifyError(f"timing batch {batch_size} ({mode}) failed: {type(err).__name__}: {first_line}") from err
            fastest = min(range(len(forms)), key=lambda i: statistics.median(times[i]))
            before, after = times[fastest], times[-1]
            ratios = [b / a for b, a in zip(before, after) if a > 0]
            rows.append(BenchRow(
                batch_size=batch_size, mode=mode,
                original=latency_stats(before, str(target), batch_size),
                converted=latency_stats(after, str(target), batch_size),
                speedup=statistics.median(before) / statistics.median(after),
                speedup_p10=percentile(ratios, 10), speedup_p90=percentile(ratios, 90),
                original_form=list(forms)[fastest],
            ))
    return BenchReport(original_name, converted_name, str(target), tuple(input_size), rows)


def parse_batch_sizes(text: str | Sequence[int]) -> list[int]:
    """``"1,16"`` as ``[1, 16]``."""
    return parse_whole_numbers(text, "batch sizes", 1, "1,16")


def _on(model: nn.Module, target: torch.device) -> nn.Module:
    return copy_model(model).to(target).eval()


def _compiled(model: nn.Module, backend: str) -> nn.Module:
    try:
        return torch.compile(model, backend=backend)
    except Exception as err:
        raise GhostifyError(f"torch.compile(backend={backend!r}) failed: {type(err).__name__}: {err}") from err
