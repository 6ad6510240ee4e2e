"""report: per-layer rows and totals agree with hand counts and with fvcore; every output form round trips."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
import torch.nn.functional as F
import torchvision
from rich.console import Console
from torch import nn

import ghostify
from ghostify.errors import GhostifyError
from ghostify.measure import LatencyStats, count_macs, example_input
from ghostify.report import (
    MACS_EXPLANATION,
    REPORT_SCHEMA,
    ComparisonReport,
    LayerRow,
    check_macs,
    compare,
)

SIZE = (3, 8, 8)
PIXELS = 8 * 8


def tiny_model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1, bias=False),
    )


@pytest.fixture(scope="module")
def tiny_report() -> ComparisonReport:
    original = tiny_model()
    converted = ghostify.convert(original, ratio=2, min_channels=1, skip_output=False, exclude=["0"])
    return compare(original, converted, SIZE, original_name="tiny", converted_name="tiny-ghost")


@pytest.fixture(scope="module")
def resnet_pair() -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    original = torchvision.models.resnet18()
    # random init: the weight fit of "transfer" is slow and irrelevant to counting
    converted = ghostify.convert(original, ratio=2, init="random", skip_stem=True)
    return original, converted


@pytest.fixture(scope="module")
def resnet_report(resnet_pair) -> ComparisonReport:
    original, converted = resnet_pair
    return compare(original, converted, (3, 64, 64), original_name="resnet18", converted_name="resnet18-ghost")


# ----- numbers ----------------------------------------------------------------------------------


def test_tiny_report_rows_by_hand(tiny_report):
    kept, ghost = tiny_report.layers
    assert (kept.name, kept.convert, kept.eligible) == ("0", False, True)
    assert kept.reason == "excluded by pattern '0'"
    assert kept.params_before == kept.params_after == 3 * 16 * 9
    assert kept.macs_before == kept.macs_after == PIXELS * 16 * 3 * 9
    assert kept.ratio == 1 and kept.fit_error is None

    m = math.ceil(32 / 2)
    assert (ghost.name, ghost.convert, ghost.ratio, ghost.intrinsic_channels) == ("3", True, 2, m)
    assert ghost.params_before == 16 * 32 * 9
    assert ghost.params_after == m * 16 * 9 + m * 1 * 9
    assert ghost.macs_before == PIXELS * 32 * 16 * 9
    assert ghost.macs_after == PIXELS * m * 16 * 9 + PIXELS * m * 1 * 9
    assert ghost.fit_error is not None and ghost.fit_error >= 0
    assert (ghost.in_channels, ghost.out_channels, ghost.kernel_size, ghost.stride) == (16, 32, [3, 3], [1, 1])


def test_tiny_report_summary_by_hand(tiny_report):
    report = tiny_report
    bn_macs = 2 * 16 * PIXELS
    assert report.params_before == 3 * 16 * 9 + 32 + 16 * 32 * 9
    assert report.params_after == 3 * 16 * 9 + 32 + 16 * 16 * 9 + 16 * 9
    assert report.macs_before == PIXELS * (16 * 3 * 9 + 32 * 16 * 9) + bn_macs
    assert report.macs_after == PIXELS * (16 * 3 * 9 + 16 * 16 * 9 + 16 * 9) + bn_macs
    assert report.macs_outside_layers_before == report.macs_outside_layers_after == bn_macs
    assert report.macs_check_ok and report.macs_check_notes == []
    assert report.size_bytes_after < report.size_bytes_before
    assert (report.convs_total, report.convs_eligible, report.convs_converted, report.convs_skipped) == (2, 2, 1, 1)
    assert report.unsupported_ops_before == {}
    assert report.unsupported_ops_after == {"aten::index_select": 1}
    assert report.params_ratio == pytest.approx(report.params_before / report.params_after)
    assert report.savings()["macs_percent"] == pytest.approx(
        100 * (report.macs_before - report.macs_after) / report.macs_before
    )
    assert report.trace == "fx" and report.config["_data"]["ratio"] == 2
    assert report.input_size == SIZE and report.batch_size == 1
    assert report.latency_before is None and report.latency_speedup is None
    assert report.ghostify_version == ghostify.__version__


def test_compare_leaves_both_models_alone():
    original = tiny_model().train()
    converted = ghostify.convert(original, ratio=2, min_channels=1, skip_output=False, init="random")
    before = copy.deepcopy(original.state_dict())
    compare(original, converted, SIZE)
    assert original.training and converted.training
    assert all(torch.equal(before[k], v) for k, v in original.state_dict().items())


def test_compare_without_plan_says_how_to_get_one():
    with pytest.raises(GhostifyError, match="carries no ghostify plan; make it with ghostify.convert"):
        compare(tiny_model(), tiny_model(), SIZE)


def test_report_batch_size_scales_macs():
    original = tiny_model()
    converted = ghostify.convert(original, ratio=2, min_channels=1, skip_output=False, init="random")
    single, double = compare(original, converted, SIZE), compare(original, converted, SIZE, batch_size=2)
    assert double.macs_before == 2 * single.macs_before and double.macs_after == 2 * single.macs_after
    assert double.batch_size == 2


def test_functional_and_shared_convs():
    class Mixed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Conv2d(8, 8, 3, padding=1, bias=False)
            self.b = self.a  # one conv under two names, called twice
            self.weight = nn.Parameter(torch.randn(4, 8, 1, 1))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return F.conv2d(self.b(self.a(x)), self.weight)

    original = Mixed()
    converted = ghostify.convert(original, ratio=2, min_channels=1, skip_output=False, init="random", skip_stem=False)
    report = compare(original, converted, (8, 8, 8))
    shared = next(row for row in report.layers if row.kind == "module")
    functional = next(row for row in report.layers if row.kind == "functional")
    assert shared.call_sites == 2
    assert shared.macs_before == 2 * PIXELS * 8 * 8 * 9
    assert shared.macs_after == 2 * (PIXELS * 4 * 8 * 9 + PIXELS * 4 * 9)
    assert shared.params_after == 4 * 8 * 9 + 4 * 9
    assert (functional.params_before, functional.macs_before, functional.convert) == (None, None, False)
    assert functional.reason.startswith("functional conv2d")
    # the functional conv's MACs are fvcore's, outside the per-layer rows, and unchanged
    assert report.macs_outside_layers_before == report.macs_outside_layers_after == PIXELS * 4 * 8
    assert report.macs_check_ok


def test_check_macs_catches_numbers_that_do_not_add_up():
    original = tiny_model()
    converted = ghostify.convert(original, ratio=2, min_channels=1, skip_output=False, init="random")
    inputs = example_input(SIZE)
    before, after = count_macs(original, inputs), count_macs(converted, inputs)
    report = compare(original, converted, SIZE)
    assert check_macs(report.layers, before, after, converted)[0]

    tampered = copy.deepcopy(after)
    tampered.by_module["3"] += 1  # a layer that costs more than its primary + cheap conv
    ok, problems, _, _ = check_macs(report.layers, before, tampered, converted)
    assert not ok and any("3:" in p and "parts" in p for p in problems)

    rows = copy.deepcopy(report.layers)
    rows[1].macs_after -= 10  # a row that does not say what fvcore counted
    ok, problems, _, _ = check_macs(rows, before, after, converted)
    assert not ok and any("row says" in p for p in problems)

    tampered = copy.deepcopy(after)
    tampered.total += 5  # the rest of the model got dearer: the layers do not explain the difference
    ok, problems, outside_before, outside_after = check_macs(report.layers, before, tampered, converted)
    assert not ok and any("outside the conv layers changed" in p for p in problems)
    assert outside_after == outside_before + 5


# ----- ResNet-18 --------------------------------------------------------------------------------


def test_resnet18_macs_add_up(resnet_report):
    report = resnet_report
    assert report.macs_check_ok, report.macs_check_notes
    layers_before = sum(row.macs_before for row in report.layers)
    layers_after = sum(row.macs_after for row in report.layers)
    assert layers_before + report.macs_outside_layers_before == report.macs_before
    assert layers_after + report.macs_outside_layers_after == report.macs_after
    assert report.macs_before - report.macs_after == sum(row.macs_saved for row in report.layers)
    assert report.macs_after < report.macs_before
    assert report.params_after < report.params_before
    assert (report.convs_total, report.convs_converted) == (20, 19)
    assert report.layers[0].reason == "stem conv (skip_stem)"
    # the residual adds and the max pool are not counted by fvcore, in either model
    assert report.unsupported_ops_before == {"aten::add_": 8, "aten::max_pool2d": 1}
    assert report.unsupported_ops_after == {"aten::add_": 8, "aten::max_pool2d": 1, "aten::index_select": 19}


def test_resnet18_conv_rows_match_the_conv_operator(resnet_pair, resnet_report):
    original, _ = resnet_pair
    macs = count_macs(original, example_input((3, 64, 64)))
    assert sum(row.macs_before for row in resnet_report.layers) == macs.by_operator["conv"]


# ----- output forms -----------------------------------------------------------------------------


def test_json_round_trip(tiny_report):
    payload = json.loads(tiny_report.to_json())
    assert payload["schema"] == REPORT_SCHEMA and payload["schema_version"] == 3
    assert payload["savings"]["params_ratio"] == pytest.approx(tiny_report.params_ratio)
    assert ComparisonReport.from_dict(payload) == tiny_report
    assert ComparisonReport.from_json(tiny_report.to_json(indent=None)) == tiny_report


def test_json_round_trip_with_latency_and_weights_note():
    original = tiny_model()
    converted = ghostify.convert(original, ratio=2, min_channels=1, skip_output=False, init="random")
    report = compare(original, converted, SIZE, latency=True, latency_warmup=1, latency_repeats=3)
    report.weights_note = "random weights"
    assert isinstance(report.latency_before, LatencyStats) and isinstance(report.latency_after, LatencyStats)
    assert report.latency_before.median_ms > 0 and report.latency_after.repeats == 3
    assert report.latency_speedup is not None
    again = ComparisonReport.from_dict(json.loads(report.to_json()))
    assert again == report
    assert "Latency" in str(again) and "random weights" in again.to_markdown()


@pytest.mark.parametrize(
    "change, message", [({"schema": "other"}, "not a ghostify report"), ({"schema_version": 99}, "newer")]
)
def test_from_dict_rejects_other_documents(tiny_report, change, message):
    with pytest.raises(GhostifyError, match=message):
        ComparisonReport.from_dict({**tiny_report.to_dict(), **change})


def test_markdown_tables(tiny_report):
    text = tiny_report.to_markdown()
    assert "| Metric | Before | After | Saving |" in text
    assert MACS_EXPLANATION in text
    assert "| Parameters | 5.07 K |" in text
    assert "| `3` | module | 16 → 32 | 3x3 / 1 | 2 | yes | 4.61 K | 2.45 K | 294.91 K | 156.67 K |" in text
    assert "| `0` | module | 3 → 16 | 3x3 / 1 | - | no |" in text
    assert "excluded by pattern '0'" in text
    assert "aten::index_select x1" in text


def test_str_renders_summary_and_layers(tiny_report):
    text = str(tiny_report)
    assert "MACs" in text and "Parameters" in text
    assert "x smaller" in text and "x fewer" in text
    assert "excluded by pattern '0'" in text
    assert "ghost" in text
    assert "\x1b[" not in text  # no colour codes
    assert max(len(line) for line in text.splitlines()) <= 120


def test_rich_console_and_layer_table_limit(tiny_report, resnet_report):
    console = Console(width=120, record=True, color_system=None)
    console.print(tiny_report)
    assert "Size on disk" in console.export_text()
    table = resnet_report.layer_table(max_rows=5)
    assert table.row_count == 6
    console.print(table)
    assert "15 more layer(s)" in console.export_text()
    assert resnet_report.layer_table().row_count == 20


def test_save_writes_json_and_markdown(tiny_report, tmp_path):
    json_path, markdown_path, html_path = tiny_report.save(tmp_path / "out")
    assert (json_path.name, markdown_path.name, html_path.name) == ("report.json", "report.md", "report.html")
    assert ComparisonReport.from_json(json_path.read_text()) == tiny_report
    assert markdown_path.read_text() == tiny_report.to_markdown()


def test_layer_row_saved_macs():
    row = LayerRow(name="x", kind="module", in_channels=1, out_channels=2, kernel_size=[1, 1], stride=[1, 1], ratio=2,
                   convert=True, eligible=True, macs_before=10, macs_after=4)
    assert row.macs_saved == 6
    assert LayerRow(name="f", kind="functional", in_channels=None, out_channels=None, kernel_size=None, ratio=1,
                    convert=False, eligible=False, reason="f").macs_saved is None


def test_compare_refuses_a_converted_model_of_another_original():
    converted = ghostify.convert(torchvision.models.resnet18(), ratio=2, init="random", skip_stem=False)
    with pytest.raises(GhostifyError, match="was not made from the original one: layer conv1 should be a Conv2d 3->64"):
        ghostify.compare(nn.Sequential(nn.Conv2d(3, 8, 3)), converted, input_size=(3, 32, 32))
