"""ghostify.distill: the loss goes down, runs are reproducible, and an interrupted run resumes exactly."""

from __future__ import annotations

import copy
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from torch.utils.data import TensorDataset

import ghostify
from ghostify.data import DataError, InputPipeline
from ghostify.distill import (
    CHECKPOINT_FILE,
    RETRAIN_FROM_EPOCHS,
    DistillConfig,
    distill,
    feature_loss,
    feature_points,
    kd_loss,
    load_checkpoint,
)
from ghostify.errors import ConfigError, GhostifyError
from ghostify.ghost_module import is_ghost_module

from test_calibrate import images, make_teacher, split_model  # noqa: E402 - the same tiny teacher as calibration

pytestmark = pytest.mark.usefixtures("single_thread")

FAST = dict(epochs=3, batch_size=8)  # 32 images: 4 steps per epoch; everything else the defaults
PIPELINE = InputPipeline((3, 12, 12))


@pytest.fixture(scope="module")
def pair():
    teacher = make_teacher()
    return teacher, ghostify.convert(teacher, ratio=2)


@pytest.fixture(scope="module")
def data() -> TensorDataset:
    return TensorDataset(images(32, 5), torch.full((32,), -1))


def _folder(root: Path, classes: int, per_class: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for c in range(classes):
        (root / f"class{c}").mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)).save(root / f"class{c}" / f"{i}.png")
    return root


def _same_state(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _weighted(record, config: DistillConfig) -> float:
    """The loss a record should report without labels: the weighted sum of its parts."""
    return config.logit_weight * record.logit_loss + config.feature_weight * record.feature_loss


def _history(result) -> list[dict]:
    return [{k: v for k, v in dataclasses.asdict(r).items() if k != "seconds"} for r in result.history]


@torch.no_grad()
def _kd_on(student: nn.Module, teacher: nn.Module, x: torch.Tensor) -> float:
    return float(kd_loss(student.eval()(x), teacher(x), 4.0))


# --- training works ----------------------------------------------------------------------------------


def test_distillation_lowers_the_loss(pair, data):
    teacher, start = pair
    held_out = images(64, 9)
    teacher_before = copy.deepcopy(teacher.state_dict())
    student = copy.deepcopy(start)
    events = []
    result = distill(student, teacher, data, progress=lambda event, info: events.append(event), **FAST)
    assert result.student is student and result.config == DistillConfig(**FAST).resolved()
    assert result.config.recipe == "finetune" and result.config.freeze_bn  # 3 epochs: the gentle recipe
    assert [r.epoch for r in result.history] == [1, 2, 3]
    assert result.history[-1].loss < 0.9 * result.history[0].loss
    assert _kd_on(student, teacher, held_out) < 0.5 * _kd_on(start, teacher, held_out)  # on unseen images too
    for r in result.history:  # the reported loss is the weighted sum of its parts (no labels here)
        assert r.loss == pytest.approx(_weighted(r, result.config), rel=1e-6)
        assert 0 <= r.train_agreement <= 1 and r.val_agreement is None
    assert events == ["start"] + (["step"] * 4 + ["epoch"]) * 3 + ["end"]
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in teacher_before.items())
    assert not student.training


def test_runs_are_reproducible(pair, data):
    teacher, start = pair
    a, b = copy.deepcopy(start), copy.deepcopy(start)
    options = dict(FAST, mixup=0.4, freeze_bn=False)
    first = distill(a, teacher, data, **options)
    torch.manual_seed(1234)  # the global RNG state does not matter
    second = distill(b, teacher, data, **options)
    assert _same_state(a, b) and _history(first) == _history(second)
    c = copy.deepcopy(start)
    distill(c, teacher, data, **dict(options, seed=1))
    assert not _same_state(a, c)  # the seed matters


# --- checkpoints and resume ------------------------------------------------------------------------

INTERRUPTIONS = {
    "mid epoch 2": ("step", 1, 2),
    "first step": ("step", 0, 1),
    "epoch boundary": ("epoch", 2, None),  # the 'epoch' event of epoch 2: its checkpoint is written
    "last step of epoch 2": ("step", 1, 4),  # every step done, the epoch's record not yet made
}


