"""The "spd" op set: every op at both strides and channel settings, and its mixing rules."""

from __future__ import annotations

import pytest
import torch

from manifold_nas.domains.spd.ops import (
    MIX_MAX_ITER,
    MIX_TOL,
    NORMAL_OPS,
    REDUCE_OPS,
    frechet_aggregate,
    frechet_mix,
)
from manifold_nas.space.opset import OPSETS, OpSpec
from spd_ops import airm_distance, frechet_mean

OPSET = OPSETS.get("spd")
SIZES = {1: (6, 6), 2: (6, 3)}
CHANNELS = {"same": (2, 2), "different": (2, 3)}


def random_spd(*shape: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    n = shape[-1]
    a = torch.randn(*shape, dtype=torch.float64, generator=generator)
    return a @ a.mT / n + 0.1 * torch.eye(n, dtype=torch.float64)


def build(name: str, stride: int, c_in: int = 2, c_out: int = 2) -> torch.nn.Module:
    n_in, n_out = SIZES[stride]
    torch.manual_seed(0)
    return OPSET.build(name, OpSpec(c_in, c_out, stride, {"n_in": n_in, "n_out": n_out}))


def test_opset_registers_both_cell_subsets_with_spd_rules():
    assert set(NORMAL_OPS) | set(REDUCE_OPS) == set(OPSET.op_names)
    assert OPSET.zero == "none"
    assert OPSET.dtype == torch.float64
    assert OPSET.mix is frechet_mix and OPSET.aggregate is frechet_aggregate


@pytest.mark.parametrize("channels", sorted(CHANNELS))
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("name", OPSET.op_names)
def test_op_maps_spd_batch_to_spd_batch_of_output_shape(name, stride, channels):
    c_in, c_out = CHANNELS[channels]
    n_in, n_out = SIZES[stride]
    op = build(name, stride, c_in, c_out)
    y = op(random_spd(4, c_in, n_in, n_in))
    assert y.shape == (4, c_out, n_out, n_out)
    assert y.dtype == torch.float64
    assert torch.allclose(y, y.mT, atol=1e-12)
    assert torch.linalg.eigvalsh(y).min() > 0


@pytest.mark.parametrize("name", ["none", "Skip"])
def test_parameter_free_ops_hold_no_parameters_when_shape_is_kept(name):
    assert name in OPSET.parameter_free
    assert sum(p.numel() for p in build(name, 1).parameters()) == 0


def test_none_returns_identities_and_skip_returns_its_input():
    x = random_spd(3, 2, 6, 6)
    assert torch.equal(build("none", 1)(x), torch.eye(6, dtype=torch.float64).expand(3, 2, 6, 6))
    assert torch.equal(build("Skip", 1)(x), x)


def test_skip_reduced_has_registered_trained_bimaps_and_is_deterministic():
    op = build("Skip_reduced", 2)
    names = {name for name, _ in op.named_parameters()}
    assert names == {"upper.weight", "lower.weight"}
    x = random_spd(3, 2, 6, 6)
    assert torch.equal(op(x), op(x))


def test_skip_reduced_output_is_block_diagonal():
    y = build("Skip_reduced", 2)(random_spd(3, 2, 6, 6))
    assert torch.count_nonzero(y[..., :1, 1:]) == 0
    assert torch.count_nonzero(y[..., 1:, :1]) == 0


def test_bimap_1_ends_with_reeig_and_bimap_2_starts_with_it():
    x = random_spd(8, 2, 6, 6)
    post = build("BiMap_1", 2)
    assert torch.linalg.eigvalsh(post(x)).min() >= post[-1].eps * (1 - 1e-9)
    pre = build("BiMap_2", 2)
    assert type(pre[0]).__name__ == "ReEig"
    assert [type(m).__name__ for m in build("BiMap_0", 2)] == ["BiMap", "SPDBatchNorm"]


def test_weighted_pooling_with_one_hot_weights_selects_a_channel():
    op = build("WeightedPooling", 1, c_in=2, c_out=2)
    with torch.no_grad():
        op.logits.copy_(torch.tensor([[0.0, 5.0], [5.0, 0.0]]))
    op.bn = torch.nn.Identity()
    x = random_spd(3, 2, 6, 6)
    assert torch.allclose(op(x), x.flip(1), atol=1e-10)


@pytest.mark.parametrize("k", [2, 3])
def test_mix_with_one_hot_weight_returns_that_ops_output(k):
    outputs = [random_spd(3, 2, 5, 5, seed=s) for s in range(k)]
    weights = torch.zeros(k, dtype=torch.float64)
    weights[1] = 1.0
    assert torch.allclose(frechet_mix(outputs, weights), outputs[1], atol=1e-8)


@pytest.mark.parametrize("k", [2, 3])
def test_mix_normalises_weights_and_matches_the_karcher_mean(k):
    outputs = [random_spd(3, 2, 5, 5, seed=s) for s in range(k)]
    weights = torch.arange(1, k + 1, dtype=torch.float64)
    mixed = frechet_mix(outputs, 2 * weights)
    assert torch.allclose(mixed, frechet_mix(outputs, weights), atol=1e-12)
    # Two outputs have a closed form; more get the op set's bounded Karcher flow.
    normalised = weights / weights.sum()
    if k == 2:
        reference = frechet_mean(torch.stack(outputs), normalised)
    else:
        reference = frechet_mean(
            torch.stack(outputs), normalised, max_iter=MIX_MAX_ITER, tol=MIX_TOL
        )
    assert airm_distance(mixed, reference).max() < 1e-8


def test_mix_passes_gradients_to_the_weights():
    outputs = [random_spd(2, 1, 4, 4, seed=s) for s in range(2)]
    weights = torch.tensor([0.3, 0.7], dtype=torch.float64, requires_grad=True)
    frechet_mix(outputs, weights).sum().backward()
    assert torch.isfinite(weights.grad).all() and weights.grad.abs().sum() > 0


@pytest.mark.parametrize("k", [1, 2, 3])
def test_aggregate_of_identical_inputs_returns_the_input(k):
    x = random_spd(3, 2, 5, 5)
    assert torch.allclose(frechet_aggregate([x] * k), x, atol=1e-10)


def test_aggregate_is_the_geodesic_midpoint_for_two_inputs():
    a, b = random_spd(3, 2, 5, 5, seed=1), random_spd(3, 2, 5, 5, seed=2)
    mid = frechet_aggregate([a, b])
    assert torch.allclose(airm_distance(a, mid), airm_distance(mid, b), atol=1e-10)


def test_strided_op_without_n_out_is_refused():
    with pytest.raises(ValueError, match="n_out"):
        OPSET.build("BiMap_0", OpSpec(2, 2, 2, {"n_in": 6}))
