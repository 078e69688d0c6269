r"""``dna``: block-wise supervised search with a teacher (DNA; Li et al., CVPR 2020).

A trained *teacher* is cut into ``N`` stages and the student's search space
into ``N`` matching blocks; every block is trained to reproduce its
teacher stage, every candidate of every block is ranked by how well it does,
and one candidate per block is combined, exactly, under a cost budget.

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

**Training** (DNA's ``guide_input``): block ``i`` learns to map the teacher's
features at its input boundaries to the teacher's feature ``t_{i+1}``, so
the blocks are independent. They are trained one after the other in this
process (not through :mod:`manifold_nas.strategies.multi_trial.backends`, whose workers would each
need the teacher and the student shipped to them), each for ``epochs``
epochs (default ``search.epochs``) over the weight split with the
``search:`` weight optimizer, schedule, batch size, gradient clipping and
step limit; each step draws one candidate uniformly (one op per kept edge,
``keep`` edges per node) and takes a step on ``loss`` (``mse``, DNA's
training loss, or ``relative_l1``).

**Ranking**: every candidate of a block's unit, or ``max_candidates_per_block``
uniform samples without replacement when the unit has more (DNA enumerates
its 6^4 = 1,296), is scored by its ``rank_by`` loss (DNA's relative L1
:math:`\operatorname{mean}|\hat Y - Y| / \operatorname{std}(Y)` by
default), averaged over the first ``ranking_batches`` batches of the
validation split, after re-estimating batch-norm statistics on
``recalibration_batches`` training batches with that candidate (the same
batches for every candidate; statistics restored afterwards). Each block's
ranking is written to ``blocks/<i>.csv`` with both losses, the candidate's
parameters and FLOPs in the derived network (per example), and, for a
network with a cost model, its memory cost.

**Combination** (:mod:`manifold_nas.strategies.dna.combiner`): per unit, a
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
each pass), so it does not depend on what ran before it in the process.

**SPD networks** are not supported: their blocks would need a BiMap adapter
and an AIRM or log-Euclidean feature loss, and the SPD networks of this
project are not block-wise yet.
"""

from __future__ import annotations

import contextlib
import csv
import io
import math
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import Subset
from tqdm.auto import tqdm

from manifold_nas.config import (
    Config,
    TrainSettings,
    check_count,
    is_finite_number,
    parse_config,
    split_name,
)
from manifold_nas.cost.measure import count_flops, count_parameters, preserved_buffers
from manifold_nas.errors import UserInputError
from manifold_nas.optim import build_optimizer
from manifold_nas.optim.state import load_optimizer_state
from manifold_nas.run.checkpoint import load_torch_file, save_torch_atomically
from manifold_nas.run.context import Run, build_network, stream_seed
from manifold_nas.space.contracts import NetworkBlock, check_blockwise, has_cost_model
from manifold_nas.space.genotype import Genotype
from manifold_nas.space.sampling import genotype_weights
from manifold_nas.strategies.base import Strategy, register_strategy
from manifold_nas.strategies.dna.combiner import Candidate, combine_blocks, pareto_front
from manifold_nas.strategies.dna.distillation import (
    FEATURE_LOSSES,
    DistillationBlock,
    FeatureAdapter,
    adapter_parameters,
)
from manifold_nas.strategies.dna.teacher import (
    TeacherSpec,
    TeacherStages,
    import_factory,
    load_teacher_run,
    parse_teacher_spec,
    teacher_stages,
)
from manifold_nas.strategies.dna.units import (
    ChoiceUnit,
    UnitCandidate,
    candidate_weights,
    choice_units,
    combined_genotype,
    unit_candidate_of,
    unit_candidates,
)
from manifold_nas.strategies.one_shot import (
    PathSampler,
    recalibrate_batch_norm,
    recalibration_inputs,
)

__all__ = ["COSTS", "BlockwiseDistillation"]

