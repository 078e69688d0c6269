"""Early stopping for multi-trial search: which candidates to stop before their full budget.

In multi-trial NAS every candidate network is trained for a few epochs and
most of them are not worth finishing. This module decides which ones to stop,
and never needs to know what is being trained: a rule sees a trial id, the
epoch, the validation curve so far and an optional numeric feature vector.

* :class:`LearningCurvePredictor` and :class:`LearningCurveStopper` follow
  Baker et al. (2018), "Accelerating Neural Architecture Search using
  Performance Prediction": one ν-SVR per observed prefix length predicts the
  final validation value from the partial curve; a trial is stopped when, under
  a Gaussian error model, it is unlikely to beat the best finished trial.
* :class:`AsynchronousSuccessiveHalving` (alias :data:`ASHA`) is the
  asynchronous successive-halving rule of Li et al. (2020), "A System for
  Massively Parallel Hyperparameter Tuning", in its stopping form.
* :class:`ParameterFilter` is the early-exit filter of EEEA-Net (Termritthikun
  et al., 2021): candidates above a parameter budget are rejected before any
  training.

Every rule returns a :class:`Decision`. The two per-epoch rules implement the
:class:`Stopper` protocol, so the search loop calls ``decide`` after every
epoch without asking which rule it holds. Both rules are deterministic and
offer ``state_dict`` / ``load_state_dict`` holding plain lists and numbers, so
a resumed search makes the same decisions as an uninterrupted one.

The module depends only on NumPy and, for the learning-curve predictor,
scikit-learn (imported when a model is first fitted).
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np

__all__ = [
    "ASHA",
    "AsynchronousSuccessiveHalving",
    "Decision",
    "LearningCurvePredictor",
    "LearningCurveStopper",
    "Stopper",
    "prefix_features",
]

Mode = Literal["max", "min"]


@dataclass(frozen=True)
class Decision:
    """The verdict of an early-stopping rule.

    Attributes
    ----------
    stop:
        ``True`` when the trial should be stopped now (or, for
        :class:`ParameterFilter`, never started). A trial that has reached its
        full budget is reported with ``stop=False``: it finished, it was not
        stopped early.
    reason:
        One human-readable line saying why.
    predicted:
        The predicted final value, when the rule made a prediction.
    probability:
        The probability that the trial beats the best finished one, when the
        rule computed it.
    """

    stop: bool
    reason: str
    predicted: float | None = None
    probability: float | None = None


@runtime_checkable
class Stopper(Protocol):
    """What the multi-trial loop calls after every epoch of every trial.

    ``curve`` holds the validation values of epochs ``1 … epoch`` (so
    ``len(curve) == epoch``), ``features`` the trial's numeric architecture
    features and hyperparameters, and ``best_so_far`` the best final value of
    the finished trials (``None`` lets the rule use its own record).
    """

    def decide(
        self,
        trial_id: Hashable,
        epoch: int,
        curve: Sequence[float],
        features: Sequence[float] = (),
        best_so_far: float | None = None,
    ) -> Decision: ...


def _check_curve(curve: Sequence[float], epoch: int) -> np.ndarray:
    values = np.asarray(curve, dtype=float).reshape(-1)
    if epoch < 1:
        raise ValueError(f"epoch must be at least 1, got {epoch}")
    if values.size != epoch:
        raise ValueError(
            f"curve must hold one value per epoch 1..{epoch}, got {values.size} values"
        )
    return values


def _first_non_finite(values: np.ndarray) -> int | None:
    bad = np.flatnonzero(~np.isfinite(values))
    return int(bad[0]) if bad.size else None


def _hashable(trial_id: Any) -> Hashable:
    # JSON turns tuple ids into lists; turn them back so they match live ids.
    return tuple(_hashable(part) for part in trial_id) if isinstance(trial_id, list) else trial_id


def prefix_features(partial_curve: Sequence[float], features: Sequence[float] = ()) -> np.ndarray:
    """Baker et al.'s regression features for a curve observed for τ epochs.

    .. math:: x = \\big(y_1, \\dots, y_\\tau,\\;
              \\Delta y_1, \\dots, \\Delta y_{\\tau-1},\\;
              \\Delta^2 y_1, \\dots, \\Delta^2 y_{\\tau-2},\\; z\\big)

    with :math:`\\Delta y_i = y_{i+1} - y_i`, the second differences only when
    :math:`\\tau \\ge 3`, and :math:`z` the trial's architecture features and
    hyperparameters. The length is :math:`3\\tau - 3 + \\dim z` for
    :math:`\\tau \\ge 2` and :math:`1 + \\dim z` for :math:`\\tau = 1`.
    """
    y = np.asarray(partial_curve, dtype=float).reshape(-1)
    parts = [y, np.diff(y)]
    if y.size >= 3:
        parts.append(np.diff(y, n=2))
    parts.append(np.asarray(features, dtype=float).reshape(-1))
    return np.concatenate(parts)


class _StandardisedNuSVR:
    """An RBF ν-SVR on features standardised with the training set's mean and spread.

    The kernel is :math:`k(x, x') = \\exp(-\\gamma \\lVert x - x' \\rVert^2)` with
    :math:`\\gamma = w / d` for :math:`d` features: on standardised features
    scikit-learn's ``gamma="scale"`` is :math:`1/d`, so ``width`` is a multiple of it.
    Standardising by hand rather than with a scikit-learn pipeline keeps the
    many small cross-validation fits cheap.
    """

    def __init__(self, nu: float, C: float, width: float) -> None:
        self.nu, self.C, self.width = nu, C, width

    def fit(self, x: np.ndarray, target: np.ndarray) -> _StandardisedNuSVR:
        from sklearn.svm import NuSVR

        self.mean = x.mean(axis=0)
        spread = x.std(axis=0)
        # A feature constant over the training trials carries no information.
        self.scale = np.where(spread > 0.0, spread, 1.0)
        self.svr = NuSVR(kernel="rbf", nu=self.nu, C=self.C, gamma=self.width / x.shape[1])
        self.svr.fit((x - self.mean) / self.scale, target)
        return self

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.svr.predict((x - self.mean) / self.scale)


@dataclass
class _PrefixModel:
    """One fitted sequential-regression model and its cross-validated error."""

    regressor: Any
    target_mean: float
    target_scale: float
    rmse: float
    n_trials: int

    def predict(self, x: np.ndarray) -> float:
        standardised = float(self.regressor.predict(x.reshape(1, -1))[0])
        return self.target_mean + self.target_scale * standardised


class LearningCurvePredictor:
    """Predict a trial's final validation value from the first τ epochs (Baker et al., 2018).

    For every prefix length :math:`\\tau = 1, \\dots, T-1` there is one
    sequential regression model: a ν-SVR with an RBF kernel on standardised
    features (:func:`prefix_features`), trained on the completed trials' curves
    cut at :math:`\\tau`, with target the final value :math:`y_T`
    (standardised too, so ``C`` does not depend on the metric's scale).

    **Error model.** The prediction is read as Gaussian,

    .. math:: y_T \\mid y_{1:\\tau}, z \\sim \\mathcal N(\\hat y_T, \\sigma_\\tau^2),
              \\qquad \\sigma_\\tau = \\sqrt{\\tfrac1n \\textstyle\\sum_i (y_{T,i} - \\hat y_{T,i}^{(-i)})^2},

    where :math:`\\hat y_{T,i}^{(-i)}` is the prediction for trial :math:`i`
    by the τ-model fitted on the other folds of a k-fold split. The error is
    homoscedastic: one :math:`\\sigma_\\tau` per prefix length, shared by all
    trials, shrinking as τ grows and the curve says more about its end.

    **Hyperparameters.** ``C`` and the kernel width may be grids; each
    τ-model then takes the pair with the lowest cross-validated RMSE, on the
    same folds that give :math:`\\sigma_\\tau`. Selecting on those folds makes
    :math:`\\sigma_\\tau` slightly optimistic (nested cross-validation would
    remove the bias at k times the cost); pass single values to avoid it.

    Models are refitted lazily: a τ-model is fitted when a prediction for
    length τ is asked for and trials have completed since its last fit. Folds
    are shuffled with a fixed seed, so the same observed trials always give
    the same models.

    Parameters
    ----------
    horizon:
        :math:`T`, the number of epochs of a completed trial.
    min_trials:
        Completed trials needed before any prediction is made; before that
        :meth:`predict` and :meth:`probability_better` return ``None``.
    n_folds:
        Folds of the cross-validation that estimates :math:`\\sigma_\\tau`
        (fewer when fewer trials have completed).
    nu:
        ν of :class:`sklearn.svm.NuSVR`: a bound on the fraction of
        margin errors and of support vectors.
    C:
        Penalty of the SVR on the standardised target; one value or a grid.
    gamma:
        RBF width as a multiple of scikit-learn's ``"scale"`` (:math:`1/d`
        on :math:`d` standardised features); one value or a grid.
    """

    def __init__(
        self,
        horizon: int,
        min_trials: int = 10,
        n_folds: int = 5,
        nu: float = 0.5,
        C: float | Sequence[float] = (1.0, 10.0, 100.0),
        gamma: float | Sequence[float] = (0.03, 0.1, 0.3, 1.0),
    ) -> None:
        if horizon < 2:
            raise ValueError(f"horizon must be at least 2 epochs, got {horizon}")
        if min_trials < 2:
            raise ValueError(
                f"min_trials must be at least 2 for cross-validation, got {min_trials}"
            )
        if n_folds < 2:
            raise ValueError(f"n_folds must be at least 2, got {n_folds}")
        self.horizon = int(horizon)
        self.min_trials = int(min_trials)
        self.n_folds = int(n_folds)
        self.nu = nu
        self.C_grid = tuple(np.atleast_1d(np.asarray(C, dtype=float)).tolist())
        self.gamma_grid = tuple(np.atleast_1d(np.asarray(gamma, dtype=float)).tolist())
        self._curves: list[list[float]] = []
        self._features: list[list[float]] = []
        self._models: dict[int, _PrefixModel] = {}

    @property
    def n_trials(self) -> int:
        """Number of completed trials observed."""
        return len(self._curves)

    @property
    def ready(self) -> bool:
        """Whether enough trials have completed for predictions to be made."""
        return self.n_trials >= self.min_trials

    def best_final(self, mode: Mode = "max") -> float | None:
        """The best final value among the observed trials, ``None`` if there are none."""
        if not self._curves:
            return None
        finals = [curve[-1] for curve in self._curves]
        return max(finals) if mode == "max" else min(finals)

    def best_at_epoch(self, epoch: int, mode: Mode = "max") -> float | None:
        """The best value any observed trial had after ``epoch`` epochs, ``None`` if there are none."""
        if not self._curves:
            return None
        values = [curve[epoch - 1] for curve in self._curves]
        return max(values) if mode == "max" else min(values)

    def observe(self, curve: Sequence[float], features: Sequence[float] = ()) -> None:
        """Record a completed trial: its full curve :math:`y_1, \\dots, y_T` and features."""
        values = np.asarray(curve, dtype=float).reshape(-1)
        if values.size != self.horizon:
            raise ValueError(
                f"a completed curve must have {self.horizon} values, got {values.size}"
            )
        bad = _first_non_finite(values)
        if bad is not None:
            raise ValueError(f"curve value at epoch {bad + 1} is not finite ({values[bad]})")
        z = np.asarray(features, dtype=float).reshape(-1)
        if self._features and z.size != len(self._features[0]):
            raise ValueError(
                f"features must have {len(self._features[0])} entries like earlier trials, "
                f"got {z.size}"
            )
        if not np.all(np.isfinite(z)):
            raise ValueError("features must be finite")
        self._curves.append(values.tolist())
        self._features.append(z.tolist())

    def predict(
        self, partial_curve: Sequence[float], features: Sequence[float] = ()
    ) -> tuple[float, float] | None:
        """Predicted final value and its standard error, :math:`(\\hat y_T, \\sigma_\\tau)`.

        Returns ``None`` before ``min_trials`` trials have completed. A curve
        already at the horizon is its own prediction, with zero error.
        """
        y = np.asarray(partial_curve, dtype=float).reshape(-1)
        tau = y.size
        if not 1 <= tau <= self.horizon:
            raise ValueError(f"partial curve must have 1..{self.horizon} values, got {tau}")
        z = np.asarray(features, dtype=float).reshape(-1)
        if self._features and z.size != len(self._features[0]):
            raise ValueError(
                f"features must have {len(self._features[0])} entries like the observed trials, "
                f"got {z.size}"
            )
        if not self.ready:
            return None
        if tau == self.horizon:
            return float(y[-1]), 0.0
        model = self._prefix_model(tau)
        return model.predict(prefix_features(y, z)), model.rmse

    def probability_better(
        self, partial_curve: Sequence[float], features: Sequence[float], threshold: float
    ) -> float | None:
        """:math:`P(y_T > t) = 1 - \\Phi\\big((t - \\hat y_T)/\\sigma_\\tau\\big)` under the Gaussian model.

        Returns ``None`` before ``min_trials`` trials have completed. With
        :math:`\\sigma_\\tau = 0` the probability is 1 if
        :math:`\\hat y_T > t` and 0 otherwise.
        """
        prediction = self.predict(partial_curve, features)
        if prediction is None:
            return None
        mean, std = prediction
        if std == 0.0:
            return 1.0 if mean > threshold else 0.0
        return 0.5 * math.erfc((threshold - mean) / (std * math.sqrt(2.0)))

    def state_dict(self) -> dict[str, Any]:
        """The observed trials as plain lists; models are refitted from them on load."""
        return {
            "horizon": self.horizon,
            "curves": [list(curve) for curve in self._curves],
            "features": [list(z) for z in self._features],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Replace the observed trials with those of ``state``.

        Models are not saved but refitted, so the predictor must be built with
        the same arguments as the one that saved ``state`` to decide the same.
        """
        if int(state["horizon"]) != self.horizon:
            raise ValueError(
                f"state was saved with horizon {state['horizon']}, this predictor has {self.horizon}"
            )
        self._curves, self._features, self._models = [], [], {}
        for curve, z in zip(state["curves"], state["features"], strict=True):
            self.observe(curve, z)

    def _prefix_model(self, tau: int) -> _PrefixModel:
        model = self._models.get(tau)
        if model is None or model.n_trials != self.n_trials:
            model = self._fit_prefix_model(tau)
            self._models[tau] = model
        return model

    def _fit_prefix_model(self, tau: int) -> _PrefixModel:
        from sklearn.model_selection import KFold

        x = np.stack(
            [
                prefix_features(curve[:tau], z)
                for curve, z in zip(self._curves, self._features, strict=True)
            ]
        )
        finals = np.array([curve[-1] for curve in self._curves])
        target_mean = float(finals.mean())
        spread = float(finals.std())
        # All finals equal: any positive scale gives the same (constant) model.
        target_scale = spread if spread > 0.0 else 1.0
        target = (finals - target_mean) / target_scale

        folds = list(
            KFold(n_splits=min(self.n_folds, len(target)), shuffle=True, random_state=0).split(x)
        )
        best: tuple[float, float, float] | None = None
        for c in self.C_grid:
            for width in self.gamma_grid:
                held_out = np.empty_like(target)
                for train, test in folds:
                    fitted = _StandardisedNuSVR(self.nu, c, width).fit(x[train], target[train])
                    held_out[test] = fitted.predict(x[test])
                rmse = float(np.sqrt(np.mean((held_out - target) ** 2)))
                if best is None or rmse < best[0]:
                    best = (rmse, c, width)
        assert best is not None
        rmse, c, width = best
        regressor = _StandardisedNuSVR(self.nu, c, width).fit(x, target)
        return _PrefixModel(regressor, target_mean, target_scale, target_scale * rmse, len(target))


