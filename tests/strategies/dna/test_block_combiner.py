"""The exact block combiner against brute force over every combination."""

import functools
import itertools
import operator
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from manifold_nas.errors import UserInputError
from manifold_nas.strategies.dna.combiner import (
    Candidate,
    Combination,
    combine_at_budgets,
    combine_blocks,
    pareto_front,
)


def left_sum(values):
    """Totals as the combiner defines them: summed left to right in block order."""
    return functools.reduce(operator.add, values)


def all_combinations(blocks):
    """Every combination as (loss, cost, choice), totals summed in block order."""
    rows = []
    for choice in itertools.product(*(range(len(block)) for block in blocks)):
        picked = [blocks[b][j] for b, j in enumerate(choice)]
        rows.append((left_sum(p[0] for p in picked), left_sum(p[1] for p in picked), choice))
    return rows


def brute_force_optimum(blocks, budget):
    feasible = [row for row in all_combinations(blocks) if row[1] <= budget]
    return min(feasible) if feasible else None


def brute_force_front(blocks):
    """Non-dominated (cost, loss) points, each with its lexicographically smallest choice."""
    rows = all_combinations(blocks)
    front = []
    for loss, cost, choice in rows:
        dominated = any(
            (c <= cost and lo <= loss and (c, lo) != (cost, loss))
            or ((c, lo) == (cost, loss) and ch < choice)
            for lo, c, ch in rows
        )
        if not dominated:
            front.append(Combination(choice, loss, cost))
    return sorted(front, key=lambda f: f.cost)


def as_row(combination):
    return (combination.loss, combination.cost, combination.choice)


# Multiples of 1/8 below 2**10 add up exactly, so ties are exact and the
# tie-break by cost and choice is fully determined.
grid_values = st.integers(0, 40).map(lambda k: k / 8)
real_losses = st.floats(-1e3, 1e3, allow_nan=False)
real_costs = st.floats(0, 1e3, allow_nan=False)


@st.composite
def instances(draw, losses=real_losses, costs=real_costs):
    n_blocks = draw(st.integers(1, 4))
    blocks = [
        draw(st.lists(st.tuples(losses, costs), min_size=1, max_size=6)) for _ in range(n_blocks)
    ]
    if draw(st.booleans()):
        # A budget equal to some combination's cost exercises the "<=" boundary.
        choice = [draw(st.integers(0, len(block) - 1)) for block in blocks]
        budget = left_sum(block[j][1] for block, j in zip(blocks, choice))
    else:
        cheapest = sum(min(c for _, c in block) for block in blocks)
        dearest = sum(max(c for _, c in block) for block in blocks)
        budget = cheapest + draw(st.floats(-0.2, 1.2)) * (dearest - cheapest)
    return blocks, budget


def combine_or_none(blocks, budget):
    try:
        return combine_blocks(blocks, budget)
    except UserInputError:
        return None


@settings(max_examples=300, deadline=None)
@given(instances())
def test_combine_blocks_finds_the_brute_force_minimum_loss_within_budget(instance):
    blocks, budget = instance
    best = brute_force_optimum(blocks, budget)
    found = combine_or_none(blocks, budget)
    if best is None:
        assert found is None
        return
    assert (found.loss, found.cost) == best[:2]
    picked = [blocks[b][j] for b, j in enumerate(found.choice)]
    assert found.loss == left_sum(p[0] for p in picked)
    assert found.cost == left_sum(p[1] for p in picked) <= budget


@settings(max_examples=300, deadline=None)
@given(instances(losses=grid_values, costs=grid_values))
def test_combine_blocks_breaks_ties_like_brute_force_when_sums_are_exact(instance):
    blocks, budget = instance
    best = brute_force_optimum(blocks, budget)
    found = combine_or_none(blocks, budget)
    assert (None if found is None else as_row(found)) == best


@settings(max_examples=150, deadline=None)
@given(instances())
def test_pareto_front_has_the_brute_force_non_dominated_totals(instance):
    blocks, _ = instance
    expected = [(f.cost, f.loss) for f in brute_force_front(blocks)]
    assert [(f.cost, f.loss) for f in pareto_front(blocks)] == expected


@settings(max_examples=150, deadline=None)
@given(instances(losses=grid_values, costs=grid_values))
def test_pareto_front_equals_brute_force_with_choices_when_sums_are_exact(instance):
    blocks, _ = instance
    assert pareto_front(blocks) == brute_force_front(blocks)


@settings(max_examples=150, deadline=None)
@given(instances(), st.lists(st.floats(-10, 5e3), max_size=5))
def test_combine_at_budgets_agrees_with_combine_blocks_at_every_budget(instance, budgets):
    blocks, budget = instance
    budgets = [*budgets, budget]
    assert combine_at_budgets(blocks, budgets) == [combine_or_none(blocks, b) for b in budgets]


