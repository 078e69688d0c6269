"""V-NAS searched network vs fixed all-2D / all-3D / all-P3D backbones vs a MONAI UNet.

    python -m benchmarks.volumetric [--tasks synthetic_shapes mni152_tissue]
                                    [--seeds 0 1 2] [--quick] [--threads 1]

For every task and seed: search with ``configs/volumetric/<task>.yaml`` and
retrain the derived network from scratch; train the all-conv2d, all-conv3d
and all-p3d versions of the same backbone (``vnas`` with ``fixed_op``) and a
``monai_unet`` with the same strides whose widths are scaled so that its
parameter count is the closest to the all-conv3d backbone's (the largest
network of the search space), all with the config's ``train`` section
(equal steps). Each seed generates its own data set (training and test
volumes), so the comparison is also reported *paired*: searched minus the
best comparator on the same seed. Without ``--seeds`` the synthetic task runs
seeds 0–4 and MNI152 seeds 0–2.

Each model runs in a fresh spawned process, so its peak resident memory
(``ru_maxrss``) is its own. Every searched run reports its final
architecture distribution (``entropy_ratio``: mean edge entropy / ln K;
``top2_margin``) and decoded cells. Adds one DiNTS smoke row per task (one
search step, ``decode()``, ``TopologyInstance``) as a cost reference. Writes
``benchmarks/results/volumetric.json`` after every model and prints markdown
tables.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import config_dict, mean_std, search_and_retrain, train_fixed
from manifold_nas.config import Config, parse_config
from manifold_nas.run.context import build_data

__all__ = [
    "baseline_configs",
    "matched_unet_channels",
    "paired_differences",
    "results_table",
    "step_counts",
    "verdict",
]

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "volumetric"
TASKS = ("synthetic_shapes", "mni152_tissue")
#: seeds run without --seeds: more on the synthetic task, whose per-seed spread is larger
DEFAULT_SEEDS = {"synthetic_shapes": (0, 1, 2, 3, 4), "mni152_tissue": (0, 1, 2)}
FIXED_OPS = ("conv2d", "conv3d", "p3d")
SEARCHED = "searched (V-NAS)"
UNET = "MONAI UNet"
DINTS = "DiNTS smoke"
QUICK = [
    "data.n_train=4",
    "data.n_test=1",
    "search.epochs=2",
    "strategy.warmup_epochs=1",
    "search.max_steps_per_epoch=2",
    "train.epochs=2",
    "train.max_steps_per_epoch=2",
]
#: targets from the issue, reported against, never tuned for
CPU_TIME_TARGET_S = 15 * 60
PEAK_MEMORY_TARGET_MB = 8 * 1024


def _peak_rss_mb() -> float:
    # ru_maxrss is KiB on Linux, bytes on macOS
    scale = 1024 * 1024 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / scale


def _child(job: Callable[..., dict[str, Any]], threads: int, *args: Any) -> dict[str, Any]:
    torch.set_num_threads(threads)
    started = time.perf_counter()
    result = job(*args)
    result.pop("_genotype", None)
    result["wall_seconds"] = time.perf_counter() - started
    usage = resource.getrusage(resource.RUSAGE_SELF)
    # CPU time is what the 15-minute target counts; wall-clock grows with other load
    result["cpu_seconds"] = usage.ru_utime + usage.ru_stime
    result["peak_rss_mb"] = _peak_rss_mb()
    return result


def in_fresh_process(
    job: Callable[..., dict[str, Any]], threads: int, *args: Any
) -> dict[str, Any]:
    """Run ``job(*args)`` in a new spawned interpreter; add its wall-clock and peak RSS."""
    with multiprocessing.get_context("spawn").Pool(1, maxtasksperchild=1) as pool:
        return pool.apply(_child, (job, threads, *args))


def _search_job(raw: Mapping[str, Any], seed: int, out: Path) -> dict[str, Any]:
    result = search_and_retrain(raw, seed, out)
    summary = json.loads((out / "summary.json").read_text())
    genotype = json.loads((out / "genotype.json").read_text())
    result["entropy_ratio"] = summary.get("entropy_ratio")
    result["top2_margin"] = summary.get("top2_margin")
    result["probabilities"] = genotype.get("probabilities")
    return result


def _dints_job(
    patch_size: Sequence[int], in_channels: int, num_classes: int, batch: int
) -> dict[str, Any]:
    from manifold_nas.domains.volumetric.baselines import dints_smoke

    return dints_smoke(patch_size, in_channels, num_classes, batch_size=batch)


def step_counts(config: Config, n_train: int) -> tuple[int, int]:
    """(search weight steps, retrain steps) that the config runs on ``n_train`` volumes."""
    s, t = config.search, config.train
    weight_set = max(1, min(n_train - 1, int(round(s.train_portion * n_train))))
    search_per_epoch = math.ceil(weight_set / s.batch_size)
    if s.max_steps_per_epoch is not None:
        search_per_epoch = min(search_per_epoch, s.max_steps_per_epoch)
    fitted = n_train
    if t.valid_portion > 0:
        fitted = max(1, min(n_train - 1, int(round((1.0 - t.valid_portion) * n_train))))
    train_per_epoch = math.ceil(fitted / t.batch_size)
    if t.max_steps_per_epoch is not None:
        train_per_epoch = min(train_per_epoch, t.max_steps_per_epoch)
    return s.epochs * search_per_epoch, t.epochs * train_per_epoch


def matched_unet_channels(
    channels: Sequence[int],
    strides: Sequence[Any] | None,
    in_channels: int,
    num_classes: int,
    target: int,
) -> tuple[list[int], int]:
    """Widths ``round(m · channels)`` whose MONAI UNet has the parameter count closest to ``target``.

    ``m`` runs over ``1/16, 2/16, …, 4``; returns the widths and their count.
    """
    from manifold_nas.domains.volumetric.baselines import MonaiUNetBaseline

    best: tuple[int, list[int], int] | None = None
    for sixteenths in range(1, 65):
        widths = [max(1, round(c * sixteenths / 16)) for c in channels]
        network = MonaiUNetBaseline(in_channels, num_classes, widths, strides)
        count = sum(p.numel() for p in network.parameters())
        if best is None or abs(count - target) < best[0]:
            best = (abs(count - target), widths, count)
    assert best is not None
    return best[1], best[2]


def baseline_configs(
    raw: Mapping[str, Any], unet_channels: Sequence[int] | None = None
) -> dict[str, dict[str, Any]]:
    """The fixed backbones and the MONAI UNet (widths ``unet_channels``, default the network's)."""
    net = raw["network"]
    configs = {f"all-{op}": dict(raw, network={**net, "fixed_op": op}) for op in FIXED_OPS}
    unet = {"name": "monai_unet", "opset": net["opset"], "channels": net["channels"]}
    if unet_channels is not None:
        unet["channels"] = list(unet_channels)
    if "strides" in net:
        unet["strides"] = net["strides"]
    configs[UNET] = dict(raw, network=unet)
    return configs


def _parameters(raw: Mapping[str, Any], bundle: Any) -> int:
    from manifold_nas.run.context import build_network

    network, _ = build_network(parse_config(raw), bundle)
    return sum(p.numel() for p in network.parameters())


def run_task(
    task: str,
    seeds: Sequence[int],
    overrides: Sequence[str],
    threads: int,
    tmp: Path,
    record: Callable[[str, str, dict[str, Any]], None],
) -> None:
    raw = config_dict(str(CONFIGS / f"{task}.yaml"), overrides)
    config = parse_config(raw)
    bundle = build_data(config)
    search_steps, train_steps = step_counts(config, len(bundle.train))
    net = raw["network"]
    largest = _parameters(baseline_configs(raw)["all-conv3d"], bundle)
    unet_channels, _ = matched_unet_channels(
        net["channels"], net.get("strides"), bundle.sample_shape[0], bundle.num_classes, largest
    )
    comparators = baseline_configs(raw, unet_channels)
    for seed in seeds:
        result = in_fresh_process(_search_job, threads, raw, seed, tmp / f"{task}_search{seed}")
        result["search_seconds_per_step"] = result["search_seconds"] / search_steps
        result["seconds_per_step"] = result["train_seconds"] / train_steps
        record(task, SEARCHED, result)
        for name, cfg in comparators.items():
            result = in_fresh_process(
                train_fixed, threads, cfg, seed, None, tmp / f"{task}_{name}{seed}"
            )
            result["seconds_per_step"] = result["train_seconds"] / train_steps
            if name == UNET:
                result["channels"] = list(unet_channels)
            record(task, name, result)
    patch = bundle.sample_shape[1:]
    batch = config.search.batch_size * int(raw["data"].get("samples_per_volume", 1))
    dints = in_fresh_process(
        _dints_job, threads, patch, bundle.sample_shape[0], bundle.num_classes, batch
    )
    record(task, DINTS, dints)


def _cell(values: Sequence[float], scale: float = 100.0, digits: int = 1) -> str:
    m, s = mean_std([scale * v for v in values])
    return f"{m:.{digits}f} ± {s:.{digits}f}"


def results_table(rows: Mapping[str, list[dict[str, Any]]], class_names: Sequence[str]) -> str:
    """Markdown: mean ± std Dice (overall and per class), costs, and the search's decision."""
    heads = [
        "model",
        "mean Dice",
        *class_names,
        "parameters",
        "train s/step",
        "search s",
        "train s",
        "CPU s",
        "peak RSS MB",
        "entropy ratio",
        "runs",
    ]
    lines = ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
    for name, runs in rows.items():
        if name == DINTS:
            continue
        cells = [name]
        for key in ["dice", *[f"dice_{c}" for c in class_names]]:
            cells.append(_cell([r["test"].get(key, float("nan")) for r in runs]))
        ratios = [r["entropy_ratio"] for r in runs if r.get("entropy_ratio") is not None]
        cells += [
            f"{statistics.fmean(r['parameters'] for r in runs):,.0f}",
            f"{statistics.fmean(r['seconds_per_step'] for r in runs):.3f}",
            f"{statistics.fmean(r['search_seconds'] for r in runs):.0f}",
            f"{statistics.fmean(r['train_seconds'] for r in runs):.0f}",
            f"{statistics.fmean(r.get('cpu_seconds', math.nan) for r in runs):.0f}",
            f"{max(r['peak_rss_mb'] for r in runs):.0f}",
            ", ".join(f"{x:.2f}" for x in ratios) if ratios else "—",
            str(len(runs)),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def searched_table(rows: Mapping[str, list[dict[str, Any]]]) -> str:
    """Markdown: each searched run's decoded cells, decision and Dice."""
    lines = [
        "| seed | cells (encoder → decoder) | entropy ratio | top-2 margin | parameters | Dice |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows.get(SEARCHED, []):
        cells = [edge[0] for edge in sorted(r["genotype"]["cells"], key=lambda e: e[2])]
        lines.append(
            f"| {r['seed']} | {', '.join(cells)} | {r['entropy_ratio']:.3f} "
            f"| {r['top2_margin']:.3f} | {r['parameters']:,} | {100 * r['test']['dice']:.1f} |"
        )
    return "\n".join(lines)


def dints_table(per_task: Mapping[str, Mapping[str, list[dict[str, Any]]]]) -> str:
    lines = [
        "| task | DiNTS input | search params | search s/step | derived params | derived s/step | peak RSS MB |",
        "|---|---|---|---|---|---|---|",
    ]
    for task, rows in per_task.items():
        for d in rows.get(DINTS, []):
            shape = "×".join(str(p) for p in [d["batch_size"], *d["patch_size"]])
            lines.append(
                f"| {task} | {shape} | {d['search_parameters']:,} | {d['search_seconds_per_step']:.2f} "
                f"| {d['derived_parameters']:,} | {d['derived_seconds_per_step']:.2f} | {d['peak_rss_mb']:.0f} |"
            )
    return "\n".join(lines)


def paired_differences(
    searched: Sequence[Mapping[str, Any]], baseline: Sequence[Mapping[str, Any]]
) -> list[float]:
    """Searched minus baseline Dice on every seed both ran (same data, same test volumes)."""
    by_seed = {r["seed"]: r["test"]["dice"] for r in baseline}
    return [r["test"]["dice"] - by_seed[r["seed"]] for r in searched if r["seed"] in by_seed]


def verdict(rows: Mapping[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Searched vs the best comparator (fixed backbones and UNet) by mean Dice.

    A win is ``searched mean ≥ best mean − best std`` at ≤ the best's
    parameters. The paired difference (searched − best on the same seed,
    mean ± std over seeds) removes the spread that the per-seed data sets
    share.
    """
    searched = rows.get(SEARCHED)
    baselines = {k: v for k, v in rows.items() if k not in (SEARCHED, DINTS)}
    if not searched or not baselines:
        return {}
    means = {k: mean_std([r["test"]["dice"] for r in v]) for k, v in baselines.items()}
    best = max(means, key=lambda k: means[k][0])
    s_mean, s_std = mean_std([r["test"]["dice"] for r in searched])
    s_params = statistics.fmean(r["parameters"] for r in searched)
    b_params = statistics.fmean(r["parameters"] for r in baselines[best])
    wall = [r["wall_seconds"] for r in searched]
    cpu = [r.get("cpu_seconds", r["wall_seconds"]) for r in searched]
    peak = max(r["peak_rss_mb"] for v in rows.values() for r in v)
    ratios = [r.get("entropy_ratio") for r in searched]
    return {
        "best_baseline": best,
        "best_baseline_dice": means[best],
        "searched_dice": (s_mean, s_std),
        "searched_within_one_std": s_mean >= means[best][0] - means[best][1],
        "paired_difference_to_best": mean_std(paired_differences(searched, baselines[best])),
        "searched_parameters": s_params,
        "best_baseline_parameters": b_params,
        "searched_parameters_at_most_best": s_params <= b_params,
        "entropy_ratios": ratios,
        "search_retrain_wall_seconds_max": max(wall),
        "search_retrain_cpu_seconds_max": max(cpu),
        "cpu_time_within_15_min": max(cpu) <= CPU_TIME_TARGET_S,
        "peak_rss_mb_max": peak,
        "peak_memory_below_8_gb": peak < PEAK_MEMORY_TARGET_MB,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    parser.add_argument(
        "--seeds", type=int, nargs="+", default=None, help="default: 0-4 synthetic, 0-2 MNI152"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="4 training volumes, 1 test volume, 2 epochs of 2 steps, seed 0",
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads per model process")
    parser.add_argument("--out", default="benchmarks/results/volumetric.json")
    args = parser.parse_args()
    overrides = QUICK if args.quick else []
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    per_task: dict[str, dict[str, list[dict[str, Any]]]] = {}

    def seeds_of(task: str) -> list[int]:
        if args.seeds is not None:
            return list(args.seeds)
        return [0] if args.quick else list(DEFAULT_SEEDS[task])

    def write() -> None:
        payload = {
            "quick": args.quick,
            "seeds": {t: seeds_of(t) for t in args.tasks},
            "threads": args.threads,
            "overrides": overrides,
            "tasks": {t: {"rows": rows, "verdict": verdict(rows)} for t, rows in per_task.items()},
        }
        out.write_text(json.dumps(payload, indent=2, default=str) + "\n")

    def record(task: str, name: str, result: dict[str, Any]) -> None:
        per_task.setdefault(task, {}).setdefault(name, []).append(result)
        dice = result.get("test", {}).get("dice")
        print(
            f"[{task}] {name} seed {result.get('seed', '-')}: dice {dice} "
            f"({result['wall_seconds']:.0f} s wall, {result.get('cpu_seconds', 0):.0f} s CPU, "
            f"{result['peak_rss_mb']:.0f} MB)",
            flush=True,
        )
        write()

    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for task in args.tasks:
            run_task(task, seeds_of(task), overrides, args.threads, Path(tmp), record)
    for task, rows in per_task.items():
        searched = rows.get(SEARCHED, [{}])[0]
        classes = [
            k.removeprefix("dice_") for k in searched.get("test", {}) if k.startswith("dice_")
        ]
        print(f"\n### {task}{' (--quick)' if args.quick else ''}\n")
        print(results_table(rows, classes))
        print()
        print(searched_table(rows))
        print(f"\nverdict: {json.dumps(verdict(rows), default=str)}")
    print("\n### DiNTS smoke (one step, CPU)\n")
    print(dints_table(per_task))
    print(f"\nbenchmark wall-clock: {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
