"""Data-parallel throughput: 2 processes under torchrun versus 1, one thread each.

``python -m benchmarks.distributed`` runs, side by side in one invocation, a
first-order bilevel search of each domain config (vision: digits DARTS;
volumetric: synthetic shapes) as one process and as two processes under
``torchrun --nproc_per_node=2``, every process with one thread and the same
per-process batch. It reads the per-step wall-clock (``step_seconds``) that
rank 0 logs in ``metrics.jsonl``, drops the first steps (warm-up), and
reports training samples per second and the ratio two/one. Validation,
start-up and data loading are excluded: the number is the step throughput.
The JSON goes to ``benchmarks/results/distributed.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {
    "vision": ("configs/vision/digits_darts.yaml", ["search.batch_size=32"]),
    "volumetric": ("configs/volumetric/synthetic_shapes.yaml", ["strategy.warmup_epochs=0"]),
}
WARMUP_STEPS = 3


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(config: str, overrides: list[str], processes: int, steps: int, out: Path) -> dict:
    common = ["threads=1", "search.epochs=1", f"search.max_steps_per_epoch={steps}"]
    argv = ["-m", "manifold_nas.cli", "search", config, *common, *overrides, "--out", str(out),
            "--quiet"]  # fmt: skip
    if processes > 1:
        argv = ["-m", "torch.distributed.run", f"--nproc_per_node={processes}",
                "--master_addr=127.0.0.1", f"--master_port={free_port()}", *argv]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, *argv], cwd=ROOT, env=env, capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise SystemExit(f"{config} with {processes} process(es) failed:\n{proc.stderr[-2000:]}")
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    seconds = [r["step_seconds"] for r in records if r["type"] == "step"][WARMUP_STEPS:]
    batch = yaml.safe_load((out / "config.yaml").read_text())["search"]["batch_size"]
    median = statistics.median(seconds)
    return {
        "processes": processes,
        "batch_per_process": batch,
        "steps_timed": len(seconds),
        "median_step_seconds": median,
        "samples_per_second": processes * batch / median,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--domains", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=2, help="alternating 1/2-process runs")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for domain in args.domains:
            config, overrides = CONFIGS[domain]
            results = {1: [], 2: []}
            for repeat in range(args.repeats):
                for processes in (1, 2):
                    out = Path(tmp) / f"{domain}-{processes}-{repeat}"
                    results[processes].append(run(config, overrides, processes, args.steps, out))
            one = statistics.median(r["samples_per_second"] for r in results[1])
            two = statistics.median(r["samples_per_second"] for r in results[2])
            rows.append({"domain": domain, "config": config, "one": results[1], "two": results[2],
                         "samples_per_second_1": one, "samples_per_second_2": two,
                         "speedup": two / one})  # fmt: skip
    path = ROOT / "benchmarks" / "results" / "distributed.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"rows": rows, "cpu_count": os.cpu_count()}, indent=2) + "\n")
    print("| domain | samples/s, 1 process | samples/s, 2 processes | 2 / 1 |")
    print("|---|---|---|---|")
    for row in rows:
        print(f"| {row['domain']} | {row['samples_per_second_1']:.1f} | "
              f"{row['samples_per_second_2']:.1f} | {row['speedup']:.2f} |")  # fmt: skip


if __name__ == "__main__":
    main()
