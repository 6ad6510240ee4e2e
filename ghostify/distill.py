"""Distillation: train the ghost model to reproduce the original one on unlabelled images.

The student (the converted model) and the teacher (the original) share every layer name, so
their intermediate features pair up by name: the loss is logit KD (Hinton et al., temperature
``T``) plus the normalised MSE between the outputs of the blocks that hold ghost modules
(layer-wise distillation of a model with some submodules replaced), plus cross-entropy when
labels exist and ``label_weight > 0``.

Reproducible and resumable: every random choice (data order, each image's augmentation, mixup,
dropout) is a function of (seed, epoch, step), and the checkpoint written after every epoch and
on Ctrl-C holds everything else, so a resumed run ends bit-for-bit where an uninterrupted one
would (on CPU). Under ``torchrun --nproc_per_node N`` each process takes 1/N of every batch and
gradients are averaged by DistributedDataParallel (NCCL on GPUs, gloo on CPU).
"""

from __future__ import annotations

import dataclasses
import datetime
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from .calibrate import called_modules, check_teacher_fits, reconstruction_blocks
from .convert import base_form
from .data import AUGMENTATIONS, InputPipeline, as_dataset, check_labels, sample_seed
from .errors import ConfigError, GhostifyError
from .ghost_module import is_ghost_module
from .graph_pass import copy_model
from .measure import resolve_device
from .records import RecordKind, known_fields
from .selection import get_plan

CHECKPOINT_FORMAT = "ghostify.distill-checkpoint"
CHECKPOINT_VERSION = 1
CHECKPOINT_RECORD = RecordKind("ghostify distillation checkpoint", "version", CHECKPOINT_VERSION, "format", CHECKPOINT_FORMAT)
CHECKPOINT_FILE = "distill-checkpoint.pt"
OPTIMIZERS = ("sgd", "adamw")
# The two ways to train a student (DistillConfig.recipe), chosen on CIFAR-10 val/ (benchmarks/recovery.py --tune).
# Both soften the logit KD at T=16: ResNet-20 s=2, val/ agreement, T=4 / 16: retrain 40 epochs 90.7 and 89.3 /
# 91.6 and 91.2 % (seeds 0, 1), finetune 12 epochs 87.3 / 88.3 %.
RECIPES: dict[str, dict[str, Any]] = {
    "retrain": {"optimizer": "sgd", "lr": 0.1, "weight_decay": 5e-4, "freeze_bn": False, "clip_grad": 2.0, "temperature": 16.0},
    "finetune": {"optimizer": "adamw", "lr": 1e-3, "weight_decay": 5e-5, "freeze_bn": True, "clip_grad": 0.0, "temperature": 16.0},
}
_RECIPE_FIELDS = ("recipe", *RECIPES["retrain"])  # what a recipe decides unless set explicitly
# "auto" retrains from this many epochs on. ResNet-20 s=2 from the calibrated start, val/ agreement, finetune /
# retrain: 10 epochs 87.4 / 86.3 %, 20 epochs 87.1-87.4 (finetune at 15 and 30) / 86.9 %, 40 epochs 87.4 (30) / 88.6 %.
RETRAIN_FROM_EPOCHS = 30
PACE_EPOCHS = 5  # a time budget re-sets the epochs from the mean time of this many last epochs


