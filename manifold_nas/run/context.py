"""The run context: what every search strategy shares.

A :class:`Run` owns the resolved config, the built data (and its task), the
weight / validation split of the training data, seeding and threads, the run
directory (``metrics.jsonl``, atomic checkpoints, ``--resume``), builders for
the supernet and for derived networks, and the two verbs every strategy
needs: :meth:`Run.train` (train a network for some epochs, validating after
each, with a callback that may stop early) and :meth:`Run.evaluate`.

Strategies never load data, create folders or seed anything themselves; they
ask the run, so that all of them write the same run-directory layout and a
resumed run reproduces an uninterrupted one bit for bit.

The module-level builders (:func:`build_data`, :func:`build_network`,
:func:`make_loader`, ...) are the pieces ``manifold-nas train``,
``evaluate`` and the benchmarks use without a search.
"""

from __future__ import annotations

import itertools
import logging
import os
import random
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm.auto import tqdm

from manifold_nas.config import (
    Config,
    TrainSettings,
    call_with_options,
    check_options,
    section_error,
    split_name,
)
from manifold_nas.cost.budget import (
    measure_genotype,
    measured_cost_table,
)
from manifold_nas.cost.measure import count_parameters
from manifold_nas.cost.table import CostTable
from manifold_nas.data import DATASETS, DataBundle
from manifold_nas.errors import UserInputError
from manifold_nas.optim import build_optimizer
from manifold_nas.optim.state import load_optimizer_state
from manifold_nas.run.directory import RunDirectory
from manifold_nas.run.distributed import ShardedSampler, World, current_world, device_for
from manifold_nas.space.contracts import check_searchable
from manifold_nas.space.genotype import Genotype
from manifold_nas.space.networks import NETWORKS
from manifold_nas.space.opset import OPSETS, OpSet
from manifold_nas.space.relaxations import RELAXATIONS
from manifold_nas.space.supernet import ArchitectureParameters, Supernet

LOGGER = logging.getLogger("manifold_nas")

__all__ = [
    "EpochCallback",
    "Run",
    "TrainingResult",
    "apply_threads",
    "usable_cpu_count",
    "build_data",
    "build_network",
    "cast_input",
    "count_parameters",
    "make_loader",
    "seed_everything",
    "split_train",
    "stream_seed",
    "trial_seed",
]


# -- builders usable without a run ----------------------------------------------
def seed_everything(seed: int) -> None:
    """Seed Python's and torch's global streams (the only global randomness used)."""
    random.seed(seed)
    torch.manual_seed(seed)


def stream_seed(seed: int, stream: str) -> int:
    """A seed for the named random stream of a run seeded ``seed`` (stable across processes)."""
    return (seed * 1_000_003 + zlib.crc32(stream.encode())) % (2**31 - 1)


def trial_seed(seed: int, trial: int) -> int:
    """The seed of trial ``trial`` of a run seeded ``seed`` (independent of interruptions)."""
    return (seed * 1_000_003 + 7_919 * (trial + 1)) % (2**31 - 1)


def usable_cpu_count() -> int:
    """The CPUs this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def apply_threads(config: Config) -> int | None:
    """Honour ``threads:``; small-matrix work (SPD) runs fastest on one thread.

    More threads than CPUs only oversubscribe them (thousands of OpenMP
    threads can stall a run for minutes), so they are capped to the CPU
    count with a one-line warning. Returns the number of threads set.
    """
    if config.threads is None:
        return None
    threads, cpus = config.threads, usable_cpu_count()
    if threads > cpus:
        LOGGER.warning(
            "threads=%d exceeds the %d CPU(s) of this machine; using %d", threads, cpus, cpus
        )
        threads = cpus
    torch.set_num_threads(threads)
    return threads


def build_data(config: Config) -> DataBundle:
    """The config's data set; a failure while reading names the files the section points at."""
    name, options = split_name(config.data)
    builder = DATASETS.get(name)
    check_options(builder, options, "data")
    try:
        return builder(**options)
    except UserInputError:
        raise
    except Exception as err:
        files = [str(v) for k, v in options.items() if isinstance(v, (str, Path))
                 and any(k.endswith(s) for s in ("path", "root", "datalist", "file"))]  # fmt: skip
        where = f"data ({', '.join(files)})" if files else "data"
        raise section_error(err, where) from err


def opset_of(config: Config) -> OpSet:
    if "opset" not in config.network:
        raise UserInputError("config section 'network' needs key 'opset'")
    return OPSETS.get(str(config.network["opset"]))


