"""Simulated annealing: known optima, feasibility, determinism, genotype moves."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from manifold_nas.predictors.linear import NOT_KEPT, decode_genotype, genotype_encoding
from manifold_nas.space.cell import cell_arch_spec
from manifold_nas.space.sampling import random_genotype
from manifold_nas.strategies.fox.annealing import anneal, genotype_neighbours, temperatures

DARTS_OPS = (
    "none",
    "max_pool_3x3",
    "avg_pool_3x3",
    "skip_connect",
    "sep_conv_3x3",
    "sep_conv_5x5",
    "dil_conv_3x3",
    "dil_conv_5x5",
)
SPECS = {
    "normal": cell_arch_spec(DARTS_OPS, n_inputs=2, n_nodes=4, keep=2),
    "reduce": cell_arch_spec(DARTS_OPS, n_inputs=2, n_nodes=4, keep=2),
}


def _product_space(n_vars: int, n_values: int):
    """Neighbours and a random start of the product space {0..n_values-1}^n_vars."""

    def neighbours(x, rng):
        i = int(rng.integers(n_vars))
        shift = int(rng.integers(1, n_values))
        return x[:i] + ((x[i] + shift) % n_values,) + x[i + 1 :]

    def start(rng):
        return tuple(int(v) for v in rng.integers(n_values, size=n_vars))

    return neighbours, start


def _separable(weights: np.ndarray):
    return lambda x: float(sum(weights[i, v] for i, v in enumerate(x)))


# --------------------------------------------------------------------------- anneal


def test_anneal_finds_the_argmax_of_a_separable_objective():
    weights = np.random.default_rng(0).normal(size=(10, 5))
    neighbours, start = _product_space(10, 5)
    result = anneal(
        _separable(weights), None, neighbours, start, steps=1500, t_start=1.0, t_end=0.01
    )
    assert result.state == tuple(int(v) for v in weights.argmax(axis=1))
    assert result.value == pytest.approx(weights.max(axis=1).sum())


def test_anneal_matches_brute_force_under_a_cost_budget():
    rng = np.random.default_rng(1)
    cost = rng.uniform(0, 1, size=(6, 4))
    # Value grows with cost, so the budget binds at the optimum.
    weights = cost + 0.3 * rng.uniform(size=(6, 4))
    spent = _separable(cost)
    unconstrained = tuple(int(v) for v in weights.argmax(axis=1))
    budget = 0.6 * spent(unconstrained)
    feasible = lambda x: spent(x) <= budget  # noqa: E731
    objective = _separable(weights)
    space = [x for x in itertools.product(range(4), repeat=6) if feasible(x)]
    optimum = max(space, key=objective)
    assert not feasible(unconstrained)
    neighbours, _ = _product_space(6, 4)
    start = min(space, key=spent)
    result = anneal(
        objective, feasible, neighbours, start, steps=3000, t_start=0.5, t_end=0.005, seed=2
    )
    assert result.state == optimum
    assert all(feasible(state) for state, _ in result.best)


def test_anneal_never_evaluates_an_infeasible_state_and_counts_each_state_once():
    calls: list[tuple[int, ...]] = []
    weights = np.random.default_rng(3).normal(size=(4, 3))

    def objective(x):
        assert sum(x) <= 4, "evaluated an infeasible state"
        calls.append(x)
        return _separable(weights)(x)

    neighbours, _ = _product_space(4, 3)
    result = anneal(
        objective, lambda x: sum(x) <= 4, neighbours, (0, 0, 0, 0), steps=800, restarts=2
    )
    assert len(calls) == len(set(calls)) == result.evaluations
    assert result.evaluations <= 3**4


def test_anneal_is_deterministic_for_a_seed():
    weights = np.random.default_rng(4).normal(size=(8, 5))
    neighbours, start = _product_space(8, 5)

    def run(seed):
        return anneal(_separable(weights), None, neighbours, start, steps=300, seed=seed)

    first, again, other = run(7), run(7), run(8)
    assert first == again
    assert first.trace != other.trace


def test_anneal_top_k_states_are_unique_and_sorted_by_value():
    weights = np.random.default_rng(5).normal(size=(6, 4))
    neighbours, start = _product_space(6, 4)
    result = anneal(_separable(weights), None, neighbours, start, steps=400, top_k=7)
    states = [state for state, _ in result.best]
    values = [value for _, value in result.best]
    assert len(result.best) == 7
    assert len(set(states)) == 7
    assert values == sorted(values, reverse=True)
    assert values == [_separable(weights)(s) for s in states]


def test_greedy_schedule_never_accepts_a_drop():
    weights = np.random.default_rng(6).normal(size=(6, 4))
    neighbours, start = _product_space(6, 4)
    result = anneal(
        _separable(weights), None, neighbours, start, steps=500, schedule="greedy", restarts=2
    )
    for trace in result.trace:
        assert all(b >= a for a, b in zip(trace, trace[1:]))


def test_stale_rule_accepts_only_drops_within_tolerance_after_the_stale_limit():
    weights = np.random.default_rng(7).normal(size=(6, 4))
    neighbours, start = _product_space(6, 4)
    result = anneal(
        _separable(weights),
        None,
        neighbours,
        start,
        steps=2000,
        schedule="greedy",
        stale_limit=20,
        stale_accept=0.5,
        restarts=1,
    )
    trace = result.trace[0]
    drops = [a - b for a, b in zip(trace, trace[1:]) if b < a]
    assert drops, "the stale rule never fired"
    assert max(drops) <= 0.5 + 1e-12
    first_drop = next(i for i, (a, b) in enumerate(zip(trace, trace[1:])) if b < a)
    assert first_drop >= 20


def test_patience_ends_a_restart_after_that_many_steps_without_improvement():
    neighbours, _ = _product_space(3, 2)
    result = anneal(lambda x: 0.0, None, neighbours, (0, 0, 0), steps=1000, patience=25)
    assert all(len(trace) == 26 for trace in result.trace)


def test_steps_with_only_infeasible_proposals_are_skipped():
    neighbours, _ = _product_space(3, 3)
    result = anneal(
        lambda x: float(sum(x)),
        lambda x: x == (0, 0, 0),
        neighbours,
        (0, 0, 0),
        steps=10,
        restarts=1,
        max_redraws=5,
    )
    assert result.skipped == 10 and result.proposals == 0
    assert result.best == [((0, 0, 0), 0.0)]


def test_geometric_temperatures_run_from_t_start_to_t_end():
    temps = temperatures(5, 2.0, 0.02, "geometric")
    np.testing.assert_allclose(temps, [2.0, 2.0 * 0.1**0.5, 0.2, 0.2 * 0.1**0.5, 0.02])


# --------------------------------------------------------------------------- genotypes


def test_random_genotypes_keep_two_inputs_per_node_and_never_the_zero_op():
    rng = np.random.default_rng(0)
    for _ in range(30):
        genotype = random_genotype(SPECS, "darts", "none", rng)
        for name, spec in SPECS.items():
            edges = genotype.cells[name]
            assert all(e.op != "none" for e in edges)
            for target in spec.targets:
                assert sum(e.target == target for e in edges) == 2


def _check_neighbour(old, new, max_changes):
    for name, spec in SPECS.items():
        assert all(e.op != "none" for e in new.cells[name])
        for target in spec.targets:
            sources = [e.source for e in new.cells[name] if e.target == target]
            assert len(sources) == len(set(sources)) == spec.keep
        genotype_encoding(new, SPECS, "none")  # every edge is in the space
    changed = sum(len(set(old.cells[n]) - set(new.cells[n])) for n in SPECS)
    assert 1 <= changed <= max_changes


@pytest.mark.parametrize("max_changes", [1, 3])
def test_genotype_neighbours_respect_keep_and_change_at_most_max_changes_edges(max_changes):
    rng = np.random.default_rng(max_changes)
    neighbours = genotype_neighbours(SPECS, "none", max_changes=max_changes)
    genotype = random_genotype(SPECS, "darts", "none", rng)
    for _ in range(200):
        new = neighbours(genotype, rng)
        _check_neighbour(genotype, new, max_changes)
        genotype = new


def test_genotype_neighbours_use_both_op_changes_and_edge_swaps():
    rng = np.random.default_rng(0)
    neighbours = genotype_neighbours(SPECS, "none")
    genotype = random_genotype(SPECS, "darts", "none", rng)
    key = encoding_key(SPECS, "none")
    kept_before = np.asarray(key(genotype)) != NOT_KEPT
    kinds = set()
    for _ in range(50):
        kept_after = np.asarray(key(neighbours(genotype, rng))) != NOT_KEPT
        kinds.add("swap" if (kept_after != kept_before).any() else "op")
    assert kinds == {"swap", "op"}


def test_anneal_over_genotypes_matches_brute_force_on_a_small_space():
    ops = ("none", "skip", "conv3", "conv5")
    specs = {"normal": cell_arch_spec(ops, n_inputs=2, n_nodes=2, keep=2)}
    weights = np.random.default_rng(9).normal(size=(len(specs["normal"].edges), len(ops)))
    key = encoding_key(specs, "none")

    def objective(genotype):
        return float(sum(weights[e, c] for e, c in enumerate(key(genotype)) if c != NOT_KEPT))

    # Node 2 keeps both of its inputs; node 3 keeps two of three: 3 × 3⁴ cells.
    space = []
    for dropped in range(3):
        for chosen in itertools.product(range(1, 4), repeat=4):
            codes = list(chosen[:2]) + list(chosen[2:])
            codes.insert(2 + dropped, NOT_KEPT)
            space.append(decode_genotype(codes, specs, "toy"))
    assert len({key(g) for g in space}) == 243
    optimum = max(space, key=objective)
    result = anneal(
        objective,
        None,
        genotype_neighbours(specs, "none", max_changes=2),
        lambda rng: random_genotype(specs, "toy", "none", rng),
        steps=600,
        t_start=0.5,
        t_end=0.01,
        key=key,
    )
    assert key(result.state) == key(optimum)
    assert result.value == pytest.approx(objective(optimum))


def encoding_key(specs, zero):
    """A genotype's integer encoding as a tuple (which op each edge keeps)."""
    return lambda genotype: tuple(genotype_encoding(genotype, specs, zero).tolist())
