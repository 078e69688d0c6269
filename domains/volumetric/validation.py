"""Read and check a Medical Segmentation Decathlon style datalist before loading.

The datalist is the MSD ``dataset.json`` as is::

    {"labels": {"0": "background", "1": "tumour"},
     "numTraining": 2,
     "training": [{"image": "./imagesTr/a.nii.gz", "label": "./labelsTr/a.nii.gz"}, ...],
     "test": ["./imagesTs/c.nii.gz", ...]}

Paths are relative to the JSON's folder. ``test`` entries may be plain paths
(unlabelled, kept for prediction) or ``{"image", "label"}`` dicts (labelled,
used as the test set). Every check raises
:class:`~manifold_nas.errors.UserInputError` with a one-line message naming
the offending file; headers are read with nibabel without loading images.

Images must be single-channel 3-D. A 4-D NIfTI whose 4th dimension is 1 is
accepted (MONAI's ``EnsureChannelFirstd`` turns that axis into the channel);
any other 4-D image (multi-modal MSD tasks, time series) is rejected.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.orientations import axcodes2ornt, io_orientation, ornt_transform

from manifold_nas.errors import UserInputError

__all__ = [
    "AFFINE_TOLERANCE",
    "Datalist",
    "VolumeHeader",
    "check_patch_fits",
    "check_segmentation_pair",
    "read_datalist",
    "read_volume_header",
]

#: largest absolute difference (mm) tolerated between image and label affines
AFFINE_TOLERANCE = 1e-3


@dataclass(frozen=True)
class VolumeHeader:
    """Facts read from a NIfTI header: 3-D shape, affine and voxel sizes (mm)."""

    path: Path
    shape: tuple[int, int, int]
    affine: np.ndarray
    zooms: tuple[float, float, float]

    def oriented(self, axcodes: str | None) -> tuple[tuple[int, ...], tuple[float, ...]]:
        """Shape and voxel sizes after reorientation to ``axcodes`` (e.g. ``"RAS"``)."""
        if axcodes is None:
            return self.shape, self.zooms
        transform = ornt_transform(io_orientation(self.affine), axcodes2ornt(tuple(axcodes)))
        shape, zooms = [0, 0, 0], [0.0, 0.0, 0.0]
        for axis, (target, _) in enumerate(transform):
            shape[int(target)] = self.shape[axis]
            zooms[int(target)] = self.zooms[axis]
        return tuple(shape), tuple(zooms)


@dataclass
class Datalist:
    """A parsed datalist with absolute paths."""

    path: Path
    training: list[dict[str, str]]
    test: list[dict[str, str]] = field(default_factory=list)
    unlabelled: list[str] = field(default_factory=list)
    class_names: tuple[str, ...] | None = None


def _resolve(root: Path, entry: object, key: str, datalist: Path) -> str:
    if not isinstance(entry, str) or not entry:
        raise UserInputError(f"{datalist}: every {key!r} must be a non-empty path string")
    path = Path(entry)
    return str(path if path.is_absolute() else (root / path).resolve())


def read_datalist(path: str | Path) -> Datalist:
    """Parse an MSD ``dataset.json``; raise naming the file for any layout error."""
    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"datalist {path} does not exist")
    try:
        content = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UserInputError(f"datalist {path} is not valid JSON: {error}") from None
    if not isinstance(content, dict) or not isinstance(content.get("training"), list):
        raise UserInputError(f"datalist {path} has no 'training' list")
    root = path.parent
    training = []
    for item in content["training"]:
        if not isinstance(item, dict) or "image" not in item or "label" not in item:
            raise UserInputError(f"datalist {path}: training entries need 'image' and 'label'")
        training.append({key: _resolve(root, item[key], key, path) for key in ("image", "label")})
    if not training:
        raise UserInputError(f"datalist {path} has an empty 'training' list")
    test, unlabelled = [], []
    for item in content.get("test", []) or []:
        if isinstance(item, dict) and "label" in item:
            test.append({key: _resolve(root, item[key], key, path) for key in ("image", "label")})
        elif isinstance(item, dict):
            unlabelled.append(_resolve(root, item.get("image"), "image", path))
        else:
            unlabelled.append(_resolve(root, item, "image", path))
    class_names = None
    labels = content.get("labels")
    if labels is not None:
        if not isinstance(labels, dict) or not labels:
            raise UserInputError(f"datalist {path}: 'labels' must map class indices to names")
        try:
            indices = sorted(int(k) for k in labels)
        except ValueError:
            raise UserInputError(f"datalist {path}: 'labels' keys must be integers") from None
        if indices != list(range(len(indices))):
            raise UserInputError(f"datalist {path}: 'labels' keys must be 0..{len(indices) - 1}")
        class_names = tuple(str(labels[str(k)]) for k in indices)
    return Datalist(path, training, test, unlabelled, class_names)


def read_volume_header(path: str | Path) -> VolumeHeader:
    """Shape, affine and voxel sizes of a 3-D (or 3-D + singleton) NIfTI."""
    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"image file {path} does not exist")
    try:
        image = nib.load(str(path))
    except (OSError, nib.filebasedimages.ImageFileError) as error:
        raise UserInputError(f"{path} is not a readable NIfTI image: {error}") from None
    shape = tuple(int(n) for n in image.shape)
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) != 3:
        raise UserInputError(f"{path} has shape {shape}; a single-channel 3-D volume is expected")
    zooms = tuple(float(z) for z in image.header.get_zooms()[:3])
    return VolumeHeader(path, shape, np.asarray(image.affine, dtype=float), zooms)


def check_segmentation_pair(
    image_path: str | Path, label_path: str | Path, num_classes: int | None = None
) -> VolumeHeader:
    """Check an image/label pair: shapes, affines, integer labels within the classes."""
    image = read_volume_header(image_path)
    label = read_volume_header(label_path)
    if image.shape != label.shape:
        raise UserInputError(
            f"label {label.path} has shape {label.shape} but its image {image.path} has {image.shape}"
        )
    if not np.allclose(image.affine, label.affine, atol=AFFINE_TOLERANCE, rtol=0):
        raise UserInputError(
            f"label {label.path} has a different affine from its image {image.path}"
        )
    values = np.asanyarray(nib.load(str(label.path)).dataobj)
    if not np.issubdtype(values.dtype, np.integer) and not np.all(np.equal(np.mod(values, 1), 0)):
        raise UserInputError(f"label {label.path} has non-integer values")
    if num_classes is not None and values.size:
        low, high = float(values.min()), float(values.max())
        if low < 0 or high > num_classes - 1:
            raise UserInputError(
                f"label {label.path} has values in [{low:g}, {high:g}] outside the "
                f"{num_classes} declared classes 0..{num_classes - 1}"
            )
    return image


def check_patch_fits(
    header: VolumeHeader,
    patch_size: Sequence[int],
    orientation: str | None = None,
    spacing: Sequence[float] | None = None,
) -> tuple[int, ...]:
    """Raise unless ``patch_size`` fits the image after reorientation and resampling.

    Returns the expected (oriented, resampled) shape.
    """
    shape, zooms = header.oriented(orientation)
    if spacing is not None:
        shape = tuple(max(1, round(n * z / s)) for n, z, s in zip(shape, zooms, spacing))
    if any(p > n for p, n in zip(patch_size, shape)):
        raise UserInputError(
            f"patch size {tuple(patch_size)} is larger than image {header.path} "
            f"(shape {tuple(shape)} after orientation/resampling)"
        )
    return tuple(shape)
