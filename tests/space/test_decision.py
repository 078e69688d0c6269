"""Decided architectures: decision diagnostics, the entropy term, temperature annealing."""

import logging
import math

import pytest
import torch

from manifold_nas.config import parse_config
from manifold_nas.run.context import Run
from manifold_nas.search import search
from manifold_nas.space.diagnostics import decision
from manifold_nas.space.relaxations import SoftmaxRelaxation, SparsemaxRelaxation, entropy
from manifold_nas.strategies.bilevel.strategy import BilevelStrategy


def test_decision_is_one_for_uniform_and_zero_for_one_hot_rows():
    uniform = decision({"cell": torch.full((3, 4), 0.25)})
    assert uniform["entropy_ratio"] == pytest.approx(1.0) and uniform["top2_margin"] == 0.0
    one_hot = decision({"cell": torch.eye(4)[:3]})
    assert one_hot["entropy_ratio"] == pytest.approx(0.0) and one_hot["top2_margin"] == 1.0


def test_entropy_has_a_finite_gradient_at_exact_zeros():
    alpha = torch.tensor([[2.0, 0.1, -3.0]], requires_grad=True)
    p = SparsemaxRelaxation().probabilities(alpha)
    assert (p == 0).any()
    entropy(p).sum().backward()
    assert torch.isfinite(alpha.grad).all()


def test_softmax_temperature_anneals_geometrically_over_the_search():
    relaxation = SoftmaxRelaxation(temperature=2.0, temperature_end=0.5)
    relaxation.set_progress(0.0)
    assert relaxation.temperature == pytest.approx(2.0)
    relaxation.set_progress(0.5)
    assert relaxation.temperature == pytest.approx(1.0)
    relaxation.set_progress(1.0)
    assert relaxation.temperature == pytest.approx(0.5)


def test_the_entropy_weight_rises_after_the_warm_up(tiny_config_dict):
    strategy = BilevelStrategy(warmup_epochs=1, entropy_weight=0.4)
    weights = []
    for epoch in range(5):
        strategy.epoch = epoch
        weights.append(strategy._entropy_weight(epochs=5))
    assert weights == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4])


def test_the_entropy_term_makes_the_architecture_step_lower_the_entropy(tiny_config_dict):
    run = Run(parse_config(tiny_config_dict))
    strategy = BilevelStrategy(arch_optimizer={"name": "sgd", "lr": 1.0})
    strategy.setup(run)
    supernet = strategy.supernet
    with torch.no_grad():
        for alpha in supernet.arch_parameters():
            alpha.copy_(torch.randn_like(alpha))
    supernet.entropy_weight = 0.1
    before = [float(entropy(p).mean()) for p in supernet.arch.probabilities().values()]
    loss = supernet.regularizer()
    loss.backward()
    with torch.no_grad():
        for alpha in supernet.arch_parameters():
            alpha -= alpha.grad
    after = [float(entropy(p).mean()) for p in supernet.arch.probabilities().values()]
    assert all(a < b for a, b in zip(after, before))
    assert max(before) <= math.log(8)


def test_a_near_uniform_search_warns_and_reports_its_decision(tiny_config_dict, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="manifold_nas"):
        result = search(parse_config(tiny_config_dict), tmp_path, quiet=True)
    assert result.summary["entropy_ratio"] > 0.99
    assert "near-uniform" in caplog.text


def test_the_entropy_term_ends_the_same_search_more_decided(tiny_config_dict, tmp_path):
    # exponentiated gradient on the simplex (GAEA): the step is not normalised per
    # coordinate, so the entropy term's gradient acts at its own scale
    tiny_config_dict["relaxation"] = {"name": "simplex"}
    tiny_config_dict["search"]["epochs"] = 4
    tiny_config_dict["strategy"] = {"name": "bilevel", "arch_optimizer": {"name": "eg", "lr": 1.0}}
    plain = search(parse_config(tiny_config_dict), tmp_path / "plain", quiet=True).summary
    tiny_config_dict["strategy"]["entropy_weight"] = 5.0
    decided = search(parse_config(tiny_config_dict), tmp_path / "decided", quiet=True).summary
    assert plain["entropy_ratio"] > 0.9
    assert decided["entropy_ratio"] < plain["entropy_ratio"] - 0.2
    assert decided["top2_margin"] > plain["top2_margin"] + 0.1
