"""Figures of a run directory: probability evolution, diagnostics, derived cells.

Needs matplotlib (the ``viz`` extra); everything is drawn with the Agg backend
from ``metrics.jsonl`` and ``genotype.json`` alone, so any finished or
interrupted run can be plotted.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from manifold_nas.errors import UserInputError
from manifold_nas.space.genotype import Genotype

__all__ = ["plot_run", "read_epochs"]


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise UserInputError("plotting needs matplotlib: pip install 'manifold-nas[viz]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def read_epochs(run_dir: str | Path) -> list[dict[str, Any]]:
    """The per-epoch records of ``metrics.jsonl``."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise UserInputError(f"no metrics.jsonl in {run_dir}")
    epochs = []
    for line in path.read_text().splitlines():
        if line.strip():
            record = json.loads(line)
            if record.get("type") == "epoch":
                epochs.append(record)
    return epochs


def plot_alphas(epochs: list[dict[str, Any]], ops: dict[str, tuple[str, ...]], out: Path) -> Path:
    """One panel per edge: each op's probability over the epochs."""
    plt = _pyplot()
    names = list(epochs[0]["probabilities"]) if epochs else []
    panels = [(n, e) for n in names for e in range(len(epochs[0]["probabilities"][n]))]
    cols = min(5, max(1, len(panels)))
    rows = max(1, math.ceil(len(panels) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.4 * rows), squeeze=False)
    x = [r["epoch"] + 1 for r in epochs]
    for ax, (name, edge) in zip(axes.flat, panels):
        labels = ops.get(name) or [
            str(k) for k in range(len(epochs[0]["probabilities"][name][edge]))
        ]
        for k, label in enumerate(labels):
            ax.plot(x, [r["probabilities"][name][edge][k] for r in epochs], label=label)
        ax.set_title(f"{name} edge {edge}", fontsize=8)
        ax.set_ylim(0, 1)
        ax.tick_params(labelsize=6)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    # Cell types may have different candidate ops: one legend per cell type,
    # on its first panel.
    for name in names:
        first = next(ax for ax, (n, _) in zip(axes.flat, panels) if n == name)
        first.legend(fontsize=6, loc="upper left", ncol=2, title=name, title_fontsize=6)
    fig.suptitle("architecture probabilities per epoch")
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    path = out / "alphas.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_diagnostics(epochs: list[dict[str, Any]], out: Path) -> Path:
    """Mean edge entropy, parameter-free ops in the argmax cell, Hessian eigenvalue."""
    plt = _pyplot()
    keys = [("mean_entropy", "mean edge entropy (nats)"), ("parameter_free", "parameter-free ops")]
    if epochs and "hessian_eigenvalue" in epochs[0]:
        keys.append(("hessian_eigenvalue", "dominant Hessian eigenvalue"))
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3), squeeze=False)
    x = [r["epoch"] + 1 for r in epochs]
    for ax, (key, title) in zip(axes.flat, keys):
        ax.plot(x, [r.get(key) for r in epochs], marker="o")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("epoch")
    fig.tight_layout()
    path = out / "diagnostics.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_cell(genotype: Genotype, cell_type: str, out: Path) -> Path:
    """The derived cell as a left-to-right DAG with op-labelled edges."""
    plt = _pyplot()
    edges = genotype.cells[cell_type]
    n_inputs = min((e.target for e in edges), default=1)
    nodes = sorted({e.source for e in edges} | {e.target for e in edges} | set(range(n_inputs)))
    pos = {}
    for node in nodes:
        if node < n_inputs:
            pos[node] = (0.0, float(n_inputs - 1 - node) * 1.5)
        else:
            step = node - n_inputs
            pos[node] = (1.5 * (step + 1), 0.75 * (n_inputs - 1) + (0.6 if step % 2 else -0.6))
    fig, ax = plt.subplots(figsize=(2.5 + 2.0 * len(nodes), 3.5))
    for e in edges:
        (x0, y0), (x1, y1) = pos[e.source], pos[e.target]
        ax.annotate(
            "",
            xy=(x1, y1),
            xytext=(x0, y0),
            arrowprops={"arrowstyle": "->", "lw": 1, "shrinkA": 14, "shrinkB": 14},
        )
        ax.text((x0 + x1) / 2, (y0 + y1) / 2, e.op, fontsize=7, ha="center", va="bottom")
    for node, (x, y) in pos.items():
        label = f"in {node}" if node < n_inputs else f"node {node}"
        color = "#cde" if node < n_inputs else "#fed"
        ax.text(x, y, label, ha="center", va="center", bbox={"boxstyle": "round", "fc": color})
    xs = [x for x, _ in pos.values()]
    ys = [y for _, y in pos.values()]
    ax.set_xlim(min(xs) - 0.7, max(xs) + 0.7)
    ax.set_ylim(min(ys) - 0.9, max(ys) + 0.9)
    ax.set_title(f"{cell_type} cell ({genotype.opset})")
    ax.axis("off")
    path = out / f"cell_{cell_type}.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_run(run_dir: str | Path) -> list[Path]:
    """Draw every figure the run directory has the data for."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserInputError(f"run directory not found: {run_dir}")
    epochs = read_epochs(run_dir)
    written = []
    genotype = None
    if (run_dir / "genotype.json").is_file():
        genotype = Genotype.load(run_dir / "genotype.json")
    if epochs:
        written.append(plot_alphas(epochs, dict(genotype.ops) if genotype else {}, run_dir))
        written.append(plot_diagnostics(epochs, run_dir))
    if genotype is not None:
        written.extend(
            plot_cell(genotype, name, run_dir) for name in genotype.cells if genotype.cells[name]
        )
    return written
