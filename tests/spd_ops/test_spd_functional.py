"""Specification of spd_ops.functional: values, Daleckii–Krein gradients, degenerate spectra."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch

from spd_ops.functional import (
    EigFunction,
    eigh_function,
    eigh_functions,
    expm,
    invsqrtm,
    logm,
    powm,
    reeig,
    sqrtm,
    sqrtm_invsqrtm,
    sym,
)

DTYPE = torch.float64

MATRIX_FUNCTIONS = {
    "logm": (logm, np.log),
    "expm": (expm, np.exp),
    "sqrtm": (sqrtm, np.sqrt),
    "invsqrtm": (invsqrtm, lambda lam: lam**-0.5),
    "powm": (lambda X: powm(X, 0.7), lambda lam: lam**0.7),
    "reeig": (lambda X: reeig(X, 0.3), lambda lam: np.maximum(lam, 0.3)),
}


def random_spd(*batch: int, n: int, seed: int, min_eig: float = 0.5) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    A = torch.randn(*batch, n, n, dtype=DTYPE, generator=generator)
    return A @ A.mT / n + min_eig * torch.eye(n, dtype=DTYPE)


def spd_with_spectrum(eigenvalues: list[float], seed: int) -> torch.Tensor:
    n = len(eigenvalues)
    generator = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(n, n, dtype=DTYPE, generator=generator))
    return Q @ torch.diag(torch.tensor(eigenvalues, dtype=DTYPE)) @ Q.T


def eigh_reference(X: torch.Tensor, f) -> torch.Tensor:
    """The same spectral function through plain eigh autograd."""
    eigvals, eigvecs = torch.linalg.eigh(sym(X))
    return eigvecs @ torch.diag_embed(f(eigvals)) @ eigvecs.mT


TORCH_SCALAR = {
    "logm": torch.log,
    "expm": torch.exp,
    "sqrtm": torch.sqrt,
    "invsqrtm": torch.rsqrt,
    "powm": lambda lam: lam.pow(0.7),
    "reeig": lambda lam: lam.clamp_min(0.3),
}


@pytest.mark.parametrize("name", MATRIX_FUNCTIONS)
def test_forward_matches_numpy_spectral_definition(name):
    fn, scalar = MATRIX_FUNCTIONS[name]
    X = random_spd(3, n=6, seed=1)
    lam, U = np.linalg.eigh(X.numpy())
    expected = U @ (scalar(lam)[..., None] * np.swapaxes(U, -1, -2))
    np.testing.assert_allclose(fn(X).numpy(), expected, atol=1e-12)


@pytest.mark.parametrize(
    "ours, scipy_fn",
    [(logm, scipy.linalg.logm), (expm, scipy.linalg.expm), (sqrtm, scipy.linalg.sqrtm)],
    ids=["logm", "expm", "sqrtm"],
)
def test_forward_agrees_with_scipy(ours, scipy_fn):
    X = random_spd(4, n=7, seed=2)
    result = ours(X).numpy()
    for k in range(X.shape[0]):
        np.testing.assert_allclose(result[k], np.real(scipy_fn(X[k].numpy())), atol=1e-10)


@pytest.mark.parametrize("name", MATRIX_FUNCTIONS)
def test_gradcheck_on_random_spd(name):
    fn, _ = MATRIX_FUNCTIONS[name]
    X = random_spd(2, n=4, seed=3, min_eig=0.8).requires_grad_()
    assert torch.autograd.gradcheck(fn, (X,))


@pytest.mark.parametrize("name", [n for n in MATRIX_FUNCTIONS if n != "reeig"])
def test_gradcheck_at_identity(name):
    fn, _ = MATRIX_FUNCTIONS[name]
    eye = torch.eye(4, dtype=DTYPE).requires_grad_()
    assert torch.autograd.gradcheck(fn, (eye,))


def test_gradcheck_reeig_at_identity_above_threshold():
    # Eigenvalues (all 1) stay away from the kink at eps, where reeig is not differentiable.
    eye = torch.eye(4, dtype=DTYPE).requires_grad_()
    assert torch.autograd.gradcheck(lambda X: reeig(X, 1e-4), (eye,))


@pytest.mark.parametrize("name", MATRIX_FUNCTIONS)
def test_gradcheck_with_repeated_eigenvalues(name):
    fn, _ = MATRIX_FUNCTIONS[name]
    # Two repeated pairs; reeig's eps=0.3 sits between the clusters, far from both.
    X = spd_with_spectrum([0.5, 0.5, 2.0, 2.0, 3.5], seed=4).requires_grad_()
    assert torch.autograd.gradcheck(fn, (X,))


def test_reeig_gradcheck_with_clamped_eigenvalues():
    X = spd_with_spectrum([0.05, 0.1, 1.0, 2.0], seed=5).requires_grad_()
    assert torch.autograd.gradcheck(lambda M: reeig(M, 0.5), (X,))


def test_eigh_autograd_is_nan_at_identity_where_ours_is_exact():
    eye_plain = torch.eye(3, dtype=DTYPE, requires_grad=True)
    eigh_reference(eye_plain, torch.log).diagonal().sum().backward()
    assert torch.isnan(eye_plain.grad).any()

    eye = torch.eye(3, dtype=DTYPE, requires_grad=True)
    logm(eye).diagonal().sum().backward()
    # d tr(log X) / dX = X^{-1} = I at X = I.
    torch.testing.assert_close(eye.grad, torch.eye(3, dtype=DTYPE), atol=1e-14, rtol=0)


def test_sqrt_gradient_at_identity_is_half_identity_map():
    eye = torch.eye(3, dtype=DTYPE, requires_grad=True)
    direction = sym(torch.randn(3, 3, dtype=DTYPE, generator=torch.Generator().manual_seed(6)))
    (sqrtm(eye) * direction).sum().backward()
    # D sqrt(I)[H] = H / 2, so the gradient of <sqrt(X), D> at I is D / 2.
    torch.testing.assert_close(eye.grad, 0.5 * direction, atol=1e-14, rtol=0)


@pytest.mark.parametrize("name", MATRIX_FUNCTIONS)
def test_gradient_agrees_with_eigh_autograd_on_generic_matrices(name):
    fn, _ = MATRIX_FUNCTIONS[name]
    X = random_spd(5, n=8, seed=7)
    cotangent = torch.randn(5, 8, 8, dtype=DTYPE, generator=torch.Generator().manual_seed(8))
    ours_in = X.clone().requires_grad_()
    (fn(ours_in) * cotangent).sum().backward()
    ref_in = X.clone().requires_grad_()
    (eigh_reference(ref_in, TORCH_SCALAR[name]) * cotangent).sum().backward()
    torch.testing.assert_close(ours_in.grad, ref_in.grad, atol=1e-12, rtol=0)


def test_near_degenerate_gradient_matches_exact_divided_differences():
    # Gap 1e-9: naive divided differences lose ~7 digits to cancellation.
    eigenvalues = torch.tensor([1.0, 1.0 + 1e-9, 3.0], dtype=DTYPE)
    Q, _ = torch.linalg.qr(
        torch.randn(3, 3, dtype=DTYPE, generator=torch.Generator().manual_seed(9))
    )
    X = (Q @ torch.diag(eigenvalues) @ Q.T).requires_grad_()
    direction = sym(torch.randn(3, 3, dtype=DTYPE, generator=torch.Generator().manual_seed(10)))
    (logm(X) * direction).sum().backward()
    # Cancellation-free divided differences of log: log1p((a - b) / b) / (a - b).
    a, b = eigenvalues[:, None], eigenvalues[None, :]
    gap = a - b
    safe_gap = torch.where(gap == 0, torch.ones_like(gap), gap)
    loewner = torch.where(gap == 0, 1.0 / a.expand(3, 3), torch.log1p(gap / b) / safe_gap)
    expected = Q @ (loewner * (Q.T @ direction @ Q)) @ Q.T
    torch.testing.assert_close(X.grad, expected, atol=1e-9, rtol=0)


def test_input_is_symmetrised_before_decomposition():
    X = random_spd(n=5, seed=11)
    skew = torch.randn(5, 5, dtype=DTYPE, generator=torch.Generator().manual_seed(12))
    torch.testing.assert_close(logm(X + (skew - skew.T)), logm(X), atol=1e-13, rtol=0)


def test_outputs_are_exactly_symmetric():
    Y = expm(sym(torch.randn(4, 9, 9, dtype=DTYPE, generator=torch.Generator().manual_seed(13))))
    assert torch.equal(Y, Y.mT)


def test_inverse_pairs_roundtrip():
    X = random_spd(3, n=6, seed=14)
    torch.testing.assert_close(expm(logm(X)), X, atol=1e-12, rtol=0)
    root, inv_root = sqrtm_invsqrtm(X)
    torch.testing.assert_close(root @ root, X, atol=1e-12, rtol=0)
    torch.testing.assert_close(root @ inv_root, torch.eye(6, dtype=DTYPE).expand(3, 6, 6))
    torch.testing.assert_close(powm(X, -0.5), invsqrtm(X), atol=1e-12, rtol=0)


def test_shared_decomposition_gradient_sums_both_outputs():
    X = random_spd(2, n=4, seed=15).requires_grad_()
    assert torch.autograd.gradcheck(lambda M: sqrtm_invsqrtm(M), (X,))
    # Only one output used: the other contributes nothing (no materialised zeros needed).
    assert torch.autograd.gradcheck(lambda M: sqrtm_invsqrtm(M)[1], (X,))


def test_custom_spectral_function_is_a_few_lines():
    cube = EigFunction("cube", lambda lam: lam**3, lambda lam: 3 * lam**2)
    X = random_spd(2, n=4, seed=16).requires_grad_()
    torch.testing.assert_close(eigh_function(X, cube), X @ X @ X, atol=1e-12, rtol=0)
    assert torch.autograd.gradcheck(lambda M: eigh_function(M, torch.sin, torch.cos), (X,))
    (only,) = eigh_functions(X, [cube])
    assert only.shape == X.shape


def test_plain_callable_without_derivative_is_rejected():
    with pytest.raises(ValueError, match="df"):
        eigh_function(torch.eye(2, dtype=DTYPE), torch.sin)


def test_double_backward_is_refused_rather_than_wrong():
    X = random_spd(n=3, seed=17).requires_grad_()
    (grad,) = torch.autograd.grad(logm(X).sum(), X, create_graph=True)
    with pytest.raises(RuntimeError):
        grad.sum().backward()
