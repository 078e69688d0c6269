"""Op sets: the candidate operations of a search space and how they combine.

An :class:`OpSet` is everything the generic cell search needs to know about a
domain's operations:

* ``ops``: ordered name -> factory; a factory takes an :class:`OpSpec` and
  returns an ``nn.Module`` mapping a ``c_in``-channel input to a
  ``c_out``-channel output, downsampled by ``stride``;
* ``zero``: the name of the "no connection" op (excluded at selection), if any;
* ``mix``: how one edge combines its candidates' outputs given their weights
  (default: weighted sum; the SPD domain uses a weighted Fréchet mean);
* ``aggregate``: how a node combines its incoming edges (default: sum);
* ``combine``: how a cell combines its intermediate nodes (default: channel
  concatenation);
* ``dtype``: the dtype networks built from this op set run in;
* ``examples``: probes for the registry-driven contract tests (an
  :class:`OpExample` per stride the domain uses), so every op of every op set,
  a third party's included, is checked for shapes, dtype, finite gradients and
  the domain's own invariant (SPD-ness, say) without a hand-written test.

The search loop never branches on the domain: everything domain-specific is
reached through these fields.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from manifold_nas.registry import Registry

__all__ = [
    "OPSETS",
    "Aggregator",
    "Mixer",
    "OpExample",
    "OpFactory",
    "OpSet",
    "OpSpec",
    "channel_concat",
    "register_opset",
    "sum_inputs",
    "weighted_sum",
]


@dataclass(frozen=True)
class OpSpec:
    """What an op factory is asked to build.

    ``options`` carries domain-specific settings (``affine`` for vision,
    ``n_in``/``n_out`` matrix sizes for SPD, ``spatial_dims`` and the
    through-plane axis for volumetric data).
    """

    c_in: int
    c_out: int
    stride: int | tuple[int, ...] = 1
    options: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))

    def get(self, key: str, default: Any = None) -> Any:
        return self.options.get(key, default)

    @property
    def reduces(self) -> bool:
        """True when the op downsamples along some axis."""
        strides = self.stride if isinstance(self.stride, tuple) else (self.stride,)
        return any(s != 1 for s in strides)


OpFactory = Callable[[OpSpec], nn.Module]


class Mixer(Protocol):
    """Combine the outputs of an edge's candidate ops with their weights.

    ``outputs`` holds only the ops whose weight is non-zero, in op order, and
    ``weights`` is the matching 1-D tensor. Weights need not sum to one
    (independent sigmoids do not).
    """

    def __call__(self, outputs: Sequence[Tensor], weights: Tensor) -> Tensor: ...


class Aggregator(Protocol):
    """Combine a node's incoming edge outputs, or a cell's node outputs."""

    def __call__(self, inputs: Sequence[Tensor]) -> Tensor: ...


def weighted_sum(outputs: Sequence[Tensor], weights: Tensor) -> Tensor:
    """The DARTS mixture :math:`\\sum_k w_k o_k`."""
    result = outputs[0] * weights[0]
    for out, w in zip(outputs[1:], weights[1:]):
        result = result + out * w
    return result


def sum_inputs(inputs: Sequence[Tensor]) -> Tensor:
    """The DARTS node rule: the plain sum of incoming edges."""
    result = inputs[0]
    for x in inputs[1:]:
        result = result + x
    return result


def channel_concat(inputs: Sequence[Tensor]) -> Tensor:
    """The DARTS cell output: intermediate nodes concatenated on dim 1."""
    return torch.cat(list(inputs), dim=1)


@dataclass(frozen=True)
class OpExample:
    """A probe for contract tests: what to build, what to feed it, what must come out.

    ``check(output)`` raises ``AssertionError`` when the output breaks the
    domain's invariant (e.g. is not symmetric positive definite).
    """

    spec: OpSpec
    inputs: Tensor
    output_shape: tuple[int, ...]
    check: Callable[[Tensor], None] | None = None


@dataclass(frozen=True)
class OpSet:
    """A named set of candidate operations and their combination rules."""

    name: str
    ops: Mapping[str, OpFactory]
    zero: str | None = None
    mix: Mixer = weighted_sum
    aggregate: Aggregator = sum_inputs
    combine: Aggregator = channel_concat
    dtype: torch.dtype | None = None
    parameter_free: frozenset[str] = frozenset()
    supports_partial_channels: bool = False
    description: str = ""
    examples: Callable[[], Sequence[OpExample]] | None = None

    def __post_init__(self) -> None:
        if not self.ops:
            raise ValueError(f"op set {self.name!r} has no ops")
        if self.zero is not None and self.zero not in self.ops:
            raise ValueError(f"op set {self.name!r}: zero op {self.zero!r} is not among its ops")
        unknown = set(self.parameter_free) - set(self.ops)
        if unknown:
            raise ValueError(
                f"op set {self.name!r}: parameter_free names unknown ops {sorted(unknown)}"
            )
        object.__setattr__(self, "ops", MappingProxyType(dict(self.ops)))

    @property
    def op_names(self) -> tuple[str, ...]:
        return tuple(self.ops)

    def build(self, name: str, spec: OpSpec) -> nn.Module:
        """Instantiate op ``name``; the module is cast to the op set's dtype."""
        module = self.ops[name](spec)
        if self.dtype is not None:
            module = module.to(self.dtype)
        return module


OPSETS: Registry[OpSet] = Registry("opsets", entry_point_group="manifold_nas.opsets")


def register_opset(opset: OpSet, *, overwrite: bool = False) -> OpSet:
    """Add an op set to the registry under its own name."""
    OPSETS.register(opset.name, opset, overwrite=overwrite)
    return opset
