"""Images for calibration, distillation and evaluation: folders in, model-ready tensors out.

``--data`` may be an ImageFolder tree (``DIR/<class>/<image>``, labels in sorted folder order) or
a flat folder of images (unlabelled); several roots are concatenated (``train/`` and ``val/``).
``InputPipeline`` turns images into inputs the way the model expects: timm's data config for
timm models, else the given size, mean and std.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from .errors import GhostifyError
from .ghost_module import first_conv_dims

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".gif", ".ppm", ".pgm"})
UNLABELLED = -1
# Below this side length, augmentation pads and crops (the CIFAR recipe) instead of a resized crop.
_SMALL_IMAGE = 64
# Training augmentations: random crop + flip, or that followed by TrivialAugment (Müller & Hutter 2021: one
# random photometric or geometric op per image at a random strength), which distils better from few images.
AUGMENTATIONS = ("crop-flip", "trivialaugment")
# Decoded images are kept in memory when the whole set has at most this many pixels (~300 MB).
_CACHE_PIXELS = 100_000_000


class DataError(GhostifyError, ValueError):
    """``--data`` is missing, empty, unreadable or does not fit the model."""


@dataclass(frozen=True)
class InputPipeline:
    """How an image becomes a model input: size (C, H, W), normalisation, resize rule."""

    input_size: tuple[int, int, int]
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    interpolation: str = "bilinear"
    crop_pct: float = 1.0

    @classmethod
    def for_model(
        cls,
        model: nn.Module,
        input_size: Sequence[int] | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> InputPipeline:
        """timm's data config when ``model`` has one; explicit arguments win over it.

        ``DataError`` for a model that does not take images: one whose first conv is a ``Conv1d``
        (C,L inputs) or ``Conv3d`` (C,T,H,W), or an ``input_size`` that is not C,H,W.
        """
        dims = first_conv_dims(model)
        if dims not in (None, 2):
            kind = "Conv1d, so it takes C,L inputs" if dims == 1 else "Conv3d, so it takes C,T,H,W inputs (video)"
            raise DataError(
                f"ghostify reads --data as images (C,H,W), but this model's first conv is a {kind}. Measuring accuracy, "
                "calibrating and distilling from image folders work on image models; in Python, pass ghostify.distill "
                "a Dataset of the model's own inputs instead."
            )
        config = dict(getattr(model, "pretrained_cfg", None) or {})
        size = tuple(input_size or config.get("input_size") or (3, 224, 224))
        if len(size) != 3:
            raise DataError(f"images need an input size of C,H,W (three numbers, e.g. 3,224,224), got {','.join(map(str, size))}.")
        channels = size[0]
        mean = tuple(mean or config.get("mean") or (IMAGENET_MEAN if channels == 3 else (0.5,) * channels))
        std = tuple(std or config.get("std") or (IMAGENET_STD if channels == 3 else (0.5,) * channels))
        if len(mean) != channels or len(std) != channels:
            raise DataError(f"--mean and --std need {channels} values (one per input channel), got {len(mean)} and {len(std)}.")
        if any(s <= 0 for s in std):
            raise DataError(f"--std values must be > 0, got {std}.")
        # timm's eval crop only makes sense at the size the model was configured for
        crop = float(config.get("crop_pct", 1.0)) if input_size is None else 1.0
        return cls((int(size[0]), int(size[1]), int(size[2])), mean, std, str(config.get("interpolation", "bilinear")), crop)

    def transform(self, train: bool = False, augment: str = "crop-flip") -> Callable[[Any], torch.Tensor]:
        """PIL image -> normalised tensor; ``train`` adds random crops and flips, and with
        ``augment="trivialaugment"`` one TrivialAugment op per image."""
        from torchvision import transforms as T

        if augment not in AUGMENTATIONS:
            raise DataError(f"augment must be one of {', '.join(AUGMENTATIONS)}, got {augment!r}.")

        channels, height, width = self.input_size
        mode = T.InterpolationMode.BICUBIC if self.interpolation == "bicubic" else T.InterpolationMode.BILINEAR
        steps: list[Any] = [_ConvertMode("L" if channels == 1 else "RGB")]
        if train and max(height, width) <= _SMALL_IMAGE:
            pad = max(1, max(height, width) // 8)
            steps += [T.Resize((height, width), interpolation=mode), T.RandomCrop((height, width), padding=pad), T.RandomHorizontalFlip()]
        elif train:
            steps += [T.RandomResizedCrop((height, width), scale=(0.25, 1.0), interpolation=mode), T.RandomHorizontalFlip()]
        elif self.crop_pct < 1.0:
            steps += [T.Resize(int(round(min(height, width) / self.crop_pct)), interpolation=mode), T.CenterCrop((height, width))]
        else:
            steps += [T.Resize((height, width), interpolation=mode)]
        if train and augment == "trivialaugment":
            steps.append(T.TrivialAugmentWide(interpolation=mode))
        steps += [T.ToTensor(), T.Normalize(self.mean, self.std)]
        return T.Compose(steps)


@dataclass(frozen=True)
class _ConvertMode:
    """``image.convert(mode)`` as a picklable transform (DataLoader workers started with spawn pickle it)."""

    mode: str

    def __call__(self, image: Any) -> Any:
        return image.convert(self.mode)


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def _scan(root: Path) -> tuple[list[tuple[Path, int]], list[str]]:
    """Images under ``root``: labelled by sub-folder when it has class folders, else unlabelled."""
    if not root.exists():
        raise DataError(f"no such data directory: {root}; pass a folder of images or an ImageFolder root (DIR/<class>/<image>).")
    if not root.is_dir():
        raise DataError(f"{root} is not a directory; pass a folder of images or an ImageFolder root (DIR/<class>/<image>).")
    try:
        class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        if class_dirs:
            items = [(path, label) for label, folder in enumerate(class_dirs) for path in sorted(folder.rglob("*")) if _is_image(path)]
            classes = [folder.name for folder in class_dirs]
        else:
            items = [(path, UNLABELLED) for path in sorted(root.iterdir()) if _is_image(path)]
            classes = []
    except PermissionError as err:
        raise DataError(f"cannot read {root}: {err.strerror} ({err.filename}); check its permissions.") from None
    if not items:
        suffixes = ", ".join(sorted(IMAGE_SUFFIXES))
        raise DataError(f"{root} holds no images ({suffixes}); pass a folder of images or an ImageFolder root (DIR/<class>/<image>).")
    return items, classes


def _open_image(path: Path):
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.load()
            if image.mode.startswith("I;16") or image.mode == "I":  # 16-bit grey: scale to 8 bits, not clip
                image = image.convert("I").point(lambda v: v / 256).convert("L")
            return image.convert("RGB") if image.mode not in ("RGB", "L") else image.copy()
    except (OSError, UnidentifiedImageError, ValueError) as err:
        raise DataError(f"cannot read image {path}: {err}; remove or replace the file.") from None


class ImageFiles(Dataset):
    """Images from one or more folders, as ``(tensor, label)``; ``label`` is -1 when unlabelled.

    With ``seed`` set, ``set_epoch(e)`` makes each image's random augmentation a function of
    (seed, epoch, index) alone, so a run is reproducible across worker counts, processes and resumes.
    """

    def __init__(
        self, roots: Sequence[str | Path] | str | Path, transform: Callable[[Any], torch.Tensor], *,
        seed: int | None = None, cache: bool | None = None,
    ) -> None:
        roots = [roots] if isinstance(roots, (str, Path)) else list(roots)
        if not roots:
            raise DataError("no data given; pass --data DIR (a folder of images or an ImageFolder root).")
        self.items: list[tuple[Path, int]] = []
        self.classes: list[str] = []
        self.roots = [Path(root) for root in roots]
        for root in self.roots:
            items, classes = _scan(root)
            if classes and self.classes and classes != self.classes:
                raise DataError(
                    f"{root} has classes {_preview(classes)} but {self.roots[0]} has {_preview(self.classes)}; "
                    "labelled folders passed together must have the same class folders."
                )
            if not classes:
                items = [(path, UNLABELLED) for path, _ in items]
            self.classes = self.classes or classes
            self.items += items
        if any(label == UNLABELLED for _, label in self.items):  # a mix of flat and labelled: no labels
            self.items = [(path, UNLABELLED) for path, _ in self.items]
            self.classes = []
        self.transform = transform
        self.seed = seed
        self.epoch = 0
        if cache is None:  # small images: decode once, keep in memory (5,000 CIFAR images are 15 MB)
            width, height = _open_image(self.items[0][0]).size
            cache = width * height * len(self.items) <= _CACHE_PIXELS
        self._cache: dict[int, Any] | None = {} if cache else None

    @property
    def labelled(self) -> bool:
        return bool(self.classes)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.items[index]
        if self._cache is None:
            image = _open_image(path)
        else:
            image = self._cache.get(index)
            if image is None:
                image = self._cache[index] = _open_image(path)
        if self.seed is None:
            return self.transform(image), label
        with torch.random.fork_rng(devices=[]):
            # the CPU generator alone: torch.manual_seed would also queue a CUDA reseed with a stack trace each time
            torch.random.default_generator.manual_seed(sample_seed(self.seed, self.epoch, index))
            return self.transform(image), label

    def describe(self) -> str:
        labels = f"{len(self.classes)} classes" if self.labelled else "unlabelled"
        return f"{', '.join(map(str, self.roots))} ({len(self)} images, {labels})"


def sample_seed(*parts: int) -> int:
    """A 63-bit seed derived from ``parts`` (stable across runs and platforms)."""
    digest = hashlib.blake2b(",".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def _preview(names: Sequence[str], limit: int = 5) -> str:
    shown = ", ".join(names[:limit])
    return f"[{shown}{', ...' if len(names) > limit else ''}] ({len(names)})"


def check_image_size(dataset: ImageFiles, pipeline: InputPipeline) -> None:
    """Refuse images far smaller than the model's input: almost always a wrong ``--input-size``."""
    path = dataset.items[0][0]
    width, height = _open_image(path).size
    _, want_h, want_w = pipeline.input_size
    if width * 2 < want_w or height * 2 < want_h:
        raise DataError(
            f"images such as {path} are {width}x{height} but the model takes {want_w}x{want_h}; upscaling that far "
            f"loses the model's accuracy. Pass --input-size {pipeline.input_size[0]},{height},{width} (input_size= in Python) if the model "
            "works at that size, or use larger images."
        )