class _Stop:
    """A progress callback that presses Ctrl-C at one event."""

    def __init__(self, event: str, epoch: int, step: int | None) -> None:
        self.event, self.epoch, self.step = event, epoch, step

    def __call__(self, event: str, info: dict) -> None:
        if event != self.event:
            return
        if event == "step" and (info["epoch"], info["step"]) == (self.epoch, self.step):
            raise KeyboardInterrupt
        if event == "epoch" and info["epoch"] == self.epoch:
            raise KeyboardInterrupt


@pytest.mark.parametrize("where", list(INTERRUPTIONS))
def test_interrupted_and_resumed_equals_uninterrupted(pair, data, tmp_path, where):
    teacher, start = pair
    options = dict(FAST, mixup=0.4, freeze_bn=False)  # random mixing and BatchNorm statistics must resume too
    whole = copy.deepcopy(start)
    expected = distill(whole, teacher, data, checkpoint=tmp_path / "whole.pt", **options)

    checkpoint = tmp_path / "run.pt"
    with pytest.raises(KeyboardInterrupt):
        distill(copy.deepcopy(start), teacher, data, checkpoint=checkpoint, progress=_Stop(*INTERRUPTIONS[where]), **options)
    state = load_checkpoint(checkpoint)
    event, epoch, step = INTERRUPTIONS[where]
    assert (state["epoch"], state["step"]) == ((epoch, step) if event == "step" else (epoch, 0))

    resumed = copy.deepcopy(start)
    with torch.no_grad():  # whatever the student holds is replaced by the checkpoint
        for p in resumed.parameters():
            p.add_(1.0)
    result = distill(resumed, teacher, data, checkpoint=checkpoint, resume=True, **options)
    assert _same_state(resumed, whole)
    assert _history(result) == _history(expected)
    assert load_checkpoint(checkpoint)["epoch"] == 3


def test_resume_with_augmented_image_folder(pair, tmp_path):
    """Seeded per-image augmentation (crops, flips) resumes exactly too."""
    teacher, start = pair
    root = _folder(tmp_path / "data", 6, 3)
    options = dict(epochs=2, batch_size=6)
    whole = copy.deepcopy(start)
    distill(whole, teacher, root, pipeline=PIPELINE, **options)
    with pytest.raises(KeyboardInterrupt):
        distill(copy.deepcopy(start), teacher, root, pipeline=PIPELINE, checkpoint=tmp_path / "c.pt",
                progress=_Stop("step", 1, 1), **options)
    resumed = copy.deepcopy(start)
    distill(resumed, teacher, root, pipeline=PIPELINE, checkpoint=tmp_path / "c.pt", resume=True, **options)
    assert _same_state(resumed, whole)


def test_checkpoint_is_written_after_every_epoch(pair, data, tmp_path):
    teacher, start = pair
    seen = []
    path = tmp_path / "sub" / "ckpt.pt"

    def record(event: str, info: dict) -> None:
        if event == "epoch":
            state = load_checkpoint(path)
            seen.append((state["epoch"], state["step"], len(state["history"])))

    distill(copy.deepcopy(start), teacher, data, checkpoint=path, progress=record, **FAST)
    assert seen == [(1, 0, 1), (2, 0, 2), (3, 0, 3)]
    assert not path.with_name(path.name + ".tmp").exists()  # written atomically


def test_checkpoint_directory_holds_the_checkpoint_file(pair, data, tmp_path):
    """resume accepts the run's directory; saving into a directory given as checkpoint must work too."""
    teacher, start = pair
    distill(copy.deepcopy(start), teacher, data, checkpoint=tmp_path, **dict(FAST, epochs=1))
    assert (tmp_path / CHECKPOINT_FILE).is_file()
    assert load_checkpoint(tmp_path)["epoch"] == 1


def test_resume_with_changed_settings_is_refused(pair, data, tmp_path):
    teacher, start = pair
    path = tmp_path / "c.pt"
    distill(copy.deepcopy(start), teacher, data, checkpoint=path, **dict(FAST, epochs=1))
    with pytest.raises(GhostifyError, match=r"other settings \(lr, mixup\)"):
        distill(copy.deepcopy(start), teacher, data, checkpoint=path, resume=True, **dict(FAST, epochs=1, lr=0.1, mixup=0.2))