@dataclass(frozen=True)
class DistillConfig:
    """Settings of a distillation run (all have working defaults for CIFAR- and ImageNet-sized models).

    recipe: how the student is trained, unless the fields below say otherwise. "retrain": SGD (Nesterov
    momentum 0.9) at 0.1, weight decay 5e-4, BatchNorm statistics updated, gradients clipped at 2: the
    student is trained anew towards the teacher, which pays for long runs (CIFAR-10 val/, ResNet-20 s=2,
    40 epochs: 88.6 % agreement from the calibrated start, 90.7 % from the data-free one, against 87.4 %
    for "finetune" at 30; at 20 epochs retrain is not better yet: 86.9 %).
    "finetune": AdamW at 1e-3, weight decay 5e-5, BatchNorm statistics frozen, no clipping: a gentle
    fine-tune that keeps what calibration found, better for a few epochs (the retrain recipe's high
    learning rate first undoes the calibration: 54 % agreement after its first epoch, from 84 %).
    "auto" (default): retrain for ``RETRAIN_FROM_EPOCHS`` epochs or more, else finetune.
    optimizer / lr / weight_decay: None takes the recipe's. The schedule is one cycle (``warmup`` of
    the steps rising, cosine decay after).
    temperature: softening of the logit KD (None: the recipe's, 16). On few images a high temperature
    transfers more of the teacher's logits than its top class: at 16 the student fits the training images
    a little less (96 % agreement against 98 % at 4) and generalises better (val/ above 1 point).
    logit_weight / feature_weight / label_weight: loss mix (labels used only when the data has them).
    mixup: Beta(alpha, alpha) mixing of image pairs (0 = off). seed: every random choice derives from it.
    augment: images read from folders get random crops and flips ("crop-flip"), plus one TrivialAugment op
    each with "trivialaugment" (on CIFAR-10 val/ at s=2 it beat crop-flip and mixup, 88.6 % agreement
    against 87.4 %, but at s=4 it diverged at lr 1e-3, so it is not the default); a Dataset passed in
    keeps its own transforms.
    amp: mixed precision where the hardware has it: CUDA (bfloat16 where supported, else float16 with loss
    scaling), and CPUs with AMX or AVX512-BF16 (bfloat16; ResNet-20 on this project's Xeon: steps 1.6x and
    epochs 1.3x faster, the same val/ agreement for the same time).
    workers: DataLoader worker processes (0 = load in the training process).
    freeze_bn: keep BatchNorm statistics as they are (train the affine parameters only; None: the
    recipe's): a calibrated student starts on the teacher's statistics, which a short run on small
    batches would disturb; a longer retraining gains from updating them.
    clip_grad: largest gradient norm (0 = no clipping; None: the recipe's). With frozen statistics,
    nearly dead channels multiply their gradients by up to 1/sqrt(eps): SGD needs clipping there.
    keep_best: with held-out data (``val_data``), end with the weights that agreed best with the
    teacher on it, the starting ones included: a run too short to help (a few epochs of a small
    budget) never returns a student worse than the one it was given.
    minutes: a time budget for the whole distillation instead of ``epochs`` (0 = off): a short
    probe (one small epoch on a copy of the student) times an epoch on this machine, and the run
    gets as many epochs as fit in what is left (at least one); after every epoch, the mean time of
    the last ``PACE_EPOCHS`` sets the epochs once more (the probe can be 10-20 % off, and machines
    slow down; the first epoch is left out once there are others, as a GPU's pays for warm-up).
    The chosen ``epochs`` is recorded, so that ``resume`` continues the same schedule.
    """

    epochs: int = 10
    batch_size: int = 128
    recipe: str = "auto"
    optimizer: str | None = None
    lr: float | None = None
    weight_decay: float | None = None
    warmup: float = 0.15
    temperature: float | None = None
    logit_weight: float = 1.0
    feature_weight: float = 5.0
    label_weight: float = 0.0
    mixup: float = 0.0
    augment: str = "crop-flip"
    seed: int = 0
    amp: bool = True
    workers: int = 0
    freeze_bn: bool | None = None
    clip_grad: float | None = None
    keep_best: bool = True
    minutes: float = 0.0

    def __post_init__(self) -> None:
        def check(name: str, ok: bool, what: str) -> None:
            if not ok:
                raise ConfigError(f"{name} must be {what}, got {getattr(self, name)!r}.")

        for name in ("epochs", "batch_size"):
            value = getattr(self, name)
            check(name, isinstance(value, int) and not isinstance(value, bool) and value >= 1, "a whole number >= 1")
        check("workers", isinstance(self.workers, int) and self.workers >= 0, "a whole number >= 0")
        check("keep_best", isinstance(self.keep_best, bool), "True or False")
        check("recipe", self.recipe in ("auto", *RECIPES), f"one of auto, {', '.join(RECIPES)}")
        check("lr", self.lr is None or self.lr > 0, "> 0")
        check("optimizer", self.optimizer is None or self.optimizer in OPTIMIZERS, f"one of {', '.join(OPTIMIZERS)}")
        check("augment", self.augment in AUGMENTATIONS, f"one of {', '.join(AUGMENTATIONS)}")
        check("temperature", self.temperature is None or self.temperature > 0, "> 0")
        check("clip_grad", self.clip_grad is None or self.clip_grad >= 0, ">= 0 (0 = no clipping)")
        check("freeze_bn", self.freeze_bn is None or isinstance(self.freeze_bn, bool), "True or False")
        check("warmup", 0 <= self.warmup < 1, "in [0, 1)")
        for name in ("weight_decay", "logit_weight", "feature_weight", "label_weight", "mixup", "minutes"):
            check(name, getattr(self, name) is None or getattr(self, name) >= 0, ">= 0")
        check("logit_weight", self.logit_weight + self.feature_weight + self.label_weight > 0, "positive for at least one loss")

    def resolved(self) -> DistillConfig:
        """This config with the recipe chosen ("auto" by ``epochs``) and its values in every field left None."""
        recipe = self.recipe if self.recipe != "auto" else ("retrain" if self.epochs >= RETRAIN_FROM_EPOCHS else "finetune")
        chosen = {name: value if getattr(self, name) is None else getattr(self, name) for name, value in RECIPES[recipe].items()}
        return dataclasses.replace(self, recipe=recipe, **chosen)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DistillConfig:
        return cls(**known_fields(cls, data))


