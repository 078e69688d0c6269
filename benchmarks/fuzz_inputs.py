"""Many more fuzzed inputs than ``make test`` runs: every file kind, every option.

``python -m benchmarks.fuzz_inputs --examples 200`` runs ``tests/test_fuzz_inputs.py``
with that many hypothesis examples per file kind (``make test`` runs 6) and
writes ``benchmarks/results/fuzz_inputs.json`` with the outcome and wall-clock
of each test. Any traceback, exit status other than 0 or 2, or more than one
line of error output fails the run and names the case.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=200)
    args = parser.parse_args()
    started = time.perf_counter()
    report = ROOT / "benchmarks" / "results" / "fuzz_inputs.xml"
    report.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, MANIFOLD_NAS_FUZZ_EXAMPLES=str(args.examples))
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:warnings",
            "tests/test_fuzz_inputs.py",
            f"--junitxml={report}",
        ],  # fmt: skip
        cwd=ROOT,
        env=env,
    )
    seconds = time.perf_counter() - started
    result = {"examples_per_kind": args.examples, "exit_status": proc.returncode,
              "seconds": seconds, "junit": str(report.relative_to(ROOT))}  # fmt: skip
    (ROOT / "benchmarks" / "results" / "fuzz_inputs.json").write_text(json.dumps(result, indent=2))
    print("| examples per kind | result | seconds |\n|---|---|---|")
    print(f"| {args.examples} | {'pass' if proc.returncode == 0 else 'FAIL'} | {seconds:.0f} |")
    sys.exit(proc.returncode)


if __name__ == "__main__":
    main()
