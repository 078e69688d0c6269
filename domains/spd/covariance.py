"""Covariance descriptors of time series, univariate or multivariate.

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

A univariate series has a ``1 × 1`` covariance, its variance. Its shape is
kept by a delay (Takens) embedding first: with dimension ``d`` and lag ``τ``
the vectors :math:`(x_s, x_{s+τ}, …, x_{s+(d-1)τ})` form a ``d``-channel series
of ``t - (d - 1)τ`` steps, whose ``d × d`` covariance holds (for a stationary
series) the autocovariance at lags ``0, τ, …, (d - 1)τ`` in Toeplitz form.
Multivariate series stack the delayed copies of all channels.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from einops import rearrange

from manifold_nas.errors import UserInputError

__all__ = [
    "SHRINKAGE_METHODS",
    "covariance_features",
    "default_embedding_lag",
    "delay_embedding",
    "shrinkage_coefficients",
]

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
    embed_dim: int | None = None,
    embed_lag: int | None = None,
    n_windows: int | None = None,
    source: str | None = None,
) -> np.ndarray:
    """SPD covariance matrices of time series.

    Parameters
    ----------
    series:
        An array ``(N, c, t)`` (aeon's layout), ``(N, t)`` (univariate), or a
        sequence of ``N`` arrays ``(c, t_i)`` or ``(t_i,)`` whose lengths may
        differ.
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
    embed_dim, embed_lag:
        Replace each series by its delay embedding (:func:`delay_embedding`)
        of dimension ``d = embed_dim`` and lag ``τ = embed_lag`` before
        anything else, so ``c`` becomes ``d · c``. ``embed_lag`` defaults to
        :func:`default_embedding_lag` of the shortest series given. Every
        series needs at least ``(d - 1)τ + 2`` steps.
    n_windows:
        With ``window``: give every sample exactly this many windows (spread
        as above) instead of the count the shortest sample allows, so that
        two files can be cut alike.
    source:
        Names the data (e.g. a file) in error messages.

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
        Naming ``source`` and the first offending sample (its index in
        ``series``): wrong shape, fewer than 2 time steps (or fewer than the
        embedding or ``window`` needs), NaN or inf, or all channels constant
        (zero covariance).
    """
    _check_options(shrinkage, window, hop, ridge, embed_dim, embed_lag, n_windows)
    samples = _as_sample_list(series, source)
    if embed_dim is not None:
        lag = embed_lag or default_embedding_lag(samples, embed_dim)
        samples = _embed_samples(samples, embed_dim, lag, source)
    if window is None:
        segments = samples
        windows_per_sample = None
    else:
        segments, windows_per_sample = _cut_windows(
            samples, window, hop or window, n_windows, source
        )

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
            f"{_sample(sample, source)}: every channel is constant"
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
        covs = rearrange(covs, "(s w) n m -> s w n m", w=windows_per_sample)
    return covs


def delay_embedding(series: np.ndarray, dim: int, lag: int) -> np.ndarray:
    """Delay (Takens) embedding of series ``(..., c, t)``, batched over leading axes.

    Returns ``(..., d · c, t - (d - 1)τ)`` with ``d = dim`` and ``τ = lag``:
    row ``k · c + j`` is channel ``j`` delayed by ``k · τ``, so column ``s``
    is the vector :math:`(x_s, x_{s+τ}, …, x_{s+(d-1)τ})` of every channel.
    ``dim = 1`` returns the series unchanged.
    """
    span = (dim - 1) * lag
    # (..., c, steps, span + 1) views; every lag-th entry of a view is one delay vector.
    views = np.lib.stride_tricks.sliding_window_view(series, span + 1, axis=-1)[..., ::lag]
    return rearrange(views, "... c t d -> ... (d c) t")


def default_embedding_lag(series: np.ndarray | Sequence[np.ndarray], dim: int) -> int:
    """Lag ``τ = max(1, ⌊t_min / (4 d)⌋)`` for embedding dimension ``d = dim``.

    ``t_min`` is the length of the shortest series. When ``t_min >= 4d`` the
    embedding window spans :math:`(d - 1)τ < t_{min} / 4` steps: the delay
    covariance holds autocovariances up to lag ``t/4``, the largest lag at
    which the usual estimate still averages over enough pairs (Box & Jenkins'
    rule of thumb), and at least three quarters of every series remain as
    embedded vectors. Shorter series get ``τ = 1``, the densest embedding.
    The rule depends on length only, never on labels or values, so it is not
    tuned to any data set.
    """
    if not isinstance(dim, (int, np.integer)) or dim < 1:
        raise UserInputError(f"embed_dim must be an integer >= 1, got {dim!r}")
    if isinstance(series, np.ndarray) and series.dtype != object:
        shortest = series.shape[-1]
    else:
        shortest = min(np.shape(sample)[-1] if np.ndim(sample) else 0 for sample in series)
    return max(1, int(shortest) // (4 * int(dim)))


def _embed_samples(
    samples: list[np.ndarray], dim: int, lag: int, source: str | None
) -> list[np.ndarray]:
    lengths = np.array([s.shape[1] for s in samples])
    needed = (dim - 1) * lag + 2
    short = np.flatnonzero(lengths < needed)
    if short.size:
        i = int(short[0])
        raise UserInputError(
            f"{_sample(i, source)}: has {lengths[i]} time steps; embed_dim={dim} with "
            f"embed_lag={lag} needs at least (embed_dim - 1) * embed_lag + 2 = {needed}"
        )
    embedded: list[np.ndarray] = [np.empty(0)] * len(samples)
    # One batched embedding per distinct length, as for the covariances.
    for length in np.unique(lengths):
        idx = np.flatnonzero(lengths == length)
        batch = delay_embedding(np.stack([samples[i] for i in idx]), dim, lag)
        for row, i in enumerate(idx):
            embedded[i] = batch[row]
    return embedded


def _sample(index: int, source: str | None) -> str:
    return f"{source}: sample {index}" if source else f"sample {index}"


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


def _as_sample_list(
    series: np.ndarray | Sequence[np.ndarray], source: str | None = None
) -> list[np.ndarray]:
    if isinstance(series, np.ndarray) and series.dtype != object:
        if series.ndim not in (2, 3):
            raise UserInputError(
                f"{source + ': ' if source else ''}time series must be (N, channels, time), "
                f"(N, time) or a list of (channels, time) arrays; got an array of shape "
                f"{series.shape}"
            )
        samples = list(series)
    else:
        samples = list(series)
    if not samples:
        raise UserInputError(f"{source + ': ' if source else ''}time series: no samples")
    out = []
    for i, sample in enumerate(samples):
        where = _sample(i, source)
        try:
            arr = np.asarray(sample, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise UserInputError(f"{where}: not a numeric array ({exc})") from None
        if arr.ndim == 1:
            arr = arr[None]
        if arr.ndim != 2:
            raise UserInputError(
                f"{where}: expected a (channels, time) array, got shape {arr.shape}"
            )
        if out and arr.shape[0] != out[0].shape[0]:
            raise UserInputError(
                f"{where}: has {arr.shape[0]} channels, sample 0 has {out[0].shape[0]}"
            )
        if arr.shape[1] < 2:
            raise UserInputError(
                f"{where}: has {arr.shape[1]} time step(s); a covariance needs at least 2"
            )
        bad = ~np.isfinite(arr)
        if bad.any():
            ch, step = np.argwhere(bad)[0]
            kind = "NaN" if np.isnan(arr[ch, step]) else "inf"
            raise UserInputError(f"{where}: contains {kind} (channel {ch}, time step {step})")
        out.append(arr)
    return out


def _check_options(
    shrinkage: str | float | None,
    window: int | None,
    hop: int | None,
    ridge: float,
    embed_dim: int | None,
    embed_lag: int | None,
    n_windows: int | None,
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
    if window is not None and (not _is_int(window) or window < 2):
        raise UserInputError(f"window must be an integer >= 2, got {window!r}")
    if hop is not None and (window is None or not _is_int(hop) or hop < 1):
        raise UserInputError(f"hop must be a positive integer used with window, got {hop!r}")
    if n_windows is not None and (window is None or not _is_int(n_windows) or n_windows < 1):
        raise UserInputError(
            f"n_windows must be a positive integer used with window, got {n_windows!r}"
        )
    if not isinstance(ridge, (int, float)) or ridge < 0:
        raise UserInputError(f"ridge must be a number >= 0, got {ridge!r}")
    if embed_dim is not None and (not _is_int(embed_dim) or embed_dim < 1):
        raise UserInputError(f"embed_dim must be an integer >= 1, got {embed_dim!r}")
    if embed_lag is not None and (embed_dim is None or not _is_int(embed_lag) or embed_lag < 1):
        raise UserInputError(
            f"embed_lag must be a positive integer used with embed_dim, got {embed_lag!r}"
        )


def _is_int(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _cut_windows(
    samples: list[np.ndarray], window: int, hop: int, n_windows: int | None, source: str | None
) -> tuple[list[np.ndarray], int]:
    lengths = np.array([s.shape[1] for s in samples])
    short = np.flatnonzero(lengths < window)
    if short.size:
        i = int(short[0])
        raise UserInputError(
            f"{_sample(i, source)}: has {lengths[i]} time steps, shorter than window={window}"
        )
    counts = 1 + (lengths - window) // hop
    if n_windows is None:
        n_windows = int(counts.min())
    elif counts.min() < n_windows:
        i = int(np.argmin(counts))
        raise UserInputError(
            f"{_sample(i, source)}: has {lengths[i]} time steps, room for {counts[i]} "
            f"windows of {window} with hop {hop}, fewer than n_windows={n_windows}"
        )
    segments = []
    for sample, length, count in zip(samples, lengths, counts):
        if count == n_windows:
            starts = hop * np.arange(n_windows)
        else:
            starts = np.rint(np.linspace(0, length - window, n_windows)).astype(int)
        segments.extend(sample[:, s : s + window] for s in starts)
    return segments, n_windows
