"""Search strategies: the :data:`STRATEGIES` registry and the built-in strategies.

=============  ================================================================
``bilevel``    DARTS-family differentiable search (the default): alternating
               weight and architecture steps, first or second order, then a
               selector (:mod:`manifold_nas.strategies.bilevel`)
``random``     random search: sample genotypes, train each briefly through
               :meth:`~manifold_nas.run.Run.train`, keep the best
               (:mod:`manifold_nas.strategies.random_search`)
``evolution``  regularized (aging) evolution over genotypes, with proxies,
               early stopping and local or Ray trials
               (:mod:`manifold_nas.strategies.evolution`)
``spos``       single-path one-shot supernet training, then a search over
               paths scored with inherited weights (:mod:`~.spos`)
``cream``      prioritized paths: single-path training distilled from a board
               of the best paths, the final choice from the board (:mod:`~.cream`)
``dna``        block-wise distillation from a teacher, every block's candidates
               ranked, an exact budgeted combiner (:mod:`~.dna`)
``fox``        explainable linear predictors of accuracy and measured cost,
               simulated annealing under a hardware budget (:mod:`~.fox`)
=============  ================================================================

Each module of this package defines and registers one strategy; the package
imports them all, so a new built-in strategy is one new file.

Third parties add strategies through the entry-point group
``manifold_nas.strategies`` (a :class:`~manifold_nas.strategies.base.Strategy`
subclass per entry point).
"""

from __future__ import annotations

import importlib
import pkgutil

from manifold_nas.registry import Registry
from manifold_nas.strategies.base import Strategy

__all__ = ["STRATEGIES", "Strategy", "register_strategy"]

STRATEGIES: Registry[type[Strategy]] = Registry(
    "strategies", entry_point_group="manifold_nas.strategies", singular="strategy"
)


def register_strategy(name: str):
    """Class decorator: register a :class:`Strategy` subclass as ``name``."""

    def add(cls: type[Strategy]) -> type[Strategy]:
        cls.name = name
        STRATEGIES.register(name, cls)
        return cls

    return add


def _import_builtin_strategies() -> None:
    # Every module of this package registers its strategy on import, so a new
    # built-in strategy is one new file and nothing else to edit.
    for module in pkgutil.iter_modules(__path__):
        if module.name != "base":
            importlib.import_module(f"{__name__}.{module.name}")


_import_builtin_strategies()
