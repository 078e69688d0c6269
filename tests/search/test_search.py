"""The bilevel strategy: reproducible, resumable, pinned to its pre-strategy-layer results."""

import json

import pytest
import torch
from support import (
    REPO,
    TINY_SPD,
    install_plugin,
    logged,
    read_records,
    search_killed_when,
    without_seconds,
)

from manifold_nas.config import parse_config
from manifold_nas.cost.measure import count_parameters
from manifold_nas.run.context import Run, build_network
from manifold_nas.run.retrain import train_derived
from manifold_nas.search import build_strategy, search
from manifold_nas.space.cell import ChosenEdge
from manifold_nas.space.genotype import Genotype
from manifold_nas.space.opset import OPSETS, OpSpec
from manifold_nas.space.relaxations import RELAXATIONS
from manifold_nas.strategies.bilevel.strategy import BilevelStrategy

REFERENCE = REPO / "tests" / "data" / "bilevel_reference.json"


def bilevel(config_dict):
    config = parse_config(config_dict)
    run = Run(config, quiet=True)
    strategy = build_strategy(config)
    assert isinstance(strategy, BilevelStrategy)
    strategy.setup(run)
    return run, strategy


def arch_state(strategy):
    return {k: v.detach().clone() for k, v in strategy.supernet.arch.alphas.items()}


#: how far float32 alphas may move between CPUs: oneDNN picks ISA-specific convolution
#: kernels whose sums round differently (measured on an AMD EPYC against the recording
#: machine: 3e-9 first order, 2e-5 second order, where the finite-difference Hessian
#: term divides by its small step). The float64 SPD case and every genotype are exact.
ALPHA_TOLERANCE = {"vision": 1e-7, "vision_second": 1e-4, "spd": 0.0}


@pytest.mark.parametrize("case", ["vision", "vision_second", "spd"])
def test_bilevel_reproduces_the_alphas_and_genotype_of_the_code_before_strategies(case, tmp_path):
    # Recorded with the pre-strategy-layer SearchRun on the same seeds (one thread).
    reference = json.loads(REFERENCE.read_text())[case]
    result = search(parse_config(reference["config"]), tmp_path, quiet=True)
    assert result.genotype.to_dict()["cells"] == reference["cells"]
    for name, alphas in result.strategy.supernet.arch.alphas.items():
        expected = torch.tensor(reference["alphas"][name], dtype=torch.float64)
        found = alphas.detach().double()
        assert torch.equal(found, expected) or (
            torch.allclose(found, expected, rtol=0.0, atol=ALPHA_TOLERANCE[case])
        ), float((found - expected).abs().max())


def test_same_seed_gives_identical_architecture_parameters(tiny_config_dict):
    (run_a, first), (run_b, second) = bilevel(tiny_config_dict), bilevel(tiny_config_dict)
    first.train_epoch(run_a)
    second.train_epoch(run_b)
    for name, value in arch_state(first).items():
        assert torch.equal(value, arch_state(second)[name])


def test_different_seeds_give_different_architecture_parameters(tiny_config_dict):
    run_a, a = bilevel(tiny_config_dict)
    run_b, b = bilevel(dict(tiny_config_dict, seed=1))
    a.train_epoch(run_a)
    b.train_epoch(run_b)
    assert not torch.equal(arch_state(a)["normal"], arch_state(b)["normal"])


def test_search_writes_the_run_directory(tiny_config_dict, tmp_path):
    result = search(parse_config(tiny_config_dict), tmp_path, quiet=True)
    for name in ("config.yaml", "metrics.jsonl", "checkpoint.pt", "genotype.json", "summary.json"):
        assert (tmp_path / name).is_file(), name
    assert Genotype.load(tmp_path / "genotype.json") == result.genotype
    epochs = [
        r
        for r in map(json.loads, (tmp_path / "metrics.jsonl").read_text().splitlines())
        if r["type"] == "epoch"
    ]
    assert [r["epoch"] for r in epochs] == [0, 1]
    assert set(epochs[-1]["probabilities"]) == {"normal", "reduce"}
    assert "mean_entropy" in epochs[-1] and "parameter_free" in epochs[-1]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["strategy"] == "bilevel" and "accuracy" in summary["final"]
    assert summary["parameters"]["derived"] < summary["parameters"]["supernet_weights"]
    assert not list(tmp_path.glob(".*lock*")), "the lock is released after the search"


