"""Specification of the volumetric comparators: the MONAI UNet network and the DiNTS smoke run."""

from __future__ import annotations

import math
import time
from types import SimpleNamespace

import pytest
import torch

import manifold_nas.domains.volumetric  # noqa: F401  (registers the networks)
from manifold_nas.domains.volumetric.baselines import MonaiUNetBaseline, dints_smoke
from manifold_nas.domains.volumetric.ops import VOLUMETRIC_OPSET
from manifold_nas.errors import UserInputError
from manifold_nas.space.genotype import Genotype
from manifold_nas.space.networks import NETWORKS


def bundle(patch=(16, 16, 8), num_classes=3):
    return SimpleNamespace(sample_shape=(1, *patch), num_classes=num_classes, info={})


@pytest.mark.parametrize(
    "strides, patch",
    [([2, 2], (16, 16, 16)), ([(2, 2, 1), (2, 2, 2)], (16, 16, 8))],
    ids=["isotropic", "anisotropic"],
)
def test_monai_unet_output_is_batch_classes_patch(strides, patch):
    torch.manual_seed(0)
    net = MonaiUNetBaseline(1, 3, (4, 8, 8), strides)
    assert net(torch.randn(2, 1, *patch)).shape == (2, 3, *patch)


def test_monai_unet_has_no_architecture_parameters():
    net = NETWORKS.get("monai_unet")(VOLUMETRIC_OPSET, bundle(), channels=(4, 8))
    assert net.arch_specs == {}


def test_monai_unet_ignores_arch_weights():
    torch.manual_seed(0)
    net = NETWORKS.get("monai_unet")(VOLUMETRIC_OPSET, bundle(), channels=(4, 8)).eval()
    x = torch.randn(1, 1, 16, 16, 8)
    assert torch.equal(net(x), net(x, arch_weights={}))


def test_monai_unet_accepts_the_empty_genotype_of_a_fixed_network():
    net = NETWORKS.get("monai_unet")(
        VOLUMETRIC_OPSET, bundle(), Genotype(VOLUMETRIC_OPSET.name, {}), channels=(4, 8)
    )
    assert isinstance(net, MonaiUNetBaseline)


def test_monai_unet_rejects_a_patch_not_divisible_by_its_strides():
    with pytest.raises(UserInputError, match="divisible"):
        NETWORKS.get("monai_unet")(
            VOLUMETRIC_OPSET, bundle(patch=(16, 16, 6)), channels=(4, 8, 8), strides=[2, 2]
        )


def test_dints_smoke_rejects_a_patch_not_divisible_by_two_to_depths_plus_one():
    with pytest.raises(UserInputError, match="divisible by 8"):
        dints_smoke((16, 16, 12), num_depths=2)


def test_dints_smoke_reports_finite_cost_numbers():
    started = time.perf_counter()
    result = dints_smoke((16, 16, 16), 1, 2, channel_mul=0.25, num_blocks=2, num_depths=2)
    if time.perf_counter() - started > 20:
        pytest.skip("DiNTS smoke took over 20 s on this machine; numbers not checked")
    assert result["search_parameters"] > result["derived_parameters"] > 0
    assert result["arch_parameters"] > 0
    for key in ("search_seconds_per_step", "derived_seconds_per_step", "loss"):
        assert math.isfinite(result[key]) and result[key] >= 0


@pytest.mark.parametrize("op", ["conv2d", "conv3d", "p3d"])
def test_vnas_fixed_op_builds_the_all_op_backbone_from_the_empty_genotype(op):
    net = NETWORKS.get("vnas")(
        VOLUMETRIC_OPSET,
        bundle(),
        Genotype(VOLUMETRIC_OPSET.name, {}),
        channels=(4, 8),
        fixed_op=op,
    )
    assert net.choices == (op,) * net.n_cells
    assert net(torch.randn(1, 1, 16, 16, 8)).shape == (1, 3, 16, 16, 8)


def test_vnas_fixed_backbone_has_no_architecture_parameters():
    net = NETWORKS.get("vnas")(VOLUMETRIC_OPSET, bundle(), channels=(4, 8), fixed_op="conv3d")
    assert net.arch_specs == {}
