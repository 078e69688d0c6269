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
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from manifold_nas.errors import UserInputError

__all__ = ["CHECKPOINT_FORMAT", "load_checkpoint", "save_checkpoint"]

CHECKPOINT_FORMAT = "manifold-nas-checkpoint-v1"


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
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as fh:
        torch.save({"format": CHECKPOINT_FORMAT, **_plain(state)}, fh)
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
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, pickle.UnpicklingError, zipfile.BadZipFile, EOFError, ValueError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserInputError(
            f"checkpoint {path} is corrupt or not a torch file: {reason}"
        ) from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise UserInputError(f"checkpoint {path} was not written by manifold-nas")
    return state
