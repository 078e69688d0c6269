"""Multi-trial search: early stopping, Ray throughput, equal-budget comparison, proxy ranking.

Four parts (``--parts``), each on the domains of ``--domains`` (vision:
digits, SPD: JapaneseVowels, volumetric: synthetic shapes), from the
``configs/*/evolution_*.yaml`` configs:

``early_stopping``
    The same random search (same candidates for a seed) with
    ``early_stopping`` none, ``asha`` and ``learning_curve``: trial epochs
    run versus every trial to the end (epochs saved), the best trial's final
    proxy validation score, and its test score after retraining at the full
    setting. Target of the issue: ≥ 50 % epochs saved with the best trial
    within one standard deviation of the unpruned search.
``throughput``
    Trials per minute of one random search (no early stopping) run with
    ``search.backend: local`` (all cores for one trial, and one thread) and
    with ``ray`` on ``--workers`` one-CPU workers, side by side; also checks
    that the one-thread local run and the Ray run give identical trials.
    Ray's start-up (``ray.init``) is timed separately; the Ray rate includes
    the workers' first import and data load.
``budget``
    Regularized evolution versus random search versus the bilevel (DARTS)
    strategy at equal wall-clock (vision and SPD): the bilevel search of the
    domain's default config sets the budget, and each multi-trial search gets
    as many trials as fit in it (seconds per trial measured on a short run).
    Every searched genotype is retrained at the full setting and tested.
``kendall``
    Kendall's τ between proxy scores (the validation score after training at
    a proxy setting) and full-setting test scores (``manifold-nas train``) of
    ``--archs`` random architectures per domain and seed, for several
    proxies, so a user sees which reduced settings keep the ranking (EcoNAS).

Writes ``benchmarks/results/multi_trial.json`` (``multi_trial_quick.json``
with ``--quick``) and prints markdown tables.

Usage::

    .venv/bin/python benchmarks/multi_trial.py --quick            # smoke test, minutes
    .venv/bin/python benchmarks/multi_trial.py --parts early_stopping --domains vision --seeds 3
"""

from __future__ import annotations

import argparse
import copy
import json
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from manifold_nas.config import apply_overrides, parse_config  # noqa: E402
from manifold_nas.run.context import (  # noqa: E402
    Run,  # noqa: E402
    trial_seed,
)
from manifold_nas.run.retrain import train_derived  # noqa: E402
from manifold_nas.search import search  # noqa: E402
from manifold_nas.space.sampling import random_genotype  # noqa: E402
from manifold_nas.strategies.multi_trial.loop import EarlyStopping, TrialJob, train_trial  # noqa: E402

NO_PROXY = {"network": {}, "downsample": 1, "data_fraction": 1.0, "epochs": None}
PARTS = ("early_stopping", "throughput", "budget", "kendall")
RULES = {
    "none": "none",
    "asha": {"name": "asha", "reduction_factor": 3},
    "learning_curve": {"name": "learning_curve", "min_trials": 8},
}


@dataclass(frozen=True)
class Domain:
    """A domain's multi-trial config, its bilevel config, and its smoke-test overrides."""

    config: str
    bilevel: str | None
    #: proxies compared by the Kendall part: name -> ``proxy:`` section
    proxies: dict[str, dict[str, Any]]
    #: overrides of the multi-trial config for ``--quick``
    quick: list[str] = field(default_factory=list)
    #: overrides of the bilevel config for ``--quick``
    quick_bilevel: list[str] = field(default_factory=list)
    #: proxies of the Kendall part for ``--quick``, when the full ones do not fit its network
    quick_proxies: dict[str, dict[str, Any]] | None = None

    def kendall_proxies(self, quick: bool) -> dict[str, dict[str, Any]]:
        return self.quick_proxies if quick and self.quick_proxies is not None else self.proxies


TINY_TRAIN = ["train.epochs=1", "train.max_steps_per_epoch=2"]
TINY_VOLUMES = [
    "data.n_train=4",
    "data.n_test=2",
    "data.shape=[16, 16, 8]",
    "data.patch_size=[16, 16, 8]",
    "data.samples_per_volume=1",
    "network.channels=[2, 4]",
    "network.strides=[[2, 2, 2]]",
]

