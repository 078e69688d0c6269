"""Early-stopping rules against synthetic learning curves with a known ordering and hand-worked rungs.

Curves follow :math:`y_t = a\\,(1 - e^{-t/c}) + \\varepsilon_t` with an
asymptote :math:`a` that depends on the trial's features, so the true final
ordering is known.
"""

import json
import re

import numpy as np
import pytest
from scipy.stats import kendalltau, norm

from manifold_nas.strategies.multi_trial.early_stopping import (
    ASHA,
    AsynchronousSuccessiveHalving,
    Decision,
    LearningCurvePredictor,
    LearningCurveStopper,
    Stopper,
    prefix_features,
)
from manifold_nas.strategies.multi_trial.filters import ParameterFilter

HORIZON = 20
EPOCHS = np.arange(1, HORIZON + 1)
# One hyperparameter pair instead of the default grid keeps the many-epoch stopper tests fast.
FIXED = {"C": 10.0, "gamma": 0.1}


def saturating_curve(asymptote, time_constant, rng=None, noise=0.003):
    curve = asymptote * (1.0 - np.exp(-EPOCHS / time_constant))
    if rng is not None:
        curve = curve + rng.normal(0.0, noise, size=HORIZON)
    return curve


def synthetic_trials(rng, n):
    """Trials whose asymptote 0.5..0.95 is partly explained by three architecture features."""
    trials = []
    for _ in range(n):
        features = rng.uniform(0.0, 1.0, size=3)
        asymptote = 0.5 + 0.2 * features[0] + 0.1 * features[1] + rng.uniform(0.0, 0.15)
        time_constant = rng.uniform(2.0, 5.0)
        trials.append((saturating_curve(asymptote, time_constant, rng), features))
    return trials


def observed_predictor(n_trials=60, seed=0, **kwargs):
    predictor = LearningCurvePredictor(HORIZON, **kwargs)
    for curve, features in synthetic_trials(np.random.default_rng(seed), n_trials):
        predictor.observe(curve, features)
    return predictor


def run_trials(stopper, trials, first_id=0):
    """A plain multi-trial loop: it calls decide after every epoch and never asks which rule it has."""
    epochs_used, finished = 0, []
    for trial_id, (curve, features) in enumerate(trials, start=first_id):
        for epoch in range(1, HORIZON + 1):
            epochs_used += 1
            decision = stopper.decide(trial_id, epoch, curve[:epoch], features)
            if decision.stop:
                break
        else:
            finished.append(trial_id)
    return epochs_used, finished


# Learning-curve predictor ---------------------------------------------------------------------


def test_prefix_features_are_values_then_first_then_second_differences_then_features():
    x = prefix_features([1.0, 3.0, 4.0, 4.5], features=[7.0, 8.0])
    np.testing.assert_allclose(x, [1.0, 3.0, 4.0, 4.5, 2.0, 1.0, 0.5, -1.0, -0.5, 7.0, 8.0])


def test_prefix_features_have_no_second_differences_before_three_epochs():
    np.testing.assert_allclose(prefix_features([0.2, 0.5], features=[1.0]), [0.2, 0.5, 0.3, 1.0])
    np.testing.assert_allclose(prefix_features([0.2]), [0.2])


def test_predicted_finals_rank_held_out_trials_from_the_first_30_percent_of_the_curve():
    rng = np.random.default_rng(0)
    predictor = LearningCurvePredictor(HORIZON)
    for curve, features in synthetic_trials(rng, 60):
        predictor.observe(curve, features)
    held_out = synthetic_trials(rng, 30)
    seen = int(0.3 * HORIZON)
    predicted = [predictor.predict(curve[:seen], features)[0] for curve, features in held_out]
    finals = [curve[-1] for curve, _ in held_out]
    assert kendalltau(predicted, finals)[0] > 0.8


def test_two_sigma_intervals_cover_most_held_out_finals():
    rng = np.random.default_rng(1)
    predictor = LearningCurvePredictor(HORIZON)
    for curve, features in synthetic_trials(rng, 60):
        predictor.observe(curve, features)
    held_out = synthetic_trials(rng, 40)
    covered = []
    for curve, features in held_out:
        mean, std = predictor.predict(curve[:6], features)
        covered.append(abs(curve[-1] - mean) < 2.0 * std)
    assert np.mean(covered) >= 0.8


