"""Checks that a user's SPD data set is what an SPD network can take.

A network built on the affine-invariant geometry takes matrix logarithms and
inverse square roots of every input, so one NaN, one asymmetric or one
singular matrix poisons a whole batch far from where it came from. The data
are therefore refused up front, with a message naming the first bad sample,
or, on request, repaired by a symmetrisation and a trace-scaled ridge.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch
from einops import rearrange

from manifold_nas.errors import UserInputError

__all__ = ["EIGENVALUE_RANGE", "REEIG_FLOOR", "encode_labels", "validate_spd_dataset"]

logger = logging.getLogger("manifold_nas")

#: ReEig's default floor ``ε`` (:class:`spd_ops.ReEig`): eigenvalues below it are clamped.
REEIG_FLOOR = 1e-4
#: Largest condition number float64 ``eigh`` resolves to ``n · 2e-6`` relative accuracy
#: (the error of an eigenvalue ``λ`` is about ``n · machine-ε · λ_max``).
EIGH_CONDITION = 1e10
#: Where the largest eigenvalue of every sample must lie (see :func:`validate_spd_dataset`).
EIGENVALUE_RANGE = (REEIG_FLOOR, REEIG_FLOOR * EIGH_CONDITION)


def validate_spd_dataset(
    X: Any,
    y: Any,
    *,
    source: str,
    regularize: bool = False,
    sym_tol: float = 1e-8,
    eps: float = 1e-5,
    max_eps: float = 1e-1,
    return_classes: bool = False,
    from_series: bool = False,
) -> tuple[torch.Tensor, torch.Tensor] | tuple[torch.Tensor, torch.Tensor, tuple[str, ...]]:
    """Check SPD samples and their labels; return float64 ``X`` and int64 ``y``.

    Parameters
    ----------
    X:
        ``(N, n, n)`` or ``(N, C, n, n)`` array or tensor; ``(N, n, n)``
        gains a channel axis and is returned as ``(N, 1, n, n)``.
    y:
        ``N`` labels, 1-D (a ``(N, 1)`` or ``(1, N)`` MATLAB-style column or
        row is flattened). Integer labels are kept as they are (they must be
        ``>= 0``); string labels are mapped to ``0..K-1`` in sorted order
        (see :func:`encode_labels`, which builders call first to keep train
        and test codes consistent).
    source:
        Names the data in messages, e.g. a file path.
    regularize:
        Instead of refusing asymmetric or non-positive-definite samples,
        replace them by ``(X + Xᵀ)/2 + ε · (tr X / n) · I`` with
        ``ε = eps, 10·eps, …`` up to ``max_eps``, the smallest that makes
        them positive definite; a warning on the ``manifold_nas`` logger says
        how many samples changed. NaN and inf are refused either way.
    sym_tol:
        Relative symmetry tolerance: ``max|X - Xᵀ| <= sym_tol · max|X|``.
        Samples within it are symmetrised silently.
    return_classes:
        Also return the class names (strings, index = code).
    from_series:
        The matrices are covariances of the user's time series: a scale
        refusal then says how to rescale the series (or to set
        ``data.trace_normalize``) rather than the matrices.

    Notes
    -----
    A matrix counts as positive definite when its smallest eigenvalue (batched
    ``eigvalsh``) exceeds ``n · machine-ε · max|λ|``: below that a positive
    value is rounding noise on a singular matrix.

    The largest eigenvalue of every sample must lie within
    :data:`EIGENVALUE_RANGE`, ``1e-4..1e6``. The SPD layers work at unit
    scale (the ``none`` op is the identity, batch norm's running mean and
    bias start at the identity, ReEig clamps eigenvalues at ``1e-4``) and mix
    their matrices with the input's. Below the ReEig floor a whole matrix is
    clamped to ``1e-4 · I`` and its information is gone; above ``1e6`` the
    matrices formed next to that floor have condition numbers beyond
    ``1e10``, where float64 ``eigh`` loses the small eigenvalues (a search on
    data at scale ``1e9`` dies in ``eigh``). A scale is not repaired by
    ``regularize``: the message says which constant to divide by.

    Raises
    ------
    UserInputError
        One line naming ``source``, the first bad sample and why: wrong
        ndim or non-square matrices, sample and label counts that disagree,
        NaN/inf, asymmetry, not positive definite; or naming ``source`` and
        the data's scale when a sample's largest eigenvalue leaves
        :data:`EIGENVALUE_RANGE`.
    """
    x = _as_float_array(X, source)
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4 or x.shape[-1] != x.shape[-2]:
        raise UserInputError(
            f"{source}: SPD data must be (N, n, n) or (N, C, n, n) square matrices, "
            f"got shape {tuple(np.shape(X))}"
        )
    n_samples, n = x.shape[0], x.shape[-1]
    if n_samples == 0 or n == 0:
        raise UserInputError(f"{source}: no samples (shape {tuple(np.shape(X))})")
    labels = _as_label_array(y, source)
    if len(labels) != n_samples:
        raise UserInputError(
            f"{source}: {n_samples} samples but {len(labels)} labels; the counts must agree"
        )
    if labels.dtype.kind in "iu":
        negative = np.flatnonzero(labels < 0)
        if negative.size:
            i = int(negative[0])
            raise UserInputError(f"{source}: sample {i} has a negative label {labels[i]}")
        codes = labels.astype(np.int64)
        classes = tuple(str(v) for v in range(int(codes.max()) + 1))
    else:
        (codes,), classes = encode_labels(labels, source=source)

    x = _checked_matrices(x, source, regularize, sym_tol, eps, max_eps, from_series)
    out_x = torch.from_numpy(np.ascontiguousarray(x))
    out_y = torch.from_numpy(codes)
    if return_classes:
        return out_x, out_y, classes
    return out_x, out_y


def encode_labels(*label_arrays: Any, source: str) -> tuple[list[np.ndarray], tuple[str, ...]]:
    """Map labels of one or more arrays jointly to ``0..K-1``.

    Classes are sorted numerically when every label is a number (so string
    labels ``"2"`` and ``"10"`` sort as 2 < 10), else as strings. Returns
    one int64 code array per input and the class names as strings.
    """
    arrays = [_as_label_array(a, source) for a in label_arrays]
    numeric = all(a.dtype.kind in "iu" for a in arrays)
    values = [a if numeric else a.astype(str) for a in arrays]
    if not numeric:
        as_numbers = [_try_numeric(v) for v in values]
        if all(v is not None for v in as_numbers):
            values = as_numbers
    classes, inverse = np.unique(np.concatenate(values), return_inverse=True)
    bounds = np.cumsum([len(v) for v in values])[:-1]
    codes = [c.astype(np.int64) for c in np.split(inverse.ravel(), bounds)]
    names = tuple(_label_name(c) for c in classes)
    return codes, names


def _checked_matrices(
    x: np.ndarray,
    source: str,
    regularize: bool,
    sym_tol: float,
    eps: float,
    max_eps: float,
    from_series: bool,
) -> np.ndarray:
    n_samples, n_channels, n = x.shape[:3]
    flat = rearrange(x, "b c n m -> (b c) n m")
    finite = np.isfinite(flat).all(axis=(-1, -2))
    # Non-finite matrices are swapped for I so that the batched checks below
    # run; they are refused before anything is returned.
    safe = np.where(finite[:, None, None], flat, np.eye(n))
    asym = np.abs(safe - np.swapaxes(safe, -1, -2)).max(axis=(-1, -2))
    scale = np.abs(safe).max(axis=(-1, -2))
    non_sym = asym > sym_tol * scale
    sym = 0.5 * (safe + np.swapaxes(safe, -1, -2))
    lam = _eigvalsh(sym)
    non_pd = ~_is_pd(lam, n)

    problems = ~finite if regularize else ~finite | non_sym | non_pd
    if problems.any():
        k = int(np.flatnonzero(problems)[0])
        where = _where(k, n_channels, source)
        if not finite[k]:
            kind = "NaN" if np.isnan(flat[k]).any() else "inf"
            raise UserInputError(f"{where} contains {kind}")
        if non_sym[k]:
            raise UserInputError(
                f"{where} is not symmetric (max |X - X^T| = {asym[k]:.3g}, "
                f"relative {asym[k] / scale[k]:.3g} > sym_tol {sym_tol:g}); "
                "set regularize=True to symmetrise"
            )
        raise UserInputError(
            f"{where} is not positive definite (smallest eigenvalue {lam[k, 0]:.3g}); "
            "set regularize=True to add a ridge"
        )

    repaired = regularize and bool((non_sym | non_pd).any())
    top = lam[:, -1].copy()
    if repaired:
        sym = _add_ridge(sym, non_pd, n_channels, source, eps, max_eps)
        top[non_pd] = _eigvalsh(sym[non_pd])[:, -1]
    mean_eig = np.trace(sym, axis1=-2, axis2=-1) / n
    _check_scale(top, mean_eig, n_channels, source, from_series)
    if repaired:
        changed = rearrange(non_sym | non_pd, "(b c) -> b c", c=n_channels).any(axis=1)
        logger.warning(
            "%s: regularized %d of %d samples (symmetrised and/or ridge eps*tr(X)/n*I)",
            source,
            int(changed.sum()),
            n_samples,
        )
    return rearrange(sym, "(b c) n m -> b c n m", c=n_channels)


def _check_scale(
    top: np.ndarray, mean_eig: np.ndarray, n_channels: int, source: str, from_series: bool
) -> None:
    """Refuse data whose samples' largest eigenvalues ``top`` leave :data:`EIGENVALUE_RANGE`."""
    low, high = EIGENVALUE_RANGE
    k_min, k_max = int(np.argmin(top)), int(np.argmax(top))
    smallest, largest = float(top[k_min]), float(top[k_max])
    if low <= smallest and largest <= high:
        return
    scale = float(np.mean(mean_eig))
    where = f"scale {_power(scale)}"
    if smallest < low:
        found = f"largest eigenvalues down to {smallest:.2g} ({_sample(k_min, n_channels)}"
        where += f"; under ReEig's floor {_power(low)}"
    else:
        found = f"eigenvalues up to {largest:.2g} ({_sample(k_max, n_channels)}"
    bounds = f"{_power(low)}..{_power(high)}"
    if largest / smallest > high / low:
        fix = (
            "set data.trace_normalize: true"
            if from_series
            else "divide each matrix by its mean eigenvalue tr(X)/n"
        )
        raise UserInputError(
            f"{source}: matrices have {found}; {where}) and their largest eigenvalues span "
            f"{smallest:.2g}..{largest:.2g}, wider than one rescaling can bring within "
            f"{bounds}; {fix}"
        )
    divisor, named = scale, " (their mean eigenvalue)"
    if not (low <= smallest / divisor and largest / divisor <= high):
        # The geometric midpoint of what fits: inside whenever the span fits.
        divisor, named = float(np.sqrt(smallest * largest / (low * high))), ""
    if from_series:
        fix = f"divide the series by {np.sqrt(divisor):.2g} or set data.trace_normalize: true"
    else:
        fix = f"divide them all by {divisor:.2g}{named}"
    raise UserInputError(
        f"{source}: matrices have {found}; {where}); rescale them so that every "
        f"matrix's largest eigenvalue lies within {bounds}, e.g. {fix}"
    )


