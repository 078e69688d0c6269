"""Where the trials of a multi-trial search run: in this process, or as Ray tasks.

A backend runs a function ``work(run, job) -> result`` for each job of a
batch and hands every result back as soon as it is ready. Both backends call
the same ``work`` on a :class:`~manifold_nas.run.context.Run` built from the same
config, so a trial's result does not depend on where it ran (given the same
number of threads per trial, see below); only the order in which results
arrive does, and the multi-trial loop never lets that order decide anything.

* :class:`LocalBackend` (``search.backend: local``, the default): one job
  after another on the search's own run; Ray is never imported.
* :class:`RayBackend` (``search.backend: ray``): one Ray task per job, each
  asking for one CPU. Without ``search.ray_address`` Ray is started on this
  machine with all its cores (``ray.init(num_cpus=os.cpu_count())``) and
  stopped again after the search; with an address the search connects to
  that cluster, whose workers need manifold-nas and the data installed. A
  Ray session that is already running (started by the caller) is used as it
  is and left running. A task receives only the config (as plain data), the
  job and the function's import path; it builds the run context (data,
  split, op set) from the config once per worker process and keeps it for
  the worker's next tasks.

**Threads.** A Ray task runs with ``threads:`` torch threads when the config
sets it and one otherwise (one trial per core). Floating-point sums depend
on the thread count, so a local search reproduces a Ray search bit for bit
when both use one thread per trial (``threads: 1``).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import torch

from manifold_nas.config import parse_config
from manifold_nas.errors import UserInputError
from manifold_nas.run.context import Run, usable_cpu_count

LOGGER = logging.getLogger("manifold_nas")

__all__ = ["LocalBackend", "RayBackend", "TrialBackend", "open_backend"]

#: a trial function: the run context and one job in, a result (plain data) out
Work = Callable[[Run, Any], Any]
#: called with (job, result) for every finished job, in the order they finish
OnResult = Callable[[Any, Any], None]

RAY_EXTRA = "pip install 'manifold-nas[ray]'"


class TrialBackend(Protocol):
    """Runs ``work(run, job)`` for every job of a batch."""

    #: the config's ``search.backend`` name
    name: str

    def map(self, work: Work, jobs: Sequence[Any], on_result: OnResult) -> None:
        """Run every job; call ``on_result(job, result)`` as each finishes."""
        ...

    def close(self) -> None:
        """Release what the backend started."""
        ...


class LocalBackend:
    """Jobs one after another, in the given order, on the search's own run."""

    name = "local"

    def __init__(self, run: Run) -> None:
        self.run = run

    def map(self, work: Work, jobs: Sequence[Any], on_result: OnResult) -> None:
        for job in jobs:
            on_result(job, work(self.run, job))

    def close(self) -> None:
        pass


# -- Ray ---------------------------------------------------------------------------
#: the run contexts a Ray worker process has built, by config (JSON)
_WORKER_RUNS: dict[str, Run] = {}


def _worker_run(config_json: str) -> Run:
    run = _WORKER_RUNS.get(config_json)
    if run is None:
        config = parse_config(json.loads(config_json))
        run = Run(config, None, quiet=True)
        _WORKER_RUNS.clear()  # one search at a time per worker: drop the previous data
        _WORKER_RUNS[config_json] = run
    # one thread per trial unless the config asks for more, never beyond the CPUs
    torch.set_num_threads(min(run.config.threads or 1, usable_cpu_count()))
    return run


def run_in_worker(config_json: str, work: Work, job: Any) -> Any:
    """The body of a Ray task: ``work(run, job)`` on the worker's run for ``config_json``."""
    return work(_worker_run(config_json), job)


def _import_ray():
    try:
        import ray
    except ImportError:
        raise UserInputError(f"search.backend 'ray' needs Ray: {RAY_EXTRA}") from None
    return ray


class RayBackend:
    """One Ray task (one CPU) per job; results handed back in the order they finish.

    Parameters
    ----------
    run:
        The search's run; its config is what every task rebuilds its run from.
    address:
        A Ray cluster to connect to (``search.ray_address``); None starts Ray
        on this machine with all its cores, unless a session is already running.
    """

    name = "ray"

    def __init__(self, run: Run, address: str | None = None) -> None:
        ray = _import_ray()
        self._ray = ray
        self._started = False
        if not ray.is_initialized():
            if address is None:
                ray.init(
                    num_cpus=os.cpu_count(),
                    include_dashboard=False,
                    logging_level=logging.WARNING,
                    log_to_driver=False,
                )
            else:
                ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
            self._started = True
        self._config_json = json.dumps(run.config.to_dict(), sort_keys=True)
        self._task = ray.remote(num_cpus=1)(run_in_worker)

    def map(self, work: Work, jobs: Sequence[Any], on_result: OnResult) -> None:
        ray = self._ray
        pending = {self._task.remote(self._config_json, work, job): job for job in jobs}
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                job = pending.pop(ref)
                try:
                    result = ray.get(ref)
                except ray.exceptions.RayTaskError as err:
                    # Re-raise the worker's own exception (a UserInputError keeps
                    # its one-line message) rather than Ray's traceback wrapper.
                    cause = getattr(err, "cause", None)
                    if isinstance(cause, Exception):
                        raise cause from None
                    raise
                on_result(job, result)

    def close(self) -> None:
        if self._started:
            self._ray.shutdown()
            self._started = False


def open_backend(run: Run) -> TrialBackend:
    """The backend named by the run's ``search.backend``."""
    settings = run.config.search
    if settings.backend == "ray":
        return RayBackend(run, settings.ray_address)
    return LocalBackend(run)
