"""Atomic writes on a full disk: one line naming the directory, nothing left, nothing lost."""

import errno
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

import manifold_nas.run.checkpoint as checkpoint_module
from manifold_nas.cli import main
from manifold_nas.errors import DiskFullError
from manifold_nas.run.checkpoint import load_checkpoint, save_checkpoint, save_torch_atomically
from manifold_nas.run.directory import RunDirectory, atomic_write_text


class FillingFile:
    """A file that takes ``room`` bytes, then fails like a full disk (ENOSPC)."""

    def __init__(self, fh, room, code):
        self._fh, self._room, self._code = fh, room, code

    def write(self, data):
        data = bytes(data)
        if len(data) > self._room:
            self._fh.write(data[: self._room])  # what fitted stays in the file
            self._room = 0
            raise OSError(self._code, os.strerror(self._code))
        self._room -= len(data)
        return self._fh.write(data)

    def __getattr__(self, name):
        return getattr(self._fh, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._fh.close()


@pytest.fixture
def full_disk(monkeypatch):
    """Make every atomic write find the disk full after ``room`` bytes."""

    def fill(room=4096, code=errno.ENOSPC):
        def filling_open(file, mode="r", *args, **kwargs):
            return FillingFile(open(file, mode, *args, **kwargs), room, code)

        monkeypatch.setattr(checkpoint_module, "open", filling_open, raising=False)

    return fill


def leftovers(directory):
    return sorted(p.name for p in Path(directory).iterdir() if ".tmp" in p.name)


def state(value):
    return {"epoch": value, "weights": torch.full((20_000,), float(value))}


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT])
def test_a_full_disk_while_checkpointing_raises_one_line_and_keeps_the_last_checkpoint(
    tmp_path, full_disk, code
):
    run = tmp_path / "run"
    run.mkdir()
    save_checkpoint(state(1), run / "checkpoint.pt")
    full_disk(room=4096, code=code)  # torch reports this as a RuntimeError about the zip
    with pytest.raises(DiskFullError) as full:
        save_checkpoint(state(2), run / "checkpoint.pt")
    message = str(full.value)
    assert "\n" not in message
    assert f"writing {run / 'checkpoint.pt'} (" in message and f" free in {run})" in message
    assert "the last checkpoint is intact" in message
    assert leftovers(run) == []
    assert load_checkpoint(run / "checkpoint.pt")["epoch"] == 1


def test_a_full_disk_raised_directly_by_torch_save_is_a_disk_full_error(tmp_path, monkeypatch):
    run = tmp_path / "run"
    run.mkdir()
    save_checkpoint(state(1), run / "checkpoint.pt")

    def full_save(obj, fh, *args, **kwargs):
        fh.write(b"PK\x03\x04 partial zip")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full_save)
    with pytest.raises(DiskFullError, match=f"no space left on device writing {run}"):
        save_checkpoint(state(2), run / "checkpoint.pt")
    assert leftovers(run) == []
    monkeypatch.undo()
    assert load_checkpoint(run / "checkpoint.pt")["epoch"] == 1


def test_the_first_checkpoint_on_a_full_disk_says_none_was_written(tmp_path, full_disk):
    full_disk(room=100)
    with pytest.raises(DiskFullError, match="no checkpoint had been written yet"):
        save_torch_atomically({"w": torch.zeros(10_000)}, tmp_path / "model.pt")
    assert list(tmp_path.iterdir()) == []


def test_another_write_error_removes_the_temporary_file_and_is_raised_as_it_was(
    tmp_path, full_disk
):
    save_checkpoint(state(1), tmp_path / "checkpoint.pt")
    full_disk(room=4096, code=errno.EIO)
    with pytest.raises(Exception) as failed:
        save_checkpoint(state(2), tmp_path / "checkpoint.pt")
    assert not isinstance(failed.value, DiskFullError)
    assert leftovers(tmp_path) == []
    assert load_checkpoint(tmp_path / "checkpoint.pt")["epoch"] == 1


