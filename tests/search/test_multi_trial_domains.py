"""Multi-trial strategies on every domain: SPD and volumetric search spaces, and the CLI configs."""

import json

import pytest
import yaml
from support import REPO, TINY_SPD

from manifold_nas.cli import main
from manifold_nas.config import load_config, parse_config
from manifold_nas.search import search
from manifold_nas.space.genotype import Genotype

TINY_VOLUMETRIC = {
    "seed": 0,
    "threads": 1,
    "data": {
        "name": "synthetic_shapes",
        "n_train": 4,
        "n_test": 2,
        "shape": [16, 16, 8],
        "patch_size": [16, 16, 8],
        "samples_per_volume": 1,
    },
    "network": {"name": "vnas", "opset": "volumetric", "channels": [2, 4], "strides": [[2, 2, 2]]},
    "train": {
        "epochs": 1,
        "batch_size": 2,
        "max_steps_per_epoch": 2,
        "optimizer": {"name": "adam", "lr": 1.0e-3},
    },
}

EVOLUTION = {
    "name": "evolution",
    "trials": 3,
    "population": 2,
    "sample": 2,
    "epochs": 2,
    "batch": 2,
}


def test_evolution_searches_spd_cells_and_scores_them_by_accuracy(tmp_path):
    config = dict(TINY_SPD, strategy={**EVOLUTION, "early_stopping": "asha"})
    result = search(parse_config(config), tmp_path, quiet=True)
    trials = result.strategy.trials
    assert len(trials) == 3 and trials[2]["origin"].startswith("mutation of trial")
    assert all(0.0 <= t["curve"][-1] <= 1.0 for t in trials)
    assert set(result.genotype.cells) == {"normal", "reduce"}
    assert all(e.op != "none" for edges in result.genotype.cells.values() for e in edges)
    assert result.summary["final"] == trials[result.summary["best_trial"]]["valid"]


def test_evolution_searches_volumetric_cells_on_downsampled_volumes(tmp_path):
    config = dict(TINY_VOLUMETRIC, strategy=EVOLUTION, proxy={"downsample": 2})
    result = search(parse_config(config), tmp_path, quiet=True)
    trials = result.strategy.trials
    assert len(trials) == 3 and all("dice" in t["valid"] for t in trials)
    assert trials[2]["origin"].startswith("mutation of trial") and "op of" in trials[2]["origin"]
    assert {e.op for edges in result.genotype.cells.values() for e in edges} <= {
        "conv2d", "conv3d", "p3d",
    }  # fmt: skip
    assert (tmp_path / "trials.csv").read_text().splitlines()[0].endswith("dice_epoch_2")


@pytest.mark.parametrize(
    "path",
    sorted(
        str(p.relative_to(REPO))
        for pattern in ("configs/*/evolution_*.yaml", "configs/*/multitrial_*.yaml")
        for p in REPO.glob(pattern)
    ),
)
def test_every_multi_trial_config_loads_and_names_a_multi_trial_strategy(path):
    config = load_config(REPO / path)
    assert config.strategy["name"] in {"evolution", "random"}


def test_evolution_from_the_command_line_then_retrained_at_the_full_setting(
    tiny_config_dict, tmp_path, capsys
):
    cfg = tmp_path / "cfg.yaml"
    tiny_config_dict["proxy"] = {"network": {"channels": 2}, "data_fraction": 0.5}
    cfg.write_text(yaml.safe_dump(tiny_config_dict))
    out = tmp_path / "run"
    options = ["strategy.name=evolution", "strategy.trials=3", "strategy.population=2"]
    options += ["strategy.sample=1", "strategy.epochs=1", "strategy.early_stopping=none"]
    assert main(["search", str(cfg), *options, "--out", str(out), "--quiet"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["strategy"] == "evolution" and summary["trials"] == 3
    assert (out / "trials.csv").is_file() and (out / "trials.png").is_file()
    assert main(["train", str(out), "--quiet"]) == 0, capsys.readouterr().err
    trained = json.loads(next(out.rglob("train_summary.json")).read_text())
    assert trained["genotype"] == Genotype.load(out / "genotype.json").to_dict()["cells"]
    best = summary["best_trial"]
    record = [
        json.loads(line)
        for line in (out / "metrics.jsonl").read_text().splitlines()
        if '"trial"' in line
    ][best]
    assert record["proxy_parameters"] < trained["parameters"] == record["parameters"]
