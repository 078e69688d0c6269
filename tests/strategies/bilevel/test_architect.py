"""The second-order architecture gradient against autograd through the unrolled step."""

import geoopt
import pytest
import torch
from torch import nn
from torch.func import functional_call

from manifold_nas.optim import Simplex, SimplexRelaxation
from manifold_nas.space.cell import ArchSpec
from manifold_nas.space.relaxations import SoftmaxRelaxation
from manifold_nas.space.supernet import ArchitectureParameters, Supernet
from manifold_nas.strategies.bilevel.architect import Architect


class TinyMixture(nn.Module):
    """Two edges of three candidate maps; one weight is Stiefel when ``stiefel``."""

    def __init__(self, stiefel: bool = False) -> None:
        super().__init__()
        self.arch_specs = {
            "cell": ArchSpec(("a", "b", "c"), ((0, 1), (1, 2)), n_inputs=1, keep=1, concat=(2,))
        }
        g = torch.Generator().manual_seed(0)
        self.a = nn.Parameter(torch.randn(4, 4, dtype=torch.float64, generator=g) * 0.5)
        self.b = nn.Parameter(torch.randn(4, dtype=torch.float64, generator=g))
        q, _ = torch.linalg.qr(torch.randn(4, 4, dtype=torch.float64, generator=g))
        m = torch.randn(4, 4, dtype=torch.float64, generator=g)
        spd = m @ m.T / 4 + torch.eye(4, dtype=torch.float64)
        if stiefel:
            self.q = geoopt.ManifoldParameter(q, manifold=geoopt.Stiefel(canonical=False))
            self.s = geoopt.ManifoldParameter(spd, manifold=geoopt.SymmetricPositiveDefinite())
        else:
            self.q = nn.Parameter(q)
            self.s = nn.Parameter(spd)
        self.head = nn.Linear(4, 3).double()

    def forward(self, x, arch_weights):
        w = arch_weights["cell"]
        for row in w:
            candidates = [torch.tanh(x @ self.a), x * self.b, x @ self.q @ self.s]
            x = sum(wk * c for wk, c in zip(row, candidates))
        return self.head(x)


def qr_retraction(x, u):
    """geoopt's EuclideanStiefel retraction, written without in-place ops for autograd."""
    q, r = torch.linalg.qr(x + u)
    return q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1)).unsqueeze(-2)


def test_reference_qr_retraction_matches_geoopt():
    g = torch.Generator().manual_seed(3)
    x, _ = torch.linalg.qr(torch.randn(5, 3, dtype=torch.float64, generator=g))
    u = 0.1 * torch.randn(5, 3, dtype=torch.float64, generator=g)
    assert torch.allclose(
        geoopt.Stiefel(canonical=False).retr(x, u), qr_retraction(x, u), atol=1e-12
    )


def exact_unrolled_gradient(supernet, loss_fn, xi, train, val):
    """d/dalpha L_val(R(w - xi grad L_train(w, alpha)), alpha) by autograd."""
    arch = dict(supernet.named_arch_parameters())
    weights = dict(supernet.named_weight_parameters())
    train_loss = loss_fn(functional_call(supernet, {**weights, **arch}, (train[0],)), train[1])
    grads = torch.autograd.grad(train_loss, list(weights.values()), create_graph=True)
    stepped = {}
    for (name, w), g in zip(weights.items(), grads):
        manifold = getattr(w, "manifold", None)
        if manifold is None:
            stepped[name] = w - xi * g
        else:
            plain = w.as_subclass(torch.Tensor)
            direction = -xi * manifold.egrad2rgrad(plain, g)
            if isinstance(manifold, geoopt.EuclideanStiefel):
                stepped[name] = qr_retraction(plain, direction)
            else:
                stepped[name] = manifold.retr(plain, direction)
    val_loss = (
        loss_fn(functional_call(supernet, {**stepped, **arch}, (val[0],)), val[1])
        + supernet.arch.regularizer()
    )
    return torch.autograd.grad(val_loss, list(arch.values()))