DOMAINS = {
    "vision": Domain(
        config="configs/vision/evolution_digits.yaml",
        bilevel="configs/vision/digits_darts.yaml",
        proxies={
            "configured (channels 4, data 0.5)": {"network": {"channels": 4}, "data_fraction": 0.5},
            "trial epochs only": {},
            "downsample 2": {"downsample": 2},
            "1 epoch": {"epochs": 1},
        },
        quick=[*TINY_TRAIN, "strategy.epochs=2"],
        quick_bilevel=[*TINY_TRAIN, "search.epochs=1", "search.max_steps_per_epoch=3"],
    ),
    "spd": Domain(
        config="configs/spd/evolution_japanese_vowels.yaml",
        bilevel="configs/spd/japanese_vowels.yaml",
        proxies={
            "trial epochs only": {},
            "data 0.5": {"data_fraction": 0.5},
            "2 epochs": {"epochs": 2},
        },
        quick=[*TINY_TRAIN, "strategy.epochs=2"],
        quick_bilevel=[*TINY_TRAIN, "search.epochs=1", "search.max_steps_per_epoch=3"],
    ),
    "volumetric": Domain(
        config="configs/volumetric/evolution_synthetic_shapes.yaml",
        bilevel=None,
        proxies={
            "configured (downsample 2)": {"downsample": 2},
            "trial epochs only": {},
            "channels / 2": {"network": {"channels": [4, 8, 16]}},
        },
        quick=[*TINY_TRAIN, *TINY_VOLUMES, "strategy.epochs=2"],
        quick_proxies={
            "configured (downsample 2)": {"downsample": 2},
            "trial epochs only": {},
            "channels / 2": {"network": {"channels": [1, 2]}},
        },
    ),
}


# -- configs ------------------------------------------------------------------------------
def raw_config(path: str) -> dict[str, Any]:
    return yaml.safe_load((ROOT / path).read_text())


def multi_trial_config(
    domain: Domain,
    seed: int,
    quick: bool,
    strategy: str = "evolution",
    **options: Any,
):
    """The domain's multi-trial config as ``strategy`` (evolution options dropped for random)."""
    raw = raw_config(domain.config)
    section = dict(raw["strategy"])
    if strategy != "evolution":
        section = {k: v for k, v in section.items() if k not in ("population", "sample")}
    section.update(name=strategy, **options)
    if strategy == "evolution" and "trials" in options:
        # evolution refuses a population larger than its trials (they would all be random)
        section["population"] = min(section.get("population", 8), section["trials"])
        section["sample"] = min(section.get("sample", 1), section["population"])
    raw["strategy"] = section
    overrides = [*(domain.quick if quick else []), f"seed={seed}"]
    return parse_config(apply_overrides(raw, overrides))


def quick_trials(quick: bool, full: int, small: int = 4) -> int:
    return small if quick else full


def search_row(config, retrain: bool = True) -> dict[str, Any]:
    """Search with ``config`` (in a temporary directory), retrain the genotype, return numbers."""
    with tempfile.TemporaryDirectory() as out:
        result = search(config, out, quiet=True)
    summary = result.summary
    primary = result.run.task.primary_metric
    row = {
        "seed": config.seed,
        "strategy": summary["strategy"],
        "valid": summary["final"].get(primary),
        "search_seconds": summary["search_seconds"],
        "trials": summary.get("trials"),
        "trial_epochs": summary.get("trial_epochs"),
        "trial_epochs_without_stopping": summary.get("trial_epochs_without_stopping"),
        "epochs_saved_fraction": summary.get("epochs_saved_fraction"),
        "_trials": [
            {k: v for k, v in t.items() if k != "seconds"}
            for t in getattr(result.strategy, "trials", [])
        ],
    }
    if retrain:
        trained = train_derived(result.genotype, config, quiet=True)
        row["test"] = trained["test"][primary]
        row["parameters"] = trained["parameters"]
    return row


def mean_std(values: Sequence[float], digits: int = 4) -> str:
    values = [float(v) for v in values if v is not None]
    if not values:
        return "–"
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


