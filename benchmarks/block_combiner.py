"""Speed of the exact block combiner (DNA step 5) on DNA-sized random instances.

    python -m benchmarks.block_combiner [--seeds 0 1 2 3 4] [--quick]

Each block has ``n`` candidates (1,296 = 6 ops on 4 layers, DNA's cell) with
costs uniform in [1, 10) and losses drawn three ways:

* ``random``: uniform in [0, 1), independent of cost;
* ``correlated``: ``1 / cost`` plus Gaussian noise (sd 0.01), the DNA
  picture where bigger ops distil better;
* ``convex``: exactly ``1 / cost``, so every candidate is on its block's
  Pareto front, the hardest case for front merging. Its full front is too
  large to list, so only ``combine_blocks`` is timed there.

For every size, kind and seed, ``combine_blocks`` is timed at budgets 25, 50
and 75 % of the way from the cheapest to the dearest total cost,
``combine_at_budgets`` at those three together, and ``pareto_front``; rows
report the median over seeds (timings include reading the Python lists).
Small instances are also checked against brute force over every
combination. Writes ``benchmarks/results/block_combiner.json`` and prints a
markdown table.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import operator
import platform
import statistics
import time
from pathlib import Path

import numpy as np

from manifold_nas.strategies.dna.combiner import combine_at_budgets, combine_blocks, pareto_front

ROOT = Path(__file__).resolve().parents[1]
FULL_SIZES = [(6, 216), (6, 1296), (8, 1296)]
QUICK_SIZES = [(4, 36), (6, 216)]
KINDS = ("random", "correlated", "convex")
BUDGET_FRACTIONS = (0.25, 0.5, 0.75)
#: (blocks, candidates, instances) for the brute-force check
BRUTE_FORCE = (3, 8, 200)


def random_instance(kind: str, blocks: int, candidates: int, seed: int):
    """Candidates per block as (loss, cost) pairs, and the cheapest and dearest totals."""
    rng = np.random.default_rng(seed)
    instance = []
    for _ in range(blocks):
        cost = rng.uniform(1, 10, candidates)
        if kind == "random":
            loss = rng.uniform(0, 1, candidates)
        elif kind == "correlated":
            loss = 1 / cost + rng.normal(0, 0.01, candidates)
        else:
            loss = 1 / cost
        instance.append(list(zip(loss.tolist(), cost.tolist())))
    cheapest = sum(min(c for _, c in block) for block in instance)
    dearest = sum(max(c for _, c in block) for block in instance)
    return instance, cheapest, dearest


def seconds(function, *args) -> tuple[float, object]:
    """Wall-clock seconds of ``function(*args)``, and its result."""
    started = time.perf_counter()
    result = function(*args)
    return time.perf_counter() - started, result


def brute_force_check(blocks: int, candidates: int, instances: int) -> dict:
    """Compare ``combine_blocks`` with the minimum over every combination."""
    mismatches = 0
    for seed in range(instances):
        kind = KINDS[seed % len(KINDS)]
        instance, cheapest, dearest = random_instance(kind, blocks, candidates, seed)
        budget = cheapest + (seed % 7 + 1) / 8 * (dearest - cheapest)
        best = min(
            (
                functools.reduce(operator.add, (block[j][0] for block, j in zip(instance, c))),
                functools.reduce(operator.add, (block[j][1] for block, j in zip(instance, c))),
                c,
            )
            for c in itertools.product(range(candidates), repeat=blocks)
            if functools.reduce(operator.add, (block[j][1] for block, j in zip(instance, c)))
            <= budget
        )
        found = combine_blocks(instance, budget)
        mismatches += (found.loss, found.cost, found.choice) != best
    return {
        "blocks": blocks,
        "candidates": candidates,
        "instances": instances,
        "mismatches": mismatches,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--quick", action="store_true", help="small sizes and brute force only")
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks" / "results" / "block_combiner.json"
    )
    args = parser.parse_args()
    sizes = QUICK_SIZES if args.quick else FULL_SIZES
    rows = []
    lines = [
        "| instances | blocks | candidates per block | budget fraction | median seconds | front size |",
        "|---|---|---|---|---|---|",
    ]
    for kind, (blocks, candidates) in itertools.product(KINDS, sizes):
        times: dict[str, list[float]] = {}
        front_sizes = []
        for seed in args.seeds:
            instance, cheapest, dearest = random_instance(kind, blocks, candidates, seed)
            budgets = [cheapest + f * (dearest - cheapest) for f in BUDGET_FRACTIONS]
            for fraction, budget in zip(BUDGET_FRACTIONS, budgets):
                elapsed, _ = seconds(combine_blocks, instance, budget)
                times.setdefault(f"{fraction:.2f}", []).append(elapsed)
            elapsed, _ = seconds(combine_at_budgets, instance, budgets)
            times.setdefault("all three at once", []).append(elapsed)
            if kind != "convex":
                elapsed, front = seconds(pareto_front, instance)
                times.setdefault("whole front", []).append(elapsed)
                front_sizes.append(len(front))
        front_size = statistics.median(front_sizes) if front_sizes else None
        for label, samples in times.items():
            row = {
                "instances": kind,
                "blocks": blocks,
                "candidates": candidates,
                "budget_fraction": label,
                "median_seconds": statistics.median(samples),
                "max_seconds": max(samples),
                "seeds": len(samples),
                "median_front_size": front_size,
            }
            rows.append(row)
            shown = "not listed" if front_size is None else f"{front_size:,.0f}"
            lines.append(
                f"| {kind} | {blocks} | {candidates:,} | {label} | "
                f"{row['median_seconds']:.4f} | {shown} |"
            )
            print(lines[-1], flush=True)
    check = brute_force_check(*BRUTE_FORCE)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "rows": rows,
                "brute_force_check": check,
                "seeds": args.seeds,
                "quick": args.quick,
                "python": platform.python_version(),
                "numpy": np.__version__,
                "machine": platform.processor() or platform.machine(),
            },
            indent=2,
        )
        + "\n"
    )
    print("\n".join(lines))
    print(
        f"\nbrute force: {check['instances']} instances of {check['blocks']} blocks x "
        f"{check['candidates']} candidates, {check['mismatches']} mismatches"
    )


if __name__ == "__main__":
    main()
