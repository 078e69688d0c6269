"""``evolution``: regularized (aging) evolution, Real et al. (2019).

"Regularized Evolution for Image Classifier Architecture Search" keeps a
population of the ``population`` (P) most recently trained networks. Each
new candidate is a child: ``sample`` (S) members are drawn at random without
replacement, the best of them by validation score is the parent (tournament
selection), and the child is the parent with exactly one mutation
(:func:`mutate`). The child is trained, joins the population, and the
*oldest* member, not the worst, leaves it. Ageing out good networks favours
architectures that train well again and again over ones that got lucky
once, which is what "regularized" refers to.

The first P trials are random genotypes. Children are proposed in batches
(the ``batch`` option of :class:`~manifold_nas.strategies.multi_trial.loop.MultiTrialSearch`):
every child of a batch is selected from the population as it stood before
the batch, and the batch's trials join it in trial order afterwards, so the
search does not depend on which trial of a batch finishes first. The
returned genotype is the best trial of the whole history.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from typing import Any

from manifold_nas.config import positive_int
from manifold_nas.errors import UserInputError
from manifold_nas.run.context import Run
from manifold_nas.space.cell import ArchSpec, ChosenEdge
from manifold_nas.space.genotype import Genotype, parse_cells
from manifold_nas.space.sampling import random_genotype
from manifold_nas.strategies.base import Strategy, register_strategy
from manifold_nas.strategies.multi_trial.loop import MultiTrialSearch

__all__ = ["RegularizedEvolution", "mutate"]


def _mutations(genotype: Genotype, specs: Mapping[str, ArchSpec], zero: str | None):
    """The (cell type, kind) pairs that can change ``genotype``."""
    for name, spec in specs.items():
        edges = genotype.cells[name]
        if edges and len([op for op in spec.ops if op != zero]) > 1:
            yield name, "op"
        if spec.keep > 0:
            for target in spec.targets:
                sources = {s for s, t in spec.edges if t == target}
                kept = {e.source for e in edges if e.target == target}
                if sources - kept and kept:
                    yield name, "input"
                    break


def mutate(
    genotype: Genotype, specs: Mapping[str, ArchSpec], zero: str | None, rng: random.Random
) -> tuple[Genotype, str]:
    """``genotype`` with one random change, and that change in words.

    A cell type and a kind of change are drawn uniformly among those that
    can change the genotype:

    * **op**: one chosen edge gets another op, drawn uniformly from the cell
      type's ops other than its current one and the zero op;
    * **input**: one kept input of a node whose ``keep`` inputs are fewer
      than its possible sources is replaced by a source it does not use yet
      (the edge keeps its op), so every node still has ``keep`` distinct
      inputs.

    Edges are kept in the order :func:`~manifold_nas.space.sampling.random_genotype`
    uses (by target, then source).

    Raises
    ------
    UserInputError
        When the search space holds a single architecture.
    """
    choices = list(_mutations(genotype, specs, zero))
    if not choices:
        raise UserInputError("the search space holds a single architecture; nothing to mutate")
    name, kind = rng.choice(choices)
    spec = specs[name]
    edges = list(genotype.cells[name])
    if kind == "op":
        position = rng.randrange(len(edges))
        old = edges[position]
        op = rng.choice([o for o in spec.ops if o not in (zero, old.op)])
        edges[position] = ChosenEdge(op, old.source, old.target)
        change = f"{name}: op of {old.source}->{old.target} {old.op} -> {op}"
    else:
        open_targets = []
        for target in spec.targets:
            sources = {s for s, t in spec.edges if t == target}
            kept = {e.source for e in edges if e.target == target}
            if sources - kept and kept:
                open_targets.append((target, sorted(sources - kept)))
        target, unused = rng.choice(open_targets)
        position = rng.choice([i for i, e in enumerate(edges) if e.target == target])
        old = edges[position]
        source = rng.choice(unused)
        edges[position] = ChosenEdge(old.op, source, target)
        change = f"{name}: input of node {target} {old.source} -> {source} ({old.op})"
    cells = dict(genotype.cells)
    cells[name] = tuple(sorted(edges, key=lambda e: (e.target, e.source)))
    return Genotype(genotype.opset, cells, ops=genotype.ops), change


@register_strategy("evolution")
class RegularizedEvolution(MultiTrialSearch, Strategy):
    """Regularized (aging) evolution with tournament selection and one mutation per child.

    Parameters
    ----------
    trials:
        Number of genotypes trained, the first ``population`` of them random.
    population:
        P, the number of most recent trials that parents are chosen from.
    sample:
        S, the tournament size: members drawn per child, the best is the parent.
    epochs:
        Training epochs per trial, unless ``proxy.epochs`` is set.
    batch:
        Children proposed and trained together (in parallel with
        ``search.backend: ray``); each is chosen from the population before the batch.
    early_stopping:
        ``none``, ``asha``, ``learning_curve``, or a mapping with a ``name``
        and the rule's options. A stopped trial joins the population with its
        last score.
    max_parameters:
        Reject candidates (random or children) whose full-setting network is
        larger, and draw again; None keeps all.
    predictor_filter:
        FOX-NAS's explainable predictors as a filter before training
        (:class:`~manifold_nas.strategies.multi_trial.filters.PredictorFilter`); None
        trains every candidate.
    """

    def __init__(
        self,
        trials: int = 16,
        population: int = 8,
        sample: int = 3,
        epochs: int = 3,
        batch: int = 4,
        early_stopping: str | Mapping[str, Any] | None = "none",
        max_parameters: int | None = None,
        predictor_filter: Mapping[str, Any] | None = None,
    ) -> None:
        self._init_multi_trial(
            trials, epochs, batch, early_stopping, max_parameters, predictor_filter
        )
        self.population_size = positive_int("population", population)
        self.sample = positive_int("sample", sample)
        if self.sample > self.population_size:
            raise ValueError(f"sample ({sample}) must not exceed population ({population})")
        if self.population_size > self.n_trials:
            raise ValueError(
                f"population ({population}) must not exceed trials ({trials}): the first "
                "population trials are random, so no child would ever be bred"
            )
        self.population: list[int] = []

    def setup(self, run: Run) -> None:
        super().setup(run)
        self.population = []

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "population": list(self.population)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.population = [int(i) for i in state["population"]]

    def fitness(self, trial: int) -> float:
        """The last validation score of a trial (−∞ when not finite)."""
        curve = self.trials[trial]["curve"]
        value = float(curve[-1]) if curve else float("nan")
        return value if math.isfinite(value) else float("-inf")

    def select_parent(self) -> int:
        """Tournament selection: the best of ``sample`` members drawn without replacement."""
        contenders = self.sampler.sample(self.population, min(self.sample, len(self.population)))
        return max(contenders, key=lambda i: (self.fitness(i), -i))

    def propose(self, run: Run, slot: int) -> tuple[Genotype, str]:
        if slot < self.population_size or not self.population:
            genotype = random_genotype(self.specs, run.opset.name, run.opset.zero, self.sampler)
            return genotype, "random"
        parent = self.select_parent()
        genotype = Genotype(
            run.opset.name,
            parse_cells(self.trials[parent]["genotype"]),
            ops={name: spec.ops for name, spec in self.specs.items()},
        )
        child, change = mutate(genotype, self.specs, run.opset.zero, self.sampler)
        return child, f"mutation of trial {parent}: {change}"

    def absorb(self, records: Sequence[dict[str, Any]]) -> None:
        """Add the batch's trained trials in trial order; the oldest members leave."""
        for record in records:
            if record["status"] == "rejected":
                continue
            self.population.append(int(record["trial"]))
            while len(self.population) > self.population_size:
                self.population.pop(0)