def test_pareto_front_with_max_cost_is_the_cheap_part_of_the_whole_front():
    rng = np.random.default_rng(0)
    blocks = [list(zip(rng.random(30), rng.random(30))) for _ in range(3)]
    whole = pareto_front(blocks)
    cap = whole[len(whole) // 2].cost
    assert pareto_front(blocks, max_cost=cap) == [f for f in whole if f.cost <= cap]


@pytest.mark.parametrize("shape", ["convex", "collinear", "integer", "noisy"])
def test_pruned_search_matches_the_unpruned_front_on_structured_instances(shape):
    rng = np.random.default_rng(1)
    blocks = []
    # On a line every combination is on the front, so that shape gets fewer candidates.
    size = 12 if shape == "collinear" else 25
    for _ in range(4):
        cost = rng.uniform(1, 10, size)
        loss = {
            "convex": 1 / cost,
            "collinear": 5 - 0.25 * cost,
            "integer": rng.integers(0, 6, size).astype(float),
            "noisy": 1 / cost + rng.normal(0, 0.02, size),
        }[shape]
        if shape == "integer":
            cost = rng.integers(0, 8, size).astype(float)
        blocks.append(list(zip(loss, cost)))
    front = pareto_front(blocks)
    costs = np.array([f.cost for f in front])
    budgets = np.quantile(costs, np.linspace(0, 1, 9))
    for budget, row in zip(budgets, np.searchsorted(costs, budgets, side="right") - 1):
        assert combine_blocks(blocks, budget) == front[row]


def test_lower_cost_wins_a_tie_in_loss():
    blocks = [[(1.0, 5.0), (1.0, 2.0)], [(0.0, 1.0)]]
    assert combine_blocks(blocks, 10.0) == Combination((1, 0), 1.0, 3.0)


def test_lexicographically_smaller_choice_wins_a_tie_in_loss_and_cost():
    # Under budget 3 the choices (0, 0) and (1, 1) both have loss 1 and cost 3, in either order.
    blocks = [[(1.0, 1.0), (0.0, 2.0)], [(0.0, 2.0), (1.0, 1.0)]]
    assert combine_blocks(blocks, 3.0) == Combination((0, 0), 1.0, 3.0)
    assert combine_blocks(blocks[::-1], 3.0) == Combination((0, 0), 1.0, 3.0)


def test_candidates_are_accepted_and_their_keys_ignored():
    blocks = [
        [Candidate(0.5, 1.0, key=("mb6_k3",)), Candidate(0.1, 3.0, key=("mb6_k7",))],
        [Candidate(0.2, 1.0, key=("mb3_k5",))],
    ]
    assert combine_blocks(blocks, 4.0) == Combination((1, 0), left_sum([0.1, 0.2]), 4.0)


def test_totals_are_float_sums_in_block_order():
    # 0.1 + 0.2 + 0.3 is 0.6000000000000001 in floating point, so it exceeds 0.6.
    blocks = [[(0.0, 0.1)], [(0.0, 0.2)], [(1.0, 0.3), (2.0, 0.0)]]
    assert combine_blocks(blocks, 0.6).choice == (0, 0, 1)


def test_an_infinite_budget_picks_each_blocks_smallest_loss():
    blocks = [[(3.0, 1.0), (1.0, 9.0)], [(2.0, 0.0), (0.5, 7.0)]]
    assert combine_blocks(blocks, float("inf")).choice == (1, 1)


def test_infeasible_budget_names_the_cheapest_cost_and_the_budget():
    blocks = [[(1.0, 3.0), (0.0, 4.0)], [(1.0, 2.0)]]
    with pytest.raises(ValueError, match=r"budget 4\b.*cheapest one costs 5\b"):
        combine_blocks(blocks, 4.0)


def test_infeasible_budgets_give_none_and_an_empty_front():
    blocks = [[(1.0, 3.0)], [(1.0, 2.0)]]
    assert combine_at_budgets(blocks, [4.0, 5.0]) == [None, Combination((0, 0), 2.0, 5.0)]
    assert pareto_front(blocks, max_cost=4.0) == []


@pytest.mark.parametrize(
    "blocks, message",
    [
        ([], r"no blocks"),
        ([[(1.0, 1.0)], []], r"block 1 has no candidates"),
        ([[(1.0, 1.0), (float("nan"), 1.0)]], r"block 0, candidate 1: loss is nan"),
        ([[(1.0, 1.0)], [(1.0, float("inf"))]], r"block 1, candidate 0: cost is inf"),
        ([[(1.0, 1.0)], [(0.0, 1.0), (1.0, -2.0)]], r"block 1, candidate 1: cost -2 is negative"),
        ([[(1.0, 1.0, 2.0)]], r"block 0, candidate 0: expected a Candidate"),
        ([[("a", 1.0)]], r"block 0, candidate 0: loss and cost must be numbers"),
        ([[(1.0, 1e308)], [(1.0, 1e308)]], r"overflow"),
    ],
)
def test_bad_input_is_a_one_line_value_error_naming_the_culprit(blocks, message):
    for call in (
        lambda: combine_blocks(blocks, 1.0),
        lambda: pareto_front(blocks),
        lambda: combine_at_budgets(blocks, [1.0]),
    ):
        with pytest.raises(ValueError, match=message) as error:
            call()
        assert "\n" not in str(error.value)


def test_a_nan_budget_is_rejected():
    with pytest.raises(ValueError, match="budget is nan"):
        combine_blocks([[(1.0, 1.0)]], float("nan"))


def dna_sized_instance(seed, convex=False):
    rng = np.random.default_rng(seed)
    blocks = []
    for _ in range(6):
        cost = rng.uniform(1, 10, 1296)
        loss = 1 / cost if convex else rng.uniform(0, 1, 1296)
        blocks.append(list(zip(loss.tolist(), cost.tolist())))
    cheapest = sum(min(c for _, c in block) for block in blocks)
    dearest = sum(max(c for _, c in block) for block in blocks)
    return blocks, (cheapest + dearest) / 2


@pytest.mark.parametrize("convex", [False, True], ids=["random", "every-candidate-on-the-front"])
def test_six_blocks_of_1296_candidates_solve_in_under_a_second(convex):
    blocks, budget = dna_sized_instance(0, convex)
    started = time.perf_counter()
    found = combine_blocks(blocks, budget)
    elapsed = time.perf_counter() - started
    assert found.cost <= budget
    assert elapsed < 1.0, f"took {elapsed:.3f} s"
