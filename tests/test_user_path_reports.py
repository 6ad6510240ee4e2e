"""What a new user meets in a report (issue 9): a MAC cross-check that holds for weight-standardised
convs, no meaningless top-1 when the data's classes are not the model's, a summary that says the
converted model is not yet accurate, and a layer table that keeps to one line per layer."""

from __future__ import annotations

import copy
import dataclasses
import html
import io
import json
import statistics
from collections import OrderedDict
from pathlib import Path

import pytest
import timm
import torch
from PIL import Image
from rich.console import Console
from timm.layers import ScaledStdConv2d, StdConv2d
from torch import nn

import ghostify
from ghostify.evaluate import AccuracyStats, evaluate, image_folder
from ghostify.measure import count_macs, example_input
from ghostify.report import ComparisonReport, check_macs, compare
from ghostify.report_html import render_html

pytestmark = pytest.mark.usefixtures("single_thread")

SIZE = (3, 32, 32)
PIXELS = 32 * 32


def flat(text: str) -> str:
    """``text`` with every run of whitespace as one space, so wrapped lines compare as one."""
    return " ".join(text.split())


def head(channels: int, classes: int = 10) -> nn.Sequential:
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, classes))


# ----- 1. MAC cross-check with weight-standardised convs ------------------------------------------


def std_net() -> nn.Sequential:
    """timm's weight-standardised convs (kept below: the stem, and the block by an exclude) around one plain conv."""
    torch.manual_seed(0)
    return nn.Sequential(OrderedDict(
        stem=StdConv2d(3, 16, 3, padding=1), act1=nn.ReLU(),
        block=ScaledStdConv2d(16, 16, 3, padding=1), act2=nn.ReLU(),
        plain=nn.Conv2d(16, 32, 3, padding=1), head=head(32),
    ))


@pytest.fixture(scope="module")
def std_pair() -> tuple[nn.Module, nn.Module]:
    original = std_net()
    return original, ghostify.convert(original, ratio=2, min_channels=1, exclude=["block"])


def test_weight_standardised_convs_cost_their_convolution_and_the_check_holds(std_pair):
    original, converted = std_pair
    report = compare(original, converted, SIZE)
    assert report.macs_check_ok, report.macs_check_notes
    rows = {row.name: row for row in report.layers}
    assert rows["stem"].macs_before == rows["stem"].macs_after == PIXELS * 16 * 3 * 9
    assert rows["block"].macs_before == rows["block"].macs_after == PIXELS * 16 * 16 * 9
    assert rows["plain"].convert and rows["plain"].macs_before == PIXELS * 32 * 16 * 9
    macs = count_macs(original, example_input(SIZE))
    assert sum(row.macs_before for row in report.layers) == macs.by_operator["conv"]
    # the batch_norm standardising each weight counts outside the layers, the same in both models
    assert report.macs_weight_ops_before == report.macs_weight_ops_after > 0
    assert report.macs_weight_ops_before == macs.by_operator["batch_norm"]
    for total, outside, side in ((report.macs_before, report.macs_outside_layers_before, "macs_before"),
                                 (report.macs_after, report.macs_outside_layers_after, "macs_after")):
        assert sum(getattr(row, side) for row in report.layers) + outside == total
    notes = report._notes()
    assert any(note.startswith("MAC cross-check ok") for note in notes)
    assert any("weight standardisation" in note for note in notes)


def test_check_holds_when_a_ghost_module_drops_the_weight_standardisation():
    torch.manual_seed(0)  # the StdConv2d converts from its standardised weight; the ghost module standardises nothing
    original = nn.Sequential(OrderedDict(stem=nn.Conv2d(3, 16, 3, padding=1), act=nn.ReLU(),
                                         body=StdConv2d(16, 32, 3, padding=1), head=head(32)))
    converted = ghostify.convert(original, ratio=2, min_channels=1)
    report = compare(original, converted, SIZE)
    assert report.macs_check_ok, report.macs_check_notes
    body = next(row for row in report.layers if row.name == "body")
    assert body.convert and body.macs_before == PIXELS * 32 * 16 * 9
    weight_ops = 4 * 32 * 16 * 9  # fvcore: a batch_norm in training mode costs 4 per element
    assert (report.macs_weight_ops_before, report.macs_weight_ops_after) == (weight_ops, 0)
    assert report.macs_before - report.macs_after == body.macs_saved + weight_ops


def test_cross_check_still_catches_numbers_that_do_not_add_up(std_pair):
    original, converted = std_pair
    inputs = example_input(SIZE)
    before, after = count_macs(original, inputs), count_macs(converted, inputs)
    rows = compare(original, converted, SIZE).layers
    assert check_macs(rows, before, after, converted)[0]

    tampered = copy.deepcopy(after)
    tampered.by_module_operator["block"]["conv"] += 1  # a kept weight-standardised conv got dearer
    ok, problems, _, _ = check_macs(rows, before, tampered, converted)
    assert not ok and any("block was kept but its MACs changed" in p for p in problems)

    tampered = copy.deepcopy(after)
    tampered.total += 7
    ok, problems, _, _ = check_macs(rows, before, tampered, converted)
    assert not ok and any("outside the conv layers changed" in p for p in problems)

    tampered = copy.deepcopy(before)
    tampered.by_operator["conv"] -= 1  # the layers claim more conv MACs than fvcore counted
    ok, problems, _, _ = check_macs(rows, tampered, after, converted)
    assert not ok and any("more than fvcore's conv total" in p for p in problems)


