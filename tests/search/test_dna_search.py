"""The ``dna`` strategy end to end: rankings, the exact combination, resume, the CLI and retraining."""

import copy
import csv
import itertools
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch
import yaml
from support import REPO

from manifold_nas.cli import main
from manifold_nas.config import parse_config
from manifold_nas.cost.measure import count_parameters
from manifold_nas.domains.volumetric.network import genotype_from_choices
from manifold_nas.run.context import Run, build_network
from manifold_nas.search import search
from manifold_nas.space.genotype import Genotype

TINY_VOLUMETRIC = {
    "seed": 0,
    "threads": 1,
    "data": {
        "name": "synthetic_shapes",
        "n_train": 4,
        "n_test": 1,
        "shape": [32, 32, 8],
        "patch_size": [16, 16, 8],
        "samples_per_volume": 1,
    },
    "network": {
        "name": "vnas",
        "opset": "volumetric",
        "channels": [4, 8],
        "strides": [[2, 2, 1]],
        "cells_per_level": 2,
    },
    "strategy": {
        "name": "dna",
        "teacher": {
            "network": "monai_unet",
            "options": {"channels": [4, 8], "strides": [[2, 2, 1]]},
            "epochs": 1,
        },
        "recalibration_batches": 0,
    },
    "search": {"epochs": 1, "batch_size": 2, "max_steps_per_epoch": 1},
    "train": {"epochs": 1, "batch_size": 2, "max_steps_per_epoch": 1},
}

TINY_DIGITS_TEACHER = {
    "network": "simple_cnn",
    "options": {"channels": 4, "depth": 1},
    "epochs": 1,
    "stages": ["<input>", "features.2", "features.5"],
}


def derived_parameters(config_dict, op):
    config = parse_config(config_dict)
    run = Run(config)
    genotype = genotype_from_choices([op] * 6)
    return count_parameters(build_network(config, run.bundle, genotype)[0])


@pytest.fixture(scope="module")
def volumetric_run(tmp_path_factory):
    """A tiny volumetric DNA search whose parameter budget lies between all-2D and all-3D."""
    config_dict = copy.deepcopy(TINY_VOLUMETRIC)
    low, high = derived_parameters(config_dict, "conv2d"), derived_parameters(config_dict, "conv3d")
    config_dict["strategy"]["budget"] = (low + high) / 2
    out = tmp_path_factory.mktemp("dna") / "run"
    result = search(parse_config(config_dict), out, quiet=True)
    return result, out, config_dict


def read_ranking(path):
    with open(path) as fh:
        return list(csv.DictReader(fh))


def test_rankings_hold_every_combination_of_a_small_block(volumetric_run):
    result, out, _ = volumetric_run
    for i, name in enumerate(["encoder level 0", "encoder level 1", "decoder level 0"]):
        rows = read_ranking(out / "blocks" / f"{i}.csv")
        # two cells per level, three ops each: all 9 combinations, ranked by relative L1
        expected = {
            f"cells: {a}(0->{2 * i + 1}) {b}(0->{2 * i + 2})"
            for a, b in itertools.product(("conv2d", "conv3d", "p3d"), repeat=2)
        }
        assert {r["candidate"] for r in rows} == expected, name
        losses = [float(r["relative_l1"]) for r in rows]
        assert losses == sorted(losses) and [int(r["rank"]) for r in rows] == list(range(1, 10))
        assert all(
            int(r["params"]) > 0 and int(r["flops"]) > 0 and int(r["memory"]) > 0 for r in rows
        )


def test_the_chosen_genotype_is_the_knapsack_optimum_over_the_written_rankings(volumetric_run):
    result, out, config_dict = volumetric_run
    pareto = json.loads((out / "pareto.json").read_text())
    blocks = [read_ranking(out / "blocks" / f"{i}.csv") for i in range(3)]
    budget = config_dict["strategy"]["budget"] - pareto["fixed_cost"]["params"]
    best = None
    for rows in itertools.product(*blocks):
        cost = sum(int(r["params"]) for r in rows)
        loss = sum(float(r["relative_l1"]) for r in rows)
        if cost <= budget and (best is None or loss < best[0]):
            best = (loss, [r["candidate"] for r in rows])
    tokens = sorted(t for label in best[1] for t in label.removeprefix("cells: ").split())
    cells = result.genotype.to_dict()["cells"]["cells"]
    assert tokens == sorted(f"{op}({source}->{target})" for op, source, target in cells)
    assert pareto["chosen"]["loss"] == pytest.approx(best[0], rel=1e-12)


