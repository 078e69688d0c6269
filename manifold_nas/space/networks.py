"""The registry of domain macro networks.

A network builder has the signature::

    build(opset: OpSet, data: DataBundle, genotype: Genotype | None = None, **options)

With ``genotype=None`` it returns the *searchable* network, which exposes
``arch_specs`` and is called as ``network(x, arch_weights)``; with a genotype
it returns the *derived* network, called as ``network(x)``, in which only the
chosen ops exist. ``options`` are the config's ``network:`` keys (less
``name`` and ``opset``) and must be keyword arguments with defaults, so that
unknown keys can be reported.

A builder may carry a tiny example config (:func:`network_example`: bundled
data, small sizes), with which the registry-driven contract tests build it,
run it and round-trip its genotypes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from torch import nn

from manifold_nas.registry import Registry

__all__ = ["NETWORKS", "NetworkBuilder", "network_example"]

NetworkBuilder = Callable[..., nn.Module]
B = TypeVar("B", bound=Callable[..., nn.Module])


def network_example(data: Mapping[str, Any], **options: Any) -> Callable[[B], B]:
    """Attach ``example_config = {"data": data, "network": options}`` to a builder.

    ``data`` names a bundled data set that needs no files; ``options`` are
    network options (``opset`` included) small enough for a test.
    """

    def attach(builder: B) -> B:
        builder.example_config = {"data": dict(data), "network": dict(options)}  # type: ignore[attr-defined]
        return builder

    return attach


NETWORKS: Registry[NetworkBuilder] = Registry("networks", entry_point_group="manifold_nas.networks")
