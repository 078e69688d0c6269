"""SIGINT and SIGTERM: one line with the resume command, the right exit status, an exact resume.

Each child is started with the SIGINT disposition its test is about: a test
run started in the background of a script (``(trap '' INT; make test)``,
a CI runner) inherits an ignored SIGINT, which its children would
inherit too, and an ignored SIGINT stays ignored (Python then installs no
KeyboardInterrupt handler).
"""

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


def sigint(disposition):
    """A ``preexec_fn`` giving the child SIGINT ``disposition`` (exec keeps SIG_DFL and SIG_IGN)."""
    return lambda: signal.signal(signal.SIGINT, disposition)


def start(argv, cwd, *, module="manifold_nas.cli", sigint_disposition=signal.SIG_DFL):
    command = [sys.executable, "-m", module] if module else [sys.executable]
    return subprocess.Popen(
        [*command, *map(str, argv)],
        cwd=cwd,
        env=dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=sigint(sigint_disposition),
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
    # this process's own SIGINT may be ignored (a test run in the background of a script)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            with deferred_signals():
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.05)  # the handler would run here without the deferral
                atomic_write_text(tmp_path / "f.txt", "complete")
                done.append(True)
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, previous)
    assert done and (tmp_path / "f.txt").read_text() == "complete"


def test_an_ignored_sigint_stays_ignored_during_an_atomic_write(tmp_path):
    from manifold_nas.run.directory import atomic_write_text
    from manifold_nas.run.interrupts import deferred_signals

    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with deferred_signals():
            os.kill(os.getpid(), signal.SIGINT)
            atomic_write_text(tmp_path / "f.txt", "complete")
        time.sleep(0.05)
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)
    assert (tmp_path / "f.txt").read_text() == "complete"


def test_a_search_started_with_sigint_ignored_runs_on_and_stops_on_sigterm(
    tiny_config_dict, tmp_path
):
    # what a search started with ``&`` from a script gets: Ctrl-C cannot
    # reach it, SIGTERM (``kill PID``) stops it with the resume line as ever
    tiny_config_dict["search"].update(epochs=3, max_steps_per_epoch=6)
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(tiny_config_dict))
    out = tmp_path / "run"
    proc = start(
        ["search", cfg, "--out", out, "--quiet"], tmp_path, sigint_disposition=signal.SIG_IGN
    )
    metrics = out / "metrics.jsonl"
    assert wait_for(proc, metrics, '"epoch": 1, "step": 2'), proc.communicate()[1]
    proc.send_signal(signal.SIGINT)
    assert wait_for(proc, metrics, '"epoch": 1, "step": 3'), proc.communicate()[1]
    assert proc.poll() is None, "an ignored SIGINT stopped the search"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == 143, err
    assert f"last checkpoint {out / 'checkpoint.pt'}" in err
    assert resume_command(err)[-1] == "--resume"


def wait_for(proc, metrics: Path, marker: str) -> bool:
    """Whether ``marker`` showed up in ``metrics`` while ``proc`` ran."""
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if metrics.exists() and marker in metrics.read_text():
            return True
        time.sleep(0.02)
    return False


