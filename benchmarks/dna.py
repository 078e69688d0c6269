"""DNA (block-wise distillation) vs random and bilevel search at half the teacher's parameters.

For every domain (``--domains``) and seed (``--seeds``):

* ``dna``: ``configs/<domain>/dna_*.yaml`` (the teacher is trained inside the
  search; its parameter count fixes the budget, ``teacher_fraction: 0.5``);
  the chosen genotype is retrained from scratch with the config's ``train:``;
* ``random at budget``: ``--random-per-seed`` uniformly random genotypes of
  the same space whose derived network fits the same budget (rejection
  sampling), retrained the same way;
* ``bilevel at budget``: the domain's DARTS config (its relaxation,
  selection and ``search:`` section) on the DNA config's data, space and
  ``train:``, then the most probable genotype within the budget: per node,
  the kept edges and ops maximising the summed log-probability of the final
  architecture distribution, subject to the derived network's parameters
  ``<= budget``, solved exactly by :func:`manifold_nas.strategies.dna.combiner.combine_blocks`
  (parameters are additive over edges);
* ``teacher``: the teacher trained inside the DNA search, tested as is
  (``RUN/teacher`` is a run directory), for the gap to the teacher.

**Ranking** (``--tau-archs`` random architectures of the space, the same for
every seed, at least 20 in the full setting): each is trained from scratch
once (seed 0, ``train:``, ``--tau-epochs`` to shorten it) and tested; per seed
they are also scored by the DNA search's summed block-wise relative L1
(lower is better, negated), by the bilevel supernet with inherited weights
(validation metric after batch-norm recalibration), and by the random
strategy's own estimate (``--random-epochs`` epochs on the weight split,
validation metric). The table gives Kendall's tau of each score with the
stand-alone test metric.

Writes ``benchmarks/results/dna_<domain>.json`` (``..._quick.json`` with
``--quick``) and prints markdown tables. Usage::

    .venv/bin/python benchmarks/dna.py --domains vision volumetric --seeds 0 1 2
    .venv/bin/python benchmarks/dna.py --quick --domains vision --seeds 0   # smoke test
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import mean_std  # noqa: E402
from benchmarks.ranking import (  # noqa: E402
    inherited_scores,
    kendall_tau,
    random_architectures,
    retrain,
    stand_alone_scores,
)
from manifold_nas.config import apply_overrides, load_config, parse_config  # noqa: E402
from manifold_nas.cost.measure import count_parameters  # noqa: E402
from manifold_nas.run.context import Run, stream_seed  # noqa: E402
from manifold_nas.run.evaluation import evaluate_run  # noqa: E402
from manifold_nas.search import search  # noqa: E402
from manifold_nas.space.cell import ChosenEdge  # noqa: E402
from manifold_nas.space.genotype import Genotype  # noqa: E402
from manifold_nas.strategies.dna.combiner import Candidate, combine_blocks  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
METHODS = ("dna", "random at budget", "bilevel at budget")


@dataclass(frozen=True)
class Domain:
    """The DNA config of a domain and the DARTS config its bilevel baseline takes settings from."""

    dna: str
    bilevel: str


DOMAINS = {
    "vision": Domain("configs/vision/dna_digits.yaml", "configs/vision/digits_darts.yaml"),
    "volumetric": Domain(
        "configs/volumetric/dna_unet_teacher.yaml", "configs/volumetric/synthetic_shapes.yaml"
    ),
}

#: --quick: one short epoch everywhere, few candidates, small volumes
QUICK = [
    "search.epochs=1",
    "search.max_steps_per_epoch=2",
    "train.epochs=1",
    "train.max_steps_per_epoch=2",
]
QUICK_DNA = [
    "strategy.teacher.epochs=1",
    "strategy.max_candidates_per_block=4",
    "strategy.ranking_batches=1",
]
QUICK_DATA = {
    "volumetric": [
        "data.n_train=4",
        "data.n_test=2",
        "data.shape=[32,32,8]",
        "data.patch_size=[16,16,8]",
        "data.samples_per_volume=1",
    ],
    "vision": [],
}


def dna_raw(domain: str, seed: int, quick: bool) -> dict[str, Any]:
    overrides = [f"seed={seed}"]
    if quick:
        overrides += QUICK + QUICK_DNA + QUICK_DATA[domain]
    return load_config(ROOT / DOMAINS[domain].dna, overrides).to_dict()


def bilevel_raw(domain: str, seed: int, quick: bool) -> dict[str, Any]:
    """The DARTS config's search settings on the DNA config's data, space and retraining."""
    dna = dna_raw(domain, seed, quick)
    raw = yaml.safe_load((ROOT / DOMAINS[domain].bilevel).read_text())
    raw.update(seed=seed, data=dna["data"], network=dna["network"], train=dna["train"])
    if quick:
        raw = apply_overrides(raw, [*QUICK[:2], "strategy.warmup_epochs=0"])
    return raw


def budgeted_decode(result, budget: float) -> Genotype:
    """The most probable genotype of a bilevel search whose derived network fits ``budget``.

    Every node is a block of the multiple-choice knapsack: its candidates are
    the ``keep`` kept edges with one non-zero op each, with loss ``-Σ log p``
    of the final architecture distribution. Parameters are additive over
    nodes, so a node candidate's cost is measured exactly as the change in
    the derived network's parameters when it replaces the node's reference
    candidate (shifted per node to be non-negative, the budget shifted alike).
    """
    run, strategy = result.run, result.strategy
    specs = strategy.supernet.specs
    probabilities = strategy.supernet.arch.probabilities()
    nodes: list[tuple[str, list[tuple[float, tuple[ChosenEdge, ...]]]]] = []
    for name, spec in specs.items():
        p = probabilities[name].double().clamp_min(1e-12)
        for target in spec.targets:
            sources = sorted(s for s, t in spec.edges if t == target)
            keep = len(sources) if spec.keep <= 0 else min(spec.keep, len(sources))
            ops = [k for k, op in enumerate(spec.ops) if op != run.opset.zero]
            options = []
            for kept in itertools.combinations(sources, keep):
                rows = [spec.edges.index((s, target)) for s in kept]
                for chosen in itertools.product(ops, repeat=keep):
                    loss = -sum(math.log(float(p[r, k])) for r, k in zip(rows, chosen))
                    edges = tuple(ChosenEdge(spec.ops[k], s, target) for s, k in zip(kept, chosen))
                    options.append((loss, edges))
            nodes.append((name, options))

    def build(choice: list[int]) -> tuple[int, Genotype]:
        cells: dict[str, list[ChosenEdge]] = {name: [] for name in specs}
        for (name, options), k in zip(nodes, choice):
            cells[name].extend(options[k][1])
        genotype = Genotype(
            run.opset.name,
            {name: tuple(edges) for name, edges in cells.items()},
            ops={name: spec.ops for name, spec in specs.items()},
            config=run.config.to_dict(),
        )
        with torch.random.fork_rng(devices=[]):
            return count_parameters(run.build_derived(genotype)), genotype

    reference = [0] * len(nodes)
    base, _ = build(reference)
    blocks, shift = [], 0
    for n, (_, options) in enumerate(nodes):
        deltas = [
            build(reference[:n] + [k] + reference[n + 1 :])[0] - base for k in range(len(options))
        ]
        low = min(deltas)
        shift += low
        blocks.append(
            [Candidate(loss, d - low, k) for k, ((loss, _), d) in enumerate(zip(options, deltas))]
        )
    best = combine_blocks(blocks, budget - base - shift)
    built, genotype = build(list(best.choice))
    if built != base + shift + best.cost or built > budget:
        raise RuntimeError(f"budgeted decoding priced {base + shift + best.cost}, built {built}")
    return genotype


def bilevel_inherited(result, archs: list[Genotype], seed: int) -> list[float]:
    """Each architecture's validation metric in the bilevel supernet (batch norm recalibrated)."""
    supernet = result.strategy.supernet
    return inherited_scores(result.run, supernet, supernet.specs, archs, 4, seed)


