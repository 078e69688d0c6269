"""Relaxations turn an architecture parameter into mixing weights."""

import math

import pytest
import torch

from manifold_nas.space.relaxations import (
    RELAXATIONS,
    DirichletRelaxation,
    GumbelHardRelaxation,
    SigmoidRelaxation,
    SoftmaxRelaxation,
    entropy,
)


@pytest.mark.parametrize(
    "name", ["softmax", "sparsemax", "gumbel", "sigmoid", "dirichlet", "simplex", "sphere"]
)
def test_every_relaxation_gives_distributions_and_gradients(name):
    torch.manual_seed(0)
    relaxation = RELAXATIONS.get(name)()
    param = relaxation.init_param((5, 4), torch.float64)
    probs = relaxation.probabilities(param)
    assert probs.shape == (5, 4)
    assert torch.allclose(probs.sum(-1), torch.ones(5, dtype=torch.float64))
    weights = relaxation.weights(param, training=True)
    (weights * torch.arange(4.0, dtype=torch.float64)).sum().add(
        relaxation.regularizer(param)
    ).backward()
    assert param.grad is not None and torch.isfinite(param.grad).all()


def test_softmax_temperature_sharpens_the_distribution():
    alpha = torch.tensor([[1.0, 0.0, -1.0]])
    cold = SoftmaxRelaxation(temperature=0.1).probabilities(alpha)
    hot = SoftmaxRelaxation(temperature=10.0).probabilities(alpha)
    assert entropy(cold) < entropy(hot)
    with pytest.raises(ValueError):
        SoftmaxRelaxation(temperature=0.0)


def test_gumbel_weights_are_one_hot_with_straight_through_gradient():
    torch.manual_seed(0)
    relax = GumbelHardRelaxation()
    alpha = torch.zeros(6, 4, requires_grad=True)
    w = relax.weights(alpha, training=True)
    assert torch.equal(w.detach().sum(-1), torch.ones(6))
    assert set(w.detach().unique().tolist()) <= {0.0, 1.0}
    (w * torch.arange(4.0)).sum().backward()
    assert alpha.grad.abs().sum() > 0


def test_gumbel_temperature_anneals_linearly():
    relax = GumbelHardRelaxation(tau_max=10.0, tau_min=0.1)
    relax.set_progress(0.0)
    assert relax.tau == pytest.approx(10.0)
    relax.set_progress(0.5)
    assert relax.tau == pytest.approx(5.05)
    relax.set_progress(1.0)
    assert relax.tau == pytest.approx(0.1)


def test_gumbel_samples_follow_the_probabilities():
    torch.manual_seed(1)
    relax = GumbelHardRelaxation(tau_max=1.0, tau_min=1.0)
    alpha = torch.log(torch.tensor([[0.7, 0.2, 0.1]])).expand(4000, 3)
    counts = relax.weights(alpha, training=True).detach().sum(0) / 4000
    assert torch.allclose(counts, torch.tensor([0.7, 0.2, 0.1]), atol=0.03)


def test_sigmoid_zero_one_loss_rewards_decisive_weights():
    relax = SigmoidRelaxation(zero_one_weight=10.0)
    undecided = relax.regularizer(torch.zeros(2, 3))
    decided = relax.regularizer(torch.full((2, 3), 5.0))
    assert undecided == pytest.approx(0.0)
    assert decided < undecided


def test_dirichlet_kl_is_zero_at_the_uniform_prior_and_positive_elsewhere():
    relax = DirichletRelaxation(kl_weight=1.0)
    assert relax.regularizer(torch.zeros(3, 4)).item() == pytest.approx(0.0, abs=1e-6)
    assert relax.regularizer(torch.full((3, 4), 2.0)).item() > 0
    torch.manual_seed(0)
    sample = relax.weights(torch.zeros(3, 4), training=True)
    assert torch.allclose(sample.sum(-1), torch.ones(3)) and (sample > 0).all()


def test_entropy_of_uniform_rows_is_log_k():
    p = torch.full((2, 5), 0.2)
    assert torch.allclose(entropy(p), torch.full((2,), math.log(5)))
    assert entropy(torch.tensor([[1.0, 0.0]])).item() == 0.0
