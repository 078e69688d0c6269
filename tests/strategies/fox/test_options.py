"""The ``fox`` strategy's options: one field per keyword, checked in order, normalised once."""

from __future__ import annotations

import dataclasses
import inspect
import re

import pytest

from manifold_nas.strategies.fox.options import FoxOptions
from manifold_nas.strategies.fox.strategy import FoxSearch


def test_the_options_have_one_field_per_keyword_of_the_strategy_in_its_order():
    keywords = list(inspect.signature(FoxSearch).parameters)
    assert [field.name for field in dataclasses.fields(FoxOptions)] == keywords


def test_the_defaults_are_normalised_and_the_annealing_options_keep_their_order():
    options = FoxSearch(samples=3.0, budget=None, restarts=2.0).options
    assert options.samples == 3 and isinstance(options.samples, int)
    assert options.restarts == 2 and isinstance(options.restarts, int)
    assert options.budget == {} and options.labels == "supernet"
    assert isinstance(options.t_start, float) and options.measure is True
    assert list(options.anneal_options) == [
        "steps",
        "restarts",
        "top_k",
        "schedule",
        "t_start",
        "t_end",
        "stale_limit",
        "stale_accept",
        "patience",
    ]
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.samples = 5


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"labels": "oracle"}, "labels must be one of ('supernet', 'trials'), got 'oracle'"),
        ({"predictor": "mlp"}, "predictor must be one of"),
        ({"feasibility": "oracle"}, "feasibility must be one of ('lut', 'predictor'), got 'oracle'"),
        ({"feasibility": "predictor", "measure": False}, "feasibility 'predictor' fits cost models"),
        ({"safety_margin": 1.0}, "safety_margin must lie in [0, 1), got 1.0"),
        ({"samples": 0}, "samples must be a positive integer, got 0"),
        ({"samples": 2}, "samples must be at least 3 to fit a predictor, got 2"),
        ({"trial_epochs": 0}, "trial_epochs must be a positive integer"),
        ({"recalibration_batches": -1}, "recalibration_batches must be >= 0, got -1"),
        ({"budget": {"watts": 3}}, "unknown cost kind 'watts'"),
        ({"restarts": 0}, "restarts must be a positive integer"),
        ({"top_k": 0}, "top_k must be a positive integer"),
        ({"steps": -1}, "steps must be >= 0, got -1"),
        ({"max_changes": 0}, "max_changes must be a positive integer"),
        ({"latency_warmup": -1}, "latency_warmup must be >= 0, got -1"),
        ({"latency_repeats": 0}, "latency_repeats must be a positive integer"),
        # the first bad option in the order of the checks is the one reported
        ({"steps": -1, "labels": "oracle"}, "labels must be one of"),
        ({"latency_repeats": 0, "samples": 2}, "samples must be at least 3"),
    ],
)  # fmt: skip
def test_a_bad_option_is_refused_with_its_message(options, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        FoxSearch(**options)
