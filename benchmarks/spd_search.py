"""SPDNetNAS against fixed SPD networks and the Riemannian baselines, on six real data sets.

One recipe, ``configs/spd/japanese_vowels.yaml`` (the ``make demo`` config), is
run on every data set of :data:`benchmarks.spd_baselines.ROWS` (JapaneseVowels
as 13×13 Gaussian embeddings and as 12×12 covariances, BasicMotions, and the
UCR problems ArrowHead, GunPoint and OSULeaf as delay-embedding covariances)
with only its ``data:`` section replaced. The one setting that follows the
data is the batch size, by a rule (:func:`balanced_batch_size`): the
config's batch size is the largest, and the samples are cut into equal
batches, so no epoch ends on a batch of a few samples (36 training samples
at 30 per batch would give a batch of 6, whose batch-norm means are noise).

Rows per data set, each over ``--seeds`` seeds (mean ± std of test accuracy):

* ``searched``: search with the recipe, retrain the derived cell from scratch;
* ``random``: a uniformly random cell of the same space, retrained the same way;
* ``spdnetbn_ts``: SPDNetBN (one BiMap ``n -> n // 2``) with the recipe's
  tangent-space head and training, i.e. the recipe without a search space;
* ``spdnet`` / ``spdnetbn``: the published fixed networks (one BiMap
  ``n -> n // 2``, LogEig head), the recipe's training;
* ``mdm`` and ``ts_lr``: pyRiemann minimum distance to mean and tangent
  space + logistic regression with ``C`` by 5-fold cross-validation
  (deterministic; :mod:`manifold_nas.domains.spd.baselines`).

``--set section.key=value`` changes the recipe for every learned row, which
is how the ablations of the README were run. Writes
``benchmarks/results/spd_search.json`` and ``.md`` (``--out``).

Usage::

    .venv/bin/python -m benchmarks.spd_search                 # 3 seeds, 6 sets, 2 processes
    .venv/bin/python -m benchmarks.spd_search --quick         # 1 seed, BasicMotions, short
    .venv/bin/python -m benchmarks.spd_search --methods searched --set network.tangent_head=false
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.spd_baselines import ROWS  # noqa: E402

RECIPE = ROOT / "configs" / "spd" / "japanese_vowels.yaml"
METHODS = ("searched", "random", "spdnetbn_ts", "spdnet", "spdnetbn", "mdm", "ts_lr")
LABELS = {
    "searched": "SPDNetNAS searched",
    "random": "SPDNetNAS random cell",
    "spdnetbn_ts": "SPDNetBN + tangent head",
    "spdnet": "SPDNet",
    "spdnetbn": "SPDNetBN",
    "mdm": "MDM",
    "ts_lr": "TS + LR",
}
DETERMINISTIC = ("mdm", "ts_lr")
QUICK = ["search.epochs=2", "train.epochs=3"]


def balanced_batch_size(samples: int, largest: int) -> int:
    """The batch size of ``ceil(samples / largest)`` batches of equal size (± 1 sample).

    ``balanced_batch_size(36, 30) == 18`` (two batches of 18 instead of 30 + 6);
    ``balanced_batch_size(270, 30) == 30``.
    """
    batches = math.ceil(samples / largest)
    return math.ceil(samples / batches)


def recipe(
    dataset: str,
    overrides: list[str],
    seed: int,
    train_samples: int,
    batch_rule: bool = True,
) -> dict[str, Any]:
    """The recipe config for ``dataset``: its data section, the batch-size rule, ``overrides``."""
    from manifold_nas.config import apply_overrides, load_config

    _, builder, options = ROWS[dataset]
    config = load_config(RECIPE, [f"seed={seed}", *overrides])
    raw = config.to_dict()
    raw["data"] = {"name": builder, **options}
    if batch_rule:
        weight_samples = max(1, round(config.search.train_portion * train_samples))
        raw["search"]["batch_size"] = balanced_batch_size(weight_samples, config.search.batch_size)
        raw["train"]["batch_size"] = balanced_batch_size(train_samples, config.train.batch_size)
    return apply_overrides(raw, [])


def run_task(task: dict[str, Any]) -> dict[str, Any]:
    """One (data set, method, seed) cell of the table, in a worker process."""
    from threadpoolctl import threadpool_limits

    import manifold_nas.domains.spd  # noqa: F401  (registers the SPD builders in a spawned worker)
    from benchmarks.common import random_genotype
    from manifold_nas.config import parse_config
    from manifold_nas.run.context import build_data, build_network
    from manifold_nas.run.retrain import train_derived
    from manifold_nas.search import search
    from manifold_nas.space.genotype import Genotype

    method, seed = task["method"], task["seed"]
    raw = recipe(
        task["dataset"], task["overrides"], seed, task["train_samples"], task["batch_rule"]
    )
    row: dict[str, Any] = {"dataset": task["dataset"], "method": method, "seed": seed}
    with threadpool_limits(limits=1), tempfile.TemporaryDirectory() as out:
        started = time.perf_counter()
        if method in ("spdnet", "spdnetbn", "spdnetbn_ts"):
            network = {"name": "spdnet" if method == "spdnet" else "spdnetbn", "opset": "spd"}
            if method == "spdnetbn_ts":
                keep = ("tangent_head", "head", "flatten")
                network.update({k: v for k, v in raw["network"].items() if k in keep})
            raw = {**raw, "network": network, "train": {**raw["train"], "network": {}}}
            config = parse_config(raw)
            genotype = Genotype(opset="spd", cells={})
        else:
            config = parse_config(raw)
            if method == "searched":
                result = search(config, out, quiet=True)
                genotype = result.genotype
                row.update(
                    entropy_ratio=result.summary["entropy_ratio"],
                    top2_margin=result.summary["top2_margin"],
                    search_seconds=result.summary["search_seconds"],
                )
            else:
                network, opset = build_network(config, build_data(config))
                genotype = random_genotype(network.arch_specs, opset.name, opset.zero, seed)
            row["genotype"] = genotype.describe()
        trained = train_derived(genotype, config, quiet=True)
        row.update(
            accuracy=float(trained["test"]["accuracy"]),
            parameters=int(trained["parameters"]),
            train_seconds=float(trained["train_seconds"]),
            seconds=time.perf_counter() - started,
        )
    print(
        f"{task['dataset']} {method} seed {seed}: {100 * row['accuracy']:.2f}% "
        f"({row['seconds']:.0f} s)",
        file=sys.stderr,
        flush=True,
    )
    return row


def run_baselines(dataset: str) -> list[dict[str, Any]]:
    from benchmarks.spd_baselines import run_row

    label, builder, options = ROWS[dataset]
    result = run_row(label, builder, options, cv=5)
    return [
        {"dataset": dataset, "method": "mdm", "seed": 0, "accuracy": result["mdm_accuracy"]},
        {"dataset": dataset, "method": "ts_lr", "seed": 0, "accuracy": result["ts_lr_accuracy"]},
    ]


def aggregate(rows: list[dict[str, Any]], datasets: list[str], methods: list[str]) -> dict:
    """``{method: {dataset: {mean, std, runs}, "mean": {mean, std}}}``; the mean is per seed."""
    table: dict[str, Any] = {}
    for method in methods:
        cells: dict[str, Any] = {}
        for dataset in datasets:
            runs = sorted(
                (r for r in rows if r["method"] == method and r["dataset"] == dataset),
                key=lambda r: r["seed"],
            )
            accuracies = [r["accuracy"] for r in runs]
            if not accuracies:
                continue
            cells[dataset] = {
                "mean": statistics.fmean(accuracies),
                "std": statistics.stdev(accuracies) if len(accuracies) > 1 else 0.0,
                "runs": runs,
            }
        if len(cells) == len(datasets):
            # The six-set mean of each seed, then mean ± std over seeds (baselines: one value).
            seeds = sorted({r["seed"] for c in cells.values() for r in c["runs"]})
            per_seed = []
            for seed in seeds:
                values = [
                    next((r["accuracy"] for r in c["runs"] if r["seed"] == seed), c["mean"])
                    for c in cells.values()
                ]
                per_seed.append(statistics.fmean(values))
            cells["mean"] = {
                "mean": statistics.fmean(per_seed),
                "std": statistics.stdev(per_seed) if len(per_seed) > 1 else 0.0,
            }
        table[method] = cells
    return table


def markdown(table: dict[str, Any], datasets: list[str], methods: list[str]) -> str:
    header = "| data set | " + " | ".join(LABELS[m] for m in methods) + " |"
    lines = [header, "|---" * (len(methods) + 1) + "|"]
    for dataset in [*datasets, "mean"]:
        label = "**mean**" if dataset == "mean" else ROWS[dataset][0]
        cells = []
        for method in methods:
            cell = table.get(method, {}).get(dataset)
            if cell is None:
                cells.append("")
            elif method in DETERMINISTIC:
                cells.append(f"{100 * cell['mean']:.2f}")
            else:
                cells.append(f"{100 * cell['mean']:.2f} ± {100 * cell['std']:.2f}")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def decision_table(rows: list[dict[str, Any]], datasets: list[str]) -> str:
    lines = [
        "| data set | entropy ratio | top-2 margin | search s | retrain s |",
        "|---|---|---|---|---|",
    ]
    for dataset in datasets:
        runs = [r for r in rows if r["method"] == "searched" and r["dataset"] == dataset]
        if not runs:
            continue

        def mean(key: str, runs=runs) -> float:
            return statistics.fmean(r[key] for r in runs)

        lines.append(
            f"| {ROWS[dataset][0]} | {mean('entropy_ratio'):.2f} | {mean('top2_margin'):.3f} "
            f"| {mean('search_seconds'):.0f} | {mean('train_seconds'):.0f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 (default 3)")
    parser.add_argument("--only", nargs="+", choices=list(ROWS), help="these data sets only")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", dest="overrides")
    parser.add_argument("--jobs", type=int, default=2, help="worker processes (default 2)")
    parser.add_argument(
        "--no-batch-rule", action="store_true", help="keep the config's batch sizes (ablation)"
    )
    parser.add_argument("--quick", action="store_true", help="1 seed, BasicMotions, short runs")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "spd_search")
    args = parser.parse_args(argv)
    datasets = ["basic_motions"] if args.quick else list(args.only or ROWS)
    seeds = [0] if args.quick else list(range(args.seeds))
    overrides = [*args.overrides, *(QUICK if args.quick else [])]
    methods = list(args.methods)

    import manifold_nas.domains.spd  # noqa: F401
    from manifold_nas.data import DATASETS

    started = time.perf_counter()
    sizes = {d: len(DATASETS.get(ROWS[d][1])(**ROWS[d][2]).train) for d in datasets}
    tasks = [
        {
            "dataset": d,
            "method": m,
            "seed": s,
            "overrides": overrides,
            "train_samples": sizes[d],
            "batch_rule": not args.no_batch_rule,
        }
        for m in methods
        if m not in DETERMINISTIC
        for d in datasets
        for s in seeds
    ]
    # Largest data sets and searches first, so the pool does not end on one long task.
    tasks.sort(key=lambda t: (-sizes[t["dataset"]], t["method"] != "searched"))
    rows: list[dict[str, Any]] = []
    if tasks:
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=args.jobs, mp_context=context) as pool:
            rows.extend(pool.map(run_task, tasks))
    if any(m in DETERMINISTIC for m in methods):
        for dataset in datasets:
            rows.extend(r for r in run_baselines(dataset) if r["method"] in methods)
    wall = time.perf_counter() - started

    table = aggregate(rows, datasets, methods)
    text = markdown(table, datasets, methods)
    if "searched" in methods:
        text += "\n\nDecision and time of the searched runs (means over seeds):\n\n"
        text += decision_table(rows, datasets)
    text += f"\n\nwall-clock {wall / 60:.1f} min with {args.jobs} processes of one thread each\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "recipe": yaml.safe_load(RECIPE.read_text()),
        "overrides": overrides,
        "batch_size_rule": None
        if args.no_batch_rule
        else balanced_batch_size.__doc__.splitlines()[0],
        "datasets": datasets,
        "seeds": seeds,
        "methods": methods,
        "quick": args.quick,
        "torch": torch.__version__,
        "wall_seconds": wall,
        "table": table,
        "markdown": text,
    }
    args.out.with_suffix(".json").write_text(json.dumps(payload, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
