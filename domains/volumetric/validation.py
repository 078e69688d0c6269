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

Channels (multi-modal cases such as MSD Task01 brain tumour or Task05
prostate) come in either of the layouts MONAI's ``LoadImaged`` +
``EnsureChannelFirstd`` read:

* one 4-D NIfTI whose *last* axis holds the ``C`` channels, shape
  ``(X, Y, Z, C)`` (the MSD layout; ``C = 1`` is a plain volume);
* a list of files per case, ``"image": ["t1.nii.gz", "t2.nii.gz"]`` (the
  MONAI / nnU-Net style), concatenated along the channel axis; the files of
  one case must have the same stored shape and an affine equal under MONAI's
  own test (``numpy.allclose`` with default tolerances).

Labels are 3-D (a 4-D label whose last axis is 1 is accepted). Every image of
a datalist must have the same channel count, and the MSD ``"modality"`` field,
when present, must list exactly that many channels.
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
    "ImageSource",
    "VolumeHeader",
    "check_channel_counts",
    "check_patch_fits",
    "check_patch_size",
    "check_segmentation_pair",
    "read_datalist",
    "read_image_header",
    "read_volume_header",
]

#: largest absolute difference (mm) tolerated between image and label affines
AFFINE_TOLERANCE = 1e-3

#: one case's image: a single (possibly 4-D) file, or its channels as a list of files
ImageSource = str | Path | Sequence[str | Path]


@dataclass(frozen=True)
class VolumeHeader:
    """Facts read from a NIfTI header: spatial shape, channel count, affine, voxel sizes (mm).

    ``shape`` is always the 3-D spatial shape; ``channels`` is the number of
    image channels (1 for a plain volume). ``path`` is the file (for a case
    given as a list of channel files, its first file).
    """

    path: Path
    shape: tuple[int, int, int]
    affine: np.ndarray
    zooms: tuple[float, float, float]
    channels: int = 1

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
    """A parsed datalist with absolute paths.

    An ``image`` is a path string, or a list of path strings (one case's
    channel files); a ``label`` is always one path string. ``modalities``
    holds the names of the MSD ``"modality"`` field in channel order.
    """

    path: Path
    training: list[dict[str, str | list[str]]]
    test: list[dict[str, str | list[str]]] = field(default_factory=list)
    unlabelled: list[str | list[str]] = field(default_factory=list)
    class_names: tuple[str, ...] | None = None
    modalities: tuple[str, ...] | None = None


def _resolve(root: Path, entry: object, key: str, datalist: Path) -> str:
    if not isinstance(entry, str) or not entry:
        raise UserInputError(f"{datalist}: every {key!r} must be a non-empty path string")
    path = Path(entry)
    return str(path if path.is_absolute() else (root / path).resolve())


def _resolve_image(root: Path, entry: object, datalist: Path) -> str | list[str]:
    """A path string, or a non-empty list of them (the channel files of one case)."""
    if isinstance(entry, list):
        if not entry:
            raise UserInputError(f"{datalist}: an 'image' list must name at least one file")
        return [_resolve(root, item, "image", datalist) for item in entry]
    return _resolve(root, entry, "image", datalist)


def _resolve_pair(root: Path, item: dict, datalist: Path) -> dict[str, str | list[str]]:
    return {
        "image": _resolve_image(root, item["image"], datalist),
        "label": _resolve(root, item["label"], "label", datalist),
    }


def _indexed_names(content: dict, key: str, datalist: Path) -> tuple[str, ...] | None:
    """The values of an MSD ``{"0": name, "1": name, ...}`` field in index order."""
    names = content.get(key)
    if names is None:
        return None
    if not isinstance(names, dict) or not names:
        raise UserInputError(f"datalist {datalist}: {key!r} must map indices to names")
    try:
        indices = sorted(int(k) for k in names)
    except ValueError:
        raise UserInputError(f"datalist {datalist}: {key!r} keys must be integers") from None
    if indices != list(range(len(indices))):
        raise UserInputError(f"datalist {datalist}: {key!r} keys must be 0..{len(indices) - 1}")
    return tuple(str(names[str(k)]) for k in indices)


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
        training.append(_resolve_pair(root, item, path))
    if not training:
        raise UserInputError(f"datalist {path} has an empty 'training' list")
    test, unlabelled = [], []
    for item in content.get("test", []) or []:
        if isinstance(item, dict) and "label" in item:
            test.append(_resolve_pair(root, item, path))
        elif isinstance(item, dict):
            unlabelled.append(_resolve_image(root, item.get("image"), path))
        else:
            unlabelled.append(_resolve_image(root, item, path))
    class_names = _indexed_names(content, "labels", path)
    modalities = _indexed_names(content, "modality", path)
    return Datalist(path, training, test, unlabelled, class_names, modalities)


