"""Ranking the candidates of a trained block by how well they reproduce the teacher.

Once block ``i`` is trained, every candidate of its choice unit (or the
unit's uniform samples) is scored with the block's shared weights
(:func:`rank_block`): its feature losses (both of
:data:`~manifold_nas.strategies.dna.distillation.FEATURE_LOSSES`, DNA's
relative L1 by default for ``rank_by``) averaged over the first
``ranking_batches`` batches of the validation split, after re-estimating
batch-norm statistics with that candidate on ``recalibration_batches``
training batches, and restoring the statistics afterwards
(:func:`block_losses`).

Every candidate of a block is scored on the same data: :class:`BlockBatches`
computes a block's teacher inputs and targets once, on first use, and keeps
them until another block asks (volumetric patches would be drawn afresh on
every read), each pass reseeded on its own so a resumed run scores on the
same data. Rows are kept in candidate order; a block's ranking, best first
(ties by candidate index), is written to ``blocks/<i>.csv`` with both
losses and the candidate's costs (:func:`write_ranking`).
:func:`score_genotypes` scores whole genotypes the same way, as the sum of
their blocks' losses.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import torch
from torch import Tensor
from tqdm.auto import tqdm

from manifold_nas.cost.measure import preserved_buffers
from manifold_nas.run.context import Run, stream_seed
from manifold_nas.space.cell import ArchSpec
from manifold_nas.space.contracts import NetworkBlock
from manifold_nas.space.genotype import Genotype
from manifold_nas.strategies.dna.combination import CandidateCosts, cost_kinds
from manifold_nas.strategies.dna.data_passes import reseed_data_transforms
from manifold_nas.strategies.dna.distillation import (
    FEATURE_LOSSES,
    DistillationBlock,
    block_targets,
)
from manifold_nas.strategies.dna.teacher import TeacherStages
from manifold_nas.strategies.dna.units import (
    StudentBlocks,
    UnitCandidate,
    candidate_weights,
    unit_candidate_of,
)
from manifold_nas.strategies.one_shot import recalibrate_batch_norm, recalibration_inputs

__all__ = ["BlockBatches", "block_losses", "rank_block", "score_genotypes", "write_ranking"]

_Computed = TypeVar("_Computed")


class BlockBatches:
    """The teacher data a block is ranked on, computed once per block, one block at a time.

    Parameters
    ----------
    stages, blocks:
        The teacher and the student blocks whose inputs and targets are taken.
    recalibration_batches:
        Training batches that re-estimate batch-norm statistics.
    ranking_batches:
        Validation batches candidates are scored on (``None``: all).
    """

    def __init__(
        self,
        stages: TeacherStages,
        blocks: Sequence[NetworkBlock],
        recalibration_batches: int,
        ranking_batches: int | None,
    ) -> None:
        self.stages = stages
        self.blocks = blocks
        self.recalibration_batches = recalibration_batches
        self.ranking_batches = ranking_batches
        self._block: int | None = None
        self._computed: dict[str, Any] = {}

    def _once(self, i: int, what: str, compute: Callable[[], _Computed]) -> _Computed:
        """``compute()`` once per block (the cache holds one block at a time)."""
        if self._block != i:
            self._computed, self._block = {}, i
        if what not in self._computed:
            self._computed[what] = compute()
        return self._computed[what]

    def recalibration(self, run: Run, i: int) -> list[tuple[Tensor, ...]]:
        """The teacher inputs of block ``i`` on the recalibration batches (the same for all)."""

        def compute() -> list[tuple[Tensor, ...]]:
            seed = stream_seed(run.config.seed, "dna recalibration")
            reseed_data_transforms(run, seed)
            xs = recalibration_inputs(run, self.recalibration_batches, seed)
            return [block_targets(self.stages, self.blocks, i, x)[0] for x in xs]

        return self._once(i, "recalibration", compute)

    def validation(self, run: Run, i: int) -> list[tuple[tuple[Tensor, ...], Tensor]]:
        """Block ``i``'s (inputs, target) on the ranking batches of the validation split."""

        def compute() -> list[tuple[tuple[Tensor, ...], Tensor]]:
            reseed_data_transforms(run, stream_seed(run.config.seed, "dna ranking"))
            pairs = []
            for batch in run.eval_loader(run.valid_set, run.config.search.batch_size):
                if self.ranking_batches is not None and len(pairs) >= self.ranking_batches:
                    break
                pairs.append(block_targets(self.stages, self.blocks, i, run.inputs(batch)[0]))
            return pairs

        return self._once(i, "validation", compute)


