"""The one-shot benchmarks' ranking helpers: distinct draws within a budget, tau edge cases."""

from __future__ import annotations

import math

import pytest
import torch
from support import TINY_SPD

from benchmarks.ranking import kendall_tau, random_architectures
from manifold_nas.config import parse_config
from manifold_nas.cost.measure import count_parameters
from manifold_nas.run.context import Run
from manifold_nas.space.sampling import genotype_key


@pytest.fixture(scope="module")
def run() -> Run:
    return Run(parse_config(TINY_SPD), quiet=True)


def test_random_architectures_are_distinct_reproducible_and_within_budget(run: Run) -> None:
    sizes = sorted(count_parameters(run.build_derived(g)) for g in random_architectures(run, 8, 0))
    budget = sizes[len(sizes) // 2]
    drawn = random_architectures(run, 4, 1, budget)
    assert len({genotype_key(g) for g in drawn}) == 4
    with torch.random.fork_rng(devices=[]):
        assert all(count_parameters(run.build_derived(g)) <= budget for g in drawn)
    again = random_architectures(run, 4, 1, budget)
    assert [genotype_key(g) for g in again] == [genotype_key(g) for g in drawn]


def test_random_architectures_refuse_an_impossible_budget(run: Run) -> None:
    with pytest.raises(RuntimeError, match="found only 0 of 3 random architectures within 1"):
        random_architectures(run, 3, 0, budget=1)


def test_kendall_tau_orders_and_is_nan_for_a_constant_score() -> None:
    assert kendall_tau([1, 2, 3], [10, 20, 30]) == pytest.approx(1.0)
    assert kendall_tau([1, 2, 3], [30, 20, 10]) == pytest.approx(-1.0)
    assert math.isnan(kendall_tau([1, 1, 1], [1, 2, 3]))
