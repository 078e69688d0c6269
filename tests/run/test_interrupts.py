"""SIGINT and SIGTERM: one line with the resume command, the right exit status, an exact resume."""

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from support import REPO

from manifold_nas.config import parse_config
from manifold_nas.run.retrain import train_derived
from manifold_nas.search import search
from manifold_nas.space.genotype import Genotype

EXIT = {signal.SIGINT: 130, signal.SIGTERM: 143}


def start(argv, cwd):
    return subprocess.Popen(
        [sys.executable, "-m", "manifold_nas.cli", *map(str, argv)],
        cwd=cwd,
        env=dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def interrupt_when(proc, metrics: Path, marker: str, signum: int) -> tuple[int, str]:
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if metrics.exists() and marker in metrics.read_text():
            proc.send_signal(signum)
            break
        time.sleep(0.02)
    _, err = proc.communicate(timeout=240)
    return proc.returncode, err


def resume_command(err: str) -> list[str]:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert "resume with: " in lines[0], lines[0]
    return shlex.split(lines[0].split("resume with: ", 1)[1])


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_an_interrupted_search_says_how_to_resume_and_resumes_exactly(
    signum, tiny_config_dict, tmp_path
):
    tiny_config_dict["search"].update(epochs=3, max_steps_per_epoch=6)
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(tiny_config_dict))
    reference = search(parse_config(tiny_config_dict), tmp_path / "reference", quiet=True)

    out = tmp_path / "run"
    proc = start(["search", cfg, "--out", out, "--quiet"], tmp_path)
    code, err = interrupt_when(proc, out / "metrics.jsonl", '"epoch": 1, "step": 2', signum)
    assert code == EXIT[signum], err
    assert f"last checkpoint {out / 'checkpoint.pt'}" in err
    argv = resume_command(err)
    assert argv[:2] == ["manifold-nas", "search"] and argv[-1] == "--resume"
    assert not (out / ".manifold-nas.lock").exists(), "the lock was not released"

    resumed = subprocess.run(
        [sys.executable, "-m", "manifold_nas.cli", *argv[1:], "--quiet"],
        cwd=tmp_path,
        env=dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO)),
        capture_output=True,
        text=True,
    )
    assert resumed.returncode == 0, resumed.stderr
    assert Genotype.load(out / "genotype.json").cells == reference.genotype.cells
    final = torch.load(out / "checkpoint.pt", weights_only=True)["strategy_state"]
    expected = reference.strategy.state_dict()
    for name, value in expected["supernet"].items():
        assert torch.equal(final["supernet"][name], value.as_subclass(torch.Tensor)), name


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_an_interrupted_retraining_resumes_to_the_same_weights(signum, tiny_config_dict, tmp_path):
    tiny_config_dict["search"]["epochs"] = 1
    tiny_config_dict["train"].update(epochs=40, max_steps_per_epoch=8)
    config = parse_config(tiny_config_dict)
    run_dir = tmp_path / "run"
    search(config, run_dir, quiet=True)
    genotype = Genotype.load(run_dir / "genotype.json")
    reference = tmp_path / "reference"
    expected = train_derived(genotype, config, reference, quiet=True)

    proc = start(["train", run_dir, "--quiet"], tmp_path)
    metrics = run_dir / "retrain" / "metrics.jsonl"
    code, err = interrupt_when(proc, metrics, '"epoch": 2,', signum)
    assert code == EXIT[signum], err
    argv = resume_command(err)
    assert argv[:2] == ["manifold-nas", "train"]
    resumed = subprocess.run(
        [sys.executable, "-m", "manifold_nas.cli", *argv[1:], "--quiet"],
        cwd=tmp_path,
        env=dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO)),
        capture_output=True,
        text=True,
    )
    assert resumed.returncode == 0, resumed.stderr
    summary = json.loads((run_dir / "retrain" / "train_summary.json").read_text())
    assert summary["test"] == expected["test"]
    ours = torch.load(run_dir / "retrain" / "model.pt", weights_only=True)
    theirs = torch.load(reference / "model.pt", weights_only=True)
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_a_finished_retraining_is_not_overwritten_without_resume(
    tiny_config_dict, tmp_path, capsys
):
    from manifold_nas.cli import main

    tiny_config_dict["search"]["epochs"] = 1
    config = parse_config(tiny_config_dict)
    search(config, tmp_path / "run", quiet=True)
    assert main(["train", str(tmp_path / "run"), "--quiet"]) == 0
    before = (tmp_path / "run" / "retrain" / "model.pt").read_bytes()
    capsys.readouterr()
    assert main(["train", str(tmp_path / "run"), "--quiet"]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert (tmp_path / "run" / "retrain" / "model.pt").read_bytes() == before


def test_a_signal_during_an_atomic_write_is_raised_after_the_write(tmp_path):
    from manifold_nas.run.directory import atomic_write_text
    from manifold_nas.run.interrupts import deferred_signals

    done = []
    with pytest.raises(KeyboardInterrupt):
        with deferred_signals():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)  # the handler would run here without the deferral
            atomic_write_text(tmp_path / "f.txt", "complete")
            done.append(True)
    assert done and (tmp_path / "f.txt").read_text() == "complete"
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