def test_the_chosen_genotype_respects_the_budget_and_its_cost_is_the_derived_networks(
    volumetric_run,
):
    result, out, config_dict = volumetric_run
    derived = result.run.build_derived(result.genotype)
    parameters = count_parameters(derived)
    assert parameters <= config_dict["strategy"]["budget"]
    assert result.summary["cost"]["value"] == parameters
    pareto = json.loads((out / "pareto.json").read_text())
    assert pareto["chosen"]["params"] == parameters
    front = pareto["front"]
    assert [e["cost"] for e in front] == sorted(e["cost"] for e in front)
    assert all(a["loss"] > b["loss"] for a, b in zip(front, front[1:]))
    assert any(e["genotype"] == pareto["chosen"]["genotype"] for e in front)


def test_the_summary_reports_the_teacher_adapters_and_stitched_metrics(volumetric_run):
    result, out, _ = volumetric_run
    summary = result.summary
    assert "dice" in summary["final"] and "dice" in summary["teacher"]["valid"]
    assert summary["teacher"]["stages"][0] == "<input>" and len(summary["teacher"]["stages"]) == 4
    # the input adapter of the first block maps the image (1 channel) to the stem's 4 channels
    first = summary["adapters"][0]["inputs"][0]
    assert first["from"][0] == 1 and first["to"][0] == 4 and first["project"]
    assert (out / "teacher" / "retrain" / "model.pt").is_file()


KILL_SCRIPT = textwrap.dedent(
    """
    import sys, yaml
    from manifold_nas.config import parse_config
    from manifold_nas.search import search
    search(parse_config(yaml.safe_load(open(sys.argv[1]))), sys.argv[2], resume=True, quiet=True)
    """
)


def test_resume_after_sigkill_gives_identical_rankings(tiny_config_dict, tmp_path):
    tiny_config_dict["strategy"] = {
        "name": "dna",
        "teacher": {**TINY_DIGITS_TEACHER, "epochs": 2},
        "epochs": 3,
        "max_candidates_per_block": 6,
        "ranking_batches": 2,
    }
    reference = search(parse_config(tiny_config_dict), tmp_path / "reference", quiet=True)
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(tiny_config_dict))
    script = tmp_path / "search.py"
    script.write_text(KILL_SCRIPT)
    out = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, str(script), str(cfg), str(out)],
        cwd=REPO,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
    )
    marker = '"type": "block_epoch", "block": 1, "epoch": 0'
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        metrics = out / "metrics.jsonl"
        if metrics.exists() and marker in metrics.read_text():
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.01)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the search finished before it could be killed"
    assert not (out / "blocks" / "1.csv").exists()

    resumed = search(parse_config(tiny_config_dict), out, resume=True, quiet=True)
    assert resumed.strategy.rankings == reference.strategy.rankings
    for i in range(2):
        assert (out / "blocks" / f"{i}.csv").read_text() == (
            tmp_path / "reference" / "blocks" / f"{i}.csv"
        ).read_text()
    assert resumed.genotype.cells == reference.genotype.cells
    strip = lambda r: {k: v for k, v in r.items() if k != "seconds"}  # noqa: E731
    lines = [strip(json.loads(x)) for x in (out / "metrics.jsonl").read_text().splitlines()]
    ref = (tmp_path / "reference" / "metrics.jsonl").read_text().splitlines()
    assert lines == [strip(json.loads(x)) for x in ref]


TINY_CLI = {
    "configs/vision/dna_digits.yaml": [
        "network.channels=4",
        "strategy.teacher.epochs=1",
        "strategy.max_candidates_per_block=3",
        "strategy.ranking_batches=1",
        "search.epochs=1",
        "search.max_steps_per_epoch=2",
        "train.epochs=1",
        "train.max_steps_per_epoch=2",
    ],
    "configs/volumetric/dna_unet_teacher.yaml": [
        "threads=1",
        "data.n_train=4",
        "data.n_test=1",
        "data.shape=[32,32,8]",
        "data.patch_size=[16,16,8]",
        "data.samples_per_volume=1",
        "strategy.teacher.epochs=1",
        "search.epochs=1",
        "search.max_steps_per_epoch=1",
        "train.epochs=1",
        "train.max_steps_per_epoch=1",
    ],
}


