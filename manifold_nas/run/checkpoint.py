"""Atomic checkpoints that load with ``weights_only=True``.

A checkpoint is written to a temporary file in the same folder, flushed and
fsynced, then renamed over the old one, so a kill at any moment leaves
either the previous or the new checkpoint, never a torn one. A write that
fails removes its temporary file; one that fails for want of space (or
quota) raises :class:`~manifold_nas.errors.DiskFullError`, one line naming
the file, its directory and the space left there. Tensor subclasses
(geoopt's manifold tensors) are stored as plain tensors so that the safe
unpickler accepts them.

:func:`atomic_write` is the one atomic writer: checkpoints, weights and the
run directory's JSON and text files all go through it.
"""

from __future__ import annotations

import errno
import os
import pickle
import shutil
import struct
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import torch
from torch import Tensor

from manifold_nas.errors import DiskFullError, UserInputError
from manifold_nas.run.interrupts import deferred_signals

__all__ = [
    "CHECKPOINT_FORMAT",
    "atomic_write",
    "disk_full_cause",
    "disk_full_error",
    "load_checkpoint",
    "load_torch_file",
    "save_checkpoint",
    "save_torch_atomically",
]

CHECKPOINT_FORMAT = "manifold-nas-checkpoint-v2"


def _plain(obj: Any) -> Any:
    if isinstance(obj, Tensor):
        return obj.detach().as_subclass(Tensor)
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_plain(v) for v in obj)
    return obj


def save_checkpoint(state: dict[str, Any], path: str | Path) -> None:
    """Write ``state`` atomically to ``path``."""
    path = Path(path)
    save_torch_atomically({"format": CHECKPOINT_FORMAT, **state}, path)


def save_torch_atomically(obj: Any, path: str | Path) -> None:
    """``torch.save`` through a temporary file and a rename, never interrupted halfway.

    Tensor subclasses are stored as plain tensors, so ``weights_only``
    loading accepts the file. See :func:`atomic_write` for what a failed
    write leaves (nothing) and raises.
    """
    plain = _plain(obj)
    atomic_write(path, lambda fh: torch.save(plain, fh))


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], object]) -> None:
    """Write ``path`` through ``write(fh)`` on a temporary file, fsync and rename.

    SIGINT and SIGTERM wait until the file is complete. Whatever goes wrong,
    the temporary file is removed and ``path`` keeps its previous content;
    running out of space (``ENOSPC``, ``EDQUOT``) raises :class:`DiskFullError`,
    every other error is re-raised as it was.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with deferred_signals():
        try:
            with open(tmp, "wb") as fh:
                write(fh)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException as err:
            try:
                tmp.unlink(missing_ok=True)
            except OSError:
                pass
            full = disk_full_cause(err)
            if full is not None:
                raise disk_full_error(path, full) from None
            raise


_DISK_FULL_ERRNOS = {errno.ENOSPC: "no space left on device"}
if hasattr(errno, "EDQUOT"):
    _DISK_FULL_ERRNOS[errno.EDQUOT] = "disk quota exceeded"


def disk_full_cause(err: BaseException) -> OSError | None:
    """The ``ENOSPC``/``EDQUOT`` error behind ``err``, if any.

    ``torch.save`` reports a failed write as a ``RuntimeError`` raised while
    handling the ``OSError``, so the whole chain is searched.
    """
    seen: set[int] = set()
    pending: list[BaseException | None] = [err]
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in _DISK_FULL_ERRNOS:
            return current
        pending.extend((current.__cause__, current.__context__))
    return None


def disk_full_error(path: str | Path, err: OSError) -> DiskFullError:
    """One line: what failed, the directory, its free space, and that nothing is lost."""
    path = Path(path)
    folder = path.parent
    try:
        free = _format_bytes(shutil.disk_usage(folder).free)
    except OSError:
        free = "unknown space"
    if (folder / "checkpoint.pt").is_file():
        kept = "the last checkpoint is intact"
    else:
        kept = "no checkpoint had been written yet"
    reason = _DISK_FULL_ERRNOS.get(err.errno or 0, "no space left on device")
    return DiskFullError(
        f"{reason} writing {path} ({free} free in {folder}); free some space and resume: {kept}"
    )


def _format_bytes(size: int) -> str:
    if size < 1024:
        return f"{size} B"
    value = float(size)
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        value /= 1024
        if value < 1024 or unit == "TiB":
            break
    return f"{value:.1f} {unit}"


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint`, safely.

    Raises :class:`UserInputError` for a missing, corrupt or foreign file.
    """
    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"checkpoint not found: {path}")
    state = load_torch_file(path, "checkpoint")
    if not isinstance(state, dict) or not str(state.get("format", "")).startswith(
        "manifold-nas-checkpoint"
    ):
        raise UserInputError(f"checkpoint {path} was not written by manifold-nas")
    if state["format"] != CHECKPOINT_FORMAT:
        raise UserInputError(
            f"checkpoint {path} has format {state['format']!r}; this manifold-nas reads "
            f"{CHECKPOINT_FORMAT!r} (start a new run)"
        )
    return state


def load_torch_file(path: str | Path, what: str) -> Any:
    """``torch.load(path, weights_only=True)``, every failure one line naming ``path``.

    Nothing in the file is executed: a pickle that asks for code is refused.
    """
    path = Path(path)
    try:
        with warnings.catch_warnings():
            # torch warns about unusual pickle protocols before refusing them;
            # the refusal below is the one line the user needs
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        reason = _first_line(err)
        if "weights_only" in reason or "Unsupported global" in str(err):
            reason = "it holds objects that are not plain tensors, so it was not loaded"
        raise UserInputError(f"{what} {path} was refused: {reason}") from None
    except (RuntimeError, zipfile.BadZipFile, EOFError, ValueError, OSError, struct.error) as err:
        raise UserInputError(
            f"{what} {path} is corrupt or not a torch file: {_first_line(err)}"
        ) from None
    except Exception as err:  # any other failure of the unpickler is a bad file too
        raise UserInputError(
            f"{what} {path} is corrupt or not a torch file: {type(err).__name__}: {_first_line(err)}"
        ) from None


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0].strip() if text else type(err).__name__
