"""Fitting FOX's explainable predictors on the labelled sub-networks, and reporting them.

The models themselves, OLS and Lasso over readable genotype features, live in
:mod:`manifold_nas.predictors.performance`. This module decides what they are
fitted on: the primary metric of every labelled sub-network with a finite
one and, with ``measure``, its end-to-end latency and every budgeted cost.
The look-up-table cost model's offsets are calibrated on the same
measurements first, and its in-sample agreement with them is reported next
to the fitted models in ``predictor.md``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from manifold_nas.cost.budget import GenotypeCost
from manifold_nas.errors import UserInputError
from manifold_nas.predictors.performance import (
    FeatureSpace,
    PerformanceModels,
    Quality,
    kendall_tau,
    r_squared,
    write_performance_report,
)
from manifold_nas.run.context import Run
from manifold_nas.space.genotype import Genotype
from manifold_nas.strategies.fox.options import FoxOptions

__all__ = ["UNITS", "FittedPredictors", "accuracy_of", "fit_predictors", "labelled_set"]

#: the unit of each cost kind in the report
UNITS = {
    "latency_ms": "ms",
    "params": "parameters",
    "flops": "FLOPs",
    "flops_with_linalg": "FLOPs",
    "memory": "bytes",
}


@dataclass(frozen=True)
class FittedPredictors:
    """The fitted accuracy and cost models, and how well the LUT sums match the measurements.

    ``lut_quality[kind]`` is the in-sample agreement of the look-up-table
    cost (op sum plus offset) with the measured ``kind`` (empty without
    ``measure``).
    """

    models: PerformanceModels
    lut_quality: dict[str, Quality]


def accuracy_of(label: Mapping[str, Any], primary: str) -> float:
    """A label's ``primary`` validation metric (NaN when it is missing or null)."""
    value = label["valid"].get(primary, math.nan)
    return float("nan") if value is None else float(value)


def labelled_set(
    genotypes: Sequence[Genotype],
    labels: Mapping[int, Mapping[str, Any]],
    measured: Sequence[dict[str, float] | None],
    primary: str,
) -> tuple[list[Genotype], list[float], list[Any]]:
    """The sampled sub-networks, their primary metric (NaN where unlabelled) and their end-to-end costs."""
    accuracy = [
        accuracy_of(labels[i], primary) if i in labels else math.nan for i in range(len(genotypes))
    ]
    return list(genotypes), accuracy, list(measured)


def fit_predictors(
    run: Run,
    genotypes: Sequence[Genotype],
    labels: Mapping[int, Mapping[str, Any]],
    measured: Sequence[dict[str, float] | None],
    *,
    primary: str,
    features: FeatureSpace,
    cost_model: GenotypeCost,
    options: FoxOptions,
    device: torch.device,
) -> FittedPredictors:
    """Offsets from the measurements, then the accuracy and cost models, then the report.

    Every sample is labelled by now. With ``options.measure`` the offsets of
    ``cost_model`` are calibrated in place (the designs are priced with them)
    and a cost model is fitted per budgeted kind and for latency. Raises a
    :class:`~manifold_nas.errors.UserInputError` when fewer than 3 labels have
    a finite ``primary``. ``device`` is where the measurements ran, for the
    report.
    """
    if options.measure:
        cost_model.calibrate(genotypes, measured)
    accuracy = [accuracy_of(labels[i], primary) for i in range(len(genotypes))]
    usable = [i for i in range(len(genotypes)) if math.isfinite(accuracy[i])]
    if len(usable) < 3:
        raise UserInputError(
            f"only {len(usable)} labelled sub-network(s) have a finite {primary}; "
            "fox needs at least 3 to fit its predictors"
        )
    targets = {primary: [accuracy[i] for i in usable]}
    if options.measure:
        for kind in dict.fromkeys(["latency_ms", *options.budget]):
            targets[kind] = [measured[i][kind] for i in usable]
    chosen = [genotypes[i] for i in usable]
    models = PerformanceModels(features).fit(chosen, targets, units=UNITS)
    lut_quality = {}
    if options.measure:
        for kind in targets:
            if kind == primary:
                continue
            lut = [cost_model.cost(g, kind) for g in chosen]
            truth = targets[kind]
            lut_quality[kind] = Quality(kendall_tau(truth, lut), r_squared(truth, lut), len(truth))
    fitted = FittedPredictors(models, lut_quality)
    if run.writes:
        _write_report(run, fitted, options=options, device=device)
    return fitted


def _write_report(
    run: Run, fitted: FittedPredictors, *, options: FoxOptions, device: torch.device
) -> None:
    """``predictor.md`` and ``predictor_coefficients.png``, saying where the labels came from."""
    source = (
        "accuracy with inherited supernet weights"
        if options.labels == "supernet"
        else "accuracy after stand-alone proxy training"
    )
    if options.measure:
        source += f"; costs measured end to end on {device}, batch 1"
    write_performance_report(
        fitted.models,
        run.out_dir,
        source=source,
        plotted=options.predictor,
        extra_rows=[(k, "LUT sum + offset (in sample)", q) for k, q in fitted.lut_quality.items()],
    )
