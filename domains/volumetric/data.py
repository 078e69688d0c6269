"""The ``"datalist"`` dataset: NIfTI volumes listed in an MSD ``dataset.json``.

Pipeline (MONAI dictionary transforms, keys ``image`` and ``label``)::

    LoadImaged (nibabel) → EnsureChannelFirstd → Orientationd(orientation)
    → [Spacingd(spacing), bilinear image / nearest label]
    → per-channel intensity scaling of the image → [train only] RandCropByPosNegLabeld

cached by ``CacheDataset`` up to the first random transform. Training items
are lists of ``samples_per_volume`` patches (flattened by
``monai.data.list_data_collate``); test items are whole volumes for
sliding-window evaluation. Every file is validated first
(:mod:`manifold_nas.domains.volumetric.validation`), and every resampled volume is logged.

Multi-modal cases (a 4-D NIfTI with channels last, or a list of channel
files per case) load as ``C`` image channels; ``sample_shape = (C, *patch)``
so the network's input width follows the data. All images must share ``C``;
the MSD ``"modality"`` names, when given, are recorded as
``info["modalities"]`` (otherwise ``channel0``, ``channel1``, ...).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from monai.data import CacheDataset, list_data_collate
from monai.transforms import Compose, EnsureTyped, RandCropByPosNegLabeld

from manifold_nas.data import DATASETS, DataBundle
from manifold_nas.domains.volumetric.predict import VolumePredictor
from manifold_nas.domains.volumetric.preprocessing import KEYS, VolumePreprocessing
from manifold_nas.domains.volumetric.task import SegmentationTask
from manifold_nas.domains.volumetric.validation import (
    check_channel_counts,
    check_patch_fits,
    check_patch_size,
    check_segmentation_pair,
    read_datalist,
    read_image_header,
)
from manifold_nas.errors import UserInputError

__all__ = ["VolumePreprocessing", "build_datalist_dataset", "thick_slice_axis"]

logger = logging.getLogger(__name__)


def thick_slice_axis(spacings: Sequence[Sequence[float]]) -> int | None:
    """The axis whose median voxel size is clearly (≥ 1.5×) the largest, if any."""
    median = np.median(np.asarray(spacings, dtype=float), axis=0)
    order = np.argsort(median)
    return int(order[-1]) if median[order[-1]] >= 1.5 * median[order[-2]] else None


def _split(files: list[dict], test_fraction: float, seed: int, datalist: Path):
    if len(files) < 2:
        raise UserInputError(
            f"datalist {datalist} needs at least 2 training volumes to hold out a test set"
        )
    order = list(range(len(files)))
    random.Random(seed).shuffle(order)
    n_test = min(len(files) - 1, max(1, round(test_fraction * len(files))))
    return [files[i] for i in order[n_test:]], [files[i] for i in order[:n_test]]


@DATASETS.register("datalist")
def build_datalist_dataset(
    datalist: str = "dataset.json",
    patch_size: Sequence[int] = (32, 32, 16),
    num_classes: int | None = None,
    spacing: Sequence[float] | None = None,
    orientation: str | None = "RAS",
    intensity: str = "percentile",
    intensity_range: Sequence[float] | None = None,
    percentiles: Sequence[float] = (0.5, 99.5),
    samples_per_volume: int = 2,
    pos_neg_ratio: Sequence[float] = (1.0, 1.0),
    test_fraction: float = 0.25,
    cache_rate: float = 1.0,
    seed: int = 0,
    sw_batch_size: int = 1,
    sw_overlap: float = 0.25,
) -> DataBundle:
    """Build train patches and whole test volumes from an MSD-style datalist.

    The test set is the datalist's labelled ``test`` entries when present,
    otherwise a seeded ``test_fraction`` hold-out of ``training``.
    ``num_classes`` defaults to the number of ``labels`` in the JSON; the
    number of image channels is read from the files (and checked against the
    JSON's ``modality`` when present).
    """
    patch_size = check_patch_size(patch_size)
    listing = read_datalist(datalist)
    if num_classes is None:
        if listing.class_names is None:
            raise UserInputError(f"datalist {listing.path} has no 'labels'; set data.num_classes")
        num_classes = len(listing.class_names)
    elif listing.class_names is not None and len(listing.class_names) != num_classes:
        raise UserInputError(
            f"num_classes={num_classes} but datalist {listing.path} declares "
            f"{len(listing.class_names)} labels"
        )
    class_names = listing.class_names or tuple(f"class{k}" for k in range(num_classes))
    preprocessing = VolumePreprocessing(
        orientation=orientation,
        spacing=None if spacing is None else tuple(float(s) for s in spacing),
        intensity=intensity,
        intensity_range=None
        if intensity_range is None
        else tuple(float(v) for v in intensity_range),
        percentiles=tuple(float(p) for p in percentiles),
    )

    entries = listing.training + listing.test
    # headers only: a channel mismatch is reported before any label is loaded
    images = [read_image_header(entry["image"]) for entry in entries]
    in_channels = check_channel_counts(images, listing.modalities, listing.path)
    modalities = listing.modalities or tuple(f"channel{c}" for c in range(in_channels))
    oriented_spacings, resampled = [], []
    for entry in entries:
        header = check_segmentation_pair(entry["image"], entry["label"], num_classes)
        check_patch_fits(header, patch_size, orientation, preprocessing.spacing)
        _, zooms = header.oriented(orientation)
        oriented_spacings.append(zooms)
        if preprocessing.spacing is not None and not np.allclose(
            zooms, preprocessing.spacing, rtol=1e-3
        ):
            resampled.append(entry["image"])
    if resampled:
        logger.warning(
            "resampling %d of %d volumes to spacing %s (first: %s)",
            len(resampled), len(oriented_spacings), preprocessing.spacing, resampled[0],
        )  # fmt: skip

    if listing.test:
        train_files, test_files = listing.training, listing.test
    else:
        train_files, test_files = _split(listing.training, test_fraction, seed, listing.path)

    deterministic = preprocessing.transforms()
    crop = RandCropByPosNegLabeld(
        KEYS, label_key="label", spatial_size=patch_size, pos=pos_neg_ratio[0],
        neg=pos_neg_ratio[1], num_samples=samples_per_volume, image_key="image",
    )  # fmt: skip
    train_transform = Compose([*deterministic, crop, EnsureTyped(KEYS, track_meta=False)])
    train_transform.set_random_state(seed=seed)
    test_transform = Compose([*deterministic, EnsureTyped(KEYS, track_meta=False)])
    train = CacheDataset(train_files, train_transform, cache_rate=cache_rate, progress=False)
    test = CacheDataset(test_files, test_transform, cache_rate=cache_rate, progress=False)

    axis = thick_slice_axis(oriented_spacings)
    task = SegmentationTask(num_classes, patch_size, sw_batch_size, sw_overlap, class_names)
    info = {
        "datalist": str(listing.path),
        "roi_size": patch_size,
        "patch_size": patch_size,
        "class_names": class_names,
        "preprocessing": preprocessing.as_dict(),
        "in_channels": in_channels,
        "modalities": modalities,
        "through_plane_axis": 2 if axis is None else axis,
        "anisotropic": axis is not None,
        "train_files": [f["image"] for f in train_files],
        "test_files": [f["image"] for f in test_files],
        "unlabelled_files": listing.unlabelled,
        "resampled_files": resampled,
        "samples_per_volume": samples_per_volume,
    }
    return DataBundle(
        name="datalist",
        train=train,
        test=test,
        num_classes=num_classes,
        sample_shape=(in_channels, *patch_size),
        task=task,
        info=info,
        collate_fn=list_data_collate,
        eval_batch_size=1,
        predictor=VolumePredictor(
            patch_size, preprocessing, sw_batch_size, sw_overlap, in_channels=in_channels
        ),
    )