@dataclass
class EpochRecord:
    """One epoch of a distillation run: mean losses, agreement on the training batches, held-out figures."""

    epoch: int
    loss: float
    logit_loss: float
    feature_loss: float
    train_agreement: float
    lr: float
    seconds: float
    val_agreement: float | None = None
    val_top1: float | None = None
    teacher_top1: float | None = None


@dataclass
class DistillResult:
    """The distilled student (the same object that was passed in) and the per-epoch history."""

    student: nn.Module
    history: list[EpochRecord] = field(default_factory=list)
    config: DistillConfig = field(default_factory=DistillConfig)
    seconds: float = 0.0
    start_val_agreement: float | None = None  # on val_data, before the first epoch
    kept_epoch: int | None = None  # keep_best: the epoch whose weights the student ends with (0: the start)

    def to_dict(self) -> dict[str, Any]:
        return {"config": self.config.to_dict(), "seconds": round(self.seconds, 1),
                "start_val_agreement": self.start_val_agreement, "kept_epoch": self.kept_epoch,
                "history": [dataclasses.asdict(record) for record in self.history]}


# --- events for progress displays ---------------------------------------------------------------

ProgressCallback = Callable[[str, dict[str, Any]], None]


# --- distributed ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class _World:
    rank: int = 0
    size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0


def _setup_world(device: str | torch.device) -> _World:
    """Join the process group when started by torchrun (WORLD_SIZE > 1); else a world of one."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    target = resolve_device(device)
    if size <= 1:
        return _World(0, 1, target)
    import torch.distributed as dist

    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if target.type == "cuda":
        target = torch.device("cuda", local_rank)
        torch.cuda.set_device(target)
    if not dist.is_initialized():
        # gloo carries the small reductions on CPU tensors (losses, epoch counts) beside NCCL; the timeout is
        # over the default 30 min because the first process may still be calibrating alone (ghostify.recovery)
        dist.init_process_group("cpu:gloo,cuda:nccl" if target.type == "cuda" else "gloo", timeout=datetime.timedelta(hours=2))
    return _World(rank, size, target)


def _all_reduce(values: torch.Tensor, world: _World, op: str = "mean") -> torch.Tensor:
    """``values`` combined over every process ("mean", "min" or "max"), in place; as is in a world of one."""
    if world.size > 1:
        import torch.distributed as dist

        dist.all_reduce(values, op={"mean": dist.ReduceOp.SUM, "min": dist.ReduceOp.MIN, "max": dist.ReduceOp.MAX}[op])
        if op == "mean":
            values /= world.size
    return values


# --- features and losses -------------------------------------------------------------------------

def feature_points(student: nn.Module, teacher: nn.Module | None = None, example: torch.Tensor | None = None) -> list[str]:
    """Names of the modules whose outputs are matched: the blocks that hold ghost modules.

    Given the teacher and an ``example`` input, each block is one that both models call
    (``calibrate.reconstruction_blocks``); a container never called itself would record nothing.
    """
    names = [name for name, module in student.named_modules() if is_ghost_module(module)]
    called = called_modules(student, teacher, inputs=example) if teacher is not None and example is not None else None
    return reconstruction_blocks(student, names, called)


@contextmanager
def _recording(model: nn.Module, names: Sequence[str]) -> Iterator[dict[str, torch.Tensor]]:
    """Collect the (tensor) outputs of the named modules during forward passes."""
    outputs: dict[str, torch.Tensor] = {}
    handles = []
    for name in names:
        def hook(_module: nn.Module, _args: Any, output: Any, name: str = name) -> None:
            if isinstance(output, torch.Tensor):
                outputs[name] = output
        handles.append(model.get_submodule(name).register_forward_hook(hook))
    try:
        yield outputs
    finally:
        for handle in handles:
            handle.remove()


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton's KD: KL(teacher || student) of temperature-softened distributions, times T^2.

    Scores per position (``(batch, classes, ...)``, e.g. segmentation) are one distribution per position,
    the loss their mean."""
    if student_logits.ndim > 2:
        student_logits, teacher_logits = (x.movedim(1, -1).flatten(0, -2) for x in (student_logits, teacher_logits))
    t = temperature
    return F.kl_div(F.log_softmax(student_logits.float() / t, dim=1), F.log_softmax(teacher_logits.float() / t, dim=1),
                    reduction="batchmean", log_target=True) * (t * t)


