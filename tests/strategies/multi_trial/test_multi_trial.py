"""Multi-trial search: mutation, aging, proxies, early stopping, the parameter filter and the trial table."""

import csv
import json
import random
import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import Subset, TensorDataset

from manifold_nas.config import parse_config
from manifold_nas.errors import UserInputError
from manifold_nas.run.context import Run
from manifold_nas.search import search
from manifold_nas.space.cell import ArchSpec, ChosenEdge, cell_arch_spec
from manifold_nas.space.genotype import Genotype
from manifold_nas.space.sampling import genotype_weights, random_genotype
from manifold_nas.strategies.multi_trial.backends import LocalBackend
from manifold_nas.strategies.multi_trial.evolution import RegularizedEvolution, mutate
from manifold_nas.strategies.multi_trial.loop import EarlyStopping, best_trial
from manifold_nas.strategies.multi_trial.proxy import DownsampledInput, proxy_subset

DARTS_OPS = ("none", "max_pool_3x3", "skip_connect", "sep_conv_3x3", "dil_conv_3x3")


def read_trials(path):
    lines = (Path(path) / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["type"] == "trial"]


def run_search(config_dict, out, **strategy):
    config_dict["strategy"] = strategy
    return search(parse_config(config_dict), out, quiet=True)


# -- mutation and aging ------------------------------------------------------------------
def edge_set(genotype, cell):
    return {(e.op, e.source, e.target) for e in genotype.cells[cell]}


def test_mutate_changes_one_edge_op_or_one_kept_input_and_stays_in_the_space():
    specs = {"normal": cell_arch_spec(DARTS_OPS, n_nodes=3), "reduce": cell_arch_spec(DARTS_OPS)}
    rng = random.Random(0)
    kinds = set()
    for _ in range(300):
        parent = random_genotype(specs, "darts", "none", rng)
        child, change = mutate(parent, specs, "none", rng)
        changed = [c for c in specs if edge_set(parent, c) != edge_set(child, c)]
        assert len(changed) == 1
        (removed,) = edge_set(parent, changed[0]) - edge_set(child, changed[0])
        (added,) = edge_set(child, changed[0]) - edge_set(parent, changed[0])
        same_op, same_source = removed[0] == added[0], removed[1] == added[1]
        assert removed[2] == added[2] and same_op != same_source
        kinds.add("input" if same_op else "op")
        assert added[0] != "none"
        for cell, spec in specs.items():
            for target in spec.targets:
                sources = [e.source for e in child.cells[cell] if e.target == target]
                assert len(sources) == len(set(sources)) == spec.keep
        genotype_weights(child, specs)  # every edge exists in the search space
        for cell in specs:  # in random_genotype's order: by target, then source
            order = [(e.target, e.source) for e in child.cells[cell]]
            assert order == sorted(order)
    assert kinds == {"op", "input"}


def test_mutate_changes_the_op_where_every_node_has_a_single_possible_input():
    spec = ArchSpec(("conv2d", "conv3d", "p3d"), ((0, 1), (0, 2)), n_inputs=1, keep=1)
    parent = Genotype(
        "volumetric", {"cells": (ChosenEdge("conv2d", 0, 1), ChosenEdge("p3d", 0, 2))}
    )
    rng = random.Random(1)
    for _ in range(50):
        child, change = mutate(parent, {"cells": spec}, None, rng)
        differing = [(a, b) for a, b in zip(parent.cells["cells"], child.cells["cells"]) if a != b]
        assert len(differing) == 1 and "op of" in change
        old, new = differing[0]
        assert (old.source, old.target) == (new.source, new.target) and old.op != new.op


def test_mutate_refuses_a_space_with_a_single_architecture():
    spec = ArchSpec(("none", "conv"), ((0, 1),), n_inputs=1, keep=1)
    genotype = Genotype("toy", {"cell": (ChosenEdge("conv", 0, 1),)})
    with pytest.raises(UserInputError, match="single architecture"):
        mutate(genotype, {"cell": spec}, "none", random.Random(0))


