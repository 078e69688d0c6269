"""Specification of volumetric data loading, validation, task and synthetic data."""

from __future__ import annotations

import json
import math

import nibabel as nib
import numpy as np
import pytest
import torch

from manifold_nas.data import DATASETS
from manifold_nas.domains.volumetric.data import build_datalist_dataset
from manifold_nas.domains.volumetric.synthetic import (
    SHAPE_CLASSES,
    build_synthetic_shapes_dataset,
    synthetic_shapes_volume,
)
from manifold_nas.domains.volumetric.task import SegmentationTask
from manifold_nas.errors import UserInputError

SHAPE = (20, 20, 8)
AFFINE = np.diag([1.0, 1.0, 3.0, 1.0])


def write_nifti(path, data, affine=AFFINE):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(data), affine), str(path))
    return path


def write_case(root, name, shape=SHAPE, seed=0, num_classes=3):
    rng = np.random.default_rng(seed)
    label = np.zeros(shape, dtype=np.uint8)
    label[4:12, 4:12, 2:6] = 1
    label[13:18, 13:18, 3:7] = num_classes - 1
    image = (label + rng.normal(0, 0.1, shape)).astype(np.float32)
    write_nifti(root / "imagesTr" / f"{name}.nii.gz", image)
    write_nifti(root / "labelsTr" / f"{name}.nii.gz", label)
    return {"image": f"./imagesTr/{name}.nii.gz", "label": f"./labelsTr/{name}.nii.gz"}


def write_datalist(root, entries, labels=None, test=None):
    content = {
        "labels": labels or {"0": "background", "1": "organ", "2": "tumour"},
        "numTraining": len(entries),
        "training": entries,
    }
    if test is not None:
        content["test"] = test
    path = root / "dataset.json"
    path.write_text(json.dumps(content))
    return path


@pytest.fixture
def datalist(tmp_path):
    entries = [write_case(tmp_path, f"case{i}", seed=i) for i in range(3)]
    return write_datalist(tmp_path, entries, test=["./imagesTs/unlabelled.nii.gz"])


def test_datalist_is_registered():
    assert DATASETS.get("datalist") is build_datalist_dataset
    assert "synthetic_shapes" in DATASETS


def test_datalist_loads_patches_and_whole_test_volumes(datalist):
    bundle = build_datalist_dataset(
        datalist=str(datalist), patch_size=(16, 16, 8), samples_per_volume=3, test_fraction=0.34
    )
    assert bundle.num_classes == 3 and bundle.sample_shape == (1, 16, 16, 8)
    assert len(bundle.train) == 2 and len(bundle.test) == 1
    patches = bundle.train[0]
    assert len(patches) == 3
    assert patches[0]["image"].shape == patches[0]["label"].shape == (1, 16, 16, 8)
    batch = bundle.collate_fn([bundle.train[0], bundle.train[1]])
    assert batch["image"].shape == (6, 1, 16, 16, 8)
    assert bundle.test[0]["image"].shape == (1, *SHAPE)
    assert bundle.eval_batch_size == 1
    assert bundle.info["roi_size"] == (16, 16, 8)
    assert bundle.info["through_plane_axis"] == 2
    assert bundle.info["unlabelled_files"][0].endswith("unlabelled.nii.gz")
    assert isinstance(bundle.task, SegmentationTask)
    assert bundle.task.class_names == ("background", "organ", "tumour")


def test_missing_image_file_is_named(tmp_path):
    entries = [
        write_case(tmp_path, "a"),
        {"image": "./imagesTr/ghost.nii.gz", "label": "./labelsTr/a.nii.gz"},
    ]
    with pytest.raises(UserInputError, match="ghost.nii.gz does not exist"):
        build_datalist_dataset(
            datalist=str(write_datalist(tmp_path, entries)), patch_size=(8, 8, 4)
        )


def test_missing_datalist_is_named(tmp_path):
    with pytest.raises(UserInputError, match="nothere.json"):
        build_datalist_dataset(datalist=str(tmp_path / "nothere.json"))


def test_label_with_other_shape_is_named(tmp_path):
    entries = [write_case(tmp_path, "a"), write_case(tmp_path, "b")]
    write_nifti(tmp_path / "labelsTr" / "b.nii.gz", np.zeros((20, 20, 7), np.uint8))
    with pytest.raises(UserInputError, match=r"labelsTr/b\.nii\.gz has shape"):
        build_datalist_dataset(
            datalist=str(write_datalist(tmp_path, entries)), patch_size=(8, 8, 4)
        )