def test_resnetv2_bit_cross_check_holds():
    torch.manual_seed(0)
    original = timm.create_model("resnetv2_50x1_bit", pretrained=False)
    converted = ghostify.convert(original, ratio=2, init="random")
    report = compare(original, converted, (3, 64, 64))
    assert report.macs_check_ok, report.macs_check_notes
    macs = count_macs(original, example_input((3, 64, 64)))
    assert sum(row.macs_before for row in report.layers) == macs.by_operator["conv"]
    assert report.macs_weight_ops_before > 0


# ----- 2. data whose classes are not the model's ---------------------------------------------------


def small_classifier(classes: int) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(OrderedDict(stem=nn.Conv2d(3, 16, 3, padding=1), act=nn.ReLU(),
                                     body=nn.Conv2d(16, 32, 3, padding=1), head=head(32, classes)))


def write_image_folder(root: Path, classes: list[str], per_class: int = 2) -> Path:
    for index, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for image in range(per_class):
            Image.new("RGB", (16, 16), (index * 60, image * 90, 120)).save(root / name / f"{image}.png")
    return root


def test_class_mismatch_reports_agreement_and_says_why_top1_is_missing(tmp_path):
    root = write_image_folder(tmp_path / "three", ["cat", "dog", "fox"])
    original = small_classifier(5)
    converted = ghostify.convert(original, ratio=2, min_channels=1)
    data = image_folder(root, (3, 16, 16), limit=4)  # a Subset of the ImageFolder
    report = compare(original, converted, (3, 16, 16), data=data, data_name="three")
    accuracy = report.accuracy
    assert (accuracy.top1_before, accuracy.top1_after) == (None, None)
    assert accuracy.samples == 4 and 0.0 <= accuracy.agreement <= 1.0
    assert (accuracy.data_classes, accuracy.model_classes) == (3, 5) and accuracy.classes_mismatch

    message = "three has 3 class folders but the model predicts 5 classes"
    assert any(message in note for note in report._notes())
    assert message in flat(str(report))
    assert message in report.to_markdown()
    assert html.escape(message) in render_html(report)
    top1_row = next(row for row in report._summary_rows() if row[0].startswith("Top-1"))
    assert top1_row[1:3] == ("n/a", "n/a")

    payload = json.loads(report.to_json())
    assert payload["accuracy"]["data_classes"] == 3 and payload["accuracy"]["model_classes"] == 5
    assert payload["accuracy"]["top1_before"] is None
    assert ComparisonReport.from_dict(payload) == report
    # a report written before these fields reads back, without a class note
    for key in ("data_classes", "model_classes"):
        del payload["accuracy"][key]
    older = ComparisonReport.from_dict(payload)
    assert not older.accuracy.classes_mismatch and not any(message in note for note in older._notes())


def test_matching_classes_still_measure_top1(tmp_path):
    root = write_image_folder(tmp_path / "three", ["cat", "dog", "fox"])
    model = small_classifier(3)
    stats = evaluate(model, model, image_folder(root, (3, 16, 16)), name="three")
    assert stats.top1_before is not None and stats.top1_before == stats.top1_after
    assert (stats.data_classes, stats.model_classes) == (3, 3) and not stats.classes_mismatch


def test_unlabelled_images_measure_agreement_without_a_class_note(tmp_path):
    from ghostify.data import ImageFiles, InputPipeline

    root = write_image_folder(tmp_path / "three", ["cat", "dog", "fox"]) / "cat"  # a flat folder
    original = small_classifier(5)
    converted = ghostify.convert(original, ratio=2, min_channels=1)
    data = ImageFiles(root, InputPipeline((3, 16, 16)).transform())
    report = compare(original, converted, (3, 16, 16), data=data, data_name="flat")
    accuracy = report.accuracy
    assert (accuracy.top1_before, accuracy.top1_after, accuracy.data_classes) == (None, None, 0)
    assert not accuracy.classes_mismatch and not any("class folder" in note for note in report._notes())


def test_imagenet_sized_head_on_cifar10_folders(cifar_test_dir):
    model = small_classifier(1000)
    stats = evaluate(model, model, image_folder(cifar_test_dir, (3, 32, 32), limit=20), name="cifar10/test")
    assert (stats.top1_before, stats.top1_after, stats.agreement) == (None, None, 1.0)
    assert (stats.data_classes, stats.model_classes) == (10, 1000)


