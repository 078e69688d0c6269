r"""Single-path one-shot machinery: drawing paths, running them, scoring them fairly.

A *path* is one derived architecture of a search space: a
:class:`~manifold_nas.space.genotype.Genotype` with ``keep`` incoming edges per node
(all when ``keep`` is 0) and one non-zero op per kept edge, exactly what
selection would produce. One-shot strategies (``spos``, ``cream``) train a
supernet one path per step and score paths with the weights they inherit from
it. This module holds what they share:

* :class:`PathSampler` draws paths (``keep`` sources per node uniformly, one
  op per kept edge from a prior, uniform by default), mutates and crosses
  them for evolutionary search; its state is a Python ``random`` state, so a
  resumed search draws the same paths;
* :func:`genotype_weights` gives the one-hot weights under which the supernet
  computes exactly a path: :class:`~manifold_nas.space.cell.MixedEdge` runs only
  the ops whose weight is non-zero, and every op set's mixing returns a single
  output unchanged (a weighted sum times 1; the SPD Fréchet mean of one
  matrix is that matrix), so a single-path forward costs one op per edge;
* :func:`preserved_buffers` and :func:`recalibrate_batch_norm`: the running
  statistics of a shared supernet mix every path's, so SPOS (Guo et al., 2020)
  re-estimates them for each path on training batches before scoring it;
* :func:`evaluate_path`: recalibrate, then the task's metrics on the
  validation split, leaving the supernet's buffers as they were;
* :class:`PathCost`: the cost of a path, from the derived network's
  parameters, a measured kind of :mod:`manifold_nas.cost.measure`, or the network's
  own cost model;
* :func:`search_paths`: random or evolutionary search over paths under a
  budget of evaluations (SPOS's final search).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from manifold_nas.config import is_finite_number
from manifold_nas.cost.measure import COST_KINDS, count_parameters, preserved_buffers, training_mode
from manifold_nas.cost.table import build_cost_table, derived_cost, genotype_choices
from manifold_nas.errors import UserInputError
from manifold_nas.space.cell import ArchSpec, ChosenEdge
from manifold_nas.space.contracts import has_cost_model
from manifold_nas.space.genotype import Genotype, parse_cells
from manifold_nas.space.sampling import genotype_key, genotype_weights

if TYPE_CHECKING:
    from manifold_nas.run.context import Run

__all__ = [
    "FINAL_SEARCHES",
    "PathCost",
    "PathSampler",
    "check_cost_kind",
    "check_prior",
    "evaluate_path",
    "path_from_cells",
    "genotype_weights",
    "preserved_buffers",
    "recalibrate_batch_norm",
    "recalibration_inputs",
    "search_paths",
]

#: the ways :func:`search_paths` explores paths
FINAL_SEARCHES = ("evolution", "random")


# -- paths --------------------------------------------------------------------------


def path_from_cells(
    cells: Mapping[str, Any], specs: Mapping[str, ArchSpec], opset: str
) -> Genotype:
    """A path from its JSON cells (``{cell_type: [[op, source, target], ...]}``)."""
    return Genotype(opset, parse_cells(cells), ops={name: spec.ops for name, spec in specs.items()})


class PathSampler:
    """Draws, mutates and crosses paths of a search space.

    Parameters
    ----------
    specs:
        The searchable network's ``arch_specs``.
    opset:
        The op set's name (recorded in the paths).
    zero:
        The op set's zero op, never drawn.
    prior:
        Op name -> non-negative weight; an edge's op is drawn with
        probability proportional to its weight among the cell type's
        candidates (ops left out weigh 0). ``None`` draws uniformly. Cream's
        shipped config uses such a prior over its six choices.
    seed:
        Seed of the sampler's own ``random.Random`` stream.

    Notes
    -----
    Each node keeps ``keep`` of its incoming edges, drawn uniformly without
    replacement, as :func:`~manifold_nas.space.sampling.random_genotype` does.
    """

    def __init__(
        self,
        specs: Mapping[str, ArchSpec],
        opset: str,
        zero: str | None,
        prior: Mapping[str, float] | None = None,
        seed: int = 0,
    ) -> None:
        self.specs = dict(specs)
        self.opset = opset
        self.zero = zero
        self.rng = random.Random(seed)
        self.choices = check_prior(self.specs, zero, prior)

    # -- state ----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"rng": self.rng.getstate()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        version, internal, gauss = state["rng"]
        self.rng.setstate((version, tuple(internal), gauss))

    # -- drawing --------------------------------------------------------------------
    def _op(self, name: str) -> str:
        ops, weights = self.choices[name]
        return self.rng.choice(ops) if weights is None else self.rng.choices(ops, weights)[0]

    def _node(self, name: str, target: int) -> list[ChosenEdge]:
        spec = self.specs[name]
        sources = [s for s, t in spec.edges if t == target]
        kept = sources if spec.keep <= 0 else self.rng.sample(sources, min(spec.keep, len(sources)))
        return [ChosenEdge(self._op(name), s, target) for s in sorted(kept)]

    def _path(self, nodes: Mapping[str, Mapping[int, Sequence[ChosenEdge]]]) -> Genotype:
        cells = {
            name: tuple(e for target in self.specs[name].targets for e in nodes[name][target])
            for name in self.specs
        }
        return Genotype(self.opset, cells, ops={n: s.ops for n, s in self.specs.items()})

    def draw(self) -> Genotype:
        """One path, ignoring any budget."""
        return self._path(
            {
                name: {t: self._node(name, t) for t in spec.targets}
                for name, spec in self.specs.items()
            }
        )

    def sample(
        self, admissible: Callable[[Genotype], bool] | None = None, max_tries: int = 1000
    ) -> Genotype:
        """A path for which ``admissible(path)`` holds (rejection sampling).

        Raises
        ------
        UserInputError
            When ``max_tries`` draws found none (a budget below every path's cost).
        """
        for _ in range(max_tries):
            path = self.draw()
            if admissible is None or admissible(path):
                return path
        raise UserInputError(
            f"no path within the budget in {max_tries} draws; raise strategy.budget"
        )

    def mutate(self, path: Genotype, probability: float) -> Genotype:
        """Redraw each node's edges with ``probability``, else each kept edge's op with it."""
        nodes = _nodes(path, self.specs)
        for name, spec in self.specs.items():
            for target in spec.targets:
                if self.rng.random() < probability:
                    nodes[name][target] = self._node(name, target)
                    continue
                nodes[name][target] = [
                    ChosenEdge(self._op(name), e.source, e.target)
                    if self.rng.random() < probability
                    else e
                    for e in nodes[name][target]
                ]
        return self._path(nodes)

    def crossover(self, first: Genotype, second: Genotype) -> Genotype:
        """Each node's edges from ``first`` or ``second``, with equal chance."""
        a, b = _nodes(first, self.specs), _nodes(second, self.specs)
        return self._path(
            {
                name: {t: (a if self.rng.random() < 0.5 else b)[name][t] for t in spec.targets}
                for name, spec in self.specs.items()
            }
        )


def check_prior(
    specs: Mapping[str, ArchSpec], zero: str | None, prior: Mapping[str, float] | None
) -> dict[str, tuple[tuple[str, ...], tuple[float, ...] | None]]:
    """Per cell type, the drawable ops and their prior weights (``None``: uniform).

    Raises
    ------
    ValueError
        For an op no cell type has, the zero op, a negative or non-finite
        weight, or a cell type whose every op weighs 0.
    """
    known = {op for spec in specs.values() for op in spec.ops if op != zero}
    if prior is not None:
        if not isinstance(prior, Mapping):
            raise ValueError(f"prior must map op names to weights, got {prior!r}")
        unknown = sorted(set(prior) - known)
        if unknown:
            raise ValueError(
                f"prior names op {unknown[0]!r}, which is not a drawable op; "
                f"drawable: {', '.join(sorted(known))}"
            )
        bad = [op for op, w in prior.items() if not _is_weight(w)]
        if bad:
            raise ValueError(f"prior weight of {bad[0]!r} must be a finite number >= 0")
    choices = {}
    for name, spec in specs.items():
        ops = tuple(op for op in spec.ops if op != zero)
        if prior is None:
            choices[name] = (ops, None)
            continue
        weights = tuple(float(prior.get(op, 0.0)) for op in ops)
        if not any(weights):
            raise ValueError(f"prior gives every op of cell type {name!r} weight 0")
        choices[name] = (ops, weights)
    return choices


def _is_weight(value: Any) -> bool:
    return is_finite_number(value) and value >= 0


def _nodes(path: Genotype, specs: Mapping[str, ArchSpec]) -> dict[str, dict[int, list[ChosenEdge]]]:
    nodes: dict[str, dict[int, list[ChosenEdge]]] = {}
    for name, spec in specs.items():
        nodes[name] = {t: [] for t in spec.targets}
        for edge in sorted(path.cells[name], key=lambda e: (e.target, e.source)):
            nodes[name][edge.target].append(edge)
    return nodes


# -- batch-norm statistics -----------------------------------------------------------
def _running_statistics(network: nn.Module) -> list[nn.Module]:
    return [
        m
        for m in network.modules()
        if hasattr(m, "momentum")
        and any(name.startswith("running_") for name, _ in m.named_buffers(recurse=False))
    ]


@torch.no_grad()
def recalibrate_batch_norm(
    network: nn.Module, inputs: Iterable[Tensor], arch_weights: Mapping[str, Tensor] | None = None
) -> int:
    r"""Re-estimate every running statistic of ``network`` on ``inputs``; return the batch count.

    Each module with ``running_*`` buffers and a ``momentum`` (torch's batch
    norms, the SPD batch norm) gets momentum :math:`1/(k+1)` on batch
    :math:`k = 0, 1, \dots`, so its running statistic becomes the cumulative
    average of the batch statistics: the first batch replaces the old value
    and every batch weighs the same (for the SPD batch norm, the running
    geodesic mean of the batch Karcher means). Momenta and train/eval flags
    are restored afterwards. This is SPOS's recalibration before scoring a
    path; instance norms keep no statistics and need none.
    """
    modules = _running_statistics(network)
    momenta = [(m, m.momentum) for m in modules]
    count = 0
    try:
        with training_mode(network, True):
            for k, x in enumerate(inputs):
                for m in modules:
                    m.momentum = 1.0 / (k + 1)
                if arch_weights is None:
                    network(x)
                else:
                    network(x, arch_weights)
                count += 1
    finally:
        for m, momentum in momenta:
            m.momentum = momentum
    return count


def recalibration_inputs(run: Run, batches: int, seed: int) -> list[Tensor]:
    """The inputs of the first ``batches`` shuffled weight-split batches (fixed per ``seed``).

    Drawn once and reused for every path, so paths are compared on the same data.
    """
    if batches <= 0:
        return []
    inputs = []
    loader = run.loader(run.weight_set, run.config.search.batch_size, True, seed)
    for batch in loader:
        if len(inputs) >= batches:
            break
        inputs.append(run.inputs(batch)[0])
    return inputs


def evaluate_path(
    run: Run,
    network: nn.Module,
    path: Genotype,
    specs: Mapping[str, ArchSpec],
    recalibration: Sequence[Tensor] = (),
    dataset: Any = None,
) -> dict[str, Any]:
    """The task's metrics of ``path`` with inherited weights on ``dataset`` (the validation split).

    Batch-norm statistics are re-estimated on ``recalibration`` first
    (:func:`recalibrate_batch_norm`); the network's buffers are restored
    afterwards, so scoring paths never changes the supernet.
    """
    weights = genotype_weights(path, specs, run.dtype, run.device)
    with preserved_buffers(network):
        recalibrate_batch_norm(network, recalibration, weights)
        return run.evaluate(network, dataset, arch_weights=weights)


# -- cost ------------------------------------------------------------------------------
def check_cost_kind(kind: str) -> None:
    """Refuse a cost kind :class:`PathCost` does not know (``ValueError``)."""
    measured = ("params", *COST_KINDS)
    if not isinstance(kind, str) or not (kind in measured or kind.startswith("network:")):
        raise ValueError(
            f"cost must be one of {', '.join(dict.fromkeys(measured))} or 'network:<kind>' "
            f"(the network's own cost model), got {kind!r}"
        )


class PathCost:
    """The cost of a path, cached per path.

    ``kind``:

    ``"params"``
        parameters of the derived network (what ``summary.json`` reports and
        ``manifold-nas train`` builds), built from a forked random stream so
        that costing a path never changes a search;
    ``"flops"``, ``"flops_with_linalg"``, ``"memory"``, ``"latency_ms"``
        the measured per-op cost table of :func:`manifold_nas.cost.table.build_cost_table`
        summed over the path's ops (plus the fixed part where it is additive:
        FLOPs), probed with one training example;
    ``"network:<kind>"``
        the network's own cost model: ``network.expected_cost(weights, kind)``
        at the path's one-hot weights, e.g. ``"network:memory"`` for the
        volumetric network's activation-memory cost.
    """

    def __init__(self, run: Run, network: nn.Module, kind: str = "params") -> None:
        check_cost_kind(kind)
        self.kind = kind
        self.run = run
        self.network = network
        self.specs = dict(network.arch_specs)
        self._cache: dict[str, float] = {}
        self._table = None
        if kind.startswith("network:"):
            if not has_cost_model(network):
                raise UserInputError(
                    f"cost {kind!r} needs a network with a cost model; "
                    f"{type(network).__name__} has none (use 'params' or a measured kind)"
                )
        elif kind != "params":
            x, _ = run.inputs(next(iter(run.loader(run.weight_set, 1, False))))
            with torch.random.fork_rng(devices=[]):
                self._table = build_cost_table(network, x, latency=kind == "latency_ms")

    def __call__(self, path: Genotype) -> float:
        key = genotype_key(path)
        if key not in self._cache:
            self._cache[key] = self._measure(path)
        return self._cache[key]

    def _measure(self, path: Genotype) -> float:
        if self.kind == "params":
            with torch.random.fork_rng(devices=[]):
                return float(count_parameters(self.run.build_derived(path)))
        if self.kind.startswith("network:"):
            weights = genotype_weights(path, self.specs, self.run.dtype, self.run.device)
            cost = self.network.expected_cost(weights, kind=self.kind.removeprefix("network:"))
            return float(cost)
        table = self._table
        additive = table.fixed.get(self.kind) is not None
        return derived_cost(genotype_choices(path, table), table, self.kind, include_fixed=additive)


# -- search over paths ---------------------------------------------------------------
def search_paths(
    score: Callable[[Genotype], float],
    sampler: PathSampler,
    n_paths: int,
    method: str = "evolution",
    population: int = 8,
    mutation: float = 0.1,
    admissible: Callable[[Genotype], bool] | None = None,
) -> list[tuple[Genotype, float]]:
    """Score up to ``n_paths`` distinct paths; return ``(path, score)`` in evaluation order.

    ``"random"`` scores random admissible paths. ``"evolution"`` (SPOS's
    final search, scaled to a budget of evaluations) scores ``population``
    random paths, then children of the best half: with equal chance a
    crossover of two parents followed by mutation, or a mutation of one
    parent (each node redrawn with probability ``mutation``, else each op).
    Duplicates and inadmissible children are skipped; when no new child
    turns up a random path is tried, and the search ends early once the
    space seems exhausted. Higher scores are better.
    """
    if method not in FINAL_SEARCHES:
        raise ValueError(f"final search must be one of {', '.join(FINAL_SEARCHES)}, got {method!r}")
    scored: list[tuple[Genotype, float]] = []
    seen: set[str] = set()
    patience = 50

    def try_add(path: Genotype) -> bool:
        key = genotype_key(path)
        if key in seen or (admissible is not None and not admissible(path)):
            return False
        seen.add(key)
        scored.append((path, score(path)))
        return True

    def random_path() -> bool:
        return any(try_add(sampler.sample(admissible)) for _ in range(patience))

    while len(scored) < min(n_paths, population if method == "evolution" else n_paths):
        if not random_path():
            return scored
    while len(scored) < n_paths:
        ranked = sorted(range(len(scored)), key=lambda i: (-scored[i][1], i))
        parents = [scored[i][0] for i in ranked[: max(2, population // 2)]]
        added = False
        for _ in range(patience):
            if len(parents) > 1 and sampler.rng.random() < 0.5:
                first, second = sampler.rng.sample(parents, 2)
                child = sampler.mutate(sampler.crossover(first, second), mutation)
            else:
                child = sampler.mutate(sampler.rng.choice(parents), mutation)
            if try_add(child):
                added = True
                break
        if not added and not random_path():
            break
    return scored
