"""Volumetric candidate ops: in-plane 2D, full 3D and pseudo-3D convolutions.

Every op maps ``(B, c_in, *spatial)`` to ``(B, c_out, *spatial / stride)`` and
is a convolution (or a factorised pair) followed by a norm and an activation.
Kernel shapes are computed from the *through-plane axis* ``a`` (the data's
thick-slice axis, ``spec.get("through_plane_axis", 2)``, i.e. the last spatial
axis of a MONAI ``(N, C, H, W, D)`` tensor by default), never hard-coded:

=========  ==========================================================
``conv2d``  ``k`` on the two in-plane axes, 1 on axis ``a``: (3,3,1)
``conv3d``  ``k`` on every axis: (3,3,3)
``p3d``     in-plane conv (c_in→c_in), then a conv of ``k`` along axis ``a``
            only (c_in→c_out): (3,3,1)→(1,1,3)
``p3d_1``   the same pair factorised along axis ``a - 1``: (3,1,3)→(1,3,1)
``p3d_2``   factorised along axis ``a - 2``: (1,3,3)→(3,1,1)
``skip``    identity; a strided 1×1×1 conv + norm when channels or size change
=========  ==========================================================

so that with ``a = 2`` the three P3D orientations are exactly DiNTS's modes
0, 1 and 2. A stride (an int or a per-axis tuple such as ``(2, 2, 1)``) is
applied by the op: a P3D pair strides each axis in the conv that spans it.
Padding is ``k // 2`` per axis, so an axis of size ``n`` becomes
``ceil(n / s)``. Convolutions carry no bias (a norm follows).

Cost model (:func:`op_cost`, DiNTS-style analytic counts):

* ``params`` = Σ_convs c_in·c_out·Π(kernel) + the norm's affine parameters.
* ``memory`` = activation values held for the backward pass, per *output*
  voxel: every conv stores its input (``c·Π(s)`` values per output voxel
  where ``s`` is the stride still to come) and the conv and norm outputs
  (``2·c_out``); the op's final activation is its output and is charged
  to the consumer. Hence conv2d/conv3d cost ``c_in·Π(s) + 2·c_out``, a P3D
  pair ``c_in·Π(s) + c_in·s_a + 2·c_out`` and the identity 0.
  Multiply by the number of output voxels for a layer's footprint.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from monai.networks.layers.factories import Conv
from monai.networks.layers.utils import get_act_layer, get_norm_layer
from torch import nn

from manifold_nas.space.opset import OpExample, OpSet, OpSpec, register_opset

__all__ = [
    "DEFAULT_ACT",
    "DEFAULT_NORM",
    "VOLUMETRIC_OPS",
    "VOLUMETRIC_OPSET",
    "ConvNormAct",
    "OpCost",
    "conv_layout",
    "op_cost",
    "per_axis_stride",
]

SPATIAL_DIMS = 3
DEFAULT_NORM: tuple[str, dict[str, Any]] = ("INSTANCE", {"affine": True})
DEFAULT_ACT: str | tuple = "RELU"

#: op name -> how many axes before the through-plane axis the P3D pair factorises
_P3D_OFFSETS = {"p3d": 0, "p3d_1": 1, "p3d_2": 2}


@dataclass(frozen=True)
class OpCost:
    """Analytic cost of one op: parameter count and activation values per output voxel."""

    params: int
    memory: float


def per_axis_stride(stride: int | Sequence[int]) -> tuple[int, int, int]:
    """Expand an int stride to three axes; validate a per-axis tuple."""
    if isinstance(stride, int):
        return (stride,) * SPATIAL_DIMS
    stride = tuple(int(s) for s in stride)
    if len(stride) != SPATIAL_DIMS or any(s < 1 for s in stride):
        raise ValueError(f"stride must be an int or {SPATIAL_DIMS} positive ints, got {stride}")
    return stride


def _through_plane_axis(spec: OpSpec) -> int:
    axis = int(spec.get("through_plane_axis", 2))
    if not 0 <= axis < SPATIAL_DIMS:
        raise ValueError(f"through_plane_axis must be 0, 1 or 2, got {axis}")
    return axis


def _only_axis(axis: int, inside: int, outside: int) -> tuple[int, int, int]:
    return tuple(inside if i == axis else outside for i in range(SPATIAL_DIMS))


def conv_layout(
    name: str, spec: OpSpec
) -> list[tuple[int, int, tuple[int, int, int], tuple[int, int, int]]]:
    """The convolutions of op ``name``: ``(c_in, c_out, kernel, stride)`` per conv.

    This is the single source of the op geometry; both the modules and
    :func:`op_cost` are derived from it. ``skip`` without a projection has none.
    """
    k = int(spec.get("kernel_size", 3))
    stride = per_axis_stride(spec.stride)
    axis = _through_plane_axis(spec)
    if name == "conv2d":
        return [(spec.c_in, spec.c_out, _only_axis(axis, 1, k), stride)]
    if name == "conv3d":
        return [(spec.c_in, spec.c_out, (k,) * SPATIAL_DIMS, stride)]
    if name in _P3D_OFFSETS:
        factored = (axis - _P3D_OFFSETS[name]) % SPATIAL_DIMS
        first_stride = tuple(1 if i == factored else s for i, s in enumerate(stride))
        second_stride = _only_axis(factored, stride[factored], 1)
        return [
            (spec.c_in, spec.c_in, _only_axis(factored, 1, k), first_stride),
            (spec.c_in, spec.c_out, _only_axis(factored, k, 1), second_stride),
        ]
    if name == "skip":
        if spec.c_in == spec.c_out and stride == (1,) * SPATIAL_DIMS:
            return []
        return [(spec.c_in, spec.c_out, (1,) * SPATIAL_DIMS, stride)]
    raise KeyError(f"unknown volumetric op {name!r}")


def _make_conv(c_in: int, c_out: int, kernel: Sequence[int], stride: Sequence[int]) -> nn.Module:
    return Conv[Conv.CONV, SPATIAL_DIMS](
        c_in, c_out, kernel_size=tuple(kernel), stride=tuple(stride),
        padding=tuple(k // 2 for k in kernel), bias=False,
    )  # fmt: skip


class ConvNormAct(nn.Sequential):
    """A chain of bias-free convolutions, then one norm, then (optionally) one activation."""

    def __init__(
        self,
        convs: Sequence[tuple[int, int, Sequence[int], Sequence[int]]],
        norm: str | tuple = DEFAULT_NORM,
        act: str | tuple | None = DEFAULT_ACT,
    ) -> None:
        layers: list[nn.Module] = [_make_conv(*conv) for conv in convs]
        layers.append(get_norm_layer(norm, spatial_dims=SPATIAL_DIMS, channels=convs[-1][1]))
        if act is not None:
            layers.append(get_act_layer(act))
        super().__init__(*layers)


def _norm_params(spec: OpSpec, channels: int) -> int:
    norm = get_norm_layer(
        spec.get("norm", DEFAULT_NORM), spatial_dims=SPATIAL_DIMS, channels=channels
    )
    return sum(p.numel() for p in norm.parameters())


def op_cost(name: str, spec: OpSpec) -> OpCost:
    """Parameter count and activation memory per output voxel of op ``name`` (see module doc)."""
    convs = conv_layout(name, spec)
    if not convs:
        return OpCost(params=0, memory=0.0)
    params = sum(c_in * c_out * math.prod(kernel) for c_in, c_out, kernel, _ in convs)
    params += _norm_params(spec, spec.c_out)
    memory = 0.0
    for index, (c_in, _, _, _) in enumerate(convs):
        remaining = (stride for _, _, _, stride in convs[index:])
        memory += c_in * math.prod(math.prod(s) for s in remaining)
    memory += 2 * spec.c_out
    return OpCost(params=int(params), memory=float(memory))


def _build_op(name: str):
    def factory(spec: OpSpec) -> nn.Module:
        convs = conv_layout(name, spec)
        if not convs:
            return nn.Identity()
        act = None if name == "skip" else spec.get("act", DEFAULT_ACT)
        return ConvNormAct(convs, norm=spec.get("norm", DEFAULT_NORM), act=act)

    factory.__name__ = f"build_{name}"
    factory.__doc__ = f"Build the volumetric {name!r} op for an :class:`OpSpec`."
    return factory


VOLUMETRIC_OPS: tuple[str, ...] = ("conv2d", "conv3d", "p3d", "p3d_1", "p3d_2", "skip")


def volume_examples() -> list[OpExample]:
    """Contract-test probes: 3 -> 4 channels on a 6x6x4 volume, strides 1, 2 and in-plane (2, 2, 1)."""
    x = torch.randn(2, 3, 6, 6, 4)
    examples = []
    for stride, size in ((1, (6, 6, 4)), (2, (3, 3, 2)), ((2, 2, 1), (3, 3, 4))):
        spec = OpSpec(3, 4, stride, {"through_plane_axis": 2})
        examples.append(OpExample(spec, x, (2, 4, *size)))
    return examples


VOLUMETRIC_OPSET = register_opset(
    OpSet(
        name="volumetric",
        ops={name: _build_op(name) for name in VOLUMETRIC_OPS},
        zero=None,
        parameter_free=frozenset({"skip"}),
        description=(
            "V-NAS per-layer choice between in-plane 2D, 3D and pseudo-3D convolutions "
            "(+ identity) for anisotropic 3D volumes"
        ),
        examples=volume_examples,
    )
)
