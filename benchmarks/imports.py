"""Start-up cost: what ``import manifold_nas``, the command line and a first search step import.

Every case runs in a fresh interpreter (``sys.executable``), ``--repeats`` times,
the cases interleaved so that a load change on the machine touches all of them
alike; a case's time is the child's wall time from spawn to exit, interpreter
start included. Each child also reports whether ``torch`` and ``monai`` ended
up in ``sys.modules``. The cases:

* ``python -c pass``: the interpreter's own start, for reference;
* ``import torch``: the yardstick of the ratio column;
* ``import manifold_nas``, and the same plus ``manifold_nas.OpSet`` (the space layer);
* ``manifold-nas --help``, ``manifold-nas search --help``, ``manifold-nas list``:
  the installed console script, executed in the child with :func:`runpy.run_path`
  so that its modules can be reported; ``--help (bare)`` runs the script itself;
* a first SPD and a first vision search step: :func:`manifold_nas.search.search`
  on a tiny SPDNetNAS (BasicMotions) and DARTS (digits) config, one epoch of one
  step, in a temporary directory.

Targets (the pass column): ``--help`` under 0.5 s and without torch,
``import manifold_nas`` without torch, it and ``+ OpSet`` within 1.25x of
``import torch``,
the SPD and vision first steps without MONAI.

Usage::

    .venv/bin/python benchmarks/imports.py               # 5 repeats, about 2 minutes on 2 cores
    .venv/bin/python benchmarks/imports.py --repeats 1 --no-search
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

HELP_SECONDS = 0.5
IMPORT_RATIO = 1.25
REPORT_VAR = "MANIFOLD_NAS_IMPORTS_REPORT"
#: top-level packages worth knowing about when they are (or are not) imported
WATCHED = ("torch", "monai", "numpy", "scipy", "pandas", "sklearn", "matplotlib", "nibabel")
SCRIPT = Path(sys.executable).with_name("manifold-nas")

#: defines ``_report(**extra)``, which writes the child's modules to $MANIFOLD_NAS_IMPORTS_REPORT
_PROLOGUE = f"""
import json as _json, os as _os, sys as _sys
def _report(**extra):
    top = {{name.partition(".")[0] for name in _sys.modules}}
    watched = [name for name in {WATCHED!r} if name in top]
    with open(_os.environ[{REPORT_VAR!r}], "w") as f:
        _json.dump({{"modules": watched, **extra}}, f)
"""

_CLI = """
import runpy
_sys.argv = [{script!r}, *{args!r}]
try:
    runpy.run_path({script!r}, run_name="__main__")
    _code = 0
except SystemExit as err:
    _code = err.code if isinstance(err.code, int) else (0 if err.code is None else 1)
_report(exit_code=_code)
"""

#: one epoch of one step: a seconds-scale SPDNetNAS search on the bundled BasicMotions
TINY_SPD = {
    "seed": 1,
    "threads": 1,
    "data": {"name": "basic_motions"},
    "network": {"name": "spdnetnas", "opset": "spd", "cells": 2, "nodes": 2, "channels": 1},
    "relaxation": {"name": "sparsemax"},
    "search": {
        "epochs": 1,
        "batch_size": 10,
        "max_steps_per_epoch": 1,
        "weight_optimizer": {"name": "riemannian_adam", "lr": 0.01},
    },
    "strategy": {"name": "bilevel", "arch_optimizer": {"name": "riemannian_adam", "lr": 0.01}},
}

#: one epoch of one step: a DARTS cell search on the bundled digits
TINY_VISION = {
    "seed": 0,
    "threads": 1,
    "data": {"name": "digits"},
    "network": {
        "name": "darts_cnn",
        "opset": "darts",
        "channels": 4,
        "layers": 2,
        "nodes": 2,
        "stem_multiplier": 1,
    },
    "relaxation": {"name": "softmax"},
    "selection": {"name": "darts"},
    "search": {"epochs": 1, "batch_size": 32, "max_steps_per_epoch": 1},
}

_SEARCH = """
import tempfile, time
from manifold_nas.config import parse_config
from manifold_nas.search import search
with tempfile.TemporaryDirectory() as _tmp:
    _start = time.perf_counter()
    search(parse_config({raw!r}), _tmp + "/run", quiet=True)
    _seconds = time.perf_counter() - _start