def test_cross_validated_error_shrinks_as_more_of_the_curve_is_seen():
    predictor = observed_predictor(**FIXED)
    curve, features = synthetic_trials(np.random.default_rng(5), 1)[0]
    _, early_std = predictor.predict(curve[:1], features)
    _, late_std = predictor.predict(curve[:15], features)
    assert late_std < 0.5 * early_std


def test_a_curve_at_the_horizon_is_its_own_prediction_with_zero_error():
    predictor = observed_predictor(n_trials=10, **FIXED)
    curve, features = synthetic_trials(np.random.default_rng(5), 1)[0]
    assert predictor.predict(curve, features) == (curve[-1], 0.0)


def test_probability_better_is_the_gaussian_tail_of_the_prediction():
    predictor = observed_predictor(**FIXED)
    curve, features = synthetic_trials(np.random.default_rng(5), 1)[0]
    mean, std = predictor.predict(curve[:5], features)
    probability = predictor.probability_better(curve[:5], features, threshold=0.8)
    assert probability == pytest.approx(norm.sf(0.8, loc=mean, scale=std), rel=1e-12)


def test_probability_better_is_non_increasing_in_the_threshold():
    predictor = observed_predictor(**FIXED)
    curve, features = synthetic_trials(np.random.default_rng(5), 1)[0]
    thresholds = np.linspace(0.3, 1.2, 200)
    probabilities = [predictor.probability_better(curve[:4], features, t) for t in thresholds]
    assert np.all(np.diff(probabilities) <= 0.0)
    assert probabilities[0] > 0.99 and probabilities[-1] < 0.01


def test_nothing_is_predicted_before_min_trials():
    predictor = observed_predictor(n_trials=9, min_trials=10, **FIXED)
    curve, features = synthetic_trials(np.random.default_rng(5), 1)[0]
    assert predictor.predict(curve[:5], features) is None
    assert predictor.probability_better(curve[:5], features, 0.5) is None


def test_state_dict_round_trip_through_json_gives_identical_predictions():
    predictor = observed_predictor(n_trials=30)
    restored = LearningCurvePredictor(HORIZON)
    restored.load_state_dict(json.loads(json.dumps(predictor.state_dict())))
    for curve, features in synthetic_trials(np.random.default_rng(7), 3):
        for seen in (1, 4, 12):
            assert restored.predict(curve[:seen], features) == predictor.predict(
                curve[:seen], features
            )


def test_models_are_refit_only_after_new_trials_arrive(monkeypatch):
    predictor = observed_predictor(n_trials=12, **FIXED)
    fitted = []
    original = predictor._fit_prefix_model
    monkeypatch.setattr(
        predictor, "_fit_prefix_model", lambda tau: fitted.append(tau) or original(tau)
    )
    curve, features = synthetic_trials(np.random.default_rng(5), 1)[0]
    predictor.predict(curve[:3], features)
    predictor.predict(curve[:3], features)
    assert fitted == [3]
    predictor.observe(curve, features)
    predictor.predict(curve[:3], features)
    assert fitted == [3, 3]


def test_observe_rejects_a_curve_that_is_not_the_full_horizon():
    predictor = LearningCurvePredictor(HORIZON)
    with pytest.raises(ValueError, match="must have 20 values"):
        predictor.observe(np.zeros(HORIZON - 1))


def test_observe_rejects_a_curve_with_a_nan():
    curve = np.linspace(0.1, 0.9, HORIZON)
    curve[3] = np.nan
    with pytest.raises(ValueError, match="epoch 4 is not finite"):
        LearningCurvePredictor(HORIZON).observe(curve)


def test_observe_rejects_features_of_a_different_length_than_earlier_trials():
    predictor = LearningCurvePredictor(HORIZON)
    predictor.observe(np.linspace(0.1, 0.9, HORIZON), features=[1.0, 2.0])
    with pytest.raises(ValueError, match="must have 2 entries"):
        predictor.observe(np.linspace(0.1, 0.9, HORIZON), features=[1.0])


# Learning-curve stopper -----------------------------------------------------------------------


