"""Covariance descriptors of multivariate time series.

A series with ``c`` channels and ``t`` time steps, arranged as a ``(c, t)``
array ``Z``, is summarised by its ``c × c`` sample covariance

.. math::

    S = \\frac{1}{t} (Z - \\bar Z)(Z - \\bar Z)^\\top,

the maximum-likelihood estimate (divisor ``t``, as in scikit-learn's
``empirical_covariance``). When ``t`` is small relative to ``c``, ``S`` is
singular or badly conditioned, so it is shrunk towards a scaled identity:

.. math::

    \\hat S = (1 - a) S + a \\, \\mu I, \\qquad \\mu = \\operatorname{tr}(S) / c,

with ``a`` chosen per sample by Ledoit–Wolf or OAS (the closed forms
scikit-learn's ``ledoit_wolf_shrinkage`` and ``oas`` use, vectorised over
samples) or fixed by the caller. Every ``a > 0`` makes ``\\hat S`` positive
definite as long as ``μ > 0``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from manifold_nas.errors import UserInputError

__all__ = ["SHRINKAGE_METHODS", "covariance_features", "shrinkage_coefficients"]

#: names accepted by ``shrinkage``, besides a float in [0, 1] and ``None``
SHRINKAGE_METHODS = ("ledoit_wolf", "oas")

# A matrix whose smallest eigenvalue is below this fraction of its mean
# eigenvalue is treated as singular and receives the automatic ridge below.
_SINGULAR_RTOL = 1e-10
_AUTO_RIDGE = 1e-6


def covariance_features(
    series: np.ndarray | Sequence[np.ndarray],
    shrinkage: str | float | None = "ledoit_wolf",
    trace_normalize: bool = False,
    window: int | None = None,
    hop: int | None = None,
    ridge: float = 0.0,
    center: bool = True,
    augment_mean: bool = False,
) -> np.ndarray:
    """SPD covariance matrices of multivariate time series.

    Parameters
    ----------
    series:
        An array ``(N, c, t)`` (aeon's layout) or a sequence of ``N`` arrays
        ``(c, t_i)`` whose lengths may differ.
    shrinkage:
        ``"ledoit_wolf"``, ``"oas"``, a fixed coefficient ``a`` in ``[0, 1]``,
        or ``None`` (no shrinkage; same as ``0.0``).
    trace_normalize:
        Divide every matrix by its trace, so that ``tr = 1``.
    window, hop:
        With ``window`` set, each series is cut into windows of ``window``
        steps and every window gives one covariance; the windows become the
        channel axis of the result, ``(N, W, c, c)``. ``hop`` is the step
        between window starts (default: ``window``, no overlap). When series
        lengths differ, every sample gets the same number of windows ``W``,
        the smallest count any sample allows, and in longer series the ``W``
        window starts are spread evenly from the first to the last possible
        start, so window ``k`` covers the same relative stretch of every
        series.
    ridge:
        Added as ``ridge · (tr S / c) · I`` after shrinkage; scale-free, so
        the same value suits data in any unit.
    center:
        Subtract each channel's mean first (``False`` for data known to be
        zero-mean).
    augment_mean:
        Embed the Gaussian :math:`\\mathcal N(\\mu, S)` of each series as the
        ``(c + 1) x (c + 1)`` SPD matrix
        :math:`\begin{pmatrix} S + \\mu\\mu^\top & \\mu \\ \\mu^\top & 1 \\end{pmatrix}`
        (Lovrić et al.; Calvo & Oller), which is SPD whenever ``S`` is (its
        Schur complement is ``S``). A plain covariance discards the channel
        means, which carry most of the class information in short series
        such as JapaneseVowels.

    Returns
    -------
    np.ndarray
        Float64 ``(N, c, c)``, or ``(N, W, c, c)`` with ``window`` (``c + 1``
        instead of ``c`` with ``augment_mean``): symmetric
        and positive definite. Matrices that are still numerically singular
        after shrinkage and ``ridge`` (possible with ``shrinkage=None`` and
        fewer time steps than channels, or with a constant channel) receive
        an extra ``1e-6 · (tr S / c) · I``.

    Raises
    ------
    UserInputError
        Naming the first offending sample: wrong shape, fewer than 2 time
        steps (or fewer than ``window``), NaN or inf, or all channels
        constant (zero covariance).
    """
    _check_options(shrinkage, window, hop, ridge)
    samples = _as_sample_list(series)
    if window is None:
        segments = samples
        windows_per_sample = None
    else:
        segments, windows_per_sample = _cut_windows(samples, window, hop or window)

    covs = np.empty((len(segments), samples[0].shape[0], samples[0].shape[0]))
    means = np.empty((len(segments), samples[0].shape[0]))
    # Samples of one length are stacked and processed together: the loop runs
    # over distinct lengths, not over samples.
    lengths = np.array([s.shape[1] for s in segments])
    for length in np.unique(lengths):
        idx = np.flatnonzero(lengths == length)
        batch = np.stack([segments[i] for i in idx])
        covs[idx] = _shrunk_covariance(batch, shrinkage, center)
        means[idx] = batch.mean(axis=2)

    mean_eig = np.trace(covs, axis1=-2, axis2=-1) / covs.shape[-1]
    zero = np.flatnonzero(mean_eig <= 0)
    if zero.size:
        sample = int(zero[0]) if windows_per_sample is None else int(zero[0]) // windows_per_sample
        raise UserInputError(
            f"sample {sample}: every channel is constant"
            f"{' in a window' if windows_per_sample else ''}, so its covariance is zero"
        )
    eye = np.eye(covs.shape[-1])
    if ridge:
        covs += ridge * mean_eig[:, None, None] * eye
    covs = 0.5 * (covs + np.swapaxes(covs, -1, -2))
    lam_min = np.linalg.eigvalsh(covs)[:, 0]
    singular = lam_min <= _SINGULAR_RTOL * mean_eig
    if singular.any():
        covs[singular] += _AUTO_RIDGE * mean_eig[singular, None, None] * eye
    if augment_mean:
        covs = _gaussian_embedding(covs, means)
    if trace_normalize:
        covs /= np.trace(covs, axis1=-2, axis2=-1)[:, None, None]

    if windows_per_sample is not None:
        covs = covs.reshape(len(samples), windows_per_sample, *covs.shape[1:])
    return covs


def _gaussian_embedding(covs: np.ndarray, means: np.ndarray) -> np.ndarray:
    n, c = means.shape
    out = np.empty((n, c + 1, c + 1))
    out[:, :c, :c] = covs + means[:, :, None] * means[:, None, :]
    out[:, :c, c] = means
    out[:, c, :c] = means
    out[:, c, c] = 1.0
    return out


def shrinkage_coefficients(batch: np.ndarray, method: str, center: bool = True) -> np.ndarray:
    """Per-sample Ledoit–Wolf or OAS shrinkage ``a`` for a batch ``(B, c, t)``.

    Same closed forms as scikit-learn's ``ledoit_wolf_shrinkage`` and ``oas``
    (with ``t`` observations of ``c`` features), computed for all samples at
    once. With one channel the shrinkage is 0, as in scikit-learn.
    """
    z = np.asarray(batch, dtype=np.float64)
    if center:
        z = z - z.mean(axis=-1, keepdims=True)
    _, c, t = z.shape
    if c == 1:
        return np.zeros(z.shape[0])
    s = z @ np.swapaxes(z, -1, -2) / t
    trace = np.trace(s, axis1=-2, axis2=-1)
    mu = trace / c
    if method == "ledoit_wolf":
        # beta: variance of the entries of S around their expectation;
        # delta: squared distance of S from mu·I (Ledoit & Wolf 2004, Lemma 3.3).
        sq_norms = (z**2).sum(axis=-2)  # ||x_k||² for each of the t observations
        beta_sum = (sq_norms**2).sum(axis=-1)
        delta_sum = (s**2).sum(axis=(-1, -2))
        beta = (beta_sum / t - delta_sum) / (c * t)
        delta = (delta_sum - 2.0 * mu * trace + c * mu**2) / c
        beta = np.minimum(beta, delta)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(beta == 0, 0.0, beta / delta)
    if method == "oas":
        # Chen, Wiesel, Eldar & Hero 2010, Eq. 23 as scikit-learn states it.
        alpha = (s**2).mean(axis=(-1, -2))
        num = alpha + mu**2
        den = (t + 1) * (alpha - mu**2 / c)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(den == 0, 1.0, np.minimum(num / den, 1.0))
    raise UserInputError(f"shrinkage {method!r} unknown; use one of {SHRINKAGE_METHODS}")


def _shrunk_covariance(
    batch: np.ndarray, shrinkage: str | float | None, center: bool
) -> np.ndarray:
    z = batch - batch.mean(axis=-1, keepdims=True) if center else batch
    c, t = z.shape[-2:]
    s = z @ np.swapaxes(z, -1, -2) / t
    if shrinkage is None:
        return s
    if isinstance(shrinkage, str):
        a = shrinkage_coefficients(z, shrinkage, center=False)
    else:
        a = np.full(len(z), float(shrinkage))
    mu = np.trace(s, axis1=-2, axis2=-1) / c
    return (1.0 - a)[:, None, None] * s + (a * mu)[:, None, None] * np.eye(c)


def _as_sample_list(series: np.ndarray | Sequence[np.ndarray]) -> list[np.ndarray]:
    if isinstance(series, np.ndarray) and series.dtype != object:
        if series.ndim != 3:
            raise UserInputError(
                f"time series must be (N, channels, time) or a list of (channels, time) "
                f"arrays; got an array of shape {series.shape}"
            )
        samples = list(series)
    else:
        samples = list(series)
    if not samples:
        raise UserInputError("time series: no samples")
    out = []
    for i, sample in enumerate(samples):
        try:
            arr = np.asarray(sample, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise UserInputError(f"sample {i}: not a numeric array ({exc})") from None
        if arr.ndim != 2:
            raise UserInputError(
                f"sample {i}: expected a (channels, time) array, got shape {arr.shape}"
            )
        if out and arr.shape[0] != out[0].shape[0]:
            raise UserInputError(
                f"sample {i}: has {arr.shape[0]} channels, sample 0 has {out[0].shape[0]}"
            )
        if arr.shape[1] < 2:
            raise UserInputError(
                f"sample {i}: has {arr.shape[1]} time step(s); a covariance needs at least 2"
            )
        bad = ~np.isfinite(arr)
        if bad.any():
            ch, step = np.argwhere(bad)[0]
            kind = "NaN" if np.isnan(arr[ch, step]) else "inf"
            raise UserInputError(f"sample {i}: contains {kind} (channel {ch}, time step {step})")
        out.append(arr)
    return out


def _check_options(
    shrinkage: str | float | None, window: int | None, hop: int | None, ridge: float
) -> None:
    if isinstance(shrinkage, str):
        if shrinkage not in SHRINKAGE_METHODS:
            raise UserInputError(
                f"shrinkage {shrinkage!r} unknown; use one of {', '.join(SHRINKAGE_METHODS)}, "
                f"a number in [0, 1] or null"
            )
    elif shrinkage is not None and not (
        isinstance(shrinkage, (int, float)) and 0.0 <= float(shrinkage) <= 1.0
    ):
        raise UserInputError(f"shrinkage must be in [0, 1], got {shrinkage!r}")
    if window is not None and (not isinstance(window, (int, np.integer)) or window < 2):
        raise UserInputError(f"window must be an integer >= 2, got {window!r}")
    if hop is not None and (window is None or not isinstance(hop, (int, np.integer)) or hop < 1):
        raise UserInputError(f"hop must be a positive integer used with window, got {hop!r}")
    if not isinstance(ridge, (int, float)) or ridge < 0:
        raise UserInputError(f"ridge must be a number >= 0, got {ridge!r}")


def _cut_windows(samples: list[np.ndarray], window: int, hop: int) -> tuple[list[np.ndarray], int]:
    lengths = np.array([s.shape[1] for s in samples])
    short = np.flatnonzero(lengths < window)
    if short.size:
        i = int(short[0])
        raise UserInputError(
            f"sample {i}: has {lengths[i]} time steps, shorter than window={window}"
        )
    counts = 1 + (lengths - window) // hop
    n_windows = int(counts.min())
    segments = []
    for sample, length, count in zip(samples, lengths, counts):
        if count == n_windows:
            starts = hop * np.arange(n_windows)
        else:
            starts = np.rint(np.linspace(0, length - window, n_windows)).astype(int)
        segments.extend(sample[:, s : s + window] for s in starts)
    return segments, n_windows
