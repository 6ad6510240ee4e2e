"""ghostify.bench / ``ghostify bench``: interleaved timings of original and converted models, eager and compiled."""

from __future__ import annotations

import statistics
import sys

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

import ghostify
from ghostify import prepacked
from ghostify.bench import bench
from ghostify.cli import app
from ghostify.errors import ConfigError
from ghostify.prepacked import PrepackedConv2d

pytestmark = pytest.mark.usefixtures("single_thread")
runner = CliRunner()


def tiny() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 4)).eval()


def test_bench_times_both_models_per_batch_size_and_mode():
    original = tiny()
    converted = ghostify.convert(original)
    report = bench(original, converted, (3, 16, 16), batch_sizes=(2, 1), repeats=4, warmup=1,
                   compiled=True, compile_backend="eager")
    assert [(row.mode, row.batch_size) for row in report.rows] == [("eager", 1), ("eager", 2), ("compiled", 1), ("compiled", 2)]
    for row in report.rows:
        assert row.original.repeats == row.converted.repeats == 4 and row.original.batch_size == row.batch_size
        assert row.speedup == pytest.approx(row.original.median_ms / row.converted.median_ms)
        assert 0 < row.speedup_p10 <= row.speedup_p90
    assert str(report.table().title) == "ghostify bench: original vs converted on cpu"
    assert type(converted[2]).__name__ == "GhostConv2d" and next(original.parameters()).device.type == "cpu"


def test_speedup_spread_comes_from_paired_runs(monkeypatch):
    times = [[10.0, 12.0, 11.0, 30.0], [5.0, 6.0, 11.0, 10.0]]  # run r of each model side by side
    monkeypatch.setattr(sys.modules["ghostify.bench"], "time_interleaved", lambda *a, **k: (times, torch.device("cpu"), 1))
    row = bench(tiny(), tiny(), (3, 8, 8), batch_sizes=(1,), repeats=4).rows[0]
    assert row.speedup == pytest.approx(statistics.median(times[0]) / statistics.median(times[1]))
    ratios = sorted(a / b for a, b in zip(*times))  # 1.0, 2.0, 2.0, 3.0
    assert (row.speedup_p10, row.speedup_p90) == (pytest.approx(1.3), pytest.approx(2.7))
    assert ratios[0] <= row.speedup_p10 <= row.speedup_p90 <= ratios[-1]


def test_a_channels_last_deploy_form_is_timed_against_a_channels_last_original(monkeypatch):
    """... and on the CPU against that original with its convs prepacked too, the faster counting."""
    layouts = []

    def fake_timing(models, inputs, **_):
        layouts.append([(next(m.parameters()).is_contiguous(memory_format=torch.channels_last),
                         any(isinstance(sub, PrepackedConv2d) for sub in m.modules())) for m in models])
        return [[4.0 - i] for i in range(len(models))], torch.device("cpu"), 1

    monkeypatch.setattr(sys.modules["ghostify.bench"], "time_interleaved", fake_timing)
    original = tiny()
    converted = ghostify.convert(original, skip_stem=False)
    nhwc = [(True, False), (True, True), (True, False)]  # original, original prepacked, deploy form
    for deployed, expected, form in ((ghostify.deploy(converted), nhwc, "prepacked"),
                                     (ghostify.deploy(converted, channels_last=False), [(False, False)] * 2, ""),
                                     (converted, [(False, False)] * 2, "")):
        row = bench(original, deployed, (3, 8, 8), batch_sizes=(1,), repeats=1).rows[0]
        assert layouts.pop() == expected
        assert row.original_form == form and row.original.median_ms == 6.0 - len(expected)  # the faster original
        assert row.speedup == pytest.approx(row.original.median_ms / (5.0 - len(expected)))
    assert next(original.parameters()).is_contiguous()  # the caller's model is untouched
    with prepacked.disabled():
        bench(original, ghostify.deploy(converted), (3, 8, 8), batch_sizes=(1,), repeats=1)
    assert layouts.pop() == nhwc[::2]


@pytest.mark.parametrize("sizes", ["0", "1,x", ""])
def test_bad_batch_sizes(sizes):
    with pytest.raises(ConfigError, match="batch sizes must be whole numbers"):
        bench(tiny(), tiny(), (3, 8, 8), batch_sizes=sizes)


def test_cli_bench_on_a_spec_and_on_a_saved_directory(tmp_path, monkeypatch):
    (tmp_path / "nets.py").write_text(
        "from torch import nn\n\n\ndef make():\n    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), "
        "nn.Conv2d(16, 32, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 4))\n")
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["bench", "nets.py:make", "--input-size", "16", "--repeats", "3", "--batch-sizes", "1,2"])
    assert result.exit_code == 0, result.output
    assert "ghostify bench: nets.py:make vs nets.py:make (ghost s=2) on cpu" in result.output
    assert result.output.count(" eager ") == 2 and "speedup = original / converted time" in result.output
    assert runner.invoke(app, ["convert", "nets.py:make", "--input-size", "16", "-o", "out"]).exit_code == 0
    result = runner.invoke(app, ["bench", "out", "--repeats", "3", "--batch-sizes", "1"])
    assert result.exit_code == 0, result.output
    assert "original: nets.py:make, random weights (seed 0" in result.output and "vs out on cpu" in result.output
    result = runner.invoke(app, ["bench", "out", "--batch-sizes", "0"])
    assert result.exit_code == 1 and "batch sizes must be whole numbers >= 1, such as 1,16; got '0'." in result.output


def test_cli_bench_adds_its_timings_to_a_saved_directory_s_report(tmp_path, monkeypatch):
    (tmp_path / "nets.py").write_text(
        "from torch import nn\n\n\ndef make():\n    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), "
        "nn.Conv2d(16, 32, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 4))\n")
    monkeypatch.chdir(tmp_path)
    assert runner.invoke(app, ["convert", "nets.py:make", "--input-size", "16", "-o", "out"]).exit_code == 0
    assert "ghostify bench" not in (tmp_path / "out" / "report.md").read_text()
    result = runner.invoke(app, ["bench", "out", "--repeats", "3", "--batch-sizes", "1,2", "--report"])
    assert result.exit_code == 0, result.output
    assert "timings added to " in result.output and "report.html" in result.output
    report = ghostify.ComparisonReport.from_json((tmp_path / "out" / "report.json").read_text())
    assert [(row["batch_size"], row["mode"]) for row in report.bench["rows"]] == [(1, "eager"), (2, "eager")]
    assert all(row["speedup"] > 0 and row["original"]["median_ms"] > 0 for row in report.bench["rows"])
    assert report.params_before > report.params_after  # the rest of the report is kept
    markdown = (tmp_path / "out" / "report.md").read_text()
    assert "## Latency on cpu, input 3x16x16 (ghostify bench)" in markdown
    speedup = f"{report.bench['rows'][1]['speedup']:.2f}x"
    assert f"| 2 | eager |" in markdown and speedup in markdown
    page = (tmp_path / "out" / "report.html").read_text()
    assert '<table class="bench">' in page and speedup in page
    assert (tmp_path / "out" / "ghostify.json").is_file()  # the saved model stays loadable
    result = runner.invoke(app, ["bench", "nets.py:make", "--input-size", "16", "--report"])
    assert result.exit_code == 1 and "nets.py:make has no report.json" in result.output