def test_resume_needs_a_checkpoint(pair, data, tmp_path):
    teacher, start = pair
    with pytest.raises(GhostifyError, match="no distillation checkpoint"):
        distill(copy.deepcopy(start), teacher, data, checkpoint=tmp_path / "missing.pt", resume=True, **FAST)
    with pytest.raises(GhostifyError, match="resume needs the checkpoint path"):
        distill(copy.deepcopy(start), teacher, data, resume=True, **FAST)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(GhostifyError, match="cannot read the checkpoint"):
        distill(copy.deepcopy(start), teacher, data, checkpoint=tmp_path / "junk.pt", resume=True, **FAST)
    torch.save({"format": "something else"}, tmp_path / "other.pt")
    with pytest.raises(GhostifyError, match="not a ghostify distillation checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    torch.save({"format": "ghostify.distill-checkpoint", "version": 99}, tmp_path / "newer.pt")
    with pytest.raises(GhostifyError, match="newer ghostify"):
        load_checkpoint(tmp_path / "newer.pt")


# --- data, labels, options ------------------------------------------------------------------------


def test_label_count_mismatch_is_a_data_error(pair, tmp_path):
    teacher, start = pair  # the teacher predicts 6 classes
    with pytest.raises(DataError, match="2 class folders"):
        distill(copy.deepcopy(start), teacher, _folder(tmp_path / "two", 2, 2), pipeline=PIPELINE, **FAST)
    with pytest.raises(DataError, match="3 class folders"):
        distill(copy.deepcopy(start), teacher, _folder(tmp_path / "six", 6, 1), val_data=_folder(tmp_path / "three", 3, 1),
                pipeline=PIPELINE, **FAST)


# --- models that score every position (segmentation) ----------------------------------------------

class TinySegmenter(nn.Module):
    """Conv-BN-ReLU blocks and a 1x1 conv scoring 5 classes at every pixel, as a segmentation head does."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.block = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.classifier = nn.Conv2d(16, 5, 1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"out": self.classifier(self.block(self.stem(x)))}  # torchvision's segmentation models return a dict


def test_kd_and_agreement_of_per_position_scores_are_per_position():
    torch.manual_seed(0)
    s, t = torch.randn(2, 5, 3, 4), torch.randn(2, 5, 3, 4)
    per_pixel = [float(kd_loss(s[n, :, i, j][None], t[n, :, i, j][None], 4.0)) for n in range(2) for i in range(3) for j in range(4)]
    assert float(kd_loss(s, t, 4.0)) == pytest.approx(np.mean(per_pixel), rel=1e-5)
    from ghostify.distill import agreement_and_accuracy

    teacher = TinySegmenter().eval()
    student = copy.deepcopy(teacher)
    with torch.no_grad():
        student.classifier.weight.add_(0.5 * torch.randn_like(student.classifier.weight))  # disagrees at some pixels
    x = images(6, 2)
    with torch.no_grad():
        same = (student(x)["out"].argmax(1) == teacher(x)["out"].argmax(1)).float()
    agreement, top1, teacher_top1 = agreement_and_accuracy(student, teacher, TensorDataset(x, torch.arange(6) % 5))
    assert agreement == pytest.approx(float(same.mean()), abs=1e-6) and 0 < agreement < 1
    assert top1 is None and teacher_top1 is None  # labels name whole images, not pixels


def test_a_segmentation_model_is_distilled_position_by_position(tmp_path):
    torch.manual_seed(0)
    teacher = TinySegmenter().eval()
    student = ghostify.convert(teacher, ratio=2)
    assert [name for name, m in student.named_modules() if is_ghost_module(m)] == ["block.0"]
    # labelled folders (2 classes, the model scores 5) are not refused: folder labels do not apply per pixel
    folder = _folder(tmp_path / "two", 2, 8)
    result = distill(student, teacher, folder, val_data=folder, pipeline=PIPELINE, epochs=3, batch_size=8, recipe="finetune")
    assert result.history[-1].loss < result.history[0].loss and result.history[0].feature_loss > 0
    assert 0 < result.history[-1].val_agreement <= 1 and result.history[-1].val_top1 is None
    with pytest.raises(ConfigError, match="label_weight"):
        distill(student, teacher, folder, pipeline=PIPELINE, epochs=1, label_weight=1.0)


@pytest.mark.parametrize("mixup", [0.0, 0.4])
def test_labels_and_validation(pair, tmp_path, mixup):
    teacher, start = pair
    train = _folder(tmp_path / "train", 6, 3)
    val = _folder(tmp_path / "val", 6, 2, seed=1)
    options = dict(epochs=2, batch_size=6, mixup=mixup, pipeline=PIPELINE, val_data=val, keep_best=False)
    with_labels, without = copy.deepcopy(start), copy.deepcopy(start)
    result = distill(with_labels, teacher, train, label_weight=1.0, **options)
    plain = distill(without, teacher, train, **options)
    assert not _same_state(with_labels, without)  # the labels changed the training
    for r in result.history:  # cross-entropy (about ln 6 here) is part of the reported loss
        assert r.loss > _weighted(r, result.config) + 0.5
        assert 0 <= r.val_agreement <= 1 and 0 <= r.val_top1 <= 1 and 0 <= r.teacher_top1 <= 1
    assert all(r.loss == pytest.approx(_weighted(r, plain.config), rel=1e-6) for r in plain.history)
    # unlabelled training data with label_weight > 0: labels are simply not used
    flat = tmp_path / "flat"
    flat.mkdir()
    for path in sorted(train.rglob("*.png"))[:6]:
        (flat / f"{path.parent.name}-{path.name}").write_bytes(path.read_bytes())
    unlabelled = distill(copy.deepcopy(start), teacher, flat, label_weight=1.0, **dict(options, val_data=None, epochs=1))
    assert unlabelled.history[0].loss == pytest.approx(_weighted(unlabelled.history[0], unlabelled.config), rel=1e-6)


@pytest.mark.parametrize("options", [
    dict(optimizer="sgd", lr=0.02, clip_grad=2.0),  # SGD needs clipping here (unclipped, 0.02 diverges)
    dict(feature_weight=0.0),
    dict(logit_weight=0.0),
    dict(clip_grad=1.0, weight_decay=0.0, warmup=0.0),
])
def test_other_settings_run(pair, data, options):
    teacher, start = pair
    student = copy.deepcopy(start)
    result = distill(student, teacher, data, **dict(FAST, **options))
    assert result.history[-1].loss < result.history[0].loss
    if options.get("feature_weight") == 0.0:
        assert all(r.feature_loss == 0 for r in result.history)
    if options.get("logit_weight") == 0.0:
        assert all(r.logit_loss == 0 for r in result.history)


@pytest.mark.parametrize("native_bfloat16", [True, False])
def test_mixed_precision_on_cpu_is_bfloat16_where_the_processor_computes_it(pair, data, monkeypatch, native_bfloat16):
    """amp trains in bfloat16 on CPUs with AMX or AVX512-BF16 units (emulated elsewhere, slower: float32 there)."""
    teacher, start = pair
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: native_bfloat16)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    for amp in (True, False):
        student, seen = copy.deepcopy(start), set()
        first = next(m for m in student.modules() if isinstance(m, nn.Conv2d))
        # training steps only (not the eval-mode pass that finds the feature points)
        first.register_forward_hook(lambda m, _i, output: seen.add(output.dtype) if m.training else None)
        result = distill(student, teacher, data, **dict(FAST, amp=amp))
        assert seen == ({torch.bfloat16} if amp and native_bfloat16 else {torch.float32})
        assert result.history[-1].loss < 0.9 * result.history[0].loss
        assert all(p.dtype == torch.float32 for p in student.parameters())  # the weights stay float32


def test_teacher_of_another_architecture_does_not_fit(pair, data):
    _, start = pair
    with pytest.raises(GhostifyError, match="does not fit"):
        distill(copy.deepcopy(start), make_teacher(width=24), data, **FAST)


@pytest.mark.parametrize("field, value", [
    ("epochs", 0), ("batch_size", 2.0), ("batch_size", True), ("lr", 0.0), ("optimizer", "adam"),
    ("temperature", 0), ("warmup", 1.0), ("mixup", -0.1), ("workers", -1), ("clip_grad", -1.0), ("augment", "autoaugment"),
    ("recipe", "sgd"), ("freeze_bn", "yes"),
])
def test_bad_settings_are_config_errors(field, value):
    with pytest.raises(ConfigError, match=field):
        DistillConfig(**{field: value})


def test_the_recipe_is_chosen_by_the_epochs_and_explicit_settings_win():
    long, short = DistillConfig(epochs=RETRAIN_FROM_EPOCHS).resolved(), DistillConfig(epochs=RETRAIN_FROM_EPOCHS - 1).resolved()
    assert (long.recipe, long.optimizer, long.lr, long.weight_decay, long.freeze_bn, long.clip_grad) == ("retrain", "sgd", 0.1, 5e-4, False, 2.0)
    assert (short.recipe, short.optimizer, short.lr, short.weight_decay, short.freeze_bn, short.clip_grad) == ("finetune", "adamw", 1e-3, 5e-5, True, 0.0)
    mixed = DistillConfig(epochs=40, lr=0.02, freeze_bn=True).resolved()
    assert (mixed.recipe, mixed.optimizer, mixed.lr, mixed.freeze_bn, mixed.clip_grad) == ("retrain", "sgd", 0.02, True, 2.0)
    assert DistillConfig(epochs=40, recipe="finetune").resolved().optimizer == "adamw"
    assert DistillConfig(epochs=1, recipe="retrain").resolved().optimizer == "sgd"
    assert long.temperature == short.temperature == 16.0 and DistillConfig(temperature=4.0).resolved().temperature == 4.0
    assert long.resolved() == long and DistillConfig.from_dict(long.to_dict()) == long


def test_retraining_updates_the_batchnorm_statistics_and_finetuning_keeps_them(pair, data):
    teacher, start = pair
    def statistics(model):
        return [b.clone() for name, b in model.named_buffers() if name.endswith("running_mean")]
    for recipe, changed in (("retrain", True), ("finetune", False)):
        student = copy.deepcopy(start)
        result = distill(student, teacher, data, **dict(FAST, recipe=recipe))
        assert result.config.recipe == recipe and result.history[-1].loss < result.history[0].loss
        same = all(torch.equal(a, b) for a, b in zip(statistics(student), statistics(start)))
        assert same is not changed


def test_a_checkpoint_from_before_recipes_resumes_with_its_own_settings(pair, data, tmp_path):
    """Its config has no recipe but the settings of that time (AdamW 1e-3, frozen BN, T=4): a resume keeps them."""
    teacher, start = pair
    old = dict(FAST, epochs=12, optimizer="adamw", lr=1e-3, weight_decay=5e-5, freeze_bn=True, clip_grad=0.0, temperature=4.0)
    whole = copy.deepcopy(start)
    distill(whole, teacher, data, **old)
    checkpoint = tmp_path / "run.pt"
    with pytest.raises(KeyboardInterrupt):
        distill(copy.deepcopy(start), teacher, data, checkpoint=checkpoint, progress=_Stop("epoch", 2, None), **old)
    state = torch.load(checkpoint, weights_only=False)
    del state["config"]["recipe"]
    torch.save(state, checkpoint)
    resumed = copy.deepcopy(start)
    result = distill(resumed, teacher, data, checkpoint=checkpoint, resume=True, **dict(FAST, epochs=12))  # defaults: auto
    assert result.config.optimizer == "adamw" and result.config.freeze_bn and result.config.temperature == 4.0
    assert _same_state(resumed, whole)


def test_all_loss_weights_zero_is_refused():
    with pytest.raises(ConfigError, match="at least one loss"):
        DistillConfig(logit_weight=0.0, feature_weight=0.0, label_weight=0.0)


def test_config_round_trip():
    config = DistillConfig(epochs=3, lr=0.1, mixup=0.2, optimizer="adamw")
    assert DistillConfig.from_dict(config.to_dict()) == config
    assert DistillConfig.from_dict({**config.to_dict(), "unknown": 1}) == config


def test_losses():
    torch.manual_seed(0)
    logits = torch.randn(4, 6)
    assert float(kd_loss(logits, logits, 4.0)) == pytest.approx(0.0, abs=1e-6)
    assert float(kd_loss(logits, torch.randn(4, 6), 4.0)) > 0
    target = {"a": torch.randn(2, 3, 4, 4)}
    output = {"a": target["a"] + 0.1 * torch.randn(2, 3, 4, 4)}
    scaled = {"a": 10 * output["a"]}, {"a": 10 * target["a"]}
    assert float(feature_loss(output, target)) == pytest.approx(float(feature_loss(*scaled)), rel=1e-5)  # scale-free
    assert float(feature_loss({"a": target["a"]}, target)) == 0.0


def test_feature_points_are_the_blocks_holding_ghost_modules(pair):
    teacher, student = pair
    assert feature_points(student) == ["block1", "block2"]
    assert feature_points(student, teacher, images(1, 0)) == ["block1", "block2"]


def test_features_of_convs_in_a_module_list_are_matched_at_the_block_that_runs_them():
    teacher = split_model()
    student = ghostify.convert(teacher, ratio=2)
    assert feature_points(student) == ["1.convs"]  # a ModuleList: never called, so it would record nothing
    assert feature_points(student, teacher, images(1, 0)) == ["1"]
    result = distill(student, teacher, TensorDataset(images(16, 5), torch.full((16,), -1)), epochs=1, batch_size=8)
    assert result.history[0].feature_loss > 0


# --- keep_best: never end worse on the held-out data than anything seen -----------------------------

WRECKING = dict(epochs=3, batch_size=8, lr=5.0, warmup=0.0)  # a learning rate that makes later epochs worse here


@pytest.fixture(scope="module")
def val() -> TensorDataset:
    return TensorDataset(images(24, 7), torch.full((24,), -1))


def _val_agreement(student: nn.Module, teacher: nn.Module, val: TensorDataset) -> float:
    from ghostify.distill import agreement_and_accuracy

    return agreement_and_accuracy(student, teacher, val)[0]


def test_keep_best_ends_with_the_weights_that_agreed_best(pair, data, val):
    teacher, start = pair
    student = copy.deepcopy(start)
    result = distill(student, teacher, data, val_data=val, **WRECKING)
    agreements = [result.start_val_agreement] + [r.val_agreement for r in result.history]
    assert 0 < result.kept_epoch < len(result.history)  # here a middle epoch was best
    assert result.kept_epoch == agreements.index(max(agreements))
    assert _val_agreement(student, teacher, val) == max(agreements) > agreements[-1]
    unkept = copy.deepcopy(start)
    plain = distill(unkept, teacher, data, val_data=val, keep_best=False, **WRECKING)
    assert plain.kept_epoch is None and _val_agreement(unkept, teacher, val) == agreements[-1]


def test_keep_best_returns_the_starting_weights_when_no_epoch_beats_them(pair, data, val):
    teacher, start = pair
    student = copy.deepcopy(start)
    result = distill(student, teacher, data, val_data=val, epochs=3, batch_size=8, lr=1e-2, warmup=0.0)
    assert result.kept_epoch == 0
    assert all(r.val_agreement <= result.start_val_agreement for r in result.history)
    assert _same_state(student, start)


def test_keep_best_survives_an_interruption(pair, data, val, tmp_path):
    teacher, start = pair
    whole = copy.deepcopy(start)
    expected = distill(whole, teacher, data, val_data=val, checkpoint=tmp_path / "whole.pt", **WRECKING)
    checkpoint = tmp_path / "run.pt"
    with pytest.raises(KeyboardInterrupt):
        distill(copy.deepcopy(start), teacher, data, val_data=val, checkpoint=checkpoint, progress=_Stop("epoch", 2, 0), **WRECKING)
    resumed = copy.deepcopy(start)
    result = distill(resumed, teacher, data, val_data=val, checkpoint=checkpoint, resume=True, **WRECKING)
    assert (result.kept_epoch, result.start_val_agreement) == (expected.kept_epoch, expected.start_val_agreement)
    assert _same_state(resumed, whole)


# --- minutes: a time budget instead of epochs --------------------------------------------------------

class _Events:
    def __init__(self) -> None:
        self.seen: list[tuple[str, dict]] = []

    def __call__(self, event: str, info: dict) -> None:
        self.seen.append((event, info))


def test_a_time_budget_chooses_the_epochs_that_fit(pair, data):
    teacher, start = pair
    events = _Events()
    result = distill(copy.deepcopy(start), teacher, data, batch_size=8, minutes=0.25, progress=events)
    budget = [info for event, info in events.seen if event == "budget"][-1]  # the probe's, or the first epoch's
    assert budget["epochs"] == result.config.epochs == len(result.history) > 1  # 15 s: many 32-image epochs
    assert budget["epoch_seconds"] > 0 and result.config.minutes == 0.25
    assert budget["epoch_seconds"] * (budget["epochs"] + 1) > 15 * 0.5  # no more epochs than about fit
    tiny = distill(copy.deepcopy(start), teacher, data, batch_size=8, minutes=1e-4)
    assert tiny.config.epochs == len(tiny.history) == 1  # at least one, whatever the budget


def test_a_budget_run_corrects_a_wrong_probe_after_its_first_epoch(pair, data, monkeypatch):
    teacher, start = pair
    monkeypatch.setattr(sys.modules["ghostify.distill"], "_epoch_seconds", lambda *args: 1e-4)  # far too hopeful: 60,000 epochs
    events = _Events()
    clock = time.perf_counter()
    result = distill(copy.deepcopy(start), teacher, data, batch_size=8, minutes=0.1, progress=events)
    elapsed = time.perf_counter() - clock
    budgets = [info for event, info in events.seen if event == "budget"]
    assert budgets[0]["epochs"] >= 50_000 and budgets[1]["replanned"] and budgets[1]["after_epoch"] == 1
    assert 1 < budgets[1]["epochs"] < 50_000 and budgets[-1]["epochs"] == result.config.epochs == len(result.history)
    assert elapsed < 6 * 1.5  # the 6 s budget, give or take an epoch, not 60,000 epochs


def test_a_budget_run_with_a_slow_first_epoch_uses_the_time_the_next_ones_show_is_left(pair, data, monkeypatch):
    teacher, start = pair
    monkeypatch.setattr(sys.modules["ghostify.distill"], "_epoch_seconds", lambda *args: 1.0)  # 6 epochs in 6 s

    class WarmingUp(_Events):  # a GPU's first epoch: its 4 steps pay for warm-up, 0.6 s each
        def __call__(self, event: str, info: dict) -> None:
            super().__call__(event, info)
            if event == "step" and info["epoch"] == 0:
                time.sleep(0.6)

    events = WarmingUp()
    clock = time.perf_counter()
    result = distill(copy.deepcopy(start), teacher, data, batch_size=8, minutes=0.1, progress=events)
    elapsed = time.perf_counter() - clock
    replans = [info for event, info in events.seen if event == "budget" and info.get("replanned")]
    assert [info["after_epoch"] for info in replans[:2]] == [1, 2]
    assert replans[0]["timed_from"] == 1 and all(info["timed_from"] >= max(2, info["after_epoch"] - 4) for info in replans[1:])
    assert replans[0]["epochs"] <= 2 < replans[1]["epochs"] and replans[-1]["epochs"] == result.config.epochs == len(result.history)
    assert elapsed < 6 * 1.5  # within the budget, give or take an epoch


def test_the_distill_plan_resolves_the_recipe_from_the_epochs_a_budget_allows(pair, data, monkeypatch):
    teacher, start = pair
    monkeypatch.setattr(sys.modules["ghostify.distill"], "_epoch_seconds", lambda *args: 1.0)  # one epoch a second
    assert ghostify.distill_plan(start, teacher, data, epochs=5).recipe == "finetune"  # no budget: nothing timed
    assert ghostify.distill_plan(start, teacher, data, epochs=5, recipe="retrain").recipe == "retrain"
    long = ghostify.distill_plan(start, teacher, data, minutes=1.0)
    assert long.recipe == "retrain" and 55 <= long.epochs <= 60
    short = ghostify.distill_plan(start, teacher, data, minutes=0.2)
    assert short.recipe == "finetune" and 8 <= short.epochs <= 12


def test_a_resumed_budget_run_keeps_the_epochs_it_chose(pair, data, tmp_path):
    teacher, start = pair
    checkpoint = tmp_path / "run.pt"
    options = dict(batch_size=8, minutes=0.1)
    with pytest.raises(KeyboardInterrupt):
        distill(copy.deepcopy(start), teacher, data, checkpoint=checkpoint, progress=_Stop("epoch", 1, 0), **options)
    chosen = DistillConfig.from_dict(load_checkpoint(checkpoint)["config"]).epochs
    assert chosen > 1
    result = distill(copy.deepcopy(start), teacher, data, checkpoint=checkpoint, resume=True, **options)
    assert result.config.epochs == len(result.history) == chosen
