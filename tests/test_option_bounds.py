"""Option bounds: budgets, nesting depth, threads and devices are the user's, refused in one line.

Every case ends in exit status 0 or 2 with one line on stderr, never in
"internal error" (exit 1), a hang or a traceback.
"""

from __future__ import annotations

import inspect
import logging

import pytest
import torch
import yaml
from support import one_line_error, run_cli

from manifold_nas.config import (
    MAX_CONFIG_DEPTH,
    MAX_THREADS,
    apply_overrides,
    parse_config,
)
from manifold_nas.errors import UserInputError
from manifold_nas.run import context
from manifold_nas.run.context import apply_threads
from manifold_nas.run.distributed import World, check_device, device_for
from manifold_nas.strategies.multi_trial.evolution import RegularizedEvolution
from manifold_nas.strategies.multi_trial.random_search import RandomSearch

DEEP = 600  # far past Python's default recursion limit of 1000 frames for deepcopy and YAML


def clean_outcome(code, err):
    assert "Traceback" not in err and "internal error" not in err, err
    assert code in (0, 2), (code, err)
    if code == 2:
        one_line_error(code, err)


@pytest.fixture
def cfg_file(tmp_path, tiny_config_dict):
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(tiny_config_dict))
    return path


def nested(depth: int) -> dict:
    value: dict = {"a": 1}
    for _ in range(depth - 1):
        value = {"a": value}
    return value


# -- evolution: the population must fit in the trials ------------------------------------
def test_an_evolution_population_larger_than_its_trials_is_refused_naming_both(capsys, cfg_file):
    code, _, err = run_cli(
        capsys, "check", cfg_file, "strategy.name=evolution", "strategy.trials=4",
        "strategy.population=8", "strategy.sample=2",
    )  # fmt: skip
    line = one_line_error(code, err)
    assert "population (8) must not exceed trials (4)" in line and "'strategy'" in line, line


def test_an_evolution_population_as_large_as_its_trials_is_accepted():
    with pytest.raises(ValueError, match=r"population \(5\) must not exceed trials \(4\)"):
        RegularizedEvolution(trials=4, population=5, sample=2)
    assert RegularizedEvolution(trials=4, population=4, sample=2).population_size == 4


# -- nesting depth -------------------------------------------------------------------------
def test_a_config_nested_600_deep_is_refused_naming_the_config(tiny_config_dict):
    tiny_config_dict["data"] = {"name": "digits", **nested(DEEP)}
    with pytest.raises(UserInputError, match=r"^cfg\.yaml: section 'data' nests .* 100 levels"):
        parse_config(tiny_config_dict, "cfg.yaml")
    with pytest.raises(UserInputError, match=r"^config: section 'data' nests"):
        apply_overrides(tiny_config_dict, ["seed=1"])


def test_a_config_nested_to_the_limit_is_accepted(tiny_config_dict):
    # the top mapping is level 1, the data section level 2 and its innermost mapping level 100
    tiny_config_dict["data"] = {"name": "digits", **nested(MAX_CONFIG_DEPTH - 1)}
    assert parse_config(apply_overrides(tiny_config_dict, [])).data["a"]["a"]
    tiny_config_dict["data"] = {"name": "digits", **nested(MAX_CONFIG_DEPTH)}
    with pytest.raises(UserInputError, match="nests mappings or lists more than 100 levels"):
        parse_config(tiny_config_dict)


def test_a_self_referencing_yaml_alias_is_refused_as_too_deep(tmp_path, capsys, tiny_config_dict):
    path = tmp_path / "loop.yaml"
    path.write_text(
        "data: &d {name: digits, again: [*d]}\n"
        + yaml.safe_dump({"network": tiny_config_dict["network"]})
    )
    code, _, err = run_cli(capsys, "check", path)
    assert "loop.yaml: section 'data' nests" in one_line_error(code, err)


def test_an_override_600_keys_deep_is_refused_naming_the_override(capsys, cfg_file):
    key = "data." + ".".join(["a"] * DEEP)
    code, _, err = run_cli(capsys, "check", cfg_file, f"{key}=1")
    line = one_line_error(code, err)
    assert line.startswith("manifold-nas: error: override 'data.a.a.a") and "100 levels" in line


def test_an_override_value_600_deep_is_refused_naming_the_override(capsys, cfg_file):
    code, _, err = run_cli(capsys, "check", cfg_file, "data.x=" + "[" * DEEP + "]" * DEEP)
    assert "override 'data.x=[[[" in one_line_error(code, err)
    with pytest.raises(UserInputError, match="override 'data.x=.*100 levels"):
        apply_overrides({}, ["data.x=" + "[" * MAX_CONFIG_DEPTH + "]" * MAX_CONFIG_DEPTH])