@pytest.mark.parametrize("config", list(TINY_CLI))
def test_the_cli_searches_a_dna_config_and_train_retrains_its_genotype(config, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["search", str(REPO / config), *TINY_CLI[config], "--out", str(out), "--quiet"])
    assert code == 0, capsys.readouterr().err
    summary = json.loads((out / "summary.json").read_text())
    pareto = json.loads((out / "pareto.json").read_text())
    assert summary["cost"]["value"] <= summary["cost"]["budget"]
    assert summary["cost"]["budget"] == pytest.approx(0.5 * summary["teacher"]["parameters"])
    assert sorted(p.name for p in (out / "blocks").iterdir()) == [
        f"{i}.csv" for i in range(len(summary["blocks"]))
    ]
    assert pareto["chosen"]["genotype"] == summary["genotype"]

    assert main(["train", str(out), "--quiet"]) == 0, capsys.readouterr().err
    trained = json.loads((out / "retrain" / "train_summary.json").read_text())
    assert trained["genotype"] == Genotype.load(out / "genotype.json").to_dict()["cells"]
    assert trained["parameters"] == summary["parameters"]["derived"] == summary["cost"]["value"]


def test_a_retrained_darts_run_directory_teaches_at_its_cells(tiny_config_dict, tmp_path):
    teacher_run = tmp_path / "teacher"
    cfg = tmp_path / "teacher.yaml"
    cfg.write_text(yaml.safe_dump(tiny_config_dict))
    assert main(["search", str(cfg), "--out", str(teacher_run), "--quiet"]) == 0
    assert main(["train", str(teacher_run), "--quiet"]) == 0
    tiny_config_dict["strategy"] = {
        "name": "dna",
        "teacher": {"run": str(teacher_run)},
        "max_candidates_per_block": 2,
        "ranking_batches": 1,
    }
    result = search(parse_config(tiny_config_dict), tmp_path / "student", quiet=True)
    assert result.summary["teacher"]["stages"] == ["stem", "cell 0 (normal)", "cell 1 (reduce)"]
    # the same macro-architecture: every adapter is the identity
    adapters = result.summary["adapters"]
    assert all(a["parameters"] == 0 and not a["resize"] and not a["project"]
               for block in adapters for a in [*block["inputs"], block["output"]])  # fmt: skip
    assert "accuracy" in result.summary["final"]


def test_a_module_teacher_is_built_from_its_factory_and_cut_at_named_stages(
    tiny_config_dict, tmp_path
):
    torch.manual_seed(0)
    tiny_config_dict["strategy"] = {
        "name": "dna",
        "teacher": {
            "module": "manifold_nas.domains.vision.networks:SimpleCNN",
            "options": {"in_channels": 1, "num_classes": 10, "channels": 4, "depth": 1},
            "epochs": 1,
            "stages": ["features.2", "features.5", "features.8"],
        },
        "max_candidates_per_block": 2,
        "ranking_batches": 1,
    }
    result = search(parse_config(tiny_config_dict), tmp_path / "run", quiet=True)
    assert (
        result.summary["teacher"]["source"]["module"]
        == "manifold_nas.domains.vision.networks:SimpleCNN"
    )
    assert (tmp_path / "run" / "teacher" / "model.pt").is_file()
    # the last teacher stage (2x2) is coarser than the student's last cell (4x4)
    assert result.summary["adapters"][1]["output"]["resize"]


def test_a_teacher_with_a_different_number_of_stages_is_refused(tiny_config_dict, tmp_path):
    tiny_config_dict["strategy"] = {
        "name": "dna",
        "teacher": {**TINY_DIGITS_TEACHER, "stages": ["<input>", "features.2"]},
    }
    with pytest.raises(Exception, match="1 stages .* but the student has 2 blocks"):
        search(parse_config(tiny_config_dict), tmp_path / "run", quiet=True)
