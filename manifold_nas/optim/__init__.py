"""Geometry and optimizers for architecture weights.

* :class:`Simplex`: the open probability simplex with the Fisher-Rao metric,
  a ``geoopt`` manifold, so ``geoopt.optim.RiemannianSGD``/``RiemannianAdam``
  optimise a ``ManifoldParameter`` on it;
* :class:`SimplexRelaxation` (``"simplex"``) and :class:`SphereRelaxation`
  (``"sphere"``): relaxations whose parameter carries that geometry,
  registered in :data:`manifold_nas.space.relaxations.RELAXATIONS` on import;
* :class:`ExponentiatedGradient` (GAEA) and :class:`NaturalGradient` (on
  logits): drop-in ``torch.optim.Optimizer`` subclasses;
* :data:`ARCH_OPTIMIZERS` and :func:`build_optimizer`: every optimizer by name.
"""

from __future__ import annotations

from manifold_nas.optim.exponentiated_gradient import ExponentiatedGradient
from manifold_nas.optim.factory import (
    ARCH_OPTIMIZERS,
    DARTS_ARCH_ADAM_OPTIONS,
    build_optimizer,
    optimizer_options,
)
from manifold_nas.optim.natural_gradient import NaturalGradient
from manifold_nas.optim.parametrizations import SimplexRelaxation, SphereRelaxation, kl_to_uniform
from manifold_nas.optim.simplex import Simplex

__all__ = [
    "ARCH_OPTIMIZERS",
    "DARTS_ARCH_ADAM_OPTIONS",
    "ExponentiatedGradient",
    "NaturalGradient",
    "Simplex",
    "SimplexRelaxation",
    "SphereRelaxation",
    "build_optimizer",
    "kl_to_uniform",
    "optimizer_options",
]
