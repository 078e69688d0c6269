"""Configs: overrides merge into defaults, and every key and value is checked before data loads."""

import functools
import json
import pickle
import zipfile

import pytest
import torch
import yaml
from support import one_line_error, run_cli

from manifold_nas.config import apply_overrides, parse_config
from manifold_nas.data import DATASETS
from manifold_nas.errors import UserInputError
from manifold_nas.strategies.bilevel.strategy import arch_optimizer_section


@pytest.fixture
def cfg_file(tmp_path, tiny_config_dict):
    tiny_config_dict["search"]["epochs"] = 1
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(tiny_config_dict))
    return path


def test_an_override_inside_a_default_section_keeps_the_defaults_other_keys(tiny_config_dict):
    raw = apply_overrides(tiny_config_dict, ["search.weight_optimizer.lr=0.1"])
    config = parse_config(raw)
    assert config.search.weight_optimizer == {
        "name": "sgd",
        "lr": 0.1,
        "momentum": 0.9,
        "weight_decay": 3e-4,
    }


def test_an_override_of_a_default_sections_name_starts_it_afresh(tiny_config_dict):
    for order in (
        ["search.weight_optimizer.name=adam", "search.weight_optimizer.lr=0.2"],
        ["search.weight_optimizer.lr=0.2", "search.weight_optimizer.name=adam"],
    ):
        config = parse_config(apply_overrides(tiny_config_dict, order))
        assert config.search.weight_optimizer == {"name": "adam", "lr": 0.2}


def test_renaming_a_spelled_out_strategy_drops_the_old_strategys_options(tiny_config_dict):
    tiny_config_dict["strategy"] = {"name": "bilevel", "order": "second", "entropy_weight": 0.1}
    raw = apply_overrides(tiny_config_dict, ["strategy.trials=3", "strategy.name=random"])
    assert raw["strategy"] == {"name": "random", "trials": 3}
    same = apply_overrides(tiny_config_dict, ["strategy.name=bilevel"])
    assert same["strategy"] == tiny_config_dict["strategy"]


def test_renaming_the_network_keeps_its_options(tiny_config_dict):
    raw = apply_overrides(tiny_config_dict, ["network.name=simple_cnn"])
    assert raw["network"] == {**tiny_config_dict["network"], "name": "simple_cnn"}


def test_an_arch_optimizer_without_a_name_updates_the_bilevel_default():
    assert arch_optimizer_section({"lr": 0.1}) == {
        "name": "adam",
        "lr": 0.1,
        "betas": (0.5, 0.999),
        "weight_decay": 1e-3,
    }
    assert arch_optimizer_section({"name": "eg", "lr": 0.2}) == {"name": "eg", "lr": 0.2}


@pytest.mark.parametrize(
    "key", ["order", "warmup_epochs", "arch_optimizer", "arch_penalty", "entropy_weight",
            "hessian_eigenvalue", "sync_batch_norm"],
)  # fmt: skip
def test_a_search_key_that_became_a_bilevel_option_names_its_new_place(tiny_config_dict, key):
    tiny_config_dict["search"][key] = 1
    with pytest.raises(
        UserInputError, match=rf"search\.{key} is now strategy\.{key}, an option of the bilevel"
    ):
        parse_config(tiny_config_dict)


def test_an_override_into_a_missing_named_section_merges_into_its_default(tiny_config_dict):
    del tiny_config_dict["relaxation"]
    config = parse_config(apply_overrides(tiny_config_dict, ["relaxation.temperature=2.0"]))
    assert config.relaxation == {"name": "softmax", "temperature": 2.0}


def test_the_merged_override_runs_a_search_from_the_command_line(tmp_path, capsys, cfg_file):
    code, out, err = run_cli(
        capsys,
        "search",
        cfg_file,
        "strategy.arch_optimizer.lr=0.1",
        "--out",
        tmp_path / "r",
        "--quiet",
    )
    assert code == 0, err
    saved = yaml.safe_load((tmp_path / "r" / "config.yaml").read_text())
    assert saved["strategy"] == {"name": "bilevel", "arch_optimizer": {"lr": 0.1}}
    genotype = json.loads((tmp_path / "r" / "genotype.json").read_text())
    assert genotype["config"]["strategy"]["arch_optimizer"] == {"lr": 0.1}


