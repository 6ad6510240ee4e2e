"""Latency of original vs ghost-converted models, measured side by side in one process.

    python benchmarks/latency.py                       # CPU, default models
    python benchmarks/latency.py --device cuda --batch-sizes 1,32
    python benchmarks/latency.py --models timm:resnet50 --ratios 2,4 --repeats 30

Prints, per model, batch size and ratio: median latency (ms) of both models, with runs of the
two interleaved so machine noise hits both alike, and the speedup (original / converted).
MACs and params are printed alongside: on CPU at small batch a ghost model is usually NOT
faster in proportion to its MACs (depthwise convs and the channel gather are memory-bound).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

import ghostify
from ghostify.measure import count_macs, count_params, example_input, measure_latencies

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "cifar_resnet.py"
DEFAULT_MODELS = f"timm:resnet50@224,{EXAMPLE}:resnet56@32"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=DEFAULT_MODELS, help="comma-separated SPEC@SIZE (SPEC as for `ghostify convert`)")
    parser.add_argument("--ratios", default="2,4")
    parser.add_argument("--batch-sizes", default="1,16")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"device={args.device} threads={torch.get_num_threads()} repeats={args.repeats} torch={torch.__version__}")
    header = f"{'model':<28} {'batch':>5} {'ratio':>5} {'params':>9} {'MACs/img':>9} {'orig ms':>9} {'ghost ms':>9} {'speedup':>8}"
    print(header)
    print("-" * len(header))
    for item in args.models.split(","):
        spec, _, size = item.rpartition("@")
        model = ghostify.resolve_model(spec).model.eval()
        input_size = (3, int(size), int(size))
        converted = {r: ghostify.convert(model, ratio=int(r), init="random").eval() for r in args.ratios.split(",")}
        name = Path(spec).name if ".py:" in spec else spec
        for batch in (int(b) for b in args.batch_sizes.split(",")):
            x = example_input(input_size, batch)
            for ratio, ghost in converted.items():
                original_stats, ghost_stats = measure_latencies(
                    [model, ghost], x, warmup=args.warmup, repeats=args.repeats, device=args.device
                )
                macs = count_macs(ghost, example_input(input_size, 1)).total
                print(
                    f"{name:<28} {batch:>5} {ratio:>5} {count_params(ghost) / 1e6:>8.2f}M {macs / 1e9:>8.3f}G "
                    f"{original_stats.median_ms:>9.2f} {ghost_stats.median_ms:>9.2f} "
                    f"{original_stats.median_ms / ghost_stats.median_ms:>7.2f}x"
                )
        print(f"{name:<28} original: {count_params(model) / 1e6:.2f}M params, "
              f"{count_macs(model, example_input(input_size, 1)).total / 1e9:.3f}G MACs/img")


if __name__ == "__main__":
    main()
