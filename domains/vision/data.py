"""Vision datasets: scikit-learn digits, an image folder, CIFAR-10 on disk.

Nothing is downloaded. ``digits`` ships with scikit-learn; ``image_folder``
and ``cifar10`` read files the user already has and raise
:class:`~manifold_nas.errors.UserInputError` naming the path otherwise.

All three standardise the inputs with statistics of their training split
(per channel), so a network sees roughly zero-mean, unit-variance pixels.

``image_folder`` and ``cifar10`` load every image eagerly at build time and
keep them as ``uint8`` tensors in a :class:`StandardizedImages` dataset,
which converts one image to standardised ``float32`` when indexed. Eager
loading surfaces unreadable files before training starts and decodes each
image once rather than once per epoch; ``uint8`` storage keeps memory at
one byte per pixel (CIFAR-10's 60,000 images take 184 MB). ``image_folder``
refuses folders with more than ``max_images`` images.
"""

from __future__ import annotations

import pickle
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset, TensorDataset

from manifold_nas.data import DATASETS, DataBundle
from manifold_nas.errors import UserInputError

__all__ = [
    "CIFAR10_CLASSES",
    "IMAGE_EXTENSIONS",
    "StandardizedImages",
    "channel_mean_std",
    "cifar10",
    "digits",
    "find_images",
    "image_folder",
    "stratified_split",
]

#: file extensions ``image_folder`` reads by default (compared case-insensitively)
IMAGE_EXTENSIONS: tuple[str, ...] = (
    "png",
    "jpg",
    "jpeg",
    "bmp",
    "ppm",
    "pgm",
    "tif",
    "tiff",
    "webp",
)

#: CIFAR-10 label names, used when ``batches.meta`` is absent
CIFAR10_CLASSES: tuple[str, ...] = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)

_CIFAR10_TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
_CIFAR10_TEST_FILE = "test_batch"
_CIFAR10_FOLDER = "cifar-10-batches-py"


class StandardizedImages(Dataset):
    """``uint8`` images standardised per channel when indexed.

    Item ``i`` is ``((images[i] / 255 - mean) / std, labels[i])`` with
    ``images`` of shape ``(N, C, H, W)``, ``mean`` and ``std`` of shape
    ``(C,)`` on the ``[0, 1]`` scale, and ``labels`` an ``int64`` tensor.
    """

    def __init__(self, images: Tensor, labels: Tensor, mean: Tensor, std: Tensor) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError("images must be a uint8 tensor of shape (N, C, H, W)")
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images = images
        self.labels = labels.long()
        self.mean = mean.float().view(-1, 1, 1)
        self.std = std.float().view(-1, 1, 1)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        image = self.images[index].float().div_(255.0)
        return (image - self.mean) / self.std, self.labels[index]


def channel_mean_std(images: Tensor, chunk: int = 4096) -> tuple[Tensor, Tensor]:
    """Per-channel mean and std of ``uint8`` images ``(N, C, H, W)`` on the [0, 1] scale.

    Accumulates in float64 over chunks so that large sets are never
    converted to float all at once. A zero std (a constant channel) is
    replaced by 1 so that standardising never divides by zero.
    """
    total = torch.zeros(images.shape[1], dtype=torch.float64)
    total_sq = torch.zeros_like(total)
    for start in range(0, len(images), chunk):
        block = images[start : start + chunk].to(torch.float64).div_(255.0)
        total += block.sum(dim=(0, 2, 3))
        total_sq += block.square().sum(dim=(0, 2, 3))
    count = images.shape[0] * images.shape[2] * images.shape[3]
    mean = total / count
    std = (total_sq / count - mean.square()).clamp_min(0.0).sqrt()
    std = torch.where(std > 1e-12, std, torch.ones_like(std))
    return mean.float(), std.float()


