"""Riemannian baselines (MDM, tangent space + logistic regression) on the bundled SPD data.

For each data set below, built by its registered builder with default options
apart from those listed (nothing is downloaded; aeon ships the series):

* ``jv_gaussian``: JapaneseVowels, 13×13 Gaussian embeddings (``augment_mean``);
* ``jv_covariance``: JapaneseVowels, plain 12×12 covariances;
* ``basic_motions``: BasicMotions, 6×6 covariances;
* ``arrowhead``, ``gunpoint``, ``osuleaf``: UCR univariate problems as 10×10
  delay-embedding covariances (``ucr_lag``, default dimension and lag);

the table gives the matrix size, classes, train/test sizes, MDM test accuracy
and tangent space + logistic regression test accuracy with ``C`` chosen by
5-fold stratified cross-validation on the training set
(:func:`manifold_nas.domains.spd.baselines.tangent_space_lr_accuracy`). Both are
deterministic, so one run is the result.

Writes ``benchmarks/results/spd_baselines.json`` and prints a markdown table.

Usage::

    .venv/bin/python -m benchmarks.spd_baselines                  # all rows (about 15 s on 2 cores)
    .venv/bin/python -m benchmarks.spd_baselines --only gunpoint  # one row
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

import torch
from threadpoolctl import threadpool_limits

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import manifold_nas.domains.spd  # noqa: E402, F401  (registers the SPD builders)
from manifold_nas.data import DATASETS  # noqa: E402
from manifold_nas.domains.spd.baselines import DEFAULT_CS, mdm_accuracy, tangent_space_lr_accuracy  # noqa: E402

#: row key -> (label, builder, builder options)
ROWS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "jv_gaussian": (
        "JapaneseVowels (Gaussian embedding)",
        "japanese_vowels",
        {"augment_mean": True},
    ),
    "jv_covariance": ("JapaneseVowels (covariance)", "japanese_vowels", {"augment_mean": False}),
    "basic_motions": ("BasicMotions (covariance)", "basic_motions", {}),
    "arrowhead": ("ArrowHead (lag covariance)", "ucr_lag", {"problem": "ArrowHead"}),
    "gunpoint": ("GunPoint (lag covariance)", "ucr_lag", {"problem": "GunPoint"}),
    "osuleaf": ("OSULeaf (lag covariance)", "ucr_lag", {"problem": "OSULeaf"}),
}


def run_row(label: str, builder: str, options: dict[str, Any], cv: int) -> dict[str, Any]:
    """Build one data set and fit both baselines on it."""
    bundle = DATASETS.get(builder)(**options)
    started = time.perf_counter()
    mdm = mdm_accuracy(bundle)
    mdm_seconds = time.perf_counter() - started
    started = time.perf_counter()
    tangent = tangent_space_lr_accuracy(bundle, cv=cv)
    tangent_seconds = time.perf_counter() - started
    covariance = bundle.info.get("covariance", {})
    return {
        "dataset": label,
        "builder": builder,
        "options": options,
        "embedding": {k: covariance[k] for k in ("embed_dim", "embed_lag") if covariance.get(k)},
        "sample_shape": list(bundle.sample_shape),
        "classes": bundle.num_classes,
        "train": len(bundle.train),
        "test": len(bundle.test),
        "mdm_accuracy": mdm["accuracy"],
        "mdm_seconds": mdm_seconds,
        "ts_lr_accuracy": tangent["accuracy"],
        "ts_lr_C": tangent["C"],
        "ts_lr_cv_accuracy": tangent["cv_accuracy"],
        "ts_lr_cv_folds": tangent["cv_folds"],
        "ts_lr_seconds": tangent_seconds,
    }


def markdown_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| data set | n | classes | train / test | MDM (%) | TS + LR (%) | C (CV acc. %) |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        n = row["sample_shape"][-1]
        channels = row["sample_shape"][0]
        size = f"{n}" if channels == 1 else f"{channels}×{n}"
        lag = row["embedding"].get("embed_lag")
        name = row["dataset"] + (f", lag {lag}" if lag else "")
        lines.append(
            f"| {name} | {size} | {row['classes']} | {row['train']} / {row['test']} "
            f"| {100 * row['mdm_accuracy']:.2f} | {100 * row['ts_lr_accuracy']:.2f} "
            f"| {row['ts_lr_C']:.3g} ({100 * row['ts_lr_cv_accuracy']:.1f}) |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=list(ROWS), help="run these rows only")
    parser.add_argument("--cv", type=int, default=5, help="cross-validation folds (default 5)")
    parser.add_argument("--threads", type=int, default=1, help="BLAS/torch threads (default 1)")
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks" / "results" / "spd_baselines.json"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    rows = []
    # Matrices of at most 13×13: extra BLAS threads only contend on a shared machine.
    with threadpool_limits(limits=args.threads):
        for key in args.only or list(ROWS):
            rows.append(run_row(*ROWS[key], cv=args.cv))
            done = rows[-1]
            print(
                f"{key}: MDM {done['mdm_accuracy']:.4f}, TS+LR {done['ts_lr_accuracy']:.4f} "
                f"(C {done['ts_lr_C']:.3g}), {done['mdm_seconds'] + done['ts_lr_seconds']:.1f} s",
                file=sys.stderr,
                flush=True,
            )

    table = markdown_table(rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "cv_folds": args.cv,
        "Cs": list(DEFAULT_CS),
        "threads": args.threads,
        "versions": {p: version(p) for p in ("pyriemann", "scikit-learn", "aeon", "numpy")},
        "rows": rows,
        "table": table,
    }
    args.out.write_text(json.dumps(payload, indent=2) + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
