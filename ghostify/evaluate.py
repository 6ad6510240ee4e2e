"""Accuracy on labelled images: top-1 of the original and converted models, and how often they agree.

Images come from an ImageFolder tree (``root/<class>/*.png``; classes in sorted folder order,
which is how the model's label indices must be ordered).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from .data import IMAGENET_MEAN, IMAGENET_STD
from .errors import GhostifyError
from .measure import model_device



@dataclass
class AccuracyStats:
    """Top-1 accuracy before/after on ``samples`` images of ``dataset``, and teacher agreement:
    the fraction of images where the converted model's top-1 class equals the original's."""

    dataset: str
    samples: int
    top1_before: float
    top1_after: float
    agreement: float


def normalization_for(model: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) from timm's ``pretrained_cfg`` when the model has one, else ImageNet's."""
    config = getattr(model, "pretrained_cfg", None) or {}
    mean, std = config.get("mean"), config.get("std")
    if mean and std:
        return tuple(mean), tuple(std)
    return IMAGENET_MEAN, IMAGENET_STD


def image_folder(
    root: str | Path,
    input_size: Sequence[int],
    *,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    limit: int | None = None,
) -> Dataset:
    """An ImageFolder dataset resized to ``input_size`` (C, H, W), scaled to [0, 1] then normalised."""
    from torchvision import datasets, transforms

    root = Path(root)
    if not root.is_dir():
        raise GhostifyError(f"no such data directory: {root}; pass an ImageFolder root (one sub-folder of images per class).")
    channels, height, width = input_size
    steps = [transforms.Resize((height, width))]
    if channels == 1:
        steps.append(transforms.Grayscale())
    steps += [transforms.ToTensor(), transforms.Normalize(mean, std)]
    try:
        dataset = datasets.ImageFolder(str(root), transform=transforms.Compose(steps))
    except (FileNotFoundError, OSError) as err:
        raise GhostifyError(f"cannot read images from {root}: {err}. Expected {root}/<class>/<image>.png.") from None
    if limit is not None and limit < len(dataset):
        # every k-th image, so a limited run still covers every class
        step = len(dataset) / limit
        dataset = Subset(dataset, [int(i * step) for i in range(limit)])
    return dataset


@torch.no_grad()
def evaluate(
    original: nn.Module, converted: nn.Module, dataset: Dataset, *, name: str = "data", batch_size: int = 250
) -> AccuracyStats:
    """Top-1 of both models and their agreement on ``dataset``, in eval mode (training flags restored)."""
    flags = original.training, converted.training
    original.eval(), converted.eval()
    correct_before = correct_after = agree = total = 0
    try:
        for images, labels in DataLoader(dataset, batch_size=batch_size, shuffle=False):
            pred_before = original(images.to(model_device(original))).argmax(1).cpu()
            pred_after = converted(images.to(model_device(converted))).argmax(1).cpu()
            correct_before += int((pred_before == labels).sum())
            correct_after += int((pred_after == labels).sum())
            agree += int((pred_before == pred_after).sum())
            total += len(labels)
    finally:
        original.train(flags[0]), converted.train(flags[1])
    if total == 0:
        raise GhostifyError(f"{name} holds no images; point --data at an ImageFolder root with images.")
    return AccuracyStats(name, total, correct_before / total, correct_after / total, agree / total)

