"""Combining the ranked blocks into one network: costs, the budgeted optimum, its metrics.

The last step of block-wise distillation (DNA; Li et al., 2020) turns the
block rankings into a genotype. Per choice unit, a candidate's loss is the
sum of its blocks' ``rank_by`` losses and its cost the sum of its blocks'
costs (:func:`unit_table`); :func:`combine` finds the genotype minimising
the total loss subject to ``fixed + total cost <= budget`` exactly, with
:func:`~manifold_nas.strategies.dna.combiner.combine_blocks`, and the whole
Pareto front of (cost, loss) with
:func:`~manifold_nas.strategies.dna.combiner.pareto_front`, both written to
``pareto.json``.

**Costs** (:data:`COSTS`). ``params`` and ``flops`` are measured in the
*derived* network, per example (on the probe input): a candidate's cost is
that of its unit's blocks in the network of the unit's candidate and every
other unit's first candidate (:class:`CandidateCosts`, measured once per
unit). ``memory`` is the network's own cost model, which prices
architecture rows, so a unit's memory is booked on its first block. The
``fixed`` cost (:func:`fixed_costs`) is everything outside the blocks (stem,
head): the whole network's cost minus its blocks'. Building a derived
network leaves the random streams as they were.

**Final metrics** (:func:`stitched_metrics`): the chosen blocks with their
distilled weights are stitched between the teacher's first boundary and its
head and evaluated on the validation split, after batch-norm recalibration
(statistics restored afterwards).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from manifold_nas.cost.measure import count_flops, count_parameters, preserved_buffers
from manifold_nas.errors import UserInputError
from manifold_nas.run.context import Run, stream_seed
from manifold_nas.space.contracts import has_cost_model
from manifold_nas.space.genotype import Genotype
from manifold_nas.strategies.dna.combiner import Candidate, combine_blocks, pareto_front
from manifold_nas.strategies.dna.data_passes import reseed_data_transforms
from manifold_nas.strategies.dna.distillation import DistillationBlock
from manifold_nas.strategies.dna.teacher import TeacherStages
from manifold_nas.strategies.dna.units import (
    StudentBlocks,
    UnitCandidate,
    candidate_weights,
    combined_genotype,
)
from manifold_nas.strategies.one_shot import recalibrate_batch_norm

__all__ = [
    "COSTS",
    "CandidateCosts",
    "block_costs",
    "combination_budget",
    "combine",
    "cost_kinds",
    "derived_network",
    "fixed_costs",
    "front_entry",
    "stitched_metrics",
    "unit_table",
]

#: the cost kinds the combiner can budget
COSTS = ("params", "flops", "memory")

#: per candidate of a unit, per block of the unit: cost kind -> cost
UnitCosts = list[list[dict[str, float]]]
#: per block, per candidate (in candidate order): ``index`` and both feature losses
Rankings = Sequence[Sequence[Mapping[str, Any]]]


def cost_kinds(network: nn.Module) -> list[str]:
    """The costs reported for ``network``'s candidates: params, FLOPs, and memory with a model."""
    return ["params", "flops"] + (["memory"] if has_cost_model(network) else [])


# -- costs ----------------------------------------------------------------------------------
def derived_network(run: Run, student: StudentBlocks, chosen: Sequence[UnitCandidate]) -> nn.Module:
    """The derived network of one candidate per unit, in eval mode, built off the random streams."""
    genotype = combined_genotype(chosen, student.specs, run.opset.name)
    with torch.random.fork_rng(devices=[run.device] if run.device.type == "cuda" else []):
        return run.build_derived(genotype).eval()


@torch.no_grad()
def block_costs(
    derived: nn.Module, probe: Tensor, indices: Sequence[int]
) -> dict[int, dict[str, float]]:
    """Parameters and FLOPs (on ``probe``) of the derived network's blocks ``indices``."""
    features = derived.block_features(probe)
    blocks = derived.blocks()
    return {
        b: {
            "params": float(count_parameters(blocks[b])),
            "flops": float(count_flops(blocks[b], tuple(features[j] for j in blocks[b].inputs))),
        }
        for b in indices
    }


