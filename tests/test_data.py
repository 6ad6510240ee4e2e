"""ghostify.data: image folders in, model-ready tensors out; errors that say what to fix; seeded augmentation."""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.transforms  # noqa: F401 - imported at collection, not inside the first test's time
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from ghostify.data import (
    UNLABELLED,
    DataError,
    ImageFiles,
    InputPipeline,
    as_dataset,
    batches,
    check_image_size,
    check_labels,
    sample_seed,
)
from ghostify.errors import GhostifyError

pytestmark = pytest.mark.usefixtures("single_thread")

# mean 0 / std 1: tensors are the raw [0, 1] pixel values, so colours can be checked exactly
RAW = InputPipeline((3, 16, 16), mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))


def _png(path: Path, size: tuple[int, int] = (16, 16), seed: int = 0, mode: str = "RGB") -> Path:
    """A random-noise image of ``size`` (width, height) saved as ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    width, height = size
    pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels, "RGB").convert(mode).save(path)
    return path


def _tree(root: Path, classes: dict[str, int], size: tuple[int, int] = (16, 16), seed: int = 0) -> Path:
    """An ImageFolder tree ``root/<class>/<i>.png`` with ``classes[name]`` images each."""
    for c, (name, count) in enumerate(classes.items()):
        for i in range(count):
            _png(root / name / f"{i}.png", size, seed=seed + 100 * c + i)
    return root


def _flat(root: Path, count: int, size: tuple[int, int] = (16, 16), seed: int = 0) -> Path:
    for i in range(count):
        _png(root / f"img{i}.png", size, seed=seed + i)
    return root


# --- folders: labels, roots, errors ---------------------------------------------------------------


def test_labelled_tree_gives_sorted_class_labels(tmp_path):
    root = _tree(tmp_path / "train", {"dog": 2, "cat": 3, "emu": 1})
    (root / "notes.txt").write_text("not an image")  # a stray file beside the class folders
    (root / "cat" / ".hidden.png").write_bytes(b"garbage")  # hidden files are skipped
    (root / "cat" / "readme.md").write_text("skip me")
    dataset = ImageFiles(root, RAW.transform())
    assert dataset.labelled and dataset.classes == ["cat", "dog", "emu"]  # sorted folder order
    assert len(dataset) == 6
    assert [label for _, label in dataset.items] == [0, 0, 0, 1, 1, 2]
    assert [path.parent.name for path, _ in dataset.items] == ["cat"] * 3 + ["dog"] * 2 + ["emu"]
    image, label = dataset[3]
    assert image.shape == (3, 16, 16) and image.dtype == torch.float32 and label == 1
    # the tensor is the image's own pixels (mean 0, std 1, same size: no resampling)
    pixels = np.asarray(Image.open(dataset.items[3][0]).convert("RGB"), dtype=np.float32) / 255
    torch.testing.assert_close(image, torch.from_numpy(pixels).permute(2, 0, 1), atol=1e-6, rtol=0)
    assert "3 classes" in dataset.describe() and "6 images" in dataset.describe()


def test_flat_folder_is_unlabelled(tmp_path):
    root = _flat(tmp_path / "flat", 4)
    dataset = ImageFiles(root, RAW.transform())
    assert not dataset.labelled and dataset.classes == []
    assert len(dataset) == 4
    assert all(dataset[i][1] == UNLABELLED == -1 for i in range(4))
    assert [p.name for p, _ in dataset.items] == [f"img{i}.png" for i in range(4)]
    assert "unlabelled" in dataset.describe()
    check_labels(dataset, 10)  # no labels: any number of model outputs is fine


def test_two_roots_are_concatenated(tmp_path):
    train = _tree(tmp_path / "train", {"a": 2, "b": 1})
    val = _tree(tmp_path / "val", {"a": 1, "b": 2}, seed=50)
    dataset = ImageFiles([train, val], RAW.transform())
    assert dataset.classes == ["a", "b"] and len(dataset) == 6
    assert [label for _, label in dataset.items] == [0, 0, 1, 0, 1, 1]
    assert [p.parts[-3] for p, _ in dataset.items] == ["train"] * 3 + ["val"] * 3
    assert str(train) in dataset.describe() and str(val) in dataset.describe()
    # each root alone gives its own part, in the same order
    alone = ImageFiles(val, RAW.transform())
    assert torch.equal(dataset[4][0], alone[1][0])


def test_flat_and_labelled_roots_together_are_unlabelled(tmp_path):
    dataset = ImageFiles([_tree(tmp_path / "tree", {"a": 1, "b": 1}), _flat(tmp_path / "flat", 2)], RAW.transform())
    assert not dataset.labelled and len(dataset) == 4
    assert {label for _, label in dataset.items} == {UNLABELLED}


def test_mismatched_class_folders_are_an_error(tmp_path):
    first = _tree(tmp_path / "one", {"cat": 1, "dog": 1})
    second = _tree(tmp_path / "two", {"cat": 1, "dog": 1, "emu": 1})
    with pytest.raises(DataError, match="same class folders") as info:
        ImageFiles([first, second], RAW.transform())
    message = str(info.value)
    assert str(first) in message and str(second) in message and "emu" in message


def test_missing_data_directory(tmp_path):
    with pytest.raises(DataError, match="no such data directory") as info:
        ImageFiles(tmp_path / "nope", RAW.transform())
    assert str(tmp_path / "nope") in str(info.value)
    with pytest.raises(DataError, match="no data given"):
        ImageFiles([], RAW.transform())


def test_a_file_is_not_a_data_directory(tmp_path):
    image = _png(tmp_path / "one.png")
    with pytest.raises(DataError, match="is not a directory"):
        ImageFiles(image, RAW.transform())


@pytest.mark.parametrize("layout", ["empty", "only text", "empty class folders"])
def test_folder_without_images(tmp_path, layout):
    root = tmp_path / "data"
    root.mkdir()
    if layout == "only text":
        (root / "a.txt").write_text("x")
        (root / ".b.png").write_bytes(b"hidden")
    elif layout == "empty class folders":
        (root / "cat").mkdir()
        (root / "dog").mkdir()
    with pytest.raises(DataError, match="holds no images") as info:
        ImageFiles(root, RAW.transform())
    assert str(root) in str(info.value) and ".png" in str(info.value)


def test_unreadable_image_is_named(tmp_path):
    root = _flat(tmp_path / "data", 2)
    bad = root / "img1.png"
    bad.write_bytes(b"\x89PNG not really a png at all")
    dataset = ImageFiles(root, RAW.transform())  # only the first image is opened up front
    dataset[0]
    with pytest.raises(DataError, match="cannot read image") as info:
        dataset[1]
    assert str(bad) in str(info.value) and "remove or replace" in str(info.value)
    assert isinstance(info.value, GhostifyError) and isinstance(info.value, ValueError)


def test_unreadable_first_image_fails_at_once(tmp_path):
    root = _flat(tmp_path / "data", 2)
    bad = root / "img0.png"
    bad.write_bytes(b"garbage")
    with pytest.raises(DataError, match="cannot read image") as info:
        as_dataset(root, RAW)
    assert str(bad) in str(info.value)


def test_truncated_image_is_named(tmp_path):
    root = _flat(tmp_path / "data", 2, size=(32, 32))
    path = root / "img1.png"
    path.write_bytes(path.read_bytes()[:60])  # a valid PNG header, then nothing
    dataset = ImageFiles(root, RAW.transform(), cache=False)
    with pytest.raises(DataError, match=re.escape(str(path))):
        dataset[1]


# --- image size and labels vs the model ------------------------------------------------------------


def test_images_far_too_small_suggest_input_size(tmp_path):
    root = _flat(tmp_path / "small", 2, size=(12, 20))  # 12 wide, 20 high
    pipeline = InputPipeline((3, 64, 64))
    with pytest.raises(DataError, match="--input-size 3,20,12") as info:
        as_dataset(root, pipeline)
    assert "12x20" in str(info.value) and "64x64" in str(info.value) and "img0.png" in str(info.value)
    with pytest.raises(DataError, match="--input-size"):
        batches(root, pipeline)
    # half the model's size is still accepted (and resized)
    check_image_size(ImageFiles(_flat(tmp_path / "half", 1, size=(32, 32)), pipeline.transform()), pipeline)
    assert batches(tmp_path / "half", pipeline)[0].shape == (1, 3, 64, 64)


def test_check_labels_class_count_mismatch(tmp_path):
    dataset = ImageFiles(_tree(tmp_path / "d", {"a": 1, "b": 1, "c": 1}), RAW.transform())
    check_labels(dataset, 3)
    with pytest.raises(DataError, match="3 class folders") as info:
        check_labels(dataset, 10)
    assert "predicts 10 classes" in str(info.value) and "[a, b, c]" in str(info.value)
    check_labels(TensorDataset(torch.zeros(2, 3, 4, 4), torch.zeros(2)), 10)  # no class list: nothing to check


# --- colour modes -----------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "LA", "CMYK", "1", "RGB"])
def test_colour_modes_convert_to_rgb(tmp_path, mode):
    colour = (200, 40, 120)
    image = Image.new("RGB", (16, 16), colour)
    if mode == "L":
        image = Image.new("L", (16, 16), 90)
    elif mode == "1":
        image = Image.new("1", (16, 16), 1)
    elif mode == "P":
        image = image.quantize(4)
    elif mode == "RGBA":
        image = image.convert("RGBA")
        image.putalpha(30)  # mostly transparent: the colour, not the alpha, is kept
    else:
        image = image.convert(mode)
    assert image.mode == mode
    image.save(tmp_path / ("x.tif" if mode == "CMYK" else "x.png"))
    dataset = ImageFiles(tmp_path, RAW.transform())
    tensor, _ = dataset[0]
    assert tensor.shape == (3, 16, 16)
    expected = {"L": (90, 90, 90), "1": (255, 255, 255)}.get(mode, colour)
    if mode in ("CMYK", "LA"):  # LA is grey; PIL's CMYK -> RGB is not an exact inverse
        expected = Image.new("RGB", (1, 1), colour).convert(mode).convert("RGB").getpixel((0, 0))
    want = torch.tensor(expected, dtype=torch.float32)[:, None, None].expand(3, 16, 16) / 255
    torch.testing.assert_close(tensor, want, atol=1 / 255 + 1e-6, rtol=0)
    # a one-channel model gets one channel
    gray = ImageFiles(tmp_path, InputPipeline((1, 16, 16), mean=(0.0,), std=(1.0,)).transform())[0][0]
    assert gray.shape == (1, 16, 16)


def test_sixteen_bit_grayscale_keeps_its_range(tmp_path):
    """16-bit PNGs (mode I;16) must be scaled to 8 bits, not clipped to white."""
    values = (np.arange(256, dtype=np.uint32).reshape(16, 16) * 256).astype(np.uint16)  # 0 .. 65280
    Image.fromarray(values).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode.startswith("I;16")
    tensor, _ = ImageFiles(tmp_path, RAW.transform())[0]
    want = torch.from_numpy((values >> 8).astype(np.float32) / 255)
    torch.testing.assert_close(tensor[0], want, atol=1 / 255 + 1e-6, rtol=0)


# --- seeded augmentation ----------------------------------------------------------------------------


def test_augmentation_is_a_function_of_seed_epoch_index(tmp_path):
    root = _flat(tmp_path / "d", 6)
    transform = RAW.transform(train=True)
    first = ImageFiles(root, transform, seed=7)
    second = ImageFiles(root, RAW.transform(train=True), seed=7)

    def epoch(dataset: ImageFiles, e: int, order=range(6)) -> list[torch.Tensor]:
        dataset.set_epoch(e)
        return [dataset[i][0] for i in order]

    torch.manual_seed(1)
    e0 = epoch(first, 0)
    torch.manual_seed(999)  # the global RNG does not matter
    again = epoch(second, 0, order=reversed(range(6)))[::-1]  # nor the order samples are read in
    assert all(torch.equal(a, b) for a, b in zip(e0, again))
    # different epochs crop and flip differently; coming back to epoch 0 gives epoch 0 again
    e1 = epoch(first, 1)
    assert sum(not torch.equal(a, b) for a, b in zip(e0, e1)) >= 4
    assert all(torch.equal(a, b) for a, b in zip(e0, epoch(first, 0)))
    # another seed is another augmentation
    other = ImageFiles(root, transform, seed=8)
    assert sum(not torch.equal(a, b) for a, b in zip(e0, epoch(other, 0))) >= 4
    # the augmentation really is random cropping/flipping of the same picture, not something else
    plain = ImageFiles(root, RAW.transform())
    assert any(not torch.equal(a, plain[i][0]) for i, a in enumerate(e0))
    assert all(a.shape == (3, 16, 16) for a in e0 + e1)


def test_trivialaugment_adds_one_random_op_after_the_crop_and_flip(tmp_path):
    root = _flat(tmp_path / "d", 8, size=(32, 32))
    pipeline = InputPipeline((3, 32, 32))
    names = [type(step).__name__ for step in pipeline.transform(train=True, augment="trivialaugment").transforms]
    assert names[:4] == ["_ConvertMode", "Resize", "RandomCrop", "RandomHorizontalFlip"] and "TrivialAugmentWide" in names
    assert "TrivialAugmentWide" not in [type(step).__name__ for step in pipeline.transform(train=True).transforms]
    assert "TrivialAugmentWide" not in [type(step).__name__ for step in pipeline.transform(augment="trivialaugment").transforms]
    cropped = InputPipeline((3, 224, 224), crop_pct=0.875)  # training crops are random crops only, never the eval crop too
    for augment in ("crop-flip", "trivialaugment"):
        names = [type(step).__name__ for step in cropped.transform(train=True, augment=augment).transforms]
        assert names[:3] == ["_ConvertMode", "RandomResizedCrop", "RandomHorizontalFlip"] and "CenterCrop" not in names
    assert "CenterCrop" in [type(step).__name__ for step in cropped.transform().transforms]
    plain = ImageFiles(root, pipeline.transform(train=True), seed=3)
    strong = ImageFiles(root, pipeline.transform(train=True, augment="trivialaugment"), seed=3)
    again = ImageFiles(root, pipeline.transform(train=True, augment="trivialaugment"), seed=3)
    images = [strong[i][0] for i in range(8)]
    assert all(torch.equal(a, again[i][0]) for i, a in enumerate(images))  # still a function of (seed, epoch, index)
    assert sum(not torch.equal(a, plain[i][0]) for i, a in enumerate(images)) >= 4  # most images get a visible op
    with pytest.raises(GhostifyError, match="augment must be one of crop-flip, trivialaugment"):
        pipeline.transform(train=True, augment="mixup")


def test_seeded_reads_leave_the_global_rng_alone(tmp_path):
    dataset = ImageFiles(_flat(tmp_path / "d", 2), RAW.transform(train=True), seed=0)
    torch.manual_seed(3)
    state = torch.get_rng_state()
    dataset[0], dataset[1]
    assert torch.equal(torch.get_rng_state(), state)


def test_sample_seed_is_stable():
    assert sample_seed(0, 1, 2) == sample_seed(0, 1, 2)
    assert len({sample_seed(0, e, i) for e in range(5) for i in range(50)}) == 250
    assert 0 <= sample_seed(2**40, 3) < 2**63
    # fixed values (blake2b): checkpoints made today must resume with the same augmentations tomorrow
    assert sample_seed(0, 0) == 5046677104938694277
    assert sample_seed(1, 2, 3) == 1517167407554927345


def test_cache_decodes_each_image_once(tmp_path):
    root = _flat(tmp_path / "d", 2)
    cached = ImageFiles(root, RAW.transform(), cache=True)
    uncached = ImageFiles(root, RAW.transform(), cache=False)
    before = cached[1][0]
    uncached[1]
    (root / "img1.png").unlink()
    assert torch.equal(cached[1][0], before)  # served from memory
    with pytest.raises(DataError, match="img1.png"):
        uncached[1]
    assert ImageFiles(root, RAW.transform())._cache is not None  # small images: cached by default


def test_dataset_pickles_for_worker_processes(tmp_path):
    """DataLoader workers started with 'spawn' (macOS, Windows) pickle the dataset and its transforms."""
    dataset = ImageFiles(_flat(tmp_path / "d", 2), RAW.transform(train=True), seed=3)
    copy = pickle.loads(pickle.dumps(dataset))
    assert torch.equal(copy[1][0], dataset[1][0])


# --- pipelines, as_dataset, batches ------------------------------------------------------------------


def test_pipeline_for_model_uses_timm_config_and_explicit_values_win():
    model = nn.Conv2d(3, 4, 1)
    model.pretrained_cfg = {"input_size": (3, 40, 40), "mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25),
                            "interpolation": "bicubic", "crop_pct": 0.875}
    pipeline = InputPipeline.for_model(model)
    assert pipeline == InputPipeline((3, 40, 40), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), "bicubic", 0.875)
    explicit = InputPipeline.for_model(model, input_size=(3, 32, 32), mean=(0.1, 0.2, 0.3))
    assert explicit.input_size == (3, 32, 32) and explicit.mean == (0.1, 0.2, 0.3)
    assert explicit.crop_pct == 1.0  # the eval crop belongs to the configured size only
    plain = InputPipeline.for_model(nn.Conv2d(1, 4, 1), input_size=(1, 28, 28))
    assert plain.mean == (0.5,) and plain.std == (0.5,)
    assert InputPipeline.for_model(nn.Conv2d(3, 4, 1)).input_size == (3, 224, 224)


@pytest.mark.parametrize("kwargs, match", [
    (dict(mean=(0.5, 0.5)), "3 values"),
    (dict(std=(0.1, 0.2, 0.3, 0.4)), "3 values"),
    (dict(std=(0.2, 0.0, 0.2)), "must be > 0"),
])
def test_pipeline_rejects_bad_normalisation(kwargs, match):
    with pytest.raises(DataError, match=match):
        InputPipeline.for_model(nn.Conv2d(3, 4, 1), input_size=(3, 8, 8), **kwargs)


def test_eval_transform_resizes_and_normalises(tmp_path):
    Image.new("RGB", (40, 30), (255, 0, 51)).save(tmp_path / "x.png")
    pipeline = InputPipeline((3, 16, 16), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    tensor = ImageFiles(tmp_path, pipeline.transform())[0][0]
    assert tensor.shape == (3, 16, 16)
    torch.testing.assert_close(tensor[:, 8, 8], torch.tensor([1.0, -1.0, 51 / 255 * 2 - 1]), atol=1e-5, rtol=0)
    cropped = InputPipeline((3, 16, 16), crop_pct=0.5).transform()(Image.open(tmp_path / "x.png"))
    assert cropped.shape == (3, 16, 16)


def test_as_dataset(tmp_path):
    tensors = TensorDataset(torch.zeros(3, 3, 8, 8), torch.zeros(3))
    assert as_dataset(tensors) is tensors
    root = _tree(tmp_path / "d", {"a": 1, "b": 1})
    dataset = as_dataset(root, RAW, train=True, seed=5)
    assert isinstance(dataset, ImageFiles) and dataset.seed == 5 and dataset.classes == ["a", "b"]
    assert len(as_dataset([root, str(root)], RAW)) == 4  # a list of roots, str or Path
    with pytest.raises(DataError, match="InputPipeline"):
        as_dataset(root)
    with pytest.raises(DataError, match="got int"):
        as_dataset(3, RAW)


def test_batches_from_every_kind_of_data(tmp_path):
    images = torch.arange(10.0)[:, None, None, None].expand(10, 3, 4, 4)
    assert [b.shape[0] for b in batches(images, batch_size=4)] == [4, 4, 2]
    assert [b.shape[0] for b in batches(images, batch_size=4, limit=5)] == [4, 1]
    loader = DataLoader(TensorDataset(images, torch.zeros(10)), batch_size=3)
    assert sum(len(b) for b in batches(loader, limit=4)) == 6  # whole loader batches, stops once enough
    assert torch.equal(torch.cat(batches(loader)), images)

    # a limited sample is spread over the data, so that every class is represented
    root = _tree(tmp_path / "d", {"a": 4, "b": 4})
    dataset = ImageFiles(root, RAW.transform())
    sample = batches(root, RAW, batch_size=64, limit=2)
    assert len(sample) == 1 and sample[0].shape == (2, 3, 16, 16)
    assert torch.equal(sample[0][0], dataset[0][0]) and torch.equal(sample[0][1], dataset[4][0])
    assert sum(len(b) for b in batches(root, RAW, batch_size=3)) == 8
