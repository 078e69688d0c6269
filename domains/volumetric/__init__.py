"""The volumetric domain: V-NAS 2D / 3D / P3D op set, residual encoder-decoder, NIfTI data.

Importing this package registers the op set ``"volumetric"`` in
:data:`manifold_nas.space.opset.OPSETS`, the networks ``"vnas"`` and ``"monai_unet"``
in :data:`manifold_nas.space.networks.NETWORKS` and the datasets ``"datalist"``,
``"synthetic_shapes"`` and ``"mni152_tissue"`` in
:data:`manifold_nas.data.DATASETS`.
"""

from manifold_nas.domains.volumetric import (
    baselines,
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
    "baselines",
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
