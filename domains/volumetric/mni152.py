"""``"mni152_tissue"``: brain tissue segmentation from nilearn's bundled MNI152 template.

Base volume: the MNI152 2009 symmetric T1 template and its grey/white-matter
probability maps, shipped with nilearn and loaded offline at 2 mm
(``load_mni152_template/gm_template/wm_template(resolution=2)``, 99×117×95).

* Classes: 0 background/CSF, 1 grey matter, 2 white matter; the label of a
  voxel is the argmax of ``[1 − GM − WM, GM, WM]`` (GM + WM never exceeds 1).
* CPU-friendly grid: the volume is cropped to the bounding box of
  ``GM + WM > 0.1`` plus a 2-voxel margin, then the T1 and the three
  probability maps are area-averaged to ``resolution_mm`` (4 mm by default:
  about 38×47×40 voxels) and the labels are the argmax of the averaged
  probabilities, not a nearest-neighbour pick.
* "Subjects": every volume is the template under a random affine (rotation
  ±0.15 rad, scale ±10 %, shift ±2 voxels) and a random elastic deformation
  (bilinear for the image, nearest for the labels), then a random
  multiplicative bias field, gamma contrast change and Gaussian noise.
  Training volumes use seeds ``seed·10⁴ + i``, test volumes
  ``seed·10⁴ + 5000 + i`` (disjoint).

All volumes derive from one anatomy, so scores are optimistic; report this
task as "single-anatomy". Volumes are written as NIfTI with an MSD
``dataset.json`` into ``cache_dir`` (default
``~/.cache/manifold-nas/mni152_tissue/<settings hash>``) and loaded through the
ordinary ``"datalist"`` path.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from monai.transforms import (
    Compose,
    Rand3DElasticd,
    RandAdjustContrastd,
    RandAffined,
    RandBiasFieldd,
    RandGaussianNoised,
)
from torch.nn import functional as F

from manifold_nas.data import DATASETS, DataBundle
from manifold_nas.domains.volumetric.data import build_datalist_dataset
from manifold_nas.domains.volumetric.generated import default_cache_root, write_generated_datalist
from manifold_nas.domains.volumetric.validation import check_patch_size
from manifold_nas.errors import UserInputError

__all__ = [
    "TISSUE_CLASSES",
    "build_mni152_tissue_dataset",
    "mni152_tissue_template",
    "tissue_subject",
    "write_mni152_tissue",
]

TISSUE_CLASSES = ("background", "grey_matter", "white_matter")
_TEMPLATE_RESOLUTION_MM = 2.0
_CROP_MARGIN = 2


def mni152_tissue_template(resolution_mm: float = 4.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(T1 in [0, 1] float32, labels uint8, affine)`` cropped to the brain at ``resolution_mm``."""
    if resolution_mm < _TEMPLATE_RESOLUTION_MM:
        raise UserInputError(f"mni152_tissue resolution_mm must be >= 2, got {resolution_mm}")
    from nilearn import datasets

    t1 = datasets.load_mni152_template(resolution=2)
    gm = datasets.load_mni152_gm_template(resolution=2).get_fdata()
    wm = datasets.load_mni152_wm_template(resolution=2).get_fdata()
    brain = np.argwhere(gm + wm > 0.1)
    low = np.maximum(brain.min(0) - _CROP_MARGIN, 0)
    high = np.minimum(brain.max(0) + 1 + _CROP_MARGIN, gm.shape)
    crop = tuple(slice(a, b) for a, b in zip(low, high))
    t1_data = t1.get_fdata()[crop]
    t1_data = t1_data / max(float(t1_data.max()), 1e-6)
    gm, wm = gm[crop], wm[crop]
    channels = np.stack([t1_data, np.clip(1.0 - gm - wm, 0, 1), gm, wm]).astype(np.float32)

    factor = resolution_mm / _TEMPLATE_RESOLUTION_MM
    size = [max(1, round(n / factor)) for n in channels.shape[1:]]
    pooled = F.interpolate(torch.from_numpy(channels)[None], size=size, mode="area")[0].numpy()
    image = pooled[0].astype(np.float32)
    labels = pooled[1:].argmax(0).astype(np.uint8)

    affine = t1.affine.copy()
    affine[:3, 3] = affine[:3, :3] @ low + affine[:3, 3]
    zoom = np.asarray(channels.shape[1:]) / np.asarray(size)
    # area pooling: new voxel i covers old voxels [i·z, (i+1)·z); its centre moves by (z − 1)/2
    affine[:3, 3] += affine[:3, :3] @ ((zoom - 1) / 2)
    affine[:3, :3] = affine[:3, :3] * zoom
    return image, labels, affine


