"""The ``fox`` strategy's options, checked and normalised once when the strategy is built.

:class:`FoxOptions` has one field per keyword of
:class:`~manifold_nas.strategies.fox.strategy.FoxSearch` (the config's
``strategy:`` keys), so the strategy keeps the keyword signature that configs
are checked against and hands the values here. A bad value raises the
``ValueError`` the config loader reports; the annealing options that
:func:`~manifold_nas.strategies.fox.annealing.anneal` checks itself
(``schedule``, the temperatures, ``stale_limit``, ``stale_accept``,
``patience``) are left to it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from manifold_nas.config import positive_int
from manifold_nas.cost.budget import parse_budget
from manifold_nas.predictors.performance import PREDICTOR_KINDS

__all__ = ["FEASIBILITY", "LABEL_SOURCES", "FoxOptions"]

#: where a sub-network's accuracy label comes from
LABEL_SOURCES = ("supernet", "trials")
#: what decides whether a design is within the budget
FEASIBILITY = ("lut", "predictor")


@dataclass(frozen=True)
class FoxOptions:
    """The checked options of one ``fox`` run; see :class:`~manifold_nas.strategies.fox.strategy.FoxSearch`.

    Built from the raw keyword values; ``__post_init__`` checks them in a
    fixed order (the first bad one is the one reported) and stores the
    normalised values: counts as ``int``, ``budget`` as a ``{kind: limit}``
    dict (``{}`` for none), flags as ``bool``, margins and temperatures as
    ``float``.
    """

    samples: int
    labels: str
    trial_epochs: int
    recalibration_batches: int
    budget: dict[str, float]
    predictor: str
    interactions: bool
    feasibility: str
    safety_margin: float
    measure: bool
    steps: int
    restarts: int
    top_k: int
    schedule: str
    t_start: float
    t_end: float
    stale_limit: int | None
    stale_accept: float | None
    patience: int | None
    max_changes: int
    verify: bool
    latency_warmup: int
    latency_repeats: int

    def __post_init__(self) -> None:
        if self.labels not in LABEL_SOURCES:
            raise ValueError(f"labels must be one of {LABEL_SOURCES}, got {self.labels!r}")
        if self.predictor not in PREDICTOR_KINDS:
            raise ValueError(f"predictor must be one of {PREDICTOR_KINDS}, got {self.predictor!r}")
        if self.feasibility not in FEASIBILITY:
            raise ValueError(f"feasibility must be one of {FEASIBILITY}, got {self.feasibility!r}")
        if self.feasibility == "predictor" and not self.measure:
            raise ValueError(
                "feasibility 'predictor' fits cost models on measurements: set measure"
            )
        if not 0.0 <= self.safety_margin < 1.0:
            raise ValueError(f"safety_margin must lie in [0, 1), got {self.safety_margin}")
        # each value is converted where it is checked, so a value that passes one
        # check and fails a conversion is reported in the same order as the checks
        normalised: dict[str, Any] = {"samples": positive_int("samples", self.samples)}
        if normalised["samples"] < 3:
            raise ValueError(f"samples must be at least 3 to fit a predictor, got {self.samples}")
        normalised["trial_epochs"] = positive_int("trial_epochs", self.trial_epochs)
        if self.recalibration_batches < 0:
            raise ValueError(
                f"recalibration_batches must be >= 0, got {self.recalibration_batches}"
            )
        normalised["recalibration_batches"] = int(self.recalibration_batches)
        normalised["budget"] = parse_budget(self.budget)
        normalised["interactions"] = bool(self.interactions)
        normalised["safety_margin"] = float(self.safety_margin)
        normalised["measure"] = bool(self.measure)
        normalised["steps"] = int(self.steps)
        normalised["restarts"] = positive_int("restarts", self.restarts)
        normalised["top_k"] = positive_int("top_k", self.top_k)
        normalised["t_start"] = float(self.t_start)
        normalised["t_end"] = float(self.t_end)
        if self.steps < 0:
            raise ValueError(f"steps must be >= 0, got {self.steps}")
        normalised["max_changes"] = positive_int("max_changes", self.max_changes)
        normalised["verify"] = bool(self.verify)
        if self.latency_warmup < 0:
            raise ValueError(f"latency_warmup must be >= 0, got {self.latency_warmup}")
        normalised["latency_warmup"] = int(self.latency_warmup)
        normalised["latency_repeats"] = positive_int("latency_repeats", self.latency_repeats)
        for name, value in normalised.items():
            # frozen for everyone else: the normalised values are stored once, here
            object.__setattr__(self, name, value)

    @property
    def anneal_options(self) -> dict[str, Any]:
        """The keywords :func:`~manifold_nas.strategies.fox.annealing.anneal` takes from these options.

        In this order, which is also the order they are reported in ``designs.json``.
        """
        return {
            "steps": self.steps,
            "restarts": self.restarts,
            "top_k": self.top_k,
            "schedule": self.schedule,
            "t_start": self.t_start,
            "t_end": self.t_end,
            "stale_limit": self.stale_limit,
            "stale_accept": self.stale_accept,
            "patience": self.patience,
        }
