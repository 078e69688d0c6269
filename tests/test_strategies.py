"""The strategy layer: registered strategies, one run context, one run-directory layout."""

import json
from pathlib import Path

import pytest
import yaml
from support import install_plugin, logged, read_records, search_killed_when, without_seconds

from manifold_nas.cli import main
from manifold_nas.config import parse_config
from manifold_nas.search import search
from manifold_nas.space.genotype import Genotype
from manifold_nas.strategies import STRATEGIES, Strategy
from manifold_nas.strategies.multi_trial.random_search import RandomSearch

REPO = Path(__file__).resolve().parents[1]
LAYOUT = ("config.yaml", "metrics.jsonl", "checkpoint.pt", "genotype.json", "summary.json")
#: the smallest budget of each built-in strategy; a new strategy runs with its defaults
TINY_OPTIONS = {
    "random": {"trials": 2, "epochs": 1},
    "evolution": {"trials": 3, "population": 2, "sample": 1, "epochs": 1},
    "spos": {"final_paths": 2, "recalibration_batches": 1},
    "cream": {"warmup_epochs": 0, "board_size": 2, "meta_interval": 1, "recalibration_batches": 1},
    "fox": {"samples": 4, "steps": 20, "restarts": 1, "top_k": 2, "latency_repeats": 2},
    "dna": {
        "teacher": {
            "network": "simple_cnn",
            "options": {"channels": 4, "depth": 1},
            "epochs": 1,
            "stages": ["<input>", "features.2", "features.5"],
        },
        "max_candidates_per_block": 2,
        "ranking_batches": 1,
    },
}


def test_list_strategies_shows_bilevel_and_random(capsys):
    assert main(["list", "strategies"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("strategies:")
    assert "bilevel" in out and "random" in out


def test_bilevel_is_the_default_strategy(tiny_config_dict):
    assert parse_config(tiny_config_dict).strategy == {"name": "bilevel"}


@pytest.mark.parametrize("name", STRATEGIES.list())
def test_every_registered_strategy_writes_the_same_run_directory_layout(
    name, tiny_config_dict, tmp_path
):
    tiny_config_dict["strategy"] = {"name": name, **TINY_OPTIONS.get(name, {})}
    result = search(parse_config(tiny_config_dict), tmp_path, quiet=True)
    for file in LAYOUT:
        assert (tmp_path / file).is_file(), file
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["strategy"] == name
    assert "accuracy" in summary["final"] and summary["parameters"]["derived"] > 0
    assert Genotype.load(tmp_path / "genotype.json") == result.genotype
    assert set(result.genotype.cells) == {"normal", "reduce"}


def test_random_search_from_the_command_line(tiny_config_dict, tmp_path, capsys):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(tiny_config_dict))
    out = tmp_path / "run"
    code = main(
        ["search", str(cfg), "strategy.name=random", "strategy.trials=3", "strategy.epochs=1"]
        + ["--out", str(out), "--quiet"]
    )
    assert code == 0, capsys.readouterr().err
    trials = [r for r in read_records(out) if r["type"] == "trial"]
    assert [t["trial"] for t in trials] == [0, 1, 2]
    best = max(trials, key=lambda t: (t["valid"]["accuracy"], -t["trial"]))
    assert Genotype.load(out / "genotype.json").to_dict()["cells"] == best["genotype"]
    assert json.loads((out / "summary.json").read_text())["best_trial"] == best["trial"]


def test_random_trials_differ_and_are_scored_on_the_validation_split(tiny_config_dict, tmp_path):
    tiny_config_dict["strategy"] = {"name": "random", "trials": 3, "epochs": 1}
    result = search(parse_config(tiny_config_dict), tmp_path, quiet=True)
    trials = result.strategy.trials
    assert len({json.dumps(t["genotype"]) for t in trials}) == 3
    n_valid = len(result.run.valid_set)
    for trial in trials:
        # accuracy on the validation split is a multiple of 1 / its size
        assert (
            abs(trial["valid"]["accuracy"] * n_valid - round(trial["valid"]["accuracy"] * n_valid))
            < 1e-6
        )


def test_unknown_strategy_option_is_refused_with_the_valid_ones(tiny_config_dict, tmp_path, capsys):
    cfg = tmp_path / "cfg.yaml"
    tiny_config_dict["strategy"] = {"name": "random", "trails": 3}
    cfg.write_text(yaml.safe_dump(tiny_config_dict))
    code = main(["search", str(cfg), "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and "strategy.'trails'" in err and "trials" in err
    assert not (tmp_path / "run").exists()


def test_unknown_strategy_lists_the_registered_ones(tiny_config_dict, tmp_path, capsys):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(tiny_config_dict))
    code = main(["search", str(cfg), "strategy.name=annealing", "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2 and "unknown strategy 'annealing'" in err and "bilevel" in err


def test_random_search_resumes_after_sigkill_to_the_same_trials(tiny_config_dict, tmp_path):
    tiny_config_dict["strategy"] = {"name": "random", "trials": 4, "epochs": 1}
    reference = search(parse_config(tiny_config_dict), tmp_path / "reference", quiet=True)

    out = search_killed_when(tiny_config_dict, tmp_path, lambda out: logged(out, '"trial": 1'))

    resumed = search(parse_config(tiny_config_dict), out, resume=True, quiet=True)
    assert without_seconds(resumed.strategy.trials) == without_seconds(reference.strategy.trials)
    assert resumed.genotype.cells == reference.genotype.cells
    assert without_seconds(read_records(out)) == without_seconds(
        read_records(tmp_path / "reference")
    )


def test_a_strategy_from_an_installed_entry_point_is_found_and_runs(
    tiny_config_dict, tmp_path, monkeypatch
):
    package = install_plugin(
        tmp_path / "site",
        "my_strategy",
        """
            import random
            from manifold_nas.space.sampling import random_genotype
            from manifold_nas.strategies import Strategy

            class FirstDraw(Strategy):
                '''Returns one random genotype without training anything.'''

                def __init__(self, seed: int = 0):
                    self.seed = seed

                def run(self, run):
                    specs = run.build_searchable().arch_specs
                    rng = random.Random(self.seed)
                    return random_genotype(specs, run.opset.name, run.opset.zero, rng)

                def summary(self, run):
                    return {"final": {"accuracy": 0.0}}
            """,
        {"manifold_nas.strategies": {"first_draw": "my_strategy:FirstDraw"}},
    )
    monkeypatch.syspath_prepend(str(package))
    STRATEGIES.reload_entry_points()
    try:
        cls = STRATEGIES.get("first_draw")
        assert issubclass(cls, Strategy)
        tiny_config_dict["strategy"] = {"name": "first_draw", "seed": 3}
        result = search(parse_config(tiny_config_dict), tmp_path / "run", quiet=True)
        assert result.summary["strategy"] == "first_draw"
        assert (tmp_path / "run" / "genotype.json").is_file()
    finally:
        STRATEGIES.unregister("first_draw")


def test_random_search_refuses_a_non_positive_budget():
    with pytest.raises(ValueError, match="trials"):
        RandomSearch(trials=0)
    with pytest.raises(ValueError, match="epochs"):
        RandomSearch(epochs=0)
