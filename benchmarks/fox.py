"""FOX-NAS: predictor quality, search under a latency budget, and the coefficient report.

Three parts (``--parts``), on the domains of ``--domains`` (vision: digits,
SPD: JapaneseVowels, volumetric: synthetic shapes) from the
``configs/*/fox_*.yaml`` configs, for seeds ``0 .. --seeds - 1``:

``predictors``
    One ``fox`` search per domain and seed (supernet labels, every labelled
    sub-network measured end to end). The labelled sub-networks are split
    70 / 30 at random; OLS and Lasso predictors of accuracy (the task's
    primary metric) and of measured latency are fitted on the 70 % and
    scored on the held-out 30 % by Kendall's τ and R². The look-up-table
    latency (per-op LUT sum plus the offset calibrated on the 70 %) is
    scored the same way, as the baseline the latency predictor must beat.
``search``
    Search under a latency budget at an equal number of evaluated networks
    ``--evaluations`` (each a stand-alone training of ``--trial-epochs``
    epochs at the proxy setting): ``fox`` with ``labels: trials``
    (``--evaluations`` − 1 labelled sub-networks, annealing on the
    predictors, one more trial if the chosen design was not labelled),
    random search, and regularized evolution, the last two with the
    ``predictor_filter`` rejecting candidates over the budget by the same
    look-up table (the fox run's, offsets included) before training. The
    budget is the median measured latency of 12 random sub-networks (so
    about half the space is feasible), measured before the searches. Each
    chosen design is retrained at the config's ``train:`` setting and
    tested; its derived network's latency is measured end to end to say
    whether the budget holds.
``report``
    The ``predictor.md`` of the first predictors run of the first domain,
    copied to ``benchmarks/results/fox_coefficients_<domain>.md`` for the README.

Writes ``benchmarks/results/fox.json`` and ``fox.md`` (``fox_quick.*`` with
``--quick``) and prints the markdown tables.

Usage::

    .venv/bin/python benchmarks/fox.py --quick                     # smoke test, minutes
    .venv/bin/python benchmarks/fox.py --seeds 3                   # everything
    .venv/bin/python benchmarks/fox.py --parts predictors --domains spd --seeds 3
"""

from __future__ import annotations

import argparse
import json
import math
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from manifold_nas.config import apply_overrides, load_config, parse_config  # noqa: E402
from manifold_nas.cost.budget import GenotypeCost  # noqa: E402
from manifold_nas.predictors.performance import (  # noqa: E402
    PREDICTOR_KINDS,
    Quality,
    held_out_quality,
    kendall_tau,
    r_squared,
)
from manifold_nas.run.context import Run  # noqa: E402
from manifold_nas.run.retrain import train_derived  # noqa: E402
from manifold_nas.search import search  # noqa: E402
from manifold_nas.space.genotype import Genotype  # noqa: E402
from manifold_nas.space.sampling import random_genotype  # noqa: E402
from manifold_nas.strategies.multi_trial.evolution import RegularizedEvolution  # noqa: E402
from manifold_nas.strategies.multi_trial.filters import PredictorFilter  # noqa: E402
from manifold_nas.strategies.multi_trial.random_search import RandomSearch  # noqa: E402

PARTS = ("predictors", "search", "report")
RESULTS = ROOT / "benchmarks" / "results"
HELD_OUT = 0.3
BUDGET_PROBES = 12

TINY_TRAIN = ["train.epochs=1", "train.max_steps_per_epoch=2"]
TINY_FOX = [
    "search.epochs=1",
    "search.max_steps_per_epoch=3",
    "strategy.samples=10",
    "strategy.steps=100",
    "strategy.restarts=1",
    "strategy.latency_repeats=3",
    "strategy.latency_warmup=1",
]


@dataclass(frozen=True)
class Domain:
    """A domain's fox config and its smoke-test overrides."""

    config: str
    quick: list[str] = field(default_factory=list)