class LearningCurveStopper:
    """Baker et al.'s early-stopping rule on top of a :class:`LearningCurvePredictor`.

    After τ epochs, with :math:`y^\\ast` the best final value of the finished
    trials, the trial is stopped when

    .. math:: P(y_T > y^\\ast \\mid y_{1:\\tau}, z) < \\Delta

    (``mode="min"``: :math:`P(y_T < y^\\ast) < \\Delta`), i.e. when with
    probability at least :math:`1 - \\Delta` it cannot beat the best. Nothing
    is stopped before ``min_epochs`` epochs or before the predictor has
    ``min_trials`` completed trials.

    **Leaders are kept.** An RBF regressor cannot extrapolate: for a curve
    beyond every training curve its prediction falls back toward the mean of
    the observed finals, exactly when the trial may be a new best. So with
    ``keep_leaders=True`` (the default) a trial whose value after τ epochs
    matches or beats every completed trial's value after τ epochs is kept
    whatever the prediction says. Only trials that set a per-epoch record are
    spared, and those are the ones worth finishing.

    When :meth:`decide` sees a curve that has reached the predictor's horizon,
    it records the finished trial in the predictor (once per trial id), so
    the loop only has to call :meth:`decide` after every epoch.
    """

    def __init__(
        self,
        predictor: LearningCurvePredictor,
        delta: float = 0.05,
        min_epochs: int = 1,
        mode: Mode = "max",
        keep_leaders: bool = True,
    ) -> None:
        if not 0.0 < delta < 1.0:
            raise ValueError(f"delta must lie in (0, 1), got {delta}")
        if min_epochs < 1:
            raise ValueError(f"min_epochs must be at least 1, got {min_epochs}")
        if mode not in ("max", "min"):
            raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
        self.predictor = predictor
        self.delta = delta
        self.min_epochs = int(min_epochs)
        self.mode: Mode = mode
        self.keep_leaders = keep_leaders
        self._completed: list[Hashable] = []

    def should_stop(
        self,
        partial_curve: Sequence[float],
        features: Sequence[float] = (),
        best_so_far: float | None = None,
    ) -> Decision:
        """Apply the rule to a curve of τ epochs; ``best_so_far=None`` uses the predictor's record."""
        y = np.asarray(partial_curve, dtype=float).reshape(-1)
        tau = y.size
        bad = _first_non_finite(y)
        if bad is not None:
            return Decision(True, f"validation value at epoch {bad + 1} is not finite ({y[bad]})")
        if tau >= self.predictor.horizon:
            return Decision(False, f"trial complete at the full budget of {tau} epochs")
        if tau < self.min_epochs:
            return Decision(False, f"epoch {tau} is before min_epochs {self.min_epochs}")
        if not self.predictor.ready:
            return Decision(
                False,
                f"only {self.predictor.n_trials} of {self.predictor.min_trials} trials "
                "completed; not predicting yet",
            )
        best = self.predictor.best_final(self.mode) if best_so_far is None else best_so_far
        if best is None:
            return Decision(False, "no finished trial to compare with")
        prediction = self.predictor.predict(y, features)
        above = self.predictor.probability_better(y, features, best)
        # Both are None only before min_trials, which was checked above.
        assert prediction is not None and above is not None
        mean, std = prediction
        probability = above if self.mode == "max" else 1.0 - above
        relation = ">" if self.mode == "max" else "<"
        stop = probability < self.delta
        verdict = f"< {self.delta:.3g}" if stop else f"≥ {self.delta:.3g}"
        reason = (
            f"predicted final {mean:.3f} ± {std:.3f}, "
            f"P({relation} best {best:.3f}) = {probability:.3g} {verdict}"
        )
        if stop and self.keep_leaders:
            record = self.predictor.best_at_epoch(tau, self.mode)
            assert record is not None  # ready implies observed trials
            leads = y[-1] >= record if self.mode == "max" else y[-1] <= record
            if leads:
                stop = False
                reason += (
                    f", but kept: {y[-1]:.3f} after {tau} epochs leads every completed trial "
                    f"(best {record:.3f}), beyond what the model has seen"
                )
        return Decision(stop, reason, predicted=mean, probability=probability)

    def decide(
        self,
        trial_id: Hashable,
        epoch: int,
        curve: Sequence[float],
        features: Sequence[float] = (),
        best_so_far: float | None = None,
    ) -> Decision:
        """The :class:`Stopper` call; records the trial in the predictor when it completes."""
        values = _check_curve(curve, epoch)
        finished = epoch == self.predictor.horizon and _first_non_finite(values) is None
        if finished and trial_id not in self._completed:
            self.predictor.observe(values, features)
            self._completed.append(trial_id)
        return self.should_stop(values, features, best_so_far)

    def state_dict(self) -> dict[str, Any]:
        """The predictor's observed trials and the ids of the trials recorded by :meth:`decide`."""
        return {"predictor": self.predictor.state_dict(), "completed": list(self._completed)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` saved."""
        self.predictor.load_state_dict(state["predictor"])
        self._completed = [_hashable(trial_id) for trial_id in state["completed"]]


class AsynchronousSuccessiveHalving:
    """Asynchronous successive halving, stopping form (Li et al., 2020).

    Rungs sit at :math:`r_k = r_{\\min}\\,\\eta^k` epochs for every
    :math:`k \\ge 0` with :math:`r_k < r_{\\max}`. When a trial reaches a rung
    it records its value there and continues only if it lies in the top
    :math:`1/\\eta` of all values recorded at that rung so far, its own
    included:

    .. math:: \\#\\{\\text{recorded values strictly better}\\} < \\max\\big(1, \\lfloor n/\\eta \\rfloor\\big),

    with :math:`n` the number of values recorded at the rung. Nobody waits
    for a rung to fill up, which is what makes the rule asynchronous: a
    decision uses only the trials that got there first. The first trial at a
    rung always continues, since there is nothing to compare it with, and
    while fewer than :math:`2\\eta` trials have arrived only a new best at the
    rung continues. Ties favour the arriving trial.

    Between rungs and before ``min_epochs`` nothing is stopped; a trial at
    ``max_epochs`` has finished and gets ``stop=False``. A trial reported
    again at a rung it already passed gets the same verdict and records
    nothing new. A non-finite value stops the trial (it diverged) without
    being recorded.
    """

    def __init__(
        self,
        min_epochs: int,
        max_epochs: int,
        reduction_factor: int = 3,
        mode: Mode = "max",
    ) -> None:
        if min_epochs < 1:
            raise ValueError(f"min_epochs must be at least 1, got {min_epochs}")
        if max_epochs < min_epochs:
            raise ValueError(f"max_epochs {max_epochs} is below min_epochs {min_epochs}")
        if reduction_factor < 2:
            raise ValueError(f"reduction_factor must be at least 2, got {reduction_factor}")
        if mode not in ("max", "min"):
            raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
        self.min_epochs = int(min_epochs)
        self.max_epochs = int(max_epochs)
        self.reduction_factor = int(reduction_factor)
        self.mode: Mode = mode
        rungs = []
        epochs = self.min_epochs
        while epochs < self.max_epochs:
            rungs.append(epochs)
            epochs *= self.reduction_factor
        self.rungs: tuple[int, ...] = tuple(rungs)
        self._recorded: dict[int, dict[Hashable, float]] = {rung: {} for rung in self.rungs}

    def recorded(self, rung: int) -> dict[Hashable, float]:
        """The values recorded at ``rung``, by trial id, in order of arrival."""
        return dict(self._recorded[rung])

    def report(self, trial_id: Hashable, epoch: int, value: float) -> Decision:
        """Decide on a trial whose validation value after ``epoch`` epochs is ``value``."""
        if epoch < 1:
            raise ValueError(f"epoch must be at least 1, got {epoch}")
        if epoch >= self.max_epochs:
            return Decision(False, f"trial complete at the full budget of {self.max_epochs} epochs")
        if epoch < self.min_epochs:
            return Decision(False, f"epoch {epoch} is before min_epochs {self.min_epochs}")
        if epoch not in self._recorded:
            return Decision(False, f"epoch {epoch} is between rungs {self.rungs}")
        if not math.isfinite(value):
            return Decision(True, f"value {value} at rung {epoch} is not finite")
        at_rung = self._recorded[epoch]
        if trial_id not in at_rung:
            at_rung[trial_id] = float(value)
        # A repeated report is judged against the values that had arrived by the
        # trial's first report, so the verdict does not change with later arrivals.
        arrived = list(at_rung.values())[: list(at_rung).index(trial_id) + 1]
        value = arrived[-1]
        n = len(arrived)
        keep = max(1, n // self.reduction_factor)
        if self.mode == "max":
            better = sum(other > value for other in arrived)
        else:
            better = sum(other < value for other in arrived)
        rank = better + 1
        stop = rank > keep
        verdict = "stop" if stop else "continue"
        reason = (
            f"rung {epoch}: value {value:.4g} ranks {rank} of {n}, "
            f"top {keep} (1/{self.reduction_factor}) continue; {verdict}"
        )
        return Decision(stop, reason)

    def decide(
        self,
        trial_id: Hashable,
        epoch: int,
        curve: Sequence[float],
        features: Sequence[float] = (),
        best_so_far: float | None = None,
    ) -> Decision:
        """The :class:`Stopper` call: :meth:`report` with the curve's last value.

        ``features`` and ``best_so_far`` are not used: the rule compares a
        trial only with the values recorded at the same rung.
        """
        values = _check_curve(curve, epoch)
        return self.report(trial_id, epoch, float(values[-1]))

    def state_dict(self) -> dict[str, Any]:
        """Recorded values per rung as ``[trial_id, value]`` pairs in order of arrival."""
        return {
            "rungs": list(self.rungs),
            "mode": self.mode,
            "recorded": {
                str(rung): [[trial_id, value] for trial_id, value in values.items()]
                for rung, values in self._recorded.items()
            },
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` saved; the rung layout and mode must match."""
        if list(state["rungs"]) != list(self.rungs) or state["mode"] != self.mode:
            raise ValueError(
                f"state has rungs {state['rungs']} in mode {state['mode']!r}, "
                f"this scheduler has {list(self.rungs)} in mode {self.mode!r}"
            )
        self._recorded = {
            rung: {
                _hashable(trial_id): float(value)
                for trial_id, value in state["recorded"][str(rung)]
            }
            for rung in self.rungs
        }


ASHA = AsynchronousSuccessiveHalving
