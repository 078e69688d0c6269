"""Tangent-space features and the tangent-space head: the network contains TS + LR."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from manifold_nas.config import parse_config
from manifold_nas.data import DataBundle
from manifold_nas.domains.spd.baselines import TANGENT_SPACE_LR, logistic_regression_cv
from manifold_nas.domains.spd.networks import TangentSpaceHead
from manifold_nas.space.networks import NETWORKS
from manifold_nas.space.opset import OPSETS
from spd_ops import TangentSpace, airm_distance, airm_geodesic, frechet_mean, upper_triangle

OPSET = OPSETS.get("spd")


def random_spd(*shape: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    n = shape[-1]
    a = torch.randn(*shape[:-1], 2 * n, dtype=torch.float64, generator=generator)
    return a @ a.mT / (2 * n) + 0.1 * torch.eye(n, dtype=torch.float64)


def two_class_bundle(n: int = 5, per_class: int = 12) -> DataBundle:
    """Class 1 has its first coordinate scaled up: separable on the tangent space."""
    x = random_spd(2 * per_class, 1, n, n, seed=3)
    scale = torch.ones(n, dtype=torch.float64)
    scale[0] = 3.0
    x[per_class:] = scale[:, None] * x[per_class:] * scale[None, :]
    y = torch.arange(2 * per_class) // per_class
    data = TensorDataset(x, y)
    return DataBundle("toy", data, data, 2, (1, n, n))


def test_upper_triangle_keeps_the_frobenius_norm():
    x = random_spd(4, 6, 6)
    assert torch.allclose(upper_triangle(x).norm(dim=-1), torch.linalg.matrix_norm(x))


def test_fitted_tangent_space_matches_pyriemann_tangent_space():
    from pyriemann.tangentspace import TangentSpace as PyRiemannTangentSpace

    x = random_spd(20, 1, 5, 5)
    ours = TangentSpace(1, 5).fit(x).eval()(x)
    theirs = PyRiemannTangentSpace(metric="riemann").fit_transform(x[:, 0].numpy())
    assert np.allclose(ours.numpy(), theirs, atol=1e-7)


def test_tangent_vector_norm_is_the_airm_distance_to_the_reference():
    x = random_spd(10, 2, 4, 4)
    layer = TangentSpace(2, 4).fit(x)
    vectors = layer(x).reshape(10, 2, -1)
    assert torch.allclose(vectors.norm(dim=-1), airm_distance(layer.running_mean, x))


def test_first_training_batch_sets_the_reference_to_its_karcher_mean():
    x = random_spd(8, 1, 4, 4)
    layer = TangentSpace(1, 4, max_iter=30)
    layer(x)
    assert torch.allclose(layer.running_mean, frechet_mean(x, tol=1e-12), atol=1e-10)


def test_later_training_batches_move_the_reference_along_the_geodesic():
    first, second = random_spd(8, 1, 4, 4, seed=1), random_spd(8, 1, 4, 4, seed=2)
    layer = TangentSpace(1, 4, momentum=0.25, max_iter=30)
    layer(first)
    before = layer.running_mean.clone()
    layer(second)
    expected = airm_geodesic(before, frechet_mean(second, tol=1e-12), 0.25)
    assert torch.allclose(layer.running_mean, expected, atol=1e-10)


def test_a_fitted_reference_is_not_moved_by_training_batches():
    layer = TangentSpace(1, 4).fit(random_spd(8, 1, 4, 4, seed=1))
    fitted = layer.running_mean.clone()
    layer.train()(random_spd(8, 1, 4, 4, seed=2))
    assert torch.equal(layer.running_mean, fitted)


def test_a_samples_tangent_vector_does_not_depend_on_its_batch():
    x = random_spd(8, 1, 4, 4)
    layer = TangentSpace(1, 4).fit(x).train()
    assert torch.allclose(layer(x)[:1], layer(x[:1]))


def test_tangent_space_rejects_a_wrong_shape():
    with pytest.raises(ValueError, match="expected input"):
        TangentSpace(1, 4)(random_spd(3, 2, 4, 4))


def build(bundle: DataBundle, name: str = "spdnetbn", **head):
    torch.manual_seed(0)
    return NETWORKS.get(name)(OPSET, bundle, None, tangent_head=True, head=head or None)


def test_head_logits_are_a_linear_function_of_standardised_tangent_vectors():
    bundle = two_class_bundle()
    network = build(bundle).eval()
    head: TangentSpaceHead = network.head
    torch.nn.init.normal_(head.tangent_linear.weight)
    torch.nn.init.normal_(head.tangent_linear.bias)
    x = bundle.train.tensors[0]
    tangent = (head.tangent(x) - head.tangent_mean) / head.tangent_scale
    expected = tangent @ head.tangent_linear.weight.T + head.tangent_linear.bias
    assert torch.allclose(network(x), expected.detach())


def test_fit_standardises_the_training_tangent_vectors():
    bundle = two_class_bundle()
    head: TangentSpaceHead = build(bundle).head
    tangent = (head.tangent(bundle.train.tensors[0]) - head.tangent_mean) / head.tangent_scale
    assert torch.allclose(tangent.mean(0), torch.zeros_like(tangent[0]), atol=1e-10)
    assert torch.allclose(tangent.std(0, unbiased=False), torch.ones_like(tangent[0]))


def test_zero_init_head_starts_at_uniform_class_probabilities():
    bundle = two_class_bundle()
    logits = build(bundle).eval()(bundle.train.tensors[0])
    assert torch.equal(logits, torch.zeros_like(logits))


def test_logistic_init_starts_the_network_as_cross_validated_logistic_regression():
    bundle = two_class_bundle()
    network = build(bundle, init="logistic").eval()
    head: TangentSpaceHead = network.head
    x, y = bundle.train.tensors
    tangent = ((head.tangent(x) - head.tangent_mean) / head.tangent_scale).numpy()
    fitted = logistic_regression_cv(tangent, y.numpy(), 2)
    probabilities = torch.softmax(network(x), dim=1).detach().numpy()
    from sklearn.linear_model import LogisticRegression

    reference = LogisticRegression(C=fitted["C"], max_iter=10_000).fit(tangent, y.numpy())
    assert np.allclose(probabilities, reference.predict_proba(tangent), atol=1e-8)


def test_freeze_tangent_leaves_only_the_tangent_weights_out_of_training():
    head: TangentSpaceHead = build(two_class_bundle(), freeze_tangent=True).head
    assert not head.tangent_linear.weight.requires_grad
    assert head.tangent_linear.bias.requires_grad and head.cell_linear.weight.requires_grad


def test_gradients_reach_the_cells_once_the_cell_weights_leave_zero():
    bundle = two_class_bundle()
    network = build(bundle, name="spdnetnas")
    torch.nn.init.normal_(network.head.cell_linear.weight)
    x, y = bundle.train.tensors
    weights = {k: torch.full(s.shape, 1.0 / len(s.ops)) for k, s in network.arch_specs.items()}
    torch.nn.functional.cross_entropy(network(x, weights), y).backward()
    assert network.stem[0].weight.grad is not None
    assert float(network.stem[0].weight.grad.abs().sum()) > 0


def test_head_options_without_tangent_head_are_refused():
    with pytest.raises(ValueError, match="tangent_head"):
        NETWORKS.get("spdnetbn")(OPSET, two_class_bundle(), None, head={"dropout": 0.1})


def test_unknown_head_options_are_refused():
    with pytest.raises(ValueError, match="unknown head option"):
        build(two_class_bundle(), centre="batch")


def test_binary_logistic_regression_becomes_two_softmax_rows():
    rng = np.random.default_rng(0)
    features = rng.normal(size=(30, 3))
    labels = (features[:, 0] + 0.3 * rng.normal(size=30) > 0).astype(int)
    fitted = logistic_regression_cv(features, labels, 2)
    from sklearn.linear_model import LogisticRegression

    reference = LogisticRegression(C=fitted["C"], max_iter=10_000).fit(features, labels)
    logits = features @ fitted["weight"].T + fitted["bias"]
    probabilities = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    assert np.allclose(probabilities, reference.predict_proba(features), atol=1e-10)


def test_absent_classes_get_zero_rows():
    rng = np.random.default_rng(0)
    features = rng.normal(size=(20, 3))
    labels = np.repeat([0, 2], 10)
    fitted = logistic_regression_cv(features, labels, 3)
    assert np.all(fitted["weight"][1] == 0) and fitted["bias"][1] == 0


def test_spd_bundles_declare_tangent_space_lr_as_their_baseline():
    config = parse_config({"data": {"name": "basic_motions"}, "network": {"name": "spdnet"}})
    from manifold_nas.cli import _demo_baseline

    baseline = _demo_baseline(config)
    assert baseline["name"] == TANGENT_SPACE_LR
    assert 0.9 <= baseline["accuracy"] <= 1.0
