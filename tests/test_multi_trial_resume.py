"""Multi-trial searches are reproducible: after a SIGKILL and resume, and on Ray as locally."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

from manifold_nas.checkpoint import load_checkpoint
from manifold_nas.config import parse_config
from manifold_nas.search import search

REPO = Path(__file__).resolve().parents[1]

OPTIONS = {
    "name": "evolution",
    "trials": 6,
    "population": 2,
    "sample": 2,
    "epochs": 2,
    "batch": 2,
    "early_stopping": {"name": "asha", "reduction_factor": 2},
}

KILL_SCRIPT = textwrap.dedent(
    """
    import sys, yaml
    from manifold_nas.config import parse_config
    from manifold_nas.search import search
    search(parse_config(yaml.safe_load(open(sys.argv[1]))), sys.argv[2], resume=True, quiet=True)
    """
)


def without_seconds(records):
    return [{k: v for k, v in r.items() if not k.endswith("seconds")} for r in records]


def read_records(path):
    return [json.loads(line) for line in (Path(path) / "metrics.jsonl").read_text().splitlines()]


def test_evolution_resumes_after_sigkill_mid_batch_to_the_same_trials(tiny_config_dict, tmp_path):
    tiny_config_dict["strategy"] = OPTIONS
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
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        # the checkpoint after trial 2, the first of the second batch: kill while trial 3 trains
        if (out / "checkpoint.pt").exists() and load_checkpoint(out / "checkpoint.pt")[
            "progress"
        ] == "after trial 3 (4 of 6 trained)":
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.01)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the search finished before it could be killed"
    batch = load_checkpoint(out / "checkpoint.pt")["strategy_state"]["batch"]
    assert [entry["record"] is not None for entry in batch] == [True, False], "not mid-batch"

    resumed = search(parse_config(tiny_config_dict), out, resume=True, quiet=True)
    assert without_seconds(resumed.strategy.trials) == without_seconds(reference.strategy.trials)
    assert resumed.genotype.cells == reference.genotype.cells
    assert resumed.strategy.population == reference.strategy.population
    assert without_seconds(read_records(out)) == without_seconds(
        read_records(tmp_path / "reference")
    )


def test_local_and_ray_backends_give_the_same_trials_for_the_same_seed(tiny_config_dict, tmp_path):
    pytest.importorskip("ray")
    tiny_config_dict["strategy"] = OPTIONS
    local = search(parse_config(tiny_config_dict), tmp_path / "local", quiet=True)
    tiny_config_dict["search"]["backend"] = "ray"
    ray_run = search(parse_config(tiny_config_dict), tmp_path / "ray", quiet=True)
    assert ray_run.summary["backend"] == "ray" and local.summary["backend"] == "local"
    assert any(t["status"] == "stopped" for t in local.strategy.trials)
    assert without_seconds(ray_run.strategy.trials) == without_seconds(local.strategy.trials)
    assert without_seconds(read_records(tmp_path / "ray")) == without_seconds(
        read_records(tmp_path / "local")
    )
    assert ray_run.genotype.cells == local.genotype.cells
