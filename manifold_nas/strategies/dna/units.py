r"""Block-wise view of a searchable network: stages, the rows they own, their candidates.

Block-wise search (DNA, Li et al., 2020) cuts a network into consecutive
*blocks* and treats each on its own: a block is trained on given input
features and every candidate architecture of the block is ranked by how well
it reproduces given output features. This module is the contract a network
meets to be cut that way, and the bookkeeping of a block's search space.

**The contract** (:class:`BlockwiseNetwork`). A network with ``N`` blocks

* computes ``N + 1`` *boundary features* ``t_0 .. t_N``
  (:meth:`~BlockwiseNetwork.block_features`): ``t_0`` is what the first block
  reads (the stem's output) and ``t_{i+1}`` is block ``i``'s output, so that
  ``forward(x, w) == head(block_features(x, w)[-1])``;
* lists its blocks (:meth:`~BlockwiseNetwork.blocks`), each a
  :class:`NetworkBlock`: an ``nn.Module`` over the network's own modules
  (no copies, so training a block trains the network) with ``inputs``, the
  indices of the boundary features it reads (a DARTS cell reads the two
  previous ones, a U-Net decoder level also its encoder skip), and ``rows``,
  the rows of each architecture parameter it owns. ``block(inputs, w)``
  reads only its own rows of ``w``.

**Choice units.** A block's candidates are the assignments of its rows (one
op per kept edge, ``keep`` edges per node). Blocks that own the *same* rows
(the DARTS cells of one type share one genotype) form one *choice unit*:
one candidate is chosen for all of them, and its loss and cost are the sums
over them. Units own disjoint rows that together cover every row, so one
candidate per unit is exactly one genotype (:func:`choice_units`,
:func:`combined_genotype`).

**Counting and enumerating** (:func:`unit_space_size`, :func:`unit_candidates`).
A unit's space is the product over its nodes of
:math:`\binom{n_t}{k}\,|O|^{k}` (``n_t`` incoming edges of node ``t``,
``k = keep`` of them kept, :math:`|O|` the non-zero ops). Candidates are
numbered in mixed radix over the nodes (spec order, then node order), so
"all of them" is ``range(size)`` and "``m`` uniform samples without
replacement" is ``sorted(rng.sample(range(size), m))``, both decoded in
:math:`O(\text{nodes})` per candidate however large the space.

**A whole student** (:func:`student_blocks`) is a searchable network with its
blocks, its units and the candidates each unit is ranked on
(:class:`StudentBlocks`), every unit sampled from a random stream of its own.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from manifold_nas.errors import UserInputError
from manifold_nas.space.cell import ArchSpec, ChosenEdge
from manifold_nas.space.contracts import NetworkBlock
from manifold_nas.space.genotype import Genotype

__all__ = [
    "ChoiceUnit",
    "StudentBlocks",
    "UnitCandidate",
    "candidate_weights",
    "choice_units",
    "combined_genotype",
    "student_blocks",
    "unit_candidate_of",
    "unit_candidates",
    "unit_space_size",
]


# -- choice units ------------------------------------------------------------------------
@dataclass(frozen=True)
class ChoiceUnit:
    """Blocks that own the same architecture rows, so share one candidate.

    ``rows`` is a tuple of ``(parameter name, rows)`` pairs in parameter
    order; ``blocks`` the indices of the blocks owning them.
    """

    rows: tuple[tuple[str, tuple[int, ...]], ...]
    blocks: tuple[int, ...]

    @property
    def row_map(self) -> dict[str, tuple[int, ...]]:
        return dict(self.rows)


def _canonical_rows(
    rows: Mapping[str, Sequence[int]], specs: Mapping[str, ArchSpec]
) -> tuple[tuple[str, tuple[int, ...]], ...]:
    return tuple((name, tuple(sorted(rows[name]))) for name in specs if rows.get(name))


def choice_units(blocks: Sequence[NetworkBlock], specs: Mapping[str, ArchSpec]) -> list[ChoiceUnit]:
    """Group blocks owning identical rows into units (in order of their first block).

    Raises
    ------
    UserInputError
        When two blocks own overlapping but different rows, a block owns a
        row a spec does not have, a node's incoming edges are split between
        units, or some row is owned by no block.
    """
    units: dict[tuple, list[int]] = {}
    for index, block in enumerate(blocks):
        unknown = [name for name in block.rows if name not in specs]
        if unknown:
            raise UserInputError(
                f"block {block.name!r} owns rows of {unknown[0]!r}, which is not an "
                f"architecture parameter ({', '.join(specs)})"
            )
        for name, rows in block.rows.items():
            bad = [r for r in rows if not 0 <= r < len(specs[name].edges)]
            if bad:
                raise UserInputError(f"block {block.name!r} owns row {bad[0]} of {name!r}")
        key = _canonical_rows(block.rows, specs)
        if key:
            units.setdefault(key, []).append(index)
    owner: dict[tuple[str, int], tuple] = {}
    for key in units:
        for name, rows in key:
            for row in rows:
                if (name, row) in owner:
                    raise UserInputError(
                        f"row {row} of {name!r} is owned by blocks with different rows; "
                        "blocks must own identical or disjoint rows"
                    )
                owner[(name, row)] = key
    for name, spec in specs.items():
        for row, (_, target) in enumerate(spec.edges):
            if (name, row) not in owner:
                raise UserInputError(f"row {row} of {name!r} is owned by no block")
            siblings = [r for r, (_, t) in enumerate(spec.edges) if t == target]
            if any(owner.get((name, r)) != owner[(name, row)] for r in siblings):
                raise UserInputError(
                    f"the incoming edges of node {target} of {name!r} belong to different blocks"
                )
    return [ChoiceUnit(key, tuple(indices)) for key, indices in units.items()]


# -- a unit's candidates ------------------------------------------------------------------
@dataclass(frozen=True)
class UnitCandidate:
    """One assignment of a unit's rows: the chosen edges per architecture parameter."""

    cells: tuple[tuple[str, tuple[ChosenEdge, ...]], ...]

    @property
    def label(self) -> str:
        """``"normal: sep_conv_3x3(0->2) skip_connect(1->2) | reduce: ..."``."""
        return " | ".join(
            f"{name}: " + " ".join(f"{e.op}({e.source}->{e.target})" for e in edges)
            for name, edges in self.cells
        )

    def to_json(self) -> dict[str, list[list[Any]]]:
        return {name: [[e.op, e.source, e.target] for e in edges] for name, edges in self.cells}


