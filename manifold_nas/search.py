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

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from manifold_nas.config import Config, call_with_options, split_name
from manifold_nas.config_check import check_config
from manifold_nas.contracts import has_cost_model
from manifold_nas.errors import UserInputError
from manifold_nas.genotype import Genotype
from manifold_nas.run import Run, count_parameters
from manifold_nas.rundir import RunDirectory
from manifold_nas.strategies import STRATEGIES, Strategy

LOGGER = logging.getLogger("manifold_nas")

__all__ = ["SearchResult", "build_strategy", "search"]


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
    directory = RunDirectory(out_dir)
    directory.acquire()
    try:
        state = directory.prepare(resume)
        if state is not None and state.get("config") != config.to_dict():
            raise UserInputError(
                f"{directory.checkpoint_path} was written by a different config; "
                "use the run's config.yaml or a new --out directory"
            )
        run = Run(config, directory, quiet=quiet)
        strategy.setup(run)
        if state is not None:
            run.restore(state, strategy)
            LOGGER.warning("resuming %s %s", directory.path, state.get("progress", ""))
        run.write_config()
        genotype = strategy.run(run)
        genotype.save(directory.path / "genotype.json")
        summary = _summary(run, strategy, genotype, time.perf_counter() - started)
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
