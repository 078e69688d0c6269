"""Plugins: everything registered through the ``manifold_nas.*`` entry-point groups.

The built-in domains are declared in ``pyproject.toml`` exactly like a third
party's package would declare them (``[project.entry-points."manifold_nas.opsets"]``
and so on), so the core never names a domain module. Every registry scans
its own group lazily on first use; :func:`load_plugins` forces all of them
at once, for commands that browse every registry (``manifold-nas list``).
"""

from __future__ import annotations

from manifold_nas.registry import Registry

__all__ = ["ENTRY_POINT_PREFIX", "all_registries", "load_plugins"]

ENTRY_POINT_PREFIX = "manifold_nas."


def all_registries() -> dict[str, Registry]:
    """Every registry of the core, by the kind name ``manifold-nas list`` uses."""
    from manifold_nas.data import DATASETS
    from manifold_nas.optim import ARCH_OPTIMIZERS
    from manifold_nas.space.networks import NETWORKS
    from manifold_nas.space.opset import OPSETS
    from manifold_nas.space.relaxations import RELAXATIONS
    from manifold_nas.space.selection import SELECTORS
    from manifold_nas.strategies import STRATEGIES

    return {
        "opsets": OPSETS,
        "relaxations": RELAXATIONS,
        "optimizers": ARCH_OPTIMIZERS,
        "selectors": SELECTORS,
        "strategies": STRATEGIES,
        "datasets": DATASETS,
        "networks": NETWORKS,
    }


def load_plugins() -> None:
    """Load every entry point of every ``manifold_nas.*`` group (idempotent)."""
    for registry in all_registries().values():
        registry.list()
