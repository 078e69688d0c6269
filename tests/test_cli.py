"""The CLI: each bad input is one line on stderr, exit status 2, no traceback."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from support import run_cli

from manifold_nas.cli import main
from manifold_nas.errors import UserInputError
from manifold_nas.space.cell import ChosenEdge
from manifold_nas.space.genotype import Genotype

REPO = Path(__file__).resolve().parents[1]


def write_config(tmp_path, config, name="cfg.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(config))
    return path


def write_genotype(tmp_path, opset, cells, config):
    path = tmp_path / "genotype.json"
    Genotype(opset, cells, config=config).save(path)
    return path


def assert_one_line_error(code, err, *needles):
    assert code == 2
    assert "Traceback" not in err
    lines = [line for line in err.strip().splitlines() if line]
    assert len(lines) == 1, err
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_unknown_config_key_lists_valid_keys(tmp_path, capsys, tiny_config_dict):
    tiny_config_dict["search"]["epoch"] = 3
    code, _, err = run_cli(capsys, "search", write_config(tmp_path, tiny_config_dict), "--quiet")
    assert_one_line_error(code, err, "'epoch'", "epochs", "batch_size")


def test_unknown_top_level_key_is_refused(tmp_path, capsys, tiny_config_dict):
    tiny_config_dict["sead"] = 1
    code, _, err = run_cli(capsys, "search", write_config(tmp_path, tiny_config_dict), "--quiet")
    assert_one_line_error(code, err, "'sead'", "seed")


def test_unknown_dataset_option_lists_the_builder_keywords(tmp_path, capsys, tiny_config_dict):
    tiny_config_dict["data"]["test_fractoin"] = 0.5
    code, _, err = run_cli(capsys, "search", write_config(tmp_path, tiny_config_dict), "--quiet")
    assert_one_line_error(code, err, "test_fractoin", "test_fraction")


def test_missing_data_path_is_named(tmp_path, capsys, tiny_config_dict):
    tiny_config_dict["data"] = {"name": "image_folder", "root": str(tmp_path / "nowhere")}
    code, _, err = run_cli(capsys, "search", write_config(tmp_path, tiny_config_dict), "--quiet")
    assert_one_line_error(code, err, "nowhere")


def test_missing_config_file_is_named(tmp_path, capsys):
    code, _, err = run_cli(capsys, "search", tmp_path / "absent.yaml")
    assert_one_line_error(code, err, "absent.yaml")


@pytest.mark.parametrize(
    ("section", "value", "needle"),
    [("network", "opset", "darts"), ("relaxation", "name", "softmax")],
)
def test_unknown_opset_or_relaxation_lists_registered_names(
    tmp_path, capsys, tiny_config_dict, section, value, needle
):
    tiny_config_dict[section][value] = "no_such_thing"
    code, _, err = run_cli(capsys, "search", write_config(tmp_path, tiny_config_dict), "--quiet")
    assert_one_line_error(code, err, "no_such_thing", needle)


def test_override_on_the_command_line_is_checked_too(tmp_path, capsys, tiny_config_dict):
    code, _, err = run_cli(
        capsys, "search", write_config(tmp_path, tiny_config_dict), "search.bogus=1", "--quiet"
    )
    assert_one_line_error(code, err, "bogus")


@pytest.mark.parametrize("content", [b"not a checkpoint at all", b"PK\x03\x04garbage"])
def test_corrupt_checkpoint_on_resume(tmp_path, capsys, tiny_config_dict, content):
    out = tmp_path / "run"
    out.mkdir()
    (out / "checkpoint.pt").write_bytes(content)
    code, _, err = run_cli(
        capsys,
        "search",
        write_config(tmp_path, tiny_config_dict),
        "--out",
        out,
        "--resume",
        "--quiet",
    )
    assert_one_line_error(code, err, "checkpoint")


def test_foreign_checkpoint_on_resume(tmp_path, capsys, tiny_config_dict):
    out = tmp_path / "run"
    out.mkdir()
    torch.save({"state_dict": {"w": torch.zeros(2)}}, out / "checkpoint.pt")
    code, _, err = run_cli(
        capsys,
        "search",
        write_config(tmp_path, tiny_config_dict),
        "--out",
        out,
        "--resume",
        "--quiet",
    )
    assert_one_line_error(code, err, "not written by manifold-nas")


def test_genotype_with_unregistered_opset(tmp_path, capsys, tiny_config_dict):
    path = write_genotype(
        tmp_path, "martian_ops", {"normal": (ChosenEdge("zap", 0, 2),)}, tiny_config_dict
    )
    code, _, err = run_cli(capsys, "train", path, "--quiet")
    assert_one_line_error(code, err, "martian_ops", "darts")


def test_list_shows_every_registry(capsys):
    code, out, _ = run_cli(capsys, "list")
    assert code == 0
    for kind in ("opsets:", "relaxations:", "optimizers:", "selectors:", "datasets:", "networks:"):
        assert kind in out
    code, out, _ = run_cli(capsys, "list", "relaxations")
    assert "sparsemax" in out and "opsets:" not in out


def test_list_names_the_entry_point_strategies_and_op_sets_before_any_was_used(tmp_path):
    # a fresh process: nothing has touched the registries, which read entry points lazily
    listed = subprocess.run(
        [sys.executable, "-m", "manifold_nas", "list", "strategies"],
        capture_output=True, text=True, cwd=tmp_path, stdin=subprocess.DEVNULL, check=True,
    ).stdout  # fmt: skip
    for name in ("bilevel", "random", "evolution", "spos", "cream", "dna", "fox"):
        assert f"  {name} " in listed


def test_search_train_evaluate_plot_end_to_end(tmp_path, capsys, tiny_config_dict):
    out = tmp_path / "run"
    code, stdout, _ = run_cli(
        capsys, "search", write_config(tmp_path, tiny_config_dict), "--out", out, "--quiet"
    )
    assert code == 0 and "normal:" in stdout
    summary = yaml.safe_load((out / "summary.json").read_text())
    assert summary["parameters"]["derived"] < summary["parameters"]["supernet_weights"]
    assert run_cli(capsys, "train", out, "--quiet")[0] == 0
    code, stdout, _ = run_cli(capsys, "evaluate", out)
    assert code == 0 and "accuracy" in stdout
    code, stdout, _ = run_cli(capsys, "plot", out)
    assert code == 0
    for name in ("alphas.png", "diagnostics.png", "cell_normal.png", "cell_reduce.png"):
        assert (out / name).stat().st_size > 1000


def test_console_script_exits_2_without_traceback(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "manifold_nas", "search", str(tmp_path / "none.yaml")],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and "none.yaml" in result.stderr


def test_training_a_search_space_config_asks_for_a_search_first(tmp_path, capsys, tiny_config_dict):
    code, _, err = run_cli(capsys, "train", write_config(tmp_path, tiny_config_dict), "--quiet")
    assert_one_line_error(code, err, "search space", "manifold-nas search")


def test_genotype_that_does_not_fit_the_network_is_refused(tmp_path, capsys, tiny_config_dict):
    path = write_genotype(
        tmp_path, "darts", {"cell": (ChosenEdge("skip_connect", 0, 1),)}, tiny_config_dict
    )
    code, _, err = run_cli(capsys, "train", path, "--quiet")
    assert_one_line_error(code, err, "'normal'")


def test_invalid_option_value_names_the_config_section(tmp_path, capsys, tiny_config_dict):
    tiny_config_dict["relaxation"] = {"name": "softmax", "temperature": -1}
    code, _, err = run_cli(capsys, "search", write_config(tmp_path, tiny_config_dict), "--quiet")
    assert_one_line_error(code, err, "'relaxation'", "temperature")


def test_non_positive_thread_count_is_refused(tmp_path, capsys, tiny_config_dict):
    tiny_config_dict["threads"] = 0
    code, _, err = run_cli(capsys, "search", write_config(tmp_path, tiny_config_dict), "--quiet")
    assert_one_line_error(code, err, "threads")


def test_genotype_with_an_unknown_op_names_the_op_and_the_op_set(tmp_path, capsys):
    spd = {
        "data": {"name": "basic_motions"},
        "network": {"name": "spdnetnas", "opset": "spd", "cells": 2, "nodes": 2, "channels": 1},
        "train": {"epochs": 1},
    }
    cells = {
        "reduce": (ChosenEdge("NoSuchOp", 0, 2), ChosenEdge("BiMap_1", 1, 2)),
        "normal": (ChosenEdge("Skip", 0, 2), ChosenEdge("BiMap_1", 1, 2)),
    }
    path = write_genotype(tmp_path, "spd", cells, spd)
    code, _, err = run_cli(capsys, "train", path, "--quiet")
    assert_one_line_error(code, err, "'NoSuchOp'", "op set 'spd'")
    assert "cell type" not in err


def test_usage_mistakes_are_one_line_too(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["search"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "config" in err


def test_the_demo_config_ships_inside_the_package():
    from importlib.resources import files

    from manifold_nas.cli import DEMO_CONFIG

    shipped = files("manifold_nas") / "configs" / "japanese_vowels.yaml"
    assert shipped.is_file() and Path(str(shipped)) == DEMO_CONFIG
    assert (
        REPO / "configs" / "spd" / "japanese_vowels.yaml"
    ).read_text() == DEMO_CONFIG.read_text()
    pyproject = (REPO / "pyproject.toml").read_text()
    assert 'manifold_nas = ["configs/*.yaml"]' in pyproject


def test_a_full_disk_says_how_to_resume(tmp_path, capsys, monkeypatch, tiny_config_dict):
    import manifold_nas.cli as cli
    from manifold_nas.errors import DiskFullError

    def full(*args, **kwargs):  # after cmd_search noted its resume command
        raise DiskFullError("no space left on device writing run/checkpoint.pt (0 B free in run)")

    monkeypatch.setattr(cli, "_search", full)
    cfg = write_config(tmp_path, tiny_config_dict)
    out = tmp_path / "run"
    code, _, err = run_cli(capsys, "search", cfg, "--out", out, "--quiet")
    assert_one_line_error(code, err, "no space left on device")
    command = f"manifold-nas search {cfg} --out {out} --resume"
    assert err.strip().endswith(f"; resume with: {command}"), err
    # the command an interrupt prints too
    assert cli._interrupted_message("SIGINT").endswith(command)


def test_other_user_mistakes_name_no_resume_command(tmp_path, capsys, monkeypatch):
    import manifold_nas.cli as cli

    def refused(*args, **kwargs):
        raise UserInputError("refused")

    monkeypatch.setattr(cli, "_search", refused)
    code, _, err = run_cli(capsys, "search", tmp_path / "cfg.yaml", "--out", tmp_path / "run")
    assert_one_line_error(code, err, "refused")
    assert "resume" not in err


@pytest.mark.parametrize(("rank", "lines"), [("0", 1), ("1", 0)])
def test_under_torchrun_only_rank_0_reports_a_mistake(tmp_path, capsys, monkeypatch, rank, lines):
    # every rank meets the same mistake; torchrun's own summary follows
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", rank)
    code, _, err = run_cli(capsys, "search", tmp_path / "absent.yaml")
    assert code == 2 and len(err.strip().splitlines()) == lines, err


def test_plotting_a_run_without_a_finished_epoch_is_a_one_line_error(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"type": "step", "epoch": 0, "step": 0}\n')
    code, out, err = run_cli(capsys, "plot", run)
    assert_one_line_error(code, err, "nothing to plot", str(run))
    assert out == ""


def test_evaluate_help_promises_the_retrained_network_only(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")  # one line per command
    with pytest.raises(SystemExit):
        main(["--help"])
    line = next(x for x in capsys.readouterr().out.splitlines() if x.strip().startswith("evaluate"))
    assert "retrained" in line and "supernet" not in line