def test_stopper_stops_a_clearly_bad_curve_and_says_why_in_numbers():
    stopper = LearningCurveStopper(observed_predictor(**FIXED), delta=0.05)
    bad = saturating_curve(0.35, 3.0)
    decisions = [stopper.should_stop(bad[:tau], [0.0, 0.0, 0.0]) for tau in range(1, HORIZON)]
    first_stop = next(tau for tau, d in enumerate(decisions, start=1) if d.stop)
    assert first_stop <= 3
    stopped = decisions[first_stop - 1]
    assert stopped.probability < 0.05 and stopped.predicted < 0.6
    pattern = r"predicted final \d\.\d{3} ± \d\.\d{3}, P\(> best \d\.\d{3}\) = \S+ < 0\.05"
    assert re.fullmatch(pattern, stopped.reason), stopped.reason


def test_stopper_never_stops_the_curve_with_the_highest_asymptote():
    predictor = observed_predictor(**FIXED)
    # Without the leader guard, so that the prediction alone must keep it.
    stopper = LearningCurveStopper(predictor, delta=0.05, keep_leaders=False)
    best = saturating_curve(1.0, 3.5, np.random.default_rng(3))
    assert best[-1] > predictor.best_final()
    for tau in range(1, HORIZON):
        decision = stopper.should_stop(best[:tau], [1.0, 1.0, 1.0])
        assert not decision.stop, decision.reason


def test_stopper_keeps_a_trial_that_leads_every_completed_trial_at_its_epoch():
    predictor = observed_predictor(**FIXED)
    leader = np.full(HORIZON, 0.99)
    kept = LearningCurveStopper(predictor).should_stop(leader[:3], [0.5] * 3, best_so_far=5.0)
    assert not kept.stop and "leads every completed trial" in kept.reason
    unguarded = LearningCurveStopper(predictor, keep_leaders=False)
    assert unguarded.should_stop(leader[:3], [0.5] * 3, best_so_far=5.0).stop


def test_stopper_compares_with_the_given_best_rather_than_its_own_record():
    stopper = LearningCurveStopper(observed_predictor(**FIXED), delta=0.05)
    curve = saturating_curve(0.7, 3.0)
    assert not stopper.should_stop(curve[:8], [0.5, 0.5, 0.5], best_so_far=0.5).stop
    assert stopper.should_stop(curve[:8], [0.5, 0.5, 0.5], best_so_far=0.95).stop


def test_stopper_stops_nothing_before_min_trials():
    stopper = LearningCurveStopper(observed_predictor(n_trials=9, min_trials=10, **FIXED))
    hopeless = np.full(HORIZON, 0.01)
    for tau in range(1, HORIZON):
        decision = stopper.should_stop(hopeless[:tau], [0.0, 0.0, 0.0])
        assert not decision.stop and decision.predicted is None


def test_stopper_stops_nothing_before_min_epochs():
    stopper = LearningCurveStopper(observed_predictor(**FIXED), min_epochs=5)
    hopeless = np.full(HORIZON, 0.01)
    decisions = [stopper.should_stop(hopeless[:tau], [0.0, 0.0, 0.0]) for tau in range(1, 6)]
    assert [d.stop for d in decisions] == [False, False, False, False, True]


def test_stopper_stops_a_diverged_trial():
    stopper = LearningCurveStopper(observed_predictor(n_trials=2, min_trials=2, **FIXED))
    decision = stopper.should_stop([0.3, float("nan")], [0.0, 0.0, 0.0])
    assert decision.stop and "epoch 2 is not finite" in decision.reason


def test_stopper_in_min_mode_mirrors_max_mode_on_negated_curves():
    rng = np.random.default_rng(0)
    accuracy = LearningCurvePredictor(HORIZON, **FIXED)
    loss = LearningCurvePredictor(HORIZON, **FIXED)
    for curve, features in synthetic_trials(rng, 40):
        accuracy.observe(curve, features)
        loss.observe(-curve, features)
    on_accuracy = LearningCurveStopper(accuracy, mode="max")
    on_loss = LearningCurveStopper(loss, mode="min")
    for curve, features in synthetic_trials(rng, 5):
        for tau in (2, 6, 12):
            up = on_accuracy.should_stop(curve[:tau], features)
            down = on_loss.should_stop(-curve[:tau], features)
            assert up.stop == down.stop
            # The SVR solver stops at a tolerance, so mirrored fits agree only to about 1e-5.
            assert up.probability == pytest.approx(down.probability, abs=1e-3)