def make(stiefel: bool, relaxation):
    torch.manual_seed(0)
    net = TinyMixture(stiefel)
    arch = ArchitectureParameters(net.arch_specs, relaxation, torch.float64)
    with torch.no_grad():
        for p in arch.alphas.values():
            if getattr(p, "manifold", None) is None:
                p.normal_(0, 0.5)
    supernet = Supernet(net, arch)
    g = torch.Generator().manual_seed(1)
    train = (
        torch.randn(16, 4, dtype=torch.float64, generator=g),
        torch.randint(0, 3, (16,), generator=g),
    )
    val = (
        torch.randn(16, 4, dtype=torch.float64, generator=g),
        torch.randint(0, 3, (16,), generator=g),
    )
    return supernet, train, val


def relative_error(a, b):
    a = torch.cat([x.flatten() for x in a])
    b = torch.cat([x.flatten() for x in b])
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("stiefel", [False, True], ids=["euclidean", "stiefel_and_spd"])
def test_second_order_gradient_matches_the_exact_unrolled_gradient(stiefel):
    supernet, train, val = make(stiefel, SoftmaxRelaxation())
    xi = 0.01
    weight_opt = torch.optim.SGD(supernet.weight_parameters(), lr=xi)
    loss_fn = nn.functional.cross_entropy
    architect = Architect(
        supernet, loss_fn, torch.optim.Adam(supernet.arch_parameters()), "second", weight_opt
    )
    ours, _ = architect.arch_gradient(train, val)
    exact = exact_unrolled_gradient(supernet, loss_fn, xi, train, val)
    assert relative_error(ours, exact) < 1e-3


def test_second_order_gradient_on_simplex_parametrised_architecture():
    supernet, train, val = make(True, SimplexRelaxation())
    assert isinstance(next(supernet.arch_parameters()).manifold, Simplex)
    weight_opt = torch.optim.SGD(supernet.weight_parameters(), lr=0.01)
    architect = Architect(
        supernet,
        nn.functional.cross_entropy,
        torch.optim.SGD(supernet.arch_parameters(), lr=0.1),
        "second",
        weight_opt,
    )
    ours, _ = architect.arch_gradient(train, val)
    exact = exact_unrolled_gradient(supernet, nn.functional.cross_entropy, 0.01, train, val)
    assert relative_error(ours, exact) < 1e-3


def test_first_order_gradient_is_the_validation_gradient():
    supernet, train, val = make(False, SoftmaxRelaxation())
    architect = Architect(
        supernet, nn.functional.cross_entropy, torch.optim.Adam(supernet.arch_parameters())
    )
    ours, _ = architect.arch_gradient(train, val)
    loss = nn.functional.cross_entropy(supernet(val[0]), val[1])
    expected = torch.autograd.grad(loss, list(supernet.arch_parameters()))
    assert relative_error(ours, expected) < 1e-12


def test_second_order_differs_from_first_order():
    supernet, train, val = make(False, SoftmaxRelaxation())
    weight_opt = torch.optim.SGD(supernet.weight_parameters(), lr=0.5)
    first = Architect(
        supernet, nn.functional.cross_entropy, torch.optim.Adam(supernet.arch_parameters())
    )
    second = Architect(
        supernet,
        nn.functional.cross_entropy,
        torch.optim.Adam(supernet.arch_parameters()),
        "second",
        weight_opt,
    )
    assert (
        relative_error(first.arch_gradient(train, val)[0], second.arch_gradient(train, val)[0])
        > 1e-4
    )


def test_architect_step_changes_only_the_architecture():
    supernet, train, val = make(False, SoftmaxRelaxation())
    weights_before = [p.detach().clone() for p in supernet.weight_parameters()]
    arch_before = [p.detach().clone() for p in supernet.arch_parameters()]
    weight_opt = torch.optim.SGD(supernet.weight_parameters(), lr=0.1, momentum=0.9)
    Architect(
        supernet,
        nn.functional.cross_entropy,
        torch.optim.Adam(supernet.arch_parameters(), lr=0.1),
        "second",
        weight_opt,
    ).step(train, val)
    assert all(torch.equal(a, b) for a, b in zip(weights_before, supernet.weight_parameters()))
    assert not all(torch.equal(a, b) for a, b in zip(arch_before, supernet.arch_parameters()))


def test_unknown_order_is_refused():
    supernet, _, _ = make(False, SoftmaxRelaxation())
    with pytest.raises(ValueError, match="order"):
        Architect(
            supernet,
            nn.functional.cross_entropy,
            torch.optim.Adam(supernet.arch_parameters()),
            "third",
        )
