"""Render an example HTML report (resnet18, random weights, ghost ratio 2), screenshot it with
headless Chromium and print the checks that tests/test_report_html.py makes on the screenshot.

    .venv/bin/python scripts/check_html_report.py [--out /tmp/ghostify-report.png] [--input-size 3,224,224]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the screenshot helpers live with the test that uses them

from test_report_html import (  # noqa: E402
    WINDOW, find_chromium, measure_screenshot, resnet18_report, screenshot, screenshot_checks,
)

from ghostify.report_html import AFTER_COLOR, BEFORE_COLOR, render_html  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("/tmp/ghostify-report.png"), help="where to write the screenshot")
    parser.add_argument("--input-size", default="3,224,224", help="C,H,W of the example input")
    args = parser.parse_args()
    browser = find_chromium()
    if browser is None:
        print("chromium not installed: apt-get install chromium to run the HTML screenshot check")
        return 2
    report = resnet18_report(tuple(int(d) for d in args.input_size.split(",")))
    page = render_html(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    html_path = args.out.with_suffix(".html")
    html_path.write_text(page, encoding="utf-8")
    with tempfile.TemporaryDirectory() as scratch:
        shot = Path(scratch) / "report.png"
        screenshot(browser, html_path, shot)
        args.out.write_bytes(shot.read_bytes())
    measured = measure_screenshot(args.out, {"before": BEFORE_COLOR, "after": AFTER_COLOR})
    plots = page.count('class="plot"')
    print(f"page: {html_path} ({len(page.encode()) / 1024:.0f} KiB, {plots} plots)")
    print(f"screenshot: {args.out} ({browser}, window {WINDOW[0]}x{WINDOW[1]})")
    print(f"image size: {measured['width']}x{measured['height']}, distinct colours: {measured['distinct_colours']}")
    for name, color in (("before", BEFORE_COLOR), ("after", AFTER_COLOR)):
        info = measured[name]
        print(f"{name} {color}: {info['pixels']} pixels, {info['bands']} bands, bbox {info['bbox']}")
    checks = screenshot_checks(measured, bars=len(report.layers))
    for text, ok in checks:
        print(f"{'PASS' if ok else 'FAIL'}  {text}")
    passed = all(ok for _, ok in checks)
    print("result:", "PASS" if passed else "FAIL")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
