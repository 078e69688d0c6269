r"""Exponentiated gradient (GAEA): mirror descent on the probability simplex.

For a parameter whose rows are probabilities and the Euclidean gradient
:math:`g = \partial L / \partial p`, one step is

.. math::

    p^+ = \arg\min_{x \in \Delta} \eta \langle g, x \rangle + \mathrm{KL}(x \,\|\, p)
        = \frac{p \odot e^{-\eta g}}{Z},

which equals one ``geoopt.optim.RiemannianSGD`` step on
:class:`~manifold_nas.optim.simplex.Simplex` and one natural-gradient step on
the logits :math:`\log p`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor

from manifold_nas.errors import UserInputError
from manifold_nas.optim.simplex import Simplex, default_min_prob, normalize_log_weights

__all__ = ["ExponentiatedGradient"]


class ExponentiatedGradient(torch.optim.Optimizer):
    r"""GAEA's multiplicative update :math:`p \leftarrow p \odot e^{-\eta g} / Z` per row.

    Each parameter holds probabilities along its last dimension (a plain
    tensor or a ``ManifoldParameter`` on ``Simplex``). The step is evaluated
    as :math:`\operatorname{softmax}(\log p - \eta g)` so it never overflows,
    then floored at ``min_prob`` and renormalised so probabilities stay
    strictly positive and can grow back.

    Parameters
    ----------
    params : iterable
        Parameters or parameter groups, as for any ``torch.optim.Optimizer``.
    lr : float
        Step size :math:`\eta` (GAEA uses 0.1).
    kl_to_uniform_weight : float
        :math:`\lambda` of the regulariser :math:`\lambda \sum_i p_i \log(p_i K)`
        (the KL divergence to the uniform distribution, GAEA's
        ``arch_weight_decay``), added to the loss through its gradient
        :math:`\lambda (\log(p K) + 1)`. Positive values pull towards uniform,
        negative values towards a vertex.
    min_prob : float, optional
        Probability floor; ``None`` takes the floor of the parameter's
        ``Simplex`` manifold, or else ``1e-12`` for float64 and ``1e-7`` for
        float32.

    Raises
    ------
    UserInputError
        On the first step of a parameter whose rows are not probabilities
        (e.g. logits handed to this optimizer by mistake).
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 0.1,
        kl_to_uniform_weight: float = 0.0,
        min_prob: float | None = None,
    ) -> None:
        if lr < 0.0:
            raise ValueError(f"invalid learning rate: {lr}")
        if min_prob is not None and not 0.0 < min_prob < 1.0:
            raise ValueError(f"min_prob must lie in (0, 1), got {min_prob}")
        defaults = {"lr": lr, "kl_to_uniform_weight": kl_to_uniform_weight, "min_prob": min_prob}
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr = group["lr"]
            kl_weight = group["kl_to_uniform_weight"]
            for point in group["params"]:
                if point.grad is None:
                    continue
                if point.grad.is_sparse:
                    raise RuntimeError("ExponentiatedGradient does not support sparse gradients")
                state = self.state[point]
                if not state:
                    _check_rows_are_probabilities(point)
                    state["step"] = 0
                state["step"] += 1
                floor = group["min_prob"] or _floor_of(point)
                log_p = point.clamp_min(torch.finfo(point.dtype).tiny).log()
                grad = point.grad
                if kl_weight != 0.0:
                    grad = grad + kl_weight * (log_p + math.log(point.shape[-1]) + 1.0)
                point.copy_(normalize_log_weights(log_p - lr * grad, floor))
        return loss


def _floor_of(point: Tensor) -> float:
    # A parameter on a Simplex keeps the floor its manifold was built with.
    manifold = getattr(point, "manifold", None)
    if isinstance(manifold, Simplex):
        return manifold.floor(point.dtype)
    return default_min_prob(point.dtype)


def _check_rows_are_probabilities(point: Tensor) -> None:
    row_sums = point.sum(dim=-1)
    on_simplex = bool((point >= 0).all()) and torch.allclose(
        row_sums, torch.ones_like(row_sums), atol=1e-4, rtol=0.0
    )
    if not on_simplex:
        raise UserInputError(
            f"ExponentiatedGradient needs parameters whose rows are probabilities; got a "
            f"{tuple(point.shape)} tensor with row sums in "
            f"[{float(row_sums.min()):.3g}, {float(row_sums.max()):.3g}] "
            f"(use the 'simplex' relaxation, or 'natural_gradient' for logits)"
        )
