"""Specification of the vision datasets ``digits``, ``image_folder`` and ``cifar10``."""

from __future__ import annotations

import pickle
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import manifold_nas.domains.vision  # noqa: F401  (registers the datasets)
from manifold_nas.data import DATASETS
from manifold_nas.errors import UserInputError

# --------------------------------------------------------------------------
# digits


@pytest.fixture(scope="module")
def digits_bundle():
    return DATASETS.get("digits")()


def test_digits_has_1797_single_channel_8x8_images_in_10_classes(digits_bundle) -> None:
    assert digits_bundle.num_classes == 10
    assert digits_bundle.sample_shape == (1, 8, 8)
    assert len(digits_bundle.train) + len(digits_bundle.test) == 1797
    x, y = digits_bundle.train[0]
    assert x.shape == (1, 8, 8) and x.dtype == torch.float32 and y.dtype == torch.int64


def test_digits_split_holds_test_fraction_without_overlap(digits_bundle) -> None:
    train_idx = set(digits_bundle.info["train_indices"])
    test_idx = set(digits_bundle.info["test_indices"])
    assert not train_idx & test_idx
    assert len(train_idx | test_idx) == 1797
    assert len(test_idx) == pytest.approx(0.3 * 1797, abs=10)


def test_digits_split_is_stratified(digits_bundle) -> None:
    train_counts = Counter(digits_bundle.train.tensors[1].tolist())
    test_counts = Counter(digits_bundle.test.tensors[1].tolist())
    for label in range(10):
        share = test_counts[label] / (train_counts[label] + test_counts[label])
        assert share == pytest.approx(0.3, abs=0.01)


def test_digits_train_inputs_are_standardised(digits_bundle) -> None:
    x = digits_bundle.train.tensors[0]
    assert x.mean().item() == pytest.approx(0.0, abs=1e-5)
    assert x.std().item() == pytest.approx(1.0, abs=1e-4)


def test_digits_without_normalize_stays_in_unit_interval() -> None:
    bundle = DATASETS.get("digits")(normalize=False, test_fraction=0.5, seed=1)
    x = bundle.train.tensors[0]
    assert x.min() >= 0.0 and x.max() <= 1.0
    assert len(bundle.test) == pytest.approx(1797 / 2, abs=10)


def test_digits_split_depends_on_seed() -> None:
    a = DATASETS.get("digits")(seed=0).info["test_indices"]
    b = DATASETS.get("digits")(seed=1).info["test_indices"]
    assert a != b


def test_digits_rejects_test_fraction_outside_unit_interval() -> None:
    with pytest.raises(UserInputError, match="test_fraction"):
        DATASETS.get("digits")(test_fraction=1.5)


# --------------------------------------------------------------------------
# image_folder


