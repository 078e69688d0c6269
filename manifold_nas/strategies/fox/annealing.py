"""Simulated annealing over discrete architectures (FOX-NAS's search strategy).

FOX-NAS (Liu et al., 2021) searches its space with a cheap predictor as the
objective: from a random feasible start it proposes neighbours, redraws
infeasible ones (predicted latency over budget), accepts improvements, and
after a run of steps without improvement also accepts small drops; it
restarts a few times and keeps the five best unique designs. :func:`anneal`
is that loop for any hashable-keyed state space, with the Metropolis rule
available (FOX-NAS ships it commented out) and FOX-NAS's stale-step rule as
an option. :func:`genotype_neighbours` and :func:`random_genotype` make
cell genotypes such a space.

FOX's search over them is :func:`anneal_designs`: the fitted accuracy model
as the objective, :func:`within_budget` (look-up-table costs or the fitted
cost models) as the feasibility test, on the run's ``fox anneal`` stream;
:func:`design_records` and :func:`anneal_record` are what ``designs.json``
reports of it.

The objective and the feasibility test are assumed deterministic: both are
cached per state key, so a revisited state costs nothing and is counted once.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import numpy as np

from manifold_nas.cost.budget import GenotypeCost, cheapest_genotype
from manifold_nas.errors import UserInputError
from manifold_nas.predictors.performance import PerformanceModels
from manifold_nas.run.context import Run, stream_seed
from manifold_nas.space.cell import ArchSpec, ChosenEdge
from manifold_nas.space.genotype import Genotype
from manifold_nas.space.sampling import genotype_key, random_genotype
from manifold_nas.strategies.fox.options import FoxOptions

__all__ = [
    "AnnealResult",
    "anneal",
    "anneal_designs",
    "anneal_record",
    "design_records",
    "genotype_neighbours",
    "temperatures",
    "within_budget",
]

State = TypeVar("State")
Rng = np.random.Generator

SCHEDULES = ("geometric", "linear", "greedy")


@dataclass(frozen=True)
class AnnealResult(Generic[State]):
    """What :func:`anneal` found.

    ``best`` holds the ``top_k`` highest-valued unique states seen (unique by
    key), best first, as ``(state, value)`` pairs. ``evaluations`` counts
    distinct objective calls. ``trace[r]`` is the current value of restart
    ``r`` at its start and after every step (for plotting); ``proposals``,
    ``accepted`` and ``skipped`` (steps whose proposals were all infeasible)
    count steps over all restarts.
    """

    best: list[tuple[State, float]]
    evaluations: int
    trace: list[list[float]]
    proposals: int
    accepted: int
    skipped: int

    @property
    def state(self) -> State:
        """The best state found."""
        return self.best[0][0]

    @property
    def value(self) -> float:
        """The objective value of the best state found."""
        return self.best[0][1]


def temperatures(steps: int, t_start: float, t_end: float, schedule: str) -> np.ndarray:
    """The temperature at each of ``steps`` steps.

    ``geometric``: Tᵢ = t_start·(t_end/t_start)^(i/(steps−1));
    ``linear``: Tᵢ = t_start + (t_end − t_start)·i/(steps−1);
    ``greedy``: Tᵢ = 0 (only non-worsening moves pass the Metropolis test,
    FOX-NAS's default).
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    if schedule == "greedy":
        return np.zeros(steps)
    if not t_start >= t_end > 0:
        raise ValueError(f"need t_start >= t_end > 0, got t_start={t_start}, t_end={t_end}")
    fraction = np.arange(steps) / max(steps - 1, 1)
    if schedule == "geometric":
        return t_start * (t_end / t_start) ** fraction
    return t_start + (t_end - t_start) * fraction


def anneal(
    objective: Callable[[State], float],
    feasible: Callable[[State], bool] | None,
    neighbours: Callable[[State, Rng], State],
    start: State | Callable[[Rng], State],
    *,
    steps: int = 5000,
    t_start: float = 1.0,
    t_end: float = 1e-3,
    schedule: str = "geometric",
    restarts: int = 3,
    top_k: int = 5,
    stale_limit: int | None = None,
    stale_accept: float | None = None,
    patience: int | None = None,
    max_redraws: int = 100,
    key: Callable[[State], Hashable] | None = None,
    seed: int | Rng = 0,
) -> AnnealResult[State]:
    """Maximise ``objective`` over feasible states by simulated annealing.

    Each of ``restarts`` runs starts from ``start`` (a state, or a callable
    ``start(rng)`` drawing one, redrawn until feasible) and takes ``steps``
    steps. A step proposes ``x' = neighbours(x, rng)``, redrawing up to
    ``max_redraws`` times while ``feasible(x')`` is False (then the step is
    skipped), and accepts x' when

    * Δ = f(x') − f(x) ≥ 0, or with probability exp(Δ/Tᵢ) (Metropolis) at the
      temperature of step i (see :func:`temperatures`; ``schedule="greedy"``
      accepts no drop), or
    * FOX-NAS's stale rule: the run's best has not improved for
      ``stale_limit`` steps and Δ ≥ −``stale_accept``.

    A run stops early after ``patience`` steps without improving its best
    (FOX-NAS stops after 5,000). Temperatures and ``stale_accept`` are in the
    objective's units.

    States need not be hashable: ``key(x)`` (default: ``x`` itself) names a
    state for the caches and for uniqueness among the best; for genotypes
    pass :func:`manifold_nas.space.sampling.genotype_key`. ``feasible=None`` admits every state.

    Returns
    -------
    AnnealResult
        The ``top_k`` best unique states over all restarts, sorted by value
        (ties keep the first seen), with counts and per-restart traces.
    """
    if steps < 0 or restarts < 1 or top_k < 1 or max_redraws < 1:
        raise ValueError("need steps >= 0, restarts >= 1, top_k >= 1 and max_redraws >= 1")
    if (stale_limit is None) != (stale_accept is None):
        raise ValueError("stale_limit and stale_accept go together")
    if stale_accept is not None and stale_accept < 0:
        raise ValueError(f"stale_accept is a tolerated drop, so >= 0; got {stale_accept}")
    temps = temperatures(steps, t_start, t_end, schedule)
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    key = key or (lambda x: x)
    values: dict[Hashable, float] = {}
    states: dict[Hashable, Any] = {}
    feasibility: dict[Hashable, bool] = {}

    def value_of(x: State, k: Hashable) -> float:
        if k not in values:
            v = float(objective(x))
            if math.isnan(v):
                raise ValueError("the objective returned NaN")
            values[k], states[k] = v, x
        return values[k]

    def is_feasible(x: State, k: Hashable) -> bool:
        if feasible is None:
            return True
        if k not in feasibility:
            feasibility[k] = bool(feasible(x))
        return feasibility[k]

    def draw_start() -> tuple[State, Hashable]:
        if not callable(start):
            k = key(start)
            if not is_feasible(start, k):
                raise ValueError("the start state is infeasible")
            return start, k
        for _ in range(max_redraws):
            x = start(rng)
            k = key(x)
            if is_feasible(x, k):
                return x, k
        raise ValueError(f"start(rng) drew no feasible state in {max_redraws} tries")

    traces: list[list[float]] = []
    proposals = accepted = skipped = 0
    for _ in range(restarts):
        x, kx = draw_start()
        fx = value_of(x, kx)
        run_best, stale = fx, 0
        trace = [fx]
        for temperature in temps:
            proposal = None
            for _ in range(max_redraws):
                y = neighbours(x, rng)
                ky = key(y)
                if is_feasible(y, ky):
                    proposal = (y, ky)
                    break
            if proposal is None:
                skipped += 1
            else:
                proposals += 1
                y, ky = proposal
                fy = value_of(y, ky)
                delta = fy - fx
                if delta >= 0:
                    accept = True
                elif stale_limit is not None and stale >= stale_limit and delta >= -stale_accept:
                    accept = True
                else:
                    accept = temperature > 0 and rng.random() < math.exp(delta / temperature)
                if accept:
                    x, kx, fx = y, ky, fy
                    accepted += 1
            if fx > run_best:
                run_best, stale = fx, 0
            else:
                stale += 1
            trace.append(fx)
            if patience is not None and stale >= patience:
                break
        traces.append(trace)
    ranked = sorted(values, key=lambda k: -values[k])[:top_k]
    return AnnealResult(
        best=[(states[k], values[k]) for k in ranked],
        evaluations=len(values),
        trace=traces,
        proposals=proposals,
        accepted=accepted,
        skipped=skipped,
    )


# --------------------------------------------------------------------------- genotypes


def _as_rng(rng: Rng | int | None) -> Rng:
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


def genotype_neighbours(
    specs: Mapping[str, ArchSpec],
    zero: str | None = None,
    max_changes: int = 1,
    swap_probability: float = 0.5,
) -> Callable[[Genotype, Rng], Genotype]:
    """A ``neighbours(genotype, rng)`` proposal for :func:`anneal` over genotypes.

    A neighbour changes m chosen edges, m uniform in 1..``max_changes``
    (capped by the number of changeable edges), each edge at most once. An
    edge either gets another non-zero op, or (with probability
    ``swap_probability`` when both moves exist) moves to a source of the same
    target node that the node does not keep yet, keeping its op; so every
    node keeps as many incoming edges as before and the zero op never
    appears. At least one and at most ``max_changes`` of the chosen edges
    differ from the original's. The neighbour keeps the genotype's op set,
    ``ops`` and ``config`` and drops its ``probabilities``, which described
    how a search chose the original.
    """
    if max_changes < 1:
        raise ValueError(f"max_changes must be >= 1, got {max_changes}")
    if not 0 <= swap_probability <= 1:
        raise ValueError(f"swap_probability must be in [0, 1], got {swap_probability}")
    ops = {name: [op for op in spec.ops if op != zero] for name, spec in specs.items()}
    sources = {
        name: {t: [s for s, tt in spec.edges if tt == t] for t in spec.targets}
        for name, spec in specs.items()
    }

    def neighbours(genotype: Genotype, rng: Rng) -> Genotype:
        cells = {name: list(genotype.cells[name]) for name in specs}
        slots = [(name, i) for name in specs for i in range(len(cells[name]))]
        wanted = int(rng.integers(1, max_changes + 1))
        changed = 0
        for index in rng.permutation(len(slots)):
            if changed == wanted:
                break
            name, i = slots[index]
            edge = cells[name][i]
            kept = {e.source for e in cells[name] if e.target == edge.target}
            free = [s for s in sources[name].get(edge.target, []) if s not in kept]
            other_ops = [op for op in ops[name] if op != edge.op]
            if not free and not other_ops:
                continue
            swap = bool(free) and (not other_ops or rng.random() < swap_probability)
            if swap:
                cells[name][i] = ChosenEdge(edge.op, free[rng.integers(len(free))], edge.target)
            else:
                cells[name][i] = ChosenEdge(
                    other_ops[rng.integers(len(other_ops))], edge.source, edge.target
                )
            changed += 1
        if changed == 0:
            raise ValueError("this genotype has no neighbour: no edge can change op or source")
        return Genotype(
            genotype.opset,
            {
                name: tuple(sorted(edges, key=lambda e: (e.target, e.source)))
                for name, edges in cells.items()
            },
            ops=genotype.ops,
            config=genotype.config,
        )

    return neighbours


# --------------------------------------------------------------------------- FOX's search


def within_budget(
    genotype: Genotype, models: PerformanceModels, cost_model: GenotypeCost, options: FoxOptions
) -> bool:
    """Whether ``genotype`` is within ``options.budget`` by ``options.feasibility``.

    ``lut``: its look-up-table costs with the safety margin; ``predictor``:
    the ``options.predictor`` cost models' predictions against the limits
    scaled by ``1 − safety_margin``.
    """
    scale = 1.0 - options.safety_margin
    if options.feasibility == "predictor":
        return all(
            models.predict_one(genotype, kind, options.predictor) <= scale * limit
            for kind, limit in options.budget.items()
        )
    return cost_model.feasible(genotype, options.budget, options.safety_margin)


def anneal_designs(
    run: Run,
    models: PerformanceModels,
    *,
    specs: Mapping[str, ArchSpec],
    zero: str | None,
    primary: str,
    cost_model: GenotypeCost,
    options: FoxOptions,
) -> AnnealResult[Genotype]:
    """Anneal over genotypes for the ``options.predictor`` model's ``primary``, within the budget.

    On the run's ``fox anneal`` stream. A restart starts from a random
    genotype within the budget or, when 100 draws find none, from the
    cheapest genotype by the look-up table of some budgeted kind; a budget
    that even those exceed is refused with their costs.
    """
    opset = run.opset.name

    def feasible_by_budget(genotype: Genotype) -> bool:
        return within_budget(genotype, models, cost_model, options)

    # without a budget anneal() admits every state without testing it
    feasible = feasible_by_budget if options.budget else None

    def start(rng: Rng) -> Genotype:
        for _ in range(100):
            genotype = random_genotype(specs, opset, zero, rng)
            if feasible is None or feasible(genotype):
                return genotype
        cheapest = {}
        for kind in options.budget:
            genotype = cheapest_genotype(cost_model.table, specs, opset, zero, kind)
            if feasible(genotype):
                return genotype
            cheapest[kind] = cost_model.cost(genotype, kind)
        raise UserInputError(
            f"no architecture within strategy.budget {options.budget}: the cheapest by the "
            f"look-up table costs {', '.join(f'{k} {v:.4g}' for k, v in cheapest.items())}"
        )

    return anneal(
        lambda genotype: models.predict_one(genotype, primary, options.predictor),
        feasible,
        genotype_neighbours(specs, zero, max_changes=options.max_changes),
        start,
        key=genotype_key,
        seed=stream_seed(run.config.seed, "fox anneal"),
        **options.anneal_options,
    )


def design_records(
    result: AnnealResult[Genotype],
    models: PerformanceModels,
    *,
    primary: str,
    cost_model: GenotypeCost,
) -> list[dict[str, Any]]:
    """The annealer's best designs as ``designs.json`` entries, best first.

    Each has every fitted model's prediction and its look-up-table costs;
    ``measured`` and ``budget_holds`` stay None until the design is verified.
    """
    designs = []
    for rank, (genotype, value) in enumerate(result.best):
        predicted = {primary: float(value)}
        for target, by_kind in models.models.items():
            for kind in by_kind:
                predicted[f"{target} ({kind})"] = models.predict_one(genotype, target, kind)
        designs.append(
            {
                "rank": rank,
                "genotype": genotype.to_dict()["cells"],
                "predicted": predicted,
                "cost": cost_model.costs(genotype),
                "feasible": True,
                "measured": None,
                "budget_holds": None,
            }
        )
    return designs


def anneal_record(result: AnnealResult[Genotype], options: FoxOptions) -> dict[str, Any]:
    """What the annealer did and with which options, as ``designs.json`` and the summary report it."""
    return {
        "evaluations": result.evaluations,
        "proposals": result.proposals,
        "accepted": result.accepted,
        "skipped": result.skipped,
        **options.anneal_options,
        "max_changes": options.max_changes,
    }