def stratified_split(
    labels: np.ndarray, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Sorted train and test indices with every class split in the same proportion.

    Each class of ``n`` samples puts ``round(n * test_fraction)`` of them,
    clipped to ``[1, n - 1]``, in the test split, chosen at random with
    ``seed``; every class therefore appears in both splits.
    """
    _check_fraction(test_fraction)
    rng = np.random.default_rng(seed)
    train, test = [], []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        if len(members) < 2:
            raise UserInputError(
                f"class {label!r} has {len(members)} sample; a stratified split needs at least 2"
            )
        members = rng.permutation(members)
        n_test = min(max(round(len(members) * test_fraction), 1), len(members) - 1)
        test.append(members[:n_test])
        train.append(members[n_test:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def _check_fraction(test_fraction: float) -> None:
    if not 0.0 < test_fraction < 1.0:
        raise UserInputError(f"test_fraction must be in (0, 1), got {test_fraction!r}")


# --------------------------------------------------------------------------
# digits


@DATASETS.register("digits")
def digits(test_fraction: float = 0.3, seed: int = 0, normalize: bool = True) -> DataBundle:
    """scikit-learn's bundled 8x8 handwritten digits (1797 images, 10 classes).

    Pixels (0..16) are scaled to [0, 1], split stratified by class with
    ``test_fraction`` and ``seed``, and, when ``normalize``, standardised
    with the mean and std of the training pixels. Inputs are ``(1, 8, 8)``.
    """
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.as_tensor(bunch.images, dtype=torch.float32).div_(16.0).unsqueeze(1)
    labels = torch.as_tensor(bunch.target, dtype=torch.int64)
    train_idx, test_idx = stratified_split(bunch.target, test_fraction, seed)
    train_x, test_x = images[train_idx], images[test_idx]
    mean, std = 0.0, 1.0
    if normalize:
        mean, std = train_x.mean().item(), train_x.std().item()
        train_x, test_x = (train_x - mean) / std, (test_x - mean) / std
    return DataBundle(
        name="digits",
        train=TensorDataset(train_x, labels[train_idx]),
        test=TensorDataset(test_x, labels[test_idx]),
        num_classes=10,
        sample_shape=(1, 8, 8),
        info={
            "classes": [str(d) for d in range(10)],
            "mean": [mean],
            "std": [std],
            "train_indices": train_idx.tolist(),
            "test_indices": test_idx.tolist(),
        },
    )


# --------------------------------------------------------------------------
# image_folder


def find_images(
    root: Path, extensions: Sequence[str] = IMAGE_EXTENSIONS
) -> tuple[list[tuple[Path, str]], list[str]]:
    """The ``(path, class_name)`` pairs of an ImageFolder tree and its sorted class names.

    Classes are the sub-folders of ``root``; images are found recursively
    inside each and sorted by path. Hidden folders and files are skipped. A
    class folder without images is refused (naming it) rather than counted
    as a class no sample can ever belong to.
    """
    if not root.is_dir():
        raise UserInputError(f"image folder {str(root)!r} does not exist or is not a directory")
    wanted = {"." + ext.lower().lstrip(".") for ext in extensions}
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    samples, empty = [], []
    for name in classes:
        files = sorted(
            p
            for p in (root / name).rglob("*")
            if p.is_file() and p.suffix.lower() in wanted and not p.name.startswith(".")
        )
        samples.extend((p, name) for p in files)
        if not files:
            empty.append(name)
    if not samples:
        raise UserInputError(
            f"no images in {str(root)!r}: expected root/<class>/<image> with extensions "
            f"{', '.join(sorted(wanted))}"
        )
    if empty:
        others = f" (and {len(empty) - 1} more empty class folders)" if len(empty) > 1 else ""
        raise UserInputError(
            f"class folder {str(root / empty[0])!r} has no images with extensions "
            f"{', '.join(sorted(wanted))}{others}; add images or remove it "
            "(every sub-folder of the image folder is a class)"
        )
    return samples, classes


def _read_image(path: Path, image_size: int, grayscale: bool) -> np.ndarray:
    """One image as ``uint8`` ``(C, image_size, image_size)``."""
    try:
        with Image.open(path) as image:
            image = image.convert("L" if grayscale else "RGB")
            image = image.resize((image_size, image_size), Image.Resampling.BILINEAR)
            array = np.array(image, dtype=np.uint8)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise UserInputError(f"cannot read image {str(path)!r}: {reason}") from None
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)


def _load_images(
    samples: Sequence[tuple[Path, str]],
    class_to_idx: dict[str, int],
    image_size: int,
    grayscale: bool,
) -> tuple[Tensor, Tensor]:
    channels = 1 if grayscale else 3
    images = torch.empty((len(samples), channels, image_size, image_size), dtype=torch.uint8)
    for i, (path, _) in enumerate(samples):
        images[i] = torch.from_numpy(_read_image(path, image_size, grayscale))
    labels = torch.tensor([class_to_idx[name] for _, name in samples], dtype=torch.int64)
    return images, labels


@DATASETS.register("image_folder")
def image_folder(
    root: str | None = None,
    test_root: str | None = None,
    test_fraction: float = 0.2,
    seed: int = 0,
    image_size: int = 32,
    grayscale: bool = False,
    extensions: Sequence[str] = IMAGE_EXTENSIONS,
    max_images: int = 100_000,
) -> DataBundle:
    """Images in the torchvision ImageFolder layout ``root/<class>/<image>``.

    Class indices follow the sorted class-folder names (``info["class_to_idx"]``).
    Every image is converted to RGB (or grey with ``grayscale``), resized to
    ``image_size`` x ``image_size`` (bilinear, aspect ratio not kept) and
    loaded eagerly as ``uint8`` (at most ``max_images`` in all). The test set
    is ``test_root`` (same layout, its classes a subset of ``root``'s), or,
    without it, a stratified ``test_fraction`` split of ``root`` drawn with
    ``seed``. Pixels are standardised per channel with training statistics.
    """
    if root is None:
        raise UserInputError(
            "image_folder needs 'root': the folder holding one sub-folder per class"
        )
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise UserInputError(f"image_size must be a positive integer, got {image_size!r}")
    if isinstance(extensions, str):
        extensions = (extensions,)
    samples, classes = find_images(Path(root).expanduser(), extensions)
    class_to_idx = {name: i for i, name in enumerate(classes)}
    if test_root is not None:
        test_samples, test_classes = find_images(Path(test_root).expanduser(), extensions)
        unknown = sorted(set(test_classes) - set(classes))
        if unknown:
            raise UserInputError(
                f"test_root {test_root!r} has classes not in root {root!r}: {', '.join(unknown)}"
            )
    else:
        _check_fraction(test_fraction)
        labels = np.array([class_to_idx[name] for _, name in samples])
        train_idx, test_idx = stratified_split(labels, test_fraction, seed)
        test_samples = [samples[i] for i in test_idx]
        samples = [samples[i] for i in train_idx]
    total = len(samples) + len(test_samples)
    if total > max_images:
        raise UserInputError(
            f"image folder {root!r} holds {total} images, more than max_images={max_images}; "
            "raise max_images if memory allows (one byte per pixel)"
        )
    train_x, train_y = _load_images(samples, class_to_idx, image_size, grayscale)
    test_x, test_y = _load_images(test_samples, class_to_idx, image_size, grayscale)
    mean, std = channel_mean_std(train_x)
    return DataBundle(
        name="image_folder",
        train=StandardizedImages(train_x, train_y, mean, std),
        test=StandardizedImages(test_x, test_y, mean, std),
        num_classes=len(classes),
        sample_shape=tuple(train_x.shape[1:]),
        info={
            "root": str(root),
            "test_root": None if test_root is None else str(test_root),
            "classes": classes,
            "class_to_idx": class_to_idx,
            "mean": mean.tolist(),
            "std": std.tolist(),
        },
    )


# --------------------------------------------------------------------------
# cifar10


def _cifar10_folder(root: Path) -> Path:
    """``root`` or ``root/cifar-10-batches-py``, whichever holds all six batches."""
    expected = (*_CIFAR10_TRAIN_FILES, _CIFAR10_TEST_FILE)
    for folder in (root, root / _CIFAR10_FOLDER):
        if all((folder / name).is_file() for name in expected):
            return folder
    missing = [n for n in expected if not (root / n).is_file()]
    raise UserInputError(
        f"CIFAR-10 not found in {str(root)!r}: expected the python batches "
        f"{', '.join(expected)} there or in {_CIFAR10_FOLDER}/ (missing: {', '.join(missing)}); "
        "nothing is downloaded"
    )


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """A CIFAR python batch as ``uint8`` ``(N, 3, 32, 32)`` images and labels.

    The batches are pickles, so only load files from a source you trust.
    """
    try:
        with path.open("rb") as f:
            batch = pickle.load(f, encoding="bytes")
        data = batch.get(b"data", batch.get("data"))
        labels = batch.get(b"labels", batch.get("labels"))
        images = np.asarray(data, dtype=np.uint8).reshape(-1, 3, 32, 32)
        labels = np.asarray(labels, dtype=np.int64)
    except (
        OSError,
        EOFError,
        pickle.UnpicklingError,
        AttributeError,
        TypeError,
        ValueError,
    ) as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise UserInputError(f"cannot read CIFAR-10 batch {str(path)!r}: {reason}") from None
    if len(images) != len(labels):
        raise UserInputError(
            f"CIFAR-10 batch {str(path)!r} has {len(images)} images but {len(labels)} labels"
        )
    return images, labels


def _cifar10_classes(folder: Path) -> list[str]:
    meta = folder / "batches.meta"
    if meta.is_file():
        try:
            with meta.open("rb") as f:
                names = pickle.load(f, encoding="bytes").get(b"label_names")
            if names is not None and len(names) == 10:
                return [n.decode() if isinstance(n, bytes) else str(n) for n in names]
        except (OSError, EOFError, pickle.UnpicklingError, AttributeError, UnicodeDecodeError):
            pass  # fall back to the well-known names; the label indices are what matter
    return list(CIFAR10_CLASSES)


@DATASETS.register("cifar10")
def cifar10(root: str = "data", subset: int | None = None, seed: int | None = None) -> DataBundle:
    """CIFAR-10 from its python batches already on disk (never downloaded).

    ``root`` holds ``data_batch_1`` ... ``data_batch_5`` and ``test_batch``,
    directly or in ``cifar-10-batches-py/``. ``subset=N`` keeps N training
    images for quick runs: the first N, or, with an integer ``seed``, N drawn
    at random. The test set is always complete. Inputs are standardised with
    the per-channel mean and std of all 50,000 training images (about
    (0.491, 0.482, 0.447) and (0.247, 0.243, 0.262)) whatever ``subset``.
    """
    folder = _cifar10_folder(Path(root).expanduser())
    train_parts = [_read_cifar_batch(folder / name) for name in _CIFAR10_TRAIN_FILES]
    train_x = torch.from_numpy(np.concatenate([x for x, _ in train_parts]))
    train_y = torch.from_numpy(np.concatenate([y for _, y in train_parts]))
    test_x, test_y = (torch.from_numpy(a) for a in _read_cifar_batch(folder / _CIFAR10_TEST_FILE))
    mean, std = channel_mean_std(train_x)
    if subset is not None:
        if isinstance(subset, bool) or not isinstance(subset, int) or subset < 1:
            raise UserInputError(f"cifar10 subset must be a positive integer, got {subset!r}")
        if subset > len(train_x):
            raise UserInputError(
                f"cifar10 subset={subset} exceeds the {len(train_x)} training images"
            )
        if seed is None:
            keep = torch.arange(subset)
        else:
            generator = torch.Generator().manual_seed(seed)
            keep = torch.randperm(len(train_x), generator=generator)[:subset].sort().values
        train_x, train_y = train_x[keep], train_y[keep]
    return DataBundle(
        name="cifar10",
        train=StandardizedImages(train_x, train_y, mean, std),
        test=StandardizedImages(test_x, test_y, mean, std),
        num_classes=10,
        sample_shape=(3, 32, 32),
        info={
            "root": str(folder),
            "classes": _cifar10_classes(folder),
            "mean": mean.tolist(),
            "std": std.tolist(),
            "subset": subset,
        },
    )
