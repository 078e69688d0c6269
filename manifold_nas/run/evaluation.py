"""Evaluating and applying the networks of a finished run directory."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import nn

from manifold_nas.config import parse_config
from manifold_nas.cost.measure import count_parameters
from manifold_nas.errors import UserInputError
from manifold_nas.run.checkpoint import load_torch_file
from manifold_nas.run.context import Run, build_network
from manifold_nas.space.genotype import Genotype

__all__ = ["evaluate_run", "load_trained_network", "predict_run"]


def load_trained_network(run_dir: str | Path) -> tuple[nn.Module, Run]:
    """The retrained network of ``run_dir`` (``retrain/model.pt``) and a run over its data."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserInputError(f"run directory not found: {run_dir}")
    genotype = Genotype.load(run_dir / "genotype.json")
    config = parse_config(genotype.config, str(run_dir / "genotype.json"))
    weights = run_dir / "retrain" / "model.pt"
    if not weights.is_file():
        raise UserInputError(
            f"{run_dir} has no retrained network; run: manifold-nas train {run_dir}"
        )
    state = load_torch_file(weights, "retrained weights")
    if not isinstance(state, dict):
        raise UserInputError(f"retrained weights {weights} are not a state dict")
    run = Run(config)
    network, _ = build_network(
        config, run.bundle, genotype if genotype.cells else None, extra=config.train.network
    )
    try:
        network.load_state_dict(state)
    except (RuntimeError, ValueError, TypeError) as err:
        raise UserInputError(
            f"{weights} does not fit the run's network: {str(err).strip().splitlines()[0]}"
        ) from None
    return network.to(run.device).eval(), run


def evaluate_run(run_dir: str | Path) -> dict[str, Any]:
    """Test metrics of the run's retrained network."""
    network, run = load_trained_network(run_dir)
    test = run.evaluate(network, run.bundle.test, batch_size=run.config.train.batch_size)
    return {"test": test, "parameters": count_parameters(network)}


def predict_run(run_dir: str | Path, inputs: Sequence[str], output: str) -> list[Path]:
    """Segment images with the run's retrained network (volumetric runs)."""
    network, run = load_trained_network(run_dir)
    predictor = run.bundle.predictor
    if predictor is None:
        raise UserInputError(f"the data of {run_dir} ({run.bundle.name}) does not support predict")
    return predictor(network, [Path(p) for p in inputs], Path(output))
