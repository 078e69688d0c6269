r"""Budgets over measured costs: the cost of a genotype from the look-up table, and penalties.

:mod:`manifold_nas.cost.measure` measures every candidate op once (a per-op look-up
table, LUT). This module turns that table into what a budgeted search needs:

* :func:`parse_budget`: a ``{kind: limit}`` mapping (``latency_ms``,
  ``params``, ``flops``, ``flops_with_linalg``, ``memory``) checked once;
* :class:`GenotypeCost`: the cost of a discrete architecture as the LUT sum
  of its chosen ops plus a per-kind offset,

  .. math::

      \hat c_k(g) = \sum_{s}\sum_{e \in g_s} C^{(k)}_s[e, o_e] + b_k,

  where :math:`b_k` is, once sub-networks have been measured end to end, the
  median of :math:`c_k^{\text{measured}}(g_i) - \sum C^{(k)}(g_i)` over them
  (:meth:`GenotypeCost.calibrate`): the stem, head, cell outputs and Python
  overhead that no per-op entry sees, as a constant. Before that it is the
  table's fixed part where that is additive (``params``, ``flops``) and 0
  otherwise (``latency_ms``, ``memory``: the op sum alone);
* :func:`cheapest_genotype`: the exact minimiser of one kind's LUT sum;
* :func:`measure_genotype`: a derived network's costs measured end to end;
* :func:`measured_penalty`: ``strategy.arch_penalty`` of the bilevel strategy
  from the measured table, for networks without a cost model of their own.

Every measurement here runs inside :func:`torch.random.fork_rng`, so pricing
an architecture never changes a search's random streams (a resumed run that
finds its LUT cached measures nothing and still draws the same numbers).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from manifold_nas.config import check_options
from manifold_nas.cost.measure import COST_KINDS, candidate_ops
from manifold_nas.cost.table import (
    CostLUT,
    CostTable,
    build_cost_table,
    cost_penalty,
    derived_cost,
    genotype_choices,
    measure_network,
)
from manifold_nas.errors import UserInputError
from manifold_nas.space.cell import ArchSpec, ChosenEdge
from manifold_nas.space.genotype import Genotype

__all__ = [
    "MEASURED_ONLY_KINDS",
    "GenotypeCost",
    "Offset",
    "cheapest_genotype",
    "measure_genotype",
    "measured_cost_table",
    "measured_penalty",
    "network_cost_values",
    "parse_budget",
]

#: kinds only the measured table has (a network's own cost model prices params or memory)
MEASURED_ONLY_KINDS = ("flops", "flops_with_linalg", "latency_ms")


def parse_budget(value: Mapping[str, Any] | None, option: str = "budget") -> dict[str, float]:
    """``{kind: limit}`` with every kind one of :data:`~manifold_nas.cost.measure.COST_KINDS`.

    ``None`` or an empty mapping is no budget. Raises ``ValueError`` naming
    ``option`` for an unknown kind or a limit that is not a positive finite
    number.
    """
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ValueError(f"{option} must map cost kinds to limits, got {value!r}")
    limits = {}
    for kind, limit in value.items():
        if kind not in COST_KINDS:
            raise ValueError(f"{option}: unknown cost kind {kind!r}; choose from {COST_KINDS}")
        number = isinstance(limit, (int, float)) and not isinstance(limit, bool)
        if not number or not math.isfinite(limit) or limit <= 0:
            raise ValueError(f"{option}.{kind} must be a positive number, got {limit!r}")
        limits[str(kind)] = float(limit)
    return limits


def measured_cost_table(
    network: nn.Module,
    x: Tensor,
    *,
    cache_dir: str | Path | None = None,
    latency: bool = True,
    warmup: int = 3,
    repeats: int = 20,
) -> CostTable:
    """The per-op cost table of the searchable ``network`` on the example input ``x``.

    Measurements are cached in ``cost_lut.json`` under ``cache_dir`` (in memory
    when it is None), so a resumed run reads the numbers its first process
    measured. :meth:`manifold_nas.run.context.Run.cost_table` calls this with a
    run's network, example input and directory.
    """
    lut = CostLUT(cache_dir)
    return build_cost_table(network, x, lut=lut, latency=latency, warmup=warmup, repeats=repeats)


def network_cost_values(cost: Any) -> dict[str, float]:
    """A :class:`~manifold_nas.cost.table.NetworkCost` as ``{kind: value}`` over :data:`COST_KINDS`."""
    values = {
        "params": float(cost.params),
        "flops": float(cost.flops),
        "flops_with_linalg": float(cost.flops + cost.linalg_flops),
        "memory": float(cost.memory),
    }
    if cost.latency is not None:
        values["latency_ms"] = float(cost.latency.median_ms)
    return values


def measure_genotype(
    network: nn.Module,
    x: Tensor,
    *,
    latency: bool = True,
    warmup: int = 3,
    repeats: int = 20,
) -> dict[str, float]:
    """A derived ``network`` measured end to end on ``x`` (``{kind: value}``)."""
    found = measure_network(network, x, latency=latency, warmup=warmup, repeats=repeats)
    return network_cost_values(found)


@dataclass(frozen=True)
class Offset:
    """The constant :math:`b_k` added to the LUT sum of kind ``k``, and where it came from.

    ``source`` is ``"fixed part"`` (the table's own, exact), ``"calibrated"``
    (median residual over ``n`` sub-networks measured end to end) or
    ``"none"`` (0: no fixed part, no measurements).
    """

    value: float
    source: str
    n: int = 0


class GenotypeCost:
    """Cost of genotypes from a :class:`~manifold_nas.cost.table.CostTable`: LUT sum plus an offset.

    Parameters
    ----------
    table:
        The measured per-op table of the search space.
    offsets:
        Per kind, the offset to add; by default the table's fixed part
        where it is additive and 0 elsewhere (see :meth:`calibrate`).
    """

    def __init__(self, table: CostTable, offsets: Mapping[str, Offset] | None = None) -> None:
        self.table = table
        self.offsets: dict[str, Offset] = {}
        for kind in table.kinds:
            fixed = table.fixed.get(kind)
            self.offsets[kind] = (
                Offset(0.0, "none") if fixed is None else Offset(float(fixed), "fixed part")
            )
        self.offsets.update(offsets or {})

    @property
    def kinds(self) -> tuple[str, ...]:
        return self.table.kinds

    def op_sum(self, genotype: Genotype, kind: str) -> float:
        """:math:`\\sum C^{(k)}` over the genotype's chosen ops (no offset)."""
        return derived_cost(genotype_choices(genotype, self.table), self.table, kind)

    def cost(self, genotype: Genotype, kind: str) -> float:
        """LUT sum plus offset of one kind."""
        if kind not in self.offsets:
            raise ValueError(f"the cost table has no {kind!r}; it has {self.kinds}")
        return self.op_sum(genotype, kind) + self.offsets[kind].value

    def costs(self, genotype: Genotype, kinds: Sequence[str] | None = None) -> dict[str, float]:
        """``{kind: cost}`` for ``kinds`` (default: every kind of the table)."""
        return {kind: self.cost(genotype, kind) for kind in (kinds or self.kinds)}

    def calibrate(
        self, genotypes: Sequence[Genotype], measured: Sequence[Mapping[str, float] | None]
    ) -> dict[str, Offset]:
        """Set every measured kind's offset to the median end-to-end residual.

        :math:`b_k = \\mathrm{median}_i\\,(c_k^{\\text{measured}}(g_i) - \\sum C^{(k)}(g_i))`.
        This replaces even the exact fixed part of ``params`` and ``flops``:
        that part is exact for the searchable network, while a derived network
        (what is deployed and measured) can differ from it outside the chosen
        ops (a DARTS cell drops the preprocessing of unused inputs, say). The
        median keeps a few timings disturbed by other work from moving it.
        Returns the offsets.
        """
        for kind in self.kinds:
            residuals = [
                float(m[kind]) - self.op_sum(g, kind)
                for g, m in zip(genotypes, measured)
                if m is not None and kind in m
            ]
            if residuals:
                self.offsets[kind] = Offset(
                    statistics.median(residuals), "calibrated", len(residuals)
                )
        return dict(self.offsets)

    def feasible(
        self, genotype: Genotype, budget: Mapping[str, float], margin: float = 0.0
    ) -> bool:
        """Whether every budgeted cost is at most ``(1 − margin) · limit``."""
        return all(self.cost(genotype, k) <= (1.0 - margin) * v for k, v in budget.items())


def cheapest_genotype(
    table: CostTable,
    specs: Mapping[str, ArchSpec],
    opset: str,
    zero: str | None,
    kind: str,
) -> Genotype:
    """The genotype with the smallest LUT sum of ``kind`` (exact).

    The LUT sum is additive over edges and each node chooses its ``keep``
    inputs independently, so per node the ``keep`` incoming edges whose
    cheapest non-zero op is cheapest are kept, each with that op (ties by
    op, then edge order).
    """
    cells = {}
    for name, spec in specs.items():
        cost = table.cost(kind, name)
        allowed = [j for j, op in enumerate(spec.ops) if op != zero]
        edges = []
        for target in spec.targets:
            rows = [e for e, (_, t) in enumerate(spec.edges) if t == target]
            best = {e: min(allowed, key=lambda j, e=e: (float(cost[e, j]), j)) for e in rows}
            kept = rows
            if 0 < spec.keep < len(rows):
                kept = sorted(rows, key=lambda e: (float(cost[e, best[e]]), e))[: spec.keep]
            chosen = [ChosenEdge(spec.ops[best[e]], spec.edges[e][0], target) for e in kept]
            edges += sorted(chosen, key=lambda c: c.source)
        cells[name] = tuple(edges)
    return Genotype(opset, cells, ops={name: spec.ops for name, spec in specs.items()})


# -- the bilevel strategy's penalty ---------------------------------------------------
def _measured_penalty_options(budget: float, weight: float = 1.0, kind: str = "flops") -> None:
    """``strategy.arch_penalty`` with the measured table: ``budget``, ``weight``, ``kind``."""


def measured_penalty(
    network: nn.Module,
    x: Tensor,
    options: Mapping[str, Any],
    cache_dir: str | Path | None = None,
) -> Callable[[Mapping[str, Tensor]], Tensor]:
    r"""``strategy.arch_penalty`` priced by the measured per-op table of ``network``.

    The penalty is :func:`manifold_nas.cost.table.cost_penalty`,
    :math:`w \cdot \max(0, \mathbb E_p[C] / B - 1)`, with :math:`\mathbb E_p[C]`
    the expected cost of the candidate ops under the relaxation's
    probabilities (the fixed part excluded: it does not depend on the
    architecture). ``kind`` defaults to ``flops``; the table (latency only
    when ``kind`` is ``latency_ms``) is measured once, when the supernet is
    built, on the example input ``x``, and cached in ``cache_dir/cost_lut.json``.
    """
    options = dict(options)
    check_options(_measured_penalty_options, options, "strategy.arch_penalty")
    kind = options.get("kind", "flops")
    weight = options.get("weight", 1.0)
    try:
        budget = parse_budget({kind: options["budget"]}, "strategy.arch_penalty")[kind]
    except ValueError as err:
        raise UserInputError(str(err)) from None
    if weight < 0:
        raise UserInputError(f"strategy.arch_penalty.weight must be >= 0, got {weight!r}")
    try:
        next(candidate_ops(network))
    except (ValueError, StopIteration) as err:
        raise UserInputError(
            f"strategy.arch_penalty: {err or 'the network has no candidate ops'}"
        ) from None
    table = measured_cost_table(network, x, cache_dir=cache_dir, latency=kind == "latency_ms")

    def penalty(probabilities: Mapping[str, Tensor]) -> Tensor:
        return cost_penalty(probabilities, table, kind, budget, float(weight))

    penalty.table = table  # type: ignore[attr-defined]  # for diagnostics and tests
    return penalty
