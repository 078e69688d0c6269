"""The search loop: reproducible, resumable, and producing a rebuildable genotype."""

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
import yaml

from manifold_nas.cell import ChosenEdge
from manifold_nas.config import parse_config
from manifold_nas.genotype import Genotype
from manifold_nas.opset import OPSETS, OpSpec
from manifold_nas.search import SearchRun, build_data, build_network, count_parameters
from manifold_nas.training import train_derived

REPO = Path(__file__).resolve().parents[1]


def arch_state(run):
    return {k: v.detach().clone() for k, v in run.supernet.arch.alphas.items()}


def test_same_seed_gives_identical_architecture_parameters(tiny_config_dict, tmp_path):
    cfg = parse_config(tiny_config_dict)
    first, second = (
        SearchRun(cfg, tmp_path / "a", quiet=True),
        SearchRun(cfg, tmp_path / "b", quiet=True),
    )
    first.train_epoch()
    second.train_epoch()
    for name, value in arch_state(first).items():
        assert torch.equal(value, arch_state(second)[name])


def test_different_seeds_give_different_architecture_parameters(tiny_config_dict, tmp_path):
    other = dict(tiny_config_dict, seed=1)
    a = SearchRun(parse_config(tiny_config_dict), tmp_path / "a", quiet=True)
    b = SearchRun(parse_config(other), tmp_path / "b", quiet=True)
    a.train_epoch()
    b.train_epoch()
    assert not torch.equal(arch_state(a)["normal"], arch_state(b)["normal"])


def test_search_writes_the_run_directory(tiny_config_dict, tmp_path):
    run = SearchRun(parse_config(tiny_config_dict), tmp_path, quiet=True)
    genotype = run.run()
    for name in ("config.yaml", "metrics.jsonl", "checkpoint.pt", "genotype.json"):
        assert (tmp_path / name).is_file(), name
    assert Genotype.load(tmp_path / "genotype.json") == genotype
    epochs = [
        r
        for r in map(yaml.safe_load, (tmp_path / "metrics.jsonl").read_text().splitlines())
        if r["type"] == "epoch"
    ]
    assert [r["epoch"] for r in epochs] == [0, 1]
    assert set(epochs[-1]["probabilities"]) == {"normal", "reduce"}
    assert "mean_entropy" in epochs[-1] and "parameter_free" in epochs[-1]


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
    bundle = build_data(cfg)
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
    genotype = SearchRun(cfg, tmp_path, quiet=True).run()
    summary = train_derived(genotype, cfg, tmp_path / "retrain", quiet=True)
    assert 0.0 <= summary["test"]["accuracy"] <= 1.0
    assert (tmp_path / "retrain" / "train_summary.json").is_file()


@pytest.mark.parametrize("relaxation", ["gumbel", "dirichlet", "sigmoid", "sparsemax"])
def test_search_runs_with_every_relaxation(tiny_config_dict, tmp_path, relaxation):
    tiny_config_dict["relaxation"] = {"name": relaxation}
    tiny_config_dict["search"]["epochs"] = 1
    genotype = SearchRun(parse_config(tiny_config_dict), tmp_path, quiet=True).run()
    assert all(len(edges) == 4 for edges in genotype.cells.values())


def test_second_order_search_with_partial_channels(tiny_config_dict, tmp_path):
    tiny_config_dict["search"].update(epochs=1, order="second", max_steps_per_epoch=2)
    tiny_config_dict["network"]["partial_channels"] = 2
    genotype = SearchRun(parse_config(tiny_config_dict), tmp_path, quiet=True).run()
    assert genotype.opset == "darts"


def test_perturbation_selection_projects_every_edge(tiny_config_dict, tmp_path):
    tiny_config_dict["search"]["epochs"] = 1
    tiny_config_dict["data"]["test_fraction"] = 0.8
    tiny_config_dict["selection"] = {"name": "perturbation", "finetune_epochs": 0}
    run = SearchRun(parse_config(tiny_config_dict), tmp_path, quiet=True)
    genotype = run.run()
    for name, edges in genotype.cells.items():
        targets = [e.target for e in edges]
        assert all(targets.count(t) == 2 for t in set(targets)), name
        assert all(e.op != "none" for e in edges)


