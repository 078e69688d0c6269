"""Run directories: one writer, no silent overwrite, clean restarts, no empty leftovers."""

import json
import logging
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from support import REPO, run_cli

from manifold_nas.config import parse_config
from manifold_nas.errors import UserInputError
from manifold_nas.run.directory import LOCK_NAME, RunDirectory
from manifold_nas.search import search


def one_line(err):
    lines = [line for line in err.strip().splitlines() if line]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def snapshot(directory):
    return {p.name: p.read_bytes() for p in sorted(Path(directory).iterdir()) if p.is_file()}


@pytest.fixture
def cfg_file(tmp_path, tiny_config_dict):
    tiny_config_dict["search"]["epochs"] = 1
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(tiny_config_dict))
    return path


def test_a_fresh_search_refuses_a_directory_holding_any_run_file(tmp_path, cfg_file, capsys):
    out = tmp_path / "run"
    assert run_cli(capsys, "search", cfg_file, "--out", out, "--quiet")[0] == 0
    (out / "checkpoint.pt").unlink()  # a finished run whose checkpoint went missing
    before = snapshot(out)
    code, _, err = run_cli(capsys, "search", cfg_file, "--out", out)
    assert code == 2 and "already holds a run" in one_line(err)
    assert snapshot(out) == before


def test_resume_refuses_a_finished_run_without_its_checkpoint(tmp_path, cfg_file, capsys):
    out = tmp_path / "run"
    assert run_cli(capsys, "search", cfg_file, "--out", out, "--quiet")[0] == 0
    (out / "checkpoint.pt").unlink()
    before = snapshot(out)
    code, _, err = run_cli(capsys, "search", cfg_file, "--out", out, "--resume")
    assert code == 2 and "no checkpoint.pt" in one_line(err)
    assert snapshot(out) == before


def test_resume_before_the_first_checkpoint_starts_over_cleanly(
    tmp_path, cfg_file, capsys, tiny_config_dict
):
    reference = tmp_path / "reference"
    assert run_cli(capsys, "search", cfg_file, "--out", reference, "--quiet")[0] == 0
    out = tmp_path / "killed"
    out.mkdir()
    # what a search killed during its first epoch leaves behind
    (out / "config.yaml").write_text((reference / "config.yaml").read_text())
    (out / "metrics.jsonl").write_text(
        "\n".join((reference / "metrics.jsonl").read_text().splitlines()[:2]) + "\n"
    )
    code, _, err = run_cli(capsys, "search", cfg_file, "--out", out, "--resume", "--quiet")
    assert code == 0
    assert "starting over" in err.strip().splitlines()[0] and "Traceback" not in err
    fresh = (out / "metrics.jsonl").read_text().splitlines()
    assert len(fresh) == len((reference / "metrics.jsonl").read_text().splitlines())


def test_a_live_lock_refuses_a_second_search_on_the_same_directory(tmp_path, cfg_file, capsys):
    out = tmp_path / "run"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (out / LOCK_NAME).write_text(str(holder.pid))
        code, _, err = run_cli(capsys, "search", cfg_file, "--out", out)
        assert (
            code == 2
            and f"in use by another manifold-nas process (pid {holder.pid})" in one_line(err)
        )
        assert sorted(p.name for p in out.iterdir()) == [LOCK_NAME]
    finally:
        holder.kill()
        holder.wait()


def test_a_stale_lock_of_a_dead_process_is_taken_over(tmp_path, cfg_file, capsys):
    out = tmp_path / "run"
    out.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (out / LOCK_NAME).write_text(str(dead.pid))
    assert run_cli(capsys, "search", cfg_file, "--out", out, "--quiet")[0] == 0
    assert (out / "genotype.json").is_file() and not (out / LOCK_NAME).exists()


def test_two_searches_started_together_on_one_directory_never_both_write(tmp_path, cfg_file):
    out = tmp_path / "run"
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "manifold_nas.cli",
                "search",
                str(cfg_file),
                "--out",
                str(out),
                "--quiet",
                f"seed={seed}",
            ],  # fmt: skip
            cwd=REPO,
            stderr=subprocess.PIPE,
            text=True,
        )
        for seed in (0, 1)
    ]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    loser = next(err for code, err in results if code == 2)
    assert "in use by another" in loser or "already holds a run" in loser
    seeds = {
        json.loads(line).get("epoch") for line in (out / "metrics.jsonl").read_text().splitlines()
    }
    assert seeds == {0}
    config = yaml.safe_load((out / "config.yaml").read_text())
    genotype = json.loads((out / "genotype.json").read_text())
    assert genotype["config"]["seed"] == config["seed"]


def test_a_search_that_fails_before_writing_leaves_no_directory(tmp_path, tiny_config_dict):
    tiny_config_dict["data"] = {"name": "image_folder", "root": str(tmp_path / "missing")}
    out = tmp_path / "deep" / "run"
    with pytest.raises(UserInputError, match="missing"):
        search(parse_config(tiny_config_dict), out)
    assert not (tmp_path / "deep").exists()


def test_an_output_directory_inside_a_file_is_refused_in_one_line(
    tmp_path, cfg_file, capsys, tiny_config_dict
):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    code, _, err = run_cli(capsys, "search", cfg_file, "--out", blocker / "run")
    assert code == 2 and "cannot create run directory" in one_line(err)
    fixed = tmp_path / "fixed.yaml"
    tiny_config_dict["network"] = {"name": "simple_cnn", "opset": "darts", "channels": 4}
    fixed.write_text(yaml.safe_dump(tiny_config_dict))
    code, _, err = run_cli(capsys, "train", fixed, "--out", blocker / "run", "--quiet")
    assert code == 2 and str(blocker) in one_line(err)


