"""Every versioned record ghostify reads back is checked by one reader (``ghostify.records``)."""

from __future__ import annotations

import pytest

from ghostify.config import CONFIG_RECORD, GhostConfig
from ghostify.deploy import DEPLOY_RECORD, DeployRecord
from ghostify.distill import CHECKPOINT_RECORD
from ghostify.errors import CheckpointError, ConfigError, GhostifyError
from ghostify.records import RecordKind
from ghostify.report import REPORT_RECORD
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
