"""How long calibration takes on an ImageNet-sized model on this machine, and how much of it is the
block reconstruction (step 4 of ``ghostify.calibrate``).

Runs ``ghostify.calibrate`` twice on the same converted model (random weights and random images:
the time does not depend on them): closed-form layer fits only (``block_steps=0``), then with the
defaults. Their difference is the block reconstruction's time.

    python benchmarks/calibration_time.py --model timm:resnet18 --samples 128 --threads 2
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import ghostify  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="timm:resnet18")
    parser.add_argument("--size", type=int, default=224, help="input height and width")
    parser.add_argument("--samples", type=int, default=128, help="calibration images")
    parser.add_argument("--ratio", type=int, default=2)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    teacher = ghostify.resolve_model(args.model).model.eval()
    student = ghostify.convert(teacher, ratio=args.ratio)
    images = torch.randn(args.samples, 3, args.size, args.size, generator=torch.Generator().manual_seed(0))
    seconds = {}
    for label, options in (("layer fits only (block_steps=0)", {"block_steps": 0}), ("defaults", {})):
        start = time.perf_counter()
        result = ghostify.calibrate(copy.deepcopy(student), teacher, images, samples=args.samples, **options)
        seconds[label] = time.perf_counter() - start
        print(f"{args.model} s={args.ratio}, {args.samples} images of {args.size} px, {args.threads} threads, {label}: "
              f"{seconds[label]:.1f} s ({len(result.layers)} layers, {len(result.blocks)} blocks)", flush=True)
    blocks = seconds["defaults"] - seconds["layer fits only (block_steps=0)"]
    print(f"block reconstruction: {blocks:.1f} s of {seconds['defaults']:.1f} s ({blocks / seconds['defaults']:.0%})")


if __name__ == "__main__":
    main()
