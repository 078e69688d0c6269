"""SPDNetNAS on JapaneseVowels against fixed SPD networks and Riemannian classifiers.

Rows, each over ``--seeds`` seeds (mean ± std of test accuracy):

* ``SPDNetNAS (searched)``: search with ``configs/spd/japanese_vowels.yaml``,
  then retrain the derived cell from scratch;
* ``SPDNetNAS (random)``: a random architecture from the same space
  (:func:`benchmarks.common.random_genotype`), retrained the same way;
* ``SPDNet`` / ``SPDNetBN`` (ours): ``configs/spd/spdnet*_japanese_vowels.yaml``;
* ``spd-learn SPDNet``: ``spd_learn.models.SPDNet`` on the same covariances,
  trained with the same optimizer, epochs and batch size as our SPDNet;
* ``pyRiemann MDM`` and ``tangent space + logistic regression`` (deterministic,
  fitted once).

Writes ``benchmarks/results/spd_search.json`` and prints a markdown table.

Usage::

    .venv/bin/python benchmarks/spd_search.py             # 3 seeds (tens of minutes on 2 cores)
    .venv/bin/python benchmarks/spd_search.py --quick     # 1 seed, short schedules (smoke test)
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import random_genotype  # noqa: E402
from manifold_nas.config import load_config  # noqa: E402
from manifold_nas.genotype import Genotype  # noqa: E402
from manifold_nas.run import build_data, build_network, seed_everything  # noqa: E402
from manifold_nas.search import search  # noqa: E402
from manifold_nas.training import train_derived  # noqa: E402

CONFIGS = ROOT / "configs" / "spd"
QUICK = ["search.epochs=1", "search.max_steps_per_epoch=2", "train.epochs=3"]


def run_searched(seed: int, overrides: list[str]) -> dict[str, Any]:
    config = load_config(CONFIGS / "japanese_vowels.yaml", [f"seed={seed}", *overrides])
    with tempfile.TemporaryDirectory() as out:
        started = time.perf_counter()
        genotype = search(config, out, quiet=True).genotype
        search_seconds = time.perf_counter() - started
    summary = train_derived(genotype, config, quiet=True)
    return _row(summary, search_seconds, genotype.describe())


def run_random(seed: int, overrides: list[str]) -> dict[str, Any]:
    config = load_config(CONFIGS / "japanese_vowels.yaml", [f"seed={seed}", *overrides])
    network, opset = build_network(config, build_data(config))
    genotype = random_genotype(network.arch_specs, opset.name, opset.zero, seed)
    return _row(train_derived(genotype, config, quiet=True), 0.0, genotype.describe())


def run_fixed(name: str, seed: int, overrides: list[str]) -> dict[str, Any]:
    config = load_config(CONFIGS / f"{name}_japanese_vowels.yaml", [f"seed={seed}", *overrides])
    genotype = Genotype(opset="spd", cells={}, config=config.to_dict())
    return _row(train_derived(genotype, config, quiet=True), 0.0)


def run_spd_learn(seed: int, overrides: list[str]) -> dict[str, Any]:
    """spd-learn's SPDNet (BiMap 12 -> 8, ReEig, LogEig, Linear), our training schedule."""
    import geoopt
    from spd_learn.models import SPDNet

    config = load_config(CONFIGS / "spdnet_japanese_vowels.yaml", [f"seed={seed}", *overrides])
    seed_everything(seed)
    bundle = build_data(config)
    x_train, y_train = (t for t in bundle.train.tensors)
    x_test, y_test = (t for t in bundle.test.tensors)
    n = x_train.shape[-1]
    dims = config.network.get("dims", [n, n // 2])
    model = SPDNet(input_type="cov", subspacedim=dims[-1], n_chans=n, n_outputs=bundle.num_classes)
    model = model.to(torch.float64)
    options = {k: v for k, v in config.train.optimizer.items() if k != "name"}
    optimizer = geoopt.optim.RiemannianAdam(model.parameters(), **options)
    generator = torch.Generator().manual_seed(seed)
    started = time.perf_counter()
    for _ in range(config.train.epochs):
        model.train()
        order = torch.randperm(len(y_train), generator=generator)
        for batch in order.split(config.train.batch_size):
            optimizer.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(x_train[batch, 0]), y_train[batch])
            loss.backward()
            optimizer.step()
    train_seconds = time.perf_counter() - started
    model.eval()
    with torch.no_grad():
        accuracy = float((model(x_test[:, 0]).argmax(1) == y_test).double().mean())
    parameters = sum(p.numel() for p in model.parameters())
    return {
        "accuracy": accuracy,
        "parameters": parameters,
        "search_seconds": 0.0,
        "train_seconds": train_seconds,
    }


def run_pyriemann() -> dict[str, dict[str, Any]]:
    from pyriemann.classification import MDM
    from pyriemann.tangentspace import TangentSpace
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    config = load_config(CONFIGS / "spdnet_japanese_vowels.yaml")
    bundle = build_data(config)
    x_train, y_train = (t.numpy() for t in bundle.train.tensors)
    x_test, y_test = (t.numpy() for t in bundle.test.tensors)
    x_train, x_test = x_train[:, 0], x_test[:, 0]
    rows = {}
    for name, model in (
        ("pyRiemann MDM", MDM(metric="riemann")),
        (
            "tangent space + logistic regression",
            make_pipeline(TangentSpace(metric="riemann"), LogisticRegression(max_iter=2000)),
        ),
    ):
        started = time.perf_counter()
        model.fit(x_train, y_train)
        seconds = time.perf_counter() - started
        rows[name] = {
            "accuracy": float(np.mean(model.predict(x_test) == y_test)),
            "parameters": 0,
            "search_seconds": 0.0,
            "train_seconds": seconds,
        }
    return rows


def _row(summary: dict[str, Any], search_seconds: float, genotype: str = "") -> dict[str, Any]:
    row = {
        "accuracy": float(summary["test"]["accuracy"]),
        "parameters": int(summary["parameters"]),
        "search_seconds": search_seconds,
        "train_seconds": float(summary["train_seconds"]),
    }
    if genotype:
        row["genotype"] = genotype
    return row


def _aggregate(runs: list[dict[str, Any]]) -> dict[str, Any]:
    acc = [r["accuracy"] for r in runs]
    return {
        "accuracy_mean": statistics.mean(acc),
        "accuracy_std": statistics.stdev(acc) if len(acc) > 1 else 0.0,
        "parameters": statistics.mean(r["parameters"] for r in runs),
        "search_seconds": statistics.mean(r["search_seconds"] for r in runs),
        "train_seconds": statistics.mean(r["train_seconds"] for r in runs),
        "runs": runs,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 (default 3)")
    parser.add_argument("--quick", action="store_true", help="1 seed, short schedules")
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks" / "results" / "spd_search.json"
    )
    args = parser.parse_args(argv)
    seeds = range(1 if args.quick else args.seeds)
    overrides = QUICK if args.quick else []
    train_only = [o for o in overrides if o.startswith("train.")]

    results: dict[str, Any] = {}
    methods = {
        "SPDNetNAS (searched)": lambda s: run_searched(s, overrides),
        "SPDNetNAS (random)": lambda s: run_random(s, train_only),
        "SPDNet": lambda s: run_fixed("spdnet", s, train_only),
        "SPDNetBN": lambda s: run_fixed("spdnetbn", s, train_only),
        "spd-learn SPDNet": lambda s: run_spd_learn(s, train_only),
    }
    for name, method in methods.items():
        runs = []
        for seed in seeds:
            runs.append(method(seed))
            print(f"{name} seed {seed}: {runs[-1]['accuracy']:.4f}", file=sys.stderr, flush=True)
        results[name] = _aggregate(runs)
    for name, row in run_pyriemann().items():
        results[name] = _aggregate([row])

    args.out.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "dataset": "japanese_vowels",
        "seeds": list(seeds),
        "quick": args.quick,
        "torch": torch.__version__,
        "results": results,
    }
    args.out.write_text(json.dumps(payload, indent=2) + "\n")

    print("| method | test accuracy (%) | parameters | search s | train s |")
    print("|---|---|---|---|---|")
    for name, row in results.items():
        print(
            f"| {name} | {100 * row['accuracy_mean']:.2f} ± {100 * row['accuracy_std']:.2f} "
            f"| {row['parameters']:,.0f} | {row['search_seconds']:.0f} | {row['train_seconds']:.0f} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
