"""Specification of spd_ops layers, batch norm, Fréchet means, distances and validation."""

from __future__ import annotations

import geoopt
import pytest
import torch

from spd_ops import (
    BiMap,
    ExpEig,
    InvalidSPDError,
    LogEig,
    ReEig,
    SPDBatchNorm,
    airm_distance,
    airm_geodesic,
    check_spd,
    expm,
    frechet_mean,
    invsqrtm,
    karcher_tangent,
    log_euclidean_distance,
    logm,
    regularize_spd,
    sqrtm,
)

DTYPE = torch.float64


def random_spd(*batch: int, n: int, seed: int, spread: float = 1.0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    A = spread * torch.randn(*batch, n, n, dtype=DTYPE, generator=generator)
    return A @ A.mT / n + 0.3 * torch.eye(n, dtype=DTYPE)


def random_invertible(n: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, n, dtype=DTYPE, generator=generator) + 2 * torch.eye(n, dtype=DTYPE)


def assert_spd(X: torch.Tensor, atol: float = 1e-8) -> None:
    torch.testing.assert_close(X, X.mT, atol=atol, rtol=0)
    assert bool((torch.linalg.eigvalsh(X) > atol).all())


# --------------------------------------------------------------------- layers


def test_bimap_shape_and_spd_output():
    torch.manual_seed(0)
    layer = BiMap(c_in=3, c_out=2, n_in=6, n_out=4)
    Y = layer(random_spd(5, 3, n=6, seed=1))
    assert Y.shape == (5, 2, 4, 4)
    assert Y.dtype == DTYPE
    assert_spd(Y)


def test_bimap_equals_channel_sum_of_congruences():
    torch.manual_seed(0)
    layer = BiMap(c_in=2, c_out=3, n_in=5, n_out=3)
    X = random_spd(4, 2, n=5, seed=2)
    W = layer.weight.detach()
    expected = sum(
        W[:, i].mT.unsqueeze(0) @ X[:, i : i + 1] @ W[:, i].unsqueeze(0) for i in range(2)
    )
    torch.testing.assert_close(layer(X), expected, atol=1e-13, rtol=0)


def test_bimap_weight_is_orthonormal_stiefel_parameter():
    layer = BiMap(2, 3, 7, 4)
    assert isinstance(layer.weight, geoopt.ManifoldParameter)
    assert isinstance(layer.weight.manifold, geoopt.manifolds.EuclideanStiefel)
    assert layer.weight.shape == (3, 2, 7, 4)
    gram = layer.weight.mT @ layer.weight
    torch.testing.assert_close(gram, torch.eye(4, dtype=DTYPE).expand_as(gram), atol=1e-12, rtol=0)


def test_bimap_init_is_reproducible_under_manual_seed():
    torch.manual_seed(42)
    first = BiMap(1, 2, 5, 3).weight.detach().clone()
    torch.manual_seed(42)
    second = BiMap(1, 2, 5, 3).weight.detach()
    assert torch.equal(first, second)


def test_bimap_rejects_expanding_dimension():
    with pytest.raises(ValueError, match="n_out <= n_in"):
        BiMap(1, 1, 4, 5)


def test_bimap_rejects_wrong_input_shape():
    with pytest.raises(ValueError, match="expected input"):
        BiMap(2, 1, 4, 3)(random_spd(3, 1, n=4, seed=3))


@pytest.mark.parametrize("module", [ReEig(), LogEig(), ExpEig()], ids=lambda m: type(m).__name__)
def test_eigen_layers_preserve_shape(module):
    X = random_spd(3, 2, n=5, seed=4)
    assert module(X).shape == X.shape


def test_reeig_clamps_small_eigenvalues():
    X = random_spd(4, 1, n=5, seed=5) - 0.5 * torch.eye(5, dtype=DTYPE)
    eigenvalues = torch.linalg.eigvalsh(ReEig(eps=0.1)(X))
    assert bool((eigenvalues >= 0.1 - 1e-12).all())


def test_logeig_and_expeig_are_inverse():
    X = random_spd(2, 3, n=4, seed=6)
    torch.testing.assert_close(ExpEig()(LogEig()(X)), X, atol=1e-12, rtol=0)


# --------------------------------------------------------- Riemannian training


def _one_step(optimizer_cls, **kwargs):
    torch.manual_seed(7)
    bimap = BiMap(2, 3, 6, 4)
    norm = SPDBatchNorm(4, channels=3)
    X = random_spd(8, 2, n=6, seed=8)
    optimizer = optimizer_cls(list(bimap.parameters()) + list(norm.parameters()), **kwargs)
    target = random_spd(8, 3, n=4, seed=9)
    loss = (LogEig()(norm(ReEig()(bimap(X)))) - logm(target)).pow(2).sum()
    loss.backward()
    optimizer.step()
    return bimap, norm


@pytest.mark.parametrize(
    "optimizer_cls, kwargs",
    [(geoopt.optim.RiemannianSGD, {"lr": 0.05}), (geoopt.optim.RiemannianAdam, {"lr": 0.05})],
    ids=["RiemannianSGD", "RiemannianAdam"],
)
def test_riemannian_step_keeps_parameters_on_their_manifolds(optimizer_cls, kwargs):
    bimap, norm = _one_step(optimizer_cls, **kwargs)
    W = bimap.weight.detach()
    gram = W.mT @ W
    torch.testing.assert_close(gram, torch.eye(4, dtype=DTYPE).expand_as(gram), atol=1e-8, rtol=0)
    bias = norm.bias.detach()
    assert_spd(bias)
    # The step actually moved the bias away from its identity initialisation.
    assert not torch.allclose(bias, torch.eye(4, dtype=DTYPE).expand_as(bias))


# ----------------------------------------------------------------- batch norm


def test_batchnorm_output_shape_pooled_and_per_channel():
    X = random_spd(6, 3, n=4, seed=10)
    assert SPDBatchNorm(4)(X).shape == X.shape
    assert SPDBatchNorm(4, channels=3)(X).shape == X.shape
    assert SPDBatchNorm(4).bias.shape == (4, 4)
    assert SPDBatchNorm(4, channels=3).bias.shape == (3, 4, 4)


@pytest.mark.parametrize("channels", [None, 2])
def test_batchnorm_train_output_has_karcher_mean_equal_to_bias(channels):
    norm = SPDBatchNorm(4, channels=channels)
    with torch.no_grad():
        norm.bias.copy_(random_spd(*(() if channels is None else (2,)), n=4, seed=11))
    Y = norm(random_spd(10, 2, n=4, seed=12))
    samples = Y.reshape(-1, 4, 4) if channels is None else Y
    torch.testing.assert_close(frechet_mean(samples), norm.bias.detach(), atol=1e-9, rtol=0)


def test_batchnorm_running_mean_moves_toward_batch_mean():
    norm = SPDBatchNorm(4, channels=2, momentum=0.3)
    X = random_spd(10, 2, n=4, seed=13, spread=2.0)
    batch_mean = frechet_mean(X)
    before = airm_distance(norm.running_mean, batch_mean)
    norm(X)
    after = airm_distance(norm.running_mean, batch_mean)
    # Geodesic step of size 0.3: the remaining distance is exactly 70 %.
    torch.testing.assert_close(after, 0.7 * before, atol=1e-9, rtol=0)


def test_batchnorm_eval_uses_running_mean_and_leaves_it_unchanged():
    norm = SPDBatchNorm(4, channels=2)
    norm(random_spd(10, 2, n=4, seed=14))
    running = norm.running_mean.clone()
    norm.eval()
    X = random_spd(3, 2, n=4, seed=15)
    Y = norm(X)
    assert torch.equal(norm.running_mean, running)
    # Bias still at I: the output is the batch centred at the running mean.
    whitening = invsqrtm(running)
    torch.testing.assert_close(Y, whitening @ X @ whitening, atol=1e-12, rtol=0)


def test_batchnorm_gradients_finite_at_identity_bias_and_identical_inputs():
    norm = SPDBatchNorm(3, channels=1)
    X = torch.eye(3, dtype=DTYPE).expand(4, 1, 3, 3).clone().requires_grad_()
    norm(X).pow(2).sum().backward()
    assert bool(torch.isfinite(norm.bias.grad).all())
    assert bool(torch.isfinite(X.grad).all())


def test_batchnorm_rejects_wrong_channel_count():
    with pytest.raises(ValueError, match="expected input"):
        SPDBatchNorm(4, channels=3)(random_spd(2, 2, n=4, seed=16))


# -------------------------------------------------------------- Fréchet mean


def test_frechet_mean_of_commuting_matrices_is_closed_form():
    Q, _ = torch.linalg.qr(random_invertible(5, seed=17))
    spectra = torch.rand(4, 5, dtype=DTYPE, generator=torch.Generator().manual_seed(18)) * 3 + 0.1
    X = Q @ torch.diag_embed(spectra) @ Q.T
    w = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=DTYPE)
    expected = expm((w[:, None, None] * logm(X)).sum(0))
    torch.testing.assert_close(frechet_mean(X, w), expected, atol=1e-11, rtol=0)


