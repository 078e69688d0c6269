"""Retraining a derived network from scratch, and testing it.

``train.network`` options in the config override the search network's
(e.g. more channels or cells for the final network, as DARTS does). The
training loop is :meth:`manifold_nas.run.context.Run.train`, the same code every
multi-trial strategy trains its candidates with.

With an output directory the retraining is a run of its own: it takes the
directory's lock, logs every epoch to ``metrics.jsonl``, writes an atomic
``checkpoint.pt`` after every epoch and continues from it with
``resume=True`` (``manifold-nas train RUN --resume``), ending with the same
weights as an uninterrupted retraining.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from manifold_nas.config import Config
from manifold_nas.cost.measure import count_parameters
from manifold_nas.errors import UserInputError
from manifold_nas.run.checkpoint import save_torch_atomically
from manifold_nas.run.context import Run, build_network, split_train
from manifold_nas.run.directory import TRAIN_FILES, RunDirectory
from manifold_nas.run.distributed import current_world
from manifold_nas.space.contracts import SearchableNetwork
from manifold_nas.space.genotype import Genotype

__all__ = ["train_derived"]


def train_derived(
    genotype: Genotype,
    config: Config,
    out_dir: str | Path | None = None,
    quiet: bool = False,
    resume: bool = False,
) -> dict[str, Any]:
    """Build the genotype's network, train it on all training data, test it.

    Returns the summary (test metrics, parameter count, seconds), also
    written to ``out_dir/train_summary.json`` (with the weights in
    ``out_dir/model.pt``) when ``out_dir`` is given.
    """
    if out_dir is None:
        return _train(genotype, config, None, None, quiet)
    directory = RunDirectory(out_dir, TRAIN_FILES)
    state = directory.open(resume, current_world(config.device))
    try:
        if state is not None and (
            state.get("kind") != "train"
            or state.get("config") != config.to_dict()
            or state.get("genotype") != genotype.to_dict()["cells"]
        ):
            raise UserInputError(
                f"{directory.checkpoint_path} belongs to another retraining (config or genotype "
                "differ); choose another --out"
            )
        summary = _train(genotype, config, directory, state, quiet)
    except BaseException:
        directory.release(failed=True)
        raise
    directory.release()
    return summary


def _train(
    genotype: Genotype,
    config: Config,
    directory: RunDirectory | None,
    state: dict[str, Any] | None,
    quiet: bool,
) -> dict[str, Any]:
    run = Run(config, directory, quiet=quiet)
    fixed = not genotype.cells
    network, _ = build_network(
        config, run.bundle, None if fixed else genotype, extra=config.train.network
    )
    if fixed and isinstance(network, SearchableNetwork) and network.arch_specs:
        raise UserInputError(
            f"network {config.network['name']!r} is a search space; run 'manifold-nas search' "
            "first, then train the run directory or its genotype.json"
        )
    network = network.to(run.device)
    cells = genotype.to_dict()["cells"]

    def checkpoint(training_state: dict[str, Any]) -> None:
        if not run.writes:
            return
        record = training_state["history"][-1]
        directory.log({"type": "epoch", **record})
        directory.save_checkpoint(
            {
                "kind": "train",
                "config": config.to_dict(),
                "genotype": cells,
                "metrics_bytes": directory.metrics_bytes(),
                **training_state,
            }
        )

    if state is not None and run.writes:
        directory.truncate_metrics(int(state["metrics_bytes"]))
    t = config.train
    train_set, valid_set = run.bundle.train, None
    if t.valid_portion > 0:
        train_set, valid_set = split_train(run.bundle.train, 1.0 - t.valid_portion, config.seed)
    result = run.train(
        network,
        t.epochs,
        train_set=train_set,
        valid_set=valid_set,
        resume=state,
        checkpoint=None if directory is None else checkpoint,
        select_best=valid_set is not None,
        patience=t.patience,
    )
    test = run.evaluate(network, run.bundle.test, batch_size=config.train.batch_size)
    summary = {
        "test": test,
        "parameters": count_parameters(network),
        "train_seconds": result.seconds,
        "epochs_trained": len(result.history),
        "genotype": cells,
    }
    if result.best_epoch is not None:
        summary["best_epoch"] = result.best_epoch
        summary["valid"] = result.history[result.best_epoch]["valid"]
    if run.writes:
        save_torch_atomically(network.state_dict(), directory.path / "model.pt")
        directory.write_json("train_summary.json", summary)
    return summary
