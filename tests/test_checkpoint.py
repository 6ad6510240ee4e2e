"""Checkpoint loading: every common layout gives the same state dict; every failure says how to fix it."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import pytest
import torch
from torch import nn

from ghostify.checkpoint import load_checkpoint, load_state_dict_into
from ghostify.errors import CheckpointError

SHARED = Path(os.environ.get("GHOSTIFY_SHARED", Path(__file__).resolve().parents[1].parent / "shared"))
RESNET20_CHECKPOINT = SHARED / "weights" / "resnet20-12fca82f.th"


def tiny_model(num_classes: int = 4, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, num_classes),
    )


def wrap(state: dict, layout: str, data_parallel: bool) -> object:
    if data_parallel:
        state = {f"module.{name}": tensor for name, tensor in state.items()}
    if layout == "raw":
        return state
    if layout == "nested":
        return {"model": {"state_dict": state}, "epoch": 3}
    return {layout: state, "epoch": 3, "best_prec1": 91.0}


def assert_same_state(actual: dict, expected: dict) -> None:
    assert sorted(actual) == sorted(expected)  # safetensors files store keys sorted
    for name, tensor in expected.items():
        assert torch.equal(actual[name], tensor), name


@pytest.mark.parametrize("data_parallel", [False, True], ids=["plain", "module-prefix"])
@pytest.mark.parametrize("layout", ["raw", "state_dict", "model", "nested"])
def test_layouts_give_the_saved_state_dict(tmp_path, layout, data_parallel):
    saved = tiny_model().state_dict()
    path = tmp_path / "ckpt.pth"
    torch.save(wrap(saved, layout, data_parallel), path)

    assert_same_state(load_checkpoint(path), saved)


def test_prefix_kept_unless_every_key_has_it(tmp_path):
    state = {"module.a": torch.zeros(1), "b": torch.ones(1)}
    torch.save(state, tmp_path / "mixed.pth")
    assert list(load_checkpoint(tmp_path / "mixed.pth")) == ["module.a", "b"]


def test_loaded_state_fills_a_fresh_model(tmp_path):
    saved_model = tiny_model(seed=1)
    torch.save({"state_dict": saved_model.state_dict()}, tmp_path / "ckpt.pth")
    target = tiny_model(seed=2)

    load_state_dict_into(target, load_checkpoint(tmp_path / "ckpt.pth"), source="ckpt.pth")

    assert_same_state(target.state_dict(), saved_model.state_dict())


def test_whole_pickled_module_needs_trust(tmp_path):
    model = tiny_model()
    torch.save(model, tmp_path / "whole.pth")
    with pytest.raises(CheckpointError, match="pickled Python objects.*--trust-checkpoint"):
        load_checkpoint(tmp_path / "whole.pth")
    assert_same_state(load_checkpoint(tmp_path / "whole.pth", trusted=True), model.state_dict())


def test_pickled_object_refused_unless_trusted(tmp_path):
    saved = tiny_model().state_dict()
    path = tmp_path / "with_args.pth"
    torch.save({"state_dict": saved, "args": argparse.Namespace(lr=0.1)}, path)

    with pytest.raises(CheckpointError, match=r"pickled Python objects.*argparse\.Namespace.*run arbitrary code"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match=r"--trust-checkpoint \(trusted=True"):
        load_checkpoint(path)
    assert_same_state(load_checkpoint(path, trusted=True), saved)


def test_safetensors_file(tmp_path):
    safetensors_torch = pytest.importorskip("safetensors.torch")
    saved = tiny_model().state_dict()
    safetensors_torch.save_file(dict(saved), str(tmp_path / "w.safetensors"))
    assert_same_state(load_checkpoint(tmp_path / "w.safetensors"), saved)


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match=r"no such file: .*nope\.pth; check the path"):
        load_checkpoint(tmp_path / "nope.pth")


def test_directory_instead_of_file(tmp_path):
    with pytest.raises(CheckpointError, match="not a file"):
        load_checkpoint(tmp_path)


@pytest.mark.parametrize("trusted", [False, True])
@pytest.mark.parametrize("content", [b"hello, I am text\n", b""], ids=["text", "empty"])
def test_not_a_torch_file(tmp_path, content, trusted):
    path = tmp_path / "notes.pth"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="could not read .*notes.pth as a PyTorch checkpoint"):
        load_checkpoint(path, trusted=trusted)


def test_truncated_file(tmp_path):
    path = tmp_path / "cut.pth"
    torch.save(tiny_model().state_dict(), path)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(CheckpointError, match="could not read .* corrupted"):
        load_checkpoint(path)


@pytest.mark.parametrize(
    ("content", "found"),
    [
        ({"epoch": 3, "optimizer": {"lr": 0.1}}, "top-level keys epoch, optimizer"),
        ({}, "an empty dict"),
        ([torch.zeros(1)], "a list"),
        ({"state_dict": {"lr": 0.1}}, r"\['state_dict'\] holds a dict with top-level keys lr"),
    ],
    ids=["training-state-only", "empty", "list", "wrapper-without-tensors"],
)
def test_no_tensors_found_names_what_was_there(tmp_path, content, found):
    torch.save(content, tmp_path / "odd.pth")
    with pytest.raises(CheckpointError, match=f"no tensors found .*{found}"):
        load_checkpoint(tmp_path / "odd.pth")


def test_other_model_lists_missing_and_unexpected_keys():
    other = {"encoder.weight": torch.zeros(8, 3, 3, 3), "head.weight": torch.zeros(4, 8)}
    with pytest.raises(CheckpointError, match="other.pth does not fit") as caught:
        load_state_dict_into(tiny_model(), other, source="other.pth")
    message = str(caught.value)
    assert "is this checkpoint for this model?" in message
    assert "missing from the checkpoint (8): 0.weight, 0.bias, 1.weight" in message
    assert "unexpected in the checkpoint (2): encoder.weight, head.weight" in message


def test_long_key_lists_are_cut_with_a_count():
    many = {f"extra{i}": torch.zeros(1) for i in range(20)}
    state = {**tiny_model().state_dict(), **many}
    with pytest.raises(CheckpointError, match=r"unexpected in the checkpoint \(20\): extra0, .*extra7, \.\.\. and 12 more"):
        load_state_dict_into(tiny_model(), state, source="x")


def test_shape_mismatch_reported_before_touching_the_model():
    ten_classes = tiny_model(num_classes=10, seed=1).state_dict()
    target = tiny_model(num_classes=4, seed=2)
    before = {name: tensor.clone() for name, tensor in target.state_dict().items()}

    with pytest.raises(CheckpointError, match=r"shape mismatches \(2\): 5\.weight checkpoint \[10, 8\] vs model \[4, 8\]"):
        load_state_dict_into(target, ten_classes, source="ten.pth")
    assert_same_state(target.state_dict(), before)


def test_old_batchnorm_checkpoint_without_num_batches_tracked_loads():
    saved = {name: t for name, t in tiny_model(seed=1).state_dict().items() if "num_batches_tracked" not in name}
    target = tiny_model(seed=2)
    load_state_dict_into(target, saved, source="old.pth")
    assert torch.equal(target[0].weight, saved["0.weight"])


@pytest.mark.skipif(not RESNET20_CHECKPOINT.is_file(), reason=f"shared checkpoint not found at {RESNET20_CHECKPOINT}")
def test_shared_resnet20_checkpoint():
    state = load_checkpoint(RESNET20_CHECKPOINT)
    assert "conv1.weight" in state and "linear.weight" in state
    assert not any(name.startswith("module.") for name in state)
    assert tuple(state["conv1.weight"].shape) == (16, 3, 3, 3)
    assert state["conv1.weight"].device.type == "cpu"
