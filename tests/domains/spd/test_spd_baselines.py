"""Riemannian baselines: block-diagonal channels, MDM, tangent space + cross-validated LR."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch
from pyriemann.tangentspace import TangentSpace
from pyriemann.utils.mean import mean_riemann
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, StratifiedKFold
from sklearn.pipeline import make_pipeline
from threadpoolctl import threadpool_limits
from torch.utils.data import TensorDataset

from manifold_nas.data import DataBundle
from manifold_nas.domains.spd.baselines import (
    block_diagonal,
    mdm_accuracy,
    tangent_space_lr_accuracy,
)
from manifold_nas.errors import UserInputError

CS = (0.01, 0.1, 1.0, 10.0)


@pytest.fixture(autouse=True)
def one_blas_thread():
    # Tiny matrices: several BLAS threads only contend with each other on a busy machine.
    with threadpool_limits(limits=1):
        yield


def noisy_classes(n_per_class, channels=2, size=3, classes=3, noise=0.8, seed=0):
    """SPD samples ``exp(M_k + noise · E)`` around one fixed centre per class and channel.

    The centres do not depend on ``seed``, which draws only the noise, so
    train and test sets of different seeds share their classes.
    """
    centres = np.random.default_rng(1234).standard_normal((classes, channels, size, size))
    rng = np.random.default_rng(seed)
    centres = 0.5 * (centres + np.swapaxes(centres, -1, -2))
    labels = np.repeat(np.arange(classes), n_per_class)
    sym = centres[labels] + noise * rng.standard_normal((len(labels), channels, size, size))
    sym = 0.5 * (sym + np.swapaxes(sym, -1, -2))
    lam, vec = np.linalg.eigh(sym)
    spd = (vec * np.exp(lam)[..., None, :]) @ np.swapaxes(vec, -1, -2)
    return spd, labels


def make_bundle(train, test):
    (x_train, y_train), (x_test, y_test) = train, test
    return DataBundle(
        name="synthetic",
        train=TensorDataset(torch.from_numpy(x_train), torch.from_numpy(y_train)),
        test=TensorDataset(torch.from_numpy(x_test), torch.from_numpy(y_test)),
        num_classes=int(y_train.max()) + 1,
        sample_shape=tuple(x_train.shape[1:]),
    )


def airm_distance(a, b):
    # d(A, B)² = Σ log² λ_i with λ the generalised eigenvalues of (B, A).
    return np.sqrt((np.log(scipy.linalg.eigvalsh(b, a)) ** 2).sum())


def test_block_diagonal_places_each_channel_on_the_diagonal():
    x, _ = noisy_classes(2, channels=3)
    blocks = block_diagonal(x)
    assert blocks.shape == (6, 9, 9)
    for i in range(6):
        np.testing.assert_array_equal(blocks[i], scipy.linalg.block_diag(*x[i]))


def test_block_diagonal_of_one_channel_is_the_matrix_itself():
    x, _ = noisy_classes(2, channels=1)
    np.testing.assert_array_equal(block_diagonal(x), x[:, 0])


def test_riemannian_mean_of_block_diagonal_matrices_is_the_per_channel_means():
    x, _ = noisy_classes(5, channels=2, classes=1)
    joint = mean_riemann(block_diagonal(x))
    per_channel = [mean_riemann(x[:, c]) for c in range(2)]
    np.testing.assert_allclose(joint, scipy.linalg.block_diag(*per_channel), atol=1e-7)


def test_mdm_on_channels_predicts_the_class_of_least_summed_squared_distance():
    train, test = noisy_classes(8, noise=2.0, seed=1), noisy_classes(10, noise=2.0, seed=2)
    (x_train, y_train), (x_test, y_test) = train, test
    means = [[mean_riemann(x_train[y_train == k, c]) for c in range(2)] for k in range(3)]
    squared = np.array(
        [
            [sum(airm_distance(means[k][c], x[c]) ** 2 for c in range(2)) for k in range(3)]
            for x in x_test
        ]
    )
    expected = np.mean(squared.argmin(axis=1) == y_test)
    assert 0.4 < expected < 1.0  # the classes overlap, so the check can tell predictions apart
    assert mdm_accuracy(make_bundle(train, test))["accuracy"] == pytest.approx(expected)


def test_tangent_space_lr_matches_grid_search_over_the_whole_pipeline():
    train, test = noisy_classes(6, seed=3), noisy_classes(10, seed=4)
    ours = tangent_space_lr_accuracy(make_bundle(train, test), cv=3, Cs=CS, seed=7)
    x_train, x_test = block_diagonal(train[0]), block_diagonal(test[0])
    search = GridSearchCV(
        make_pipeline(TangentSpace(metric="riemann"), LogisticRegression(max_iter=10_000)),
        {"logisticregression__C": list(CS)},
        cv=StratifiedKFold(3, shuffle=True, random_state=7),
    ).fit(x_train, train[1])
    assert ours["C"] == search.best_params_["logisticregression__C"]
    assert ours["cv_accuracy"] == pytest.approx(search.best_score_)
    assert ours["accuracy"] == pytest.approx(np.mean(search.predict(x_test) == test[1]))
    assert ours["cv_folds"] == 3


def test_tangent_space_lr_never_looks_at_the_test_labels():
    train, test = noisy_classes(6, seed=3), noisy_classes(10, seed=4)
    flipped = (test[0], (test[1] + 1) % 3)
    first = tangent_space_lr_accuracy(make_bundle(train, test), cv=3, Cs=CS)
    second = tangent_space_lr_accuracy(make_bundle(train, flipped), cv=3, Cs=CS)
    assert first["C"] == second["C"] and first["cv_accuracy"] == second["cv_accuracy"]
    assert first["accuracy"] != second["accuracy"]


def test_both_baselines_separate_well_separated_classes_perfectly():
    bundle = make_bundle(noisy_classes(6, noise=0.05), noisy_classes(6, noise=0.05, seed=9))
    assert mdm_accuracy(bundle)["accuracy"] == 1.0
    assert tangent_space_lr_accuracy(bundle, cv=3, Cs=CS)["accuracy"] == 1.0


def test_folds_are_capped_at_the_smallest_training_class():
    bundle = make_bundle(noisy_classes(3, seed=5), noisy_classes(3, seed=6))
    assert tangent_space_lr_accuracy(bundle, cv=5, Cs=CS)["cv_folds"] == 3


def test_a_training_class_of_one_sample_is_refused():
    x, y = noisy_classes(3, seed=5)
    keep = np.r_[0:3, 3:6, 6]
    with pytest.raises(UserInputError, match="1 sample"):
        tangent_space_lr_accuracy(make_bundle((x[keep], y[keep]), (x, y)), Cs=CS)
