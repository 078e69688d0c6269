"""The volumetric domain: V-NAS 2D / 3D / P3D op set, residual encoder-decoder, NIfTI data.

Importing this package registers the op set ``"volumetric"`` in
:data:`manifold_nas.opset.OPSETS` and the datasets ``"datalist"``,
``"synthetic_shapes"`` and ``"mni152_tissue"`` in
:data:`manifold_nas.data.DATASETS`.
"""

from domains.volumetric import (
    data,
    mni152,
    network,
    ops,
    predict,
    preprocessing,
    synthetic,
    task,
    validation,
)

__all__ = [
    "data",
    "mni152",
    "network",
    "ops",
    "predict",
    "preprocessing",
    "synthetic",
    "task",
    "validation",
]