def build_network(
    config: Config,
    bundle: DataBundle,
    genotype: Genotype | None = None,
    extra: Mapping | None = None,
) -> tuple[nn.Module, OpSet]:
    """The config's network: searchable without a genotype, derived with one."""
    name, options = split_name(config.network)
    opset = opset_of(config)
    options.pop("opset")
    options.update(extra or {})
    builder = NETWORKS.get(name)
    if genotype is not None and genotype.cells and genotype.opset != opset.name:
        raise UserInputError(
            f"genotype was searched with op set {genotype.opset!r} but the network uses {opset.name!r}"
        )
    if genotype is not None and genotype.cells:
        _check_genotype_ops(genotype, opset)
    check_options(builder, options, "network", n_positional=3)
    try:
        network = builder(opset, bundle, genotype, **options)
    except UserInputError:
        raise
    except KeyError as err:
        if genotype is None or not genotype.cells:
            raise section_error(err, "network") from err
        raise UserInputError(
            f"genotype has no cell type {err.args[0]!r} that network {name!r} needs; "
            f"it has {', '.join(genotype.cells) or 'none'}"
        ) from None
    except Exception as err:
        raise section_error(err, "network") from err
    if opset.dtype is not None:
        network = network.to(opset.dtype)
    return network, opset


def _check_genotype_ops(genotype: Genotype, opset: OpSet) -> None:
    for cell_type, edges in genotype.cells.items():
        for edge in edges:
            if edge.op not in opset.ops:
                raise UserInputError(
                    f"genotype op {edge.op!r} (cell {cell_type!r}) is not in op set "
                    f"{opset.name!r}; its ops: {', '.join(opset.op_names)}"
                )


def split_train(dataset: Dataset, portion: float, seed: int) -> tuple[Subset, Subset]:
    """Split into a weight part (``portion``) and a validation part, seeded."""
    n = len(dataset)
    if n < 2:
        raise UserInputError(f"the training set has {n} sample(s); a search needs at least 2")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    cut = max(1, min(n - 1, int(round(portion * n))))
    return Subset(dataset, order[:cut]), Subset(dataset, order[cut:])


def make_loader(
    bundle: DataBundle,
    dataset: Dataset,
    batch_size: int,
    shuffle: bool,
    seed: int = 0,
    world: World | None = None,
) -> DataLoader:
    """A loader whose order depends only on ``seed`` (so resumed epochs match).

    A shuffled loader draws its order from :class:`ShardedSampler`, so it is
    the same however often the loader is iterated, and under torchrun each
    rank gets its shard of that one order. Its own seeded generator also
    feeds the loader's worker seed, so the global random stream is never
    touched.
    """
    if not shuffle:
        return DataLoader(dataset, batch_size=batch_size, collate_fn=bundle.collate_fn)
    world = world or World()
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=ShardedSampler(len(dataset), seed, world.rank, world.size),
        generator=torch.Generator().manual_seed(seed),
        collate_fn=bundle.collate_fn,
    )


def cast_input(value: Any, device: torch.device | str, dtype: torch.dtype | None) -> Any:
    """Move a batch part to ``device``; floating tensors also to the op set's ``dtype``."""
    if isinstance(value, Tensor):
        if dtype is not None and value.is_floating_point():
            return value.to(device=device, dtype=dtype)
        return value.to(device)
    return value


def with_input_cast(
    network: nn.Module, dtype: torch.dtype | None, arch_weights: Mapping[str, Tensor] | None = None
) -> Callable[[Tensor], Tensor]:
    """``x -> network(x)`` (or ``network(x, arch_weights)``) with ``x`` cast to ``dtype``."""

    def model(x: Tensor) -> Tensor:
        x = cast_input(x, x.device, dtype)
        return network(x) if arch_weights is None else network(x, arch_weights)

    return model


# -- training --------------------------------------------------------------------
#: called after every epoch with its record; returning True stops the training
EpochCallback = Callable[[dict[str, Any]], bool | None]


@dataclass
class TrainingResult:
    """What :meth:`Run.train` did: one record per epoch, and whether a callback stopped it."""

    history: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    stopped_at: int | None = None
    best_epoch: int | None = None

    @property
    def last_valid(self) -> dict[str, Any]:
        for record in reversed(self.history):
            if "valid" in record:
                return record["valid"]
        return {}