def block_losses(
    run: Run,
    i: int,
    candidate: UnitCandidate,
    distill: DistillationBlock,
    specs: Mapping[str, ArchSpec],
    batches: BlockBatches,
) -> dict[str, float]:
    """Both feature losses of block ``i`` (``distill``) with ``candidate``, averaged over batches.

    Batch-norm statistics are re-estimated with the candidate on the
    block's recalibration inputs and restored afterwards.
    """
    recalibration, pairs = batches.recalibration(run, i), batches.validation(run, i)
    weights = candidate_weights([candidate], specs, run.dtype or torch.float32, run.device)
    sums = dict.fromkeys(FEATURE_LOSSES, 0.0)
    was_training = distill.training
    with preserved_buffers(distill), torch.no_grad():
        recalibrate_batch_norm(distill, recalibration, weights)
        distill.eval()
        for inputs, target in pairs:
            prediction = distill(inputs, weights)
            for name, fn in FEATURE_LOSSES.items():
                sums[name] += float(fn(prediction, target))
    distill.train(was_training)
    return {name: value / max(len(pairs), 1) for name, value in sums.items()}


def rank_block(
    run: Run,
    i: int,
    student: StudentBlocks,
    distill: DistillationBlock,
    batches: BlockBatches,
    costs: CandidateCosts,
    rank_by: str,
) -> list[dict[str, Any]]:
    """Score every candidate of block ``i``'s unit, log the best, write ``blocks/<i>.csv``.

    Returns one row per candidate, in candidate order: its ``index`` and
    both feature losses.
    """
    candidates = student.candidates[student.unit_of[i]]
    rows = []
    for k, candidate in enumerate(
        tqdm(candidates, desc=f"rank block {i + 1}", disable=run.quiet, leave=False)
    ):
        losses = block_losses(run, i, candidate, distill, student.specs, batches)
        rows.append({"index": k, **losses})
    best = min(rows, key=lambda r: (r[rank_by], r["index"]))
    run.log(
        {
            "type": "block_ranked",
            "block": i,
            "candidates": len(rows),
            "best": candidates[best["index"]].label,
            f"best_{rank_by}": best[rank_by],
        }
    )
    write_ranking(run, i, rows, student, costs, rank_by)
    return rows


def write_ranking(
    run: Run,
    i: int,
    rows: Sequence[Mapping[str, Any]],
    student: StudentBlocks,
    costs: CandidateCosts,
    rank_by: str,
) -> None:
    """``blocks/<i>.csv``: block ``i``'s candidates best first, with their losses and costs."""
    if not run.writes:
        return
    u = student.unit_of[i]
    position = student.units[u].blocks.index(i)
    unit_costs = costs.of_unit(run, u)
    kinds = cost_kinds(student.network)
    ranked = sorted(rows, key=lambda r: (r[rank_by], r["index"]))
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["rank", "index", "candidate", *FEATURE_LOSSES, *kinds])
    for rank, row in enumerate(ranked, start=1):
        cost = unit_costs[row["index"]][position]
        writer.writerow(
            [rank, row["index"], student.candidates[u][row["index"]].label]
            + [repr(row[name]) for name in FEATURE_LOSSES]
            + [int(cost[k]) if float(cost[k]).is_integer() else cost[k] for k in kinds]
        )
    run.directory.subdirectory("blocks")
    run.directory.write_text(f"blocks/{i}.csv", text.getvalue())


def score_genotypes(
    run: Run,
    genotypes: Sequence[Genotype],
    student: StudentBlocks,
    distill: Sequence[DistillationBlock],
    batches: BlockBatches,
    rank_by: str,
) -> list[float]:
    """The summed ``rank_by`` block losses of whole genotypes (after the blocks are trained)."""
    totals = [0.0] * len(genotypes)
    for i in range(len(student.blocks)):
        unit = student.units[student.unit_of[i]]
        for g, genotype in enumerate(genotypes):
            candidate = unit_candidate_of(genotype, unit, student.specs)
            losses = block_losses(run, i, candidate, distill[i], student.specs, batches)
            totals[g] += losses[rank_by]
    return totals
