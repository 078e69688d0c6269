"""Collapse diagnostics: Hessian eigenvalue by power iteration, parameter-free count."""

import torch

from manifold_nas.space.cell import cell_arch_spec
from manifold_nas.space.diagnostics import dominant_hessian_eigenvalue, parameter_free_count


def test_power_iteration_finds_the_dominant_eigenvalue_of_a_quadratic():
    torch.manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(6, 6, dtype=torch.float64))
    eigenvalues = torch.tensor([5.0, 2.0, 1.0, 0.5, -0.3, 0.1], dtype=torch.float64)
    hessian = q @ torch.diag(eigenvalues) @ q.T
    x = torch.randn(6, dtype=torch.float64, requires_grad=True)
    value = dominant_hessian_eigenvalue(
        lambda: 0.5 * x @ hessian @ x, [x], iterations=200, tol=1e-12
    )
    assert abs(value - 5.0) < 1e-6


def test_parameter_free_count_reads_the_argmax_cell():
    spec = cell_arch_spec(("none", "skip", "conv"), n_inputs=2, n_nodes=2, keep=2)
    probs = torch.tensor([[0.1, 0.8, 0.1]] * 5)
    probs[0] = torch.tensor([0.1, 0.1, 0.8])
    count = parameter_free_count(
        {"normal": probs}, {"normal": spec}, "none", frozenset({"none", "skip"})
    )
    assert count == 3
