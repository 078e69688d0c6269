"""Specification of the vision op sets ``darts`` and ``nb201``."""

from __future__ import annotations

import math

import pytest
import torch

from manifold_nas.domains.vision.ops import FactorizedReduce, Pooling, Zero
from manifold_nas.space.opset import OPSETS, OpSpec

DARTS_OPS = (
    "none",
    "max_pool_3x3",
    "avg_pool_3x3",
    "skip_connect",
    "sep_conv_3x3",
    "sep_conv_5x5",
    "dil_conv_3x3",
    "dil_conv_5x5",
)
NB201_OPS = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")

ALL_OPS = [("darts", op) for op in DARTS_OPS] + [("nb201", op) for op in NB201_OPS]


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def _build(opset: str, op: str, c_in: int, c_out: int, stride: int, **options):
    return OPSETS.get(opset).build(op, OpSpec(c_in, c_out, stride, options))


def test_darts_opset_is_registered_with_the_darts_ops_in_order() -> None:
    opset = OPSETS.get("darts")
    assert opset.op_names == DARTS_OPS
    assert opset.zero == "none"
    assert opset.parameter_free == {"none", "max_pool_3x3", "avg_pool_3x3", "skip_connect"}
    assert opset.supports_partial_channels


def test_nb201_opset_is_registered_with_the_nb201_ops_in_order() -> None:
    opset = OPSETS.get("nb201")
    assert opset.op_names == NB201_OPS
    assert opset.zero == "none"
    assert opset.parameter_free == {"none", "skip_connect", "avg_pool_3x3"}


@pytest.mark.parametrize("size", [7, 8])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize(("opset", "op"), ALL_OPS)
def test_op_output_has_c_out_channels_and_ceil_strided_size(opset, op, stride, size) -> None:
    module = _build(opset, op, c_in=4, c_out=6, stride=stride)
    out = module(torch.randn(2, 4, size, size + 1))
    expected = (2, 6, math.ceil(size / stride), math.ceil((size + 1) / stride))
    assert tuple(out.shape) == expected


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize(("opset", "op"), ALL_OPS)
def test_op_keeps_shape_with_equal_channels(opset, op, stride) -> None:
    module = _build(opset, op, c_in=5, c_out=5, stride=stride, affine=False)
    out = module(torch.randn(2, 5, 7, 7))
    assert tuple(out.shape) == (2, 5, 4 if stride == 2 else 7, 4 if stride == 2 else 7)


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("opset", ["darts", "nb201"])
def test_zero_op_outputs_zeros(opset, stride) -> None:
    module = _build(opset, "none", c_in=3, c_out=5, stride=stride)
    out = module(torch.randn(2, 3, 7, 8))
    assert torch.equal(out, torch.zeros_like(out))


@pytest.mark.parametrize(
    ("opset", "op"),
    [(name, op) for name in ("darts", "nb201") for op in sorted(OPSETS.get(name).parameter_free)],
)
def test_parameter_free_op_has_no_trainable_parameters_when_channels_match(opset, op) -> None:
    module = _build(opset, op, c_in=4, c_out=4, stride=1)
    assert sum(p.numel() for p in module.parameters() if p.requires_grad) == 0


@pytest.mark.parametrize("opset", ["darts", "nb201"])
def test_pooling_ops_have_no_parameters_at_stride_two_either(opset) -> None:
    module = _build(opset, "avg_pool_3x3", c_in=4, c_out=4, stride=2)
    assert sum(p.numel() for p in module.parameters()) == 0


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize(("opset", "op"), ALL_OPS)
def test_op_is_differentiable_with_finite_gradients(opset, op, stride) -> None:
    module = _build(opset, op, c_in=3, c_out=4, stride=stride).double()
    x = torch.randn(2, 3, 7, 7, dtype=torch.float64, requires_grad=True)
    module(x).square().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    for param in module.parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all()


def test_skip_connect_is_identity_at_stride_one_with_equal_channels() -> None:
    x = torch.randn(2, 4, 7, 7)
    for opset in ("darts", "nb201"):
        assert _build(opset, "skip_connect", 4, 4, 1)(x) is x


def test_skip_connect_at_stride_two_is_factorized_reduce() -> None:
    assert isinstance(_build("darts", "skip_connect", 4, 4, 2), FactorizedReduce)


def test_factorized_reduce_halves_see_even_and_odd_pixels() -> None:
    module = FactorizedReduce(1, 2, affine=False).eval()
    for conv in (module.conv_even, module.conv_odd):
        torch.nn.init.ones_(conv.weight)
    x = torch.arange(1.0, 50.0).view(1, 1, 7, 7)
    out = module(x) * torch.sqrt(torch.tensor(1.0 + module.bn.eps))
    assert torch.allclose(out[0, 0], x[0, 0, ::2, ::2])
    odd = torch.nn.functional.pad(x, (0, 1, 0, 1))[0, 0, 1::2, 1::2]
    assert torch.allclose(out[0, 1], odd)


def test_factorized_reduce_accepts_odd_c_out() -> None:
    out = FactorizedReduce(4, 5)(torch.randn(2, 4, 8, 8))
    assert tuple(out.shape) == (2, 5, 4, 4)


def test_nb201_avg_pool_excludes_padding_from_the_average() -> None:
    module = _build("nb201", "avg_pool_3x3", 1, 1, 1)
    out = module(torch.ones(1, 1, 5, 5))
    assert torch.allclose(out, torch.ones_like(out))


def test_darts_pooling_ends_with_a_non_affine_batch_norm() -> None:
    module = _build("darts", "max_pool_3x3", 4, 4, 1, affine=True)
    assert isinstance(module, Pooling)
    assert isinstance(module.norm, torch.nn.BatchNorm2d) and not module.norm.affine


def test_affine_option_removes_batch_norm_parameters() -> None:
    module = _build("darts", "sep_conv_3x3", 4, 4, 1, affine=False)
    bns = [m for m in module.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and all(not bn.affine for bn in bns)


def test_track_running_stats_option_reaches_every_batch_norm() -> None:
    module = _build("nb201", "nor_conv_3x3", 4, 4, 1, track_running_stats=False)
    bns = [m for m in module.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and all(bn.running_mean is None for bn in bns)


def test_zero_op_stays_in_the_autograd_graph() -> None:
    x = torch.randn(1, 2, 5, 5, requires_grad=True)
    Zero(2, 3, 2)(x).sum().backward()
    assert torch.equal(x.grad, torch.zeros_like(x))


def test_unsupported_stride_is_rejected() -> None:
    with pytest.raises(ValueError, match="stride"):
        _build("darts", "sep_conv_3x3", 4, 4, 3)
