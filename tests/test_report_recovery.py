"""Accuracy recovery in reports: the stages, calibration and distillation render in every form
(terminal, Markdown, HTML, JSON v2), version-1 files still read, and the renderers stay import-free of
the report and sweep modules."""

from __future__ import annotations

import ast
import copy
import dataclasses
import json
from pathlib import Path

import pytest
import torch
from rich.console import Console
from torch import nn

import ghostify
from ghostify.evaluate import AccuracyStats
from ghostify.report import REPORT_SCHEMA_VERSION, AccuracyStage, ComparisonReport, compare
from ghostify.report_html import COMPARISON_SCHEMA, SWEEP_SCHEMA, render_html
from ghostify.sweep import SweepReport
from test_report_html import plots

PACKAGE = Path(ghostify.__file__).resolve().parent

STAGES = [
    AccuracyStage("original", 0.91, 1.0, 500, "cifar10/test"),
    AccuracyStage("converted (data-free)", 0.102, 0.114, 500, "cifar10/test"),
    AccuracyStage("calibrated", 0.836, 0.874, 500, "cifar10/test"),
    AccuracyStage("distilled", 0.894, 0.931, 500, "cifar10/test"),
]
CALIBRATION = {
    "images": 512, "seconds": 61.2, "bn_reestimated": 0,
    "layers": [{"name": "0", "error_before": 0.9, "error_after": 0.4},
               {"name": "2", "error_before": 0.7, "error_after": 0.2}],
    "blocks": [{"name": "block0", "error_before": 0.5, "error_after": 0.3}],
    "head": ("linear", 0.36, 0.31),  # CalibrationResult.head is a tuple; the report keeps it as JSON does
}
TRAINING = [
    {"epoch": 1, "loss": 7.4, "logit_loss": 7.1, "feature_loss": 0.29, "train_agreement": 0.73, "lr": 0.05,
     "seconds": 13.9, "val_agreement": 0.72, "val_top1": 0.72, "teacher_top1": 0.91},
    {"epoch": 2, "loss": 2.25, "logit_loss": 2.0, "feature_loss": 0.25, "train_agreement": 0.88, "lr": 0.025,
     "seconds": 14.1, "val_agreement": 0.9, "val_top1": 0.87, "teacher_top1": 0.91},
    {"epoch": 3, "loss": 1.125, "logit_loss": 0.9, "feature_loss": 0.225, "train_agreement": 0.95, "lr": 0.0,
     "seconds": 14.0, "val_agreement": 0.931, "val_top1": 0.894, "teacher_top1": 0.91},
]


def tiny_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))


@pytest.fixture(scope="module")
def base() -> ComparisonReport:
    model = tiny_net()
    converted = ghostify.convert(model, ratio=2, init="random", min_channels=1, skip_stem=False)
    return compare(model, converted, (3, 8, 8), original_name="tiny", converted_name="tiny-ghost")


@pytest.fixture
def report(base) -> ComparisonReport:
    return dataclasses.replace(
        copy.deepcopy(base), accuracy=AccuracyStats("cifar10/test", 500, 0.91, 0.894, 0.931),
        recovery=copy.deepcopy(STAGES), calibration=copy.deepcopy(CALIBRATION), training=copy.deepcopy(TRAINING),
    )


# ----- terminal ---------------------------------------------------------------------------------


def test_terminal_shows_stages_and_summaries(report):
    text = str(report)
    assert "Accuracy recovered on cifar10/test, 500 images" in text
    for expected in ("91.0%", "10.2%", "83.6%", "89.4%", "93.1%", "-80.8 pts", "-7.4 pts", "-1.6 pts"):
        assert expected in text, expected
    assert ("Calibration: 512 images, 61.2 s; mean output error 0.8 → 0.3 (2 layers), 0.5 → 0.3 (1 block), "
            "0.36 → 0.31 (head).\n") in text
    assert ("Distillation: 3 epochs, 42.0 s; final loss 1.125 (logit 0.9 + feature 0.225); "
            "agreement 95.0% train, 93.1% held-out.\n") in text
    assert "\x1b[" not in text and max(len(line) for line in text.splitlines()) <= 120


def test_rich_table_at_100_columns_keeps_stage_names_whole(report):
    report.recovery.append(AccuracyStage("distilled + calibrated again, long name", 0.9, 0.95, 500, "cifar10/test"))
    console = Console(width=100, record=True, color_system=None)
    console.print(report)
    lines = console.export_text().splitlines()
    assert max(len(line) for line in lines) <= 100
    for stage in report.recovery:
        assert any(stage.stage in line for line in lines), stage.stage


