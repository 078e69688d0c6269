"""Cream vs SPOS vs bilevel vs random search at equal supernet steps, and one-shot ranking quality.

For every domain (``--domains``) and seed (``--seeds``), four searches spend
the same number of weight steps, those of the one-shot configs' ``search:``
section (epochs x batches of the weight split):

* ``cream``: ``configs/<domain>/cream_*.yaml``;
* ``spos (uniform)``: ``configs/<domain>/spos_*.yaml``;
* ``bilevel``: the domain's DARTS config with the one-shot ``search:`` epochs,
  batch size, split and step limit (its own optimizers and warm-up);
* ``random search``: the one-shot config with ``strategy: random``, one trial
  per search epoch, each trained for one epoch of the weight split with the
  search weight optimizer.

Each final genotype is retrained from scratch with the one-shot config's
``train:`` section and tested on the test split (accuracy, or Dice for the
volumetric domain), with its parameter count.

**Ranking.** ``--tau-paths`` (at least 20 in the full setting) random paths
of the space are trained from scratch once per domain (stand-alone test
metric, ``train:`` section, ``--tau-epochs`` to shorten it). Per seed, the
same paths are scored with inherited weights (validation split, batch norm
recalibrated) in the SPOS supernet (no distillation) and in the Cream supernet
(prioritized-path distillation); the table gives Kendall's tau between
inherited and stand-alone metrics.

Writes ``benchmarks/results/one_shot_<domain>.json`` (``..._quick.json`` with
``--quick``) and prints markdown tables. Usage::

    .venv/bin/python benchmarks/one_shot.py --domains vision --seeds 0 1 2
    .venv/bin/python benchmarks/one_shot.py --quick --domains vision --seeds 0   # smoke test
"""

from __future__ import annotations

import argparse
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
from manifold_nas.config import Config, apply_overrides, load_config, parse_config  # noqa: E402
from manifold_nas.run.context import stream_seed  # noqa: E402
from manifold_nas.search import search  # noqa: E402
from manifold_nas.space.genotype import Genotype  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
STRATEGIES = ("cream", "spos (uniform)", "bilevel", "random search")


@dataclass(frozen=True)
class Domain:
    """The three configs a domain's comparison starts from."""

    cream: str
    spos: str
    bilevel: str


DOMAINS = {
    "vision": Domain(
        "configs/vision/cream_digits.yaml",
        "configs/vision/spos_digits.yaml",
        "configs/vision/digits_darts.yaml",
    ),
    "spd": Domain(
        "configs/spd/cream_japanese_vowels.yaml",
        "configs/spd/spos_japanese_vowels.yaml",
        "configs/spd/japanese_vowels.yaml",
    ),
    "volumetric": Domain(
        "configs/volumetric/cream_synthetic_shapes.yaml",
        "configs/volumetric/spos_synthetic_shapes.yaml",
        "configs/volumetric/synthetic_shapes.yaml",
    ),
}

#: --quick: two short search epochs, one short retraining epoch, few paths
QUICK = [
    "search.epochs=2",
    "search.max_steps_per_epoch=2",
    "train.epochs=1",
    "train.max_steps_per_epoch=2",
]
QUICK_STRATEGY = {
    "cream": [
        "strategy.warmup_epochs=1",
        "strategy.board_size=3",
        "strategy.recalibration_batches=1",
    ],
    "spos (uniform)": ["strategy.final_paths=3", "strategy.recalibration_batches=1"],
    "bilevel": ["strategy.warmup_epochs=0"],
    "random search": [],
}


def _value(value: Any) -> str:
    """``value`` as an override's YAML text (PyYAML writes floats YAML reads back as floats)."""
    text = yaml.safe_dump(value, default_flow_style=True, width=1_000_000).strip()
    return text.removesuffix("...").strip()


def search_overrides(domain: Domain, quick: bool) -> dict[str, tuple[str, list[str]]]:
    """Per strategy: the config file and the overrides that give it the one-shot budget."""
    quick_common = QUICK if quick else []
    oneshot = load_config(ROOT / domain.spos, quick_common).search
    budget = [
        f"search.epochs={oneshot.epochs}",
        f"search.batch_size={oneshot.batch_size}",
        f"search.train_portion={oneshot.train_portion}",
        f"search.max_steps_per_epoch={_value(oneshot.max_steps_per_epoch)}",
    ]
    random_trials = [
        f"strategy.trials={oneshot.epochs}",
        "strategy.epochs=1",
        f"train.optimizer={_value(oneshot.weight_optimizer)}",
        f"train.lr_min={oneshot.lr_min}",
        f"train.grad_clip={_value(oneshot.grad_clip)}",
        f"train.batch_size={oneshot.batch_size}",
        f"train.max_steps_per_epoch={_value(oneshot.max_steps_per_epoch)}",
    ]
    plans = {
        "cream": (domain.cream, []),
        "spos (uniform)": (domain.spos, []),
        "bilevel": (domain.bilevel, budget),
        "random search": (domain.spos, random_trials),
    }
    return {
        name: (path, quick_common + extra + (QUICK_STRATEGY[name] if quick else []))
        for name, (path, extra) in plans.items()
    }


def retrain_config(domain: Domain, seed: int, quick: bool, epochs: int | None = None) -> Config:
    """The one-shot config's ``train:`` setting at ``seed`` (shared by every retraining)."""
    overrides = [f"seed={seed}", *(QUICK if quick else [])]
    if epochs is not None:
        overrides.append(f"train.epochs={epochs}")
    return load_config(ROOT / domain.spos, overrides)


