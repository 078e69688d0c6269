r"""Riemannian batch normalisation of SPD matrices (Brooks et al., NeurIPS 2019).

For a batch :math:`\{X_k\}` with Karcher (AIRM Fréchet) mean :math:`\mathfrak B`,

.. math::

    X_k \mapsto G^{1/2}\, \mathfrak B^{-1/2} X_k \mathfrak B^{-1/2}\, G^{1/2},

which transports the batch from around :math:`\mathfrak B` to around the learnt
SPD bias :math:`G` (the batch mean of the output is exactly :math:`G` when
:math:`\mathfrak B` is the exact Karcher mean). The running mean follows the
geodesic :math:`R \leftarrow R^{1/2}(R^{-1/2}\mathfrak B R^{-1/2})^{m} R^{1/2}`
with momentum :math:`m` and replaces :math:`\mathfrak B` at evaluation. As in
the reference method there is no variance normalisation.
"""

from __future__ import annotations

import geoopt
import torch
from einops import rearrange
from torch import Tensor, nn

from .functional import invsqrtm, sqrtm, sym
from .mean import airm_geodesic, frechet_mean

__all__ = ["SPDBatchNorm"]


class SPDBatchNorm(nn.Module):
    r"""Riemannian batch norm for ``(B, C, n, n)`` SPD batches.

    Parameters
    ----------
    n : int
        Matrix size.
    channels : int, optional
        If given, one mean, running mean and bias per channel (means over the
        batch axis only), so channels produced by different filters are not
        forced to share a centre. If omitted, batch and channel axes are pooled
        into one mean and one bias, as in Brooks et al. and SPDNetNAS.
    momentum : float
        Geodesic step of the running-mean update, in ``(0, 1]``.
    max_iter, tol : int, float
        Karcher-flow budget for the batch mean (see :func:`spd_ops.frechet_mean`).
    dtype, device
        Of the bias and running mean; float64 by default.

    Attributes
    ----------
    bias : geoopt.ManifoldParameter
        :math:`G`, shape ``(n, n)`` or ``(channels, n, n)``, on
        ``geoopt.SymmetricPositiveDefinite()``; initialised to the identity.
    running_mean : Tensor
        Buffer of the same shape, initialised to the identity.

    Notes
    -----
    The batch mean is differentiated through (its Karcher iterations), as in
    SPDNetNAS; the running-mean update is not.
    """

    def __init__(
        self,
        n: int,
        channels: int | None = None,
        momentum: float = 0.1,
        max_iter: int = 50,
        tol: float = 1e-10,
        dtype: torch.dtype = torch.float64,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        if n < 1:
            raise ValueError(f"SPDBatchNorm needs n >= 1, got {n}")
        if channels is not None and channels < 1:
            raise ValueError(f"SPDBatchNorm channels must be positive, got {channels}")
        if not 0.0 < momentum <= 1.0:
            raise ValueError(f"SPDBatchNorm momentum must lie in (0, 1], got {momentum}")
        self.n = n
        self.channels = channels
        self.momentum = float(momentum)
        self.max_iter = max_iter
        self.tol = tol
        shape = (n, n) if channels is None else (channels, n, n)
        identity = torch.eye(n, dtype=dtype, device=device).expand(shape).clone()
        self.bias = geoopt.ManifoldParameter(
            identity.clone(), manifold=geoopt.SymmetricPositiveDefinite()
        )
        self.register_buffer("running_mean", identity)

    def _check_input(self, X: Tensor) -> None:
        expected_channels = "C" if self.channels is None else str(self.channels)
        if (
            X.dim() != 4
            or X.shape[-2:] != (self.n, self.n)
            or (self.channels is not None and X.shape[1] != self.channels)
        ):
            raise ValueError(
                f"SPDBatchNorm expected input (B, {expected_channels}, {self.n}, {self.n}), "
                f"got {tuple(X.shape)}"
            )

    def batch_mean(self, X: Tensor) -> Tensor:
        """Karcher mean of ``X`` over the batch (and channel axis when pooled)."""
        samples = rearrange(X, "b c n m -> (b c) n m") if self.channels is None else X
        return frechet_mean(samples, max_iter=self.max_iter, tol=self.tol)

    def forward(self, X: Tensor) -> Tensor:
        self._check_input(X)
        if self.training:
            centre = self.batch_mean(X)
            with torch.no_grad():
                self.running_mean.copy_(
                    airm_geodesic(self.running_mean, centre.detach(), self.momentum)
                )
        else:
            centre = self.running_mean
        # One congruence M X M^T with M = G^{1/2} B^{-1/2} instead of two.
        transport = sqrtm(self.bias) @ invsqrtm(centre)
        return sym(transport @ X @ transport.mT)

    def extra_repr(self) -> str:
        return f"n={self.n}, channels={self.channels}, momentum={self.momentum}"
