"""``random``: random search, the baseline every other strategy must beat.

Sample ``trials`` genotypes uniformly from the op set's space (``keep``
incoming edges per node, one non-zero op per edge), train each derived
network for ``epochs`` epochs on the weight split with the config's
``train:`` settings through :meth:`~manifold_nas.run.context.Run.train` (the code
``manifold-nas train`` runs), score it on the validation split, and return
the best. Li & Talwalkar ("Random Search and Reproducibility for NAS", 2019)
showed this baseline to be competitive with early weight-sharing methods at
equal budget.

The trials, the ``proxy:`` setting they train at, early stopping, the
parameter filter, the backend (``local`` or ``ray``), resume and the trial
table come from the shared loop :class:`~manifold_nas.strategies.multi_trial.loop.MultiTrialSearch`;
this strategy only draws the genotypes, from one random stream seeded by the
run's seed and saved in every checkpoint.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from manifold_nas.run.context import Run, trial_seed
from manifold_nas.space.genotype import Genotype
from manifold_nas.space.sampling import random_genotype
from manifold_nas.strategies.base import Strategy, register_strategy
from manifold_nas.strategies.multi_trial.loop import MultiTrialSearch

__all__ = ["RandomSearch", "trial_seed"]


@register_strategy("random")
class RandomSearch(MultiTrialSearch, Strategy):
    """Random search: ``trials`` random genotypes, each trained up to ``epochs`` epochs.

    Parameters
    ----------
    trials:
        Number of genotypes trained (candidates rejected by
        ``max_parameters`` are redrawn and do not count).
    epochs:
        Training epochs per trial, unless ``proxy.epochs`` is set (the final
        network is retrained in full by ``manifold-nas train``).
    batch:
        Trials trained together (in parallel with ``search.backend: ray``).
    early_stopping:
        ``none``, ``asha``, ``learning_curve``, or a mapping with a ``name``
        and the rule's options.
    max_parameters:
        Reject candidates whose full-setting network is larger; None keeps all.
    predictor_filter:
        FOX-NAS's explainable predictors as a filter before training
        (:class:`~manifold_nas.strategies.multi_trial.filters.PredictorFilter`: ``margin``,
        ``min_trials``, ``budget``, ``kind``); None trains every candidate.
    """

    def __init__(
        self,
        trials: int = 8,
        epochs: int = 3,
        batch: int = 4,
        early_stopping: str | Mapping[str, Any] | None = "none",
        max_parameters: int | None = None,
        predictor_filter: Mapping[str, Any] | None = None,
    ) -> None:
        self._init_multi_trial(
            trials, epochs, batch, early_stopping, max_parameters, predictor_filter
        )

    def propose(self, run: Run, slot: int) -> tuple[Genotype, str]:
        genotype = random_genotype(self.specs, run.opset.name, run.opset.zero, self.sampler)
        return genotype, "random"
