"""Closed-form sparsemax against its definition as the Euclidean projection onto the simplex."""

import numpy as np
import pytest
import torch
from scipy.optimize import minimize

from manifold_nas.space.sparsemax import sparsemax


def projection_by_optimisation(z: np.ndarray) -> np.ndarray:
    k = len(z)
    result = minimize(
        lambda p: 0.5 * np.sum((p - z) ** 2),
        np.full(k, 1.0 / k),
        jac=lambda p: p - z,
        bounds=[(0, 1)] * k,
        constraints=[{"type": "eq", "fun": lambda p: p.sum() - 1, "jac": lambda p: np.ones(k)}],
        method="SLSQP",
        options={"ftol": 1e-14, "maxiter": 500},
    )
    return result.x


@pytest.mark.parametrize("seed", range(5))
def test_sparsemax_equals_the_euclidean_projection_onto_the_simplex(seed):
    rng = np.random.default_rng(seed)
    z = rng.normal(scale=2.0, size=7)
    ours = sparsemax(torch.tensor(z), dim=-1).numpy()
    np.testing.assert_allclose(ours, projection_by_optimisation(z), atol=1e-6)


def test_sparsemax_rows_lie_on_the_simplex_and_can_be_sparse():
    z = torch.tensor([[3.0, 0.0, -1.0], [0.1, 0.2, 0.3]], dtype=torch.float64)
    p = sparsemax(z)
    assert torch.allclose(p.sum(-1), torch.ones(2, dtype=torch.float64))
    assert (p >= 0).all()
    assert torch.equal(p[0], torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64))


def test_sparsemax_is_shift_invariant():
    z = torch.randn(4, 6, dtype=torch.float64)
    assert torch.allclose(sparsemax(z), sparsemax(z + 3.7))


def test_sparsemax_gradient_matches_finite_differences():
    torch.manual_seed(0)
    z = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: sparsemax(t, dim=-1), (z,))
    zt = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: sparsemax(t, dim=0), (zt,))
