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
   once labelling is done, so a resumed run never labels a sub-network twice.
3. **Fit** OLS and Lasso predictors of accuracy and of every measured cost
   on readable genotype features (:mod:`manifold_nas.predictors.performance`);
   ``predictor.md`` and ``predictor_coefficients.png`` report them.
4. **Anneal** (:func:`manifold_nas.strategies.fox.annealing.anneal`) over genotypes,
   maximising the ``predictor`` model's accuracy, neighbours changing up to
   ``max_changes`` edges, with ``restarts``; the ``top_k`` unique designs go
   to ``designs.json`` and the best one is the run's genotype.
5. **Verify** (``verify``): every design's derived network is measured end
   to end and ``designs.json`` says whether the budget holds on the
   measurement. The measurement is reported, never used to choose, so a
   resumed run chooses exactly what the uninterrupted one would.

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
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from manifold_nas.config import positive_int
from manifold_nas.cost.budget import (
    GenotypeCost,
    cheapest_genotype,
    parse_budget,
)
from manifold_nas.errors import UserInputError
from manifold_nas.predictors.performance import (
    PREDICTOR_KINDS,
    FeatureSpace,
    PerformanceModels,
    Quality,
    kendall_tau,
    r_squared,
    write_performance_report,
)
from manifold_nas.run.context import Run, stream_seed, trial_seed
from manifold_nas.space.genotype import Genotype
from manifold_nas.space.sampling import genotype_key, random_genotype
from manifold_nas.strategies.base import Strategy, register_strategy
from manifold_nas.strategies.fox.annealing import anneal, genotype_neighbours
from manifold_nas.strategies.multi_trial import (
    TrialJob,
    check_proxy,
    open_backend,
    train_trial,
    trial_epochs,
)
from manifold_nas.strategies.one_shot import (
    SinglePathOneShot,
    evaluate_path,
    path_from_cells,
    recalibration_inputs,
)

__all__ = ["FoxSearch"]