def _node_choices(spec: ArchSpec, target: int, zero: str | None) -> list[tuple[ChosenEdge, ...]]:
    """Every admissible assignment of one node: ``keep`` sources, one op each."""
    sources = sorted(s for s, t in spec.edges if t == target)
    keep = len(sources) if spec.keep <= 0 else min(spec.keep, len(sources))
    ops = [op for op in spec.ops if op != zero]
    return [
        tuple(ChosenEdge(op, s, target) for op, s in zip(chosen_ops, kept))
        for kept in itertools.combinations(sources, keep)
        for chosen_ops in itertools.product(ops, repeat=keep)
    ]


def _unit_nodes(
    unit: ChoiceUnit, specs: Mapping[str, ArchSpec], zero: str | None
) -> list[tuple[str, list[tuple[ChosenEdge, ...]]]]:
    nodes = []
    for name, rows in unit.rows:
        spec = specs[name]
        for target in sorted({spec.edges[r][1] for r in rows}):
            nodes.append((name, _node_choices(spec, target, zero)))
    return nodes


def unit_space_size(unit: ChoiceUnit, specs: Mapping[str, ArchSpec], zero: str | None) -> int:
    r"""How many candidates the unit has: :math:`\prod_t \binom{n_t}{k} |O|^k`."""
    return math.prod(len(choices) for _, choices in _unit_nodes(unit, specs, zero))


def unit_candidates(
    unit: ChoiceUnit,
    specs: Mapping[str, ArchSpec],
    zero: str | None,
    max_candidates: int,
    rng: random.Random,
) -> tuple[list[UnitCandidate], int]:
    """All candidates when there are at most ``max_candidates``, else that many samples.

    Samples are drawn uniformly without replacement (``rng.sample`` of the
    candidate numbers) and listed in number order. Returns the candidates
    and the size of the whole space.
    """
    nodes = _unit_nodes(unit, specs, zero)
    size = math.prod(len(choices) for _, choices in nodes)
    numbers = (
        range(size) if size <= max_candidates else sorted(rng.sample(range(size), max_candidates))
    )
    return [_decode(number, nodes) for number in numbers], size


def _decode(number: int, nodes: list[tuple[str, list[tuple[ChosenEdge, ...]]]]) -> UnitCandidate:
    picked: dict[str, list[ChosenEdge]] = {}
    for name, choices in reversed(nodes):
        number, digit = divmod(number, len(choices))
        picked.setdefault(name, [])[:0] = choices[digit]
    order = list(dict.fromkeys(name for name, _ in nodes))
    return UnitCandidate(tuple((name, tuple(picked[name])) for name in order))


