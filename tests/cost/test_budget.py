"""Budgets over measured costs: LUT sums, offsets, the cheapest design, budget parsing."""

from __future__ import annotations

import statistics

import numpy as np
import pytest
import torch
from support import TOY_OPS, TOY_SPECS, toy_space

from manifold_nas.cost.budget import GenotypeCost, Offset, cheapest_genotype, parse_budget
from manifold_nas.cost.table import CostTable
from manifold_nas.predictors.linear import NOT_KEPT, genotype_encoding
from manifold_nas.space.genotype import Genotype

OPS, SPECS = TOY_OPS, TOY_SPECS


def synthetic_table(seed: int = 0) -> CostTable:
    rng = np.random.default_rng(seed)
    shape = SPECS["normal"].shape
    costs = {
        kind: {"normal": torch.tensor(rng.uniform(1.0, 10.0, size=shape))}
        for kind in ("params", "latency_ms")
    }
    return CostTable(
        ops={"normal": OPS},
        edges={"normal": tuple(SPECS["normal"].edges)},
        costs=costs,
        fixed={"params": 100.0, "latency_ms": None},
        entries=(),
    )


def brute_force_sum(genotype: Genotype, table: CostTable, kind: str) -> float:
    codes = genotype_encoding(genotype, SPECS, "none")
    cost = table.cost(kind, "normal")
    return sum(float(cost[e, c]) for e, c in enumerate(codes) if c != NOT_KEPT)


def test_lut_cost_is_the_sum_of_the_chosen_entries_plus_the_fixed_part_or_zero():
    table = synthetic_table()
    model = GenotypeCost(table)
    for genotype in toy_space()[::17]:
        expected = brute_force_sum(genotype, table, "params") + 100.0
        assert model.cost(genotype, "params") == pytest.approx(expected)
        latency = brute_force_sum(genotype, table, "latency_ms")
        assert model.cost(genotype, "latency_ms") == pytest.approx(latency)
    assert model.offsets["latency_ms"] == Offset(0.0, "none")


def test_calibrated_offsets_are_the_median_end_to_end_residuals():
    table = synthetic_table()
    model = GenotypeCost(table)
    genotypes = toy_space()[:9]
    residuals = [0.5, 0.7, 0.2, 9.0, 0.4, 0.6, 0.3, 0.1, 0.8]
    measured = [
        {"latency_ms": model.op_sum(g, "latency_ms") + r, "params": model.op_sum(g, "params") + 7}
        for g, r in zip(genotypes, residuals)
    ]
    offsets = model.calibrate(genotypes, measured)
    assert offsets["latency_ms"] == Offset(statistics.median(residuals), "calibrated", 9)
    assert offsets["params"].value == pytest.approx(7.0)


def test_the_cheapest_genotype_matches_brute_force_over_the_whole_space():
    for seed in range(5):
        table = synthetic_table(seed)
        found = cheapest_genotype(table, SPECS, "toy", "none", "latency_ms")
        best = min(brute_force_sum(g, table, "latency_ms") for g in toy_space())
        assert brute_force_sum(found, table, "latency_ms") == pytest.approx(best)


def test_feasibility_needs_every_limit_with_the_safety_margin():
    model = GenotypeCost(synthetic_table())
    genotype = toy_space()[0]
    params, latency = model.cost(genotype, "params"), model.cost(genotype, "latency_ms")
    assert model.feasible(genotype, {"params": params, "latency_ms": latency})
    assert not model.feasible(genotype, {"params": params, "latency_ms": latency * 0.99})
    assert not model.feasible(genotype, {"params": params}, margin=0.1)
    assert model.feasible(genotype, {"params": params / 0.9}, margin=0.1)


def test_budgets_refuse_unknown_kinds_and_non_positive_limits():
    assert parse_budget({"latency_ms": 5}) == {"latency_ms": 5.0}
    with pytest.raises(ValueError, match="unknown cost kind"):
        parse_budget({"joules": 1})
    with pytest.raises(ValueError, match="positive number"):
        parse_budget({"params": 0})
