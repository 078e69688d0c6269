"""Forward+backward throughput of spd_ops against spd-learn and the bare eigh floor.

Rows are op x matrix size; for each row the same float64 batch goes through

* ``ours``: spd_ops, forward then backward of ``<Y, C>`` for a fixed cotangent ``C``;
* ``spd-learn``: the equivalent spd_learn 0.2.1 layers, same forward+backward;
* ``eigh floor``: bare ``torch.linalg.eigh`` forward (no autograd) on the
  decompositions the op cannot avoid: one batch for logm/reeig, the two
  (B, n_out, n_out) batches of ReEig and LogEig for the chain, and for the
  Fréchet mean the ``K`` decompositions of one Karcher iteration.

The Fréchet-mean row compares both libraries at equal accuracy: ours runs with
its default stopping rule (tangent norm < 1e-10, log-Euclidean start); spd-learn's
``karcher_mean_iteration`` (arithmetic-mean start, ``detach=False`` so gradients
reach the inputs) runs the number of iterations it needs for the same residual,
found once before timing.

Usage::

    .venv/bin/python benchmarks/spd_ops.py            # full table, a few minutes on 2 cores
    .venv/bin/python benchmarks/spd_ops.py --quick    # small sizes only (smoke test)
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import spd_learn
from spd_learn.functional import clamp_eigvals, matrix_log
from spd_learn.functional.batchnorm import karcher_mean_iteration

import spd_ops

DTYPE = torch.float64
FULL_SIZES = {12: 256, 20: 256, 93: 32, 400: 4}
QUICK_SIZES = {12: 64, 20: 64}
REEIG_EPS = 1e-4
MEAN_TOL = 1e-10


def median_ms(fn: Callable[[], object], min_time: float, min_reps: int = 3) -> float:
    """Median wall time of ``fn`` in ms after one warm-up call."""
    fn()
    samples = []
    start = time.perf_counter()
    while len(samples) < min_reps or time.perf_counter() - start < min_time:
        tick = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - tick)
        if len(samples) >= 200:
            break
    return 1e3 * statistics.median(samples)


def random_covariances(batch: int, n: int, seed: int) -> torch.Tensor:
    """Sample covariances of 2n Gaussian draws plus a small ridge: realistic conditioning."""
    generator = torch.Generator().manual_seed(seed)
    samples = torch.randn(batch, n, 2 * n, dtype=DTYPE, generator=generator)
    return spd_ops.regularize_spd(samples @ samples.mT / (2 * n), ridge=1e-3)


def forward_backward(fn: Callable[[torch.Tensor], torch.Tensor], X: torch.Tensor):
    cotangent = torch.randn_like(fn(X).detach())

    def step() -> None:
        inputs = X.detach().requires_grad_()
        (fn(inputs) * cotangent).sum().backward()

    return step


def eigh_floor(*batches: torch.Tensor):
    def step() -> None:
        with torch.no_grad():
            for batch in batches:
                torch.linalg.eigh(batch)

    return step


def spd_learn_karcher(X: torch.Tensor, iterations: int) -> torch.Tensor:
    mean = X.mean(dim=0, keepdim=True)
    for _ in range(iterations):
        mean = karcher_mean_iteration(X, mean, detach=False)
    return mean[0]


def spd_learn_iterations_for(X: torch.Tensor, tol: float, cap: int = 50) -> int:
    with torch.no_grad():
        mean = X.mean(dim=0, keepdim=True)
        for iteration in range(1, cap + 1):
            mean = karcher_mean_iteration(X, mean, detach=False)
            residual = torch.linalg.matrix_norm(spd_ops.karcher_tangent(mean[0], X))
            if float(residual) < tol:
                return iteration
    return cap


def ours_iterations_for(X: torch.Tensor, tol: float, cap: int = 50) -> int:
    """Karcher updates our default frechet_mean performs (mirrors its stopping rule)."""
    with torch.no_grad():
        mean = spd_ops.frechet_mean(X, metric="log_euclidean")
        for iteration in range(1, cap + 1):
            tangent = spd_ops.karcher_tangent(mean, X)
            root = spd_ops.sqrtm(mean)
            mean = spd_ops.sym(root @ spd_ops.expm(tangent) @ root)
            if float(torch.linalg.matrix_norm(tangent)) < tol:
                return iteration
    return cap


def bench_size(n: int, batch: int, min_time: float) -> list[dict]:
    X = random_covariances(batch, n, seed=n)
    rows = []

    def record(op: str, ours: float, theirs: float, floor: float, **extra) -> None:
        row = {
            "op": op,
            "n": n,
            "batch": batch,
            "ours_ms": ours,
            "spd_learn_ms": theirs,
            "eigh_floor_ms": floor,
            "ours_over_spd_learn": ours / theirs,
            "ours_over_eigh": ours / floor,
            **extra,
        }
        rows.append(row)
        print(
            f"  {op:<22} n={n:<4} ours {ours:9.2f} ms  spd-learn {theirs:9.2f} ms  "
            f"eigh {floor:9.2f} ms",
            flush=True,
        )

    floor_single = median_ms(eigh_floor(X), min_time)
    record(
        "logm",
        median_ms(forward_backward(spd_ops.logm, X), min_time),
        median_ms(forward_backward(matrix_log.apply, X), min_time),
        floor_single,
    )
    threshold = torch.tensor(REEIG_EPS, dtype=DTYPE)
    record(
        "reeig",
        median_ms(forward_backward(lambda M: spd_ops.reeig(M, REEIG_EPS), X), min_time),
        median_ms(forward_backward(lambda M: clamp_eigvals.apply(M, threshold), X), min_time),
        floor_single,
    )

    n_out = max(n // 2, 2)
    torch.manual_seed(0)
    ours_chain = torch.nn.Sequential(
        spd_ops.BiMap(1, 1, n, n_out), spd_ops.ReEig(REEIG_EPS), spd_ops.LogEig()
    )
    theirs_chain = torch.nn.Sequential(
        spd_learn.BiMap(n, n_out, parametrized=False, init_method="stiefel", dtype=DTYPE),
        spd_learn.ReEig(threshold=REEIG_EPS, dtype=DTYPE),
        spd_learn.LogEig(upper=False, flatten=False, dtype=DTYPE),
    )
    X_channel = X.unsqueeze(1)
    reduced = ours_chain[0](X_channel).detach()
    record(
        "bimap_reeig_logeig",
        median_ms(forward_backward(ours_chain, X_channel), min_time),
        median_ms(forward_backward(theirs_chain, X_channel), min_time),
        median_ms(eigh_floor(reduced, reduced), min_time),
        n_out=n_out,
    )

    ours_iters = ours_iterations_for(X, MEAN_TOL)
    theirs_iters = spd_learn_iterations_for(X, MEAN_TOL)
    record(
        "frechet_mean",
        median_ms(forward_backward(lambda M: spd_ops.frechet_mean(M, tol=MEAN_TOL), X), min_time),
        median_ms(forward_backward(lambda M: spd_learn_karcher(M, theirs_iters), X), min_time),
        floor_single,
        ours_iterations=ours_iters,
        spd_learn_iterations=theirs_iters,
    )
    return rows


def markdown_table(rows: list[dict]) -> str:
    lines = [
        "| op | n | batch | ours ms | spd-learn ms | eigh floor ms | ours/spd-learn | ours/eigh |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['op']} | {row['n']} | {row['batch']} | {row['ours_ms']:.2f} "
            f"| {row['spd_learn_ms']:.2f} | {row['eigh_floor_ms']:.2f} "
            f"| {row['ours_over_spd_learn']:.2f} | {row['ours_over_eigh']:.2f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes only (smoke test)")
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(__file__).resolve().parent / "results" / "spd_ops.json",
        help="where to write the JSON results",
    )
    parser.add_argument("--min-time", type=float, default=0.5, help="seconds per measurement")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="intra-op threads; 1 by default because OpenMP spin-waiting on a shared "
        "2-core machine inflates small matmuls by 10-20x and swamps the comparison",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    sizes = QUICK_SIZES if args.quick else FULL_SIZES
    rows = []
    for n, batch in sizes.items():
        print(f"n={n}, batch={batch}", flush=True)
        rows.extend(bench_size(n, batch, args.min_time))

    table = markdown_table(rows)
    print()
    print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "dtype": "float64",
        "torch": torch.__version__,
        "spd_learn": spd_learn.__version__,
        "threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "quick": args.quick,
        "eigh_floor_note": (
            "bare torch.linalg.eigh forward: one batch for logm/reeig/frechet_mean "
            "(= one Karcher iteration's K decompositions), two (B, n_out, n_out) batches "
            "for bimap_reeig_logeig"
        ),
        "rows": rows,
    }
    args.out.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