def short_training(raw: dict[str, Any], archs: list[Genotype], epochs: int) -> list[float]:
    """The random strategy's estimate: ``epochs`` epochs on the weight split, validation metric."""
    run = Run(parse_config(raw), quiet=True)
    scores = []
    for k, arch in enumerate(archs):
        network = run.build_derived(arch)
        result = run.train(network, epochs, train_set=run.weight_set, valid_set=run.valid_set,
                           loader_seed=stream_seed(run.config.seed, f"random {k}"))  # fmt: skip
        scores.append(float(result.last_valid[run.task.primary_metric]))
    return scores


def run_domain(name: str, args: argparse.Namespace) -> dict[str, Any]:
    quick = args.quick
    rows: dict[str, list[dict[str, Any]]] = {m: [] for m in METHODS}
    teacher_rows: list[dict[str, Any]] = []
    scores: dict[str, dict[str, list[float]]] = {"dna": {}, "bilevel": {}, "random": {}}
    archs: list[Genotype] = []
    metric = ""
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            raw = dna_raw(name, seed, quick)
            config = parse_config(raw)
            started = time.perf_counter()
            dna = search(config, Path(tmp) / f"dna{seed}", quiet=True)
            dna_seconds = time.perf_counter() - started
            run, metric = dna.run, dna.run.task.primary_metric
            budget = dna.summary["cost"]["budget"]
            teacher = evaluate_run(Path(tmp) / f"dna{seed}" / "teacher")
            teacher_rows.append({"seed": seed, **teacher})
            rows["dna"].append(
                {
                    "seed": seed,
                    "search_seconds": dna_seconds,
                    "budget": budget,
                    **retrain(dna.genotype, config),
                }  # fmt: skip
            )
            for k, arch in enumerate(
                random_architectures(run, args.random_per_seed, stream_seed(seed, "random"), budget)
            ):
                rows["random at budget"].append(
                    {
                        "seed": seed,
                        "draw": k,
                        "search_seconds": 0.0,
                        "budget": budget,
                        **retrain(arch, config),
                    }  # fmt: skip
                )
            bilevel_config = parse_config(bilevel_raw(name, seed, quick))
            started = time.perf_counter()
            bilevel = search(bilevel_config, Path(tmp) / f"bilevel{seed}", quiet=True)
            bilevel_seconds = time.perf_counter() - started
            rows["bilevel at budget"].append(
                {
                    "seed": seed,
                    "search_seconds": bilevel_seconds,
                    "budget": budget,
                    "unconstrained": bilevel.genotype.to_dict()["cells"],
                    **retrain(budgeted_decode(bilevel, budget), bilevel_config),
                }  # fmt: skip
            )
            for method in METHODS:
                last = rows[method][-1]
                print(f"{name} seed {seed} {method}: test {metric} {last['test'][metric]:.4f}, "
                      f"{last['parameters']} parameters (budget {budget:.0f})", flush=True)  # fmt: skip
            print(f"{name} seed {seed} teacher: test {metric} {teacher['test'][metric]:.4f}, "
                  f"{teacher['parameters']} parameters", flush=True)  # fmt: skip
            if not archs:
                archs = random_architectures(
                    run, args.tau_archs, stream_seed(12345, "dna tau"), None
                )
            scores["dna"][str(seed)] = [-v for v in dna.strategy.score_genotypes(run, archs)]
            scores["bilevel"][str(seed)] = bilevel_inherited(bilevel, archs, seed)
            scores["random"][str(seed)] = short_training(raw, archs, args.random_epochs)
    tau_config = parse_config(dna_raw(name, 0, quick))
    standalone = stand_alone_scores(archs, tau_config, args.tau_epochs, metric, name)
    return {
        "domain": name,
        "metric": metric,
        "quick": quick,
        "seeds": args.seeds,
        "configs": {"dna": DOMAINS[name].dna, "bilevel": DOMAINS[name].bilevel},
        "rows": rows,
        "teacher": teacher_rows,
        "ranking": {
            "architectures": [a.to_dict()["cells"] for a in archs],
            "standalone": standalone,
            "standalone_epochs": args.tau_epochs,
            "random_epochs": args.random_epochs,
            "scores": scores,
            "tau": {
                k: [kendall_tau(v, standalone) for v in by_seed.values()]
                for k, by_seed in scores.items()
            },
        },
    }


