"""SPD-matrix domain: covariance features, SPD data sets, the SPDNetNAS op set and networks.

Importing this package registers the SPD data sets in
:data:`manifold_nas.data.DATASETS`, the ``"spd"`` op set in
:data:`manifold_nas.space.opset.OPSETS` and the ``"spdnetnas"``, ``"spdnet"`` and
``"spdnetbn"`` networks in :data:`manifold_nas.space.networks.NETWORKS`.
"""

from manifold_nas.domains.spd import covariance, data, networks, ops, validation

__all__ = ["covariance", "data", "networks", "ops", "validation"]
