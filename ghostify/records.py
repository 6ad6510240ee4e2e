"""One reader for ghostify's versioned records: what a record says it is, and which version it is.

Every record ghostify writes and reads back (the recipe of a saved model, its ``GhostConfig`` and
deploy record, ``report.json``, a sweep, a distillation checkpoint) names its kind and carries a
whole-number version that grows when its fields change. ``RecordKind.version_of`` checks both the same
way for all of them, so that a wrong file, a hand-edited version or a record from a newer ghostify
fails with one line the user can act on, and a reader can then upgrade older versions it knows.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from .errors import GhostifyError


@dataclass(frozen=True)
class RecordKind:
    """How one kind of record is recognised: ``payload[kind_key] == kind`` (when ``kind_key`` is
    set) and a version under ``version_key`` from ``oldest`` to ``newest``; ``label`` names it in errors."""

    label: str
    version_key: str
    newest: int
    kind_key: str | None = None
    kind: str | None = None
    oldest: int = 0  # a missing version reads as 0

    def version_of(self, payload: Any, *, source: str = "the record", error: type[GhostifyError] = GhostifyError) -> int:
        """The version of ``payload``, a record of this kind that this ghostify reads; else ``error``.

        ``source`` names where the record came from (a file path) in the message.
        """
        if not isinstance(payload, Mapping):
            raise error(f"{source} is not a {self.label} (it holds a {type(payload).__name__}, not a JSON object).")
        if self.kind_key is not None and payload.get(self.kind_key) != self.kind:
            raise error(f"{source} is not a {self.label} ({self.kind_key}={payload.get(self.kind_key)!r}, expected {self.kind!r}).")
        version = payload.get(self.version_key, 0)
        if isinstance(version, bool) or not isinstance(version, int) or version < self.oldest:
            raise error(
                f"{source} has a malformed {self.version_key} {version!r} (a {self.label} has a whole number from "
                f"{self.oldest} to {self.newest}); write it again with this ghostify."
            )
        if version > self.newest:
            raise error(
                f"{source} was written by a newer ghostify ({self.label} version {version}; this one reads up to "
                f"{self.newest}); upgrade ghostify."
            )
        return version


def known_fields(cls: type, record: Mapping[str, Any]) -> dict[str, Any]:
    """The entries of ``record`` that are fields of the dataclass ``cls``: readers ignore fields added by a
    newer writer within the same version (docs/formats.md)."""
    names = {f.name for f in fields(cls)}
    return {key: value for key, value in record.items() if key in names}