LABEL_SOURCES = ("supernet", "trials")
FEASIBILITY = ("lut", "predictor")
#: draws per wanted sample before the space is taken to hold fewer distinct sub-networks
DRAWS_PER_SAMPLE = 50
#: labels (or measurements) between checkpoints while labelling with the supernet
CHECKPOINT_EVERY = 10
UNITS = {
    "latency_ms": "ms",
    "params": "parameters",
    "flops": "FLOPs",
    "flops_with_linalg": "FLOPs",
    "memory": "bytes",
}


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
        if labels not in LABEL_SOURCES:
            raise ValueError(f"labels must be one of {LABEL_SOURCES}, got {labels!r}")
        if predictor not in PREDICTOR_KINDS:
            raise ValueError(f"predictor must be one of {PREDICTOR_KINDS}, got {predictor!r}")
        if feasibility not in FEASIBILITY:
            raise ValueError(f"feasibility must be one of {FEASIBILITY}, got {feasibility!r}")
        if feasibility == "predictor" and not measure:
            raise ValueError(
                "feasibility 'predictor' fits cost models on measurements: set measure"
            )
        if not 0.0 <= safety_margin < 1.0:
            raise ValueError(f"safety_margin must lie in [0, 1), got {safety_margin}")
        self.n_samples = positive_int("samples", samples)
        if self.n_samples < 3:
            raise ValueError(f"samples must be at least 3 to fit a predictor, got {samples}")
        self.labels_from = labels
        self.trial_epochs = positive_int("trial_epochs", trial_epochs)
        if recalibration_batches < 0:
            raise ValueError(f"recalibration_batches must be >= 0, got {recalibration_batches}")
        self.recalibration_batches = int(recalibration_batches)
        self.budget = parse_budget(budget)
        self.predictor = predictor
        self.interactions = bool(interactions)
        self.feasibility = feasibility
        self.safety_margin = float(safety_margin)
        self.measure = bool(measure)
        self.anneal_options = {
            "steps": int(steps),
            "restarts": positive_int("restarts", restarts),
            "top_k": positive_int("top_k", top_k),
            "schedule": schedule,
            "t_start": float(t_start),
            "t_end": float(t_end),
            "stale_limit": stale_limit,
            "stale_accept": stale_accept,
            "patience": patience,
        }
        if steps < 0:
            raise ValueError(f"steps must be >= 0, got {steps}")
        self.max_changes = positive_int("max_changes", max_changes)
        self.verify = bool(verify)
        if latency_warmup < 0:
            raise ValueError(f"latency_warmup must be >= 0, got {latency_warmup}")
        self.latency_warmup = int(latency_warmup)
        self.latency_repeats = positive_int("latency_repeats", latency_repeats)
        self.samples: list[dict[str, Any]] = []
        self.measured: list[dict[str, float] | None] = []
        self.labels: dict[int, dict[str, Any]] = {}
        self.designs: list[dict[str, Any]] = []
        self.chosen: dict[str, Any] = {}

    # -- construction -----------------------------------------------------------------
    def setup(self, run: Run) -> None:
        if self.labels_from == "trials":
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
        table = run.cost_table(
            network,
            latency=True,
            warmup=self.latency_warmup,
            repeats=self.latency_repeats,
            x=self.x,
        )
        self.cost_model = GenotypeCost(table)
        self.features = FeatureSpace(
            self.specs, self.zero, run.opset.parameter_free, self.interactions
        )
        self.trainer = None
        if self.labels_from == "supernet":
            self.trainer = SinglePathOneShot(recalibration_batches=self.recalibration_batches)
            self.trainer.setup(run)

    def state_dict(self) -> dict[str, Any]:
        table = self.cost_model.table
        return {
            "samples": self.samples,
            "measured": self.measured,
            "labels": self.labels,
            "supernet": None if self.trainer is None else self.trainer.state_dict(),
            # the table this run's designs were priced with, whatever a later LUT holds
            "cost_table": {
                k: {s: v.tolist() for s, v in c.items()} for k, c in table.costs.items()
            },
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.samples = list(state["samples"])
        self.measured = list(state["measured"])
        self.labels = {int(k): v for k, v in state["labels"].items()}
        if self.trainer is not None:
            self.trainer.load_state_dict(state["supernet"])
        table = self.cost_model.table
        for kind, by_spec in state["cost_table"].items():
            for spec, values in by_spec.items():
                table.costs[kind][spec].copy_(torch.tensor(values, dtype=torch.float64))

    def progress(self) -> str:
        if self.trainer is not None and not self.samples:
            return f"after supernet epoch {self.trainer.epoch}"
        return f"after {len(self.labels)} of {len(self.samples)} labelled sub-networks"

    # -- the search ----------------------------------------------------------------------
    def run(self, run: Run) -> Genotype:
        if self.trainer is not None:
            while self.trainer.epoch < run.config.search.epochs:
                self.trainer.train_epoch(run)
                run.checkpoint(self)
        if not self.samples:
            self.samples = self._draw_samples(run)
        self._measure_samples(run)
        self._label_samples(run)
        run.checkpoint(self)
        _, models = self._fit(run)
        result = self._anneal(run, models)
        self.designs = [self._design(rank, g, v, models) for rank, (g, v) in enumerate(result.best)]
        self.anneal_record = {
            "evaluations": result.evaluations,
            "proposals": result.proposals,
            "accepted": result.accepted,
            "skipped": result.skipped,
            **self.anneal_options,
            "max_changes": self.max_changes,
        }
        best = self._genotype(run, self.designs[0]["genotype"])
        self.chosen = {"design": self.designs[0], "valid": self._final_metrics(run, best)}
        if self.verify:
            for design in self.designs:
                self._verify(run, design)
        self._write_designs(run)
        run.log({"type": "fox_designs", "designs": self.designs})
        return best

    def _genotype(self, run: Run, cells: Mapping[str, Any]) -> Genotype:
        path = path_from_cells(cells, self.specs, run.opset.name)
        return Genotype(path.opset, path.cells, ops=path.ops, config=run.config.to_dict())

    def _sample_genotypes(self, run: Run) -> list[Genotype]:
        return [path_from_cells(c, self.specs, run.opset.name) for c in self.samples]

    def _draw_samples(self, run: Run) -> list[dict[str, Any]]:
        """``samples`` distinct uniform sub-networks on the run's ``fox samples`` stream."""
        rng = random.Random(stream_seed(run.config.seed, "fox samples"))
        found: dict[str, dict[str, Any]] = {}
        for _ in range(DRAWS_PER_SAMPLE * self.n_samples):
            if len(found) == self.n_samples:
                break
            genotype = random_genotype(self.specs, run.opset.name, self.zero, rng)
            found.setdefault(genotype_key(genotype), genotype.to_dict()["cells"])
        if len(found) < 3:
            raise UserInputError(
                f"the search space holds {len(found)} distinct sub-network(s); fox needs at least 3"
            )
        return list(found.values())

    def _measure_samples(self, run: Run) -> None:
        genotypes = self._sample_genotypes(run)
        while len(self.measured) < len(genotypes):
            index = len(self.measured)
            measured = None
            if self.measure:
                measured = run.measure_genotype(
                    genotypes[index],
                    self.x,
                    warmup=self.latency_warmup,
                    repeats=self.latency_repeats,
                )
            self.measured.append(measured)
            if self.measure and (index + 1) % CHECKPOINT_EVERY == 0:
                run.checkpoint(self)

    def _label_record(self, index: int, valid: Mapping[str, Any], run: Run) -> dict[str, Any]:
        genotype = path_from_cells(self.samples[index], self.specs, run.opset.name)
        record = {
            "type": "fox_label",
            "index": index,
            "genotype": self.samples[index],
            "valid": dict(valid),
            "lut": self.cost_model.costs(genotype),
            "measured": self.measured[index],
        }
        run.log(record)
        return {"valid": dict(valid)}

    def _label_samples(self, run: Run) -> None:
        pending = [i for i in range(len(self.samples)) if i not in self.labels]
        if not pending:
            return
        if self.trainer is not None:
            recalibration = self._recalibration(run)
            for count, index in enumerate(pending, 1):
                path = path_from_cells(self.samples[index], self.specs, run.opset.name)
                metrics = evaluate_path(run, self.trainer.supernet, path, self.specs, recalibration)
                self.labels[index] = self._label_record(index, metrics, run)
                if count % CHECKPOINT_EVERY == 0:
                    run.checkpoint(self)
            return
        jobs = [self._trial_job(run, i, self.samples[i]) for i in pending]

        def on_result(job: TrialJob, result: dict[str, Any]) -> None:
            self.labels[job.index] = self._label_record(job.index, result["valid"], run)
            run.checkpoint(self)

        self._run_trials(run, jobs, on_result)

    def _recalibration(self, run: Run) -> list:
        seed = stream_seed(run.config.seed, "recalibration")
        return recalibration_inputs(run, self.recalibration_batches, seed)

    def _trial_job(self, run: Run, index: int, cells: Mapping[str, Any]) -> TrialJob:
        return TrialJob(
            index=index,
            seed=trial_seed(run.config.seed, index),
            cells=cells,
            epochs=trial_epochs(run.config, self.trial_epochs),
        )

    @staticmethod
    def _run_trials(run: Run, jobs: list[TrialJob], on_result) -> None:
        backend = open_backend(run)
        try:
            backend.map(train_trial, jobs, on_result)
        finally:
            backend.close()

    def labelled_set(self, run: Run) -> tuple[list[Genotype], list[float], list[Any]]:
        """The labelled sub-networks, their primary metric and their end-to-end costs."""
        genotypes = self._sample_genotypes(run)
        accuracy = [
            self._accuracy(i) if i in self.labels else math.nan for i in range(len(genotypes))
        ]
        return genotypes, accuracy, list(self.measured)

    def _accuracy(self, index: int) -> float:
        value = self.labels[index]["valid"].get(self.primary, math.nan)
        return float("nan") if value is None else float(value)

    def _fit(self, run: Run) -> tuple[list[Genotype], PerformanceModels]:
        """Offsets from the measurements, then the accuracy and cost models, then the report."""
        genotypes = self._sample_genotypes(run)
        if self.measure:
            self.cost_model.calibrate(genotypes, self.measured)
        usable = [i for i in range(len(genotypes)) if math.isfinite(self._accuracy(i))]
        if len(usable) < 3:
            raise UserInputError(
                f"only {len(usable)} labelled sub-network(s) have a finite {self.primary}; "
                "fox needs at least 3 to fit its predictors"
            )
        targets = {self.primary: [self._accuracy(i) for i in usable]}
        if self.measure:
            for kind in dict.fromkeys(["latency_ms", *self.budget]):
                targets[kind] = [self.measured[i][kind] for i in usable]
        chosen = [genotypes[i] for i in usable]
        models = PerformanceModels(self.features).fit(chosen, targets, units=UNITS)
        self.lut_quality = {}
        if self.measure:
            for kind in targets:
                if kind == self.primary:
                    continue
                lut = [self.cost_model.cost(g, kind) for g in chosen]
                truth = targets[kind]
                self.lut_quality[kind] = Quality(
                    kendall_tau(truth, lut), r_squared(truth, lut), len(truth)
                )
        if run.writes:
            source = (
                "accuracy with inherited supernet weights"
                if self.trainer is not None
                else "accuracy after stand-alone proxy training"
            )
            if self.measure:
                source += f"; costs measured end to end on {self.x.device}, batch 1"
            write_performance_report(
                models,
                run.out_dir,
                source=source,
                plotted=self.predictor,
                extra_rows=[
                    (k, "LUT sum + offset (in sample)", q) for k, q in self.lut_quality.items()
                ],
            )
        self.models = models
        return chosen, models

    def _costs_ok(self, genotype: Genotype, models: PerformanceModels) -> bool:
        scale = 1.0 - self.safety_margin
        if self.feasibility == "predictor":
            return all(
                models.predict_one(genotype, kind, self.predictor) <= scale * limit
                for kind, limit in self.budget.items()
            )
        return self.cost_model.feasible(genotype, self.budget, self.safety_margin)

    def _anneal(self, run: Run, models: PerformanceModels):
        opset = run.opset.name
        feasible = None
        if self.budget:
            feasible = lambda g: self._costs_ok(g, models)  # noqa: E731

        def start(rng: np.random.Generator) -> Genotype:
            for _ in range(100):
                genotype = random_genotype(self.specs, opset, self.zero, rng)
                if feasible is None or feasible(genotype):
                    return genotype
            cheapest = {}
            for kind in self.budget:
                genotype = cheapest_genotype(
                    self.cost_model.table, self.specs, opset, self.zero, kind
                )
                if feasible(genotype):
                    return genotype
                cheapest[kind] = self.cost_model.cost(genotype, kind)
            raise UserInputError(
                f"no architecture within strategy.budget {self.budget}: the cheapest by the "
                f"look-up table costs {', '.join(f'{k} {v:.4g}' for k, v in cheapest.items())}"
            )

        return anneal(
            lambda g: models.predict_one(g, self.primary, self.predictor),
            feasible,
            genotype_neighbours(self.specs, self.zero, max_changes=self.max_changes),
            start,
            key=genotype_key,
            seed=stream_seed(run.config.seed, "fox anneal"),
            **self.anneal_options,
        )

    def _design(
        self, rank: int, genotype: Genotype, value: float, models: PerformanceModels
    ) -> dict[str, Any]:
        predicted = {self.primary: float(value)}
        for target, by_kind in models.models.items():
            for kind in by_kind:
                predicted[f"{target} ({kind})"] = models.predict_one(genotype, target, kind)
        return {
            "rank": rank,
            "genotype": genotype.to_dict()["cells"],
            "predicted": predicted,
            "cost": self.cost_model.costs(genotype),
            "feasible": True,
            "measured": None,
            "budget_holds": None,
        }

    def _final_metrics(self, run: Run, genotype: Genotype) -> dict[str, Any]:
        """Validation metrics of the chosen design, as the labels were obtained."""
        if self.trainer is not None:
            return evaluate_path(
                run, self.trainer.supernet, genotype, self.specs, self._recalibration(run)
            )
        key = genotype_key(genotype)
        for index, cells in enumerate(self.samples):
            if index in self.labels and genotype_key(path_from_cells(cells, self.specs, "")) == key:
                return dict(self.labels[index]["valid"])
        found: dict[str, Any] = {}
        job = self._trial_job(run, len(self.samples), genotype.to_dict()["cells"])
        self._run_trials(run, [job], lambda _, result: found.update(result["valid"]))
        return found

    def _verify(self, run: Run, design: dict[str, Any]) -> None:
        genotype = path_from_cells(design["genotype"], self.specs, run.opset.name)
        measured = run.measure_genotype(
            genotype, self.x, warmup=self.latency_warmup, repeats=self.latency_repeats
        )
        design["measured"] = measured
        design["budget_holds"] = all(measured[k] <= v for k, v in self.budget.items())

    def _write_designs(self, run: Run) -> None:
        if not run.writes:
            return
        run.directory.write_json(
            "designs.json",
            {
                "budget": self.budget,
                "feasibility": self.feasibility,
                "safety_margin": self.safety_margin,
                "predictor": self.predictor,
                "primary_metric": self.primary,
                "offsets": {k: vars(v) for k, v in self.cost_model.offsets.items()},
                "cost_context": dict(self.cost_model.table.context),
                "anneal": self.anneal_record,
                "designs": self.designs,
            },
        )

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
            "labels": self.labels_from,
            "budget": self.budget,
            "feasibility": self.feasibility,
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