@pytest.mark.parametrize("t", [0.25, 0.6])
def test_frechet_mean_of_two_lies_on_the_geodesic(t):
    A, B = random_spd(2, n=4, seed=19, spread=2.0)
    mean = frechet_mean(torch.stack([A, B]), torch.tensor([1 - t, t], dtype=DTYPE))
    total = airm_distance(A, B)
    torch.testing.assert_close(airm_distance(A, mean), t * total, atol=1e-9, rtol=0)
    torch.testing.assert_close(airm_distance(mean, B), (1 - t) * total, atol=1e-9, rtol=0)
    torch.testing.assert_close(mean, airm_geodesic(A, B, t), atol=1e-9, rtol=0)


def test_frechet_mean_is_congruence_equivariant():
    X = random_spd(5, n=4, seed=20, spread=2.0)
    A = random_invertible(4, seed=21)
    torch.testing.assert_close(
        frechet_mean(A @ X @ A.T), A @ frechet_mean(X) @ A.T, atol=1e-9, rtol=1e-9
    )


def test_frechet_mean_with_unit_weight_returns_that_input():
    X = random_spd(4, n=5, seed=22)
    w = torch.tensor([0.0, 0.0, 1.0, 0.0], dtype=DTYPE)
    for metric in ("airm", "log_euclidean"):
        torch.testing.assert_close(frechet_mean(X, w, metric=metric), X[2], atol=1e-11, rtol=0)