def test_stopper_records_a_completed_trial_in_the_predictor_once():
    predictor = observed_predictor(n_trials=10, **FIXED)
    stopper = LearningCurveStopper(predictor)
    curve = saturating_curve(0.8, 3.0)
    decision = stopper.decide("t7", HORIZON, curve, [0.5, 0.5, 0.5])
    stopper.decide("t7", HORIZON, curve, [0.5, 0.5, 0.5])
    assert predictor.n_trials == 11
    assert not decision.stop and "complete" in decision.reason


def test_stopper_state_dict_round_trip_through_json_resumes_identically():
    trials = synthetic_trials(np.random.default_rng(6), 24)

    def make():
        return LearningCurveStopper(LearningCurvePredictor(HORIZON, **FIXED))

    uninterrupted = make()
    expected = [run_trials(uninterrupted, [trial], first_id=k) for k, trial in enumerate(trials)]
    first = make()
    got = [run_trials(first, [trial], first_id=k) for k, trial in enumerate(trials[:12])]
    resumed = make()
    resumed.load_state_dict(json.loads(json.dumps(first.state_dict())))
    got += [run_trials(resumed, [trial], first_id=12 + k) for k, trial in enumerate(trials[12:])]
    assert got == expected
    assert any(epochs < HORIZON for epochs, _ in got[12:])  # the resumed half did stop trials


def test_stopper_decide_rejects_a_curve_that_does_not_match_the_epoch():
    stopper = LearningCurveStopper(LearningCurvePredictor(HORIZON))
    with pytest.raises(ValueError, match="one value per epoch 1..3"):
        stopper.decide("t0", 3, [0.1, 0.2])


# Asynchronous successive halving --------------------------------------------------------------


@pytest.mark.parametrize(
    ("min_epochs", "max_epochs", "eta", "rungs"),
    [(1, 27, 3, (1, 3, 9)), (2, 20, 3, (2, 6, 18)), (1, 16, 2, (1, 2, 4, 8)), (5, 5, 3, ())],
)
def test_asha_rungs_are_min_epochs_times_powers_of_eta_below_max_epochs(
    min_epochs, max_epochs, eta, rungs
):
    assert ASHA(min_epochs, max_epochs, eta).rungs == rungs


def test_asha_promotes_exactly_the_top_third_at_each_rung_on_a_hand_worked_example():
    # eta = 3, rungs at 1 and 3 epochs, budget 9. Nine trials reach rung 1 in this order; the
    # cut-off max(1, n // 3) is 1 until the sixth arrival, 2 until the ninth, then 3.
    asha = ASHA(min_epochs=1, max_epochs=9, reduction_factor=3)
    rung_one = {"a": 0.9, "b": 0.1, "c": 0.2, "d": 0.3, "e": 0.4, "f": 0.8, "g": 0.5, "h": 0.6}
    rung_one["i"] = 0.7
    promoted = {t for t, v in rung_one.items() if not asha.report(t, 1, v).stop}
    assert promoted == {"a", "f", "i"}  # the top 3 of 9
    rung_three = {"a": 0.92, "f": 0.85, "i": 0.80}
    promoted = {t for t, v in rung_three.items() if not asha.report(t, 3, v).stop}
    assert promoted == {"a"}  # the top 1 of 3


