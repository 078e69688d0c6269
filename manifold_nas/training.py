"""Retraining a derived network from scratch, and testing it.

``train.network`` options in the config override the search network's
(e.g. more channels or cells for the final network, as DARTS does).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from manifold_nas.config import Config, split_name
from manifold_nas.errors import UserInputError
from manifold_nas.genotype import Genotype
from manifold_nas.optim import build_optimizer
from manifold_nas.search import (
    apply_threads,
    build_data,
    build_network,
    count_parameters,
    make_loader,
    seed_everything,
)

__all__ = ["train_derived"]


def train_derived(
    genotype: Genotype, config: Config, out_dir: str | Path | None = None, quiet: bool = False
) -> dict[str, Any]:
    """Build the genotype's network, train it on all training data, test it.

    Returns the summary (test metrics, parameter count, seconds), also
    written to ``out_dir/train_summary.json`` when ``out_dir`` is given.
    """
    apply_threads(config)
    seed_everything(config.seed)
    device = torch.device(config.device)
    bundle = build_data(config)
    fixed = not genotype.cells
    network, opset = build_network(
        config, bundle, None if fixed else genotype, extra=config.train.network
    )
    if fixed and getattr(network, "arch_specs", None):
        raise UserInputError(
            f"network {config.network['name']!r} is a search space; run 'manifold-nas search' "
            "first, then train the run directory or its genotype.json"
        )
    network = network.to(device)
    t = config.train
    name, options = split_name(t.optimizer)
    optimizer = build_optimizer(name, network.parameters(), **options)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, T_max=max(1, t.epochs), eta_min=t.lr_min
    )
    task = bundle.task
    dtype = opset.dtype
    started = time.perf_counter()
    for epoch in range(t.epochs):
        network.train()
        loader = make_loader(bundle, bundle.train, t.batch_size, True, config.seed * 100003 + epoch)
        bar = tqdm(loader, desc=f"train {epoch + 1}/{t.epochs}", disable=quiet, leave=False)
        for step, batch in enumerate(bar):
            if t.max_steps_per_epoch is not None and step >= t.max_steps_per_epoch:
                break
            x, y = task.unpack(batch)
            x = x.to(device=device, dtype=dtype) if dtype is not None else x.to(device)
            y = y.to(device)
            optimizer.zero_grad(set_to_none=True)
            out = network(x)
            loss = task.loss(out, y)
            loss.backward()
            if t.grad_clip:
                nn.utils.clip_grad_norm_(network.parameters(), t.grad_clip)
            optimizer.step()
            bar.set_postfix(loss=f"{float(loss.detach()):.3f}")
        scheduler.step()
    train_seconds = time.perf_counter() - started
    network.eval()

    def model(x: torch.Tensor) -> torch.Tensor:
        return network(x.to(dtype) if dtype is not None else x)

    test_loader = make_loader(bundle, bundle.test, bundle.eval_batch_size or t.batch_size, False)
    test = task.evaluate(model, test_loader, device)
    summary = {
        "test": test,
        "parameters": count_parameters(network),
        "train_seconds": train_seconds,
        "genotype": genotype.to_dict()["cells"],
    }
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "train_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        torch.save(
            {k: v.detach().as_subclass(torch.Tensor) for k, v in network.state_dict().items()},
            out / "model.pt",
        )
    return summary