def feature_loss(student_features: dict[str, torch.Tensor], teacher_features: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean over matched modules of MSE(student, teacher) / mean(teacher^2): scale-free per layer."""
    losses = []
    for name, target in teacher_features.items():
        output = student_features.get(name)
        if output is None or output.shape != target.shape:
            continue
        target = target.float()
        losses.append(F.mse_loss(output.float(), target) / target.pow(2).mean().clamp_min(1e-8))
    if not losses:
        return torch.zeros((), device=next(iter(teacher_features.values())).device) if teacher_features else torch.zeros(())
    return torch.stack(losses).mean()


def _logits(output: Any) -> torch.Tensor:
    """The class scores of a model output (a tensor, or the first tensor of a tuple/dict)."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (list, tuple)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    if isinstance(output, dict):
        for value in output.values():
            if isinstance(value, torch.Tensor):
                return value
    raise GhostifyError(f"the model returned {type(output).__name__}; distillation needs a tensor of class scores.")


@torch.no_grad()
def num_classes(model: nn.Module, dataset: Dataset, device: torch.device) -> tuple[int, bool]:
    """(classes, per_position): how many classes ``model`` predicts, and whether it scores them per position
    (``(batch, classes, ...)``, e.g. per pixel for segmentation) rather than per image; from one forward pass
    on the first image of ``dataset``. Per-position scores are distilled position by position; the
    images' folder labels do not apply to them."""
    scores = _logits(model(dataset[0][0][None].to(device)))
    if scores.ndim < 2:
        raise GhostifyError(f"the model returned scores of shape {tuple(scores.shape)}, not (batch, classes, ...); it cannot be distilled.")
    return int(scores.shape[1]), scores.ndim > 2


# --- evaluation ----------------------------------------------------------------------------------

@torch.no_grad()
def agreement_and_accuracy(
    student: nn.Module, teacher: nn.Module, dataset: Dataset, *, batch_size: int = 256, device: torch.device | None = None
) -> tuple[float, float | None, float | None]:
    """(agreement, student top-1, teacher top-1) on ``dataset``; top-1 is None without labels.

    For scores per position (segmentation) agreement is the share of positions, averaged over images,
    and top-1 is None."""
    device = device or next(student.parameters()).device
    flags = student.training, teacher.training
    student.eval(), teacher.eval()
    agree = correct_s = correct_t = labelled = total = 0
    try:
        for images, labels in DataLoader(dataset, batch_size=batch_size, shuffle=False):
            images = images.to(device)
            pred_s = _logits(student(images)).argmax(1).cpu()
            pred_t = _logits(teacher(images)).argmax(1).cpu()
            total += len(labels)
            if pred_s.ndim > 1:  # per position: labels name whole images, so only agreement
                agree += float((pred_s == pred_t).flatten(1).float().mean(1).sum())
                continue
            agree += int((pred_s == pred_t).sum())
            known = labels >= 0
            correct_s += int((pred_s[known] == labels[known]).sum())
            correct_t += int((pred_t[known] == labels[known]).sum())
            labelled += int(known.sum())
    finally:
        student.train(flags[0]), teacher.train(flags[1])
    if total == 0:
        raise GhostifyError("the evaluation data holds no images.")
    top1 = (correct_s / labelled, correct_t / labelled) if labelled else (None, None)
    return agree / total, top1[0], top1[1]


# --- checkpoints ---------------------------------------------------------------------------------

def _save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write atomically: a temporary file beside ``path``, then a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    torch.save(state, temporary)
    os.replace(temporary, path)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """A distillation checkpoint, checked for format and version."""
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_FILE
    if not path.is_file():
        raise GhostifyError(f"no distillation checkpoint at {path}; run without --resume to start from the beginning.")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file is the same user-facing problem
        raise GhostifyError(f"cannot read the checkpoint {path} ({type(err).__name__}: {err}); delete it and start again without --resume.") from None
    CHECKPOINT_RECORD.version_of(state, source=str(path))
    return state


def _train_mode(model: nn.Module, freeze_bn: bool) -> None:
    model.train()
    if freeze_bn:
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()


# --- the training loop ---------------------------------------------------------------------------

def _epoch_batches(size: int, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """This epoch's global batches: a seeded permutation cut into full batches (a small set: one batch)."""
    order = torch.randperm(size, generator=torch.Generator().manual_seed(sample_seed(seed, epoch))).tolist()
    if size <= batch_size:
        return [order]
    return [order[i:i + batch_size] for i in range(0, size - batch_size + 1, batch_size)]


def _schedule(step: int, total: int, config: DistillConfig) -> float:
    """One-cycle learning-rate factor: linear warm-up, then cosine decay to zero."""
    warm = max(1, int(total * config.warmup))
    if step < warm:
        return (step + 1) / warm
    return 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))