def test_frechet_mean_is_converged_to_a_stationary_point():
    X = random_spd(6, n=5, seed=23, spread=3.0)
    w = torch.tensor([3.0, 1.0, 2.0, 0.5, 1.0, 2.5], dtype=DTYPE)
    mean = frechet_mean(X, w)
    assert float(torch.linalg.matrix_norm(karcher_tangent(mean, X, w))) < 1e-8


def test_frechet_mean_beats_a_single_karcher_step():
    X = random_spd(6, n=5, seed=24, spread=3.0)
    weights = torch.full((6,), 1 / 6, dtype=DTYPE)

    def cost(G):
        return (weights * airm_distance(G, X) ** 2).sum()

    arithmetic = X.mean(0)
    root = sqrtm(arithmetic)
    one_step = root @ expm(karcher_tangent(arithmetic, X)) @ root
    converged = frechet_mean(X)
    assert float(cost(converged)) < float(cost(one_step)) - 1e-6
    assert airm_distance(converged, one_step) > 1e-4


def test_frechet_mean_is_batched_over_trailing_axes_and_dim():
    X = random_spd(5, 3, n=4, seed=25)
    means = frechet_mean(X)
    assert means.shape == (3, 4, 4)
    for c in range(3):
        torch.testing.assert_close(means[c], frechet_mean(X[:, c]), atol=1e-11, rtol=0)
    torch.testing.assert_close(frechet_mean(X.transpose(0, 1), dim=1), means, atol=1e-12, rtol=0)


def test_frechet_mean_accepts_per_batch_weights():
    X = random_spd(3, 2, n=4, seed=26)
    w = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], dtype=DTYPE)
    means = frechet_mean(X, w)
    torch.testing.assert_close(means[0], frechet_mean(X[[0, 2], 0]), atol=1e-11, rtol=0)
    torch.testing.assert_close(means[1], frechet_mean(X[[1, 2], 1]), atol=1e-11, rtol=0)


