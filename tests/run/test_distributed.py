"""Data-parallel search under torchrun: 2 processes equal 1 with the doubled batch.

The network here has no batch norm (batch norm is local to each process,
so it would make the two runs differ by design); the plugin op set and
network are installed through entry points, as a user's would be, so the
processes torchrun starts find them too.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
import yaml
from support import REPO, install_plugin

from manifold_nas.config import parse_config
from manifold_nas.search import search

#: float32 sums over two shards of a batch differ from one sum over the batch by rounding
TOLERANCE = 1e-5

PLUGIN = textwrap.dedent(
    """
    from torch import nn

    from manifold_nas.space.cell import SearchCell, DerivedCell, cell_arch_spec, cell_edge_specs
    from manifold_nas.space.opset import OpSet

    def conv(spec):
        return nn.Sequential(nn.ReLU(), nn.Conv2d(spec.c_in, spec.c_out, 3, spec.stride, 1))

    def pool(spec):
        return nn.AvgPool2d(3, spec.stride, 1, count_include_pad=False)

    OPSET = OpSet("nobn", {"conv": conv, "pool": pool, "skip": lambda s: nn.Identity()},
                  parameter_free=frozenset({"pool", "skip"}))

    class Net(nn.Module):
        def __init__(self, opset, data, genotype=None, channels: int = 6):
            super().__init__()
            spec = cell_arch_spec(opset.op_names, n_inputs=1, n_nodes=2, keep=1)
            self.arch_specs = {"cell": spec}
            self.stem = nn.Conv2d(data.sample_shape[0], channels, 3, padding=1)
            edges = cell_edge_specs(spec, channels, reduction=False)
            if genotype is None:
                self.cell = SearchCell(opset, spec, edges, "cell")
            else:
                self.cell = DerivedCell(opset, spec, edges, genotype.cells["cell"], "cell")
            self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                      nn.Linear(2 * channels, data.num_classes))

        def forward(self, x, arch_weights=None):
            w = None if arch_weights is None else arch_weights["cell"]
            return self.head(self.cell((self.stem(x),), w))

    def build(opset, data, genotype=None, channels: int = 6):
        return Net(opset, data, genotype, channels)
    """
)


@pytest.fixture(scope="module")
def plugin(tmp_path_factory):
    return install_plugin(
        tmp_path_factory.mktemp("site"),
        "nobn_plugin",
        PLUGIN,
        {
            "manifold_nas.opsets": {"nobn": "nobn_plugin:OPSET"},
            "manifold_nas.networks": {"nobn_net": "nobn_plugin:build"},
        },
    )


def config(batch_size: int, epochs: int = 2, steps: int = 4) -> dict:
    return {
        "seed": 3,
        "threads": 1,
        "data": {"name": "digits"},
        "network": {"name": "nobn_net", "opset": "nobn"},
        "search": {
            "epochs": epochs,
            "batch_size": batch_size,
            "max_steps_per_epoch": steps,
            "weight_optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9},
        },
        "strategy": {
            "name": "bilevel",
            "arch_optimizer": {"name": "adam", "lr": 0.05, "betas": [0.5, 0.999]},
        },
        "train": {"epochs": 1},
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(plugin: Path, cfg: Path, out: Path, *extra: str, nproc: int = 2) -> subprocess.Popen:
    env = dict(
        os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(plugin), str(REPO)])
    )
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            f"--nproc_per_node={nproc}",
            "--master_addr=127.0.0.1",
            f"--master_port={free_port()}",
            "-m",
            "manifold_nas.cli",
            "search",
            str(cfg),
            "--out",
            str(out),
            "--quiet",
            *extra,
        ],  # fmt: skip
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def kill_everything_writing_to(out: Path) -> None:
    """SIGKILL torchrun and its workers (which run in sessions of their own)."""
    for proc_dir in Path("/proc").iterdir():
        try:
            if str(out) in (proc_dir / "cmdline").read_bytes().decode(errors="replace"):
                os.kill(int(proc_dir.name), signal.SIGKILL)
        except (OSError, ValueError):
            continue


def alphas(out: Path) -> dict[str, torch.Tensor]:
    state = torch.load(out / "checkpoint.pt", weights_only=True)["strategy_state"]["supernet"]
    return {k: v for k, v in state.items() if k.startswith("arch.alphas")}


def reference(plugin, monkeypatch, tmp_path, cfg_dict):
    from manifold_nas.space.networks import NETWORKS
    from manifold_nas.space.opset import OPSETS

    monkeypatch.syspath_prepend(str(plugin))
    OPSETS.reload_entry_points()
    NETWORKS.reload_entry_points()
    try:
        return search(parse_config(cfg_dict), tmp_path / "one", quiet=True)
    finally:
        OPSETS.unregister("nobn")
        NETWORKS.unregister("nobn_net")


def test_two_processes_take_the_architecture_steps_of_one_with_the_doubled_batch(
    plugin, tmp_path, monkeypatch
):
    one = reference(plugin, monkeypatch, tmp_path, config(batch_size=32))
    cfg = tmp_path / "two.yaml"
    cfg.write_text(yaml.safe_dump(config(batch_size=16)))
    out = tmp_path / "two"
    proc = torchrun(plugin, cfg, out)
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr[-3000:]

    ours, theirs = alphas(out), alphas(tmp_path / "one")
    assert ours.keys() == theirs.keys()
    for name, value in theirs.items():
        assert torch.allclose(ours[name], value, atol=TOLERANCE, rtol=0), (
            name,
            (ours[name] - value).abs().max(),
        )
    assert not torch.equal(ours["arch.alphas.cell"], torch.zeros_like(ours["arch.alphas.cell"]))
    # rank 0 alone wrote: one copy of every record, one genotype, no lock left
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records if r["type"] == "epoch"] == [0, 1]
    assert len([r for r in records if r["type"] == "step"]) == 2 * 4
    assert (
        json.loads((out / "genotype.json").read_text())["cells"] == one.genotype.to_dict()["cells"]
    )
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["config.yaml", "metrics.jsonl", "checkpoint.pt", "genotype.json", "summary.json"]
    )
    assert stdout.count("search finished") == 1, "only rank 0 reports"


def test_two_processes_resume_after_a_kill_to_the_uninterrupted_result(plugin, tmp_path):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(config(batch_size=16, epochs=3, steps=30)))
    whole = torchrun(plugin, cfg, tmp_path / "whole")
    _, stderr = whole.communicate(timeout=600)
    assert whole.returncode == 0, stderr[-3000:]

    out = tmp_path / "killed"
    proc = torchrun(plugin, cfg, out)
    metrics = out / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if metrics.exists() and '"epoch": 1, "step": 5' in metrics.read_text():
            kill_everything_writing_to(out)
            break
        time.sleep(0.02)
    proc.communicate(timeout=60)
    assert (out / "checkpoint.pt").exists() and not (out / "genotype.json").exists()

    resumed = torchrun(plugin, cfg, out, "--resume")
    _, stderr = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, stderr[-3000:]
    for name, value in alphas(tmp_path / "whole").items():
        assert torch.equal(alphas(out)[name], value), name


def test_a_strategy_without_data_parallel_support_is_refused_under_torchrun(plugin, tmp_path):
    raw = config(batch_size=16)
    raw["strategy"] = {"name": "random", "trials": 2, "epochs": 1}
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    proc = torchrun(plugin, cfg, tmp_path / "run")
    _, stderr = proc.communicate(timeout=600)
    assert proc.returncode != 0
    # rank 0 says it in one line, the other ranks stay silent; torchrun then reports the
    # failed workers its own way (a child cannot silence the launcher)
    assert stderr.count("does not run data-parallel under torchrun") == 1
    assert f'File "{REPO / "manifold_nas"}' not in stderr


def test_a_single_process_search_never_initialises_torch_distributed(tiny_config_dict, tmp_path):
    search(parse_config(tiny_config_dict), tmp_path, quiet=True)
    assert not torch.distributed.is_initialized()


def test_the_shards_of_one_process_are_the_shuffling_loaders_order():
    from torch.utils.data import DataLoader

    from manifold_nas.run.distributed import ShardedSampler

    loader = DataLoader(list(range(23)), batch_size=4, shuffle=True,
                        generator=torch.Generator().manual_seed(5))  # fmt: skip
    order = [int(i) for batch in loader for i in batch]
    assert list(ShardedSampler(23, 5, 0, 1)) == order
    shards = [list(ShardedSampler(23, 5, rank, 2)) for rank in (0, 1)]
    assert len(shards[0]) == len(shards[1]) == 12
    assert sorted(shards[0][:11] + shards[1][:11]) == sorted(order[:22])
    assert [shards[r][k] for k in range(3) for r in (0, 1)] == order[:6]


def test_two_processes_retrain_to_the_weights_of_one_with_the_doubled_batch(
    plugin, tmp_path, monkeypatch
):
    from manifold_nas.run.retrain import train_derived
    from manifold_nas.space.genotype import Genotype
    from manifold_nas.space.networks import NETWORKS
    from manifold_nas.space.opset import OPSETS

    raw = config(batch_size=16)
    raw["train"] = {"epochs": 2, "batch_size": 32, "max_steps_per_epoch": 5,
                    "optimizer": {"name": "sgd", "lr": 0.05}}  # fmt: skip
    monkeypatch.syspath_prepend(str(plugin))
    OPSETS.reload_entry_points()
    NETWORKS.reload_entry_points()
    try:
        genotype = search(parse_config(raw), tmp_path / "run", quiet=True).genotype
        one = tmp_path / "one"
        train_derived(genotype, parse_config(raw), one, quiet=True)
    finally:
        OPSETS.unregister("nobn")
        NETWORKS.unregister("nobn_net")
    raw["train"]["batch_size"] = 16
    Genotype(genotype.opset, genotype.cells, config=raw).save(tmp_path / "g.json")
    env = dict(
        os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(plugin), str(REPO)])
    )
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node=2",
            "--master_addr=127.0.0.1",
            f"--master_port={free_port()}",
            "-m",
            "manifold_nas.cli",
            "train",
            str(tmp_path / "g.json"),
            "--out",
            str(tmp_path / "two"),
            "--quiet",
        ],  # fmt: skip
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    ours = torch.load(tmp_path / "two" / "model.pt", weights_only=True)
    theirs = torch.load(one / "model.pt", weights_only=True)
    for name, value in theirs.items():
        assert torch.allclose(ours[name], value, atol=TOLERANCE, rtol=0), name
