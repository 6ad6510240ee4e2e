"""Latency of original, ghost-converted and deployed models, measured side by side in one process.

    python benchmarks/latency.py                       # CPU, default models
    python benchmarks/latency.py --threads 2 --every-conv --models timm:resnet50@224 --ratios 2 --batch-sizes 1,16
    python benchmarks/latency.py --device cuda --batch-sizes 1,32
    python benchmarks/latency.py --threads 2 --every-conv --models timm:resnet50@224 --ratios 2 --compile
    python benchmarks/latency.py --threads 2 --models examples/cifar_resnet.py:resnet56@32 --ratios 2 --batch-sizes 1 --freeze

Prints, per model, batch size and ratio: median latency (ms) of the original, of the converted
model as ``ghostify.convert`` returns it (train form) and of its deploy form (``ghostify.deploy``:
BatchNorm folded, channel gathers folded into the next layers), with the runs of all models
interleaved so machine noise hits them alike, and the speedups over the original. Also the
original with its own BatchNorms folded (``torch.fx``'s ``fuse``), and that again with its
weights channels_last as the deploy form has them (``ghostify.deploy.to_channels_last``, "vs NHWC"),
and that again with its large convs on oneDNN's prepacked weights, as the deploy form runs its
convs on the CPU (``ghostify.prepacked``, "+packed"); the faster of these two is the fairest
baseline ("vs best"). And the deploy form with the packing switched off ("unpacked"). ``--freeze`` also
times the deploy form and that best original each run as one flat graph (``ghostify.freeze``: "frozen",
"fz best"), with the speedups of the frozen deploy form over the original ("frozen x") and over the
frozen best original ("fz vs fz", the fairest). Random-weight
models get trained-like BatchNorm statistics first (timm starts some BN scales at zero, which no
trained model has and which ``deploy`` cannot fold).
The converted models start from the original weights (``init="transfer"``), so their channel
assignments are the ones a user's conversion has. ``--compile`` also times every model under
``torch.compile`` (default inductor backend; on CPU it needs a C++ compiler and takes minutes).
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

import torch
from torch import nn

import ghostify
from ghostify import prepacked
from ghostify.deploy import to_channels_last
from ghostify.measure import count_macs, example_input, measure_latencies

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "cifar_resnet.py"
DEFAULT_MODELS = f"timm:resnet50@224,{EXAMPLE}:resnet56@32"


def trained_like_norms(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BN statistics and affine parameters, as a trained model has."""
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            n = module.num_features
            module.running_mean.copy_(torch.rand(n, generator=generator) * 0.2 - 0.1)
            module.running_var.copy_(torch.rand(n, generator=generator) * 0.5 + 0.75)
            if module.affine:
                module.weight.data.copy_(torch.rand(n, generator=generator) * 0.5 + 0.5)
                module.bias.data.copy_(torch.rand(n, generator=generator) * 0.2 - 0.1)
    return model


def bn_folded(model: nn.Module) -> nn.Module:
    """The original with each Conv2d-BatchNorm2d pair fused (``torch.fx.experimental.optimization.fuse``)."""
    from torch.fx.experimental.optimization import fuse

    try:
        return fuse(copy.deepcopy(model).eval())
    except Exception:  # noqa: BLE001 - not traceable by plain FX: no such baseline
        return None


