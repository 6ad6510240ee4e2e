"""How a deploy-form ghost module that keeps its gather should write its channels_last output.

    python benchmarks/gather.py --threads 2

For each output shape (batch, channels, height, width), a ghost module's intrinsic and ghost maps
(half the channels each, channels_last) are gathered into a random channel order in two exact ways,
timed in interleaved runs (medians, microseconds per gather):

- "columns": ``torch.cat`` of the maps, then ``deploy.gather_channels`` (the selected columns of the
  (pixels, channels) matrix);
- "scatter": ``deploy.scatter_channels`` (each map written straight to its channel of an empty output,
  two ``index_copy_``).

"scatter x" is the scatter's time over the columns' (above 1: the column selection is faster).
``deploy.SCATTER_FROM`` is where the deploy form switches to the scatter.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from ghostify.deploy import SCATTER_FROM, gather_channels, scatter_channels

SHAPES = [  # CIFAR ResNet stages at batch 1 and 16, then ResNet-50-sized maps
    (1, 16, 32, 32), (1, 32, 16, 16), (1, 64, 8, 8), (16, 16, 32, 32), (16, 32, 16, 16), (16, 64, 8, 8),
    (1, 256, 56, 56), (1, 512, 28, 28), (1, 2048, 7, 7), (16, 512, 28, 28), (16, 2048, 7, 7), (16, 256, 56, 56),
]


def _median_us(run, seconds: float) -> float:
    """The median time of ``run`` in microseconds, over repeats filling about ``seconds``."""
    run()
    start = time.perf_counter()
    run()
    once = time.perf_counter() - start
    loops = max(3, int(seconds / 5 / max(once, 1e-7)))
    times = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(loops):
            run()
        times.append((time.perf_counter() - start) / loops * 1e6)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: PyTorch's)")
    parser.add_argument("--seconds", type=float, default=0.5, help="time per variant and round")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (medians over them)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"threads={torch.get_num_threads()} torch={torch.__version__} SCATTER_FROM={SCATTER_FROM:,} values")
    print(f"{'shape':>20} {'values':>11} {'columns us':>11} {'scatter us':>11} {'scatter x':>10}")
    for shape in SHAPES:
        batch, channels, height, width = shape
        intrinsic = torch.randn(batch, channels // 2, height, width).contiguous(memory_format=torch.channels_last)
        ghosts = torch.randn(batch, channels - channels // 2, height, width).contiguous(memory_format=torch.channels_last)
        order = torch.randperm(channels)
        inverse = torch.argsort(order)
        positions = (inverse[:channels // 2].contiguous(), inverse[channels // 2:].contiguous())
        columns = lambda: gather_channels(torch.cat([intrinsic, ghosts], 1), order)  # noqa: E731
        scatter = lambda: scatter_channels(intrinsic, ghosts, positions)  # noqa: E731
        assert torch.equal(columns(), scatter()), shape
        rounds = [(_median_us(columns, args.seconds), _median_us(scatter, args.seconds)) for _ in range(args.rounds)]
        column_us = statistics.median(r[0] for r in rounds)
        scatter_us = statistics.median(r[1] for r in rounds)
        print(f"{str(shape):>20} {batch * channels * height * width:>11,} {column_us:>11.1f} {scatter_us:>11.1f} "
              f"{scatter_us / column_us:>9.2f}x", flush=True)


if __name__ == "__main__":
    main()
