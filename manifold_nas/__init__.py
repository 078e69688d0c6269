"""manifold-nas: differentiable cell search with domain op sets and Riemannian architecture optimizers.

The names below are imported on first use (PEP 562), so ``import manifold_nas``
and the command line's ``--help`` cost no torch until something is used.

=================  ===========================================================
layer              what lives there
=================  ===========================================================
kernel             ``errors``, ``registry``, ``config``, ``data``, ``task``
``space/``         what a search space is and what a domain implements
``optim/``         geometry and optimizers of architecture weights
``cost/``          measured cost: per-op tables and budgets
``predictors/``    readable accuracy and cost models
``run/``           one run: context, directory, training, retraining
``strategies/``    one folder per strategy family, its machinery beside it
``domains/``       the built-in op sets, networks and data (SPD, vision, volumetric)
app                ``search``, ``cli``, ``plugins``
=================  ===========================================================
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

#: public name -> the module that defines it
_EXPORTS = {
    "ARCH_OPTIMIZERS": "manifold_nas.optim",
    "build_optimizer": "manifold_nas.optim",
    "DATASETS": "manifold_nas.data",
    "DataBundle": "manifold_nas.data",
    "UserInputError": "manifold_nas.errors",
    "NETWORKS": "manifold_nas.space.networks",
    "OPSETS": "manifold_nas.space.opset",
    "OpSet": "manifold_nas.space.opset",
    "OpSpec": "manifold_nas.space.opset",
    "register_opset": "manifold_nas.space.opset",
    "RELAXATIONS": "manifold_nas.space.relaxations",
    "Relaxation": "manifold_nas.space.relaxations",
    "SELECTORS": "manifold_nas.space.selection",
    "ArchSpec": "manifold_nas.space.cell",
    "ChosenEdge": "manifold_nas.space.cell",
    "DerivedCell": "manifold_nas.space.cell",
    "MixedEdge": "manifold_nas.space.cell",
    "SearchCell": "manifold_nas.space.cell",
    "Genotype": "manifold_nas.space.genotype",
    "random_genotype": "manifold_nas.space.sampling",
    "ArchitectureParameters": "manifold_nas.space.supernet",
    "Supernet": "manifold_nas.space.supernet",
    "STRATEGIES": "manifold_nas.strategies.base",
    "Strategy": "manifold_nas.strategies.base",
    "register_strategy": "manifold_nas.strategies.base",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'manifold_nas' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