def test_a_yaml_file_nested_600_deep_is_refused_naming_the_file(tmp_path, capsys):
    path = tmp_path / "deep.yaml"
    path.write_text("data: " + "{a: " * DEEP + "1" + "}" * DEEP + "\nnetwork: {name: x}\n")
    code, _, err = run_cli(capsys, "check", path)
    line = one_line_error(code, err)
    assert "deep.yaml" in line and "nested too deeply" in line, line
    path.write_text("data: " + "{a: " * 300 + "1" + "}" * 300 + "\nnetwork: {name: x}\n")
    code, _, err = run_cli(capsys, "check", path)
    assert "deep.yaml: section 'data' nests" in one_line_error(code, err)


# -- threads ---------------------------------------------------------------------------------
@pytest.mark.parametrize("threads", [100_000, MAX_THREADS + 1, 10**30])
def test_absurd_threads_are_refused_at_parse_time(capsys, cfg_file, threads):
    code, _, err = run_cli(capsys, "check", cfg_file, f"threads={threads}")
    line = one_line_error(code, err)
    assert f"threads must be an integer >= 1 and <= {MAX_THREADS}" in line, line
    assert "data" not in line, line


def test_threads_above_the_cpu_count_are_capped_with_a_warning(
    tiny_config_dict, monkeypatch, caplog
):
    monkeypatch.setattr(context, "usable_cpu_count", lambda: 2)
    before = torch.get_num_threads()
    try:
        with caplog.at_level(logging.WARNING, logger="manifold_nas"):
            assert apply_threads(parse_config({**tiny_config_dict, "threads": MAX_THREADS})) == 2
            assert torch.get_num_threads() == 2
        (record,) = [r for r in caplog.records if r.name == "manifold_nas"]
        assert (
            record.getMessage()
            == f"threads={MAX_THREADS} exceeds the 2 CPU(s) of this machine; using 2"
        )
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="manifold_nas"):
            assert apply_threads(parse_config({**tiny_config_dict, "threads": 1})) == 1
        assert not caplog.records
    finally:
        torch.set_num_threads(before)


# -- devices -----------------------------------------------------------------------------------
@pytest.mark.parametrize("device", ["tpu", "CUDA", "cuda:-1", "cuda:x", "", 5])
def test_a_device_torch_cannot_read_is_refused_at_parse_time(tiny_config_dict, device):
    with pytest.raises(UserInputError, match="^config key device must be a"):
        parse_config({**tiny_config_dict, "device": device})


def test_device_tpu_names_the_device(capsys, cfg_file):
    code, _, err = run_cli(capsys, "check", cfg_file, "device=tpu")
    assert "config key device must be a torch device" in one_line_error(code, err)


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
@pytest.mark.parametrize("device", ["cuda", "cuda:0"])
def test_cuda_without_a_gpu_names_the_device(capsys, cfg_file, device):
    code, _, err = run_cli(capsys, "check", cfg_file, f"device={device}")
    line = one_line_error(code, err)
    assert f"device '{device}' is not available: " in line, line
    reason = "torch.version.cuda is None" if torch.version.cuda is None else "no GPU visible"
    assert reason in line, line


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_the_rank_gpu_under_torchrun_is_checked_too():
    with pytest.raises(UserInputError, match="^device 'cuda:1' is not available"):
        device_for("cuda", World(rank=1, size=2, local_rank=1))
    assert device_for("cpu", World(rank=1, size=2, local_rank=1)) == "cpu"


def test_a_gpu_index_past_the_visible_ones_is_refused():
    with pytest.raises(UserInputError, match="^device 'cuda:999' is not available"):
        check_device("cuda:999")


@pytest.mark.skipif(torch.backends.mps.is_available(), reason="MPS is available here")
def test_mps_without_mps_names_the_device():
    with pytest.raises(UserInputError, match="^device 'mps' is not available: "):
        check_device("mps")


def test_a_device_manifold_nas_cannot_run_on_is_refused(capsys, cfg_file):
    code, _, err = run_cli(capsys, "check", cfg_file, "device=meta")
    assert "device 'meta' is not supported" in one_line_error(code, err)
    check_device("cpu")
    check_device("cpu:0")


# -- fuzzed budgets of the multi-trial strategies ----------------------------------------------
def _budget_cases():
    cases = []
    for name, cls in (("evolution", RegularizedEvolution), ("random", RandomSearch)):
        for option, parameter in inspect.signature(cls.__init__).parameters.items():
            default = parameter.default
            numeric = isinstance(default, (int, float)) and not isinstance(default, bool)
            if numeric or option == "max_parameters":
                cases.append((name, option))
    return cases


@pytest.mark.parametrize(("name", "option"), _budget_cases())
def test_a_zero_negative_or_huge_budget_ends_in_one_line_or_works(name, option, capsys, cfg_file):
    for value in ("0", "-1", "-1.0e+300", "1.0e+300", "1e300", str(10**30), "2.5"):
        code, _, err = run_cli(
            capsys, "check", cfg_file, f"strategy.name={name}", f"strategy.{option}={value}"
        )
        clean_outcome(code, err)
