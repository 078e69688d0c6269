"""The contracts between the core and a domain's networks, written down.

A *searchable network* (what a ``NETWORKS`` builder returns without a
genotype) declares its architecture parameters and takes their mixing
weights in ``forward``; the same builder given a genotype returns the
*derived* network, called as ``network(x)``. A network may also carry a
*cost model*, which the bilevel strategy's ``strategy.arch_penalty`` uses.

A *stage finder* (:data:`STAGE_FINDERS`) cuts a network that is not
block-wise into stages at named modules: a domain registers one for the
networks of its own library (the volumetric domain for MONAI's ``UNet``), so
the core never imports that library.

Both protocols are :class:`typing.Protocol` s, checked once where the network is
built (:func:`check_searchable`), with a one-line error naming the missing
member rather than an ``AttributeError`` deep in a search.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

from torch import Tensor, nn

from manifold_nas.errors import UserInputError
from manifold_nas.registry import Registry
from manifold_nas.space.cell import ArchSpec

__all__ = [
    "INPUT",
    "STAGE_FINDERS",
    "StageFinder",
    "BlockwiseNetwork",
    "CostModel",
    "NetworkBlock",
    "SearchableNetwork",
    "check_blockwise",
    "check_searchable",
    "has_cost_model",
]


@runtime_checkable
class SearchableNetwork(Protocol):
    """A network with a search space.

    ``arch_specs`` maps each architecture parameter's name to its
    :class:`~manifold_nas.space.cell.ArchSpec` (rows = edges or layers, columns =
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
            "(see manifold_nas.space.contracts.SearchableNetwork)"
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
            "(see manifold_nas.space.contracts.SearchableNetwork)"
        )


def has_cost_model(network: nn.Module) -> bool:
    """Whether ``network`` implements every member of :class:`CostModel`."""
    return all(callable(getattr(network, m, None)) for m in _COST_MEMBERS)


#: the name of a network's input among stage boundaries
INPUT = "<input>"

#: ``finder(network) -> boundary module names`` (``INPUT`` first), or ``None`` when
#: the network is not one the finder knows
StageFinder = Callable[[nn.Module], "list[str] | None"]

STAGE_FINDERS: Registry[StageFinder] = Registry(
    "stage finders", entry_point_group="manifold_nas.stage_finders", singular="stage finder"
)


_BLOCKWISE_MEMBERS = ("blocks", "block_features", "head")


class NetworkBlock(nn.Module):
    """One stage of a :class:`BlockwiseNetwork`, over the network's own modules.

    Parameters
    ----------
    name:
        A readable name (``"cell 1 (reduce)"``, ``"decoder level 0"``).
    inputs:
        Indices of the boundary features the block reads, in the order its
        ``forward`` takes them.
    rows:
        Architecture parameter name -> the rows of it this block owns.

    Subclasses implement ``forward(inputs, arch_weights=None)``, reading
    only their own rows of ``arch_weights`` (``None`` for a derived network).
    """

    def __init__(self, name: str, inputs: Sequence[int], rows: Mapping[str, Sequence[int]]):
        super().__init__()
        self.name = name
        self.inputs = tuple(int(i) for i in inputs)
        self.rows = {str(k): tuple(int(r) for r in v) for k, v in rows.items()}

    def forward(
        self, inputs: Sequence[Tensor], arch_weights: Mapping[str, Tensor] | None = None
    ) -> Tensor:
        raise NotImplementedError


@runtime_checkable
class BlockwiseNetwork(Protocol):
    """A network cut into blocks: ``forward(x, w) == head(block_features(x, w)[-1])``."""

    head: nn.Module

    def blocks(self) -> list[NetworkBlock]: ...

    def block_features(
        self, x: Tensor, arch_weights: Mapping[str, Tensor] | None = None
    ) -> list[Tensor]: ...


def check_blockwise(network: nn.Module, name: str) -> None:
    """Refuse a network that does not meet :class:`BlockwiseNetwork`, naming what is missing."""
    missing = [m for m in _BLOCKWISE_MEMBERS if not hasattr(network, m)]
    if missing:
        raise UserInputError(
            f"network {name!r} cannot be cut into blocks: it has no {missing[0]!r} "
            "(see manifold_nas.space.contracts.BlockwiseNetwork; darts_cnn and vnas can)"
        )
