"""Atomic checkpoints that load with ``weights_only=True``.

A checkpoint is written to a temporary file in the same folder, flushed and
fsynced, then renamed over the old one, so a kill at any moment leaves
either the previous or the new checkpoint, never a torn one. Tensor
subclasses (geoopt's manifold tensors) are stored as plain tensors so that
the safe unpickler accepts them.
"""

from __future__ import annotations

import os
import pickle
import struct
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from manifold_nas.errors import UserInputError
from manifold_nas.run.interrupts import deferred_signals

__all__ = [
    "CHECKPOINT_FORMAT",
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

    Tensor subclasses are stored as plain tensors, so ``weights_only`` loading
    accepts the file.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with deferred_signals():
        with open(tmp, "wb") as fh:
            torch.save(_plain(obj), fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)


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
