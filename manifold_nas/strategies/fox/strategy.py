r"""``fox``: explainable predictors and simulated annealing under a measured budget (FOX-NAS).

FOX-NAS (Liu et al., ICCV workshops 2021) labels a few hundred sampled
sub-networks with their accuracy and latency, fits readable linear models of
both, and searches the space by simulated annealing against the accuracy
model under a latency budget. This strategy does that for any op set:

1. **Sample** ``samples`` distinct sub-networks uniformly (``keep`` inputs
   per node, one non-zero op per kept edge).
2. **Label** each with its accuracy, either with the weights it inherits
   from a single-path supernet trained first for ``search.epochs`` epochs
   (``labels: supernet``, as FOX-NAS does with its supernet; batch norms are
   recalibrated per path) or by a short stand-alone training at the
   ``proxy:`` setting through the multi-trial backend (``labels: trials``,
   ``trial_epochs`` epochs, local or Ray), and, with ``measure``, with its
   costs measured end to end on this machine (latency at batch 1: warm-up,
   median of repeats). A checkpoint is written after every few labels and
   once labelling is done, so a resumed run never labels a sub-network twice
   (:mod:`~manifold_nas.strategies.fox.labelling`).
3. **Fit** OLS and Lasso predictors of accuracy and of every measured cost
   on readable genotype features (:mod:`manifold_nas.predictors.performance`);
   ``predictor.md`` and ``predictor_coefficients.png`` report them
   (:mod:`~manifold_nas.strategies.fox.fitting`).
4. **Anneal** (:func:`manifold_nas.strategies.fox.annealing.anneal_designs`) over genotypes,
   maximising the ``predictor`` model's accuracy, neighbours changing up to
   ``max_changes`` edges, with ``restarts``; the ``top_k`` unique designs go
   to ``designs.json`` and the best one is the run's genotype.
5. **Verify** (``verify``): every design's derived network is measured end
   to end and ``designs.json`` says whether the budget holds on the
   measurement. The measurement is reported, never used to choose, so a
   resumed run chooses exactly what the uninterrupted one would
   (:mod:`~manifold_nas.strategies.fox.verification`).

**Feasibility.** ``strategy.budget`` maps cost kinds (``latency_ms``,
``params``, ``flops``, ``flops_with_linalg``, ``memory``) to limits, all per
sample. By default (``feasibility: lut``) a design is feasible when its
look-up-table cost, the sum of its ops' measured entries plus an offset
(:class:`~manifold_nas.cost.budget.GenotypeCost`: with ``measure``, the
median end-to-end residual of the labelled sub-networks, which covers the
stem, head and overheads no per-op entry sees; without, the table's fixed
part for params and FLOPs and nothing for latency and memory), is at most
``(1 − safety_margin)`` × the limit. The LUT is the default because it prices exactly the ops a
design chooses, on the edge where it sits, from measurements that do not
depend on how many sub-networks were labelled; the linear latency model
only sees op counts per cell type and is fitted on noisy whole-network
timings. ``feasibility: predictor`` uses the fitted cost models instead
(FOX-NAS's choice; it needs ``measure``).

**Resuming.** Latencies are timings on this machine, never measured the same
twice, so what a budget admits depends on them. Every checkpoint holds the
per-op table (measured when the search starts, before the first checkpoint;
``cost_lut.json`` caches it for later runs) and the end-to-end costs of the
sub-networks measured so far (all of them once labelling starts). A resumed
run takes both from the checkpoint and measures neither again, so it chooses
exactly what the uninterrupted run chooses from the same measurements; only
the verification, which chooses nothing, is measured by the process that
finishes.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch

from manifold_nas.cost.budget import GenotypeCost
from manifold_nas.cost.table import table_from_state, table_state
from manifold_nas.errors import UserInputError
from manifold_nas.predictors.performance import FeatureSpace
from manifold_nas.run.context import Run
from manifold_nas.space.genotype import Genotype
from manifold_nas.strategies.base import Strategy, register_strategy
from manifold_nas.strategies.fox.annealing import anneal_designs, anneal_record, design_records
from manifold_nas.strategies.fox.fitting import fit_predictors, labelled_set
from manifold_nas.strategies.fox.labelling import (
    draw_samples,
    label_samples,
    measure_samples,
    sample_genotypes,
)
from manifold_nas.strategies.fox.options import FoxOptions
from manifold_nas.strategies.fox.verification import (
    design_genotype,
    final_metrics,
    verify_designs,
    write_designs,
)
from manifold_nas.strategies.multi_trial import check_proxy
from manifold_nas.strategies.one_shot import SinglePathOneShot

__all__ = ["FoxSearch"]


@register_strategy("fox")
class FoxSearch(Strategy):
    """FOX-NAS: label sampled sub-networks, fit explainable predictors, anneal under a budget.

    Parameters
    ----------
    samples:
        Distinct sub-networks to label (fewer when the space is smaller).
    labels:
        ``"supernet"`` (inherited weights of a single-path supernet trained
        for ``search.epochs``) or ``"trials"`` (stand-alone training at the
        proxy setting through ``search.backend``).
    trial_epochs:
        Epochs per stand-alone trial (``labels: trials``), unless ``proxy.epochs`` is set.
    recalibration_batches:
        Batches re-estimating batch-norm statistics before a path is scored
        (``labels: supernet``).
    budget:
        ``{cost kind: limit}``, per sample (``latency_ms`` in ms on this machine).
    predictor:
        ``"ols"`` or ``"lasso"``: the model the annealer maximises (and, with
        ``feasibility: predictor``, the cost models used).
    interactions:
        Include depth × op-count features.
    feasibility:
        ``"lut"`` (look-up-table sum plus offset) or ``"predictor"`` (fitted cost models).
    safety_margin:
        Feasible means cost ≤ (1 − ``safety_margin``) × limit.
    measure:
        Measure every labelled sub-network end to end (latency model, offsets).
    steps, restarts, top_k, schedule, t_start, t_end, stale_limit, stale_accept, patience:
        :func:`~manifold_nas.strategies.fox.annealing.anneal`'s options; temperatures are in
        units of the primary metric (accuracy 0..1).
    max_changes:
        Edges a neighbour changes, at most.
    verify:
        Measure the top designs end to end and report whether the budget holds.
    latency_warmup, latency_repeats:
        Untimed and timed forwards of every latency measurement.
    """

    uses_backend = True

    def __init__(
        self,
        samples: int = 100,
        labels: str = "supernet",
        trial_epochs: int = 2,
        recalibration_batches: int = 4,
        budget: dict[str, float] | None = None,
        predictor: str = "ols",
        interactions: bool = True,
        feasibility: str = "lut",
        safety_margin: float = 0.0,
        measure: bool = True,
        steps: int = 2000,
        restarts: int = 3,
        top_k: int = 5,
        schedule: str = "geometric",
        t_start: float = 0.01,
        t_end: float = 1e-4,
        stale_limit: int | None = None,
        stale_accept: float | None = None,
        patience: int | None = None,
        max_changes: int = 2,
        verify: bool = True,
        latency_warmup: int = 3,
        latency_repeats: int = 20,
    ) -> None:
        # the keywords are the config's strategy: keys (checked against this signature
        # before data loads); as the first statement, locals() holds exactly them
        arguments = {name: value for name, value in locals().items() if name != "self"}
        self.options = FoxOptions(**arguments)
        # progress (the checkpointed state)
        self.samples: list[dict[str, Any]] = []
        self.measured: list[dict[str, float] | None] = []
        self.labels: dict[int, dict[str, Any]] = {}
        # results (recomputed by every run, resumed or not)
        self.designs: list[dict[str, Any]] = []
        self.chosen: dict[str, Any] = {}

    # -- construction -----------------------------------------------------------------
    def setup(self, run: Run) -> None:
        if self.options.labels == "trials":
            check_proxy(run.config)
        elif run.config.search.backend != "local":
            raise UserInputError(
                "strategy fox with labels: supernet runs in this process; "
                "search.backend ray parallelises labels: trials"
            )
        self.primary = run.task.primary_metric
        self.zero = run.opset.zero
        self.x = run.example_input()
        with torch.random.fork_rng(devices=[]):
            network = run.build_searchable()
        self.specs = dict(network.arch_specs)
        # measured in run(), once a checkpoint had its chance to supply the table
        self._unpriced = network
        self._table_costs: dict[str, Any] | None = None
        self.cost_model: GenotypeCost | None = None
        self.features = FeatureSpace(
            self.specs, self.zero, run.opset.parameter_free, self.options.interactions
        )
        self.trainer = None
        if self.options.labels == "supernet":
            self.trainer = SinglePathOneShot(
                recalibration_batches=self.options.recalibration_batches
            )
            self.trainer.setup(run)

    def state_dict(self) -> dict[str, Any]:
        return {
            "samples": self.samples,
            # the end-to-end costs of the sampled sub-networks, as measured
            "measured": self.measured,
            "labels": self.labels,
            "supernet": None if self.trainer is None else self.trainer.state_dict(),
            # the per-op table this run prices designs with, whatever a later LUT holds
            "cost_table": None if self.cost_model is None else table_state(self.cost_model.table),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.samples = list(state["samples"])
        self.measured = list(state["measured"])
        self.labels = {int(k): v for k, v in state["labels"].items()}
        if self.trainer is not None:
            self.trainer.load_state_dict(state["supernet"])
        table = state["cost_table"]
        if table is not None and "costs" in table:
            self.cost_model = GenotypeCost(table_from_state(table))
            self._unpriced = None
        else:
            # an older checkpoint held only the costs: run() measures, then takes them
            self._table_costs = table

    def price(self, run: Run) -> GenotypeCost:
        """The look-up-table cost model: from the checkpoint, or measured now (cached in the LUT).

        A resumed run prices with the table its first process measured and
        measures no op again; a fresh run measures every op missing from
        ``cost_cache_dir/cost_lut.json``.
        """
        if self.cost_model is None:
            table = run.cost_table(
                self._unpriced,
                latency=True,
                warmup=self.options.latency_warmup,
                repeats=self.options.latency_repeats,
                x=self.x,
            )
            for kind, by_spec in (self._table_costs or {}).items():
                for spec, values in by_spec.items():
                    table.costs[kind][spec].copy_(torch.tensor(values, dtype=torch.float64))
            self.cost_model = GenotypeCost(table)
            self._unpriced = self._table_costs = None
        return self.cost_model

    def progress(self) -> str:
        if self.trainer is not None and not self.samples:
            return f"after supernet epoch {self.trainer.epoch}"
        return f"after {len(self.labels)} of {len(self.samples)} labelled sub-networks"

    # -- the search ----------------------------------------------------------------------
    def run(self, run: Run) -> Genotype:
        checkpoint = partial(run.checkpoint, self)
        self.price(run)
        if self.trainer is not None:
            while self.trainer.epoch < run.config.search.epochs:
                self.trainer.train_epoch(run)
                checkpoint()
        if not self.samples:
            self.samples = draw_samples(run, self.specs, self.zero, self.options.samples)
        genotypes = sample_genotypes(run, self.specs, self.samples)
        measure_samples(
            run, genotypes, self.measured, x=self.x, options=self.options, checkpoint=checkpoint
        )
        label_samples(
            run,
            genotypes,
            self.samples,
            self.labels,
            measured=self.measured,
            cost_model=self.cost_model,
            trainer=self.trainer,
            specs=self.specs,
            options=self.options,
            checkpoint=checkpoint,
        )
        checkpoint()
        fitted = fit_predictors(
            run,
            genotypes,
            self.labels,
            self.measured,
            primary=self.primary,
            features=self.features,
            cost_model=self.cost_model,
            options=self.options,
            device=self.x.device,
        )
        self.models, self.lut_quality = fitted.models, fitted.lut_quality
        result = anneal_designs(
            run,
            self.models,
            specs=self.specs,
            zero=self.zero,
            primary=self.primary,
            cost_model=self.cost_model,
            options=self.options,
        )
        self.designs = design_records(
            result, self.models, primary=self.primary, cost_model=self.cost_model
        )
        self.anneal_record = anneal_record(result, self.options)
        best = design_genotype(run, self.designs[0]["genotype"], self.specs)
        valid = final_metrics(
            run,
            best,
            samples=self.samples,
            labels=self.labels,
            specs=self.specs,
            trainer=self.trainer,
            options=self.options,
        )
        self.chosen = {"design": self.designs[0], "valid": valid}
        if self.options.verify:
            verify_designs(run, self.designs, specs=self.specs, x=self.x, options=self.options)
        write_designs(
            run,
            self.designs,
            primary=self.primary,
            cost_model=self.cost_model,
            anneal_record=self.anneal_record,
            options=self.options,
        )
        run.log({"type": "fox_designs", "designs": self.designs})
        return best

    def labelled_set(self, run: Run) -> tuple[list[Genotype], list[float], list[Any]]:
        """The labelled sub-networks, their primary metric and their end-to-end costs."""
        genotypes = sample_genotypes(run, self.specs, self.samples)
        return labelled_set(genotypes, self.labels, self.measured, self.primary)

    def summary(self, run: Run) -> dict[str, Any]:
        design = self.chosen.get("design", {})
        verified = [d["budget_holds"] for d in self.designs if d["budget_holds"] is not None]
        return {
            "final": self.chosen.get("valid", {}),
            "final_metrics": (
                "inherited supernet weights, batch norm recalibrated"
                if self.trainer is not None
                else "stand-alone training at the proxy setting"
            ),
            "samples": len(self.samples),
            "labels": self.options.labels,
            "budget": self.options.budget,
            "feasibility": self.options.feasibility,
            "chosen": {k: design.get(k) for k in ("predicted", "cost", "measured", "budget_holds")},
            "designs_within_budget_measured": (
                f"{sum(verified)} of {len(verified)}" if verified else None
            ),
            "predictors": {
                target: {
                    kind: {"r2": model.r2, **self.models.quality[target][kind].to_dict()}
                    for kind, model in by_kind.items()
                }
                for target, by_kind in self.models.models.items()
            },
            "lut_vs_measured": {k: q.to_dict() for k, q in self.lut_quality.items()},
            "offsets": {k: vars(v) for k, v in self.cost_model.offsets.items()},
            "anneal": self.anneal_record,
        }
