"""Recovering a converted model's accuracy in one call: calibrate and/or distill, measuring each stage.

``recover(student, teacher, data=..., val_data=...)`` is what ``ghostify convert --calibrate /
--distill`` and ``ghostify distill`` run: it checks the data and the teacher before any slow
work, measures agreement (and top-1 with labels) on held-out images after every stage, shows
progress, and keeps what it needs to resume an interrupted distillation beside the checkpoint.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from torch import nn
from torch.utils.data import Dataset

from .calibrate import calibrate as calibrate_model
from .calibrate import calibration_layers, check_teacher_fits
from .convert import base_form
from .data import InputPipeline, as_dataset, check_labels
from .deploy import get_deploy_record
from .distill import agreement_and_accuracy, distill_plan, num_classes
from .distill import distill as distill_model
from .errors import ConfigError
from .ghost_module import is_ghost_module
from .measure import resolve_device
from .progress import calibration_progress, distillation_progress
from .report import AccuracyStage
from .selection import get_plan


def is_main_process() -> bool:
    """False in the extra processes of a ``torchrun`` launch: only the first one prints and writes."""
    return os.environ.get("RANK", "0") == "0"


def checkpoint_file(output: Path) -> Path:
    """Where distillation keeps its checkpoint while writing ``output``: beside it, hidden."""
    output = Path(output).expanduser().absolute()
    return output.parent / f".{output.name}.distill-checkpoint.pt"


def _state_file(checkpoint: Path) -> Path:
    """Beside the checkpoint: what ran before distillation (calibration, accuracy per stage), for --resume."""
    return checkpoint.with_suffix(".json")


def check_resume(checkpoint: Path | None, resume: bool) -> None:
    """--resume needs the checkpoint of an interrupted run; without it, such a checkpoint must not be lost silently."""
    if resume and (checkpoint is None or not checkpoint.is_file()):
        where = f"no checkpoint at {checkpoint}" if checkpoint is not None else "no checkpoint (checkpoints are kept only with -o OUT)"
        raise ConfigError(f"--resume: {where}; it exists only while an interrupted distillation is unfinished. Run without --resume.")
    if not resume and checkpoint is not None and checkpoint.is_file():
        raise ConfigError(
            f"an interrupted distillation left its checkpoint at {checkpoint}; rerun with --resume to continue it, "
            "or delete that file to start again."
        )


def remove_checkpoint(checkpoint: Path | None) -> None:
    if checkpoint is not None:
        for path in (checkpoint, _state_file(checkpoint)):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()


@dataclass
class Recovery:
    """What calibration / distillation did, for the report."""

    stages: list[AccuracyStage] = field(default_factory=list)
    calibration: dict[str, Any] | None = None
    training: list[dict[str, Any]] = field(default_factory=list)


class _Evaluator:
    """Agreement with the teacher (and top-1 with labels) on --val-data, one stage after another."""

    def __init__(self, dataset: Dataset | None, name: str, teacher: nn.Module, device: torch.device) -> None:
        self.dataset, self.name, self.teacher, self.device = dataset, name, teacher, device

    def stage(self, stage: str, student: nn.Module, *, original: bool = False) -> list[AccuracyStage]:
        if self.dataset is None:
            return []
        agreement, top1, teacher_top1 = agreement_and_accuracy(student, self.teacher, self.dataset, device=self.device)
        stages = [AccuracyStage("original", teacher_top1, 1.0, len(self.dataset), self.name)] if original else []
        return stages + [AccuracyStage(stage, top1, agreement, len(self.dataset), self.name)]


def recover(
    student: nn.Module, teacher: nn.Module, *, data: list[Path], val_data: list[Path] | None, pipeline: InputPipeline,
    device: str, calibrate: bool | None, distill: bool, samples: int, options: dict[str, Any], checkpoint: Path | None,
    resume: bool, start_stage: str, console: Console | None = None,
) -> Recovery:
    """Calibrate and/or distill ``student`` towards ``teacher`` in place, measuring each stage on ``val_data``.

    ``calibrate=None`` (with ``distill``): calibrate only when distillation will fine-tune; a retraining
    run starts from the data-free weights (its high learning rate undoes a calibration: on CIFAR-10 val/,
    ResNet-20 s=2 retrained 40 epochs agreed 90.7 % from the data-free start against 88.6 % from the
    calibrated one, and 89.5 % against 88.6 % at 50 epochs on a GPU), which also saves the calibration's
    time. ``options`` are ``DistillConfig`` fields; ``checkpoint`` is the distillation checkpoint file
    (``checkpoint_file(output)``); ``start_stage`` names the student's state before recovery
    ("converted (data-free)", "saved"). Messages and progress go to ``console`` (none: silent).
    """
    if get_deploy_record(student) is not None:
        raise ConfigError("this model is in deploy form (BatchNorms folded into its ghost modules), which is for inference; "
                          "calibrate or distill the converted model (saved without --deploy), then deploy it.")
    stdout = console if console is not None else Console(quiet=True)
    options = dict(options)
    target = resolve_device(device)
    teacher = base_form(teacher, get_plan(student)).eval()  # re-parameterisable blocks fused, as in the student
    check_teacher_fits(student, teacher, [name for name, module in student.named_modules() if is_ghost_module(module)])
    train = as_dataset([str(p) for p in data], pipeline)  # missing / empty / too small images fail here, before any work
    val = as_dataset([str(p) for p in val_data], pipeline) if val_data else None
    student.to(target), teacher.to(target)
    outputs, per_position = num_classes(teacher, train, target)
    if not per_position:  # folder labels name whole images
        check_labels(train, outputs)
        if val is not None:
            check_labels(val, outputs)
    val_name = ", ".join(map(str, val_data or []))
    evaluator = _Evaluator(val, val_name, teacher, target)
    main = is_main_process()
    if val is None:
        stdout.print("note: accuracy is not measured; pass --val-data DIR (held-out images, in class folders for top-1) "
                     "to see agreement with the original after each step and each epoch.", highlight=False, soft_wrap=True)
    state = _state_file(checkpoint) if checkpoint is not None else None
    done = Recovery()
    resuming = resume and checkpoint is not None and checkpoint.is_file()
    if resuming:  # the checkpoint holds the student: calibration is not repeated, its results are read back
        saved = _read_state(state)
        done.calibration = saved.get("calibration")
        if saved.get("val_data") == val_name and saved.get("stages") is not None:
            done.stages = saved["stages"]
        elif main:
            done.stages = evaluator.stage(start_stage, student, original=True)
    elif main:
        done.stages = evaluator.stage(start_stage, student, original=True)
    if calibrate is None:
        calibrate = not distill or _fine_tunes(student, teacher, train, val, pipeline, target, options, resuming, stdout)
    if calibrate and distill and not calibration_layers(student):
        calibrate = False  # the paper-bn-relu variant is not linear: distillation alone
        stdout.print("note: these ghost modules (paper-bn-relu) cannot be calibrated; distilling from the data-free start.",
                     highlight=False, soft_wrap=True)
    if calibrate and not resuming and main:
        # under torchrun the first process calibrates, with the threads of all on CPU; distillation's
        # DistributedDataParallel then gives its weights to the others, which wait for it there
        with _threads_of_every_process(target), calibration_progress(stdout) as progress:
            result = calibrate_model(student, teacher, train, samples=samples, pipeline=pipeline,
                                     seed=options.get("seed", 0), progress=progress)
        before = sum(layer.error_before for layer in result.layers) / max(1, len(result.layers))
        stdout.print(f"calibrated {len(result.layers)} layers on {result.images} images in {result.seconds:.1f} s "
                     f"(mean relative output error {before:.3f} -> {result.mean_error_after:.3f})", highlight=False)
        done.calibration = result.to_dict()
        done.stages += evaluator.stage("calibrated", student)
    if distill:
        if state is not None and not resuming and main:
            state.parent.mkdir(parents=True, exist_ok=True)
            state.write_text(json.dumps({"calibration": done.calibration, "val_data": val_name,
                                         "stages": [asdict(stage) for stage in done.stages]}))
        try:
            with distillation_progress(stdout) as progress:
                result = distill_model(student, teacher, [str(p) for p in data], val_data=val, pipeline=pipeline, device=target,
                                       checkpoint=checkpoint, resume=resuming, progress=progress, **options)
        except BaseException:
            if checkpoint is not None and not checkpoint.is_file():  # stopped before the first checkpoint: keep nothing
                remove_checkpoint(checkpoint)
            raise
        done.training = result.to_dict()["history"]
        kept = result.kept_epoch if result.kept_epoch is not None else len(result.history)
        if kept != len(result.history) and main:
            which = "its starting weights" if kept == 0 else f"the weights of epoch {kept}"
            stdout.print(f"kept {which}: they agree best with the original on {val_name} (later epochs agreed less; "
                         "keep_best)", highlight=False, soft_wrap=True)
        record = result.history[kept - 1] if kept else None
        if record is not None and record.val_agreement is not None:
            done.stages.append(AccuracyStage("distilled", record.val_top1, record.val_agreement, len(val), val_name))
        elif main:
            done.stages += evaluator.stage("distilled", student)
    student.cpu().eval(), teacher.cpu().eval()
    return done


def _fine_tunes(student: nn.Module, teacher: nn.Module, train: Dataset, val: Dataset | None, pipeline: InputPipeline,
                device: torch.device, options: dict[str, Any], resuming: bool, console: Console) -> bool:
    """Whether distillation with ``options`` will fine-tune (so that calibrating first pays); fixes the recipe in
    ``options``, so that distillation's own timing probe cannot choose the other one."""
    if resuming:
        return False  # calibration is never repeated on resume
    config = distill_plan(student, teacher, train, val_data=val, pipeline=pipeline, device=device, **options)
    options["recipe"] = config.recipe
    if config.recipe == "retrain" and is_main_process():
        console.print(f"note: not calibrating: the retrain recipe ({config.epochs} epochs) trains the ghost modules anew and does "
                      "better from the data-free start; --calibrate calibrates anyway.", highlight=False, soft_wrap=True)
    return config.recipe == "finetune"


@contextlib.contextmanager
def _threads_of_every_process(device: torch.device) -> Iterator[None]:
    """On CPU under torchrun, while the other processes on this machine wait: their threads too."""
    processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    threads = torch.get_num_threads()
    if device.type == "cpu" and processes > 1:
        torch.set_num_threads(threads * processes)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _read_state(path: Path | None) -> dict[str, Any]:
    """What ``_recover`` stored beside the checkpoint before distilling; empty if absent or unreadable."""
    try:
        state = json.loads(path.read_text()) if path is not None and path.is_file() else {}
        stages = state.get("stages")
        state["stages"] = [AccuracyStage(**stage) for stage in stages] if isinstance(stages, list) else None
        return state
    except (OSError, ValueError, TypeError, AttributeError):
        return {}
