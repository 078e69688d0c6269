"""The registry of domain macro networks.

A network builder has the signature::

    build(opset: OpSet, data: DataBundle, genotype: Genotype | None = None, **options)

With ``genotype=None`` it returns the *searchable* network, which exposes
``arch_specs`` and is called as ``network(x, arch_weights)``; with a genotype
it returns the *derived* network, called as ``network(x)``, in which only the
chosen ops exist. ``options`` are the config's ``network:`` keys (less
``name`` and ``opset``) and must be keyword arguments with defaults, so that
unknown keys can be reported.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from manifold_nas.registry import Registry

__all__ = ["NETWORKS", "NetworkBuilder"]

NetworkBuilder = Callable[..., nn.Module]

NETWORKS: Registry[NetworkBuilder] = Registry("networks", entry_point_group="manifold_nas.networks")
