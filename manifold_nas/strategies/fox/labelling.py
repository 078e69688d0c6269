"""Labelling FOX's sampled sub-networks: drawing them, measuring their costs, scoring their accuracy.

A run draws ``samples`` distinct uniform sub-networks once
(:func:`draw_samples`), measures each end to end on this machine
(:func:`measure_samples`) and labels each with its validation metrics
(:func:`label_samples`): with the weights it inherits from the single-path
supernet (batch norms recalibrated per path) or by a short stand-alone
training through the multi-trial backend. Measuring and labelling append to
the strategy's own ``measured`` list and ``labels`` dict and call
``checkpoint`` as they go, so a resumed run continues at the first
sub-network without a measurement or a label and never does one twice:
the measurements are timings on this machine, and a resumed run keeps the
ones its first process took rather than taking new ones.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from torch import Tensor

from manifold_nas.cost.budget import GenotypeCost
from manifold_nas.errors import UserInputError
from manifold_nas.run.context import Run, stream_seed, trial_seed
from manifold_nas.space.cell import ArchSpec
from manifold_nas.space.genotype import Genotype
from manifold_nas.space.sampling import genotype_key, random_genotype
from manifold_nas.strategies.fox.options import FoxOptions
from manifold_nas.strategies.multi_trial import TrialJob, open_backend, train_trial, trial_epochs
from manifold_nas.strategies.one_shot import (
    SinglePathOneShot,
    evaluate_path,
    path_from_cells,
    recalibration_inputs,
)

__all__ = [
    "CHECKPOINT_EVERY",
    "DRAWS_PER_SAMPLE",
    "draw_samples",
    "label_samples",
    "measure_samples",
    "recalibration",
    "run_trials",
    "sample_genotypes",
    "trial_job",
]

#: draws per wanted sample before the space is taken to hold fewer distinct sub-networks
DRAWS_PER_SAMPLE = 50
#: labels (or measurements) between checkpoints while labelling with the supernet
CHECKPOINT_EVERY = 10

#: JSON cells of one sampled sub-network (``{cell_type: [[op, source, target], ...]}``)
Cells = Mapping[str, Any]
#: a sub-network's label: ``{"valid": validation metrics}``
Label = dict[str, Any]


def draw_samples(
    run: Run, specs: Mapping[str, ArchSpec], zero: str | None, count: int
) -> list[dict[str, Any]]:
    """``count`` distinct uniform sub-networks (JSON cells) on the run's ``fox samples`` stream."""
    rng = random.Random(stream_seed(run.config.seed, "fox samples"))
    found: dict[str, dict[str, Any]] = {}
    for _ in range(DRAWS_PER_SAMPLE * count):
        if len(found) == count:
            break
        genotype = random_genotype(specs, run.opset.name, zero, rng)
        found.setdefault(genotype_key(genotype), genotype.to_dict()["cells"])
    if len(found) < 3:
        raise UserInputError(
            f"the search space holds {len(found)} distinct sub-network(s); fox needs at least 3"
        )
    return list(found.values())


def sample_genotypes(
    run: Run, specs: Mapping[str, ArchSpec], samples: Sequence[Cells]
) -> list[Genotype]:
    """The sampled sub-networks as paths of the run's op set."""
    return [path_from_cells(cells, specs, run.opset.name) for cells in samples]


def measure_samples(
    run: Run,
    genotypes: Sequence[Genotype],
    measured: list[dict[str, float] | None],
    *,
    x: Tensor,
    options: FoxOptions,
    checkpoint: Callable[[], None],
) -> None:
    """Append the end-to-end costs of every sub-network not yet in ``measured``.

    ``None`` stands for each one without ``options.measure``, so ``measured``
    always ends as long as ``genotypes``. With measurements, ``checkpoint``
    is called after every :data:`CHECKPOINT_EVERY`-th and after the last, so
    once labelling starts every measurement is in the checkpoint: the costs
    are timings, which a second measurement would not repeat, and a resumed
    run prices and fits with the ones its first process took.
    """
    unsaved = False
    while len(measured) < len(genotypes):
        index = len(measured)
        costs = None
        if options.measure:
            costs = run.measure_genotype(
                genotypes[index],
                x,
                warmup=options.latency_warmup,
                repeats=options.latency_repeats,
            )
        measured.append(costs)
        unsaved = options.measure
        if options.measure and (index + 1) % CHECKPOINT_EVERY == 0:
            checkpoint()
            unsaved = False
    if unsaved:
        checkpoint()


def label_samples(
    run: Run,
    genotypes: Sequence[Genotype],
    samples: Sequence[Cells],
    labels: dict[int, Label],
    *,
    measured: Sequence[dict[str, float] | None],
    cost_model: GenotypeCost,
    trainer: SinglePathOneShot | None,
    specs: Mapping[str, ArchSpec],
    options: FoxOptions,
    checkpoint: Callable[[], None],
) -> None:
    """Label every sample missing from ``labels``, logging a ``fox_label`` record for each.

    With a ``trainer`` (``labels: supernet``) the labels are scored with the
    supernet's inherited weights, one recalibration set for all, and
    ``checkpoint`` is called after every :data:`CHECKPOINT_EVERY`-th; without
    (``labels: trials``) each is a stand-alone trial on ``search.backend`` and
    ``checkpoint`` is called after each result.
    """
    pending = [i for i in range(len(samples)) if i not in labels]
    if not pending:
        return

    def add_label(index: int, valid: Mapping[str, Any]) -> None:
        run.log(
            {
                "type": "fox_label",
                "index": index,
                "genotype": samples[index],
                "valid": dict(valid),
                "lut": cost_model.costs(genotypes[index]),
                "measured": measured[index],
            }
        )
        labels[index] = {"valid": dict(valid)}

    if trainer is not None:
        inputs = recalibration(run, options.recalibration_batches)
        for count, index in enumerate(pending, 1):
            add_label(index, evaluate_path(run, trainer.supernet, genotypes[index], specs, inputs))
            if count % CHECKPOINT_EVERY == 0:
                checkpoint()
        return

    def on_result(job: TrialJob, result: dict[str, Any]) -> None:
        add_label(job.index, result["valid"])
        checkpoint()

    jobs = [trial_job(run, i, samples[i], options.trial_epochs) for i in pending]
    run_trials(run, jobs, on_result)


def recalibration(run: Run, batches: int) -> list[Tensor]:
    """The inputs that re-estimate batch-norm statistics before a path is scored.

    Fixed by the run's ``recalibration`` stream, so the labels and the chosen
    design's final metrics see the same batches, resumed or not.
    """
    return recalibration_inputs(run, batches, stream_seed(run.config.seed, "recalibration"))


def trial_job(run: Run, index: int, cells: Cells, epochs: int) -> TrialJob:
    """The stand-alone trial of sub-network ``index`` (``epochs`` unless ``proxy.epochs`` is set)."""
    return TrialJob(
        index=index,
        seed=trial_seed(run.config.seed, index),
        cells=cells,
        epochs=trial_epochs(run.config, epochs),
    )


def run_trials(
    run: Run, jobs: list[TrialJob], on_result: Callable[[TrialJob, dict[str, Any]], None]
) -> None:
    """Train ``jobs`` on the run's ``search.backend``, handing each result to ``on_result``."""
    backend = open_backend(run)
    try:
        backend.map(train_trial, jobs, on_result)
    finally:
        backend.close()
