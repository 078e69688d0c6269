r"""``dna``: block-wise supervised search with a teacher (DNA; Li et al., CVPR 2020).

A trained *teacher* is cut into ``N`` stages and the student's search space
into ``N`` matching blocks; every block is trained to reproduce its
teacher stage, every candidate of every block is ranked by how well it does,
and one candidate per block is combined, exactly, under a cost budget.
The strategy object holds the options, what ``setup`` builds and the
checkpointed progress; each step is a module of its own (named below), whose
functions take what they read.

**Teacher** (:mod:`manifold_nas.strategies.dna.teacher`, option ``teacher``). One of

* ``{run: RUN_DIR}``: a retrained run directory of this project (its derived
  DARTS or V-NAS network cut at its own blocks, or a ``monai_unet`` at its
  levels);
* ``{network: NAME, options: {...}, epochs: E, train: {...}}``: a registered
  fixed network (``monai_unet``, ``simple_cnn``, ...) trained inside the
  search for ``E`` epochs on the whole training set with the config's
  ``train:`` settings updated by ``train``. It is trained once: its weights
  are checkpointed, and saved as ``teacher/genotype.json`` +
  ``teacher/retrain/model.pt``, a run directory of its own, so
  ``manifold-nas evaluate RUN/teacher`` tests it and ``teacher: {run:
  RUN/teacher}`` reuses it;
* ``{module: "package.module:factory", options: {...}, weights: FILE,
  epochs: E}``: any ``nn.Module``.

``stages`` (boundary module names, ``"<input>"`` for the input) cuts any
teacher; without it a block-wise network uses its blocks and a MONAI UNet its
levels. The teacher is frozen and run in eval mode.

**Student blocks** (:mod:`manifold_nas.strategies.dna.units`). The searchable network
must be block-wise: ``darts_cnn`` is cut into its cells (a cell reads the
teacher features of the two previous boundaries, as it reads the two
previous cells), ``vnas`` into its encoder levels and decoder levels (a
decoder block also reads the teacher feature at its encoder level, in place
of the skip connection). The teacher must have as many stages as the student
has blocks. Where a teacher feature and the block's input or output differ
in channels or resolution, a :class:`~manifold_nas.strategies.dna.distillation.FeatureAdapter`
(area resize + 1×1 convolution) bridges them; adapters are trained with
their block, are not part of the derived network, and are listed in the
summary (``adapters``). Blocks whose rows are shared (DARTS cells of one
type share a genotype) form one *choice unit*: one candidate is chosen for
all of them, and its loss and cost are summed over them.

**Training** (:mod:`manifold_nas.strategies.dna.block_training`, DNA's
``guide_input``): block ``i`` learns to map the teacher's
features at its input boundaries to the teacher's feature ``t_{i+1}``, so
the blocks are independent. They are trained one after the other in this
process (not through :mod:`manifold_nas.strategies.multi_trial.backends`, whose workers would each
need the teacher and the student shipped to them), each for ``epochs``
epochs (default ``search.epochs``) over the weight split with the
``search:`` weight optimizer, schedule, batch size, gradient clipping and
step limit; each step draws one candidate uniformly (one op per kept edge,
``keep`` edges per node) and takes a step on ``loss`` (``mse``, DNA's
training loss, or ``relative_l1``).

**Ranking** (:mod:`manifold_nas.strategies.dna.ranking`): every candidate of
a block's unit, or ``max_candidates_per_block`` uniform samples without
replacement when the unit has more (DNA enumerates its 6^4 = 1,296), is
scored by its ``rank_by`` loss (DNA's relative L1
:math:`\operatorname{mean}|\hat Y - Y| / \operatorname{std}(Y)` by
default), averaged over the first ``ranking_batches`` batches of the
validation split, after re-estimating batch-norm statistics on
``recalibration_batches`` training batches with that candidate (the same
batches for every candidate; statistics restored afterwards). Each block's
ranking is written to ``blocks/<i>.csv`` with both losses, the candidate's
parameters and FLOPs in the derived network (per example), and, for a
network with a cost model, its memory cost.

**Combination** (:mod:`manifold_nas.strategies.dna.combination`, over the exact
:mod:`manifold_nas.strategies.dna.combiner`): per unit, a
candidate's loss is the sum of its blocks' ``rank_by`` losses and its cost
the sum of its blocks' ``cost`` (``params``, ``flops`` or ``memory``, the
network's own memory model); the genotype minimising the total loss subject
to ``fixed + total cost <= budget`` is found exactly (``fixed``: the
stem and head, outside every block). ``budget`` is absolute, or
``teacher_fraction`` times the teacher's parameters or FLOPs, or absent (no
limit). The whole Pareto front of (cost, loss) — the DNA-a … d menu of one
search — is written to ``pareto.json`` with every genotype; the chosen one
is the run's genotype, which ``manifold-nas train RUN`` retrains from
scratch.

**Final metrics** (``final`` in the summary): the chosen blocks with their
distilled weights are *stitched* between the teacher's first boundary and
its head (each block reads the previous blocks' outputs in the teacher's
space through its adapters) and evaluated on the validation split, after
batch-norm recalibration; the teacher's own validation metrics are reported
next to them (``teacher``). A teacher trained inside the search has seen the
validation split (it trains on the whole training set).

**Resume**: a checkpoint is written after every teacher epoch, every block
epoch, and every ranked block; a resumed run ends with the same rankings and
genotype. Every pass over the data is seeded on its own (loader order, and
the random patch crops of volumetric data, whose stream is reseeded before
each pass; :mod:`manifold_nas.strategies.dna.data_passes`), so it does not
depend on what ran before it in the process.

**SPD networks** are not supported: their blocks would need a BiMap adapter
and an AIRM or log-Euclidean feature loss, and the SPD networks of this
project are not block-wise yet.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import torch

from manifold_nas.config import check_count, is_finite_number
from manifold_nas.cost.measure import count_parameters
from manifold_nas.errors import UserInputError
from manifold_nas.run.context import Run, stream_seed
from manifold_nas.space.contracts import check_blockwise, has_cost_model
from manifold_nas.space.genotype import Genotype
from manifold_nas.strategies.base import Strategy, register_strategy
from manifold_nas.strategies.dna.block_training import BlockProgress, train_block
from manifold_nas.strategies.dna.combination import (
    COSTS,
    CandidateCosts,
    combination_budget,
    combine,
)
from manifold_nas.strategies.dna.data_passes import probe_input
from manifold_nas.strategies.dna.distillation import (
    FEATURE_LOSSES,
    adapter_parameters,
    build_distillation_blocks,
)
from manifold_nas.strategies.dna.ranking import BlockBatches, rank_block, score_genotypes
from manifold_nas.strategies.dna.teacher import (
    TeacherProgress,
    TeacherSpec,
    build_teacher,
    describe_teacher,
    parse_teacher_spec,
    teacher_stages,
    train_teacher,
)
from manifold_nas.strategies.dna.units import student_blocks

__all__ = ["COSTS", "BlockwiseDistillation"]


@register_strategy("dna")
class BlockwiseDistillation(Strategy):
    """DNA: block-wise distillation from a teacher, exhaustive ranking, exact combination.

    Parameters
    ----------
    teacher:
        Where the teacher comes from (see the module docstring and
        :class:`~manifold_nas.strategies.dna.teacher.TeacherSpec`); required.
    loss:
        Training loss of a block: ``"mse"`` (DNA) or ``"relative_l1"``.
    rank_by:
        Loss that ranks candidates and is summed by the combiner:
        ``"relative_l1"`` (DNA) or ``"mse"``.
    epochs:
        Training epochs per block (``None``: ``search.epochs``).
    max_candidates_per_block:
        A unit with at most this many candidates is ranked exhaustively,
        a larger one on this many uniform samples.
    recalibration_batches:
        Training batches that re-estimate batch-norm statistics per candidate.
    ranking_batches:
        Validation batches each candidate is scored on (``None``: all).
    cost:
        ``"params"`` or ``"flops"`` (of the derived network) or
        ``"memory"`` (the network's own cost model).
    budget:
        Largest total cost of the chosen network (``None``: no limit).
    teacher_fraction:
        The budget as this fraction of the teacher's parameters or FLOPs
        (instead of ``budget``).
    """

    def __init__(
        self,
        teacher: dict[str, Any] | None = None,
        loss: str = "mse",
        rank_by: str = "relative_l1",
        epochs: int | None = None,
        max_candidates_per_block: int = 1296,
        recalibration_batches: int = 1,
        ranking_batches: int | None = None,
        cost: str = "params",
        budget: float | None = None,
        teacher_fraction: float | None = None,
    ) -> None:
        self.spec: TeacherSpec | None = None if teacher is None else parse_teacher_spec(teacher)
        for name, value in (("loss", loss), ("rank_by", rank_by)):
            if value not in FEATURE_LOSSES:
                raise ValueError(
                    f"{name} must be one of {', '.join(FEATURE_LOSSES)}, got {value!r}"
                )
        if epochs is not None:
            check_count("epochs", epochs, 1)
        check_count("max_candidates_per_block", max_candidates_per_block, 1)
        check_count("recalibration_batches", recalibration_batches, 0)
        if ranking_batches is not None:
            check_count("ranking_batches", ranking_batches, 1)
        if cost not in COSTS:
            raise ValueError(f"cost must be one of {', '.join(COSTS)}, got {cost!r}")
        for name, value in (("budget", budget), ("teacher_fraction", teacher_fraction)):
            if value is not None and not (is_finite_number(value) and value > 0):
                raise ValueError(f"{name} must be a positive number or null, got {value!r}")
        if budget is not None and teacher_fraction is not None:
            raise ValueError("give either budget or teacher_fraction, not both")
        if teacher_fraction is not None and cost == "memory":
            raise ValueError(
                "teacher_fraction needs cost params or flops (the teacher has no memory model)"
            )
        self.loss = loss
        self.rank_by = rank_by
        self.epochs = epochs
        self.max_candidates = int(max_candidates_per_block)
        self.recalibration_batches = int(recalibration_batches)
        self.ranking_batches = ranking_batches
        self.cost_kind = cost
        self.budget = None if budget is None else float(budget)
        self.teacher_fraction = None if teacher_fraction is None else float(teacher_fraction)
        # progress (the checkpointed state)
        self.teacher_progress = TeacherProgress()
        self.block_progress = BlockProgress()
        #: per ranked block, one row per candidate (in candidate order)
        self.rankings: list[list[dict[str, Any]]] = []
        # results (recomputed, not checkpointed)
        self.teacher_info: dict[str, Any] = {}
        self.result: dict[str, Any] = {}

    # -- construction ---------------------------------------------------------------
    def setup(self, run: Run) -> None:
        # the build order fixes the order the seeded random streams are drawn from
        if self.spec is None:
            raise UserInputError(
                "strategy dna needs a teacher: strategy.teacher = {run: RUN_DIR}, "
                "{network: NAME, epochs: N, options: {...}} or {module: 'pkg.mod:factory', ...}"
            )
        network = run.build_searchable().to(run.device)
        check_blockwise(network, str(run.config.network["name"]))
        self.student = student_blocks(
            network,
            run.opset.zero,
            self.max_candidates,
            lambda u: random.Random(stream_seed(run.config.seed, f"dna candidates {u}")),
        )
        if self.cost_kind == "memory" and not has_cost_model(network):
            raise UserInputError(
                f"cost 'memory' needs a network with a cost model; "
                f"{run.config.network['name']!r} has none (use params or flops)"
            )
        self.teacher = build_teacher(self.spec, run)
        self.teacher_progress.ready = self.teacher.ready
        self.stages = teacher_stages(self.teacher.network, self.spec.stages)
        self.probe = probe_input(run)
        self.distill = build_distillation_blocks(
            self.stages, self.student, self.probe, run.dtype or torch.float32, run.device
        )
        self.batches = BlockBatches(
            self.stages, self.student.blocks, self.recalibration_batches, self.ranking_batches
        )
        self.costs = CandidateCosts(self.student, self.probe)

    # -- state ------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        teacher, blocks = self.teacher_progress, self.block_progress
        trained_teacher = self.spec.trains and teacher.ready
        return {
            "teacher_ready": teacher.ready,
            "teacher": self.teacher.network.state_dict() if trained_teacher else None,
            "teacher_training": teacher.training,
            "teacher_history": teacher.history,
            "stage": blocks.stage,
            "epoch": blocks.epoch,
            "block_state": blocks.block_state,
            "block_history": blocks.history,
            "network": self.student.network.state_dict(),
            "adapters": [d.adapters.state_dict() for d in self.distill],
            "rankings": self.rankings,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["teacher"] is not None:
            self.teacher.network.load_state_dict(state["teacher"])
        self.teacher_progress = TeacherProgress(
            ready=bool(state["teacher_ready"]),
            training=state["teacher_training"],
            history=list(state["teacher_history"]),
        )
        self.block_progress = BlockProgress(
            stage=int(state["stage"]),
            epoch=int(state["epoch"]),
            block_state=state["block_state"],
            history=list(state["block_history"]),
        )
        self.student.network.load_state_dict(state["network"])
        for d, adapters in zip(self.distill, state["adapters"], strict=True):
            d.adapters.load_state_dict(adapters)
        self.rankings = [list(rows) for rows in state["rankings"]]

    def progress(self) -> str:
        if not self.teacher_progress.ready:
            return f"after teacher epoch {len(self.teacher_progress.history)}"
        blocks = self.block_progress
        return f"after block {blocks.stage} of {len(self.student.blocks)} (epoch {blocks.epoch})"

    # -- the search ----------------------------------------------------------------------
    def run(self, run: Run) -> Genotype:
        def checkpoint() -> None:
            run.checkpoint(self)

        if not self.teacher_progress.ready:
            train_teacher(run, self.spec, self.teacher, self.teacher_progress, checkpoint)
        self.teacher_info = describe_teacher(run, self.teacher, self.stages, self.probe)
        for i in range(self.block_progress.stage, len(self.student.blocks)):
            block = self.distill[i]
            train_block(
                run, i, block, self.student, self.stages,
                loss=self.loss, epochs=self.epochs, progress=self.block_progress,
                checkpoint=checkpoint,
            )  # fmt: skip
            self.rankings.append(
                rank_block(run, i, self.student, block, self.batches, self.costs, self.rank_by)
            )
            self.block_progress.stage = i + 1
            checkpoint()
        genotype, self.result = combine(
            run,
            self.student,
            self.costs,
            self.rankings,
            rank_by=self.rank_by,
            cost_kind=self.cost_kind,
            budget=combination_budget(
                self.budget, self.teacher_fraction, self.teacher_info, self.cost_kind
            ),
            stages=self.stages,
            distill=self.distill,
            recalibration=lambda i: self.batches.recalibration(run, i),
        )
        return genotype

    def score_genotypes(self, run: Run, genotypes: Sequence[Genotype]) -> list[float]:
        """The summed ``rank_by`` block losses of whole genotypes (after the blocks are trained)."""
        return score_genotypes(
            run, genotypes, self.student, self.distill, self.batches, self.rank_by
        )

    def summary(self, run: Run) -> dict[str, Any]:
        chosen = self.result.get("chosen", {})
        student = self.student
        return {
            "final": self.result.get("final", {}),
            "final_metrics": "stitched: the chosen distilled blocks between the teacher's first "
            "boundary and its head, batch norm recalibrated",
            "teacher": self.teacher_info,
            "blocks": [
                {
                    "name": block.name,
                    "reads": list(block.inputs),
                    "unit": student.unit_of[i],
                    "space_size": student.space_sizes[student.unit_of[i]],
                    "ranked": len(student.candidates[student.unit_of[i]]),
                    "exhaustive": len(student.candidates[student.unit_of[i]])
                    == student.space_sizes[student.unit_of[i]],
                }
                for i, block in enumerate(student.blocks)
            ],
            "adapters": [d.describe() for d in self.distill],
            "loss": self.loss,
            "rank_by": self.rank_by,
            "cost": {
                "kind": self.cost_kind,
                "value": chosen.get("cost"),
                "budget": self.result.get("budget"),
                "fixed": self.result.get("fixed", {}).get(self.cost_kind),
            },
            "block_loss": chosen.get("loss"),
            "pareto_front_size": self.result.get("front_size"),
            "training": "sequential, in this process",
            "parameters": {
                "supernet_weights": count_parameters(student.network),
                "adapters": adapter_parameters(self.distill),
                "teacher": count_parameters(self.teacher.network),
            },
        }
