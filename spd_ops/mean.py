r"""Distances, geodesics and weighted Fréchet means on the SPD manifold.

Two metrics are supported.

* Affine-invariant (AIRM): :math:`d(X, Y) = \|\log(X^{-1/2} Y X^{-1/2})\|_F`,
  with Riemannian log/exp maps
  :math:`\operatorname{Log}_G X = G^{1/2}\log(G^{-1/2} X G^{-1/2}) G^{1/2}` and
  :math:`\operatorname{Exp}_G T = G^{1/2}\exp(G^{-1/2} T G^{-1/2}) G^{1/2}`.
* Log-Euclidean: :math:`d(X, Y) = \|\log X - \log Y\|_F`.

Neither distance carries the factor 1/2 of some papers (SPDNetNAS Eq. 1);
the AIRM one equals geoopt's ``SymmetricPositiveDefinite().dist``.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from .functional import EigFunction, eigh_functions, expm, logm, powm, sqrtm_invsqrtm, sym

__all__ = [
    "airm_distance",
    "airm_geodesic",
    "frechet_mean",
    "karcher_tangent",
    "log_euclidean_distance",
]

Metric = Literal["airm", "log_euclidean"]

_EXP_HALF = EigFunction(
    "exp(x/2)", lambda lam: torch.exp(0.5 * lam), lambda lam: 0.5 * torch.exp(0.5 * lam)
)
_EXP_NEG_HALF = EigFunction(
    "exp(-x/2)", lambda lam: torch.exp(-0.5 * lam), lambda lam: -0.5 * torch.exp(-0.5 * lam)
)


def airm_distance(X: Tensor, Y: Tensor) -> Tensor:
    r"""Affine-invariant distance :math:`\|\log(X^{-1/2} Y X^{-1/2})\|_F`.

    Parameters
    ----------
    X, Y : Tensor
        SPD matrices of broadcastable shapes ``(..., n, n)``.

    Returns
    -------
    Tensor
        Distances of shape ``(...)``; symmetric in ``X, Y`` and invariant under
        :math:`X, Y \mapsto A X A^\top, A Y A^\top` for invertible ``A``.
    """
    _, inv_root = sqrtm_invsqrtm(X)
    return torch.linalg.matrix_norm(logm(inv_root @ Y @ inv_root))


def log_euclidean_distance(X: Tensor, Y: Tensor) -> Tensor:
    r"""Log-Euclidean distance :math:`\|\log X - \log Y\|_F`, shape ``(...)``."""
    return torch.linalg.matrix_norm(logm(X) - logm(Y))


def airm_geodesic(A: Tensor, B: Tensor, t: float | Tensor) -> Tensor:
    r"""Point at time ``t`` on the AIRM geodesic from ``A`` (t=0) to ``B`` (t=1).

    .. math::

        \gamma(t) = A^{1/2} (A^{-1/2} B A^{-1/2})^{t} A^{1/2}.

    Parameters
    ----------
    A, B : Tensor
        SPD matrices of broadcastable shapes ``(..., n, n)``.
    t : float or Tensor
        Time. A float (or a tensor that needs no gradient) takes the matrix
        power from one eigendecomposition; a tensor that needs a gradient
        (a mixing weight) uses :math:`\exp(t \log C)`, differentiable in ``t``.
    """
    root, inv_root = sqrtm_invsqrtm(A)
    inner = inv_root @ B @ inv_root
    if isinstance(t, Tensor) and t.requires_grad:
        power = expm(t * logm(inner))
    else:
        power = powm(inner, float(t))
    return sym(root @ power @ root)


def _normalised_weights(weights: Tensor | None, X: Tensor) -> Tensor:
    """Weights of shape ``(K, ..., 1, 1)`` summing to one over the first axis."""
    count = X.shape[0]
    if weights is None:
        w = torch.full((count,), 1.0 / count, dtype=X.dtype, device=X.device)
    else:
        w = torch.as_tensor(weights, dtype=X.dtype, device=X.device)
        if w.dim() == 0 or w.shape[0] != count:
            raise ValueError(
                f"weights must have leading size {count} (one per averaged matrix), "
                f"got shape {tuple(w.shape)}"
            )
        if bool((w.detach() < 0).any()):
            raise ValueError("weights must be non-negative")
        total = w.sum(dim=0, keepdim=True)
        if bool((total.detach() <= 0).any()):
            raise ValueError("weights must have a positive sum")
        w = w / total
    # Weights index the averaged axis and, optionally, leading batch axes.
    extra = X.dim() - w.dim()
    return w.reshape(*w.shape, *([1] * extra))


def karcher_tangent(G: Tensor, X: Tensor, weights: Tensor | None = None) -> Tensor:
    r"""Whitened weighted mean tangent :math:`\sum_k w_k \log(G^{-1/2} X_k G^{-1/2})`.

    This is :math:`G^{-1/2} (\sum_k w_k \operatorname{Log}_G X_k) G^{-1/2}`, minus the
    Riemannian gradient of :math:`\tfrac12\sum_k w_k d^2(G, X_k)` expressed at the
    identity; its Frobenius norm is the AIRM norm of that gradient and vanishes
    exactly at the weighted Karcher mean.

    Parameters
    ----------
    G : Tensor
        Base points ``(..., n, n)``.
    X : Tensor
        Matrices ``(K, ..., n, n)`` averaged over the first axis.
    weights : Tensor, optional
        Shape ``(K,)`` or ``(K, ...)``; normalised to sum to one. Uniform if omitted.
    """
    w = _normalised_weights(weights, X)
    _, inv_root = sqrtm_invsqrtm(G)
    return (w * logm(inv_root @ X @ inv_root)).sum(dim=0)


def frechet_mean(
    X: Tensor,
    weights: Tensor | None = None,
    metric: Metric = "airm",
    max_iter: int = 50,
    tol: float = 1e-10,
    dim: int = 0,
) -> Tensor:
    r"""Weighted Fréchet (Karcher) mean of SPD matrices.

    Minimises :math:`\sum_k w_k d^2(G, X_k)` over SPD ``G``.

    * ``"log_euclidean"``: closed form :math:`\exp(\sum_k w_k \log X_k)`.
    * ``"airm"``: Karcher flow (Riemannian gradient descent with unit step),
      started at the log-Euclidean mean,

      .. math::

          T = \sum_k w_k \log(G^{-1/2} X_k G^{-1/2}), \qquad
          G \leftarrow G^{1/2} \exp(T) G^{1/2},

      until :math:`\max \|T\|_F <` ``tol`` over the batch (the update is still
      applied on that last pass) or ``max_iter`` updates. At convergence
      :math:`\sum_k w_k \operatorname{Log}_G X_k = 0`.

    The result is differentiable in ``X`` and ``weights`` by back-propagation
    through the iterations; for a bit-exact derivative of the returned value pass
    ``tol=0`` so the iteration count does not depend on the input.

    Parameters
    ----------
    X : Tensor
        SPD matrices ``(..., K, ..., n, n)`` averaged over axis ``dim``.
    weights : Tensor, optional
        Non-negative weights of shape ``(K,)``, or ``(K, ...)`` matching the
        leading batch axes after ``dim`` is moved first; normalised to sum to
        one. Zero weights are allowed. Uniform if omitted.
    metric : {"airm", "log_euclidean"}
        Riemannian metric.
    max_iter : int
        Maximum number of Karcher updates (``"airm"`` only).
    tol : float
        Stopping threshold on the whitened tangent norm (``"airm"`` only).
    dim : int
        Axis of ``X`` to average over; must not be one of the matrix axes.

    Returns
    -------
    Tensor
        Means of shape ``X.shape`` without axis ``dim``.
    """
    if X.dim() < 3:
        raise ValueError(f"frechet_mean expects (K, ..., n, n) input, got {tuple(X.shape)}")
    axis = dim % X.dim()
    if axis >= X.dim() - 2:
        raise ValueError(f"dim={dim} points at a matrix axis of a {X.dim()}-d input")
    X = X.movedim(axis, 0)
    w = _normalised_weights(weights, X)

    log_mean = (w * logm(X)).sum(dim=0)
    if metric == "log_euclidean":
        return expm(log_mean)
    if metric != "airm":
        raise ValueError(f"unknown metric {metric!r}; expected 'airm' or 'log_euclidean'")

    # Track a (non-symmetric) factor G = R R^T and its inverse instead of G: whitening
    # by R^{-1} differs from G^{-1/2} only by a rotation, which the update undoes, and
    # R <- R exp(T/2), R^{-1} <- exp(-T/2) R^{-1} need one eigh of T per iteration
    # rather than one for G^{±1/2} and another for exp(T).
    factor, inv_factor = eigh_functions(log_mean, (_EXP_HALF, _EXP_NEG_HALF))
    for _ in range(max_iter):
        tangent = (w * logm(inv_factor @ X @ inv_factor.mT)).sum(dim=0)
        step, inv_step = eigh_functions(tangent, (_EXP_HALF, _EXP_NEG_HALF))
        factor, inv_factor = factor @ step, inv_step @ inv_factor
        residual = torch.linalg.matrix_norm(tangent.detach()).max()
        if float(residual) < tol:
            break
    return sym(factor @ factor.mT)
