r"""Explainable accuracy and cost models of a search space, fitted on labelled sub-networks.

FOX-NAS fits one ordinary-least-squares model of accuracy and one of latency
on a few hundred sampled sub-networks and reads each coefficient as a
marginal effect. This module does that for any search space of manifold-nas,
on top of :mod:`manifold_nas.predictors.linear`:

* :class:`FeatureSpace`: the readable features of
  :func:`~manifold_nas.predictors.linear.genotype_features` (per cell type: depth,
  op counts, depth × count) for one search space;
* :class:`PerformanceModels`: per target (the task's primary metric, and
  every measured cost kind), an OLS and a Lasso :class:`~manifold_nas.predictors.linear.LinearPredictor`
  over the same features, with their cross-validated quality;
* :func:`held_out_quality` / :func:`cross_validated_quality`: Kendall's
  :math:`\tau` and :math:`R^2 = 1 - \sum (y - \hat y)^2 / \sum (y - \bar y)^2`
  on sub-networks a model did not see;
* :func:`write_performance_report`: ``predictor.md`` (every coefficient with
  its 95 % interval, per model) and ``predictor_coefficients.png``;
* :class:`PredictorFilter`: the predictors as a pre-training filter for
  multi-trial search (reject a candidate predicted far below the best trial
  so far, or over a cost budget by the look-up table).
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from scipy import stats

from manifold_nas.predictors.linear import (
    LinearPredictor,
    draw_coefficients,
    feature_names,
    genotype_feature_matrix,
    write_predictor_report,
)
from manifold_nas.space.cell import ArchSpec
from manifold_nas.space.genotype import Genotype

if TYPE_CHECKING:
    pass

__all__ = [
    "FeatureSpace",
    "PREDICTOR_KINDS",
    "PerformanceModels",
    "Quality",
    "cross_validated_quality",
    "fit_predictor",
    "held_out_quality",
    "kendall_tau",
    "r_squared",
    "write_performance_report",
]

PREDICTOR_KINDS = ("ols", "lasso")
#: the fewest labelled sub-networks a Lasso (with its cross-validated penalty) is fitted on
MIN_LASSO_SAMPLES = 6


# -- quality -----------------------------------------------------------------------------
def kendall_tau(truth: Sequence[float], predicted: Sequence[float]) -> float:
    """Kendall's :math:`\\tau_b` between two score lists (NaN when either is constant)."""
    truth, predicted = np.asarray(truth, float), np.asarray(predicted, float)
    if len(truth) < 2 or np.ptp(truth) == 0 or np.ptp(predicted) == 0:
        return math.nan
    return float(stats.kendalltau(truth, predicted).statistic)


def r_squared(truth: Sequence[float], predicted: Sequence[float]) -> float:
    """:math:`1 - \\sum (y - \\hat y)^2 / \\sum (y - \\bar y)^2` (NaN for a constant ``y``).

    On held-out data it can be negative: worse than predicting the mean.
    """
    truth, predicted = np.asarray(truth, float), np.asarray(predicted, float)
    total = float(((truth - truth.mean()) ** 2).sum())
    if len(truth) < 2 or total == 0:
        return math.nan
    return 1.0 - float(((truth - predicted) ** 2).sum()) / total


@dataclass(frozen=True)
class Quality:
    """Kendall's τ and R² of predictions on ``n`` sub-networks the model did not see."""

    tau: float
    r2: float
    n: int

    def to_dict(self) -> dict[str, float]:
        return {"kendall_tau": self.tau, "r2": self.r2, "n": self.n}


# -- features and models ---------------------------------------------------------------------
class FeatureSpace:
    """The readable features of one search space (see :func:`~manifold_nas.predictors.linear.genotype_features`).

    Parameters
    ----------
    specs:
        The searchable network's ``arch_specs``.
    zero:
        The op set's zero op (an edge with it counts as not kept).
    parameter_free:
        Ops that do not add depth (pooling, skip).
    interactions:
        Add depth × op-count columns, FOX-NAS's interaction terms.
    """

    def __init__(
        self,
        specs: Mapping[str, ArchSpec],
        zero: str | None,
        parameter_free: Collection[str] = (),
        interactions: bool = True,
    ) -> None:
        self.specs = dict(specs)
        self.zero = zero
        self.parameter_free = frozenset(parameter_free)
        self.interactions = bool(interactions)
        self.names = feature_names(self.specs, self.zero, self.interactions)

    def matrix(self, genotypes: Sequence[Genotype]) -> np.ndarray:
        """``(n, n_features)`` feature rows of ``genotypes``."""
        values, _ = genotype_feature_matrix(
            genotypes, self.specs, self.zero, self.parameter_free, self.interactions
        )
        return values


