"""SPOS and Cream as whole runs: every domain from the CLI, budgets, resume after SIGKILL."""

import copy
import json
import statistics
from pathlib import Path

import pytest
import torch
import yaml
from support import REPO, TINY_SPD, read_records, search_killed_when, without_seconds

from manifold_nas.cli import main
from manifold_nas.config import load_config, parse_config
from manifold_nas.errors import UserInputError
from manifold_nas.run.context import Run
from manifold_nas.search import build_strategy, search
from manifold_nas.space.genotype import Genotype
from manifold_nas.space.sampling import genotype_key
from manifold_nas.strategies.one_shot.paths import PathCost, PathSampler

TINY_VOLUMETRIC = {
    "seed": 0,
    "data": {
        "name": "synthetic_shapes",
        "n_train": 4,
        "n_test": 2,
        "shape": [32, 32, 8],
        "patch_size": [16, 16, 8],
        "samples_per_volume": 1,
    },
    "network": {"name": "vnas", "opset": "volumetric", "channels": [4, 8], "strides": [[2, 2, 1]]},
    "search": {"epochs": 2, "batch_size": 2, "max_steps_per_epoch": 2},
    "train": {"epochs": 1, "batch_size": 2},
}
SMALL = {
    "spos": ["strategy.final_paths=2", "strategy.recalibration_batches=1"],
    "cream": [
        "strategy.warmup_epochs=0",
        "strategy.board_size=2",
        "strategy.meta_interval=1",
        "strategy.probe_size=4",
        "strategy.recalibration_batches=1",
    ],
}


@pytest.mark.parametrize("strategy", ["spos", "cream"])
@pytest.mark.parametrize("domain", ["vision", "spd", "volumetric"])
def test_both_one_shot_strategies_run_from_the_command_line_on_every_domain(
    domain, strategy, tiny_config_dict, tmp_path, capsys
):
    config = {"vision": tiny_config_dict, "spd": TINY_SPD, "volumetric": TINY_VOLUMETRIC}[domain]
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(config))
    out = tmp_path / "run"
    code = main(
        ["search", str(path), f"strategy.name={strategy}", *SMALL[strategy]]
        + ["--out", str(out), "--quiet"]
    )
    assert code == 0, capsys.readouterr().err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["strategy"] == strategy and summary["final"]
    genotype = Genotype.load(out / "genotype.json")
    assert genotype.to_dict()["cells"] == summary["genotype"]
    if strategy == "cream":
        assert (out / "board.png").is_file()
        assert summary["genotype"] in [e["genotype"] for e in summary["board"]]


@pytest.mark.parametrize(
    "name",
    sorted(
        str(p.relative_to(REPO))
        for p in REPO.glob("configs/*/*.yaml")
        if p.name.startswith(("spos_", "cream_"))
    ),
)
def test_each_shipped_one_shot_config_parses_and_shares_its_domains_search_budget(name):
    config = load_config(REPO / name)
    strategy = build_strategy(config)
    assert strategy.name == Path(name).name.split("_")[0]
    sibling = REPO / name.replace("cream_", "spos_") if "cream_" in name else REPO / name
    assert load_config(sibling).search == config.search  # equal supernet steps for the comparison


def test_there_is_a_spos_and_a_cream_config_per_domain():
    for domain in ("vision", "spd", "volumetric"):
        names = [p.name for p in (REPO / "configs" / domain).glob("*.yaml")]
        assert any(n.startswith("spos_") for n in names), domain
        assert any(n.startswith("cream_") for n in names), domain


def median_cost(config_dict):
    run = Run(parse_config(copy.deepcopy(config_dict)), quiet=True)
    network = run.build_searchable()
    cost = PathCost(run, network, "params")
    sampler = PathSampler(network.arch_specs, run.opset.name, run.opset.zero, seed=0)
    return statistics.median(cost(sampler.draw()) for _ in range(40)), cost


def test_the_cream_genotype_is_the_best_rescored_board_path_and_respects_the_budget(
    tiny_config_dict, tmp_path
):
    budget, cost = median_cost(tiny_config_dict)
    tiny_config_dict["strategy"] = {
        "name": "cream",
        "warmup_epochs": 0,
        "board_size": 3,
        "meta_interval": 2,
        "recalibration_batches": 1,
        "budget": budget,
    }
    result = search(parse_config(tiny_config_dict), tmp_path, quiet=True)
    board = result.strategy.board
    assert board and all(e.cost <= budget for e in board)
    assert cost(result.genotype) <= budget
    rescored = [r for r in read_records(tmp_path) if r["type"] == "board_path"]
    assert [r["genotype"] for r in rescored] == [e.path.to_dict()["cells"] for e in board]
    best = max(rescored, key=lambda r: r["valid"]["accuracy"])
    assert result.genotype.to_dict()["cells"] == best["genotype"]
    assert result.summary["final"] == best["valid"]


def test_the_spos_genotype_respects_the_budget(tiny_config_dict, tmp_path):
    budget, cost = median_cost(tiny_config_dict)
    tiny_config_dict["strategy"] = {
        "name": "spos",
        "final_paths": 4,
        "recalibration_batches": 1,
        "budget": budget,
    }
    result = search(parse_config(tiny_config_dict), tmp_path, quiet=True)
    assert cost(result.genotype) <= budget
    scored = [r for r in read_records(tmp_path) if r["type"] == "path"]
    assert len(scored) == 4 and all(r["cost"] <= budget for r in scored)


def test_a_cream_warm_up_as_long_as_the_search_is_refused(tiny_config_dict, tmp_path):
    tiny_config_dict["strategy"] = {"name": "cream", "warmup_epochs": 2}
    with pytest.raises(UserInputError, match="warmup_epochs"):
        search(parse_config(tiny_config_dict), tmp_path, quiet=True)


def test_cream_resumes_after_sigkill_with_the_same_board_and_genotype(tiny_config_dict, tmp_path):
    tiny_config_dict["search"].update(epochs=4, max_steps_per_epoch=3)
    tiny_config_dict["strategy"] = {
        "name": "cream",
        "warmup_epochs": 1,
        "board_size": 3,
        "meta_interval": 2,
        "recalibration_batches": 1,
    }
    reference = search(parse_config(tiny_config_dict), tmp_path / "reference", quiet=True)

    checkpointed = lambda out: (out / "checkpoint.pt").exists  # noqa: E731
    out = search_killed_when(tiny_config_dict, tmp_path, checkpointed)
    assert not (out / "genotype.json").exists()

    resumed = search(parse_config(tiny_config_dict), out, resume=True, quiet=True)
    expected, got = reference.strategy.board, resumed.strategy.board
    assert [genotype_key(e.path) for e in got] == [genotype_key(e.path) for e in expected]
    assert [(e.accuracy, e.cost, e.step) for e in got] == [
        (e.accuracy, e.cost, e.step) for e in expected
    ]
    assert all(torch.equal(a.outputs, b.outputs) for a, b in zip(got, expected))
    assert resumed.genotype.cells == reference.genotype.cells

    assert without_seconds(read_records(out)) == without_seconds(
        read_records(tmp_path / "reference")
    )
