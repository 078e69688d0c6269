"""Domain op sets, macro networks and datasets.

Each subpackage (``manifold_nas.domains.vision``, ...) registers its op sets, networks and
datasets in the core registries when imported.
"""
