"""Generated NIfTI datasets: cached, written atomically, read back as a datalist.

The embedded tasks (``synthetic_shapes``, ``mni152_tissue``) write their
volumes as NIfTI plus an MSD ``dataset.json`` into a cache folder keyed by
their settings, so that training goes through the same loading path as user
data. A folder is filled in a sibling staging folder that is renamed into
place, so concurrent runs never see half a set.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

__all__ = ["default_cache_root", "write_generated_datalist"]

#: name, image array, label array of one generated subject
Subject = tuple[str, np.ndarray, np.ndarray]


def default_cache_root() -> Path:
    """``$XDG_CACHE_HOME/manifold-nas`` (``~/.cache/manifold-nas`` by default)."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "manifold-nas"


def write_generated_datalist(
    folder: str | Path,
    affine: np.ndarray,
    training: Callable[[], Iterable[Subject]],
    test: Callable[[], Iterable[Subject]],
    header: Mapping[str, Any],
) -> Path:
    """Write the subjects and ``dataset.json`` into ``folder`` unless it exists.

    ``training`` and ``test`` are called only when the folder must be
    written; ``header`` holds the datalist's descriptive keys (name, labels,
    modality, ...). Returns the path of ``dataset.json``.
    """
    folder = Path(folder)
    datalist = folder / "dataset.json"
    if datalist.is_file():
        return datalist
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    (staging / "images").mkdir()
    (staging / "labels").mkdir()

    def write(subjects: Iterable[Subject]) -> list[dict[str, str]]:
        entries = []
        for name, image, label in subjects:
            nib.save(nib.Nifti1Image(image, affine), staging / "images" / f"{name}.nii.gz")
            nib.save(nib.Nifti1Image(label, affine), staging / "labels" / f"{name}.nii.gz")
            entries.append({"image": f"./images/{name}.nii.gz", "label": f"./labels/{name}.nii.gz"})
        return entries

    train_entries, test_entries = write(training()), write(test())
    content = {
        **header,
        "tensorImageSize": "3D",
        "numTraining": len(train_entries),
        "numTest": len(test_entries),
        "training": train_entries,
        "test": test_entries,
    }
    (staging / "dataset.json").write_text(json.dumps(content, indent=2))
    try:
        staging.rename(folder)
    except OSError:
        # Another process finished the same folder first; its files are identical.
        shutil.rmtree(staging, ignore_errors=True)
    return datalist
