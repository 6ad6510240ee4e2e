"""Every versioned record ghostify reads back is checked by one reader (``ghostify.records``), and a
conv layer is one type from the graph pass (``ConvSite``) through the plan to the report."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from torch import nn

import ghostify
from ghostify.config import CONFIG_RECORD, GhostConfig
from ghostify.deploy import DEPLOY_RECORD, DeployRecord
from ghostify.distill import CHECKPOINT_RECORD
from ghostify.errors import CheckpointError, ConfigError, GhostifyError
from ghostify.graph_pass import find_conv_sites
from ghostify.records import RecordKind, known_fields
from ghostify.report import REPORT_RECORD, ComparisonReport, LayerRow
from ghostify.selection import ConversionPlan, ConvSite, LayerPlan
from ghostify.serialization import RECIPE_RECORD
from ghostify.sweep import SWEEP_RECORD

KINDS = [REPORT_RECORD, SWEEP_RECORD, RECIPE_RECORD, CONFIG_RECORD, DEPLOY_RECORD, CHECKPOINT_RECORD]


def _record(kind: RecordKind, version: object) -> dict[str, object]:
    payload: dict[str, object] = {kind.version_key: version}
    if kind.kind_key is not None:
        payload[kind.kind_key] = kind.kind
    return payload


@pytest.mark.parametrize("kind", KINDS, ids=lambda kind: kind.label)
def test_each_record_kind_reads_its_versions_and_refuses_the_rest(kind: RecordKind) -> None:
    for version in range(kind.oldest, kind.newest + 1):
        assert kind.version_of(_record(kind, version)) == version
    with pytest.raises(GhostifyError, match=f"newer ghostify .*version {kind.newest + 1}; this one reads up to {kind.newest}"):
        kind.version_of(_record(kind, kind.newest + 1))
    for malformed in ("1", 1.0, True, None, -1, [1]):
        with pytest.raises(GhostifyError, match=f"malformed {kind.version_key}"):
            kind.version_of(_record(kind, malformed))
    for not_a_mapping in ([], "text", 3):
        with pytest.raises(GhostifyError, match=f"is not a {kind.label} .*not a JSON object"):
            kind.version_of(not_a_mapping)
    if kind.kind_key is not None:
        with pytest.raises(GhostifyError, match=rf"x.json is not a {kind.label} \({kind.kind_key}='other'"):
            kind.version_of({**_record(kind, kind.newest), kind.kind_key: "other"}, source="x.json")


def test_the_error_type_is_the_callers() -> None:
    with pytest.raises(CheckpointError):
        RECIPE_RECORD.version_of({"format": "ghostify.recipe", "format_version": "1"}, error=CheckpointError)
    with pytest.raises(ConfigError, match="malformed _version"):
        GhostConfig.from_dict({"_type": "GhostConfig", "_version": "2", "_data": {}})
    with pytest.raises(ConfigError, match="malformed version 0"):  # a deploy record always carried its version
        DeployRecord.from_dict({"layers": []})


def test_a_missing_version_reads_as_the_oldest_format() -> None:
    assert REPORT_RECORD.version_of({"schema": "ghostify.report"}) == 0
    assert CONFIG_RECORD.version_of({"_type": "GhostConfig"}) == 0


def _small_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, stride=2, dilation=1),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))


def test_a_layer_is_one_type_from_the_graph_pass_to_the_report() -> None:
    model = _small_cnn()
    sites, _, _ = find_conv_sites(model)
    plan = ghostify.plan_conversion(model)
    report = ghostify.compare(model, ghostify.convert(model), input_size=(3, 16, 16))
    for site, layer, row in zip(sites, plan.layers, report.layers, strict=True):
        assert isinstance(row, LayerPlan) and isinstance(layer, ConvSite)
        facts = known_fields(ConvSite, vars(site))
        assert known_fields(ConvSite, vars(layer)) == facts == known_fields(ConvSite, vars(row))
    stem, body = report.layers
    assert stem.is_stem and not stem.convert and stem.reason == "stem conv (skip_stem)"
    assert body.kernel_size == [3, 3] and body.stride == [2, 2] and body.convert and body.macs_after < body.macs_before
    assert ComparisonReport.from_json(report.to_json()).layers == report.layers
    assert ConversionPlan.from_dict(json.loads(json.dumps(plan.to_dict()))).layers == plan.layers


def test_layer_records_read_fields_they_lack_as_defaults_and_ignore_fields_they_do_not_know() -> None:
    plan = ghostify.plan_conversion(_small_cnn())
    payload = json.loads(json.dumps(plan.to_dict()))
    older = {key: payload["layers"][1][key] for key in ("name", "kind", "in_channels", "out_channels", "kernel_size",
                                                        "stride", "ratio", "convert", "eligible", "reason", "fit_error")}
    newer = {**payload["layers"][1], "a_field_added_later": [1, 2]}
    assert LayerPlan.from_dict(older) == replace(plan.layers[1], dilation=None, bias=False, intrinsic_channels=None)
    assert LayerPlan.from_dict(newer) == plan.layers[1]
    assert LayerRow.from_dict({**newer, "macs_before": 7}).macs_before == 7