def record(trial, score, status="complete"):
    return {"trial": trial, "status": status, "curve": [score]}


def test_aging_removes_the_oldest_member_even_when_it_is_the_best():
    evolution = RegularizedEvolution(population=3, sample=2)
    scores = [0.9, 0.1, 0.2, 0.3, 0.4]
    evolution.trials = [record(i, s) for i, s in enumerate(scores)]
    evolution.absorb(evolution.trials[:3])
    assert evolution.population == [0, 1, 2]
    evolution.absorb(evolution.trials[3:])
    assert evolution.population == [2, 3, 4]  # trial 0, the best, aged out first


def test_aging_skips_rejected_candidates():
    evolution = RegularizedEvolution(population=2, sample=1)
    evolution.trials = [record(0, 0.5), record(1, 0.0, "rejected"), record(2, 0.4)]
    evolution.absorb(evolution.trials)
    assert evolution.population == [0, 2]


def test_tournament_returns_the_best_of_the_drawn_sample():
    evolution = RegularizedEvolution(population=4, sample=4)
    evolution.sampler = random.Random(0)
    evolution.trials = [record(i, s) for i, s in enumerate([0.2, 0.7, float("nan"), 0.5])]
    evolution.population = [0, 1, 2, 3]
    assert evolution.select_parent() == 1  # sample == population: the best member
    evolution.sample = 1
    drawn = {evolution.select_parent() for _ in range(200)}
    assert drawn == {0, 1, 2, 3}  # a sample of one: every member can be a parent


def test_evolution_children_are_one_mutation_from_a_member_of_the_population(
    tiny_config_dict, tmp_path
):
    result = run_search(
        tiny_config_dict, tmp_path, name="evolution", trials=7, population=3, sample=2, epochs=1,
        batch=2,
    )  # fmt: skip
    trials = result.strategy.trials
    assert [t["origin"] for t in trials[:3]] == ["random"] * 3
    for child in trials[3:]:
        assert child["origin"].startswith("mutation of trial ")
        parent = int(child["origin"].split()[3].rstrip(":"))
        batch_start = child["trial"] - child["trial"] % 2  # batches of 2: [0, 1], [2, 3], ...
        members = [t["trial"] for t in trials[:batch_start]][-3:]
        assert parent in members, (child["trial"], parent, members)
        changed = [
            cell
            for cell, edges in child["genotype"].items()
            if edges != trials[parent]["genotype"][cell]
        ]
        assert len(changed) == 1
        child_edges = {tuple(e) for e in child["genotype"][changed[0]]}
        parent_edges = {tuple(e) for e in trials[parent]["genotype"][changed[0]]}
        assert len(child_edges - parent_edges) == len(parent_edges - child_edges) == 1
    assert result.strategy.population == [4, 5, 6]


# -- proxies ------------------------------------------------------------------------------
class Probe(nn.Module):
    """Records the input it sees and returns one logit per sample (not a dense output)."""

    def forward(self, x):
        self.seen = x
        return x.flatten(1).sum(1, keepdim=True)


def test_downsampling_averages_blocks_and_keeps_class_logits_as_they_are():
    x = torch.arange(2 * 1 * 4 * 6, dtype=torch.float64).reshape(2, 1, 4, 6)
    probe = Probe()
    out = DownsampledInput(probe, 2)(x)
    assert probe.seen.shape == (2, 1, 2, 3)
    assert probe.seen[0, 0, 1, 2] == x[0, 0, 2:4, 4:6].mean()
    assert out.shape == (2, 1)


def test_downsampling_brings_a_dense_prediction_back_to_the_input_size():
    network = nn.Conv3d(1, 3, 1)
    out = DownsampledInput(network, 2)(torch.randn(1, 1, 8, 6, 4))
    assert out.shape == (1, 3, 8, 6, 4)