def _power(value: float) -> str:
    """The order of magnitude of ``value``, written ``1e-4`` (``3.2e9`` gives ``1e9``)."""
    return f"1e{int(np.floor(np.log10(value) + 1e-9))}"


def _sample(flat_index: int, n_channels: int) -> str:
    sample, channel = divmod(flat_index, n_channels)
    return f"sample {sample}" + (f" channel {channel}" if n_channels > 1 else "")


def _add_ridge(
    sym: np.ndarray, non_pd: np.ndarray, n_channels: int, source: str, eps: float, max_eps: float
) -> np.ndarray:
    n = sym.shape[-1]
    mean_eig = np.trace(sym, axis1=-2, axis2=-1) / n
    hopeless = non_pd & (mean_eig <= 0)
    if hopeless.any():
        k = int(np.flatnonzero(hopeless)[0])
        raise UserInputError(
            f"{_where(k, n_channels, source)} has trace {n * mean_eig[k]:.3g} <= 0; "
            "a ridge cannot make it positive definite"
        )
    eye = np.eye(n)
    pending = np.flatnonzero(non_pd)
    level = eps
    while pending.size and level <= max_eps * (1 + 1e-12):
        candidate = sym[pending] + level * mean_eig[pending, None, None] * eye
        ok = _is_pd(_eigvalsh(candidate), n)
        sym[pending[ok]] = candidate[ok]
        pending = pending[~ok]
        level *= 10.0
    if pending.size:
        k = int(pending[0])
        raise UserInputError(
            f"{_where(k, n_channels, source)} is not positive definite even with a ridge of "
            f"{max_eps:g}*tr(X)/n*I; it is too far from SPD to regularize"
        )
    return sym


