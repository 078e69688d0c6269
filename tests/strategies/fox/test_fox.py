"""The ``fox`` strategy: labelled sub-networks, explainable predictors, annealing under a budget."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from support import (
    REPO,
    TINY_SPD,
    TINY_VISION,
    TINY_VOLUMETRIC,
    logged,
    read_records,
    search_killed_when,
)

from manifold_nas.cli import main
from manifold_nas.config import load_config, parse_config
from manifold_nas.cost.table import (
    CostLUT,
    build_cost_table,
    derived_cost,
    genotype_choices,
    table_from_state,
    table_state,
)
from manifold_nas.errors import UserInputError
from manifold_nas.run.checkpoint import load_checkpoint
from manifold_nas.run.context import Run
from manifold_nas.search import build_strategy, search
from manifold_nas.space.genotype import Genotype, parse_cells
from manifold_nas.space.sampling import genotype_key

TINY_SEARCH = {"epochs": 1, "batch_size": 8, "max_steps_per_epoch": 2}
FOX = {
    "name": "fox",
    "samples": 8,
    "steps": 60,
    "restarts": 1,
    "top_k": 3,
    "latency_repeats": 3,
    "latency_warmup": 1,
    "recalibration_batches": 1,
}
#: parameter budgets that some of the 8 labelled sub-networks of each tiny space exceed
DOMAINS = {
    "vision": (TINY_VISION, 1500),
    "spd": (TINY_SPD, 650),
    "volumetric": (TINY_VOLUMETRIC, 500),
}


def tiny(domain: str, **strategy) -> dict:
    base, _ = DOMAINS[domain]
    config = copy.deepcopy(base)
    config["search"] = {**base.get("search", {}), **TINY_SEARCH}
    config["strategy"] = {**FOX, **strategy}
    return config


def records(out: Path, kind: str) -> list[dict]:
    return [r for r in read_records(out) if r["type"] == kind]


def lut_op_sums(config: dict, out: Path, cells: dict, kinds) -> dict[str, float]:
    """The look-up-table op sums of a design, recomputed from the run's cost_lut.json."""
    run = Run(parse_config(config), quiet=True)
    network = run.build_searchable()
    lut = CostLUT(out)
    table = build_cost_table(network, run.example_input(), lut=lut, warmup=1, repeats=3)
    assert lut.misses == 0, "the run's LUT should hold every entry"
    choices = genotype_choices(Genotype(run.opset.name, parse_cells(cells)), table)
    return {kind: derived_cost(choices, table, kind) for kind in kinds}


@pytest.mark.parametrize("domain", sorted(DOMAINS))
def test_fox_from_the_command_line_writes_designs_within_the_budget_by_the_lut_sum(
    domain, tmp_path, capsys
):
    config = tiny(domain)
    params_budget = DOMAINS[domain][1]
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(config))
    out = tmp_path / "run"
    overrides = ["strategy.budget.latency_ms=10000", f"strategy.budget.params={params_budget}"]
    code = main(["search", str(cfg), *overrides, "--out", str(out), "--quiet"])
    assert code == 0, capsys.readouterr().err

    written = json.loads((out / "designs.json").read_text())
    assert written["budget"] == {"latency_ms": 10000.0, "params": float(params_budget)}
    labels = records(out, "fox_label")
    assert len(labels) == 8
    assert any(label["lut"]["params"] > params_budget for label in labels), "budget not binding"
    offsets = {kind: written["offsets"][kind]["value"] for kind in written["budget"]}
    applied = dict(config, strategy={**config["strategy"], "budget": written["budget"]})
    for design in written["designs"]:
        sums = lut_op_sums(applied, out, design["genotype"], written["budget"])
        for kind, limit in written["budget"].items():
            assert sums[kind] + offsets[kind] == pytest.approx(design["cost"][kind])
            assert sums[kind] + offsets[kind] <= limit
    assert (
        Genotype.load(out / "genotype.json").to_dict()["cells"] == written["designs"][0]["genotype"]
    )
    for name in ("predictor.md", "predictor_coefficients.png", "cost_lut.json"):
        assert (out / name).is_file(), name


