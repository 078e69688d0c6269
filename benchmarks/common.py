"""Shared helpers of the benchmark scripts: run a config, sample random cells, tabulate."""

from __future__ import annotations

import json
import random
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from manifold_nas.config import apply_overrides, load_config, parse_config
from manifold_nas.run.retrain import train_derived
from manifold_nas.search import search
from manifold_nas.space.cell import ArchSpec
from manifold_nas.space.genotype import Genotype
from manifold_nas.space.sampling import random_genotype as sample_genotype

__all__ = [
    "config_dict",
    "mean_std",
    "random_genotype",
    "search_and_retrain",
    "train_fixed",
    "write_results",
]


def config_dict(path: str, overrides: Sequence[str] = ()) -> dict[str, Any]:
    return load_config(path, overrides).to_dict()


def search_and_retrain(raw: Mapping[str, Any], seed: int, out: Path) -> dict[str, Any]:
    """Search with ``raw`` at ``seed``, retrain the derived cell, return the numbers."""
    config = parse_config(apply_overrides(raw, [f"seed={seed}"]))
    result = search(config, out, quiet=True)
    genotype, summary = result.genotype, result.summary
    trained = train_derived(genotype, config, out / "retrain", quiet=True)
    return {
        "seed": seed,
        "test": trained["test"],
        "parameters": trained["parameters"],
        "search_seconds": summary["search_seconds"],
        "train_seconds": trained["train_seconds"],
        "genotype": genotype.to_dict()["cells"],
        "mean_entropy": summary["mean_entropy"],
        "entropy_ratio": summary["entropy_ratio"],
        "top2_margin": summary["top2_margin"],
        "parameter_free": summary["parameter_free"],
        "_genotype": genotype,
    }


def random_genotype(
    specs: Mapping[str, ArchSpec], opset: str, zero: str | None, seed: int
) -> Genotype:
    """A uniformly random derived cell of the same space, seeded by ``seed``."""
    return sample_genotype(specs, opset, zero, random.Random(seed))


def train_fixed(
    raw: Mapping[str, Any], seed: int, genotype: Genotype | None, out: Path
) -> dict[str, Any]:
    """Retrain a given genotype (or a fixed network when ``genotype`` has no cells)."""
    config = parse_config(apply_overrides(raw, [f"seed={seed}"]))
    genotype = genotype or Genotype(str(config.network.get("opset", "")), {})
    trained = train_derived(genotype, config, out, quiet=True)
    return {
        "seed": seed,
        "test": trained["test"],
        "parameters": trained["parameters"],
        "search_seconds": 0.0,
        "train_seconds": trained["train_seconds"],
    }


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    values = list(values)
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def write_results(
    rows: dict[str, list[dict[str, Any]]], metric: str, path: Path, extra: dict | None = None
) -> str:
    """Write the raw rows as JSON and return a markdown table of mean ± std."""
    path.parent.mkdir(parents=True, exist_ok=True)
    clean = {
        k: [{kk: vv for kk, vv in r.items() if not kk.startswith("_")} for r in v]
        for k, v in rows.items()
    }
    path.write_text(json.dumps({"rows": clean, **(extra or {})}, indent=2, default=str) + "\n")
    lines = [
        f"| model | test {metric} (mean ± std) | parameters | search s | train s | runs |",
        "|---|---|---|---|---|---|",
    ]
    for name, runs in rows.items():
        m, s = mean_std([100 * r["test"][metric] for r in runs])
        params = statistics.fmean(r["parameters"] for r in runs)
        search = statistics.fmean(r["search_seconds"] for r in runs)
        train = statistics.fmean(r["train_seconds"] for r in runs)
        lines.append(
            f"| {name} | {m:.2f} ± {s:.2f} | {params:,.0f} | {search:.0f} | {train:.0f} | {len(runs)} |"
        )
    return "\n".join(lines)