def _eigvalsh(mats: np.ndarray) -> np.ndarray:
    return torch.linalg.eigvalsh(torch.from_numpy(np.ascontiguousarray(mats))).numpy()


def _is_pd(lam: np.ndarray, n: int) -> np.ndarray:
    floor = n * np.finfo(np.float64).eps * np.abs(lam).max(axis=-1)
    return lam[:, 0] > floor


def _where(flat_index: int, n_channels: int, source: str) -> str:
    sample, channel = divmod(flat_index, n_channels)
    suffix = f" (channel {channel})" if n_channels > 1 else ""
    return f"{source}: sample {sample}{suffix}"


def _as_float_array(X: Any, source: str) -> np.ndarray:
    if isinstance(X, torch.Tensor):
        X = X.detach().cpu().numpy()
    arr = np.asarray(X)
    if arr.dtype.kind == "c":
        raise UserInputError(f"{source}: SPD data are complex; expected real matrices")
    if arr.dtype.kind not in "biuf":
        raise UserInputError(f"{source}: SPD data must be numeric, got dtype {arr.dtype}")
    return arr.astype(np.float64)


def _as_label_array(y: Any, source: str) -> np.ndarray:
    if isinstance(y, torch.Tensor):
        y = y.detach().cpu().numpy()
    arr = np.asarray(y)
    if arr.ndim == 2 and 1 in arr.shape:
        arr = arr.ravel()
    if arr.ndim != 1:
        raise UserInputError(f"{source}: labels must be 1-D, got shape {arr.shape}")
    if arr.dtype.kind == "b":
        return arr.astype(np.int64)
    if arr.dtype.kind == "f":
        integral = np.isfinite(arr) & (arr == np.round(arr))
        if not integral.all():
            i = int(np.flatnonzero(~integral)[0])
            raise UserInputError(f"{source}: label of sample {i} is {arr[i]}, not an integer")
        return arr.astype(np.int64)
    if arr.dtype.kind == "O":
        return np.array([_label_str(v) for v in arr])
    if arr.dtype.kind == "S":
        return np.char.decode(arr).astype(str)
    if arr.dtype.kind == "U":
        return np.char.strip(arr)
    if arr.dtype.kind in "iu":
        return arr
    raise UserInputError(f"{source}: labels must be integers or strings, got dtype {arr.dtype}")


def _label_str(value: Any) -> str:
    # MATLAB cell arrays load as nested object arrays holding a 1-element array.
    while isinstance(value, np.ndarray) and value.size == 1:
        value = value.ravel()[0]
    if isinstance(value, bytes):
        value = value.decode()
    return str(value).strip()


def _try_numeric(values: np.ndarray) -> np.ndarray | None:
    try:
        numbers = values.astype(np.float64)
    except ValueError:
        return None
    if np.all(numbers == np.round(numbers)):
        return numbers.astype(np.int64)
    return numbers


def _label_name(value: Any) -> str:
    return str(value.item() if isinstance(value, np.generic) else value)