@dataclass(frozen=True)
class CandidateCosts:
    """The costs of every candidate of every unit, measured on first use (not checkpointed)."""

    student: StudentBlocks
    #: the example per-example costs are measured on
    probe: Tensor
    #: unit index -> its measured costs
    measured: dict[int, UnitCosts] = field(default_factory=dict, repr=False, compare=False)

    def of_unit(self, run: Run, u: int) -> UnitCosts:
        """Per candidate of unit ``u``, per block of the unit: params, FLOPs (and memory)."""
        if u not in self.measured:
            student = self.student
            unit = student.units[u]
            reference = student.first_candidates
            costs = []
            for candidate in student.candidates[u]:
                chosen = list(reference)
                chosen[u] = candidate
                derived = derived_network(run, student, chosen)
                per_block = block_costs(derived, self.probe, unit.blocks)
                if has_cost_model(student.network):
                    weights = candidate_weights(
                        [candidate], student.specs, run.dtype or torch.float32, run.device
                    )
                    memory = float(student.network.expected_cost(weights, kind="memory"))
                    # a cost model prices rows, which the unit's blocks share
                    for k, b in enumerate(unit.blocks):
                        per_block[b]["memory"] = memory if k == 0 else 0.0
                costs.append([per_block[b] for b in unit.blocks])
            self.measured[u] = costs
        return self.measured[u]


def fixed_costs(run: Run, student: StudentBlocks, probe: Tensor) -> dict[str, float]:
    """The cost of everything outside the blocks (stem, head): total minus the blocks' sum."""
    derived = derived_network(run, student, student.first_candidates)
    per_block = block_costs(derived, probe, range(len(student.blocks)))
    with torch.no_grad():
        flops = count_flops(derived, probe)
    return {
        "params": count_parameters(derived) - sum(c["params"] for c in per_block.values()),
        "flops": flops - sum(c["flops"] for c in per_block.values()),
        "memory": 0.0,
    }


# -- combination ----------------------------------------------------------------------------
def unit_table(
    run: Run,
    student: StudentBlocks,
    costs: CandidateCosts,
    rankings: Rankings,
    rank_by: str,
    cost_kind: str,
) -> list[list[Candidate]]:
    """Per unit, per candidate: summed ``rank_by`` loss and ``cost_kind`` over the unit's blocks."""
    table = []
    for u, unit in enumerate(student.units):
        unit_costs = costs.of_unit(run, u)
        entries = []
        for k in range(len(student.candidates[u])):
            loss = sum(rankings[b][k][rank_by] for b in unit.blocks)
            cost = sum(c[cost_kind] for c in unit_costs[k])
            entries.append(Candidate(loss, cost, k))
        table.append(entries)
    return table


def combination_budget(
    budget: float | None,
    teacher_fraction: float | None,
    teacher_info: Mapping[str, Any],
    cost_kind: str,
) -> float | None:
    """The largest total cost: ``budget``, or ``teacher_fraction`` of the teacher's, or no limit."""
    if teacher_fraction is None:
        return budget
    teacher = {"params": teacher_info["parameters"], "flops": teacher_info["flops"]}
    return teacher_fraction * teacher[cost_kind]


def front_entry(
    run: Run,
    student: StudentBlocks,
    costs: CandidateCosts,
    rankings: Rankings,
    choice: Sequence[int],
    fixed: Mapping[str, float],
    rank_by: str,
    cost_kind: str,
) -> dict[str, Any]:
    """One combination (a candidate index per unit) as ``pareto.json`` lists it."""
    totals = dict(fixed)
    for u, k in enumerate(choice):
        for per_block in costs.of_unit(run, u)[k]:
            for kind, value in per_block.items():
                totals[kind] += value
    chosen = [student.candidates[u][k] for u, k in enumerate(choice)]
    genotype = combined_genotype(chosen, student.specs, run.opset.name)
    loss = sum(
        rankings[b][k][rank_by] for u, k in enumerate(choice) for b in student.units[u].blocks
    )
    return {
        "loss": loss,
        "cost": totals[cost_kind],
        **{kind: totals[kind] for kind in cost_kinds(student.network)},
        "candidates": list(choice),
        "genotype": genotype.to_dict()["cells"],
    }