# -- (a) early stopping -------------------------------------------------------------------
def early_stopping(domains: Sequence[str], seeds: Sequence[int], quick: bool) -> dict[str, Any]:
    rows = []
    for name in domains:
        domain = DOMAINS[name]
        for seed in seeds:
            for rule, value in RULES.items():
                if quick and rule == "learning_curve":
                    value = {"name": "learning_curve", "min_trials": 2, "n_folds": 2}
                config = multi_trial_config(
                    domain, seed, quick, "random",
                    trials=quick_trials(quick, 32, 6), batch=2 if quick else 4,
                    early_stopping=value,
                )  # fmt: skip
                row = search_row(config)
                row.update(domain=name, rule=rule)
                rows.append(row)
                print(f"  early_stopping {name} seed {seed} {rule}: {row['search_seconds']:.0f} s")
    lines = [
        "| domain | early stopping | trial epochs run / without stopping | epochs saved "
        "| best trial valid (proxy) | best trial test (retrained) | search s |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in domains:
        for rule in RULES:
            runs = [r for r in rows if r["domain"] == name and r["rule"] == rule]
            run_epochs = statistics.fmean(r["trial_epochs"] for r in runs)
            full = statistics.fmean(r["trial_epochs_without_stopping"] for r in runs)
            saved = mean_std([100 * r["epochs_saved_fraction"] for r in runs], digits=1)
            lines.append(
                f"| {name} | {rule} | {run_epochs:.0f} / {full:.0f} | {saved} % "
                f"| {mean_std([r['valid'] for r in runs])} | {mean_std([r['test'] for r in runs])} "
                f"| {statistics.fmean(r['search_seconds'] for r in runs):.0f} |"
            )
    return {"rows": rows, "table": "\n".join(lines)}


# -- (b) throughput -------------------------------------------------------------------------
def throughput(domains: Sequence[str], workers: int, quick: bool) -> dict[str, Any]:
    import ray

    rows = []
    for name in domains:
        domain = DOMAINS[name]
        trials = quick_trials(quick, 24, 4)
        variants = [("local, all cores", "local", None), ("local, 1 thread", "local", 1)]
        variants.append((f"ray, {workers} workers x 1 thread", "ray", 1))
        results = {}
        for label, backend, threads in variants:
            config = multi_trial_config(
                domain, 0, quick, "random", trials=trials, batch=2 * workers,
                early_stopping="none",
            )  # fmt: skip
            raw = config.to_dict()
            raw["search"]["backend"] = backend
            raw["threads"] = threads
            start_seconds = None
            if backend == "ray":
                # Start Ray and warm every worker up (imports, data) with a short search
                # of the same config: the timed search then measures trials, not start-up.
                started = time.perf_counter()
                ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
                warm = copy.deepcopy(raw)
                warm["strategy"].update(trials=workers, batch=workers)
                search_row(parse_config(warm), retrain=False)
                start_seconds = time.perf_counter() - started
            try:
                row = search_row(parse_config(raw), retrain=False)
            finally:
                if backend == "ray":
                    ray.shutdown()
            row.update(domain=name, backend=label, ray_start_seconds=start_seconds)
            row["trials_per_minute"] = 60.0 * trials / row["search_seconds"]
            results[label] = row
            rows.append(row)
            print(f"  throughput {name} {label}: {row['trials_per_minute']:.1f} trials/min")
        local, single, distributed = (results[label] for label, _, _ in variants)
        distributed["speedup_over_local"] = (
            distributed["trials_per_minute"] / local["trials_per_minute"]
        )
        distributed["identical_to_one_thread_local"] = distributed["_trials"] == single["_trials"]
    lines = [
        "| domain | backend | trials | search s | trials / min | speed-up vs local | "
        "same trials as local (1 thread) | Ray start + warm-up s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        speedup = row.get("speedup_over_local")
        start = row["ray_start_seconds"]
        lines.append(
            f"| {row['domain']} | {row['backend']} | {row['trials']} | {row['search_seconds']:.1f} "
            f"| {row['trials_per_minute']:.1f} | {'' if speedup is None else f'{speedup:.2f}x'} "
            f"| {row.get('identical_to_one_thread_local', '')} "
            f"| {'' if start is None else f'{start:.1f}'} |"
        )
    return {"rows": rows, "table": "\n".join(lines)}


# -- (c) equal budget ---------------------------------------------------------------------------
def budget(domains: Sequence[str], seeds: Sequence[int], quick: bool) -> dict[str, Any]:
    rows = []
    for name in domains:
        domain = DOMAINS[name]
        if domain.bilevel is None:
            print(f"  budget: skipping {name} (no bilevel config to compare with)")
            continue
        for seed in seeds:
            raw = raw_config(domain.bilevel)
            overrides = [*(domain.quick_bilevel if quick else []), f"seed={seed}"]
            bilevel = search_row(parse_config(apply_overrides(raw, overrides)))
            bilevel.update(domain=name)
            rows.append(bilevel)
            wall = bilevel["search_seconds"]
            calibration = search_row(
                multi_trial_config(domain, seed, quick, "random", trials=4, batch=4),
                retrain=False,
            )
            per_trial = calibration["search_seconds"] / 4
            trials = max(2, int(wall / per_trial))
            for strategy in ("evolution", "random"):
                row = search_row(multi_trial_config(domain, seed, quick, strategy, trials=trials))
                row.update(domain=name, budget_seconds=wall)
                rows.append(row)
            print(f"  budget {name} seed {seed}: {wall:.0f} s, {trials} trials")
    lines = [
        "| domain | strategy | test (retrained) | best valid in search | search s | trials |",
        "|---|---|---|---|---|---|",
    ]
    for name in domains:
        for strategy in ("bilevel", "evolution", "random"):
            runs = [r for r in rows if r["domain"] == name and r["strategy"] == strategy]
            if not runs:
                continue
            trials = (
                ""
                if strategy == "bilevel"
                else f"{statistics.fmean(r['trials'] for r in runs):.0f}"
            )
            lines.append(
                f"| {name} | {strategy} | {mean_std([r['test'] for r in runs])} "
                f"| {mean_std([r['valid'] for r in runs])} "
                f"| {statistics.fmean(r['search_seconds'] for r in runs):.0f} | {trials} |"
            )
    return {"rows": rows, "table": "\n".join(lines)}


# -- (d) Kendall tau --------------------------------------------------------------------------------
def kendall(
    domains: Sequence[str], seeds: Sequence[int], n_archs: int, quick: bool
) -> dict[str, Any]:
    from scipy.stats import kendalltau

    rows = []
    for name in domains:
        domain = DOMAINS[name]
        for seed in seeds:
            base = multi_trial_config(domain, seed, quick, "random")
            run = Run(base, quiet=True)
            specs = run.build_searchable().arch_specs
            sampler = random.Random(10_007 * seed + 1)
            genotypes = [
                random_genotype(specs, run.opset.name, run.opset.zero, sampler)
                for _ in range(n_archs)
            ]
            full, full_seconds = [], 0.0
            for genotype in genotypes:
                trained = train_derived(genotype, base, quiet=True)
                full.append(trained["test"][run.task.primary_metric])
                full_seconds += trained["train_seconds"]
            for proxy_name, proxy in domain.kendall_proxies(quick).items():
                raw = copy.deepcopy(base.to_dict())
                raw["proxy"] = {**NO_PROXY, **copy.deepcopy(proxy)}
                proxy_run = Run(parse_config(raw), quiet=True)
                scores, seconds = [], 0.0
                for index, genotype in enumerate(genotypes):
                    job = TrialJob(
                        index=index,
                        seed=trial_seed(seed, index),
                        cells=genotype.to_dict()["cells"],
                        epochs=proxy_run.config.proxy.epochs or base.strategy["epochs"],
                        stopping=EarlyStopping(),
                    )
                    result = train_trial(proxy_run, job)
                    scores.append(result["curve"][-1])
                    seconds += result["seconds"]
                tau, p_value = kendalltau(scores, full)
                rows.append(
                    {
                        "domain": name, "seed": seed, "proxy": proxy_name, "tau": float(tau),
                        "p_value": float(p_value), "proxy_seconds": seconds,
                        "full_seconds": full_seconds, "proxy_scores": scores, "full_scores": full,
                    }
                )  # fmt: skip
                print(f"  kendall {name} seed {seed} {proxy_name}: tau {tau:.3f}")
    lines = [
        f"| domain | proxy | Kendall τ vs full-setting test ({n_archs} archs) | "
        "proxy s / arch | full s / arch |",
        "|---|---|---|---|---|",
    ]
    for name in domains:
        for proxy_name in DOMAINS[name].kendall_proxies(quick):
            runs = [r for r in rows if r["domain"] == name and r["proxy"] == proxy_name]
            lines.append(
                f"| {name} | {proxy_name} | {mean_std([r['tau'] for r in runs], digits=3)} "
                f"| {statistics.fmean(r['proxy_seconds'] for r in runs) / n_archs:.2f} "
                f"| {statistics.fmean(r['full_seconds'] for r in runs) / n_archs:.2f} |"
            )
    return {"rows": rows, "table": "\n".join(lines)}


# -- main ----------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    parser.add_argument("--domains", nargs="+", choices=list(DOMAINS), default=list(DOMAINS))
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 (default 3)")
    parser.add_argument("--archs", type=int, default=20, help="architectures for Kendall's tau")
    parser.add_argument("--workers", type=int, default=2, help="Ray workers for the throughput")
    parser.add_argument("--quick", action="store_true", help="1 seed, tiny budgets (smoke test)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    seeds = [0] if args.quick else list(range(args.seeds))
    archs = 4 if args.quick else args.archs
    name = "multi_trial_quick.json" if args.quick else "multi_trial.json"
    out = args.out or ROOT / "benchmarks" / "results" / name
    # Parts run separately update their own section of the same file.
    results: dict[str, Any] = json.loads(out.read_text()) if out.is_file() else {}
    settings = vars(args) | {"out": str(out), "seeds": seeds, "archs": archs}
    for part in args.parts:
        print(f"{part} ...")
        started = time.perf_counter()
        if part == "early_stopping":
            section = early_stopping(args.domains, seeds, args.quick)
        elif part == "throughput":
            section = throughput(args.domains, args.workers, args.quick)
        elif part == "budget":
            section = budget(args.domains, seeds, args.quick)
        else:
            section = kendall(args.domains, seeds, archs, args.quick)
        section["rows"] = [
            {k: v for k, v in r.items() if not k.startswith("_")} for r in section["rows"]
        ]
        section.update(settings=settings, seconds=time.perf_counter() - started)
        results[part] = json.loads(json.dumps(section, default=str))
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=2) + "\n")
    for part in args.parts:
        print(f"\n### {part} ({results[part]['seconds']:.0f} s)\n\n{results[part]['table']}")
    print(f"\nresults in {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
