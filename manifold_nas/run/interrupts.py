"""Interrupts: SIGINT and SIGTERM end a command cleanly, never in the middle of a write.

* :func:`deferred_signals` holds SIGINT and SIGTERM while an atomic write
  (checkpoint, JSON, weights) is in progress; a signal that arrives meanwhile
  (or had arrived just before, and was still waiting for Python to act on it)
  is raised again right after the rename, so the file on disk is always the
  old or the new one, complete;
* :func:`raise_on_sigterm` turns SIGTERM into :class:`Terminated`, an
  exception the command line catches like Ctrl-C (exit status 143 instead of
  130), so ``finally`` blocks and lock releases run on both;
* an ignored SIGINT (a job started with ``&`` from a script) stays ignored,
  as Unix has it: such a run is stopped with SIGTERM.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["Terminated", "deferred_signals", "raise_on_sigterm", "restore_sigterm", "signal_exit"]

_SIGNALS = {signal.SIGINT, signal.SIGTERM}


class Terminated(KeyboardInterrupt):
    """Raised in the main thread when the process receives SIGTERM."""

    signum = signal.SIGTERM


@contextmanager
def deferred_signals() -> Iterator[None]:
    """Hold SIGINT and SIGTERM until the block ends, then raise them (main thread only).

    Python runs a signal's handler between bytecodes, possibly well after the
    signal arrived, so blocking the signal in the OS is not enough; the
    handlers themselves are swapped for ones that only take note. An ignored
    signal stays ignored.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    previous = {signum: signal.getsignal(signum) for signum in _SIGNALS}
    previous = {signum: h for signum, h in previous.items() if h is not signal.SIG_IGN}
    for signum in previous:
        signal.signal(signum, lambda number, frame: received.append(number))
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if received:
            signal.raise_signal(received[0])


def _terminate(signum: int, frame: object) -> None:
    raise Terminated()


def raise_on_sigterm() -> Any:
    """Make SIGTERM raise :class:`Terminated` in the main thread; returns the previous handler.

    ``None`` (and nothing changed) outside the main thread, where Python
    cannot set handlers.
    """
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, _terminate)


def restore_sigterm(previous: Any) -> None:
    """Put back the SIGTERM handler :func:`raise_on_sigterm` returned (``None``: nothing)."""
    if previous is not None and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, previous)


def signal_exit(err: KeyboardInterrupt) -> tuple[str, int]:
    """The signal behind ``err`` and the exit status it ends a command with."""
    return ("SIGTERM", 143) if isinstance(err, Terminated) else ("SIGINT", 130)
