"""The run directory: its files, its lock, and what may be overwritten.

Every strategy writes the same layout (``config.yaml``, ``metrics.jsonl``,
``checkpoint.pt``, ``genotype.json``, ``summary.json``, plus its own extras).
This module owns the rules that keep a run directory consistent:

* **one writer**: a lock file, created complete in one step (a hard link, or
  ``O_CREAT | O_EXCL``), records the writer's pid, the start time of that
  process (``/proc/<pid>/stat``, where there is one) and the host. A second
  search on the same directory is refused, naming the lock file to remove if
  the holder is not manifold-nas after all; a lock whose pid is dead, or
  alive but started at another time (the pid was reused after a ``kill -9``),
  is stale and taken over with a warning. An old lock holding only a pid is
  stale when its pid is dead or was started after the lock was written;
* **no silent overwrite**: a fresh search refuses a directory holding any run
  file; ``--resume`` continues from ``checkpoint.pt``, refuses a finished run
  whose checkpoint is gone, and starts over cleanly (saying so) when a run was
  killed before its first checkpoint;
* **atomic files**: JSON and text files are written to a temporary file and
  renamed (:func:`~manifold_nas.run.checkpoint.atomic_write`); a full disk
  raises :class:`~manifold_nas.errors.DiskFullError` and leaves nothing
  behind, not even half a line of ``metrics.jsonl``; ``metrics.jsonl`` is
  truncated to the length recorded in the checkpoint on resume, so a resumed
  run's log equals an uninterrupted one's;
* **no empty leftovers**: a directory this process created is removed again
  if the search fails before writing anything.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from manifold_nas.errors import UserInputError
from manifold_nas.run.checkpoint import (
    atomic_write,
    disk_full_cause,
    disk_full_error,
    load_checkpoint,
    save_checkpoint,
)
from manifold_nas.run.distributed import World

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
    """Write ``text`` to ``path`` through a temporary file and a rename.

    A full disk raises :class:`~manifold_nas.errors.DiskFullError`; nothing is
    left behind and ``path`` keeps its previous content.
    """
    data = text.encode("utf-8")
    atomic_write(path, lambda fh: fh.write(data))


# -- the lock's record of its holder -----------------------------------------
#: an old lock (only a pid) is stale when its pid started this long after the lock was written
_OLD_LOCK_SLACK_S = 5.0


@dataclass(frozen=True)
class _LockHolder:
    pid: int
    start_time: int | None = None  # clock ticks since boot (/proc/<pid>/stat field 22)
    host: str | None = None

    def to_text(self) -> str:
        record = {"pid": self.pid, "start_time": self.start_time, "host": self.host}
        return json.dumps(record) + "\n"

    @classmethod
    def parse(cls, text: str) -> _LockHolder | None:
        """The holder a lock names: JSON, or a bare pid (locks of older versions)."""
        text = text.strip()
        try:
            pid = int(text)
        except ValueError:
            pass
        else:
            return cls(pid) if pid > 0 else None
        try:
            record = json.loads(text)
            pid = record["pid"]
            start = record.get("start_time")
            host = record.get("host")
        except (ValueError, TypeError, KeyError, AttributeError):
            return None
        if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
            return None
        return cls(
            pid,
            start if isinstance(start, int) and not isinstance(start, bool) else None,
            host if isinstance(host, str) and host else None,
        )


def _this_process() -> _LockHolder:
    stat = _proc_stat(os.getpid())
    return _LockHolder(os.getpid(), stat[1] if stat else None, socket.gethostname())


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """State and start time (clock ticks since boot) of ``pid``; None without /proc."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            text = fh.read().decode("ascii", "replace")
    except OSError:
        return None
    # field 2 (comm) is in parentheses and may hold spaces or ')': split after the last ')'
    fields = text.rpartition(")")[2].split()
    try:
        return fields[0], int(fields[19])  # field 3 (state) and field 22 (starttime)
    except (IndexError, ValueError):
        return None


