"""Relaxations: how an architecture parameter becomes mixing weights.

A relaxation owns three maps of an edge-by-op parameter of shape ``(E, K)``:

* :meth:`Relaxation.init_param` creates the parameter (it may be a geoopt
  ``ManifoldParameter``: the parameter carries its own geometry, so the
  architecture optimizer never asks which relaxation it serves);
* :meth:`Relaxation.weights` gives the mixing weights used in the forward
  pass, possibly sampled during training (Gumbel, Dirichlet);
* :meth:`Relaxation.probabilities` gives the deterministic per-edge
  distribution used for logging and selection;
* :meth:`Relaxation.regularizer` gives an extra term of the architecture loss
  (DrNAS' KL, FairDARTS' zero-one loss), zero by default.

Temperatures that anneal (GDAS) are a pure function of the search progress
set through :meth:`Relaxation.set_progress`, so a resumed run reproduces them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from manifold_nas.registry import Registry
from manifold_nas.space.sparsemax import sparsemax

__all__ = [
    "RELAXATIONS",
    "DirichletRelaxation",
    "GumbelHardRelaxation",
    "Relaxation",
    "SigmoidRelaxation",
    "SoftmaxRelaxation",
    "SparsemaxRelaxation",
    "entropy",
]

RELAXATIONS: Registry[type[Relaxation]] = Registry(
    "relaxations", entry_point_group="manifold_nas.relaxations"
)


class Relaxation:
    """Base class: logits initialised as ``init_scale * randn`` (DARTS)."""

    name = "base"
    init_scale = 1e-3

    def __init__(self) -> None:
        self.progress = 0.0

    def init_param(
        self, shape: tuple[int, int], dtype: torch.dtype = torch.float32
    ) -> nn.Parameter:
        return nn.Parameter(self.init_scale * torch.randn(shape, dtype=dtype))

    def weights(self, param: Tensor, *, training: bool) -> Tensor:
        return self.probabilities(param)

    def probabilities(self, param: Tensor) -> Tensor:
        raise NotImplementedError

    def regularizer(self, param: Tensor) -> Tensor:
        return param.new_zeros(())

    def set_progress(self, fraction: float) -> None:
        """Tell the relaxation how far the search is, in [0, 1]."""
        self.progress = min(max(float(fraction), 0.0), 1.0)

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if k != "progress")
        return f"{type(self).__name__}({fields})"


@RELAXATIONS.register("softmax")
class SoftmaxRelaxation(Relaxation):
    """DARTS: :math:`w = \\operatorname{softmax}(\\alpha / T)`.

    With ``temperature_end`` the temperature anneals geometrically over the
    search (SNAS-style), sharpening the distribution as the search ends.
    """

    name = "softmax"

    def __init__(self, temperature: float = 1.0, temperature_end: float | None = None) -> None:
        super().__init__()
        for value in (temperature, temperature_end):
            if value is not None and value <= 0:
                raise ValueError(f"softmax temperatures must be positive, got {value}")
        self.start = temperature
        self.end = temperature if temperature_end is None else temperature_end

    @property
    def temperature(self) -> float:
        """Geometric interpolation from ``temperature`` to ``temperature_end`` over the search."""
        return self.start * (self.end / self.start) ** self.progress

    def probabilities(self, param: Tensor) -> Tensor:
        return F.softmax(param / self.temperature, dim=-1)


@RELAXATIONS.register("sparsemax")
class SparsemaxRelaxation(Relaxation):
    """SPDNetNAS: the Euclidean projection of :math:`\\alpha` onto the simplex.

    With the DARTS start (``1e-3 * randn``) every op begins in the support
    with a weight close to ``1/K``.
    """

    name = "sparsemax"

    def probabilities(self, param: Tensor) -> Tensor:
        return sparsemax(param, dim=-1)


@RELAXATIONS.register("gumbel")
class GumbelHardRelaxation(Relaxation):
    """GDAS: hard Gumbel-softmax with a straight-through gradient.

    During training one op per edge is sampled from
    :math:`\\operatorname{softmax}((\\log\\operatorname{softmax}(\\alpha) + g)/\\tau)`;
    the forward weight is one-hot and the backward is that of the soft
    sample. :math:`\\tau` anneals linearly from ``tau_max`` to ``tau_min``.
    """

    name = "gumbel"

    def __init__(self, tau_max: float = 10.0, tau_min: float = 0.1) -> None:
        super().__init__()
        if not 0 < tau_min <= tau_max:
            raise ValueError(f"need 0 < tau_min <= tau_max, got {tau_min}, {tau_max}")
        self.tau_max = tau_max
        self.tau_min = tau_min

    @property
    def tau(self) -> float:
        return self.tau_max - (self.tau_max - self.tau_min) * self.progress

    def probabilities(self, param: Tensor) -> Tensor:
        return F.softmax(param, dim=-1)

    def weights(self, param: Tensor, *, training: bool) -> Tensor:
        if not training:
            return self.probabilities(param)
        log_p = F.log_softmax(param, dim=-1)
        while True:
            gumbel = -torch.empty_like(param).exponential_().log()
            soft = F.softmax((log_p + gumbel) / self.tau, dim=-1)
            if torch.isfinite(soft).all():
                break
        index = soft.argmax(dim=-1, keepdim=True)
        hard = torch.zeros_like(soft).scatter_(-1, index, 1.0)
        return hard - soft.detach() + soft


@RELAXATIONS.register("sigmoid")
class SigmoidRelaxation(Relaxation):
    """FairDARTS: independent sigmoids and the zero-one loss.

    :math:`w = \\sigma(\\alpha)`; the regulariser
    :math:`-\\lambda \\cdot \\operatorname{mean}((\\sigma(\\alpha) - 0.5)^2)` pushes every
    weight towards 0 or 1. Probabilities for logging and selection are the
    sigmoids normalised per edge.
    """

    name = "sigmoid"

    def __init__(self, zero_one_weight: float = 10.0) -> None:
        super().__init__()
        self.zero_one_weight = zero_one_weight

    def weights(self, param: Tensor, *, training: bool) -> Tensor:
        return torch.sigmoid(param)

    def probabilities(self, param: Tensor) -> Tensor:
        s = torch.sigmoid(param)
        return s / s.sum(dim=-1, keepdim=True)

    def regularizer(self, param: Tensor) -> Tensor:
        return -self.zero_one_weight * F.mse_loss(torch.sigmoid(param), torch.full_like(param, 0.5))


@RELAXATIONS.register("dirichlet")
class DirichletRelaxation(Relaxation):
    """DrNAS: weights sampled from :math:`\\operatorname{Dir}(\\beta)`, :math:`\\beta = \\operatorname{ELU}(\\alpha) + 1`.

    Sampling uses the reparameterised ``rsample``; the regulariser is
    :math:`\\lambda \\cdot \\mathrm{KL}(\\operatorname{Dir}(\\beta) \\,\\|\\, \\operatorname{Dir}(\\mathbf{1}))`
    summed over edges. Probabilities are the Dirichlet mean
    :math:`\\beta / \\sum \\beta`.
    """

    name = "dirichlet"

    def __init__(self, kl_weight: float = 1e-3) -> None:
        super().__init__()
        self.kl_weight = kl_weight

    @staticmethod
    def concentration(param: Tensor) -> Tensor:
        return F.elu(param) + 1.0

    def probabilities(self, param: Tensor) -> Tensor:
        beta = self.concentration(param)
        return beta / beta.sum(dim=-1, keepdim=True)

    def weights(self, param: Tensor, *, training: bool) -> Tensor:
        if not training:
            return self.probabilities(param)
        beta = self.concentration(param)
        return torch.distributions.Dirichlet(beta).rsample()

    def regularizer(self, param: Tensor) -> Tensor:
        beta = self.concentration(param)
        prior = torch.distributions.Dirichlet(torch.ones_like(beta))
        kl = torch.distributions.kl_divergence(torch.distributions.Dirichlet(beta), prior)
        return self.kl_weight * kl.sum()


def entropy(probabilities: Tensor) -> Tensor:
    """Per-row Shannon entropy in nats, with ``0 log 0 = 0`` and a finite gradient there."""
    p = probabilities.clamp_min(0)
    tiny = torch.finfo(p.dtype).tiny
    return -(p * p.clamp_min(tiny).log()).sum(dim=-1)
