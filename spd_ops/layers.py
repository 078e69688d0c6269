r"""SPDNet layers on multi-channel batches ``(B, C, n, n)``.

* :class:`BiMap`: bilinear map with Stiefel weights,
  :math:`Y_o = \sum_i W_{oi}^\top X_i W_{oi}`.
* :class:`ReEig`: eigenvalue rectifier :math:`U \max(\varepsilon I, \Lambda) U^\top`.
* :class:`LogEig` / :class:`ExpEig`: matrix logarithm / exponential.

All eigen-layers use the Daleckii–Krein backward of :mod:`spd_ops.functional`.
"""

from __future__ import annotations

import geoopt
import torch
from torch import Tensor, nn

from .functional import expm, logm, reeig, sym

__all__ = ["BiMap", "ExpEig", "LogEig", "ReEig", "random_stiefel"]


def random_stiefel(
    *shape: int,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    r"""Random orthonormal frames of shape ``(..., n, p)``, :math:`W^\top W = I_p`.

    The Q factor of a Gaussian matrix with the signs of ``diag(R)`` folded in,
    which makes it Haar-distributed on the Stiefel manifold and a deterministic
    function of the Gaussian draw (reproducible under ``torch.manual_seed``).
    """
    *batch, n, p = shape
    if p > n:
        raise ValueError(f"a Stiefel frame needs p <= n, got n={n}, p={p}")
    gaussian = torch.randn(*batch, n, p, dtype=dtype, device=device, generator=generator)
    q, r = torch.linalg.qr(gaussian)
    signs = torch.sign(r.diagonal(dim1=-2, dim2=-1))
    signs = torch.where(signs == 0, torch.ones_like(signs), signs)
    return q * signs.unsqueeze(-2)


class BiMap(nn.Module):
    r"""Multi-channel bilinear map :math:`Y_o = \operatorname{sym}(\sum_i W_{oi}^\top X_i W_{oi})`.

    Parameters
    ----------
    c_in, c_out : int
        Input and output channels.
    n_in, n_out : int
        Input and output matrix sizes, ``n_out <= n_in``.
    dtype, device
        Of the weight; float64 by default.
    generator : torch.Generator, optional
        Random source of the initial frames.

    Attributes
    ----------
    weight : geoopt.ManifoldParameter
        Shape ``(c_out, c_in, n_in, n_out)`` on ``geoopt.Stiefel(canonical=False)``
        (projection retraction via QR), so a geoopt Riemannian optimiser keeps
        every :math:`W_{oi}` orthonormal and ``Y`` SPD whenever ``X`` is.

    Shapes
    ------
    ``(B, c_in, n_in, n_in) -> (B, c_out, n_out, n_out)``.
    """

    def __init__(
        self,
        c_in: int,
        c_out: int,
        n_in: int,
        n_out: int,
        dtype: torch.dtype = torch.float64,
        device: torch.device | str | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if min(c_in, c_out, n_in, n_out) < 1:
            raise ValueError(
                f"BiMap sizes must be positive, got c_in={c_in}, c_out={c_out}, "
                f"n_in={n_in}, n_out={n_out}"
            )
        if n_out > n_in:
            raise ValueError(
                f"BiMap needs n_out <= n_in for orthonormal (Stiefel) weights, "
                f"got n_in={n_in}, n_out={n_out}"
            )
        self.c_in, self.c_out, self.n_in, self.n_out = c_in, c_out, n_in, n_out
        frames = random_stiefel(
            c_out, c_in, n_in, n_out, dtype=dtype, device=device, generator=generator
        )
        self.weight = geoopt.ManifoldParameter(frames, manifold=geoopt.Stiefel(canonical=False))

    def forward(self, X: Tensor) -> Tensor:
        if X.dim() != 4 or X.shape[1:] != (self.c_in, self.n_in, self.n_in):
            raise ValueError(
                f"BiMap expected input (B, {self.c_in}, {self.n_in}, {self.n_in}), "
                f"got {tuple(X.shape)}"
            )
        projected = torch.einsum("bipr,oirs->boips", X, self.weight)
        # Contracting the channel and row axes together is one batched matmul
        # with inner size c_in * n_in, i.e. the channel sum costs nothing extra.
        return sym(torch.einsum("oipq,boips->boqs", self.weight, projected))

    def extra_repr(self) -> str:
        return f"c_in={self.c_in}, c_out={self.c_out}, n_in={self.n_in}, n_out={self.n_out}"


class ReEig(nn.Module):
    r"""Eigenvalue rectifier :math:`X \mapsto U \max(\varepsilon I, \Lambda) U^\top`."""

    def __init__(self, eps: float = 1e-4) -> None:
        super().__init__()
        if eps <= 0:
            raise ValueError(f"ReEig eps must be positive, got {eps}")
        self.eps = float(eps)

    def forward(self, X: Tensor) -> Tensor:
        return reeig(X, self.eps)

    def extra_repr(self) -> str:
        return f"eps={self.eps:g}"


class LogEig(nn.Module):
    r"""Matrix logarithm :math:`X \mapsto U \log(\Lambda) U^\top` (tangent space at I)."""

    def forward(self, X: Tensor) -> Tensor:
        return logm(X)


class ExpEig(nn.Module):
    r"""Matrix exponential :math:`X \mapsto U \exp(\Lambda) U^\top` (back from the tangent space)."""

    def forward(self, X: Tensor) -> Tensor:
        return expm(X)
