"""Architecture optimizers: GAEA equivalences, long-run soundness, the factory, relaxations."""

from __future__ import annotations

from collections.abc import Callable

import geoopt
import pytest
import torch

from manifold_nas.errors import UserInputError
from manifold_nas.optim import (
    ARCH_OPTIMIZERS,
    DARTS_ARCH_ADAM_OPTIONS,
    ExponentiatedGradient,
    NaturalGradient,
    Simplex,
    SimplexRelaxation,
    SphereRelaxation,
    build_optimizer,
)
from manifold_nas.space.relaxations import RELAXATIONS

EDGES, OPS = 6, 5


def _quadratic_loss(c: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    # A non-linear loss so that the gradient depends on p.
    return lambda p: (c * p).sum() + 0.5 * (p**2).sum()


def _start_and_costs(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    start = Simplex().random(EDGES, OPS, dtype=torch.float64).as_subclass(torch.Tensor)
    return start, torch.randn(EDGES, OPS, dtype=torch.float64)


def _step(
    param: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    loss_of_param: Callable[[torch.Tensor], torch.Tensor],
) -> None:
    optimizer.zero_grad()
    loss_of_param(param).backward()
    optimizer.step()


@pytest.mark.parametrize("lr", [0.01, 0.5])
def test_eg_riemannian_sgd_and_natural_gradient_take_the_same_step(lr):
    start, c = _start_and_costs()
    loss = _quadratic_loss(c)

    eg_param = torch.nn.Parameter(start.clone())
    _step(eg_param, ExponentiatedGradient([eg_param], lr=lr), loss)

    rsgd_param = geoopt.ManifoldParameter(start.clone(), manifold=Simplex())
    _step(rsgd_param, geoopt.optim.RiemannianSGD([rsgd_param], lr=lr), loss)

    logits = torch.nn.Parameter(start.log())
    _step(logits, NaturalGradient([logits], lr=lr), lambda t: loss(torch.softmax(t, dim=-1)))

    expected = start * torch.exp(-lr * (c + start))
    expected = expected / expected.sum(-1, keepdim=True)
    torch.testing.assert_close(eg_param.detach(), expected, atol=1e-10, rtol=0)
    torch.testing.assert_close(
        rsgd_param.detach().as_subclass(torch.Tensor), expected, atol=1e-10, rtol=0
    )
    torch.testing.assert_close(torch.softmax(logits.detach(), -1), expected, atol=1e-10, rtol=0)


def _simplex_param(start: torch.Tensor) -> torch.Tensor:
    return geoopt.ManifoldParameter(start.clone(), manifold=Simplex())


def _sphere_param(start: torch.Tensor) -> torch.Tensor:
    return geoopt.ManifoldParameter(start.sqrt(), manifold=geoopt.Sphere())


_SPHERE = SphereRelaxation()

# name -> (make parameter from a start point, probabilities of the parameter, make optimizer)
LONG_RUN_SETUPS = {
    "eg": (
        lambda s: torch.nn.Parameter(s.clone()),
        lambda p: p,
        lambda q: ExponentiatedGradient(q, lr=0.1),
    ),
    "riemannian_sgd_simplex": (
        _simplex_param,
        lambda p: p,
        lambda q: geoopt.optim.RiemannianSGD(q, lr=0.1),
    ),
    "riemannian_sgd_momentum_simplex": (
        _simplex_param,
        lambda p: p,
        lambda q: geoopt.optim.RiemannianSGD(q, lr=0.1, momentum=0.9),
    ),
    "riemannian_adam_simplex": (
        _simplex_param,
        lambda p: p,
        lambda q: geoopt.optim.RiemannianAdam(q, lr=0.1),
    ),
    "riemannian_sgd_sphere": (
        _sphere_param,
        _SPHERE.probabilities,
        lambda q: geoopt.optim.RiemannianSGD(q, lr=0.1),
    ),
    "riemannian_adam_sphere": (
        _sphere_param,
        _SPHERE.probabilities,
        lambda q: geoopt.optim.RiemannianAdam(q, lr=0.1),
    ),
    "natural_gradient": (
        lambda s: torch.nn.Parameter(s.log()),
        lambda t: torch.softmax(t, dim=-1),
        lambda q: NaturalGradient(q, lr=0.1),
    ),
    "adam_logits": (
        lambda s: torch.nn.Parameter(s.log()),
        lambda t: torch.softmax(t, dim=-1),
        lambda q: torch.optim.Adam(q, lr=0.1, betas=(0.5, 0.999), weight_decay=1e-3),
    ),
}


@pytest.mark.parametrize("setup", sorted(LONG_RUN_SETUPS))
def test_thousand_large_steps_keep_probabilities_on_simplex(setup):
    make_param, probabilities_of, make_optimizer = LONG_RUN_SETUPS[setup]
    start, c = _start_and_costs(seed=1)
    # A linear loss drives every row to a vertex: the other probabilities
    # underflow unless the optimizer guards them.
    costs = 100.0 * torch.sign(c)
    param = make_param(start)
    optimizer = make_optimizer([param])
    for _ in range(1000):
        optimizer.zero_grad()
        (costs * probabilities_of(param)).sum().backward()
        optimizer.step()
    with torch.no_grad():
        p = probabilities_of(param).as_subclass(torch.Tensor)
    assert bool(torch.isfinite(p).all())
    assert bool((p > 0).all())
    torch.testing.assert_close(p.sum(-1), torch.ones(EDGES, dtype=torch.float64), atol=1e-8, rtol=0)


@pytest.mark.parametrize("setup", ["eg", "riemannian_adam_simplex", "natural_gradient"])
def test_large_steps_keep_float32_probabilities_on_simplex(setup):
    make_param, probabilities_of, make_optimizer = LONG_RUN_SETUPS[setup]
    start, c = _start_and_costs(seed=2)
    costs = 100.0 * torch.sign(c).float()
    param = make_param(start.float())
    optimizer = make_optimizer([param])
    for _ in range(200):
        optimizer.zero_grad()
        (costs * probabilities_of(param)).sum().backward()
        optimizer.step()
    with torch.no_grad():
        p = probabilities_of(param).as_subclass(torch.Tensor)
    assert p.dtype == torch.float32
    assert bool(torch.isfinite(p).all())
    assert bool((p > 0).all())
    torch.testing.assert_close(p.sum(-1), torch.ones(EDGES), atol=1e-5, rtol=0)


def test_eg_reaches_the_cheapest_op_of_a_linear_loss():
    start, c = _start_and_costs()
    param = torch.nn.Parameter(start.clone())
    optimizer = ExponentiatedGradient([param], lr=0.5)
    for _ in range(200):
        _step(param, optimizer, lambda p: (c * p).sum())
    assert torch.equal(param.detach().argmax(-1), c.argmin(-1))


def test_eg_kl_to_uniform_pulls_back_to_uniform():
    start, _ = _start_and_costs()
    param = torch.nn.Parameter(start.clone())
    optimizer = ExponentiatedGradient([param], lr=0.5, kl_to_uniform_weight=1.0)
    for _ in range(200):
        _step(param, optimizer, lambda p: 0.0 * p.sum())
    uniform = torch.full_like(start, 1.0 / OPS)
    torch.testing.assert_close(param.detach(), uniform, atol=1e-8, rtol=0)


def test_eg_rejects_logits():
    logits = torch.nn.Parameter(torch.randn(EDGES, OPS, dtype=torch.float64))
    optimizer = ExponentiatedGradient([logits], lr=0.1)
    logits.sum().backward()
    with pytest.raises(UserInputError, match="probabilities"):
        optimizer.step()


def test_registry_names_every_optimizer():
    assert ARCH_OPTIMIZERS.list() == [
        "adam",
        "adamw",
        "eg",
        "natural_gradient",
        "riemannian_adam",
        "riemannian_sgd",
        "sgd",
    ]


@pytest.mark.parametrize(
    "name", ["adam", "adamw", "sgd", "eg", "natural_gradient", "riemannian_sgd", "riemannian_adam"]
)
def test_build_optimizer_builds_every_registered_class(name):
    param = torch.nn.Parameter(torch.full((EDGES, OPS), 1.0 / OPS, dtype=torch.float64))
    optimizer = build_optimizer(name, [param], lr=0.01)
    assert isinstance(optimizer, ARCH_OPTIMIZERS.get(name))


def test_build_optimizer_passes_darts_adam_options():
    param = torch.nn.Parameter(torch.zeros(EDGES, OPS))
    optimizer = build_optimizer("adam", [param], **DARTS_ARCH_ADAM_OPTIONS)
    assert optimizer.defaults["betas"] == (0.5, 0.999)
    assert optimizer.defaults["weight_decay"] == 1e-3


def test_build_optimizer_unknown_name_lists_registered():
    with pytest.raises(UserInputError, match=r"unknown optimizer 'lion'.*adam, adamw, eg"):
        build_optimizer("lion", [torch.nn.Parameter(torch.zeros(2))], lr=0.1)


def test_build_optimizer_unknown_option_names_it_and_lists_valid():
    with pytest.raises(
        UserInputError, match=r"unknown option 'momentum'.*valid options: lr, kl_to"
    ):
        build_optimizer("eg", [torch.nn.Parameter(torch.zeros(2))], momentum=0.9)


def test_build_optimizer_missing_required_option_names_it():
    with pytest.raises(UserInputError, match="'riemannian_sgd' needs option 'lr'"):
        build_optimizer("riemannian_sgd", [torch.nn.Parameter(torch.zeros(2))])


def test_build_optimizer_turns_rejected_value_into_user_error():
    with pytest.raises(UserInputError, match="'adam'"):
        build_optimizer("adam", [torch.nn.Parameter(torch.zeros(2))], lr=-1.0)


@pytest.mark.parametrize("name", ["simplex", "sphere"])
def test_relaxation_is_registered(name):
    assert RELAXATIONS.get(name) is {"simplex": SimplexRelaxation, "sphere": SphereRelaxation}[name]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_simplex_relaxation_starts_near_uniform_on_the_manifold(dtype):
    param = SimplexRelaxation().init_param((EDGES, OPS), dtype)
    assert isinstance(param.manifold, Simplex)
    assert param.dtype == dtype
    param.manifold.assert_check_point_on_manifold(param)
    torch.testing.assert_close(
        param.detach(), torch.full((EDGES, OPS), 1.0 / OPS, dtype=dtype), atol=1e-2, rtol=0
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_sphere_relaxation_starts_near_uniform_on_the_sphere(dtype):
    relaxation = SphereRelaxation()
    param = relaxation.init_param((EDGES, OPS), dtype)
    assert isinstance(param.manifold, geoopt.Sphere)
    param.manifold.assert_check_point_on_manifold(param)
    probabilities = relaxation.probabilities(param).detach()
    torch.testing.assert_close(
        probabilities, torch.full((EDGES, OPS), 1.0 / OPS, dtype=dtype), atol=1e-2, rtol=0
    )


def test_zero_init_scale_gives_exact_uniform():
    param = SimplexRelaxation(init_scale=0.0).init_param((EDGES, OPS), torch.float64)
    assert torch.equal(param.detach(), torch.full((EDGES, OPS), 1.0 / OPS, dtype=torch.float64))


@pytest.mark.parametrize("relaxation_class", [SimplexRelaxation, SphereRelaxation])
def test_relaxation_probabilities_are_rows_summing_to_one(relaxation_class):
    relaxation = relaxation_class()
    param = relaxation.init_param((EDGES, OPS), torch.float64)
    for training in (True, False):
        weights = relaxation.weights(param, training=training)
        torch.testing.assert_close(weights.sum(-1).detach(), torch.ones(EDGES, dtype=torch.float64))
    torch.testing.assert_close(
        relaxation.probabilities(param).sum(-1).detach(), torch.ones(EDGES, dtype=torch.float64)
    )


@pytest.mark.parametrize("relaxation_class", [SimplexRelaxation, SphereRelaxation])
def test_gradient_flows_from_weights_and_regularizer_to_param(relaxation_class):
    torch.manual_seed(0)
    relaxation = relaxation_class(kl_to_uniform_weight=0.1)
    param = relaxation.init_param((EDGES, OPS), torch.float64)
    costs = torch.randn(EDGES, OPS, dtype=torch.float64)
    loss = (costs * relaxation.weights(param, training=True)).sum() + relaxation.regularizer(param)
    loss.backward()
    assert param.grad is not None
    assert bool(torch.isfinite(param.grad).all())
    assert float(param.grad.abs().sum()) > 0


@pytest.mark.parametrize("relaxation_class", [SimplexRelaxation, SphereRelaxation])
def test_regularizer_is_zero_at_uniform_and_positive_elsewhere(relaxation_class):
    relaxation = relaxation_class(kl_to_uniform_weight=1.0, init_scale=0.0)
    param = relaxation.init_param((EDGES, OPS), torch.float64)
    assert abs(float(relaxation.regularizer(param).detach())) < 1e-9
    skewed = relaxation_class(kl_to_uniform_weight=1.0, init_scale=1.0).init_param(
        (EDGES, OPS), torch.float64
    )
    assert float(relaxation.regularizer(skewed).detach()) > 0


@pytest.mark.parametrize(
    ("relaxation_class", "optimizer_name"),
    [
        (SimplexRelaxation, "eg"),
        (SimplexRelaxation, "riemannian_adam"),
        (SphereRelaxation, "riemannian_sgd"),
    ],
)
def test_relaxation_param_trains_towards_cheapest_op(relaxation_class, optimizer_name):
    torch.manual_seed(0)
    relaxation = relaxation_class()
    param = relaxation.init_param((EDGES, OPS), torch.float64)
    costs = torch.randn(EDGES, OPS, dtype=torch.float64)
    optimizer = build_optimizer(optimizer_name, [param], lr=0.1)
    for _ in range(300):
        optimizer.zero_grad()
        (costs * relaxation.weights(param, training=True)).sum().backward()
        optimizer.step()
    probabilities = relaxation.probabilities(param).detach()
    assert torch.equal(probabilities.argmax(-1), costs.argmin(-1))
