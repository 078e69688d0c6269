"""What several test files share: tiny configs, a killed search, an installed plugin."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import yaml

from manifold_nas.predictors.linear import NOT_KEPT, decode_genotype
from manifold_nas.space.cell import cell_arch_spec
from manifold_nas.space.genotype import Genotype

REPO = Path(__file__).resolve().parents[1]

#: a seconds-scale DARTS cell search on the bundled digits
TINY_VISION = {
    "seed": 0,
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
    "search": {"epochs": 2, "batch_size": 32, "max_steps_per_epoch": 3},
    "train": {"epochs": 1, "batch_size": 64, "max_steps_per_epoch": 3},
}

#: a seconds-scale SPDNetNAS search on the bundled BasicMotions covariances
TINY_SPD = {
    "seed": 1,
    "threads": 1,
    "data": {"name": "basic_motions"},
    "network": {"name": "spdnetnas", "opset": "spd", "cells": 2, "nodes": 2, "channels": 1},
    "relaxation": {"name": "sparsemax"},
    "search": {
        "epochs": 3,
        "batch_size": 10,
        "max_steps_per_epoch": 4,
        "weight_optimizer": {"name": "riemannian_adam", "lr": 0.01},
    },
    "strategy": {"name": "bilevel", "arch_optimizer": {"name": "riemannian_adam", "lr": 0.01}},
    "train": {
        "epochs": 1,
        "batch_size": 10,
        "max_steps_per_epoch": 2,
        "optimizer": {"name": "riemannian_adam", "lr": 0.01},
    },
}

#: a seconds-scale V-NAS search on generated thick-slice shapes
TINY_VOLUMETRIC = {
    "seed": 0,
    "threads": 1,
    "data": {
        "name": "synthetic_shapes",
        "n_train": 4,
        "n_test": 2,
        "shape": [16, 16, 8],
        "patch_size": [16, 16, 8],
        "samples_per_volume": 1,
    },
    "network": {"name": "vnas", "opset": "volumetric", "channels": [2, 4], "strides": [[2, 2, 2]]},
    "search": {"epochs": 2, "batch_size": 2, "max_steps_per_epoch": 2},
    "train": {"epochs": 1, "batch_size": 2, "max_steps_per_epoch": 2},
}

_SEARCH_SCRIPT = textwrap.dedent(
    """
    import sys, yaml
    from manifold_nas.config import parse_config
    from manifold_nas.search import search
    search(parse_config(yaml.safe_load(open(sys.argv[1]))), sys.argv[2], resume=True, quiet=True)
    """
)


def read_records(run_dir: Path) -> list[dict]:
    """The records of ``run_dir/metrics.jsonl``."""
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def without_seconds(records: list[dict]) -> list[dict]:
    """Records without their wall-clock fields, which no two runs share."""
    return [{k: v for k, v in r.items() if not k.endswith("seconds")} for r in records]


def logged(out: Path, marker: str) -> Callable[[], bool]:
    """A condition: ``marker`` appears in ``out/metrics.jsonl``."""
    metrics = Path(out) / "metrics.jsonl"
    return lambda: metrics.exists() and marker in metrics.read_text()


def search_killed_when(
    config_dict: Mapping, tmp_path: Path, condition: Callable[[Path], Callable[[], bool]]
) -> Path:
    """Run a search (``--resume`` semantics) in a subprocess and SIGKILL it once ``condition(out)()``.

    Returns the run directory, asserting that the kill landed before the end.
    """
    cfg = tmp_path / "killed.yaml"
    cfg.write_text(yaml.safe_dump(dict(config_dict)))
    script = tmp_path / "search_killed.py"
    script.write_text(_SEARCH_SCRIPT)
    out = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, str(script), str(cfg), str(out)],
        cwd=REPO,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
    )
    ready = condition(out)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if ready():
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.01)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the search finished before it could be killed"
    return out


def install_plugin(
    site: Path, module: str, code: str, entry_points: Mapping[str, Mapping[str, str]]
) -> Path:
    """Write ``module.py`` and a dist-info declaring ``entry_points`` into ``site``.

    ``entry_points`` maps a group (``manifold_nas.opsets``) to ``{name: "module:object"}``;
    with ``site`` on ``sys.path`` (or ``PYTHONPATH``) the registries find them,
    exactly as they find an installed package's.
    """
    site.mkdir(parents=True, exist_ok=True)
    (site / f"{module}.py").write_text(textwrap.dedent(code))
    dist = site / f"{module}-0.1.dist-info"
    dist.mkdir(exist_ok=True)
    name = module.replace("_", "-")
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    lines = []
    for group, objects in entry_points.items():
        lines.append(f"[{group}]")
        lines += [f"{key} = {value}" for key, value in objects.items()]
    (dist / "entry_points.txt").write_text("\n".join(lines) + "\n")
    return site


#: a toy DARTS cell space small enough to enumerate: ops and one cell type
TOY_OPS = ("none", "skip", "conv3", "conv5")
TOY_SPECS = {"normal": cell_arch_spec(TOY_OPS, n_inputs=2, n_nodes=2, keep=2)}


def toy_space() -> list[Genotype]:
    """Every cell of :data:`TOY_SPECS`: node 2 keeps both inputs, node 3 two of three, 3 × 3⁴ = 243."""
    space = []
    for dropped in range(3):
        for chosen in itertools.product(range(1, 4), repeat=4):
            codes = list(chosen)
            codes.insert(2 + dropped, NOT_KEPT)
            space.append(decode_genotype(codes, TOY_SPECS, "toy"))
    return space


def run_cli(capsys, *argv):
    """``manifold-nas ARGV`` in this process: its exit status, stdout and stderr."""
    from manifold_nas.cli import main

    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def one_line_error(code, err):
    """The single stderr line of a refused command (exit status 2, no traceback)."""
    assert code == 2, err
    lines = [line for line in err.strip().splitlines() if line]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]
