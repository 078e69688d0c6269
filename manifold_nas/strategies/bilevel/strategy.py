"""``bilevel``: DARTS-family differentiable search, plain PyTorch, top to bottom.

Every step takes one architecture step on a validation batch (first or
second order, by the :class:`~manifold_nas.strategies.bilevel.architect.Architect`), then one
weight step on a training batch; after ``warmup_epochs`` weight-only
epochs (DiNTS / V-NAS). After every epoch the supernet is validated, the
probabilities, edge entropies and collapse diagnostics are logged, and a
checkpoint is written. At the end the config's selector (DARTS top-k argmax
or DARTS-PT perturbation) turns the supernet into a genotype.

The shared settings (epochs, batch size, split, weight optimizer) come from
the config's ``search:`` section; what only this strategy reads (order,
warm-up, architecture optimizer, cost penalty, entropy term, Hessian
diagnostics, synchronised batch norm) are its options in ``strategy:``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping
from typing import Any

from torch import Tensor, nn
from tqdm.auto import tqdm

from manifold_nas.config import (
    call_with_options,
    check_count,
    check_options,
    is_finite_number,
    split_name,
)
from manifold_nas.cost.measure import count_parameters
from manifold_nas.optim import ARCH_OPTIMIZERS, build_optimizer
from manifold_nas.optim.factory import DARTS_ARCH_ADAM_OPTIONS
from manifold_nas.optim.state import load_optimizer_state
from manifold_nas.run.context import Run
from manifold_nas.space.contracts import has_cost_model
from manifold_nas.space.diagnostics import (
    UNDECIDED_ENTROPY_RATIO,
    decision,
    dominant_hessian_eigenvalue,
    edge_entropies,
    parameter_free_count,
)
from manifold_nas.space.genotype import Genotype
from manifold_nas.space.selection import SELECTORS, SelectionContext
from manifold_nas.space.supernet import Supernet
from manifold_nas.strategies.base import Strategy, register_strategy
from manifold_nas.strategies.bilevel.architect import Architect
from manifold_nas.strategies.bilevel.penalty import architecture_penalty

LOGGER = logging.getLogger("manifold_nas")

__all__ = ["BilevelStrategy", "arch_optimizer_section", "genotype_of"]


def arch_optimizer_section(value: Mapping[str, Any] | None) -> dict[str, Any]:
    """The ``arch_optimizer`` option as a full ``{name, **options}`` section, its options checked.

    A section without ``name`` updates the default (DARTS' Adam), so
    ``strategy.arch_optimizer.lr=0.1`` changes the step and keeps the rest.
    """
    if value is not None and not isinstance(value, Mapping):
        raise ValueError(f"arch_optimizer must be a mapping with a 'name', got {value!r}")
    section = dict(value or {})
    if "name" not in section:
        section = {"name": "adam", **DARTS_ARCH_ADAM_OPTIONS, **section}
    name, options = split_name(section)
    check_options(ARCH_OPTIMIZERS.get(name).__init__, options, "strategy.arch_optimizer", 2)
    return section


def genotype_of(supernet: Supernet, chosen: Mapping[str, Any], opset: str, config: Any) -> Genotype:
    """A genotype of ``chosen`` edges, with the supernet's ops and probabilities."""
    probs = supernet.arch.probabilities()
    return Genotype(
        opset=opset,
        cells=dict(chosen),
        ops={k: spec.ops for k, spec in supernet.specs.items()},
        probabilities={k: tuple(tuple(r) for r in v.tolist()) for k, v in probs.items()},
        config=config.to_dict(),
    )


@register_strategy("bilevel")
class BilevelStrategy(Strategy):
    """DARTS bilevel search; runs data-parallel under ``torchrun`` (:mod:`manifold_nas.run.distributed`).

    Parameters
    ----------
    order:
        ``"first"`` or ``"second"``: the architecture gradient's order (DARTS).
    warmup_epochs:
        Weight-only epochs before architecture steps start (DiNTS / V-NAS).
    arch_optimizer:
        The architecture optimizer, ``{name, **options}``; without ``name`` the
        options update the default (DARTS' Adam, lr 3e-4, betas (0.5, 0.999),
        weight decay 1e-3).
    arch_penalty:
        A cost penalty on the architecture loss (:mod:`~manifold_nas.strategies.bilevel.penalty`).
    entropy_weight:
        Adds ``λ(t) · mean edge entropy`` of the architecture distribution to
        the architecture loss, ``λ(t)`` rising linearly from 0 after the
        warm-up to ``entropy_weight`` at the last epoch (DiNTS), so the search
        ends on a distribution that has chosen.
    hessian_eigenvalue:
        Log the dominant eigenvalue of the architecture Hessian every epoch.
    sync_batch_norm:
        Synchronise batch-norm statistics across ``torchrun`` processes.
    """

    supports_distributed = True

    def __init__(
        self,
        order: str = "first",
        warmup_epochs: int = 0,
        arch_optimizer: Mapping[str, Any] | None = None,
        arch_penalty: Mapping[str, Any] | None = None,
        entropy_weight: float = 0.0,
        hessian_eigenvalue: bool = False,
        sync_batch_norm: bool = False,
    ) -> None:
        if order not in ("first", "second"):
            raise ValueError(f"order must be 'first' or 'second', got {order!r}")
        self.order = order
        check_count("warmup_epochs", warmup_epochs, 0)
        self.warmup_epochs = warmup_epochs
        self.arch_optimizer_options = arch_optimizer_section(arch_optimizer)
        if arch_penalty is not None and not isinstance(arch_penalty, Mapping):
            raise ValueError(f"arch_penalty must be a mapping, got {arch_penalty!r}")
        self.arch_penalty = dict(arch_penalty or {})
        if not is_finite_number(entropy_weight) or entropy_weight < 0:
            raise ValueError(f"entropy_weight must be a finite number >= 0, got {entropy_weight!r}")
        self.entropy_weight = float(entropy_weight)
        for name, flag in (
            ("hessian_eigenvalue", hessian_eigenvalue),
            ("sync_batch_norm", sync_batch_norm),
        ):
            if not isinstance(flag, bool):
                raise ValueError(f"{name} must be true or false, got {flag!r}")
        self.hessian_eigenvalue = hessian_eigenvalue
        self.sync_batch_norm = sync_batch_norm
        self.epoch = 0
        self.history: list[dict[str, Any]] = []

    # -- construction ---------------------------------------------------------------
    def setup(self, run: Run) -> None:
        network = run.build_searchable()
        penalty = architecture_penalty(run, network, self.arch_penalty)
        self.supernet = run.build_supernet(network, penalty)
        if self.sync_batch_norm and run.world.distributed:
            self.supernet = nn.SyncBatchNorm.convert_sync_batchnorm(self.supernet)
        self.model = run.data_parallel(self.supernet)
        self.weight_optimizer, self.scheduler = run.search_optimizer(
            self.supernet.weight_parameters()
        )
        a_name, a_opts = split_name(self.arch_optimizer_options)
        self.arch_optimizer = build_optimizer(a_name, self.supernet.arch_parameters(), **a_opts)
        self.architect = Architect(
            self.supernet,
            run.task.loss,
            self.arch_optimizer,
            order=self.order,
            weight_optimizer=self.weight_optimizer,
            reduce=run.world.average,
        )

    def state_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "supernet": self.supernet.state_dict(),
            "weight_optimizer": self.weight_optimizer.state_dict(),
            "arch_optimizer": self.arch_optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "history": self.history,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.supernet.load_state_dict(state["supernet"])
        load_optimizer_state(self.weight_optimizer, state["weight_optimizer"])
        load_optimizer_state(self.arch_optimizer, state["arch_optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.epoch = int(state["epoch"])
        self.history = list(state["history"])

    def progress(self) -> str:
        return f"after epoch {self.epoch}"

    # -- the loop -----------------------------------------------------------------------
    def run(self, run: Run) -> Genotype:
        while self.epoch < run.config.search.epochs:
            self.train_epoch(run)
            run.checkpoint(self)
        return self.select(run)

    def _batches(self, run: Run, epoch: int) -> Iterator[tuple[Any, Any]]:
        s, seed = run.config.search, run.config.seed
        weight_loader = run.loader(run.weight_set, s.batch_size, True, seed * 100003 + 2 * epoch)
        arch_batches = run.batches(run.valid_set, s.batch_size, seed * 100003 + 2 * epoch + 1)
        limit = s.max_steps_per_epoch
        for step, (wb, ab) in enumerate(zip(weight_loader, arch_batches)):
            if limit is not None and step >= limit:
                break
            yield wb, ab

    def train_epoch(self, run: Run, arch_steps: bool | None = None) -> dict[str, Any]:
        """One epoch of alternating architecture and weight steps."""
        s = run.config.search
        started = time.perf_counter()
        self.supernet.arch.relaxation.set_progress(self.epoch / max(1, s.epochs))
        self.supernet.entropy_weight = self._entropy_weight(s.epochs)
        if arch_steps is None:
            arch_steps = self.epoch >= self.warmup_epochs
        task = run.task
        self.supernet.train()
        sums: dict[str, float] = {}
        n = 0
        bar = tqdm(
            self._batches(run, self.epoch),
            total=self._steps_per_epoch(run),
            desc=f"search {self.epoch + 1}/{s.epochs}",
            disable=run.quiet,
            leave=False,
        )
        for step, (wb, ab) in enumerate(bar):
            step_started = time.perf_counter()
            x, y = run.inputs(wb)
            record: dict[str, Any] = {"type": "step", "epoch": self.epoch, "step": step}
            if arch_steps:
                record.update(self.architect.step((x, y), run.inputs(ab)))
            self.weight_optimizer.zero_grad(set_to_none=True)
            out = self.model(x)
            loss = task.loss(out, y)
            loss.backward()
            if s.grad_clip:
                nn.utils.clip_grad_norm_(list(self.supernet.weight_parameters()), s.grad_clip)
            self.weight_optimizer.step()
            record["loss"] = float(loss.detach())
            record.update(task.batch_metrics(out.detach(), y))
            record["step_seconds"] = time.perf_counter() - step_started
            run.log(record)
            for k, v in record.items():
                if k not in ("type", "epoch", "step"):
                    sums[k] = sums.get(k, 0.0) + float(v)
            n += 1
            bar.set_postfix(
                {k: f"{v / n:.3f}" for k, v in sums.items() if k in ("loss", task.primary_metric)}
            )
        self.scheduler.step()
        seconds = time.perf_counter() - started
        summary = self._epoch_summary(run, {k: v / max(n, 1) for k, v in sums.items()}, seconds)
        run.log(summary)
        self.history.append(summary)
        self.epoch += 1
        return summary

    def _entropy_weight(self, epochs: int) -> float:
        """``λ(t)``: 0 until the warm-up ends, then rising linearly to ``entropy_weight``."""
        if not self.entropy_weight:
            return 0.0
        searched = max(1, epochs - self.warmup_epochs)
        progress = (self.epoch - self.warmup_epochs + 1) / searched
        return self.entropy_weight * min(1.0, max(0.0, progress))

    def _steps_per_epoch(self, run: Run) -> int:
        s = run.config.search
        steps = -(-len(run.weight_set) // s.batch_size)
        return steps if s.max_steps_per_epoch is None else min(steps, s.max_steps_per_epoch)

    def _epoch_summary(
        self, run: Run, train_means: Mapping[str, float], seconds: float
    ) -> dict[str, Any]:
        probs = self.supernet.arch.probabilities()
        entropies = edge_entropies(probs)
        previous = self.history[-1]["seconds"] if self.history else 0.0
        summary: dict[str, Any] = {
            "type": "epoch",
            "epoch": self.epoch,
            "lr": self.weight_optimizer.param_groups[0]["lr"],
            **{f"train_{k}": v for k, v in train_means.items()},
            "valid": self.evaluate_supernet(run),
            "probabilities": {k: v.tolist() for k, v in probs.items()},
            "entropy": entropies,
            "mean_entropy": sum(sum(v) for v in entropies.values())
            / max(1, sum(len(v) for v in entropies.values())),
            **decision(probs),
            "parameter_free": parameter_free_count(
                probs, self.supernet.specs, run.opset.zero, run.opset.parameter_free
            ),
            "seconds": previous + seconds,
        }
        if self.hessian_eigenvalue:
            summary["hessian_eigenvalue"] = self._hessian_eigenvalue(run)
        return summary

    def evaluate_supernet(
        self, run: Run, arch_weights: Mapping[str, Tensor] | None = None
    ) -> dict[str, Any]:
        """The supernet's metrics on the validation split."""
        return run.evaluate(self.supernet, run.valid_set, arch_weights)

    def _hessian_eigenvalue(self, run: Run) -> float | None:
        x, y = run.inputs(next(iter(run.eval_loader(run.valid_set))))
        params = list(self.supernet.arch_parameters())

        def loss() -> Tensor:
            return run.task.loss(self.supernet(x), y)

        try:
            return dominant_hessian_eigenvalue(loss, params, iterations=10)
        except RuntimeError as err:
            # Ops with a first-order-only backward (the SPD eigen-functions)
            # cannot give Hessian-vector products; the search goes on.
            LOGGER.warning(
                "no Hessian eigenvalue: the op set is not twice differentiable (%s)", err
            )
            return None

    # -- selection ---------------------------------------------------------------------
    def select(self, run: Run) -> Genotype:
        name, options = split_name(run.config.selection)
        selector = call_with_options(SELECTORS.get(name), options, "selection")
        primary = run.task.primary_metric

        def evaluate(weights: Mapping[str, Tensor]) -> float:
            return float(self.evaluate_supernet(run, weights)[primary])

        def finetune(epochs: int) -> None:
            for _ in range(epochs):
                self.train_epoch(run, arch_steps=True)

        chosen = selector(SelectionContext(self.supernet, run.opset.zero, evaluate, finetune))
        state = decision(self.supernet.arch.probabilities())
        if state["entropy_ratio"] > UNDECIDED_ENTROPY_RATIO:
            LOGGER.warning(
                "the architecture distribution is near-uniform (mean edge entropy %.0f%% of its "
                "maximum, top-2 margin %.3f), so the chosen cell is close to a random draw; search "
                "longer, raise the architecture step size or set strategy.entropy_weight",
                100 * state["entropy_ratio"],
                state["top2_margin"],
            )
        return genotype_of(self.supernet, chosen, run.opset.name, run.config)

    def summary(self, run: Run) -> dict[str, Any]:
        last = self.history[-1] if self.history else {}
        network = self.supernet.network
        summary: dict[str, Any] = {
            "final": last.get("valid", {}),
            "mean_entropy": last.get("mean_entropy"),
            **decision(self.supernet.arch.probabilities()),
            "parameter_free": last.get("parameter_free"),
            "epochs": self.epoch,
            "parameters": {
                "supernet_weights": count_parameters(network),
                "architecture": sum(p.numel() for p in self.supernet.arch_parameters()),
            },
        }
        if has_cost_model(network):
            summary["cost"] = network.expected_cost(self.supernet.arch.probabilities())
        return summary
