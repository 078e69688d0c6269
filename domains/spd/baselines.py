"""The classical Riemannian classifiers a practitioner fits before any SPD network.

Two baselines on a :class:`~manifold_nas.data.DataBundle` of SPD samples
``(N, C, n, n)``, both under the affine-invariant (AIRM) metric
:math:`d(A, B) = \\lVert \\log(A^{-1/2} B A^{-1/2}) \\rVert_F` and both
deterministic:

:func:`mdm_accuracy`
    Minimum distance to the mean (pyRiemann's ``MDM``): each class is
    represented by the Riemannian (Karcher) mean of its training samples and
    a test sample gets the class of the nearest mean.
:func:`tangent_space_lr_accuracy`
    Tangent space + logistic regression: every sample is mapped to
    :math:`\\operatorname{upper}(\\log(G^{-1/2} X G^{-1/2}))` at the
    Riemannian mean ``G`` of the training samples (off-diagonal entries
    weighted by :math:`\\sqrt 2`, so the Euclidean norm of the vector is the
    AIRM distance to ``G``; pyRiemann's ``TangentSpace``), then classified by
    an L2-penalised multinomial logistic regression whose inverse penalty
    ``C`` is chosen by stratified cross-validation on the training set only.

Multi-channel samples (``C > 1``: windows, several frequency bands) are
placed on the diagonal of one block-diagonal ``(C·n) × (C·n)`` matrix. Under
AIRM the blocks decouple: the Riemannian mean of block-diagonal matrices is
block-diagonal with the per-channel means as blocks, the squared distance is
the sum of per-channel squared distances, and the tangent vector is the
concatenation of the per-channel tangent vectors plus off-block coordinates
that are zero for every sample (and so carry no weight in the regression).
MDM therefore sums per-channel squared distances, and tangent space + LR
sees the concatenated per-channel tangent vectors.

pyRiemann and scikit-learn are imported when a baseline runs (the ``bench``
and ``data`` extras).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from einops import rearrange

from manifold_nas.data import DataBundle
from manifold_nas.errors import UserInputError

__all__ = [
    "DEFAULT_CS",
    "TANGENT_SPACE_LR",
    "block_diagonal",
    "logistic_regression_cv",
    "mdm_accuracy",
    "tangent_space_baseline",
    "tangent_space_lr_accuracy",
]

#: the name :func:`tangent_space_baseline` reports
TANGENT_SPACE_LR = "tangent space + logistic regression (C by cross-validation)"

#: inverse L2 penalties tried by :func:`tangent_space_lr_accuracy`: 1e-3 .. 1e4, 4 per decade
DEFAULT_CS: tuple[float, ...] = tuple(float(c) for c in np.logspace(-3, 4, 29))


def block_diagonal(x: np.ndarray) -> np.ndarray:
    """``(N, C, n, n)`` channels as one block-diagonal ``(N, C·n, C·n)`` matrix each.

    Block ``k`` (rows and columns ``k·n .. (k+1)·n - 1``) is channel ``k``;
    every other entry is zero. ``C = 1`` returns ``x[:, 0]``.
    """
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 4 or x.shape[-1] != x.shape[-2]:
        raise UserInputError(f"SPD samples must be (N, C, n, n), got shape {x.shape}")
    n_samples, channels, n = x.shape[:3]
    if channels == 1:
        return x[:, 0].copy()
    out = np.zeros((n_samples, channels, n, channels, n))
    diagonal = np.arange(channels)
    # Advanced indices split by a slice move to the front: the target is (C, N, n, n).
    out[:, diagonal, :, diagonal, :] = rearrange(x, "b c n m -> c b n m")
    return rearrange(out, "b c n k m -> b (c n) (k m)")


def mdm_accuracy(bundle: DataBundle) -> dict[str, Any]:
    """Test accuracy of minimum distance to the Riemannian class means (AIRM).

    Returns
    -------
    dict
        ``accuracy`` on ``bundle.test``, fitted on ``bundle.train``.
    """
    from pyriemann.classification import MDM

    x_train, y_train, x_test, y_test = _arrays(bundle)
    model = MDM(metric="riemann").fit(x_train, y_train)
    return {"accuracy": float(np.mean(model.predict(x_test) == y_test))}


def tangent_space_lr_accuracy(
    bundle: DataBundle,
    cv: int = 5,
    Cs: Sequence[float] = DEFAULT_CS,
    seed: int = 0,
    max_iter: int = 10_000,
) -> dict[str, Any]:
    """Test accuracy of tangent space + logistic regression with a cross-validated ``C``.

    The pipeline (tangent space at the Riemannian mean of the samples it is
    fitted on, then multinomial logistic regression with penalty
    :math:`\\tfrac{1}{2C}\\lVert w \\rVert^2`) is cross-validated on
    ``bundle.train`` alone, over ``Cs`` with stratified folds shuffled by
    ``seed``; every fold refits the tangent point on its own training part,
    so no validation sample shapes the features it is scored on. The result
    is that of scikit-learn's ``GridSearchCV`` over the pipeline, with the
    tangent map fitted once per fold instead of once per fold and ``C``. The
    ``C`` of the best mean fold accuracy (ties: the smallest, i.e. the
    strongest penalty) is refitted on the whole training set and scored on
    ``bundle.test``, which nothing before has seen.

    ``cv`` is lowered to the size of the smallest training class when that
    is smaller (at least 2 folds).

    Returns
    -------
    dict
        ``accuracy`` (test), ``C`` (chosen), ``cv_accuracy`` (its mean fold
        accuracy) and ``cv_folds`` (folds used).
    """
    from sklearn.model_selection import StratifiedKFold

    x_train, y_train, x_test, y_test = _arrays(bundle)
    smallest_class = int(np.bincount(y_train)[np.unique(y_train)].min())
    if smallest_class < 2:
        raise UserInputError(
            f"{bundle.name}: a training class has 1 sample; cross-validating C needs 2 per class"
        )
    folds = max(2, min(int(cv), smallest_class))
    grid = sorted(float(c) for c in Cs)
    scores = np.zeros(len(grid))
    splitter = StratifiedKFold(folds, shuffle=True, random_state=seed)
    for fit, held_out in splitter.split(x_train, y_train):
        tangent = _tangent_space().fit(x_train[fit])
        f_fit, f_held_out = tangent.transform(x_train[fit]), tangent.transform(x_train[held_out])
        for k, c in enumerate(grid):
            model = _logistic_regression(c, max_iter).fit(f_fit, y_train[fit])
            scores[k] += np.mean(model.predict(f_held_out) == y_train[held_out]) / folds
    # argmax returns the first maximum, and the grid is ascending: ties go to the smallest C.
    best = int(np.argmax(scores))
    tangent = _tangent_space().fit(x_train)
    model = _logistic_regression(grid[best], max_iter).fit(tangent.transform(x_train), y_train)
    return {
        "accuracy": float(np.mean(model.predict(tangent.transform(x_test)) == y_test)),
        "C": grid[best],
        "cv_accuracy": float(scores[best]),
        "cv_folds": folds,
    }


def logistic_regression_cv(
    features: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    cv: int = 5,
    Cs: Sequence[float] = DEFAULT_CS,
    seed: int = 0,
    max_iter: int = 10_000,
) -> dict[str, Any]:
    """Multinomial logistic regression on fixed features, ``C`` by stratified cross-validation.

    The selection rule of :func:`tangent_space_lr_accuracy` (best mean fold
    accuracy over ``Cs``, ties to the smallest ``C``, folds lowered to the
    smallest class size), on features that are not refitted per fold.

    Returns
    -------
    dict
        ``weight`` ``(num_classes, d)`` and ``bias`` ``(num_classes,)`` such
        that ``softmax(features @ weight.T + bias)`` are the fitted class
        probabilities (a binary problem's single logit becomes class 1's, class
        0's being 0; classes absent from ``labels`` get zero rows), ``C`` and
        ``cv_accuracy``.
    """
    from sklearn.model_selection import StratifiedKFold

    features, labels = np.asarray(features, dtype=np.float64), np.asarray(labels)
    present = np.unique(labels)
    smallest_class = int(np.bincount(labels)[present].min())
    grid = sorted(float(c) for c in Cs)
    scores = np.zeros(len(grid))
    folds = max(2, min(int(cv), smallest_class))
    if smallest_class >= 2 and present.size >= 2:
        splitter = StratifiedKFold(folds, shuffle=True, random_state=seed)
        for fit, held_out in splitter.split(features, labels):
            for k, c in enumerate(grid):
                model = _logistic_regression(c, max_iter).fit(features[fit], labels[fit])
                scores[k] += np.mean(model.predict(features[held_out]) == labels[held_out]) / folds
    best = int(np.argmax(scores))
    weight = np.zeros((num_classes, features.shape[1]))
    bias = np.zeros(num_classes)
    if present.size >= 2:
        model = _logistic_regression(grid[best], max_iter).fit(features, labels)
        rows = model.classes_[1:] if model.coef_.shape[0] == 1 else model.classes_
        weight[rows] = model.coef_
        bias[rows] = model.intercept_
    return {"weight": weight, "bias": bias, "C": grid[best], "cv_accuracy": float(scores[best])}


def tangent_space_baseline(bundle: DataBundle) -> dict[str, Any]:
    """The SPD data sets' :attr:`~manifold_nas.data.DataBundle.baseline`.

    :func:`tangent_space_lr_accuracy` with its defaults (5 folds, seed 0),
    under :data:`TANGENT_SPACE_LR` as ``name``.
    """
    return {"name": TANGENT_SPACE_LR, **tangent_space_lr_accuracy(bundle)}


def _tangent_space() -> Any:
    from pyriemann.tangentspace import TangentSpace

    return TangentSpace(metric="riemann")


def _logistic_regression(c: float, max_iter: int) -> Any:
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=c, max_iter=max_iter)


def _arrays(bundle: DataBundle) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    # SPD builders hold TensorDatasets (X, y); the baselines need plain arrays.
    x_train, y_train = (t.numpy() for t in bundle.train.tensors)
    x_test, y_test = (t.numpy() for t in bundle.test.tensors)
    return block_diagonal(x_train), y_train, block_diagonal(x_test), y_test