def catches(pid: int, signum: int) -> bool:
    """Whether process ``pid`` has a handler for ``signum`` (``SigCgt`` of /proc/PID/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) >> (signum - 1) & 1)
    return False


def assert_interrupted(proc, signum, context) -> None:
    """``proc`` ended in one line naming ``signum`` and its exit status, or had finished (0)."""
    _, err = proc.communicate(timeout=240)
    if proc.returncode == 0:
        return
    lines = [line for line in err.splitlines() if line.strip()]
    assert proc.returncode == EXIT[signum], (context, proc.returncode, err)
    assert len(lines) == 1 and "Traceback" not in err, (context, err)
    assert f"interrupted ({signal.Signals(signum).name})" in lines[0], (context, lines[0])


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc/PID/status")
@pytest.mark.parametrize(
    ("signum", "delays"),
    [(signal.SIGINT, (0.05, 0.3)), (signal.SIGTERM, (0.3,))],
    ids=["SIGINT", "SIGTERM"],
)
def test_a_signal_in_the_first_second_of_a_command_is_one_line(
    signum, delays, tiny_config_dict, tmp_path
):
    """Ctrl-C or SIGTERM while torch and the command still import: one line, 130 or 143.

    The delays count from the command's first line (``__main__.py``, which
    installs the SIGTERM handler first): what comes before (the interpreter's
    start, ``site``, an editable install's import hook) is Python's own.
    """
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(tiny_config_dict))
    for delay in delays:
        argv = ["search", cfg, "--out", tmp_path / f"run-{delay}", "--quiet"]
        proc = start(argv, tmp_path, module="manifold_nas")
        deadline = time.time() + 60
        while proc.poll() is None and not catches(proc.pid, signal.SIGTERM):
            assert time.time() < deadline, "the command never installed its SIGTERM handler"
            time.sleep(0.001)
        time.sleep(delay)
        proc.send_signal(signum)
        assert_interrupted(proc, signum, delay)


CONSOLE_SCRIPT = Path(sys.executable).with_name("manifold-nas")

#: runs the command as ``python -m manifold_nas`` or its console script does, after an
#: audit hook that sends the signal when the named module starts to import
SIGNAL_AT_IMPORT = """
import os, runpy, signal, sys

def hook(event, args, fired=[]):
    if event == "import" and args[0] == {module!r} and not fired:
        fired.append(True)
        os.kill(os.getpid(), signal.{signal})

sys.addaudithook(hook)
sys.argv = {argv!r}
{run}
"""


@pytest.mark.parametrize(
    ("entry", "signum", "module"),
    [
        ("module", signal.SIGINT, "manifold_nas.cli"),
        ("module", signal.SIGTERM, "manifold_nas.cli"),
        ("module", signal.SIGINT, "argparse"),
        ("module", signal.SIGTERM, "torch"),
        ("module", signal.SIGINT, "manifold_nas.search"),
        ("console-script", signal.SIGINT, "argparse"),
        ("console-script", signal.SIGTERM, "argparse"),
    ],
    ids=lambda v: getattr(v, "name", v),
)
def test_a_signal_at_each_import_of_a_starting_command_is_one_line(
    entry, signum, module, tiny_config_dict, tmp_path
):
    """The same, deterministic: the signal arrives as a given module starts to import.

    ``manifold_nas.cli`` is imported by ``__main__.py`` (the console script
    imports it before anything of the command runs, so it starts at ``main``).
    """
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(tiny_config_dict))
    args = ["search", str(cfg), "--out", str(tmp_path / "run"), "--quiet"]
    if entry == "module":
        run, argv = "runpy._run_module_as_main('manifold_nas')", ["-m", *args]
    else:
        if not CONSOLE_SCRIPT.exists():
            pytest.skip("no manifold-nas console script beside this Python")
        run = f"runpy.run_path({str(CONSOLE_SCRIPT)!r}, run_name='__main__')"
        argv = [str(CONSOLE_SCRIPT), *args]
    code = SIGNAL_AT_IMPORT.format(
        module=module, signal=signal.Signals(signum).name, argv=argv, run=run
    )
    proc = start(["-c", code], tmp_path, module=None)
    assert_interrupted(proc, signum, module)


def test_a_ctrl_c_while_torch_imports_waits_for_the_import_to_finish(tmp_path):
    # a KeyboardInterrupt raised inside numpy's C initialisation leaves numpy half-imported
    # (a later AttributeError, exit status 1): the command line holds it until torch is in
    code = """
import os, signal, sys

def hook(event, args, fired=[]):
    if event == "import" and args[0] == "numpy" and not fired:
        fired.append(True)
        os.kill(os.getpid(), signal.SIGINT)

sys.addaudithook(hook)
from manifold_nas.cli import main

status = main(["list"])
numpy = sys.modules.get("numpy")
print(status, "torch" in sys.modules, hasattr(numpy, "ndarray"))
"""
    proc = start(["-c", code], tmp_path, module=None)
    out, err = proc.communicate(timeout=240)
    assert out.split() == ["130", "True", "True"], (out, err)
    assert err.strip() == "manifold-nas: interrupted (SIGINT)", err