VISION_BUDGET = {"params": 1500}


@pytest.fixture(scope="module")
def vision_run(tmp_path_factory):
    """One tiny fox search on digits, shared by the tests that only read it."""
    out = tmp_path_factory.mktemp("fox_vision")
    return search(parse_config(tiny("vision", budget=VISION_BUDGET)), out, quiet=True)


def test_designs_are_unique_and_ranked_by_predicted_accuracy(vision_run):
    designs = vision_run.strategy.designs
    keys = [json.dumps(d["genotype"], sort_keys=True) for d in designs]
    assert len(set(keys)) == len(designs) == 3
    predicted = [d["predicted"]["accuracy"] for d in designs]
    assert predicted == sorted(predicted, reverse=True)
    models = vision_run.strategy.models
    for design in designs:
        genotype = Genotype("darts", parse_cells(design["genotype"]))
        assert models.predict_one(genotype, "accuracy", "ols") == pytest.approx(
            design["predicted"]["accuracy"]
        )


def test_verification_measures_every_design_and_reports_whether_the_budget_holds(vision_run):
    for design in vision_run.strategy.designs:
        measured = design["measured"]
        assert measured["latency_ms"] > 0
        assert design["budget_holds"] == (measured["params"] <= VISION_BUDGET["params"])
    chosen = vision_run.summary["chosen"]
    assert chosen["budget_holds"] == vision_run.strategy.designs[0]["budget_holds"]


def test_a_budget_below_every_architecture_is_refused_in_one_line(tmp_path):
    with pytest.raises(UserInputError, match="no architecture within strategy.budget"):
        search(parse_config(tiny("volumetric", budget={"params": 1})), tmp_path, quiet=True)


def test_stand_alone_trial_labels_score_every_sample_on_the_validation_split(tmp_path):
    config = tiny("vision", labels="trials", trial_epochs=1, verify=False, measure=False)
    config["train"] = {"epochs": 1, "batch_size": 32, "max_steps_per_epoch": 2}
    result = search(parse_config(config), tmp_path, quiet=True)
    labels = records(tmp_path, "fox_label")
    n_valid = len(result.run.valid_set)
    assert [label["index"] for label in labels] == list(range(8))
    for label in labels:
        accuracy = label["valid"]["accuracy"]
        assert abs(accuracy * n_valid - round(accuracy * n_valid)) < 1e-6
    assert result.summary["final_metrics"] == "stand-alone training at the proxy setting"


def _comparable(designs):
    return [
        (d["genotype"], d["predicted"]["accuracy"], d["cost"]["params"], d["cost"]["flops"])
        for d in designs
    ]


def test_resume_after_sigkill_gives_the_same_designs(vision_run, tmp_path):
    torch.set_num_threads(1)
    config = tiny("vision", budget=VISION_BUDGET)
    marker = '"type": "fox_label", "index": 3'
    out = search_killed_when(config, tmp_path, lambda out: logged(out, marker))
    assert (out / "checkpoint.pt").exists() and not (out / "designs.json").exists()
    resumed = search(parse_config(config), out, resume=True, quiet=True)
    written = json.loads((out / "designs.json").read_text())["designs"]
    assert _comparable(written) == _comparable(vision_run.strategy.designs)
    assert resumed.genotype.cells == vision_run.genotype.cells
    assert [r["index"] for r in records(out, "fox_label")] == list(range(8))