#: the cost kinds the combiner can budget
COSTS = ("params", "flops", "memory")


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
        self.teacher_ready = False
        self.teacher_training: dict[str, Any] | None = None
        self.teacher_history: list[dict[str, Any]] = []
        self.stage = 0
        self.epoch = 0
        self.block_state: dict[str, Any] | None = None
        self.block_history: list[dict[str, Any]] = []
        self.rankings: list[list[dict[str, Any]]] = []
        # results (recomputed, not checkpointed)
        self.result: dict[str, Any] = {}
        self._cache: dict[str, Any] = {}
        self._cache_block: int | None = None
        self._costs: dict[int, list[list[dict[str, float]]]] = {}

    # -- construction ---------------------------------------------------------------
    def setup(self, run: Run) -> None:
        if self.spec is None:
            raise UserInputError(
                "strategy dna needs a teacher: strategy.teacher = {run: RUN_DIR}, "
                "{network: NAME, epochs: N, options: {...}} or {module: 'pkg.mod:factory', ...}"
            )
        self.network = run.build_searchable().to(run.device)
        check_blockwise(self.network, str(run.config.network["name"]))
        self.specs = dict(self.network.arch_specs)
        self.blocks: list[NetworkBlock] = self.network.blocks()
        self.units: list[ChoiceUnit] = choice_units(self.blocks, self.specs)
        self.unit_of = {b: u for u, unit in enumerate(self.units) for b in unit.blocks}
        missing = [block.name for b, block in enumerate(self.blocks) if b not in self.unit_of]
        if missing:
            raise UserInputError(f"student block {missing[0]!r} owns no architecture rows")
        if self.cost_kind == "memory" and not has_cost_model(self.network):
            raise UserInputError(
                f"cost 'memory' needs a network with a cost model; "
                f"{run.config.network['name']!r} has none (use params or flops)"
            )
        self.candidates: list[list[UnitCandidate]] = []
        self.space_sizes: list[int] = []
        for u, unit in enumerate(self.units):
            rng = random.Random(stream_seed(run.config.seed, f"dna candidates {u}"))
            found, size = unit_candidates(
                unit, self.specs, run.opset.zero, self.max_candidates, rng
            )
            self.candidates.append(found)
            self.space_sizes.append(size)
        self.teacher_network, self.teacher_source = self._build_teacher(run)
        self.teacher: TeacherStages = teacher_stages(self.teacher_network, self.spec.stages)
        self.probe = self._probe_input(run)
        self.distill = self._build_adapters(run)

    def _build_teacher(self, run: Run) -> tuple[nn.Module, dict[str, Any]]:
        spec = self.spec
        if spec.source == "run":
            network, config = load_teacher_run(spec.target)
            if config["data"].get("name") != run.config.data.get("name"):
                raise UserInputError(
                    f"teacher run {spec.target} was trained on data {config['data'].get('name')!r}, "
                    f"not {run.config.data.get('name')!r}"
                )
            self.teacher_ready = True
            return network.to(run.device), {"run": spec.target}
        if spec.source == "network":
            self.teacher_config = self._teacher_config(run)
            network, _ = build_network(self.teacher_config, run.bundle)
            if getattr(network, "arch_specs", None):
                raise UserInputError(
                    f"teacher network {spec.target!r} is a search space; give a fixed network "
                    "or a retrained run directory"
                )
            self.teacher_ready = not spec.trains
            return network.to(run.device), {"network": spec.target, **spec.options}
        network = import_factory(spec.target)(**spec.options)
        if not isinstance(network, nn.Module):
            raise UserInputError(f"teacher.module {spec.target!r} did not return an nn.Module")
        if spec.weights is not None:
            network.load_state_dict(load_torch_file(spec.weights, "teacher weights"))
        if run.dtype is not None:
            network = network.to(run.dtype)
        self.teacher_ready = not spec.trains
        return network.to(run.device), {"module": spec.target, **spec.options}

    def _teacher_config(self, run: Run) -> Config:
        """The run's config with the teacher as its network and its training settings."""
        network = {
            "name": self.spec.target,
            "opset": run.config.network["opset"],
            **self.spec.options,
        }
        train = {
            **asdict(run.config.train),
            "network": {},
            "epochs": self.spec.epochs,
            **self.spec.train,
        }
        raw = {**run.config.to_dict(), "network": network, "train": train}
        return parse_config(raw, "strategy.teacher")

    def _teacher_settings(self, run: Run) -> TrainSettings:
        if self.spec.source == "network":
            return self.teacher_config.train
        train = {
            **asdict(run.config.train),
            "network": {},
            "epochs": self.spec.epochs,
            **self.spec.train,
        }
        raw = {"data": run.config.data, "network": run.config.network, "train": train}
        return parse_config(raw, "strategy.teacher").train

    def _probe_input(self, run: Run) -> Tensor:
        """One training example, the input every shape and per-example cost is measured on."""
        x, _ = run.inputs(next(iter(run.loader(run.weight_set, 1, False))))
        return x[:1]

    @torch.no_grad()
    def _build_adapters(self, run: Run) -> list[DistillationBlock]:
        teacher = [tuple(t.shape[1:]) for t in self.teacher.features(self.probe)]
        if len(teacher) != len(self.blocks) + 1:
            raise UserInputError(
                f"the teacher has {len(teacher) - 1} stages ({', '.join(self.teacher.describe())}) "
                f"but the student has {len(self.blocks)} blocks "
                f"({', '.join(b.name for b in self.blocks)}); set strategy.teacher.stages to "
                f"{len(self.blocks) + 1} boundary names"
            )
        weights = candidate_weights(
            [c[0] for c in self.candidates], self.specs, run.dtype or torch.float32, run.device
        )
        with preserved_buffers(self.network):
            self.network.eval()
            student = [tuple(t.shape[1:]) for t in self.network.block_features(self.probe, weights)]
            self.network.train()
        distill = []
        for i, block in enumerate(self.blocks):
            inputs = [FeatureAdapter(teacher[j], student[j]) for j in block.inputs]
            output = FeatureAdapter(student[i + 1], teacher[i + 1])
            adapters = DistillationBlock(block, inputs, output)
            adapters.adapters.to(device=run.device, dtype=run.dtype or torch.float32)
            distill.append(adapters)
        return distill

    # -- state ------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        trained_teacher = self.spec.trains and self.teacher_ready
        return {
            "teacher_ready": self.teacher_ready,
            "teacher": self.teacher_network.state_dict() if trained_teacher else None,
            "teacher_training": self.teacher_training,
            "teacher_history": self.teacher_history,
            "stage": self.stage,
            "epoch": self.epoch,
            "block_state": self.block_state,
            "block_history": self.block_history,
            "network": self.network.state_dict(),
            "adapters": [d.adapters.state_dict() for d in self.distill],
            "rankings": self.rankings,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.teacher_ready = bool(state["teacher_ready"])
        if state["teacher"] is not None:
            self.teacher_network.load_state_dict(state["teacher"])
        self.teacher_training = state["teacher_training"]
        self.teacher_history = list(state["teacher_history"])
        self.stage = int(state["stage"])
        self.epoch = int(state["epoch"])
        self.block_state = state["block_state"]
        self.block_history = list(state["block_history"])
        self.network.load_state_dict(state["network"])
        for d, adapters in zip(self.distill, state["adapters"], strict=True):
            d.adapters.load_state_dict(adapters)
        self.rankings = [list(rows) for rows in state["rankings"]]

    def progress(self) -> str:
        if not self.teacher_ready:
            return f"after teacher epoch {len(self.teacher_history)}"
        return f"after block {self.stage} of {len(self.blocks)} (epoch {self.epoch})"

    # -- the search ----------------------------------------------------------------------
    def run(self, run: Run) -> Genotype:
        if not self.teacher_ready:
            self.train_teacher(run)
        self.teacher_info = self._teacher_info(run)
        for i in range(self.stage, len(self.blocks)):
            self.train_block(run, i)
            self.rank_block(run, i)
            self.stage = i + 1
            run.checkpoint(self)
        return self.combine(run)

    def train_teacher(self, run: Run) -> None:
        """Train the teacher on the whole training set, one checkpoint per epoch."""
        settings = self._teacher_settings(run)

        def reseed(epoch: int) -> None:
            _reseed_data_transforms(run, stream_seed(run.config.seed, f"dna teacher {epoch}"))

        def checkpoint(state: dict[str, Any]) -> None:
            record = {"type": "teacher_epoch", **state["history"][-1]}
            run.log(record)
            self.teacher_history.append(record)
            self.teacher_training = state
            reseed(len(self.teacher_history))
            run.checkpoint(self)

        reseed(len(self.teacher_history))
        run.train(
            self.teacher_network,
            settings.epochs,
            settings=settings,
            train_set=run.bundle.train,
            loader_seed=stream_seed(run.config.seed, "dna teacher"),
            desc="teacher",
            resume=self.teacher_training,
            checkpoint=checkpoint,
        )
        self.teacher_network.eval()
        self.teacher_ready = True
        self.teacher_training = None
        self._save_teacher(run, settings)
        run.checkpoint(self)

    def _save_teacher(self, run: Run, settings: TrainSettings) -> None:
        """The trained teacher as a run directory of its own (``RUN/teacher``)."""
        if not run.writes:
            return
        folder = run.directory.subdirectory("teacher")
        state = self.teacher_network.state_dict()
        if self.spec.source == "network":
            genotype = Genotype(run.opset.name, {}, config=self.teacher_config.to_dict())
            genotype.save(folder / "genotype.json")
            (folder / "retrain").mkdir(exist_ok=True)
            save_torch_atomically(state, folder / "retrain" / "model.pt")
        else:
            save_torch_atomically(state, folder / "model.pt")
        run.directory.write_json(
            "teacher/summary.json",
            {
                "source": self.teacher_source,
                "epochs": settings.epochs,
                "history": self.teacher_history,
            },
        )

    @torch.no_grad()
    def _teacher_info(self, run: Run) -> dict[str, Any]:
        _reseed_data_transforms(run, stream_seed(run.config.seed, "dna validation"))
        return {
            "source": self.teacher_source,
            "parameters": count_parameters(self.teacher_network),
            "flops": count_flops(self.teacher_network, self.probe),
            "stages": self.teacher.describe(),
            "valid": run.evaluate(self.teacher_network),
            "valid_note": "the teacher trains on the whole training set, validation split included",
        }

    # -- one block ------------------------------------------------------------------------
    def _block_epochs(self, run: Run) -> int:
        return self.epochs if self.epochs is not None else run.config.search.epochs

    def _targets(self, i: int, x: Tensor) -> tuple[tuple[Tensor, ...], Tensor]:
        """The teacher features block ``i`` reads, and its target ``t_{i+1}``."""
        features = self.teacher.features(x)
        return tuple(features[j] for j in self.blocks[i].inputs), features[i + 1]

    def train_block(self, run: Run, i: int) -> None:
        """Single-path training of block ``i`` on the teacher's features, one checkpoint per epoch."""
        s = run.config.search
        epochs = self._block_epochs(run)
        distill = self.distill[i]
        name, options = split_name(s.weight_optimizer)
        optimizer = build_optimizer(name, distill.parameters(), **options)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=max(1, epochs), eta_min=s.lr_min
        )
        sampler = PathSampler(
            self.specs, run.opset.name, run.opset.zero, None,
            stream_seed(run.config.seed, f"dna block {i} paths"),
        )  # fmt: skip
        if self.block_state is not None:
            load_optimizer_state(optimizer, self.block_state["optimizer"])
            scheduler.load_state_dict(self.block_state["scheduler"])
            sampler.load_state_dict(self.block_state["sampler"])
        loss_fn = FEATURE_LOSSES[self.loss]
        while self.epoch < epochs:
            started = time.perf_counter()
            distill.train()
            seed = stream_seed(run.config.seed, f"dna block {i} epoch {self.epoch}")
            _reseed_data_transforms(run, seed)
            batches = run.loader(run.weight_set, s.batch_size, True, seed)
            total, steps = 0.0, 0
            bar = tqdm(batches, desc=f"block {i + 1}/{len(self.blocks)} epoch {self.epoch + 1}/"
                       f"{epochs}", disable=run.quiet, leave=False)  # fmt: skip
            for step, batch in enumerate(bar):
                if s.max_steps_per_epoch is not None and step >= s.max_steps_per_epoch:
                    break
                inputs, target = self._targets(i, run.inputs(batch)[0])
                weights = genotype_weights(sampler.draw(), self.specs, run.dtype, run.device)
                optimizer.zero_grad(set_to_none=True)
                loss = loss_fn(distill(inputs, weights), target)
                loss.backward()
                if s.grad_clip:
                    nn.utils.clip_grad_norm_(list(distill.parameters()), s.grad_clip)
                optimizer.step()
                total += float(loss.detach())
                steps += 1
                bar.set_postfix(loss=f"{total / steps:.4f}")
            record = {
                "type": "block_epoch",
                "block": i,
                "epoch": self.epoch,
                "lr": optimizer.param_groups[0]["lr"],
                f"train_{self.loss}": total / max(steps, 1),
                "seconds": time.perf_counter() - started,
            }
            scheduler.step()
            run.log(record)
            self.block_history.append(record)
            self.epoch += 1
            self.block_state = {
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "sampler": sampler.state_dict(),
            }
            run.checkpoint(self)
        self.epoch = 0
        self.block_state = None

    def _cached(self, i: int, what: str, compute: Callable[[], Any]) -> Any:
        """``compute()`` once per block (the cache holds one block at a time)."""
        if self._cache_block != i:
            self._cache, self._cache_block = {}, i
        if what not in self._cache:
            self._cache[what] = compute()
        return self._cache[what]

    def _recalibration(self, run: Run, i: int) -> list[tuple[Tensor, ...]]:
        """The teacher inputs of block ``i`` on the recalibration batches (the same for all)."""

        def compute() -> list[tuple[Tensor, ...]]:
            seed = stream_seed(run.config.seed, "dna recalibration")
            _reseed_data_transforms(run, seed)
            xs = recalibration_inputs(run, self.recalibration_batches, seed)
            return [self._targets(i, x)[0] for x in xs]

        return self._cached(i, "recalibration", compute)

    def _validation(self, run: Run, i: int) -> list[tuple[tuple[Tensor, ...], Tensor]]:
        """Block ``i``'s (inputs, target) on the ranking batches of the validation split.

        Computed once per block, so every candidate is scored on the same
        batches (volumetric patches are drawn afresh on every read).
        """

        def compute() -> list[tuple[tuple[Tensor, ...], Tensor]]:
            _reseed_data_transforms(run, stream_seed(run.config.seed, "dna ranking"))
            pairs = []
            for batch in run.eval_loader(run.valid_set, run.config.search.batch_size):
                if self.ranking_batches is not None and len(pairs) >= self.ranking_batches:
                    break
                pairs.append(self._targets(i, run.inputs(batch)[0]))
            return pairs

        return self._cached(i, "validation", compute)

    def block_losses(self, run: Run, i: int, candidate: UnitCandidate) -> dict[str, float]:
        """Both feature losses of block ``i`` with ``candidate``, batch norm recalibrated."""
        recalibration, pairs = self._recalibration(run, i), self._validation(run, i)
        distill = self.distill[i]
        weights = candidate_weights([candidate], self.specs, run.dtype or torch.float32, run.device)
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

    def rank_block(self, run: Run, i: int) -> None:
        """Score every candidate of block ``i``'s unit; the rows are kept in candidate order."""
        candidates = self.candidates[self.unit_of[i]]
        rows = []
        for k, candidate in enumerate(
            tqdm(candidates, desc=f"rank block {i + 1}", disable=run.quiet, leave=False)
        ):
            rows.append({"index": k, **self.block_losses(run, i, candidate)})
        self.rankings.append(rows)
        best = min(rows, key=lambda r: (r[self.rank_by], r["index"]))
        run.log(
            {
                "type": "block_ranked",
                "block": i,
                "candidates": len(rows),
                "best": candidates[best["index"]].label,
                f"best_{self.rank_by}": best[self.rank_by],
            }
        )
        self._write_ranking(run, i)

    def score_genotypes(self, run: Run, genotypes: Sequence[Genotype]) -> list[float]:
        """The summed ``rank_by`` block losses of whole genotypes (after the blocks are trained)."""
        totals = [0.0] * len(genotypes)
        for i in range(len(self.blocks)):
            unit = self.units[self.unit_of[i]]
            for g, genotype in enumerate(genotypes):
                candidate = unit_candidate_of(genotype, unit, self.specs)
                totals[g] += self.block_losses(run, i, candidate)[self.rank_by]
        return totals

    # -- costs ----------------------------------------------------------------------------
    def _derived(self, run: Run, chosen: Sequence[UnitCandidate]) -> nn.Module:
        genotype = combined_genotype(chosen, self.specs, run.opset.name)
        with torch.random.fork_rng(devices=[run.device] if run.device.type == "cuda" else []):
            return run.build_derived(genotype).eval()

    @torch.no_grad()
    def _block_costs(
        self, run: Run, derived: nn.Module, indices: Sequence[int]
    ) -> dict[int, dict[str, float]]:
        features = derived.block_features(self.probe)
        blocks = derived.blocks()
        return {
            b: {
                "params": float(count_parameters(blocks[b])),
                "flops": float(
                    count_flops(blocks[b], tuple(features[j] for j in blocks[b].inputs))
                ),
            }
            for b in indices
        }

    def unit_costs(self, run: Run, u: int) -> list[list[dict[str, float]]]:
        """Per candidate of unit ``u``, per block of the unit: params, FLOPs (and memory)."""
        if u not in self._costs:
            reference = [c[0] for c in self.candidates]
            unit = self.units[u]
            costs = []
            for candidate in self.candidates[u]:
                chosen = list(reference)
                chosen[u] = candidate
                per_block = self._block_costs(run, self._derived(run, chosen), unit.blocks)
                if has_cost_model(self.network):
                    weights = candidate_weights(
                        [candidate], self.specs, run.dtype or torch.float32, run.device
                    )
                    memory = float(self.network.expected_cost(weights, kind="memory"))
                    # a cost model prices rows, which the unit's blocks share
                    for k, b in enumerate(unit.blocks):
                        per_block[b]["memory"] = memory if k == 0 else 0.0
                costs.append([per_block[b] for b in unit.blocks])
            self._costs[u] = costs
        return self._costs[u]

    def fixed_costs(self, run: Run) -> dict[str, float]:
        """The cost of everything outside the blocks (stem, head): total minus the blocks' sum."""
        derived = self._derived(run, [c[0] for c in self.candidates])
        per_block = self._block_costs(run, derived, range(len(self.blocks)))
        with torch.no_grad():
            flops = count_flops(derived, self.probe)
        return {
            "params": count_parameters(derived) - sum(c["params"] for c in per_block.values()),
            "flops": flops - sum(c["flops"] for c in per_block.values()),
            "memory": 0.0,
        }

    def _write_ranking(self, run: Run, i: int) -> None:
        if not run.writes:
            return
        u = self.unit_of[i]
        position = self.units[u].blocks.index(i)
        costs = self.unit_costs(run, u)
        kinds = ["params", "flops"] + (["memory"] if has_cost_model(self.network) else [])
        rows = sorted(self.rankings[i], key=lambda r: (r[self.rank_by], r["index"]))
        text = io.StringIO()
        writer = csv.writer(text, lineterminator="\n")
        writer.writerow(["rank", "index", "candidate", *FEATURE_LOSSES, *kinds])
        for rank, row in enumerate(rows, start=1):
            cost = costs[row["index"]][position]
            writer.writerow(
                [rank, row["index"], self.candidates[u][row["index"]].label]
                + [repr(row[name]) for name in FEATURE_LOSSES]
                + [int(cost[k]) if float(cost[k]).is_integer() else cost[k] for k in kinds]
            )
        run.directory.subdirectory("blocks")
        run.directory.write_text(f"blocks/{i}.csv", text.getvalue())

    # -- combination ----------------------------------------------------------------------
    def unit_table(self, run: Run) -> list[list[Candidate]]:
        """Per unit, per candidate: summed ``rank_by`` loss and ``cost`` over the unit's blocks."""
        table = []
        for u, unit in enumerate(self.units):
            costs = self.unit_costs(run, u)
            entries = []
            for k in range(len(self.candidates[u])):
                loss = sum(self.rankings[b][k][self.rank_by] for b in unit.blocks)
                cost = sum(c[self.cost_kind] for c in costs[k])
                entries.append(Candidate(loss, cost, k))
            table.append(entries)
        return table

    def combine(self, run: Run) -> Genotype:
        """The exact optimum under the budget, the Pareto front, and the stitched metrics."""
        table = self.unit_table(run)
        fixed = self.fixed_costs(run)
        budget = self.budget
        if self.teacher_fraction is not None:
            teacher = {
                "params": self.teacher_info["parameters"],
                "flops": self.teacher_info["flops"],
            }
            budget = self.teacher_fraction * teacher[self.cost_kind]
        cheapest = fixed[self.cost_kind] + sum(min(c.cost for c in unit) for unit in table)
        if budget is not None and budget < cheapest:
            raise UserInputError(
                f"budget {budget:g} ({self.cost_kind}) is below the cheapest student, "
                f"{cheapest:g}; raise strategy.budget or strategy.teacher_fraction"
            )
        limit = math.inf if budget is None else budget - fixed[self.cost_kind]
        best = combine_blocks(table, limit)
        front = pareto_front(table)
        chosen = [self.candidates[u][k] for u, k in enumerate(best.choice)]
        genotype = combined_genotype(chosen, self.specs, run.opset.name, run.config.to_dict())
        entries = [self._front_entry(run, combination.choice, fixed) for combination in front]
        self.result = {
            "budget": budget,
            "fixed": fixed,
            "chosen": self._front_entry(run, best.choice, fixed),
        }
        if run.writes:
            run.directory.write_json(
                "pareto.json",
                {
                    "cost": self.cost_kind,
                    "rank_by": self.rank_by,
                    "budget": budget,
                    "fixed_cost": fixed,
                    "units": [
                        {
                            "blocks": [self.blocks[b].name for b in unit.blocks],
                            "rows": {name: list(rows) for name, rows in unit.rows},
                            "space_size": self.space_sizes[u],
                            "candidates": len(self.candidates[u]),
                        }
                        for u, unit in enumerate(self.units)
                    ],
                    "chosen": self.result["chosen"],
                    "front": entries,
                },
            )
        self.result["front_size"] = len(entries)
        self.result["final"] = self._stitched_metrics(run, chosen)
        run.log({"type": "combination", **self.result["chosen"], "final": self.result["final"]})
        return genotype

    def _front_entry(
        self, run: Run, choice: Sequence[int], fixed: Mapping[str, float]
    ) -> dict[str, Any]:
        totals = dict(fixed)
        for u, k in enumerate(choice):
            for per_block in self.unit_costs(run, u)[k]:
                for kind, value in per_block.items():
                    totals[kind] += value
        chosen = [self.candidates[u][k] for u, k in enumerate(choice)]
        genotype = combined_genotype(chosen, self.specs, run.opset.name)
        loss = sum(
            self.rankings[b][k][self.rank_by]
            for u, k in enumerate(choice)
            for b in self.units[u].blocks
        )
        kinds = ["params", "flops"] + (["memory"] if has_cost_model(self.network) else [])
        return {
            "loss": loss,
            "cost": totals[self.cost_kind],
            **{kind: totals[kind] for kind in kinds},
            "candidates": list(choice),
            "genotype": genotype.to_dict()["cells"],
        }

    def _stitched_metrics(self, run: Run, chosen: Sequence[UnitCandidate]) -> dict[str, Any]:
        """Validation metrics of the chosen blocks between the teacher's stem and head."""
        weights = candidate_weights(chosen, self.specs, run.dtype or torch.float32, run.device)
        stitched = _Stitched(self.teacher, self.distill, weights)
        with contextlib.ExitStack() as stack:
            for i, distill in enumerate(self.distill):
                stack.enter_context(preserved_buffers(distill))
                recalibrate_batch_norm(distill, self._recalibration(run, i), weights)
            _reseed_data_transforms(run, stream_seed(run.config.seed, "dna validation"))
            return run.evaluate(stitched)

    def summary(self, run: Run) -> dict[str, Any]:
        chosen = self.result.get("chosen", {})
        return {
            "final": self.result.get("final", {}),
            "final_metrics": "stitched: the chosen distilled blocks between the teacher's first "
            "boundary and its head, batch norm recalibrated",
            "teacher": getattr(self, "teacher_info", {}),
            "blocks": [
                {
                    "name": block.name,
                    "reads": list(block.inputs),
                    "unit": self.unit_of[i],
                    "space_size": self.space_sizes[self.unit_of[i]],
                    "ranked": len(self.candidates[self.unit_of[i]]),
                    "exhaustive": len(self.candidates[self.unit_of[i]])
                    == self.space_sizes[self.unit_of[i]],
                }
                for i, block in enumerate(self.blocks)
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
                "supernet_weights": count_parameters(self.network),
                "adapters": adapter_parameters(self.distill),
                "teacher": count_parameters(self.teacher_network),
            },
        }


def _reseed_data_transforms(run: Run, seed: int) -> None:
    # Randomised data transforms (MONAI's patch crops) draw from a stream of
    # their own, which no checkpoint holds; reseeding it before every pass
    # over the data makes that pass the same in a resumed run.
    dataset = run.bundle.train
    while isinstance(dataset, Subset):
        dataset = dataset.dataset
    set_random_state = getattr(getattr(dataset, "transform", None), "set_random_state", None)
    if callable(set_random_state):
        set_random_state(seed=seed % (2**32))


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
