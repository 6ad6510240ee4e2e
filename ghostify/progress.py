"""Progress displays: one for each short step of a command, and for calibration and distillation.

``step(console, "converting")`` wraps a step of unknown length: a spinner with the elapsed time
in a terminal, then one line ``converting: 3.1 s`` (the only output when piped or under CI).

In a terminal: a live rich progress bar (description, bar, M/N, elapsed, remaining; for
distillation also the running loss and agreement) and a line per finished epoch. In logs, pipes
and CI (stdout not a TTY, or ``$CI`` set): one plain line per calibrated layer group and per
epoch, e.g. ``epoch 3/10  loss 2.41  agreement 91.2%  val agreement 90.1%  12.3 s``.

Each factory returns an object that is the callback ``calibrate`` / ``distill`` take as
``progress=`` and a context manager that closes the display::

    with distillation_progress(console) as progress:
        distill(student, teacher, data, progress=progress)
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn,
)


def live_display(console: Console) -> bool:
    """Whether to draw a live bar: a terminal, and not CI (CI logs keep every redraw)."""
    return console.is_terminal and not os.environ.get("CI")


@contextmanager
def step(console: Console, what: str) -> Iterator[None]:
    """A step such as ``building timm:resnet50``: live spinner + elapsed time in a terminal, then one line with its duration.

    Nothing is printed for a step that fails or is interrupted: the error says what happened.
    """
    start = time.perf_counter()
    if live_display(console):
        with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
                      console=console, transient=True) as spinner:
            spinner.add_task(escape(what), total=None)
            yield
    else:
        yield
    console.print(f"{escape(what)}: {time.perf_counter() - start:.1f} s", highlight=False, soft_wrap=True)


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _layer_group(name: str) -> str:
    """The block a layer belongs to (``layer1.0.conv2`` -> ``layer1.0``); a top-level layer is its own group."""
    parent = name.rpartition(".")[0]
    return parent or name


class _Display:
    """A rich ``Progress`` in a terminal, or nothing (plain lines) elsewhere; a context manager."""

    def __init__(self, console: Console, *fields: TextColumn) -> None:
        self.console = console
        self.bar: Progress | None = None
        if live_display(console):
            self.bar = Progress(
                TextColumn("[progress.description]{task.description}"), BarColumn(), MofNCompleteColumn(),
                TimeElapsedColumn(), TextColumn("remaining"), TimeRemainingColumn(), *fields,
                console=console, transient=True,
            )
        self.task: Any = None

    def line(self, text: str) -> None:
        """A line that stays (printed above the live bar, if any)."""
        (self.bar.console if self.bar is not None else self.console).print(text, markup=False, highlight=False, soft_wrap=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()

    def __enter__(self):
        if self.bar is not None:
            self.bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class CalibrationProgress(_Display):
    """``progress(name, index, total)`` for ``ghostify.calibrate``: called before each layer, then with "done"."""

    def __init__(self, console: Console) -> None:
        super().__init__(console)
        self.clock = time.perf_counter()
        self.group: str | None = None
        self.group_layers = 0

    def __call__(self, name: str, index: int, total: int) -> None:
        if self.bar is not None:
            if self.task is None:
                self.task = self.bar.add_task("calibrating", total=total)
            done = name == "done"
            self.bar.update(self.task, completed=index, description="calibrated" if done else f"calibrating {name}")
            return  # the bar says it all; plain lines are for logs
        group = None if name == "done" else _layer_group(name)
        if self.group is not None and group != self.group:  # the previous group is finished
            self.line(f"calibrated {self.group} ({self.group_layers} layer{'s' if self.group_layers != 1 else ''})"
                      f"  {index}/{total}  {time.perf_counter() - self.clock:.1f} s")
            self.group_layers = 0
        self.group = group
        self.group_layers += group is not None


class DistillationProgress(_Display):
    """``progress(event, info)`` for ``ghostify.distill``: a bar over all steps, one line per epoch."""

    def __init__(self, console: Console) -> None:
        super().__init__(console, TextColumn("{task.fields[stats]}"))
        self.epochs = 0
        self.steps = 1

    def __call__(self, event: str, info: dict[str, Any]) -> None:
        if event == "start":
            self.epochs, self.steps = info["epochs"], max(1, info["steps_per_epoch"])
            done = info["epoch"] * self.steps + info["step"]
            where = f"; resuming at epoch {info['epoch'] + 1}, step {info['step']}" if done else ""
            workers = f" on {info['world_size']} processes" if info.get("world_size", 1) > 1 else ""
            recipe = f", {info['recipe']}" if info.get("recipe") else ""
            self.line(f"distilling: {info['images']} images, {self.epochs} epochs x {self.steps} steps{recipe}{workers}{where}")
            if self.bar is not None:
                self.task = self.bar.add_task("distilling", total=self.epochs * self.steps, completed=done, stats="")
        elif event == "step" and self.bar is not None:
            self.bar.update(
                self.task, completed=info["epoch"] * self.steps + info["step"],
                description=f"epoch {info['epoch'] + 1}/{self.epochs}",
                stats=f"loss {info['loss']:.3f}  agreement {_percent(info['agreement'])}",
            )
        elif event == "epoch":
            self.line(epoch_line(info, self.epochs))
        elif event == "budget":
            self.line(f"budget {info['minutes']:g} min: {budget_pace(info)} here -> {info['epochs']} "
                      f"epoch{'s' if info['epochs'] != 1 else ''}")
            if info.get("replanned"):
                self.epochs = info["epochs"]
                if self.bar is not None and self.task is not None:
                    self.bar.update(self.task, total=self.epochs * self.steps)


def budget_pace(info: dict[str, Any]) -> str:
    """What a "budget" event's epoch time rests on: ``about 3.1 s per epoch`` (the probe's),
    ``epoch 1 took 3.4 s`` or ``epochs 5-9 took 2.9 s on average`` (the last few; never the first
    once there are others: it pays for warm-up)."""
    done, first, seconds = info.get("after_epoch"), info.get("timed_from"), info["epoch_seconds"]
    if not info.get("replanned") or done is None:
        return f"about {seconds:.1f} s per epoch"
    if first is None or first == done:
        return f"epoch {done} took {seconds:.1f} s"
    return f"epochs {first}-{done} took {seconds:.1f} s on average"


def epoch_line(record: dict[str, Any], epochs: int) -> str:
    """``epoch 3/10  loss 2.41  agreement 91.2%  val agreement 90.1%  val top-1 88.0%  12.3 s``."""
    parts = [f"epoch {record['epoch']}/{epochs}", f"loss {record['loss']:.3g}", f"agreement {_percent(record['train_agreement'])}"]
    if record.get("val_agreement") is not None:
        parts.append(f"val agreement {_percent(record['val_agreement'])}")
    if record.get("val_top1") is not None:
        parts.append(f"val top-1 {_percent(record['val_top1'])}")
    parts.append(f"{record['seconds']:.1f} s")
    return "  ".join(parts)


def calibration_progress(console: Console) -> CalibrationProgress:
    """A calibration callback + display for ``console`` (live bar in a terminal, plain lines otherwise)."""
    return CalibrationProgress(console)


def distillation_progress(console: Console) -> DistillationProgress:
    """A distillation callback + display for ``console`` (live bar in a terminal, plain lines otherwise)."""
    return DistillationProgress(console)