def test_stages_on_different_data_get_a_data_column(report):
    report.recovery[-1] = dataclasses.replace(report.recovery[-1], dataset="imagenet/val", samples=50)
    table = report.recovery_table()
    assert [column.header for column in table.columns][-1] == "Data"
    assert table.title == "Accuracy recovered"
    assert "imagenet/val (50 images)" in str(report)


# ----- unlabelled data: top-1 None --------------------------------------------------------------


def test_unlabelled_data_shows_n_a_everywhere(report):
    report.accuracy = AccuracyStats("frames", 64, None, None, 0.8)  # type: ignore[arg-type]
    report.recovery = [AccuracyStage("original", None, 1.0, 64, "frames"),
                       AccuracyStage("distilled", None, 0.93, 64, "frames")]
    report.training = [{**record, "val_top1": None, "teacher_top1": None} for record in TRAINING]
    summary = dict((row[0], row[1:]) for row in report._summary_rows())
    assert summary["Top-1 on frames (64 images)"] == ("n/a", "n/a", "agrees with original on 80.0%")
    text = str(report)
    assert "distilled" in text and "93.0%" in text and "n/a" in text
    assert "| distilled | n/a | 93.0% | n/a |" in report.to_markdown()
    page = render_html(report)
    assert plots(page) == ["training-curve", "layer-macs", "stage-macs", "agreement-macs"]
    assert "<td>distilled</td><td class=\"num\">n/a</td>" in page


def test_sweep_with_unlabelled_accuracy_says_n_a(base):
    labelled = dataclasses.replace(base, accuracy=AccuracyStats("frames", 64, None, None, 0.75))  # type: ignore[arg-type]
    cells = SweepReport(model="tiny", reports=[labelled]).summary_cells()
    assert cells[0][4:6] == ["n/a", "-"] and cells[1][4:6] == ["n/a", "75.0%"]
    page = render_html(SweepReport(model="tiny", reports=[labelled]))
    assert plots(page)[0] == "sweep-params-macs"


# ----- Markdown ---------------------------------------------------------------------------------


def test_markdown_has_stage_epoch_and_layer_tables(report):
    text = report.to_markdown()
    assert "## Accuracy recovered on cifar10/test, 500 images" in text
    assert "| Stage | Top-1 | Agreement with original | Change vs original |" in text
    assert "| original | 91.0% | 100.0% | - |" in text
    assert "| converted (data-free) | 10.2% | 11.4% | -80.8 pts |" in text
    assert "| distilled | 89.4% | 93.1% | -1.6 pts |" in text
    assert "| Epoch | Loss | Logit loss | Feature loss | Train agreement | Val agreement | Val top-1 | LR | Seconds |" in text
    assert "| 1 | 7.4 | 7.1 | 0.29 | 73.0% | 72.0% | 72.0% | 0.05 | 13.9 |" in text
    assert "| 3 | 1.125 | 0.9 | 0.225 | 95.0% | 93.1% | 89.4% | 0 | 14.0 |" in text
    assert "| 0 | layer | 0.9 | 0.4 |" in text and "| block0 | block | 0.5 | 0.3 |" in text
    assert "| linear | head | 0.36 | 0.31 |" in text
    assert text.index("## Accuracy recovered") < text.index("## Conv layers")


def test_markdown_escapes_pipes_in_stage_names(report):
    report.recovery[1].stage = "data|free"
    assert "| data\\|free | 10.2% |" in report.to_markdown()


def test_without_recovery_nothing_is_added(base):
    assert "Accuracy recovered" not in str(base) and "Accuracy recovered" not in base.to_markdown()
    assert "Accuracy recovered" not in render_html(base) and "Distillation" not in base.to_markdown()


# ----- HTML -------------------------------------------------------------------------------------


def test_html_has_recovery_table_and_training_plot(report):
    page = render_html(report)
    assert plots(page) == ["training-curve", "layer-macs", "stage-macs", "accuracy-macs"]
    assert "<h2>Accuracy recovered on cifar10/test, 500 images</h2>" in page
    assert ('<tr><td>distilled</td><td class="num">89.4%</td><td class="num">93.1%</td>'
            '<td class="num">-1.6 pts</td></tr>') in page
    assert "<summary>Distillation per epoch</summary>" in page and '<td class="num">13.9</td>' in page
    assert "Calibration: 512 images, 61.2 s" in page
    assert "http" not in page.lower() and "<script" not in page.lower()