def _read_header(path: Path, label: bool) -> tuple[VolumeHeader, tuple[int, ...]]:
    """The header facts and the shape as stored in the file."""
    role = "label" if label else "image"
    if not path.is_file():
        raise UserInputError(f"{role} file {path} does not exist")
    try:
        image = nib.load(str(path))
    except (OSError, nib.filebasedimages.ImageFileError) as error:
        raise UserInputError(f"{path} is not a readable NIfTI image: {error}") from None
    stored = tuple(int(n) for n in image.shape)
    if label and not (len(stored) == 3 or (len(stored) == 4 and stored[3] == 1)):
        raise UserInputError(f"label {path} has shape {stored}; a 3-D label map is expected")
    if len(stored) not in (3, 4):
        raise UserInputError(
            f"{path} has shape {stored}; a 3-D volume or a 4-D volume with channels last "
            "is expected"
        )
    channels = stored[3] if len(stored) == 4 else 1
    zooms = tuple(float(z) for z in image.header.get_zooms()[:3])
    affine = np.asarray(image.affine, dtype=float)
    return VolumeHeader(path, stored[:3], affine, zooms, channels), stored


def read_volume_header(path: str | Path, *, label: bool = False) -> VolumeHeader:
    """Spatial shape, channels, affine and voxel sizes of one NIfTI file.

    An image may be 3-D (one channel) or 4-D with channels on the last axis;
    a ``label`` must be 3-D (or 4-D with a last axis of 1).
    """
    return _read_header(Path(path), label)[0]


def read_image_header(image: ImageSource) -> VolumeHeader:
    """The header of one case's image: one file, or a list of channel files.

    The channel files of a case are concatenated along the channel axis, so
    they must have the same stored shape and (as MONAI requires) affines equal
    under ``numpy.allclose``; ``channels`` is the total over the files.
    """
    if isinstance(image, (str, Path)):
        return read_volume_header(image)
    files = [Path(p) for p in image]
    if not files:
        raise UserInputError("an image given as a list of channel files needs at least one file")
    first, first_stored = _read_header(files[0], label=False)
    channels = first.channels
    for path in files[1:]:
        header, stored = _read_header(path, label=False)
        if stored != first_stored:
            raise UserInputError(
                f"channel file {path} has shape {stored} but {files[0]} of the same case "
                f"has {first_stored}"
            )
        # MONAI's reader refuses to concatenate files whose affines fail this test
        if not np.allclose(header.affine, first.affine):
            raise UserInputError(
                f"channel file {path} has a different affine from {files[0]} of the same case"
            )
        channels += header.channels
    return VolumeHeader(first.path, first.shape, first.affine, first.zooms, channels)


def _count(n: int) -> str:
    return f"{n} channel" if n == 1 else f"{n} channels"


def check_channel_counts(
    images: Sequence[VolumeHeader],
    modalities: Sequence[str] | None = None,
    datalist: str | Path | None = None,
) -> int:
    """The channel count shared by all ``images``; raise naming the first that differs.

    The reference is the number of ``modalities`` when the datalist declares
    them, otherwise the first image's count.
    """
    if not images:
        raise UserInputError("no images to count channels of")
    if modalities is not None:
        expected = len(modalities)
        reference = f"datalist {datalist} declares {len(modalities)} in 'modality'"
    else:
        expected = images[0].channels
        reference = f"the first image {images[0].path} has {expected}"
    for header in images:
        if header.channels != expected:
            raise UserInputError(
                f"image {header.path} has {_count(header.channels)} but {reference}"
            )
    return expected


def check_segmentation_pair(
    image_path: ImageSource, label_path: str | Path, num_classes: int | None = None
) -> VolumeHeader:
    """Check an image/label pair: spatial shapes, affines, integer labels within the classes.

    The image may have channels (see :func:`read_image_header`); the label is 3-D.
    """
    image = read_image_header(image_path)
    label = read_volume_header(label_path, label=True)
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


def check_patch_size(patch_size: object, key: str = "data.patch_size") -> tuple[int, int, int]:
    """``patch_size`` as three positive ints, or a one-line error naming ``key``.

    Entries must be whole numbers (``16`` or ``16.0``); ``0`` or a negative
    entry would make MONAI's crop silently take the whole axis, and a
    fraction would be truncated.
    """
    try:
        entries = None if isinstance(patch_size, (str, bytes, dict)) else list(patch_size)
    except TypeError:  # a scalar
        entries = None
    if entries is None or len(entries) != 3:
        raise UserInputError(
            f"{key} must be 3 positive integers (one per spatial axis), got {patch_size!r}"
        )
    for axis, value in enumerate(entries):
        whole = (
            isinstance(value, (int, np.integer))
            and not isinstance(value, bool)
            or isinstance(value, (float, np.floating))
            and float(value).is_integer()
        )
        if not whole or value < 1:
            raise UserInputError(
                f"{key} must be 3 positive integers, got {_plain(entries)} "
                f"(axis {axis}: {_plain([value])[1:-1]})"
            )
    return tuple(int(v) for v in entries)


def _plain(values: list) -> str:
    """``[0, 16, 8]`` for a list that may hold numpy scalars."""
    return "[" + ", ".join(repr(v.item() if isinstance(v, np.generic) else v) for v in values) + "]"


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