def _amp_dtype(device: torch.device, enabled: bool) -> torch.dtype | None:
    """The mixed-precision type where the hardware computes it natively (``DistillConfig.amp``); None elsewhere:
    on a CPU without AMX or AVX512-BF16 units bfloat16 would be emulated, slower than float32."""
    if not enabled:
        return None
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and _cpu_computes_bfloat16():
        return torch.bfloat16
    return None


def _cpu_computes_bfloat16() -> bool:
    """Whether this CPU has AMX or AVX512-BF16 units (PyTorch's own probes; private, so absent means no)."""
    probes = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    return any(getattr(torch.cpu, probe, lambda: False)() for probe in probes)


def _epoch_seconds(student: nn.Module, teacher: nn.Module, dataset: Dataset, val_dataset: Dataset | None,
                   config: DistillConfig, world: _World) -> float:
    """Seconds one epoch will take here: one epoch of a few batches on a copy of the student, scaled up
    (plus the held-out evaluation after each epoch); the slowest process's figure, on every process. The first
    step is not counted: it pays one-time costs (memory, kernels) that a whole epoch does not repeat."""
    probe = Subset(dataset, range(min(len(dataset), 5 * config.batch_size)))
    stamps: list[float] = []

    def stamp(event: str, _info: dict[str, Any]) -> None:
        if event == "step":
            stamps.append(time.perf_counter())

    clock = time.perf_counter()
    distill(copy_model(student), teacher, probe, dataclasses.replace(config, epochs=1, minutes=0.0, keep_best=False),
            device=world.device, progress=stamp)
    if len(stamps) > 1:
        steps = len(_epoch_batches(len(dataset), config.batch_size, config.seed, 0))
        seconds = (stamps[-1] - stamps[0]) / (len(stamps) - 1) * steps
    else:  # one batch held the whole probe
        seconds = (time.perf_counter() - clock) * len(dataset) / len(probe)
    if val_dataset is not None and world.main:
        sample = Subset(val_dataset, range(min(len(val_dataset), 256)))
        clock = time.perf_counter()
        agreement_and_accuracy(student, teacher, sample, device=world.device)
        seconds += (time.perf_counter() - clock) * len(val_dataset) / len(sample)
    return float(_all_reduce(torch.tensor([seconds], dtype=torch.float64), world, "max")[0])  # the slowest sets the pace


def _with_options(config: DistillConfig | None, options: dict[str, Any]) -> DistillConfig:
    return dataclasses.replace(config or DistillConfig(), **options) if options else (config or DistillConfig())


def _prepare(student: nn.Module, teacher: nn.Module, data: Any, val_data: Any, pipeline: InputPipeline | None,
             config: DistillConfig, device: str | torch.device) -> tuple[_World, nn.Module, Dataset, Dataset | None]:
    """The process group, the teacher in the student's base form, the datasets checked against the teacher's
    classes; both models moved to the device."""
    world = _setup_world(device)
    names = [name for name, module in student.named_modules() if is_ghost_module(module)]
    teacher = base_form(teacher, get_plan(student))  # re-parameterisable blocks fused, as in the student
    check_teacher_fits(student, teacher, names)
    if pipeline is None and not (isinstance(data, Dataset) and (val_data is None or isinstance(val_data, Dataset))):
        pipeline = InputPipeline.for_model(teacher)  # images from folders (a Dataset needs none)
    dataset = as_dataset(data, pipeline, train=True, seed=config.seed, augment=config.augment)
    val_dataset = as_dataset(val_data, pipeline) if val_data is not None else None
    if len(dataset) == 0:
        raise GhostifyError("the training data holds no images.")
    student.to(world.device)
    teacher.to(world.device).eval()
    num_outputs, per_position = num_classes(teacher, dataset, world.device)
    if per_position and config.label_weight > 0:
        raise ConfigError("label_weight needs a model that scores whole images; this one scores every position "
                          "(its output has shape (batch, classes, ...)): distill it without labels (label_weight=0).")
    if not per_position:
        check_labels(dataset, num_outputs)
        if val_dataset is not None:
            check_labels(val_dataset, num_outputs)
    return world, teacher, dataset, val_dataset


