"""report_html: a self-contained, escaped HTML page whose plots really render in a headless browser."""

from __future__ import annotations

import base64
import copy
import dataclasses
import html
import os
import re
import shutil
import signal
import subprocess
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

import ghostify
from ghostify.evaluate import AccuracyStats
from ghostify.formatting import human_count
from ghostify.report import ComparisonReport
from ghostify.report_html import AFTER_COLOR, BEFORE_COLOR, render_html, stage_macs, stage_names
from ghostify.sweep import sweep

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
WINDOW = (1280, 2400)
PLOT = re.compile(r'<img class="plot" data-plot="([^"]+)"[^>]* src="data:image/png;base64,([^"]+)"')


def tiny_net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(OrderedDict(
        stem=nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU()),
        body=nn.Sequential(nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1)),
        head=nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10)),
    ))


def resnet18_report(input_size: tuple[int, ...] = (3, 32, 32)) -> ComparisonReport:
    """resnet18 with random weights against its ratio-2 ghost copy (no accuracy)."""
    torch.manual_seed(0)
    model = torchvision.models.resnet18()
    converted = ghostify.convert(model, ratio=2, init="random")
    return ghostify.compare(model, converted, input_size, original_name="resnet18", converted_name="resnet18 (ghost s=2)")


@pytest.fixture(scope="module")
def report() -> ComparisonReport:
    result = resnet18_report()
    result.accuracy = AccuracyStats("test-set", 500, top1_before=0.712, top1_after=0.655, agreement=0.83)
    return result


@pytest.fixture(scope="module")
def page(report) -> str:
    return render_html(report)


def plots(page: str) -> list[str]:
    """data-plot names of the page's plots, checking each is a real embedded PNG."""
    found = PLOT.findall(page)
    assert page.count('class="plot"') == len(found)
    for _, data in found:
        assert base64.b64decode(data).startswith(b"\x89PNG\r\n\x1a\n")
    return [name for name, _ in found]


def assert_self_contained(page: str) -> None:
    lowered = page.lower()
    for needle in ("http://", "https://", "<script", "<link", "@import", "url("):
        assert needle not in lowered, needle


def test_stage_rule():
    assert stage_names(["conv1", "layer1.0.conv1", "layer1.1.conv2", "layer2.0.downsample.0"]) == [
        "conv1", "layer1", "layer1", "layer2"]
    assert stage_names(["features.0.0", "features.3.block.0.0", "features.3.block.1.0"]) == [
        "features.0", "features.3", "features.3"]
    assert stage_names(["conv"]) == ["conv"]


def test_comparison_page_is_complete_and_self_contained(report, page):
    assert_self_contained(page)
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    for cells in report._summary_rows():
        for cell in cells:
            assert html.escape(cell) in page
    for note in report._notes():
        assert html.escape(note) in page
    assert "Top-1 on test-set (500 images)" in page and "MAC cross-check ok" in page
    for row in report.layers:
        assert f"<td>{row.name}</td>" in page
    assert page.count("<tr") == 1 + len(report._summary_rows()) + 1 + len(report.layers)
    assert plots(page) == ["layer-macs", "stage-macs", "accuracy-macs"]
    assert list(stage_macs(report.layers)) == ["conv1", "layer1", "layer2", "layer3", "layer4"]


def test_without_accuracy_no_accuracy_plot(report):
    page = render_html(dataclasses.replace(report, accuracy=None))
    assert plots(page) == ["layer-macs", "stage-macs"]
    assert "Top-1" not in page


def test_names_are_escaped(report):
    odd = copy.deepcopy(report)
    odd.original_name, odd.converted_name = "<b>&", '"><script>x</script>'
    odd.layers[0].name = "<i>$x$</i>"  # "$" must not reach matplotlib's mathtext either
    page = render_html(odd)
    assert "<b>&" not in page and "<script>" not in page and "<i>" not in page
    assert "&lt;b&gt;&amp; → &quot;&gt;&lt;script&gt;x&lt;/script&gt;" in page
    assert "<td>&lt;i&gt;$x$&lt;/i&gt;</td>" in page
    assert len(plots(page)) == 3


def test_save_writes_the_page(report, tmp_path):
    json_path, markdown_path, html_path = report.save(tmp_path)
    assert html_path == tmp_path / "report.html" and html_path.read_text(encoding="utf-8") == render_html(report)


