"""Multi-trial search: propose genotypes, train each briefly, keep the best.

Strategies such as random search and regularized evolution share one loop,
:class:`MultiTrialSearch`, and differ only in how they propose the next
genotypes (:meth:`MultiTrialSearch.propose`) and what they learn from the
finished ones (:meth:`MultiTrialSearch.absorb`). The loop owns everything
else:

* **trials**: every accepted genotype is trained by :func:`train_trial`
  through :meth:`~manifold_nas.run.context.Run.train` (the code ``manifold-nas
  train`` runs, with the config's ``train:`` optimizer, batch size and step
  limit, its cosine schedule spanning the trial epochs) on the weight split,
  at the proxy setting of the config's ``proxy:`` section
  (:mod:`manifold_nas.strategies.multi_trial.proxy`), and scored after every epoch on the
  validation split by the task's primary metric;
* **early stopping** (:class:`EarlyStopping`): the strategy option
  ``early_stopping`` names a per-epoch rule of
  :mod:`manifold_nas.strategies.multi_trial.early_stopping` (``asha`` or ``learning_curve``), and
  ``max_parameters`` rejects a candidate whose full-setting network is too
  large before it is trained (EEEA-Net); a stopped or rejected trial is
  logged with the epoch it stopped at (0 for a rejection) and the reason;
* **backends** (:mod:`manifold_nas.strategies.multi_trial.backends`): trials run in this process or
  as Ray tasks;
* **resume**: a checkpoint after every finished trial, so a killed search
  never trains a finished trial again;
* **the trial table**: ``trials.csv`` and ``trials.png`` in the run directory.

**Batches make the results independent of the backend.** Trials are proposed
and trained in batches of ``batch``. Everything that depends on other
trials' results, the proposals (evolution's tournaments) and the
early-stopping rule's record (ASHA's rung values, the learning-curve
predictor's training curves), is taken from the trials of *earlier* batches
only: each trial of a batch decides with a copy of the rule's state frozen
when the batch was proposed, and after the batch the finished trials are
entered into the rule in trial order. Results may arrive in any order
(Ray), but no decision reads that order, and trial records are logged in
trial order, so ``local`` and ``ray`` give the same trials for the same seed,
and a resumed search the same as an uninterrupted one. The price is that a
trial cannot be stopped by a sibling in its own batch.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from torch.utils.data import Subset

from manifold_nas.config import check_options, positive_int
from manifold_nas.cost.measure import count_parameters
from manifold_nas.errors import UserInputError
from manifold_nas.run.context import Run, build_network, seed_everything, trial_seed
from manifold_nas.space.genotype import Genotype, parse_cells
from manifold_nas.strategies.multi_trial.backends import TrialBackend, open_backend
from manifold_nas.strategies.multi_trial.early_stopping import (
    AsynchronousSuccessiveHalving,
    LearningCurvePredictor,
    LearningCurveStopper,
    Stopper,
)
from manifold_nas.strategies.multi_trial.filters import ParameterFilter, PredictorFilter
from manifold_nas.strategies.multi_trial.proxy import (
    build_trial_network,
    check_proxy,
    proxy_subset,
    trial_epochs,
)

LOGGER = logging.getLogger("manifold_nas")

__all__ = [
    "EarlyStopping",
    "MultiTrialSearch",
    "TrialJob",
    "architecture_features",
    "best_trial",
    "plot_trials",
    "train_trial",
    "trials_csv",
]

#: candidates drawn in a row over ``max_parameters`` before the search gives up
MAX_REJECTED_DRAWS = 100


# -- early-stopping rules ------------------------------------------------------------
def _asha(horizon: int, min_epochs: int = 1, reduction_factor: int = 3) -> Stopper:
    return AsynchronousSuccessiveHalving(min_epochs, horizon, reduction_factor, mode="max")


def _learning_curve(
    horizon: int,
    delta: float = 0.05,
    min_trials: int = 10,
    min_epochs: int = 1,
    n_folds: int = 5,
    nu: float = 0.5,
    keep_leaders: bool = True,
) -> Stopper:
    predictor = LearningCurvePredictor(horizon, min_trials=min_trials, n_folds=n_folds, nu=nu)
    return LearningCurveStopper(
        predictor, delta=delta, min_epochs=min_epochs, mode="max", keep_leaders=keep_leaders
    )


_RULES = {"asha": _asha, "learning_curve": _learning_curve}


@dataclass(frozen=True)
class EarlyStopping:
    """The ``early_stopping`` strategy option: a rule name and its options.

    ``none`` trains every trial for its full budget. ``asha`` is
    asynchronous successive halving (options ``min_epochs``,
    ``reduction_factor``); ``learning_curve`` is Baker et al.'s ν-SVR
    predictor with its Gaussian stopping rule (options ``delta`` (Δ: stop
    when :math:`P(y_T > y^\\ast) < Δ`), ``min_trials``, ``min_epochs``,
    ``n_folds``, ``nu``, ``keep_leaders``); see
    :mod:`manifold_nas.strategies.multi_trial.early_stopping` for both. The budget :math:`T` of
    either rule is the trial epochs.
    """

    name: str = "none"
    options: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def parse(cls, value: str | Mapping[str, Any] | None) -> EarlyStopping:
        """A rule name (``"asha"``) or a mapping with a ``name`` and options."""
        if value is None:
            return cls()
        if isinstance(value, str):
            name, options = value, {}
        elif isinstance(value, Mapping) and isinstance(value.get("name"), str):
            options = dict(value)
            name = options.pop("name")
        else:
            raise ValueError(
                "early_stopping must be 'none', 'asha', 'learning_curve' or a mapping "
                f"with a 'name', got {value!r}"
            )
        if name != "none" and name not in _RULES:
            raise ValueError(
                f"unknown early_stopping {name!r}; choose none, {', '.join(sorted(_RULES))}"
            )
        if name == "none" and options:
            raise ValueError("early_stopping 'none' takes no options")
        if name != "none":
            check_options(_RULES[name], options, "strategy.early_stopping", n_positional=1)
        return cls(name, options)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, **self.options}

    def build(self, horizon: int) -> Stopper | None:
        """The rule for trials of ``horizon`` epochs (None for ``none``)."""
        if self.name == "none":
            return None
        if self.name == "learning_curve":
            try:
                import sklearn  # noqa: F401 (the predictor's ν-SVR)
            except ImportError:
                raise UserInputError(
                    "early_stopping 'learning_curve' needs scikit-learn: "
                    "pip install 'manifold-nas[data]'"
                ) from None
        if self.name == "learning_curve" and horizon < 2:
            raise UserInputError(
                "early_stopping 'learning_curve' predicts a final epoch from earlier ones; "
                f"trials need at least 2 epochs, got {horizon}"
            )
        try:
            return _RULES[self.name](horizon, **self.options)
        except ValueError as err:
            raise UserInputError(f"config key strategy.early_stopping: {err}") from None

    def record(
        self, stopper: Stopper, trial: int, curve: Sequence[float], features: Sequence[float]
    ) -> None:
        """Enter a finished trial's curve into the rule's record, as the next arrival."""
        if isinstance(stopper, AsynchronousSuccessiveHalving):
            for rung in stopper.rungs:
                if rung <= len(curve):
                    stopper.report(trial, rung, float(curve[rung - 1]))
        elif isinstance(stopper, LearningCurveStopper):
            horizon = stopper.predictor.horizon
            if len(curve) == horizon and all(math.isfinite(v) for v in curve):
                stopper.decide(trial, horizon, curve, features)


# -- one trial -------------------------------------------------------------------------
@dataclass(frozen=True)
class TrialJob:
    """Everything a worker needs besides the config to train one trial.

    ``cells`` is the genotype in its JSON form; ``stopping_state`` is the
    early-stopping rule's state frozen when the trial's batch was proposed.
    """

    index: int
    seed: int
    cells: Mapping[str, Any]
    epochs: int
    stopping: EarlyStopping = field(default_factory=EarlyStopping)
    stopping_state: Mapping[str, Any] | None = None


def architecture_features(
    cells: Mapping[str, Any], op_names: Sequence[str], parameters: int
) -> list[float]:
    """The learning-curve predictor's architecture features of a genotype.

    .. math:: z = (n_{o_1}, \\dots, n_{o_K}, \\log_{10} p)

    with :math:`n_o` the number of edges using op :math:`o` over all cell
    types (in the op set's order) and :math:`p` the trained network's
    parameter count. Baker et al. also feed hyperparameters; all trials of a
    search share them, so they would be constant columns and are left out.
    """
    counts = dict.fromkeys(op_names, 0)
    for edges in cells.values():
        for op, _, _ in edges:
            counts[op] = counts.get(op, 0) + 1
    return [float(counts[op]) for op in op_names] + [math.log10(max(1, parameters))]


def _reseed_random_transforms(dataset: Any, seed: int) -> None:
    # Randomised data transforms (MONAI's patch crops) draw from streams of
    # their own, not from torch's; reseeding them per trial makes a trial's
    # data independent of the trials trained before it in the same process.
    while isinstance(dataset, Subset):
        dataset = dataset.dataset
    set_random_state = getattr(getattr(dataset, "transform", None), "set_random_state", None)
    if callable(set_random_state):
        set_random_state(seed=seed % (2**32))


def train_trial(run: Run, job: TrialJob) -> dict[str, Any]:
    """Train one trial at the proxy setting and return its result (plain data).

    The trial is seeded by ``job.seed`` alone: the global random streams,
    the data transforms' streams and the loader's shuffling. After every
    epoch the validation score (``run.task.primary_metric``) extends the
    curve, and the early-stopping rule, restored from ``job.stopping_state``,
    decides whether to go on.
    """
    seed_everything(job.seed)
    _reseed_random_transforms(run.weight_set, job.seed)
    genotype = Genotype(run.opset.name, parse_cells(job.cells))
    network = build_trial_network(run, genotype)
    parameters = count_parameters(network)
    features = architecture_features(job.cells, run.opset.op_names, parameters)
    stopper = job.stopping.build(job.epochs)
    if stopper is not None and job.stopping_state is not None:
        stopper.load_state_dict(json.loads(json.dumps(job.stopping_state)))
    primary = run.task.primary_metric
    curve: list[float] = []
    verdict: list[str] = []

    def after_epoch(record: dict[str, Any]) -> bool:
        curve.append(float(record["valid"].get(primary, float("nan"))))
        if stopper is None:
            return False
        decision = stopper.decide(job.index, len(curve), curve, features)
        if decision.stop:
            verdict.append(decision.reason)
        return decision.stop

    train_set = proxy_subset(run.weight_set, run.config.proxy.data_fraction, run.config.seed)
    result = run.train(
        network,
        job.epochs,
        train_set=train_set,
        valid_set=run.valid_set,
        loader_seed=job.seed,
        callback=after_epoch,
        desc=f"trial {job.index}",
    )
    return {
        "curve": curve,
        "valid": result.last_valid,
        "stopped_at": None if result.stopped_at is None else result.stopped_at + 1,
        "reason": verdict[0] if verdict else None,
        "proxy_parameters": parameters,
        "features": features,
        "seconds": result.seconds,
    }


def _score(value: Any) -> float:
    value = float("nan") if value is None else float(value)
    return value if math.isfinite(value) else float("-inf")


def best_trial(trials: Sequence[Mapping[str, Any]]) -> Mapping[str, Any]:
    """The best trial: highest final score among those trained to the full budget.

    Trials stopped early compete (with their last score) only when no trial
    was trained to the end; ties go to the earliest trial.
    """
    complete = [t for t in trials if t["status"] == "complete"]
    trained = complete or [t for t in trials if t["status"] == "stopped"]
    if not trained:
        raise RuntimeError("no trial was trained")
    return max(trained, key=lambda t: (_score(t["curve"][-1] if t["curve"] else None), -t["trial"]))


# -- the shared loop ---------------------------------------------------------------------
class MultiTrialSearch:
    """The loop shared by multi-trial strategies; mixed into a :class:`~manifold_nas.strategies.base.Strategy`.

    A strategy ``class S(MultiTrialSearch, Strategy)`` calls
    :meth:`_init_multi_trial` from its ``__init__`` (whose keyword options
    include the shared ones below) and implements :meth:`propose`; it may
    override :meth:`absorb` and extend ``state_dict`` / ``load_state_dict``.

    Parameters
    ----------
    trials:
        Trials to train (rejected candidates do not count).
    epochs:
        Epochs per trial, unless ``proxy.epochs`` is set.
    batch:
        Trials proposed and trained together; the unit of parallelism, and
        what fixes the results (not the backend or its number of workers).
    early_stopping:
        ``none``, ``asha``, ``learning_curve`` or a mapping with a ``name``
        and the rule's options (:class:`EarlyStopping`).
    max_parameters:
        Reject, before training, a candidate whose full-setting network (the
        one ``manifold-nas train`` builds) has more parameters; None keeps all.
    predictor_filter:
        Reject, before training, a candidate predicted far below the best
        trial so far, or over a look-up-table cost budget
        (:class:`~manifold_nas.strategies.multi_trial.filters.PredictorFilter`); None keeps all.
        A strategy offers it by passing its own ``predictor_filter`` option on.
    """

    #: trials run through ``search.backend`` (local or Ray)
    uses_backend = True

    n_trials: int
    epochs: int
    batch: int
    early_stopping: EarlyStopping
    max_parameters: int | None

    def _init_multi_trial(
        self,
        trials: int,
        epochs: int,
        batch: int,
        early_stopping: str | Mapping[str, Any] | None,
        max_parameters: int | None,
        predictor_filter: Mapping[str, Any] | None = None,
    ) -> None:
        self.n_trials = positive_int("trials", trials)
        self.epochs = positive_int("epochs", epochs)
        self.batch = positive_int("batch", batch)
        self.early_stopping = EarlyStopping.parse(early_stopping)
        self.max_parameters = (
            None if max_parameters is None else positive_int("max_parameters", max_parameters)
        )
        self.predictor_filter = PredictorFilter.parse(predictor_filter)
        self.trials: list[dict[str, Any]] = []
        self._batch: list[dict[str, Any]] = []
        self._batch_stopping_state: dict[str, Any] | None = None
        self.backend_name = "local"

    # -- what a strategy provides ----------------------------------------------------------
    def propose(self, run: Run, slot: int) -> tuple[Genotype, str]:
        """The genotype of the ``slot``-th trained trial and where it came from (one line).

        Called again for the same slot when a candidate is rejected.
        """
        raise NotImplementedError

    def absorb(self, records: Sequence[dict[str, Any]]) -> None:
        """Learn from a finished batch (records in trial order, rejected ones included)."""

    # -- the Strategy protocol ------------------------------------------------------------------
    def setup(self, run: Run) -> None:
        check_proxy(run.config)
        self.specs = run.build_searchable().arch_specs
        self.sampler = random.Random(run.config.seed)
        self.horizon = trial_epochs(run.config, self.epochs)
        self.stopper = self.early_stopping.build(self.horizon)
        self.filter = None if self.max_parameters is None else ParameterFilter(self.max_parameters)
        self.primary = run.task.primary_metric
        if self.predictor_filter is not None:
            self.predictor_filter.setup(run, self.specs)

    def state_dict(self) -> dict[str, Any]:
        return {
            "trials": self.trials,
            "batch": self._batch,
            "batch_stopping_state": self._batch_stopping_state,
            "sampler": self.sampler.getstate(),
            "stopper": None if self.stopper is None else self.stopper.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.trials = list(state["trials"])
        self._batch = list(state["batch"])
        self._batch_stopping_state = state["batch_stopping_state"]
        version, internal, gauss = state["sampler"]
        self.sampler.setstate((version, tuple(internal), gauss))
        if self.stopper is not None:
            self.stopper.load_state_dict(state["stopper"])
        if self.predictor_filter is not None:
            # a function of the trials of finished batches, so refitted rather than stored
            self.predictor_filter.update(self.trials)

    def progress(self) -> str:
        return f"after trial {len(self.trials)} ({self._trained()} of {self.n_trials} trained)"

    def run(self, run: Run) -> Genotype:
        backend = open_backend(run)
        self.backend_name = backend.name
        try:
            while True:
                if self._batch:
                    self._finish_batch(run, backend)
                if self._trained() >= self.n_trials:
                    break
                self._propose_batch(run)
                run.checkpoint(self)
        finally:
            backend.close()
        self._write_table(run, plot=True)
        best = best_trial(self.trials)
        return Genotype(
            opset=run.opset.name,
            cells=parse_cells(best["genotype"]),
            ops={name: spec.ops for name, spec in self.specs.items()},
            config=run.config.to_dict(),
        )

    def summary(self, run: Run) -> dict[str, Any]:
        best = best_trial(self.trials)
        trained = [t for t in self.trials if t["status"] != "rejected"]
        epochs_run = sum(t["epochs"] for t in trained)
        epochs_full = len(trained) * self.horizon
        saved = epochs_full - epochs_run
        return {
            "final": best["valid"],
            "best_trial": best["trial"],
            "trials": len(trained),
            "stopped": sum(t["status"] == "stopped" for t in trained),
            "rejected": sum(t["status"] == "rejected" for t in self.trials),
            "epochs_per_trial": self.horizon,
            "trial_epochs": epochs_run,
            "trial_epochs_without_stopping": epochs_full,
            "epochs_saved": saved,
            "epochs_saved_fraction": saved / epochs_full if epochs_full else 0.0,
            "early_stopping": self.early_stopping.to_dict(),
            "max_parameters": self.max_parameters,
            **(
                {"predictor_filter": self.predictor_filter.to_dict()}
                if self.predictor_filter is not None
                else {}
            ),
            "backend": self.backend_name,
            "batch": self.batch,
        }

    # -- the loop's steps -------------------------------------------------------------------------
    def _trained(self) -> int:
        done = sum(t["status"] != "rejected" for t in self.trials)
        pending = sum(
            not entry["logged"] and entry["status"] != "rejected" for entry in self._batch
        )
        return done + pending

    def _next_index(self) -> int:
        return len(self.trials) + sum(not entry["logged"] for entry in self._batch)

    def _full_parameters(self, run: Run, genotype: Genotype) -> int:
        # The network ``manifold-nas train`` would build (``train.network`` overrides).
        network, _ = build_network(run.config, run.bundle, genotype, extra=run.config.train.network)
        return count_parameters(network)

    def _propose_batch(self, run: Run) -> None:
        self._batch_stopping_state = None if self.stopper is None else self.stopper.state_dict()
        size = min(self.batch, self.n_trials - self._trained())
        for _ in range(size):
            slot = self._trained()
            smallest = None
            last_reason = None
            for _draw in range(MAX_REJECTED_DRAWS):
                genotype, origin = self.propose(run, slot)
                parameters = self._full_parameters(run, genotype)
                entry = {
                    "trial": self._next_index(),
                    "genotype": genotype.to_dict()["cells"],
                    "origin": origin,
                    "parameters": parameters,
                    "status": "pending",
                    "record": None,
                    "logged": False,
                }
                self._batch.append(entry)
                decision = None if self.filter is None else self.filter.check(parameters)
                by_parameters = decision is not None and decision.stop
                if not by_parameters and self.predictor_filter is not None:
                    decision = self.predictor_filter.check(genotype)
                if decision is None or not decision.stop:
                    break
                entry["status"] = "rejected"
                entry["record"] = self._record(entry, None, decision.reason)
                self._flush(run)
                if not by_parameters:
                    last_reason = decision.reason
                    continue
                smallest = parameters if smallest is None else min(smallest, parameters)
            else:
                if smallest is None or last_reason is not None:
                    raise UserInputError(
                        f"no candidate passed the filters in {MAX_REJECTED_DRAWS} draws in a row "
                        f"(last rejection: {last_reason}); loosen strategy.predictor_filter"
                    )
                raise UserInputError(
                    f"no candidate within max_parameters={self.max_parameters:,} in "
                    f"{MAX_REJECTED_DRAWS} draws in a row (smallest: {smallest:,} parameters)"
                )

    def _job(self, entry: Mapping[str, Any], run: Run) -> TrialJob:
        return TrialJob(
            index=entry["trial"],
            seed=trial_seed(run.config.seed, entry["trial"]),
            cells=entry["genotype"],
            epochs=self.horizon,
            stopping=self.early_stopping,
            stopping_state=self._batch_stopping_state,
        )

    def _finish_batch(self, run: Run, backend: TrialBackend) -> None:
        by_index = {entry["trial"]: entry for entry in self._batch}
        jobs = [self._job(e, run) for e in self._batch if e["record"] is None]

        def on_result(job: TrialJob, result: dict[str, Any]) -> None:
            entry = by_index[job.index]
            entry["status"] = "complete" if result["stopped_at"] is None else "stopped"
            entry["record"] = self._record(entry, result, result["reason"])
            self._flush(run)
            run.checkpoint(self)

        backend.map(train_trial, jobs, on_result)
        records = [entry["record"] for entry in self._batch]
        if self.stopper is not None:
            for record in records:
                if record["status"] != "rejected":
                    self.early_stopping.record(
                        self.stopper, record["trial"], record["curve"], record["features"]
                    )
        self.absorb(records)
        if self.predictor_filter is not None:
            self.predictor_filter.update(self.trials)
        self._batch = []
        self._batch_stopping_state = None
        self._write_table(run, plot=False)
        run.checkpoint(self)

    def _record(
        self, entry: Mapping[str, Any], result: Mapping[str, Any] | None, reason: str | None
    ) -> dict[str, Any]:
        result = result or {}
        curve = list(result.get("curve", []))
        status = entry["status"]
        return {
            "type": "trial",
            "trial": entry["trial"],
            "status": status,
            "origin": entry["origin"],
            "genotype": entry["genotype"],
            "parameters": entry["parameters"],
            "proxy_parameters": result.get("proxy_parameters"),
            "epochs": len(curve),
            "curve": curve,
            "stopped_at": 0 if status == "rejected" else result.get("stopped_at"),
            "reason": reason,
            "final": curve[-1] if status == "complete" else None,
            "valid": dict(result.get("valid", {})),
            "features": list(result.get("features", [])),
            "seconds": float(result.get("seconds", 0.0)),
        }

    def _flush(self, run: Run) -> None:
        # Log finished trials in trial order, whatever order they finished in.
        for entry in self._batch:
            if entry["logged"]:
                continue
            if entry["record"] is None:
                break
            run.log(entry["record"])
            self.trials.append(entry["record"])
            entry["logged"] = True

    def _write_table(self, run: Run, plot: bool) -> None:
        if run.directory is None:
            return
        run.directory.write_text("trials.csv", trials_csv(self.trials, self.horizon, self.primary))
        if plot and any(t["status"] != "rejected" for t in self.trials):
            plot_trials(run.directory.path / "trials.png", self.trials, self.primary)


# -- the trial table ---------------------------------------------------------------------------
def trials_csv(trials: Sequence[Mapping[str, Any]], horizon: int, primary: str = "accuracy") -> str:
    """``trials.csv``: one row per trial, with its proxy score after every epoch."""
    columns = ["trial", "status", "origin", "genotype", "parameters", "proxy_parameters"]
    columns += ["epochs", "stopped_at", "reason", "final", "seconds"]
    columns += [f"{primary}_epoch_{k}" for k in range(1, horizon + 1)]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    for t in trials:
        curve = list(t["curve"]) + [""] * (horizon - len(t["curve"]))
        writer.writerow(
            [
                t["trial"], t["status"], t["origin"],
                json.dumps(t["genotype"], separators=(",", ":")),
                t["parameters"], _blank(t["proxy_parameters"]), t["epochs"],
                _blank(t["stopped_at"]), _blank(t["reason"]), _blank(t["final"]),
                f"{t['seconds']:.3f}", *curve,
            ]
        )  # fmt: skip
    return out.getvalue()


def _blank(value: Any) -> Any:
    return "" if value is None else value


def plot_trials(path: Any, trials: Sequence[Mapping[str, Any]], primary: str = "accuracy") -> None:
    """``trials.png``: every trained trial's proxy learning curve, kept ones blue, stopped red.

    The best trial is drawn in black; a cross marks where a trial was
    stopped. Skipped (with a warning) when matplotlib is not installed.
    """
    try:
        import matplotlib
    except ImportError:
        LOGGER.warning("trials.png skipped: plotting needs matplotlib (manifold-nas[viz])")
        return
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    trained = [t for t in trials if t["status"] != "rejected" and t["curve"]]
    best = best_trial(trials)["trial"]
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for t in trained:
        epochs = np.arange(1, len(t["curve"]) + 1)
        if t["status"] == "stopped":
            ax.plot(epochs, t["curve"], color="tab:red", alpha=0.45, lw=1)
            ax.plot(epochs[-1], t["curve"][-1], "x", color="tab:red", alpha=0.8)
        elif t["trial"] != best:
            ax.plot(epochs, t["curve"], color="tab:blue", alpha=0.55, lw=1)
    top = next(t for t in trained if t["trial"] == best)
    ax.plot(np.arange(1, len(top["curve"]) + 1), top["curve"], color="black", lw=2)
    n_rejected = sum(t["status"] == "rejected" for t in trials)
    n_stopped = sum(t["status"] == "stopped" for t in trained)
    ax.set_title(
        f"{len(trained)} trials: {len(trained) - n_stopped} kept, {n_stopped} stopped"
        + (f", {n_rejected} rejected before training" if n_rejected else "")
    )
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"validation {primary} (proxy)")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.legend(
        handles=[
            Line2D([], [], color="tab:blue", label="trained to the end"),
            Line2D([], [], color="tab:red", marker="x", label="stopped early"),
            Line2D([], [], color="black", lw=2, label=f"best (trial {best})"),
        ],
        loc="lower right",
        fontsize="small",
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