DOMAINS = {
    "vision": Domain(
        "configs/vision/fox_digits.yaml",
        [*TINY_FOX, *TINY_TRAIN, "strategy.recalibration_batches=1"],
    ),
    "spd": Domain(
        "configs/spd/fox_japanese_vowels.yaml",
        [*TINY_FOX, *TINY_TRAIN, "strategy.recalibration_batches=1"],
    ),
    "volumetric": Domain(
        "configs/volumetric/fox_synthetic_shapes.yaml",
        [
            *TINY_FOX,
            *TINY_TRAIN,
            "data.n_train=4",
            "data.n_test=2",
            "data.shape=[16, 16, 8]",
            "data.patch_size=[16, 16, 8]",
            "data.samples_per_volume=1",
            "network.channels=[2, 4]",
            "network.strides=[[2, 2, 2]]",
        ],
    ),
}


def domain_config(name: str, quick: bool, seed: int, extra: Sequence[str] = ()) -> dict[str, Any]:
    domain = DOMAINS[name]
    overrides = [*(domain.quick if quick else []), f"seed={seed}", *extra]
    return load_config(ROOT / domain.config, overrides).to_dict()


# -- part (a): predictor quality ---------------------------------------------------------------
def predictor_quality(name: str, seed: int, quick: bool, work: Path) -> dict[str, Any]:
    """Fit on 70 % of one fox run's labelled sub-networks, score on the other 30 %."""
    # the budget only steers the annealer, which this part does not score
    config = domain_config(name, quick, seed, ["strategy.verify=false", "strategy.budget=null"])
    started = time.perf_counter()
    out = work / f"predictors-{name}-{seed}"
    result = search(parse_config(config), out, quiet=True)
    fox = result.strategy
    primary = fox.primary
    genotypes, accuracy, measured = fox.labelled_set(result.run)
    X = fox.features.matrix(genotypes)
    accuracy = np.asarray(accuracy)
    latency = np.array([m["latency_ms"] for m in measured])
    order = np.random.default_rng(seed).permutation(len(genotypes))
    n_test = max(2, round(HELD_OUT * len(genotypes)))
    test, train = order[:n_test], order[n_test:]
    row: dict[str, Any] = {
        "domain": name,
        "seed": seed,
        "samples": len(genotypes),
        "held_out": len(test),
        "primary_metric": primary,
        "seconds": time.perf_counter() - started,
        "run_dir": str(out),
    }
    for target, y in ((primary, accuracy), ("latency_ms", latency)):
        for kind in PREDICTOR_KINDS:
            if kind == "lasso" and len(train) < 6:
                continue
            quality = held_out_quality(X, y, kind, train, test)
            row[f"{target}|{kind}"] = quality.to_dict()
    lut = GenotypeCost(fox.cost_model.table)
    lut.calibrate([genotypes[i] for i in train], [measured[i] for i in train])
    predicted = [lut.cost(genotypes[i], "latency_ms") for i in test]
    truth = latency[test]
    row["latency_ms|lut"] = Quality(
        kendall_tau(truth, predicted), r_squared(truth, predicted), len(test)
    ).to_dict()
    row["lut_offset_ms"] = lut.offsets["latency_ms"].value
    return row


def predictor_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| domain | target | predictor | held-out Kendall τ | held-out R² | runs |",
        "|---|---|---|---|---|---|",
    ]
    for domain in dict.fromkeys(r["domain"] for r in rows):
        runs = [r for r in rows if r["domain"] == domain]
        keys = [k for k in runs[0] if "|" in k]
        for key in keys:
            target, kind = key.split("|")
            label = {"ols": "OLS", "lasso": "Lasso", "lut": "LUT sum + offset"}[kind]
            taus = [r[key]["kendall_tau"] for r in runs if key in r]
            r2s = [r[key]["r2"] for r in runs if key in r]
            lines.append(
                f"| {domain} | {target} | {label} | {_mean_std(taus)} | {_mean_std(r2s)} | "
                f"{len(taus)} |"
            )
    return "\n".join(lines)


