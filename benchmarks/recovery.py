"""How much accuracy calibration and distillation recover, and how long they take.

Converts a pretrained CIFAR-10 ResNet from ``../shared`` (stem kept), then measures top-1 and
teacher agreement on ``test/`` after each stage: data-free start, calibration (on ``train/``),
distillation (on ``train/`` + ``val/``). Wall-clock times are for the whole stage on this machine.

    python benchmarks/recovery.py --model resnet20 --ratio 2 --minutes 5
    python benchmarks/recovery.py --model resnet32 --ratio 2 --epochs 40 --device cuda
    python benchmarks/recovery.py --model resnet20 --ratio 2 --calibrate-only
    python benchmarks/recovery.py --model resnet20 --ratio 2 --minutes 5 --keep-best   # val/ held out
    python benchmarks/recovery.py --tune --model resnet20 --ratio 2 --epochs 40 --no-calibrate   # choosing settings
    python benchmarks/recovery.py --tune --model resnet20 --ratio 2 --epochs 40 --random-init  # what the weights bring

``--keep-best`` distils on ``train/`` only and passes ``val/`` as held-out data, so that the
student ends with the weights that agree best on ``val/`` (``DistillConfig.keep_best``); ``test/``
still only measures.

``--minutes`` is a budget for the whole run (conversion, calibration, distillation): distillation
gets what is left (``DistillConfig.minutes``: a timed probe sets the epochs); ``--epochs`` fixes
them instead. On a CPU, small models train faster as one process per core than as one process
with a thread per core (ResNet-20 on 2 cores: see the README); the script runs unchanged under
``torchrun`` (only rank 0 prints and measures):

    OMP_NUM_THREADS=1 torchrun --nproc_per_node 2 benchmarks/recovery.py --model resnet20 --ratio 2 --minutes 27

Hyper-parameters were chosen on ``val/`` (with ``--tune``: distil on ``train/`` only and report on ``val/``); the
numbers quoted in the README come from runs on ``test/`` that were not used for any choice.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import ghostify  # noqa: E402
from ghostify.data import ImageFiles, InputPipeline  # noqa: E402
from ghostify.distill import agreement_and_accuracy, distill, distill_plan  # noqa: E402
from ghostify.progress import budget_pace  # noqa: E402

CHECKPOINTS = {"resnet20": "resnet20-12fca82f.th", "resnet32": "resnet32-d509ac18.th"}
MAIN = int(os.environ.get("RANK", "0")) == 0  # under torchrun, rank 0 reports
CIFAR = InputPipeline((3, 32, 32), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def shared_dir() -> Path:
    return Path(os.environ.get("GHOSTIFY_SHARED", ROOT.parent / "shared"))


def reinitialise(model: torch.nn.Module, seed: int = 0) -> None:
    """Every layer of ``model`` back to PyTorch's random initialisation, BatchNorm statistics reset (in place)."""
    torch.manual_seed(seed)
    for module in model.modules():
        if module is not model and hasattr(module, "reset_parameters"):
            module.reset_parameters()  # BatchNorm's also resets its running statistics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=sorted(CHECKPOINTS), default="resnet20")
    parser.add_argument("--ratio", type=int, default=2)
    parser.add_argument("--minutes", type=float, default=None, help="time budget for the whole run")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--calibrate-only", action="store_true")
    parser.add_argument("--no-calibrate", action="store_true", help="distil from the data-free start (no calibration)")
    parser.add_argument("--calibrate", action="store_true", help="calibrate before distilling whatever the recipe "
                        "(default: as `ghostify convert --distill`, only when the recipe is finetune)")
    parser.add_argument("--tune", action="store_true", help="distil on train/ only and measure on val/ (for choosing settings)")
    parser.add_argument("--keep-best", action="store_true", help="distil on train/ only, keep the weights that agree best on val/")
    parser.add_argument("--random-init", action="store_true",
                        help="a control: the student starts from random weights, not the original's (implies --no-calibrate)")
    parser.add_argument("--variant", default="linear", help="the ghost module kind (GhostConfig.variant), e.g. paper-bn-relu")
    parser.add_argument("--share-across-shortcuts", action="store_true",
                        help="one channel assignment per stage across the option-A shortcuts (GhostConfig.share_across_shortcuts)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help="a DistillConfig field, e.g. lr=0.02")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("GHOSTIFY_THREADS", torch.get_num_threads())))

    shared = shared_dir()
    data = shared / "data" / "cifar10"
    train = [data / "train"] if args.tune or args.keep_best else [data / "train", data / "val"]
    selection = ImageFiles([data / "val"], CIFAR.transform()) if args.keep_best else None
    held_out = ImageFiles([data / ("val" if args.tune else "test")], CIFAR.transform())
    options = {k: json.loads(v) if v[:1].isdigit() or v in ("true", "false") else v
               for k, v in (item.split("=", 1) for item in args.set)}

    start = time.perf_counter()
    teacher = ghostify.resolve_model(str(ROOT / "examples" / "cifar_resnet.py") + f":{args.model}",
                                     checkpoint=shared / "weights" / CHECKPOINTS[args.model]).model.eval()
    student = ghostify.convert(teacher, ratio=args.ratio, variant=args.variant,
                               share_across_shortcuts=args.share_across_shortcuts)
    if args.random_init:
        reinitialise(student)
        args.no_calibrate = True
    device = torch.device(args.device)
    teacher.to(device), student.to(device)  # calibration and measurement run where the models are
    rows = []

    def say(text: str) -> None:
        if MAIN:
            print(text, flush=True)

    def measure(stage: str) -> None:
        if not MAIN:
            return
        agreement, top1, teacher_top1 = agreement_and_accuracy(student, teacher, held_out)
        rows.append({"stage": stage, "top1": top1, "teacher_top1": teacher_top1, "agreement": agreement,
                     "elapsed_s": round(time.perf_counter() - start, 1)})
        say(f"{stage:<24} top-1 {top1:6.1%} (teacher {teacher_top1:.1%}, {(top1 - teacher_top1) * 100:+.1f} pts)  "
            f"agreement {agreement:6.1%}  elapsed {rows[-1]['elapsed_s']:7.1f} s")

    def set_length() -> None:
        if args.minutes:  # what is left of the budget, less the final measurement, is distillation's (DistillConfig.minutes)
            options["minutes"] = max(1e-3, (args.minutes * 60 - (time.perf_counter() - start) - 15) / 60)
        else:
            options["epochs"] = args.epochs or 10

    measure("converted (data-free)")
    calibrating = args.calibrate_only or args.calibrate
    if not (calibrating or args.no_calibrate):  # as ghostify.recovery: calibrate only before a fine-tune
        set_length()
        options["recipe"] = distill_plan(student, teacher, train, pipeline=CIFAR, device=args.device, val_data=selection,
                                         **options).recipe
        calibrating = options["recipe"] == "finetune"
        say(f"recipe {options['recipe']}: {'calibrating first' if calibrating else 'from the data-free start'}")
    if calibrating:
        calibration = ghostify.calibrate(student, teacher, [data / "train"], pipeline=CIFAR)
        say(f"calibration: {calibration.images} images, {calibration.seconds:.1f} s")
        measure("calibrated")
    if not args.calibrate_only:
        set_length()

        def show(event: str, info: dict) -> None:
            if event == "budget":
                say(f"budget: {budget_pace(info)} -> {info['epochs']} epochs" +
                    ("" if info.get("replanned") else f" in the {info['minutes'] * 60:.0f} s left"))
            if event == "epoch":
                held_out = f"  val/ agreement {info['val_agreement']:.1%}" if info.get("val_agreement") is not None else ""
                say(f"  epoch {info['epoch']:3d}  loss {info['loss']:.3f}  train agreement {info['train_agreement']:.1%}{held_out}  "
                    f"{info['seconds']:.1f} s")

        result = distill(student, teacher, train, pipeline=CIFAR, device=args.device, progress=show,
                         val_data=selection, **options)
        epochs = result.config.epochs
        say(f"distillation: {epochs} epochs, {result.seconds:.1f} s ({result.config})")
        if result.kept_epoch is not None:
            agreements = [result.start_val_agreement] + [record.val_agreement for record in result.history]
            say(f"kept epoch {result.kept_epoch} (0: the start) of val/ agreements "
                f"{', '.join(f'{a:.1%}' for a in agreements)}")
        measure(f"distilled ({epochs} epochs)")
    total = time.perf_counter() - start
    say(f"total {total / 60:.1f} min" + (f" (budget {args.minutes} min)" if args.minutes else ""))
    if args.json and MAIN:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows, "total_s": total}, indent=2))


if __name__ == "__main__":
    main()