def _started_at(start_ticks: int) -> float | None:
    """Wall-clock time of a start time in clock ticks since boot (Linux only)."""
    try:
        with open("/proc/stat") as fh:
            boot = next(int(line.split()[1]) for line in fh if line.startswith("btime "))
        return boot + start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration, AttributeError):
        return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:  # e.g. a pid out of range
        return False
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
        for _ in range(3):
            try:
                created = self._create_lock(_this_process())
            except OSError as err:
                self._remove_created()
                full = disk_full_cause(err)
                if full is not None:
                    raise disk_full_error(self.lock_path, full) from None
                if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
                    raise UserInputError(f"cannot write to run directory {self.path}") from None
                raise
            if created:
                self._locked = True
                return
            seen = self._lock_identity()
            holder = self._lock_holder()
            stale = self._stale_reason(holder)
            if stale is None:
                assert holder is not None
                where = "" if holder.host in (None, socket.gethostname()) else f" on {holder.host}"
                raise UserInputError(
                    f"{self.path} is in use by another manifold-nas process "
                    f"(pid {holder.pid}{where}); wait for it or choose another --out "
                    f"(if that process is not manifold-nas, remove {self.lock_path})"
                )
            if self._lock_identity() != seen:
                continue  # replaced while we looked: judge the new one
            if stale:
                LOGGER.warning("taking over the stale lock %s: %s", self.lock_path, stale)
            self.lock_path.unlink(missing_ok=True)
        raise UserInputError(f"could not lock {self.path}; another process keeps taking it")

    def _create_lock(self, holder: _LockHolder) -> bool:
        """Create the lock naming ``holder``, complete; False if there already is one.

        The record is written to a temporary file first and hard-linked to
        the lock's name, so another process never sees a lock without its
        holder; where hard links are not supported, ``O_EXCL`` does.
        """
        text = holder.to_text()
        tmp = self.path / f"{LOCK_NAME}.tmp-{os.getpid()}"
        try:
            with open(tmp, "w") as fh:
                fh.write(text)
            try:
                os.link(tmp, self.lock_path)
                return True
            except FileExistsError:
                return False
            except OSError:
                pass  # no hard links here (some network and FAT file systems)
        finally:
            tmp.unlink(missing_ok=True)
        try:
            fd = os.open(self.lock_path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        try:
            with os.fdopen(fd, "w") as fh:
                fh.write(text)
        except BaseException:
            self.lock_path.unlink(missing_ok=True)
            raise
        return True

    def _lock_identity(self) -> tuple[int, int, int] | None:
        try:
            info = self.lock_path.stat()
        except OSError:
            return None
        return info.st_dev, info.st_ino, info.st_mtime_ns

    def _lock_holder(self) -> _LockHolder | None:
        try:
            return _LockHolder.parse(self.lock_path.read_text())
        except (OSError, UnicodeDecodeError):
            return None

    def _stale_reason(self, holder: _LockHolder | None) -> str | None:
        """Why the lock may be taken over ('' to take it silently), or None if it is held."""
        if holder is None:
            if not self.lock_path.exists():
                return ""  # released meanwhile
            return "it names no process"
        me = _this_process()
        if holder.host is not None and holder.host != me.host:
            return None  # a process on another host: its pid cannot be checked from here
        if holder.pid == me.pid:
            # left by this very process (re-entrant) or, with another start
            # time, by an earlier holder of this pid (a restarted container)
            if holder.start_time is not None and holder.start_time == me.start_time:
                return ""
            return f"pid {holder.pid} is this process"
        if not _pid_alive(holder.pid):
            return f"pid {holder.pid} is no longer running"
        stat = _proc_stat(holder.pid)
        if stat is None:
            return None  # no /proc: a live pid is taken to be the holder
        state, start = stat
        if state in ("Z", "X"):
            return f"pid {holder.pid} has exited"
        if holder.start_time is not None:
            if start != holder.start_time:
                return f"pid {holder.pid} now belongs to another process (started at another time)"
            return None
        # an old lock holding only a pid: the holder cannot have started after writing it
        started = _started_at(start)
        try:
            written = self.lock_path.stat().st_mtime
        except OSError:
            return ""
        if started is not None and started > written + _OLD_LOCK_SLACK_S:
            return f"pid {holder.pid} was started after the lock was written"
        return None

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
        """Append one JSON record to ``metrics.jsonl``; a failed append leaves no torn line."""
        line = json.dumps(record, default=float) + "\n"
        size = self.metrics_bytes()
        try:
            with open(self.metrics_path, "a") as fh:
                fh.write(line)
        except OSError as err:
            try:
                self.truncate_metrics(size)
            except OSError:
                pass
            full = disk_full_cause(err)
            if full is not None:
                raise disk_full_error(self.metrics_path, full) from None
            raise

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