def quality_table(result: dict[str, Any]) -> str:
    metric = result["metric"]
    teacher = [100 * r["test"][metric] for r in result["teacher"]]
    t_mean, t_std = mean_std(teacher)
    lines = [
        f"**{result['domain']}** (test {metric}, retrained from scratch; budget = half the "
        "teacher's parameters)",
        "",
        f"| model | test {metric} (mean ± std) | gap to teacher | parameters | within budget "
        "| search s | retrain s | runs |",
        "|---|---|---|---|---|---|---|---|",
        f"| teacher | {t_mean:.2f} ± {t_std:.2f} | 0.00 | "
        f"{sum(r['parameters'] for r in result['teacher']) / len(teacher):,.0f} | | | | {len(teacher)} |",
    ]
    for name, runs in result["rows"].items():
        values = [100 * r["test"][metric] for r in runs]
        m, s = mean_std(values)
        params = sum(r["parameters"] for r in runs) / len(runs)
        within = sum(r["parameters"] <= r["budget"] for r in runs)
        search_s = sum(r["search_seconds"] for r in runs) / len(runs)
        train_s = sum(r["train_seconds"] for r in runs) / len(runs)
        lines.append(
            f"| {name} | {m:.2f} ± {s:.2f} | {m - t_mean:+.2f} | {params:,.0f} | "
            f"{within}/{len(runs)} | {search_s:.0f} | {train_s:.0f} | {len(runs)} |"
        )
    return "\n".join(lines)