def run_search(strategy: str, path: str, overrides: list[str], seed: int, out: Path):
    raw = yaml.safe_load((ROOT / path).read_text())
    if strategy == "random search":  # the one-shot config's space and data, random's options
        raw["strategy"] = {"name": "random"}
    config = parse_config(apply_overrides(raw, [*overrides, f"seed={seed}"]), source=path)
    started = time.perf_counter()
    result = search(config, out, quiet=True)
    return result, time.perf_counter() - started


def run_domain(name: str, seeds: list[int], quick: bool, tau_paths: int, tau_epochs: int | None):
    domain = DOMAINS[name]
    plans = search_overrides(domain, quick)
    rows: dict[str, list[dict[str, Any]]] = {s: [] for s in STRATEGIES}
    inherited: dict[str, dict[str, list[float]]] = {"spos": {}, "cream": {}}
    paths: list[Genotype] = []
    metric = ""
    with tempfile.TemporaryDirectory() as tmp:
        for seed in seeds:
            for strategy in STRATEGIES:
                path, overrides = plans[strategy]
                slug = strategy.split()[0]
                out = Path(tmp) / f"{slug}{seed}"
                result, seconds = run_search(strategy, path, overrides, seed, out)
                metric = result.run.task.primary_metric
                trained = retrain(result.genotype, retrain_config(domain, seed, quick))
                rows[strategy].append(
                    {
                        "seed": seed,
                        "search_seconds": seconds,
                        **trained,
                        "genotype": result.genotype.to_dict()["cells"],
                    }
                )
                print(
                    f"{name} seed {seed} {strategy}: test {metric} "
                    f"{trained['test'][metric]:.4f}, {trained['parameters']} parameters, "
                    f"search {seconds:.0f} s",
                    flush=True,
                )
                if slug in inherited:
                    if not paths:
                        paths = random_architectures(
                            result.run, tau_paths, stream_seed(12345, "tau")
                        )
                    strategy = result.strategy
                    inherited[slug][str(seed)] = inherited_scores(
                        result.run, strategy.supernet, strategy.specs, paths,
                        strategy.recalibration_batches, seed,
                    )  # fmt: skip
    standalone = stand_alone_scores(
        paths, retrain_config(domain, 0, quick, tau_epochs), None, metric, name
    )
    taus = {
        kind: [kendall_tau(scores, standalone) for scores in by_seed.values()]
        for kind, by_seed in inherited.items()
    }
    return {
        "domain": name,
        "metric": metric,
        "quick": quick,
        "seeds": seeds,
        "configs": {s: {"config": p, "overrides": o} for s, (p, o) in plans.items()},
        "retrain_config": domain.spos,
        "rows": rows,
        "ranking": {
            "paths": [p.to_dict()["cells"] for p in paths],
            "standalone": standalone,
            "standalone_epochs": tau_epochs,
            "inherited": inherited,
            "tau": taus,
        },
    }


def comparison_table(result: dict[str, Any]) -> str:
    metric = result["metric"]
    lines = [
        f"**{result['domain']}** (test {metric}, retrained from scratch)",
        "",
        f"| strategy | test {metric} (mean ± std) | parameters | search s | retrain s | runs |",
        "|---|---|---|---|---|---|",
    ]
    for name, runs in result["rows"].items():
        m, s = mean_std([100 * r["test"][metric] for r in runs])
        params = sum(r["parameters"] for r in runs) / len(runs)
        search_s = sum(r["search_seconds"] for r in runs) / len(runs)
        train_s = sum(r["train_seconds"] for r in runs) / len(runs)
        lines.append(
            f"| {name} | {m:.2f} ± {s:.2f} | {params:,.0f} | {search_s:.0f} | {train_s:.0f} "
            f"| {len(runs)} |"
        )
    return "\n".join(lines)


def ranking_table(result: dict[str, Any]) -> str:
    ranking = result["ranking"]
    lines = [
        f"**{result['domain']}**: Kendall τ, inherited vs stand-alone {result['metric']} "
        f"({len(ranking['paths'])} paths)",
        "",
        "| supernet | Kendall τ (mean ± std) | seeds |",
        "|---|---|---|",
    ]
    labels = {"spos": "SPOS (no distillation)", "cream": "Cream (prioritized-path distillation)"}
    for kind, values in ranking["tau"].items():
        finite = [v for v in values if not math.isnan(v)]
        m, s = mean_std(finite) if finite else (float("nan"), float("nan"))
        lines.append(f"| {labels[kind]} | {m:.3f} ± {s:.3f} | {len(finite)} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--domains", nargs="+", choices=sorted(DOMAINS), default=sorted(DOMAINS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--quick", action="store_true", help="2 short search epochs, 4 paths")
    parser.add_argument("--tau-paths", type=int, default=None, help="paths ranked (default 20)")
    parser.add_argument("--tau-epochs", type=int, default=None, help="stand-alone epochs")
    parser.add_argument("--out-dir", default=str(RESULTS))
    args = parser.parse_args()
    tau_paths = args.tau_paths or (4 if args.quick else 20)
    if tau_paths < 2:
        parser.error("--tau-paths must be at least 2")
    torch.set_num_threads(1)
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tables = []
    for name in args.domains:
        result = run_domain(name, args.seeds, args.quick, tau_paths, args.tau_epochs)
        result["command"] = " ".join(sys.argv)
        suffix = "_quick" if args.quick else ""
        path = out_dir / f"one_shot_{name}{suffix}.json"
        path.write_text(json.dumps(result, indent=2, default=float) + "\n")
        tables += [comparison_table(result), ranking_table(result)]
        print(f"wrote {path}", flush=True)
    print("\n\n".join(tables))


if __name__ == "__main__":
    main()