def _budget_epochs(student: nn.Module, teacher: nn.Module, dataset: Dataset, val_dataset: Dataset | None,
                   config: DistillConfig, world: _World, started: float, progress: ProgressCallback | None) -> DistillConfig:
    """``config`` with the epochs that fit in what is left of its ``minutes`` (counted from ``started``)."""
    epoch_seconds = _epoch_seconds(student, teacher, dataset, val_dataset, config, world)
    left = config.minutes * 60 - (time.perf_counter() - started)
    # processes started at different moments see different budgets left: all take the smallest
    epochs = _all_reduce(torch.tensor([max(1, int(left // epoch_seconds))]), world, "min")
    config = dataclasses.replace(config, epochs=int(epochs[0]))
    if progress is not None and world.main:
        progress("budget", {"minutes": config.minutes, "epoch_seconds": epoch_seconds, "epochs": config.epochs})
    return config


def distill_plan(
    student: nn.Module,
    teacher: nn.Module,
    data: Any,
    config: DistillConfig | None = None,
    *,
    val_data: Any = None,
    pipeline: InputPipeline | None = None,
    device: str | torch.device = "cpu",
    **options: Any,
) -> DistillConfig:
    """The settings ``distill`` would train with given these arguments, without training: the recipe resolved
    and, with a time budget (``minutes``), the epochs a timed probe says fit. Lets a caller decide what to do
    first (``ghostify.recovery`` calibrates only before a fine-tune); the probe costs a few batches."""
    started = time.perf_counter()
    config = _with_options(config, options)
    if config.minutes > 0:
        world, teacher, dataset, val_dataset = _prepare(student, teacher, data, val_data, pipeline, config, device)
        config = _budget_epochs(student, teacher, dataset, val_dataset, config, world, started, None)
    return config.resolved()


def distill(
    student: nn.Module,
    teacher: nn.Module,
    data: Any,
    config: DistillConfig | None = None,
    *,
    val_data: Any = None,
    pipeline: InputPipeline | None = None,
    device: str | torch.device = "cpu",
    checkpoint: str | Path | None = None,
    resume: bool = False,
    progress: ProgressCallback | None = None,
    **options: Any,
) -> DistillResult:
    """Train ``student`` (converted from ``teacher``) to reproduce ``teacher`` on ``data``; in place.

    ``data`` / ``val_data``: a folder path, a list of folder paths, or a Dataset yielding
    ``(image, label)`` (label -1 or any value when unlabelled). ``options`` are ``DistillConfig``
    fields (``epochs=5``). ``checkpoint``: a file written after every epoch and on Ctrl-C;
    ``resume=True`` continues from it. ``progress(event, info)`` receives "start", "step" and
    "epoch" events. Returns the student and the per-epoch history.
    """
    started = time.perf_counter()
    config = _with_options(config, options)
    world, teacher, dataset, val_dataset = _prepare(student, teacher, data, val_data, pipeline, config, device)
    use_labels = config.label_weight > 0 and bool(getattr(dataset, "classes", None))

    points = feature_points(student, teacher, dataset[0][0][None]) if config.feature_weight > 0 else []
    steps_per_epoch = len(_epoch_batches(len(dataset), config.batch_size, config.seed, 0))
    result = DistillResult(student, [], config)
    start_epoch, start_step, sums = 0, 0, None
    best: dict[str, Any] | None = None  # keep_best: {"epoch", "agreement", "student"} of the best weights so far
    checkpoint_path = Path(checkpoint) if checkpoint is not None else None
    if checkpoint_path is not None and checkpoint_path.is_dir():
        checkpoint_path = checkpoint_path / CHECKPOINT_FILE
    if resume:
        if checkpoint_path is None:
            raise GhostifyError("resume needs the checkpoint path (the run's output directory or checkpoint file).")
        state = load_checkpoint(checkpoint_path)
        saved = DistillConfig.from_dict(state["config"]).resolved()
        if config.minutes > 0 and saved.minutes == config.minutes:
            config = dataclasses.replace(config, epochs=saved.epochs)  # the epochs the budget chose at the start
        # what was left to the recipe is the run's (a checkpoint written before recipes existed included)
        config = dataclasses.replace(config, **{name: getattr(saved, name) for name in _RECIPE_FIELDS
                                                if getattr(config, name) in (None, "auto")}).resolved()
        if saved != config:
            changed = [f.name for f in dataclasses.fields(config) if getattr(saved, f.name) != getattr(config, f.name)]
            raise GhostifyError(f"the checkpoint was made with other settings ({', '.join(changed)}); resume with the same settings, or start again without --resume.")
        start_epoch, start_step, sums = state["epoch"], state["step"], state.get("sums")
        result.history = [EpochRecord(**record) for record in state["history"]]
        result.seconds = state.get("seconds", 0.0)
        result.start_val_agreement = state.get("start_val_agreement")
        best = state.get("best")
    elif config.minutes > 0:
        config = _budget_epochs(student, teacher, dataset, val_dataset, config, world, started, progress)
    config = result.config = config.resolved()
    trainable = [p for p in student.parameters() if p.requires_grad]
    decay = [p for p in trainable if p.ndim > 1]
    no_decay = [p for p in trainable if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if config.optimizer == "adamw":
        optimizer: torch.optim.Optimizer = torch.optim.AdamW(groups, lr=config.lr)
    else:
        optimizer = torch.optim.SGD(groups, lr=config.lr, momentum=0.9, nesterov=True)
    amp_dtype = _amp_dtype(world.device, config.amp)

    def autocast() -> Any:
        return torch.autocast(world.device.type, dtype=amp_dtype) if amp_dtype is not None else nullcontext()

    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    if resume:
        student.load_state_dict(state["student"])
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
    model = student
    if world.size > 1:
        model = nn.parallel.DistributedDataParallel(student, device_ids=[world.device.index] if world.device.type == "cuda" else None)

    budgeted = config.minutes > 0 and not resume

    paces: list[float] = []  # seconds of each epoch of this run, held-out evaluation included

    def replan(epochs_done: int, last_epoch_seconds: float) -> DistillConfig:
        """The epochs that fit in the budget at the pace of the last ones (the schedule stretches or shrinks)."""
        paces.append(last_epoch_seconds)
        # the last few epochs follow a machine that slows down (ResNet-32 here: 45 s, then 52-56 s from epoch 7);
        # the first epoch pays for warm-up (on a GPU: 4.2 s, then 2.3-3.2 s)
        settled = paces[1:][-PACE_EPOCHS:] or paces
        epoch_seconds = sum(settled) / len(settled)
        left = config.minutes * 60 - (time.perf_counter() - started)
        epochs = int(_all_reduce(torch.tensor([epochs_done + max(0, int(left // epoch_seconds))]), world, "min")[0])
        if progress is not None and world.main and epochs != config.epochs:
            progress("budget", {"minutes": config.minutes, "epoch_seconds": epoch_seconds, "epochs": epochs, "replanned": True,
                                "after_epoch": epochs_done, "timed_from": epochs_done - len(settled) + 1})
        result.config = dataclasses.replace(config, epochs=epochs)
        return result.config

    def save(epoch: int, step: int, partial: list[float] | None) -> None:
        if checkpoint_path is None or not world.main:
            return
        _save_checkpoint(checkpoint_path, {
            "format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "epoch": epoch, "step": step, "sums": partial,
            "student": student.state_dict(), "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
            "history": [dataclasses.asdict(record) for record in result.history], "config": config.to_dict(),
            "seconds": result.seconds, "start_val_agreement": result.start_val_agreement, "best": best,
        })

    keeping = config.keep_best and val_dataset is not None and world.main

    def consider(epoch_done: int, agreement: float) -> None:
        """Remember the student's weights when they agree best with the teacher on the held-out data."""
        nonlocal best
        if keeping and (best is None or agreement > best["agreement"]):
            best = {"epoch": epoch_done, "agreement": agreement,
                    "student": {key: value.detach().clone() for key, value in student.state_dict().items()}}

    if keeping and not resume:
        result.start_val_agreement = agreement_and_accuracy(student, teacher, val_dataset, device=world.device)[0]
        consider(0, result.start_val_agreement)

    if progress is not None and world.main:
        precision = f"{str(amp_dtype).removeprefix('torch.')} mixed precision" if amp_dtype is not None else "float32"
        recipe = (f"{config.recipe} ({config.optimizer} at {config.lr:g}, BatchNorm statistics "
                  f"{'frozen' if config.freeze_bn else 'updated'}, {precision})")
        progress("start", {"epochs": config.epochs, "steps_per_epoch": steps_per_epoch, "images": len(dataset),
                           "epoch": start_epoch, "step": start_step, "world_size": world.size, "recipe": recipe})
    clock = time.perf_counter()
    epoch, done = start_epoch, start_step  # done: steps of ``epoch`` finished
    try:
        while epoch < config.epochs:  # a budget may change config.epochs after each epoch
            if hasattr(dataset, "set_epoch"):
                dataset.set_epoch(epoch)
            batches = _epoch_batches(len(dataset), config.batch_size, config.seed, epoch)
            first = done = start_step if epoch == start_epoch else 0
            # the record's lr when every step of this epoch ran before a resume: the last step's
            lr = config.lr * _schedule(epoch * steps_per_epoch + max(first - 1, 0), steps_per_epoch * config.epochs, config)
            local = [batch[world.rank::world.size] for batch in batches[first:]]
            loader = DataLoader(dataset, batch_sampler=local, num_workers=config.workers)
            sums = sums if (epoch == start_epoch and sums) else [0.0] * 5  # loss, logit, feature, agree, count
            epoch_clock = time.perf_counter()
            _train_mode(student, config.freeze_bn)
            for step, (images, labels) in enumerate(loader, start=first):
                global_step = epoch * steps_per_epoch + step
                lr = config.lr * _schedule(global_step, steps_per_epoch * config.epochs, config)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                torch.manual_seed(sample_seed(config.seed, epoch, step, 1))  # mixup, dropout, stochastic depth
                images = images.to(world.device, non_blocking=True)
                labels = labels.to(world.device)
                mix = None
                if config.mixup > 0:
                    lam = float(torch.distributions.Beta(config.mixup, config.mixup).sample())
                    perm = torch.randperm(len(images)).to(world.device)
                    images = lam * images + (1 - lam) * images[perm]
                    mix = (lam, perm)
                with torch.no_grad(), autocast(), _recording(teacher, points) as teacher_features:  # teacher left as given
                    teacher_logits = _logits(teacher(images))
                with autocast(), _recording(student, points) as student_features:
                    student_logits = _logits(model(images))
                    logit_term = kd_loss(student_logits, teacher_logits, config.temperature) if config.logit_weight > 0 else student_logits.sum() * 0
                    feature_term = feature_loss(student_features, teacher_features).to(student_logits.device) if points else student_logits.sum() * 0
                    loss = config.logit_weight * logit_term + config.feature_weight * feature_term
                    if use_labels:
                        ce = F.cross_entropy(student_logits.float(), labels.clamp_min(0), reduction="none")
                        if mix is not None:
                            ce = mix[0] * ce + (1 - mix[0]) * F.cross_entropy(student_logits.float(), labels[mix[1]].clamp_min(0), reduction="none")
                        loss = loss + config.label_weight * ce.mean()
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                grad_norm = float("nan")
                if config.clip_grad > 0:
                    scaler.unscale_(optimizer)
                    grad_norm = float(torch.nn.utils.clip_grad_norm_(trainable, config.clip_grad))
                scaler.step(optimizer)
                scaler.update()
                agree = (student_logits.argmax(1) == teacher_logits.argmax(1)).float().mean()
                stats = _all_reduce(torch.stack([loss.detach().float(), logit_term.detach().float(),
                                                 feature_term.detach().float(), agree]).cpu(), world).tolist()
                for i, value in enumerate(stats):
                    sums[i] += value
                sums[4] += 1
                done = step + 1
                if progress is not None and world.main:
                    progress("step", {"epoch": epoch, "step": step + 1, "loss": stats[0], "agreement": stats[3], "lr": lr, "grad_norm": grad_norm})
            result.seconds += time.perf_counter() - epoch_clock
            count = max(1.0, sums[4])
            record = EpochRecord(epoch + 1, sums[0] / count, sums[1] / count, sums[2] / count, sums[3] / count, lr,
                                 time.perf_counter() - epoch_clock)
            if val_dataset is not None and world.main:
                record.val_agreement, record.val_top1, record.teacher_top1 = agreement_and_accuracy(student, teacher, val_dataset, device=world.device)
                consider(epoch + 1, record.val_agreement)
            result.history.append(record)
            sums = None
            if budgeted:  # real epochs correct the probe's estimate, and a machine that slows down or speeds up
                config = replan(epoch + 1, time.perf_counter() - epoch_clock)
            save(epoch + 1, 0, None)
            if progress is not None and world.main:
                progress("epoch", dataclasses.asdict(record))
            epoch += 1
    except KeyboardInterrupt:
        # keep what was done: the next --resume starts at the step after the last finished one
        if sums is not None:
            save(epoch, done, sums)
        raise
    if best is not None:
        result.kept_epoch = best["epoch"]
        if best["epoch"] != len(result.history):  # a later epoch did worse on the held-out data
            student.load_state_dict(best["student"])
    student.eval()
    if progress is not None and world.main:
        progress("end", {"seconds": time.perf_counter() - clock, "kept_epoch": result.kept_epoch,
                         "epochs": len(result.history), "kept_agreement": best["agreement"] if best else None})
    return result
