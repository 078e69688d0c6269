r"""Optimizers by name: the ``ARCH_OPTIMIZERS`` registry and :func:`build_optimizer`.

Every entry is a ``torch.optim.Optimizer`` subclass, so the search loop treats
the architecture and the weight optimizer alike:

========================  ==================================================
``"adam"``, ``"adamw"``   ``torch.optim.Adam`` / ``AdamW`` (DARTS: Adam on
                          logits, see :data:`DARTS_ARCH_ADAM_OPTIONS`)
``"sgd"``                 ``torch.optim.SGD``
``"eg"``                  :class:`~manifold_nas.optim.ExponentiatedGradient`
``"natural_gradient"``    :class:`~manifold_nas.optim.NaturalGradient`
``"riemannian_sgd"``      ``geoopt.optim.RiemannianSGD``
``"riemannian_adam"``     ``geoopt.optim.RiemannianAdam``
========================  ==================================================

The geoopt optimizers dispatch on ``param.manifold``: on a ``Simplex``
parameter ``riemannian_sgd`` is GAEA's exponentiated gradient, and on plain
tensors they reduce to SGD/Adam. Their ``weight_decay`` adds the Euclidean
:math:`\lambda x` to the gradient before the Riemannian conversion; keep it 0
for manifold parameters and regularise with ``kl_to_uniform_weight`` instead.
Third parties add optimizers through the entry-point group
``manifold_nas.optimizers``.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable
from typing import Any

import geoopt
import torch
from torch import Tensor

from manifold_nas.errors import UserInputError
from manifold_nas.optim.exponentiated_gradient import ExponentiatedGradient
from manifold_nas.optim.natural_gradient import NaturalGradient
from manifold_nas.registry import Registry

__all__ = ["ARCH_OPTIMIZERS", "DARTS_ARCH_ADAM_OPTIONS", "build_optimizer", "optimizer_options"]

ARCH_OPTIMIZERS: Registry[type[torch.optim.Optimizer]] = Registry(
    "optimizers", entry_point_group="manifold_nas.optimizers"
)
ARCH_OPTIMIZERS.register("adam", torch.optim.Adam)
ARCH_OPTIMIZERS.register("adamw", torch.optim.AdamW)
ARCH_OPTIMIZERS.register("sgd", torch.optim.SGD)
ARCH_OPTIMIZERS.register("eg", ExponentiatedGradient)
ARCH_OPTIMIZERS.register("natural_gradient", NaturalGradient)
ARCH_OPTIMIZERS.register("riemannian_sgd", geoopt.optim.RiemannianSGD)
ARCH_OPTIMIZERS.register("riemannian_adam", geoopt.optim.RiemannianAdam)

#: DARTS' architecture optimizer: Adam on the logits (``cnn/architect.py``).
DARTS_ARCH_ADAM_OPTIONS: dict[str, Any] = {
    "lr": 3e-4,
    "betas": (0.5, 0.999),
    "weight_decay": 1e-3,
}

_KEYWORD_KINDS = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)


def optimizer_options(optimizer_class: type[torch.optim.Optimizer]) -> dict[str, Any]:
    """Keyword options of ``optimizer_class`` and their defaults.

    A required option (no default) maps to ``inspect.Parameter.empty``.
    """
    signature = inspect.signature(optimizer_class.__init__)
    return {
        name: parameter.default
        for name, parameter in signature.parameters.items()
        if name not in ("self", "params") and parameter.kind in _KEYWORD_KINDS
    }


def build_optimizer(
    name: str, params: Iterable[Tensor] | Iterable[dict[str, Any]], **options: Any
) -> torch.optim.Optimizer:
    """Build the optimizer registered as ``name`` over ``params``.

    Parameters
    ----------
    name : str
        A name in :data:`ARCH_OPTIMIZERS` (``manifold-nas list optimizers``).
    params : iterable
        Parameters or parameter groups, as for ``torch.optim.Optimizer``.
    **options
        Keyword arguments of the optimizer class (``lr``, ``betas``, ...).

    Raises
    ------
    UserInputError
        If ``name`` is not registered, an option is not a keyword of the
        class (the message lists the valid ones), a required option such as
        ``lr`` is missing, or the class rejects a value.
    """
    optimizer_class = ARCH_OPTIMIZERS.get(name)
    valid = optimizer_options(optimizer_class)
    accepts_any = any(
        parameter.kind is inspect.Parameter.VAR_KEYWORD
        for parameter in inspect.signature(optimizer_class.__init__).parameters.values()
    )
    unknown = sorted(set(options) - set(valid))
    if unknown and not accepts_any:
        raise UserInputError(
            f"unknown option{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} "
            f"for optimizer {name!r}; valid options: {', '.join(valid)}"
        )
    missing = [
        option
        for option, default in valid.items()
        if default is inspect.Parameter.empty and option not in options
    ]
    if missing:
        raise UserInputError(f"optimizer {name!r} needs option {', '.join(map(repr, missing))}")
    try:
        return optimizer_class(params, **options)
    except UserInputError:
        raise
    except ValueError as error:
        raise UserInputError(f"optimizer {name!r}: {error}") from error