def test_a_resume_after_labelling_labels_nothing_again(vision_run, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(vision_run.out_dir, out)
    (out / "genotype.json").unlink()
    (out / "summary.json").unlink()
    config = tiny("vision", budget=VISION_BUDGET)
    resumed = search(parse_config(config), out, resume=True, quiet=True)
    assert resumed.strategy.labels == vision_run.strategy.labels
    assert len(records(out, "fox_label")) == 8
    assert _comparable(resumed.strategy.designs) == _comparable(vision_run.strategy.designs)


def test_unknown_budget_kinds_and_label_sources_are_refused(tmp_path):
    with pytest.raises(UserInputError, match="unknown cost kind 'watts'"):
        search(parse_config(tiny("vision", budget={"watts": 3})), tmp_path, quiet=True)
    with pytest.raises(UserInputError, match="labels must be one of"):
        search(parse_config(tiny("vision", labels="oracle")), tmp_path, quiet=True)


def test_predictor_feasibility_keeps_every_design_within_the_fitted_cost_model(tmp_path):
    config = tiny("vision", budget={"params": 1500}, feasibility="predictor", predictor="lasso")
    config["strategy"]["verify"] = False
    result = search(parse_config(config), tmp_path, quiet=True)
    for design in result.strategy.designs:
        assert design["predicted"]["params (lasso)"] <= 1500
        assert design["predicted"]["accuracy"] == design["predicted"]["accuracy (lasso)"]


@pytest.mark.parametrize(
    "name", ["vision/fox_digits", "spd/fox_japanese_vowels", "volumetric/fox_synthetic_shapes"]
)
def test_each_shipped_fox_config_has_a_latency_budget_and_the_spos_supernet_budget(name):
    config = load_config(REPO / "configs" / f"{name}.yaml")
    strategy = build_strategy(config)
    assert strategy.name == "fox" and strategy.options.budget["latency_ms"] > 0
    spos = REPO / "configs" / f"{name.replace('fox_', 'spos_')}.yaml"
    assert load_config(spos).search == config.search  # the supernet trains as spos's does


def test_a_resume_under_a_latency_budget_reuses_the_killed_runs_measurements(tmp_path, monkeypatch):
    """Killed after its first labels, a latency-budgeted search resumes on its own measurements.

    Timings are never the same twice (on a busy two-core machine two runs of
    this search measured the same sub-networks 2x apart), so an uninterrupted
    run and a resumed one cannot be compared by measuring twice. Instead the
    killed run's checkpoint is the reference:

    * the resumed run must price with exactly the per-op table in that
      checkpoint and fit on exactly its end-to-end measurements, bit for bit,
      and measure nothing but the verification of its designs (the per-op
      table is never rebuilt and no sampled sub-network is timed again);
    * an uninterrupted run in a fresh directory, fed the same measurements
      (the killed run's ``cost_lut.json``, whose entries rebuild the same
      table, and its end-to-end costs replayed for the sampled
      sub-networks), must choose the same genotype and designs, LUT latencies
      (op sum plus the offset calibrated on the measurements) included.

    Both comparisons are exact floats, yet hold whatever the machine's
    timings, because each side reuses one set of measurements; a run that
    measured again would differ in the calibrated latency offset, so in every
    design's latency cost. The budget is generous: no limit fixed in a config
    is both binding and surely feasible under timings that vary this much,
    and what the test checks is where the numbers come from, which decide
    every choice a binding budget makes.
    """
    torch.set_num_threads(1)
    config = tiny("vision", budget={"latency_ms": 10000.0})
    marker = '"type": "fox_label", "index": 3'
    out = search_killed_when(config, tmp_path, lambda out: logged(out, marker))
    assert not (out / "designs.json").exists()
    killed = load_checkpoint(out / "checkpoint.pt")["strategy_state"]
    assert len(killed["measured"]) == 8, "every measurement is checkpointed before labelling"
    assert all(m["latency_ms"] > 0 for m in killed["measured"])
    recorded = {
        genotype_key(Genotype("darts", parse_cells(cells))): costs
        for cells, costs in zip(killed["samples"], killed["measured"])
    }
    measure = Run.measure_genotype
    timed: list[str] = []

    def spy(self, genotype, x, **options):
        timed.append(genotype_key(genotype))
        return measure(self, genotype, x, **options)

    def no_table(self, *args, **kwargs):
        raise AssertionError("a resumed run measured the per-op table again")

    with monkeypatch.context() as patch:
        patch.setattr(Run, "measure_genotype", spy)
        patch.setattr(Run, "cost_table", no_table)
        resumed = search(parse_config(config), out, resume=True, quiet=True)
    assert table_state(resumed.strategy.cost_model.table) == killed["cost_table"]
    assert resumed.strategy.measured == killed["measured"]
    designs = json.loads((out / "designs.json").read_text())
    keys = [genotype_key(Genotype("darts", parse_cells(d["genotype"]))) for d in designs["designs"]]
    assert timed == keys, "only the designs' verification is measured after the resume"
    labels = records(out, "fox_label")
    assert [r["index"] for r in labels] == list(range(8))
    assert [r["measured"] for r in labels] == killed["measured"]

    def replay(self, genotype, x, **options):
        key = genotype_key(genotype)
        return dict(recorded[key]) if key in recorded else measure(self, genotype, x, **options)

    fresh = tmp_path / "uninterrupted"
    fresh.mkdir()
    shutil.copy(out / "cost_lut.json", fresh / "cost_lut.json")
    with monkeypatch.context() as patch:
        patch.setattr(Run, "measure_genotype", replay)
        uninterrupted = search(parse_config(config), fresh, quiet=True)
    assert (
        table_state(uninterrupted.strategy.cost_model.table)["costs"]
        == killed["cost_table"]["costs"]
    )
    assert uninterrupted.strategy.measured == killed["measured"]

    reference = json.loads((fresh / "designs.json").read_text())
    assert reference["offsets"] == designs["offsets"]
    assert designs["offsets"]["latency_ms"]["source"] == "calibrated"

    def chosen(written):
        return [(d["genotype"], d["predicted"], d["cost"]) for d in written["designs"]]

    assert chosen(designs) == chosen(reference)
    assert resumed.genotype.cells == uninterrupted.genotype.cells


def test_the_checkpointed_cost_table_loads_safely_and_equals_the_measured_one(tmp_path):
    run = Run(parse_config(tiny("vision")), quiet=True)
    table = build_cost_table(run.build_searchable(), run.example_input(), warmup=0, repeats=1)
    torch.save({"table": table_state(table)}, tmp_path / "state.pt")
    loaded = table_from_state(torch.load(tmp_path / "state.pt", weights_only=True)["table"])
    assert (loaded.ops, loaded.edges, loaded.fixed) == (table.ops, table.edges, table.fixed)
    assert loaded.entries == table.entries and loaded.context == table.context
    for kind, by_spec in table.costs.items():
        for spec, costs in by_spec.items():
            assert torch.equal(loaded.costs[kind][spec], costs)
    assert table_state(loaded) == table_state(table)


def test_a_checkpoint_of_the_costs_alone_still_prices_with_them():
    # what the checkpoints of earlier versions held: {kind: {spec: costs}}
    config = parse_config(tiny("vision", budget={"latency_ms": 10000.0}))
    run = Run(config, quiet=True)
    first = build_strategy(config)
    first.setup(run)
    state = copy.deepcopy(first.state_dict())
    assert state["cost_table"] is None, "nothing is measured before the search starts"
    first.price(run)
    costs = first.state_dict()["cost_table"]["costs"]
    state["cost_table"] = {
        kind: {spec: (torch.tensor(values) + 1).tolist() for spec, values in by_spec.items()}
        for kind, by_spec in costs.items()
    }
    resumed = build_strategy(config)
    resumed.setup(run)
    resumed.load_state_dict(state)
    table = resumed.price(run).table
    for kind, by_spec in state["cost_table"].items():
        for spec, values in by_spec.items():
            assert table.costs[kind][spec].tolist() == values
