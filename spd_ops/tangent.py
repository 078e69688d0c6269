r"""Tangent-space features of SPD matrices at their Fréchet mean.

:class:`TangentSpace` maps each channel of a batch ``(B, C, n, n)`` to the
vector of its whitened matrix logarithm at a reference point :math:`R`,

.. math::

    X \mapsto \operatorname{upper}\bigl(\log(R^{-1/2} X R^{-1/2})\bigr),

with the off-diagonal entries scaled by :math:`\sqrt 2`, so the Euclidean norm
of the vector is the AIRM distance :math:`d(R, X)` and the Euclidean geometry of
the vectors is that of the tangent space at :math:`R` (Barachant et al., 2012;
pyRiemann's ``TangentSpace``). A linear classifier on these vectors is
"tangent space + logistic regression"; a network that feeds them to its linear
head therefore contains that classifier as a special case.

:math:`R` is the running Karcher mean of the training batches, one per
channel: the first training batch sets it, each later one moves it along the
geodesic toward the batch mean by ``momentum``. Training and evaluation both
whiten with this running reference (never with the batch's own mean), so a
sample's features do not depend on the batch it arrives in and the classifier
sees the same map in both modes. :meth:`TangentSpace.fit` instead fixes
:math:`R` to the Karcher mean of a given set (the whole training set, as
pyRiemann's ``TangentSpace.fit`` does), after which training batches no
longer move it. The reference carries no gradient; the layer has no
parameters.
"""

from __future__ import annotations

import math

import torch
from einops import rearrange
from torch import Tensor, nn

from .functional import invsqrtm, logm, sym
from .mean import airm_geodesic, frechet_mean

__all__ = ["TangentSpace", "upper_triangle"]


def upper_triangle(X: Tensor) -> Tensor:
    r"""Upper triangles of symmetric matrices ``(..., n, n)`` as vectors ``(..., n(n+1)/2)``.

    Off-diagonal entries are multiplied by :math:`\sqrt 2`, so the vector's
    Euclidean norm is the matrix's Frobenius norm.
    """
    n = X.shape[-1]
    rows, cols = torch.triu_indices(n, n, device=X.device)
    scale = torch.where(rows == cols, 1.0, math.sqrt(2.0)).to(X.dtype)
    return X[..., rows, cols] * scale


class TangentSpace(nn.Module):
    r"""Whitened log-vectors at the running Fréchet mean, ``(B, C, n, n) -> (B, C·n(n+1)/2)``.

    Parameters
    ----------
    channels : int
        Input channels; each has its own reference point.
    n : int
        Matrix size.
    momentum : float
        Geodesic step of the running-mean update, in ``(0, 1]``.
    max_iter : int
        Karcher-flow iterations of each batch mean.
    dtype, device
        Of the reference point; float64 by default.

    Attributes
    ----------
    running_mean : Tensor
        Buffer ``(C, n, n)``, the reference :math:`R` (identity until the first
        training batch).
    initialised : Tensor
        Boolean buffer: whether a training batch or :meth:`fit` has set
        ``running_mean``.
    fixed : Tensor
        Boolean buffer: whether :meth:`fit` has fixed ``running_mean``.
    """

    def __init__(
        self,
        channels: int,
        n: int,
        momentum: float = 0.1,
        max_iter: int = 5,
        dtype: torch.dtype = torch.float64,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        if channels < 1 or n < 1:
            raise ValueError(f"TangentSpace needs positive channels and n, got {channels}, {n}")
        if not 0.0 < momentum <= 1.0:
            raise ValueError(f"TangentSpace momentum must lie in (0, 1], got {momentum}")
        self.channels, self.n = channels, n
        self.momentum, self.max_iter = float(momentum), int(max_iter)
        identity = torch.eye(n, dtype=dtype, device=device).expand(channels, n, n).clone()
        self.register_buffer("running_mean", identity)
        self.register_buffer("initialised", torch.tensor(False, device=device))
        self.register_buffer("fixed", torch.tensor(False, device=device))

    @property
    def features(self) -> int:
        """Length of the output vector."""
        return self.channels * self.n * (self.n + 1) // 2

    @torch.no_grad()
    def fit(self, X: Tensor, max_iter: int = 50, tol: float = 1e-10) -> TangentSpace:
        """Fix the reference to the Karcher mean of ``X`` ``(N, C, n, n)``, channel by channel."""
        self._check(X)
        self.running_mean.copy_(frechet_mean(X, max_iter=max_iter, tol=tol))
        self.initialised.fill_(True)
        self.fixed.fill_(True)
        return self

    def _check(self, X: Tensor) -> None:
        if X.dim() != 4 or X.shape[1:] != (self.channels, self.n, self.n):
            raise ValueError(
                f"TangentSpace expected input (B, {self.channels}, {self.n}, {self.n}), "
                f"got {tuple(X.shape)}"
            )

    @torch.no_grad()
    def _update(self, X: Tensor) -> None:
        batch_mean = frechet_mean(X.detach(), max_iter=self.max_iter, tol=0.0)  # (C, n, n)
        if bool(self.initialised):
            batch_mean = airm_geodesic(self.running_mean, batch_mean, self.momentum)
        self.running_mean.copy_(batch_mean)
        self.initialised.fill_(True)

    def forward(self, X: Tensor) -> Tensor:
        self._check(X)
        if self.training and not bool(self.fixed):
            self._update(X)
        whiten = invsqrtm(self.running_mean)
        vectors = upper_triangle(logm(sym(whiten @ X @ whiten)))  # (B, C, n(n+1)/2)
        return rearrange(vectors, "b c t -> b (c t)")

    def extra_repr(self) -> str:
        return f"channels={self.channels}, n={self.n}, momentum={self.momentum}"
