"""Shared fixtures: where ../shared lives (CIFAR-10 subset and pretrained CIFAR ResNets)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def shared_dir() -> Path:
    """``$GHOSTIFY_SHARED`` if set (``.ci/run`` sets it), else ``../shared`` beside the repo."""
    return Path(os.environ.get("GHOSTIFY_SHARED", REPO.parent / "shared"))


@pytest.fixture
def resnet20_checkpoint() -> Path:
    path = shared_dir() / "weights" / "resnet20-12fca82f.th"
    if not path.is_file():
        pytest.skip(f"shared checkpoint not found at {path}; set GHOSTIFY_SHARED")
    return path