# -- part (b): search under a budget --------------------------------------------------------------
def latency_budget(config: dict[str, Any]) -> tuple[float, list[float]]:
    """The median end-to-end latency of random sub-networks (about half the space fits)."""
    run = Run(parse_config(config), quiet=True)
    specs = run.build_searchable().arch_specs
    x = run.example_input()
    options = config["strategy"]
    rng = random.Random(config["seed"] + 17)
    latencies = [
        run.measure_genotype(
            random_genotype(specs, run.opset.name, run.opset.zero, rng),
            x,
            warmup=options.get("latency_warmup", 3),
            repeats=options.get("latency_repeats", 20),
        )["latency_ms"]
        for _ in range(BUDGET_PROBES)
    ]
    return statistics.median(latencies), latencies


def run_multi_trial(config: dict[str, Any], strategy, cost: GenotypeCost, budget: float):
    """A multi-trial strategy with the LUT budget filter, without a run directory."""
    run = Run(parse_config(config), quiet=True)
    strategy.predictor_filter = PredictorFilter.parse({"budget": {"latency_ms": budget}})
    strategy.setup(run)
    # the fox run's table and calibrated offsets, so every method has one feasibility rule
    strategy.predictor_filter.cost = cost
    started = time.perf_counter()
    genotype = strategy.run(run)
    summary = strategy.summary(run)
    return genotype, time.perf_counter() - started, summary["rejected"], run


def evaluate_design(
    config: dict[str, Any], genotype: Genotype, budget: float, out: Path, repeats: int
) -> dict[str, Any]:
    """Retrain and test the design; measure its search-setting network's latency."""
    parsed = parse_config(config)
    trained = train_derived(genotype, parsed, out, quiet=True)
    run = Run(parsed, quiet=True)
    measured = run.measure_genotype(genotype, run.example_input(), repeats=repeats)
    return {
        "test": trained["test"],
        "parameters": trained["parameters"],
        "train_seconds": trained["train_seconds"],
        "latency_ms": measured["latency_ms"],
        "budget_holds": measured["latency_ms"] <= budget,
        "genotype": genotype.to_dict()["cells"],
    }