def fit_predictor(
    X: np.ndarray, y: Sequence[float], kind: str, names: Sequence[str] | None = None
) -> LinearPredictor:
    """An OLS or Lasso :class:`~manifold_nas.predictors.linear.LinearPredictor` fitted on ``X, y``.

    The Lasso's penalty is chosen by k-fold cross-validation with
    :math:`k = \\min(5, \\lfloor n / 2 \\rfloor)`, so that each fold has at least two sub-networks.
    """
    if kind not in PREDICTOR_KINDS:
        raise ValueError(f"predictor kind must be one of {PREDICTOR_KINDS}, got {kind!r}")
    X = np.asarray(X, float)
    if kind == "lasso":
        if X.shape[0] < MIN_LASSO_SAMPLES:
            raise ValueError(f"the Lasso needs at least {MIN_LASSO_SAMPLES} labelled sub-networks")
        model = LinearPredictor("lasso", feature_names=names, cv=max(2, min(5, X.shape[0] // 2)))
    else:
        model = LinearPredictor("ols", feature_names=names)
    return model.fit(X, np.asarray(y, float))


def held_out_quality(
    X: np.ndarray,
    y: Sequence[float],
    kind: str,
    train: Sequence[int],
    test: Sequence[int],
) -> Quality:
    """τ and R² on rows ``test`` of a model fitted on rows ``train``."""
    X, y = np.asarray(X, float), np.asarray(y, float)
    train, test = np.asarray(train, int), np.asarray(test, int)
    model = fit_predictor(X[train], y[train], kind)
    predicted = model.predict(X[test])
    return Quality(kendall_tau(y[test], predicted), r_squared(y[test], predicted), len(test))


def cross_validated_quality(
    X: np.ndarray, y: Sequence[float], kind: str, folds: int = 5, seed: int = 0
) -> Quality:
    """τ and R² of k-fold out-of-fold predictions, pooled over the folds.

    Rows are shuffled with ``seed`` and cut into ``min(folds, n)`` folds;
    every sub-network is predicted once, by the model fitted on the others.
    """
    X, y = np.asarray(X, float), np.asarray(y, float)
    n = len(y)
    folds = max(2, min(folds, n))
    order = np.random.default_rng(seed).permutation(n)
    predicted = np.empty(n)
    for part in np.array_split(order, folds):
        rest = np.setdiff1d(order, part)
        predicted[part] = fit_predictor(X[rest], y[rest], kind).predict(X[part])
    return Quality(kendall_tau(y, predicted), r_squared(y, predicted), n)


@dataclass
class PerformanceModels:
    """Per target, OLS and Lasso predictors over one :class:`FeatureSpace`.

    ``models[target][kind]`` is a fitted predictor, ``quality[target][kind]``
    its cross-validated :class:`Quality`; ``units[target]`` names the unit
    of the target (for the report). The Lasso is fitted only with at least
    :data:`MIN_LASSO_SAMPLES` sub-networks.
    """

    features: FeatureSpace
    models: dict[str, dict[str, LinearPredictor]] = field(default_factory=dict)
    quality: dict[str, dict[str, Quality]] = field(default_factory=dict)
    units: dict[str, str] = field(default_factory=dict)
    n: int = 0

    def fit(
        self,
        genotypes: Sequence[Genotype],
        targets: Mapping[str, Sequence[float]],
        units: Mapping[str, str] | None = None,
        folds: int = 5,
    ) -> PerformanceModels:
        """Fit every target on ``genotypes`` (rows aligned with each target's values)."""
        X = self.features.matrix(genotypes)
        self.n = len(genotypes)
        self.units.update(units or {})
        kinds = PREDICTOR_KINDS if self.n >= MIN_LASSO_SAMPLES else ("ols",)
        for target, values in targets.items():
            y = np.asarray(values, float)
            if y.shape != (self.n,):
                raise ValueError(f"target {target!r} has {y.shape} values for {self.n} genotypes")
            self.models[target] = {
                kind: fit_predictor(X, y, kind, self.features.names) for kind in kinds
            }
            self.quality[target] = {
                kind: cross_validated_quality(X, y, kind, folds) for kind in kinds
            }
        return self

    def predict(self, genotypes: Sequence[Genotype], target: str, kind: str = "ols") -> np.ndarray:
        """Predictions of ``target`` by the ``kind`` model for ``genotypes``."""
        if target not in self.models or kind not in self.models[target]:
            fitted = {t: sorted(m) for t, m in self.models.items()}
            raise ValueError(f"no {kind!r} model of {target!r}; fitted: {fitted}")
        return self.models[target][kind].predict(self.features.matrix(genotypes))

    def predict_one(self, genotype: Genotype, target: str, kind: str = "ols") -> float:
        return float(self.predict([genotype], target, kind)[0])


# -- the report ------------------------------------------------------------------------------
def _fmt(value: float) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.3g}"


def write_performance_report(
    models: PerformanceModels,
    directory: str | Path,
    *,
    source: str,
    plotted: str = "ols",
    extra_rows: Sequence[tuple[str, str, Quality]] = (),
) -> Path:
    """Write ``predictor.md``, ``predictor_coefficients.png`` and ``predictors/<target>_<kind>.md``.

    ``predictor.md`` opens with one line per (target, model): in-sample R²,
    cross-validated Kendall τ and R², and the number of selected terms, then
    ``extra_rows`` (e.g. the look-up-table sum as a latency predictor), then
    every model's coefficient table (intercept, coefficients by size, standard
    errors, 95 % intervals, p-values) from
    :func:`~manifold_nas.predictors.linear.write_predictor_report`. The figure shows
    the ``plotted`` model of every target side by side. Returns ``predictor.md``.
    """
    directory = Path(directory)
    parts = directory / "predictors"
    parts.mkdir(parents=True, exist_ok=True)
    lines = [
        "# Explainable predictors",
        "",
        f"Fitted on {models.n} sub-networks ({source}). Features per cell type: `depth` "
        "(kept edges with a parametric op), the count of each op, and depth × count. "
        "Quality: Kendall τ and R² of out-of-fold predictions (k-fold cross-validation).",
        "",
        "| target | model | R² (fit) | CV Kendall τ | CV R² | terms |",
        "|---|---|---|---|---|---|",
    ]
    for target, by_kind in models.models.items():
        for kind, model in by_kind.items():
            quality = models.quality[target][kind]
            selected = sum(c.status == "fitted" for c in model.coefficients())
            lines.append(
                f"| {target} | {kind.upper() if kind == 'ols' else 'Lasso'} | {_fmt(model.r2)} | "
                f"{_fmt(quality.tau)} | {_fmt(quality.r2)} | {selected} |"
            )
    for target, name, quality in extra_rows:
        lines.append(f"| {target} | {name} | — | {_fmt(quality.tau)} | {_fmt(quality.r2)} | — |")
    png = directory / "predictor_coefficients.png"
    if _plot_models(models, plotted, png):
        lines += ["", f"![coefficients]({png.name})"]
    else:
        lines += [
            "",
            "Plot skipped: matplotlib is not installed (`pip install 'manifold-nas[viz]'`).",
        ]
    for target, by_kind in models.models.items():
        for kind, model in by_kind.items():
            label = "OLS" if kind == "ols" else "Lasso"
            unit = models.units.get(target, "")
            part = write_predictor_report(
                model, parts / f"{target}_{kind}.md", None, f"{target} ({label})", unit
            )
            body = part.read_text().splitlines()[1:]
            lines += ["", f"## {target} ({label})", *body]
    path = directory / "predictor.md"
    path.write_text("\n".join(lines).rstrip() + "\n")
    return path


def _plot_models(models: PerformanceModels, kind: str, path: Path) -> bool:
    """One horizontal bar panel per target (the ``kind`` model); False without matplotlib."""
    try:
        import matplotlib
    except ImportError:
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    targets = [t for t, by_kind in models.models.items() if kind in by_kind]
    if not targets:
        return False
    panels = []
    for target in targets:
        terms = [c for c in models.models[target][kind].coefficients() if c.status == "fitted"]
        panels.append((target, sorted(terms, key=lambda c: abs(c.value))))
    height = 1.4 + 0.26 * max(1, max(len(terms) for _, terms in panels))
    fig, axes = plt.subplots(1, len(panels), figsize=(6.0 * len(panels), height), squeeze=False)
    for ax, (target, terms) in zip(axes[0], panels):
        title = f"{target} ({'OLS' if kind == 'ols' else 'Lasso'})"
        draw_coefficients(ax, terms, models.units.get(target, ""), title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
