"""The search loop: bilevel DARTS-family search, plain PyTorch, top to bottom.

:func:`build_search` turns a :class:`~manifold_nas.config.Config` into the
objects of a search (data, supernet, optimizers, architect); :class:`SearchRun`
runs epochs, logs ``metrics.jsonl``, writes an atomic checkpoint after every
epoch, resumes from it, selects the genotype and writes the run directory.
"""

from __future__ import annotations

import functools
import json
import logging
import random
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from itertools import count
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm.auto import tqdm

from manifold_nas.architect import Architect
from manifold_nas.checkpoint import load_checkpoint, save_checkpoint
from manifold_nas.config import Config, call_with_options, check_options, split_name
from manifold_nas.data import DATASETS, DataBundle
from manifold_nas.diagnostics import (
    dominant_hessian_eigenvalue,
    edge_entropies,
    parameter_free_count,
)
from manifold_nas.errors import UserInputError
from manifold_nas.genotype import Genotype
from manifold_nas.networks import NETWORKS
from manifold_nas.opset import OPSETS, OpSet
from manifold_nas.optim import build_optimizer
from manifold_nas.plugins import load_builtin_domains
from manifold_nas.relaxations import RELAXATIONS
from manifold_nas.selection import SELECTORS, SelectionContext
from manifold_nas.supernet import ArchitectureParameters, Supernet

LOGGER = logging.getLogger("manifold_nas")

__all__ = [
    "SearchRun",
    "apply_threads",
    "build_data",
    "build_network",
    "count_parameters",
    "make_loader",
    "seed_everything",
    "split_train",
]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def apply_threads(config: Config) -> None:
    """Honour ``threads:``; small-matrix work (SPD) runs fastest on one thread."""
    if config.threads is not None:
        if config.threads < 1:
            raise UserInputError(f"threads must be a positive integer, got {config.threads}")
        torch.set_num_threads(config.threads)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def build_data(config: Config) -> DataBundle:
    load_builtin_domains()
    name, options = split_name(config.data)
    return call_with_options(DATASETS.get(name), options, "data")


def build_network(
    config: Config,
    bundle: DataBundle,
    genotype: Genotype | None = None,
    extra: Mapping | None = None,
) -> tuple[nn.Module, OpSet]:
    load_builtin_domains()
    name, options = split_name(config.network)
    if "opset" not in options:
        raise UserInputError("config section 'network' needs key 'opset'")
    opset = OPSETS.get(options.pop("opset"))
    options.update(extra or {})
    builder = NETWORKS.get(name)
    if genotype is not None and genotype.cells and genotype.opset != opset.name:
        raise UserInputError(
            f"genotype was searched with op set {genotype.opset!r} but the network uses {opset.name!r}"
        )
    try:
        network = call_with_options(builder, options, "network", opset, bundle, genotype)
    except KeyError as err:
        if genotype is None:
            raise
        raise UserInputError(
            f"genotype has no cell type {err.args[0]!r} that network {name!r} needs; "
            f"it has {', '.join(genotype.cells) or 'none'}"
        ) from None
    if opset.dtype is not None:
        network = network.to(opset.dtype)
    return network, opset


def split_train(dataset: Dataset, portion: float, seed: int) -> tuple[Subset, Subset]:
    """Split into a weight part (``portion``) and an architecture part, seeded."""
    n = len(dataset)
    if not 0 < portion < 1:
        raise UserInputError(f"search.train_portion must lie in (0, 1), got {portion}")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    cut = max(1, min(n - 1, int(round(portion * n))))
    return Subset(dataset, order[:cut]), Subset(dataset, order[cut:])


def make_loader(
    bundle: DataBundle, dataset: Dataset, batch_size: int, shuffle: bool, seed: int = 0
) -> DataLoader:
    """A loader whose shuffling depends only on ``seed`` (so resumed epochs match)."""
    generator = torch.Generator().manual_seed(seed) if shuffle else None
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        generator=generator,
        collate_fn=bundle.collate_fn,
    )


def _to(batch_part: Any, device: torch.device, dtype: torch.dtype | None) -> Any:
    if isinstance(batch_part, Tensor):
        if dtype is not None and batch_part.is_floating_point():
            return batch_part.to(device=device, dtype=dtype)
        return batch_part.to(device)
    return batch_part