def ranking_table(result: dict[str, Any]) -> str:
    ranking = result["ranking"]
    lines = [
        f"**{result['domain']}**: Kendall τ with the stand-alone test {result['metric']} "
        f"({len(ranking['architectures'])} random architectures)",
        "",
        "| ranking by | Kendall τ (mean ± std) | seeds |",
        "|---|---|---|",
    ]
    labels = {
        "dna": "DNA: summed block-wise relative L1 (negated)",
        "bilevel": "bilevel supernet, inherited weights",
        "random": f"random strategy: {ranking['random_epochs']} epoch(s) of training",
    }
    for kind, values in ranking["tau"].items():
        finite = [v for v in values if not math.isnan(v)]
        m, s = mean_std(finite) if finite else (float("nan"), float("nan"))
        lines.append(f"| {labels[kind]} | {m:.3f} ± {s:.3f} | {len(finite)} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--domains", nargs="+", choices=sorted(DOMAINS), default=sorted(DOMAINS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--quick", action="store_true", help="one short epoch everywhere")
    parser.add_argument("--tau-archs", type=int, default=None, help="ranked architectures (20)")
    parser.add_argument("--tau-epochs", type=int, default=None, help="stand-alone epochs")
    parser.add_argument("--random-epochs", type=int, default=1, help="random strategy's epochs")
    parser.add_argument("--random-per-seed", type=int, default=1, help="random archs per seed")
    parser.add_argument("--out-dir", default=str(RESULTS))
    args = parser.parse_args()
    args.tau_archs = args.tau_archs or (4 if args.quick else 20)
    if args.tau_archs < 2:
        parser.error("--tau-archs must be at least 2")
    torch.set_num_threads(1)
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tables = []
    for name in args.domains:
        result = run_domain(name, args)
        result["command"] = " ".join(sys.argv)
        suffix = "_quick" if args.quick else ""
        path = out_dir / f"dna_{name}{suffix}.json"
        path.write_text(json.dumps(result, indent=2, default=float) + "\n")
        tables += [quality_table(result), ranking_table(result)]
        print(f"wrote {path}", flush=True)
    print("\n\n".join(tables))


if __name__ == "__main__":
    main()