def test_frechet_mean_rejects_invalid_weights():
    X = random_spd(3, n=3, seed=27)
    with pytest.raises(ValueError, match="non-negative"):
        frechet_mean(X, torch.tensor([1.0, -1.0, 1.0], dtype=DTYPE))
    with pytest.raises(ValueError, match="leading size"):
        frechet_mean(X, torch.ones(2, dtype=DTYPE))


def test_frechet_mean_gradcheck():
    X = random_spd(3, n=3, seed=28).requires_grad_()
    w = torch.tensor([0.2, 0.5, 0.3], dtype=DTYPE, requires_grad=True)
    # tol=0 fixes the iteration count, so finite differences see the same function.
    assert torch.autograd.gradcheck(lambda M, v: frechet_mean(M, v, max_iter=15, tol=0.0), (X, w))


def test_log_euclidean_mean_gradcheck():
    X = random_spd(3, n=3, seed=29).requires_grad_()
    assert torch.autograd.gradcheck(lambda M: frechet_mean(M, metric="log_euclidean"), (X,))


# ----------------------------------------------------------------- distances


def test_airm_distance_is_symmetric_zero_on_identical_and_affine_invariant():
    X, Y = random_spd(2, 3, n=4, seed=30)
    A = random_invertible(4, seed=31)
    d = airm_distance(X, Y)
    assert d.shape == (3,)
    torch.testing.assert_close(airm_distance(Y, X), d, atol=1e-12, rtol=0)
    torch.testing.assert_close(airm_distance(X, X), torch.zeros(3, dtype=DTYPE), atol=1e-12, rtol=0)
    torch.testing.assert_close(airm_distance(A @ X @ A.T, A @ Y @ A.T), d, atol=1e-10, rtol=0)


def test_airm_distance_matches_geoopt_dist():
    X, Y = random_spd(2, 3, n=4, seed=32)
    manifold = geoopt.SymmetricPositiveDefinite()
    torch.testing.assert_close(airm_distance(X, Y), manifold.dist(X, Y), atol=1e-10, rtol=0)


def test_log_euclidean_distance_is_norm_of_log_difference():
    X, Y = random_spd(2, 3, n=4, seed=33)
    expected = torch.linalg.matrix_norm(logm(X) - logm(Y))
    torch.testing.assert_close(log_euclidean_distance(X, Y), expected)
    eye = torch.eye(4, dtype=DTYPE)
    torch.testing.assert_close(log_euclidean_distance(X, eye), airm_distance(X, eye))


# ---------------------------------------------------------------- validation


def test_check_spd_accepts_valid_batch():
    check_spd(random_spd(4, 2, n=3, seed=34))


def test_check_spd_names_non_symmetric_sample():
    X = random_spd(5, n=3, seed=35)
    X[3, 0, 1] += 0.1
    with pytest.raises(InvalidSPDError, match=r"covariance\[3\]: not symmetric"):
        check_spd(X, name="covariance")


def test_check_spd_names_non_finite_sample_with_multi_index():
    X = random_spd(2, 3, n=3, seed=36)
    X[1, 2, 0, 0] = float("nan")
    with pytest.raises(InvalidSPDError, match=r"input\[1, 2\]: contains NaN or inf"):
        check_spd(X)


def test_check_spd_names_indefinite_sample():
    X = random_spd(4, n=3, seed=37)
    X[2] = -X[2]
    with pytest.raises(InvalidSPDError, match=r"input\[2\]: not positive definite"):
        check_spd(X)


def test_check_spd_rejects_non_square_and_is_a_value_error():
    with pytest.raises(ValueError, match="square"):
        check_spd(torch.zeros(2, 3, 4, dtype=DTYPE))


def test_regularize_spd_makes_rank_deficient_covariance_spd():
    generator = torch.Generator().manual_seed(38)
    samples = torch.randn(4, 2, 6, dtype=DTYPE, generator=generator)  # rank 2 of 6
    covariance = samples.mT @ samples
    repaired = regularize_spd(covariance, ridge=1e-3)
    check_spd(repaired)
    shift = torch.linalg.eigvalsh(repaired)[:, 0]
    expected = 1e-3 * covariance.diagonal(dim1=-2, dim2=-1).sum(-1) / 6
    torch.testing.assert_close(shift, expected, atol=1e-12, rtol=1e-6)