def test_asha_decisions_follow_the_rank_rule_on_random_arrivals():
    rng = np.random.default_rng(0)
    asha = ASHA(min_epochs=1, max_epochs=3, reduction_factor=3)
    values = rng.permutation(40) / 40.0
    for n, value in enumerate(values, start=1):
        strictly_better = int(np.sum(values[:n] > value))
        expected_stop = strictly_better >= max(1, n // 3)
        assert asha.report(n, 1, value).stop == expected_stop


def test_asha_first_trial_at_a_rung_continues_even_when_bad():
    asha = ASHA(min_epochs=2, max_epochs=18, reduction_factor=3)
    assert not asha.report("only", 2, 0.01).stop
    assert not asha.report("only", 6, 0.01).stop


def test_asha_never_stops_a_trial_before_min_epochs_or_between_rungs():
    asha = ASHA(min_epochs=3, max_epochs=27, reduction_factor=3)
    for trial in range(5):
        asha.report(f"good{trial}", 3, 0.9)
        asha.report(f"good{trial}", 9, 0.9)
    for epoch in (1, 2, 4, 5, 8, 10, 26):
        assert not asha.report("bad", epoch, 0.0).stop
    assert asha.report("bad", 3, 0.0).stop


def test_asha_reports_a_trial_at_max_epochs_as_complete_not_stopped():
    asha = ASHA(min_epochs=1, max_epochs=9, reduction_factor=3)
    decision = asha.report("t", 9, 0.1)
    assert not decision.stop and "complete" in decision.reason


def test_asha_stops_a_diverged_trial_without_recording_it():
    asha = ASHA(min_epochs=1, max_epochs=9, reduction_factor=3)
    assert asha.report("t", 1, float("nan")).stop
    assert asha.recorded(1) == {}


def test_asha_in_min_mode_mirrors_max_mode_on_negated_values():
    values = np.random.default_rng(1).normal(size=30)
    up = ASHA(1, 9, 3, mode="max")
    down = ASHA(1, 9, 3, mode="min")
    for trial, value in enumerate(values):
        assert up.report(trial, 1, value).stop == down.report(trial, 1, -value).stop


def test_asha_repeated_report_gets_the_verdict_of_the_first_report():
    asha = ASHA(min_epochs=1, max_epochs=9, reduction_factor=3)
    first = asha.report("early", 1, 0.5)
    for trial in range(10):
        asha.report(trial, 1, 0.9)
    assert asha.report("early", 1, 0.5) == first
    assert len(asha.recorded(1)) == 11


def test_asha_state_dict_round_trip_through_json_resumes_identically():
    rng = np.random.default_rng(2)
    reports = [
        ((int(k), "seed"), int(e), float(v))
        for k, e, v in zip(rng.integers(0, 12, 60), rng.choice([1, 3], 60), rng.uniform(size=60))
    ]
    uninterrupted = ASHA(1, 9, 3)
    expected = [uninterrupted.report(*r) for r in reports]
    first = ASHA(1, 9, 3)
    got = [first.report(*r) for r in reports[:30]]
    resumed = ASHA(1, 9, 3)
    resumed.load_state_dict(json.loads(json.dumps(first.state_dict())))
    got += [resumed.report(*r) for r in reports[30:]]
    assert got == expected


def test_asha_refuses_a_state_with_other_rungs():
    with pytest.raises(ValueError, match="rungs"):
        ASHA(1, 27, 3).load_state_dict(ASHA(1, 9, 3).state_dict())


# The common interface ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make_stopper",
    [
        lambda: LearningCurveStopper(LearningCurvePredictor(HORIZON, **FIXED)),
        lambda: ASHA(min_epochs=2, max_epochs=HORIZON, reduction_factor=3),
    ],
    ids=["learning_curve", "asha"],
)
def test_either_rule_in_the_loop_finishes_the_best_trial_and_saves_epochs(make_stopper):
    rng = np.random.default_rng(4)
    trials = synthetic_trials(rng, 30)
    best = 17
    trials[best] = (saturating_curve(1.0, 2.0, rng), np.array([1.0, 1.0, 1.0]))
    stopper = make_stopper()
    assert isinstance(stopper, Stopper)
    epochs_used, finished = run_trials(stopper, trials)
    assert best in finished
    assert epochs_used < 0.7 * len(trials) * HORIZON


def test_asha_is_the_asynchronous_successive_halving_class():
    assert ASHA is AsynchronousSuccessiveHalving


# Parameter filter -----------------------------------------------------------------------------


def test_parameter_filter_rejects_above_the_limit_and_names_the_count_and_the_limit():
    decision = ParameterFilter(max_parameters=4_000_000).check(4_712_000)
    assert decision == Decision(True, "4,712,000 parameters exceed the limit of 4,000,000")


def test_parameter_filter_accepts_a_candidate_exactly_at_the_limit():
    assert not ParameterFilter(max_parameters=1000).check(1000).stop


def test_sample_within_limit_redraws_until_a_candidate_fits():
    draws = iter([5000, 3000, 800, 100])
    chosen = ParameterFilter(1000).sample_within_limit(lambda: next(draws), lambda n: n)
    assert chosen == 800


def test_sample_within_limit_gives_up_after_max_draws():
    with pytest.raises(RuntimeError, match="in 3 draws"):
        ParameterFilter(10).sample_within_limit(lambda: 11, lambda n: n, max_draws=3)


def test_decision_is_immutable():
    decision = Decision(False, "kept")
    with pytest.raises(AttributeError):
        decision.stop = True  # type: ignore[misc]
