"""Verifying FOX's designs: the chosen one's metrics, every one measured against the budget, ``designs.json``.

The annealer chooses by predictions alone. The chosen design is then scored
as the labels were obtained (:func:`final_metrics`), each design's derived
network is measured end to end to say whether the budget holds on the
measurement (:func:`verify_designs`), and :func:`write_designs` records the
designs with the budget, offsets and annealing they came from. The
measurements are reported, never used to choose, so a resumed run chooses
exactly what the uninterrupted one would.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import Tensor

from manifold_nas.cost.budget import GenotypeCost
from manifold_nas.run.context import Run
from manifold_nas.space.cell import ArchSpec
from manifold_nas.space.genotype import Genotype
from manifold_nas.space.sampling import genotype_key
from manifold_nas.strategies.fox.labelling import recalibration, run_trials, trial_job
from manifold_nas.strategies.fox.options import FoxOptions
from manifold_nas.strategies.one_shot import SinglePathOneShot, evaluate_path, path_from_cells

__all__ = ["design_genotype", "final_metrics", "verify_designs", "write_designs"]


def design_genotype(run: Run, cells: Mapping[str, Any], specs: Mapping[str, ArchSpec]) -> Genotype:
    """A design's genotype as the run returns it: its path with the run's config attached."""
    path = path_from_cells(cells, specs, run.opset.name)
    return Genotype(path.opset, path.cells, ops=path.ops, config=run.config.to_dict())


def final_metrics(
    run: Run,
    genotype: Genotype,
    *,
    samples: Sequence[Mapping[str, Any]],
    labels: Mapping[int, Mapping[str, Any]],
    specs: Mapping[str, ArchSpec],
    trainer: SinglePathOneShot | None,
    options: FoxOptions,
) -> dict[str, Any]:
    """Validation metrics of the chosen design, as the labels were obtained.

    With a ``trainer`` the design is scored with the supernet's inherited
    weights. Without, a design that is one of the labelled samples keeps its
    label, and any other is trained as one more stand-alone trial, numbered
    (and seeded) after the samples.
    """
    if trainer is not None:
        return evaluate_path(
            run,
            trainer.supernet,
            genotype,
            specs,
            recalibration(run, options.recalibration_batches),
        )
    key = genotype_key(genotype)
    for index, cells in enumerate(samples):
        if index in labels and genotype_key(path_from_cells(cells, specs, "")) == key:
            return dict(labels[index]["valid"])
    found: dict[str, Any] = {}
    job = trial_job(run, len(samples), genotype.to_dict()["cells"], options.trial_epochs)
    run_trials(run, [job], lambda _, result: found.update(result["valid"]))
    return found


def verify_designs(
    run: Run,
    designs: Sequence[dict[str, Any]],
    *,
    specs: Mapping[str, ArchSpec],
    x: Tensor,
    options: FoxOptions,
) -> None:
    """Measure every design's derived network on ``x`` and fill in ``measured`` and ``budget_holds``.

    In place, so the chosen design (the same dict as ``designs[0]``) carries
    its verification too.
    """
    for design in designs:
        genotype = path_from_cells(design["genotype"], specs, run.opset.name)
        measured = run.measure_genotype(
            genotype, x, warmup=options.latency_warmup, repeats=options.latency_repeats
        )
        design["measured"] = measured
        design["budget_holds"] = all(measured[k] <= v for k, v in options.budget.items())


def write_designs(
    run: Run,
    designs: Sequence[Mapping[str, Any]],
    *,
    primary: str,
    cost_model: GenotypeCost,
    anneal_record: Mapping[str, Any],
    options: FoxOptions,
) -> None:
    """``designs.json``: the designs and the budget, feasibility rule, offsets and annealing behind them."""
    if not run.writes:
        return
    run.directory.write_json(
        "designs.json",
        {
            "budget": options.budget,
            "feasibility": options.feasibility,
            "safety_margin": options.safety_margin,
            "predictor": options.predictor,
            "primary_metric": primary,
            "offsets": {k: vars(v) for k, v in cost_model.offsets.items()},
            "cost_context": dict(cost_model.table.context),
            "anneal": anneal_record,
            "designs": designs,
        },
    )
