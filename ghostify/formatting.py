"""Human-readable numbers for reports: ``25.56 M`` parameters, ``4.11 G`` MACs, ``97.49 MiB``, ``1.83x``."""

from __future__ import annotations

import math
import os
import re
import textwrap
from collections.abc import Iterable
from pathlib import Path

from .errors import ConfigError

_DECIMAL_PREFIXES = ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "K"))
# the layout of an input size (without the batch) by how many numbers it has: a 1-D signal, an image, a video
INPUT_LAYOUTS = {2: "C,L", 3: "C,H,W", 4: "C,T,H,W"}
_BINARY_UNITS = ((1 << 40, "TiB"), (1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB"))
MISSING = "-"


def human_count(value: float | None, digits: int = 2) -> str:
    """A count with a decimal prefix, ``25557032 -> '25.56 M'``; small counts stay whole (``'512'``)."""
    if value is None:
        return MISSING
    for scale, prefix in _DECIMAL_PREFIXES:
        if abs(value) >= scale:
            return f"{value / scale:.{digits}f} {prefix}"
    return f"{value:.0f}" if float(value).is_integer() else f"{value:.{digits}f}"


def human_bytes(value: float | None, digits: int = 2) -> str:
    """A byte count in binary units, ``102228316 -> '97.49 MiB'``."""
    if value is None:
        return MISSING
    for scale, unit in _BINARY_UNITS:
        if abs(value) >= scale:
            return f"{value / scale:.{digits}f} {unit}"
    return f"{value:.0f} B"


def timing_text(median_ms: float, p10_ms: float, p90_ms: float) -> str:
    """``'1995 ms (1921-2110)'``: a median and its p10-p90, in the median's precision."""
    spread = "-".join(human_ms(value).removesuffix(" ms") for value in (p10_ms, p90_ms))
    return f"{human_ms(median_ms)} ({spread})"


def human_ms(value: float | None) -> str:
    """Milliseconds with precision that suits the size: ``'0.412 ms'``, ``'12.3 ms'``, ``'1534 ms'``."""
    if value is None:
        return MISSING
    if value < 1:
        return f"{value:.3f} ms"
    if value < 100:
        return f"{value:.1f} ms"
    return f"{value:.0f} ms"


def saving_ratio(before: float | None, after: float | None) -> float | None:
    """``before / after`` (2.0 means halved); None when either is unknown or ``after`` is 0."""
    if before is None or after is None or after == 0:
        return None
    return before / after


def saving_percent(before: float | None, after: float | None) -> float | None:
    """Share of ``before`` saved, in percent (negative when ``after`` grew); None when unknown."""
    if before is None or after is None or before == 0:
        return None
    return (before - after) / before * 100.0


def ratio_text(ratio: float | None, smaller: str = "smaller", larger: str = "larger") -> str:
    """``1.83 -> '1.83x smaller'``, ``0.5 -> '2.00x larger'``, ``1.0 -> 'same'``."""
    if ratio is None or math.isnan(ratio):
        return MISSING
    if math.isclose(ratio, 1.0, rel_tol=5e-4):
        return "same"
    if ratio > 1:
        return f"{ratio:.2f}x {smaller}"
    return f"{1 / ratio:.2f}x {larger}"


def percent_text(percent: float | None) -> str:
    """``45.3 -> '-45.3%'`` (a saving is a decrease), ``-10 -> '+10.0%'``."""
    if percent is None:
        return MISSING
    return f"{-percent:+.1f}%"


def shorten(text: str, width: int = 300) -> str:
    """``text`` on one line, cut at a word boundary (never inside a word) to at most ``width`` characters."""
    return textwrap.shorten(text, width=width, placeholder=" ...")


def display_path(path: str | Path) -> str:
    """A path as a user would type it: relative to the current directory when inside it, ``~/...`` under home."""
    resolved = Path(path).expanduser()
    if not resolved.is_absolute():
        return str(path)
    for base, shown in ((Path.cwd(), None), (Path.home(), "~")):
        try:
            relative = resolved.relative_to(base)
        except ValueError:
            continue
        return str(relative) if shown is None else os.path.join(shown, relative)
    return str(resolved)


def display_spec(spec: str) -> str:
    """A model spec as the user typed it: ``/home/u/work/net.py:make`` run from ``~/work`` shows ``net.py:make``."""
    path, colon, function = spec.rpartition(":")
    if colon and path.endswith(".py"):
        return f"{display_path(path)}:{function}"
    return spec


def parse_whole_numbers(text: str | Iterable[int], name: str, minimum: int, example: str) -> list[int]:
    """``"2,3,4"`` or ``[2, 3, 4]`` as a sorted list of distinct whole numbers >= ``minimum``.

    ``ConfigError`` naming ``name`` and ``example`` otherwise (these lists come from the command line).
    """
    items = [part.strip() for part in text.split(",")] if isinstance(text, str) else list(text)
    try:
        numbers = sorted({int(item) for item in items if str(item) != ""})
    except ValueError:
        raise ConfigError(f"{name} must be whole numbers separated by commas, such as {example}; got {text!r}.") from None
    if not numbers or any(n < minimum for n in numbers):
        raise ConfigError(f"{name} must be whole numbers >= {minimum}, such as {example}; got {text!r}.")
    return numbers


def parse_input_size(text: str | None) -> tuple[int, ...] | None:
    """``--input-size`` as whole numbers (without the batch); None when not given.

    ``S`` is a 3xSxS image, ``(3, S, S)``; otherwise the numbers as given: ``C,H,W`` (an image),
    ``C,L`` (a 1-D signal) or ``C,T,H,W`` (a video). Which layout fits depends on the model: check
    with ``ghostify.models.input_size_for`` once it is built (two numbers are ambiguous for an
    image model). Commas, ``x`` or spaces separate the numbers. ``ConfigError`` for anything else.
    """
    if text is None:
        return None
    parts = [p for p in re.split(r"[,x\s]+", text.strip()) if p]
    if not all(p.isascii() and p.isdigit() and int(p) > 0 for p in parts) or len(parts) not in INPUT_LAYOUTS.keys() | {1}:
        raise ConfigError(
            f"--input-size must be S (a 3xSxS image, e.g. 224) or C,H,W (e.g. 3,224,224), every number >= 1 "
            f"(C,L for a model whose first conv is a Conv1d, e.g. 1,16000; C,T,H,W for a Conv3d, e.g. 3,16,112,112); got {text!r}."
        )
    values = tuple(int(p) for p in parts)
    return (3, values[0], values[0]) if len(values) == 1 else values
