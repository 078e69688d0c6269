r"""Natural gradient on softmax logits: the Fisher-preconditioned DARTS update.

For logits :math:`\theta` with :math:`p = \operatorname{softmax}(\theta)` (per
row) the Fisher information of the categorical distribution is
:math:`F = \operatorname{diag}(p) - p p^\top`, and the chain rule gives
:math:`\nabla_\theta L = F g` with :math:`g = \partial L / \partial p`. Since
:math:`F \mathbf{1} = 0`, :math:`F^+ \nabla_\theta L` equals :math:`g` up to a
multiple of :math:`\mathbf{1}`, which does not change :math:`p`. Dividing
elementwise,

.. math::

    \nabla_\theta L \oslash p = g - \langle p, g \rangle \mathbf{1},

is one such representative, so the step
:math:`\theta \leftarrow \theta - \eta\, \nabla_\theta L \oslash p` gives
:math:`p^+ \propto p \odot e^{-\eta g}`: exactly the exponentiated gradient.
Plain gradient descent on :math:`\theta` instead sees :math:`F g`, which
vanishes as :math:`p` saturates.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor

from manifold_nas.optim.simplex import default_min_prob

__all__ = ["NaturalGradient"]


class NaturalGradient(torch.optim.Optimizer):
    r"""Natural-gradient descent on logits.

    :math:`\theta \leftarrow \theta - \eta\, \nabla_\theta L \oslash p` with
    :math:`p = \operatorname{softmax}(\theta)` over the last dimension. Two
    guards keep long runs sound:

    * the division uses :math:`p` clamped to the smallest normal number, so a
      probability that underflowed to zero (whose logit gradient is then zero
      too) gives a zero step instead of :math:`0/0`;
    * after the step every logit is raised to at least
      :math:`\operatorname{logsumexp}(\theta) + \log\varepsilon`. Because
      :math:`e^{\max(\theta_i, \log\varepsilon + \operatorname{lse}\theta)}
      \propto \max(p_i, \varepsilon)`,
      the resulting probabilities are exactly the floored and renormalised
      ones of :class:`~manifold_nas.optim.ExponentiatedGradient`, and a
      linear loss cannot drive a probability to exactly zero.

    Parameters
    ----------
    params : iterable
        Logit parameters or parameter groups.
    lr : float
        Step size :math:`\eta`.
    min_prob : float, optional
        Probability floor :math:`\varepsilon`; ``None`` picks ``1e-12`` for
        float64 and ``1e-7`` for float32.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 0.1,
        min_prob: float | None = None,
    ) -> None:
        if lr < 0.0:
            raise ValueError(f"invalid learning rate: {lr}")
        if min_prob is not None and not 0.0 < min_prob < 1.0:
            raise ValueError(f"min_prob must lie in (0, 1), got {min_prob}")
        super().__init__(params, {"lr": lr, "min_prob": min_prob})

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr = group["lr"]
            for logits in group["params"]:
                if logits.grad is None:
                    continue
                if logits.grad.is_sparse:
                    raise RuntimeError("NaturalGradient does not support sparse gradients")
                floor = group["min_prob"] or default_min_prob(logits.dtype)
                p = torch.softmax(logits, dim=-1).clamp_min(torch.finfo(logits.dtype).tiny)
                stepped = logits - lr * logits.grad / p
                lowest = torch.logsumexp(stepped, dim=-1, keepdim=True) + math.log(floor)
                logits.copy_(torch.maximum(stepped, lowest))
        return loss