def test_label_with_other_affine_is_named(tmp_path):
    entries = [write_case(tmp_path, "a"), write_case(tmp_path, "b")]
    shifted = AFFINE.copy()
    shifted[0, 3] = 5.0
    write_nifti(tmp_path / "labelsTr" / "b.nii.gz", np.zeros(SHAPE, np.uint8), shifted)
    with pytest.raises(UserInputError, match=r"labelsTr/b\.nii\.gz has a different affine"):
        build_datalist_dataset(
            datalist=str(write_datalist(tmp_path, entries)), patch_size=(8, 8, 4)
        )


def test_non_integer_labels_are_named(tmp_path):
    entries = [write_case(tmp_path, "a"), write_case(tmp_path, "b")]
    write_nifti(tmp_path / "labelsTr" / "a.nii.gz", np.full(SHAPE, 0.5, np.float32))
    with pytest.raises(UserInputError, match=r"labelsTr/a\.nii\.gz has non-integer values"):
        build_datalist_dataset(
            datalist=str(write_datalist(tmp_path, entries)), patch_size=(8, 8, 4)
        )


def test_labels_outside_the_declared_classes_are_named(tmp_path):
    entries = [write_case(tmp_path, "a"), write_case(tmp_path, "b", num_classes=5)]
    with pytest.raises(UserInputError, match=r"labelsTr/b\.nii\.gz has values in \[0, 4\]"):
        build_datalist_dataset(
            datalist=str(write_datalist(tmp_path, entries)), patch_size=(8, 8, 4)
        )


def test_trailing_singleton_axis_is_one_channel(tmp_path):
    entries = [write_case(tmp_path, "a"), write_case(tmp_path, "b")]
    image = nib.load(str(tmp_path / "imagesTr" / "a.nii.gz")).get_fdata().astype(np.float32)
    write_nifti(tmp_path / "imagesTr" / "a.nii.gz", image[..., None])
    bundle = build_datalist_dataset(
        datalist=str(write_datalist(tmp_path, entries)), patch_size=(8, 8, 4)
    )
    assert bundle.sample_shape == (1, 8, 8, 4)
    assert bundle.test[0]["image"].ndim == 4


def test_5d_image_is_rejected_naming_the_file(tmp_path):
    entries = [write_case(tmp_path, "a"), write_case(tmp_path, "b")]
    image = nib.load(str(tmp_path / "imagesTr" / "a.nii.gz")).get_fdata().astype(np.float32)
    write_nifti(tmp_path / "imagesTr" / "a.nii.gz", np.stack([image, image], axis=-1)[..., None, :])
    with pytest.raises(UserInputError, match=r"imagesTr/a\.nii\.gz has shape \(20, 20, 8, 1, 2\)"):
        build_datalist_dataset(
            datalist=str(write_datalist(tmp_path, entries)), patch_size=(8, 8, 4)
        )


def test_patch_larger_than_image_is_named(tmp_path):
    entries = [write_case(tmp_path, "a"), write_case(tmp_path, "b")]
    with pytest.raises(UserInputError, match=r"larger than image .*imagesTr/a\.nii\.gz"):
        build_datalist_dataset(
            datalist=str(write_datalist(tmp_path, entries)), patch_size=(16, 16, 16)
        )


def test_patch_larger_than_resampled_image_is_named(tmp_path):
    entries = [write_case(tmp_path, "a"), write_case(tmp_path, "b")]
    # 8 slices of 3 mm resampled to 6 mm leave 4 slices
    with pytest.raises(UserInputError, match="after orientation/resampling"):
        build_datalist_dataset(
            datalist=str(write_datalist(tmp_path, entries)), patch_size=(8, 8, 8), spacing=(1, 1, 6)
        )


def test_resampling_is_logged_and_applied(tmp_path, caplog):
    entries = [write_case(tmp_path, "a"), write_case(tmp_path, "b")]
    with caplog.at_level("WARNING"):
        bundle = build_datalist_dataset(
            datalist=str(write_datalist(tmp_path, entries)), patch_size=(8, 8, 4), spacing=(2, 2, 3)
        )
    assert "resampling 2 of 2 volumes" in caplog.text
    assert bundle.test[0]["image"].shape[1:3] == (10, 10)


def test_segmentation_task_loss_metrics_and_sliding_window_evaluation():
    task = SegmentationTask(3, roi_size=(8, 8, 4), class_names=("bg", "organ", "tumour"))
    label = torch.zeros(1, 1, 12, 12, 6)
    label[:, :, 2:6, 2:6, 1:4] = 1
    label[:, :, 7:10, 7:10, 2:5] = 2
    perfect = torch.nn.functional.one_hot(label[:, 0].long(), 3).movedim(-1, 1).float() * 10
    assert task.loss(perfect, label).item() < task.loss(-perfect, label).item()
    assert task.batch_metrics(perfect, label)["dice"] == pytest.approx(1.0)

    results = task.evaluate(oracle_window, [{"image": label, "label": label}])
    assert set(results) == {"dice", "dice_organ", "dice_tumour"}
    assert results["dice"] == pytest.approx(1.0)


