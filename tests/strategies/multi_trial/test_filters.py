"""Trial filters: the predictor filter's accuracy rule and its LUT budget rule."""

from __future__ import annotations

import copy
import random

import pytest
from support import TINY_VISION, TOY_OPS, TOY_SPECS, toy_space

from manifold_nas.config import parse_config
from manifold_nas.run.context import Run
from manifold_nas.space.genotype import Genotype, parse_cells
from manifold_nas.strategies.multi_trial.evolution import RegularizedEvolution
from manifold_nas.strategies.multi_trial.filters import PredictorFilter

OPS, SPECS = TOY_OPS, TOY_SPECS


# -- the predictor filter of multi-trial search -----------------------------------------
def test_the_accuracy_rule_rejects_candidates_predicted_far_below_the_best():
    filt = PredictorFilter.parse({"margin": 0.05, "min_trials": 4})
    filt.bind_space(SPECS, "toy", "none", parameter_free={"skip"})
    space = toy_space()
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
