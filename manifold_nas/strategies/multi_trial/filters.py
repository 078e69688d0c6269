"""Trial filters: reject a genotype before it is trained.

NNI-style middleware around multi-trial search: :class:`ParameterFilter` refuses
networks over a parameter budget, :class:`PredictorFilter` those a linear
accuracy model predicts below the best so far, or a cost table prices over budget.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from manifold_nas.config import check_options
from manifold_nas.cost.budget import GenotypeCost, parse_budget
from manifold_nas.predictors.linear import LinearPredictor
from manifold_nas.predictors.performance import (
    MIN_LASSO_SAMPLES,
    PREDICTOR_KINDS,
    FeatureSpace,
    fit_predictor,
)
from manifold_nas.run.context import Run
from manifold_nas.space.cell import ArchSpec
from manifold_nas.space.genotype import Genotype, parse_cells
from manifold_nas.strategies.multi_trial.early_stopping import Decision

Candidate = TypeVar("Candidate")

__all__ = [
    "ParameterFilter",
    "PredictorFilter",
]


# -- a filter for multi-trial search ---------------------------------------------------------
@dataclass
class PredictorFilter:
    """The ``predictor_filter`` of multi-trial search: reject candidates before training.

    Two rules, either or both:

    * **accuracy** (``margin``): once ``min_trials`` trials are trained to the
      end, an OLS (or Lasso, ``kind``) model of their final score on the
      genotype features is refitted after every batch; a candidate whose
      predicted score is below the best final score so far minus ``margin``
      is rejected;
    * **budget** (``budget: {kind: limit}``): a candidate whose look-up-table
      cost (LUT sum plus the table's fixed part, see
      :class:`~manifold_nas.cost.budget.GenotypeCost`) exceeds a limit is
      rejected. Kinds without an additive fixed part (``latency_ms``,
      ``memory``) are then the op sums alone.

    The model only ever sees trials of earlier batches, so the filter keeps
    multi-trial search independent of its backend and of interruptions.
    """

    margin: float | None = None
    min_trials: int = 8
    budget: Mapping[str, float] = field(default_factory=dict)
    kind: str = "ols"
    interactions: bool = False
    model: LinearPredictor | None = field(default=None, init=False, repr=False)
    best: float | None = field(default=None, init=False)
    cost: GenotypeCost | None = field(default=None, init=False, repr=False)

    @classmethod
    def parse(cls, value: Mapping[str, Any] | None) -> PredictorFilter | None:
        """The option's mapping (``margin``, ``min_trials``, ``budget``, ``kind``, ``interactions``)."""
        if value is None:
            return None
        if not isinstance(value, Mapping):
            raise ValueError(f"predictor_filter must be a mapping, got {value!r}")
        options = dict(value)
        check_options(cls, options, "strategy.predictor_filter")
        options["budget"] = parse_budget(options.get("budget"), "predictor_filter.budget")
        found = cls(**options)
        if found.kind not in PREDICTOR_KINDS:
            raise ValueError(f"predictor_filter.kind must be one of {PREDICTOR_KINDS}")
        if found.margin is not None and not found.margin >= 0:
            raise ValueError(f"predictor_filter.margin must be >= 0, got {found.margin!r}")
        if found.min_trials < 2:
            raise ValueError("predictor_filter.min_trials must be at least 2")
        if found.margin is None and not found.budget:
            raise ValueError("predictor_filter needs a margin, a budget or both")
        return found

    def to_dict(self) -> dict[str, Any]:
        return {
            "margin": self.margin,
            "min_trials": self.min_trials,
            "budget": dict(self.budget),
            "kind": self.kind,
            "interactions": self.interactions,
        }

    def bind_space(
        self,
        specs: Mapping[str, ArchSpec],
        opset: str,
        zero: str | None,
        parameter_free: Collection[str] = (),
    ) -> None:
        """The search space whose genotypes the accuracy model reads."""
        self.features = FeatureSpace(specs, zero, parameter_free, self.interactions)
        self.opset = opset

    def setup(self, run: Run, specs: Mapping[str, ArchSpec]) -> None:
        """Bind the run's search space and, with a budget, measure its cost table."""
        self.bind_space(specs, run.opset.name, run.opset.zero, run.opset.parameter_free)
        if self.budget:
            table = run.cost_table(latency="latency_ms" in self.budget)
            self.cost = GenotypeCost(table)

    def update(self, trials: Sequence[Mapping[str, Any]]) -> None:
        """Refit the accuracy model on the trials trained to the end (records of multi-trial search)."""
        if self.margin is None:
            return
        done = [t for t in trials if t["status"] == "complete" and t["curve"]]
        scores = [float(t["curve"][-1]) for t in done]
        usable = [(t, s) for t, s in zip(done, scores) if math.isfinite(s)]
        if len(usable) < self.min_trials:
            self.model = None
            return
        genotypes = [Genotype(self.opset, parse_cells(t["genotype"])) for t, _ in usable]
        y = [s for _, s in usable]
        kind = self.kind if len(usable) >= MIN_LASSO_SAMPLES else "ols"
        self.model = fit_predictor(self.features.matrix(genotypes), y, kind)
        self.best = max(y)

    def check(self, genotype: Genotype) -> Decision:
        """``stop=True`` (reject) when over the budget or predicted below the best minus ``margin``."""
        if self.cost is not None:
            for kind, limit in self.budget.items():
                value = self.cost.cost(genotype, kind)
                if value > limit:
                    return Decision(
                        True, f"look-up-table {kind} {value:.4g} exceeds the budget {limit:.4g}"
                    )
        if self.model is not None:
            predicted = float(self.model.predict(self.features.matrix([genotype]))[0])
            if predicted < self.best - self.margin:
                return Decision(
                    True,
                    f"predicted score {predicted:.4g} is more than {self.margin:g} below "
                    f"the best so far ({self.best:.4g})",
                    predicted=predicted,
                )
            return Decision(False, f"predicted score {predicted:.4g}", predicted=predicted)
        return Decision(False, "within the filter")


@dataclass(frozen=True)
class ParameterFilter:
    """EEEA-Net's early exit: reject a candidate with more than ``max_parameters`` before training."""

    max_parameters: int

    def check(self, n_parameters: int) -> Decision:
        """``stop=True`` (reject) when ``n_parameters > max_parameters``."""
        if n_parameters > self.max_parameters:
            return Decision(
                True,
                f"{n_parameters:,} parameters exceed the limit of {self.max_parameters:,}",
            )
        return Decision(
            False, f"{n_parameters:,} parameters within the limit of {self.max_parameters:,}"
        )

    def sample_within_limit(
        self,
        sample: Callable[[], Candidate],
        count_parameters: Callable[[Candidate], int],
        max_draws: int = 1000,
    ) -> Candidate:
        """Draw candidates until one passes :meth:`check`, as EEEA-Net redraws rejected ones.

        Raises
        ------
        RuntimeError
            When ``max_draws`` draws in a row were all over the limit.
        """
        for _ in range(max_draws):
            candidate = sample()
            if not self.check(count_parameters(candidate)).stop:
                return candidate
        raise RuntimeError(
            f"no candidate within {self.max_parameters:,} parameters in {max_draws} draws"
        )
