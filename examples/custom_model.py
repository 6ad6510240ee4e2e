"""Convert a user-defined model with the Python API, compare it, save it and load it back.

    python examples/custom_model.py
"""

from __future__ import annotations

import tempfile

import torch
import torch.nn.functional as F
from torch import nn

import ghostify


class TinyNet(nn.Module):
    """A small CNN with the awkward parts real models have: a reused conv, a depthwise conv, a functional conv."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 32, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(32)
        self.block = nn.Conv2d(32, 32, 3, padding=1)  # called twice in forward
        self.depthwise = nn.Conv2d(32, 32, 3, padding=1, groups=32)
        self.expand = nn.Conv2d(32, 64, 1)
        self.mix_weight = nn.Parameter(torch.randn(64, 64, 1, 1) * 0.05)  # used by F.conv2d
        self.head = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn(self.stem(x)))
        x = F.relu(self.block(x))
        x = F.relu(self.block(x))
        x = F.relu(self.expand(self.depthwise(x)))
        x = F.conv2d(x, self.mix_weight)
        return self.head(x.mean((2, 3)))


def main() -> None:
    torch.manual_seed(0)
    model = TinyNet().eval()
    print(ghostify.plan_conversion(model, ratio=2).to_dict()["layers"][0])
    converted = ghostify.convert(model, ratio=2, skip_stem=True)
    report = ghostify.compare(model, converted, input_size=(3, 32, 32))
    print(report)
    with tempfile.TemporaryDirectory() as tmp:
        ghostify.save(converted, f"{tmp}/tinynet")
        restored = ghostify.load(f"{tmp}/tinynet", base_model=TinyNet()).eval()
        x = torch.randn(1, 3, 32, 32)
        with torch.no_grad():
            same = torch.equal(converted.eval()(x), restored(x))
        print(f"save/load round trip gives identical outputs: {same}")


if __name__ == "__main__":
    main()
