"""Evaluating and applying the networks of a finished run directory."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from manifold_nas.config import parse_config
from manifold_nas.errors import UserInputError
from manifold_nas.genotype import Genotype
from manifold_nas.search import build_data, build_network, count_parameters, make_loader

__all__ = ["evaluate_run", "load_trained_network", "predict_run"]


def load_trained_network(run_dir: str | Path):
    """The retrained network of ``run_dir`` (``retrain/model.pt``), its config and data."""
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
    bundle = build_data(config)
    network, opset = build_network(
        config, bundle, genotype if genotype.cells else None, extra=config.train.network
    )
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
        network.load_state_dict(state)
    except (RuntimeError, ValueError, EOFError) as err:
        raise UserInputError(
            f"{weights} does not fit the run's network: {str(err).splitlines()[0]}"
        ) from None
    return network.eval(), opset, config, bundle


def evaluate_run(run_dir: str | Path) -> dict[str, Any]:
    """Test metrics of the run's retrained network."""
    network, opset, config, bundle = load_trained_network(run_dir)
    dtype = opset.dtype

    def model(x: torch.Tensor) -> torch.Tensor:
        return network(x.to(dtype) if dtype is not None else x)

    loader = make_loader(
        bundle, bundle.test, bundle.eval_batch_size or config.train.batch_size, False
    )
    with torch.no_grad():
        test = bundle.task.evaluate(model, loader, config.device)
    return {"test": test, "parameters": count_parameters(network)}


def predict_run(run_dir: str | Path, inputs: Sequence[str], output: str) -> list[Path]:
    """Segment images with the run's retrained network (volumetric runs)."""
    network, _, _, bundle = load_trained_network(run_dir)
    predictor = bundle.predictor
    if predictor is None:
        raise UserInputError(f"the data of {run_dir} ({bundle.name}) does not support predict")
    return predictor(network, [Path(p) for p in inputs], Path(output))