def test_average_pooling_an_spd_matrix_is_a_congruence_and_stays_spd():
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(6, 6, generator=generator, dtype=torch.float64)
    spd = a @ a.T + 1e-3 * torch.eye(6, dtype=torch.float64)
    probe = Probe()
    DownsampledInput(probe, 2)(spd[None, None])
    pooled = probe.seen[0, 0]
    blocks = torch.kron(torch.eye(3, dtype=torch.float64), torch.ones(2, 1, dtype=torch.float64))
    torch.testing.assert_close(pooled, blocks.T @ spd @ blocks / 4)
    assert torch.linalg.eigvalsh(pooled).min() > 0


def test_data_fraction_keeps_class_proportions_and_depends_only_on_the_seed():
    labels = torch.tensor([0] * 40 + [1] * 20 + [2] * 10)
    base = TensorDataset(torch.zeros(70, 1), labels)
    view = Subset(base, list(range(70))[::-1])
    subset = proxy_subset(view, 0.5, seed=3)
    picked = labels[[view.indices[i] for i in subset.indices]]
    assert torch.bincount(picked).tolist() == [20, 10, 5]
    assert proxy_subset(view, 0.5, seed=3).indices == subset.indices
    assert proxy_subset(view, 0.5, seed=4).indices != subset.indices
    assert proxy_subset(view, 1.0, seed=3) is view


def test_trials_train_the_proxy_network_on_the_proxy_data_for_the_proxy_epochs(
    tiny_config_dict, tmp_path, monkeypatch
):
    sizes = []
    original = Run.train

    def spy(self, network, epochs, **kwargs):
        sizes.append((len(kwargs["train_set"]), epochs))
        return original(self, network, epochs, **kwargs)

    monkeypatch.setattr(Run, "train", spy)
    tiny_config_dict["proxy"] = {
        "network": {"channels": 2},
        "data_fraction": 0.25,
        "downsample": 2,
        "epochs": 2,
    }
    result = run_search(tiny_config_dict, tmp_path, name="random", trials=2, epochs=1)
    n_weight = len(result.run.weight_set)
    assert all(abs(size - 0.25 * n_weight) <= 10 and epochs == 2 for size, epochs in sizes)
    for trial in result.strategy.trials:
        assert len(trial["curve"]) == 2
        assert trial["proxy_parameters"] < trial["parameters"]
    # the returned genotype is retrained at the full setting: the saved config still says so
    assert result.genotype.config["network"]["channels"] == tiny_config_dict["network"]["channels"]


def test_proxy_network_options_the_network_does_not_take_are_refused(tiny_config_dict, tmp_path):
    tiny_config_dict["proxy"] = {"network": {"chanels": 2}}
    with pytest.raises(UserInputError, match="proxy.network.'chanels'"):
        run_search(tiny_config_dict, tmp_path, name="random", trials=1, epochs=1)


# -- early stopping and the parameter filter -----------------------------------------------
def test_asha_stops_trials_and_logs_the_stop_epoch_the_reason_and_the_epochs_saved(
    tiny_config_dict, tmp_path
):
    result = run_search(
        tiny_config_dict, tmp_path, name="random", trials=6, epochs=3, batch=2,
        early_stopping={"name": "asha", "reduction_factor": 2},
    )  # fmt: skip
    logged = read_trials(tmp_path)
    assert [t["trial"] for t in logged] == list(range(6))
    stopped = [t for t in logged if t["status"] == "stopped"]
    assert stopped
    for trial in stopped:
        assert trial["stopped_at"] == trial["epochs"] == len(trial["curve"]) < 3
        assert trial["reason"].startswith(f"rung {trial['stopped_at']}:")
        assert trial["final"] is None
    for trial in logged[:2]:  # the first batch has no earlier trials to be compared with
        assert trial["status"] == "complete"
    summary = result.summary
    saved = sum(3 - t["epochs"] for t in logged)
    assert summary["epochs_saved"] == saved > 0
    assert summary["trial_epochs"] + saved == summary["trial_epochs_without_stopping"] == 18
    assert summary["stopped"] == len(stopped)
    assert logged[summary["best_trial"]]["status"] == "complete"


