r"""Architecture parameters that live on a manifold instead of behind a softmax.

Two relaxations whose parameter is a ``geoopt.ManifoldParameter``, so a
Riemannian optimizer (or :class:`~manifold_nas.optim.ExponentiatedGradient`)
updates it without the search loop knowing the geometry:

* ``"simplex"``: :math:`p` on :class:`~manifold_nas.optim.simplex.Simplex`
  (Fisher-Rao), used directly as mixing weights, as in GAEA;
* ``"sphere"``: :math:`s` on ``geoopt.Sphere`` with weights :math:`p = s^2`;
  :math:`s \mapsto s^2` maps the unit sphere onto the simplex and the round
  metric onto a quarter of the Fisher-Rao metric.

Both start from the same distribution as the softmax relaxations,
:math:`p = \operatorname{softmax}(\sigma z)` with :math:`z \sim \mathcal{N}(0, I)`
and :math:`\sigma` = ``init_scale``: uniform up to tiny noise.
"""

from __future__ import annotations

import math

import geoopt
import torch
from torch import Tensor

from manifold_nas.optim.simplex import Simplex, default_min_prob
from manifold_nas.space.relaxations import RELAXATIONS, Relaxation

__all__ = ["SimplexRelaxation", "SphereRelaxation", "kl_to_uniform"]


def kl_to_uniform(p: Tensor) -> Tensor:
    r"""Sum over rows of :math:`\mathrm{KL}(p \,\|\, \mathcal{U}) = \sum_i p_i \log(p_i K)`.

    Zero entries contribute zero (:math:`0 \log 0 = 0`); the logarithm's
    argument is clamped to the smallest normal number so the gradient stays finite.
    """
    num_ops = p.shape[-1]
    log_p = p.clamp_min(torch.finfo(p.dtype).tiny).log()
    return (p * (log_p + math.log(num_ops))).sum()


def _noisy_uniform(shape: tuple[int, int], dtype: torch.dtype, init_scale: float) -> Tensor:
    return torch.softmax(init_scale * torch.randn(shape, dtype=dtype), dim=-1)


@RELAXATIONS.register("simplex")
class SimplexRelaxation(Relaxation):
    r"""GAEA: the parameter *is* the per-edge distribution :math:`p \in \Delta^\circ`.

    ``weights = probabilities = p`` (no softmax). The parameter is a
    ``ManifoldParameter`` on :class:`~manifold_nas.optim.simplex.Simplex`, so
    ``RiemannianSGD`` takes the multiplicative step
    :math:`p \odot e^{-\eta g} / Z` on it.

    Parameters
    ----------
    kl_to_uniform_weight : float
        :math:`\lambda` of the regulariser :math:`\lambda \sum_{e,i} p_{ei} \log(p_{ei} K)`
        (KL to uniform, GAEA's ``arch_weight_decay``). Equals minus the
        entropy plus a constant, so a negative :math:`\lambda` is entropy
        minimisation.
    init_scale : float
        Noise scale of the start :math:`\operatorname{softmax}(\sigma z)`;
        0 gives exactly :math:`1/K`.
    min_prob : float, optional
        Floor of the :class:`~manifold_nas.optim.simplex.Simplex` manifold;
        ``None`` picks one by dtype.
    """

    name = "simplex"

    def __init__(
        self,
        kl_to_uniform_weight: float = 0.0,
        init_scale: float = Relaxation.init_scale,
        min_prob: float | None = None,
    ) -> None:
        super().__init__()
        self.kl_to_uniform_weight = kl_to_uniform_weight
        self.init_scale = init_scale
        self.min_prob = min_prob

    def init_param(
        self, shape: tuple[int, int], dtype: torch.dtype = torch.float32
    ) -> geoopt.ManifoldParameter:
        manifold = Simplex(self.min_prob)
        start = manifold.projx(_noisy_uniform(shape, dtype, self.init_scale))
        return geoopt.ManifoldParameter(start, manifold=manifold)

    def probabilities(self, param: Tensor) -> Tensor:
        return param

    def regularizer(self, param: Tensor) -> Tensor:
        if self.kl_to_uniform_weight == 0.0:
            return param.new_zeros(())
        return self.kl_to_uniform_weight * kl_to_uniform(param)


@RELAXATIONS.register("sphere")
class SphereRelaxation(Relaxation):
    r"""Square-root parametrisation: :math:`s` on the unit sphere, :math:`p = s^2`.

    The parameter is a ``ManifoldParameter`` on ``geoopt.Sphere()`` (each row
    has unit norm), initialised at :math:`s = \sqrt{p_0}` with :math:`p_0`
    uniform up to tiny noise. Since :math:`\lVert s \rVert = 1` the squares sum
    to one; a floor :math:`\varepsilon` is added before renormalising,
    :math:`p = (s^2 + \varepsilon) / \sum_j (s_j^2 + \varepsilon)`, so a weight
    whose :math:`s_i` underflows stays positive. Use ``weight_decay=0`` in the
    Riemannian optimizer: geoopt adds it as a Euclidean term before projecting.

    Parameters
    ----------
    kl_to_uniform_weight : float
        :math:`\lambda` of :math:`\lambda \sum_{e,i} p_{ei} \log(p_{ei} K)`.
    init_scale : float
        Noise scale of the start; 0 gives exactly :math:`s = 1/\sqrt{K}`.
    min_prob : float, optional
        The floor :math:`\varepsilon`; ``None`` picks ``1e-12`` for float64 and
        ``1e-7`` for float32.
    """

    name = "sphere"

    def __init__(
        self,
        kl_to_uniform_weight: float = 0.0,
        init_scale: float = Relaxation.init_scale,
        min_prob: float | None = None,
    ) -> None:
        super().__init__()
        self.kl_to_uniform_weight = kl_to_uniform_weight
        self.init_scale = init_scale
        self.min_prob = min_prob

    def init_param(
        self, shape: tuple[int, int], dtype: torch.dtype = torch.float32
    ) -> geoopt.ManifoldParameter:
        manifold = geoopt.Sphere()
        start = manifold.projx(_noisy_uniform(shape, dtype, self.init_scale).sqrt())
        return geoopt.ManifoldParameter(start, manifold=manifold)

    def probabilities(self, param: Tensor) -> Tensor:
        floor = self.min_prob if self.min_prob is not None else default_min_prob(param.dtype)
        squares = param.square() + floor
        return squares / squares.sum(dim=-1, keepdim=True)

    def regularizer(self, param: Tensor) -> Tensor:
        if self.kl_to_uniform_weight == 0.0:
            return param.new_zeros(())
        return self.kl_to_uniform_weight * kl_to_uniform(self.probabilities(param))
