"""The bilevel strategy's architecture penalty: measured FLOPs tables and a network's own cost model."""

from __future__ import annotations

import copy
import functools

import pytest
import torch
from support import TINY_VISION, TINY_VOLUMETRIC

from manifold_nas.config import parse_config
from manifold_nas.cost.table import expected_cost
from manifold_nas.run.context import Run
from manifold_nas.search import build_strategy
from manifold_nas.space.contracts import has_cost_model
from manifold_nas.strategies.bilevel.penalty import architecture_penalty


def vision_with_penalty(**penalty) -> dict:
    config = copy.deepcopy(TINY_VISION)
    config["strategy"] = {"name": "bilevel", "arch_penalty": penalty}
    return config


def bilevel_supernet(config: dict):
    """The supernet the bilevel strategy searches with ``config``'s penalty."""
    parsed = parse_config(config)
    run, strategy = Run(parsed, quiet=True), build_strategy(parsed)
    strategy.setup(run)
    return strategy.supernet


@pytest.fixture(scope="module")
def flops_table():
    """The measured FLOPs table of the tiny vision space and its uniform expected cost."""
    supernet = bilevel_supernet(vision_with_penalty(kind="flops", budget=1.0))
    assert not has_cost_model(supernet.network), "the premise: DARTS has no cost model"
    table = supernet.penalty.table
    uniform = {n: torch.full(s.shape, 1 / len(s.ops)) for n, s in supernet.specs.items()}
    return table, float(expected_cost(uniform, table, "flops"))


@pytest.mark.parametrize("scale", [0.5, 2.0])
def test_bilevel_flops_penalty_is_positive_above_the_budget_and_zero_below(flops_table, scale):
    table, spent = flops_table
    budget = spent * scale
    supernet = bilevel_supernet(vision_with_penalty(kind="flops", budget=budget, weight=3.0))
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
    run = Run(parse_config(TINY_VOLUMETRIC), quiet=True)
    network = run.build_searchable()
    own = architecture_penalty(run, network, {"budget": 1e6, "kind": "memory"})
    assert isinstance(own, functools.partial)
    measured = architecture_penalty(run, network, {"budget": 1e6, "kind": "flops"})
    assert measured.table.kinds == ("params", "flops", "flops_with_linalg", "memory")


def test_no_penalty_options_give_no_penalty():
    run = Run(parse_config(TINY_VOLUMETRIC), quiet=True)
    assert architecture_penalty(run, run.build_searchable(), {}) is None
