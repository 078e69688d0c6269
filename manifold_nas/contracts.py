"""The contracts between the core and a domain's networks, written down.

A *searchable network* (what a ``NETWORKS`` builder returns without a
genotype) declares its architecture parameters and takes their mixing
weights in ``forward``; the same builder given a genotype returns the
*derived* network, called as ``network(x)``. A network may also carry a
*cost model*, which the bilevel strategy's ``search.arch_penalty`` uses.

Both are :class:`typing.Protocol` s, checked once where the network is
built (:func:`check_searchable`), with a one-line error naming the missing
member rather than an ``AttributeError`` deep in a search.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

from torch import Tensor, nn

from manifold_nas.cell import ArchSpec
from manifold_nas.errors import UserInputError

__all__ = ["CostModel", "SearchableNetwork", "check_searchable", "has_cost_model"]


@runtime_checkable
class SearchableNetwork(Protocol):
    """A network with a search space.

    ``arch_specs`` maps each architecture parameter's name to its
    :class:`~manifold_nas.cell.ArchSpec` (rows = edges or layers, columns =
    candidate ops); ``forward(x, arch_weights)`` takes one ``(rows, ops)``
    weight tensor per name.
    """

    arch_specs: Mapping[str, ArchSpec]

    def forward(self, x: Tensor, arch_weights: Mapping[str, Tensor] | None = None) -> Tensor: ...


@runtime_checkable
class CostModel(Protocol):
    """A network that can price its candidate ops.

    ``expected_cost(arch_weights, kind)`` is differentiable in the weights;
    ``derived_cost(...)`` is the cost of a discrete choice;
    ``cost_penalty(arch_weights, budget, weight, kind)`` is the term added to
    the architecture loss (zero within budget).
    """

    def expected_cost(self, arch_weights: Mapping[str, Tensor], kind: str = ...) -> Tensor: ...

    def derived_cost(self, *args: Any, **kwargs: Any) -> float: ...

    def cost_penalty(
        self,
        arch_weights: Mapping[str, Tensor],
        budget: float,
        weight: float = ...,
        kind: str = ...,
    ) -> Tensor: ...


_SEARCHABLE_MEMBERS = ("arch_specs", "forward")
_COST_MEMBERS = ("expected_cost", "derived_cost", "cost_penalty")


def check_searchable(network: nn.Module, name: str) -> None:
    """Refuse a network that does not meet :class:`SearchableNetwork`, naming what is missing."""
    missing = [m for m in _SEARCHABLE_MEMBERS if not hasattr(network, m)]
    if missing:
        raise UserInputError(
            f"network {name!r} is not searchable: it has no {missing[0]!r} "
            "(see manifold_nas.contracts.SearchableNetwork)"
        )
    specs = network.arch_specs
    if not isinstance(specs, Mapping) or not specs:
        raise UserInputError(
            f"network {name!r} has no search space (empty arch_specs); "
            "train it with 'manifold-nas train CONFIG' instead"
        )
    bad = [k for k, v in specs.items() if not isinstance(v, ArchSpec)]
    if bad:
        raise UserInputError(
            f"network {name!r}: arch_specs[{bad[0]!r}] is not an ArchSpec "
            "(see manifold_nas.contracts.SearchableNetwork)"
        )


def has_cost_model(network: nn.Module) -> bool:
    """Whether ``network`` implements every member of :class:`CostModel`."""
    return all(callable(getattr(network, m, None)) for m in _COST_MEMBERS)
