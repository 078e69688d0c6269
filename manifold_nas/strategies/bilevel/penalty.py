"""The bilevel strategy's architecture-loss penalty (``strategy.arch_penalty``).

The penalty prices the expected cost of the architecture distribution. A
network with its own cost model prices it (its ``cost_penalty``), unless the
kind is one only measurement gives (FLOPs, latency); otherwise the measured
per-op table of :func:`manifold_nas.cost.budget.measured_penalty` does. The
table is measured once, on a forked random stream, so a search with a penalty
draws the same numbers as one without.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from manifold_nas.config import check_options
from manifold_nas.cost.budget import MEASURED_ONLY_KINDS, measured_penalty
from manifold_nas.run.context import Run
from manifold_nas.space.contracts import has_cost_model

__all__ = ["architecture_penalty"]

Penalty = Callable[[Mapping[str, Tensor]], Tensor]


def architecture_penalty(
    run: Run, network: nn.Module, options: Mapping[str, Any]
) -> Penalty | None:
    """The penalty ``options`` ask for on ``network`` (None when ``options`` is empty)."""
    options = dict(options)
    if not options:
        return None
    if not has_cost_model(network) or options.get("kind") in MEASURED_ONLY_KINDS:
        with torch.random.fork_rng(devices=[]):
            network = network.to(run.device)
            return measured_penalty(network, run.example_input(), options, run.cost_cache_dir)
    check_options(network.cost_penalty, options, "strategy.arch_penalty", n_positional=1)
    return functools.partial(network.cost_penalty, **options)
