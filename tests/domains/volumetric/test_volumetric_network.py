"""Specification of the searchable volumetric encoder-decoder."""

from __future__ import annotations

import pytest
import torch

from manifold_nas.domains.volumetric.network import ARCH_KEY, VNAS_OPS, VolumetricNet
from manifold_nas.domains.volumetric.ops import op_cost
from manifold_nas.errors import UserInputError


def uniform_weights(net: VolumetricNet, requires_grad: bool = False) -> dict[str, torch.Tensor]:
    w = torch.full(net.arch_specs[ARCH_KEY].shape, 1.0 / len(net.op_names))
    return {ARCH_KEY: w.requires_grad_(requires_grad)}


@pytest.mark.parametrize(
    "channels, strides, patch",
    [
        ((4, 8, 8), [2, 2], (16, 16, 8)),
        ((4, 4, 8, 8), [2, 2, 2], (16, 16, 16)),
        ((4, 8, 8), [(2, 2, 1), (2, 2, 2)], (16, 16, 4)),
    ],
    ids=["levels3", "levels4", "anisotropic"],
)
def test_output_shape_is_batch_classes_patch(channels, strides, patch):
    torch.manual_seed(0)
    net = VolumetricNet(1, 3, channels, strides, patch_size=patch)
    out = net(torch.randn(2, 1, *patch), uniform_weights(net))
    assert out.shape == (2, 3, *patch)


@pytest.mark.parametrize("upsample, skip", [("trilinear", "add"), ("deconv", "concat")])
def test_upsample_and_skip_variants_keep_the_shape(upsample, skip):
    net = VolumetricNet(1, 2, (4, 8), [(2, 2, 1)], upsample=upsample, skip=skip)
    assert net(torch.randn(1, 1, 8, 8, 4), uniform_weights(net)).shape == (1, 2, 8, 8, 4)


def test_arch_specs_has_one_row_per_cell():
    net = VolumetricNet(1, 2, (4, 8, 8), cells_per_level=2)
    spec = net.arch_specs[ARCH_KEY]
    assert spec.ops == VNAS_OPS
    assert spec.shape == (net.n_cells, 3) == (2 * 3 + 2 * 2, 3)
    assert spec.n_inputs == 1 and spec.keep == 1


def test_derived_net_holds_exactly_the_chosen_ops():
    search = VolumetricNet(1, 2, (4, 8, 8))
    choices = ["conv2d", "conv3d", "p3d", "conv3d", "conv2d"]
    derived = search.derive(choices)
    for cell, choice in zip(derived.cells, choices):
        assert list(cell.ops) == [choice]
    fixed = sum(p.numel() for n, p in derived.named_parameters() if not n.startswith("cells."))
    chosen = sum(op_cost(c, derived.cell_spec(i)).params for i, c in enumerate(choices))
    assert sum(p.numel() for p in derived.parameters()) == fixed + chosen
    assert derived(torch.randn(1, 1, 8, 8, 8)).shape == (1, 2, 8, 8, 8)
    assert derived.derived_cost(kind="params") == chosen == search.derived_cost(choices, "params")


def test_all_3d_baseline_outgrows_all_2d_baseline():
    search = VolumetricNet(1, 2, (4, 8, 8))
    sizes = {
        op: sum(p.numel() for p in search.derive([op] * search.n_cells).parameters())
        for op in VNAS_OPS
    }
    assert sizes["conv2d"] < sizes["p3d"] < sizes["conv3d"]


def test_zero_weight_ops_are_not_evaluated():
    net = VolumetricNet(1, 2, (4, 8, 8))
    calls = {name: 0 for name in VNAS_OPS}
    for cell in net.cells:
        for name, op in cell.ops.items():
            op.register_forward_hook(lambda *_, name=name: calls.__setitem__(name, calls[name] + 1))
    weights = torch.zeros(net.n_cells, 3)
    weights[:, 1] = 1.0
    net(torch.randn(1, 1, 8, 8, 8), {ARCH_KEY: weights})
    assert calls == {"conv2d": 0, "conv3d": net.n_cells, "p3d": 0}


def test_gradients_reach_the_arch_weights():
    torch.manual_seed(0)
    net = VolumetricNet(1, 2, (4, 8, 8))
    alpha = torch.zeros(net.n_cells, 3, requires_grad=True)
    out = net(torch.randn(1, 1, 8, 8, 8), {ARCH_KEY: torch.softmax(alpha, dim=-1)})
    out.square().mean().backward()
    assert alpha.grad is not None and alpha.grad.abs().sum() > 0


def test_expected_cost_is_differentiable_and_matches_derived_cost_at_one_hot():
    net = VolumetricNet(1, 2, (4, 8, 8), patch_size=(8, 8, 8))
    one_hot = torch.zeros(net.n_cells, 3)
    one_hot[:, 2] = 1.0
    assert net.expected_cost({ARCH_KEY: one_hot}).item() == pytest.approx(
        net.derived_cost(["p3d"] * net.n_cells)
    )
    alpha = torch.zeros(net.n_cells, 3, requires_grad=True)
    weights = {ARCH_KEY: torch.softmax(alpha, -1)}
    budget = 0.5 * net.expected_cost(weights, "params").item()
    penalty = net.cost_penalty(weights, budget=budget, weight=2.0, kind="params")
    assert penalty.item() == pytest.approx(2.0)
    penalty.backward()
    assert alpha.grad.abs().sum() > 0
    generous = net.cost_penalty(weights, budget=10 * budget, kind="params")
    assert generous.item() == 0.0


def test_patch_size_not_divisible_by_total_stride_is_a_user_error():
    with pytest.raises(UserInputError, match="not divisible by the network's total stride"):
        VolumetricNet(1, 2, (4, 8, 8), [(2, 2, 1), 2], patch_size=(16, 16, 3))


def test_registered_builder_sizes_from_the_bundle_and_rebuilds_genotypes():
    from types import SimpleNamespace

    from manifold_nas.domains.volumetric.network import genotype_from_choices
    from manifold_nas.space.networks import NETWORKS
    from manifold_nas.space.opset import OPSETS

    bundle = SimpleNamespace(
        sample_shape=(1, 16, 16, 8), num_classes=3, info={"through_plane_axis": 0}
    )
    build = NETWORKS.get("vnas")
    search = build(OPSETS.get("volumetric"), bundle, channels=(4, 8, 8))
    assert search.patch_size == (16, 16, 8) and search.op_options["through_plane_axis"] == 0
    choices = ["p3d", "conv3d", "conv2d", "conv2d", "p3d"]
    derived = build(
        OPSETS.get("volumetric"), bundle, genotype_from_choices(choices), channels=(4, 8, 8)
    )
    assert [next(iter(cell.ops)) for cell in derived.cells] == choices
    baseline = build(OPSETS.get("volumetric"), bundle, channels=(4, 8, 8), fixed_op="conv2d")
    assert all(list(cell.ops) == ["conv2d"] for cell in baseline.cells)
