r"""Checks and repairs for batches of symmetric positive definite matrices.

:func:`check_spd` is meant for data boundaries (loaders, user input): it reports
the first offending sample so a bad covariance can be found in a data set.
:func:`regularize_spd` is the usual repair for rank-deficient covariances,

.. math::

    X \mapsto \operatorname{sym}(X) + r \, \frac{\operatorname{tr} X}{n} I .
"""

from __future__ import annotations

import torch
from torch import Tensor

from .functional import sym

__all__ = ["InvalidSPDError", "check_spd", "regularize_spd"]


class InvalidSPDError(ValueError):
    """Raised when a tensor is not a batch of SPD matrices."""


def _sample_label(name: str, flat_index: int, batch_shape: torch.Size) -> str:
    if len(batch_shape) == 0:
        return name
    index = []
    for size in reversed(batch_shape):
        index.append(flat_index % size)
        flat_index //= size
    return f"{name}[{', '.join(str(i) for i in reversed(index))}]"


def check_spd(X: Tensor, name: str = "input", rtol: float = 1e-8) -> None:
    r"""Raise :class:`InvalidSPDError` unless every matrix in ``X`` is SPD.

    Checks, in this order, over a batch of shape ``(..., n, n)``: the shape is
    square, all entries are finite, each matrix is symmetric up to
    :math:`\max_{ij}|X - X^\top|_{ij} \le \mathrm{rtol} \cdot \max_{ij}|X_{ij}|`,
    and each matrix admits a Cholesky factorisation (positive definite).

    Parameters
    ----------
    X : Tensor
        Candidate SPD matrices ``(..., n, n)``.
    name : str
        Name used in the error message, e.g. ``"covariance"``.
    rtol : float
        Relative symmetry tolerance.

    Raises
    ------
    InvalidSPDError
        Naming the first bad sample (by batch index) and the reason.
    """
    if X.dim() < 2 or X.shape[-1] != X.shape[-2]:
        raise InvalidSPDError(
            f"{name}: expected square matrices of shape (..., n, n), got {tuple(X.shape)}"
        )
    batch_shape = X.shape[:-2]
    flat = X.detach().reshape(-1, X.shape[-2], X.shape[-1])
    if flat.shape[0] == 0:
        return

    finite = torch.isfinite(flat).flatten(1).all(dim=1)
    if not bool(finite.all()):
        bad = int((~finite).nonzero()[0])
        raise InvalidSPDError(
            f"{_sample_label(name, bad, batch_shape)}: contains NaN or inf entries"
        )

    asymmetry = (flat - flat.mT).abs().amax(dim=(-2, -1))
    magnitude = flat.abs().amax(dim=(-2, -1))
    symmetric = asymmetry <= rtol * magnitude
    if not bool(symmetric.all()):
        bad = int((~symmetric).nonzero()[0])
        raise InvalidSPDError(
            f"{_sample_label(name, bad, batch_shape)}: not symmetric "
            f"(max |X - X^T| = {float(asymmetry[bad]):.3g}, "
            f"allowed {rtol:.1g} * max |X| = {float(rtol * magnitude[bad]):.3g})"
        )

    _, info = torch.linalg.cholesky_ex(sym(flat))
    if not bool((info == 0).all()):
        bad = int((info != 0).nonzero()[0])
        smallest = float(torch.linalg.eigvalsh(sym(flat[bad]))[0])
        raise InvalidSPDError(
            f"{_sample_label(name, bad, batch_shape)}: not positive definite "
            f"(smallest eigenvalue {smallest:.3g})"
        )


def regularize_spd(X: Tensor, ridge: float = 1e-5) -> Tensor:
    r"""Symmetrise and add a trace-scaled ridge: :math:`\operatorname{sym}(X) + r\,\bar\lambda I`.

    :math:`\bar\lambda = \operatorname{tr}(X)/n` is the mean eigenvalue, so the
    shift is relative to the matrix scale and independent of ``n``
    (SPDNetNAS adds :math:`10^{-5}\operatorname{tr}(X) I`, i.e. ``ridge = 1e-5 * n`` here).

    Parameters
    ----------
    X : Tensor
        Symmetric positive semi-definite matrices ``(..., n, n)``.
    ridge : float
        Relative ridge :math:`r \ge 0`.

    Returns
    -------
    Tensor
        SPD matrices of the same shape when ``X`` is PSD with positive trace.
    """
    if ridge < 0:
        raise ValueError(f"ridge must be non-negative, got {ridge}")
    X = sym(X)
    n = X.shape[-1]
    mean_eigenvalue = X.diagonal(dim1=-2, dim2=-1).sum(-1) / n
    eye = torch.eye(n, dtype=X.dtype, device=X.device)
    return X + (ridge * mean_eigenvalue)[..., None, None] * eye