def unit_candidate_of(
    genotype: Genotype, unit: ChoiceUnit, specs: Mapping[str, ArchSpec]
) -> UnitCandidate:
    """The part of ``genotype`` on the unit's rows (its edges sorted by target, then source)."""
    cells = []
    for name, rows in unit.rows:
        if name not in genotype.cells:
            raise UserInputError(f"genotype has no cell type {name!r}")
        owned = {specs[name].edges[r] for r in rows}
        edges = [e for e in genotype.cells[name] if (e.source, e.target) in owned]
        cells.append((name, tuple(sorted(edges, key=lambda e: (e.target, e.source)))))
    return UnitCandidate(tuple(cells))


def candidate_weights(
    candidates: Sequence[UnitCandidate],
    specs: Mapping[str, ArchSpec],
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> dict[str, Tensor]:
    """One-hot ``(rows, ops)`` weights of the candidates' edges, zero on every other row.

    A block reads only its own rows, so the weights of its unit's candidate
    alone make it compute exactly that candidate.
    """
    weights = {name: torch.zeros(spec.shape, dtype=dtype) for name, spec in specs.items()}
    for candidate in candidates:
        for name, edges in candidate.cells:
            spec = specs[name]
            for edge in edges:
                row = spec.edges.index((edge.source, edge.target))
                weights[name][row, spec.ops.index(edge.op)] = 1.0
    return {name: w.to(device) for name, w in weights.items()}


def combined_genotype(
    candidates: Sequence[UnitCandidate],
    specs: Mapping[str, ArchSpec],
    opset: str,
    config: Mapping[str, Any] | None = None,
) -> Genotype:
    """The genotype of one candidate per unit (edges sorted by target, then source)."""
    cells: dict[str, list[ChosenEdge]] = {name: [] for name in specs}
    for candidate in candidates:
        for name, edges in candidate.cells:
            cells[name].extend(edges)
    return Genotype(
        opset,
        {
            name: tuple(sorted(edges, key=lambda e: (e.target, e.source)))
            for name, edges in cells.items()
        },
        ops={name: spec.ops for name, spec in specs.items()},
        config=dict(config or {}),
    )


# -- a whole student ----------------------------------------------------------------------
@dataclass(frozen=True)
class StudentBlocks:
    """A searchable block-wise network cut into blocks, its choice units and their candidates."""

    #: the searchable network (its blocks are views of its own modules)
    network: nn.Module
    #: its architecture parameters by name
    specs: Mapping[str, ArchSpec]
    #: its blocks, in network order
    blocks: Sequence[NetworkBlock]
    #: its choice units, in order of their first block
    units: Sequence[ChoiceUnit]
    #: block index -> the index of its unit
    unit_of: Mapping[int, int]
    #: per unit, the candidates that are ranked (all of them, or samples)
    candidates: Sequence[Sequence[UnitCandidate]]
    #: per unit, the size of its whole space
    space_sizes: Sequence[int]

    @property
    def first_candidates(self) -> list[UnitCandidate]:
        """The first candidate of every unit: a fixed reference genotype."""
        return [found[0] for found in self.candidates]


def student_blocks(
    network: nn.Module,
    zero: str | None,
    max_candidates: int,
    unit_rng: Callable[[int], random.Random],
) -> StudentBlocks:
    """Cut a block-wise ``network`` into units and draw each unit's candidates.

    ``unit_rng(u)`` is the random stream unit ``u`` samples its candidates
    from (one stream per unit, so a unit's candidates do not depend on the
    others).

    Raises
    ------
    UserInputError
        When a block owns no architecture rows (and see :func:`choice_units`).
    """
    specs = dict(network.arch_specs)
    blocks = network.blocks()
    units = choice_units(blocks, specs)
    unit_of = {b: u for u, unit in enumerate(units) for b in unit.blocks}
    missing = [block.name for b, block in enumerate(blocks) if b not in unit_of]
    if missing:
        raise UserInputError(f"student block {missing[0]!r} owns no architecture rows")
    candidates, space_sizes = [], []
    for u, unit in enumerate(units):
        found, size = unit_candidates(unit, specs, zero, max_candidates, unit_rng(u))
        candidates.append(found)
        space_sizes.append(size)
    return StudentBlocks(network, specs, blocks, units, unit_of, candidates, space_sizes)