def _cycle(loaders: Iterator[DataLoader]) -> Iterator[Any]:
    for loader in loaders:
        yield from loader


@dataclass
class _Objects:
    bundle: DataBundle
    opset: OpSet
    supernet: Supernet
    weight_optimizer: torch.optim.Optimizer
    arch_optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    architect: Architect
    weight_set: Subset
    arch_set: Subset


class SearchRun:
    """One search, writing into ``out_dir``.

    Parameters
    ----------
    config:
        The resolved config.
    out_dir:
        The run directory (created).
    quiet:
        Silence the progress bars.
    """

    def __init__(self, config: Config, out_dir: str | Path, quiet: bool = False) -> None:
        self.config = config
        self.out_dir = Path(out_dir)
        self.quiet = quiet
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.device = torch.device(config.device)
        apply_threads(config)
        seed_everything(config.seed)
        self.objects = self._build()
        self.epoch = 0
        self.history: list[dict[str, Any]] = []
        self.search_seconds = 0.0

    # -- construction -----------------------------------------------------
    def _build(self) -> _Objects:
        cfg = self.config
        bundle = build_data(cfg)
        network, opset = build_network(cfg, bundle)
        relax_name, relax_options = split_name(cfg.relaxation)
        relaxation = call_with_options(RELAXATIONS.get(relax_name), relax_options, "relaxation")
        arch = ArchitectureParameters(network.arch_specs, relaxation, opset.dtype or torch.float32)
        s = cfg.search
        penalty = None
        if s.arch_penalty:
            if not hasattr(network, "cost_penalty"):
                raise UserInputError(
                    f"search.arch_penalty is set but network {cfg.network['name']!r} declares no costs"
                )
            options = dict(s.arch_penalty)
            check_options(network.cost_penalty, options, "search.arch_penalty", n_positional=1)
            penalty = functools.partial(network.cost_penalty, **options)
        supernet = Supernet(network, arch, penalty).to(self.device)
        w_name, w_opts = split_name(s.weight_optimizer)
        a_name, a_opts = split_name(s.arch_optimizer)
        weight_optimizer = build_optimizer(w_name, supernet.weight_parameters(), **w_opts)
        arch_optimizer = build_optimizer(a_name, supernet.arch_parameters(), **a_opts)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
            weight_optimizer, T_max=max(1, s.epochs), eta_min=s.lr_min
        )
        architect = Architect(
            supernet,
            bundle.task.loss,
            arch_optimizer,
            order=s.order,
            weight_optimizer=weight_optimizer,
        )
        weight_set, arch_set = split_train(bundle.train, s.train_portion, cfg.seed)
        return _Objects(
            bundle,
            opset,
            supernet,
            weight_optimizer,
            arch_optimizer,
            scheduler,
            architect,
            weight_set,
            arch_set,
        )

    @property
    def supernet(self) -> Supernet:
        return self.objects.supernet

    # -- files ----------------------------------------------------------------
    @property
    def checkpoint_path(self) -> Path:
        return self.out_dir / "checkpoint.pt"

    @property
    def metrics_path(self) -> Path:
        return self.out_dir / "metrics.jsonl"

    def _log(self, record: Mapping[str, Any]) -> None:
        with open(self.metrics_path, "a") as fh:
            fh.write(json.dumps(record) + "\n")

    def _state(self) -> dict[str, Any]:
        o = self.objects
        return {
            "config": self.config.to_dict(),
            "epoch": self.epoch,
            "supernet": o.supernet.state_dict(),
            "weight_optimizer": o.weight_optimizer.state_dict(),
            "arch_optimizer": o.arch_optimizer.state_dict(),
            "scheduler": o.scheduler.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "python_rng": random.getstate(),
            "metrics_bytes": self.metrics_path.stat().st_size if self.metrics_path.exists() else 0,
            "history": self.history,
            "search_seconds": self.search_seconds,
        }

    def resume(self) -> bool:
        """Load ``checkpoint.pt`` from the run directory; False if there is none."""
        if not self.checkpoint_path.exists():
            return False
        state = load_checkpoint(self.checkpoint_path)
        if state.get("config") != self.config.to_dict():
            raise UserInputError(
                f"{self.checkpoint_path} was written by a different config; "
                "use the run's config.yaml or a new --out directory"
            )
        o = self.objects
        try:
            o.supernet.load_state_dict(state["supernet"])
            o.weight_optimizer.load_state_dict(state["weight_optimizer"])
            o.arch_optimizer.load_state_dict(state["arch_optimizer"])
            o.scheduler.load_state_dict(state["scheduler"])
        except (KeyError, RuntimeError, ValueError) as err:
            reason = str(err).splitlines()[0]
            raise UserInputError(
                f"checkpoint {self.checkpoint_path} does not fit this run: {reason}"
            ) from None
        torch.set_rng_state(state["torch_rng"])
        random.setstate(_as_python_random_state(state["python_rng"]))
        self.epoch = int(state["epoch"])
        self.history = list(state["history"])
        self.search_seconds = float(state["search_seconds"])
        if self.metrics_path.exists():
            with open(self.metrics_path, "r+b") as fh:
                fh.truncate(int(state["metrics_bytes"]))
        return True

    # -- the loop ---------------------------------------------------------------
    def run(self) -> Genotype:
        """Search the remaining epochs, select, and write the run directory."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        (self.out_dir / "config.yaml").write_text(
            yaml.safe_dump(self.config.to_dict(), sort_keys=False)
        )
        while self.epoch < self.config.search.epochs:
            self.train_epoch()
            save_checkpoint(self._state(), self.checkpoint_path)
        genotype = self.select()
        genotype.save(self.out_dir / "genotype.json")
        return genotype

    def _batches(self, epoch: int) -> Iterator[tuple[Any, Any]]:
        o, s, seed = self.objects, self.config.search, self.config.seed
        weight_loader = make_loader(
            o.bundle, o.weight_set, s.batch_size, True, seed * 100003 + 2 * epoch
        )
        arch_batches = _cycle(
            make_loader(
                o.bundle, o.arch_set, s.batch_size, True, seed * 100003 + 2 * epoch + 1 + 7919 * k
            )
            for k in count()
        )
        limit = s.max_steps_per_epoch
        for step, (wb, ab) in enumerate(zip(weight_loader, arch_batches)):
            if limit is not None and step >= limit:
                break
            yield wb, ab

    def _unpack(self, batch: Any) -> tuple[Any, Any]:
        x, y = self.objects.bundle.task.unpack(batch)
        dtype = self.objects.opset.dtype
        return _to(x, self.device, dtype), _to(y, self.device, None)

    def train_epoch(self, arch_steps: bool | None = None) -> dict[str, Any]:
        """One epoch of alternating architecture and weight steps."""
        o, s = self.objects, self.config.search
        started = time.perf_counter()
        o.supernet.arch.relaxation.set_progress(self.epoch / max(1, s.epochs))
        if arch_steps is None:
            arch_steps = self.epoch >= s.warmup_epochs
        task = o.bundle.task
        o.supernet.train()
        sums: dict[str, float] = {}
        n = 0
        bar = tqdm(
            self._batches(self.epoch),
            total=self._steps_per_epoch(),
            desc=f"search {self.epoch + 1}/{s.epochs}",
            disable=self.quiet,
            leave=False,
        )
        for step, (wb, ab) in enumerate(bar):
            x, y = self._unpack(wb)
            record: dict[str, Any] = {"type": "step", "epoch": self.epoch, "step": step}
            if arch_steps:
                record.update(o.architect.step((x, y), self._unpack(ab)))
            o.weight_optimizer.zero_grad(set_to_none=True)
            out = o.supernet(x)
            loss = task.loss(out, y)
            loss.backward()
            if s.grad_clip:
                nn.utils.clip_grad_norm_(list(o.supernet.weight_parameters()), s.grad_clip)
            o.weight_optimizer.step()
            record["loss"] = float(loss.detach())
            record.update(task.batch_metrics(out.detach(), y))
            self._log(record)
            for k, v in record.items():
                if k not in ("type", "epoch", "step"):
                    sums[k] = sums.get(k, 0.0) + float(v)
            n += 1
            bar.set_postfix(
                {k: f"{v / n:.3f}" for k, v in sums.items() if k in ("loss", task.primary_metric)}
            )
        o.scheduler.step()
        self.search_seconds += time.perf_counter() - started
        summary = self._epoch_summary({k: v / max(n, 1) for k, v in sums.items()})
        self._log(summary)
        self.history.append(summary)
        self.epoch += 1
        return summary

    def _steps_per_epoch(self) -> int:
        s = self.config.search
        steps = -(-len(self.objects.weight_set) // s.batch_size)
        return steps if s.max_steps_per_epoch is None else min(steps, s.max_steps_per_epoch)

    def _epoch_summary(self, train_means: Mapping[str, float]) -> dict[str, Any]:
        o = self.objects
        probs = o.supernet.arch.probabilities()
        entropies = edge_entropies(probs)
        summary: dict[str, Any] = {
            "type": "epoch",
            "epoch": self.epoch,
            "lr": o.weight_optimizer.param_groups[0]["lr"],
            **{f"train_{k}": v for k, v in train_means.items()},
            "valid": self.evaluate_supernet(),
            "probabilities": {k: v.tolist() for k, v in probs.items()},
            "entropy": entropies,
            "mean_entropy": sum(sum(v) for v in entropies.values())
            / max(1, sum(len(v) for v in entropies.values())),
            "parameter_free": parameter_free_count(
                probs, o.supernet.specs, o.opset.zero, o.opset.parameter_free
            ),
            "seconds": self.search_seconds,
        }
        if self.config.search.hessian_eigenvalue:
            summary["hessian_eigenvalue"] = self._hessian_eigenvalue()
        return summary

    def _valid_loader(self) -> DataLoader:
        o = self.objects
        batch = o.bundle.eval_batch_size or self.config.search.batch_size
        return make_loader(o.bundle, o.arch_set, batch, False)

    @torch.no_grad()
    def evaluate_supernet(self, arch_weights: Mapping[str, Tensor] | None = None) -> dict[str, Any]:
        """The supernet's metrics on the architecture split."""
        o = self.objects
        o.supernet.eval()
        dtype = o.opset.dtype

        def model(x: Tensor) -> Tensor:
            return o.supernet(x.to(dtype) if dtype is not None else x, arch_weights)

        metrics = o.bundle.task.evaluate(model, self._valid_loader(), self.device)
        o.supernet.train()
        return metrics

    def _hessian_eigenvalue(self) -> float | None:
        o = self.objects
        x, y = self._unpack(next(iter(self._valid_loader())))
        params = list(o.supernet.arch_parameters())

        def loss() -> Tensor:
            return o.bundle.task.loss(o.supernet(x), y)

        try:
            return dominant_hessian_eigenvalue(loss, params, iterations=10)
        except RuntimeError as err:
            # Ops with a first-order-only backward (the SPD eigen-functions)
            # cannot give Hessian-vector products; the search goes on.
            LOGGER.warning(
                "no Hessian eigenvalue: the op set is not twice differentiable (%s)", err
            )
            return None

    # -- selection -------------------------------------------------------------
    def select(self) -> Genotype:
        o = self.objects
        name, options = split_name(self.config.selection)
        selector = call_with_options(SELECTORS.get(name), options, "selection")
        primary = o.bundle.task.primary_metric

        def evaluate(weights: Mapping[str, Tensor]) -> float:
            return float(self.evaluate_supernet(weights)[primary])

        def finetune(epochs: int) -> None:
            for _ in range(epochs):
                self.train_epoch(arch_steps=True)

        chosen = selector(SelectionContext(o.supernet, o.opset.zero, evaluate, finetune))
        probs = o.supernet.arch.probabilities()
        return Genotype(
            opset=o.opset.name,
            cells=chosen,
            ops={k: spec.ops for k, spec in o.supernet.specs.items()},
            probabilities={k: tuple(tuple(r) for r in v.tolist()) for k, v in probs.items()},
            config=self.config.to_dict(),
        )


def _as_python_random_state(state: Any) -> tuple:
    version, internal, gauss = state
    return (version, tuple(internal), gauss)