# -- the run -----------------------------------------------------------------------
class Run:
    """The shared context of one search (or one retraining).

    Parameters
    ----------
    config:
        The resolved config.
    directory:
        The run directory, already acquired (``None`` for a run that writes
        nothing, e.g. a retraining that writes its own files).
    quiet:
        Silence the progress bars.
    """

    def __init__(
        self, config: Config, directory: RunDirectory | None = None, quiet: bool = False
    ) -> None:
        self.config = config
        self.directory = directory
        self.quiet = quiet
        self.world = current_world(config.device)
        self.device = torch.device(device_for(config.device, self.world))
        apply_threads(config)
        seed_everything(config.seed)
        self.bundle = build_data(config)
        self.opset = opset_of(config)
        self.dtype = self.opset.dtype
        self._splits: tuple[Subset, Subset] | None = None
        self._seconds_before = 0.0
        self._started = time.perf_counter()

    # -- data ------------------------------------------------------------------
    @property
    def task(self):
        return self.bundle.task

    @property
    def out_dir(self) -> Path | None:
        return None if self.directory is None else self.directory.path

    def _split(self) -> tuple[Subset, Subset]:
        if self._splits is None:
            self._splits = split_train(
                self.bundle.train, self.config.search.train_portion, self.config.seed
            )
        return self._splits

    @property
    def weight_set(self) -> Subset:
        """The part of the training data that trains weights during a search."""
        return self._split()[0]

    @property
    def valid_set(self) -> Subset:
        """The held-out part that steps or scores architectures during a search."""
        return self._split()[1]

    def inputs(self, batch: Any) -> tuple[Any, Any]:
        """A loader batch as ``(x, y)`` on the run's device, ``x`` in the op set's dtype."""
        x, y = self.task.unpack(batch)
        return cast_input(x, self.device, self.dtype), cast_input(y, self.device, None)

    def loader(self, dataset: Dataset, batch_size: int, shuffle: bool, seed: int = 0) -> DataLoader:
        """Batches of ``dataset``; under torchrun a shuffled loader yields this rank's shard."""
        return make_loader(self.bundle, dataset, batch_size, shuffle, seed, self.world)

    def data_parallel(self, module: nn.Module) -> nn.Module:
        """``module`` wrapped in ``DistributedDataParallel`` under torchrun, else itself."""
        if not self.world.distributed:
            return module
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [self.device.index] if self.device.type == "cuda" else None
        # single-path and sparse relaxations leave some ops unused at a step
        return DistributedDataParallel(module, device_ids=device_ids, find_unused_parameters=True)

    def eval_loader(self, dataset: Dataset, batch_size: int | None = None) -> DataLoader:
        size = self.bundle.eval_batch_size or batch_size or self.config.search.batch_size
        return make_loader(self.bundle, dataset, size, False)

    # -- networks ----------------------------------------------------------------
    def build_searchable(self) -> nn.Module:
        """The config's searchable network, checked against the searchable contract."""
        network, _ = build_network(self.config, self.bundle)
        check_searchable(network, str(self.config.network["name"]))
        return network

    def build_supernet(
        self,
        network: nn.Module | None = None,
        penalty: Callable[[Mapping[str, Tensor]], Tensor] | None = None,
    ) -> Supernet:
        """The searchable network with the config's relaxation, on the device.

        ``penalty`` (the bilevel strategy's ``arch_penalty``) is added to the
        architecture loss.
        """
        network = self.build_searchable() if network is None else network
        name, options = split_name(self.config.relaxation)
        relaxation = call_with_options(RELAXATIONS.get(name), options, "relaxation")
        arch = ArchitectureParameters(network.arch_specs, relaxation, self.dtype or torch.float32)
        supernet = Supernet(network, arch, penalty)
        return supernet.to(self.device)

    @property
    def cost_cache_dir(self) -> Path | None:
        """Where this process keeps ``cost_lut.json``: the run directory when it writes, else memory."""
        return self.out_dir if self.writes else None

    def example_input(self) -> Tensor:
        """The first weight-split sample as a batch of one, on the run's device and dtype.

        Costs are per sample: the LUT and the end-to-end measurements see this input.
        """
        x, _ = self.inputs(next(iter(self.loader(self.weight_set, 1, False))))
        return x

    def cost_table(
        self,
        network: nn.Module | None = None,
        *,
        latency: bool = True,
        warmup: int = 3,
        repeats: int = 20,
        x: Tensor | None = None,
    ) -> CostTable:
        """The per-op cost table of the run's searchable network, cached in ``cost_lut.json``.

        ``network`` defaults to a fresh searchable network, built on a forked
        random stream so that measuring does not change the run's draws.
        """
        with torch.random.fork_rng(devices=[]):
            network = self.build_searchable() if network is None else network
            network = network.to(self.device)
            x = self.example_input() if x is None else x
            return measured_cost_table(
                network,
                x,
                cache_dir=self.cost_cache_dir,
                latency=latency,
                warmup=warmup,
                repeats=repeats,
            )

    def measure_genotype(
        self,
        genotype: Genotype,
        x: Tensor,
        *,
        latency: bool = True,
        warmup: int = 3,
        repeats: int = 20,
    ) -> dict[str, float]:
        """``genotype``'s derived network (as :meth:`build_derived` builds it) measured on ``x``."""
        with torch.random.fork_rng(devices=[]):
            network = self.build_derived(genotype)
            return measure_genotype(network, x, latency=latency, warmup=warmup, repeats=repeats)

    def search_optimizer(
        self, parameters: Iterable[Tensor]
    ) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
        """The ``search.weight_optimizer`` over ``parameters`` with its cosine schedule over the epochs."""
        s = self.config.search
        name, options = split_name(s.weight_optimizer)
        optimizer = build_optimizer(name, parameters, **options)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=max(1, s.epochs), eta_min=s.lr_min
        )
        return optimizer, scheduler

    def build_derived(self, genotype: Genotype, extra: Mapping | None = None) -> nn.Module:
        """The network holding only ``genotype``'s ops (``extra`` overrides network options)."""
        network, _ = build_network(self.config, self.bundle, genotype, extra)
        return network.to(self.device)

    # -- training and evaluation -----------------------------------------------------
    @torch.no_grad()
    def evaluate(
        self,
        network: nn.Module,
        dataset: Dataset | None = None,
        arch_weights: Mapping[str, Tensor] | None = None,
        batch_size: int | None = None,
    ) -> dict[str, Any]:
        """The task's metrics of ``network`` (with ``arch_weights`` for a supernet).

        ``dataset`` defaults to the validation split; the network's train/eval
        mode is restored afterwards.
        """
        was_training = network.training
        network.eval()
        model = with_input_cast(network, self.dtype, arch_weights)
        loader = self.eval_loader(self.valid_set if dataset is None else dataset, batch_size)
        metrics = self.task.evaluate(model, loader, self.device)
        network.train(was_training)
        return metrics

    def train(
        self,
        network: nn.Module,
        epochs: int,
        *,
        settings: TrainSettings | None = None,
        train_set: Dataset | None = None,
        valid_set: Dataset | None = None,
        loader_seed: int | None = None,
        callback: EpochCallback | None = None,
        desc: str = "train",
        resume: Mapping[str, Any] | None = None,
        checkpoint: Callable[[dict[str, Any]], None] | None = None,
        select_best: bool = False,
        patience: int | None = None,
    ) -> TrainingResult:
        """Train ``network`` for up to ``epochs`` epochs with the ``train`` settings.

        Each epoch shuffles ``train_set`` (default: the whole training set)
        with a seed that depends only on ``loader_seed`` and the epoch, so a
        repeated call gives the same network. When ``valid_set`` is given the
        network is evaluated after every epoch; ``callback(record)`` then sees
        the epoch's record and stops the training by returning True.

        ``checkpoint(state)`` is called after every epoch with everything
        needed to continue (network, optimizer, scheduler, history, random
        streams); passing such a state back as ``resume`` continues exactly
        where it was taken.

        With ``select_best`` (and a ``valid_set``) the weights of the epoch
        with the best validation score are restored at the end; ``patience``
        stops the training after that many epochs without a better score.
        """
        t = settings or self.config.train
        train_set = self.bundle.train if train_set is None else train_set
        seed = self.config.seed * 100003 if loader_seed is None else loader_seed
        name, options = split_name(t.optimizer)
        optimizer = build_optimizer(name, network.parameters(), **options)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=max(1, epochs), eta_min=t.lr_min
        )
        result = TrainingResult()
        primary = self.task.primary_metric
        best: dict[str, Any] = {"score": None, "epoch": None, "state": None}
        start = 0
        if resume is not None:
            network.load_state_dict(resume["network"])
            load_optimizer_state(optimizer, resume["optimizer"])
            scheduler.load_state_dict(resume["scheduler"])
            result.history = list(resume["history"])
            result.seconds = float(resume["seconds"])
            torch.set_rng_state(resume["torch_rng"])
            random.setstate(_as_python_random_state(resume["python_rng"]))
            start = int(resume["epoch"])
            best = dict(resume.get("best", best))
        started = time.perf_counter() - result.seconds
        model = self.data_parallel(network)
        for epoch in range(start, epochs):
            network.train()
            loader = self.loader(train_set, t.batch_size, True, seed + epoch)
            bar = tqdm(loader, desc=f"{desc} {epoch + 1}/{epochs}", disable=self.quiet, leave=False)
            loss_sum, steps = 0.0, 0
            for step, batch in enumerate(bar):
                if t.max_steps_per_epoch is not None and step >= t.max_steps_per_epoch:
                    break
                x, y = self.inputs(batch)
                optimizer.zero_grad(set_to_none=True)
                loss = self.task.training_loss(model(x), y, t.label_smoothing)
                loss.backward()
                if t.grad_clip:
                    nn.utils.clip_grad_norm_(network.parameters(), t.grad_clip)
                optimizer.step()
                loss_sum += float(loss.detach())
                steps += 1
                bar.set_postfix(loss=f"{float(loss.detach()):.3f}")
            scheduler.step()
            record: dict[str, Any] = {"epoch": epoch, "train_loss": loss_sum / max(steps, 1)}
            if valid_set is not None:
                record["valid"] = self.evaluate(network, valid_set, batch_size=t.batch_size)
            result.history.append(record)
            stop = callback is not None and bool(callback(record))
            if select_best and "valid" in record:
                score = float(record["valid"][primary])
                if best["score"] is None or score > best["score"]:
                    best = {"score": score, "epoch": epoch, "state": _cpu_state(network)}
                elif patience is not None and epoch - best["epoch"] >= patience:
                    stop = True
            result.seconds = time.perf_counter() - started
            if checkpoint is not None:
                checkpoint(
                    {
                        "epoch": epoch + 1,
                        "network": network.state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(),
                        "history": result.history,
                        "seconds": result.seconds,
                        "torch_rng": torch.get_rng_state(),
                        "python_rng": random.getstate(),
                        "best": best,
                    }
                )
            if stop:
                result.stopped_at = epoch
                break
        if select_best and best["state"] is not None:
            network.load_state_dict(best["state"])
            result.best_epoch = best["epoch"]
        network.eval()
        return result

    # -- run directory -------------------------------------------------------------
    def log(self, record: Mapping[str, Any]) -> None:
        """Append a record to ``metrics.jsonl`` (a no-op for a run without a directory)."""
        if self.writes:
            self.directory.log(record)

    @property
    def writes(self) -> bool:
        """Whether this process writes the run directory (rank 0 of a data-parallel run)."""
        return self.directory is not None and self.world.is_main

    @property
    def search_seconds(self) -> float:
        """Seconds spent searching, over all sessions of a resumed run."""
        return self._seconds_before + time.perf_counter() - self._started

    def checkpoint(self, strategy: Any) -> None:
        """Write the strategy's state and the random streams atomically."""
        if not self.writes:
            return
        self.directory.save_checkpoint(
            {
                "config": self.config.to_dict(),
                "strategy": strategy.name,
                "strategy_state": strategy.state_dict(),
                "progress": strategy.progress(),
                "torch_rng": torch.get_rng_state(),
                "python_rng": random.getstate(),
                "metrics_bytes": self.directory.metrics_bytes(),
                "search_seconds": self.search_seconds,
            }
        )

    def restore(self, state: Mapping[str, Any], strategy: Any) -> None:
        """Continue from a checkpoint written by :meth:`checkpoint` (after ``strategy.setup``)."""
        path = self.directory.checkpoint_path if self.directory else "checkpoint"
        if state.get("strategy") != strategy.name:
            raise UserInputError(
                f"{path} was written by strategy {state.get('strategy')!r}, "
                f"not {strategy.name!r}; use the run's config.yaml or a new --out"
            )
        try:
            strategy.load_state_dict(state["strategy_state"])
            torch.set_rng_state(state["torch_rng"])
            random.setstate(_as_python_random_state(state["python_rng"]))
            metrics_bytes = int(state["metrics_bytes"])
            seconds = float(state["search_seconds"])
        except (KeyError, RuntimeError, ValueError, TypeError) as err:
            reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise UserInputError(f"checkpoint {path} does not fit this run: {reason}") from None
        if self.writes:
            self.directory.truncate_metrics(metrics_bytes)
        self._seconds_before = seconds
        self._started = time.perf_counter()

    def write_config(self) -> None:
        if self.writes:
            self.directory.write_text(
                "config.yaml", yaml.safe_dump(self.config.to_dict(), sort_keys=False)
            )

    def batches(self, dataset: Dataset, batch_size: int, seed: int) -> Iterator[Any]:
        """Endless shuffled batches of ``dataset``, reshuffled by a seed per pass."""
        for k in itertools.count():
            yield from self.loader(dataset, batch_size, True, seed + 7919 * k)


def _cpu_state(network: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in network.state_dict().items()}


def _as_python_random_state(state: Any) -> tuple:
    version, internal, gauss = state
    return (version, tuple(internal), gauss)