def search_under_budget(
    name: str, seed: int, quick: bool, work: Path, evaluations: int, trial_epochs: int
) -> list[dict[str, Any]]:
    base = domain_config(name, quick, seed)
    repeats = base["strategy"].get("latency_repeats", 20)
    budget, probes = latency_budget(base)
    common = {"domain": name, "seed": seed, "budget_ms": budget, "evaluations": evaluations}
    fox_config = apply_overrides(
        base,
        [
            "strategy.labels=trials",
            f"strategy.samples={evaluations - 1}",
            f"strategy.trial_epochs={trial_epochs}",
            f"strategy.budget.latency_ms={budget}",
        ],
    )
    started = time.perf_counter()
    fox = search(parse_config(fox_config), work / f"search-{name}-{seed}-fox", quiet=True)
    common["metric"] = fox.strategy.primary
    rows = [
        {
            **common,
            "method": "fox (SA on predictors)",
            "search_seconds": time.perf_counter() - started,
            "lut_latency_ms": fox.strategy.designs[0]["cost"]["latency_ms"],
            **evaluate_design(
                fox_config, fox.genotype, budget, work / f"{name}-{seed}-fox", repeats
            ),
        }
    ]
    cost = fox.strategy.cost_model
    plain = {k: v for k, v in base.items() if k != "strategy"}
    batch = 2
    for method, strategy in (
        ("random (LUT filter)", RandomSearch(trials=evaluations, epochs=trial_epochs, batch=batch)),
        (
            "regularized evolution (LUT filter)",
            RegularizedEvolution(
                trials=evaluations,
                population=min(evaluations, max(2, evaluations // 3)),
                sample=2,
                epochs=trial_epochs,
                batch=batch,
            ),
        ),
    ):
        genotype, seconds, rejected, _ = run_multi_trial(plain, strategy, cost, budget)
        rows.append(
            {
                **common,
                "method": method,
                "search_seconds": seconds,
                "rejected_before_training": rejected,
                "lut_latency_ms": cost.cost(genotype, "latency_ms"),
                **evaluate_design(
                    plain, genotype, budget, work / f"{name}-{seed}-{method[:6]}", repeats
                ),
            }
        )
    for row in rows:
        row["budget_probes_ms"] = probes
    return rows


def search_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| domain | method | test score (mean ± std) | latency ms / budget ms | budget holds | "
        "search s | runs |",
        "|---|---|---|---|---|---|---|",
    ]
    for domain in dict.fromkeys(r["domain"] for r in rows):
        for method in dict.fromkeys(r["method"] for r in rows if r["domain"] == domain):
            runs = [r for r in rows if r["domain"] == domain and r["method"] == method]
            metric = runs[0]["metric"]
            scores = [r["test"].get(metric, math.nan) for r in runs]
            latency = statistics.fmean(r["latency_ms"] for r in runs)
            budget = statistics.fmean(r["budget_ms"] for r in runs)
            holds = sum(r["budget_holds"] for r in runs)
            seconds = statistics.fmean(r["search_seconds"] for r in runs)
            lines.append(
                f"| {domain} | {method} | {metric} {_mean_std(scores)} | {latency:.3g} / "
                f"{budget:.3g} | {holds} of {len(runs)} | {seconds:.0f} | {len(runs)} |"
            )
    return "\n".join(lines)


# -- shared ---------------------------------------------------------------------------------------
def _mean_std(values: Sequence[float]) -> str:
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return "n/a"
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{mean:.3f} ± {std:.3f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    parser.add_argument("--domains", nargs="+", choices=list(DOMAINS), default=list(DOMAINS))
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 (default 3)")
    parser.add_argument("--evaluations", type=int, default=30, help="networks trained per search")
    parser.add_argument("--trial-epochs", type=int, default=3, help="epochs per trained network")
    parser.add_argument("--quick", action="store_true", help="1 seed, tiny budgets (smoke test)")
    parser.add_argument("--work", type=Path, default=None, help="keep run directories here")
    args = parser.parse_args(argv)
    seeds = range(1 if args.quick else args.seeds)
    evaluations = 4 if args.quick else args.evaluations
    trial_epochs = 1 if args.quick else args.trial_epochs
    suffix = "_quick" if args.quick else ""
    work = args.work or Path(tempfile.mkdtemp(prefix="fox-bench-"))
    results: dict[str, Any] = {"quick": args.quick, "seeds": list(seeds)}
    markdown = []
    if "predictors" in args.parts or "report" in args.parts:
        rows = [predictor_quality(d, s, args.quick, work) for d in args.domains for s in seeds]
        results["predictors"] = rows
        markdown += ["## Predictor quality (held-out sub-networks)", "", predictor_table(rows)]
        if "report" in args.parts:
            first = rows[0]
            report = RESULTS / f"fox_coefficients_{first['domain']}{suffix}.md"
            RESULTS.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(Path(first["run_dir"]) / "predictor.md", report)
            png = Path(first["run_dir"]) / "predictor_coefficients.png"
            if png.is_file():
                shutil.copyfile(png, RESULTS / f"fox_coefficients_{first['domain']}{suffix}.png")
            results["report"] = str(report.relative_to(ROOT))
            markdown += ["", f"Coefficient report ({first['domain']}): {results['report']}"]
    if "search" in args.parts:
        rows = [
            row
            for d in args.domains
            for s in seeds
            for row in search_under_budget(d, s, args.quick, work, evaluations, trial_epochs)
        ]
        results["search"] = rows
        markdown += [
            "",
            f"## Search under a latency budget ({evaluations} trained networks each)",
            "",
            search_table(rows),
        ]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"fox{suffix}.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    text = "\n".join(markdown) + "\n"
    (RESULTS / f"fox{suffix}.md").write_text(text)
    print(text)
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
