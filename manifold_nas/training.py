"""Retraining a derived network from scratch, and testing it.

``train.network`` options in the config override the search network's
(e.g. more channels or cells for the final network, as DARTS does). The
training loop is :meth:`manifold_nas.run.Run.train`, the same code every
multi-trial strategy trains its candidates with.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from manifold_nas.config import Config
from manifold_nas.contracts import SearchableNetwork
from manifold_nas.errors import UserInputError
from manifold_nas.genotype import Genotype
from manifold_nas.run import Run, build_network, count_parameters
from manifold_nas.rundir import atomic_write_text

__all__ = ["train_derived"]


def train_derived(
    genotype: Genotype, config: Config, out_dir: str | Path | None = None, quiet: bool = False
) -> dict[str, Any]:
    """Build the genotype's network, train it on all training data, test it.

    Returns the summary (test metrics, parameter count, seconds), also
    written to ``out_dir/train_summary.json`` (with the weights in
    ``out_dir/model.pt``) when ``out_dir`` is given.
    """
    run = Run(config, quiet=quiet)
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
    result = run.train(network, config.train.epochs)
    test = run.evaluate(network, run.bundle.test, batch_size=config.train.batch_size)
    summary = {
        "test": test,
        "parameters": count_parameters(network),
        "train_seconds": result.seconds,
        "genotype": genotype.to_dict()["cells"],
    }
    if out_dir is not None:
        out = Path(out_dir)
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise UserInputError(f"cannot create {out}: {err.strerror or err}") from None
        weights = {k: v.detach().as_subclass(torch.Tensor) for k, v in network.state_dict().items()}
        tmp = out / f".model.pt.tmp-{id(weights)}"
        torch.save(weights, tmp)
        tmp.replace(out / "model.pt")
        atomic_write_text(out / "train_summary.json", json.dumps(summary, indent=2) + "\n")
    return summary