def test_genotype_round_trips_through_json(tmp_path):
    genotype = Genotype(
        opset="darts",
        cells={"normal": (ChosenEdge("sep_conv_3x3", 0, 2), ChosenEdge("skip_connect", 1, 2))},
        ops={"normal": ("none", "sep_conv_3x3", "skip_connect")},
        probabilities={"normal": ((0.1, 0.5, 0.4),)},
        config={"seed": 3},
    )
    genotype.save(tmp_path / "g.json")
    assert Genotype.load(tmp_path / "g.json") == genotype


def test_derived_network_has_exactly_the_chosen_ops_parameters(tiny_config_dict):
    cfg = parse_config(tiny_config_dict)
    bundle = Run(cfg).bundle
    cells = {
        "normal": (
            ChosenEdge("sep_conv_3x3", 0, 2),
            ChosenEdge("skip_connect", 1, 2),
            ChosenEdge("dil_conv_5x5", 0, 3),
            ChosenEdge("max_pool_3x3", 2, 3),
        ),
        "reduce": (
            ChosenEdge("sep_conv_5x5", 0, 2),
            ChosenEdge("avg_pool_3x3", 1, 2),
            ChosenEdge("skip_connect", 1, 3),
            ChosenEdge("dil_conv_3x3", 2, 3),
        ),
    }
    genotype = Genotype("darts", cells)
    network, opset = build_network(cfg, bundle, genotype)
    expected = count_parameters(network.stem) + count_parameters(network.head)
    for cell in network.cells:
        expected += sum(count_parameters(p) for p in cell.preprocess)
        for edge, op in zip(cell.chosen, cell.ops):
            stride = 2 if cell.cell_type == "reduce" and edge.source < 2 else 1
            c = cell.preprocess[1][1].out_channels
            reference = opset.build(edge.op, OpSpec(c, c, stride, {"affine": True}))
            assert count_parameters(op) == count_parameters(reference)
            expected += count_parameters(reference)
    assert count_parameters(network) == expected
    assert network(torch.randn(2, 1, 8, 8)).shape == (2, 10)


def test_train_derived_reports_test_metrics(tiny_config_dict, tmp_path):
    cfg = parse_config(tiny_config_dict)
    genotype = search(cfg, tmp_path, quiet=True).genotype
    summary = train_derived(genotype, cfg, tmp_path / "retrain", quiet=True)
    assert 0.0 <= summary["test"]["accuracy"] <= 1.0
    assert (tmp_path / "retrain" / "train_summary.json").is_file()


@pytest.mark.parametrize("relaxation", RELAXATIONS.list())
def test_search_runs_end_to_end_with_every_registered_relaxation(
    tiny_config_dict, tmp_path, relaxation
):
    tiny_config_dict["relaxation"] = {"name": relaxation}
    tiny_config_dict["search"]["epochs"] = 1
    if relaxation in ("simplex", "sphere"):
        tiny_config_dict["strategy"] = {
            "name": "bilevel",
            "arch_optimizer": {"name": "riemannian_sgd", "lr": 0.1},
        }
    result = search(parse_config(tiny_config_dict), tmp_path, quiet=True)
    assert all(len(edges) == 4 for edges in result.genotype.cells.values())
    for rows in result.genotype.probabilities.values():
        for row in rows:
            assert abs(sum(row) - 1.0) < 1e-4 and min(row) >= 0.0


def test_second_order_search_with_partial_channels(tiny_config_dict, tmp_path):
    tiny_config_dict["search"].update(epochs=1, max_steps_per_epoch=2)
    tiny_config_dict["strategy"] = {"name": "bilevel", "order": "second"}
    tiny_config_dict["network"]["partial_channels"] = 2
    genotype = search(parse_config(tiny_config_dict), tmp_path, quiet=True).genotype
    assert genotype.opset == "darts"


def test_perturbation_selection_projects_every_edge(tiny_config_dict, tmp_path):
    tiny_config_dict["search"]["epochs"] = 1
    tiny_config_dict["data"]["test_fraction"] = 0.8
    tiny_config_dict["selection"] = {"name": "perturbation", "finetune_epochs": 0}
    genotype = search(parse_config(tiny_config_dict), tmp_path, quiet=True).genotype
    for name, edges in genotype.cells.items():
        targets = [e.target for e in edges]
        assert all(targets.count(t) == 2 for t in set(targets)), name
        assert all(e.op != "none" for e in edges)


def all_tensors(strategy):
    tensors = dict(strategy.supernet.state_dict())
    for name in ("weight_optimizer", "arch_optimizer"):
        for index, state in getattr(strategy, name).state_dict()["state"].items():
            for key, value in state.items():
                tensors[f"{name}.{index}.{key}"] = value
    return tensors


