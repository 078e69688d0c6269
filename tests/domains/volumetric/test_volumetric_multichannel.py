"""Specification of multi-channel (multi-modal) volumes: 4-D NIfTI with channels last.

The synthetic task has two channels on very different scales (channel 0 in
[0, 1], channel 1 in [0, 1000]) and a label that needs both: foreground where
channel 0 > 0.5 and channel 1 < 500.
"""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch

import manifold_nas.domains.volumetric  # noqa: F401  (registers the networks)
from manifold_nas.domains.volumetric.data import build_datalist_dataset
from manifold_nas.domains.volumetric.network import ARCH_KEY
from manifold_nas.domains.volumetric.ops import VOLUMETRIC_OPSET
from manifold_nas.domains.volumetric.predict import predict_volume
from manifold_nas.domains.volumetric.preprocessing import VolumePreprocessing
from manifold_nas.errors import UserInputError
from manifold_nas.space.networks import NETWORKS

SHAPE = (16, 16, 8)
PATCH = (8, 8, 4)
AFFINE = np.diag([1.0, 1.0, 2.0, 1.0])
#: channel 0 must exceed A and channel 1 stay below B for foreground
A, B = 0.5, 500.0
SCALES = (1.0, 1000.0)
MODALITY = {"0": "T2", "1": "ADC"}