class Unpacked(nn.Module):
    """``model`` with ``ghostify.prepacked`` switched off: what the packed weights are worth, side by side."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with prepacked.disabled():
            return self.model(x)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=DEFAULT_MODELS, help="comma-separated SPEC@SIZE (SPEC as for `ghostify convert`)")
    parser.add_argument("--ratios", default="2,4")
    parser.add_argument("--batch-sizes", default="1,16")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    parser.add_argument("--every-conv", action="store_true", help="convert the stem and output convs too (as the paper's counts)")
    parser.add_argument("--compile", action="store_true", help="also time every model under torch.compile")
    parser.add_argument("--freeze", action="store_true", help="also time the deploy form and the best original frozen (ghostify.freeze)")
    parser.add_argument("--share-across-shortcuts", action="store_true",
                        help="one channel assignment across option-A shortcuts (GhostConfig.share_across_shortcuts)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"device={args.device} threads={torch.get_num_threads()} repeats={args.repeats} torch={torch.__version__}")
    header = (f"{'model':<16} {'mode':>8} {'batch':>5} {'ratio':>5} {'MACs/img':>9} {'orig ms':>8} {'orig+fold':>9} {'fold+NHWC':>9} "
              f"{'+packed':>8} {'ghost ms':>8} {'unpacked':>8} {'deploy ms':>9} {'ghost x':>7} {'deploy x':>8} {'vs fold':>7} {'vs NHWC':>7} {'vs best':>7}")
    if args.freeze:
        header += f" {'frozen':>8} {'fz best':>8} {'frozen x':>8} {'fz vs fz':>8}"
    print(header)
    print("-" * len(header))
    options = {"skip_stem": False, "skip_output": False} if args.every_conv else {}
    options["share_across_shortcuts"] = args.share_across_shortcuts
    for item in args.models.split(","):
        spec, _, size = item.rpartition("@")
        resolved = ghostify.resolve_model(spec)
        model = resolved.model.eval()
        if not resolved.weights_note or "random" in resolved.weights_note:
            trained_like_norms(model)
        input_size = (3, int(size), int(size))
        one = example_input(input_size, 1)
        fused = bn_folded(model)
        nhwc = to_channels_last(copy.deepcopy(fused if fused is not None else model))
        best = prepacked.with_prepacked_convs(nhwc)
        converted = {int(r): ghostify.convert(model, ratio=int(r), **options).eval() for r in args.ratios.split(",")}
        deployed = {r: ghostify.deploy(c) for r, c in converted.items()}
        name = Path(spec).name if ".py:" in spec else spec
        for ratio, d in deployed.items():
            print(f"{name} s={ratio}: {d.ghostify_deploy.summary()}")
        for batch in (int(b) for b in args.batch_sizes.split(",")):
            x = example_input(input_size, batch)
            for ratio, ghost in converted.items():
                eager = [model, ghost, deployed[ratio], nhwc, best, Unpacked(deployed[ratio])]
                eager += [ghostify.freeze(deployed[ratio]), ghostify.freeze(best)] if args.freeze else []
                eager += [fused] if fused is not None else []
                for mode in ("eager", "compiled") if args.compile else ("eager",):
                    candidates = eager if mode == "eager" else [torch.compile(m) for m in eager]
                    stats = measure_latencies(candidates, x, warmup=args.warmup, repeats=args.repeats, device=args.device)
                    orig, train, deploy, layout, packed, unpacked = (s.median_ms for s in stats[:6])
                    fold = stats[-1].median_ms if fused is not None else float("nan")
                    macs = count_macs(deployed[ratio], one).total
                    frozen = ""
                    if args.freeze:
                        frozen_deploy, frozen_best = stats[6].median_ms, stats[7].median_ms
                        frozen = (f" {frozen_deploy:>8.2f} {frozen_best:>8.2f} {orig / frozen_deploy:>7.2f}x "
                                  f"{frozen_best / frozen_deploy:>7.2f}x")
                    print(
                        f"{name[-16:]:<16} {mode:>8} {batch:>5} {ratio:>5} {macs / 1e9:>8.3f}G {orig:>8.2f} {fold:>9.2f} "
                        f"{layout:>9.2f} {packed:>8.2f} {train:>8.2f} {unpacked:>8.2f} {deploy:>9.2f} {orig / train:>6.2f}x {orig / deploy:>7.2f}x "
                        f"{fold / deploy:>6.2f}x {layout / deploy:>6.2f}x {min(layout, packed) / deploy:>6.2f}x{frozen}", flush=True,
                    )
        print(f"{name} original: {count_macs(model, one).total / 1e9:.3f}G MACs/img")


if __name__ == "__main__":
    main()
