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


@pytest.fixture(scope="module")
def single_thread():
    """Run a module's tests on one intra-op thread, restoring the setting afterwards.

    On small shared CPU machines, PyTorch's multi-threaded kernels can be many times slower than
    one thread when other processes compete for the cores. Opt in with
    ``pytestmark = pytest.mark.usefixtures("single_thread")``.
    """
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def cifar_test_dir() -> Path:
    path = shared_dir() / "data" / "cifar10" / "test"
    if not path.is_dir():
        pytest.skip(f"shared CIFAR-10 subset not found at {path}; set GHOSTIFY_SHARED")
    return path
