"""Specification of NIfTI prediction: outputs live in the input's voxel grid."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch

from manifold_nas.domains.volumetric.network import VolumetricNet
from manifold_nas.domains.volumetric.predict import predict_paths, predict_volume
from manifold_nas.errors import UserInputError


def write_image(path, shape=(20, 18, 7), affine=None, slope=None):
    rng = np.random.default_rng(0)
    if affine is None:
        # LPS-like orientation with thick, oblique slices: exercises the exact reorientation
        affine = np.array(
            [[-0.9, 0.0, 0.1, 10.0], [0.0, -0.9, 0.0, 20.0], [0.0, 0.0, 3.0, -5.0], [0, 0, 0, 1]]
        )
    image = nib.Nifti1Image(rng.normal(size=shape).astype(np.float32), affine)
    image.header.set_qform(affine, code=1)
    image.header.set_xyzt_units("mm", "sec")
    if slope is not None:
        image.header.set_slope_inter(slope, 0.0)
    nib.save(image, str(path))
    return path


@pytest.fixture
def model():
    torch.manual_seed(0)
    return VolumetricNet(
        1,
        3,
        (4, 8),
        [(2, 2, 1)],
        choices=["conv2d", "p3d", "conv3d"],
        ops=("conv2d", "conv3d", "p3d"),
    )


@pytest.mark.parametrize("spacing", [None, (1.8, 1.8, 3.0)], ids=["native", "resampled"])
def test_prediction_has_the_input_shape_affine_and_header(tmp_path, model, spacing):
    source = write_image(tmp_path / "case.nii.gz")
    output = predict_volume(
        model, source, tmp_path / "out" / "seg.nii.gz", roi_size=(8, 8, 4),
        preprocessing={"orientation": "RAS", "spacing": spacing},
    )  # fmt: skip
    written, original = nib.load(str(output)), nib.load(str(source))
    assert written.shape == original.shape
    assert np.array_equal(written.affine, original.affine)
    assert np.allclose(written.header.get_zooms(), original.header.get_zooms())
    assert np.allclose(written.header.get_qform(), original.header.get_qform())
    assert int(written.header["qform_code"]) == int(original.header["qform_code"])
    assert int(written.header["sform_code"]) == int(original.header["sform_code"])
    labels = np.asanyarray(written.dataobj)
    assert labels.dtype == np.uint8 and labels.max() < 3


def test_prediction_matches_a_direct_forward_pass_in_the_input_grid(tmp_path):
    """Reorientation is inverted exactly: an axis-aware pointwise model maps voxel to voxel."""
    torch.manual_seed(0)
    pointwise = torch.nn.Conv3d(1, 2, 1)
    affine = np.diag([-2.0, 2.0, 2.0, 1.0])  # LAS: the first axis is flipped for RAS
    source = write_image(tmp_path / "flip.nii.gz", shape=(8, 8, 8), affine=affine)
    output = predict_volume(
        pointwise, source, tmp_path / "seg.nii.gz", roi_size=(8, 8, 8),
        preprocessing={"orientation": "RAS", "intensity": "none"},
    )  # fmt: skip
    data = torch.as_tensor(nib.load(str(source)).get_fdata(), dtype=torch.float32)[None, None]
    with torch.no_grad():
        expected = pointwise(data).argmax(1)[0].numpy()
    assert np.array_equal(np.asanyarray(nib.load(str(output)).dataobj), expected)


def test_scaled_input_does_not_rescale_the_labels(tmp_path, model):
    source = write_image(tmp_path / "scaled.nii", slope=2.0)
    output = predict_volume(model, source, tmp_path / "seg.nii", roi_size=(8, 8, 4))
    labels = np.asanyarray(nib.load(str(output)).dataobj)
    assert set(np.unique(labels)) <= {0, 1, 2}


def test_a_folder_is_predicted_in_one_call(tmp_path, model):
    inputs = tmp_path / "in"
    inputs.mkdir()
    for name in ("a.nii.gz", "b.nii.gz", "c.nii"):
        write_image(inputs / name)
    (inputs / "notes.txt").write_text("not an image")
    outputs = predict_paths(model, inputs, tmp_path / "out", roi_size=(8, 8, 4))
    assert sorted(p.name for p in outputs) == ["a.nii.gz", "b.nii.gz", "c.nii"]
    assert all(nib.load(str(p)).shape == (20, 18, 7) for p in outputs)


def test_missing_input_is_named(tmp_path, model):
    with pytest.raises(UserInputError, match="ghost.nii.gz does not exist"):
        predict_paths(model, [tmp_path / "ghost.nii.gz"], tmp_path / "out", roi_size=(8, 8, 4))


def test_output_may_not_overwrite_the_input(tmp_path, model):
    source = write_image(tmp_path / "case.nii.gz")
    with pytest.raises(UserInputError, match="overwrite its input"):
        predict_volume(model, source, source, roi_size=(8, 8, 4))


def test_bundle_predictor_writes_one_file_or_a_folder(tmp_path, model):
    from manifold_nas.domains.volumetric.predict import VolumePredictor

    predictor = VolumePredictor((8, 8, 4), {"orientation": "RAS"})
    source = write_image(tmp_path / "case.nii.gz")
    (single,) = predictor(model, [source], tmp_path / "seg.nii.gz")
    assert single == tmp_path / "seg.nii.gz" and single.is_file()
    outputs = predictor(model, [source, write_image(tmp_path / "other.nii.gz")], tmp_path / "segs")
    assert [p.name for p in outputs] == ["case.nii.gz", "other.nii.gz"]