_report(exit_code=0, search_call_seconds=_seconds)
"""


def cli_case(*args: str) -> str:
    return _CLI.format(script=str(SCRIPT), args=list(args))


def cases(with_search: bool) -> list[dict]:
    """``name``, child ``code`` (run after the prologue) or ``argv``, and the ``target``."""
    found = [
        {"name": "python -c pass", "code": "_report()"},
        {"name": "import torch", "code": "import torch\n_report()"},
        {"name": "import manifold_nas", "code": "import manifold_nas\n_report()",
         "target": "ratio"},
        {"name": "import manifold_nas + OpSet",
         "code": "import manifold_nas\nmanifold_nas.OpSet\n_report()",
         "target": "ratio_with_torch"},
        {"name": "manifold-nas --help", "code": cli_case("--help"), "target": "help"},
        {"name": "manifold-nas search --help", "code": cli_case("search", "--help"),
         "target": "help"},
        {"name": "manifold-nas --help (bare)", "argv": [str(SCRIPT), "--help"],
         "target": "help_time"},
        {"name": "manifold-nas list", "code": cli_case("list")},
    ]  # fmt: skip
    if with_search:
        found += [
            {"name": "first SPD search step", "code": _SEARCH.format(raw=TINY_SPD),
             "target": "no_monai"},
            {"name": "first vision search step", "code": _SEARCH.format(raw=TINY_VISION),
             "target": "no_monai"},
        ]  # fmt: skip
    return found


def run_once(case: dict, workdir: Path) -> dict:
    """One fresh child: its wall seconds and, for an instrumented case, its report."""
    report = workdir / "report.json"
    report.unlink(missing_ok=True)
    if "argv" in case:
        argv = case["argv"]
    else:
        argv = [sys.executable, "-c", _PROLOGUE + textwrap.dedent(case["code"])]
    env = dict(os.environ, **{REPORT_VAR: str(report)})
    start = time.perf_counter()
    done = subprocess.run(
        argv, cwd=workdir, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True
    )
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{case['name']} exited {done.returncode}:\n{done.stderr[-2000:]}")
    result = json.loads(report.read_text()) if "code" in case else {}
    if result.get("exit_code", 0) != 0:
        raise RuntimeError(f"{case['name']}: the command exited {result['exit_code']}")
    return {"seconds": seconds, **result}


def check(row: dict, torch_median: float) -> tuple[str, bool]:
    """The row's target as text and whether it holds."""
    target = row["target"]
    median, modules = row["median_s"], row.get("modules")
    if target == "ratio":
        ok = median <= IMPORT_RATIO * torch_median and "torch" not in modules
        text = f"<= {IMPORT_RATIO}x torch, no torch"
    elif target == "ratio_with_torch":
        ok = median <= IMPORT_RATIO * torch_median
        text = f"<= {IMPORT_RATIO}x torch"
    elif target == "help":
        ok = median < HELP_SECONDS and "torch" not in modules
        text = f"< {HELP_SECONDS} s, no torch"
    elif target == "help_time":
        ok = median < HELP_SECONDS
        text = f"< {HELP_SECONDS} s"
    else:
        ok = "monai" not in modules
        text = "no monai"
    return text, ok


def markdown_table(rows: list[dict]) -> str:
    lines = [
        "| case | median s | min s | / import torch | torch | monai | also imported | target |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        modules = row.get("modules")
        if modules is None:
            torch_col = monai_col = others = "n/a"
        else:
            torch_col = "yes" if "torch" in modules else "no"
            monai_col = "yes" if "monai" in modules else "no"
            others = ", ".join(m for m in modules if m not in ("torch", "monai")) or "-"
        target = row["target_text"] and f"{row['target_text']}: {'pass' if row['pass'] else 'FAIL'}"
        lines.append(
            f"| {row['name']} | {row['median_s']:.3f} | {row['min_s']:.3f} "
            f"| {row['over_import_torch']:.2f} | {torch_col} | {monai_col} | {others} "
            f"| {target} |"
        )
    return "\n".join(lines)


def _version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="fresh children per case")
    parser.add_argument("--no-search", action="store_true", help="skip the two search steps")
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(__file__).resolve().parent / "results" / "imports.json",
        help="where to write the JSON results",
    )
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")

    todo = cases(not args.no_search)
    samples: dict[str, list[dict]] = {case["name"]: [] for case in todo}
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            print(f"repeat {repeat + 1}/{args.repeats}", flush=True)
            for case in todo:  # interleaved: every repeat runs every case once
                sample = run_once(case, Path(tmp))
                samples[case["name"]].append(sample)
                print(f"  {case['name']:<30} {sample['seconds']:7.3f} s", flush=True)

    rows = []
    for case in todo:
        runs = samples[case["name"]]
        seconds = [r["seconds"] for r in runs]
        row = {
            "name": case["name"],
            "target": case.get("target"),
            "median_s": statistics.median(seconds),
            "min_s": min(seconds),
            "seconds": seconds,
        }
        if "code" in case:
            # the same in every repeat; a union shows it if one ever differed
            row["modules"] = [m for m in WATCHED if any(m in r["modules"] for r in runs)]
        if "search_call_seconds" in runs[0]:
            row["search_call_median_s"] = statistics.median(r["search_call_seconds"] for r in runs)
        rows.append(row)
    torch_median = next(r["median_s"] for r in rows if r["name"] == "import torch")
    for row in rows:
        row["over_import_torch"] = row["median_s"] / torch_median
        if row["target"] is not None:
            row["target_text"], row["pass"] = check(row, torch_median)
        else:
            row["target_text"], row["pass"] = "", None

    table = markdown_table(rows)
    print()
    print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "python": platform.python_version(),
        "torch": _version("torch"),
        "monai": _version("monai"),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "repeats": args.repeats,
        "targets": {"help_seconds": HELP_SECONDS, "import_ratio": IMPORT_RATIO},
        "rows": rows,
    }
    args.out.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"\nwrote {args.out}")
    return 0 if all(row["pass"] is not False for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