@pytest.mark.skipif(
    sys.platform == "win32" or __import__("os").geteuid() == 0, reason="root ignores permissions"
)
def test_an_unwritable_output_directory_is_refused_in_one_line(tmp_path, cfg_file, capsys):
    parent = tmp_path / "readonly"
    parent.mkdir()
    parent.chmod(0o500)
    try:
        code, _, err = run_cli(capsys, "search", cfg_file, "--out", parent / "run")
        assert code == 2 and str(parent) in one_line(err)
    finally:
        parent.chmod(0o700)


def test_the_lock_is_released_when_the_directory_object_is_released(tmp_path):
    directory = RunDirectory(tmp_path / "run")
    directory.acquire()
    assert json.loads((tmp_path / "run" / LOCK_NAME).read_text())["pid"] == os.getpid()
    directory.release()
    assert not (tmp_path / "run" / LOCK_NAME).exists()
    time.sleep(0)


# -- stale locks: a pid reused after ``kill -9`` --------------------------------
needs_proc = pytest.mark.skipif(
    not Path("/proc/self/stat").is_file(), reason="process start times come from /proc"
)


def start_ticks(pid):
    """Field 22 of /proc/<pid>/stat: the process's start time in clock ticks since boot."""
    return int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[19])


@pytest.fixture
def unrelated():
    """A live process that is not manifold-nas (what a reused pid belongs to)."""
    proc = subprocess.Popen(["sleep", "30"])
    yield proc
    proc.kill()
    proc.wait()


def write_lock(directory, **record):
    directory.mkdir(exist_ok=True)
    (directory / LOCK_NAME).write_text(json.dumps(record))


def lock_warnings(caplog):
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "manifold_nas" and r.levelno == logging.WARNING
    ]


def test_the_lock_records_pid_start_time_and_host(tmp_path):
    directory = RunDirectory(tmp_path / "run")
    directory.acquire()
    try:
        record = json.loads(directory.lock_path.read_text())
        assert record["pid"] == os.getpid() and record["host"] == socket.gethostname()
        if Path("/proc/self/stat").is_file():
            assert record["start_time"] == start_ticks(os.getpid())
    finally:
        directory.release()
    assert not directory.lock_path.exists()


@needs_proc
def test_a_lock_whose_pid_now_belongs_to_an_unrelated_process_is_taken_over(
    tmp_path, unrelated, caplog
):
    out = tmp_path / "run"
    write_lock(
        out, pid=unrelated.pid, start_time=start_ticks(unrelated.pid) + 1, host=socket.gethostname()
    )
    directory = RunDirectory(out)
    with caplog.at_level(logging.WARNING, logger="manifold_nas"):
        directory.acquire()
    try:
        assert json.loads(directory.lock_path.read_text())["pid"] == os.getpid()
        (warning,) = lock_warnings(caplog)
        assert str(directory.lock_path) in warning and str(unrelated.pid) in warning
        assert "\n" not in warning
    finally:
        directory.release()


@needs_proc
def test_a_lock_of_a_live_process_with_its_start_time_is_refused_naming_the_lock_file(
    tmp_path, cfg_file, unrelated, capsys
):
    out = tmp_path / "run"
    write_lock(
        out, pid=unrelated.pid, start_time=start_ticks(unrelated.pid), host=socket.gethostname()
    )
    before = snapshot(out)
    with pytest.raises(UserInputError) as refused:
        RunDirectory(out).acquire()
    message = str(refused.value)
    assert "\n" not in message and f"pid {unrelated.pid}" in message
    assert f"remove {out / LOCK_NAME}" in message
    code, _, err = run_cli(capsys, "search", cfg_file, "--out", out)
    assert code == 2 and f"remove {out / LOCK_NAME}" in one_line(err)
    assert snapshot(out) == before


def test_a_lock_of_a_dead_pid_is_taken_over_with_a_warning(tmp_path, caplog):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    out = tmp_path / "run"
    write_lock(out, pid=dead.pid, start_time=12345, host=socket.gethostname())
    directory = RunDirectory(out)
    with caplog.at_level(logging.WARNING, logger="manifold_nas"):
        directory.acquire()
    try:
        assert json.loads(directory.lock_path.read_text())["pid"] == os.getpid()
        (warning,) = lock_warnings(caplog)
        assert f"pid {dead.pid} is no longer running" in warning
    finally:
        directory.release()


@needs_proc
def test_an_old_pid_only_lock_older_than_its_live_pid_is_taken_over(tmp_path, unrelated, caplog):
    out = tmp_path / "run"
    out.mkdir()
    lock = out / LOCK_NAME
    lock.write_text(str(unrelated.pid))  # the format of earlier versions
    hour_ago = time.time() - 3600  # written long before the process now holding the pid
    os.utime(lock, (hour_ago, hour_ago))
    directory = RunDirectory(out)
    with caplog.at_level(logging.WARNING, logger="manifold_nas"):
        directory.acquire()
    try:
        (warning,) = lock_warnings(caplog)
        assert "started after the lock was written" in warning
    finally:
        directory.release()


def test_a_lock_held_on_another_host_is_refused(tmp_path):
    out = tmp_path / "run"
    write_lock(out, pid=os.getpid(), start_time=1, host=socket.gethostname() + "-elsewhere")
    with pytest.raises(UserInputError, match="on .*-elsewhere.*remove"):
        RunDirectory(out).acquire()
