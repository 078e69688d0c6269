"""``"synthetic_shapes"``: thick-slice volumes whose labels depend on 3-D shape only.

Each volume holds randomly oriented, non-overlapping solids of three kinds,
all filled with the *same* intensity:

* class 1, spheres (radius 5 mm);
* class 2, rods: prolate ellipsoids with semi-axes (2.5, 2.5, 10) mm;
* class 3, discs: oblate ellipsoids with semi-axes (7, 7, 2) mm.

A rod seen end-on and a sphere, or a disc seen face-on and a sphere's equator,
look alike in one slice, so the class is decided by 3-D context. Volumes are
sampled with thick slices (default spacing (1, 1, 3) mm, the last axis being
the through-plane axis): occupancy is computed on a finer grid along the
thick axis and a voxel's label is the solid covering at least half of it.
Every labelled voxel has intensity 1 (no partial-volume blur, which would make
thin solids darker and leak the class through intensity). A smooth multiplicative
bias field and Gaussian noise are added. Generation is deterministic given
``seed`` (training volumes use seeds ``seed·10⁴ + i``, test volumes
``seed·10⁴ + 5000 + i``) and takes well under a second per volume.

Volumes are written as NIfTI with an MSD ``dataset.json`` (labelled test
entries) and loaded through the ordinary ``"datalist"`` path.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from scipy.spatial.transform import Rotation

from manifold_nas.data import DATASETS, DataBundle
from manifold_nas.domains.volumetric.data import build_datalist_dataset
from manifold_nas.domains.volumetric.generated import default_cache_root, write_generated_datalist
from manifold_nas.domains.volumetric.validation import check_patch_size

__all__ = [
    "SHAPE_CLASSES",
    "build_synthetic_shapes_dataset",
    "synthetic_shapes_volume",
    "write_synthetic_shapes",
]

#: class index -> (name, ellipsoid semi-axes in mm)
SHAPE_CLASSES: dict[int, tuple[str, tuple[float, float, float]]] = {
    1: ("sphere", (5.0, 5.0, 5.0)),
    2: ("rod", (2.5, 2.5, 10.0)),
    3: ("disc", (7.0, 7.0, 2.0)),
}
#: supersampling factor along the thick-slice axis for the majority-vote labels
_SUBSAMPLES = 3


def synthetic_shapes_volume(
    seed: int,
    shape: Sequence[int] = (48, 48, 16),
    spacing: Sequence[float] = (1.0, 1.0, 3.0),
    n_objects: int = 5,
    noise: float = 0.2,
    bias: float = 0.3,
) -> tuple[np.ndarray, np.ndarray]:
    """One ``(image float32, label uint8)`` pair of the given voxel ``shape``."""
    rng = np.random.default_rng(seed)
    shape = tuple(int(n) for n in shape)
    spacing = np.asarray(spacing, dtype=float)
    thick = int(np.argmax(spacing))
    # fine grid: each thick-slice voxel is split into _SUBSAMPLES sub-voxels along ``thick``
    fine_shape = list(shape)
    fine_shape[thick] *= _SUBSAMPLES
    fine_spacing = spacing.copy()
    fine_spacing[thick] /= _SUBSAMPLES
    axes = [(np.arange(n) + 0.5) * s for n, s in zip(fine_shape, fine_spacing)]
    coords = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1)
    extent = np.asarray(shape) * spacing

    fine_label = np.zeros(fine_shape, dtype=np.uint8)
    placed: list[tuple[np.ndarray, float]] = []
    classes = [1 + (k % len(SHAPE_CLASSES)) for k in range(n_objects)]
    rng.shuffle(classes)
    for cls in classes:
        semi = np.asarray(SHAPE_CLASSES[cls][1])
        radius = float(semi.max())
        for _ in range(100):
            centre = rng.uniform(radius * 0.5, extent - radius * 0.5)
            if all(np.linalg.norm(centre - c) > radius + r for c, r in placed):
                break
        placed.append((centre, radius))
        rotation = Rotation.random(random_state=int(rng.integers(2**31))).as_matrix()
        local = (coords - centre) @ rotation
        inside = np.sum((local / semi) ** 2, axis=-1) <= 1.0
        fine_label[inside & (fine_label == 0)] = cls

    def coarsen(volume: np.ndarray) -> np.ndarray:
        moved = np.moveaxis(volume, thick, -1)
        moved = moved.reshape(*moved.shape[:-1], shape[thick], _SUBSAMPLES)
        return np.moveaxis(moved, -2, thick)

    fractions = np.stack([coarsen(fine_label == cls).mean(-1) for cls in SHAPE_CLASSES], axis=0)
    label = np.where(fractions.max(0) >= 0.5, fractions.argmax(0) + 1, 0).astype(np.uint8)

    centred = [
        np.linspace(-1.0, 1.0, n).reshape([-1 if a == i else 1 for a in range(3)])
        for i, n in enumerate(shape)
    ]
    linear = sum(rng.normal(0, 1) * c for c in centred)
    quadratic = sum(rng.normal(0, 0.5) * c**2 for c in centred)
    field = np.exp(bias * (linear + quadratic) / 2)
    image = (label > 0) * field + rng.normal(0.0, noise, size=shape)
    return image.astype(np.float32), label


def write_synthetic_shapes(
    folder: str | Path,
    n_train: int = 12,
    n_test: int = 4,
    seed: int = 0,
    shape: Sequence[int] = (48, 48, 16),
    spacing: Sequence[float] = (1.0, 1.0, 3.0),
    n_objects: int = 5,
    noise: float = 0.2,
    bias: float = 0.3,
) -> Path:
    """Write the volumes and ``dataset.json`` into ``folder``; return the JSON path.

    The folder is filled atomically: files are written to a sibling temporary
    folder that is renamed into place, so concurrent runs never see half a set.
    """
    affine = np.diag([*map(float, spacing), 1.0])
    options = {
        "shape": shape,
        "spacing": spacing,
        "n_objects": n_objects,
        "noise": noise,
        "bias": bias,
    }

    def subjects(prefix: str, offset: int, count: int):
        for i in range(count):
            yield (
                f"{prefix}_{i:03d}",
                *synthetic_shapes_volume(seed * 10_000 + offset + i, **options),
            )

    header = {
        "name": "synthetic_shapes",
        "description": "spheres / rods / discs of equal intensity, thick slices",
        "modality": {"0": "synthetic"},
        "labels": {"0": "background", **{str(k): v[0] for k, v in SHAPE_CLASSES.items()}},
    }
    return write_generated_datalist(
        folder,
        affine,
        lambda: subjects("shapes", 0, n_train),
        lambda: subjects("shapes_test", 5_000, n_test),
        header,
    )


@DATASETS.register("synthetic_shapes")
def build_synthetic_shapes_dataset(
    n_train: int = 12,
    n_test: int = 4,
    shape: Sequence[int] = (48, 48, 16),
    spacing: Sequence[float] = (1.0, 1.0, 3.0),
    n_objects: int = 5,
    noise: float = 0.2,
    bias: float = 0.3,
    seed: int = 0,
    cache_dir: str | None = None,
    patch_size: Sequence[int] = (32, 32, 16),
    samples_per_volume: int = 2,
    cache_rate: float = 1.0,
) -> DataBundle:
    """Generate (or reuse) the synthetic shapes set and load it as a datalist."""
    patch_size = check_patch_size(patch_size)  # before any volume is written
    settings = dict(
        n_train=n_train, n_test=n_test, seed=seed, shape=list(shape), spacing=list(spacing),
        n_objects=n_objects, noise=noise, bias=bias,
    )  # fmt: skip
    key = hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
    root = Path(cache_dir) if cache_dir is not None else default_cache_root() / "synthetic_shapes"
    datalist = write_synthetic_shapes(root / key, **settings)
    bundle = build_datalist_dataset(
        datalist=str(datalist),
        patch_size=patch_size,
        orientation="RAS",
        samples_per_volume=samples_per_volume,
        cache_rate=cache_rate,
        seed=seed,
    )
    bundle.name = "synthetic_shapes"
    bundle.info["generator"] = settings
    return bundle
