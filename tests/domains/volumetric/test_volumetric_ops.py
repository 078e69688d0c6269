"""Specification of the volumetric op set: shapes, receptive fields, costs."""

from __future__ import annotations

import math

import pytest
import torch

from manifold_nas.domains.volumetric.ops import VOLUMETRIC_OPS, VOLUMETRIC_OPSET, op_cost
from manifold_nas.space.opset import OPSETS, OpSpec

STRIDES = [1, 2, (2, 2, 1)]
INPUT_SHAPE = (12, 12, 6)


def make_spec(c_in=3, c_out=4, stride=1, axis=2) -> OpSpec:
    return OpSpec(c_in, c_out, stride, {"through_plane_axis": axis})


def test_volumetric_opset_is_registered_with_parameter_free_skip():
    opset = OPSETS.get("volumetric")
    assert opset.op_names == VOLUMETRIC_OPS
    assert opset.zero is None
    assert opset.parameter_free == frozenset({"skip"})


@pytest.mark.parametrize("axis", [0, 1, 2])
@pytest.mark.parametrize("stride", STRIDES, ids=str)
@pytest.mark.parametrize("name", VOLUMETRIC_OPS)
def test_op_output_shape_is_input_over_stride(name, stride, axis):
    torch.manual_seed(0)
    op = VOLUMETRIC_OPSET.build(name, make_spec(stride=stride, axis=axis))
    out = op(torch.randn(2, 3, *INPUT_SHAPE))
    per_axis = (stride,) * 3 if isinstance(stride, int) else stride
    expected = tuple(math.ceil(n / s) for n, s in zip(INPUT_SHAPE, per_axis))
    assert out.shape == (2, 4, *expected)


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_conv2d_has_no_receptive_field_across_the_through_plane_axis(axis):
    torch.manual_seed(0)
    op = VOLUMETRIC_OPSET.build(
        "conv2d", OpSpec(2, 2, 1, {"through_plane_axis": axis, "norm": "batch"})
    )
    op.eval()  # batch norm in eval mode is per-voxel affine: no cross-slice statistics
    x = torch.randn(1, 2, *INPUT_SHAPE)
    perturbed = x.clone()
    perturbed.select(axis + 2, 3).add_(5.0)
    with torch.no_grad():
        changed = (
            (op(x) - op(perturbed)).abs().amax(dim=tuple(d for d in range(5) if d != axis + 2))
        )
    assert changed[3] > 0
    assert torch.all(changed[torch.arange(changed.numel()) != 3] == 0)


@pytest.mark.parametrize("name", ["conv3d", "p3d"])
def test_3d_ops_see_neighbouring_slices(name):
    torch.manual_seed(0)
    op = VOLUMETRIC_OPSET.build(name, OpSpec(2, 2, 1, {"norm": "batch"})).eval()
    x = torch.randn(1, 2, *INPUT_SHAPE)
    perturbed = x.clone()
    perturbed[..., 3] += 5.0
    with torch.no_grad():
        changed = (op(x) - op(perturbed)).abs().amax(dim=(0, 1, 2, 3))
    assert changed[2] > 0 and changed[4] > 0


@pytest.mark.parametrize("stride", STRIDES, ids=str)
@pytest.mark.parametrize("name", VOLUMETRIC_OPS)
def test_parameter_count_matches_op_cost(name, stride):
    spec = make_spec(c_in=4, c_out=6, stride=stride)
    op = VOLUMETRIC_OPSET.build(name, spec)
    assert sum(p.numel() for p in op.parameters()) == op_cost(name, spec).params


def test_kernel_shapes_follow_the_through_plane_axis():
    for axis in range(3):
        kernels = [
            tuple(m.kernel_size)
            for m in VOLUMETRIC_OPSET.build("p3d", make_spec(axis=axis)).modules()
            if isinstance(m, torch.nn.Conv3d)
        ]
        in_plane = tuple(1 if i == axis else 3 for i in range(3))
        through = tuple(3 if i == axis else 1 for i in range(3))
        assert kernels == [in_plane, through]


def test_identity_skip_costs_nothing_and_projection_skip_costs_memory():
    assert op_cost("skip", make_spec(c_in=4, c_out=4)).params == 0
    assert op_cost("skip", make_spec(c_in=4, c_out=4)).memory == 0
    assert op_cost("skip", make_spec(c_in=4, c_out=4, stride=2)).memory == 4 * 8 + 2 * 4


def test_memory_cost_formula_for_a_plain_conv():
    assert op_cost("conv3d", make_spec(c_in=3, c_out=4, stride=(2, 2, 1))).memory == 3 * 4 + 2 * 4