@pytest.mark.parametrize(
    "override, needle",
    [
        ("search.epochs=abc", "search.epochs must be an integer >= 1"),
        ("train.epochs=abc", "train.epochs must be an integer >= 1"),
        ("search.epochs=-1", "search.epochs must be an integer >= 1"),
        ("search.batch_size=0", "search.batch_size must be an integer >= 1"),
        ("search.train_portion=1.5", "search.train_portion"),
        ("strategy.arch_optimizer.lr=nan", "strategy.arch_optimizer.lr must be a finite number"),
        ("strategy.arch_optimizer.lr=.nan", "strategy.arch_optimizer.lr must be a finite number"),
        ("search.weight_optimizer.nosuch=1", "search.weight_optimizer.'nosuch'"),
        ("train.optimizer.lr=fast", "train.optimizer.lr must be a finite number"),
        ("strategy.order=third", "order must be 'first' or 'second'"),
        ("threads=0", "threads must be an integer >= 1"),
        ("strategy.hessian_eigenvalue=maybe", "strategy.hessian_eigenvalue must be true or false"),
        ("network.chanels=8", "network.'chanels'"),
        ("train.network.chanels=8", "train.network.'chanels'"),
        ("relaxation.temperature=hot", "relaxation.temperature must be a finite number"),
        ("data.test_fraction=[1]", "data.test_fraction must be a finite number"),
        ("selection.name=best", "unknown selector 'best'"),
        ("search.max_steps_per_epoch=0", "search.max_steps_per_epoch"),
    ],
)
def test_a_bad_setting_is_one_line_and_exit_2_before_any_data_is_loaded(
    tmp_path, capsys, cfg_file, override, needle
):
    calls = []
    original = DATASETS.get("digits")

    @functools.wraps(original)  # same signature, so the options are checked against it
    def spy(**options):
        calls.append(options)
        raise AssertionError("data was loaded before the config was checked")

    with DATASETS.registered("digits", spy):
        code, _, err = run_cli(capsys, "search", cfg_file, override, "--out", tmp_path / "run")
    assert needle in one_line_error(code, err)
    assert not calls
    assert not (tmp_path / "run").exists(), "a failed search left its directory behind"


@pytest.mark.parametrize(
    "content",
    [
        b"- a\n- list\n",
        b"just a string\n",
        b"\x89PNG\r\n\x1a\n\x00\xff\xfe binary",
        b"a: [unclosed\n",
    ],
)
def test_a_config_file_that_is_not_a_mapping_of_sections_is_one_line(tmp_path, capsys, content):
    path = tmp_path / "bad.yaml"
    path.write_bytes(content)
    code, _, err = run_cli(capsys, "search", path, "--out", tmp_path / "run")
    assert str(path) in one_line_error(code, err)


def test_parse_config_refuses_a_non_mapping():
    with pytest.raises(UserInputError, match="mapping"):
        parse_config(["data", "network"])


def test_an_evaluate_of_a_malicious_model_file_is_refused_without_running_it(
    tmp_path, capsys, cfg_file
):
    out = tmp_path / "run"
    assert run_cli(capsys, "search", cfg_file, "--out", out, "--quiet")[0] == 0
    (out / "retrain").mkdir()
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    with open(out / "retrain" / "model.pt", "wb") as fh:
        pickle.dump(Exploit(), fh)
    code, _, err = run_cli(capsys, "evaluate", out)
    assert "model.pt" in one_line_error(code, err)
    assert not marker.exists()


@pytest.mark.parametrize("keep", [1, 100])
def test_an_evaluate_of_a_truncated_model_file_is_one_line(tmp_path, capsys, cfg_file, keep):
    out = tmp_path / "run"
    assert run_cli(capsys, "search", cfg_file, "--out", out, "--quiet")[0] == 0
    assert run_cli(capsys, "train", out, "--quiet")[0] == 0
    weights = out / "retrain" / "model.pt"
    weights.write_bytes(weights.read_bytes()[:keep])
    code, _, err = run_cli(capsys, "evaluate", out)
    assert "model.pt" in one_line_error(code, err)


def test_a_torch_file_with_a_foreign_state_is_refused(tmp_path, capsys, cfg_file):
    out = tmp_path / "run"
    assert run_cli(capsys, "search", cfg_file, "--out", out, "--quiet")[0] == 0
    (out / "retrain").mkdir()
    torch.save({"weight": torch.zeros(3)}, out / "retrain" / "model.pt")
    code, _, err = run_cli(capsys, "evaluate", out)
    assert "does not fit the run's network" in one_line_error(code, err)
    assert zipfile.is_zipfile(out / "retrain" / "model.pt")