def _augmentation(seed: int) -> Compose:
    keys = ("image", "label")
    transform = Compose(
        [
            RandAffined(
                keys, prob=1.0, rotate_range=(0.15,) * 3, scale_range=(0.1,) * 3,
                translate_range=(2,) * 3, mode=("bilinear", "nearest"), padding_mode="zeros",
            ),
            Rand3DElasticd(
                keys, sigma_range=(3, 5), magnitude_range=(20, 40), prob=1.0,
                mode=("bilinear", "nearest"), padding_mode="zeros",
            ),
            RandBiasFieldd("image", degree=3, coeff_range=(0.1, 0.3), prob=1.0),
            RandAdjustContrastd("image", gamma=(0.8, 1.25), prob=1.0),
            RandGaussianNoised("image", std=0.03, prob=1.0),
        ]
    )  # fmt: skip
    transform.set_random_state(seed=seed)
    return transform


def tissue_subject(
    image: np.ndarray, labels: np.ndarray, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """One augmented "subject" of the template (deterministic given ``seed``)."""
    sample = {
        "image": torch.from_numpy(image)[None],
        "label": torch.from_numpy(labels.astype(np.float32))[None],
    }
    result = _augmentation(seed)(sample)
    out_image = np.asarray(torch.as_tensor(result["image"])[0], dtype=np.float32)
    out_label = np.rint(np.asarray(torch.as_tensor(result["label"])[0])).astype(np.uint8)
    return out_image, out_label


def write_mni152_tissue(
    folder: str | Path, n_train: int = 8, n_test: int = 2, seed: int = 0, resolution_mm: float = 4.0
) -> Path:
    """Write augmented subjects and ``dataset.json`` into ``folder`` (atomically)."""
    image, labels, affine = mni152_tissue_template(resolution_mm)

    def subjects(prefix: str, offset: int, count: int):
        for i in range(count):
            yield (f"{prefix}_{i:03d}", *tissue_subject(image, labels, seed * 10_000 + offset + i))

    header = {
        "name": "mni152_tissue",
        "description": "augmented MNI152 2009 template, GM/WM tissue labels (single anatomy)",
        "modality": {"0": "T1"},
        "labels": {str(k): name for k, name in enumerate(TISSUE_CLASSES)},
    }
    return write_generated_datalist(
        folder,
        affine,
        lambda: subjects("mni152", 0, n_train),
        lambda: subjects("mni152_test", 5_000, n_test),
        header,
    )


@DATASETS.register("mni152_tissue")
def build_mni152_tissue_dataset(
    n_train: int = 8,
    n_test: int = 2,
    resolution_mm: float = 4.0,
    seed: int = 0,
    cache_dir: str | None = None,
    patch_size: Sequence[int] = (32, 32, 32),
    samples_per_volume: int = 2,
    cache_rate: float = 1.0,
) -> DataBundle:
    """Generate (or reuse) the augmented MNI152 tissue set and load it as a datalist."""
    patch_size = check_patch_size(patch_size)  # before any volume is written
    settings = {"n_train": n_train, "n_test": n_test, "seed": seed, "resolution_mm": resolution_mm}
    key = hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
    root = Path(cache_dir) if cache_dir is not None else default_cache_root() / "mni152_tissue"
    datalist = write_mni152_tissue(root / key, **settings)
    bundle = build_datalist_dataset(
        datalist=str(datalist),
        patch_size=patch_size,
        orientation="RAS",
        samples_per_volume=samples_per_volume,
        cache_rate=cache_rate,
        seed=seed,
    )
    bundle.name = "mni152_tissue"
    bundle.info["generator"] = settings
    return bundle
