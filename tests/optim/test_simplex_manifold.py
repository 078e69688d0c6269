"""Property tests of the Fisher-Rao ``Simplex`` manifold, in geoopt's style.

Every test runs in float64 with fixed seeds and is parametrised over seeds
and over batch shapes; one behaviour per test.
"""

from __future__ import annotations

import geoopt
import pytest
import torch

from manifold_nas.optim import Simplex

SEEDS = [1, 2, 3]
SHAPES = [(5,), (4, 6), (3, 4, 7)]
ATOL = 1e-10


@pytest.fixture
def manifold() -> Simplex:
    return Simplex()


def _point(manifold: Simplex, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    torch.manual_seed(seed)
    return manifold.random(*shape, dtype=torch.float64)


def _tangent(manifold: Simplex, p: torch.Tensor, seed: int, scale: float = 1.0) -> torch.Tensor:
    # A Riemannian gradient of a random linear function: its entries scale
    # with p, so a small ``scale`` keeps exp/log inside the open simplex even
    # where a uniform sample has a tiny coordinate.
    torch.manual_seed(seed + 100)
    return scale * manifold.egrad2rgrad(p, torch.randn_like(p))


def _on_simplex(p: torch.Tensor) -> bool:
    return bool((p > 0).all()) and torch.allclose(
        p.sum(-1), torch.ones(p.shape[:-1], dtype=p.dtype), atol=ATOL
    )


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("shape", SHAPES)
def test_random_point_is_on_manifold(manifold, seed, shape):
    p = _point(manifold, shape, seed)
    assert p.shape == shape
    manifold.assert_check_point_on_manifold(p)


def test_origin_is_barycentre(manifold):
    p = manifold.origin(3, 4, dtype=torch.float64)
    torch.testing.assert_close(p, torch.full((3, 4), 0.25, dtype=torch.float64))


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("shape", SHAPES)
def test_projx_lands_on_simplex_and_is_idempotent(manifold, seed, shape):
    torch.manual_seed(seed)
    raw = torch.randn(shape, dtype=torch.float64)
    once = manifold.projx(raw)
    assert _on_simplex(once)
    torch.testing.assert_close(manifold.projx(once), once, atol=ATOL, rtol=0)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("shape", SHAPES)
def test_proju_gives_tangent_vector_and_is_idempotent(manifold, seed, shape):
    p = _point(manifold, shape, seed)
    u = manifold.proju(p, torch.randn_like(p))
    manifold.assert_check_vector_on_tangent(p, u, atol=ATOL, rtol=0)
    torch.testing.assert_close(manifold.proju(p, u), u, atol=ATOL, rtol=0)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("shape", SHAPES)
def test_proju_is_orthogonal_in_fisher_metric(manifold, seed, shape):
    p = _point(manifold, shape, seed)
    raw = torch.randn_like(p)
    residual = raw - manifold.proju(p, raw)
    v = _tangent(manifold, p, seed)
    torch.testing.assert_close(
        manifold.inner(p, residual, v), torch.zeros(shape[:-1], dtype=p.dtype), atol=ATOL, rtol=0
    )


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("shape", SHAPES)
def test_egrad2rgrad_is_tangent(manifold, seed, shape):
    p = _point(manifold, shape, seed)
    rgrad = manifold.egrad2rgrad(p, torch.randn_like(p))
    manifold.assert_check_vector_on_tangent(p, rgrad, atol=ATOL, rtol=0)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("shape", SHAPES)
def test_egrad2rgrad_represents_differential_in_metric(manifold, seed, shape):
    p = _point(manifold, shape, seed)
    egrad = torch.randn_like(p)
    v = _tangent(manifold, p, seed)
    rgrad = manifold.egrad2rgrad(p, egrad)
    torch.testing.assert_close(manifold.inner(p, rgrad, v), (egrad * v).sum(-1), atol=ATOL, rtol=0)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("scale", [1e-3, 1.0, 50.0])
def test_retr_lands_on_simplex(manifold, seed, shape, scale):
    p = _point(manifold, shape, seed)
    q = manifold.retr(p, _tangent(manifold, p, seed, scale))
    assert _on_simplex(q)


def test_retr_survives_an_underflowed_coordinate(manifold):
    p = manifold.projx(torch.tensor([1.0, 1e-300, 1e-300], dtype=torch.float64))
    q = manifold.retr(p, torch.tensor([-1.0, 0.5, 0.5], dtype=torch.float64))
    assert _on_simplex(q)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("shape", SHAPES)
def test_retr_matches_expmap_to_first_order(manifold, seed, shape):
    p = _point(manifold, shape, seed)
    u = _tangent(manifold, p, seed)

    def gap(t: float) -> float:
        return float((manifold.retr(p, t * u) - manifold.expmap(p, t * u)).abs().max())

    # Agreement to first order: the gap is O(t^2), so shrinking t tenfold
    # shrinks it about a hundredfold.
    assert gap(1e-4) < gap(1e-3) / 50


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("scale", [1e-3, 1.0, 50.0])
def test_expmap_lands_on_simplex(manifold, seed, shape, scale):
    p = _point(manifold, shape, seed)
    q = manifold.expmap(p, _tangent(manifold, p, seed, scale))
    assert _on_simplex(q)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("shape", SHAPES)
def test_expmap_of_zero_is_identity(manifold, seed, shape):
    p = _point(manifold, shape, seed)
    torch.testing.assert_close(manifold.expmap(p, torch.zeros_like(p)), p, atol=ATOL, rtol=0)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("shape", SHAPES)
def test_expmap_inverts_logmap(manifold, seed, shape):
    p = _point(manifold, shape, seed)
    q = _point(manifold, shape, seed + 50)
    torch.testing.assert_close(manifold.expmap(p, manifold.logmap(p, q)), q, atol=1e-9, rtol=0)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("shape", SHAPES)
def test_logmap_inverts_expmap_for_small_vectors(manifold, seed, shape):
    p = _point(manifold, shape, seed)
    u = _tangent(manifold, p, seed, 1e-2)
    torch.testing.assert_close(manifold.logmap(p, manifold.expmap(p, u)), u, atol=1e-9, rtol=0)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("shape", SHAPES)
def test_logmap_is_tangent(manifold, seed, shape):
    p = _point(manifold, shape, seed)
    q = _point(manifold, shape, seed + 50)
    manifold.assert_check_vector_on_tangent(p, manifold.logmap(p, q), atol=ATOL, rtol=0)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("shape", SHAPES)
def test_dist_is_symmetric(manifold, seed, shape):
    p = _point(manifold, shape, seed)
    q = _point(manifold, shape, seed + 50)
    torch.testing.assert_close(manifold.dist(p, q), manifold.dist(q, p), atol=ATOL, rtol=0)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("shape", SHAPES)
def test_dist_to_itself_is_zero(manifold, seed, shape):
    p = _point(manifold, shape, seed)
    torch.testing.assert_close(
        manifold.dist(p, p), torch.zeros(shape[:-1], dtype=p.dtype), atol=ATOL, rtol=0
    )


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("shape", SHAPES)
def test_dist_equals_arccos_formula(manifold, seed, shape):
    p = _point(manifold, shape, seed)
    q = _point(manifold, shape, seed + 50)
    bhattacharyya = (p * q).sqrt().sum(-1).clamp(-1.0, 1.0)
    torch.testing.assert_close(manifold.dist(p, q), 2 * torch.acos(bhattacharyya))


@pytest.mark.parametrize("seed", range(1, 11))
def test_dist_satisfies_triangle_inequality(manifold, seed):
    p, q, r = (_point(manifold, (8, 5), seed * 3 + i) for i in range(3))
    assert bool((manifold.dist(p, r) <= manifold.dist(p, q) + manifold.dist(q, r) + ATOL).all())


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("shape", SHAPES)
def test_dist_along_expmap_is_fisher_norm(manifold, seed, shape):
    p = _point(manifold, shape, seed)
    u = _tangent(manifold, p, seed, 1e-2)
    torch.testing.assert_close(
        manifold.dist(p, manifold.expmap(p, u)), manifold.norm(p, u), atol=1e-10, rtol=1e-8
    )


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("shape", SHAPES)
def test_dist_equals_norm_of_logmap(manifold, seed, shape):
    p = _point(manifold, shape, seed)
    q = _point(manifold, shape, seed + 50)
    torch.testing.assert_close(manifold.norm(p, manifold.logmap(p, q)), manifold.dist(p, q))


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("shape", SHAPES)
def test_transp_gives_tangent_vector_at_target(manifold, seed, shape):
    p = _point(manifold, shape, seed)
    u = _tangent(manifold, p, seed)
    v = _tangent(manifold, p, seed + 7)
    q, v_transported = manifold.retr_transp(p, u, v)
    manifold.assert_check_vector_on_tangent(q, v_transported, atol=ATOL, rtol=0)


def test_inner_broadcasts_and_keeps_dim(manifold):
    p = _point(manifold, (3, 4, 6), 1)
    u = _tangent(manifold, p, 1)
    assert manifold.inner(p, u).shape == (3, 4)
    assert manifold.inner(p, u, keepdim=True).shape == (3, 4, 1)
    assert manifold.component_inner(p, u).shape == (3, 4, 1)


@pytest.mark.parametrize(
    "verb",
    ["projx", "proju", "egrad2rgrad", "retr", "expmap", "logmap", "transp", "inner", "dist"],
)
def test_every_verb_acts_row_by_row_over_batch_dims(manifold, verb):
    p = _point(manifold, (3, 4, 5), 1)
    other = _point(manifold, (3, 4, 5), 2)
    u = _tangent(manifold, p, 1, 0.1)
    arguments = {
        "projx": (u.abs(),),
        "proju": (p, u),
        "egrad2rgrad": (p, u),
        "retr": (p, u),
        "expmap": (p, u),
        "logmap": (p, other),
        "transp": (p, other, u),
        "inner": (p, u, u),
        "dist": (p, other),
    }[verb]
    batched = getattr(manifold, verb)(*arguments)
    row_by_row = torch.stack(
        [getattr(manifold, verb)(*(a.reshape(12, 5)[i] for a in arguments)) for i in range(12)]
    )
    torch.testing.assert_close(batched.reshape(row_by_row.shape), row_by_row)


def test_point_check_rejects_zero_entry_and_bad_sum(manifold):
    assert not manifold.check_point_on_manifold(torch.tensor([1.0, 0.0], dtype=torch.float64))
    assert not manifold.check_point_on_manifold(torch.tensor([0.6, 0.6], dtype=torch.float64))


def test_default_floor_depends_on_dtype(manifold):
    assert manifold.floor(torch.float64) == 1e-12
    assert manifold.floor(torch.float32) == 1e-7
    assert Simplex(min_prob=1e-5).floor(torch.float64) == 1e-5


@pytest.mark.parametrize(
    "optimizer_class", [geoopt.optim.RiemannianSGD, geoopt.optim.RiemannianAdam]
)
def test_manifold_parameter_trains_with_geoopt_optimizers(manifold, optimizer_class):
    torch.manual_seed(0)
    target = manifold.random(4, 5, dtype=torch.float64)
    param = geoopt.ManifoldParameter(manifold.origin(4, 5, dtype=torch.float64), manifold=manifold)
    optimizer = optimizer_class([param], lr=0.05)
    start = float(manifold.dist(param.detach(), target).sum())
    for _ in range(50):
        optimizer.zero_grad()
        loss = ((param - target) ** 2).sum()
        loss.backward()
        optimizer.step()
    manifold.assert_check_point_on_manifold(param, atol=1e-10, rtol=0)
    assert float(manifold.dist(param.detach(), target).sum()) < 0.5 * start