def oracle_window(x: torch.Tensor) -> torch.Tensor:
    """A 'model' that returns the one-hot of its input label patch."""
    return torch.nn.functional.one_hot(x[:, 0].round().long().clamp(0, 2), 3).movedim(-1, 1).float()


def test_synthetic_volumes_are_deterministic_and_anisotropic():
    image_a, label_a = synthetic_shapes_volume(3)
    image_b, label_b = synthetic_shapes_volume(3)
    assert np.array_equal(image_a, image_b) and np.array_equal(label_a, label_b)
    assert image_a.shape == (48, 48, 16)
    assert not np.array_equal(synthetic_shapes_volume(4)[1], label_a)


def test_synthetic_labels_depend_on_shape_not_intensity():
    images, labels = zip(*(synthetic_shapes_volume(seed, noise=0.0, bias=0.0) for seed in range(4)))
    image, label = np.stack(images), np.stack(labels)
    means = [image[label == cls].mean() for cls in SHAPE_CLASSES]
    stds = [image[label == cls].std() for cls in SHAPE_CLASSES]
    assert all(math.isclose(m, 1.0) for m in means) and all(s == 0.0 for s in stds)
    assert all((label == cls).sum() > 0 for cls in SHAPE_CLASSES)


def test_synthetic_shapes_builder_writes_a_datalist_and_loads_it(tmp_path):
    bundle = build_synthetic_shapes_dataset(
        n_train=2, n_test=1, shape=(32, 32, 8), cache_dir=str(tmp_path), patch_size=(16, 16, 8)
    )
    (datalist,) = tmp_path.glob("*/dataset.json")
    content = json.loads(datalist.read_text())
    assert content["labels"]["2"] == "rod" and len(content["training"]) == 2
    assert len(bundle.train) == 2 and len(bundle.test) == 1
    assert bundle.num_classes == 4 and bundle.info["through_plane_axis"] == 2


def test_mni152_tissue_builder_makes_disjoint_deterministic_subjects(tmp_path):
    from manifold_nas.domains.volumetric.mni152 import build_mni152_tissue_dataset

    bundle = build_mni152_tissue_dataset(
        n_train=2, n_test=1, cache_dir=str(tmp_path), patch_size=(16, 16, 16), samples_per_volume=1
    )
    assert bundle.name == "mni152_tissue" and bundle.num_classes == 3
    assert bundle.task.class_names == ("background", "grey_matter", "white_matter")
    (folder,) = (p for p in tmp_path.iterdir() if not p.name.startswith("."))
    first, second = (
        nib.load(str(p)).get_fdata() for p in sorted((folder / "images").glob("mni152_0*.nii.gz"))
    )
    assert not np.array_equal(first, second)
    labels = np.asanyarray(nib.load(str(folder / "labels" / "mni152_000.nii.gz")).dataobj)
    assert set(np.unique(labels)) == {0, 1, 2}


@pytest.mark.parametrize(
    "patch_size",
    [[0, 16, 8], [-16, 16, 8], [16, 16], [16, 16, 8, 8], [16.5, 16, 8], [True, 16, 8], "16", 16],
)
def test_patch_size_must_be_three_positive_integers(datalist, patch_size):
    # 0 or a negative entry used to pass and make the crop take the whole axis.
    with pytest.raises(UserInputError) as err:
        build_datalist_dataset(datalist=str(datalist), patch_size=patch_size)
    message = str(err.value)
    assert message.startswith("data.patch_size must be 3 positive integers") and "\n" not in message
    assert repr(patch_size) in message or str(patch_size) in message


def test_patch_size_refusal_names_the_bad_axis(datalist):
    with pytest.raises(UserInputError, match=r"got \[16, 0, 8\] \(axis 1: 0\)"):
        build_datalist_dataset(datalist=str(datalist), patch_size=[16, 0, 8])


def test_whole_float_and_numpy_patch_sizes_are_accepted():
    from manifold_nas.domains.volumetric.validation import check_patch_size

    assert check_patch_size([16.0, 16, 8]) == (16, 16, 8)
    assert check_patch_size(np.array([16, 16, 8])) == (16, 16, 8)


@pytest.mark.parametrize("builder", ["synthetic_shapes", "mni152_tissue"])
def test_generated_sets_refuse_a_bad_patch_size_before_writing_volumes(tmp_path, builder):
    with pytest.raises(UserInputError, match=r"data\.patch_size .*\[-16, 16, 8\]"):
        DATASETS.get(builder)(cache_dir=str(tmp_path), patch_size=[-16, 16, 8])
    assert not any(tmp_path.iterdir())
