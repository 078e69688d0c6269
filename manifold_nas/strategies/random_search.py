"""``random``: random search, the baseline every other strategy must beat.

Sample ``trials`` genotypes uniformly from the op set's space (``keep``
incoming edges per node, one non-zero op per edge), train each derived
network for ``epochs`` epochs on the weight split with the config's
``train:`` settings through :meth:`~manifold_nas.run.Run.train` (the code
``manifold-nas train`` runs), score it on the validation split, and return
the best. Li & Talwalkar ("Random Search and Reproducibility for NAS", 2019)
showed this baseline to be competitive with early weight-sharing methods at
equal budget.

Each trial is seeded by the run's seed and its index, so a trial gives the
same network whether or not the search was interrupted before it; the
checkpoint after every trial holds the finished trials and the sampler's
state.
"""

from __future__ import annotations

import random
from typing import Any

from manifold_nas.genotype import Genotype, parse_cells
from manifold_nas.run import Run, count_parameters, seed_everything
from manifold_nas.sampling import random_genotype
from manifold_nas.strategies import register_strategy
from manifold_nas.strategies.base import Strategy

__all__ = ["RandomSearch", "trial_seed"]


def trial_seed(seed: int, trial: int) -> int:
    """The seed of trial ``trial`` of a run seeded ``seed`` (independent of interruptions)."""
    return (seed * 1_000_003 + 7_919 * (trial + 1)) % (2**31 - 1)


@register_strategy("random")
class RandomSearch(Strategy):
    """Random search: ``trials`` random genotypes, each trained ``epochs`` epochs.

    Parameters
    ----------
    trials:
        Number of genotypes sampled and trained.
    epochs:
        Training epochs per trial (the final network is retrained in full by
        ``manifold-nas train``).
    """

    def __init__(self, trials: int = 8, epochs: int = 3) -> None:
        if int(trials) != trials or trials < 1:
            raise ValueError(f"trials must be a positive integer, got {trials}")
        if int(epochs) != epochs or epochs < 1:
            raise ValueError(f"epochs must be a positive integer, got {epochs}")
        self.n_trials = int(trials)
        self.epochs = int(epochs)
        self.trials: list[dict[str, Any]] = []

    def setup(self, run: Run) -> None:
        self.specs = run.build_searchable().arch_specs
        self.sampler = random.Random(run.config.seed)

    def state_dict(self) -> dict[str, Any]:
        return {"trials": self.trials, "sampler": self.sampler.getstate()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.trials = list(state["trials"])
        version, internal, gauss = state["sampler"]
        self.sampler.setstate((version, tuple(internal), gauss))

    def progress(self) -> str:
        return f"after trial {len(self.trials)} of {self.n_trials}"

    def run(self, run: Run) -> Genotype:
        primary = run.task.primary_metric
        while len(self.trials) < self.n_trials:
            index = len(self.trials)
            genotype = random_genotype(self.specs, run.opset.name, run.opset.zero, self.sampler)
            seed = trial_seed(run.config.seed, index)
            seed_everything(seed)
            network = run.build_derived(genotype)
            result = run.train(
                network,
                self.epochs,
                train_set=run.weight_set,
                valid_set=run.valid_set,
                loader_seed=seed,
                desc=f"trial {index + 1}/{self.n_trials}",
            )
            record = {
                "type": "trial",
                "trial": index,
                "genotype": genotype.to_dict()["cells"],
                "parameters": count_parameters(network),
                "curve": [r["valid"][primary] for r in result.history],
                "valid": result.last_valid,
                "seconds": result.seconds,
            }
            run.log(record)
            self.trials.append(record)
            run.checkpoint(self)
        best = self.best_trial(primary)
        return Genotype(
            opset=run.opset.name,
            cells=parse_cells(best["genotype"]),
            ops={name: spec.ops for name, spec in self.specs.items()},
            config=run.config.to_dict(),
        )

    def best_trial(self, primary: str) -> dict[str, Any]:
        """The trial with the highest final validation score (the earliest on ties)."""
        return max(self.trials, key=lambda t: (t["valid"].get(primary, float("-inf")), -t["trial"]))

    def summary(self, run: Run) -> dict[str, Any]:
        best = self.best_trial(run.task.primary_metric)
        return {
            "final": best["valid"],
            "best_trial": best["trial"],
            "trials": len(self.trials),
            "epochs_per_trial": self.epochs,
        }
