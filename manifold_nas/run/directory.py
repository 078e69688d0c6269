"""The run directory: its files, its lock, and what may be overwritten.

Every strategy writes the same layout (``config.yaml``, ``metrics.jsonl``,
``checkpoint.pt``, ``genotype.json``, ``summary.json``, plus its own extras).
This module owns the rules that keep a run directory consistent:

* **one writer**: a lock file created with ``O_CREAT | O_EXCL`` holds the
  writer's pid; a second search on the same directory is refused, and a lock
  left by a process that no longer exists is taken over;
* **no silent overwrite**: a fresh search refuses a directory holding any run
  file; ``--resume`` continues from ``checkpoint.pt``, refuses a finished run
  whose checkpoint is gone, and starts over cleanly (saying so) when a run was
  killed before its first checkpoint;
* **atomic files**: JSON and text files are written to a temporary file and
  renamed; ``metrics.jsonl`` is truncated to the length recorded in the
  checkpoint on resume, so a resumed run's log equals an uninterrupted one's;
* **no empty leftovers**: a directory this process created is removed again
  if the search fails before writing anything.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from manifold_nas.errors import UserInputError
from manifold_nas.run.checkpoint import load_checkpoint, save_checkpoint
from manifold_nas.run.distributed import World
from manifold_nas.run.interrupts import deferred_signals

LOGGER = logging.getLogger("manifold_nas")

__all__ = ["RUN_FILES", "TRAIN_FILES", "RunDirectory", "atomic_write_text"]

#: files that mark a directory as holding a search run
RUN_FILES = ("config.yaml", "metrics.jsonl", "checkpoint.pt", "genotype.json", "summary.json")
#: files that mark a directory as holding a retraining (``RUN/retrain``)
TRAIN_FILES = ("metrics.jsonl", "checkpoint.pt", "train_summary.json", "model.pt")
#: the files that only a finished run has
FINISHED_FILES = ("genotype.json", "summary.json", "train_summary.json", "model.pt")
LOCK_NAME = ".manifold-nas.lock"


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with deferred_signals():
        with open(tmp, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunDirectory:
    """One run directory, opened for writing by at most one process.

    ``run_files`` are the files that mark the directory as holding a run
    (:data:`RUN_FILES` for a search, :data:`TRAIN_FILES` for a retraining).
    """

    def __init__(self, path: str | Path, run_files: tuple[str, ...] = RUN_FILES) -> None:
        self.path = Path(path)
        self.run_files = run_files
        self._created: list[Path] = []
        self._locked = False

    # -- paths ------------------------------------------------------------
    @property
    def checkpoint_path(self) -> Path:
        return self.path / "checkpoint.pt"

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def lock_path(self) -> Path:
        return self.path / LOCK_NAME

    def existing_run_files(self) -> list[str]:
        return [name for name in self.run_files if (self.path / name).exists()]

    # -- opening and closing ---------------------------------------------------
    def acquire(self) -> None:
        """Create the directory if needed and take its lock, or refuse in one line."""
        missing = []
        for parent in (self.path, *self.path.parents):
            if parent.exists():
                break
            missing.append(parent)
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise UserInputError(
                f"cannot create run directory {self.path}: {err.strerror or err}"
            ) from None
        self._created = list(reversed(missing))
        if not self.path.is_dir():
            raise UserInputError(f"--out {self.path} exists and is not a directory")
        for _ in range(2):
            try:
                fd = os.open(self.lock_path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                if self._lock_is_stale():
                    self.lock_path.unlink(missing_ok=True)
                    continue
                raise UserInputError(
                    f"{self.path} is in use by another manifold-nas process "
                    f"(pid {self._lock_owner()}); wait for it or choose another --out"
                ) from None
            except OSError as err:
                self._remove_created()
                if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
                    raise UserInputError(f"cannot write to run directory {self.path}") from None
                raise
            with os.fdopen(fd, "w") as fh:
                fh.write(str(os.getpid()))
            self._locked = True
            return
        raise UserInputError(f"could not lock {self.path}; another process keeps taking it")

    def _lock_owner(self) -> int | None:
        try:
            return int(self.lock_path.read_text().strip() or "0") or None
        except (OSError, ValueError):
            return None

    def _lock_is_stale(self) -> bool:
        owner = self._lock_owner()
        return owner is None or owner == os.getpid() or not _pid_alive(owner)

    def release(self, *, failed: bool = False) -> None:
        """Drop the lock; after a failure, remove what this process created if still empty."""
        if self._locked:
            self.lock_path.unlink(missing_ok=True)
            self._locked = False
        if failed:
            self._remove_created()

    def _remove_created(self) -> None:
        for directory in reversed(self._created):
            try:
                directory.rmdir()
            except OSError:
                break
        self._created = []

    def prepare(self, resume: bool) -> dict[str, Any] | None:
        """Decide between a fresh start and a resume; return the checkpoint to resume from.

        Raises :class:`UserInputError` when a fresh search would overwrite a
        run, or when ``resume`` cannot continue one.
        """
        existing = self.existing_run_files()
        if not resume:
            if existing:
                raise UserInputError(
                    f"{self.path} already holds a run ({', '.join(existing)}); "
                    "pass --resume to continue it or choose another --out"
                )
            return None
        if self.checkpoint_path.exists():
            return load_checkpoint(self.checkpoint_path)
        finished = [name for name in FINISHED_FILES if name in existing]
        if finished:
            raise UserInputError(
                f"{self.path} holds a finished run ({', '.join(finished)}) but no checkpoint.pt "
                "to resume from; choose another --out"
            )
        if existing:
            for name in existing:
                (self.path / name).unlink()
            LOGGER.warning(
                "%s has no checkpoint yet (killed before the first one): starting over", self.path
            )
        return None

    def open(self, resume: bool, world: World | None = None) -> dict[str, Any] | None:
        """:meth:`acquire` and :meth:`prepare` on rank 0, the verdict shared with every rank.

        Only rank 0 of a data-parallel run takes the lock and may clean up;
        the others wait for its verdict, then read the same checkpoint.
        """
        world = world or World()
        if world.is_main:
            try:
                self.acquire()
                state = self.prepare(resume)
            except Exception as err:
                self.release(failed=True)
                world.broadcast(("error", str(err).splitlines()[0] if str(err) else repr(err)))
                raise
            world.broadcast(("ok", state is not None))
            return state
        verdict, detail = world.broadcast(None)
        if verdict == "error":
            raise UserInputError(detail)
        return load_checkpoint(self.checkpoint_path) if detail else None

    # -- writing ---------------------------------------------------------------
    def log(self, record: Mapping[str, Any]) -> None:
        """Append one JSON record to ``metrics.jsonl``."""
        with open(self.metrics_path, "a") as fh:
            fh.write(json.dumps(record, default=float) + "\n")

    def metrics_bytes(self) -> int:
        return self.metrics_path.stat().st_size if self.metrics_path.exists() else 0

    def truncate_metrics(self, size: int) -> None:
        """Cut ``metrics.jsonl`` back to ``size`` bytes (the length at the checkpoint)."""
        if self.metrics_path.exists():
            with open(self.metrics_path, "r+b") as fh:
                fh.truncate(size)

    def write_json(self, name: str, data: Any) -> Path:
        path = self.path / name
        atomic_write_text(path, json.dumps(data, indent=2, default=float) + "\n")
        return path

    def write_text(self, name: str, text: str) -> Path:
        path = self.path / name
        atomic_write_text(path, text)
        return path

    def save_checkpoint(self, state: dict[str, Any]) -> None:
        save_checkpoint(state, self.checkpoint_path)

    def subdirectory(self, name: str, *, empty: bool = False) -> Path:
        """A folder inside the run directory (emptied first when ``empty``)."""
        path = self.path / name
        if empty and path.exists():
            shutil.rmtree(path)
        path.mkdir(parents=True, exist_ok=True)
        return path