def assert_bit_identical(a, b):
    ta, tb = all_tensors(a), all_tensors(b)
    assert ta.keys() == tb.keys()
    for key, value in ta.items():
        other = tb[key]
        if isinstance(value, torch.Tensor):
            assert value.dtype == other.dtype and torch.equal(value, other), key
        else:
            assert type(value) is type(other) and value == other, key


@pytest.mark.parametrize("case", ["vision", "spd"])
def test_resume_after_sigkill_matches_an_uninterrupted_run_bit_for_bit(
    tiny_config_dict, tmp_path, case
):
    if case == "vision":
        config_dict = tiny_config_dict
        config_dict["search"].update(epochs=3, max_steps_per_epoch=6)
    else:
        config_dict = TINY_SPD
    reference = search(parse_config(config_dict), tmp_path / "reference", quiet=True)
    out = search_killed_when(
        config_dict, tmp_path, lambda out: logged(out, '"epoch": 1, "step": 1')
    )
    assert (out / "checkpoint.pt").exists() and not (out / "genotype.json").exists()

    resumed = search(parse_config(config_dict), out, resume=True, quiet=True)
    assert resumed.strategy.epoch == config_dict["search"]["epochs"]
    assert resumed.genotype.cells == reference.genotype.cells
    assert_bit_identical(reference.strategy, resumed.strategy)
    lines = read_records(out)
    assert [r["epoch"] for r in lines if r["type"] == "epoch"] == [0, 1, 2]
    assert without_seconds(lines) == without_seconds(read_records(tmp_path / "reference"))


def test_opset_from_an_installed_entry_point_is_found_and_searched(
    tiny_config_dict, tmp_path, monkeypatch
):
    package = install_plugin(
        tmp_path / "site",
        "my_tiny_ops",
        """
        from torch import nn
        from manifold_nas.space.opset import OpSet
        from manifold_nas.domains.vision.ops import Zero, FactorizedReduce

        def conv(spec):
            return nn.Conv2d(spec.c_in, spec.c_out, 3, spec.stride, 1)

        def skip(spec):
            return nn.Identity() if spec.stride == 1 else FactorizedReduce(spec.c_in, spec.c_out)

        OPSET = OpSet("tiny_plugin", {"none": lambda s: Zero(s.c_in, s.c_out, s.stride), "conv": conv, "skip": skip}, zero="none")
        """,
        {"manifold_nas.opsets": {"tiny_plugin": "my_tiny_ops:OPSET"}},
    )
    monkeypatch.syspath_prepend(str(package))
    OPSETS.reload_entry_points()
    try:
        assert "tiny_plugin" in OPSETS.list()
        tiny_config_dict["network"]["opset"] = "tiny_plugin"
        tiny_config_dict["search"]["epochs"] = 1
        genotype = search(parse_config(tiny_config_dict), tmp_path / "run", quiet=True).genotype
        assert genotype.opset == "tiny_plugin"
        assert {e.op for edges in genotype.cells.values() for e in edges} <= {"conv", "skip"}
    finally:
        OPSETS.unregister("tiny_plugin")


def test_hessian_eigenvalue_is_logged_per_epoch(tiny_config_dict):
    tiny_config_dict["search"]["epochs"] = 1
    tiny_config_dict["strategy"] = {"name": "bilevel", "hessian_eigenvalue": True}
    run, strategy = bilevel(tiny_config_dict)
    strategy.train_epoch(run)
    value = strategy.history[-1]["hessian_eigenvalue"]
    assert isinstance(value, float) and value == value


def test_cost_penalty_enters_the_architecture_loss_only_above_budget():
    from manifold_nas.space.cell import ArchSpec
    from manifold_nas.space.relaxations import SoftmaxRelaxation
    from manifold_nas.space.supernet import ArchitectureParameters, Supernet

    class Costly(torch.nn.Module):
        arch_specs = {"cells": ArchSpec(("cheap", "dear"), ((0, 1),), n_inputs=1, keep=1)}

        def cost_penalty(self, arch_weights, budget, weight=1.0):
            cost = (arch_weights["cells"] * torch.tensor([1.0, 10.0])).sum()
            return weight * torch.relu(cost / budget - 1.0)

    net = Costly()
    arch = ArchitectureParameters(net.arch_specs, SoftmaxRelaxation())
    generous = Supernet(net, arch, lambda w: net.cost_penalty(w, budget=100.0))
    tight = Supernet(net, arch, lambda w: net.cost_penalty(w, budget=2.0))
    assert float(generous.regularizer().detach()) == 0.0
    penalty = tight.regularizer()
    penalty.backward()
    alpha = next(tight.arch_parameters())
    assert float(penalty.detach()) > 0 and alpha.grad[0, 1] > 0 > alpha.grad[0, 0]