def two_channel_case(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(X, Y, Z, 2)`` float32 image and its ``(X, Y, Z)`` uint8 label."""
    rng = np.random.default_rng(seed)
    image = rng.uniform(0.0, 1.0, (*SHAPE, 2)) * np.asarray(SCALES)
    label = (image[..., 0] > A) & (image[..., 1] < B)
    return image.astype(np.float32), label.astype(np.uint8)


def write_nifti(path, data, affine=AFFINE):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(data), affine), str(path))
    return path


def write_case(root, name, seed, channels=2):
    image, label = two_channel_case(seed)
    if channels != 2:
        image = np.concatenate([image] * 2, axis=-1)[..., :channels]
    write_nifti(root / "imagesTr" / f"{name}.nii.gz", image)
    write_nifti(root / "labelsTr" / f"{name}.nii.gz", label)
    return {"image": f"./imagesTr/{name}.nii.gz", "label": f"./labelsTr/{name}.nii.gz"}


def write_datalist(root, training, test=None, modality=MODALITY):
    content = {
        "name": "two_channel",
        "tensorImageSize": "4D",
        "labels": {"0": "background", "1": "lesion"},
        "numTraining": len(training),
        "training": training,
    }
    if modality is not None:
        content["modality"] = modality
    if test is not None:
        content["test"] = test
    path = root / "dataset.json"
    path.write_text(json.dumps(content))
    return path


@pytest.fixture
def datalist(tmp_path):
    training = [write_case(tmp_path, f"case{i}", seed=i) for i in range(2)]
    return write_datalist(tmp_path, training, test=[write_case(tmp_path, "held", seed=7)])


@pytest.fixture
def bundle(datalist):
    return build_datalist_dataset(datalist=str(datalist), patch_size=PATCH, samples_per_volume=2)


class BothChannelsRule(torch.nn.Module):
    """A pointwise 'network' for the raw task: foreground logit min(x₀ − A, B − x₁)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        foreground = torch.minimum(x[:, :1] - A, B - x[:, 1:2])
        return torch.cat([-foreground, foreground], dim=1)


def tiny_vnas(bundle):
    torch.manual_seed(0)
    return NETWORKS.get("vnas")(VOLUMETRIC_OPSET, bundle, channels=(4, 8), fixed_op="conv3d")


def test_the_synthetic_label_needs_both_channels():
    image, label = two_channel_case(0)
    assert 0 < label.sum() < label.size
    assert not np.array_equal(label, image[..., 0] > A)
    assert not np.array_equal(label, image[..., 1] < B)


def test_a_4d_image_loads_as_channels_and_the_sample_shape_carries_them(bundle):
    assert bundle.sample_shape == (2, *PATCH)
    assert bundle.info["in_channels"] == 2
    patch = bundle.train[0][0]
    assert patch["image"].shape == (2, *PATCH) and patch["label"].shape == (1, *PATCH)
    assert bundle.test[0]["image"].shape == (2, *SHAPE)
    assert bundle.test[0]["label"].shape == (1, *SHAPE)


def test_msd_modality_names_are_recorded_in_channel_order(bundle):
    assert bundle.info["modalities"] == ("T2", "ADC")


def test_channels_are_named_by_index_without_a_modality_field(tmp_path):
    training = [write_case(tmp_path, f"case{i}", seed=i) for i in range(2)]
    path = write_datalist(tmp_path, training, modality=None)
    bundle = build_datalist_dataset(datalist=str(path), patch_size=PATCH)
    assert bundle.info["modalities"] == ("channel0", "channel1")


def test_percentile_scaling_is_computed_per_channel(bundle):
    raw, _ = two_channel_case(7)
    loaded = bundle.test[0]["image"].numpy()
    for c in range(2):
        low, high = np.percentile(raw[..., c], (0.5, 99.5))
        expected = np.clip((raw[..., c] - low) / (high - low), 0.0, 1.0)
        np.testing.assert_allclose(loaded[c], expected, atol=1e-5)
    # scaled jointly, channel 0 (values ≤ 1 next to values up to 1000) would collapse to ≈ 0
    assert loaded[0].max() == pytest.approx(1.0) and loaded[0].min() == pytest.approx(0.0)


def test_zscore_normalises_each_channel_over_its_nonzero_voxels():
    rng = np.random.default_rng(0)
    image = rng.normal(0.0, 1.0, (2, *SHAPE)) * np.array([2.0, 300.0])[:, None, None, None]
    image += np.array([5.0, -700.0])[:, None, None, None]
    image[:, :4] = 0.0  # background outside the brain
    (transform,) = VolumePreprocessing(intensity="zscore").intensity_transform("image")
    out = np.asarray(transform({"image": torch.as_tensor(image, dtype=torch.float32)})["image"])
    assert np.all(out[:, :4] == 0.0)
    for c in range(2):
        inside = image[c][image[c] != 0]
        expected = (inside - inside.mean()) / inside.std()
        np.testing.assert_allclose(out[c][image[c] != 0], expected, atol=1e-4)


def test_volumetric_net_and_monai_unet_forward_on_a_two_channel_batch(bundle):
    batch = bundle.collate_fn([bundle.train[0], bundle.train[1]])
    x = batch["image"]
    assert x.shape == (4, 2, *PATCH)
    torch.manual_seed(0)
    search = NETWORKS.get("vnas")(VOLUMETRIC_OPSET, bundle, channels=(4, 8))
    rows = torch.full(search.arch_specs[ARCH_KEY].shape, 1.0 / len(search.op_names))
    assert search(x, {ARCH_KEY: rows}).shape == (4, 2, *PATCH)
    unet = NETWORKS.get("monai_unet")(VOLUMETRIC_OPSET, bundle, channels=(4, 8))
    assert unet(x).shape == (4, 2, *PATCH)
    # a one-channel batch no longer fits the networks' first convolution
    with pytest.raises(RuntimeError):
        unet(x[:, :1])


def test_bundle_predictor_writes_a_3d_label_map_in_the_4d_inputs_grid(bundle, tmp_path):
    affine = np.array(
        [[-0.9, 0.0, 0.1, 10.0], [0.0, 0.9, 0.0, -20.0], [0.0, 0.0, 2.0, 5.0], [0, 0, 0, 1]]
    )
    source = write_nifti(tmp_path / "new" / "case.nii.gz", two_channel_case(3)[0], affine)
    (output,) = bundle.predictor(tiny_vnas(bundle), [source], tmp_path / "seg.nii.gz")
    written = nib.load(str(output))
    assert written.shape == SHAPE
    assert np.array_equal(written.affine, nib.load(str(source)).affine)
    assert np.allclose(written.header.get_zooms(), (0.9, 0.9, 2.0), atol=1e-2)
    assert set(np.unique(np.asanyarray(written.dataobj))) <= {0, 1}


def test_prediction_uses_both_channels_in_the_right_order_and_voxel(tmp_path):
    """A rule that needs channel 0 high and channel 1 low reproduces the label exactly."""
    image, label = two_channel_case(5)
    flipped = np.diag([-1.0, 1.0, 2.0, 1.0])  # LAS: reorientation to RAS flips the first axis
    source = write_nifti(tmp_path / "case.nii.gz", image, flipped)
    output = predict_volume(
        BothChannelsRule(), source, tmp_path / "seg.nii.gz", roi_size=PATCH,
        preprocessing={"orientation": "RAS", "intensity": "none"}, in_channels=2,
    )  # fmt: skip
    assert np.array_equal(np.asanyarray(nib.load(str(output)).dataobj), label)


def test_prediction_refuses_an_image_with_another_channel_count(bundle, tmp_path):
    image = np.concatenate([two_channel_case(0)[0]] * 2, axis=-1)[..., :3]
    source = write_nifti(tmp_path / "three.nii.gz", image)
    with pytest.raises(UserInputError, match=r"three\.nii\.gz has 3 channel.* network takes 2"):
        bundle.predictor(tiny_vnas(bundle), [source], tmp_path / "seg.nii.gz")


def test_a_different_channel_count_is_refused_naming_the_file_and_both_counts(tmp_path):
    training = [write_case(tmp_path, "a", 0), write_case(tmp_path, "b", 1, channels=3)]
    path = write_datalist(tmp_path, training, modality=None)
    with pytest.raises(
        UserInputError,
        match=r"imagesTr/b\.nii\.gz has 3 channels but the first image .*a\.nii\.gz has 2",
    ):
        build_datalist_dataset(datalist=str(path), patch_size=PATCH)


def test_channels_disagreeing_with_the_modality_field_are_refused(tmp_path):
    training = [write_case(tmp_path, f"case{i}", seed=i) for i in range(2)]
    path = write_datalist(tmp_path, training, modality={"0": "FLAIR", "1": "T1", "2": "T2"})
    with pytest.raises(
        UserInputError, match=r"imagesTr/case0\.nii\.gz has 2 channels but datalist .* declares 3"
    ):
        build_datalist_dataset(datalist=str(path), patch_size=PATCH)


def test_a_4d_label_is_refused_naming_the_file(tmp_path):
    training = [write_case(tmp_path, f"case{i}", seed=i) for i in range(2)]
    label = np.zeros((*SHAPE, 2), np.uint8)
    write_nifti(tmp_path / "labelsTr" / "case1.nii.gz", label)
    path = write_datalist(tmp_path, training)
    with pytest.raises(UserInputError, match=r"label .*labelsTr/case1\.nii\.gz has shape") as error:
        build_datalist_dataset(datalist=str(path), patch_size=PATCH)
    assert "\n" not in str(error.value)


def test_a_malformed_modality_field_is_refused_naming_the_datalist(tmp_path):
    training = [write_case(tmp_path, f"case{i}", seed=i) for i in range(2)]
    path = write_datalist(tmp_path, training, modality={"0": "T2", "2": "ADC"})
    with pytest.raises(UserInputError, match=r"dataset\.json: 'modality' keys must be 0\.\.1"):
        build_datalist_dataset(datalist=str(path), patch_size=PATCH)


def write_channel_files(root, name, seed, affines=(AFFINE, AFFINE)):
    image, label = two_channel_case(seed)
    files = [
        write_nifti(root / "imagesTr" / f"{name}_{c:04d}.nii.gz", image[..., c], affines[c])
        for c in range(2)
    ]
    write_nifti(root / "labelsTr" / f"{name}.nii.gz", label)
    return {
        "image": [f"./imagesTr/{f.name}" for f in files],
        "label": f"./labelsTr/{name}.nii.gz",
    }


def test_channels_given_as_a_list_of_files_load_like_the_4d_file(tmp_path, bundle):
    training = [write_channel_files(tmp_path, f"case{i}", seed=i) for i in range(2)]
    path = write_datalist(tmp_path, training, test=[write_channel_files(tmp_path, "held", 7)])
    listed = build_datalist_dataset(datalist=str(path), patch_size=PATCH)
    assert listed.sample_shape == (2, *PATCH)
    assert torch.equal(listed.test[0]["image"], bundle.test[0]["image"])


def test_prediction_of_a_list_of_channel_files_matches_the_4d_file(tmp_path):
    image, label = two_channel_case(4)
    files = [write_nifti(tmp_path / f"c{c}.nii.gz", image[..., c]) for c in range(2)]
    output = predict_volume(
        BothChannelsRule(), files, tmp_path / "seg.nii.gz", roi_size=PATCH,
        preprocessing={"intensity": "none"},
    )  # fmt: skip
    written = nib.load(str(output))
    assert written.shape == SHAPE and np.array_equal(np.asanyarray(written.dataobj), label)


def test_channel_files_with_different_affines_are_refused_naming_the_file(tmp_path):
    shifted = AFFINE.copy()
    shifted[0, 3] = 4.0
    training = [
        write_case(tmp_path, "a", 0),
        write_channel_files(tmp_path, "b", 1, (AFFINE, shifted)),
    ]
    path = write_datalist(tmp_path, training)
    with pytest.raises(
        UserInputError, match=r"channel file .*b_0001\.nii\.gz has a different affine"
    ):
        build_datalist_dataset(datalist=str(path), patch_size=PATCH)
