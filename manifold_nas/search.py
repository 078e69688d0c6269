"""Running one search: check the config, open the run directory, run the strategy, write the results.

:func:`search` is what ``manifold-nas search`` does, usable from Python::

    result = search(parse_config(raw), "runs/mine")
    print(result.genotype.describe(), result.summary["final"])

The strategy comes from the config's ``strategy:`` section (``bilevel`` by
default) and is found in :data:`~manifold_nas.strategies.STRATEGIES`. Every
strategy writes the same layout: ``config.yaml``, ``metrics.jsonl``,
``checkpoint.pt``, ``genotype.json`` and ``summary.json``.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from manifold_nas.config import Config, call_with_options, check_options, split_name
from manifold_nas.cost.measure import count_parameters
from manifold_nas.data import DATASETS
from manifold_nas.errors import UserInputError
from manifold_nas.optim import ARCH_OPTIMIZERS
from manifold_nas.run.context import Run
from manifold_nas.run.directory import RunDirectory
from manifold_nas.run.distributed import (
    check_batch_norm_sync,
    current_world,
    launched_by_torchrun,
)
from manifold_nas.space.contracts import has_cost_model
from manifold_nas.space.genotype import Genotype
from manifold_nas.space.networks import NETWORKS
from manifold_nas.space.opset import OPSETS
from manifold_nas.space.relaxations import RELAXATIONS
from manifold_nas.space.selection import SELECTORS
from manifold_nas.strategies import STRATEGIES, Strategy

LOGGER = logging.getLogger("manifold_nas")

__all__ = ["SearchResult", "build_strategy", "check_config", "search"]


# -- checking a whole config before any data is loaded ---------------------------
def _check_section(registry, section: dict, where: str, n_positional: int = 0) -> None:
    name, options = split_name(section)
    check_options(registry.get(name), options, where, n_positional)


def check_optimizer(section: dict, where: str) -> None:
    """The optimizer exists and takes these options (``self`` and ``params`` aside)."""
    name, options = split_name(section)
    check_options(ARCH_OPTIMIZERS.get(name).__init__, options, where, n_positional=2)


def check_config(config: Config) -> None:
    """Refuse any unknown component or option of ``config`` with a one-line error."""
    _check_section(DATASETS, config.data, "data")
    name, options = split_name(config.network)
    if "opset" not in options:
        raise UserInputError("config section 'network' needs key 'opset'")
    OPSETS.get(str(options.pop("opset")))
    builder = NETWORKS.get(name)
    check_options(builder, options, "network", n_positional=3)
    check_options(builder, {**options, **config.train.network}, "train.network", n_positional=3)
    _check_section(RELAXATIONS, config.relaxation, "relaxation")
    _check_section(SELECTORS, config.selection, "selection")
    _check_section(STRATEGIES, config.strategy, "strategy")
    check_optimizer(config.search.weight_optimizer, "search.weight_optimizer")
    check_optimizer(config.train.optimizer, "train.optimizer")


@dataclass
class SearchResult:
    """A finished search: its genotype, ``summary.json`` content, directory, run and strategy."""

    genotype: Genotype
    summary: dict[str, Any]
    out_dir: Path
    run: Run
    strategy: Strategy


def build_strategy(config: Config) -> Strategy:
    """The strategy of the config's ``strategy:`` section, its options checked."""
    name, options = split_name(config.strategy)
    strategy = call_with_options(STRATEGIES.get(name), options, "strategy")
    strategy.name = name  # the registered name, also for strategies found by entry point
    return strategy


def search(
    config: Config, out_dir: str | Path, *, resume: bool = False, quiet: bool = False
) -> SearchResult:
    """Search with ``config`` into ``out_dir`` (continuing its checkpoint when ``resume``)."""
    started = time.perf_counter()
    check_config(config)
    strategy = build_strategy(config)
    # refuse before any rendezvous, so every rank exits 2 without joining a process group
    if launched_by_torchrun() and not strategy.supports_distributed:
        raise UserInputError(
            f"strategy {strategy.name!r} does not run data-parallel under torchrun; "
            "start it as one process (multi-trial strategies parallelise with search.backend: ray)"
        )
    world = current_world(config.device)
    sync_batch_norm = bool(getattr(strategy, "sync_batch_norm", False))
    check_batch_norm_sync(sync_batch_norm and world.distributed, config.device)
    if config.search.backend != "local" and not getattr(strategy, "uses_backend", False):
        raise UserInputError(
            f"search.backend {config.search.backend!r} runs the trials of multi-trial strategies; "
            f"strategy {strategy.name!r} has none (use backend: local, or torchrun for bilevel)"
        )
    directory = RunDirectory(out_dir)
    state = directory.open(resume, world)
    try:
        if state is not None and state.get("config") != config.to_dict():
            raise UserInputError(
                f"{directory.checkpoint_path} was written by a different config; "
                "use the run's config.yaml or a new --out directory"
            )
        run = Run(config, directory, quiet=quiet)
        strategy.setup(run)
        if state is not None:
            run.restore(state, strategy)
            if world.is_main:
                LOGGER.warning("resuming %s %s", directory.path, state.get("progress", ""))
        run.write_config()
        genotype = strategy.run(run)
        if not genotype.config:
            # the genotype carries its config, so `manifold-nas train RUN` can rebuild it
            genotype = dataclasses.replace(genotype, config=config.to_dict())
        summary = _summary(run, strategy, genotype, time.perf_counter() - started)
        if run.writes:
            genotype.save(directory.path / "genotype.json")
            directory.write_json("summary.json", summary)
    except BaseException:
        directory.release(failed=True)
        raise
    directory.release()
    return SearchResult(genotype, summary, directory.path, run, strategy)


def _summary(run: Run, strategy: Strategy, genotype: Genotype, wall: float) -> dict[str, Any]:
    derived = run.build_derived(genotype)
    summary: dict[str, Any] = {"strategy": strategy.name, "final": {}, **strategy.summary(run)}
    summary.setdefault("parameters", {})["derived"] = count_parameters(derived)
    if has_cost_model(derived):
        summary["derived_cost"] = derived.derived_cost()
    summary["search_seconds"] = run.search_seconds
    summary["wall_seconds"] = wall
    summary["genotype"] = genotype.to_dict()["cells"]
    return summary
