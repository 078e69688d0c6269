"""Architecture geometry and optimizer: Adam on logits vs EG vs Riemannian optimizers.

    python -m benchmarks.arch_optimizers [--domains vision spd] [--seeds 0 1 2] [--search-epochs N]
                                         [--spd-data ROW] [--lr-scale S] [--quick]

For every domain config and seed, search with each architecture
parametrisation/optimizer pair below, retrain the derived cell, and report
test accuracy (mean ± std), the parameter-free ops of the final argmax cell,
how decided the final distribution is (mean edge entropy as a fraction of its
maximum, and the top-2 margin) and the search wall-clock. Everything else in
the config (weights, data, epochs, hence the number of architecture steps) is
shared, and any entropy term of the config is switched off;
``--search-epochs`` lengthens every search alike, to see whether the
geometry matters once the distributions have had time to move;
``--spd-data`` runs the SPD rows on another data set of
:data:`benchmarks.spd_baselines.ROWS` with the recipe (and batch-size rule)
of ``benchmarks/spd_search.py``; ``--lr-scale`` multiplies every
architecture step size alike (the defaults below barely leave the uniform
distribution in 100 steps; 10 gives the demo's Adam step). Writes
``benchmarks/results/arch_optimizers[_<data>][_<epochs>ep][_lr<S>x].json`` and prints a
table.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import torch

from benchmarks.common import config_dict, mean_std, search_and_retrain
from benchmarks.spd_baselines import ROWS
from benchmarks.spd_search import recipe
from manifold_nas.config import apply_overrides

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
DOMAINS = {
    "vision": CONFIGS / "vision" / "digits_darts.yaml",
    "spd": CONFIGS / "spd" / "japanese_vowels.yaml",
}
#: (label, relaxation, arch optimizer); learning rates are the same for every domain.
VARIANTS = [
    (
        "Adam on logits (DARTS)",
        {"name": "softmax"},
        {"name": "adam", "lr": 3e-3, "betas": [0.5, 0.999], "weight_decay": 1e-3},
    ),
    ("EG on simplex (GAEA)", {"name": "simplex"}, {"name": "eg", "lr": 0.5}),
    ("RiemannianAdam on Simplex", {"name": "simplex"}, {"name": "riemannian_adam", "lr": 3e-3}),
    ("RiemannianSGD on sphere", {"name": "sphere"}, {"name": "riemannian_sgd", "lr": 0.5}),
]


def spd_recipe(row: str, overrides: list[str]) -> dict:
    """``benchmarks/spd_search.py``'s recipe on the SPD data set ``row``."""
    import manifold_nas.domains.spd  # noqa: F401  (registers the SPD data sets)
    from manifold_nas.data import DATASETS

    _, builder, options = ROWS[row]
    samples = len(DATASETS.get(builder)(**options).train)
    return recipe(row, overrides, seed=0, train_samples=samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--domains", nargs="+", default=list(DOMAINS), choices=list(DOMAINS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--search-epochs", type=int, default=None)
    parser.add_argument(
        "--spd-data", choices=list(ROWS), default=None, help="SPD data set (default: the config's)"
    )
    parser.add_argument(
        "--lr-scale",
        type=float,
        default=1.0,
        help="multiply every architecture learning rate (10: the demo's Adam step of 3e-2)",
    )
    parser.add_argument(
        "--variants", type=int, nargs="+", default=None, help="indices into VARIANTS (default: all)"
    )
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    overrides = ["search.epochs=1", "train.epochs=2"] if args.quick else []
    if args.search_epochs:
        overrides.append(f"search.epochs={args.search_epochs}")
    suffix = f"_{args.spd_data}" if args.spd_data else ""
    suffix += f"_{args.search_epochs}ep" if args.search_epochs else ""
    suffix += f"_lr{args.lr_scale:g}x" if args.lr_scale != 1.0 else ""
    args.out = args.out or f"benchmarks/results/arch_optimizers{suffix}.json"
    results: dict[str, dict[str, list]] = {}
    lines = [
        "| domain | architecture optimizer | test accuracy (mean ± std) | parameter-free ops | entropy / max | top-2 margin | search s |",
        "|---|---|---|---|---|---|---|",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        for domain in args.domains:
            if domain == "spd" and args.spd_data:
                base = spd_recipe(args.spd_data, overrides)
            else:
                base = config_dict(str(DOMAINS[domain]), overrides)
            for k, (label, relaxation, optimizer) in enumerate(VARIANTS):
                if args.variants and k not in args.variants:
                    continue
                raw = apply_overrides(base, [])
                raw["relaxation"] = relaxation
                strategy = raw.setdefault("strategy", {"name": "bilevel"})
                strategy["entropy_weight"] = 0.0  # the geometry alone decides
                strategy["arch_optimizer"] = {**optimizer, "lr": optimizer["lr"] * args.lr_scale}
                runs = [
                    search_and_retrain(raw, s, Path(tmp) / f"{domain}{k}_{s}") for s in args.seeds
                ]
                for r in runs:
                    r.pop("_genotype")
                results.setdefault(domain, {})[label] = runs
                m, sd = mean_std([100 * r["test"]["accuracy"] for r in runs])
                free = [r["parameter_free"] for r in runs]
                ratio = statistics.fmean(r["entropy_ratio"] for r in runs)
                margin = statistics.fmean(r["top2_margin"] for r in runs)
                seconds = statistics.fmean(r["search_seconds"] for r in runs)
                name = (
                    f"{domain} ({args.spd_data})" if domain == "spd" and args.spd_data else domain
                )
                lines.append(
                    f"| {name} | {label} | {m:.2f} ± {sd:.2f} | {free} | {ratio:.2f} | "
                    f"{margin:.3f} | {seconds:.0f} |"
                )
                print(lines[-1], flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(__import__("json").dumps(results, indent=2, default=str) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