# ----- 3 and 4. an honest summary and a layer table that fits ---------------------------------------


def staged_net() -> nn.Sequential:
    """Realistic layer names; a stem (kept), a 4-channel squeeze conv (kept: too small) and ghost convs."""
    torch.manual_seed(0)

    def block(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
        return nn.Sequential(OrderedDict(conv_expand=nn.Conv2d(cin, cout, 3, stride, 1, bias=False),
                                         bn=nn.BatchNorm2d(cout), act=nn.ReLU()))

    return nn.Sequential(OrderedDict(
        stem=nn.Sequential(OrderedDict(conv=nn.Conv2d(3, 16, 3, stride=2, padding=1), act=nn.ReLU())),
        stages=nn.Sequential(OrderedDict(
            stage0=block(16, 32), squeeze=nn.Conv2d(32, 4, 1), stage1=block(4, 64, stride=2),
            stage2_downsample=block(64, 128, stride=2),
        )),
        head=head(128),
    ))


@pytest.fixture(scope="module")
def staged_report() -> ComparisonReport:
    original = staged_net()
    converted = ghostify.convert(original, ratio=2)
    return compare(original, converted, SIZE, original_name="staged", converted_name="staged (ghost s=2)")


def test_summary_says_the_converted_model_is_not_yet_accurate(staged_report):
    report = staged_report
    assert report.accuracy is None and not report.recovery and report.convs_converted == 3
    warnings = [note for note in report._notes() if note.startswith("Accuracy not measured")]
    assert len(warnings) == 1, report._notes()
    warning = warnings[0]
    mean_fit = statistics.mean(row.fit_error for row in report.layers if row.convert)
    assert f"mean fit error {mean_fit:.3f} over 3 converted layers" in warning
    for needle in ("outputs differ from the original's", "--data DIR", "--calibrate", "--distill"):
        assert needle in warning
    assert flat(warning) in flat(str(report))
    assert f"- {warning}" in report.to_markdown()
    assert html.escape(warning) in render_html(report)
    # nothing to warn about once accuracy is measured, or when nothing was converted
    measured = dataclasses.replace(report, accuracy=AccuracyStats("test", 4, 0.5, 0.25, 0.5))
    untouched = dataclasses.replace(report, convs_converted=0)
    for other in (measured, untouched):
        assert not any(note.startswith("Accuracy not measured") for note in other._notes())


def test_fit_error_is_explained_wherever_its_column_is_shown(staged_report):
    from ghostify.report_render import FIT_ERROR_EXPLANATION

    assert "relative error of a ghost module's starting weights vs the original conv's" in FIT_ERROR_EXPLANATION
    assert "data-free" in FIT_ERROR_EXPLANATION
    console = Console(width=100, file=io.StringIO(), color_system=None, record=True)
    console.print(staged_report.layer_table())
    assert flat(FIT_ERROR_EXPLANATION) in flat(console.export_text())
    assert FIT_ERROR_EXPLANATION in staged_report.to_markdown()
    assert html.escape(FIT_ERROR_EXPLANATION) in render_html(staged_report)


def names_layer(cell: str, name: str) -> bool:
    """Whether a table's first cell shows layer ``name``, whole or cut short with "…"."""
    return cell == name or (cell.endswith("…") and len(cell) > 8 and name.startswith(cell[:-1]))


def layer_lines(text: str, report: ComparisonReport) -> list[int]:
    """Index of the line where each layer's row starts (its name first, after any table border)."""
    first_cells = [(line.strip("│┃ ").split() or [""])[0] for line in text.splitlines()]
    starts = []
    for row in report.layers:
        found = [i for i, cell in enumerate(first_cells) if names_layer(cell, row.name)]
        assert len(found) == 1, (row.name, found, text)
        starts.append(found[0])
    return starts


@pytest.mark.parametrize("width", [80, 100, 120])
def test_layer_table_keeps_each_layer_on_one_line(staged_report, width):
    console = Console(width=width, file=io.StringIO(), color_system=None, record=True)
    console.print(staged_report.layer_table())
    text = console.export_text()
    lines = text.splitlines()
    assert max(len(line.rstrip()) for line in lines) <= width
    starts = layer_lines(text, staged_report)
    assert starts == list(range(starts[0], starts[0] + len(starts))), text  # consecutive: one line each
    after_rows = lines[starts[-1] + 1]
    assert after_rows.startswith("[1] "), text  # why layers were kept: numbered notes under the table
    flat_text = flat(text)
    assert "[1] stem conv (skip_stem)" in flat_text and "[2] out_channels 4 < min_channels 8" in flat_text
    for row, start in zip(staged_report.layers, starts):
        assert ("ghost s=2" if row.convert else "kept [") in lines[start]


def test_str_of_a_report_stays_readable(staged_report):
    text = str(staged_report)
    assert max(len(line.rstrip()) for line in text.splitlines()) <= 120
    starts = layer_lines(text, staged_report)
    assert starts == list(range(starts[0], starts[0] + len(starts))), text
