"""ghostify.calibrate: closed-form fit of every ghost module to the teacher's layer outputs."""

from __future__ import annotations

import copy
import importlib

import numpy as np
import pytest
import timm.layers  # noqa: F401 - convert() imports timm; pay for it at collection, not in the first test
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import ghostify
from ghostify.calibrate import (
    calibrate,
    calibration_layers,
    called_modules,
    reconstruction_blocks,
    reestimate_batchnorm,
)
from ghostify.data import InputPipeline
from ghostify.errors import GhostifyError

pytestmark = pytest.mark.usefixtures("single_thread")


class Tiny(nn.Module):
    """stem (kept by default) -> two Conv-BN-ReLU blocks (converted) -> mean pool -> BN -> Linear."""

    def __init__(self, classes: int = 6, width: int = 16) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.block1 = nn.Sequential(nn.Conv2d(8, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        self.block2 = nn.Sequential(nn.Conv2d(width, 16, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.norm = nn.BatchNorm1d(16)
        self.head = nn.Linear(16, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block2(self.block1(self.stem(x)))
        return self.head(self.norm(x.mean((2, 3))))


def images(n: int, seed: int, size: int = 14) -> torch.Tensor:
    """Smoothed noise: neighbouring pixels correlate, as in real images."""
    x = torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))
    return F.avg_pool2d(x, 3, 1, 1) * 2


def make_teacher(seed: int = 0, **kwargs) -> nn.Module:
    """Random weights with BatchNorm statistics measured on images, so that predictions vary."""
    torch.manual_seed(seed)
    teacher = Tiny(**kwargs)
    for m in teacher.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.momentum = None  # exact averages
    with torch.no_grad():
        teacher.train()
        teacher(images(256, 100))
    for m in teacher.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.momentum = 0.1
    return teacher.eval()


@pytest.fixture(scope="module")
def pair():
    teacher = make_teacher()
    student = ghostify.convert(teacher, ratio=2)
    return teacher, student


@torch.no_grad()
def agreement(student: nn.Module, teacher: nn.Module, x: torch.Tensor) -> float:
    return float((student(x).argmax(1) == teacher(x).argmax(1)).float().mean())


@torch.no_grad()
def layer_errors(student: nn.Module, teacher: nn.Module, x: torch.Tensor) -> dict[str, float]:
    """Relative error of each ghost module's output vs the teacher conv of the same name, each model
    running on its own (the student's layers see the student's inputs)."""
    names = [name for name, _ in calibration_layers(student)]
    outputs: dict[tuple[str, str], torch.Tensor] = {}
    handles = []
    for tag, model in (("s", student), ("t", teacher)):
        for name in names:
            hook = lambda _m, _a, out, key=(tag, name): outputs.__setitem__(key, out)  # noqa: E731
            handles.append(model.get_submodule(name).register_forward_hook(hook))
    try:
        student(x), teacher(x)
    finally:
        for handle in handles:
            handle.remove()
    return {n: float((outputs["s", n] - outputs["t", n]).norm() / outputs["t", n].norm()) for n in names}


def test_calibration_beats_the_data_free_start(pair):
    teacher, start = pair
    held_out = images(256, 2)
    student = copy.deepcopy(start)
    assert [name for name, _ in calibration_layers(student)] == ["block1.0", "block2.0"]  # the stem is kept
    result = calibrate(student, teacher, images(64, 1))

    assert result.images == 64 and result.seconds > 0
    # by default each block is also reconstructed (Adam on its ghost modules), never for the worse
    assert [block.name for block in result.blocks] == ["block1", "block2"]
    assert all(block.error_after <= block.error_before for block in result.blocks)
    assert [layer.name for layer in result.layers] == ["block1.0", "block2.0"]  # in execution order
    for layer in result.layers:
        assert 0 < layer.error_after < layer.error_before
    assert result.mean_error_after == pytest.approx(sum(l.error_after for l in result.layers) / 2)
    # on images calibration never saw: every layer is closer to the teacher, and so are the predictions
    before, after = layer_errors(start, teacher, held_out), layer_errors(student, teacher, held_out)
    assert all(after[name] < before[name] for name in before)
    assert sum(after.values()) / 2 < 0.9 * sum(before.values()) / 2
    assert agreement(student, teacher, held_out) > agreement(start, teacher, held_out) + 0.15
    # the final Linear is refitted on the teacher's logits
    name, head_before, head_after = result.head
    assert name == "head" and head_after < head_before
    payload = result.to_dict()
    assert payload["images"] == 64 and [l["name"] for l in payload["layers"]] == ["block1.0", "block2.0"]


def test_calibration_is_deterministic_and_data_forms_agree(pair):
    teacher, start = pair
    x = images(48, 3)
    students = [copy.deepcopy(start) for _ in range(4)]
    options = dict(batch_size=16, block_steps=20)
    calibrate(students[0], teacher, x, **options)
    calibrate(students[1], teacher, x, **options)
    calibrate(students[2], teacher, TensorDataset(x, torch.zeros(48, dtype=torch.long)), **options)
    calibrate(students[3], teacher, DataLoader(TensorDataset(x), batch_size=16), **options)
    reference = students[0].state_dict()
    for other in students[1:]:
        state = other.state_dict()
        assert all(torch.equal(reference[k], state[k]) for k in reference)
    assert any(not torch.equal(reference[k], v) for k, v in start.state_dict().items())  # it did change


def test_calibration_from_an_image_folder(pair, tmp_path):
    teacher, start = pair
    rng = np.random.default_rng(0)
    for i in range(24):
        pixels = rng.integers(0, 256, (14, 14, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(tmp_path / f"{i}.png")
    student = copy.deepcopy(start)
    pipeline = InputPipeline((3, 14, 14))
    result = calibrate(student, teacher, tmp_path, pipeline=pipeline, samples=20, block_steps=20)
    assert result.images == 20
    assert all(layer.error_after < layer.error_before for layer in result.layers)
    # without a pipeline the model's default (224 px) is refused for 14 px images, saying what to pass
    with pytest.raises(GhostifyError, match="--input-size 3,14,14"):
        calibrate(copy.deepcopy(start), teacher, tmp_path)


def test_block_reconstruction_and_batchnorm(pair):
    teacher, start = pair
    student = copy.deepcopy(start)
    calls = []
    result = calibrate(student, teacher, images(64, 1), block_steps=15, bn_reestimate=True,
                       progress=lambda name, i, n: calls.append((name, i, n)))
    assert calls == [("block1.0", 0, 2), ("block2.0", 1, 2), ("done", 2, 2)]
    assert [block.name for block in result.blocks] == ["block1", "block2"]
    assert all(block.error_after <= block.error_before for block in result.blocks)
    assert result.bn_reestimated == 4  # stem, block1, block2 and the head's BatchNorm1d
    assert reconstruction_blocks(student, ["block1.0", "block2.0"]) == ["block1", "block2"]
    assert reconstruction_blocks(student, ["a.b.c", "a.b.d"]) == ["a.b"]  # one block, once
    assert reconstruction_blocks(student, ["conv"]) == ["conv"]  # a ghost module directly in the model


class SplitBlock(nn.Module):
    """Res2Net-style: the convs sit in a ModuleList the block iterates, so the list itself is never called."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(width // 2, width // 2, 3, padding=1, bias=False) for _ in range(2))
        self.norm = nn.BatchNorm2d(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = [conv(part) for conv, part in zip(self.convs, x.chunk(2, dim=1))]
        return F.relu(self.norm(torch.cat(parts, dim=1)) + x)


def split_model(seed: int = 0) -> nn.Module:
    """A stem, one SplitBlock (its two convs converted), pooling and a Linear head."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), SplitBlock(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4)).eval()


def test_blocks_are_the_nearest_modules_the_forward_pass_calls():
    teacher = split_model()
    student = ghostify.convert(teacher, ratio=2)
    names = [name for name, _ in calibration_layers(student)]
    assert names == ["1.convs.0", "1.convs.1"]
    called = called_modules(student, teacher, inputs=images(1, 0))
    assert "1" in called and "1.convs" not in called
    assert called.index("1.convs.0") < called.index("1.convs.1")
    assert reconstruction_blocks(student, names) == ["1.convs"]  # without a forward pass: the parent
    assert reconstruction_blocks(student, names, called) == ["1"]
    assert reconstruction_blocks(student, ["1.convs.0"], {"1.convs.0"}) == ["1.convs.0"]  # no called ancestor: itself
    before = agreement(student, teacher, images(64, 3))
    result = calibrate(student, teacher, images(64, 1), block_steps=20)  # was: "ModuleList was never called"
    assert [block.name for block in result.blocks] == ["1"]
    assert result.blocks[0].error_after <= result.blocks[0].error_before
    assert agreement(student, teacher, images(64, 3)) > before


def test_regroup_false_keeps_the_channel_grouping(pair):
    teacher, start = pair
    student = copy.deepcopy(start)
    calibrate(student, teacher, images(32, 1), regroup=False, head=False, block_steps=0)
    for name, ghost in calibration_layers(student):
        assert torch.equal(ghost.out_index, start.get_submodule(name).out_index)
    assert torch.equal(student.head.weight, start.head.weight)  # head=False: the Linear is left alone


def test_teacher_is_untouched_and_training_flags_are_restored(pair):
    teacher, start = pair
    teacher = copy.deepcopy(teacher)
    student = copy.deepcopy(start)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    teacher.train()
    student.train()
    student.stem[1].eval()  # a frozen BatchNorm inside a training model
    teacher.norm.eval()
    requires = {name: p.requires_grad for name, p in student.named_parameters()}
    student.head.weight.requires_grad_(False)
    requires["head.weight"] = False
    flags = {name: m.training for name, m in student.named_modules()}
    teacher_flags = {name: m.training for name, m in teacher.named_modules()}

    calibrate(student, teacher, images(32, 1), block_steps=3, bn_reestimate=True)

    after = teacher.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)  # BatchNorm statistics included
    assert {name: m.training for name, m in teacher.named_modules()} == teacher_flags
    assert {name: p.requires_grad for name, p in student.named_parameters()} == requires
    assert {name: m.training for name, m in student.named_modules()} == flags


def test_eval_mode_models_stay_in_eval_mode(pair):
    teacher, start = pair
    student = copy.deepcopy(start).eval()
    calibrate(student, teacher, images(16, 1), head=False, block_steps=5)
    assert not student.training and not teacher.training
    assert not any(m.training for m in student.modules())


def test_teacher_of_another_architecture_does_not_fit(pair):
    _, student = pair
    other = make_teacher(width=24)  # same layer names, other channel counts
    with pytest.raises(GhostifyError, match="does not fit") as info:
        calibrate(copy.deepcopy(student), other, images(8, 1))
    assert "block1.0" in str(info.value) and "8->24" in str(info.value)
    unrelated = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU())
    with pytest.raises(GhostifyError, match="does not fit") as info:
        calibrate(copy.deepcopy(student), unrelated, images(8, 1))
    assert "found nothing" in str(info.value)


def test_model_without_ghost_modules_is_refused(pair):
    teacher, _ = pair
    with pytest.raises(GhostifyError, match="no ghost modules"):
        calibrate(copy.deepcopy(teacher), teacher, images(8, 1))
    # the paper's BN+ReLU variant cannot be fitted in closed form: the error says so and what to do
    paper = ghostify.convert(teacher, ratio=2, variant="paper-bn-relu")
    with pytest.raises(GhostifyError, match="cannot be calibrated; distill"):
        calibrate(paper, teacher, images(8, 1))


def test_reestimate_batchnorm_uses_exact_averages():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4)).eval()
    batches = [torch.randn(8, 3, 4, 4) + 3, torch.randn(8, 3, 4, 4) + 3]
    assert reestimate_batchnorm(model, batches) == 1
    with torch.no_grad():
        features = torch.cat([model[0](b) for b in batches])
    torch.testing.assert_close(model[1].running_mean, features.mean((0, 2, 3)), atol=1e-5, rtol=1e-5)
    assert model[1].momentum == 0.1 and not model.training and not model[1].training
    assert reestimate_batchnorm(nn.Conv2d(3, 4, 1), batches) == 0


def test_layer_captures_spare_the_prefix_runs_and_change_nothing(pair, monkeypatch):
    """Each layer's inputs and targets are captured once and reused by the fit's later passes; with no
    memory for them they are recomputed, with the same result."""
    calibration = importlib.import_module("ghostify.calibrate")  # the package exports a function of that name

    teacher, start = pair
    data = images(48, 1)

    def run() -> tuple[nn.Module, int]:
        student = copy.deepcopy(start)
        calls = []
        handle = teacher.block1[0].register_forward_hook(lambda *_: calls.append(1))
        try:
            calibrate(student, teacher, data, batch_size=16, block_steps=0, head=False)
        finally:
            handle.remove()
        return student, len(calls)

    cached, cached_calls = run()
    monkeypatch.setattr(calibration, "_CAPTURE_BYTES", 0)
    recomputed, recomputed_calls = run()
    # the teacher runs through block1.0 once to see which modules the forward pass calls, then to capture
    # each of the two layers' targets: once per batch when kept; else in pass 1, pass 2 and the error
    # check on two batches
    assert cached_calls == 1 + 2 * 3
    assert recomputed_calls == 1 + 2 * (3 + 3 + 2)
    for (name, a), b in zip(cached.state_dict().items(), recomputed.state_dict().values()):
        assert torch.equal(a, b), name


class KeywordBlock(nn.Module):
    """A block called with a keyword argument: its calls cannot be pooled into one minibatch source."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(8, 16, 3, padding=1, bias=False)
        self.norm = nn.BatchNorm2d(16)

    def forward(self, x: torch.Tensor, *, scale: float = 1.0) -> torch.Tensor:
        return torch.relu(self.norm(self.conv(x))) * scale


class KeywordModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.block = KeywordBlock()
        self.head = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.block(self.stem(x), scale=0.5).mean((2, 3)))


def test_block_reconstruction_draws_minibatches_from_every_image():
    from ghostify.calibrate import _pool

    a, b = torch.randn(4, 3), torch.randn(2, 3)
    cached = [((a,), {}, a * 2), ((b,), {}, b * 2)]
    pooled = _pool(cached)
    assert torch.equal(pooled[0][0], torch.cat([a, b])) and torch.equal(pooled[1], torch.cat([a, b]) * 2)
    # the cached calls now view the pooled tensors (memory is not doubled) and still hold the same values
    assert cached[1][0][0].data_ptr() == pooled[0][0][4:].data_ptr() and torch.equal(cached[1][2], b * 2)
    assert _pool([((a,), {"scale": 0.5}, a)]) is None  # keyword arguments: whole cached calls instead
    assert _pool([((a, 3), {}, a)]) is None  # a non-tensor argument
    assert _pool([((a[:1],), {}, a)]) is None  # not one row per image
    assert _pool([((a,), {}, a), ((torch.randn(2, 5),), {}, b)]) is None  # shapes differ between batches

    torch.manual_seed(0)
    teacher = KeywordModel().eval()
    student = ghostify.convert(teacher, ratio=2)
    result = calibrate(student, teacher, images(32, 3), batch_size=16, block_steps=20, block_batch_size=8, head=False)
    assert [block.name for block in result.blocks] == ["block"]
    assert result.blocks[0].error_after <= result.blocks[0].error_before