def check_labels(dataset: Dataset, num_outputs: int) -> None:
    """Refuse labelled data whose class count differs from the model's number of outputs."""
    classes = getattr(dataset, "classes", None)
    if classes and len(classes) != num_outputs:
        raise DataError(
            f"the data has {len(classes)} class folders ({_preview(classes)}) but the model predicts {num_outputs} classes; "
            "label i must be the model's class i (folders in sorted order). Use data with the model's classes, "
            "or a flat folder of images (labels are optional)."
        )


def as_dataset(
    data: Any, pipeline: InputPipeline | None = None, *, train: bool = False, seed: int | None = None, augment: str = "crop-flip",
) -> Dataset:
    """A Dataset from a path, a list of paths, or a Dataset (returned as is: its own transforms apply)."""
    if isinstance(data, Dataset):
        return data
    if isinstance(data, (str, Path)) or (isinstance(data, (list, tuple)) and all(isinstance(d, (str, Path)) for d in data)):
        if pipeline is None:
            raise DataError("reading images from a folder needs an InputPipeline (input size, mean, std).")
        dataset = ImageFiles(data, pipeline.transform(train=train, augment=augment), seed=seed)
        check_image_size(dataset, pipeline)
        return dataset
    raise DataError(f"data must be a folder path, a list of them, a Dataset or a DataLoader; got {type(data).__name__}.")


def batches(data: Any, pipeline: InputPipeline | None = None, *, batch_size: int = 64, limit: int | None = None) -> list[torch.Tensor]:
    """Up to ``limit`` images of ``data`` (evaluation transform), as a list of input batches.

    ``data`` may be a DataLoader, a Dataset, a path or a list of paths. A limited sample is spread
    evenly over the data, so that every class is represented.
    """
    if isinstance(data, torch.Tensor):
        chunks = list(data[:limit].split(batch_size)) if limit else list(data.split(batch_size))
        return chunks
    if isinstance(data, DataLoader):
        out, seen = [], 0
        for batch in data:
            images = batch[0] if isinstance(batch, (list, tuple)) else batch
            out.append(images)
            seen += len(images)
            if limit is not None and seen >= limit:
                break
        return out
    dataset = as_dataset(data, pipeline)
    count = len(dataset) if limit is None else min(limit, len(dataset))
    if count == 0:
        raise DataError("the data holds no images.")
    step = len(dataset) / count
    indices = [int(i * step) for i in range(count)]
    images = [_first(dataset[i]) for i in indices]
    return list(torch.stack(images).split(batch_size))


def _first(sample: Any) -> torch.Tensor:
    return sample[0] if isinstance(sample, (list, tuple)) else sample
