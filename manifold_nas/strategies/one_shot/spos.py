"""``spos``: single-path one-shot search (Guo et al., ECCV 2020), the one-shot baseline.

Every weight step draws one path (``keep`` incoming edges per node, one
non-zero op per kept edge; ops uniform or from a ``prior``) and trains only
that path: the supernet is called with the path's one-hot weights, so only
its ops run and only their parameters receive gradients (optimizers skip
parameters without one). The weight optimizer, schedule, epochs, batch size,
gradient clipping and step limit come from the config's ``search:`` section,
as for ``bilevel``, so the two are compared at equal supernet steps; the
``relaxation``, ``selection`` and architecture-optimizer settings are unused.

**Final choice** (stated here because SPOS leaves it to the user): an
evolutionary search (or random search, ``final_search: random``) over
``final_paths`` distinct paths, each scored with its inherited weights on the
validation split after re-estimating the batch-norm statistics on
``recalibration_batches`` training batches (the same batches for every path),
as SPOS does; the best-scoring path is the run's genotype. With a ``budget``,
paths whose ``cost`` exceeds it are never drawn, neither for training nor in
the final search (SPOS's constrained sampling).

After every epoch the sampled-op frequencies are logged (as
``probabilities``, so ``manifold-nas plot`` draws them) and a checkpoint is
written; a resumed run draws the same paths and ends with the same genotype.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from manifold_nas.config import check_count, is_finite_number
from manifold_nas.cost.measure import count_parameters
from manifold_nas.optim.state import load_optimizer_state
from manifold_nas.run.context import Run, stream_seed
from manifold_nas.space.diagnostics import edge_entropies, parameter_free_count
from manifold_nas.space.genotype import Genotype
from manifold_nas.space.sampling import genotype_weights
from manifold_nas.strategies.base import Strategy, register_strategy
from manifold_nas.strategies.one_shot.paths import (
    FINAL_SEARCHES,
    PathCost,
    PathSampler,
    check_cost_kind,
    check_prior,
    evaluate_path,
    path_from_cells,
    recalibration_inputs,
    search_paths,
)

__all__ = ["SinglePathOneShot"]


@register_strategy("spos")
class SinglePathOneShot(Strategy):
    """Single-path one-shot training, then a search over paths with inherited weights.

    Parameters
    ----------
    prior:
        Op name -> weight of the op distribution per edge (``None``: uniform).
    final_search:
        ``"evolution"`` or ``"random"`` (see the module docstring).
    final_paths:
        Distinct paths scored by the final search.
    population:
        Evolution's initial random population (its parents are the best half).
    mutation:
        Evolution's per-node and per-op redraw probability.
    recalibration_batches:
        Training batches that re-estimate batch-norm statistics before a
        path is scored (0: score with the supernet's running statistics).
    cost:
        How a path is priced (:class:`~manifold_nas.strategies.one_shot.paths.PathCost`):
        ``params`` (derived parameters), a measured kind (``flops``,
        ``memory``, ...) or ``network:<kind>`` (the network's cost model).
    budget:
        Largest admissible cost (``None``: no limit).
    """

    def __init__(
        self,
        prior: dict[str, float] | None = None,
        final_search: str = "evolution",
        final_paths: int = 20,
        population: int = 8,
        mutation: float = 0.1,
        recalibration_batches: int = 4,
        cost: str = "params",
        budget: float | None = None,
    ) -> None:
        if final_search not in FINAL_SEARCHES:
            raise ValueError(
                f"final_search must be one of {', '.join(FINAL_SEARCHES)}, got {final_search!r}"
            )
        check_count("final_paths", final_paths, 1)
        check_count("population", population, 1)
        check_count("recalibration_batches", recalibration_batches, 0)
        if not 0.0 <= mutation <= 1.0:
            raise ValueError(f"mutation must lie in [0, 1], got {mutation}")
        check_cost_kind(cost)
        if budget is not None and not (is_finite_number(budget) and budget > 0):
            raise ValueError(f"budget must be a positive number or null, got {budget!r}")
        self.prior = None if prior is None else dict(prior)
        self.final_search = final_search
        self.final_paths = int(final_paths)
        self.population = int(population)
        self.mutation = float(mutation)
        self.recalibration_batches = int(recalibration_batches)
        self.cost_kind = cost
        self.budget = None if budget is None else float(budget)
        self.epoch = 0
        self.history: list[dict[str, Any]] = []
        self.evaluated: list[dict[str, Any]] = []
        self.chosen: dict[str, Any] = {}

    # -- construction ---------------------------------------------------------------
    def setup(self, run: Run) -> None:
        self.supernet = run.build_supernet()
        self.specs = self.supernet.specs
        check_prior(self.specs, run.opset.zero, self.prior)
        self.weight_optimizer, self.scheduler = run.search_optimizer(
            self.supernet.weight_parameters()
        )
        self.sampler = self.new_sampler(run, "paths")
        self.cost = PathCost(run, self.supernet.network, self.cost_kind)

    def new_sampler(self, run: Run, stream: str) -> PathSampler:
        """A path sampler of this search space on the run's random stream ``stream``."""
        seed = stream_seed(run.config.seed, stream)
        return PathSampler(self.specs, run.opset.name, run.opset.zero, self.prior, seed)

    def admissible(self, path: Genotype) -> bool:
        """Whether ``path`` is within the budget."""
        return self.budget is None or self.cost(path) <= self.budget

    def state_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "supernet": self.supernet.state_dict(),
            "weight_optimizer": self.weight_optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "sampler": self.sampler.state_dict(),
            "history": self.history,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.supernet.load_state_dict(state["supernet"])
        load_optimizer_state(self.weight_optimizer, state["weight_optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.sampler.load_state_dict(state["sampler"])
        self.epoch = int(state["epoch"])
        self.history = list(state["history"])

    def progress(self) -> str:
        return f"after epoch {self.epoch}"

    # -- the loop -----------------------------------------------------------------------
    def run(self, run: Run) -> Genotype:
        while self.epoch < run.config.search.epochs:
            self.train_epoch(run)
            run.checkpoint(self)
        return self.choose(run)

    def weight_batches(self, run: Run, epoch: int) -> Iterator[Any]:
        """The epoch's weight-split batches (the same order as ``bilevel``'s)."""
        s = run.config.search
        loader = run.loader(
            run.weight_set, s.batch_size, True, run.config.seed * 100003 + 2 * epoch
        )
        for step, batch in enumerate(loader):
            if s.max_steps_per_epoch is not None and step >= s.max_steps_per_epoch:
                break
            yield batch

    def steps_per_epoch(self, run: Run) -> int:
        s = run.config.search
        steps = -(-len(run.weight_set) // s.batch_size)
        return steps if s.max_steps_per_epoch is None else min(steps, s.max_steps_per_epoch)

    def start_epoch(self, run: Run) -> None:
        """Hook called before an epoch's first step."""

    def train_epoch(self, run: Run) -> dict[str, Any]:
        """One epoch of single-path steps, then the epoch's record."""
        started = time.perf_counter()
        self.start_epoch(run)
        self.supernet.train()
        self.frequencies = {
            name: torch.zeros(spec.shape, dtype=torch.float64) for name, spec in self.specs.items()
        }
        sums: dict[str, float] = {}
        n = 0
        bar = tqdm(
            self.weight_batches(run, self.epoch),
            total=self.steps_per_epoch(run),
            desc=f"{self.name} {self.epoch + 1}/{run.config.search.epochs}",
            disable=run.quiet,
            leave=False,
        )
        for step, batch in enumerate(bar):
            path = self.sampler.sample(self.admissible)
            for name, w in genotype_weights(path, self.specs).items():
                self.frequencies[name] += w.double()
            record = {"type": "step", "epoch": self.epoch, "step": step}
            record.update(self.train_step(run, path, batch))
            run.log(record)
            for k, v in record.items():
                if isinstance(v, float) and k not in ("type", "epoch", "step"):
                    sums[k] = sums.get(k, 0.0) + v
            n += 1
            bar.set_postfix(loss=f"{sums.get('loss', 0.0) / n:.3f}")
        self.scheduler.step()
        summary = self.epoch_summary(run, {k: v / max(n, 1) for k, v in sums.items()}, n)
        summary["seconds"] = (self.history[-1]["seconds"] if self.history else 0.0) + (
            time.perf_counter() - started
        )
        run.log(summary)
        self.history.append(summary)
        self.epoch += 1
        return summary

    def train_step(self, run: Run, path: Genotype, batch: Any) -> dict[str, Any]:
        """One weight step of ``path`` on ``batch``; returns the step's numbers."""
        x, y = run.inputs(batch)
        weights = genotype_weights(path, self.specs, run.dtype, run.device)
        self.weight_optimizer.zero_grad(set_to_none=True)
        out = self.supernet(x, weights)
        loss = run.task.loss(out, y)
        loss.backward()
        self.clip_and_step(run)
        return {"loss": float(loss.detach()), **run.task.batch_metrics(out.detach(), y)}

    def clip_and_step(self, run: Run) -> None:
        clip = run.config.search.grad_clip
        if clip:
            nn.utils.clip_grad_norm_(list(self.supernet.weight_parameters()), clip)
        self.weight_optimizer.step()

    def epoch_summary(self, run: Run, means: dict[str, float], steps: int) -> dict[str, Any]:
        """The epoch's record: training means and the sampled-op frequencies per edge."""
        frequencies = {k: v / max(steps, 1) for k, v in self.frequencies.items()}
        given_kept = {k: _row_normalised(v) for k, v in frequencies.items()}
        entropies = edge_entropies(given_kept)
        return {
            "type": "epoch",
            "epoch": self.epoch,
            "lr": self.weight_optimizer.param_groups[0]["lr"],
            **{f"train_{k}": v for k, v in means.items()},
            "probabilities": {k: v.tolist() for k, v in frequencies.items()},
            "entropy": entropies,
            "mean_entropy": sum(sum(v) for v in entropies.values())
            / max(1, sum(len(v) for v in entropies.values())),
            "parameter_free": parameter_free_count(
                frequencies, self.specs, run.opset.zero, run.opset.parameter_free
            ),
        }

    # -- the final choice -------------------------------------------------------------
    def path_scorer(self, run: Run, record_type: str):
        """``score(path)``: its validation metric with inherited, recalibrated weights, logged."""
        recalibration = recalibration_inputs(
            run, self.recalibration_batches, stream_seed(run.config.seed, "recalibration")
        )
        primary = run.task.primary_metric

        def score(path: Genotype) -> float:
            metrics = evaluate_path(run, self.supernet, path, self.specs, recalibration)
            record = {
                "type": record_type,
                "index": len(self.evaluated),
                "genotype": path.to_dict()["cells"],
                "cost": self.cost(path),
                "valid": metrics,
            }
            run.log(record)
            self.evaluated.append(record)
            value = metrics.get(primary, float("nan"))
            return value if value == value else float("-inf")

        return score

    def choose(self, run: Run) -> Genotype:
        """The final search over paths; the best one is the run's genotype."""
        self.evaluated = []
        score = self.path_scorer(run, "path")
        scored = search_paths(
            score,
            self.new_sampler(run, "final search"),
            self.final_paths,
            self.final_search,
            self.population,
            self.mutation,
            self.admissible,
        )
        best = max(range(len(scored)), key=lambda i: (scored[i][1], -i))
        self.chosen = self.evaluated[best]
        return self.genotype(run, self.chosen["genotype"])

    def genotype(self, run: Run, cells: dict[str, Any]) -> Genotype:
        """The run's genotype of the JSON ``cells`` (with the run's config)."""
        path = path_from_cells(cells, self.specs, run.opset.name)
        return Genotype(path.opset, path.cells, ops=path.ops, config=run.config.to_dict())

    def summary(self, run: Run) -> dict[str, Any]:
        return {
            "final": self.chosen.get("valid", {}),
            "final_metrics": "inherited supernet weights, batch norm recalibrated",
            "epochs": self.epoch,
            "paths_evaluated": len(self.evaluated),
            "final_search": self.final_search,
            "cost": {
                "kind": self.cost_kind,
                "value": self.chosen.get("cost"),
                "budget": self.budget,
            },
            "parameters": {"supernet_weights": count_parameters(self.supernet.network)},
        }


def _row_normalised(frequencies: Tensor) -> Tensor:
    """Each edge's op distribution given that the edge was kept (zero rows stay zero)."""
    totals = frequencies.sum(dim=-1, keepdim=True)
    return torch.where(totals > 0, frequencies / totals.clamp_min(1e-12), frequencies)
