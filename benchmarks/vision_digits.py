"""Searched DARTS cell vs random cells vs a hand-designed CNN on the bundled digits.

    python benchmarks/vision_digits.py [--seeds 0 1 2] [--quick]

For every seed: search with ``configs/vision/digits_darts.yaml`` and retrain the
derived cell; retrain 3 random cells of the same space; train a hand-designed
CNN of similar size. All retraining uses the config's ``train`` section.
Writes ``benchmarks/results/vision_digits.json`` and prints a markdown table.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from benchmarks.common import (
    config_dict,
    random_genotype,
    search_and_retrain,
    train_fixed,
    write_results,
)
from manifold_nas.config import parse_config
from manifold_nas.cost.measure import count_parameters
from manifold_nas.run.context import build_data, build_network

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "vision" / "digits_darts.yaml"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--quick", action="store_true", help="1 search epoch, 2 train epochs")
    parser.add_argument("--out", default="benchmarks/results/vision_digits.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    overrides = ["search.epochs=1", "train.epochs=2"] if args.quick else []
    raw = config_dict(str(CONFIG), overrides)
    config = parse_config(raw)
    bundle = build_data(config)
    network, opset = build_network(config, bundle)
    searched_params = None
    rows: dict[str, list] = {
        "searched cell": [],
        "random cells (3 per seed)": [],
        "hand-designed CNN": [],
    }
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for seed in args.seeds:
            result = search_and_retrain(raw, seed, tmp / f"search{seed}")
            rows["searched cell"].append(result)
            searched_params = result["parameters"]
            print(f"seed {seed}: searched {result['test']} {result['genotype']}", flush=True)
            for k in range(3):
                genotype = random_genotype(
                    network.arch_specs, opset.name, opset.zero, 1000 * seed + k
                )
                rows["random cells (3 per seed)"].append(
                    train_fixed(raw, seed, genotype, tmp / f"random{seed}_{k}")
                )
            cnn = dict(raw, network={"name": "simple_cnn", "opset": opset.name, "channels": 12})
            rows["hand-designed CNN"].append(train_fixed(cnn, seed, None, tmp / f"cnn{seed}"))
    table = write_results(
        rows,
        "accuracy",
        Path(args.out),
        {
            "config": raw,
            "supernet_parameters": count_parameters(network),
            "searched_parameters": searched_params,
        },
    )
    print(table)


if __name__ == "__main__":
    main()
