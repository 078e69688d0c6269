"""The vision domain: DARTS and NAS-Bench-201 op sets and image datasets.

Importing this package registers the op sets ``"darts"`` and ``"nb201"`` in
:data:`manifold_nas.space.opset.OPSETS` and the datasets ``"digits"``,
``"image_folder"`` and ``"cifar10"`` in :data:`manifold_nas.data.DATASETS`.
"""

from manifold_nas.domains.vision import data, networks, ops

__all__ = ["data", "networks", "ops"]