KILL_SCRIPT = textwrap.dedent(
    """
    import sys, yaml
    from manifold_nas.config import parse_config
    from manifold_nas.search import SearchRun
    cfg = parse_config(yaml.safe_load(open(sys.argv[1])))
    run = SearchRun(cfg, sys.argv[2], quiet=True)
    run.resume()
    run.run()
    """
)


def test_resume_after_sigkill_matches_an_uninterrupted_run(tiny_config_dict, tmp_path):
    tiny_config_dict["search"].update(epochs=3, max_steps_per_epoch=6)
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump(tiny_config_dict))
    reference = SearchRun(parse_config(tiny_config_dict), tmp_path / "reference", quiet=True)
    expected = reference.run()

    out = tmp_path / "killed"
    script = tmp_path / "search.py"
    script.write_text(KILL_SCRIPT)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(
        [sys.executable, str(script), str(cfg_path), str(out)], cwd=REPO, env=env
    )
    metrics = out / "metrics.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if metrics.exists() and '"epoch": 1, "step": 2' in metrics.read_text():
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.02)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the search finished before it could be killed"
    assert (out / "checkpoint.pt").exists() and not (out / "genotype.json").exists()

    resumed = SearchRun(parse_config(tiny_config_dict), out, quiet=True)
    assert resumed.resume() and resumed.epoch == 1
    genotype = resumed.run()
    assert genotype.cells == expected.cells
    for name, value in arch_state(reference).items():
        assert torch.equal(value, arch_state(resumed)[name])
    lines = [yaml.safe_load(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines if r["type"] == "epoch"] == [0, 1, 2]


def test_opset_from_an_installed_entry_point_is_found_and_searched(
    tiny_config_dict, tmp_path, monkeypatch
):
    package = tmp_path / "site"
    package.mkdir()
    (package / "my_tiny_ops.py").write_text(
        textwrap.dedent(
            """
        from torch import nn
        from manifold_nas.opset import OpSet
        from domains.vision.ops import Zero, FactorizedReduce

        def conv(spec):
            return nn.Conv2d(spec.c_in, spec.c_out, 3, spec.stride, 1)

        def skip(spec):
            return nn.Identity() if spec.stride == 1 else FactorizedReduce(spec.c_in, spec.c_out)

        OPSET = OpSet("tiny_plugin", {"none": lambda s: Zero(s.c_in, s.c_out, s.stride), "conv": conv, "skip": skip}, zero="none")
        """
        )
    )
    dist = package / "my_tiny_ops-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: my-tiny-ops\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(
        "[manifold_nas.opsets]\ntiny_plugin = my_tiny_ops:OPSET\n"
    )
    monkeypatch.syspath_prepend(str(package))
    monkeypatch.setattr(OPSETS, "_entry_points_loaded", False)
    assert "tiny_plugin" in OPSETS.list()
    tiny_config_dict["network"]["opset"] = "tiny_plugin"
    tiny_config_dict["search"]["epochs"] = 1
    genotype = SearchRun(parse_config(tiny_config_dict), tmp_path / "run", quiet=True).run()
    assert genotype.opset == "tiny_plugin"
    assert {e.op for edges in genotype.cells.values() for e in edges} <= {"conv", "skip"}
    monkeypatch.delitem(OPSETS._items, "tiny_plugin")


def test_hessian_eigenvalue_is_logged_per_epoch(tiny_config_dict, tmp_path):
    tiny_config_dict["search"].update(epochs=1, hessian_eigenvalue=True)
    run = SearchRun(parse_config(tiny_config_dict), tmp_path, quiet=True)
    run.train_epoch()
    value = run.history[-1]["hessian_eigenvalue"]
    assert isinstance(value, float) and value == value


def test_cost_penalty_enters_the_architecture_loss_only_above_budget():
    from manifold_nas.cell import ArchSpec
    from manifold_nas.relaxations import SoftmaxRelaxation
    from manifold_nas.supernet import ArchitectureParameters, Supernet

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
