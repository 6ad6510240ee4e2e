"""Shared fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

SHARED = Path(os.environ.get("GHOSTIFY_SHARED", Path(__file__).resolve().parents[1].parent / "shared"))
RESNET20_CHECKPOINT = SHARED / "weights" / "resnet20-12fca82f.th"


@pytest.fixture(scope="session")
def resnet20_checkpoint() -> Path:
    """The shared CIFAR ResNet-20 checkpoint (skips the test when it is not there)."""
    if not RESNET20_CHECKPOINT.is_file():
        pytest.skip(f"shared checkpoint not found at {RESNET20_CHECKPOINT}")
    return RESNET20_CHECKPOINT


@pytest.fixture(scope="module")
def single_thread():
    """Run a module's tests on one intra-op thread, restoring the setting afterwards.

    On small shared CPU machines, PyTorch's multi-threaded kernels can be many times slower than
    one thread when other processes compete for the cores. Opt in with
    ``pytestmark = pytest.mark.usefixtures("single_thread")``.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
