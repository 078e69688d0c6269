"""Segment NIfTI volumes with a trained network and write label maps.

The prediction is written in the *input's own voxel grid*: same shape, same
affine, same header (pixdim, qform/sform), with the data type set to an
integer label type. To get there without an approximate inverse resampling:

1. the image is reoriented to the training orientation by an exact axis
   permutation/flip (nibabel ``apply_orientation``), inverted exactly at the end;
2. if training resampled to a ``spacing``, the image is resampled to it
   (trilinear) and the class *probabilities* are resampled back to the
   oriented input shape before the argmax (MONAI's ``Spacingd`` uses an
   affine grid whose voxel centres can differ from ``F.interpolate`` by a
   fraction of a voxel; for label maps this is negligible);
3. intensities are scaled with the same :class:`VolumePreprocessing` as in
   training (per channel), and Gaussian-weighted sliding-window inference
   with windows of ``roi_size`` segments the whole volume.

A multi-channel image is read in the training layouts: one 4-D NIfTI with
channels on the last axis, or (from Python) a list of 3-D channel files. The
label map is 3-D, in the spatial grid of the image (of its first file for a
list); its channel count is checked against the network's ``in_channels``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from einops import rearrange
from monai.inferers import sliding_window_inference
from nibabel.orientations import apply_orientation, axcodes2ornt, io_orientation, ornt_transform
from torch import Tensor, nn
from torch.nn import functional as F

from manifold_nas.domains.volumetric.preprocessing import VolumePreprocessing
from manifold_nas.domains.volumetric.validation import ImageSource, read_image_header
from manifold_nas.errors import UserInputError

__all__ = [
    "NIFTI_SUFFIXES",
    "VolumePredictor",
    "find_nifti_files",
    "predict_paths",
    "predict_volume",
]

NIFTI_SUFFIXES = (".nii", ".nii.gz")


def _as_preprocessing(preprocessing: VolumePreprocessing | Mapping | None) -> VolumePreprocessing:
    if preprocessing is None:
        return VolumePreprocessing()
    if isinstance(preprocessing, VolumePreprocessing):
        return preprocessing
    fields = dict(preprocessing)
    for key in ("spacing", "intensity_range", "percentiles"):
        if fields.get(key) is not None:
            fields[key] = tuple(fields[key])
    return VolumePreprocessing(**fields)


def find_nifti_files(inputs: str | Path | Sequence[str | Path]) -> list[Path]:
    """The given files, with every folder replaced by its ``.nii``/``.nii.gz`` files (sorted)."""
    items = [inputs] if isinstance(inputs, (str, Path)) else list(inputs)
    files: list[Path] = []
    for item in map(Path, items):
        if item.is_dir():
            found = sorted(p for p in item.iterdir() if p.name.endswith(NIFTI_SUFFIXES))
            if not found:
                raise UserInputError(f"folder {item} holds no .nii or .nii.gz files")
            files.extend(found)
        elif item.is_file():
            files.append(item)
        else:
            raise UserInputError(f"input image {item} does not exist")
    return files


def _channels_last(image: ImageSource, spatial: Sequence[int]) -> tuple[np.ndarray, Path]:
    """The image as a float32 ``(X, Y, Z, C)`` array and the file whose grid it is in."""
    files = [Path(image)] if isinstance(image, (str, Path)) else [Path(p) for p in image]
    arrays = [
        np.asanyarray(nib.load(str(path)).dataobj, dtype=np.float32).reshape(*spatial, -1)
        for path in files
    ]
    return np.concatenate(arrays, axis=-1), files[0]


@torch.no_grad()
def predict_volume(
    model: nn.Module | Callable[[Tensor], Tensor],
    image_path: ImageSource,
    output_path: str | Path,
    roi_size: Sequence[int],
    preprocessing: VolumePreprocessing | Mapping | None = None,
    sw_batch_size: int = 1,
    overlap: float = 0.25,
    device: torch.device | str = "cpu",
    in_channels: int | None = None,
) -> Path:
    """Segment ``image_path`` and write the argmax label map to ``output_path``.

    ``image_path`` is one NIfTI file (3-D, or 4-D with channels last) or a
    list of channel files of one case. When ``in_channels`` is given, an image
    with another channel count is refused naming the file.
    """
    output_path = Path(output_path)
    header = read_image_header(image_path)
    if in_channels is not None and header.channels != in_channels:
        raise UserInputError(
            f"image {header.path} has {header.channels} channel(s) but the network takes "
            f"{in_channels}"
        )
    inputs = [image_path] if isinstance(image_path, (str, Path)) else list(image_path)
    if any(output_path.resolve() == Path(p).resolve() for p in inputs):
        raise UserInputError(f"output {output_path} would overwrite its input image")
    data, reference = _channels_last(image_path, header.shape)
    settings = _as_preprocessing(preprocessing)
    source = nib.load(str(reference))

    start = io_orientation(header.affine)
    target = start if settings.orientation is None else axcodes2ornt(tuple(settings.orientation))
    # reorients the three spatial axes and carries the trailing channel axis along
    data = apply_orientation(data, ornt_transform(start, target))
    oriented_shape, oriented_zooms = header.oriented(settings.orientation)

    image = torch.as_tensor(np.ascontiguousarray(rearrange(data, "x y z c -> c x y z")))
    for transform in settings.intensity_transform("image"):
        image = transform({"image": image})["image"]
    image = torch.as_tensor(image, dtype=torch.float32)[None]
    if settings.spacing is not None:
        size = [
            max(1, round(n * z / s))
            for n, z, s in zip(oriented_shape, oriented_zooms, settings.spacing)
        ]
        image = F.interpolate(image, size=size, mode="trilinear", align_corners=False)

    if isinstance(model, nn.Module):
        model.eval()
    logits = sliding_window_inference(
        image.to(device), tuple(roi_size), sw_batch_size, model, overlap=overlap, mode="gaussian"
    )
    probabilities = torch.softmax(torch.as_tensor(logits).float(), dim=1)
    if settings.spacing is not None:
        probabilities = F.interpolate(
            probabilities, size=oriented_shape, mode="trilinear", align_corners=False
        )
    labels = probabilities.argmax(dim=1)[0].cpu().numpy()
    labels = apply_orientation(labels, ornt_transform(target, start))

    dtype = np.uint8 if probabilities.shape[1] <= 256 else np.int16
    out_header = source.header.copy()
    out_header.set_data_dtype(dtype)
    out_header.set_slope_inter(1.0, 0.0)
    # a single-channel file keeps its stored layout (e.g. a trailing axis of 1);
    # a multi-channel one gives a 3-D map, since a label map has no channels
    single = math.prod(source.shape) == math.prod(header.shape)
    if not single:
        out_header.set_intent("none")
    out_shape = source.shape if single else header.shape
    labels = np.ascontiguousarray(labels.astype(dtype)).reshape(out_shape)
    output_path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(labels, source.affine, out_header), str(output_path))
    return output_path


def predict_paths(
    model: nn.Module | Callable[[Tensor], Tensor],
    inputs: str | Path | Sequence[str | Path],
    output_dir: str | Path,
    roi_size: Sequence[int],
    preprocessing: VolumePreprocessing | Mapping | None = None,
    sw_batch_size: int = 1,
    overlap: float = 0.25,
    device: torch.device | str = "cpu",
    in_channels: int | None = None,
) -> list[Path]:
    """Segment one image, a list of images or a folder; outputs keep the input file names.

    Each file is one case (3-D, or 4-D with channels last).
    """
    files = find_nifti_files(inputs)
    output_dir = Path(output_dir)
    return [
        predict_volume(
            model,
            path,
            output_dir / path.name,
            roi_size,
            preprocessing,
            sw_batch_size,
            overlap,
            device,
            in_channels,
        )
        for path in files
    ]


class VolumePredictor:
    """``predictor(model, inputs, output)``: what a run's data bundle offers the CLI.

    One input file and an ``output`` ending in ``.nii``/``.nii.gz`` writes that
    file; otherwise ``output`` is a folder receiving one label map per input
    (folders among ``inputs`` are expanded), named like its input. Each input
    file is one case; a multi-channel case is a 4-D NIfTI with channels last,
    and its channel count must be ``in_channels`` when that is given.
    """

    def __init__(
        self,
        roi_size: Sequence[int],
        preprocessing: VolumePreprocessing | Mapping | None = None,
        sw_batch_size: int = 1,
        overlap: float = 0.25,
        in_channels: int | None = None,
    ) -> None:
        self.roi_size = tuple(int(r) for r in roi_size)
        self.preprocessing = _as_preprocessing(preprocessing)
        self.sw_batch_size = sw_batch_size
        self.overlap = overlap
        self.in_channels = in_channels

    def __call__(
        self,
        model: nn.Module | Callable[[Tensor], Tensor],
        inputs: str | Path | Sequence[str | Path],
        output: str | Path,
        device: torch.device | str = "cpu",
    ) -> list[Path]:
        files = find_nifti_files(inputs)
        settings = (
            self.roi_size, self.preprocessing, self.sw_batch_size, self.overlap, device,
            self.in_channels,
        )  # fmt: skip
        output = Path(output)
        if len(files) == 1 and output.name.endswith(NIFTI_SUFFIXES) and not output.is_dir():
            return [predict_volume(model, files[0], output, *settings)]
        return predict_paths(model, files, output, *settings)
