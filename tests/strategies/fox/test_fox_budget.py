"""Budgets over measured costs: LUT sums, offsets, the cheapest design, penalties, the predictor filter."""

from __future__ import annotations

import copy
import functools
import itertools
import random
import statistics

import numpy as np
import pytest
import torch
from conftest import TINY_VISION
from support import TINY_VOLUMETRIC

from manifold_nas.config import parse_config
from manifold_nas.cost.budget import GenotypeCost, Offset, cheapest_genotype, parse_budget
from manifold_nas.cost.table import CostTable, expected_cost
from manifold_nas.predictors.linear import NOT_KEPT, decode_genotype, genotype_encoding
from manifold_nas.run.context import Run
from manifold_nas.space.cell import cell_arch_spec
from manifold_nas.space.contracts import has_cost_model
from manifold_nas.space.genotype import Genotype, parse_cells
from manifold_nas.space.sampling import random_genotype
from manifold_nas.strategies.multi_trial.evolution import RegularizedEvolution
from manifold_nas.strategies.multi_trial.filters import PredictorFilter

OPS = ("none", "skip", "conv3", "conv5")
SPECS = {"normal": cell_arch_spec(OPS, n_inputs=2, n_nodes=2, keep=2)}


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


def whole_space() -> list[Genotype]:
    """Node 2 keeps both inputs, node 3 two of three: 3 × 3⁴ = 243 cells."""
    space = []
    for dropped in range(3):
        for chosen in itertools.product(range(1, 4), repeat=4):
            codes = list(chosen)
            codes.insert(2 + dropped, NOT_KEPT)
            space.append(decode_genotype(codes, SPECS, "toy"))
    return space


def brute_force_sum(genotype: Genotype, table: CostTable, kind: str) -> float:
    codes = genotype_encoding(genotype, SPECS, "none")
    cost = table.cost(kind, "normal")
    return sum(float(cost[e, c]) for e, c in enumerate(codes) if c != NOT_KEPT)


def test_lut_cost_is_the_sum_of_the_chosen_entries_plus_the_fixed_part_or_zero():
    table = synthetic_table()
    model = GenotypeCost(table)
    for genotype in whole_space()[::17]:
        expected = brute_force_sum(genotype, table, "params") + 100.0
        assert model.cost(genotype, "params") == pytest.approx(expected)
        latency = brute_force_sum(genotype, table, "latency_ms")
        assert model.cost(genotype, "latency_ms") == pytest.approx(latency)
    assert model.offsets["latency_ms"] == Offset(0.0, "none")


def test_calibrated_offsets_are_the_median_end_to_end_residuals():
    table = synthetic_table()
    model = GenotypeCost(table)
    genotypes = whole_space()[:9]
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
        best = min(brute_force_sum(g, table, "latency_ms") for g in whole_space())
        assert brute_force_sum(found, table, "latency_ms") == pytest.approx(best)


def test_feasibility_needs_every_limit_with_the_safety_margin():
    model = GenotypeCost(synthetic_table())
    genotype = whole_space()[0]
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


# -- the bilevel strategy's penalty ---------------------------------------------------
def vision_with_penalty(**penalty) -> dict:
    config = copy.deepcopy(TINY_VISION)
    config["search"]["arch_penalty"] = penalty
    return config


@pytest.fixture(scope="module")
def flops_table():
    """The measured FLOPs table of the tiny vision space and its uniform expected cost."""
    run = Run(parse_config(vision_with_penalty(kind="flops", budget=1.0)), quiet=True)
    supernet = run.build_supernet()
    assert not has_cost_model(supernet.network), "the premise: DARTS has no cost model"
    table = supernet.penalty.table
    uniform = {n: torch.full(s.shape, 1 / len(s.ops)) for n, s in supernet.specs.items()}
    return table, float(expected_cost(uniform, table, "flops"))