def test_no_trial_is_stopped_by_a_sibling_in_its_own_batch(tiny_config_dict, tmp_path):
    result = run_search(
        tiny_config_dict, tmp_path, name="random", trials=4, epochs=2, batch=4,
        early_stopping={"name": "asha", "reduction_factor": 2},
    )  # fmt: skip
    assert [t["status"] for t in result.strategy.trials] == ["complete"] * 4
    assert result.summary["epochs_saved"] == 0


def test_learning_curve_stopping_predicts_from_earlier_batches_and_says_so(
    tiny_config_dict, tmp_path
):
    result = run_search(
        tiny_config_dict, tmp_path, name="random", trials=8, epochs=3, batch=2,
        early_stopping={"name": "learning_curve", "min_trials": 2, "n_folds": 2, "delta": 0.5,
                        "keep_leaders": False},
    )  # fmt: skip
    trials = result.strategy.trials
    stopped = [t for t in trials if t["status"] == "stopped"]
    assert stopped and all("predicted final" in t["reason"] for t in stopped)
    for trial in stopped:  # the predictor learnt from >= min_trials trials of earlier batches
        batch_start = trial["trial"] - trial["trial"] % 2
        assert sum(t["status"] == "complete" for t in trials[:batch_start]) >= 2
    assert result.summary["epochs_saved"] == sum(3 - t["epochs"] for t in trials) > 0


def test_the_parameter_filter_rejects_large_candidates_before_training(tiny_config_dict, tmp_path):
    probe = run_search(tiny_config_dict, tmp_path / "probe", name="random", trials=6, epochs=1)
    sizes = sorted(t["parameters"] for t in probe.strategy.trials)
    limit = sizes[2]
    result = run_search(
        tiny_config_dict, tmp_path / "run", name="random", trials=3, epochs=1, max_parameters=limit
    )
    trials = read_trials(tmp_path / "run")
    rejected = [t for t in trials if t["status"] == "rejected"]
    trained = [t for t in trials if t["status"] != "rejected"]
    assert rejected and len(trained) == 3
    for trial in rejected:
        assert trial["parameters"] > limit and trial["stopped_at"] == 0 and trial["epochs"] == 0
        assert (
            f"{trial['parameters']:,} parameters exceed the limit of {limit:,}" in trial["reason"]
        )
    assert all(t["parameters"] <= limit for t in trained)
    assert result.summary["rejected"] == len(rejected) and result.summary["trials"] == 3


def test_a_parameter_limit_no_candidate_meets_ends_in_a_one_line_error(tiny_config_dict, tmp_path):
    with pytest.raises(UserInputError, match="no candidate within max_parameters=10") as err:
        run_search(tiny_config_dict, tmp_path, name="random", trials=1, epochs=1, max_parameters=10)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("hyperband", "unknown early_stopping 'hyperband'"),
        ({"name": "asha", "eta": 3}, "strategy.early_stopping.'eta'; valid keys: min_epochs"),
        ({"name": "none", "delta": 0.1}, "takes no options"),
    ],
)
def test_a_wrong_early_stopping_option_is_refused_by_name(value, message):
    with pytest.raises(ValueError, match=message):
        EarlyStopping.parse(value)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"sample": 4, "population": 3}, "sample .4. must not exceed population .3."),
        ({"batch": 0}, "batch must be a positive integer"),
        ({"max_parameters": float("inf")}, "max_parameters must be a positive integer"),
        ({"trials": "many"}, "trials must be a positive integer"),
    ],
)
def test_evolution_refuses_impossible_budgets(options, message):
    with pytest.raises(ValueError, match=message):
        RegularizedEvolution(**options)