def test_json_and_text_files_on_a_full_disk_keep_their_previous_content(tmp_path, full_disk):
    directory = RunDirectory(tmp_path / "run")
    directory.acquire()
    try:
        directory.write_json("summary.json", {"epoch": 1})
        before = (directory.path / "summary.json").read_bytes()
        full_disk(room=10)
        with pytest.raises(DiskFullError, match=f"summary.json .* free in {directory.path}"):
            directory.write_json("summary.json", {"epoch": 2, "pad": "x" * 100})
        with pytest.raises(DiskFullError):
            atomic_write_text(directory.path / "notes.txt", "y" * 100)
        assert (directory.path / "summary.json").read_bytes() == before
        assert leftovers(directory.path) == [] and not (directory.path / "notes.txt").exists()
    finally:
        directory.release()


def test_a_full_disk_while_logging_leaves_no_torn_line(tmp_path, monkeypatch):
    import manifold_nas.run.directory as directory_module

    directory = RunDirectory(tmp_path / "run")
    directory.acquire()
    try:
        directory.log({"epoch": 0})
        before = directory.metrics_path.read_bytes()

        def filling_open(file, mode="r", *args, **kwargs):
            fh = open(file, mode, *args, **kwargs)
            if mode != "a":
                return fh
            fh.write('{"epoch": 1, "lo')  # half a line reaches the disk, then it is full
            fh.close()
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(directory_module, "open", filling_open, raising=False)
        with pytest.raises(DiskFullError, match=f"metrics.jsonl .* free in {directory.path}"):
            directory.log({"epoch": 1, "loss": 0.5})
        monkeypatch.undo()
        assert directory.metrics_path.read_bytes() == before
    finally:
        directory.release()


def test_a_search_on_a_full_disk_fails_with_exit_status_2_naming_the_directory(
    tmp_path, tiny_config_dict, full_disk, monkeypatch, capsys
):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(tiny_config_dict))  # two epochs: two checkpoints
    out = tmp_path / "run"
    real_save = checkpoint_module.save_torch_atomically
    saves = []

    def the_second_save_fills_the_disk(obj, path):
        saves.append(path)
        if len(saves) == 2:
            full_disk(room=4096)
        real_save(obj, path)

    monkeypatch.setattr(checkpoint_module, "save_torch_atomically", the_second_save_fills_the_disk)
    code = main(["search", str(cfg), "--out", str(out), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and "internal error" not in err
    assert f"no space left on device writing {out / 'checkpoint.pt'}" in err
    assert leftovers(out) == [] and "strategy_state" in load_checkpoint(out / "checkpoint.pt")
    monkeypatch.undo()
    assert main(["search", str(cfg), "--out", str(out), "--resume", "--quiet"]) == 0


# -- a real small tmpfs (root only) ---------------------------------------------
@pytest.fixture
def small_tmpfs(tmp_path):
    """A 2 MiB tmpfs, where this process may mount one (root, no sandbox forbidding it)."""
    if sys.platform != "linux" or os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root on Linux")
    mountpoint = tmp_path / "tmpfs"
    mountpoint.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mountpoint)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], check=False)


def fill(mountpoint, leave):
    """Fill the file system but ``leave`` bytes."""
    free = shutil.disk_usage(mountpoint).free
    (mountpoint / "filler").write_bytes(b"\0" * max(free - leave, 0))


def test_a_real_full_tmpfs_keeps_the_last_checkpoint(small_tmpfs):
    run = small_tmpfs / "run"
    run.mkdir()
    save_checkpoint(state(1), run / "checkpoint.pt")
    fill(small_tmpfs, leave=32 * 1024)
    with pytest.raises(DiskFullError) as full:
        save_checkpoint(state(2), run / "checkpoint.pt")
    assert f"free in {run})" in str(full.value) and "KiB free" in str(full.value)
    assert leftovers(run) == []
    assert load_checkpoint(run / "checkpoint.pt")["epoch"] == 1


def test_a_search_on_a_real_full_tmpfs_exits_2_and_resumes_once_space_is_freed(
    small_tmpfs, tmp_path, tiny_config_dict, capsys
):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(tiny_config_dict))
    out = small_tmpfs / "run"
    # room for the first checkpoint (about 250 KiB), not for the second beside it
    fill(small_tmpfs, leave=400 * 1024)
    code = main(["search", str(cfg), "--out", str(out), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and "internal error" not in err
    assert f"no space left on device writing {out}" in err and f"free in {out})" in err
    assert leftovers(out) == []
    load_checkpoint(out / "checkpoint.pt")
    (small_tmpfs / "filler").unlink()
    assert main(["search", str(cfg), "--out", str(out), "--resume", "--quiet"]) == 0
    assert (out / "genotype.json").is_file()