@pytest.mark.parametrize("scale", [0.5, 2.0])
def test_bilevel_flops_penalty_is_positive_above_the_budget_and_zero_below(flops_table, scale):
    table, spent = flops_table
    budget = spent * scale
    config = vision_with_penalty(kind="flops", budget=budget, weight=3.0)
    supernet = Run(parse_config(config), quiet=True).build_supernet()
    probabilities = {
        name: supernet.arch.relaxation.probabilities(alpha)
        for name, alpha in supernet.arch.alphas.items()
    }
    spent_now = float(expected_cost(probabilities, table, "flops").detach())
    expected = 3.0 * max(0.0, spent_now / budget - 1)
    penalty = supernet.regularizer() - supernet.arch.regularizer()
    assert float(penalty.detach()) == pytest.approx(expected, rel=1e-5, abs=1e-9)
    if scale < 1:
        assert expected > 2.9  # near-uniform initial architecture: E[FLOPs] ≈ 2 × budget
        penalty.backward()
        grads = [alpha.grad for alpha in supernet.arch.alphas.values()]
        assert any(g is not None and g.abs().sum() > 0 for g in grads)
    else:
        assert expected == 0.0


def test_a_network_with_its_own_cost_model_keeps_it_unless_the_kind_is_measured_only():
    own = copy.deepcopy(TINY_VOLUMETRIC)
    own["search"] = {**own["search"], "arch_penalty": {"budget": 1e6, "kind": "memory"}}
    run = Run(parse_config(own), quiet=True)
    network = run.build_searchable()
    assert isinstance(run._cost_penalty(network), functools.partial)
    own["search"]["arch_penalty"] = {"budget": 1e6, "kind": "flops"}
    run = Run(parse_config(own), quiet=True)
    assert run._cost_penalty(network).table.kinds == (
        "params",
        "flops",
        "flops_with_linalg",
        "memory",
    )


# -- the predictor filter of multi-trial search -----------------------------------------
def test_the_accuracy_rule_rejects_candidates_predicted_far_below_the_best():
    filt = PredictorFilter.parse({"margin": 0.05, "min_trials": 4})
    filt.bind_space(SPECS, "toy", "none", parameter_free={"skip"})
    space = whole_space()
    rng = random.Random(0)
    trials = []
    for genotype in rng.sample(space, 20):
        convs = sum(e.op == "conv5" for e in genotype.cells["normal"])
        trials.append(
            {
                "status": "complete",
                "curve": [0.5 + 0.1 * convs],
                "genotype": genotype.to_dict()["cells"],
            }
        )
    filt.update(trials)
    assert filt.best == pytest.approx(max(t["curve"][-1] for t in trials))
    poor = min(space, key=lambda g: sum(e.op == "conv5" for e in g.cells["normal"]))
    rich = max(space, key=lambda g: sum(e.op == "conv5" for e in g.cells["normal"]))
    assert filt.check(poor).stop and not filt.check(rich).stop
    assert filt.check(poor).predicted == pytest.approx(0.5)


def test_the_budget_rule_keeps_evolution_within_the_lut_budget():
    config = copy.deepcopy(TINY_VISION)
    config["train"]["max_steps_per_epoch"] = 1
    run = Run(parse_config(config), quiet=True)
    strategy = RegularizedEvolution(trials=3, population=2, sample=1, epochs=1, batch=3)
    strategy.predictor_filter = PredictorFilter.parse({"budget": {"params": 1500}})
    strategy.setup(run)
    strategy.run(run)
    cost = strategy.predictor_filter.cost
    trained = [t for t in strategy.trials if t["status"] != "rejected"]
    rejected = [t for t in strategy.trials if t["status"] == "rejected"]
    assert len(trained) == 3 and rejected, "the budget should bind on this space"
    for trial in strategy.trials:
        value = cost.cost(Genotype("darts", parse_cells(trial["genotype"])), "params")
        assert (value <= 1500) == (trial["status"] != "rejected")
    assert all("exceeds the budget" in t["reason"] for t in rejected)


def test_random_genotypes_of_both_samplers_come_from_one_definition():
    from manifold_nas.space.sampling import random_genotype as numpy_draw

    rng = np.random.default_rng(3)
    seed = int(np.random.default_rng(3).integers(2**63))
    drawn = numpy_draw(SPECS, "toy", "none", rng)
    same = random_genotype(SPECS, "toy", "none", random.Random(seed))
    assert drawn.cells == same.cells