def test_sweep_page(tmp_path):
    result = sweep(tiny_net(), "2,4", (3, 32, 32), init="random", min_channels=1, model_name="tiny<net>")
    page = render_html(result)
    assert_self_contained(page)
    assert "ghostify sweep: tiny&lt;net&gt;" in page and "tiny<net>" not in page
    assert page.count("<details>") == 2 and "<summary>s=2: " in page and "<summary>s=4: " in page
    for row in result.rows():
        assert human_count(row["macs"]) in page
    per_ratio = ["layer-macs", "stage-macs"] * 2
    assert plots(page) == ["sweep-params-macs", "sweep-stage-macs", *per_ratio]
    for stats, report in zip((0.6, 0.5), result.reports):
        report.accuracy = AccuracyStats("test-set", 100, 0.7, stats, 0.8)
    page = render_html(result)
    assert plots(page) == ["sweep-accuracy-macs", "sweep-stage-macs", *["layer-macs", "stage-macs", "accuracy-macs"] * 2]
    assert "70.0%" in page and "50.0%" in page and "80.0%" in page
    paths = result.save(tmp_path)
    assert paths[2].read_text(encoding="utf-8") == page


def test_render_html_rejects_other_objects():
    with pytest.raises(TypeError, match="ComparisonReport or SweepReport"):
        render_html({"schema": "ghostify.report"})  # type: ignore[arg-type]


# ----- headless browser ---------------------------------------------------------------------------


def find_chromium() -> str | None:
    return next((path for path in map(shutil.which, BROWSERS) if path), None)


def screenshot(browser: str, html_path: Path, png_path: Path, window: tuple[int, int] = WINDOW) -> None:
    """Screenshot ``html_path`` with headless Chromium (old headless flag first, then ``--headless=new``)."""
    errors = []
    for headless in ("--headless", "--headless=new"):
        png_path.unlink(missing_ok=True)
        profile = png_path.parent / f"chromium-profile{headless[-4:]}"
        command = [browser, headless, "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                   "--disable-background-networking", "--disable-component-update", "--disable-sync",
                   f"--user-data-dir={profile}", "--hide-scrollbars", "--force-device-scale-factor=1",
                   f"--window-size={window[0]},{window[1]}", f"--screenshot={png_path}", html_path.resolve().as_uri()]
        log = png_path.parent / "chromium.log"
        with log.open("wb") as sink:
            process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)  # the browser's own process group, nothing else
                process.wait()
        if png_path.is_file() and png_path.stat().st_size > 0:
            return
        errors.append(f"{headless}: exit {process.returncode}: {log.read_text(errors='replace')[-500:]}")
    raise RuntimeError("chromium wrote no screenshot\n" + "\n".join(errors))


def measure_screenshot(png_path: Path, colors: dict[str, str]) -> dict[str, Any]:
    """Image size, distinct colours, and per named colour: exact-match pixel count, bounding box
    (left, top, right, bottom) and bands (runs of rows holding >= 3 such pixels, e.g. one per bar)."""
    from PIL import Image

    image = np.asarray(Image.open(png_path).convert("RGB"))
    height, width, _ = image.shape
    packed = (image[..., 0].astype(np.int64) << 16) | (image[..., 1].astype(np.int64) << 8) | image[..., 2]
    result: dict[str, Any] = {"width": width, "height": height, "distinct_colours": len(np.unique(packed))}
    for name, hex_color in colors.items():
        mask = packed == int(hex_color.lstrip("#"), 16)
        per_row = mask.sum(axis=1)
        wide = per_row >= 3
        ys, xs = np.nonzero(mask)
        result[name] = {
            "pixels": int(mask.sum()),
            "bands": int(wide[0] + np.count_nonzero(wide[1:] & ~wide[:-1])),
            "bbox": (int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())) if len(xs) else None,
        }
    return result


def screenshot_checks(measured: dict[str, Any], bars: int, min_pixels: int = 2000) -> list[tuple[str, bool]]:
    """Named pass/fail checks: not blank, each plot colour present and fully inside the image, and at
    least ``bars`` bars of each colour (one per conv layer in the per-layer plot)."""
    checks = [(f"distinct colours {measured['distinct_colours']} >= 200", measured["distinct_colours"] >= 200)]
    for name in ("before", "after"):
        info = measured[name]
        box = info["bbox"]
        checks.append((f"{name} colour pixels {info['pixels']} >= {min_pixels}", info["pixels"] >= min_pixels))
        checks.append((f"{name} colour bbox {box} inside {measured['width']}x{measured['height']}",
                       box is not None and box[0] > 0 and box[1] > 0
                       and box[2] < measured["width"] - 1 and box[3] < measured["height"] - 1))
        checks.append((f"{name} colour bands {info['bands']} >= {bars} conv layers", info["bands"] >= bars))
    return checks


def test_page_renders_with_plots_in_chromium(report, page, tmp_path):
    browser = find_chromium()
    if browser is None:
        pytest.skip("chromium not installed: apt-get install chromium to run the HTML screenshot test")
    html_path, png_path = tmp_path / "report.html", tmp_path / "report.png"
    html_path.write_text(page, encoding="utf-8")
    screenshot(browser, html_path, png_path)
    measured = measure_screenshot(png_path, {"before": BEFORE_COLOR, "after": AFTER_COLOR})
    assert (measured["width"], measured["height"]) == WINDOW
    failed = [text for text, ok in screenshot_checks(measured, bars=len(report.layers)) if not ok]
    assert not failed, failed

