"""Vision op sets: the DARTS CNN space and the NAS-Bench-201 space.

Every op maps a ``(B, c_in, H, W)`` tensor to ``(B, c_out, ceil(H / s),
ceil(W / s))`` for stride ``s`` in ``{1, 2}``, for odd and even ``H, W``.
Convolutions get "same" padding ``dilation * (kernel_size - 1) // 2`` so that
their output size is ``ceil(H / s)``; every other op is made to agree.

Channel changes (``c_in != c_out``) are allowed everywhere. Ops that cannot
change the channel count by themselves get a projection:

* ``skip_connect``: identity at stride 1 with equal channels, a 1x1
  :class:`ReLUConvBN` at stride 1 with different channels, and a
  :class:`FactorizedReduce` at stride 2 (both op sets);
* pooling: a 1x1 :class:`ReLUConvBN` before the pooling when the channels
  differ (as NAS-Bench-201 does).

So "parameter-free" ops (``OpSet.parameter_free``) hold no trainable
parameters only when ``c_in == c_out`` and, for ``skip_connect``, at stride 1;
a stride-2 skip is the learned :class:`FactorizedReduce`, as in DARTS.

Options read from :class:`~manifold_nas.space.opset.OpSpec`:

``affine`` (default ``True``)
    learnable scale and shift in the batch norms of the convolutions (DARTS
    searches with ``affine=False``); the BN after DARTS pooling is never affine.
``track_running_stats`` (default ``True``)
    passed to every ``BatchNorm2d``; NAS-Bench-201 searches with ``False``.

Op order (``OpSet.op_names``):

* ``"darts"``: none, max_pool_3x3, avg_pool_3x3, skip_connect, sep_conv_3x3,
  sep_conv_5x5, dil_conv_3x3, dil_conv_5x5;
* ``"nb201"``: none, skip_connect, nor_conv_1x1, nor_conv_3x3, avg_pool_3x3.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from manifold_nas.space.opset import OpExample, OpFactory, OpSet, OpSpec, register_opset

__all__ = [
    "DARTS_OPSET",
    "NB201_OPSET",
    "DilatedConv",
    "FactorizedReduce",
    "Identity",
    "Pooling",
    "ReLUConvBN",
    "SeparableConv",
    "Zero",
    "dilated_conv_op",
    "none_op",
    "pooling_op",
    "relu_conv_bn_op",
    "separable_conv_op",
    "skip_connect_op",
]


def _same_padding(kernel_size: int, dilation: int = 1) -> int:
    # For odd kernels this gives an output of ceil(H / stride) for any H.
    return dilation * (kernel_size - 1) // 2


def _batch_norm(channels: int, affine: bool, track_running_stats: bool) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, affine=affine, track_running_stats=track_running_stats)


class ReLUConvBN(nn.Sequential):
    """ReLU, a ``kernel_size`` convolution without bias, then batch norm.

    The DARTS preprocessing block and the NAS-Bench-201 ``nor_conv_kxk`` op.
    """

    def __init__(
        self,
        c_in: int,
        c_out: int,
        kernel_size: int,
        stride: int = 1,
        affine: bool = True,
        track_running_stats: bool = True,
    ) -> None:
        super().__init__(
            nn.ReLU(inplace=False),
            nn.Conv2d(
                c_in,
                c_out,
                kernel_size,
                stride=stride,
                padding=_same_padding(kernel_size),
                bias=False,
            ),
            _batch_norm(c_out, affine, track_running_stats),
        )


class DilatedConv(nn.Sequential):
    """ReLU, a dilated depthwise ``kernel_size`` conv, a pointwise 1x1 conv, BN.

    With ``dilation=2`` this is the DARTS ``dil_conv_kxk`` op; its receptive
    field is ``2 * (kernel_size - 1) + 1`` pixels wide.
    """

    def __init__(
        self,
        c_in: int,
        c_out: int,
        kernel_size: int,
        stride: int = 1,
        dilation: int = 1,
        affine: bool = True,
        track_running_stats: bool = True,
    ) -> None:
        super().__init__(
            nn.ReLU(inplace=False),
            nn.Conv2d(
                c_in,
                c_in,
                kernel_size,
                stride=stride,
                padding=_same_padding(kernel_size, dilation),
                dilation=dilation,
                groups=c_in,
                bias=False,
            ),
            nn.Conv2d(c_in, c_out, kernel_size=1, bias=False),
            _batch_norm(c_out, affine, track_running_stats),
        )


class SeparableConv(nn.Sequential):
    """The DARTS ``sep_conv_kxk``: two depthwise-separable blocks in a row.

    The first block (``c_in -> c_in``) carries the stride, the second
    (``c_in -> c_out``) runs at stride 1; each is ReLU, depthwise conv,
    pointwise conv, BN.
    """

    def __init__(
        self,
        c_in: int,
        c_out: int,
        kernel_size: int,
        stride: int = 1,
        affine: bool = True,
        track_running_stats: bool = True,
    ) -> None:
        super().__init__(
            DilatedConv(c_in, c_in, kernel_size, stride, 1, affine, track_running_stats),
            DilatedConv(c_in, c_out, kernel_size, 1, 1, affine, track_running_stats),
        )


class FactorizedReduce(nn.Module):
    """Halve the spatial size with two offset stride-2 1x1 convolutions.

    One conv sees the even pixels of ``x``, the other the odd pixels (``x``
    shifted by one row and column). Their outputs (``c_out // 2`` and
    ``c_out - c_out // 2`` channels) are concatenated and batch-normed.
    The shifted input is zero-padded at the bottom and right so that both
    halves have ``ceil(H / 2) x ceil(W / 2)`` pixels for odd sizes too.
    """

    def __init__(
        self,
        c_in: int,
        c_out: int,
        affine: bool = True,
        track_running_stats: bool = True,
    ) -> None:
        super().__init__()
        if c_out < 2:
            raise ValueError(f"FactorizedReduce needs c_out >= 2, got {c_out}")
        self.relu = nn.ReLU(inplace=False)
        self.conv_even = nn.Conv2d(c_in, c_out // 2, kernel_size=1, stride=2, bias=False)
        self.conv_odd = nn.Conv2d(c_in, c_out - c_out // 2, kernel_size=1, stride=2, bias=False)
        self.bn = _batch_norm(c_out, affine, track_running_stats)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(x)
        shifted = F.pad(x, (0, 1, 0, 1))[:, :, 1:, 1:]
        out = torch.cat([self.conv_even(x), self.conv_odd(shifted)], dim=1)
        return self.bn(out)


class Zero(nn.Module):
    """The "no connection" op: zeros of shape ``(B, c_out, ceil(H/s), ceil(W/s))``.

    The zeros are computed as ``0 * x`` (subsampled, one channel repeated
    ``c_out`` times) so that the output stays in the autograd graph with a
    zero gradient for the input, as in DARTS; it is a fresh tensor, safe to
    modify in place.
    """

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.c_in = c_in
        self.c_out = c_out
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        zeros = x[:, :1, :: self.stride, :: self.stride].mul(0.0)
        return zeros.repeat(1, self.c_out, 1, 1)

    def extra_repr(self) -> str:
        return f"c_in={self.c_in}, c_out={self.c_out}, stride={self.stride}"


class Identity(nn.Module):
    """Return the input unchanged (``skip_connect`` at stride 1, equal channels)."""

    def forward(self, x: Tensor) -> Tensor:
        return x


class Pooling(nn.Module):
    """3x3 max or average pooling, with a channel projection and an optional BN.

    Order: a 1x1 :class:`ReLUConvBN` when ``c_in != c_out``, then pooling
    (``padding=1``; the average excludes the padding), then, when
    ``batch_norm`` is true, a ``BatchNorm2d(affine=False)`` as DARTS adds
    after its pooling candidates to put them on the scale of the conv ops.
    """

    def __init__(
        self,
        mode: Literal["max", "avg"],
        c_in: int,
        c_out: int,
        stride: int = 1,
        batch_norm: bool = True,
        affine: bool = True,
        track_running_stats: bool = True,
    ) -> None:
        super().__init__()
        self.project = (
            ReLUConvBN(c_in, c_out, 1, 1, affine, track_running_stats)
            if c_in != c_out
            else Identity()
        )
        if mode == "max":
            self.pool: nn.Module = nn.MaxPool2d(3, stride=stride, padding=1)
        elif mode == "avg":
            self.pool = nn.AvgPool2d(3, stride=stride, padding=1, count_include_pad=False)
        else:
            raise ValueError(f"pooling mode must be 'max' or 'avg', got {mode!r}")
        self.norm = (
            _batch_norm(c_out, affine=False, track_running_stats=track_running_stats)
            if batch_norm
            else Identity()
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(self.pool(self.project(x)))


# --------------------------------------------------------------------------
# Factories: OpSpec -> nn.Module. The kernel size is data, not a new class.


def _stride(spec: OpSpec) -> int:
    stride = spec.stride
    if isinstance(stride, tuple):
        if len(set(stride)) != 1:
            raise ValueError(f"vision ops need the same stride on both axes, got {stride}")
        stride = stride[0]
    if stride not in (1, 2):
        raise ValueError(f"vision ops support stride 1 or 2, got {stride}")
    return stride


def _norm_options(spec: OpSpec) -> dict[str, bool]:
    return {
        "affine": bool(spec.get("affine", True)),
        "track_running_stats": bool(spec.get("track_running_stats", True)),
    }


def _named(factory: OpFactory, name: str) -> OpFactory:
    factory.__name__ = factory.__qualname__ = name
    return factory


def none_op(spec: OpSpec) -> nn.Module:
    """The zero op: no connection."""
    return Zero(spec.c_in, spec.c_out, _stride(spec))


def skip_connect_op(spec: OpSpec) -> nn.Module:
    """Identity, or the cheapest learned map when the shape must change.

    Stride 1 and equal channels: :class:`Identity`; stride 1 and different
    channels: a 1x1 :class:`ReLUConvBN`; stride 2: :class:`FactorizedReduce`.
    """
    stride = _stride(spec)
    norm = _norm_options(spec)
    if stride == 2:
        return FactorizedReduce(spec.c_in, spec.c_out, **norm)
    if spec.c_in != spec.c_out:
        return ReLUConvBN(spec.c_in, spec.c_out, 1, 1, **norm)
    return Identity()


def pooling_op(mode: Literal["max", "avg"], batch_norm: bool) -> OpFactory:
    """Factory of a 3x3 :class:`Pooling` op (``batch_norm``: DARTS style)."""

    def build(spec: OpSpec) -> nn.Module:
        return Pooling(
            mode, spec.c_in, spec.c_out, _stride(spec), batch_norm, **_norm_options(spec)
        )

    return _named(build, f"{mode}_pool_3x3")


def separable_conv_op(kernel_size: int) -> OpFactory:
    """Factory of the DARTS ``sep_conv_{k}x{k}`` (:class:`SeparableConv`)."""

    def build(spec: OpSpec) -> nn.Module:
        return SeparableConv(
            spec.c_in, spec.c_out, kernel_size, _stride(spec), **_norm_options(spec)
        )

    return _named(build, f"sep_conv_{kernel_size}x{kernel_size}")


def dilated_conv_op(kernel_size: int, dilation: int = 2) -> OpFactory:
    """Factory of the DARTS ``dil_conv_{k}x{k}`` (:class:`DilatedConv`)."""

    def build(spec: OpSpec) -> nn.Module:
        return DilatedConv(
            spec.c_in, spec.c_out, kernel_size, _stride(spec), dilation, **_norm_options(spec)
        )

    return _named(build, f"dil_conv_{kernel_size}x{kernel_size}")


def relu_conv_bn_op(kernel_size: int) -> OpFactory:
    """Factory of the NAS-Bench-201 ``nor_conv_{k}x{k}`` (:class:`ReLUConvBN`)."""

    def build(spec: OpSpec) -> nn.Module:
        return ReLUConvBN(spec.c_in, spec.c_out, kernel_size, _stride(spec), **_norm_options(spec))

    return _named(build, f"nor_conv_{kernel_size}x{kernel_size}")


def image_examples() -> list[OpExample]:
    """Contract-test probes: 4 -> 4 channels on odd-sized images at strides 1 and 2 (cells keep widths)."""
    x = torch.randn(2, 4, 7, 9)
    return [
        OpExample(OpSpec(4, 4, 1), x, (2, 4, 7, 9)),
        OpExample(OpSpec(4, 4, 2), x, (2, 4, 4, 5)),
    ]


DARTS_OPSET = register_opset(
    OpSet(
        name="darts",
        ops={
            "none": none_op,
            "max_pool_3x3": pooling_op("max", batch_norm=True),
            "avg_pool_3x3": pooling_op("avg", batch_norm=True),
            "skip_connect": skip_connect_op,
            "sep_conv_3x3": separable_conv_op(3),
            "sep_conv_5x5": separable_conv_op(5),
            "dil_conv_3x3": dilated_conv_op(3),
            "dil_conv_5x5": dilated_conv_op(5),
        },
        zero="none",
        parameter_free=frozenset({"none", "max_pool_3x3", "avg_pool_3x3", "skip_connect"}),
        supports_partial_channels=True,
        description="DARTS CNN space (Liu et al. 2019): pooling, skip, separable and "
        "dilated convolutions",
        examples=image_examples,
    )
)

NB201_OPSET = register_opset(
    OpSet(
        name="nb201",
        ops={
            "none": none_op,
            "skip_connect": skip_connect_op,
            "nor_conv_1x1": relu_conv_bn_op(1),
            "nor_conv_3x3": relu_conv_bn_op(3),
            "avg_pool_3x3": pooling_op("avg", batch_norm=False),
        },
        zero="none",
        parameter_free=frozenset({"none", "skip_connect", "avg_pool_3x3"}),
        supports_partial_channels=True,
        description="NAS-Bench-201 space (Dong & Yang 2020): skip, ReLU-Conv-BN 1x1/3x3, "
        "3x3 average pooling",
        examples=image_examples,
    )
)