def test_html_escapes_stage_and_dataset_names(report):
    evil = '<script>alert("x")</script>'
    report.recovery = [dataclasses.replace(stage, stage=f"{stage.stage} {evil}", dataset=f"<img src=x>{evil}")
                       for stage in report.recovery]
    report.calibration["layers"][0]["name"] = "<b>layer</b>"
    page = render_html(report)
    assert "<script" not in page and "<img src=x>" not in page and "<b>layer" not in page
    assert "distilled &lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page
    assert "&lt;img src=x&gt;&lt;script&gt;" in page and "&lt;b&gt;layer&lt;/b&gt;" in page
    assert "training-curve" in plots(page)


def test_training_plot_with_one_epoch_and_no_validation(report):
    report.training = [{"epoch": 1, "loss": 3.0, "logit_loss": 3.0, "feature_loss": 0.0, "train_agreement": 0.5,
                        "lr": 0.1, "seconds": 1.0, "val_agreement": None, "val_top1": None, "teacher_top1": None}]
    report.recovery, report.calibration = [], None
    page = render_html(report)
    assert "training-curve" in plots(page)
    assert "| 1 | 3 | 3 | 0 | 50.0% | n/a | n/a | 0.1 | 1.0 |" in report.to_markdown()
    assert "Distillation: 1 epoch, 1.0 s; final loss 3 (logit 3 + feature 0); agreement 50.0% train." in str(report)


def test_sweep_page_shows_each_ratios_recovery(report, base):
    page = render_html(SweepReport(model="tiny", reports=[report, base]))
    assert page.count("<h3>Accuracy recovered") == 1 and "training-curve" in plots(page)


# ----- JSON -------------------------------------------------------------------------------------


def test_json_v2_round_trip(report, tmp_path):
    payload = json.loads(report.to_json())
    assert payload["schema_version"] == REPORT_SCHEMA_VERSION == 3
    assert payload["recovery"][1] == {"stage": "converted (data-free)", "top1": 0.102, "agreement": 0.114,
                                      "samples": 500, "dataset": "cifar10/test"}
    assert payload["calibration"]["head"] == ["linear", 0.36, 0.31] and payload["training"] == TRAINING
    again = ComparisonReport.from_json(report.to_json())
    assert again == report
    assert all(isinstance(stage, AccuracyStage) for stage in again.recovery)
    assert again.recovery == STAGES and again.training == TRAINING
    assert ComparisonReport.from_dict(report.to_dict()) == report  # without JSON in between too
    json_path, _, _ = report.save(tmp_path)
    assert ComparisonReport.from_json(json_path.read_text()) == report


def test_reads_version_1_files(base):
    payload = base.to_dict()
    payload["schema_version"] = 1
    for key in ("recovery", "calibration", "training"):
        del payload[key]
    again = ComparisonReport.from_json(json.dumps(payload))
    assert (again.recovery, again.calibration, again.training) == ([], None, [])
    assert again == base
    assert "Accuracy recovered" not in again.to_markdown()


def test_unknown_fields_of_a_stage_are_ignored(report):
    payload = report.to_dict()
    payload["recovery"][0]["seed"] = 3  # a field a later writer might add within version 2
    assert ComparisonReport.from_dict(payload).recovery == STAGES


def test_stages_given_as_dicts_become_accuracy_stages(base):
    made = dataclasses.replace(base, recovery=[dataclasses.asdict(stage) for stage in STAGES])
    assert made.recovery == STAGES


# ----- module layering --------------------------------------------------------------------------


def imported_modules(path: Path) -> set[str]:
    """Every ghostify module ``path`` imports, at any depth (function-level imports count)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            found |= {node.module} if node.module else {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("ghostify"):
            found.add(node.module.removeprefix("ghostify.") or "ghostify")
        elif isinstance(node, ast.Import):
            found |= {alias.name.removeprefix("ghostify.") for alias in node.names if alias.name.startswith("ghostify.")}
    return found


def test_report_modules_import_one_way():
    imports = {name: imported_modules(PACKAGE / f"{name}.py")
               for name in ("report", "report_render", "report_html", "sweep")}
    assert imports["report_render"].isdisjoint({"report", "report_html", "sweep"})
    assert imports["report_html"].isdisjoint({"report", "sweep"})
    assert "sweep" not in imports["report"]


def test_html_dispatch_names_match_the_report_types():
    assert ComparisonReport.SCHEMA == COMPARISON_SCHEMA and SweepReport.SCHEMA == SWEEP_SCHEMA
