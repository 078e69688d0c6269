"""Ranking quality of one-shot estimates: random architectures, inherited scores, Kendall's tau.

Shared by ``benchmarks/one_shot.py`` (SPOS / Cream supernets) and
``benchmarks/dna.py`` (block-wise distillation and the bilevel supernet):
both draw the same kind of random architectures of a space, score them with
weights inherited from a supernet (batch norm recalibrated on the weight
split), retrain them from scratch and compare the two rankings.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from scipy.stats import kendalltau

from manifold_nas.config import Config, apply_overrides, parse_config
from manifold_nas.cost.measure import count_parameters
from manifold_nas.run.context import Run, stream_seed
from manifold_nas.run.retrain import train_derived
from manifold_nas.space.genotype import Genotype
from manifold_nas.space.sampling import genotype_key
from manifold_nas.strategies.one_shot.paths import PathSampler, evaluate_path, recalibration_inputs

__all__ = [
    "inherited_scores",
    "kendall_tau",
    "random_architectures",
    "retrain",
    "stand_alone_scores",
]


def random_architectures(
    run: Run, n: int, seed: int, budget: float | None = None
) -> list[Genotype]:
    """``n`` distinct uniform random genotypes of ``run``'s space (within ``budget`` parameters)."""
    specs = run.build_searchable().arch_specs
    sampler = PathSampler(specs, run.opset.name, run.opset.zero, seed=seed)
    found: dict[str, Genotype] = {}
    for _ in range(200 * n):
        if len(found) >= n:
            break
        path = sampler.draw()
        if budget is not None:
            with torch.random.fork_rng(devices=[]):
                if count_parameters(run.build_derived(path)) > budget:
                    continue
        found.setdefault(genotype_key(path), path)
    if len(found) < n:
        within = "" if budget is None else f" within {budget:.0f} parameters"
        raise RuntimeError(f"found only {len(found)} of {n} random architectures{within}")
    return list(found.values())


def inherited_scores(
    run: Run,
    supernet: torch.nn.Module,
    specs: Any,
    archs: Sequence[Genotype],
    recalibration_batches: int,
    seed: int,
) -> list[float]:
    """Each architecture's validation metric with ``supernet``'s weights (batch norm recalibrated)."""
    recalibration = recalibration_inputs(
        run, recalibration_batches, stream_seed(seed, "recalibration")
    )
    primary = run.task.primary_metric
    return [
        float(evaluate_path(run, supernet, arch, specs, recalibration)[primary]) for arch in archs
    ]


def retrain(genotype: Genotype, config: Config, epochs: int | None = None) -> dict[str, Any]:
    """Train ``genotype`` from scratch with ``config``'s ``train:`` (``epochs`` to shorten it)."""
    if epochs is not None:
        config = parse_config(apply_overrides(config.to_dict(), [f"train.epochs={epochs}"]))
    trained = train_derived(genotype, config, quiet=True)
    return {
        "test": trained["test"],
        "parameters": trained["parameters"],
        "train_seconds": trained["train_seconds"],
        "genotype": genotype.to_dict()["cells"],
    }


def kendall_tau(x: Sequence[float], y: Sequence[float]) -> float:
    """Kendall's tau-b of two score lists (NaN when one of them is constant)."""
    value = kendalltau(x, y).statistic
    return float(value) if value == value else float("nan")


def stand_alone_scores(
    archs: Sequence[Genotype], config: Config, epochs: int | None, metric: str, label: str
) -> list[float]:
    """Each architecture's test metric after training from scratch (progress on stdout)."""
    scores = []
    for k, arch in enumerate(archs):
        trained = retrain(arch, config, epochs)
        scores.append(float(trained["test"][metric]))
        print(f"{label} stand-alone {k + 1}/{len(archs)}: {scores[-1]:.4f}", flush=True)
    return scores
