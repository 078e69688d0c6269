r"""Spectral functions of symmetric matrices with a Daleckii–Krein backward.

A spectral function applies a scalar function to the eigenvalues of a symmetric
matrix,

.. math::

    F(X) = U \operatorname{diag}(f(\lambda)) U^\top, \qquad X = U \operatorname{diag}(\lambda) U^\top.

Its Fréchet derivative is given by the Daleckii–Krein (Loewner) formula, so the
vector–Jacobian product needs no second eigendecomposition:

.. math::

    \bar G = \operatorname{sym}(\partial L / \partial Y), \qquad
    \partial L / \partial X = U \, (K \circ U^\top \bar G U) \, U^\top,

    K_{ij} = \frac{f(\lambda_i) - f(\lambda_j)}{\lambda_i - \lambda_j}
    \quad (\lambda_i \ne \lambda_j), \qquad
    K_{ij} = \tfrac12 \bigl(f'(\lambda_i) + f'(\lambda_j)\bigr)
    \quad (\lambda_i \approx \lambda_j).

Every function in this module (``logm``, ``expm``, ``sqrtm``, ``invsqrtm``,
``powm``, ``reeig``) is one :class:`EigFunction` spec fed to this single
mechanism; :func:`eigh_functions` evaluates several specs from one
eigendecomposition (e.g. :math:`X^{1/2}` and :math:`X^{-1/2}` together).

Unlike ``torch.linalg.eigh`` autograd, whose backward divides by
:math:`\lambda_i - \lambda_j`, the gradient stays finite and correct for
repeated eigenvalues (identity matrices, BN biases at initialisation, Karcher
steps on identical inputs).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

__all__ = [
    "EXP",
    "INV_SQRT",
    "LOG",
    "SQRT",
    "EigFunction",
    "eigh_function",
    "eigh_functions",
    "expm",
    "invsqrtm",
    "logm",
    "power_spec",
    "powm",
    "reeig",
    "reeig_spec",
    "sqrtm",
    "sqrtm_invsqrtm",
    "sym",
]

ScalarFn = Callable[[Tensor], Tensor]


@dataclass(frozen=True)
class EigFunction:
    """A scalar function lifted to symmetric matrices through their spectrum.

    Parameters
    ----------
    name : str
        Human-readable name, used in error messages and reprs.
    f : callable
        Elementwise :math:`f(\\lambda)` on a tensor of eigenvalues.
    df : callable
        Elementwise derivative :math:`f'(\\lambda)`; it is only used for
        (near-)equal eigenvalue pairs, where the divided difference is 0/0.
    """

    name: str
    f: ScalarFn
    df: ScalarFn


def sym(X: Tensor) -> Tensor:
    r"""Symmetric part :math:`\tfrac12 (X + X^\top)` over the last two dims."""
    return 0.5 * (X + X.mT)


def _relative_gap_tolerance(dtype: torch.dtype) -> float:
    # Divided differences lose eps/|gap| relative accuracy to cancellation while
    # the midpoint-derivative limit errs by O(gap^2): the two balance at
    # gap ~ eps^(1/3) (6e-6 in float64), which minimises the worst-case error.
    return torch.finfo(dtype).eps ** (1.0 / 3.0)


def _loewner_matrix(eigvals: Tensor, f_vals: Tensor, df_vals: Tensor) -> Tensor:
    """First divided differences ``K`` of ``f`` on the spectrum, shape ``(..., n, n)``."""
    lam_i = eigvals.unsqueeze(-1)
    lam_j = eigvals.unsqueeze(-2)
    gap = lam_i - lam_j
    scale = torch.maximum(lam_i.abs(), lam_j.abs()).clamp_min(torch.finfo(eigvals.dtype).tiny)
    near = gap.abs() <= _relative_gap_tolerance(eigvals.dtype) * scale
    # The masked denominator keeps the discarded branch of torch.where finite.
    divided = (f_vals.unsqueeze(-1) - f_vals.unsqueeze(-2)) / torch.where(
        near, torch.ones_like(gap), gap
    )
    limit = 0.5 * (df_vals.unsqueeze(-1) + df_vals.unsqueeze(-2))
    return torch.where(near, limit, divided)


def _reconstruct(eigvecs: Tensor, values: Tensor) -> Tensor:
    """``U diag(values) U^T``, symmetrised so downstream eigh sees exact symmetry."""
    return sym((eigvecs * values.unsqueeze(-2)) @ eigvecs.mT)


class _SpectralFunctions(torch.autograd.Function):
    """One ``eigh`` forward, several spectral functions out, matmul-only backward."""

    @staticmethod
    def forward(ctx, X: Tensor, specs: tuple[EigFunction, ...]) -> tuple[Tensor, ...]:
        eigvals, eigvecs = torch.linalg.eigh(sym(X))
        f_vals = [spec.f(eigvals) for spec in specs]
        ctx.specs = specs
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(eigvals, eigvecs, *f_vals)
        return tuple(_reconstruct(eigvecs, values) for values in f_vals)

    @staticmethod
    @once_differentiable
    def backward(ctx, *grad_outputs: Tensor | None) -> tuple[Tensor | None, None]:
        eigvals, eigvecs, *f_vals = ctx.saved_tensors
        weighted = None
        for spec, values, grad in zip(ctx.specs, f_vals, grad_outputs):
            if grad is None:
                continue
            loewner = _loewner_matrix(eigvals, values, spec.df(eigvals))
            term = loewner * (eigvecs.mT @ sym(grad) @ eigvecs)
            weighted = term if weighted is None else weighted + term
        if weighted is None:
            return None, None
        return eigvecs @ weighted @ eigvecs.mT, None


def eigh_functions(X: Tensor, specs: Sequence[EigFunction]) -> tuple[Tensor, ...]:
    """Evaluate several spectral functions of ``X`` from one eigendecomposition.

    Parameters
    ----------
    X : Tensor
        Symmetric matrices of shape ``(..., n, n)``; only ``sym(X)`` is read.
    specs : sequence of EigFunction
        The functions to apply.

    Returns
    -------
    tuple of Tensor
        :math:`U f_k(\\Lambda) U^\\top` for each spec, each of shape ``(..., n, n)``.
    """
    return _SpectralFunctions.apply(X, tuple(specs))


def eigh_function(X: Tensor, f: ScalarFn | EigFunction, df: ScalarFn | None = None) -> Tensor:
    """Apply one spectral function :math:`U f(\\Lambda) U^\\top` with a Daleckii–Krein backward.

    Parameters
    ----------
    X : Tensor
        Symmetric matrices of shape ``(..., n, n)``.
    f : callable or EigFunction
        Elementwise function of the eigenvalues, or a full spec.
    df : callable, optional
        Elementwise derivative of ``f``; required when ``f`` is a callable.

    Returns
    -------
    Tensor
        Shape ``(..., n, n)``.
    """
    if isinstance(f, EigFunction):
        spec = f
    else:
        if df is None:
            raise ValueError("eigh_function needs the derivative df when f is a plain callable")
        spec = EigFunction(getattr(f, "__name__", "f"), f, df)
    return _SpectralFunctions.apply(X, (spec,))[0]


LOG = EigFunction("log", torch.log, torch.reciprocal)
EXP = EigFunction("exp", torch.exp, torch.exp)
SQRT = EigFunction("sqrt", torch.sqrt, lambda lam: 0.5 * torch.rsqrt(lam))
INV_SQRT = EigFunction("inv_sqrt", torch.rsqrt, lambda lam: -0.5 * lam.pow(-1.5))


def power_spec(p: float) -> EigFunction:
    r"""Spec of the matrix power :math:`\lambda \mapsto \lambda^p`."""
    p = float(p)
    return EigFunction(f"pow({p})", lambda lam: lam.pow(p), lambda lam: p * lam.pow(p - 1.0))


def reeig_spec(eps: float) -> EigFunction:
    r"""Spec of the eigenvalue rectifier :math:`\lambda \mapsto \max(\varepsilon, \lambda)`.

    At the kink :math:`\lambda = \varepsilon` the derivative is taken as 0 (the
    clamped branch), so pairs straddling the threshold get :math:`K_{ij} = 1/2`.
    """
    eps = float(eps)
    return EigFunction(
        f"reeig({eps})",
        lambda lam: lam.clamp_min(eps),
        lambda lam: (lam > eps).to(lam.dtype),
    )


def logm(X: Tensor) -> Tensor:
    r"""Matrix logarithm :math:`U \log(\Lambda) U^\top` of SPD matrices ``(..., n, n)``."""
    return eigh_function(X, LOG)


def expm(X: Tensor) -> Tensor:
    r"""Matrix exponential :math:`U \exp(\Lambda) U^\top` of symmetric matrices ``(..., n, n)``."""
    return eigh_function(X, EXP)


def sqrtm(X: Tensor) -> Tensor:
    r"""Principal square root :math:`U \Lambda^{1/2} U^\top` of SPD matrices ``(..., n, n)``."""
    return eigh_function(X, SQRT)


def invsqrtm(X: Tensor) -> Tensor:
    r"""Inverse square root :math:`U \Lambda^{-1/2} U^\top` of SPD matrices ``(..., n, n)``."""
    return eigh_function(X, INV_SQRT)


def sqrtm_invsqrtm(X: Tensor) -> tuple[Tensor, Tensor]:
    r"""Both :math:`X^{1/2}` and :math:`X^{-1/2}` from a single eigendecomposition."""
    root, inv_root = eigh_functions(X, (SQRT, INV_SQRT))
    return root, inv_root


def powm(X: Tensor, p: float) -> Tensor:
    r"""Matrix power :math:`U \Lambda^{p} U^\top` of SPD matrices ``(..., n, n)``."""
    return eigh_function(X, power_spec(p))


def reeig(X: Tensor, eps: float = 1e-4) -> Tensor:
    r"""Eigenvalue rectification :math:`U \max(\varepsilon I, \Lambda) U^\top` (SPDNet ReEig)."""
    return eigh_function(X, reeig_spec(eps))