def _write_image(path: Path, size: tuple[int, int], color: tuple[int, int, int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)


def _make_folder(root: Path, per_class: int = 3) -> Path:
    for i in range(per_class):
        _write_image(root / "cat" / f"c{i}.png", (10 + i, 12), (200, 10 * i, 0))
        _write_image(root / "ant" / f"a{i}.png", (7, 9 + i), (0, 50, 10 * i))
    return root


def test_image_folder_maps_sorted_class_names_to_indices(tmp_path) -> None:
    root = _make_folder(tmp_path / "train")
    bundle = DATASETS.get("image_folder")(root=str(root), image_size=16, test_fraction=0.34)
    assert bundle.info["class_to_idx"] == {"ant": 0, "cat": 1}
    assert bundle.num_classes == 2
    assert bundle.sample_shape == (3, 16, 16)
    assert len(bundle.train) == 4 and len(bundle.test) == 2
    assert sorted(int(bundle.test[i][1]) for i in range(2)) == [0, 1]


def test_image_folder_uses_test_root_when_given(tmp_path) -> None:
    root = _make_folder(tmp_path / "train")
    test_root = tmp_path / "test"
    _write_image(test_root / "cat" / "t.jpg", (20, 20), (255, 0, 0))
    bundle = DATASETS.get("image_folder")(
        root=str(root), test_root=str(test_root), image_size=8, grayscale=True
    )
    assert len(bundle.train) == 6 and len(bundle.test) == 1
    x, y = bundle.test[0]
    assert x.shape == (1, 8, 8) and int(y) == bundle.info["class_to_idx"]["cat"]


def test_image_folder_standardises_train_channels(tmp_path) -> None:
    root = _make_folder(tmp_path / "train")
    bundle = DATASETS.get("image_folder")(root=str(root), image_size=4, test_fraction=0.34)
    x = torch.stack([bundle.train[i][0] for i in range(len(bundle.train))])
    mean = x.mean(dim=(0, 2, 3))
    assert torch.allclose(mean, torch.zeros(3), atol=1e-5)


def test_image_folder_missing_root_names_it(tmp_path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(UserInputError, match="nowhere"):
        DATASETS.get("image_folder")(root=str(missing))


def test_image_folder_without_root_is_an_error() -> None:
    with pytest.raises(UserInputError, match="root"):
        DATASETS.get("image_folder")()


def test_image_folder_without_images_is_an_error(tmp_path) -> None:
    (tmp_path / "empty" / "cat").mkdir(parents=True)
    (tmp_path / "empty" / "cat" / "notes.txt").write_text("not an image")
    with pytest.raises(UserInputError, match="no images"):
        DATASETS.get("image_folder")(root=str(tmp_path / "empty"))


def test_image_folder_corrupt_image_names_the_file(tmp_path) -> None:
    root = _make_folder(tmp_path / "train")
    (root / "cat" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n definitely not a png")
    with pytest.raises(UserInputError, match="broken.png"):
        DATASETS.get("image_folder")(root=str(root), test_fraction=0.34)


def test_image_folder_rejects_test_classes_unknown_to_train(tmp_path) -> None:
    root = _make_folder(tmp_path / "train")
    _write_image(tmp_path / "test" / "dog" / "d.png", (8, 8), (1, 2, 3))
    with pytest.raises(UserInputError, match="dog"):
        DATASETS.get("image_folder")(root=str(root), test_root=str(tmp_path / "test"))


# --------------------------------------------------------------------------
# cifar10


def _write_cifar(folder: Path, per_batch: int = 4) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for index, name in enumerate(names):
        batch = {
            b"batch_label": name.encode(),
            b"labels": [(index + j) % 10 for j in range(per_batch)],
            b"data": rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8),
            b"filenames": [f"{name}_{j}.png".encode() for j in range(per_batch)],
        }
        with (folder / name).open("wb") as f:
            pickle.dump(batch, f)


def test_cifar10_reads_the_python_batches_beneath_root(tmp_path) -> None:
    _write_cifar(tmp_path / "cifar-10-batches-py")
    bundle = DATASETS.get("cifar10")(root=str(tmp_path))
    assert len(bundle.train) == 20 and len(bundle.test) == 4
    assert bundle.num_classes == 10 and bundle.sample_shape == (3, 32, 32)
    x, y = bundle.train[5]
    assert (
        x.shape == (3, 32, 32) and x.dtype == torch.float32 and int(y) == (1 + 1) % 10
    )  # batch 2, item 1


def test_cifar10_reads_batches_directly_in_root(tmp_path) -> None:
    _write_cifar(tmp_path)
    assert len(DATASETS.get("cifar10")(root=str(tmp_path)).test) == 4


def test_cifar10_image_layout_is_channel_major(tmp_path) -> None:
    _write_cifar(tmp_path)
    with (tmp_path / "data_batch_1").open("rb") as f:
        raw = pickle.load(f)[b"data"][0]
    bundle = DATASETS.get("cifar10")(root=str(tmp_path))
    mean = torch.tensor(bundle.info["mean"]).view(3, 1, 1)
    std = torch.tensor(bundle.info["std"]).view(3, 1, 1)
    pixels = (bundle.train[0][0] * std + mean) * 255
    expected = torch.from_numpy(raw.reshape(3, 32, 32).astype(np.float32))
    assert torch.allclose(pixels, expected, atol=1e-3)


def test_cifar10_standardises_with_train_channel_statistics(tmp_path) -> None:
    _write_cifar(tmp_path)
    bundle = DATASETS.get("cifar10")(root=str(tmp_path))
    x = torch.stack([bundle.train[i][0] for i in range(len(bundle.train))])
    assert torch.allclose(x.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-4)
    assert torch.allclose(x.std(dim=(0, 2, 3)), torch.ones(3), atol=1e-3)


def test_cifar10_subset_keeps_the_first_training_images(tmp_path) -> None:
    _write_cifar(tmp_path)
    full = DATASETS.get("cifar10")(root=str(tmp_path))
    small = DATASETS.get("cifar10")(root=str(tmp_path), subset=6)
    assert len(small.train) == 6 and len(small.test) == 4
    for i in range(6):
        assert torch.equal(small.train[i][0], full.train[i][0])


def test_cifar10_subset_with_seed_is_random_but_reproducible(tmp_path) -> None:
    _write_cifar(tmp_path)
    a = DATASETS.get("cifar10")(root=str(tmp_path), subset=6, seed=3)
    b = DATASETS.get("cifar10")(root=str(tmp_path), subset=6, seed=3)
    assert torch.equal(a.train.images, b.train.images)


def test_cifar10_rejects_subset_larger_than_train(tmp_path) -> None:
    _write_cifar(tmp_path)
    with pytest.raises(UserInputError, match="subset"):
        DATASETS.get("cifar10")(root=str(tmp_path), subset=21)


def test_cifar10_missing_batches_names_the_path(tmp_path) -> None:
    _write_cifar(tmp_path)
    (tmp_path / "data_batch_3").unlink()
    with pytest.raises(UserInputError, match=r"data_batch_3") as info:
        DATASETS.get("cifar10")(root=str(tmp_path))
    assert str(tmp_path) in str(info.value)


def test_cifar10_missing_root_names_it(tmp_path) -> None:
    with pytest.raises(UserInputError, match="no_cifar_here"):
        DATASETS.get("cifar10")(root=str(tmp_path / "no_cifar_here"))


def test_cifar10_unreadable_batch_names_the_file(tmp_path) -> None:
    _write_cifar(tmp_path)
    (tmp_path / "test_batch").write_bytes(b"garbage")
    with pytest.raises(UserInputError, match="test_batch"):
        DATASETS.get("cifar10")(root=str(tmp_path))


# --------------------------------------------------------------------------
# image_folder: empty class folders


def test_image_folder_refuses_an_empty_class_folder_naming_it(tmp_path) -> None:
    # An empty class folder used to count as a class (num_classes 3, no sample of class 1).
    root = _make_folder(tmp_path / "train")
    (root / "bee").mkdir()
    (root / "bee" / "README.txt").write_text("images to come")
    with pytest.raises(UserInputError) as err:
        DATASETS.get("image_folder")(root=str(root), test_fraction=0.34)
    message = str(err.value)
    assert message.startswith(f"class folder {str(root / 'bee')!r} has no images")
    assert "\n" not in message and "remove it" in message


def test_image_folder_counts_further_empty_class_folders(tmp_path) -> None:
    root = _make_folder(tmp_path / "train")
    for name in ("bee", "dog"):
        (root / name / "sub").mkdir(parents=True)
    with pytest.raises(UserInputError, match=r"bee.*no images.*\(and 1 more empty class folders\)"):
        DATASETS.get("image_folder")(root=str(root), test_fraction=0.34)


def test_image_folder_refuses_an_empty_class_folder_in_test_root(tmp_path) -> None:
    root = _make_folder(tmp_path / "train")
    test_root = tmp_path / "test"
    _write_image(test_root / "cat" / "t.png", (8, 8), (255, 0, 0))
    (test_root / "ant").mkdir()
    with pytest.raises(UserInputError, match=r"class folder .*test/ant' has no images"):
        DATASETS.get("image_folder")(root=str(root), test_root=str(test_root))


def test_image_folder_ignores_hidden_folders_when_looking_for_empty_classes(tmp_path) -> None:
    root = _make_folder(tmp_path / "train")
    (root / ".cache").mkdir()
    bundle = DATASETS.get("image_folder")(root=str(root), image_size=4, test_fraction=0.34)
    assert bundle.num_classes == 2