def combine(
    run: Run,
    student: StudentBlocks,
    costs: CandidateCosts,
    rankings: Rankings,
    *,
    rank_by: str,
    cost_kind: str,
    budget: float | None,
    stages: TeacherStages,
    distill: Sequence[DistillationBlock],
    recalibration: Callable[[int], Sequence[tuple[Tensor, ...]]],
) -> tuple[Genotype, dict[str, Any]]:
    """The exact optimum under ``budget``, with ``pareto.json`` written and its stitched metrics.

    Returns the genotype (with the run's config) and the summary's
    combination entries: ``budget``, ``fixed``, ``chosen``, ``front_size``
    and ``final`` (see :func:`stitched_metrics`, which recalibrates block
    ``i`` on ``recalibration(i)``).

    Raises
    ------
    UserInputError
        When ``budget`` is below the cheapest student.
    """
    table = unit_table(run, student, costs, rankings, rank_by, cost_kind)
    fixed = fixed_costs(run, student, costs.probe)
    cheapest = fixed[cost_kind] + sum(min(c.cost for c in unit) for unit in table)
    if budget is not None and budget < cheapest:
        raise UserInputError(
            f"budget {budget:g} ({cost_kind}) is below the cheapest student, "
            f"{cheapest:g}; raise strategy.budget or strategy.teacher_fraction"
        )
    limit = math.inf if budget is None else budget - fixed[cost_kind]
    best = combine_blocks(table, limit)
    front = pareto_front(table)
    chosen = [student.candidates[u][k] for u, k in enumerate(best.choice)]
    genotype = combined_genotype(chosen, student.specs, run.opset.name, run.config.to_dict())

    def entry(choice: Sequence[int]) -> dict[str, Any]:
        return front_entry(run, student, costs, rankings, choice, fixed, rank_by, cost_kind)

    entries = [entry(combination.choice) for combination in front]
    result: dict[str, Any] = {"budget": budget, "fixed": fixed, "chosen": entry(best.choice)}
    if run.writes:
        run.directory.write_json(
            "pareto.json",
            {
                "cost": cost_kind,
                "rank_by": rank_by,
                "budget": budget,
                "fixed_cost": fixed,
                "units": [
                    {
                        "blocks": [student.blocks[b].name for b in unit.blocks],
                        "rows": {name: list(rows) for name, rows in unit.rows},
                        "space_size": student.space_sizes[u],
                        "candidates": len(student.candidates[u]),
                    }
                    for u, unit in enumerate(student.units)
                ],
                "chosen": result["chosen"],
                "front": entries,
            },
        )
    result["front_size"] = len(entries)
    result["final"] = stitched_metrics(run, student, stages, distill, chosen, recalibration)
    run.log({"type": "combination", **result["chosen"], "final": result["final"]})
    return genotype, result


# -- final metrics --------------------------------------------------------------------------
def stitched_metrics(
    run: Run,
    student: StudentBlocks,
    stages: TeacherStages,
    distill: Sequence[DistillationBlock],
    chosen: Sequence[UnitCandidate],
    recalibration: Callable[[int], Sequence[tuple[Tensor, ...]]],
) -> dict[str, Any]:
    """Validation metrics of the chosen blocks between the teacher's stem and head.

    Block ``i``'s batch-norm statistics are re-estimated on the teacher
    inputs ``recalibration(i)`` for the evaluation and restored afterwards.
    """
    weights = candidate_weights(chosen, student.specs, run.dtype or torch.float32, run.device)
    stitched = _Stitched(stages, distill, weights)
    with contextlib.ExitStack() as stack:
        for i, block in enumerate(distill):
            stack.enter_context(preserved_buffers(block))
            recalibrate_batch_norm(block, recalibration(i), weights)
        reseed_data_transforms(run, stream_seed(run.config.seed, "dna validation"))
        return run.evaluate(stitched)


class _Stitched(nn.Module):
    """The teacher with its stages replaced by the chosen student blocks (in its space)."""

    def __init__(
        self,
        teacher: TeacherStages,
        blocks: Sequence[DistillationBlock],
        weights: Mapping[str, Tensor],
    ) -> None:
        super().__init__()
        self.teacher = teacher
        self.blocks = nn.ModuleList(blocks)
        self.weights = dict(weights)

    def forward(self, x: Tensor, arch_weights: Mapping[str, Tensor] | None = None) -> Tensor:
        def student(t0: Tensor) -> Tensor:
            features = [t0]
            for distill in self.blocks:
                inputs = [features[j] for j in distill.block.inputs]
                features.append(distill(inputs, self.weights))
            return features[-1]

        return self.teacher.stitched(x, student)