def test_learning_curve_stopping_of_one_epoch_trials_is_refused(tiny_config_dict, tmp_path):
    with pytest.raises(UserInputError, match="at least 2 epochs"):
        run_search(
            tiny_config_dict, tmp_path, name="random", trials=2, epochs=1,
            early_stopping="learning_curve",
        )  # fmt: skip


# -- backends, table, summary -----------------------------------------------------------------
class ReversedBackend(LocalBackend):
    """Hands results back last job first, as a parallel backend may."""

    def map(self, work, jobs, on_result):
        results = [(job, work(self.run, job)) for job in jobs]
        for job, result in reversed(results):
            on_result(job, result)


def test_the_order_trials_finish_in_changes_nothing(tiny_config_dict, tmp_path, monkeypatch):
    options = dict(
        name="evolution", trials=6, population=2, sample=2, epochs=2, batch=3,
        early_stopping={"name": "asha", "reduction_factor": 2},
    )  # fmt: skip
    reference = run_search(tiny_config_dict, tmp_path / "in_order", **options)
    monkeypatch.setattr("manifold_nas.strategies.multi_trial.loop.open_backend", ReversedBackend)
    shuffled = run_search(tiny_config_dict, tmp_path / "reversed", **options)
    strip = lambda t: {k: v for k, v in t.items() if k != "seconds"}  # noqa: E731
    assert [strip(t) for t in shuffled.strategy.trials] == [
        strip(t) for t in reference.strategy.trials
    ]
    assert [strip(t) for t in read_trials(tmp_path / "reversed")] == [
        strip(t) for t in read_trials(tmp_path / "in_order")
    ]


def test_backend_ray_without_ray_is_a_one_line_error_naming_the_extra(
    tiny_config_dict, tmp_path, monkeypatch
):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    tiny_config_dict["search"]["backend"] = "ray"
    with pytest.raises(UserInputError, match=r"pip install 'manifold-nas\[ray\]'") as err:
        run_search(tiny_config_dict, tmp_path, name="random", trials=1, epochs=1)
    assert "\n" not in str(err.value)


def test_trials_csv_and_png_show_every_trial(tiny_config_dict, tmp_path):
    result = run_search(
        tiny_config_dict, tmp_path, name="random", trials=4, epochs=2, batch=2,
        early_stopping={"name": "asha", "reduction_factor": 2},
    )  # fmt: skip
    with open(tmp_path / "trials.csv") as fh:
        rows = list(csv.DictReader(fh))
    trials = result.strategy.trials
    assert [int(r["trial"]) for r in rows] == [t["trial"] for t in trials]
    for row, trial in zip(rows, trials):
        assert json.loads(row["genotype"]) == trial["genotype"]
        assert int(row["parameters"]) == trial["parameters"]
        curve = [float(row[f"accuracy_epoch_{k}"]) for k in (1, 2) if row[f"accuracy_epoch_{k}"]]
        assert curve == pytest.approx(trial["curve"])
        assert row["stopped_at"] == (
            "" if trial["stopped_at"] is None else str(trial["stopped_at"])
        )
        assert row["reason"] == (trial["reason"] or "")
    png = (tmp_path / "trials.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 5000


def test_the_summary_names_the_best_completed_trial_and_its_scores(tiny_config_dict, tmp_path):
    result = run_search(tiny_config_dict, tmp_path, name="random", trials=3, epochs=2)
    best = max(result.strategy.trials, key=lambda t: (t["final"], -t["trial"]))
    assert (
        result.summary["best_trial"] == best["trial"] == best_trial(result.strategy.trials)["trial"]
    )
    assert result.summary["final"] == best["valid"]
    assert result.genotype.to_dict()["cells"] == best["genotype"]
    assert result.summary["trials"] == 3 and result.summary["backend"] == "local"
