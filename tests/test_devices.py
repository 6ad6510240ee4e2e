"""Converted models keep their device and dtype; CUDA runs where a GPU exists (CI has none: skipped)."""

from __future__ import annotations

import pytest
import torch
import torchvision

import ghostify


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_conversion_keeps_dtype(dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).to(dtype).eval()
    converted = ghostify.convert(model, ratio=2)
    ghosts = [m for m in converted.modules() if isinstance(m, ghostify.GhostConv2d)]
    assert ghosts and all(g.primary.weight.dtype == dtype and g.cheap.weight.dtype == dtype for g in ghosts)
    with torch.no_grad():
        assert converted(torch.randn(1, 3, 32, 32, dtype=dtype)).dtype == dtype


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_cuda_model_converts_and_matches_cpu() -> None:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).cuda().eval()
    converted = ghostify.convert(model, ratio=2)
    assert all(p.is_cuda for p in converted.parameters()) and all(b.is_cuda for b in converted.buffers())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        on_gpu = converted(x.cuda()).cpu()
        on_cpu = converted.cpu()(x)
    torch.testing.assert_close(on_gpu, on_cpu, rtol=1e-3, atol=1e-3)
    converted.cuda().train()
    converted(x.cuda()).sum().backward()
