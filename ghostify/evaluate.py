"""Accuracy on labelled images: top-1 of the original and converted models, and how often they agree.

Images come from an ImageFolder tree (``root/<class>/*.png``; classes in sorted folder order,
which is how the model's label indices must be ordered). When the folders cannot be the model's
classes (their number differs from the model's outputs), only agreement is measured.
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
    the fraction of images where the converted model's top-1 class equals the original's.

    ``top1_*`` are None when the labels cannot be the model's classes: unlabelled images
    (``data_classes`` 0), or ``data_classes`` (class folders) differing from ``model_classes`` (the
    width of the model's output); agreement needs no labels and is always measured. Both counts
    are None when unknown.
    """

    dataset: str
    samples: int
    top1_before: float | None
    top1_after: float | None
    agreement: float
    data_classes: int | None = None
    model_classes: int | None = None

    @property
    def classes_mismatch(self) -> bool:
        """True when the data has class folders and their number differs from the model's output width."""
        return bool(self.data_classes) and self.model_classes is not None and self.data_classes != self.model_classes


def dataset_classes(dataset: Dataset) -> list[str] | None:
    """The class names of ``dataset`` (an ImageFolder, ``ghostify.data.ImageFiles`` or a ``Subset``
    of one); ``[]`` for unlabelled images, None when the dataset does not say."""
    while isinstance(dataset, Subset):
        dataset = dataset.dataset
    classes = getattr(dataset, "classes", None)
    return None if classes is None else list(classes)


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
    if len(input_size) != 3:
        raise GhostifyError(f"images need an input size of C,H,W (three numbers, e.g. 3,224,224), got {','.join(map(str, input_size))}.")
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
    """Top-1 of both models and their agreement on ``dataset``, in eval mode (training flags restored).

    Top-1 is left out (None) when the dataset's classes cannot be the model's: it is unlabelled,
    or its number of class folders differs from the model's number of outputs (a 1000-class
    ImageNet model on CIFAR-10's 10 folders); ``AccuracyStats.classes_mismatch`` then says so.
    """
    classes = dataset_classes(dataset)
    flags = original.training, converted.training
    original.eval(), converted.eval()
    correct_before = correct_after = agree = total = 0
    model_classes: int | None = None
    try:
        for images, labels in DataLoader(dataset, batch_size=batch_size, shuffle=False):
            scores = original(images.to(model_device(original)))
            model_classes = int(scores.shape[-1]) if scores.ndim == 2 else None
            pred_before = scores.argmax(1).cpu()
            pred_after = converted(images.to(model_device(converted))).argmax(1).cpu()
            correct_before += int((pred_before == labels).sum())
            correct_after += int((pred_after == labels).sum())
            agree += int((pred_before == pred_after).sum())
            total += len(labels)
    finally:
        original.train(flags[0]), converted.train(flags[1])
    if total == 0:
        raise GhostifyError(f"{name} holds no images; point --data at an ImageFolder root with images.")
    data_classes = None if classes is None else len(classes)
    stats = AccuracyStats(name, total, correct_before / total, correct_after / total, agree / total,
                          data_classes=data_classes, model_classes=model_classes)
    if data_classes == 0 or stats.classes_mismatch:
        stats.top1_before = stats.top1_after = None
    return stats
