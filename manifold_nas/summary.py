"""``summary.json`` of a search run: final metrics, wall-clock and sizes."""

from __future__ import annotations

import json
from typing import Any

from manifold_nas.genotype import Genotype
from manifold_nas.search import SearchRun, build_network, count_parameters

__all__ = ["write_search_summary"]


def write_search_summary(run: SearchRun, genotype: Genotype, wall_seconds: float) -> dict[str, Any]:
    """Write and return the summary of a finished search."""
    last = run.history[-1] if run.history else {}
    derived, _ = build_network(run.config, run.objects.bundle, genotype)
    network = run.supernet.network
    summary: dict[str, Any] = {
        "final": last.get("valid", {}),
        "mean_entropy": last.get("mean_entropy"),
        "parameter_free": last.get("parameter_free"),
        "epochs": run.epoch,
        "search_seconds": run.search_seconds,
        "wall_seconds": wall_seconds,
        "parameters": {
            "supernet_weights": count_parameters(network),
            "architecture": sum(p.numel() for p in run.supernet.arch_parameters()),
            "derived": count_parameters(derived),
        },
        "genotype": genotype.to_dict()["cells"],
    }
    if hasattr(network, "expected_cost"):
        summary["cost"] = network.expected_cost(run.supernet.arch.probabilities())
    if hasattr(derived, "derived_cost"):
        summary["derived_cost"] = derived.derived_cost()
    (run.out_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=float) + "\n")
    return summary
