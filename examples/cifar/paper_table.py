"""Parameters and MACs of ghostified CIFAR ResNets beside the GhostNet paper's Table (CIFAR-10).

    python examples/cifar/paper_table.py

The paper (Han et al., CVPR 2020, Table 3) converts every conv of ResNet-56 at s=2, d=3:
0.85 M -> 0.43 M parameters, 125 M -> 63 M FLOPs (multiply-adds), 93.0 % -> 92.7 % top-1.
ghostify keeps the 3-channel stem conv by default (as the paper's ImageNet models do); both
settings are printed. MACs are fvcore's count (one multiply-add = one MAC) at 32x32.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parents[1]))

import ghostify  # noqa: E402
from cifar_resnet import resnet20, resnet32, resnet56  # noqa: E402

PAPER = {("resnet56", 2): "0.43 M / 63 M (paper)"}


def main() -> None:
    print(f"{'model':<10} {'s':>2} {'stem':<9} {'params':>17} {'MACs':>19}  paper")
    for name, build in (("resnet20", resnet20), ("resnet32", resnet32), ("resnet56", resnet56)):
        model = build().eval()
        for ratio in (2, 4):
            for skip_stem in (True, False):
                report = ghostify.compare(model, ghostify.convert(model, ratio=ratio, skip_stem=skip_stem), input_size=(3, 32, 32))
                params = f"{report.params_before / 1e6:.2f} -> {report.params_after / 1e6:.2f} M"
                macs = f"{report.macs_before / 1e6:.0f} -> {report.macs_after / 1e6:.1f} M"
                paper = PAPER.get((name, ratio), "") if not skip_stem else ""
                print(f"{name:<10} {ratio:>2} {'kept' if skip_stem else 'converted':<9} {params:>17} {macs:>19}  {paper}")


if __name__ == "__main__":
    main()
