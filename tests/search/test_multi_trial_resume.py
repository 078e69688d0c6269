"""Multi-trial searches are reproducible: after a SIGKILL and resume, and on Ray as locally."""

import pytest
from support import read_records, search_killed_when, without_seconds

from manifold_nas.config import parse_config
from manifold_nas.run.checkpoint import load_checkpoint
from manifold_nas.search import search

OPTIONS = {
    "name": "evolution",
    "trials": 6,
    "population": 2,
    "sample": 2,
    "epochs": 2,
    "batch": 2,
    "early_stopping": {"name": "asha", "reduction_factor": 2},
}


def test_evolution_resumes_after_sigkill_mid_batch_to_the_same_trials(tiny_config_dict, tmp_path):
    tiny_config_dict["strategy"] = OPTIONS
    reference = search(parse_config(tiny_config_dict), tmp_path / "reference", quiet=True)

    def mid_second_batch(out):
        # the checkpoint after trial 2, the first of the second batch: kill while trial 3 trains
        checkpoint = out / "checkpoint.pt"
        return lambda: (
            checkpoint.exists()
            and (load_checkpoint(checkpoint)["progress"] == "after trial 3 (4 of 6 trained)")
        )

    out = search_killed_when(tiny_config_dict, tmp_path, mid_second_batch)
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
